"""Compare the 100 km tiles computed over the AOI with the official CLCplus 2023 tile codes,
and say why each difference arises."""

from __future__ import annotations

import geopandas as gpd
import shapely
from shapely.geometry import box

from clcplus_ops.geo import aoi
from clcplus_ops.geo.eea_grid import cell_bounds, cells_covering, official_tile_codes

NEAR_COAST_M = 10_000.0


def product_tile_report(aoi_buffer_m: float = 250.0) -> dict:
    area = aoi.mainland_aoi(aoi_buffer_m)
    land = aoi.mainland_aoi(0)
    computed, official = set(cells_covering(area)), official_tile_codes()
    missing, extra = sorted(official - computed), sorted(computed - official)

    missing_by_reason: dict[str, list[str]] = {}
    for code in missing:
        distance = land.distance(box(*cell_bounds(code)))
        reason = (
            f"sea or islets within {NEAR_COAST_M / 1000:g} km of the Natural Earth 1:50m coast (generalised coastline, small islands absent)"
            if distance <= NEAR_COAST_M
            else f"open sea more than {NEAR_COAST_M / 1000:g} km from land (EEA's delivery area includes marine cells)"
        )
        missing_by_reason.setdefault(reason, []).append(code)

    extra_by_reason: dict[str, list[str]] = {}
    for code in extra:
        inside_km2 = shapely.area(area.intersection(box(*cell_bounds(code)))) / 1e6
        reason = "only the AOI buffer reaches in (< 1 km2)" if inside_km2 < 1 else "land that EEA's delivery grid omits"
        extra_by_reason.setdefault(reason, []).append(code)

    excluded = {}
    all_land = aoi.countries().geometry.union_all()
    for name, lonlat_box in aoi.EXCLUDED_LONLAT_BOXES.items():
        part = all_land.intersection(box(*lonlat_box))
        if part.is_empty:
            continue
        projected = gpd.GeoSeries([part], crs="EPSG:4326").to_crs(aoi.EEA_CRS).iloc[0]
        cells = [c for c in cells_covering(projected.buffer(aoi_buffer_m)) if not c.startswith("e-")]
        excluded[name] = {"cells": len(cells), "official": len(set(cells) & official)}

    return {
        "aoi_buffer_m": aoi_buffer_m,
        "computed": len(computed),
        "official": len(official),
        "matching": len(computed & official),
        "missing": missing,
        "extra": extra,
        "missing_by_reason": missing_by_reason,
        "extra_by_reason": extra_by_reason,
        "excluded_territories": excluded,
        "doms": sorted(aoi.DOMS),
    }
