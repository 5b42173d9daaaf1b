"""The first per-tile stage, ``ingest``: from the Sentinel-2 scenes of the acquisition window to
the tile's equidistant time series (12 features x 54 steps) and its valid-observation count.

Reading, computing and writing are separate: :func:`read_block` gathers the cloud-free
observations of one block of the tile, :func:`clcplus_ops.sentinel2.timeseries.interpolate`
turns them into features (a pure function), and the stage's compute streams the tile through
both block by block, so memory is bounded by the block size, not by the tile size.

Scenes of one acquisition date (neighbouring granules of one datatake overlap by ~10 km) are
composited into one observation: per pixel the first granule with a valid observation wins,
the tile's own MGRS square first. A date is therefore counted once per pixel, as the valid-
observation count (RASDL) requires.

The time series of a tile and reference year do not depend on the PU: the stage runs at the
``shared_tile`` scope, once per tile and year however many PUs cover the tile (16,406 PU-tiles
are 12,278 distinct tiles in the production layout); a PU's run asking for a tile another
run is ingesting waits for its record (the runner's claim, :mod:`clcplus_ops.claims`).

Outputs in the tile's shared folder (``{work}/{year}/tiles/{tile}/``; tile grid plus halo, EPSG
of the tile):

* ``features/{B01,...,NBR}.tif`` one GeoTIFF per feature, one band per step (band description
  = step date), int16 = round(value x 10 000), nodata -32768 where the pixel never had a valid
  observation (see ``timeseries`` for the interpolation rule);
* ``valid_obs.tif`` uint16 number of valid observations per pixel;
* ``ingest.json`` provenance: scenes used, scenes skipped and why, scenes in another UTM zone.

The scene source (a STAC API or a static catalogue, :func:`~clcplus_ops.sentinel2.scenes.scene_source`)
is the stage's external input: its description enters the fingerprint. A run option
``scene_source`` (a :class:`~clcplus_ops.sentinel2.scenes.SceneSource` object, e.g. one shared
by the tiles of a PU, or a test's stub) replaces the configured one; only its ``describe()``
enters the fingerprint. The archive is searched in ``compute``, not in ``prepare``: a current
tile is skipped without querying the archive (as before).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from clcplus_ops.config import Config
from clcplus_ops.errors import PermanentError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.geo.tiles import ProcessingTile
from clcplus_ops.jit import numba
from clcplus_ops.raster_io import gdal_env, gdal_path
from clcplus_ops.sentinel2 import compositing, timeseries
from clcplus_ops.sentinel2.bands import SCL
from clcplus_ops.sentinel2.cloudmask import clear_lookup
from clcplus_ops.sentinel2.reading import NearestWindow, nearest_window, retrying
from clcplus_ops.sentinel2.scenes import Scene, SceneSource, scene_source
from clcplus_ops.stage import External, Resources, Stage, StageIO, blocks_with_progress
from clcplus_ops.store import S3Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class NoScenesError(PermanentError):
    """No usable Sentinel-2 scene for a tile: nothing can be classified there (no retry brings
    scenes into the archive)."""


class SceneReadError(RuntimeError):
    """A scene's asset could not be read (missing or corrupt) after the retries allowed."""

    def __init__(self, scene: Scene, asset: str, error: BaseException):
        super().__init__(f"scene {scene.scene_id} asset {asset}: {error}")
        self.scene, self.asset, self.error = scene, asset, error

    def entry(self) -> dict:
        return {"scene_id": self.scene.scene_id, "asset": self.asset, "href": self.scene.assets[self.asset].href,
                "reason": f"{type(self.error).__name__}: {self.error}"}


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


@dataclass(frozen=True)
class Raster:
    """An open scene asset and what reading it needs (read once at opening)."""

    dataset: rasterio.DatasetReader
    geometry: tuple  # (transform, width, height): shared by the assets of a resolution in a granule
    fill: object  # outside the raster: its nodata, else 0


