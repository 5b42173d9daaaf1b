"""Rule-based recoding (clcplus_ops.postprocessing.recoding_rules): rules files, their checks, identity,
preparation for a grid and the pure application; sources are built here in several formats and
CRSs, and the expected pixels come from shapely (pixel centres / pixel squares), not from the
rasteriser under test."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import yaml
from scipy import ndimage

from clcplus_ops.geo.grid import Grid
from clcplus_ops.postprocessing.recoding_rules import (
    RecodingRulesError,
    load_rules,
    raspl,
    recode_block,
)
from clcplus_ops.store import S3Settings, Store, join

# 64 x 64 px of 10 m in EPSG:3035 near lon 10, lat 52 (UTM zone 32N)
X0, Y0, RES, N = 4_321_000.0, 3_210_000.0, 10.0, 64
GRID = Grid.from_bounds(3035, (X0, Y0, X0 + N * RES, Y0 + N * RES), RES)
UTM = 32632


def px(col: float, row: float) -> tuple[float, float]:
    """A grid position (column, row in pixels from the upper-left corner) in EPSG:3035."""
    return X0 + col * RES, Y0 + N * RES - row * RES


def cells(rc: list[tuple[int, int]]) -> shapely.Geometry:
    """The union of whole pixels (row, col)."""
    return shapely.union_all([shapely.box(*px(c, r + 1), *px(c + 1, r)) for r, c in rc])


def rect(c0: int, r0: int, c1: int, r1: int) -> shapely.Geometry:
    """The pixels [r0, r1) x [c0, c1)."""
    return shapely.box(*px(c0, r1), *px(c1, r0))


def centres() -> tuple[np.ndarray, np.ndarray]:
    cols, rows = np.meshgrid(np.arange(N) + 0.5, np.arange(N) + 0.5)
    return X0 + cols * RES, Y0 + N * RES - rows * RES


def pixel_boxes() -> np.ndarray:
    x, y = centres()
    return shapely.box(x - RES / 2, y - RES / 2, x + RES / 2, y + RES / 2)


def write(tmp: Path, name: str, geoms, epsg: int = 3035, target_epsg: int | None = None, **columns) -> str:
    """Write features (given in EPSG:3035, reprojected to ``target_epsg``) in the format of
    ``name``'s suffix; returns the name."""
    gdf = gpd.GeoDataFrame(columns, geometry=list(geoms), crs=f"EPSG:{epsg}")
    if target_epsg:
        gdf = gdf.to_crs(target_epsg)
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        gdf.to_parquet(path)
    else:
        gdf.to_file(path, engine="pyogrio")
    return name


