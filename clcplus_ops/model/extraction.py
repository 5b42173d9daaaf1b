"""Time series at sample points (ATBD 3.1.5 a): the 12 features x 54 steps of single 10 m
pixels, computed with the ingestion code, reading only the windows around the samples.

A tile's series file holds every active sample of the DB inside the tile, whichever PU asked,
so PUs sharing a tile share its file. A PU takes each of its samples from one of its tiles
(the point's own UTM zone first, then by tile id). Within the tile, samples are grouped in cells of
``time_series.block_px``; for each cell and scene asset one window (the cell's samples'
bounding box) is read and only the sample pixels are kept. Scenes, compositing order, cloud
mask and interpolation are the ingestion's, so a sample's series equals the ingested tile's
features at that pixel.

The stage :data:`EXTRACT_TILE_SAMPLES` (``extract_samples``, scope ``sample_tile``) writes
``series.parquet`` in ``Locations.sample_series(year, tile)`` with sample_id, tile_id, row, col
(in the tile grid with halo), valid_obs and series (features x steps int16, x 10 000, the
ingestion's encoding). Run it as::

    run_stage(EXTRACT_TILE_SAMPLES, config, Target(layout, year, None, tile_id),
              options={"samples": {"sample_ids": [...], "lon": [...], "lat": [...]}})

``samples`` (lists, so the option is JSON) are the points to extract, all inside the tile;
their hash (ids and projected coordinates, in sample-id order) enters the fingerprint, so the
same samples in another order skip and another set recomputes. Give ``pu_id=None`` so that
PUs sharing a tile share its run (a PU id in the target enters the fingerprint). The option
``scene_source`` (a SceneSource object) replaces the configured scene source, as for ingest.
The summary's ``outputs["series"]`` is the file's URL; read it with :func:`read_series`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyproj import Transformer

from clcplus_ops.config import Config
from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.geo.tiles import ProcessingTile, home_epsg
from clcplus_ops.sentinel2 import timeseries
from clcplus_ops.sentinel2.ingest import (
    AcquisitionDate, NoScenesError, OpenScenes, SceneAccess, compute_with_scenes, find_tile_scenes, prepare_scenes,
    read_block, series_params,
)
from clcplus_ops.stage import External, Stage, StageIO
from clcplus_ops.store import Store

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Which tile, which pixel


def assign_tiles(tiles: Sequence[ProcessingTile], lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Index into ``tiles`` of the tile whose series a PU uses for each point, -1 where no tile
    holds it. Tiles of neighbouring UTM zones overlap; the point's own zone wins, then the
    lowest tile id."""
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    chosen = np.full(len(lon), -1, np.int64)
    home = np.array([home_epsg(a, b) for a, b in zip(lon, lat)], np.int64)
    order = sorted(range(len(tiles)), key=lambda i: tiles[i].tile_id)
    for own_zone_pass in (True, False):
        for i in order:
            inside = in_tile(tiles[i], lon, lat) & (chosen < 0)
            if own_zone_pass:
                inside &= home == tiles[i].epsg
            chosen[inside] = i
    return chosen


def in_tile(tile: ProcessingTile, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Whether each lon/lat point lies in the tile (its core, without halo)."""
    x, y = Transformer.from_crs(4326, tile.epsg, always_xy=True).transform(np.asarray(lon), np.asarray(lat))
    xmin, ymin, xmax, ymax = tile.bounds
    return (x >= xmin) & (x < xmax) & (y > ymin) & (y <= ymax)


def pixels_inside(grid: Grid, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the grid pixel containing each point; ValueError if one lies outside."""
    rows, cols = grid.pixel_of(x, y)
    outside = (rows < 0) | (rows >= grid.height) | (cols < 0) | (cols >= grid.width)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} sample point(s) lie outside the tile grid")
    return rows, cols


@dataclass(frozen=True)
class Cell:
    """Samples of one cell: the window holding them and their flat pixel index in it."""

    window: Grid
    members: np.ndarray  # positions in the tile's sample arrays
    pixels: np.ndarray   # flat indices into ``window``


