"""The product grid: 100 km cells of the EEA reference grid (EPSG:3035), their tile codes and
the product file names of the EEA delivery checks (product definition
``clms_clcplus_ras_s2023_r10m``); the French DOMs are delivered whole, in their UTM zones."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from clcplus_ops.geo.aoi import DOMS, EEA_CRS
from clcplus_ops.resources import CONVENTIONS_DIR, PRODUCT_DEFINITION_JSON

CELL_M = 100_000
LAYERS = ("ras", "rascl", "rasdl", "raspl")
_CODE = re.compile(r"^e(\d{2})n(\d{2})$")


@dataclass(frozen=True, order=True)
class ProductTile:
    """One 100 km delivery tile: an EEA grid cell, or a whole DOM."""

    code: str  # "e44n36" for an EEA cell, "gf" for a DOM
    epsg: int
    bounds: tuple[float, float, float, float] | None  # EPSG:3035 metres; None for a DOM

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"

    def grid(self, res: int, aoi_buffer_m: float):
        """The tile's pixel grid (``res``: ``grid.pixel_size_m``): the 100 km cell (10,000 x
        10,000 px at 10 m, origin on the 100 km lines); for a DOM, its land buffered by
        ``aoi_buffer_m`` (``grid.aoi_buffer_m``) in its UTM zone, the bounds snapped outward to
        the ``res`` grid."""
        import math

        from clcplus_ops.geo.grid import Grid

        if self.bounds is not None:
            return Grid.from_bounds(self.epsg, self.bounds, res)
        from clcplus_ops.geo.aoi import dom_aoi

        xmin, ymin, xmax, ymax = dom_aoi(self.code, aoi_buffer_m).bounds
        snapped = (math.floor(xmin / res) * res, math.floor(ymin / res) * res,
                   math.ceil(xmax / res) * res, math.ceil(ymax / res) * res)
        return Grid.from_bounds(self.epsg, snapped, res)


def pu_grid(unit, res: int, buffer_m: float):
    """A production unit's part of the product grid: its area plus ``buffer_m`` in its product
    CRS (EPSG:3035; a DOM's UTM zone), the bounds snapped outward to whole ``res`` pixels, so that
    pixel edges fall on the 100 km reference lines and every PU's grid is a window of one grid."""
    import math

    from clcplus_ops.geo.grid import Grid

    area = unit.geometry_in(unit.crs).buffer(buffer_m) if buffer_m else unit.geometry_in(unit.crs)
    xmin, ymin, xmax, ymax = area.bounds
    snapped = (math.floor(xmin / res) * res, math.floor(ymin / res) * res,
               math.ceil(xmax / res) * res, math.ceil(ymax / res) * res)
    return Grid.from_bounds(int(unit.crs.split(":")[1]), snapped, res)


def tile_code(easting_m: float, northing_m: float) -> str:
    """Tile code of the cell whose lower-left corner is (easting, northing): "e44n36"."""
    return f"e{int(easting_m) // CELL_M:02d}n{int(northing_m) // CELL_M:02d}"


def cell_bounds(code: str) -> tuple[float, float, float, float]:
    match = _CODE.match(code)
    if not match:
        raise ValueError(f"{code!r} is not an EEA 100 km tile code like 'e44n36'")
    e, n = (int(g) * CELL_M for g in match.groups())
    return (e, n, e + CELL_M, n + CELL_M)


def product_tile(code: str) -> ProductTile:
    if code in DOMS:
        return ProductTile(code, DOMS[code].epsg, None)
    return ProductTile(code, 3035, cell_bounds(code))


def cells_covering(geometry: BaseGeometry) -> list[str]:
    """Codes of the 100 km cells that ``geometry`` (EPSG:3035) meets with positive area."""
    minx, miny, maxx, maxy = geometry.bounds
    es = np.arange(np.floor(minx / CELL_M), np.ceil(maxx / CELL_M)) * CELL_M
    ns = np.arange(np.floor(miny / CELL_M), np.ceil(maxy / CELL_M)) * CELL_M
    ee, nn = (a.ravel() for a in np.meshgrid(es, ns))
    boxes = shapely.box(ee, nn, ee + CELL_M, nn + CELL_M)
    shapely.prepare(geometry)
    hits = shapely.intersects(geometry, boxes)
    # Touching along an edge is no coverage: require some area inside.
    inside = shapely.area(shapely.intersection(boxes[hits], geometry)) > 0
    return sorted(tile_code(e, n) for e, n in zip(ee[hits][inside], nn[hits][inside]))


def product_filename(
    layer: str, reference_year: int, tile: str, epsg: int, version: int, release: int
) -> str:
    """File name of a delivered tile, e.g. clms_clcplus_ras_s2023_r10m_e44n36_03035_v01_r00.tif."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; layers are {LAYERS}")
    return (
        f"clms_clcplus_{layer}_s{reference_year}_r10m_{tile}_{epsg:05d}"
        f"_v{version:02d}_r{release:02d}.tif"
    )


@lru_cache(maxsize=1)
def product_definition() -> dict:
    return json.loads(PRODUCT_DEFINITION_JSON.read_text())


def _step(definition: dict, ident: str) -> dict:
    for step in definition["steps"]:
        if step["check_ident"] == ident:
            return step.get("parameters", {})
    raise KeyError(ident)


@lru_cache(maxsize=1)
def official_tile_codes() -> frozenset[str]:
    """The 100 km tile codes allowed by EEA's CLCplus 2023 product definition (974)."""
    return frozenset(_step(product_definition(), "qc_tool.raster.naming")["aoi_codes"])


def naming_pattern(dom: str | None = None) -> re.Pattern[str]:
    """The EEA check's file-name regex for the mainland tiles or for one DOM."""
    if dom is None:
        definition = product_definition()
    else:
        definition = json.loads((CONVENTIONS_DIR / f"clms_clcplus_ras_s2023_r10m_{dom}.json").read_text())
    return re.compile(_step(definition, "qc_tool.raster.naming")["layer_names"]["raster"])


def product_tiles(mainland_aoi: BaseGeometry) -> list[ProductTile]:
    """All delivery tiles: EEA cells meeting the mainland AOI, then the five DOMs."""
    tiles = [product_tile(code) for code in cells_covering(mainland_aoi)]
    return tiles + [product_tile(code) for code in DOMS]


__all__ = [
    "EEA_CRS",
    "LAYERS",
    "ProductTile",
    "cell_bounds",
    "cells_covering",
    "naming_pattern",
    "official_tile_codes",
    "product_filename",
    "product_tile",
    "product_tiles",
    "tile_code",
]
