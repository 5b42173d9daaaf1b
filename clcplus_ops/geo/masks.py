"""Polygons onto pixel grids: which pixels of a grid a geometry holds, by pixel centre, so that
adjacent polygons (production units) share every pixel out exactly once."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from clcplus_ops.geo.grid import Grid


def inside(geometry: BaseGeometry | None, grid: Grid) -> np.ndarray:
    """bool (rows, cols): True where the pixel centre lies in ``geometry`` (in ``grid``'s CRS).
    The geometry is clipped to the grid first, so a block of a large polygon costs what the
    block holds of it."""
    from rasterio import features

    if geometry is None or geometry.is_empty or grid.height == 0 or grid.width == 0:
        return np.zeros(grid.shape, bool)
    xmin, ymin, xmax, ymax = grid.bounds
    pad = grid.res
    part = shapely.clip_by_rect(geometry, xmin - pad, ymin - pad, xmax + pad, ymax + pad)
    if part.is_empty:
        return np.zeros(grid.shape, bool)
    return features.rasterize([(part, 1)], out_shape=grid.shape, transform=grid.transform, fill=0,
                              dtype="uint8", all_touched=False).astype(bool)
