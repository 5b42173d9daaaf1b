"""Benchmark: the interannual calibration and the rule-based recoding of a production-size PU.

Targets (issue 13): within 8 GB of memory, with their throughput in pixels per second per core
printed, against a named baseline measured in the same run: a plain block-by-block copy of the
PU's blended probabilities (read and written with the same GeoTIFF profile, one pass), the
least any stage over those probabilities does.

    .venv/bin/python scripts/bench_calibration.py [--pu PU003] [--home .bench/calibration]

The PU (by default the one scripts/bench_pu.py takes: the first production PU with tiles in two
UTM zones) gets generated blended probabilities for 2021, 2023 and 2025 on its product grid
(``clcplus_ops.synthetic.probability_tiles``' field at 100 m repeated to 10 m, moved 30 m a year so
class boundaries change, plus "real changes" on 0.3 % of the 100 m cells each year) through a
stand-in of the blend stage; recoding sources are generated over the PU (buildings as a
GeoPackage in EPSG:4326, LPIS-like parcels with crop codes and a lookup table, expert AOIs),
with a rules file using all three. Then the real calibrate (against 2021 and 2023: the combined
prior) and recode stages run, each in a process of its own whose peak resident memory is read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clcplus_ops.classification import probabilities as probs_io  # noqa: E402
from clcplus_ops.config import load_config, parse_config  # noqa: E402
from clcplus_ops.estimate import DEFAULT_RATES  # noqa: E402
from clcplus_ops.geo.grid import Grid  # noqa: E402
from clcplus_ops.stage import Stage, StageIO, Target  # noqa: E402
from clcplus_ops.synthetic import probability_tiles  # noqa: E402

YEARS = (2021, 2023, 2025)
COARSE = 10  # generated at 100 m, repeated to 10 m
CHANGE_SHARE = 0.003


def _settings(home: Path) -> dict:
    return {"store": {n: (home / n).as_uri() for n in ("work", "models", "samples", "products")},
            "recoding": {"rules": str(home / "sources" / "rules.yaml")}}


def _generated(grid: Grid, year: int) -> np.ndarray:
    """Encoded probabilities of ``year`` on ``grid`` (a block of the PU grid)."""
    coarse = Grid(grid.epsg, grid.transform * Affine.scale(COARSE), -(-grid.height // COARSE), -(-grid.width // COARSE))
    x, y = probability_tiles.points_3035(coarse)
    p = probability_tiles.field(x + 30.0 * (year - YEARS[0]), y)
    cell = (np.floor(x / 100).astype(np.int64) * 73_856_093) ^ (np.floor(y / 100).astype(np.int64) * 19_349_663)
    rng = (cell * (year * 2_654_435_761) % 1_000_003) / 1_000_003.0
    changed = rng < CHANGE_SHARE * (year - YEARS[0]) / 2  # changes accumulate over the years
    target = (np.floor(x / 100).astype(np.int64) % 11)
    for k in range(11):
        at = changed & (target == k)
        p[:, at] = 0.01
        p[k, at] = 0.9
    encoded = probs_io.encode(p, np.ones(coarse.shape, bool))
    return np.repeat(np.repeat(encoded, COARSE, axis=1), COARSE, axis=2)[:, :grid.height, :grid.width]


def _blend_stand_in(io: StageIO) -> None:
    from clcplus_ops.postprocessing.mosaic import layout_units, product_grid

    grid = product_grid(io.config, layout_units(io.config, "production")[io.target.pu_id])
    with io.raster("probabilities", grid, 11, probs_io.DTYPE, probs_io.NODATA, "probabilities") as out:
        probs_io.describe(out, list(range(1, 12)), io.config.codes.classes)
        for _, _, block in grid.blocks(2048):
            out.write(_generated(block, io.target.reference_year), window=block.window_in(grid))


BLEND_STAND_IN = Stage(name="blend", scope="pu", outputs={"probabilities": "blend/probabilities.tif"},
                       params=lambda c, t, o: {"generated": "100m", "year": t.reference_year}, compute=_blend_stand_in)


def write_sources(folder: Path, grid: Grid, seed: int = 0) -> dict:
    """Recoding sources over ``grid``: buildings (EPSG:4326 GeoPackage), LPIS-like parcels
    (EPSG:3035) with a crop-code lookup, expert AOIs, and the rules file; their feature counts."""
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    x0, y0, x1, y1 = grid.bounds
    n_buildings, n_parcels = 300_000, 60_000
    bx, by = rng.uniform(x0, x1, n_buildings), rng.uniform(y0, y1, n_buildings)
    size = rng.uniform(10, 40, n_buildings)
    buildings = gpd.GeoDataFrame({"osm_id": [str(i) for i in range(n_buildings)], "code": 1500, "fclass": "building",
                                  "name": "", "type": ""},
                                 geometry=shapely.box(bx, by, bx + size, by + size), crs=grid.crs).to_crs(4326)
    buildings.to_file(folder / "buildings.gpkg", layer="buildings", driver="GPKG")
    px, py = rng.uniform(x0, x1, n_parcels), rng.uniform(y0, y1, n_parcels)
    w, h = rng.uniform(80, 300, n_parcels), rng.uniform(80, 300, n_parcels)
    codes = np.array(["PG01", "TG02", "WW10", "MA20", "SB30"])
    parcels = gpd.GeoDataFrame({"parcel_id": np.arange(n_parcels), "crop_code": codes[rng.integers(0, 5, n_parcels)]},
                               geometry=shapely.box(px, py, px + w, py + h), crs=grid.crs)
    parcels.to_file(folder / "gsaa.gpkg", layer="parcels", driver="GPKG")
    (folder / "crop_codes.csv").write_text("crop_code,clcplus_class,description\nPG01,6,permanent grassland\n"
                                           "TG02,6,temporary grassland\nWW10,7,winter wheat\nMA20,7,maize\n"
                                           "SB30,7,spring barley\n")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    review = gpd.GeoDataFrame({"name": ["review"]}, geometry=[shapely.box(cx - 50_000, cy - 50_000, cx + 50_000,
                                                                          cy + 50_000)], crs=grid.crs)
    review.to_file(folder / "review_area.gpkg", layer="review_area", driver="GPKG")
    ax, ay = rng.uniform(x0, x1, 200), rng.uniform(y0, y1, 200)
    aois = gpd.GeoDataFrame({"from_classes": ["6,7"] * 200, "to_class": 5, "comment": "shrubs mapped as grass"},
                            geometry=shapely.box(ax, ay, ax + 2_000, ay + 2_000), crs=grid.crs)
    aois.to_file(folder / "aois.gpkg", layer="aois", driver="GPKG")
    (folder / "rules.yaml").write_text("""version: 1
