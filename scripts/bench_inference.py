"""Inference figures of issue 5, measured in one run on this machine:

1. Rate of the fast inference paths against torch fp32 eager (``inference_mode``, the named
   baseline) on the same trained model (DEMO1's, trained on the synthetic world's samples) and
   the same input (the real time series of DEMO1's tiles): pixels/s, the ratio, GFLOP/s
   counted from TempCNN's FLOPs per pixel, and that rate as a share of the fp32 FLOP rate of a
   large matrix product measured in the same run. Each path's agreement with the baseline on
   every pixel (same top class, largest probability difference).
2. The CUDA path's Mpx/s when torch sees a GPU.
3. Peak memory of a classify task (the stage, in its own process) at two tile sizes, the larger
   a 25 km tile of 2500 x 2500 px plus halo. The time series of those tiles are the demo tiles'
   real ones repeated to the size (a synthetic world of 25 km would take hours to build here),
   written by a stand-in for the ingest stage (``REPEATED_INGEST``: same name and outputs, run
   by the stage runner, so its record is a real ingest record); the classify stage reads them
   as it reads any ingested tile.

    .venv/bin/python scripts/bench_inference.py [--home /tmp/clcplus-bench/inference] [--sizes 1000 2500]

Run it on an otherwise idle machine: torch's rate collapses when other processes share the cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from clcplus_ops import demo
from clcplus_ops.classification import inference
from clcplus_ops.classification.classify import CLASSIFY, load_model
from clcplus_ops.config import load_config
from clcplus_ops.embedded import write_embedded_config
from clcplus_ops.estimate import DEFAULT_RATES, Rate, record_rate
from clcplus_ops.locations import Locations
from clcplus_ops.plan import DEFINE_TILE, PLAN_TILES, planned_tiles
from clcplus_ops.postprocessing.filtering import FILTER
from clcplus_ops.runner import run_stage, stage_record, store_for
from clcplus_ops.sentinel2.ingest import INGEST
from clcplus_ops.stage import External, Stage, StageIO, Target
from clcplus_ops.synthetic import build_world

YEAR, PU = 2025, "DEMO1"


def best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up: allocator, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_gflops(n: int = 4096) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_of(lambda: a @ b, 5) / 1e9


def eager_rate(model, x: np.ndarray, batch: int) -> float:
    net = model.module()

    def run():
        with torch.inference_mode():
            for start in range(0, len(x), batch):
                torch.softmax(net(model.normaliser.apply(x[start:start + batch])), dim=1)

    return len(x) / best_of(run)


def read_tile(config, tile_id: str) -> np.ndarray:
    """The time series of an ingested tile's valid pixels (pixels, features, steps)."""
    place = Locations(config).tile_series(YEAR, tile_id)
    with rasterio.open(place.valid_obs.removeprefix("file://")) as ds:
        valid = ds.read(1) > 0
    features = store_for(config).read_json(place.provenance)["features"]
    stack = []
    for name in features:
        with rasterio.open(place.feature(name).removeprefix("file://")) as ds:
            stack.append(ds.read()[:, valid])
    return np.ascontiguousarray(np.stack(stack).transpose(2, 0, 1))


def prepare(home: Path, tiles: int):
    config_path = write_embedded_config(home, home / "config.yaml")
    config = load_config(config_path)
    world = build_world(config, YEAR)
    (chosen,) = demo.ensure_models(config, YEAR, [PU], [world["samples_csv_url"]])
    dconfig = config.for_layout("demo")
    store = store_for(dconfig)
    _, model = load_model(dconfig, PU, YEAR, chosen["version"], store)
    run_stage(PLAN_TILES, dconfig, Target("demo", YEAR, PU), store=store)
    tile_ids = planned_tiles(dconfig, "demo", PU, YEAR, store)[:tiles]
    for tile_id in tile_ids:
        for stage in (DEFINE_TILE, INGEST):
            run_stage(stage, dconfig, Target("demo", YEAR, PU, tile_id), store=store)
    xs = [read_tile(dconfig, tile_id) for tile_id in tile_ids]
    print(f"model {PU} {chosen['version']} ({'trained now' if chosen['trained'] else 'registered earlier'}; hold-out "
          f"OA {100 * chosen['overall_accuracy']:.1f} %); input: {sum(map(len, xs)):,} px of {len(xs)} ingested tiles")
    return config_path, dconfig, model, chosen["version"], np.concatenate(xs), tile_ids[0]


