"""Processing tiles: squares nested in the 100 km MGRS squares of the Sentinel-2 grid, in the
UTM zone of the square, on the 10 m UTM pixel grid (ATBD 3.1.5 c: 25 km tiles "nested in the
S-2 tile grid").

A tile id reads ``{MGRS square}_r{row}c{col}``, rows counted from the north and columns from
the west inside the square: ``33TVL_r0c3`` is the north-east 25 km tile of square 33TVL.
Each point on the ground belongs to one UTM zone (with the MGRS exceptions around Norway and
Svalbard), so a production unit spanning two zones gets tiles from both, each tile kept where it
meets the part of the unit in its own zone. Where the Sentinel-2 grid has no square of the home
zone (it leaves zone edges to the overlapping squares of the neighbour), the neighbour's tiles
cover that ground.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass
from functools import lru_cache

import geopandas as gpd
import numpy as np
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from clcplus_ops.resources import S2_SQUARES_CSV

SQUARE_M = 100_000
TILE_ID = re.compile(r"^(?P<square>\d{2}[C-X][A-Z]{2})_r(?P<row>\d+)c(?P<col>\d+)$")


@dataclass(frozen=True)
class MgrsSquare:
    square_id: str  # "33TVL"
    epsg: int
    x0: int  # lower-left corner, UTM metres
    y0: int


@dataclass(frozen=True, order=True)
class ProcessingTile:
    tile_id: str
    square_id: str
    epsg: int
    row: int  # from the north
    col: int  # from the west
    bounds: tuple[int, int, int, int]  # UTM metres (xmin, ymin, xmax, ymax)
    pixel_size_m: int

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of pixels."""
        xmin, ymin, xmax, ymax = self.bounds
        return ((ymax - ymin) // self.pixel_size_m, (xmax - xmin) // self.pixel_size_m)

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL-order affine (x origin, pixel width, 0, y origin, 0, -pixel height)."""
        xmin, _, _, ymax = self.bounds
        return (float(xmin), float(self.pixel_size_m), 0.0, float(ymax), 0.0, -float(self.pixel_size_m))

    def grid(self, halo_px: int = 0):
        """The tile's pixel grid extended by ``halo_px`` pixels on every side."""
        from clcplus_ops.geo.grid import Grid

        return Grid.from_bounds(self.epsg, tuple(float(v) for v in self.bounds), self.pixel_size_m).pad(halo_px)

    def to_dict(self) -> dict:
        record = asdict(self)
        record.update(crs=self.crs, shape=list(self.shape), bounds=list(self.bounds), transform=list(self.transform))
        return record


@lru_cache(maxsize=1)
def mgrs_squares() -> dict[str, MgrsSquare]:
    """The packaged Sentinel-2 100 km squares near the AOI, by MGRS id."""
    with open(S2_SQUARES_CSV, newline="") as table:
        return {
            row["tile_id"]: MgrsSquare(row["tile_id"], int(row["epsg"]), int(row["x0"]), int(row["y0"]))
            for row in csv.DictReader(table)
        }


# --- UTM zones with the MGRS exceptions --------------------------------------------------

# (zone, lon/lat box) pairs that override the regular 6-degree zones north of the equator.
_NORWAY = (32, (3.0, 56.0, 12.0, 64.0))
_SVALBARD = [(31, (0.0, 72.0, 9.0, 84.0)), (33, (9.0, 72.0, 21.0, 84.0)),
             (35, (21.0, 72.0, 33.0, 84.0)), (37, (33.0, 72.0, 42.0, 84.0))]


@lru_cache(maxsize=256)
def zone_region(epsg: int) -> BaseGeometry:
    """Lon/lat polygon of the ground whose home is UTM ``epsg`` (326zz north, 327zz south)."""
    zone, north = epsg % 100, epsg // 100 == 326
    lon0 = -180.0 + (zone - 1) * 6.0
    if not north:
        return box(lon0, -80.0, lon0 + 6.0, 0.0)
    region = box(lon0, 0.0, lon0 + 6.0, 84.0)
    exceptions = [_NORWAY] + _SVALBARD
    region = region.difference(shapely.union_all([box(*b) for _, b in exceptions]))
    own = [box(*b) for z, b in exceptions if z == zone]
    return shapely.union_all([region, *own]) if own else region


def home_epsg(lon: float, lat: float) -> int:
    """UTM EPSG code of a lon/lat point under the MGRS zone rules."""
    north = lat >= 0
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    if north:
        for z, (x0, y0, x1, y1) in [_NORWAY] + _SVALBARD:
            if x0 <= lon < x1 and y0 <= lat < y1:
                zone = z
                break
    return (32600 if north else 32700) + zone


def home_epsg_array(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """:func:`home_epsg` of many lon/lat points at once (int64 array of EPSG codes)."""
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    north = lat >= 0
    zone = np.floor((lon + 180.0) / 6.0).astype(np.int64) % 60 + 1
    for z, (x0, y0, x1, y1) in reversed([_NORWAY] + _SVALBARD):  # the first match wins, as in home_epsg
        zone = np.where(north & (lon >= x0) & (lon < x1) & (lat >= y0) & (lat < y1), z, zone)
    return np.where(north, 32600, 32700) + zone


# --- tiles -------------------------------------------------------------------------------

def tiles_per_side(tile_size_m: int) -> int:
    if SQUARE_M % tile_size_m:
        raise ValueError(f"tile size {tile_size_m} m does not divide the 100 km MGRS square")
    return SQUARE_M // tile_size_m


def tile_id(square_id: str, row: int, col: int, tile_size_m: int) -> str:
    width = len(str(tiles_per_side(tile_size_m) - 1))
    return f"{square_id}_r{row:0{width}d}c{col:0{width}d}"


def tile_from_id(identifier: str, tile_size_m: int, pixel_size_m: int = 10) -> ProcessingTile:
    """Rebuild a tile from its id; raises ValueError naming the problem for a bad id."""
    match = TILE_ID.match(identifier)
    if not match:
        raise ValueError(f"{identifier!r} is not a tile id like '33TVL_r0c3'")
    square = mgrs_squares().get(match["square"])
    if square is None:
        raise ValueError(f"{identifier!r}: MGRS square {match['square']} is not in the Sentinel-2 grid of the AOI")
    row, col, n = int(match["row"]), int(match["col"]), tiles_per_side(tile_size_m)
    if not (0 <= row < n and 0 <= col < n) or identifier != tile_id(square.square_id, row, col, tile_size_m):
        raise ValueError(f"{identifier!r} is not a tile of the {tile_size_m} m grid (rows/cols 0..{n - 1})")
    return _make_tile(square, row, col, tile_size_m, pixel_size_m)


def _make_tile(square: MgrsSquare, row: int, col: int, size: int, pixel_size_m: int) -> ProcessingTile:
    xmin = square.x0 + col * size
    ymax = square.y0 + SQUARE_M - row * size
    return ProcessingTile(
        tile_id=tile_id(square.square_id, row, col, size),
        square_id=square.square_id,
        epsg=square.epsg,
        row=row,
        col=col,
        bounds=(xmin, ymax - size, xmin + size, ymax),
        pixel_size_m=pixel_size_m,
    )


def _to_crs(geometry: BaseGeometry, src: str, dst: str) -> BaseGeometry:
    return gpd.GeoSeries([geometry], crs=src).to_crs(dst).iloc[0]


def _square_tiles(square: MgrsSquare, tile_size_m: int):
    n = tiles_per_side(tile_size_m)
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n), indexing="ij"))
    xmin = square.x0 + cols * tile_size_m
    ymax = square.y0 + SQUARE_M - rows * tile_size_m
    return rows, cols, shapely.box(xmin, ymax - tile_size_m, xmin + tile_size_m, ymax)


