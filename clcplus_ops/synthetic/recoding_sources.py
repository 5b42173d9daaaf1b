"""Recoding sources with known content, written with each year's world under
``{world}/recoding/``, in the shapes users have them, and a rules file using them:

    osm/gis_osm_buildings_a_free_1.shp   Geofabrik-style OSM buildings (EPSG:4326): the sealed parcels
    osm/gis_osm_roads_free_1.shp         Geofabrik-style OSM roads (EPSG:4326): the roads' centrelines
    lpis/gsaa.gpkg                       GSAA/LPIS parcels (layer ``parcels``, EPSG:3035) with crop codes
    lpis/crop_codes.csv                  crop code -> CLCplus class
    lpis/review_area.gpkg                the area where the LPIS rule applies (layer ``review_area``)
    expert/aois.gpkg                     expert AOIs as drawn in QGIS (layer ``aois``, EPSG:3035)
    rules.yaml                           the ordered recoding rules

Polygons come from the year's unit raster (``landscape.unit_polygons``): each is exactly the
union of its parcel's 10 m truth pixels in the world CRS, reprojected afterwards. The errors
these sources fix are planted in the world (``planted``); world.json's ``recoding`` section
says how many truth pixels each covers. Files are byte-identical between builds (the
GeoPackage and DBF dates are the window's end, not the wall clock).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
import yaml

from clcplus_ops.config import Config
from clcplus_ops.locations import synthetic_world
from clcplus_ops.store import Store
from clcplus_ops.synthetic import noise
from clcplus_ops.synthetic.grid import PIXEL_M
from clcplus_ops.synthetic.landscape import (
    CROPS, GRASS, PARCEL, RIVER, SEALED, Landscape, unit_polygons, unit_stats,
)
from clcplus_ops.synthetic.phenology import CROP_TYPE_P
from clcplus_ops.synthetic.planted import EXPERT_AOI, GRASS_AS_ARABLE, SEALED_MISSED, PlantedErrors

FOLDER = "recoding"
FILES = {
    "rules": "rules.yaml",
    "osm_buildings": "osm/gis_osm_buildings_a_free_1.shp",
    "osm_roads": "osm/gis_osm_roads_free_1.shp",
    "lpis_parcels": "lpis/gsaa.gpkg",
    "lpis_crop_codes": "lpis/crop_codes.csv",
    "lpis_review_area": "lpis/review_area.gpkg",
    "expert_aois": "expert/aois.gpkg",
}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
LPIS_CRS, AOI_CRS, OSM_CRS = "EPSG:3035", "EPSG:3035", "EPSG:4326"
UNDECLARED_SHARE = 0.08  # grassland and crop parcels missing from the GSAA, as in reality

# Crop codes (French RPG style) -> CLCplus class, description; per crop type of the phenology
# (winter cereal, summer crop, spring cereal, fallow ley) the codes a parcel of that type gets.
CROP_CODES: dict[str, tuple[int, str]] = {
    "BTH": (CROPS, "Winter common wheat"),
    "BDH": (CROPS, "Winter durum wheat"),
    "ORH": (CROPS, "Winter barley"),
    "CZH": (CROPS, "Winter rapeseed"),
    "MIS": (CROPS, "Grain maize"),
    "MIE": (CROPS, "Silage maize"),
    "TRN": (CROPS, "Sunflower"),
    "SOJ": (CROPS, "Soybean"),
    "ORP": (CROPS, "Spring barley"),
    "BTP": (CROPS, "Spring common wheat"),
    "AVP": (CROPS, "Spring oats"),
    "PTC": (CROPS, "Potatoes"),
    "J5M": (CROPS, "Fallow land, 5 years or less"),
    "PTR": (CROPS, "Temporary grassland, 5 years or less"),
    "PPH": (GRASS, "Permanent grassland, predominantly grass"),
    "PRL": (GRASS, "Grassland in long rotation, 6 years or more"),
    "SPH": (GRASS, "Pastoral land, predominantly grass"),
    "SPL": (5, "Pastoral land, predominantly woody"),
}
CODES_BY_TYPE = (("BTH", "ORH", "BDH", "CZH"), ("MIS", "MIE", "TRN", "SOJ"), ("ORP", "BTP", "AVP", "PTC"),
                 ("J5M", "PTR"))
GRASS_CODES, GRASS_CODE_P = ("PPH", "PRL", "SPH"), (0.7, 0.15, 0.15)
BUILDING_TYPES = ("house", "residential", "apartments", "industrial", "commercial", "retail", "garage")
# Geofabrik road classes by the road's width (m): fclass, code, maxspeed, ref prefix, oneway.
ROAD_CLASSES = ((19.0, "motorway", 5111, 130, "A", "F"), (17.0, "primary", 5113, 90, "G", "B"),
                (15.0, "secondary", 5114, 80, "R", "B"), (13.0, "tertiary", 5115, 70, None, "B"),
                (0.0, "residential", 5122, 50, None, "B"))


def recoding_urls(config: Config, year: int) -> dict[str, str]:
    """URLs of the rules file (``rules``) and of every source file of the year's world."""
    place = synthetic_world(config.synthetic.root, year)
    return {key: place.file(FOLDER, *path.split("/")) for key, path in FILES.items()}


