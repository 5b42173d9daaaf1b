"""Benchmark: one ingest tile task on the synthetic world, at two tile sizes.

Targets (issue "Sentinel-2 ingestion"):
* the valid-observation counts equal the generator's known counts exactly;
* the interpolated series equal the observations on the observation dates;
* the peak memory of one tile task stays bounded as the tile grows; the production tile
  (2500 x 2500 px, 25 km) fits in 8 GB.

For each size it builds a synthetic world covering the tile and its halo (once; reused), then
runs the ``ingest`` stage (after ``define_tile``, its input) through the stage runner in a fresh
process and reads that process's peak resident memory (getrusage of the child). Both tiles are
on the Slovenian coast (land and sea), in the production unit PU084.

    .venv/bin/python scripts/bench_ingest.py [--root /tmp/clcplus-bench] [--sizes 500 2500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.windows import from_bounds

from clcplus_ops.config import parse_config
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.locations import Locations
from clcplus_ops.sentinel2 import ingest, timeseries
from clcplus_ops.sentinel2.ingest import read_block
from clcplus_ops.sentinel2.scenes import StaticCatalogSource
from clcplus_ops.store import Store
from clcplus_ops.synthetic import build_world
from clcplus_ops.locations import static_catalog_template

YEAR = 2025
PU = "PU084"  # the production unit of these tiles (ids are checked against the layout)
# Tiles (size in px -> tile id at that tile size) around Piran/Izola, EPSG:32633.
TILES = {500: "33TUL_r11c17", 1250: "33TUL_r5c8", 2500: "33TUL_r2c3"}


def config_for(root: Path, size_px: int) -> tuple[Path, dict]:
    tile_m = size_px * 10
    tile = tile_from_id(TILES[size_px], tile_m)
    halo_m = 8 * 10
    xmin, ymin, xmax, ymax = tile.bounds
    synthetic = (root / f"world_{size_px}").as_uri()
    data = {
        "store": {name: (root / f"store_{size_px}" / name).as_uri() for name in ("work", "models", "samples", "products")},
        "grid": {"tile_size_m": tile_m, "halo_px": 8},
        "synthetic": {"root": synthetic, "bounds": [xmin - halo_m, ymin - halo_m, xmax + halo_m, ymax + halo_m],
                      "epsg": tile.epsg, "n_samples": 100},
        "sentinel2": {"static_catalog": static_catalog_template(synthetic)},
    }
    path = root / f"config_{size_px}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


# A small launcher measures the command: on Linux a child's ru_maxrss includes the RSS of the
# process that exec'd it, so the (large) benchmark process must not be that process.
_MEASURE = """
import json, os, subprocess, sys, time
t = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=sys.stderr)  # stdout carries the figures
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - t, "maxrss_kib": usage.ru_maxrss}))
"""


# The measured child: define_tile, then a forced ingest, through the stage runner.
_INGEST = """
import logging, sys
from clcplus_ops.config import load_config
from clcplus_ops.plan import DEFINE_TILE
from clcplus_ops.runner import run_stage
from clcplus_ops.sentinel2.ingest import INGEST
from clcplus_ops.stage import Target
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
config = load_config(sys.argv[1])
target = Target("production", int(sys.argv[3]), sys.argv[2], sys.argv[4])
run_stage(DEFINE_TILE, config, target)
print(run_stage(INGEST, config, target, force=True)["dates"], "dates", file=sys.stderr)
"""


def run_child(args: list[str]) -> tuple[float, float]:
    """Run a command; (wall seconds, peak RSS of that very process in GiB)."""
    launcher = subprocess.run([sys.executable, "-c", _MEASURE, *args], stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(launcher.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise subprocess.CalledProcessError(result["rc"], args)
    return result["wall"], result["maxrss_kib"] / 2**20


def check_exactness(config_data: dict, size_px: int) -> tuple[bool, bool, int]:
    config = parse_config(config_data)
    tile = tile_from_id(TILES[size_px], size_px * 10)
    place = Locations(config).tile_series(YEAR, tile.tile_id)
    grid = tile.grid(config.grid.halo_px)
    with rasterio.open(place.valid_obs[7:]) as ds:
        counts = ds.read(1)
    clear = build_world(config, YEAR)["clear_count_url"][7:]  # current: only reads world.json
    with rasterio.open(clear) as ds:
        truth = ds.read(1, window=from_bounds(*grid.bounds, transform=ds.transform))
    counts_equal = counts.shape == truth.shape and bool((counts == truth).all())

    # Observation dates: re-read the first block's observations with the stage's reader; the
    # interpolation evaluated on the observation dates must give them back, and the stored
    # steps must equal the NumPy reference interpolation of the same observations.
    source = StaticCatalogSource(config.sentinel2.static_catalog.format(year=YEAR), Store())
    scenes = [s for s in source.scenes() if s.cloud_cover < config.sentinel2.max_cloud_cover_percent]
    start = config.time_series.window(YEAR)[0]
    dates = ingest.group_by_date(scenes, start, tile.square_id)
    block = grid.block(0, 0, min(256, grid.height), min(256, grid.width))
    opened = ingest.OpenScenes([*config.sentinel2.bands, "SCL"], 0)
    for scene in {s.scene_id: s for d in dates for s in d.scenes}.values():
        opened.open(scene)
    obs, valid, days = read_block(block, dates, opened, config.sentinel2.bands, config.sentinel2.scl_masked_classes)
    opened.close()
    pairs = timeseries.index_band_positions(config.sentinel2.bands, config.sentinel2.indices)
    at_obs, _ = timeseries.interpolate(obs, valid, days, days, pairs)
    t, p = np.nonzero(valid)
    obs_equal = bool((at_obs[: obs.shape[1], t, p] == obs[t, :, p].T).all())
    steps = np.array([(d - start).days for d in config.time_series.steps(YEAR)], dtype=float)
    reference, _ = timeseries.interpolate_numpy(obs, valid, days, steps, pairs)
    stored_equal = True
    names = timeseries.feature_names(config.sentinel2.bands, config.sentinel2.indices)
    for f, name in enumerate(names):
        with rasterio.open(place.feature(name)[7:]) as ds:
            stored = ds.read(window=((0, block.height), (0, block.width))).reshape(len(steps), -1)
        stored_equal &= bool((stored == reference[f]).all())
    return counts_equal, obs_equal and stored_equal, len(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/clcplus-bench")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2500], choices=sorted(TILES))
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    clcplus = str(Path(sys.executable).with_name("clcplus"))
    rows = []
    for size in args.sizes:
        path, data = config_for(root, size)
        tile_id = TILES[size]
        print(f"== {size} x {size} px tile {tile_id}: building the synthetic world (reused when current)", flush=True)
        gen_wall, gen_peak = run_child([clcplus, "--config", str(path), "synthetic", "build", str(YEAR)])
        print(f"== ingest {tile_id} in a fresh process", flush=True)
        wall, peak = run_child([sys.executable, "-c", _INGEST, str(path), PU, str(YEAR), tile_id])
        counts_equal, obs_equal, checked = check_exactness(data, size)
        px = (size + 16) ** 2
        rows.append((size, tile_id, wall, peak, px / wall, counts_equal, obs_equal, checked))
        print(f"   world {gen_wall:.0f} s; ingest {wall:.1f} s, peak RSS {peak:.2f} GiB, {px / wall:,.0f} px/s end to end; "
              f"counts equal: {counts_equal}; series on the observation dates equal the {checked:,} observations of block 1 and stored steps equal the NumPy reference: {obs_equal}", flush=True)

    print("\nsize (px)  tile            ingest s  peak RSS GiB  px/s (e2e)  counts==generator  obs-date values==obs")
    for size, tile_id, wall, peak, rate, ce, oe, _ in rows:
        print(f"{size:>9}  {tile_id:<14} {wall:>9.1f} {peak:>13.2f} {rate:>11,.0f}  {str(ce):>17}  {str(oe):>20}")
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        print(f"tile area x{(large[0] / small[0]) ** 2:.0f} -> peak memory x{large[3] / small[3]:.2f} "
              f"(bounded by the {parse_config({}).time_series.block_px} px processing block)")
    big = [r for r in rows if r[0] == 2500]
    if big:
        print(f"production tile 2500 x 2500 px: peak {big[0][3]:.2f} GiB, target <= 8 GB: {'met' if big[0][3] * 1.0737 <= 8 else 'NOT MET'}")
    print(f"(cores: {os.cpu_count()}, interpolation kernel threads: numba default)")


if __name__ == "__main__":
    main()
