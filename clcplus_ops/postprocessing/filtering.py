"""The filter stage: the bilateral filter (ATBD 3.1.6 a) on one tile's class probabilities.

Input: ``probabilities.tif`` of the classify stage (tile grid plus the ingestion halo). Output:
``probabilities_filtered.tif`` on the tile plus a halo narrower by the filter's reach, where
every pixel has its whole window, so the filtered tiles' cores mosaic to exactly the filtered
whole (:func:`~clcplus_ops.postprocessing.bilateral.filter_tile`). The output is made in strips
of ``bilateral.block_px`` rows: each strip is read with the reach around it and filtered by
``filter_tile``, so memory is bounded by the strip, not by the tile (full-width strips keep
the file's block order, and so its bytes, as they were).

The filter (numba) is imported only when a tile is filtered (DAG files import this module to
declare their tasks).
"""

from __future__ import annotations

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.errors import ClcplusError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.stage import Stage, StageIO, blocks_with_progress


class FilterError(ClcplusError):
    """The tile cannot be filtered (a halo narrower than the filter)."""


def _params(config, target, options) -> dict:
    from clcplus_ops.postprocessing.bilateral import BilateralParams

    return {"bilateral": BilateralParams.from_config(config.bilateral).to_dict(),
            "encoding": probs_io.encoding(), "profile": config.rasters.probabilities.model_dump()}


def _compute(io: StageIO) -> dict:
    from clcplus_ops.postprocessing.bilateral import BilateralParams, filter_tile

    params = BilateralParams.from_config(io.config.bilateral)
    reach = params.extent
    tile = io.tile
    with io.input("classify", "probabilities").raster() as source:
        grid = Grid.of_dataset(source)
        halo = (grid.width - tile.shape[1]) // 2
        if halo < reach:
            raise FilterError(f"tile {tile.tile_id}: its probabilities have a halo of {halo} px, less than the bilateral "
                              f"filter's reach of {reach} px (grid.halo_px must be at least (win_size - 1) // 2)")
        out_grid = grid.crop(reach)
        tags = source.tags()
        classes = [int(c) for c in tags["classes"].split(",")]
        changed = valid_pixels = 0
        with io.raster("filtered", out_grid, source.count, probs_io.DTYPE, probs_io.NODATA, "probabilities") as writer:
            probs_io.describe(writer, classes, io.config.codes.classes, model=tags.get("model", ""),
                              model_sha256=tags.get("model_sha256", ""),
                              bilateral=f"win_size={params.win_size} sigma_spatial={params.sigma_spatial} "
                                        f"sigma_color={params.sigma_color}")
            for _, _, block in blocks_with_progress(out_grid, io.config.bilateral.block_px, io.log, tile.tile_id,
                                                   strips=True):
                window = block.pad(reach).window_in(grid)  # inside the input: out_grid is cropped by reach
                probabilities, valid = probs_io.decode(source.read(window=window))
                filtered = filter_tile(probabilities, valid, params, reach)
                valid = valid[reach:-reach or None, reach:-reach or None]
                before = probabilities[:, reach:reach + block.height, reach:reach + block.width].argmax(axis=0)
                changed += int((before != filtered.argmax(axis=0))[valid].sum())
                valid_pixels += int(valid.sum())
                writer.write(probs_io.encode(filtered, valid), window=block.window_in(out_grid))
    io.log.info("%s: bilateral filter changed the top class of %d of %d pixels (%.2f %%)", tile.tile_id, changed,
                valid_pixels, 100 * changed / max(valid_pixels, 1))
    return {"valid_pixels": valid_pixels, "top_class_changed": changed, "halo_px": halo - reach,
            "bilateral": params.to_dict()}


FILTER = Stage(
    name="filter",
    scope="tile",
    inputs=("classify",),
    outputs={"filtered": "probabilities_filtered.tif"},
    params=_params,
    compute=_compute,
    summary=("top_class_changed", "valid_pixels"),
    permanent_errors=(FilterError,),
    description="bilateral filter of the tile's class probabilities",
)
