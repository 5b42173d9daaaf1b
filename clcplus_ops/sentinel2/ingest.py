"""The first per-tile stage: from the Sentinel-2 scenes of the acquisition window to the tile's
equidistant time series (12 features x 54 steps) and its valid-observation count.

Reading, computing and writing are separate: :func:`read_block` gathers the cloud-free
observations of one block of the tile, :func:`clcplus_ops.sentinel2.timeseries.interpolate`
turns them into features (a pure function), and :func:`ingest_tile` streams the tile through
both block by block, so memory is bounded by the block size, not by the tile size.

Scenes of one acquisition date (neighbouring granules of one datatake overlap by ~10 km) are
composited into one observation: per pixel the first granule with a valid observation wins,
the tile's own MGRS square first. A date is therefore counted once per pixel, as the valid-
observation count (RASDL) requires.

Outputs under ``{work}/{year}/{pu}/tiles/{tile}/`` (tile grid plus halo, EPSG of the tile):

* ``features/{B01,...,NBR}.tif`` one GeoTIFF per feature, one band per step (band description
  = step date), int16 = round(value x 10 000), nodata -32768 where the pixel never had a valid
  observation (see ``timeseries`` for the interpolation rule);
* ``valid_obs.tif`` uint16 number of valid observations per pixel;
* ``ingest.json`` provenance: scenes used, scenes skipped and why, timings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.errors import RasterioError
from rasterio.windows import Window
import shapely
from shapely.geometry import box

import clcplus_ops
from clcplus_ops.config import Config
from clcplus_ops.geo.tiles import ProcessingTile
from clcplus_ops.plan import stage_record_url, store_for, tile_url
from clcplus_ops.raster_io import gdal_env, gdal_path
from clcplus_ops.sentinel2 import timeseries
from clcplus_ops.sentinel2.bands import SCL
from clcplus_ops.sentinel2.cloudmask import valid_observations
from clcplus_ops.sentinel2.reading import Grid, read_nearest, retrying, tile_grid
from clcplus_ops.sentinel2.scenes import Scene, SceneSource, scene_source
from clcplus_ops.store import Store, as_url, fingerprint, join

log = logging.getLogger(__name__)

STAGE = "ingest"
TILE_BLOCK = 256  # GeoTIFF block size of the outputs; processing blocks are multiples of it
_INT16 = np.iinfo(np.int16)
T = TypeVar("T")


class NoScenesError(RuntimeError):
    """No usable Sentinel-2 scene for a tile: nothing can be classified there."""


class SceneReadError(RuntimeError):
    """A scene's asset could not be read (missing or corrupt) after the retries allowed."""

    def __init__(self, scene: Scene, asset: str, error: BaseException):
        super().__init__(f"scene {scene.scene_id} asset {asset}: {error}")
        self.scene, self.asset, self.error = scene, asset, error

    def entry(self) -> dict:
        return {"scene_id": self.scene.scene_id, "asset": self.asset, "href": self.scene.assets[self.asset].href,
                "reason": f"{type(self.error).__name__}: {self.error}"}


# --------------------------------------------------------------------------------------------
# Where the outputs live


def feature_url(tile_base: str, feature: str) -> str:
    return join(tile_base, "features", f"{feature}.tif")


def valid_obs_url(tile_base: str) -> str:
    return join(tile_base, "valid_obs.tif")


def provenance_url(tile_base: str) -> str:
    return join(tile_base, "ingest.json")


# --------------------------------------------------------------------------------------------
# Scenes grouped by acquisition date


@dataclass
class AcquisitionDate:
    date: dt.date
    day: float  # days since the window start
    scenes: list[Scene] = field(default_factory=list)  # composite priority order


