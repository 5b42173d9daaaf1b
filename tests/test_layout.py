"""The packaged PU layouts, the layout loader's checks, and the generator's determinism."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from shapely.geometry import Polygon, box

from clcplus_ops.geo import aoi
from clcplus_ops.geo.layout import LayoutError, ProductionUnit, layout_index, layout_report, load_layout
from clcplus_ops.resources import DEFAULT_LAYOUT, DEMO_LAYOUT

ROOT = Path(__file__).resolve().parents[1]
DOM_CRS = ["EPSG:32622", "EPSG:32620", "EPSG:32620", "EPSG:32740", "EPSG:32738"]
# Round trip 3035 → 4326 → 3035 moves vertices by ≤ ~1.2 mm: slivers of ~2e-9 of the AOI.
PARTITION_TOLERANCE = 1e-8


@pytest.fixture(scope="module")
def layout() -> dict[str, ProductionUnit]:
    return load_layout(DEFAULT_LAYOUT)


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_pu_layout", ROOT / "scripts" / "make_pu_layout.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_pu_layout"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------ shipped layouts


def test_default_layout_is_133_mainland_plus_5_doms(layout):
    assert len(layout) == 138
    assert list(layout) == sorted(layout)
    mainland = [u for u in layout.values() if u.crs == aoi.EEA_CRS]
    assert len(mainland) == 133
    assert [layout[f"PU{n}"].crs for n in range(134, 139)] == DOM_CRS
    assert [layout[f"PU{n}"].name for n in range(134, 139)] == [d.name for d in aoi.DOMS.values()]
    assert all(u.geometry.is_valid and not u.geometry.is_empty for u in layout.values())
    assert all(u.name and u.name != u.pu_id for u in layout.values())
    assert all(u.countries for u in layout.values())


def test_default_layout_ids_unique_and_index_agrees(layout):
    features = json.loads(DEFAULT_LAYOUT.read_text(encoding="utf-8"))["features"]
    ids = [f["properties"]["pu_id"] for f in features]
    assert len(ids) == len(set(ids)) == 138
    index = layout_index(DEFAULT_LAYOUT)
    assert [e["pu_id"] for e in index] == list(layout)
    assert all(e == {"pu_id": u.pu_id, "name": u.name, "area_km2": u.area_km2, "crs": u.crs} for e, u in zip(index, layout.values()))


def test_mainland_units_partition_the_aoi(layout):
    area = aoi.mainland_aoi(250.0)
    geoms = [u.geometry_in(aoi.EEA_CRS) for u in layout.values() if u.crs == aoi.EEA_CRS]
    union = shapely.union_all(geoms)
    total = area.area
    assert union.symmetric_difference(area).area / total < PARTITION_TOLERANCE
    # Overlaps: the areas add up to the union's area.
    assert abs(sum(g.area for g in geoms) - union.area) / total < PARTITION_TOLERANCE


def test_area_figures_match_geometries(layout):
    for unit in layout.values():
        assert unit.geometry_in(unit.crs).area / 1e6 == pytest.approx(unit.area_km2, abs=0.02)
    report = layout_report(layout)
    mainland = layout_report([u for u in layout.values() if u.crs == aoi.EEA_CRS])
    assert report["count"] == 138
    assert report["total_area_km2"] == pytest.approx(6_002_105, rel=0.03)
    assert mainland["max_min_ratio"] <= 2.0


def test_doms_are_their_aoi(layout):
    for n, code in enumerate(aoi.DOMS, start=134):
        unit = layout[f"PU{n}"]
        expected = aoi.dom_aoi(code, 250.0)
        assert unit.geometry_in(unit.crs).symmetric_difference(expected).area / expected.area < PARTITION_TOLERANCE


def test_demo_layout_two_adjacent_coastal_units():
    demo = load_layout(DEMO_LAYOUT)
    assert list(demo) == ["DEMO1", "DEMO2"]
    a, b = (u.geometry_in(aoi.EEA_CRS) for u in demo.values())
    for unit, geom in zip(demo.values(), (a, b)):
        assert unit.crs == aoi.EEA_CRS
        assert "Slovenian coast" in unit.name
        minx, miny, maxx, maxy = geom.bounds
        assert 3_000 <= maxx - minx <= 7_000 and 3_000 <= maxy - miny <= 7_000
    assert a.boundary.intersection(b.boundary).length > 1_000  # a shared border, not a corner
    assert a.intersection(b).area < 1.0
    both = a.union(b)
    in_aoi = both.intersection(aoi.mainland_aoi(250.0)).area / both.area
    assert 0.5 < in_aoi < 0.95  # mostly land, with a piece of sea


def test_demo_layout_is_what_the_generator_writes(generator):
    assert generator.feature_collection(generator.demo_units(), "CLCplus Backbone demo production units") == DEMO_LAYOUT.read_bytes()


def test_geometry_in_round_trips(layout):
    unit = layout["PU050"]
    back = gpd.GeoSeries([unit.geometry_in("EPSG:3035")], crs="EPSG:3035").to_crs("EPSG:4326").iloc[0]
    # PROJ's inverse LAEA is accurate to ~1 mm, hence a relative tolerance, not zero.
    assert back.symmetric_difference(unit.geometry).area / unit.geometry.area < 1e-7


# ------------------------------------------------------------------------------ generator


def test_generator_is_deterministic_and_partitions(generator):
    slovenia = aoi.countries().set_index("ADM0_A3").loc[["SVN"]].to_crs(aoi.EEA_CRS).geometry.iloc[0].buffer(250.0)
    params = generator.LayoutParams(n_units=4, cell_m=10_000.0, lloyd_iterations=4, geodesic_iterations=3, balance_sweeps=20)
    first = generator.mainland_units(slovenia, params)
    second = generator.mainland_units(slovenia, params)
    data = generator.feature_collection(first, "test")
    assert data == generator.feature_collection(second, "test")
    assert [u.pu_id for u in first] == ["PU001", "PU002", "PU003", "PU004"]
    union = shapely.union_all([u.geometry for u in first])
    assert union.symmetric_difference(slovenia).area / slovenia.area < 1e-9
    assert sum(u.geometry.area for u in first) == pytest.approx(union.area, rel=1e-9)
    areas = [u.geometry.area for u in first]
    assert max(areas) / min(areas) < 2.0


def test_rasterise_weights_are_exact(generator):
    shape = Polygon([(1_000, 1_000), (48_000, 3_000), (30_000, 41_000)]).union(box(60_000, 5_000, 61_000, 6_000))
    grid = generator.rasterise(shape, 10_000.0)
    assert grid.weight_km2.sum() == pytest.approx(shape.area / 1e6, rel=1e-12)


# --------------------------------------------------------------------------- bad layouts


def _feature(pu_id, crs="EPSG:3035", geometry=None, **extra) -> dict:
    props = {"crs": crs, **extra}
    if pu_id is not None:
        props["pu_id"] = pu_id
    geometry = geometry if geometry is not None else box(13.0, 45.0, 13.1, 45.1).__geo_interface__
    return {"type": "Feature", "properties": props, "geometry": geometry}


def _write(tmp_path: Path, features: list[dict], name: str = "layout.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


BOW_TIE = {"type": "Polygon", "coordinates": [[[13.0, 45.0], [13.1, 45.1], [13.1, 45.0], [13.0, 45.1], [13.0, 45.0]]]}
BAD_LAYOUTS = {
    "missing ids": ([_feature("A"), _feature(None), _feature("")], ["feature(s) number 2, 3", "no pu_id"]),
    "duplicate ids": ([_feature("A"), _feature("B"), _feature("A"), _feature("B")], ["duplicate pu_id(s) A, B"]),
    "malformed id": ([_feature("PU 1"), _feature("PU-2")], ["'PU 1'", "'PU-2'", "do not match"]),
    "unknown crs": ([_feature("A"), _feature("B", crs="EPSG:999999")], ["unknown CRS", "B ('EPSG:999999')"]),
    "missing crs column": ([{"type": "Feature", "properties": {"pu_id": "A"}, "geometry": BOW_TIE}], ["required column(s) crs"]),
    "no features": ([], ["has no features"]),
}


@pytest.mark.parametrize("case", sorted(BAD_LAYOUTS))
def test_bad_attributes_are_refused_by_load_and_index(tmp_path, case):
    features, fragments = BAD_LAYOUTS[case]
    path = _write(tmp_path, features)
    for reader in (load_layout, layout_index):
        with pytest.raises(LayoutError) as caught:
            reader(path)
        message = str(caught.value)
        assert str(path) in message
        for fragment in fragments:
            assert fragment in message, (reader.__name__, message)


def test_self_intersecting_polygon_is_refused(tmp_path):
    path = _write(tmp_path, [_feature("GOOD"), _feature("BOWTIE", geometry=BOW_TIE)])
    with pytest.raises(LayoutError, match=r"invalid geometry for PU\(s\) BOWTIE: Self-intersection"):
        load_layout(path)
    assert [e["pu_id"] for e in layout_index(path)] == ["BOWTIE", "GOOD"]  # attributes alone are fine


def test_empty_and_non_polygon_geometries_are_refused(tmp_path):
    path = _write(tmp_path, [_feature("A"), {**_feature("NOGEOM"), "geometry": None}])
    with pytest.raises(LayoutError, match=r"NOGEOM have a null or empty geometry"):
        load_layout(path)
    path = _write(tmp_path, [_feature("P", geometry={"type": "Point", "coordinates": [13.0, 45.0]})])
    with pytest.raises(LayoutError, match=r"P \(Point\) are not \(multi\)polygons"):
        load_layout(path)


def test_missing_and_unreadable_files_are_refused(tmp_path):
    for reader in (load_layout, layout_index):
        with pytest.raises(LayoutError, match="does not exist"):
            reader(tmp_path / "nowhere.geojson")
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{ not json")
    for reader in (load_layout, layout_index):
        with pytest.raises(LayoutError, match="cannot be read"):
            reader(garbage)
    table = tmp_path / "table.csv"
    table.write_text("pu_id,crs\nA,EPSG:3035\n")
    with pytest.raises(LayoutError, match="has no geometry column"):
        load_layout(table)
    assert layout_index(table)[0]["pu_id"] == "A"


def test_optional_columns_default(tmp_path):
    path = _write(tmp_path, [_feature("B"), _feature("A", crs="EPSG:32633")])
    units = load_layout(path)
    assert list(units) == ["A", "B"]
    assert units["A"].name == "A" and units["A"].countries == ()
    expected = units["A"].geometry_in("EPSG:32633").area / 1e6
    assert units["A"].area_km2 == pytest.approx(expected, abs=0.01) and units["A"].area_km2 > 80
    assert layout_index(path)[0] == {"pu_id": "A", "name": "A", "area_km2": None, "crs": "EPSG:32633"}


def test_geopackage_in_another_crs_is_reprojected(tmp_path):
    square = box(4_606_000, 2_496_000, 4_611_000, 2_501_000)
    frame = gpd.GeoDataFrame({"pu_id": ["G1"], "crs": ["EPSG:3035"]}, geometry=[square], crs="EPSG:3035")
    path = tmp_path / "layout.gpkg"
    frame.to_file(path, driver="GPKG")
    unit = load_layout(path)["G1"]
    assert unit.geometry.bounds[0] == pytest.approx(13.64, abs=0.01)  # lon/lat now
    assert unit.geometry_in("EPSG:3035").symmetric_difference(square).area / square.area < 1e-6
    assert unit.area_km2 == pytest.approx(25.0)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_geopackage_without_crs_is_refused(tmp_path):
    frame = gpd.GeoDataFrame({"pu_id": ["G1"], "crs": ["EPSG:3035"]}, geometry=[box(13.0, 45.0, 13.1, 45.1)])
    path = tmp_path / "nocrs.gpkg"
    frame.to_file(path, driver="GPKG")
    with pytest.raises(LayoutError, match="has no CRS"):
        load_layout(path)
