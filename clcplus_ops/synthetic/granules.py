"""The Sentinel-2 granules (MGRS tiles) a world falls in, and each item's extent.

A granule of square (x0, y0) spans x in [x0, x0 + 109 800] and y in [y0 + 100 000 - 109 800,
y0 + 100 000] (real granules overlap their east and south neighbours by 9.8 km); its 10, 20
and 60 m grids have the origin (x0, y0 + 100 000). An item covers the world's part of the
granule snapped outward to the granule's 60 m grid and clipped to the granule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clcplus_ops.geo.tiles import SQUARE_M, MgrsSquare, mgrs_squares
from clcplus_ops.synthetic.grid import WorldGrid

GRANULE_M = 109_800
GRID_60_M = 60


@dataclass(frozen=True)
class Granule:
    square: MgrsSquare
    bounds: tuple[int, int, int, int]  # the item's extent, on the granule's 60 m grid

    @property
    def square_id(self) -> str:
        return self.square.square_id

    @property
    def extent(self) -> tuple[int, int, int, int]:
        """The whole granule."""
        top = self.square.y0 + SQUARE_M
        return (self.square.x0, top - GRANULE_M, self.square.x0 + GRANULE_M, top)

    def shape(self, res: int) -> tuple[int, int]:
        xmin, ymin, xmax, ymax = self.bounds
        return ((ymax - ymin) // res, (xmax - xmin) // res)

    def world_part(self, grid: WorldGrid) -> tuple[int, int, int, int]:
        """The item's extent clipped to the world's bounds."""
        xmin, ymin, xmax, ymax = self.bounds
        wx0, wy0, wx1, wy1 = grid.bounds
        return (max(xmin, wx0), max(ymin, wy0), min(xmax, wx1), min(ymax, wy1))


def granules_for(grid: WorldGrid) -> list[Granule]:
    """Granules of the world's UTM zone whose extent meets the world, sorted by square id."""
    wx0, wy0, wx1, wy1 = grid.bounds
    found = []
    for square in sorted(mgrs_squares().values(), key=lambda s: s.square_id):
        if square.epsg != grid.epsg:
            continue
        top = square.y0 + SQUARE_M
        gx0, gy0, gx1, gy1 = square.x0, top - GRANULE_M, square.x0 + GRANULE_M, top
        ix0, iy0, ix1, iy1 = max(wx0, gx0), max(wy0, gy0), min(wx1, gx1), min(wy1, gy1)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        snap = GRID_60_M
        bounds = (
            gx0 + math.floor((ix0 - gx0) / snap) * snap,
            top - math.ceil((top - iy0) / snap) * snap,
            gx0 + math.ceil((ix1 - gx0) / snap) * snap,
            top - math.floor((top - iy1) / snap) * snap,
        )
        bounds = (max(bounds[0], gx0), max(bounds[1], gy0), min(bounds[2], gx1), min(bounds[3], gy1))
        found.append(Granule(square, tuple(int(v) for v in bounds)))
    if not found:
        raise ValueError(f"no Sentinel-2 granule of EPSG:{grid.epsg} covers the world {grid.bounds}")
    return found