def _tiles_meeting(area_utm: BaseGeometry, squares: tuple[MgrsSquare, ...], tile_size_m: int, pixel_size_m: int) -> list[ProcessingTile]:
    shapely.prepare(area_utm)
    minx, miny, maxx, maxy = area_utm.bounds
    found = []
    for square in squares:
        if square.x0 >= maxx or square.x0 + SQUARE_M <= minx or square.y0 >= maxy or square.y0 + SQUARE_M <= miny:
            continue
        rows, cols, boxes = _square_tiles(square, tile_size_m)
        hit = shapely.intersects(area_utm, boxes)
        if hit.any():
            # Edge contact alone is not coverage.
            hit[hit] = shapely.area(shapely.intersection(boxes[hit], area_utm)) > 0
            found += [_make_tile(square, int(r), int(c), tile_size_m, pixel_size_m) for r, c in zip(rows[hit], cols[hit])]
    return found


@lru_cache(maxsize=1)
def _squares_by_epsg() -> dict[int, tuple[MgrsSquare, ...]]:
    by_epsg: dict[int, list[MgrsSquare]] = {}
    for square in mgrs_squares().values():
        by_epsg.setdefault(square.epsg, []).append(square)
    return {epsg: tuple(squares) for epsg, squares in sorted(by_epsg.items())}


