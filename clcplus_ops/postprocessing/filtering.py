"""The filter stage: the bilateral filter (ATBD 3.1.6 a) on one tile's class probabilities.

Reads ``probabilities.tif`` (tile grid plus halo) in strips of rows that overlap by the
filter's reach, filters each strip and keeps the pixels whose whole window was in it, so
memory is bounded by the strip, not by the tile. The output, ``probabilities_filtered.tif``,
covers the tile plus a halo narrower by the reach: every pixel of it has its full window, so
the filtered tiles' cores mosaic to exactly the filtered whole (:mod:`.bilateral`).
"""

from __future__ import annotations

import logging
import time

import rasterio
from rasterio.windows import Window

import clcplus_ops
from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.config import Config
from clcplus_ops.geo.tiles import ProcessingTile
from clcplus_ops.plan import previous_stage, stage_record_url, store_for, tile_url
from clcplus_ops.postprocessing.bilateral import BilateralParams, bilateral_filter
from clcplus_ops.raster_io import gdal_env, gdal_path
from clcplus_ops.sentinel2.reading import Grid
from clcplus_ops.store import Store, fingerprint

log = logging.getLogger(__name__)

STAGE = "filter"
STRIP_ROWS = 512  # output rows filtered at a time (the result does not depend on it)


class FilterError(RuntimeError):
    """The tile cannot be filtered (not classified yet, or a halo narrower than the filter)."""


def _grid_of(dataset) -> Grid:
    return Grid(dataset.crs.to_epsg(), dataset.transform, dataset.height, dataset.width)


def filter_tile_probabilities(
    config: Config,
    pu_id: str,
    reference_year: int,
    tile: ProcessingTile,
    *,
    force: bool = False,
    store: Store | None = None,
) -> dict:
    """Write the tile's bilaterally filtered probabilities; skipped when its record shows the
    same classified probabilities and filter parameters."""
    store = store or store_for(config)
    base = tile_url(config, reference_year, pu_id, tile.tile_id)
    classified = previous_stage(store, base, "classify", FilterError,
                                f"tile {tile.tile_id} ({pu_id} {reference_year}) has no probabilities")
    params = BilateralParams.from_config(config.bilateral)
    key = fingerprint(stage=STAGE, inputs={"tile": tile.to_dict(), "probabilities": classified.checksums},
                      params={"bilateral": params.to_dict()}, version=clcplus_ops.__version__)
    record_url = stage_record_url(base, STAGE)
    in_url, out_url = probs_io.probabilities_url(base), probs_io.filtered_url(base)
    if not force and store.is_current(record_url, key):
        log.info("%s: filtered probabilities are current, skipped", tile.tile_id)
        return {"tile_id": tile.tile_id, "skipped": True, "record": record_url}

    started = time.perf_counter()
    reach = params.extent
    with gdal_env(store.s3_settings), rasterio.open(gdal_path(in_url)) as source:
        grid = _grid_of(source)
        halo = (grid.width - tile.shape[1]) // 2
        if halo < reach:
            raise FilterError(f"tile {tile.tile_id}: its probabilities have a halo of {halo} px, less than the bilateral "
                              f"filter's reach of {reach} px (grid.halo_px must be at least (win_size - 1) // 2)")
        out_grid = grid.block(reach, reach, grid.height - 2 * reach, grid.width - 2 * reach)
        tags = source.tags()
        classes = [int(c) for c in tags["classes"].split(",")]
        changed = valid_pixels = 0
        with store.local_write(out_url) as path:
            with rasterio.open(path, "w", **probs_io.profile(out_grid, source.count)) as writer:
                probs_io.describe(writer, classes, config.codes.classes, model=tags.get("model", ""),
                                  model_sha256=tags.get("model_sha256", ""),
                                  bilateral=f"win_size={params.win_size} sigma_spatial={params.sigma_spatial} "
                                            f"sigma_color={params.sigma_color}")
                for row in range(0, out_grid.height, STRIP_ROWS):
                    rows = min(STRIP_ROWS, out_grid.height - row)
                    # Output row r is input row r + reach; its window spans input rows r .. r + 2 reach.
                    strip, valid = probs_io.decode(source.read(window=Window(0, row, grid.width, rows + 2 * reach)))
                    filtered = bilateral_filter(strip, valid, params)[:, reach:reach + rows, reach:grid.width - reach]
                    valid = valid[reach:reach + rows, reach:grid.width - reach]
                    encoded = probs_io.encode(filtered, valid)
                    before = strip[:, reach:reach + rows, reach:grid.width - reach].argmax(axis=0)
                    changed += int((before != filtered.argmax(axis=0))[valid].sum())
                    valid_pixels += int(valid.sum())
                    writer.write(encoded, window=Window(0, row, out_grid.width, rows))
            checksum = store.sha256(path.as_uri())
    details = {"seconds": round(time.perf_counter() - started, 2), "valid_pixels": valid_pixels,
               "top_class_changed": changed, "halo_px": halo - reach, "bilateral": params.to_dict()}
    store.write_record(record_url, stage=STAGE, fingerprint=key, outputs={"filtered": out_url},
                       checksums={out_url: checksum}, details=details)
    log.info("%s: bilateral filter changed the top class of %d of %d pixels (%.2f %%) in %.1f s", tile.tile_id,
             changed, valid_pixels, 100 * changed / max(valid_pixels, 1), details["seconds"])
    return {"tile_id": tile.tile_id, "skipped": False, "record": record_url, "top_class_changed": changed}
