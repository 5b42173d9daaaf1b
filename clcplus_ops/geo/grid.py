"""One pixel-grid type for every raster of the chain: a processing tile with its halo, a block of
it, the synthetic world's arrays, a PU mosaic and a 100 km product tile.

A :class:`Grid` is a CRS (EPSG code), a north-up affine transform and a shape. It pads and
crops by a halo, cuts itself into blocks, gives the window of another grid aligned with it, and
its footprint in lon/lat. All operations are exact integer pixel arithmetic on aligned grids.

Why not odc-geo's ``GeoBox``: it is the well-kept library for this, and its ``pad``, ``crop``,
``overlap_roi`` and ``GeoboxTiles`` do what this module does. We use a tenth of it, the rest
(coordinate arrays, xarray glue, its own CRS class) would be one more dependency and one more
grid vocabulary next to rasterio's windows and profiles that every stage already speaks; our
grids are always north-up, aligned and integer, and they serialise into stage records as plain
JSON. Swapping this class for a thin wrapper over ``GeoBox`` stays possible: nothing outside
``geo/`` builds a transform by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.windows import Window


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: ``epsg``, ``transform`` (upper-left corner, square pixels) and
    ``height`` x ``width`` pixels."""

    epsg: int
    transform: Affine
    height: int
    width: int

    def __post_init__(self) -> None:
        t = self.transform
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise ValueError(f"grids are north-up with positive pixel size, got {tuple(t)[:6]}")
        if self.height < 0 or self.width < 0:
            raise ValueError(f"grid shape must not be negative, got {self.height} x {self.width}")

    # ---- construction --------------------------------------------------------------------------

    @classmethod
    def from_bounds(cls, epsg: int, bounds: tuple[float, float, float, float], res: float) -> Grid:
        """The grid of ``res`` pixels exactly covering ``bounds`` (xmin, ymin, xmax, ymax)."""
        xmin, ymin, xmax, ymax = bounds
        width, height = (xmax - xmin) / res, (ymax - ymin) / res
        if abs(width - round(width)) > 1e-6 or abs(height - round(height)) > 1e-6:
            raise ValueError(f"bounds {bounds} are not a whole number of {res} m pixels")
        return cls(int(epsg), Affine(res, 0.0, xmin, 0.0, -res, ymax), int(round(height)), int(round(width)))

    @classmethod
    def of_dataset(cls, dataset) -> Grid:
        """The grid of an open rasterio dataset."""
        if dataset.crs is None:
            raise ValueError(f"{dataset.name} has no CRS")
        return cls(int(dataset.crs.to_epsg()), dataset.transform, dataset.height, dataset.width)

    @classmethod
    def from_dict(cls, data: dict) -> Grid:
        return cls(int(data["epsg"]), Affine(*data["transform"][:6]), int(data["height"]), int(data["width"]))

    def to_dict(self) -> dict:
        return {"epsg": self.epsg, "transform": list(self.transform)[:6], "height": self.height, "width": self.width}

    # ---- properties ----------------------------------------------------------------------------

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def res(self) -> float:
        return self.transform.a

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        x0, y0 = self.transform.c, self.transform.f
        return (x0, y0 + self.height * self.transform.e, x0 + self.width * self.transform.a, y0)

    # ---- derived grids -------------------------------------------------------------------------

    def pad(self, px: int) -> Grid:
        """The grid extended by ``px`` pixels on every side (a negative ``px`` crops)."""
        if self.height + 2 * px < 0 or self.width + 2 * px < 0:
            raise ValueError(f"cannot crop {-px} px from every side of a {self.height} x {self.width} grid")
        return Grid(self.epsg, self.transform @ Affine.translation(-px, -px), self.height + 2 * px,
                    self.width + 2 * px)

    def crop(self, px: int) -> Grid:
        """The grid without ``px`` pixels on every side."""
        return self.pad(-px)

    def block(self, row: int, col: int, height: int, width: int) -> Grid:
        """The sub-grid of ``height`` x ``width`` pixels from (``row``, ``col``)."""
        return Grid(self.epsg, self.transform @ Affine.translation(col, row), height, width)

    def blocks(self, size: int) -> Iterator[tuple[int, int, Grid]]:
        """(row, col, sub-grid) blocks of at most ``size`` x ``size`` pixels, row-major."""
        if size < 1:
            raise ValueError(f"block size must be positive, got {size}")
        for row in range(0, self.height, size):
            for col in range(0, self.width, size):
                yield row, col, self.block(row, col, min(size, self.height - row), min(size, self.width - col))

    def strips(self, rows: int) -> Iterator[tuple[int, int, Grid]]:
        """(row, 0, sub-grid) full-width strips of at most ``rows`` rows, top to bottom."""
        if rows < 1:
            raise ValueError(f"strip height must be positive, got {rows}")
        for row in range(0, self.height, rows):
            yield row, 0, self.block(row, 0, min(rows, self.height - row), self.width)

    def window_in(self, other: Grid) -> Window:
        """This grid's window in ``other`` (same CRS and pixel size, aligned); it may reach
        outside ``other`` (negative offsets or past its edge)."""
        if other.epsg != self.epsg or not np.isclose(other.res, self.res):
            raise ValueError(f"grids differ in CRS or pixel size: {self.crs} {self.res} m vs {other.crs} {other.res} m")
        col = (self.transform.c - other.transform.c) / other.res
        row = (other.transform.f - self.transform.f) / other.res
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            raise ValueError(f"grids are not aligned: offset ({row}, {col}) px")
        return Window(int(round(col)), int(round(row)), self.width, self.height)

    def intersection(self, other: Grid) -> Grid | None:
        """The part of this grid that ``other`` (aligned) also covers; None if they do not meet."""
        w = other.window_in(self)
        r0, c0 = max(w.row_off, 0), max(w.col_off, 0)
        r1, c1 = min(w.row_off + w.height, self.height), min(w.col_off + w.width, self.width)
        return self.block(r0, c0, r1 - r0, c1 - c0) if r1 > r0 and c1 > c0 else None

    def contains(self, other: Grid) -> bool:
        """Whether ``other`` (aligned) lies wholly inside this grid."""
        w = other.window_in(self)
        return w.col_off >= 0 and w.row_off >= 0 and w.col_off + w.width <= self.width \
            and w.row_off + w.height <= self.height

    def pixel_of(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of the pixel containing each point (in this grid's CRS)."""
        t = self.transform
        cols = np.floor((np.asarray(x, np.float64) - t.c) / t.a).astype(np.int64)
        rows = np.floor((np.asarray(y, np.float64) - t.f) / t.e).astype(np.int64)
        return rows, cols

    def footprint_lonlat(self):
        """The grid's outline in lon/lat, densified so it follows the projection's curvature."""
        import shapely
        from pyproj import Transformer
        from shapely.geometry import box

        to_lonlat = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        outline = box(*self.bounds).segmentize(max(self.width, self.height, 1) * self.res / 8)
        return shapely.transform(outline, lambda xy: np.column_stack(to_lonlat.transform(xy[:, 0], xy[:, 1])))