def group_by_date(scenes: Sequence[Scene], window_start: dt.date, own_square: str | None) -> list[AcquisitionDate]:
    """One entry per acquisition date, dates ascending; within a date the tile's own MGRS square
    comes first, then scene id order (deterministic)."""
    by_date: dict[dt.date, list[Scene]] = {}
    for scene in scenes:
        by_date.setdefault(scene.acquisition_date, []).append(scene)
    groups = []
    for date in sorted(by_date):
        ordered = sorted(by_date[date], key=lambda s: (s.mgrs_square != own_square, s.scene_id))
        groups.append(AcquisitionDate(date, float((date - window_start).days), ordered))
    return groups


# --------------------------------------------------------------------------------------------
# Reading one block


class OpenScenes:
    """The open datasets of the scenes used for a tile (opened once, read block by block)."""

    def __init__(self, assets: Sequence[str], retries: int):
        self.assets, self.retries = tuple(assets), retries
        self.datasets: dict[tuple[str, str], rasterio.DatasetReader] = {}
        self.reads = 0

    def open(self, scene: Scene) -> None:
        """Open every needed asset of ``scene``, or raise SceneReadError (nothing stays open)."""
        opened = {}
        try:
            for asset in self.assets:
                href = scene.assets[asset].href
                dataset = retrying(lambda h=href: rasterio.open(gdal_path(h)), what=href, retries=self.retries)
                opened[(scene.scene_id, asset)] = dataset
                if dataset.crs is None or dataset.crs.to_epsg() != scene.epsg:
                    raise RasterioError(f"CRS {dataset.crs} differs from the item's EPSG:{scene.epsg}")
        except (RasterioError, OSError) as error:
            for dataset in opened.values():
                dataset.close()
            raise SceneReadError(scene, asset, error) from error
        self.datasets.update(opened)

    def read(self, scene: Scene, asset: str, grid: Grid) -> np.ndarray | None:
        dataset = self.datasets[(scene.scene_id, asset)]
        self.reads += 1
        try:
            return retrying(lambda: read_nearest(dataset, grid), what=f"{scene.scene_id} {asset}", retries=self.retries)
        except (RasterioError, OSError) as error:
            raise SceneReadError(scene, asset, error) from error

    def close_scene(self, scene: Scene) -> None:
        for asset in self.assets:
            dataset = self.datasets.pop((scene.scene_id, asset), None)
            if dataset is not None:
                dataset.close()

    def close(self) -> None:
        for dataset in self.datasets.values():
            dataset.close()
        self.datasets.clear()


