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
# ASCII digits and \Z: "e44n36\n" or other scripts' digits are not codes (codes make paths).
_CODE = re.compile(r"\Ae([0-9]{2})n([0-9]{2})\Z")


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


_PRODUCT_NAME = re.compile(
    r"^CLMS_CLCPLUS_(?P<layer>RAS|RASCL|RASDL|RASPL)_S(?P<year>\d{4})_R10m_(?P<tile>E\d{2}N\d{2}|[A-Z]{2})"
    r"_(?P<epsg>\d{5})_V(?P<version>\d{2})_R(?P<revision>\d{2})(?P<suffix>\.[a-z.]+)?$")


@dataclass(frozen=True)
class ProductName:
    """The parts of a delivered file's name (EEA's naming rule for CLCplus Backbone)."""

    layer: str  # ras, rascl, rasdl, raspl
    reference_year: int
    tile: str  # e44n36, or a DOM's code (gf)
    epsg: int
    version: int
    revision: int

    @property
    def stem(self) -> str:
        """``CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00``: the file names without suffix."""
        return (f"CLMS_CLCPLUS_{self.layer.upper()}_S{self.reference_year}_R10m_{self.tile.upper()}"
                f"_{self.epsg:05d}_V{self.version:02d}_R{self.revision:02d}")

    def file(self, suffix: str = ".tif") -> str:
        return self.stem + suffix


def product_name(layer: str, reference_year: int, tile: str, epsg: int, version: int, revision: int) -> ProductName:
    """The name of a delivered layer of a product tile; every part checked."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; layers are {LAYERS}")
    if not (_CODE.match(tile) or tile in _dom_codes()):
        raise ValueError(f"{tile!r} is neither a 100 km tile code like 'e44n36' nor a DOM ({sorted(_dom_codes())})")
    for what, value in (("version", version), ("revision", revision)):
        if not 0 <= int(value) <= 99:
            raise ValueError(f"{what} {value} is outside 0..99 (two digits in the file name)")
    return ProductName(layer, int(reference_year), tile, int(epsg), int(version), int(revision))


def product_filename(layer: str, reference_year: int, tile: str, epsg: int, version: int, revision: int) -> str:
    """File name of a delivered layer by EEA's rule, e.g.
    ``CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00.tif``; the auxiliary layers take the same
    pattern with their layer's name (``..._RASCL_...``, ``..._RASDL_...``, ``..._RASPL_...``).
    EEA's check compares names case-insensitively against its lower-case pattern."""
    return product_name(layer, reference_year, tile, epsg, version, revision).file()


def parse_product_filename(name: str) -> ProductName:
    """The parts of a delivered file's name (``.tif``, ``.tif.aux.xml``, ``.xml``...); ValueError
    naming the rule when it does not follow it."""
    match = _PRODUCT_NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} does not follow the naming rule "
                         "CLMS_CLCPLUS_<RAS|RASCL|RASDL|RASPL>_S<year>_R10m_<tile>_<epsg>_V<vv>_R<rr>")
    g = match.groupdict()
    return product_name(g["layer"].lower(), int(g["year"]), g["tile"].lower(), int(g["epsg"]), int(g["version"]),
                        int(g["revision"]))


def _dom_codes() -> frozenset[str]:
    return frozenset(DOMS)


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
    "ProductName",
    "naming_pattern",
    "official_tile_codes",
    "parse_product_filename",
    "product_filename",
    "product_name",
    "product_tile",
    "product_tiles",
    "tile_code",
]