def rates(model, x: np.ndarray) -> None:
    print("\n== 1. Inference rate and agreement (CPU, torch threads: %d) ==" % torch.get_num_threads())
    # The engines keep freed activations in the heap (inference.reuse_freed_memory); the eager
    # baseline gets the same, or page faults would slow it and flatter the ratio.
    inference.reuse_freed_memory()
    flops = model.arch.flops_per_sample()
    peak = matmul_gflops()
    print(f"fp32 matrix product 4096 x 4096: {peak:.0f} GFLOP/s; TempCNN: {flops / 1e6:.2f} MFLOP per pixel")
    eager = {batch: eager_rate(model, x, batch) for batch in (256, 512, 1024, 4096)}
    base_batch = max(eager, key=eager.get)
    baseline = eager[base_batch]
    print("torch fp32 eager (inference_mode), px/s by batch: " + ", ".join(f"{b}: {r:,.0f}" for b, r in eager.items()))
    print(f"baseline = best eager batch ({base_batch}): {baseline:,.0f} px/s, {baseline * flops / 1e9:.0f} GFLOP/s")
    reference = model.predict_proba(x)
    precisions = ["fp32"] + (["bf16"] if inference.native_bf16("cpu") else [])
    if len(precisions) == 1:
        print("this CPU has no native bf16 (AMX / AVX512-BF16): only the folded fp32 path runs here")
    print(f"{'path':14s} {'batch':>6s} {'px/s':>10s} {'x eager':>8s} {'GFLOP/s':>8s} {'% of matmul':>12s} "
          f"{'top class':>10s} {'max |dp|':>9s}")
    for precision in precisions:
        best = None
        for batch in (512, 1024, 2048):
            engine = inference.create_engine(model, "cpu", precision, batch)
            rate = len(x) / best_of(lambda: engine.predict_proba(x))
            if best is None or rate > best[1]:
                best = (batch, rate, engine)
        batch, rate, engine = best
        agreement = inference.compare(reference, engine.predict_proba(x))
        gflops = rate * flops / 1e9
        print(f"{'folded ' + precision:14s} {batch:6d} {rate:10,.0f} {rate / baseline:8.2f} {gflops:8.0f} "
              f"{100 * gflops / peak:11.0f} % {100 * agreement.top_class_agreement:9.3f} % "
              f"{agreement.max_probability_difference:9.2e}")
    print("targets: >= 2.5 x eager; >= 70 % of the matmul rate; top class >= 99.9 %, max |dp| <= 0.01")


def cuda_rates(model, x: np.ndarray) -> float | None:
    """The best CUDA rate (Mpx/s, host to host) with the agreement check passing; None without a GPU."""
    print("\n== 2. CUDA ==")
    if not inference.cuda_available():
        print("torch sees no CUDA GPU on this machine: not measured")
        return None
    print(f"GPU: {torch.cuda.get_device_name()}")
    reference = model.predict_proba(x)
    best = None
    for precision in ("fp32", "bf16"):
        engine = inference.create_engine(model, "cuda", precision)
        seconds = best_of(lambda: (engine.predict_proba(x), torch.cuda.synchronize()))
        agreement = inference.compare(reference, engine.predict_proba(x))
        print(f"cuda {precision}: {len(x) / seconds / 1e6:.2f} Mpx/s (batch {engine.batch_px}, incl. host-device "
              f"copies); top class {100 * agreement.top_class_agreement:.3f} %, max |dp| "
              f"{agreement.max_probability_difference:.2e}")
        if agreement.top_class_agreement >= 0.999:
            best = max(best or 0.0, len(x) / seconds / 1e6)
    return best