def rules_document() -> dict:
    """The recoding rules, in order (paths relative to the rules file)."""
    return {
        "version": 1,
        "rules": [
            {
                "name": "osm_buildings",
                "source": FILES["osm_buildings"],
                "layer": None,
                "where": {"fclass": ["building"]},
                "to_class": SEALED,
                "from_classes": [2, 3, 4, 5, 6, 7, 8, 9],
                "within": None,
                "all_touched": False,
                "buffer_m": 0,
                "comment": "OSM building footprints are sealed (vegetated or bare classes only)",
            },
            {
                "name": "lpis_grassland",
                "source": FILES["lpis_parcels"],
                "layer": "parcels",
                "where": None,
                "to_class": {"attribute": "crop_code", "lookup": FILES["lpis_crop_codes"], "key": "crop_code",
                             "value": "clcplus_class"},
                "from_classes": [5, 6, 7],
                "within": FILES["lpis_review_area"],
                "within_layer": "review_area",
                "all_touched": False,
                "buffer_m": 0,
                "comment": "declared grassland and arable land, where grassland is known to be mapped as arable",
            },
            {
                "name": "expert_aois",
                "source": FILES["expert_aois"],
                "layer": "aois",
                "where": None,
                "to_class": {"attribute": "to_class"},
                "from_classes": {"attribute": "from_classes"},
                "within": None,
                "all_touched": False,
                "buffer_m": 0,
                "comment": "corrections drawn by the production experts",
            },
        ],
    }


RULES_HEADER = """\
# Recoding rules of the synthetic world (clcplus_ops.synthetic.recoding_sources).
# Applied in order; a later rule sees the classes earlier ones wrote. Paths are relative to
# this file. No roads rule: narrow roads would make recoded pixels wrong at their edges.
"""


