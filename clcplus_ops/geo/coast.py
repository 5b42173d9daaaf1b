"""The delivery area and the coastal seawater mask (ATBD 3.1.6 e) around a grid.

* **delivery area**: the EEA38 + UK boundary (the packaged Natural Earth countries, the DOMs
  included, the excluded territories of :mod:`clcplus_ops.geo.aoi` left out) buffered by
  ``grid.aoi_buffer_m`` (250 m). Outside it a layer holds "outside area" (254).
* **land**: the polygons of a coastline source: by default the packaged Natural Earth countries,
  those of EEA38 + UK and their neighbours beyond it (so the ring of the delivery area on a
  neighbouring country's land stays land); ``layers.coastline_path`` names any other vector file
  of land polygons (EU-Hydro's coastline, polygonised). Delivery area minus land is coastal
  seawater (253).

Both are returned clipped to the grid (plus a margin) in its CRS, ready for
:func:`clcplus_ops.geo.masks.inside` block by block.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import geopandas as gpd
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from clcplus_ops.geo import aoi
from clcplus_ops.geo.grid import Grid
from clcplus_ops.resources import COUNTRIES_GEOJSON, LAND_BEYOND_AOI_GEOJSON

_MARGIN_M = 1_000.0


class CoastlineError(ValueError):
    """A coastline file that cannot be used (missing, unreadable, without polygons)."""


@lru_cache(maxsize=1)
def aoi_lonlat() -> BaseGeometry:
    """EEA38 + UK with the DOMs, without the excluded territories, EPSG:4326."""
    land = shapely.union_all(aoi.countries().geometry.values)
    return land.difference(shapely.union_all([box(*b) for b in aoi.EXCLUDED_LONLAT_BOXES.values()]))


def _around(grid: Grid, margin_m: float) -> tuple[BaseGeometry, BaseGeometry]:
    """The grid widened by ``margin_m``: its box in its CRS and its outline in lon/lat."""
    padded = grid.pad(int(margin_m // grid.res) + 1)
    return box(*padded.bounds), padded.footprint_lonlat().buffer(0.01)


def _to_grid(geometry_lonlat: BaseGeometry, grid: Grid, area: BaseGeometry) -> BaseGeometry:
    if geometry_lonlat.is_empty:
        return geometry_lonlat
    # Densify first: a straight edge in lon/lat is curved on the grid.
    dense = shapely.segmentize(geometry_lonlat, 0.001)
    projected = gpd.GeoSeries([dense], crs="EPSG:4326").to_crs(grid.crs).iloc[0]
    return shapely.make_valid(projected).intersection(area)


def delivery_area(grid: Grid, buffer_m: float) -> BaseGeometry:
    """The AOI buffered by ``buffer_m`` around ``grid``, in its CRS."""
    area, lonlat = _around(grid, buffer_m + _MARGIN_M)
    near = _to_grid(aoi_lonlat().intersection(lonlat), grid, area)
    return near.buffer(buffer_m) if buffer_m else near


def coastline_identity(path: str | None) -> dict:
    """What enters a stage's fingerprint for the coastline source: the file's name and sha256."""
    files = [Path(path)] if path else [COUNTRIES_GEOJSON, LAND_BEYOND_AOI_GEOJSON]
    out = {}
    for file in files:
        if not file.is_file():
            raise CoastlineError(f"coastline file {file} does not exist (layers.coastline_path)")
        out[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def land(grid: Grid, path: str | None = None) -> BaseGeometry:
    """Land around ``grid`` in its CRS, from ``path`` (land polygons) or the packaged countries."""
    area, lonlat = _around(grid, _MARGIN_M)
    if path is None:
        parts = [aoi.countries().geometry.values, gpd.read_file(LAND_BEYOND_AOI_GEOJSON).geometry.values]
        near = shapely.union_all([shapely.intersection(g, lonlat) for part in parts for g in part])
        return _to_grid(near, grid, area)
    try:
        frame = gpd.read_file(path, bbox=gpd.GeoSeries([lonlat], crs="EPSG:4326"))
    except Exception as error:  # pyogrio raises several types for unreadable files
        raise CoastlineError(f"coastline file {path} cannot be read: {error}") from error
    if frame.crs is None:
        raise CoastlineError(f"coastline file {path} has no CRS")
    polygons = frame[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if len(frame) and polygons.empty:
        raise CoastlineError(f"coastline file {path} holds no polygons (land polygons are needed, "
                             f"found {sorted(set(frame.geometry.geom_type))})")
    projected = polygons.to_crs(grid.crs).geometry.values
    return shapely.make_valid(shapely.union_all(projected)).intersection(area) if len(projected) else \
        shapely.Polygon()