def large_tile_config(config, size: int):
    """The demo configuration with tiles of ``size`` px (size x 10 m must divide 100 km) and its
    own work root (tile ids of different grids can coincide). The whole tile is classified
    (``inference.pu_area_only`` off: such a tile reaches far beyond DEMO1's buffer), so the rate
    recorded is per megapixel classified, as ``clcplus estimate`` counts it."""
    grid = config.demo.grid.model_copy(update={"tile_size_m": size * config.grid.pixel_size_m})
    store = config.store.model_copy(update={"work": f"{config.store.work}-tiles-{size}px"})
    inference = config.inference.model_copy(update={"pu_area_only": False})
    return config.model_copy(update={"demo": config.demo.model_copy(update={"grid": grid}), "store": store,
                                     "inference": inference})


def _repeat_prepare(ctx) -> External:
    """The source: a demo tile ingested under the demo configuration's own work root."""
    source_config = ctx.config.model_copy(update={"store": ctx.config.store.model_copy(
        update={"work": ctx.config.store.work.removesuffix(f"-tiles-{ctx.options['size']}px")})})
    source = Target("demo", YEAR, PU, ctx.options["source_tile"])
    record = stage_record(source_config, INGEST, source, ctx.store)
    if record is None:
        raise RuntimeError(f"the source tile {source.tile_id} has no ingest record")
    urls = {name: Locations(source_config).resolve(loc) for name, loc in record.outputs.items()}
    return External(identity={"source": source.to_dict(), "fingerprint": record.fingerprint}, value=urls)


def _repeat_compute(io: StageIO) -> dict:
    """The source tile's time series repeated over this tile (plus halo), block by block."""
    sources, grid = io.external, io.tile.grid(io.config.grid.halo_px)
    provenance = json.loads(Path(sources["provenance"].removeprefix("file://")).read_text())
    for name in [*provenance["features"], "valid_obs"]:
        with rasterio.open(sources[name].removeprefix("file://")) as src:
            data, descriptions, nodata = src.read(), src.descriptions, src.nodata
        rows, cols = data.shape[1:]
        with io.raster(name, grid, data.shape[0], str(data.dtype), nodata, "features") as out:
            out.descriptions = descriptions
            for row, col, block in grid.blocks(256):
                r = (row + np.arange(block.height)) % rows
                c = (col + np.arange(block.width)) % cols
                out.write(data[:, r[:, None], c[None, :]], window=block.window_in(grid))
    io.write_json("provenance", {**provenance, "tile": io.tile.to_dict(),
                                 "grid": {**grid.to_dict(), "halo_px": io.config.grid.halo_px},
                                 "bench": f"time series repeated from tile {io.options['source_tile']}"})
    return {"bench": "time series repeated from a demo tile"}


# A stand-in for the ingest stage: same name and outputs, run by the runner (its record is the
# one classify reads), the scenes replaced by a demo tile's series.
REPEATED_INGEST = Stage(name=INGEST.name, scope=INGEST.scope, outputs=INGEST.outputs, prepare=_repeat_prepare,
                        compute=_repeat_compute, options=("source_tile", "size"))


def classify_child(config_path: str, size: int, version: str, stage: str = "classify") -> None:
    """Runs in its own process: classify (or filter) the large tile, print seconds, CPU seconds
    and peak memory."""
    from clcplus_ops.geo.tiles import tile_id

    config = large_tile_config(load_config(config_path), size)
    target = Target("demo", YEAR, PU, tile_id("33TUL", 0, 0, size * config.grid.pixel_size_m))
    started = time.perf_counter()
    if stage == "filter":
        result = run_stage(FILTER, config, target, force=True)
    else:
        result = run_stage(CLASSIFY, config, target, force=True, options={"model_version": version})
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # VmHWM: this process's peak resident memory since exec (ru_maxrss would include the parent's).
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024, "cpu": usage.ru_utime + usage.ru_stime,
                      **result}))


