"""The mosaic stage: a production unit's filtered tile probabilities and valid-observation
counts, resampled from their UTM tiles onto the PU's part of the product grid (EPSG:3035 at
10 m, aligned with the 100 km reference tiles; a DOM's UTM zone), PU area plus its buffer.

Resampling rules:

* probabilities: **bilinear**. An output pixel is a mean of the four nearest source probability
  vectors with weights summing to 1, so it is again a probability vector. The stored uint16
  values are warped as they are (GDAL rounds the mean): within the encoding's own 5e-5 of the
  mean of the decoded probabilities, at the cost of a plain warp. Nearest neighbour on
  the UTM ▸ LAEA rotation (up to a few degrees) would repeat or drop whole source pixels along
  slanted lines, a pattern a user sees in the map; bilinear moves values by less than a pixel.
* valid-observation counts: **nearest**. A count belongs to one source pixel; the mean of four
  counts is a number of observations that no pixel had.

No seam at 25 km tile edges: the tiles of one UTM zone nest in its 100 km MGRS squares, so they
share the zone's 10 m lattice and their cores partition it. For each output block the cores of
each zone are first assembled into one source array, then warped at once: the result equals
warping the zone's whole mosaic. No seam at zone boundaries beyond resampling: an output pixel
takes the zone that is home to its centre (the rule by which the tiles were chosen) where that
zone's tiles give all its bilinear neighbours, else another zone that does.

Memory is bounded by the block (``blending.block_px``) and its source windows, not by the PU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.stage import External, Input, Stage, StageIO, Target, blocks_with_progress

COUNT_NODATA = 65535  # no tile covers the pixel (a count of 0 is a pixel without observations)
_PAD_PX = 2  # source pixels around a block's footprint: bilinear needs its neighbours


@dataclass(frozen=True)
class ZoneArrays:
    """One UTM zone's assembled source for a block: encoded probabilities uint16 (classes, rows,
    cols; probs_io encoding, NODATA where no tile has a valid value), and counts uint16 (rows,
    cols), COUNT_NODATA where no tile covers the pixel, on ``grid`` (the zone's lattice)."""

    grid: Grid
    probabilities: np.ndarray
    counts: np.ndarray


# --------------------------------------------------------------------------------------------
# Pure parts: geometry of a block, warping, combining the zones


def source_window(block: Grid, epsg: int, res: float) -> Grid:
    """The grid on zone ``epsg``'s lattice (origin on whole ``res`` metres) covering ``block``'s
    footprint plus a margin of _PAD_PX pixels."""
    import math

    from rasterio.warp import transform_bounds

    xmin, ymin, xmax, ymax = transform_bounds(block.crs, f"EPSG:{epsg}", *block.bounds, densify_pts=21)
    pad = _PAD_PX * res
    bounds = (math.floor(xmin / res) * res - pad, math.floor(ymin / res) * res - pad,
              math.ceil(xmax / res) * res + pad, math.ceil(ymax / res) * res + pad)
    return Grid.from_bounds(epsg, bounds, res)


def home_zones(grid: Grid) -> np.ndarray:
    """The home UTM zone (EPSG code) of every pixel centre of ``grid``."""
    from pyproj import Transformer

    from clcplus_ops.geo.tiles import home_epsg_array

    t = grid.transform
    xs = t.c + (np.arange(grid.width) + 0.5) * t.a
    ys = t.f + (np.arange(grid.height) + 0.5) * t.e
    x, y = np.meshgrid(xs, ys)
    lon, lat = Transformer.from_crs(grid.epsg, 4326, always_xy=True).transform(x, y)
    return home_epsg_array(lon, lat)


def warp(source: np.ndarray, src_grid: Grid, dst_grid: Grid, resampling: str, nodata) -> np.ndarray:
    """``source`` (bands, rows, cols) on ``src_grid`` resampled onto ``dst_grid`` ("bilinear" or
    "nearest"); ``nodata`` in and out (NaN for float)."""
    from rasterio.warp import Resampling, reproject

    out = np.full((source.shape[0], dst_grid.height, dst_grid.width), nodata, dtype=source.dtype)
    reproject(source, out, src_transform=src_grid.transform, src_crs=src_grid.crs, dst_transform=dst_grid.transform,
              dst_crs=dst_grid.crs, resampling=Resampling[resampling], src_nodata=nodata, dst_nodata=nodata)
    return out


def mosaic_block(block: Grid, zones: Mapping[int, ZoneArrays], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoded probabilities (uint16, NODATA where none) and counts (uint16, COUNT_NODATA where
    none) of ``block`` from the zones' assembled sources. With one zone, its warp. With more, a
    pixel takes its home zone where that zone's bilinear neighbours all have values, else
    another zone whose neighbours all have values (a zone's tiles end near the zone boundary),
    else any value there is (the PU's outer edge)."""
    nodata = np.uint16(probs_io.NODATA)
    if not zones:
        return (np.full((n_classes, block.height, block.width), nodata, np.uint16),
                np.full(block.shape, COUNT_NODATA, np.uint16))
    if len(zones) == 1:
        (z,) = zones.values()
        return (warp(z.probabilities, z.grid, block, "bilinear", nodata),
                warp(z.counts[None], z.grid, block, "nearest", np.uint16(COUNT_NODATA))[0])
    probabilities = np.full((n_classes, block.height, block.width), nodata, np.uint16)
    counts = np.full(block.shape, COUNT_NODATA, np.uint16)
    home = home_zones(block)
    warped = {}
    for epsg, z in sorted(zones.items()):
        has_value = (z.probabilities[0] != nodata).astype(np.float32)[None]
        whole = warp(has_value, z.grid, block, "bilinear", np.float32(-1))[0] >= 1 - 1e-6
        warped[epsg] = (warp(z.probabilities, z.grid, block, "bilinear", nodata),
                        warp(z.counts[None], z.grid, block, "nearest", np.uint16(COUNT_NODATA))[0], whole)
    everywhere = np.ones(block.shape, bool)
    for rank in ("home", "whole", "any"):
        for epsg, (p, c, whole) in warped.items():
            if rank == "home":
                take = whole & (home == epsg)
            else:
                take = whole if rank == "whole" else everywhere
            fill_p = take & (probabilities[0] == nodata) & (p[0] != nodata)
            probabilities[:, fill_p] = p[:, fill_p]
            fill_c = take & (counts == COUNT_NODATA) & (c != COUNT_NODATA)
            counts[fill_c] = c[fill_c]
    return probabilities, counts


# --------------------------------------------------------------------------------------------
# Reading: one zone's tile cores into a source window


@dataclass(frozen=True)
class TileSource:
    """A planned tile of the PU: its core grid and its filter and ingest outputs."""

    tile_id: str
    core: Grid
    filtered: Input
    valid_obs: Input


def assemble(window: Grid, tiles: Sequence[TileSource], datasets: Mapping[str, tuple], n_classes: int) -> ZoneArrays:
    """The zone's source on ``window``: each tile's core part inside the window, read from its
    open (filtered, valid_obs) datasets."""
    probabilities = np.full((n_classes, window.height, window.width), probs_io.NODATA, np.uint16)
    counts = np.full(window.shape, COUNT_NODATA, np.uint16)
    for tile in tiles:
        part = window.intersection(tile.core)
        if part is None:
            continue
        filtered, valid_obs = datasets[tile.tile_id]
        into = part.window_in(window)
        rows = slice(into.row_off, into.row_off + into.height)
        cols = slice(into.col_off, into.col_off + into.width)
        probabilities[:, rows, cols] = filtered.read(window=part.window_in(Grid.of_dataset(filtered)))
        counts[rows, cols] = valid_obs.read(1, window=part.window_in(Grid.of_dataset(valid_obs)))
    return ZoneArrays(window, probabilities, counts)


# --------------------------------------------------------------------------------------------
# The stage


def layout_units(config, layout: str) -> dict:
    """The PUs of ``layout`` (the PU stages on the product grid read them from here)."""
    from clcplus_ops.geo.layout import load_layout

    return load_layout(config.layout_path(layout))


def product_grid(config, unit) -> Grid:
    """The PU's part of the product grid: its area plus the PU buffer, at the pixel size."""
    from clcplus_ops.geo.eea_grid import pu_grid

    return pu_grid(unit, config.grid.pixel_size_m, config.grid.pu_buffer_m)


def area_hash(unit) -> str:
    """A short digest of the PU's polygon, for fingerprints of stages that use its shape."""
    import hashlib

    return hashlib.sha256(unit.geometry.wkb).hexdigest()[:16]


def _params(config, target: Target, options) -> dict:
    grid = product_grid(config, layout_units(config, target.layout)[target.pu_id])
    return {"grid": grid.to_dict(), "resampling": {"probabilities": "bilinear", "valid_obs": "nearest"},
            "encoding": probs_io.encoding(), "block_px": config.blending.block_px,
            "profile": config.rasters.probabilities.model_dump()}


def _prepare(ctx) -> External:
    from clcplus_ops.geo.tiles import tile_from_id

    done = ctx.record("join_tiles")  # verified by the runner (declared input)
    tile_ids = ctx.store.read_json(ctx.locations.resolve(done.outputs["tiles_done"]))["tiles"]
    target, sources, identity = ctx.target, [], {}
    for tile_id in tile_ids:
        tile_target = Target(target.layout, target.reference_year, target.pu_id, tile_id)
        filter_record, filtered = ctx.input_of("filter", "filtered", tile_target, "tile")
        ingest_record, valid_obs = ctx.input_of("ingest", "valid_obs", tile_target, "shared_tile")
        tile = tile_from_id(tile_id, ctx.config.grid.tile_size_m, ctx.config.grid.pixel_size_m)
        sources.append(TileSource(tile_id, tile.grid(0), filtered, valid_obs))
        identity[tile_id] = [filter_record.fingerprint, ingest_record.fingerprint]
    return External(identity={"tiles": identity}, value=sources)


def _compute(io: StageIO) -> dict:
    import contextlib

    grid = Grid.from_dict(io.params["grid"])
    sources: list[TileSource] = io.external
    by_zone: dict[int, list[TileSource]] = {}
    for tile in sources:
        by_zone.setdefault(tile.core.epsg, []).append(tile)
    n_classes = len(io.config.codes.classes)
    valid_pixels = 0
    with contextlib.ExitStack() as stack:
        datasets = {}
        for tile in sources:
            datasets[tile.tile_id] = (stack.enter_context(tile.filtered.raster()),
                                      stack.enter_context(tile.valid_obs.raster()))
        classes = [int(c) for c in datasets[sources[0].tile_id][0].tags()["classes"].split(",")] if sources else \
            sorted(io.config.codes.classes)
        if len(classes) != n_classes:
            raise StageInputError(f"{io.target.describe()}: filtered probabilities have {len(classes)} classes, "
                                  f"the configuration {n_classes}")
        with io.raster("probabilities", grid, n_classes, probs_io.DTYPE, probs_io.NODATA, "probabilities") as out_p, \
                io.raster("valid_obs", grid, 1, "uint16", COUNT_NODATA, "probabilities") as out_c:
            probs_io.describe(out_p, classes, io.config.codes.classes)
            for row, col, block in blocks_with_progress(grid, io.params["block_px"], io.log, io.target.pu_id):
                zones = {}
                for epsg, tiles in by_zone.items():
                    window = source_window(block, epsg, grid.res)
                    if any(window.intersection(t.core) is not None for t in tiles):
                        zones[epsg] = assemble(window, tiles, datasets, n_classes)
                probabilities, counts = mosaic_block(block, zones, n_classes)
                valid_pixels += int((probabilities[0] != probs_io.NODATA).sum())
                out_p.write(probabilities, window=block.window_in(grid))
                out_c.write(counts[None], window=block.window_in(grid))
    zones_used = sorted(by_zone)
    io.log.info("%s: mosaic of %d tiles (UTM zones %s) on %s %d x %d px, %d px with probabilities",
                io.target.describe(), len(sources), zones_used, grid.crs, grid.width, grid.height, valid_pixels)
    return {"tiles": len(sources), "zones": zones_used, "valid_pixels": valid_pixels,
            "grid": {"epsg": grid.epsg, "width": grid.width, "height": grid.height}}


MOSAIC = Stage(
    name="mosaic",
    scope="pu",
    inputs=("join_tiles",),
    outputs={"probabilities": "mosaic/probabilities.tif", "valid_obs": "mosaic/valid_obs.tif"},
    prepare=_prepare,
    params=_params,
    compute=_compute,
    summary=("tiles", "zones", "valid_pixels"),
    permanent_errors=(StageInputError,),
    description="resample the filtered tiles onto the PU's product grid (EPSG:3035, 10 m, with buffer)",
)
