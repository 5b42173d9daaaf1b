"""The cost of a whole production, from per-stage rates measured on the machine at hand.

The benchmark scripts record what they measured (:func:`record_rate`) in a rates file (JSON,
by default ``.bench/rates.json``): for a stage, the CPU seconds (user + system, so all cores
count) and the bytes written per megapixel of the stage's own grid, the GPU rate where one was
measured, and where the figure came from (script, host, date, the run it timed). The estimate
(:func:`estimate`) scales them by the layout's counts:

* ``ingest``: the distinct 25 km tiles (a tile's time series are shared by the PUs covering it),
  tile plus halo pixels each;
* ``classify``, ``filter``: the PU-tiles (each PU classifies with its own model), the pixels of
  each in its PU's area plus buffer (``inference.pu_area_only``, see
  :mod:`clcplus_ops.classification.area`; the whole tile plus halo when off). The rates are per
  megapixel classified (the benchmarks classify whole tiles);
* PU stages (``mosaic``, ``blend``, ``calibrate``, ``recode``, ``layers``): the pixels of every
  PU's product grid (its area plus the PU buffer, bounding box);
* product stages (``product_tile``...): the 100 km product tiles, 10,000 x 10,000 px each.

Wall time: each stage's core-hours spread over ``cpu_workers x cores_per_worker`` cores (the
tile stages run thousands of independent tasks, so the pool stays full), classification on
``gpus`` GPUs at the measured GPU rate where there is one. S3 requests are modelled, not
measured: per stage run one PUT per output file (a multipart upload of a file over 8 MiB: its
8 MiB parts plus two), one PUT for the record, a HEAD and a GET per output to verify and to read
the record back, and one GET per input read the benchmark counted (the ingestion's window reads
of the scenes; a read per input file for the other stages).
"""

from __future__ import annotations

import json
import math
import platform
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_RATES = Path(".bench/rates.json")
MIB = 1 << 20
MULTIPART_BYTES = 8 * MIB  # boto3's multipart threshold and part size

# stage -> the benchmark that measures it (what one run is: Counts.units)
STAGES: dict[str, str] = {
    "ingest": "scripts/bench_ingest_speed.py --tiles 2500",
    "classify": "scripts/bench_inference.py",
    "filter": "scripts/bench_inference.py",
    "mosaic+blend+layers": "scripts/bench_pu.py",
    "calibrate+recode": "scripts/bench_calibration.py",
    "product_tile": "scripts/bench_product_cog.py",
}
TILE_STAGES = ("ingest", "classify", "filter")  # the target: <= 1,000 core-hours together


@dataclass(frozen=True)
class Rate:
    """What a benchmark measured for one stage, per megapixel of the stage's own grid."""

    stage: str
    cpu_seconds_per_mpx: float  # user + system CPU seconds (all cores)
    bytes_per_mpx: float  # written
    files_per_unit: int = 1  # output files of one stage run
    inputs_per_unit: int = 1  # input reads of one stage run
    gpu_mpx_per_second: float | None = None  # classification on a GPU (end to end)
    measured_by: str = ""  # the script and its arguments
    detail: str = ""  # what was timed (tile, size, seconds)
    host: str = field(default_factory=socket.gethostname)
    machine: str = field(default_factory=lambda: f"{platform.machine()}, {_cores()} cores")
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def describe(self) -> str:
        gpu = f", GPU {self.gpu_mpx_per_second:.1f} Mpx/s" if self.gpu_mpx_per_second else ""
        return (f"{self.cpu_seconds_per_mpx:.3f} CPU s/Mpx{gpu}, {self.bytes_per_mpx / MIB:.2f} MiB written/Mpx; "
                f"{self.measured_by} on {self.host} ({self.machine}) at {self.date}: {self.detail}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def read_rates(path: Path) -> dict[str, Rate]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    known = Rate.__dataclass_fields__  # a file an older version wrote may hold other fields
    return {name: Rate(**{k: v for k, v in entry.items() if k in known}) for name, entry in data.items()}


def record_rate(rate: Rate, path: Path = DEFAULT_RATES) -> None:
    """Write (replace) ``rate.stage``'s rate in the rates file, atomically."""
    if rate.stage not in STAGES:
        raise ValueError(f"no stage {rate.stage!r} in the cost model ({', '.join(STAGES)})")
    rates = read_rates(path)
    rates[rate.stage] = rate
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: asdict(v) for k, v in sorted(rates.items())}, indent=1) + "\n")
    tmp.replace(path)


@dataclass(frozen=True)
class Counts:
    """What a production of a layout processes."""

    pus: int
    pu_tiles: int
    distinct_tiles: int
    tile_mpx: float  # one tile plus halo
    classified_mpx: float  # of all PU-tiles, in their PU's classified area
    pu_grid_mpx: float  # all PUs' product grids
    product_tiles: int
    product_tile_mpx: float

    def units(self, stage: str) -> tuple[float, float]:
        """(stage runs, megapixels) of ``stage`` in one production."""
        if stage == "ingest":
            return self.distinct_tiles, self.distinct_tiles * self.tile_mpx
        if stage in ("classify", "filter"):
            return self.pu_tiles, self.classified_mpx
        if stage in ("mosaic+blend+layers", "calibrate+recode"):
            return self.pus, self.pu_grid_mpx
        if stage == "product_tile":
            return self.product_tiles, self.product_tiles * self.product_tile_mpx
        raise ValueError(f"no stage {stage!r} in the cost model")