def write_recoding_sources(store: Store, base: str, landscape: Landscape, planted: PlantedErrors, year: int,
                           seed: int, as_of: dt.date) -> dict:
    """Write the sources and the rules of the world at ``base`` (its year's ``landscape``);
    return world.json's ``recoding`` section. ``as_of``: the date stamped in the files."""
    folder = f"{base.rstrip('/')}/{FOLDER}"
    url = {key: f"{folder}/{path}" for key, path in FILES.items()}
    rng = noise.stream(seed, noise.RECODING, year)
    stats = unit_stats(landscape)
    cls, kind = landscape.unit_class, landscape.unit_kind
    present = (kind == PARCEL) & (stats.pixels_world > 0)
    sealed = np.flatnonzero(present & (cls == SEALED))
    farmland = np.flatnonzero(present & np.isin(cls, (GRASS, CROPS)))
    aoi_units = [p.unit for p in planted.of_kind(EXPERT_AOI)]
    polygons = unit_polygons(landscape, np.concatenate([sealed, farmland, np.array(aoi_units, np.int64)]))
    world_crs = landscape.grid.crs
    record: dict = {"rules": f"{FOLDER}/{FILES['rules']}", "sources": {}}

    def note(key: str, crs: str, features: int, **extra) -> None:
        record["sources"][key] = {"path": f"{FOLDER}/{FILES[key]}", "crs": crs, "features": features, **extra}

    with _fixed_dates(as_of):
        # OSM buildings: every sealed parcel (roads are not buildings).
        n = len(sealed)
        buildings = gpd.GeoDataFrame({
            "osm_id": [str(200_000_000 + 7 * int(u)) for u in sealed],
            "code": np.full(n, 1500, np.int32),
            "fclass": ["building"] * n,
            "name": [None] * n,
            "type": [BUILDING_TYPES[i] if r < 0.4 else None
                     for r, i in zip(rng.random(n), rng.integers(len(BUILDING_TYPES), size=n))],
        }, geometry=[polygons[int(u)] for u in sealed], crs=world_crs).to_crs(OSM_CRS)
        _write_shapefile(store, url["osm_buildings"], buildings, as_of, "Polygon")
        note("osm_buildings", OSM_CRS, n, truth_pixels=int(stats.pixels_world[sealed].sum()))

        roads = _roads(landscape)
        _write_shapefile(store, url["osm_roads"], roads.to_crs(OSM_CRS), as_of, "LineString")
        note("osm_roads", OSM_CRS, len(roads), bridges=int((roads["bridge"] == "T").sum()))

        # LPIS/GSAA: most grassland and crop parcels, declared with this year's crop.
        must = {p.unit for p in planted.of_kind(GRASS_AS_ARABLE)}
        declared = [int(u) for u, r in zip(farmland, rng.random(len(farmland))) if r >= UNDECLARED_SHARE
                    or int(u) in must]
        crop_type = noise.stream(seed, noise.PHENOLOGY, CROPS, year).choice(4, size=landscape.n_units,
                                                                             p=CROP_TYPE_P)
        pick = rng.random(landscape.n_units)
        codes = []
        for u in declared:
            if cls[u] == GRASS:
                codes.append(GRASS_CODES[int(np.searchsorted(np.cumsum(GRASS_CODE_P), pick[u], side="right"))])
            else:
                options = CODES_BY_TYPE[crop_type[u]]
                codes.append(options[int(pick[u] * len(options))])
        lpis = gpd.GeoDataFrame({
            "parcel_id": [f"{year}-{1_000_000 + u}" for u in declared],
            "crop_code": codes,
            "area_ha": [round(float(stats.pixels_world[u]) * PIXEL_M**2 / 1e4, 4) for u in declared],
            "campaign": np.full(len(declared), year, np.int32),
        }, geometry=[polygons[u] for u in declared], crs=world_crs).to_crs(LPIS_CRS)
        _write_gpkg(store, url["lpis_parcels"], lpis, "parcels")
        kinds = cls[np.array(declared, np.int64)] if declared else np.zeros(0, np.uint8)
        note("lpis_parcels", LPIS_CRS, len(declared), declared_grassland=int((kinds == GRASS).sum()),
             declared_arable=int((kinds == CROPS).sum()), undeclared=int(len(farmland) - len(declared)))

        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["crop_code", "clcplus_class", "description"])
        writer.writerows([code, c, text] for code, (c, text) in CROP_CODES.items())
        store.write_text(url["lpis_crop_codes"], table.getvalue())
        note("lpis_crop_codes", "", len(CROP_CODES))

        area = [planted.review_area] if planted.review_area is not None else []
        review = gpd.GeoDataFrame({
            "name": ["grassland review"] * len(area),
            "comment": ["grassland mapped as arable in the previous production"] * len(area),
        }, geometry=area, crs=world_crs).to_crs(LPIS_CRS)
        _write_gpkg(store, url["lpis_review_area"], review, "review_area")
        note("lpis_review_area", LPIS_CRS, len(area),
             area_ha=round(planted.review_area.area / 1e4, 2) if area else 0.0)

        # Expert AOIs: one (multi)polygon per group, exactly around its parcels.
        groups = sorted(planted.aois)
        aois = gpd.GeoDataFrame({
            "aoi_id": np.array(groups, np.int32),
            "from_classes": [planted.aois[g][2] for g in groups],
            "to_class": np.array([planted.aois[g][0] for g in groups], np.int32),
            "comment": [planted.aois[g][3] for g in groups],
        }, geometry=[shapely.union_all([polygons[p.unit] for p in planted.of_kind(EXPERT_AOI) if p.group == g])
                     for g in groups], crs=world_crs).to_crs(AOI_CRS)
        _write_gpkg(store, url["expert_aois"], aois, "aois")
        note("expert_aois", AOI_CRS, len(groups))

    store.write_text(url["rules"], RULES_HEADER + yaml.safe_dump(rules_document(), sort_keys=False))
    record["planted_errors"] = _planted_record(planted, stats)
    return record