def memory(config_path: Path, config, source_tile: str, sizes: list[int], version: str) -> dict:
    """Peak memory and time of a classify task per tile size; returns the largest tile's figures."""
    print("\n== 3. Peak memory of a classify task (own process, VmHWM) ==")
    from clcplus_ops.geo.tiles import tile_id

    base = load_config(config_path)
    for size in sizes:
        large = large_tile_config(base, size)
        target = Target("demo", YEAR, PU, tile_id("33TUL", 0, 0, size * config.grid.pixel_size_m))
        started = time.perf_counter()
        run_stage(REPEATED_INGEST, large, target, options={"source_tile": source_tile, "size": size})
        written = time.perf_counter() - started
        out = subprocess.run([sys.executable, __file__, "--classify-child", str(size), "--home", str(config_path.parent),
                              "--version", version], check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        px = (size + 2 * config.grid.halo_px) ** 2
        record = stage_record(large, CLASSIFY, target)
        print(f"tile {size} x {size} px (+ halo: {px:,} px; input written in {written:.0f} s): peak "
              f"{result['peak_mb']:,.0f} MB, {result['seconds']:.0f} s ({px / result['seconds']:,.0f} px/s overall; "
              f"read {record.details['read_s']:.0f} s, classify {record.details['compute_s']:.0f} s, write "
              f"{record.details['write_s']:.0f} s; {record.details['engine']['precision']})")
        filtered = json.loads(subprocess.run(
            [sys.executable, __file__, "--classify-child", str(size), "--stage", "filter", "--home",
             str(config_path.parent), "--version", version], check=True, capture_output=True, text=True
        ).stdout.strip().splitlines()[-1])
        filter_record = stage_record(large, FILTER, target)
        print(f"  filter of that tile (the stage, own process): {filtered['seconds']:.1f} s, "
              f"{filtered['cpu']:.1f} CPU s, peak {filtered['peak_mb']:,.0f} MB")
        written_bytes = sum(f["size"] for f in record.files.values())
        largest = {"size": size, "px": px, "cpu": result["cpu"], "seconds": result["seconds"], "bytes": written_bytes,
                   "files": len(record.files), "inputs": len(stage_record(large, INGEST, target).outputs),
                   "engine": record.details["engine"]["precision"],
                   "filter": {"cpu": filtered["cpu"], "seconds": filtered["seconds"],
                              "bytes": sum(f["size"] for f in filter_record.files.values()),
                              "files": len(filter_record.files)}}
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default="/tmp/clcplus-bench/inference")
    parser.add_argument("--tiles", type=int, default=4, help="demo tiles whose pixels form the input")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2500], help="tile sizes (px) for the memory figure")
    parser.add_argument("--rates", type=Path, default=DEFAULT_RATES,
                        help="the rates file `clcplus estimate` reads (default %(default)s)")
    parser.add_argument("--classify-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", help=argparse.SUPPRESS)
    parser.add_argument("--stage", default="classify", help=argparse.SUPPRESS)
    args = parser.parse_args()
    home = Path(args.home)
    if args.classify_child:
        classify_child(str(home / "config.yaml"), args.classify_child, args.version, args.stage)
        return
    config_path, config, model, version, x, source_tile = prepare(home, args.tiles)
    rates(model, x)
    gpu = cuda_rates(model, x)
    tile = memory(config_path, config, source_tile, args.sizes, version)
    mpx = tile["px"] / 1e6
    record_rate(Rate("classify", cpu_seconds_per_mpx=tile["cpu"] / mpx, bytes_per_mpx=tile["bytes"] / mpx,
                     files_per_unit=tile["files"], inputs_per_unit=tile["inputs"], gpu_mpx_per_second=gpu,
                     measured_by="scripts/bench_inference.py",
                     detail=f"the classify stage on a {tile['size']} px tile plus halo ({tile['engine']}): "
                            f"{tile['seconds']:.1f} s, {tile['cpu']:.1f} CPU s"
                            + (f"; GPU {gpu:.2f} Mpx/s host to host" if gpu else "; no GPU")), args.rates)
    filtered = tile["filter"]
    record_rate(Rate("filter", cpu_seconds_per_mpx=filtered["cpu"] / mpx, bytes_per_mpx=filtered["bytes"] / mpx,
                     files_per_unit=filtered["files"], inputs_per_unit=1, measured_by="scripts/bench_inference.py",
                     detail=f"the filter stage on the classified {tile['size']} px tile plus halo: "
                            f"{filtered['seconds']:.1f} s, {filtered['cpu']:.1f} CPU s"), args.rates)
    print(f"\nrates recorded in {args.rates} (clcplus estimate): classify {tile['cpu'] / mpx:.2f}, filter "
          f"{filtered['cpu'] / mpx:.2f} CPU s/Mpx")


if __name__ == "__main__":
    main()
