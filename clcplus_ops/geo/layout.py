"""Production-unit (PU) layouts: loading and validating a layout file.

A layout is any vector file pyogrio reads (GeoJSON, GeoPackage, …) with one polygon feature
per PU and the columns ``pu_id`` and ``crs`` (the PU's processing CRS, e.g. "EPSG:3035");
``name``, ``area_km2`` and ``countries`` are optional. The packaged layouts are
``resources.DEFAULT_LAYOUT`` (138 PUs) and ``resources.DEMO_LAYOUT`` (two small PUs); an
operator's official layout is given through configuration and passes the same checks.

``load_layout`` returns the PUs with their geometry in EPSG:4326; ``layout_index`` reads only
the attributes (for DAG parse time) and refuses the same broken ids.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
from pyproj import CRS
from pyproj.exceptions import CRSError
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

ID_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
REQUIRED_COLUMNS = ("pu_id", "crs")
LONLAT = "EPSG:4326"
_GEOJSON_SUFFIXES = (".geojson", ".json")


class LayoutError(ValueError):
    """A layout file that cannot be used; the message names the file and the offending PUs."""


@dataclass(frozen=True)
class ProductionUnit:
    """One PU: ``geometry`` is in EPSG:4326, ``crs`` is the CRS the PU is processed in."""

    pu_id: str
    name: str
    area_km2: float
    crs: str
    geometry: BaseGeometry
    countries: tuple[str, ...] = ()

    def geometry_in(self, crs: str) -> BaseGeometry:
        """The geometry reprojected (vertex by vertex) to ``crs``."""
        return _reproject(self.geometry, LONLAT, crs)


# ------------------------------------------------------------------------------- public


def load_layout(path: str | Path) -> dict[str, ProductionUnit]:
    """All PUs of a layout file by id (sorted by id), after validating ids, CRSs and geometries."""
    path = Path(path)
    frame = _read(path, read_geometry=True)
    ids = _checked_ids(frame, path)
    crs_values = _checked_crs(frame, ids, path)
    frame = _to_lonlat(frame, path, ids)
    units = {}
    for row, pu_id in enumerate(ids):
        geometry = frame.geometry.iloc[row]
        units[pu_id] = ProductionUnit(
            pu_id=pu_id,
            name=_name(frame, row, pu_id),
            area_km2=_area(frame, row, pu_id, crs_values[row], geometry, path),
            crs=crs_values[row],
            geometry=geometry,
            countries=_countries(frame, row),
        )
    return {pu_id: units[pu_id] for pu_id in sorted(units)}


def layout_index(path: str | Path) -> list[dict]:
    """The PUs' attributes without geometry, sorted by id: dicts with pu_id, name, area_km2
    (None where the file has none) and crs. Refuses missing, duplicate and malformed ids, and
    unknown CRSs, with the messages of ``load_layout``."""
    path = Path(path)
    try:
        version = (path.stat().st_mtime_ns, path.stat().st_size)
    except OSError:
        version = (0, 0)  # _read reports the missing file
    # Cached per file version: a DAG file parsed again in the same process reads nothing.
    rows = _index_rows(str(path), *version)
    return [dict(zip(("pu_id", "name", "area_km2", "crs"), row)) for row in rows]


@lru_cache(maxsize=8)
def _index_rows(path_text: str, mtime_ns: int, size: int) -> tuple[tuple, ...]:
    path = Path(path_text)
    frame = _read(path, read_geometry=False)
    ids = _checked_ids(frame, path)
    crs_values = _checked_crs(frame, ids, path)
    rows = [
        (pu_id, _name(frame, row, pu_id), _given_area(frame, row, pu_id, path), crs_values[row])
        for row, pu_id in enumerate(ids)
    ]
    return tuple(sorted(rows, key=lambda r: r[0]))


def layout_report(units: Mapping[str, ProductionUnit] | Iterable[ProductionUnit]) -> dict:
    """Count and area figures (km²) of a set of PUs."""
    values = list(units.values()) if isinstance(units, Mapping) else list(units)
    areas = [u.area_km2 for u in values]
    if not areas:
        return {"count": 0, "total_area_km2": 0.0, "min_area_km2": None, "median_area_km2": None, "max_area_km2": None, "max_min_ratio": None}
    return {
        "count": len(areas),
        "total_area_km2": round(sum(areas), 2),
        "min_area_km2": min(areas),
        "median_area_km2": statistics.median(areas),
        "max_area_km2": max(areas),
        "max_min_ratio": round(max(areas) / min(areas), 3) if min(areas) > 0 else math.inf,
    }


# ------------------------------------------------------------------------------ reading


def _read(path: Path, read_geometry: bool) -> pd.DataFrame:
    if not path.is_file():
        raise LayoutError(f"layout file {path} does not exist (or is not a file)")
    if not read_geometry and path.suffix.lower() in _GEOJSON_SUFFIXES:
        return _read_geojson_properties(path)
    try:
        frame = pyogrio.read_dataframe(path, read_geometry=read_geometry)
    except Exception as exc:  # pyogrio raises several types (DataSourceError, OSError, …)
        raise LayoutError(f"layout file {path} cannot be read: {exc}") from exc
    if read_geometry and not isinstance(frame, gpd.GeoDataFrame):
        raise LayoutError(f"layout file {path} has no geometry column")
    return frame


def _read_geojson_properties(path: Path) -> pd.DataFrame:
    """The properties of a GeoJSON FeatureCollection: plain json is faster than GDAL here."""
    try:
        document = json.loads(path.read_bytes())
        features = document["features"]
        rows = [feature.get("properties") or {} for feature in features]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LayoutError(f"layout file {path} cannot be read as a GeoJSON FeatureCollection: {exc}") from exc
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- checking


def _checked_ids(frame: pd.DataFrame, path: Path) -> list[str]:
    if not len(frame):
        raise LayoutError(f"layout file {path} has no features")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise LayoutError(f"layout file {path} lacks the required column(s) {', '.join(missing)} (has: {', '.join(map(str, frame.columns)) or 'none'})")
    ids = [_text(v) for v in frame["pu_id"]]
    empty = [str(row + 1) for row, v in enumerate(ids) if not v]
    if empty:
        raise LayoutError(f"layout file {path}: feature(s) number {', '.join(empty)} (counting from 1) have no pu_id")
    bad = [v for v in ids if not ID_PATTERN.match(v)]
    if bad:
        raise LayoutError(f"layout file {path}: pu_id(s) {', '.join(map(repr, bad))} do not match {ID_PATTERN.pattern}")
    duplicates = sorted(v for v, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise LayoutError(f"layout file {path}: duplicate pu_id(s) {', '.join(duplicates)}")
    return ids


def _checked_crs(frame: pd.DataFrame, ids: list[str], path: Path) -> list[str]:
    values = [_text(v) for v in frame["crs"]]
    bad = [f"{pu_id} ({value!r})" for pu_id, value in zip(ids, values) if not _crs_ok(value)]
    if bad:
        raise LayoutError(f"layout file {path}: unknown CRS in the crs column for PU(s) {', '.join(bad)}")
    return values


@lru_cache(maxsize=64)
def _crs_ok(value: str) -> bool:
    if not value:
        return False
    try:
        CRS.from_user_input(value)
    except CRSError:
        return False
    return True


def _to_lonlat(frame: gpd.GeoDataFrame, path: Path, ids: list[str]) -> gpd.GeoDataFrame:
    """Check the geometries as given, then bring them to EPSG:4326."""
    _check_geometries(frame, path, ids)
    if frame.crs is None:
        if path.suffix.lower() not in _GEOJSON_SUFFIXES:
            raise LayoutError(f"layout file {path} has no CRS (only GeoJSON may omit it: it is then EPSG:4326)")
        return frame.set_crs(LONLAT)
    if frame.crs.to_epsg() == 4326 or frame.crs.equals(CRS("OGC:CRS84")):
        return frame
    return frame.to_crs(LONLAT)


def _check_geometries(frame: gpd.GeoDataFrame, path: Path, ids: list[str]) -> None:
    geoms = list(frame.geometry)
    empty = [pu_id for pu_id, g in zip(ids, geoms) if g is None or g.is_empty]
    if empty:
        raise LayoutError(f"layout file {path}: PU(s) {', '.join(empty)} have a null or empty geometry")
    wrong = [f"{pu_id} ({g.geom_type})" for pu_id, g in zip(ids, geoms) if g.geom_type not in ("Polygon", "MultiPolygon")]
    if wrong:
        raise LayoutError(f"layout file {path}: PU(s) {', '.join(wrong)} are not (multi)polygons")
    invalid = [f"{pu_id}: {explain_validity(g)}" for pu_id, g in zip(ids, geoms) if not g.is_valid]
    if invalid:
        raise LayoutError(f"layout file {path}: invalid geometry for PU(s) {'; '.join(invalid)}")


# ------------------------------------------------------------------------------- fields


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _name(frame: pd.DataFrame, row: int, pu_id: str) -> str:
    return (_text(frame["name"].iloc[row]) if "name" in frame.columns else "") or pu_id


def _countries(frame: pd.DataFrame, row: int) -> tuple[str, ...]:
    if "countries" not in frame.columns:
        return ()
    return tuple(c.strip() for c in _text(frame["countries"].iloc[row]).split(",") if c.strip())


def _given_area(frame: pd.DataFrame, row: int, pu_id: str, path: Path) -> float | None:
    if "area_km2" not in frame.columns:
        return None
    value = frame["area_km2"].iloc[row]
    if _text(value) == "":
        return None
    try:
        area = float(value)
    except (TypeError, ValueError):
        raise LayoutError(f"layout file {path}: PU {pu_id} has a non-numeric area_km2 {value!r}") from None
    if not math.isfinite(area) or area < 0:
        raise LayoutError(f"layout file {path}: PU {pu_id} has an impossible area_km2 {value!r}")
    return area


def _area(frame: pd.DataFrame, row: int, pu_id: str, crs: str, geometry: BaseGeometry, path: Path) -> float:
    """The file's area_km2, or the geometry's area in the PU's CRS where the file has none."""
    given = _given_area(frame, row, pu_id, path)
    if given is not None:
        return given
    return round(_reproject(geometry, LONLAT, crs).area / 1e6, 2)


def _reproject(geometry: BaseGeometry, src: str, dst: str) -> BaseGeometry:
    if CRS.from_user_input(src).equals(CRS.from_user_input(dst)):
        return geometry
    return gpd.GeoSeries([geometry], crs=src).to_crs(dst).iloc[0]
