"""Benchmark: a production-size PU's stages on the product grid (mosaic + blend + layers)
against a plain GDAL warp of the same inputs.

Targets (issue 12): within 8 GB of memory, and at most 1.5x the time of rasterio ``reproject``
of the same tiles onto the same grid with the same resampling (bilinear, 11 bands, written with
the same GeoTIFF profile), measured in the same run.

    .venv/bin/python scripts/bench_pu.py [--pu PU0xx] [--home .bench/pu]

The PU (by default the first of the production layout whose tiles lie in two UTM zones) gets
generated filtered probabilities and counts on its 25 km tiles (a smooth field on the ground,
``clcplus_ops.synthetic.probability_tiles``, sampled at 100 m and repeated to 10 m; written once
and reused) through stand-ins of the tile stages, and its neighbours generated mosaics over the
overlap; then the real plan, join, mosaic, blend and layers stages run, each in a process of its
own whose peak resident memory is read (calibrate and recode, which layers reads, run between
blend and layers without previous productions or rules, untimed). Their CPU seconds and bytes
written per megapixel of the PU's product grid are recorded for ``clcplus estimate``
(``--rates``); ``--no-baseline`` skips the warp. The baseline warps each UTM zone's tiles (a VRT of
their cores) into one output with rasterio's ``reproject``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
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

YEAR = 2025
COARSE = 10  # generated at 100 m, repeated to 10 m


def _generated(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    coarse = Grid(grid.epsg, grid.transform * Affine.scale(COARSE),
                  -(-grid.height // COARSE), -(-grid.width // COARSE))
    p, counts = probability_tiles.tile_arrays(coarse)
    p = np.repeat(np.repeat(p, COARSE, axis=1), COARSE, axis=2)[:, :grid.height, :grid.width]
    counts = np.repeat(np.repeat(counts, COARSE, axis=0), COARSE, axis=1)[:grid.height, :grid.width]
    return p, counts


def _tile_output(io: StageIO, name: str) -> None:
    from clcplus_ops.postprocessing.bilateral import BilateralParams

    grid = io.tile.grid(io.config.grid.halo_px - BilateralParams.from_config(io.config.bilateral).extent)
    p, counts = _generated(grid)
    if name == "filtered":
        with io.raster(name, grid, 11, probs_io.DTYPE, probs_io.NODATA, "probabilities") as out:
            probs_io.describe(out, list(range(1, 12)), io.config.codes.classes)
            out.write(p)
    else:
        with io.raster(name, grid, 1, "uint16", None) as out:
            out.write(counts[None])


def _neighbour_mosaic(io: StageIO, for_pu: str) -> None:
    """A neighbour's mosaic with values where it overlaps the benchmarked PU (the blend reads no
    more of it), no data elsewhere."""
    from clcplus_ops.geo.eea_grid import pu_grid
    from clcplus_ops.geo.layout import load_layout

    units = load_layout(io.config.layout_path("production"))
    grid = pu_grid(units[io.target.pu_id], 10, io.config.grid.pu_buffer_m)
    overlap = grid.intersection(pu_grid(units[for_pu], 10, io.config.grid.pu_buffer_m))
    with io.raster("probabilities", grid, 11, probs_io.DTYPE, probs_io.NODATA, "probabilities") as out_p, \
            io.raster("valid_obs", grid, 1, "uint16", 65535, "probabilities") as out_c:
        probs_io.describe(out_p, list(range(1, 12)), io.config.codes.classes)
        if overlap is not None:
            for _, _, block in overlap.blocks(2048):
                p, counts = _generated(block)
                out_p.write(p, window=block.window_in(grid))
                out_c.write(counts[None], window=block.window_in(grid))


STAND_INS = probability_tiles.stand_in_tile_stages(_tile_output)


def _config(home: Path):
    return parse_config({"store": {name: (home / name).as_uri() for name in ("work", "models", "samples", "products")}})


def choose_pu(config) -> str:
    from clcplus_ops.geo.tile_index import tile_index

    tiles = tile_index(config.layout_path("production"), config.grid)
    for pu_id, ids in sorted(tiles.items()):
        if len({t[:2] for t in ids}) == 2 and pu_id.startswith("PU") and len(ids) >= 100:
            return pu_id
    raise SystemExit("no production PU with tiles in two UTM zones")


def prepare(home: Path, pu_id: str) -> dict:
    """Tiles and neighbour mosaics (generated once per home), plan and join."""
    from clcplus_ops.pipeline import DEFINE_TILE, JOIN_TILES, PLAN_TILES
    from clcplus_ops.postprocessing.blending import neighbours
    from clcplus_ops.runner import run_stage

    config = _config(home)
    target = Target("production", YEAR, pu_id)
    plan = run_stage(PLAN_TILES, config, target)
    from clcplus_ops.runner import store_for

    tile_ids = [t["tile_id"] for t in store_for(config).read_json(plan["outputs"]["plan"])["tiles"]]
    started = time.perf_counter()
    for i, tile_id in enumerate(tile_ids, 1):
        tile_target = Target("production", YEAR, pu_id, tile_id)
        run_stage(DEFINE_TILE, config, tile_target)
        for stage in STAND_INS:
            run_stage(stage, config, tile_target)
        if i % 20 == 0:
            print(f"  tiles {i}/{len(tile_ids)} ({time.perf_counter() - started:.0f} s)", flush=True)
    run_stage(JOIN_TILES, config, target)
    found = neighbours(config, "production", pu_id)

    stand_in = Stage(name="mosaic", scope="pu", outputs={"probabilities": "mosaic/probabilities.tif",
                                                           "valid_obs": "mosaic/valid_obs.tif"},
                     params=lambda c, t, o: {"for": pu_id, "generated": "100m"}, compute=lambda io: _neighbour_mosaic(io, pu_id))
    for n in found:
        run_stage(stand_in, config, Target("production", YEAR, n))
    return {"tiles": tile_ids, "neighbours": found}


_STAGE_CHILD = """
import json, resource, sys, time
from clcplus_ops.config import parse_config
from clcplus_ops.pipeline import STAGES
from clcplus_ops.runner import run_stage
from clcplus_ops.stage import Target
home, pu, name = sys.argv[1], sys.argv[2], sys.argv[3]
config = parse_config({"store": {n: f"file://{home}/{n}" for n in ("work", "models", "samples", "products")}})
t0 = time.perf_counter()
summary = run_stage(STAGES[name], config, Target("production", 2025, pu), force=True)
seconds = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024,
                  "summary": {k: v for k, v in summary.items() if k != "outputs"}}))
