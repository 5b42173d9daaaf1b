"""clcplus_ops.model.sample_db: import (CSV, GeoPackage), errors, revisions, queries, hashing,
determinism; one round trip through S3 (moto server)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from clcplus_ops.config import Config
from clcplus_ops.errors import ClcplusError
from clcplus_ops.locations import Locations
from clcplus_ops.model.sample_db import (
    BATCHES,
    SampleDBError,
    SampleImportError,
    add_revisions,
    import_samples,
    load_sample_db,
)
from clcplus_ops.store import S3Settings, Store, as_url, join
from clcplus_ops.synthetic.samples import draw_samples

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(days=1)
T2 = T0 + timedelta(days=2)


@pytest.fixture
def store() -> Store:
    return Store()


def _sample_db(samples_root: str) -> str:
    """The sample DB of a configuration whose samples root is ``samples_root``."""
    config = Config()
    return Locations(config.model_copy(update={"store": config.store.model_copy(update={"samples": samples_root})})).sample_db


@pytest.fixture
def root(tmp_path: Path) -> str:
    return _sample_db(as_url(tmp_path / "samples"))


def synthetic_csv(path: Path, n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A sample CSV as the synthetic world writes it (x, y, epsg + lon, lat, true_label...)."""
    truth = np.repeat(np.repeat(np.arange(100).reshape(10, 10) % 11 + 1, 10, axis=0), 10, axis=1)
    samples = draw_samples(truth, (500_000, 5_000_000, 501_000, 5_001_000), 32633, n, 0.05, seed, 2025)
    path.write_text(samples.to_csv())
    return pd.read_csv(path)


def lonlat_csv(path: Path, rows: list[tuple], header: str = "sample_id,lon,lat,label") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def batches(store: Store, root: str) -> list[str]:
    return store.list(join(root, BATCHES))


# ---- import ---------------------------------------------------------------------------------