def rules_file(tmp: Path, rules: list[dict], name: str = "rules.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump({"version": 1, "rules": rules}, sort_keys=False))
    return path


def apply(path: Path, classes: np.ndarray | None = None, in_area=None, **kw):
    ruleset = load_rules(path, **kw)
    prepared = ruleset.prepare(GRID)
    base = np.full(GRID.shape, 2, np.uint8) if classes is None else classes
    out, counts = recode_block(base, GRID, prepared, in_area)
    return out, counts, prepared, ruleset


def truth_centre(geom) -> np.ndarray:
    x, y = centres()
    return shapely.contains_xy(geom, x, y)


# ---- application ---------------------------------------------------------------------------------

L_SHAPE = [(r, c) for r in range(10, 30) for c in range(8, 14)] + [(r, c) for r in range(24, 30) for c in range(14, 30)]
TRIANGLE = shapely.Polygon([px(34, 40), px(62, 40), px(34, 19)])  # hypotenuse >= 1 m from every centre


@pytest.mark.parametrize(("name", "epsg"), [("parcels.gpkg", 3035), ("shp/parcels.shp", UTM),
                                            ("parcels.geojson", 4326), ("parcels.parquet", UTM)])
def test_polygons_recode_by_pixel_centre_in_any_format_and_crs(tmp_path, name, epsg):
    write(tmp_path, name, [cells(L_SHAPE), TRIANGLE], target_epsg=epsg)
    path = rules_file(tmp_path, [{"name": "parcels", "source": name, "to_class": 6}])
    out, counts, prepared, _ = apply(path)
    expected = np.zeros(GRID.shape, bool)
    expected[tuple(np.array(L_SHAPE).T)] = True
    assert (expected & truth_centre(TRIANGLE)).sum() == 0
    expected |= truth_centre(TRIANGLE)
    np.testing.assert_array_equal(out == 6, expected)  # the pixel-built parcel exactly, no spill
    assert set(np.unique(out[~expected])) == {2}
    assert counts == {"parcels": int(expected.sum())}
    assert prepared.summary() == {"parcels": {"features": 2, "unmapped_ignored": 0}}


def test_lines_are_all_touched_and_continuous(tmp_path):
    line = shapely.LineString([px(3.3, 5.7), px(55.2, 41.9)])
    corners = shapely.points(np.array([px(c, r) for r in range(N + 1) for c in range(N + 1)]))
    assert shapely.distance(line, corners).min() > 1e-3  # no pixel corner is ambiguous
    write(tmp_path, "roads/roads.shp", [line], target_epsg=UTM, fclass=["primary"])
    path = rules_file(tmp_path, [{"name": "roads", "source": "roads/roads.shp", "where": {"fclass": "primary"},
                                  "to_class": 1}])
    out, counts, _, _ = apply(path)
    read_back = gpd.read_file(tmp_path / "roads/roads.shp").to_crs(3035).geometry[0]
    touched = shapely.intersects(pixel_boxes(), read_back)
    np.testing.assert_array_equal(out == 1, touched)
    assert ndimage.label(out == 1)[1] == 1  # one 4-connected run: no gaps along the diagonal
    # by centre, the same line would leave the line's pixels disconnected
    centre_rules = rules_file(tmp_path, [{"name": "roads", "source": "roads/roads.shp", "to_class": 1,
                                          "all_touched": False}], "centre.yaml")
    by_centre, _, _, _ = apply(centre_rules)
    assert (by_centre == 1).sum() < touched.sum() and ndimage.label(by_centre == 1)[1] > 1


def test_rule_order_from_classes_and_no_class(tmp_path):
    write(tmp_path, "a.gpkg", [rect(0, 0, 40, 40)])
    write(tmp_path, "b.gpkg", [rect(10, 10, 20, 20)])
    write(tmp_path, "c.geojson", [rect(50, 50, 60, 60)], target_epsg=4326)
    classes = np.full(GRID.shape, 2, np.uint8)
    classes[:, 20:] = 3
    classes[5, 5] = 0  # no class, inside rule a: kept (a is restricted)
    classes[55, 55] = 0  # no class, inside rule c: recoded (c is not)
    path = rules_file(tmp_path, [
        {"name": "a", "source": "a.gpkg", "to_class": 6, "from_classes": [2]},
        {"name": "b", "source": "b.gpkg", "to_class": 1, "from_classes": [6]},  # sees a's class 6
        {"name": "c", "source": "c.geojson", "to_class": 10},
    ])
    out, counts, _, _ = apply(path, classes)
    exp = classes.copy()
    exp[:40, :20][classes[:40, :20] == 2] = 6
    exp[10:20, 10:20] = 1
    exp[50:60, 50:60] = 10
    np.testing.assert_array_equal(out, exp)
    assert counts == {"a": 40 * 20 - 1, "b": 100, "c": 100}
    assert out[5, 5] == 0 and out[55, 55] == 10


def test_in_area_within_and_buffered_line(tmp_path):
    line = shapely.LineString([px(5.5, 30.5), px(58.5, 30.5)])  # along pixel centres
    write(tmp_path, "tracks.geojson", [line], target_epsg=4326)
    write(tmp_path, "aoi/aoi.parquet", [rect(0, 0, 30, 64)], target_epsg=UTM, note=["west"])
    path = rules_file(tmp_path, [{"name": "tracks", "source": "tracks.geojson", "to_class": 9, "buffer_m": 15,
                                  "within": "aoi/aoi.parquet"}])
    in_area = np.ones(GRID.shape, bool)
    in_area[:, :8] = False
    out, counts, _, _ = apply(path, in_area=in_area)
    x, y = centres()
    expected = (shapely.distance(shapely.points(x, y), line) <= 15) & truth_centre(rect(0, 0, 30, 64)) & in_area
    assert expected.sum() == 3 * (30 - 8) and (expected[29:32, 8:30]).all()  # rows at 0 and 10 m, cut at col 30
    np.testing.assert_array_equal(out == 9, expected)
    assert counts["tracks"] == expected.sum()


def test_lookup_to_class_and_from_classes_text(tmp_path):
    parcels = [rect(0, 0, 20, 20), rect(20, 0, 40, 20), rect(40, 0, 60, 20), rect(0, 30, 20, 50)]
    write(tmp_path, "lpis/gsaa.parquet", parcels, target_epsg=UTM, parcel_id=[1, 2, 3, 4],
          crop_code=["W01", "G10", "XX9", "G10"], allowed=["6,7", "2", "2", " 3 , 7"])
    (tmp_path / "lpis/crops.csv").write_text("\ufeffcode;clc\nW01;7\nG10;6\nZ00;9\n")  # a spreadsheet export
    path = rules_file(tmp_path, [{"name": "lpis", "source": "lpis/gsaa.parquet",
                                  "to_class": {"attribute": "crop_code", "lookup": "lpis/crops.csv", "key": "code",
                                               "value": "clc", "unmapped": "ignore"},
                                  "from_classes": {"attribute": "allowed"}}])
    classes = np.full(GRID.shape, 2, np.uint8)
    classes[:, :10] = 6
    classes[:, 10:15] = 7
    classes[40:, :] = 3
    out, counts, prepared, ruleset = apply(path, classes)
    exp = classes.copy()
    exp[:20, 0:15] = 7  # W01 -> 7 over classes 6 and 7; 2 stays
    exp[:20, 20:40] = 6  # G10 -> 6 over class 2
    # XX9 is unmapped and ignored; parcel 4 (G10 -> 6) over 3 and 7 only
    blk = exp[30:50, 0:20]
    blk[np.isin(classes[30:50, 0:20], [3, 7])] = 6
    np.testing.assert_array_equal(out, exp)
    assert prepared.summary()["lpis"] == {"features": 3, "unmapped_ignored": 1}
    assert any("unmapped" in w and "XX9" in w for w in ruleset.warnings)


def test_overlapping_features_later_in_the_source_wins(tmp_path):
    write(tmp_path, "o.gpkg", [rect(0, 0, 20, 20), rect(10, 10, 30, 30)], code=[6, 7])
    write(tmp_path, "r.gpkg", [rect(10, 10, 30, 30), rect(0, 0, 20, 20)], code=[7, 6])
    for src, overlap in (("o.gpkg", 7), ("r.gpkg", 6)):
        path = rules_file(tmp_path, [{"name": "o", "source": src, "to_class": {"attribute": "code"}}], f"{src}.yaml")
        out, _, _, _ = apply(path)
        assert (out[10:20, 10:20] == overlap).all()
        assert (out[0:10, 0:10] == 6).all() and (out[20:30, 20:30] == 7).all()


def test_blocks_give_the_whole_grid_result(tmp_path):
    rng = np.random.default_rng(1)
    polys = [shapely.Polygon(np.array([px(*p) for p in rng.uniform(0, N, (3, 2))])) for _ in range(12)]
    lines = [shapely.LineString([px(*p) for p in rng.uniform(-5, N + 5, (4, 2))]) for _ in range(6)]
    write(tmp_path, "p.gpkg", polys, code=rng.integers(1, 12, len(polys)).tolist())
    write(tmp_path, "l.shp", lines, target_epsg=UTM)
    path = rules_file(tmp_path, [{"name": "p", "source": "p.gpkg", "to_class": {"attribute": "code"},
                                  "from_classes": [2, 3, 4]},
                                 {"name": "l", "source": "l.shp", "to_class": 1}])
    classes = rng.integers(0, 6, GRID.shape).astype(np.uint8)
    in_area = rng.random(GRID.shape) > 0.1
    whole, counts, prepared, _ = apply(path, classes, in_area)
    pieces = np.zeros_like(classes)
    totals = dict.fromkeys(counts, 0)
    for row, col, block in GRID.blocks(24):
        win = np.s_[row:row + block.height, col:col + block.width]
        pieces[win], c = recode_block(classes[win], block, prepared, in_area[win])
        totals = {k: totals[k] + c[k] for k in totals}
    np.testing.assert_array_equal(pieces, whole)
    assert totals == counts and counts["p"] > 0 and counts["l"] > 0


def test_raspl():
    calibrated = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    final = np.array([[1, 6, 3], [4, 1, 6]], np.uint8)
    in_area = np.array([[True, True, True], [True, False, True]])
    np.testing.assert_array_equal(raspl(calibrated, final, in_area), [[0, 1, 0], [0, 254, 0]])
    np.testing.assert_array_equal(raspl(calibrated, final, None, outside=200), [[0, 1, 0], [0, 1, 0]])
    assert raspl(calibrated, final, in_area).dtype == np.uint8


# ---- refusals -------------------------------------------------------------------------------------


@pytest.fixture
def sources(tmp_path) -> Path:
    write(tmp_path, "lpis/gsaa.gpkg", [rect(0, 0, 10, 10)], parcel_id=[1], crop_code=["G10"])
    write(tmp_path, "osm/pois.gpkg", [shapely.Point(px(5, 5))], fclass=["tower"])
    (tmp_path / "lpis/crops.csv").write_text("code,clc\nG10,6\nW01,12\n")
    return tmp_path


def refusal(path: Path) -> list[str]:
    with pytest.raises(RecodingRulesError) as info:
        load_rules(path)
    return info.value.problems


@pytest.mark.parametrize(("rule", "expected"), [
    ({"source": "nope/missing.gpkg"}, "rule 'r': source nope/missing.gpkg does not exist"),
    ({"where": {"crop_cod": "G10"}},
     "rule 'r': source lpis/gsaa.gpkg has no column 'crop_cod' (columns: parcel_id, crop_code, geometry)"),
    ({"to_class": {"attribute": "crop_code", "lookup": "lpis/crops.csv", "key": "code", "value": "clc"}},
     "rule 'r': lookup lpis/crops.csv column 'clc' has values that are not class codes (1..11): '12'"),
    ({"to_class": {"attribute": "crop_code", "lookup": "lpis/crops.csv", "key": "kode", "value": "clc"}},
     "rule 'r': lookup lpis/crops.csv has no column(s) 'kode' (columns: code, clc)"),
    ({"to_class": {"attribute": "crop_code"}},
     "rule 'r': to_class attribute 'crop_code' has values not in class codes (1..11): 'G10'"),
    ({"from_classes": {"attribute": "crop_code"}}, "rule 'r': from_classes attribute 'crop_code' has values"),
    ({"comments": "typo"}, "rule 'r': unknown key 'comments'"),
    ({"to_class": 12}, "rule 'r': to_class: class 12 is not a class code (1..11)"),
    ({"from_classes": [0, 3]}, "rule 'r': from_classes: [0] are not class codes (1..11)"),
    ({"source": "osm/pois.gpkg"}, "rule 'r': source osm/pois.gpkg holds points: they need buffer_m > 0"),
    ({"layer": "roads"}, "rule 'r': source lpis/gsaa.gpkg has no layer 'roads' (layers: gsaa)"),
    ({"within": "osm/pois.gpkg"}, "rule 'r': within osm/pois.gpkg holds point, not only polygons"),
    ({"source": "https://example.org/x.gpkg"}, "rule 'r': source https://example.org/x.gpkg: unsupported URL"),
])
def test_each_bad_rule_is_refused_with_its_name_and_reason(sources, rule, expected):
    path = rules_file(sources, [{"name": "r", "source": "lpis/gsaa.gpkg", "to_class": 6, **rule}])
    problems = refusal(path)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_points_with_a_buffer_are_accepted(sources):
    path = rules_file(sources, [{"name": "r", "source": "osm/pois.gpkg", "to_class": 1, "buffer_m": 12}])
    out, _, _, _ = apply(path)
    x, y = centres()
    np.testing.assert_array_equal(out == 1, shapely.distance(shapely.points(x, y), shapely.Point(px(5, 5))) <= 12)


def test_all_problems_are_reported_together(sources):
    (sources / "shp").mkdir()
    write(sources, "shp/roads.shp", [shapely.LineString([px(1, 1), px(9, 9)])])
    (sources / "shp/roads.dbf").unlink()
    path = rules_file(sources, [
        {"name": "lpis_grassland", "source": "lpis/gsaa.gpkg", "to_class": 6, "where": {"crop_cod": "G10"}},
        {"name": "lpis_grassland", "source": "lpis/gsaa.gpkg", "to_class": 6},
        {"name": "bad_lookup", "source": "lpis/gsaa.gpkg",
         "to_class": {"attribute": "crop_code", "lookup": "lpis/crops.csv", "key": "code", "value": "clc"}},
        {"name": "roads", "source": "shp/roads.shp", "to_class": 1},
        {"name": "ok", "source": "lpis/gsaa.gpkg", "to_class": 6},
    ])
    with pytest.raises(RecodingRulesError) as info:
        load_rules(path)
    problems = info.value.problems
    assert len(problems) == 4, problems
    text = str(info.value)
    assert text.splitlines()[0].endswith("4 problems")
    assert "rule 'lpis_grassland': the name is used by rules #1, #2" in text
    assert "rule 'lpis_grassland': source lpis/gsaa.gpkg has no column 'crop_cod'" in text
    assert "rule 'bad_lookup': lookup lpis/crops.csv column 'clc'" in text
    assert "rule 'roads': source shp/roads.shp: shapefile part(s) missing: roads.dbf" in text


def test_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - name: a\n    source: [x\n    to_class: 1\n")
    (problem,) = refusal(path)
    assert problem.startswith("YAML error at line 5"), problem
    path.write_text("version: 1\nrules:\n  - name: a\n    to_class: 1\n    to_class: 2\n")
    (problem,) = refusal(path)
    assert problem == "YAML error at line 5, column 5: duplicate key 'to_class'"
    path.write_text("version: 2\nrules: []\n")
    assert refusal(path) == ["rules file: version: Input should be 1"]
    assert refusal(tmp_path / "none.yaml") == ["the rules file does not exist"]


def test_where_value_never_occurring_is_a_warning(sources, caplog):
    path = rules_file(sources, [{"name": "r", "source": "lpis/gsaa.gpkg", "to_class": 6,
                                 "where": {"crop_code": ["G10", "G99"]}}])
    ruleset = load_rules(path)
    assert any("where crop_code: value(s) 'G99' never occur" in w for w in ruleset.warnings)
    assert "G99" in caplog.text


# ---- identity ------------------------------------------------------------------------------------


def test_identity_follows_the_rules_file_and_every_source_file(tmp_path):
    write(tmp_path, "shp/roads.shp", [shapely.LineString([px(1, 1), px(9, 9)])], fclass=["primary"])
    write(tmp_path, "aoi.gpkg", [rect(0, 0, 10, 10)])
    path = rules_file(tmp_path, [{"name": "roads", "source": "shp/roads.shp", "to_class": 1, "within": "aoi.gpkg"}])
    first = load_rules(path)
    ident = first.identity()
    parts = {u.rsplit("/", 1)[-1] for u in ident["files"]}
    assert parts == {"roads.shp", "roads.shx", "roads.dbf", "roads.prj", "roads.cpg", "aoi.gpkg"}
    assert load_rules(path).identity() == ident  # nothing changed
    # the attribute table alone changes: the identity changes, and the old rule set refuses to prepare
    write(tmp_path, "shp/roads.shp", [shapely.LineString([px(1, 1), px(9, 9)])], fclass=["secondary"])
    assert load_rules(path).identity() != ident
    with pytest.raises(RecodingRulesError, match="changed since the rules were loaded"):
        first.prepare(GRID)
    ident = load_rules(path).identity()
    path.write_text(path.read_text().replace("to_class: 1", "to_class: 9"))
    assert load_rules(path).identity()["rules_sha256"] != ident["rules_sha256"]


# ---- s3 ------------------------------------------------------------------------------------------


def test_s3_rules_and_shapefile_with_its_sidecars(tmp_path, s3_server, s3_bucket):
    write(tmp_path, "osm/parcels.shp", [cells(L_SHAPE)], target_epsg=UTM)
    (tmp_path / "crops.csv").write_text("k,v\n1,5\n")
    rules_file(tmp_path, [{"name": "p", "source": "osm/parcels.shp", "to_class": 5}])
    store = Store(S3Settings(endpoint_url=s3_server))
    for f in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        store.write_bytes(join(s3_bucket, f.relative_to(tmp_path).as_posix()), f.read_bytes())
    with load_rules(join(s3_bucket, "rules.yaml"), store) as ruleset:
        out, counts = recode_block(np.full(GRID.shape, 2, np.uint8), GRID, ruleset.prepare(GRID), None)
        assert counts == {"p": len(L_SHAPE)} and (out == 5).sum() == len(L_SHAPE)
        files = ruleset.identity()["files"]
        assert len(files) == 5 and all(u.startswith(s3_bucket) for u in files)