rules:
  - name: osm_buildings
    source: buildings.gpkg
    layer: buildings
    where: {fclass: [building]}
    to_class: 1
    from_classes: [2, 3, 4, 5, 6, 7, 8, 9]
  - name: lpis_grassland
    source: gsaa.gpkg
    layer: parcels
    to_class: {attribute: crop_code, lookup: crop_codes.csv, key: crop_code, value: clcplus_class}
    from_classes: [5, 6, 7]
    within: review_area.gpkg
  - name: expert_aois
    source: aois.gpkg
    layer: aois
    to_class: {attribute: to_class}
    from_classes: {attribute: from_classes}
""")
    return {"buildings": n_buildings, "parcels": n_parcels, "aois": len(aois)}


_STAGE_CHILD = """
import json, resource, sys, time
from clcplus_ops.config import parse_config
from clcplus_ops.pipeline import STAGES
from clcplus_ops.runner import run_stage
from clcplus_ops.stage import Target
settings, pu, name = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
config = parse_config(settings)
t0 = time.perf_counter()
summary = run_stage(STAGES[name], config, Target("production", 2025, pu), force=True)
seconds = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024,
                  "summary": {k: v for k, v in summary.items() if k not in ("outputs", "rules_file")}}))
"""

_BASELINE_CHILD = """
import json, resource, sys, time
import rasterio
from clcplus_ops.config import parse_config
from clcplus_ops.geo.grid import Grid
src_path, out_path = sys.argv[1], sys.argv[2]
config = parse_config({})
t0 = time.perf_counter()
with rasterio.open(src_path) as src:
    grid = Grid.of_dataset(src)
    profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": src.count, "dtype": "uint16",
               "nodata": 65535, "crs": grid.crs, "transform": grid.transform,
               **config.rasters.probabilities.creation_options()}
    with rasterio.open(out_path, "w", **profile) as dst:
        for _, _, block in grid.blocks(config.blending.block_px):
            window = block.window_in(grid)
            dst.write(src.read(window=window), window=window)