def _planted_record(planted: PlantedErrors, stats) -> dict:
    def entry(plants, fixed_by: str) -> dict:
        return {
            "parcels": len(plants),
            "pixels": int(sum(stats.pixels_world[p.unit] for p in plants)),
            "true_class": plants[0].true_class if plants else None,
            "looks_like": plants[0].looks_like if plants else None,
            "fixed_by": fixed_by,
        }

    return {
        SEALED_MISSED: entry(planted.of_kind(SEALED_MISSED), "osm_buildings"),
        GRASS_AS_ARABLE: entry(planted.of_kind(GRASS_AS_ARABLE), "lpis_grassland"),
        EXPERT_AOI: [
            {"aoi_id": g, **entry([p for p in planted.of_kind(EXPERT_AOI) if p.group == g], "expert_aois")}
            for g in sorted(planted.aois)
        ],
    }


def _roads(landscape: Landscape) -> gpd.GeoDataFrame:
    """The roads' centrelines on the world's land, cut where they leave it; bridges where they
    cross a river."""
    grid = landscape.grid
    transform = grid.array_grid(PIXEL_M).transform
    rows, cols = grid.world_window(PIXEL_M)
    h, w = landscape.unit.shape
    river = landscape.unit_kind[landscape.unit] == RIVER
    records, geoms = [], []
    for number, (line, half_width) in enumerate(landscape.road_lines, start=1):
        width = 2 * half_width * PIXEL_M
        _, fclass, code, speed, prefix, oneway = next(c for c in ROAD_CLASSES if width >= c[0])
        xy = shapely.get_coordinates(shapely.segmentize(line, 1.0))
        r, c = np.floor(xy[:, 1]).astype(int), np.floor(xy[:, 0]).astype(int)
        inside = (r >= rows.start) & (r < rows.stop) & (c >= cols.start) & (c < cols.stop)
        rr, cc = np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)
        # 0: off the world or at sea (dropped), 1: road, 2: bridge.
        status = np.where(inside & landscape.land[rr, cc], np.where(river[rr, cc], 2, 1), 0)
        cuts = np.flatnonzero(np.diff(status)) + 1
        for piece, (a, b) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, len(status)])):
            if status[a] == 0:
                continue
            # Pieces share their end node with the next piece, as OSM ways do.
            part = xy[a:b + 1 if b < len(status) and status[b] != 0 else b]
            if len(part) < 2:
                continue
            geoms.append(shapely.LineString(np.c_[transform.c + part[:, 0] * transform.a,
                                                  transform.f + part[:, 1] * transform.e]))
            records.append({
                "osm_id": str(30_000_000 + 1000 * number + piece), "code": code, "fclass": fclass,
                "name": None if fclass in ("motorway", "primary") else f"Road {number}",
                "ref": f"{prefix}{number}" if prefix else None, "oneway": oneway, "maxspeed": speed,
                "layer": 1 if status[a] == 2 else 0, "bridge": "T" if status[a] == 2 else "F", "tunnel": "F",
            })
    columns = ["osm_id", "code", "fclass", "name", "ref", "oneway", "maxspeed", "layer", "bridge", "tunnel"]
    frame = gpd.GeoDataFrame(records, columns=columns, geometry=geoms, crs=grid.crs)
    for column in ("code", "maxspeed", "layer"):
        frame[column] = frame[column].astype(np.int32)
    return frame


# ---------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _fixed_dates(as_of: dt.date) -> Iterator[None]:
    """GeoPackages stamp their last change with ``as_of``, not the wall clock (same bytes)."""
    pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": f"{as_of.isoformat()}T00:00:00.000Z"})
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({"OGR_CURRENT_DATE": None})


def _write_gpkg(store: Store, url: str, frame: gpd.GeoDataFrame, layer: str) -> None:
    with store.local_write(url) as path:
        frame.to_file(path, layer=layer, driver="GPKG", engine="pyogrio", promote_to_multi=True,
                      geometry_type="MultiPolygon")


def _write_shapefile(store: Store, url: str, frame: gpd.GeoDataFrame, as_of: dt.date, geometry_type: str) -> None:
    """A shapefile and its sidecars (.shx .dbf .prj .cpg): written locally, then put each."""
    stem = url.rsplit("/", 1)[-1][:-len(".shp")]
    prefix = url[:-len(".shp")]
    with tempfile.TemporaryDirectory(prefix="clcplus-shp-") as tmp:
        path = Path(tmp) / f"{stem}.shp"
        frame.to_file(path, driver="ESRI Shapefile", engine="pyogrio", encoding="UTF-8", geometry_type=geometry_type,
                      layer_options={"DBF_DATE_LAST_UPDATE": as_of.isoformat()})
        for suffix in SHAPEFILE_PARTS:
            store.put_file(Path(tmp) / f"{stem}{suffix}", prefix + suffix)