class OpenScenes:
    """The open datasets of the scenes used for a tile (opened once, read block by block).

    With ``threads`` > 1, scenes are opened and a scene's bands read that many at a time: GDAL
    opens, reads and decodes without the GIL, and remote files wait on the network. Results
    are taken in order, so they do not depend on which finished first."""

    def __init__(self, assets: Sequence[str], retries: int, threads: int = 1):
        self.assets, self.retries = tuple(assets), retries
        self.datasets: dict[tuple[str, str], Raster] = {}
        self.reads = 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ingest-read") if threads > 1 else None

    def _map(self, fn: Callable, items: Sequence) -> list:
        """``[fn(item) for item in items]``, on the threads; every call has ended when it returns
        or raises (the first failure in order), so no read is left on a dataset about to close."""
        if self._pool is None:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        wait(futures)
        return [future.result() for future in futures]

    def open(self, scene: Scene) -> None:
        """Open every needed asset of ``scene``, or raise SceneReadError (nothing stays open)."""
        opened = {}
        try:
            for asset in self.assets:
                href = scene.assets[asset].href
                dataset = retrying(lambda h=href: rasterio.open(gdal_path(h)), what=href, retries=self.retries)
                opened[(scene.scene_id, asset)] = Raster(
                    dataset, (dataset.transform, dataset.width, dataset.height),
                    dataset.nodata if dataset.nodata is not None else 0)
                if dataset.crs is None or dataset.crs.to_epsg() != scene.epsg:
                    raise RasterioError(f"CRS {dataset.crs} differs from the item's EPSG:{scene.epsg}")
        except (RasterioError, OSError) as error:
            for raster in opened.values():
                raster.dataset.close()
            raise SceneReadError(scene, asset, error) from error
        self.datasets.update(opened)

    def open_all(self, scenes: Sequence[Scene]) -> dict[str, SceneReadError]:
        """Open the scenes; the failure of each scene that could not be opened, by scene id."""
        def attempt(scene: Scene) -> SceneReadError | None:
            try:
                self.open(scene)
            except SceneReadError as failure:
                return failure
            return None

        outcomes = self._map(attempt, scenes)
        return {scene.scene_id: failure for scene, failure in zip(scenes, outcomes) if failure is not None}

    def read(self, scene: Scene, asset: str, block: BlockSources) -> compositing.SourceWindow | None:
        """The asset's source window on the block; None if they do not overlap."""
        self.reads += 1
        return self._read(scene, asset, block)

    def read_all(self, scene: Scene, assets: Sequence[str], block: BlockSources) -> list[compositing.SourceWindow | None]:
        """:meth:`read` of each asset; a failure raises the first failing asset's SceneReadError."""
        self.reads += len(assets)
        return self._map(lambda asset: self._read(scene, asset, block), assets)

    def _read(self, scene: Scene, asset: str, block: BlockSources) -> compositing.SourceWindow | None:
        raster = self.datasets[(scene.scene_id, asset)]
        where = block.where(raster)
        if where is None:
            return None
        try:
            values = retrying(lambda: raster.dataset.read(1, window=where.window), what=f"{scene.scene_id} {asset}",
                              retries=self.retries)
        except (RasterioError, OSError) as error:
            raise SceneReadError(scene, asset, error) from error
        return compositing.SourceWindow(values, where.rows, where.cols, raster.fill)

    def close_scene(self, scene: Scene) -> None:
        for asset in self.assets:
            raster = self.datasets.pop((scene.scene_id, asset), None)
            if raster is not None:
                raster.dataset.close()

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()
        for raster in self.datasets.values():
            raster.dataset.close()
        self.datasets.clear()


