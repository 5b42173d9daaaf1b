"""The part of a PU's tile that its products use: the PU's area plus its buffer.

A 25 km tile is planned for a PU when it touches the PU, so much of it can lie beyond the PU's
buffer (``grid.pu_buffer_m``): there the PU's blending weight is 0 and neither the PU's own
blend (its area only) nor a neighbour's (the PU's weight ends at its buffer's outer edge) reads
its probabilities. Classifying only the buffered area, with a margin that keeps every pixel
these stages use exactly as it was, saves about a quarter of the production's classification:

* the bilateral filter's window (``bilateral.win_size`` pixels each side): a used pixel's filtered
  value reads its window, which must be classified;
* the mosaic's bilinear resampling onto the product grid (two source pixels each side, the
  rotation from UTM to LAEA under a pixel);
* the blending lattice (``blending.distance_cell_m``): weights come from distances interpolated
  on it, exact to a cell, so a pixel the interpolation puts just inside the buffer counts.

The margin is two lattice cells plus ``win_size + 4`` pixels (280 m with the defaults). Outside,
the classify stage writes no data (as for a pixel without observations); the stages after it
already treat those pixels as absent. The buffered geometry is computed in the PU's own CRS (its
product grid's, where blending measures distances) and reprojected to the tile's UTM zone.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np


def margin_m(config) -> float:
    """Beyond the PU buffer, what the filter window, the resampling and the lattice reach."""
    return 2 * config.blending.distance_cell_m + (config.bilateral.win_size + 4) * config.grid.pixel_size_m


def reach_m(config) -> float:
    """How far outside its border a PU's tiles are classified."""
    return config.grid.pu_buffer_m + margin_m(config)


@lru_cache(maxsize=256)
def _buffered(layout_path: str, mtime_ns: int, pu_id: str, distance_m: float, epsg: int | None):
    """(digest of the PU's polygon, the polygon buffered by ``distance_m`` in its own CRS and
    reprojected to EPSG:``epsg`` (its own CRS when None), that own CRS)."""
    from clcplus_ops.geo.layout import _reproject, load_layout
    from clcplus_ops.postprocessing.mosaic import area_hash

    if epsg is not None:  # from the cached buffer in the PU's own CRS
        digest, own, crs = _buffered(layout_path, mtime_ns, pu_id, distance_m, None)
        return digest, _reproject(own, crs, f"EPSG:{epsg}"), crs
    unit = load_layout(layout_path)[pu_id]
    return area_hash(unit), unit.geometry_in(unit.crs).buffer(distance_m), unit.crs


def buffered(config, layout: str, pu_id: str, distance_m: float, epsg: int | None = None):
    """(digest of ``pu_id``'s polygon in ``layout``, the polygon buffered by ``distance_m`` in the
    PU's CRS, reprojected to EPSG:``epsg`` when given); cached per layout file version."""
    path = str(config.layout_path(layout))
    return _buffered(path, os.stat(path).st_mtime_ns, pu_id, float(distance_m), epsg)[:2]


def identity(config, layout: str, pu_id: str) -> dict | None:
    """What the classified area depends on (for the classify stage's fingerprint); None when
    ``inference.pu_area_only`` is off (the whole tile is classified)."""
    if not config.inference.pu_area_only:
        return None
    digest, _ = buffered(config, layout, pu_id, reach_m(config))
    return {"pu_polygon": digest, "reach_m": reach_m(config)}


def needed(config, layout: str, pu_id: str, grid) -> np.ndarray | None:
    """bool (rows, cols) on ``grid`` (a tile's, any UTM zone): True where the PU's products use
    the pixel; None when ``inference.pu_area_only`` is off (every pixel)."""
    if not config.inference.pu_area_only:
        return None
    return within(config, layout, pu_id, grid, reach_m(config))


def within(config, layout: str, pu_id: str, grid, distance_m: float) -> np.ndarray:
    """bool (rows, cols) on ``grid``: pixel centres within ``distance_m`` of the PU's area."""
    from clcplus_ops.geo.masks import inside

    return inside(buffered(config, layout, pu_id, distance_m, grid.epsg)[1], grid)