def layout_counts(config, layout: str = "production") -> Counts:
    from clcplus_ops.geo.tile_index import tile_index
    from clcplus_ops.postprocessing.mosaic import layout_units, product_grid
    from clcplus_ops.products.tiling import tile_index as product_tile_index

    config = config.for_layout(layout)
    tiles = tile_index(config.layout_path(layout), config.grid)
    grid = config.grid
    side = grid.tile_size_m / grid.pixel_size_m + 2 * grid.halo_px
    grids = [product_grid(config, unit) for unit in layout_units(config, layout).values()]
    _, of_tile = product_tile_index(config, layout)
    return Counts(pus=len(tiles), pu_tiles=sum(len(t) for t in tiles.values()),
                  distinct_tiles=len({t for ids in tiles.values() for t in ids}), tile_mpx=side * side / 1e6,
                  classified_mpx=classified_mpx(config, layout, tiles),
                  pu_grid_mpx=sum(g.width * g.height for g in grids) / 1e6, product_tiles=len(of_tile),
                  product_tile_mpx=(100_000 / grid.pixel_size_m) ** 2 / 1e6)


def classified_mpx(config, layout: str, tiles: Mapping[str, list[str]]) -> float:
    """Megapixels the classify stage computes over all PU-tiles: each tile (plus halo) within
    its PU's buffered area (areas of the polygons, to the pixel), or whole tiles when
    ``inference.pu_area_only`` is off."""
    import shapely

    from clcplus_ops.classification import area
    from clcplus_ops.geo.tiles import tile_from_id

    grid = config.grid
    side = grid.tile_size_m / grid.pixel_size_m + 2 * grid.halo_px
    if not config.inference.pu_area_only:
        return sum(len(t) for t in tiles.values()) * side * side / 1e6
    total_m2 = 0.0
    for pu_id, tile_ids in tiles.items():
        by_zone: dict[int, list] = {}
        for tile_id in tile_ids:
            tile = tile_from_id(tile_id, grid.tile_size_m, grid.pixel_size_m)
            by_zone.setdefault(tile.epsg, []).append(shapely.box(*tile.grid(grid.halo_px).bounds))
        for epsg, boxes in by_zone.items():
            _, buffered = area.buffered(config, layout, pu_id, area.reach_m(config), epsg)
            shapely.prepare(buffered)
            total_m2 += float(shapely.area(shapely.intersection(boxes, buffered)).sum())
    return total_m2 / grid.pixel_size_m**2 / 1e6


@dataclass(frozen=True)
class StageCost:
    stage: str
    runs: float
    mpx: float
    rate: Rate | None
    core_hours: float | None
    gpu_hours: float | None
    written_tib: float | None
    puts: float | None
    gets: float | None


def _requests(rate: Rate, runs: float, mpx: float) -> tuple[float, float]:
    """(PUT, GET + HEAD) requests of ``runs`` runs writing ``mpx`` megapixels."""
    per_file = rate.bytes_per_mpx * (mpx / runs) / rate.files_per_unit
    parts = math.ceil(per_file / MULTIPART_BYTES) + 2 if per_file > MULTIPART_BYTES else 1
    puts = runs * (rate.files_per_unit * parts + 1)
    gets = runs * (2 * rate.files_per_unit + 1 + rate.inputs_per_unit)
    return puts, gets


def estimate(counts: Counts, rates: Mapping[str, Rate]) -> list[StageCost]:
    out = []
    for stage in STAGES:
        runs, mpx = counts.units(stage)
        rate = rates.get(stage)
        if rate is None:
            out.append(StageCost(stage, runs, mpx, None, None, None, None, None, None))
            continue
        puts, gets = _requests(rate, runs, mpx)
        gpu = mpx / rate.gpu_mpx_per_second / 3600 if rate.gpu_mpx_per_second else None
        out.append(StageCost(stage, runs, mpx, rate, rate.cpu_seconds_per_mpx * mpx / 3600, gpu,
                             rate.bytes_per_mpx * mpx / (1 << 40), puts, gets))
    return out


def wall_hours(costs: list[StageCost], cpu_workers: int, cores_per_worker: int, gpus: int) -> dict[str, float]:
    """Hours of each stage on the given workers (classification on the GPUs where there are
    GPUs and a measured GPU rate), and their sum (the stages of a production follow each
    other for the most part)."""
    cores = cpu_workers * cores_per_worker
    out = {}
    for cost in costs:
        if cost.core_hours is None:
            continue
        if cost.stage == "classify" and gpus and cost.gpu_hours is not None:
            out[cost.stage] = cost.gpu_hours / gpus
        else:
            out[cost.stage] = cost.core_hours / cores
    out["total"] = sum(out.values())
    return out
