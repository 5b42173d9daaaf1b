"""Fast TempCNN inference for whole tiles: batch norm folded into the weights, bf16 where the
hardware computes it natively and it agrees with fp32, on the CPU or a CUDA GPU.

The reference is the trained model in torch fp32 eager mode (``TrainedModel.predict_proba``).
An :class:`InferenceEngine` computes the same softmax probabilities faster:

* batch norm (inference statistics) is folded into the preceding convolution or dense layer,
  dropout vanishes, so each block is one convolution (or matrix product) with bias and ReLU;
* the per-channel standardisation is applied as one multiply-add on the int16 features;
* on CPUs with native bf16 (AMX or AVX512-BF16) and on bf16-capable GPUs the convolutions and
  the dense layer run in bf16 with fp32 accumulation, several times the fp32 rate; the small
  logits layer and the softmax stay fp32. bf16 is used only after it
  agreed with the fp32 eager reference on the tile's own pixels (:func:`check_agreement`);
  otherwise the engine falls back to fp32 for that tile and says so.

Pixels are processed in mini-batches small enough for the CPU caches (``batch_px``); the
result of a pixel does not depend on the batch it is in (on a GPU every batch is padded to
``batch_px`` pixels, since cuDNN and cuBLAS choose their kernels by shape).

On a GPU the features cross the bus at 1,296 bytes per pixel, more than the network's compute
takes: copied from pageable host memory they move at a few GB/s, one batch after the other. The
engine pipelines instead (:meth:`InferenceEngine._predict_cuda`): each batch is copied by host
threads into one of two pinned (page-locked) buffers, sent to the device on a copy stream while
the previous batch computes, and its probabilities come back into pinned memory on the compute
stream; ``compile`` adds ``torch.compile`` of the folded network (fixed batch shape, autotuned
kernels). The CPU path is unchanged. ``scripts/bench_gpu_inference.py`` measures each step.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from clcplus_ops.model.tempcnn import TempCNN
from clcplus_ops.model.trainer import TrainedModel

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class InferenceSetupError(RuntimeError):
    """The engine asked for cannot run here (no GPU, no bf16 support)."""


# --------------------------------------------------------------------------------------------
# What the hardware offers


def cuda_available() -> bool:
    return torch.cuda.is_available()


def native_bf16(device: str) -> bool:
    """True where bf16 matrix products run in hardware (not emulated, which is slower than fp32)."""
    if device == "cuda":
        return cuda_available() and torch.cuda.is_bf16_supported()
    # torch's own CPU capability probes (AMX tiles or AVX512-BF16 instructions).
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_device(device: Device) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise InferenceSetupError("inference.device is 'cuda' but torch sees no CUDA GPU on this worker "
                                  f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    return device


# --------------------------------------------------------------------------------------------
# The folded network


def _fold(weight: torch.Tensor, bias: torch.Tensor, bn: torch.nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of a layer followed by batch norm in inference mode, as one layer."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (weight * scale.view(shape)).detach(), ((bias - bn.running_mean) * scale + bn.bias).detach()


@dataclass
class FoldedTempCNN:
    """The TempCNN's inference graph as plain tensors: conv+ReLU blocks, dense+ReLU, logits."""

    scale: torch.Tensor   # (channels, 1): 1 / std of the standardisation
    offset: torch.Tensor  # (channels, 1): -mean / std
    convolutions: list[tuple[torch.Tensor, torch.Tensor]]
    dense: tuple[torch.Tensor, torch.Tensor]
    logits: tuple[torch.Tensor, torch.Tensor]
    padding: int

    @classmethod
    def from_model(cls, model: TrainedModel) -> FoldedTempCNN:
        net: TempCNN = model.module()
        convs = [_fold(block[0].weight, block[0].bias, block[1]) for block in net.convolutions]
        dense = _fold(net.dense[1].weight, net.dense[1].bias, net.dense[2])
        logits = (net.logits.weight.detach(), net.logits.bias.detach())
        std = torch.from_numpy(model.normaliser.std.astype(np.float32))
        mean = torch.from_numpy(model.normaliser.mean.astype(np.float32))
        return cls(scale=(1 / std)[:, None], offset=(-mean / std)[:, None], convolutions=convs, dense=dense,
                   logits=logits, padding=model.arch.kernel_size // 2)

    def to(self, device: str, dtype: torch.dtype) -> FoldedTempCNN:
        def move(pair, as_dtype=dtype):
            return tuple(t.to(device=device, dtype=as_dtype).contiguous() for t in pair)

        # The logits layer stays fp32 whatever ``dtype``: it costs 0.1 % of the FLOPs and in bf16
        # it alone doubled the largest probability difference from fp32 (measured: 9e-3 -> 5e-3).
        return FoldedTempCNN(
            scale=self.scale.to(device), offset=self.offset.to(device),
            convolutions=[move(p) for p in self.convolutions], dense=move(self.dense),
            logits=move(self.logits, torch.float32), padding=self.padding,
        )

    def probabilities(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Softmax (fp32) of a batch of raw features (pixels, channels, steps), any numeric dtype."""
        h = torch.addcmul(self.offset, x.to(torch.float32), self.scale).to(dtype)
        for weight, bias in self.convolutions:
            h = F.relu(F.conv1d(h, weight, bias, padding=self.padding))
        h = F.relu(F.linear(h.flatten(1), *self.dense))
        return torch.softmax(F.linear(h.to(torch.float32), *self.logits), dim=1)


# --------------------------------------------------------------------------------------------
# The engine


@dataclass
class InferenceEngine:
    model: TrainedModel
    device: str
    precision: str
    batch_px: int
    compile: bool = False  # torch.compile the folded network (CUDA)
    pipelined: bool = True  # CUDA: pinned buffers, copies overlapped with the compute
    _folded: FoldedTempCNN | None = None
    _forward: object = None

    def __post_init__(self) -> None:
        if self.precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {self.precision!r}")
        self._folded = FoldedTempCNN.from_model(self.model).to(self.device, _DTYPES[self.precision])
        self._forward = self._folded.probabilities
        if self.compile:
            # Every batch has the same shape (padded on a GPU): one compilation per engine.
            self._forward = torch.compile(self._folded.probabilities, dynamic=False, mode="max-autotune-no-cudagraphs")

    def describe(self) -> dict:
        return {"device": self.device, "precision": self.precision, "batch_px": self.batch_px,
                "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                **({"compiled": True} if self.compile else {}),
                **({"pipelined": self.pipelined} if self.device == "cuda" else {})}

    def with_precision(self, precision: str) -> InferenceEngine:
        return InferenceEngine(self.model, self.device, precision, self.batch_px, self.compile, self.pipelined)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities (fp32, on the batch's device) of a batch of raw features already on the
        engine's device."""
        with torch.inference_mode(), _exact_fp32(self.device):
            return self._forward(batch, _DTYPES[self.precision])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities float32 (pixels, classes) of raw features (pixels, channels, steps)."""
        arch = self.model.arch
        if x.ndim != 3 or x.shape[1:] != (arch.channels, arch.time_steps):
            raise ValueError(f"expected features (pixels, {arch.channels}, {arch.time_steps}), got shape {x.shape}")
        if self.device == "cuda" and self.pipelined:
            return self._predict_cuda(x)
        out = np.empty((len(x), len(self.model.classes)), np.float32)
        dtype = _DTYPES[self.precision]
        with torch.inference_mode(), _exact_fp32(self.device):
            for start in range(0, len(x), self.batch_px):
                chunk = np.ascontiguousarray(x[start:start + self.batch_px])
                n = len(chunk)
                if self.device == "cuda" and n < self.batch_px:
                    # On a GPU every batch has the same shape: cuDNN and cuBLAS pick their kernels
                    # by shape, so a short last batch would change its pixels' results (measured
                    # on an H200: up to 2e-6 in fp32, 2e-3 in bf16) and a pixel's result would
                    # depend on the batch it is in (tiles' halos would no longer match).
                    chunk = np.concatenate([chunk, np.zeros((self.batch_px - n, *chunk.shape[1:]), chunk.dtype)])
                batch = torch.from_numpy(chunk)
                probs = self._forward(batch.to(self.device, non_blocking=True), dtype)
                out[start:start + n] = probs[:n].cpu().numpy()
        return out

    def _predict_cuda(self, x: np.ndarray) -> np.ndarray:
        """The GPU pipeline (see the module documentation). Two slots, each a pinned input
        buffer, a device input buffer and a pinned output buffer; events order the streams:
        a slot's pinned input is refilled once its copy to the device ended, its device buffer
        once the compute that read it ended, its output read once its copy to the host ended.
        Every batch is ``batch_px`` pixels (the last one padded with zeros), as in the serial loop."""
        size, classes = self.batch_px, len(self.model.classes)
        out = np.empty((len(x), classes), np.float32)
        dtype = _DTYPES[self.precision]
        shape = (size, *x.shape[1:])
        host_in = [torch.empty(shape, dtype=torch.from_numpy(x[:0]).dtype).pin_memory() for _ in range(2)]
        host_out = [torch.empty((size, classes), dtype=torch.float32).pin_memory() for _ in range(2)]
        device_in = [torch.empty(shape, dtype=host_in[0].dtype, device="cuda") for _ in range(2)]
        sent, read, fetched = ([torch.cuda.Event() for _ in range(2)] for _ in range(3))
        copy_stream, compute = torch.cuda.Stream(), torch.cuda.current_stream()
        waiting: list[tuple[int, int] | None] = [None, None]  # (start, pixels) of a slot's result not taken yet
        threads = min(8, len(os.sched_getaffinity(0)))

        def take(slot: int) -> None:
            if waiting[slot] is not None:
                fetched[slot].synchronize()
                start, n = waiting[slot]
                out[start:start + n] = host_out[slot].numpy()[:n]
                waiting[slot] = None

        with torch.inference_mode(), _exact_fp32(self.device), \
                ThreadPoolExecutor(threads, thread_name_prefix="pin-copy") as pool:
            for i, start in enumerate(range(0, len(x), size)):
                slot, n = i % 2, min(size, len(x) - start)
                take(slot)
                sent[slot].synchronize()  # its pinned input went to the device
                _copy_rows(pool, threads, host_in[slot].numpy(), x[start:start + n])
                if n < size:
                    host_in[slot][n:].zero_()
                with torch.cuda.stream(copy_stream):
                    copy_stream.wait_event(read[slot])  # the compute that read its device buffer ended
                    device_in[slot].copy_(host_in[slot], non_blocking=True)
                    sent[slot].record(copy_stream)
                compute.wait_event(sent[slot])
                probs = self._forward(device_in[slot], dtype)
                read[slot].record(compute)
                host_out[slot].copy_(probs, non_blocking=True)
                fetched[slot].record(compute)
                waiting[slot] = (start, n)
            take(0)
            take(1)
        return out


def _copy_rows(pool: ThreadPoolExecutor, threads: int, into: np.ndarray, rows: np.ndarray) -> None:
    """``into[:len(rows)] = rows`` on ``threads`` threads (numpy copies without the GIL): one
    thread's memcpy into pinned memory is slower than the bus."""
    n = len(rows)
    step = -(-n // threads)
    parts = [(a, min(a + step, n)) for a in range(0, n, step)]
    for done in [pool.submit(np.copyto, into[a:b], rows[a:b]) for a, b in parts]:
        done.result()


@contextlib.contextmanager
def _exact_fp32(device: str):
    """On CUDA, keep fp32 convolutions and matrix products in full fp32 (no TF32 shortcuts)."""
    if device != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def reuse_freed_memory() -> None:
    """Keep freed blocks of a few MB in the process heap for the next batch (Linux, glibc).

    glibc hands blocks above its mmap threshold straight back to the kernel, so each batch's
    activations (several MB) come back as fresh pages the kernel must fault in and zero:
    measured 2.6x slower inference, depending on the process's allocation history. Raising the
    mmap and trim thresholds makes the heap reuse them; the peak memory is unchanged.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from malloc.h
    libc.mallopt(m_mmap_threshold, 256 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def default_batch_px(device: str) -> int:
    # CPU: ~1000 pixels keep a block's activations (pixels x 64 x 54 floats) in L2 cache; a GPU
    # wants large batches to fill its cores.
    return 65_536 if device == "cuda" else 1024


def create_engine(model: TrainedModel, device: Device = "auto", precision: Precision = "auto",
                  batch_px: int | None = None, compile: bool = False, pipelined: bool = True) -> InferenceEngine:
    """The engine for ``device`` / ``precision``; "auto" picks the GPU when there is one and bf16
    where it is native (to be confirmed per tile with :func:`check_agreement`). ``compile``:
    ``torch.compile`` the network; ``pipelined`` (CUDA): overlap the copies with the compute."""
    resolved = resolve_device(device)
    reuse_freed_memory()
    if precision == "auto":
        precision = "bf16" if native_bf16(resolved) else "fp32"
    elif precision == "bf16" and not native_bf16(resolved):
        log.warning("bf16 asked for but %s has no native bf16: it is emulated and slower than fp32", resolved)
    return InferenceEngine(model, resolved, precision, batch_px or default_batch_px(resolved), compile, pipelined)


# --------------------------------------------------------------------------------------------
# Agreement with the fp32 eager reference


@dataclass(frozen=True)
class Agreement:
    pixels: int
    top_class_agreement: float
    max_probability_difference: float

    def holds(self, min_top_class_agreement: float, max_probability_difference: float) -> bool:
        return (self.top_class_agreement >= min_top_class_agreement
                and self.max_probability_difference <= max_probability_difference)

    def to_dict(self) -> dict:
        return {"pixels": self.pixels, "top_class_agreement": round(self.top_class_agreement, 6),
                "max_probability_difference": float(f"{self.max_probability_difference:.3g}")}


def compare(reference: np.ndarray, probabilities: np.ndarray) -> Agreement:
    """How far ``probabilities`` are from ``reference`` (both (pixels, classes))."""
    if len(reference) == 0:
        return Agreement(0, 1.0, 0.0)
    same_top = reference.argmax(axis=1) == probabilities.argmax(axis=1)
    return Agreement(len(reference), float(same_top.mean()), float(np.abs(reference - probabilities).max()))


def check_agreement(engine: InferenceEngine, x: np.ndarray, min_top_class_agreement: float,
                    max_probability_difference: float) -> tuple[InferenceEngine, Agreement]:
    """Compare ``engine`` with the fp32 eager model on the sample ``x``; a bf16 engine that does
    not hold the tolerances is replaced by its fp32 twin. Returns (engine to use, agreement)."""
    agreement = compare(engine.model.predict_proba(x), engine.predict_proba(x))
    if engine.precision == "bf16" and not agreement.holds(min_top_class_agreement, max_probability_difference):
        log.warning("bf16 disagrees with fp32 on %d check pixels (top class %.4f %%, max |dp| %.4f): using fp32",
                    agreement.pixels, 100 * agreement.top_class_agreement, agreement.max_probability_difference)
        engine = engine.with_precision("fp32")
        agreement = compare(engine.model.predict_proba(x), engine.predict_proba(x))
    return engine, agreement
