"""The world's pixel grids: the snapped bounds, the internal arrays (bounds plus a margin) at
10 m and 20 m, and the default area (the demo layout's processing tiles with their halo).
Pixel grids and windows are :class:`clcplus_ops.geo.grid.Grid`'s.

Everything lies on multiples of 20 m, so a 10 m pixel sits in exactly one 20 m pixel and the
10 m and 20 m grids of every Sentinel-2 granule (origins on the 100 km MGRS lines) coincide
with the world's. The margin (120 m, a multiple of 60 m) lets a granule's extent, snapped
outward to its own 60 m grid, stay inside the internal arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clcplus_ops.config import Config
from clcplus_ops.geo.grid import Grid

SNAP_M = 20
MARGIN_M = 120
PIXEL_M = 10


def snap_bounds(bounds: tuple[float, float, float, float], step: int = SNAP_M) -> tuple[int, int, int, int]:
    """``bounds`` snapped outward to multiples of ``step`` metres."""
    xmin, ymin, xmax, ymax = bounds
    return (
        int(math.floor(xmin / step) * step),
        int(math.floor(ymin / step) * step),
        int(math.ceil(xmax / step) * step),
        int(math.ceil(ymax / step) * step),
    )


def default_area(config: Config) -> tuple[tuple[float, float, float, float], int]:
    """The union of the demo PUs' processing tiles, extended by the halo, and their EPSG."""
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.tiles import tiles_for_pu

    grid = config.for_layout("demo").grid
    tiles = [
        tile
        for pu in load_layout(config.layout_path("demo")).values()
        for tile in tiles_for_pu(pu, grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m)
    ]
    if not tiles:
        raise ValueError("the demo layout has no processing tiles; give synthetic.bounds and synthetic.epsg")
    epsgs = sorted({t.epsg for t in tiles})
    if len(epsgs) != 1:
        raise ValueError(
            f"the demo layout's tiles lie in several UTM zones {epsgs}; give synthetic.bounds and synthetic.epsg"
        )
    halo = grid.halo_px * grid.pixel_size_m
    xmin = min(t.bounds[0] for t in tiles) - halo
    ymin = min(t.bounds[1] for t in tiles) - halo
    xmax = max(t.bounds[2] for t in tiles) + halo
    ymax = max(t.bounds[3] for t in tiles) + halo
    return (xmin, ymin, xmax, ymax), epsgs[0]


@dataclass(frozen=True)
class WorldGrid:
    """The world (``bounds``, snapped) and its internal arrays (``bounds`` + ``MARGIN_M``)."""

    bounds: tuple[int, int, int, int]
    epsg: int

    def __post_init__(self) -> None:
        if any(v % SNAP_M for v in self.bounds):
            raise ValueError(f"world bounds {self.bounds} are not on the {SNAP_M} m grid")

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def inner_bounds(self) -> tuple[int, int, int, int]:
        xmin, ymin, xmax, ymax = self.bounds
        return (xmin - MARGIN_M, ymin - MARGIN_M, xmax + MARGIN_M, ymax + MARGIN_M)

    def array_grid(self, res: int = PIXEL_M) -> Grid:
        """The grid of the internal arrays at ``res`` metres."""
        return Grid.from_bounds(self.epsg, self.inner_bounds, res)

    def world_grid(self, res: int = PIXEL_M) -> Grid:
        """The grid of the world (its snapped bounds) at ``res`` metres."""
        return Grid.from_bounds(self.epsg, self.bounds, res)

    def shape(self, res: int = PIXEL_M) -> tuple[int, int]:
        """(rows, cols) of the internal arrays at ``res`` metres."""
        return self.array_grid(res).shape

    def world_shape(self, res: int = PIXEL_M) -> tuple[int, int]:
        return self.world_grid(res).shape

    def window(self, bounds: tuple[int, int, int, int], res: int) -> tuple[slice, slice]:
        """Row/column slices of the internal ``res`` grid covering ``bounds`` (on that grid)."""
        inner = self.array_grid(res)
        try:
            part = Grid.from_bounds(self.epsg, bounds, res)
            window = part.window_in(inner)
        except ValueError as error:
            raise ValueError(f"{bounds} is not on the {res} m grid of the world: {error}") from None
        if not inner.contains(part):
            raise ValueError(f"{bounds} leaves the world's internal grid {self.inner_bounds}")
        return window.toslices()

    def world_window(self, res: int = PIXEL_M) -> tuple[slice, slice]:
        return self.window(self.bounds, res)