def cells(grid: Grid, rows: np.ndarray, cols: np.ndarray, cell_px: int) -> list[Cell]:
    """Group samples by cell; each cell's window is the bounding box of its samples."""
    keys = (rows // cell_px) * (grid.width // cell_px + 1) + cols // cell_px
    out = []
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        r0, c0 = rows[members].min(), cols[members].min()
        h, w = rows[members].max() - r0 + 1, cols[members].max() - c0 + 1
        out.append(Cell(grid.block(int(r0), int(c0), int(h), int(w)), members,
                        (rows[members] - r0) * w + (cols[members] - c0)))
    return out


# --------------------------------------------------------------------------------------------
# Reading and computing


def series_at_samples(
    config: Config, grid: Grid, sample_cells: Sequence[Cell], n_samples: int, dates: Sequence[AcquisitionDate],
    opened: OpenScenes, step_days: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(series int16 (samples, features, steps), valid_obs uint16 (samples,)) for the tile's samples."""
    s2 = config.sentinel2
    pairs = timeseries.index_band_positions(s2.bands, s2.indices)
    n_features = len(s2.bands) + len(s2.indices)
    series = np.full((n_samples, n_features, len(step_days)), timeseries.NODATA, np.int16)
    valid_obs = np.zeros(n_samples, np.uint16)
    for cell in sample_cells:
        obs, valid, days = read_block(cell.window, dates, opened, s2.bands, s2.scl_masked_classes, pixels=cell.pixels)
        features, counts = timeseries.interpolate(obs, valid, days, step_days, pairs)
        series[cell.members] = features.transpose(2, 0, 1)
        valid_obs[cell.members] = counts
    return series, valid_obs


def _samples_hash(sample_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    for sid, a, b in zip(sample_ids, np.round(x, 3), np.round(y, 3)):
        digest.update(f"{sid},{a:.3f},{b:.3f}\n".encode())
    return digest.hexdigest()


def _write_series(path, sample_ids, rows, cols, valid_obs, series, tile_id: str) -> None:
    n, f, st = series.shape
    table = pa.table({
        "sample_id": pa.array(list(sample_ids), pa.string()),
        "tile_id": pa.array([tile_id] * n, pa.string()),
        "row": pa.array(rows, pa.int32()),
        "col": pa.array(cols, pa.int32()),
        "valid_obs": pa.array(valid_obs, pa.uint16()),
        "series": pa.FixedSizeListArray.from_arrays(pa.array(series.reshape(-1), pa.int16()), f * st),
    }, metadata={b"clcplus:series_shape": f"{f},{st}".encode()})
    pq.write_table(table, path, compression="zstd")


@dataclass
class SampleSeries:
    sample_ids: list[str]
    series: np.ndarray     # int16 (samples, features, steps), x 10 000, NODATA where never observed
    valid_obs: np.ndarray  # uint16 (samples,)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, sample_ids: Sequence[str]) -> SampleSeries:
        """These samples only, in the given order; KeyError naming any the file lacks."""
        position = {sid: i for i, sid in enumerate(self.sample_ids)}
        missing = [sid for sid in sample_ids if sid not in position]
        if missing:
            raise KeyError(f"{len(missing)} sample(s) have no extracted series here, e.g. {missing[:5]}")
        index = np.array([position[sid] for sid in sample_ids], np.int64)
        return SampleSeries(list(sample_ids), self.series[index], self.valid_obs[index])

    @classmethod
    def concat(cls, parts: Sequence[SampleSeries]) -> SampleSeries:
        if not parts:
            return cls([], np.zeros((0, 0, 0), np.int16), np.zeros(0, np.uint16))
        return cls([i for p in parts for i in p.sample_ids], np.concatenate([p.series for p in parts]),
                   np.concatenate([p.valid_obs for p in parts]))


def read_series(store: Store, url: str) -> SampleSeries:
    with store.local_read(url) as path:
        table = pq.read_table(path)
    f, s = (int(v) for v in table.schema.metadata[b"clcplus:series_shape"].decode().split(","))
    flat = table.column("series").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return SampleSeries(
        sample_ids=table.column("sample_id").to_pylist(),
        series=flat.astype(np.int16, copy=False).reshape(len(table), f, s),
        valid_obs=table.column("valid_obs").to_numpy().astype(np.uint16),
    )


# --------------------------------------------------------------------------------------------
# The per-tile stage


@dataclass(frozen=True)
class TileSamples:
    """What the stage extracts: the samples in sample-id order, projected to the tile's CRS."""

    access: SceneAccess
    sample_ids: list[str]
    rows: np.ndarray  # pixels in the tile grid with halo
    cols: np.ndarray


def samples_option(sample_ids: Sequence[str], lon, lat) -> dict:
    """The ``samples`` run option of :data:`EXTRACT_TILE_SAMPLES` (JSON: plain lists)."""
    return {"sample_ids": [str(i) for i in sample_ids], "lon": [float(v) for v in np.asarray(lon, np.float64)],
            "lat": [float(v) for v in np.asarray(lat, np.float64)]}


def _samples(ctx, tile: ProcessingTile) -> tuple[list[str], np.ndarray, np.ndarray]:
    given = ctx.options.get("samples")
    what = f"{ctx.stage.name} {ctx.target.describe()}"
    if not isinstance(given, Mapping) or not {"sample_ids", "lon", "lat"} <= set(given):
        raise StageInputError(f"{what}: give the samples to extract as the run option "
                              f"samples={{'sample_ids': [...], 'lon': [...], 'lat': [...]}}")
    ids, lon, lat = list(given["sample_ids"]), np.asarray(given["lon"], np.float64), np.asarray(given["lat"], np.float64)
    if not len(ids) == len(lon) == len(lat):
        raise StageInputError(f"{what}: {len(ids)} sample ids but {len(lon)} lon and {len(lat)} lat values")
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    x, y = Transformer.from_crs(4326, tile.epsg, always_xy=True).transform(lon[order], lat[order])
    return [ids[i] for i in order], np.asarray(x, np.float64), np.asarray(y, np.float64)


def _prepare(ctx) -> External:
    from clcplus_ops.locations import check_tile

    access, identity = prepare_scenes(ctx)
    tile = check_tile(ctx.config, ctx.target.tile_id)
    sample_ids, x, y = _samples(ctx, tile)
    try:
        rows, cols = pixels_inside(tile.grid(ctx.config.grid.halo_px), x, y)
    except ValueError as error:
        raise StageInputError(f"{ctx.stage.name} {ctx.target.describe()}: {error}") from None
    return External(identity={**identity, "samples": _samples_hash(sample_ids, x, y)},
                    value=TileSamples(access, sample_ids, rows, cols))


def _params(config: Config, target, options) -> dict:
    return {**series_params(config, target.reference_year), "cell_px": config.time_series.block_px}


def _compute(io: StageIO) -> dict:
    started = time.perf_counter()
    config, target, samples = io.config, io.target, io.external
    tile, year = io.tile, target.reference_year
    grid = tile.grid(config.grid.halo_px)  # the ingestion's footprint, so the same scenes
    rows, cols = samples.rows, samples.cols
    sample_cells = cells(grid, rows, cols, config.time_series.block_px)
    window_start, _ = config.time_series.window(year)
    step_days = np.array([(d - window_start).days for d in config.time_series.steps(year)], np.float64)
    scenes = find_tile_scenes(config, samples.access.source, grid, tile, target.pu_id, year)
    n = len(samples.sample_ids)
    (series, valid_obs), dates, reads = compute_with_scenes(
        config, samples.access.s3, scenes, tile, window_start,
        f"{tile.tile_id} samples ({f'{target.pu_id}, ' if target.pu_id else ''}reference year {year})",
        lambda dates, opened: series_at_samples(config, grid, sample_cells, n, dates, opened, step_days),
    )
    _write_series(io.output("series"), samples.sample_ids, rows, cols, valid_obs, series, tile.tile_id)
    seconds = round(time.perf_counter() - started, 2)
    io.log.info("%s: series of %d samples in %d cells from %d dates (%d reads) in %.1f s", tile.tile_id, n,
                len(sample_cells), len(dates), reads, seconds)
    return {"samples": n, "cells": len(sample_cells), "dates": len(dates), "reads": reads,
            "scenes_used": len(scenes.usable), "scenes_skipped": len(scenes.skipped),
            "skipped_scenes": scenes.skipped, "never_observed": int((valid_obs == 0).sum()), "seconds": seconds}


EXTRACT_TILE_SAMPLES = Stage(
    name="extract_samples",
    scope="sample_tile",
    outputs={"series": "series.parquet"},
    prepare=_prepare,
    params=_params,
    compute=_compute,
    summary=("samples", "never_observed", "scenes_skipped", "seconds"),
    options=("samples", "scene_source"),
    permanent_errors=(NoScenesError,),
    description="time series of the samples in a tile, with the ingestion's code",
)
