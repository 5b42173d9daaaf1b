"""Training of a TempCNN on any labelled table of shape (samples, channels, time steps).

The one entry point, :func:`fit`, knows nothing about Sentinel-2 or production units, so the
same trainer is checked on other data (the Formosat-2 example of the TempCNN paper) and used
for the product. Its schedule is a cyclic learning rate (``triangular2``, Smith 2017) stepped
per batch; early stopping watches the loss on a stratified validation share and keeps the best
weights. The per-channel normalisation statistics travel with the model.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from clcplus_ops.model.tempcnn import Architecture, TempCNN

log = logging.getLogger(__name__)

FORMAT = "clcplus-tempcnn/1"


@dataclass(frozen=True)
class TrainParams:
    """The trainer's parameters: a view of the configuration's ``training`` section (same field
    names), where the ATBD's values are the defaults; build it with :meth:`from_config`."""

    epochs: int
    batch_size: int
    min_lr: float
    max_lr: float
    lr_cycle_epochs: int
    weight_decay: float
    # 0 turns early stopping off: all epochs run and the last weights are kept.
    validation_fraction: float
    patience_epochs: int
    seed: int
    conv_layers: int
    conv_filters: int
    kernel_size: int
    dense_units: int
    dropout: float

    @classmethod
    def from_config(cls, training: Any, **overrides: Any) -> TrainParams:
        """Parameters from a ``TrainingConfig`` (same field names), with overrides."""
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"TrainParams has no field(s) {unknown}")
        values = {f.name: getattr(training, f.name) for f in fields(cls)}
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Normaliser:
    """Per-channel standardisation, fitted on the training samples (over samples and time)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Normaliser:
        x64 = x.astype(np.float64, copy=False)
        mean = x64.mean(axis=(0, 2))
        std = x64.std(axis=(0, 2))
        # A constant channel must not divide by zero; it then carries no information anyway.
        return cls(mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32))

    def apply(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
        return (t - torch.from_numpy(self.mean)[:, None]) / torch.from_numpy(self.std)[:, None]


@dataclass
class TrainedModel:
    arch: Architecture
    classes: list[int]
    normaliser: Normaliser
    state: dict[str, torch.Tensor]
    params: TrainParams
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds else 0.0

    def module(self) -> TempCNN:
        net = TempCNN(self.arch)
        net.load_state_dict(self.state)
        return net.eval()

    def predict_proba(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Softmax probabilities (samples, classes), columns in the order of ``classes``."""
        _check_table(x, self.arch.channels, self.arch.time_steps)
        net = self.module()
        out = np.empty((len(x), len(self.classes)), np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                batch = self.normaliser.apply(x[start:start + batch_size])
                out[start:start + len(batch)] = torch.softmax(net(batch), dim=1).numpy()
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes)[self.predict_proba(x).argmax(axis=1)]

    def to_bytes(self) -> bytes:
        payload = {
            "format": FORMAT,
            "arch": self.arch.to_dict(),
            "classes": list(self.classes),
            "normaliser": {"mean": torch.from_numpy(self.normaliser.mean), "std": torch.from_numpy(self.normaliser.std)},
            "state": self.state,
            "params": self.params.to_dict(),
            "history": self.history,
            "best_epoch": self.best_epoch,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainedModel:
        payload = torch.load(io.BytesIO(data), weights_only=True)
        if payload.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model (format {payload.get('format')!r})")
        norm = payload["normaliser"]
        return cls(
            arch=Architecture(**payload["arch"]),
            classes=list(payload["classes"]),
            normaliser=Normaliser(norm["mean"].numpy(), norm["std"].numpy()),
            state=payload["state"],
            params=TrainParams(**payload["params"]),
            history=list(payload["history"]),
            best_epoch=int(payload["best_epoch"]),
        )


def _check_table(x: np.ndarray, channels: int | None = None, steps: int | None = None) -> None:
    if x.ndim != 3:
        raise ValueError(f"expected a table of shape (samples, channels, time steps), got shape {x.shape}")
    if channels is not None and x.shape[1:] != (channels, steps):
        raise ValueError(f"the model expects (channels, time steps) = ({channels}, {steps}), got {x.shape[1:]}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError("the table holds NaN or infinite values")


def validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): each class keeps ``fraction`` of its samples for validation
    (at least one where it has two or more), so rare classes are watched too."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for code in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == code))
        n_val = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def fit(
    x: np.ndarray,
    y: np.ndarray,
    params: TrainParams,
    *,
    classes: Sequence[int] | None = None,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    label: str = "tempcnn",
) -> TrainedModel:
    """Train a TempCNN on ``x`` (samples, channels, time steps) with labels ``y``.

    ``classes`` fixes the output classes and their order (the product always has 11); by
    default the sorted labels present. Validation data is ``x_val``/``y_val`` if given, else a
    stratified ``params.validation_fraction`` of ``x`` (none when it is 0)."""
    _check_table(x)
    y = np.asarray(y)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    classes = sorted(int(c) for c in (classes if classes is not None else np.unique(y)))
    unknown = sorted(set(np.unique(y).tolist()) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")

    if x_val is None and params.validation_fraction > 0:
        train_idx, val_idx = validation_split(y, params.validation_fraction, params.seed)
        x_val, y_val, x, y = x[val_idx], y[val_idx], x[train_idx], y[train_idx]
    if len(x) < 2:
        raise ValueError(f"{label}: need at least 2 training samples, got {len(x)}")

    torch.manual_seed(params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    arch = Architecture(
        channels=x.shape[1], time_steps=x.shape[2], classes=len(classes), conv_layers=params.conv_layers,
        conv_filters=params.conv_filters, kernel_size=params.kernel_size, dense_units=params.dense_units,
        dropout=params.dropout,
    )
    normaliser = Normaliser.fit(x)
    xt = normaliser.apply(x)
    yt = torch.from_numpy(np.searchsorted(classes, y).astype(np.int64))  # classes are sorted and hold every label
    has_val = x_val is not None and len(x_val) > 0
    if has_val:
        xv = normaliser.apply(x_val)
        yv = torch.from_numpy(np.searchsorted(classes, np.asarray(y_val)).astype(np.int64))

    net = TempCNN(arch)
    optimiser = torch.optim.AdamW(net.parameters(), lr=params.min_lr, weight_decay=params.weight_decay)
    # BatchNorm cannot normalise a batch of one; drop such a trailing batch.
    batches_per_epoch = max(1, len(x) // params.batch_size + (len(x) % params.batch_size > 1))
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimiser, base_lr=params.min_lr, max_lr=params.max_lr,
        step_size_up=max(1, batches_per_epoch * params.lr_cycle_epochs // 2),
        mode="triangular2", cycle_momentum=False,
    )
    loss_fn = nn.CrossEntropyLoss()

    history: list[dict] = []
    best_loss, best_epoch, best_state = math.inf, 0, None
    seen, train_seconds = 0, 0.0
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        net.train()
        order = torch.randperm(len(xt), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), params.batch_size):
            batch = order[start:start + params.batch_size]
            if len(batch) < 2:
                continue
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(net(xt[batch]), yt[batch])
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += loss.item() * len(batch)
            count += len(batch)
        seen += count
        train_seconds += time.perf_counter() - started
        entry: dict[str, Any] = {"epoch": epoch, "lr": round(scheduler.get_last_lr()[0], 8),
                                 "train_loss": round(total / max(count, 1), 6)}
        if has_val:
            net.eval()
            with torch.inference_mode():
                logits = net(xv)
                entry["val_loss"] = round(float(loss_fn(logits, yv)), 6)
                entry["val_accuracy"] = round(float((logits.argmax(1) == yv).float().mean()), 6)
        # The history is part of the saved model; timings stay out of it so re-runs give the same bytes.
        history.append(entry)
        log.info("%s epoch %d/%d: %s (%.1f s)", label, epoch, params.epochs,
                 ", ".join(f"{k} {v}" for k, v in entry.items() if k != "epoch"), time.perf_counter() - started)
        if not has_val:
            continue
        if entry["val_loss"] < best_loss:
            best_loss, best_epoch, best_state = entry["val_loss"], epoch, copy.deepcopy(net.state_dict())
        elif epoch - best_epoch >= params.patience_epochs:
            log.info("%s: early stop after epoch %d, best epoch %d (validation loss %.4f)",
                     label, epoch, best_epoch, best_loss)
            break

    if best_state is None:
        best_state, best_epoch = net.state_dict(), len(history)
    return TrainedModel(
        arch=arch, classes=classes, normaliser=normaliser,
        state={k: v.detach().clone() for k, v in best_state.items()},
        params=params, history=history, best_epoch=best_epoch,
        train_seconds=train_seconds, samples_seen=seen,
    )


def with_epochs(params: TrainParams, epochs: int) -> TrainParams:
    """Parameters for a fixed-length fit on all samples (no validation share, no early stop)."""
    return replace(params, epochs=epochs, validation_fraction=0.0)