"""

_BASELINE_CHILD = """
import json, resource, sys, time
import rasterio
from rasterio.warp import Resampling, reproject
from clcplus_ops.config import parse_config
from clcplus_ops.geo.eea_grid import pu_grid
from clcplus_ops.geo.layout import load_layout
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.locations import Locations
home, pu, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
config = parse_config({"store": {n: f"file://{home}/{n}" for n in ("work", "models", "samples", "products")}})
locations = Locations(config.for_layout("production"))
grid = pu_grid(load_layout(config.layout_path("production"))[pu], 10, 10_000)
tiles = json.load(open(locations.pu(2025, pu).tiles_done[len("file://"):]))["tiles"]
by_zone = {}
for t in tiles:
    by_zone.setdefault(tile_from_id(t, 25_000).epsg, []).append(t)

def vrt(epsg, ids):
    # A VRT mosaic of the zone's tile cores (what gdalbuildvrt makes), 11 bands, nodata 65535.
    cores = [tile_from_id(t, 25_000).grid(0) for t in ids]
    x0 = min(c.bounds[0] for c in cores); y1 = max(c.bounds[3] for c in cores)
    x1 = max(c.bounds[2] for c in cores); y0 = min(c.bounds[1] for c in cores)
    w, h = int((x1 - x0) / 10), int((y1 - y0) / 10)
    bands = []
    for b in range(1, 12):
        sources = []
        for t, core in zip(ids, cores):
            path = locations.tile(2025, pu, t).filtered[len("file://"):]
            with rasterio.open(path) as ds:
                off_x = int((core.bounds[0] - ds.transform.c) / 10); off_y = int((ds.transform.f - core.bounds[3]) / 10)
            dx, dy = int((core.bounds[0] - x0) / 10), int((y1 - core.bounds[3]) / 10)
            sources.append(f'<SimpleSource><SourceFilename relativeToVRT="0">{path}</SourceFilename><SourceBand>{b}</SourceBand>'
                           f'<SrcRect xOff="{off_x}" yOff="{off_y}" xSize="{core.width}" ySize="{core.height}"/>'
                           f'<DstRect xOff="{dx}" yOff="{dy}" xSize="{core.width}" ySize="{core.height}"/></SimpleSource>')
        bands.append(f'<VRTRasterBand dataType="UInt16" band="{b}"><NoDataValue>65535</NoDataValue>{"".join(sources)}</VRTRasterBand>')
    return (f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>EPSG:{epsg}</SRS>'
            f'<GeoTransform>{x0}, 10, 0, {y1}, 0, -10</GeoTransform>{"".join(bands)}</VRTDataset>')

t0 = time.perf_counter()
profile = {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 11, "dtype": "uint16", "nodata": 65535,
           "crs": grid.crs, "transform": grid.transform, **config.rasters.probabilities.creation_options()}