seconds = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pu", default=None)
    parser.add_argument("--home", type=Path, default=REPO / ".bench" / "calibration")
    parser.add_argument("--rates", type=Path, default=DEFAULT_RATES,
                        help="the rates file `clcplus estimate` reads (default %(default)s)")
    args = parser.parse_args()
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_pu import _child, choose_pu

    from clcplus_ops.estimate import Rate, record_rate
    from clcplus_ops.pipeline import STAGES
    from clcplus_ops.postprocessing.mosaic import layout_units, product_grid
    from clcplus_ops.runner import run_stage, stage_record

    settings = _settings(home)
    config = parse_config(settings)
    pu_id = args.pu or choose_pu(load_config())
    grid = product_grid(config, layout_units(config, "production")[pu_id])
    pixels = grid.width * grid.height
    print(f"PU {pu_id}: product grid {grid.width} x {grid.height} px = {pixels / 1e6:,.0f} Mpx (EPSG:{grid.epsg}, 10 m, "
          f"10 km buffer); {os.cpu_count()} cores", flush=True)
    started = time.perf_counter()
    for year in YEARS:
        run_stage(BLEND_STAND_IN, config, Target("production", year, pu_id))
    counts = write_sources(home / "sources", grid)
    print(f"inputs: generated blended probabilities {', '.join(map(str, YEARS))}; recoding sources {counts} "
          f"(ready in {time.perf_counter() - started:.0f} s)", flush=True)
    blended = stage_record(config, BLEND_STAND_IN, Target("production", 2025, pu_id))
    from clcplus_ops.locations import Locations

    source = Locations(config).resolve(blended.outputs["probabilities"])[len("file://"):]
    baseline = _child(_BASELINE_CHILD, source, str(home / "baseline_copy.tif"))
    # Per core: pixels over the process's CPU time (user + system), whatever threads it used.
    print(f"baseline: block copy of the blended probabilities (read + write, 11 bands): {baseline['seconds']:.1f} s, "
          f"{pixels / baseline['cpu_seconds'] / 1e6:.2f} Mpx/s per core, peak {baseline['max_rss_mb']:,.0f} MB",
          flush=True)
    peak = baseline["max_rss_mb"]
    cpu = seconds = written = files = 0
    for name in ("calibrate", "recode"):
        result = _child(_STAGE_CHILD, json.dumps(settings), pu_id, name)
        record = stage_record(config, STAGES[name], Target("production", 2025, pu_id))
        cpu, seconds = cpu + result["cpu_seconds"], seconds + result["seconds"]
        written, files = written + sum(f["size"] for f in record.files.values()), files + len(record.files)
        peak = max(peak, result["max_rss_mb"])
        ok = "OK" if result["max_rss_mb"] <= 8192 else "MISSED"
        print(f"{name}: {result['seconds']:.1f} s = {result['seconds'] / baseline['seconds']:.2f} x the block copy, "
              f"{pixels / result['cpu_seconds'] / 1e6:.2f} Mpx/s per core, peak {result['max_rss_mb']:,.0f} MB "
              f"({ok}: target <= 8 GB)  {result['summary']}", flush=True)
    print(f"peak memory of calibrate and recode: {peak:,.0f} MB ({'OK' if peak <= 8192 else 'MISSED'}: target <= 8 GB)")
    mpx = pixels / 1e6
    record_rate(Rate("calibrate+recode", cpu_seconds_per_mpx=cpu / mpx, bytes_per_mpx=written / mpx,
                     files_per_unit=files, inputs_per_unit=len(YEARS) + 3,
                     measured_by=f"scripts/bench_calibration.py --pu {pu_id}",
                     detail=f"{pu_id}: calibrate and recode over {mpx:,.0f} Mpx, {seconds:.0f} s, {cpu:.0f} CPU s"),
                args.rates)
    print(f"rate recorded in {args.rates} (clcplus estimate): calibrate+recode {cpu / mpx:.3f} CPU s/Mpx")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