@lru_cache(maxsize=256)
def _zone_squares_union(epsg: int) -> BaseGeometry:
    """The ground (UTM metres) that zone ``epsg``'s own 100 km squares cover."""
    return shapely.union_all([box(q.x0, q.y0, q.x0 + SQUARE_M, q.y0 + SQUARE_M) for q in _squares_by_epsg()[epsg]])


@lru_cache(maxsize=256)
def _zone_region_dense(epsg: int) -> BaseGeometry:
    return shapely.segmentize(zone_region(epsg), 0.05)


def tiles_for_area(
    area_lonlat: BaseGeometry, tile_size_m: int = 25_000, pixel_size_m: int = 10
) -> list[ProcessingTile]:
    """Tiles meeting (with positive area) a lon/lat polygon, sorted by id.

    Ground is tiled in its home UTM zone; where the Sentinel-2 grid has no square of the home
    zone (it leaves zone edges to the overlapping squares of the neighbour), in the zone whose
    squares do cover it.
    """
    by_epsg = _squares_by_epsg()
    # Densify before reprojecting so long straight edges (zone borders) stay true.
    area_lonlat = shapely.segmentize(area_lonlat, 0.05)
    found: set[ProcessingTile] = set()
    uncovered: dict[int, BaseGeometry] = {}
    for epsg, squares in by_epsg.items():
        part = area_lonlat.intersection(_zone_region_dense(epsg))
        if part.is_empty or part.area == 0:
            continue
        part_utm = _to_crs(part, "EPSG:4326", f"EPSG:{epsg}")
        found.update(_tiles_meeting(part_utm, squares, tile_size_m, pixel_size_m))
        rest = part_utm.difference(_zone_squares_union(epsg))
        if rest.area > 1.0:
            uncovered[epsg] = _to_crs(shapely.segmentize(rest, 5_000.0), f"EPSG:{epsg}", "EPSG:4326")
    for home, rest_lonlat in uncovered.items():
        # Neighbouring zones of the same hemisphere (two apart around Svalbard).
        for epsg in (home - 2, home - 1, home + 1, home + 2):
            if epsg in by_epsg:
                rest_utm = _to_crs(rest_lonlat, "EPSG:4326", f"EPSG:{epsg}")
                found.update(_tiles_meeting(rest_utm, by_epsg[epsg], tile_size_m, pixel_size_m))
    return sorted(found)


def buffered_lonlat(geometry_lonlat: BaseGeometry, crs: str, buffer_m: float) -> BaseGeometry:
    """A lon/lat geometry buffered by ``buffer_m`` metres, measured in ``crs``."""
    if not buffer_m:
        return geometry_lonlat
    projected = _to_crs(geometry_lonlat, "EPSG:4326", crs).buffer(buffer_m)
    return _to_crs(shapely.segmentize(projected, 5_000.0), crs, "EPSG:4326")


def tiles_for_pu(pu, tile_size_m: int = 25_000, buffer_m: float = 10_000.0, pixel_size_m: int = 10) -> list[ProcessingTile]:
    """The tiles of a production unit: those meeting the unit buffered by ``buffer_m``."""
    area = buffered_lonlat(pu.geometry, pu.crs, buffer_m)
    return tiles_for_area(area, tile_size_m, pixel_size_m)