with rasterio.open(out_path, "w", **profile) as dst:
    for i, (epsg, ids) in enumerate(sorted(by_zone.items())):
        with rasterio.open(vrt(epsg, ids)) as src:
            reproject(rasterio.band(src, list(range(1, 12))), rasterio.band(dst, list(range(1, 12))),
                      resampling=Resampling.bilinear, src_nodata=65535, dst_nodata=65535, init_dest_nodata=(i == 0))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "zones": sorted(by_zone)}))
"""


def _child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"child failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pu", default=None)
    parser.add_argument("--home", type=Path, default=REPO / ".bench" / "pu")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain warp (the rate only)")
    parser.add_argument("--rates", type=Path, default=DEFAULT_RATES,
                        help="the rates file `clcplus estimate` reads (default %(default)s)")
    args = parser.parse_args()
    home = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    pu_id = args.pu or choose_pu(load_config())
    from clcplus_ops.geo.eea_grid import pu_grid
    from clcplus_ops.geo.layout import load_layout

    grid = pu_grid(load_layout(_config(home).layout_path("production"))[pu_id], 10, 10_000)
    print(f"PU {pu_id}: product grid {grid.width} x {grid.height} px (EPSG:{grid.epsg}, 10 m, 10 km buffer)", flush=True)
    started = time.perf_counter()
    inputs = prepare(home, pu_id)
    print(f"inputs: {len(inputs['tiles'])} generated tiles, neighbours {', '.join(inputs['neighbours'])} "
          f"(ready in {time.perf_counter() - started:.0f} s)", flush=True)

    baseline = None
    if not args.no_baseline:
        baseline = _child(_BASELINE_CHILD, str(home), pu_id, str(home / "baseline_warp.tif"))
        print(f"baseline rasterio reproject (zones {baseline['zones']}, bilinear, 11 bands): {baseline['seconds']:.1f} s, "
              f"peak {baseline['max_rss_mb']:,.0f} MB", flush=True)
    ours = {}
    for name in ("mosaic", "blend", "calibrate", "recode", "layers"):
        result = _child(_STAGE_CHILD, str(home), pu_id, name)
        # layers reads the calibrated and recoded probabilities: those stages run (without
        # previous productions or rules: a pass) but are not timed here (bench_calibration.py).
        timed = name not in ("calibrate", "recode")
        if timed:
            ours[name] = result
        print(f"{name}{'' if timed else ' (input of layers, not timed)'}: {result['seconds']:.1f} s, "
              f"peak {result['max_rss_mb']:,.0f} MB  {result['summary']}", flush=True)
    total = sum(r["seconds"] for r in ours.values())
    peak = max(r["max_rss_mb"] for r in ours.values())
    if baseline:
        ratio = total / baseline["seconds"]
        print(f"mosaic + blend + layers: {total:.1f} s = {ratio:.2f} x the plain warp ({'OK' if ratio <= 1.5 else 'MISSED'}: "
              f"target <= 1.5); peak memory {peak:,.0f} MB ({'OK' if peak <= 8192 else 'MISSED'}: target <= 8 GB)")
    record_pu_rate(home, pu_id, grid, ours, len(inputs["tiles"]), len(inputs["neighbours"]), args.rates)
    return 0


def record_pu_rate(home: Path, pu_id: str, grid: Grid, ours: dict, tiles: int, neighbours: int, rates: Path) -> None:
    """The three stages' CPU seconds and bytes written per megapixel of the PU's product grid,
    for ``clcplus estimate``."""
    from clcplus_ops.estimate import Rate, record_rate
    from clcplus_ops.pipeline import STAGES
    from clcplus_ops.runner import stage_record

    config, target = _config(home), Target("production", YEAR, pu_id)
    records = [stage_record(config, STAGES[name], target) for name in ours]
    mpx = grid.width * grid.height / 1e6
    cpu = sum(r["cpu_seconds"] for r in ours.values())
    written = sum(f["size"] for record in records for f in record.files.values())
    record_rate(Rate("mosaic+blend+layers", cpu_seconds_per_mpx=cpu / mpx, bytes_per_mpx=written / mpx,
                     files_per_unit=sum(len(record.files) for record in records),
                     inputs_per_unit=2 * tiles + 2 * neighbours,
                     measured_by=f"scripts/bench_pu.py --pu {pu_id}",
                     detail=f"{pu_id}: {len(ours)} stages over {mpx:,.0f} Mpx, "
                            f"{sum(r['seconds'] for r in ours.values()):.0f} s, {cpu:.0f} CPU s"), rates)
    print(f"rate recorded in {rates} (clcplus estimate): mosaic+blend+layers {cpu / mpx:.3f} CPU s/Mpx")


if __name__ == "__main__":
    raise SystemExit(main())
