"""The production area of interest: EEA38 + UK (in EPSG:3035) and the five French overseas
departments (DOMs, each in its own UTM zone), from the packaged Natural Earth boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import geopandas as gpd
import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from clcplus_ops.resources import COUNTRIES_GEOJSON

EEA_CRS = "EPSG:3035"

# ADM0_A3 codes: NOR and FRA carry ISO_A2 = -99 in this Natural Earth version, so select by
# ADM0_A3. Northern Cyprus (CYN) is a separate feature and is not part of the AOI.
EEA38_UK = (
    "AUT", "BEL", "BGR", "HRV", "CYP", "CZE", "DNK", "EST", "FIN", "FRA", "DEU", "GRC", "HUN",
    "IRL", "ITA", "LVA", "LTU", "LUX", "MLT", "NLD", "POL", "PRT", "ROU", "SVK", "SVN", "ESP",
    "SWE",  # EU27
    "ISL", "LIE", "NOR", "CHE", "TUR",  # EEA members beyond the EU
    "ALB", "BIH", "KOS", "MNE", "MKD", "SRB",  # cooperating countries
    "GBR",
)


@dataclass(frozen=True)
class OverseasDepartment:
    """A French DOM: product code (as in the EEA product definitions), name, UTM CRS, and a
    lon/lat box that selects its parts out of France's multipolygon."""

    code: str
    name: str
    epsg: int
    lonlat_box: tuple[float, float, float, float]

    @property
    def crs(self) -> str:
        return f"EPSG:{self.epsg}"


DOMS: dict[str, OverseasDepartment] = {
    d.code: d
    for d in (
        OverseasDepartment("gf", "French Guiana", 32622, (-55.0, 1.5, -51.0, 6.5)),
        OverseasDepartment("gp", "Guadeloupe", 32620, (-62.0, 15.7, -60.8, 16.7)),
        OverseasDepartment("mq", "Martinique", 32620, (-61.4, 14.2, -60.7, 15.0)),
        OverseasDepartment("re", "Reunion", 32740, (55.0, -21.6, 56.0, -20.7)),
        OverseasDepartment("yt", "Mayotte", 32738, (44.8, -13.2, 45.5, -12.4)),
    )
}


@lru_cache(maxsize=1)
def countries() -> gpd.GeoDataFrame:
    """EEA38 + UK country polygons in EPSG:4326 (France including its overseas parts)."""
    gdf = gpd.read_file(COUNTRIES_GEOJSON)
    gdf = gdf[gdf["ADM0_A3"].isin(EEA38_UK)]
    missing = sorted(set(EEA38_UK) - set(gdf["ADM0_A3"]))
    if missing:
        raise ValueError(f"country boundaries lack {missing} ({COUNTRIES_GEOJSON})")
    return gdf[["ADM0_A3", "NAME", "geometry"]].sort_values("ADM0_A3").reset_index(drop=True)


# Parts of Natural Earth's country features outside the EEA38 + UK production area (the EEA39
# boundary): Norway's Svalbard, Bjornoya and Jan Mayen, and the Caribbean Netherlands.
EXCLUDED_LONLAT_BOXES: dict[str, tuple[float, float, float, float]] = {
    "Svalbard and Bjornoya": (5.0, 73.5, 40.0, 81.5),
    "Jan Mayen": (-10.0, 70.5, -7.0, 71.5),
    "Caribbean Netherlands": (-70.0, 11.5, -62.5, 18.5),
}


def _dom_lonlat_boxes() -> list[BaseGeometry]:
    return [box(*d.lonlat_box) for d in DOMS.values()]


@lru_cache(maxsize=1)
def land_lonlat() -> BaseGeometry:
    """Land of EEA38 + UK without the DOMs and the excluded territories, EPSG:4326."""
    land = shapely.union_all(countries().geometry.values)
    cut = _dom_lonlat_boxes() + [box(*b) for b in EXCLUDED_LONLAT_BOXES.values()]
    return land.difference(shapely.union_all(cut))


@lru_cache(maxsize=4)
def mainland_aoi(buffer_m: float = 250.0) -> BaseGeometry:
    """EEA38 + UK (without DOMs) in EPSG:3035, buffered by ``buffer_m`` metres."""
    land = gpd.GeoSeries([land_lonlat()], crs="EPSG:4326").to_crs(EEA_CRS).iloc[0]
    return land.buffer(buffer_m) if buffer_m else land


@lru_cache(maxsize=8)
def dom_aoi(code: str, buffer_m: float = 250.0) -> BaseGeometry:
    """One DOM's land in its UTM CRS, buffered by ``buffer_m`` metres."""
    if code not in DOMS:
        raise KeyError(f"unknown overseas department {code!r}; known: {sorted(DOMS)}")
    dom = DOMS[code]
    france = countries().loc[countries()["ADM0_A3"] == "FRA", "geometry"].iloc[0]
    part = france.intersection(box(*dom.lonlat_box))
    if part.is_empty:
        raise ValueError(f"no land of {dom.name} found in {COUNTRIES_GEOJSON}")
    geom = gpd.GeoSeries([part], crs="EPSG:4326").to_crs(dom.crs).iloc[0]
    return geom.buffer(buffer_m) if buffer_m else geom