def test_import_synthetic_csv(store: Store, root: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = synthetic_csv(tmp_path / "samples_2025.csv")
    with caplog.at_level(logging.INFO, logger="clcplus_ops.model.sample_db"):
        summary = import_samples(store, root, tmp_path / "samples_2025.csv", created=T0)
    assert (summary.rows, summary.added, summary.relabelled, summary.unchanged) == (len(table), len(table), 0, 0)
    assert summary.batch_id.startswith("20250301T120000Z-import-") and len(summary.batch_id) == 32
    assert summary.url == join(root, BATCHES, f"{summary.batch_id}.parquet")
    assert batches(store, root) == [summary.url]
    assert "ignoring column(s) true_label, mislabelled" in caplog.text

    db = load_sample_db(store, root)
    points = db.points
    assert list(points.columns) == ["sample_id", "label", "status", "source", "polygon_id", "revision", "updated",
                                    "geometry"]
    assert points.crs.to_epsg() == 4326 and len(points) == len(table)
    assert list(points["sample_id"]) == sorted(table["sample_id"])
    expected = table.set_index("sample_id").loc[points["sample_id"]]
    lon, lat = Transformer.from_crs(32633, 4326, always_xy=True).transform(expected["x"].to_numpy(),
                                                                           expected["y"].to_numpy())
    np.testing.assert_allclose(points.geometry.x, lon, rtol=0, atol=1e-12)
    np.testing.assert_allclose(points.geometry.y, lat, rtol=0, atol=1e-12)
    np.testing.assert_allclose(points.geometry.x, expected["lon"], rtol=0, atol=2e-8)  # the CSV's own lon/lat
    assert (points["label"].to_numpy() == expected["label"].to_numpy()).all()
    assert set(points["status"]) == {"active"} and set(points["source"]) == {"samples_2025.csv"}
    assert (points["revision"] == 1).all() and points["polygon_id"].isna().all()
    assert (points["updated"] == pd.Timestamp(T0)).all()
    rev = db.revisions
    assert len(rev) == len(table) and set(rev["reason"]) == {"import"} and set(rev["author"]) == {"import"}
    assert set(rev["batch_id"]) == {summary.batch_id}
    batch = gpd.read_parquet(summary.url[len("file://"):])  # plain GeoParquet for any reader
    assert batch.crs.to_epsg() == 4326 and len(batch) == len(table) and batch.geometry.geom_type.eq("Point").all()
    assert list(batch.columns) == ["sample_id", "label", "status", "source", "polygon_id", "reason", "author",
                                   "created", "geometry"]


def test_import_geopackage_in_3035(store: Store, root: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.uniform(4.0e6, 4.5e6, 50), rng.uniform(2.8e6, 3.2e6, 50)
    gdf = gpd.GeoDataFrame(
        {"sample_id": [f"g{i:03d}" for i in range(50)], "label": rng.integers(1, 12, 50),
         "polygon_id": [f"poly{i // 5}" for i in range(50)], "source": ["LUCAS"] * 25 + [None] * 25,
         "comment": "x"},
        geometry=gpd.points_from_xy(x, y), crs="EPSG:3035",
    )
    path = tmp_path / "lucas.gpkg"
    gdf.to_file(path, layer="samples", driver="GPKG")
    summary = import_samples(store, root, path, created=T0, author="qa team", source="fallback")
    assert summary.added == 50
    points = load_sample_db(store, root).points.set_index("sample_id").loc[gdf["sample_id"]]
    lon, lat = Transformer.from_crs(3035, 4326, always_xy=True).transform(x, y)
    np.testing.assert_allclose(points.geometry.x, lon, rtol=0, atol=1e-9)
    np.testing.assert_allclose(points.geometry.y, lat, rtol=0, atol=1e-9)
    assert list(points["label"]) == list(gdf["label"]) and list(points["polygon_id"]) == list(gdf["polygon_id"])
    assert list(points["source"]) == ["LUCAS"] * 25 + ["fallback"] * 25


def test_import_from_a_store_url_and_unsupported_types(store: Store, root: str, tmp_path: Path) -> None:
    path = lonlat_csv(tmp_path / "pts.csv", [("a", 10.5, 50.25, 3)])
    staged = join(as_url(tmp_path / "staging"), "pts.csv")
    store.write_bytes(staged, path.read_bytes())
    summary = import_samples(store, root, staged, created=T0)
    assert summary.added == 1 and load_sample_db(store, root).points["source"].tolist() == ["pts.csv"]
    (tmp_path / "pts.shp").write_text("")
    with pytest.raises(SampleDBError, match=r"pts.shp: unsupported file type; expected a \.csv or \.gpkg"):
        import_samples(store, root, tmp_path / "pts.shp")
    with pytest.raises(FileNotFoundError):
        import_samples(store, root, tmp_path / "absent.csv")
    (tmp_path / "latin1.csv").write_bytes(b"sample_id,lon,lat,label\nM\xfcnchen,11.5,48.1,1\n")
    with pytest.raises(SampleDBError, match="cannot import latin1.csv: it is not UTF-8 text"):
        import_samples(store, root, tmp_path / "latin1.csv")
    # An expected error: the command line prints its one line (and it stays a ValueError).
    assert issubclass(SampleDBError, ClcplusError) and issubclass(SampleDBError, ValueError)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SampleImportError, match="empty.csv line 1: the file is empty"):
        import_samples(store, root, tmp_path / "empty.csv")


BAD_ROWS = [
    # (data row written at line 3; the expected problem)
    ("b,11.0,51.0,0", "line 3: label 0 is not a class code 1..11"),
    ("b,11.0,51.0,12", "line 3: label 12 is not a class code 1..11"),
    ("b,11.0,51.0,2.5", "line 3: label '2.5' is not an integer"),
    ("b,11.0,51.0,forest", "line 3: label 'forest' is not an integer"),
    ("b,11.0,51.0,", "line 3: label is empty"),
    (",11.0,51.0,3", "line 3: empty sample_id"),
    ("a,11.0,51.0,3", "line 3: duplicate sample_id 'a' (first at line 2)"),
    ("b,east,51.0,3", "line 3: lon 'east' is not a finite number"),
    ("b,11.0,inf,3", "line 3: lat 'inf' is not a finite number"),
    ("b,181.0,51.0,3", "line 3: lon/lat (181.0, 51.0) out of range"),
    ("b,11.0,-91,3", "line 3: lon/lat (11.0, -91.0) out of range"),
    ("b,11.0,51.0,3,extra", "line 3: 5 field(s), the header has 4"),
    ("b,11.0,51.0", "line 3: 3 field(s), the header has 4"),
]


@pytest.mark.parametrize(("row", "problem"), BAD_ROWS, ids=[p.split(": ", 1)[1][:28] for _, p in BAD_ROWS])
def test_each_bad_row_is_reported_with_its_line_and_nothing_is_written(
    store: Store, root: str, tmp_path: Path, row: str, problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"sample_id,lon,lat,label\na,10.0,50.0,1\n{row}\nc,12.0,52.0,5\n")
    with pytest.raises(SampleImportError) as info:
        import_samples(store, root, path, created=T0)
    assert info.value.errors == [f"bad.csv {problem}"] or info.value.errors[0].startswith(f"bad.csv {problem}")
    assert len(info.value.errors) == 1 and "nothing was imported" in str(info.value)
    assert batches(store, root) == [] and len(load_sample_db(store, root)) == 0


def test_projected_rows_unknown_epsg_and_disagreeing_lonlat(store: Store, root: str, tmp_path: Path) -> None:
    path = tmp_path / "proj.csv"
    path.write_text(
        "sample_id,x,y,epsg,lon,lat,label\n"
        "a,4321000,3210000,3035,,,1\n"          # lon/lat empty: x/y are used, nothing to compare
        "b,4321000,3210000,99999,,,1\n"         # unknown EPSG
        "c,4321000,3210000,EPSG:3035,,,1\n"     # not a code
        "d,4321000,,3035,,,1\n"                 # missing y
        "e,4321000,3210000,3035,0.0,0.0,1\n"    # lon/lat elsewhere
    )
    with pytest.raises(SampleImportError) as info:
        import_samples(store, root, path, created=T0)
    errors = info.value.errors
    assert errors[0] == "proj.csv line 3: unknown EPSG code 99999"
    assert errors[1] == "proj.csv line 4: epsg 'EPSG:3035' is not an EPSG code"
    assert errors[2] == "proj.csv line 5: y is empty"
    assert errors[3].startswith("proj.csv line 6: lon/lat (0.0, 0.0) disagree with x/y (4321000.0, 3210000.0) in EPSG:3035")
    assert len(errors) == 4 and batches(store, root) == []


def test_missing_columns_are_named_with_the_columns_found(store: Store, root: str, tmp_path: Path) -> None:
    path = lonlat_csv(tmp_path / "cols.csv", [("a", 10, 3)], header="id,lon,class")
    with pytest.raises(SampleImportError) as info:
        import_samples(store, root, path)
    assert info.value.errors == ["cols.csv line 1: missing required column(s) sample_id, label, lon, lat (or x, y, epsg); "
                                 "found columns: id, lon, class"]
    path = lonlat_csv(tmp_path / "xy.csv", [("a", 1, 2, 3)], header="sample_id,x,y,label")
    with pytest.raises(SampleImportError, match=r"missing required column\(s\) epsg; found columns: sample_id, x, y"):
        import_samples(store, root, path)


def test_all_problems_are_collected_and_the_message_lists_twenty(store: Store, root: str, tmp_path: Path) -> None:
    rows = [(f"s{i}", 10.0, 50.0, 99) for i in range(30)] + [("s0", 200.0, 50.0, 1), ("ok", 10.0, 50.0, 1)]
    path = lonlat_csv(tmp_path / "many.csv", rows)
    with pytest.raises(SampleImportError) as info:
        import_samples(store, root, path)
    errors = info.value.errors
    assert len(errors) == 32  # 30 bad labels, then one row with a duplicate id and a bad place
    assert errors[0] == "many.csv line 2: label 99 is not a class code 1..11"
    assert errors[30:] == ["many.csv line 32: duplicate sample_id 's0' (first at line 2)",
                           "many.csv line 32: lon/lat (200.0, 50.0) out of range (-180..180, -90..90)"]
    message = str(info.value)
    assert message.startswith("cannot import many.csv: 32 problem(s), nothing was imported:\n")
    assert "many.csv line 21: label 99" in message and "line 22:" not in message
    assert message.endswith("  ... and 12 more")


def test_blank_lines_are_skipped_and_line_numbers_stay_physical(store: Store, root: str, tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("sample_id,lon,lat,label\n\na,10,50,1\n\nb,10,50,13\n\n")
    with pytest.raises(SampleImportError) as info:
        import_samples(store, root, path)
    assert info.value.errors == ["blank.csv line 5: label 13 is not a class code 1..11"]
    # A byte-order mark, CRLF, a record of empty fields and a quoted value over two lines.
    path.write_bytes(b'\xef\xbb\xbfsample_id,lon,lat,label\r\n\r\na,10,50,1\r\n,,,\r\n"b\nx",10,50,1\r\nc,10,50,0\r\n')
    with pytest.raises(SampleImportError) as info:
        import_samples(store, root, path)
    assert info.value.errors == ["blank.csv line 7: label 0 is not a class code 1..11"]
    path.write_text("sample_id,lon,lat,label\n\na,10,50,1\n\n")
    assert import_samples(store, root, path).rows == 1


def test_bad_geopackage_features_are_reported_by_fid(store: Store, root: str, tmp_path: Path) -> None:
    geoms = [shapely.Point(4.3e6, 3.0e6), shapely.box(4.3e6, 3.0e6, 4.31e6, 3.01e6), shapely.Point(),
             shapely.Point(4.2e6, 3.1e6)]
    gdf = gpd.GeoDataFrame({"sample_id": ["a", "b", "c", "d"], "label": [1, 2, 3, 40]}, geometry=geoms,
                           crs="EPSG:3035")
    path = tmp_path / "bad.gpkg"
    gdf.to_file(path, driver="GPKG")
    with pytest.raises(SampleImportError) as info:
        import_samples(store, root, path)
    assert info.value.errors == [
        "bad.gpkg feature 2: geometry is a Polygon, not a Point",
        "bad.gpkg feature 3: empty geometry",
        "bad.gpkg feature 4: label 40 is not a class code 1..11",
    ]
    assert batches(store, root) == []
    with pytest.raises(SampleDBError, match=r"no layer 'other'; layers: bad"):
        import_samples(store, root, path, layer="other")


# ---- revisions ------------------------------------------------------------------------------


def test_reimport_unchanged_writes_nothing_and_relabel_adds_a_revision(store: Store, root: str, tmp_path: Path) -> None:
    rows = [("a", 10.0, 50.0, 1), ("b", 11.0, 51.0, 2), ("c", 12.0, 52.0, 3)]
    first = import_samples(store, root, lonlat_csv(tmp_path / "v1.csv", rows), created=T0)
    again = import_samples(store, root, lonlat_csv(tmp_path / "v1.csv", rows[::-1]), created=T1)
    assert (again.batch_id, again.url, again.unchanged, again.added) == (None, None, 3, 0)
    assert batches(store, root) == [first.url]

    # Same ids, one new label (the place repeated within 1e-7 degrees), one new sample.
    rows2 = [("a", 10.00000005, 50.0, 1), ("b", 11.0, 51.0, 7), ("c", 12.0, 52.0, 3), ("d", 13.0, 53.0, 4)]
    second = import_samples(store, root, lonlat_csv(tmp_path / "v2.csv", rows2), created=T1)
    assert (second.added, second.relabelled, second.unchanged) == (1, 1, 2)
    db = load_sample_db(store, root)
    assert db.points.set_index("sample_id")["label"].to_dict() == {"a": 1, "b": 7, "c": 3, "d": 4}
    history = db.history("b")
    assert list(history["revision"]) == [1, 2] and list(history["label"]) == [2, 7]
    assert list(history["reason"]) == ["import", "re-import"]
    assert list(history["source"]) == ["v1.csv", "v2.csv"]
    assert list(history["batch_id"]) == [first.batch_id, second.batch_id]
    b = db.points.set_index("sample_id").loc["b"]
    assert b["revision"] == 2 and b["updated"] == pd.Timestamp(T1) and b["source"] == "v2.csv"
    assert len(batches(store, root)) == 2


def test_reimport_after_review_keeps_the_expert_decisions(store: Store, root: str, tmp_path: Path) -> None:
    rows = [("a", 10.0, 50.0, 1), ("b", 11.0, 51.0, 2)]
    import_samples(store, root, lonlat_csv(tmp_path / "s.csv", rows), created=T0)
    add_revisions(store, root, [{"sample_id": "a", "label": 6, "reason": "r"}], author="e", created=T1)
    rerun = import_samples(store, root, lonlat_csv(tmp_path / "s.csv", rows), created=T2)  # e.g. a task retry
    assert (rerun.batch_id, rerun.unchanged, rerun.relabelled) == (None, 2, 0)
    # The source itself changed its label of "a": that is a new revision.
    changed = import_samples(store, root, lonlat_csv(tmp_path / "s2.csv", [("a", 10.0, 50.0, 4), rows[1]]),
                             created=T2)
    assert (changed.relabelled, changed.unchanged) == (1, 1)
    assert list(load_sample_db(store, root).history("a")["label"]) == [1, 6, 4]


def test_a_sample_does_not_move(store: Store, root: str, tmp_path: Path) -> None:
    import_samples(store, root, lonlat_csv(tmp_path / "v1.csv", [("a", 10.0, 50.0, 1)]), created=T0)
    with pytest.raises(SampleImportError) as info:
        import_samples(store, root, lonlat_csv(tmp_path / "v2.csv", [("x", 1, 1, 1), ("a", 10.001, 50.0, 1)]))
    assert info.value.errors == ["v2.csv line 3: sample_id 'a' already exists at lon/lat (10.00000000, 50.00000000); "
                                 "a sample does not move (this row: 10.00100000, 50.00000000)"]
    assert len(load_sample_db(store, root)) == 1


def test_add_revisions_relabel_exclude_and_keep(store: Store, root: str, tmp_path: Path) -> None:
    rows = [("a", 10.0, 50.0, 1), ("b", 11.0, 51.0, 2), ("c", 12.0, 52.0, 3), ("d", 13.0, 53.0, 4)]
    imported = import_samples(store, root, lonlat_csv(tmp_path / "s.csv", rows), created=T0)
    hash_before = load_sample_db(store, root).content_hash()
    decisions = [
        {"sample_id": "a", "label": 6, "reason": "photo-interpretation: grassland"},
        {"sample_id": "b", "status": "excluded", "reason": "mixed pixel"},
        {"sample_id": "c", "label": 3, "status": "active", "reason": "confirmed"},  # keep: no revision
        {"sample_id": "d", "label": None, "reason": "no opinion"},  # keeps everything
    ]
    summary = add_revisions(store, root, decisions, author="expert1", created=T1)
    assert summary.revised == 2 and summary.batch_id.startswith("20250302T120000Z-review-")
    db = load_sample_db(store, root)
    current = db.points.set_index("sample_id")
    assert current["label"].to_dict() == {"a": 6, "b": 2, "c": 3, "d": 4}
    assert current["status"].to_dict() == {"a": "active", "b": "excluded", "c": "active", "d": "active"}
    assert list(current["revision"]) == [2, 2, 1, 1]
    assert list(db.active()["sample_id"]) == ["a", "c", "d"]
    a = db.history("a")
    assert list(a["label"]) == [1, 6] and list(a["batch_id"]) == [imported.batch_id, summary.batch_id]
    assert a.iloc[1]["author"] == "expert1" and a.iloc[1]["source"] == "expert review"
    assert a.iloc[1]["reason"] == "photo-interpretation: grassland" and np.isnan(a.iloc[1]["lon"])
    assert current.loc["a", "source"] == "s.csv"  # the sample's source stays its import's
    assert db.content_hash() != hash_before

    # Re-including with a new label: a third revision; the old ones are all kept.
    add_revisions(store, root, pd.DataFrame({"sample_id": ["b"], "label": [5], "status": ["active"],
                                             "reason": ["checked again"]}), author="expert2", created=T2)
    db = load_sample_db(store, root)
    b = db.history("b")
    assert list(b["revision"]) == [1, 2, 3] and list(b["label"]) == [2, 2, 5]
    assert list(b["status"]) == ["active", "excluded", "active"] and len(db.revisions) == 7
    # Decisions that change nothing write nothing.
    assert add_revisions(store, root, [{"sample_id": "b", "label": 5, "reason": "same"}], author="x").batch_id is None
    assert add_revisions(store, root, [], author="x").revised == 0
    assert len(batches(store, root)) == 3


def test_concurrent_reviews_from_one_snapshot_both_take_effect(store: Store, root: str, tmp_path: Path) -> None:
    import_samples(store, root, lonlat_csv(tmp_path / "s.csv", [("a", 10.0, 50.0, 1)]), created=T0)
    # Two writers that both saw label 1 / active: one excludes, the other relabels, in either order.
    add_revisions(store, root, [{"sample_id": "a", "status": "excluded", "reason": "cloud"}], author="PU1", created=T1)
    add_revisions(store, root, [{"sample_id": "a", "label": 9, "reason": "bare"}], author="PU2", created=T1)
    db = load_sample_db(store, root)
    current = db.points.iloc[0]
    assert (current["label"], current["status"], current["revision"]) == (9, "excluded", 3)
    assert len(db.within(shapely.box(0, 40, 20, 60))) == 0


def test_bad_decisions_are_listed_and_nothing_is_written(store: Store, root: str, tmp_path: Path) -> None:
    import_samples(store, root, lonlat_csv(tmp_path / "s.csv", [("a", 10.0, 50.0, 1), ("b", 11, 51, 2)]), created=T0)
    decisions = [
        {"sample_id": "a", "label": 6, "reason": "fine"},
        {"sample_id": "zz", "label": 6, "reason": "who?"},
        {"sample_id": "b", "label": 0, "reason": "x"},
        {"sample_id": "b", "label": 3.5, "reason": "x"},
        {"sample_id": "a", "status": "deleted", "reason": "x"},
        {"sample_id": "b", "label": 2, "reason": ""},
    ]
    with pytest.raises(SampleDBError) as info:
        add_revisions(store, root, decisions, author="expert", created=T1)
    lines = str(info.value).splitlines()
    assert lines[0] == f"8 problem(s) in the decisions for {root}; nothing was revised:"
    assert lines[1:] == [
        "  decision 2 ('zz'): unknown sample_id 'zz'",
        "  decision 3 ('b'): label 0 is not a class code 1..11",
        "  decision 4 ('b'): duplicate sample_id 'b' (first in decision 3)",
        "  decision 4 ('b'): label '3.5' is not an integer",
        "  decision 5 ('a'): duplicate sample_id 'a' (first in decision 1)",
        "  decision 5 ('a'): status 'deleted' is not one of active, excluded",
        "  decision 6 ('b'): duplicate sample_id 'b' (first in decision 3)",
        "  decision 6 ('b'): missing reason",
    ]
    assert len(batches(store, root)) == 1
    with pytest.raises(SampleDBError, match=r"decisions lack column\(s\) reason"):
        add_revisions(store, root, [{"sample_id": "a", "label": 2}], author="expert")
    with pytest.raises(SampleDBError, match="earlier than the newest batch"):
        add_revisions(store, root, [{"sample_id": "a", "label": 2, "reason": "r"}], author="e", created=T0 - timedelta(1))


def test_history_of_an_unknown_sample(store: Store, root: str, tmp_path: Path) -> None:
    db = load_sample_db(store, root)
    assert len(db) == 0 and db.points.crs.to_epsg() == 4326 and db.revisions.empty
    with pytest.raises(KeyError, match="sample_id 'nope' is not in the sample DB at"):
        db.history("nope")


# ---- queries and hashing --------------------------------------------------------------------


def test_within(store: Store, root: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 3000
    lon, lat = rng.uniform(0, 20, n), rng.uniform(40, 60, n)
    rows = [(f"p{i:04d}", lon[i], lat[i], 1 + i % 11) for i in range(n)]
    import_samples(store, root, lonlat_csv(tmp_path / "p.csv", rows), created=T0)
    add_revisions(store, root, [{"sample_id": f"p{i:04d}", "status": "excluded", "reason": "r"} for i in range(0, n, 10)],
                  author="e", created=T1)
    db = load_sample_db(store, root)
    polygon = shapely.MultiPolygon([shapely.Polygon([(2, 42), (12, 41), (15, 50), (5, 55)]), shapely.box(16, 55, 19, 59)])
    got = db.within(polygon)
    expected = sorted(f"p{i:04d}" for i in range(n) if i % 10 and polygon.covers(shapely.Point(lon[i], lat[i])))
    assert list(got["sample_id"]) == expected and 500 < len(expected) < 1500
    assert isinstance(got, gpd.GeoDataFrame) and set(got["status"]) == {"active"}
    assert len(db.within(shapely.Polygon())) == 0
    with pytest.raises(SampleDBError, match="not lon/lat degrees"):
        db.within(shapely.box(4.0e6, 3.0e6, 4.1e6, 3.1e6))
    with pytest.raises(TypeError):
        db.within(shapely.Point(1, 50))


def test_content_hash(store: Store, root: str, tmp_path: Path) -> None:
    rows = [(f"s{i}", 10 + i / 10, 50.0, 1 + i % 11) for i in range(40)]
    import_samples(store, root, lonlat_csv(tmp_path / "a.csv", rows), created=T0)
    other = root + "-shuffled"
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    import_samples(store, other, lonlat_csv(tmp_path / "b.csv", shuffled), created=T1, author="someone else")
    db, db2 = load_sample_db(store, root), load_sample_db(store, other)
    assert db.content_hash() == db2.content_hash()  # row order, source, author, time do not count
    ids = ["s3", "s1", "s2"]
    assert db.content_hash(ids) == db.content_hash(ids[::-1]) != db.content_hash()
    with pytest.raises(KeyError, match="1 sample_id"):
        db.content_hash(["s1", "missing"])
    add_revisions(store, root, [{"sample_id": "s1", "label": 9, "reason": "r"}], author="e", created=T1)
    relabelled = load_sample_db(store, root)
    assert relabelled.content_hash() != db.content_hash()
    assert relabelled.content_hash(["s2", "s3"]) == db.content_hash(["s3", "s2"])
    add_revisions(store, root, [{"sample_id": "s2", "status": "excluded", "reason": "r"}], author="e", created=T2)
    excluded = load_sample_db(store, root)
    assert excluded.content_hash() != relabelled.content_hash()
    assert excluded.content_hash() == excluded.content_hash(sorted(set(excluded.active()["sample_id"])))


def test_batches_are_byte_identical_for_identical_inputs(store: Store, tmp_path: Path) -> None:
    synthetic_csv(tmp_path / "samples.csv", n=200)
    roots = [as_url(tmp_path / "one"), as_url(tmp_path / "two")]
    results = []
    for root in roots:
        imported = import_samples(store, root, tmp_path / "samples.csv", created=T0)
        reviewed = add_revisions(store, root, [{"sample_id": "syn2025-000001", "label": 11, "reason": "r"},
                                               {"sample_id": "syn2025-000002", "status": "excluded", "reason": "r"}],
                                 author="e", created=T1)
        results.append([store.read_bytes(imported.url), store.read_bytes(reviewed.url), imported.batch_id,
                        reviewed.batch_id])
    assert results[0] == results[1]
    # Re-importing is a no-op, even with an older time.
    assert import_samples(store, roots[0], tmp_path / "samples.csv", created=T0).batch_id is None
    batch_files = batches(store, roots[0])
    assert [u.rsplit("/", 1)[-1][:-8] for u in batch_files] == results[0][2:]


def test_rewriting_an_existing_batch_is_a_no_op(store: Store, root: str, tmp_path: Path) -> None:
    from clcplus_ops.model import sample_db

    import_samples(store, root, lonlat_csv(tmp_path / "s.csv", [("a", 10.0, 50.0, 1)]), created=T0)
    db = load_sample_db(store, root)
    decisions = [{"sample_id": "a", "label": 2, "reason": "r"}]
    first = add_revisions(store, root, decisions, author="e", created=T1)
    mtime = Path(first.url[len("file://"):]).stat().st_mtime_ns
    # A writer that loaded the DB before the first one wrote computes the same batch.
    original = sample_db.load_sample_db
    sample_db.load_sample_db = lambda *_: db
    try:
        second = add_revisions(store, root, decisions, author="e", created=T1)
    finally:
        sample_db.load_sample_db = original
    assert second == first and Path(first.url[len("file://"):]).stat().st_mtime_ns == mtime
    assert len(load_sample_db(store, root).revisions) == 2


# ---- S3 --------------------------------------------------------------------------------------


def test_s3_round_trip(s3_server: str, s3_bucket: str, tmp_path: Path) -> None:
    store = Store(S3Settings(endpoint_url=s3_server))
    root = _sample_db(join(s3_bucket, "samples"))
    assert root == f"{s3_bucket}/samples/sample_db"
    synthetic_csv(tmp_path / "samples.csv", n=100)
    staged = join(s3_bucket, "incoming", "samples.csv")
    store.write_bytes(staged, (tmp_path / "samples.csv").read_bytes())
    imported = import_samples(store, root, staged, created=T0)
    reviewed = add_revisions(store, root, [{"sample_id": "syn2025-000000", "status": "excluded", "reason": "r"}],
                             author="e", created=T1)
    assert batches(store, root) == [imported.url, reviewed.url]
    assert imported.url.startswith("s3://")
    db = load_sample_db(store, root)
    local = as_url(tmp_path / "local")
    import_samples(Store(), local, tmp_path / "samples.csv", created=T0)
    assert store.read_bytes(imported.url) == Store().read_bytes(join(local, BATCHES, f"{imported.batch_id}.parquet"))
    assert len(db) == 100 and len(db.active()) == 99 and list(db.history("syn2025-000000")["revision"]) == [1, 2]
