"""From production units to 100 km product tiles: which tiles a PU touches, which PUs a tile
waits for, and the assembly of a tile's four layers from the PUs' own areas.

A PU delivers the pixels of its own area (``layers``: pixel centre in its polygon and in the
delivery area); every other pixel of its layers is *outside* (RAS 254). The areas of a layout's
PUs do not overlap, so a product tile is the union of its PUs' areas: each pixel comes from the
one PU whose RAS is not outside there, and is outside where no PU delivers it. The PU grids are
windows of the product grid (``eea_grid.pu_grid``), so the assembly copies pixels, no resampling.

A tile is made only once *every* PU touching it has committed its layers: whichever PU finishes
last assembles it (:mod:`clcplus_ops.products.revisions` makes that happen once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.eea_grid import LAYERS, ProductTile, cells_covering, product_tile
from clcplus_ops.geo.grid import Grid


class ProductTileNotReady(StageInputError):
    """A product tile whose PUs have not all committed their layers."""


def tile_codes_of_unit(unit, res: float = 10.0) -> list[str]:
    """The product tiles a PU touches: the 100 km cells holding a pixel centre of its polygon
    (EPSG:3035 PUs; a polygon edge on a 100 km line, off by a rounding error, touches one side
    only), or the overseas department whose box it lies in (UTM PUs)."""
    import shapely.geometry

    from clcplus_ops.geo.aoi import DOMS
    from clcplus_ops.geo.eea_grid import cell_bounds

    if unit.crs == "EPSG:3035":
        geometry = unit.geometry_in(unit.crs)
        half = res / 2
        return [code for code in cells_covering(geometry)
                if geometry.intersects(shapely.geometry.box(*(b + d for b, d in zip(cell_bounds(code),
                                                                                     (half, half, -half, -half)))))]

    return sorted(code for code, dom in DOMS.items()
                  if f"EPSG:{dom.epsg}" == unit.crs and unit.geometry.intersects(shapely.geometry.box(*dom.lonlat_box)))


@lru_cache(maxsize=8)
def _tile_index(layout_path: str, mtime_ns: int, res: float) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    from clcplus_ops.geo.layout import load_layout

    units = load_layout(layout_path)
    of_unit = {pu: tuple(tile_codes_of_unit(unit, res)) for pu, unit in units.items()}
    of_tile: dict[str, list[str]] = {}
    for pu, codes in of_unit.items():
        for code in codes:
            of_tile.setdefault(code, []).append(pu)
    return of_unit, {code: tuple(sorted(pus)) for code, pus in of_tile.items()}


def tile_index(config, layout: str) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """(tiles of each PU, PUs of each tile) of a layout; cached per layout file version."""
    path = config.layout_path(layout)
    return _tile_index(str(path), path.stat().st_mtime_ns, config.for_layout(layout).grid.pixel_size_m)


def tiles_of_pu(config, layout: str, pu_id: str) -> tuple[str, ...]:
    return tile_index(config, layout)[0][pu_id]


def pus_of_tile(config, layout: str, code: str) -> tuple[str, ...]:
    """The PUs a product tile waits for; ProductTileNotReady when no PU of the layout touches it."""
    pus = tile_index(config, layout)[1].get(code)
    if not pus:
        raise ProductTileNotReady(f"no production unit of the {layout} layout touches product tile {code}")
    return pus


@dataclass(frozen=True)
class TileReadiness:
    code: str
    pus: tuple[str, ...]
    waiting_for: tuple[str, ...]  # PUs without committed layers

    @property
    def ready(self) -> bool:
        return not self.waiting_for


def layers_not_final(config, layout: str, year: int, pu_id: str, store) -> str | None:
    """Why a PU's layers are not final yet (None when they are): no layers, layers of an older
    calibration than the committed one, or layers blended without a neighbour whose mosaic was
    late (provisional: the PU's blend and what follows are re-run once it exists)."""
    from clcplus_ops.pipeline import BLEND, CALIBRATE, LAYERS
    from clcplus_ops.runner import stage_record
    from clcplus_ops.stage import Target

    target = Target(layout, year, pu_id)
    layers = stage_record(config, LAYERS, target, store)
    if layers is None:
        return "no layers yet"
    calibrate, blend = stage_record(config, CALIBRATE, target, store), stage_record(config, BLEND, target, store)
    if calibrate is None or blend is None or layers.inputs.get("calibrate") != calibrate.fingerprint \
            or calibrate.inputs.get("blend") != blend.fingerprint:
        return "its layers are older than its blend or calibration (layers being remade)"
    missing = blend.details.get("missing_neighbours") or []
    if missing:
        return f"blended without {', '.join(missing)} (provisional: its blend is re-run once their mosaics exist)"
    return None


def readiness(config, layout: str, year: int, pu_id: str, not_final) -> list[TileReadiness]:
    """For each product tile of ``pu_id``: its PUs and those whose layers are not final
    (``not_final(pu) -> reason | None``, e.g. :func:`layers_not_final`)."""
    out = []
    for code in tiles_of_pu(config, layout, pu_id):
        pus = pus_of_tile(config, layout, code)
        out.append(TileReadiness(code, pus, tuple(pu for pu in pus if not_final(pu))))
    return out


def tile_grid(config, code: str) -> Grid:
    """The pixel grid of product tile ``code`` at the configured pixel size."""
    return product_tile(code).grid(config.grid.pixel_size_m, config.grid.aoi_buffer_m)


# --------------------------------------------------------------------------------------------
# Assembly (pure: arrays in, arrays out)


def outside_values(codes) -> dict[str, int]:
    """Each layer's outside code (CodesConfig)."""
    return {"ras": codes.outside, "rascl": codes.confidence_outside, "rasdl": codes.data_score_outside,
            "raspl": codes.post_processing_outside}


LAYER_DTYPES = {"ras": np.uint8, "rascl": np.uint8, "rasdl": np.uint16, "raspl": np.uint8}


def empty_tile(shape: tuple[int, int], codes) -> dict[str, np.ndarray]:
    """A tile with every pixel outside."""
    return {name: np.full(shape, value, LAYER_DTYPES[name]) for name, value in outside_values(codes).items()}


def paste(tile: dict[str, np.ndarray], window: tuple[slice, slice], layers: Mapping[str, np.ndarray], codes) -> int:
    """Copy a PU's layers (arrays of the window's shape) into the tile where its RAS is not
    outside; returns the pixels taken that another PU had already delivered (0 in a layout
    whose PU areas do not overlap; where they do, the PU pasted last wins)."""
    own = layers["ras"] != codes.outside
    clash = int((own & (tile["ras"][window] != codes.outside)).sum())
    for name in LAYERS:
        np.copyto(tile[name][window], layers[name], where=own)
    return clash


def pu_window(tile: Grid, pu: Grid) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """(window in the tile, window in the PU's grid) of the part they share; None if none."""
    shared = tile.intersection(pu)
    if shared is None:
        return None
    a, b = shared.window_in(tile), shared.window_in(pu)
    return ((slice(a.row_off, a.row_off + a.height), slice(a.col_off, a.col_off + a.width)),
            (slice(b.row_off, b.row_off + b.height), slice(b.col_off, b.col_off + b.width)))


def delivered_mask(grid: Grid, units: Iterable, aoi_buffer_m: float) -> np.ndarray:
    """Pixels of the tile that the layout must deliver (no *outside* code allowed there): pixel
    centre in one of the layout's PUs that touch it and in the delivery area (EEA38 + UK buffered
    by ``aoi_buffer_m``). For the production layout, whose PUs cover the whole area, this is
    EEA's gap mask; for a smaller layout (the demo) it is the part the layout produces."""
    import shapely

    from clcplus_ops.geo.coast import delivery_area
    from clcplus_ops.geo.masks import inside

    area = shapely.union_all([unit.geometry_in(grid.crs) for unit in units])
    return inside(area, grid) & inside(delivery_area(grid, aoi_buffer_m), grid)


__all__ = ["LAYER_DTYPES", "ProductTile", "ProductTileNotReady", "TileReadiness", "delivered_mask", "empty_tile",
           "outside_values", "paste", "pu_window", "pus_of_tile", "readiness", "tile_codes_of_unit", "tile_grid",
           "tile_index", "tiles_of_pu"]