class BlockSources:
    """One block (or the given pixels of it) and where it lies in each raster geometry of the
    scenes (the window to read, each block row's and column's index in it)."""

    def __init__(self, grid: Grid, pixels: np.ndarray | None = None):
        self.grid = grid
        self.pixels = compositing.Pixels.of(grid.height, grid.width, pixels)
        self._known: dict[tuple, NearestWindow | None] = {}

    def where(self, raster: Raster) -> NearestWindow | None:
        if raster.geometry not in self._known:
            transform, width, height = raster.geometry
            self._known[raster.geometry] = nearest_window(transform, width, height, self.grid, raster.dataset.name)
        return self._known[raster.geometry]


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
    which is how sample points are extracted with this same code. Rules: :mod:`compositing`."""
    block = BlockSources(grid, pixels)
    n_pix = block.pixels.count
    clear = clear_lookup(masked_classes)
    obs = np.zeros((len(dates), len(bands), n_pix), dtype=np.int16)
    valid = np.zeros((len(dates), n_pix), dtype=bool)
    days = np.zeros(len(dates), dtype=np.float64)
    new = np.empty(n_pix, dtype=bool)
    k = 0
    for date in dates:
        taken = valid[k]
        for scene in date.scenes:
            scl = scenes.read(scene, SCL, block)
            if scl is None or not compositing.new_clear(scl, clear, block.pixels, taken, new):
                continue
            # Every band is read before any value is taken: a nodata in one drops the pixel.
            windows = scenes.read_all(scene, bands, block)
            assets = [scene.assets[band] for band in bands]
            # reflectance x 10 000 = DN * scale * 10 000 + offset * 10 000 (exact for 1e-4)
            compositing.composite(windows, [a.nodata for a in assets], [a.scale * timeseries.SCALE for a in assets],
                                  [a.offset * timeseries.SCALE for a in assets], block.pixels, new, taken, obs[k])
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
    config: Config, source: SceneSource, grid: Grid, tile: ProcessingTile, pu_id: str | None, reference_year: int,
) -> TileScenes:
    """The scenes of the acquisition window meeting ``grid``; NoScenesError if there are none."""
    s2 = config.sentinel2
    window_start, window_end = config.time_series.window(reference_year)
    scenes = source.search(
        grid.footprint_lonlat(),
        dt.datetime.combine(window_start, dt.time(), dt.timezone.utc),
        dt.datetime.combine(window_end, dt.time(), dt.timezone.utc),
        s2.max_cloud_cover_percent,
    )
    if not scenes:
        raise NoScenesError(
            f"tile {tile.tile_id} ({f'{pu_id}, ' if pu_id else ''}reference year {reference_year}): no Sentinel-2 scene in "
            f"{source.describe()} for the window {window_start} to {window_end} (exclusive) with cloud cover "
            f"< {s2.max_cloud_cover_percent:g} %"
        )
    other_crs = [s.scene_id for s in scenes if s.epsg != tile.epsg]
    log.info("%s: %d scenes found in %s (%d in another UTM zone, not used)", tile.tile_id, len(scenes),
             source.describe(), len(other_crs))
    return TileScenes(found=scenes, usable=[s for s in scenes if s.epsg == tile.epsg], other_crs=other_crs)


# A block's window in a scene asset shares source tiles (256 px) with the next block's in its
# row: GDAL's block cache keeps them decoded for it if it holds about one block's reads of all
# scenes (some 6 MB per scene), whatever the tile size. A tile one block wide has nothing to
# share. (rasterio passes an integer GDAL_CACHEMAX to GDAL as bytes.)
GDAL_CACHE_BYTES = 1 << 30


def reading_options(config: Config, tile: ProcessingTile) -> dict:
    """GDAL settings of the scene reads (and the outputs' writes): the block cache above, and
    decoding (compressing) a window's tiles on as many threads as the compiled kernels use."""
    options = {"GDAL_NUM_THREADS": str(numba.get_num_threads())}
    if tile.grid(config.grid.halo_px).width > config.time_series.block_px:
        options["GDAL_CACHEMAX"] = GDAL_CACHE_BYTES
    return options


# Scenes opened, or a scene's bands read, at once. Only from the main thread: rasterio makes the
# GDAL settings of an environment entered there (the store's credentials) process-wide; entered
# on another thread, they are that thread's own.
READ_THREADS = 8


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def compute_with_scenes(
    config: Config, s3: S3Settings, scenes: TileScenes, tile: ProcessingTile, window_start: dt.date, what: str,
    compute: Callable[[list[AcquisitionDate], OpenScenes], T],
) -> tuple[T, list[AcquisitionDate], int]:
    """Open the usable scenes and run ``compute(dates, opened)``; a scene that cannot be opened,
    or breaks half-way, is dropped (listed in ``scenes.skipped``) and ``compute`` runs again
    without it, so every block is made from the same scenes. Returns (result, dates, reads)."""
    s2 = config.sentinel2
    usable, skipped = scenes.usable, scenes.skipped
    opened = OpenScenes([*s2.bands, SCL], s2.read_retries, READ_THREADS if on_main_thread() else 1)
    try:
        with gdal_env(s3), rasterio.Env(**reading_options(config, tile)):
            complete = [s for s in usable if all(a in s.assets for a in opened.assets)]
            failures = opened.open_all(complete)
            for scene in list(usable):  # skipped in the scenes' order, whichever opened first
                missing = [a for a in opened.assets if a not in scene.assets]
                if missing:
                    skipped.append({"scene_id": scene.scene_id, "asset": ",".join(missing), "href": None,
                                    "reason": "asset missing from the item"})
                    usable.remove(scene)
                elif scene.scene_id in failures:
                    failure = failures[scene.scene_id]
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


def feature_names(config: Config) -> list[str]:
    return timeseries.feature_names(config.sentinel2.bands, config.sentinel2.indices)


def _outputs(config: Config) -> dict[str, str]:
    return {**{name: f"features/{name}.tif" for name in feature_names(config)},
            "valid_obs": "valid_obs.tif", "provenance": "ingest.json"}


def series_params(config: Config, reference_year: int) -> dict:
    """What the time series depend on besides the scenes (shared with the sample extraction)."""
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


def _params(config: Config, target, options) -> dict:
    return {**series_params(config, target.reference_year), "profile": config.rasters.features.model_dump()}


@dataclass(frozen=True)
class SceneAccess:
    """What the ingestion reads from outside: the scene source, and the store's S3 settings
    (GDAL reads the scenes' assets with them)."""

    source: SceneSource
    s3: S3Settings


def prepare_scenes(ctx) -> tuple[SceneAccess, dict]:
    """The scene source of a run (the ``scene_source`` option, else the configured one) and its
    identity (the tile and the source's description)."""
    from clcplus_ops.locations import check_tile

    source = ctx.options.get("scene_source") or scene_source(ctx.config, ctx.target.reference_year, ctx.store)
    tile = check_tile(ctx.config, ctx.target.tile_id)
    identity = {"tile": tile.to_dict(), "scene_source": source.describe()}
    return SceneAccess(source, ctx.store.s3_settings), identity


def _prepare(ctx) -> External:
    access, identity = prepare_scenes(ctx)
    return External(identity=identity, value=access)


def _compute(io: StageIO) -> dict:
    started = time.perf_counter()
    config, target, access = io.config, io.target, io.external
    year = target.reference_year
    tile = io.tile
    series = config.time_series
    grid = tile.grid(config.grid.halo_px)
    window_start, _ = series.window(year)
    scenes = find_tile_scenes(config, access.source, grid, tile, None, year)

    names = feature_names(config)
    step_dates = series.steps(year)
    step_days = np.array([(d - window_start).days for d in step_dates], dtype=np.float64)
    stats, dates, reads = compute_with_scenes(
        config, access.s3, scenes, tile, window_start, f"{tile.tile_id} (reference year {year})",
        lambda dates, opened: _compute_tile(io, grid, dates, opened, step_days, step_dates),
    )
    usable, skipped, other_crs = scenes.usable, scenes.skipped, scenes.other_crs
    params = series_params(config, year)
    io.write_json("provenance", {
        "stage": io.stage.name,
        "reference_year": year,
        "tile": tile.to_dict(),
        "grid": {**grid.to_dict(), "halo_px": config.grid.halo_px},
        "scene_source": access.source.describe(),
        "features": names,
        "steps": params["steps"],
        "encoding": params["encoding"],
        "scenes_found": len(scenes.found),
        "acquisition_dates": len(dates),
        "scenes_used": [s.to_dict() for s in usable],
        "scenes_skipped": skipped,
        "scenes_other_crs": other_crs,
    })
    if skipped:
        io.log.warning("%s: %d scene(s) skipped: %s", tile.tile_id, len(skipped),
                       ", ".join(s["scene_id"] for s in skipped))
    # Timings vary from run to run: they go to the record, so the provenance is reproducible.
    seconds = round(time.perf_counter() - started, 2)
    io.log.info("%s: %d dates from %d scenes -> %d features x %d steps in %.1f s", tile.tile_id, len(dates),
                len(usable), len(names), len(step_days), seconds)
    return {"scenes_used": len(usable), "scenes_skipped": len(skipped), "dates": len(dates),
            "seconds": seconds, "reads": reads, **stats}


def _compute_tile(io: StageIO, grid: Grid, dates: Sequence[AcquisitionDate], scenes: OpenScenes,
                  step_days: np.ndarray, step_dates: Sequence[dt.date]) -> dict:
    """Stream the tile block by block into the stage's output GeoTIFFs.

    Reading a block overlaps with interpolating and writing the previous one: the scenes are
    read on this thread (inside its GDAL environment, with the store's credentials), the
    previous block is interpolated and written on one worker thread. Blocks are written in the
    same order as before, one at a time, so the files are the same bytes; at most two blocks are
    in memory."""
    config = io.config
    s2 = config.sentinel2
    names = feature_names(config)
    pairs = timeseries.index_band_positions(s2.bands, s2.indices)
    stats = {"read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "max_dates_in_block": 0}
    with contextlib.ExitStack() as stack:
        writers = {}
        for name in names:
            writer = stack.enter_context(io.raster(name, grid, len(step_days), "int16", timeseries.NODATA, "features"))
            writer.descriptions = tuple(d.isoformat() for d in step_dates)
            writer.update_tags(feature=name, scale=str(1 / timeseries.SCALE), offset="0",
                               units="reflectance" if name.startswith("B") else "index")
            writers[name] = writer
        counts_writer = stack.enter_context(io.raster("valid_obs", grid, 1, "uint16", None, "features"))
        counts_writer.update_tags(description="number of valid (cloud-free) Sentinel-2 observations")

        def compute_and_write(block: Grid, observations: list[np.ndarray]) -> None:
            t0 = time.perf_counter()
            obs, valid, days = observations
            observations.clear()  # the only other reference: the observations go once interpolated
            features, counts = timeseries.interpolate(obs, valid, days, step_days, pairs)
            del obs, valid
            t1 = time.perf_counter()
            window = block.window_in(grid)
            shape = (len(step_days), block.height, block.width)
            for f, name in enumerate(names):
                writers[name].write(features[f].reshape(shape), window=window)
            counts_writer.write(counts.reshape(1, block.height, block.width), window=window)
            stats["compute_s"] += t1 - t0
            stats["write_s"] += time.perf_counter() - t1

        # Leaving the executor waits for the block in hand, also when a read fails (the scene is
        # then dropped and the tile recomputed), before the writers close.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write") as worker:
            writing = None
            for row, col, block in blocks_with_progress(grid, config.time_series.block_px, io.log, io.target.tile_id):
                t0 = time.perf_counter()
                obs, valid, days = read_block(block, dates, scenes, s2.bands, s2.scl_masked_classes)
                stats["read_s"] += time.perf_counter() - t0
                stats["max_dates_in_block"] = max(stats["max_dates_in_block"], len(days))
                io.log.debug("block (%d, %d) %d x %d px: %d dates with valid pixels; read in %.1f s", row, col,
                             block.height, block.width, len(days), time.perf_counter() - t0)
                if writing is not None:
                    writing.result()  # the previous block is written: its memory is free
                writing = worker.submit(compute_and_write, block, [obs, valid, days])
                del obs, valid, days
            if writing is not None:
                writing.result()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}


INGEST = Stage(
    name="ingest",
    scope="shared_tile",
    outputs=_outputs,
    prepare=_prepare,
    params=_params,
    compute=_compute,
    resources=Resources(memory="medium"),
    summary=("scenes_used", "scenes_skipped", "dates"),
    options=("scene_source",),
    permanent_errors=(NoScenesError,),
    description="Sentinel-2 scenes -> the tile's 12 x 54 time series and valid-observation count",
)