def read_block(
    grid: Grid,
    dates: Sequence[AcquisitionDate],
    scenes: OpenScenes,
    bands: Sequence[str],
    masked_classes: Sequence[int],
    pixels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The valid observations of one block: ``obs`` int16 (dates, bands, pixels) reflectance x
    10 000, ``valid`` bool (dates, pixels), ``days`` (dates,). Dates without any valid pixel in
    the block are left out. ``pixels`` (flat indices into the block) keeps only those pixels,
    which is how sample points are extracted with this same code."""
    n_pix = grid.height * grid.width if pixels is None else len(pixels)

    def pick(values: np.ndarray) -> np.ndarray:
        return values.ravel() if pixels is None else values.ravel()[pixels]

    obs = np.zeros((len(dates), len(bands), n_pix), dtype=np.int16)
    valid = np.zeros((len(dates), n_pix), dtype=bool)
    days = np.zeros(len(dates), dtype=np.float64)
    k = 0
    for date in dates:
        taken = valid[k]
        for scene in date.scenes:
            scl = scenes.read(scene, SCL, grid)
            if scl is None:
                continue
            new = valid_observations(pick(scl), masked_classes) & ~taken
            if not new.any():
                continue
            values = []
            for band in bands:
                asset = scene.assets[band]
                dn = pick(scenes.read(scene, band, grid))
                if asset.nodata is not None:
                    new &= dn != asset.nodata
                # reflectance x 10 000 = DN * scale * 10 000 + offset * 10 000 (exact for 1e-4)
                values.append(np.rint(dn * (asset.scale * timeseries.SCALE) + asset.offset * timeseries.SCALE))
            for b, value in enumerate(values):
                obs[k, b, new] = np.clip(value[new], _INT16.min + 1, _INT16.max)
            taken |= new
        if taken.any():  # else nothing was written: the row is reused by the next date
            days[k] = date.day
            k += 1
    return obs[:k], valid[:k], days[:k]


# --------------------------------------------------------------------------------------------
# The scenes of a tile, and computing with them while some may fail


@dataclass
class TileScenes:
    found: list[Scene]
    usable: list[Scene]  # in the tile's UTM zone, all assets present and readable so far
    other_crs: list[str]
    skipped: list[dict] = field(default_factory=list)


def find_tile_scenes(
    config: Config, source: SceneSource, grid: Grid, tile: ProcessingTile, pu_id: str, reference_year: int,
) -> TileScenes:
    """The scenes of the acquisition window meeting ``grid``; NoScenesError if there are none."""
    s2 = config.sentinel2
    window_start, window_end = config.time_series.window(reference_year)
    scenes = source.search(
        footprint_lonlat(grid),
        dt.datetime.combine(window_start, dt.time(), dt.timezone.utc),
        dt.datetime.combine(window_end, dt.time(), dt.timezone.utc),
        s2.max_cloud_cover_percent,
    )
    if not scenes:
        raise NoScenesError(
            f"tile {tile.tile_id} ({pu_id}, reference year {reference_year}): no Sentinel-2 scene in "
            f"{source.describe()} for the window {window_start} to {window_end} (exclusive) with cloud cover "
            f"< {s2.max_cloud_cover_percent:g} %"
        )
    other_crs = [s.scene_id for s in scenes if s.epsg != tile.epsg]
    log.info("%s: %d scenes found in %s (%d in another UTM zone, not used)", tile.tile_id, len(scenes),
             source.describe(), len(other_crs))
    return TileScenes(found=scenes, usable=[s for s in scenes if s.epsg == tile.epsg], other_crs=other_crs)


def compute_with_scenes(
    config: Config, store: Store, scenes: TileScenes, tile: ProcessingTile, window_start: dt.date, what: str,
    compute: Callable[[list[AcquisitionDate], OpenScenes], T],
) -> tuple[T, list[AcquisitionDate], int]:
    """Open the usable scenes and run ``compute(dates, opened)``; a scene that cannot be opened,
    or breaks half-way, is dropped (listed in ``scenes.skipped``) and ``compute`` runs again
    without it, so every block is made from the same scenes. Returns (result, dates, reads)."""
    s2 = config.sentinel2
    usable, skipped = scenes.usable, scenes.skipped
    opened = OpenScenes([*s2.bands, SCL], s2.read_retries)
    try:
        with gdal_env(store.s3_settings):
            for scene in list(usable):
                missing = [a for a in opened.assets if a not in scene.assets]
                if missing:
                    skipped.append({"scene_id": scene.scene_id, "asset": ",".join(missing), "href": None,
                                    "reason": "asset missing from the item"})
                    usable.remove(scene)
                    continue
                try:
                    opened.open(scene)
                except SceneReadError as failure:
                    skipped.append(failure.entry())
                    usable.remove(scene)
                    log.warning("%s: skipping scene %s: %s", tile.tile_id, scene.scene_id, failure)
            while True:
                if not usable:
                    raise NoScenesError(f"tile {what}: all {len(scenes.found)} scenes were unusable: {skipped}")
                dates = group_by_date(usable, window_start, tile.square_id)
                try:
                    return compute(dates, opened), dates, opened.reads
                except SceneReadError as failure:
                    skipped.append(failure.entry())
                    usable.remove(failure.scene)
                    opened.close_scene(failure.scene)
                    log.warning("%s: skipping scene %s and recomputing: %s", tile.tile_id, failure.scene.scene_id, failure)
    finally:
        opened.close()


# --------------------------------------------------------------------------------------------
# The stage


def _params(config: Config, reference_year: int) -> dict:
    s2, series = config.sentinel2, config.time_series
    start, end = series.window(reference_year)
    return {
        "bands": list(s2.bands),
        "indices": list(s2.indices),
        "scl_masked_classes": list(s2.scl_masked_classes),
        "max_cloud_cover_percent": s2.max_cloud_cover_percent,
        "window": [start.isoformat(), end.isoformat()],
        "steps": [d.isoformat() for d in series.steps(reference_year)],
        "halo_px": config.grid.halo_px,
        "encoding": {"dtype": "int16", "scale": 1 / timeseries.SCALE, "nodata": timeseries.NODATA},
    }


def footprint_lonlat(grid: Grid):
    """The grid's outline in lon/lat (densified, so it follows the projection's curvature)."""
    to_lonlat = Transformer.from_crs(grid.epsg, 4326, always_xy=True)
    outline = box(*grid.bounds).segmentize(grid.width * grid.transform.a / 8)
    return shapely.transform(outline, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))


def _feature_profile(grid: Grid, count: int, dtype: str, nodata) -> dict:
    return {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": count, "dtype": dtype,
        "nodata": nodata, "crs": f"EPSG:{grid.epsg}", "transform": grid.transform, "tiled": True,
        "blockxsize": TILE_BLOCK, "blockysize": TILE_BLOCK, "compress": "zstd", "zstd_level": 1, "predictor": 2,
        "interleave": "pixel", "BIGTIFF": "IF_SAFER",
    }


def _compute_tile(
    config: Config, grid: Grid, dates: Sequence[AcquisitionDate], scenes: OpenScenes, step_days: np.ndarray,
    step_dates: Sequence[dt.date], outputs: Mapping[str, str], store: Store,
) -> dict:
    """Stream the tile block by block into local GeoTIFFs committed to the store on success."""
    s2 = config.sentinel2
    names = timeseries.feature_names(s2.bands, s2.indices)
    pairs = timeseries.index_band_positions(s2.bands, s2.indices)
    block_px = config.time_series.block_px
    n_blocks = -(-grid.height // block_px) * -(-grid.width // block_px)
    checksums, stats = {}, {"read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "max_dates_in_block": 0}
    with contextlib.ExitStack() as stack:
        paths = {name: stack.enter_context(store.local_write(url)) for name, url in outputs.items()}
        writers = {}
        for name in names:
            writer = stack.enter_context(rasterio.open(paths[name], "w", **_feature_profile(grid, len(step_days), "int16", timeseries.NODATA)))
            writer.descriptions = tuple(d.isoformat() for d in step_dates)
            writer.update_tags(feature=name, scale=str(1 / timeseries.SCALE), offset="0", units="reflectance" if name.startswith("B") else "index")
            writers[name] = writer
        counts_writer = stack.enter_context(rasterio.open(paths["valid_obs"], "w", **_feature_profile(grid, 1, "uint16", None)))
        counts_writer.update_tags(description="number of valid (cloud-free) Sentinel-2 observations")
        for i, (row, col, block) in enumerate(grid.blocks(block_px), start=1):
            t0 = time.perf_counter()
            obs, valid, days = read_block(block, dates, scenes, s2.bands, s2.scl_masked_classes)
            t1 = time.perf_counter()
            features, counts = timeseries.interpolate(obs, valid, days, step_days, pairs)
            del obs, valid
            t2 = time.perf_counter()
            window = Window(col, row, block.width, block.height)
            shape = (len(step_days), block.height, block.width)
            for f, name in enumerate(names):
                writers[name].write(features[f].reshape(shape), window=window)
            counts_writer.write(counts.reshape(1, block.height, block.width), window=window)
            del features, counts  # before the next block's arrays are allocated
            t3 = time.perf_counter()
            stats["read_s"] += t1 - t0
            stats["compute_s"] += t2 - t1
            stats["write_s"] += t3 - t2
            stats["max_dates_in_block"] = max(stats["max_dates_in_block"], len(days))
            log.info("block %d/%d (%d x %d px): %d dates with valid pixels; read %.1f s, compute %.1f s, write %.1f s",
                     i, n_blocks, block.height, block.width, len(days), t1 - t0, t2 - t1, t3 - t2)
        for writer in [*writers.values(), counts_writer]:
            writer.close()
        for name, url in outputs.items():
            checksums[url] = store.sha256(as_url(paths[name]))
    return {"checksums": checksums, **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}}


def ingest_tile(
    config: Config,
    pu_id: str,
    reference_year: int,
    tile: ProcessingTile,
    *,
    force: bool = False,
    store: Store | None = None,
    source: SceneSource | None = None,
) -> dict:
    """Build the tile's time series and valid-observation count; skipped when its record shows
    the same tile, scene source and parameters. Returns a small summary for XCom."""
    store = store or store_for(config)
    base = tile_url(config, reference_year, pu_id, tile.tile_id)
    record_url = stage_record_url(base, STAGE)
    source = source or scene_source(config, reference_year, store)
    params = _params(config, reference_year)
    key = fingerprint(stage=STAGE, inputs={"tile": tile.to_dict(), "scene_source": source.describe()},
                      params=params, version=clcplus_ops.__version__)
    if not force and store.is_current(record_url, key):
        log.info("%s: time series are current, skipped", tile.tile_id)
        return {"tile_id": tile.tile_id, "skipped": True, "record": record_url}

    started = time.perf_counter()
    s2, series = config.sentinel2, config.time_series
    grid = tile_grid(tile, config.grid.halo_px)
    window_start, _ = series.window(reference_year)
    scenes = find_tile_scenes(config, source, grid, tile, pu_id, reference_year)

    names = timeseries.feature_names(s2.bands, s2.indices)
    outputs = {name: feature_url(base, name) for name in names}
    outputs["valid_obs"] = valid_obs_url(base)
    step_dates = series.steps(reference_year)
    step_days = np.array([(d - window_start).days for d in step_dates], dtype=np.float64)
    stats, dates, reads = compute_with_scenes(
        config, store, scenes, tile, window_start, f"{tile.tile_id} ({pu_id}, reference year {reference_year})",
        lambda dates, opened: _compute_tile(config, grid, dates, opened, step_days, step_dates, outputs, store),
    )
    usable, skipped, other_crs = scenes.usable, scenes.skipped, scenes.other_crs

    checksums = stats.pop("checksums")
    provenance = {
        "stage": STAGE,
        "pu_id": pu_id,
        "reference_year": reference_year,
        "tile": tile.to_dict(),
        "grid": {"epsg": grid.epsg, "transform": list(grid.transform)[:6], "height": grid.height, "width": grid.width,
                 "halo_px": config.grid.halo_px},
        "scene_source": source.describe(),
        "features": names,
        "steps": params["steps"],
        "encoding": params["encoding"],
        "scenes_found": len(scenes.found),
        "acquisition_dates": len(dates),
        "scenes_used": [s.to_dict() for s in usable],
        "scenes_skipped": skipped,
        "scenes_other_crs": other_crs,
    }
    # Timings vary from run to run: they go to the record, so the provenance is reproducible.
    timings = {"seconds": round(time.perf_counter() - started, 2), "reads": reads, **stats}
    prov_url = provenance_url(base)
    store.write_json(prov_url, provenance)
    if skipped:
        log.warning("%s: %d scene(s) skipped: %s", tile.tile_id, len(skipped), ", ".join(s["scene_id"] for s in skipped))
    store.write_record(
        record_url, stage=STAGE, fingerprint=key, outputs={**outputs, "provenance": prov_url},
        checksums=checksums,
        details={"scenes_used": len(usable), "scenes_skipped": len(skipped), "dates": len(dates), **timings},
    )
    log.info("%s: %d dates from %d scenes -> %d features x %d steps in %.1f s", tile.tile_id, len(dates), len(usable),
             len(names), len(step_days), timings["seconds"])
    return {"tile_id": tile.tile_id, "skipped": False, "record": record_url, "scenes_used": len(usable),
            "scenes_skipped": len(skipped), "dates": len(dates)}
