"""100 km product tiles from the PUs' layers: completeness, revisions, the delivery and
publishing.

Three PUs on the 100 km line x = 4,500,000 (EPSG:3035) in Mecklenburg: A (2 x 2 km) lies in
tile e44n33 only, B in e45n33 only, C below both straddles the line. So e44n33 waits for A and
C, e45n33 for B and C. Their tiles are written by stand-ins of the tile stages (one class per
PU); the real plan, join, mosaic, blend, calibrate, recode and layers stages make each PU's
layers, and the real product stages make, check and publish the tiles. In 2023 PU B has a patch
without any observation, wider than the fill radius: RAS keeps no data (255) there and the tile
fails EEA's value check."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.config import parse_config
from clcplus_ops.locations import Locations
from clcplus_ops.pipeline import (BLEND, CALIBRATE, DEFINE_TILE, JOIN_TILES, LAYERS, MOSAIC, PLAN_TILES,
                                  PRODUCT_TILE_STAGES, RECODE)
from clcplus_ops.products import publish as publishing
from clcplus_ops.products import revisions, tiling
from clcplus_ops.products.stages import (PRODUCT_CHECK, PRODUCT_PUBLISH, PRODUCT_STAC, PRODUCT_TILE, SelfCheckFailed,
                                         delivery_keys, manifest_key)
from clcplus_ops.runner import run_stage, stage_record, store_for
from clcplus_ops.stage import StageIO, Target
from clcplus_ops.synthetic import probability_tiles
from clcplus_ops.synthetic.probability_tiles import points_3035

X, Y, SIDE = 4_500_000.0, 3_322_000.0, 2_000.0
SQUARES = {"A": (X - SIDE, Y, X, Y + SIDE), "B": (X, Y, X + SIDE, Y + SIDE), "C": (X - SIDE, Y - SIDE, X + SIDE, Y)}
CLASS_OF = {"A": 2, "B": 7, "C": 6}
GAP_2023 = (X + 1000, Y + 1000, 150.0)  # in B, wider than the fill radius
LEFT, RIGHT = "e44n33", "e45n33"


def _lonlat_ring(pu: str) -> list:
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = SQUARES[pu]
    to_ll = Transformer.from_crs(3035, 4326, always_xy=True)
    ring = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)]
    if pu == "C":  # A's and B's shared corner lies on C's top edge
        ring = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (X, ymax), (xmin, ymax)]
    points = [list(to_ll.transform(x, y)) for x, y in ring]
    return [*points, points[0]]


def _tile_outputs(io: StageIO, name: str) -> None:
    from clcplus_ops.postprocessing.bilateral import BilateralParams

    halo = io.config.grid.halo_px - BilateralParams.from_config(io.config.bilateral).extent
    grid = io.tile.grid(halo)
    x, y = points_3035(grid)
    gap = np.zeros(grid.shape, bool)
    if io.target.reference_year == 2023 and io.target.pu_id == "B":
        gx, gy, r = GAP_2023
        gap = (x - gx) ** 2 + (y - gy) ** 2 < r**2
    if name == "filtered":
        p = np.full((11, *grid.shape), 0.02, np.float32)
        # A little texture so that the tiles are not flat: a second class in stripes.
        p[CLASS_OF[io.target.pu_id] - 1] = 0.7
        p[8] += np.where((np.floor(x / 300) % 4) == 0, 0.5, 0.0).astype(np.float32)
        with io.raster(name, grid, 11, probs_io.DTYPE, probs_io.NODATA, "probabilities") as out:
            probs_io.describe(out, list(range(1, 12)), io.config.codes.classes)
            out.write(probs_io.encode(p / p.sum(axis=0), ~gap))
    else:
        with io.raster(name, grid, 1, "uint16", None) as out:
            out.write(np.where(gap, 0, 40).astype(np.uint16)[None])


STAND_INS = probability_tiles.stand_in_tile_stages(_tile_outputs)


def _mosaic(config, year: int, pu: str) -> None:
    target = Target("demo", year, pu)
    run_stage(PLAN_TILES, config, target)
    plan = json.loads(Path(Locations(config).pu(year, pu).plan[len("file://"):]).read_text())
    for tile in plan["tiles"]:
        tile_target = Target("demo", year, pu, tile["tile_id"])
        run_stage(DEFINE_TILE, config, tile_target)
        for stage in STAND_INS:
            run_stage(stage, config, tile_target)
    run_stage(JOIN_TILES, config, target)
    run_stage(MOSAIC, config, target)


def _layers(config, year: int, pu: str) -> None:
    for stage in (BLEND, CALIBRATE, RECODE, LAYERS):
        run_stage(stage, config, Target("demo", year, pu))


def _config(root: Path, layout: Path, **extra):
    return parse_config({
        "store": {name: (root / name).as_uri() for name in ("work", "models", "samples", "products")},
        "demo": {"layout_path": str(layout), "grid": {"tile_size_m": 2500, "pu_buffer_m": 1000.0, "halo_px": 8}},
        "blending": {"block_px": 256}, "calibration": {"previous_productions": 0},
        "products": {"quicklook_px": 250}, **extra,
    })


def _make_tile(config, year: int, code: str, made_by: str) -> list[dict]:
    return [run_stage(stage, config, Target("demo", year, made_by, code)) for stage in PRODUCT_TILE_STAGES]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("products")
    layout = root / "layout.geojson"
    layout.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"pu_id": pu, "name": f"square {pu}", "crs": "EPSG:3035"},
        "geometry": {"type": "Polygon", "coordinates": [_lonlat_ring(pu)]}} for pu in SQUARES]}))
    config = _config(root, layout)
    for pu in SQUARES:  # every mosaic first: each PU blends with all its neighbours
        _mosaic(config, 2025, pu)
    return {"config": config, "root": root, "layout": layout}


def _not_final(config, year):
    store = store_for(config.for_layout("demo"))
    return lambda pu: tiling.layers_not_final(config.for_layout("demo"), "demo", year, pu, store)


def test_tiles_of_the_layout_and_their_pus(world):
    config = world["config"]
    of_pu, of_tile = tiling.tile_index(config, "demo")
    assert of_pu == {"A": (LEFT,), "B": (RIGHT,), "C": (LEFT, RIGHT)}
    assert of_tile == {LEFT: ("A", "C"), RIGHT: ("B", "C")}
    grid = tiling.tile_grid(config, LEFT)
    assert grid.shape == (10_000, 10_000) and grid.bounds == (4_400_000, 3_300_000, 4_500_000, 3_400_000)


def test_the_production_layout_delivers_official_tiles_and_whole_overseas_departments():
    from clcplus_ops.config import Config
    from clcplus_ops.geo.eea_grid import official_tile_codes

    of_pu, of_tile = tiling.tile_index(Config(), "production")
    assert len(of_pu) == 138 and all(of_pu.values())
    assert {pu: of_pu[pu] for pu in ("PU134", "PU135", "PU136", "PU137", "PU138")} == {
        "PU134": ("gf",), "PU135": ("gp",), "PU136": ("mq",), "PU137": ("re",), "PU138": ("yt",)}
    mainland = {code for code in of_tile if code.startswith("e")}
    assert mainland <= official_tile_codes() and len(mainland) > 800
    assert max(len(pus) for pus in of_tile.values()) <= 4  # a tile waits for at most four PUs
    grid = tiling.tile_grid(Config(), "gf")
    assert grid.epsg == 32622 and grid.res == 10


def test_a_tile_is_made_once_every_pu_has_final_layers_by_the_last_to_finish(world):
    config = world["config"]
    _layers(config, 2025, "C")
    _layers(config, 2025, "A")
    # C finished first: both its tiles wait; A finished second: its tile is ready, C's other one waits for B.
    ready = tiling.readiness(config.for_layout("demo"), "demo", 2025, "A", _not_final(config, 2025))
    assert [(t.code, t.ready) for t in ready] == [(LEFT, True)]
    waiting = tiling.readiness(config.for_layout("demo"), "demo", 2025, "C", _not_final(config, 2025))
    assert [(t.code, t.waiting_for) for t in waiting] == [(LEFT, ()), (RIGHT, ("B",))]
    with pytest.raises(tiling.ProductTileNotReady, match="waits for the final layers of B"):
        run_stage(PRODUCT_TILE, config, Target("demo", 2025, "C", RIGHT))
    _layers(config, 2025, "B")
    summaries = _make_tile(config, 2025, LEFT, "A") + _make_tile(config, 2025, RIGHT, "B")
    assert all(not s["skipped"] for s in summaries)
    left = stage_record(config, PRODUCT_TILE, Target("demo", 2025, None, LEFT)).details
    assert left["revision"] == 0 and left["claimed_by"] == "A" and left["pus"] == ["A", "C"]
    assert left["files"]["ras"] == "CLMS_CLCPLUS_RAS_S2025_R10m_E44N33_03035_V01_R00.tif"
    assert left["overlapping_px"] == 0
    # Every pixel of A and of C's left half, nothing else: 400 x 200 + 200 x 200 px.
    assert left["pixels_delivered"] == 200 * 200 + 200 * 200
    assert set(left["area_km2"]) >= {"2", "6"}
    check = stage_record(config, PRODUCT_CHECK, Target("demo", 2025, None, LEFT)).details
    assert check["passed"], check["failed"]
    assert check["metadata_valid"] == check["stac_items_valid"] == check["files"] == 4 and check["rules_checked"] > 4 * 15


def test_the_tile_holds_each_pus_area_and_outside_elsewhere(world):
    config = world["config"]
    record = stage_record(config, PRODUCT_TILE, Target("demo", 2025, None, RIGHT))
    path = Locations(config.for_layout("demo")).resolve(record.outputs["ras"])[len("file://"):]
    with rasterio.open(path) as ds:
        assert ds.nodata is None and ds.crs.to_epsg() == 3035 and ds.res == (10.0, 10.0)
        assert (ds.width, ds.height) == (10_000, 10_000) and ds.transform.c == 4_500_000 and ds.transform.f == 3_400_000
        corner = ds.read(1, window=((7_600, 7_900), (0, 300)))  # rows of y 3,324,000..3,321,000
    # B's area (rows 7,600-7,799, cols 0-199) holds B's classes (A's and C's where blended near
    # their borders), C's right half lies below it, and east of x + 2 km nothing is delivered.
    b, c = corner[:200, :200], corner[200:300, :200]
    assert set(np.unique(b)) <= {2, 6, 7, 9} and np.isin(b, (7, 9)).mean() > 0.6
    assert set(np.unique(c)) <= {2, 6, 7, 9} and np.isin(c, (6, 9)).mean() > 0.6
    assert (corner[:, 200:] == 254).all()
    with rasterio.open(path) as ds:
        values = set(np.unique(ds.read(1, out_shape=(1000, 1000))))
    assert values <= {2, 6, 7, 9, 254}


def test_two_pus_finishing_together_make_the_tile_once(world):
    config = world["config"]
    # A fresh year for the race: both PUs of the left tile finish, then both ask for it at once.
    for pu in SQUARES:
        _mosaic(config, 2021, pu)
    for pu in SQUARES:
        _layers(config, 2021, pu)
    results, barrier = {}, threading.Barrier(2)

    def ask(pu: str) -> None:
        barrier.wait()
        try:
            results[pu] = run_stage(PRODUCT_TILE, config, Target("demo", 2021, pu, LEFT))
        except revisions.ClaimedElsewhere as error:
            results[pu] = error

    threads = [threading.Thread(target=ask, args=(pu,)) for pu in ("A", "C")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [pu for pu, r in results.items() if isinstance(r, dict) and not r["skipped"]]
    left_alone = [pu for pu, r in results.items() if not isinstance(r, dict) or r["skipped"]]
    assert len(made) == 1 and len(left_alone) == 1, results
    store = store_for(config.for_layout("demo"))
    tile_base = Locations(config.for_layout("demo")).product_tile(2021, LEFT).base
    assert [r.claimed_by for r in revisions.revisions(store, tile_base)] == made
    # Once made, the other PU's run finds it current.
    assert run_stage(PRODUCT_TILE, config, Target("demo", 2021, left_alone[0], LEFT))["skipped"]


def test_rerunning_one_pu_remakes_exactly_its_tiles_as_the_next_revision(world):
    config = world["config"]
    right_before = stage_record(config, PRODUCT_TILE, Target("demo", 2025, None, RIGHT))
    # A's layers change: an expert recodes a field in A to class 5, and A's recoding is re-run.
    import geopandas as gpd
    import shapely
    import yaml

    folder = world["root"] / "expert"
    folder.mkdir()
    gpd.GeoDataFrame({"note": ["bare field"]}, geometry=[shapely.box(X - 1500, Y + 500, X - 1000, Y + 1000)],
                     crs="EPSG:3035").to_file(folder / "aoi.gpkg")
    (folder / "rules.yaml").write_text(yaml.safe_dump({"version": 1, "rules": [
        {"name": "expert", "source": "aoi.gpkg", "to_class": 5}]}))
    changed = config.model_copy(update={"recoding": config.recoding.model_copy(
        update={"rules": str(folder / "rules.yaml")})})
    for stage in (RECODE, LAYERS):
        run_stage(stage, changed, Target("demo", 2025, "A"))
    ready = tiling.readiness(changed.for_layout("demo"), "demo", 2025, "A", _not_final(changed, 2025))
    assert [t.code for t in ready if t.ready] == [LEFT]
    remade = _make_tile(changed, 2025, LEFT, "A")
    left = stage_record(changed, PRODUCT_TILE, Target("demo", 2025, None, LEFT)).details
    assert not remade[0]["skipped"] and left["revision"] == 1 and left["area_km2"]["5"] == 0.25
    assert left["files"]["rasdl"].endswith("_V01_R01.tif")
    # C's other tile is untouched: asked again, it is current, still R00.
    assert run_stage(PRODUCT_TILE, changed, Target("demo", 2025, "C", RIGHT))["skipped"]
    assert stage_record(changed, PRODUCT_TILE, Target("demo", 2025, None, RIGHT)).fingerprint == right_before.fingerprint
    # Both revisions of the left tile are published side by side; R00's objects are unchanged.
    root = Path(Locations(changed.for_layout("demo")).delivery[len("file://"):])
    published = sorted(p.name for p in (root / "2025" / "E44N33").glob("*RAS_*.tif"))
    assert published == ["CLMS_CLCPLUS_RAS_S2025_R10m_E44N33_03035_V01_R00.tif",
                         "CLMS_CLCPLUS_RAS_S2025_R10m_E44N33_03035_V01_R01.tif"]


def test_the_delivery_of_a_tile(world):
    config = world["config"].for_layout("demo")
    target = Target("demo", 2025, None, RIGHT)
    root = Path(Locations(config).delivery[len("file://"):])
    record = stage_record(config, PRODUCT_TILE, target)
    names = record.details["files"]
    folder = root / "2025" / "E45N33"
    for layer, name in names.items():
        stem = name[:-4]
        for suffix in (".tif", ".tif.aux.xml", ".tif.clr", ".xml", ".png", ".zip"):
            assert (folder / f"{stem}{suffix}").is_file(), stem + suffix
        with zipfile.ZipFile(folder / f"{stem}.zip") as z:
            assert sorted(z.namelist()) == sorted([f"{stem}.tif", f"{stem}.tif.aux.xml", f"{stem}.tif.clr", f"{stem}.xml"])
            assert z.read(f"{stem}.tif") == (folder / f"{stem}.tif").read_bytes()
        item = json.loads((root / "stac" / f"clms-clcplus-{layer}-2025" / f"{stem}.json").read_text())
        assert item["id"] == stem and item["properties"]["proj:code"] == "EPSG:3035"
        data = item["assets"]["data"]
        import hashlib

        assert data["file:checksum"] == "1220" + hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert (root / "stac" / f"clms-clcplus-{layer}-2025" / data["href"]).resolve() == (folder / name).resolve()
    assert list((root / "_staging").iterdir()) == []  # every attempt's staging removed
    manifest = json.loads((root / manifest_key(2025, RIGHT, _name(names["ras"]))).read_text())
    assert len(manifest["files"]) == 4 * 7
    for entry in manifest["files"]:
        import hashlib

        content = (root / entry["name"]).read_bytes()
        assert entry["size"] == len(content) and entry["sha256"] == hashlib.sha256(content).hexdigest()


def _name(file_name: str):
    from clcplus_ops.geo.eea_grid import parse_product_filename

    return parse_product_filename(file_name)


def test_rerunning_the_delivery_gives_the_same_bytes_and_publishing_again_is_a_no_op(world):
    config = world["config"].for_layout("demo")
    target = Target("demo", 2025, "B", RIGHT)
    before = {s.name: stage_record(config, s, target).files for s in PRODUCT_TILE_STAGES[:3]}
    for stage in PRODUCT_TILE_STAGES:
        summary = run_stage(stage, config, target, force=True)
    assert summary["new"] == 0 and summary["published"] == 4 * 8 + 1
    after = {s.name: stage_record(config, s, target).files for s in PRODUCT_TILE_STAGES[:3]}
    assert {k: {n: f["sha256"] for n, f in v.items()} for k, v in before.items()} == \
        {k: {n: f["sha256"] for n, f in v.items()} for k, v in after.items()}


def test_a_tile_failing_the_self_check_is_not_published(world):
    config = world["config"]
    for pu in SQUARES:
        _mosaic(config, 2023, pu)
    for pu in SQUARES:
        _layers(config, 2023, pu)
    target = Target("demo", 2023, "B", RIGHT)
    for stage in PRODUCT_TILE_STAGES[:4]:
        summary = run_stage(stage, config, target)
    assert not summary["passed"]
    assert any("qc_tool.raster.value" in line and "255" in line for line in summary["failed"]), summary["failed"]
    with pytest.raises(SelfCheckFailed, match="qc_tool.raster.value"):
        run_stage(PRODUCT_PUBLISH, config, target)
    root = Path(Locations(config.for_layout("demo")).delivery[len("file://"):])
    assert not (root / "2023").exists()
    # The other tile of that year is fine and goes out.
    assert _make_tile(config, 2023, LEFT, "A")[-1]["new"] == 4 * 8 + 1


# --------------------------------------------------------------------------------------------
# Publishing (to the local S3 server)


def _files(tmp_path: Path, n: int = 3, salt: str = "") -> list[publishing.Deliverable]:
    out = []
    for i in range(n):
        path = tmp_path / f"f{i}{salt}"
        path.write_bytes(f"content {i} {salt}".encode() * 1000)
        out.append(publishing.Deliverable(path, f"2025/E45N33/file{i}.bin"))
    return out


def test_publishing_to_s3_stages_verifies_and_promotes(tmp_path, s3_server, s3_bucket):
    from clcplus_ops.store import S3Settings, Store

    store = Store(S3Settings(endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing"))
    root = f"{s3_bucket}/delivery"
    files = _files(tmp_path)
    published = publishing.publish(store, files, root)
    assert [p.new for p in published] == [True] * 3
    for p, f in zip(published, files):
        assert store.checksum(p.url) == (f.path.stat().st_size, p.sha256)
    assert store.list(f"{root}/_staging") == []
    again = publishing.publish(store, files, root)
    assert [p.new for p in again] == [False] * 3
    # Other bytes under a published key: refused, nothing changed.
    with pytest.raises(publishing.PublishConflict, match="never overwritten"):
        publishing.publish(store, _files(tmp_path, salt="other"), root)
    assert store.checksum(published[0].url)[1] == published[0].sha256


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_an_attempt_killed_midway_leaves_staging_the_next_attempt_removes(tmp_path, scheme, request):
    """kill -9 skips the attempt's own clean-up: its staged objects (and, on a filesystem, the
    temporary of the file it was writing) stay under its staging prefix until the next attempt
    of the same publication removes them; other publications' staging is left alone."""
    from clcplus_ops.store import S3Settings, Store

    if scheme == "s3":
        server = request.getfixturevalue("s3_server")
        store = Store(S3Settings(endpoint_url=server, access_key_id="testing", secret_access_key="testing"))
        root = f"{request.getfixturevalue('s3_bucket')}/delivery-killed"
    else:
        store, root = Store(), (tmp_path / "delivery").as_uri()
    files = _files(tmp_path)
    killed = f"{root}/_staging/2025-e45n33-R00-0123456789ab"
    store.write_bytes(f"{killed}/2025/E45N33/file0.bin", b"staged by the killed attempt")
    other = f"{root}/_staging/2025-e45n34-R00-ba9876543210/2025/E45N34/file0.bin"
    store.write_bytes(other, b"another tile, publishing now")
    if scheme == "file":
        (Path(killed[len("file://"):]) / "2025" / "E45N33" / ".clcplus-tmp-1@host@file1.bin").write_bytes(b"half")
    published = publishing.publish(store, files, root, token="2025-e45n33-R00-feedfacecafe", stale="2025-e45n33-R00-")
    assert all(p.new for p in published)
    assert store.list(f"{root}/_staging") == [other]
    if scheme == "file":
        assert sorted(p.name for p in Path(f"{root}/_staging"[len("file://"):]).iterdir()) == [
            "2025-e45n34-R00-ba9876543210"]


def test_two_publishers_of_the_same_shared_object_both_succeed(tmp_path, s3_server, s3_bucket, monkeypatch):
    """Two tiles published at once share their STAC collections: whichever promotes a shared
    object second finds the same bytes there and goes on; other bytes would be a conflict."""
    from clcplus_ops.store import S3Settings, Store

    store = Store(S3Settings(endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing"))
    root = f"{s3_bucket}/delivery-race"
    shared = tmp_path / "collection.json"
    shared.write_text('{"id": "clms-clcplus-ras-2025"}\n')
    mine = [*_files(tmp_path), publishing.Deliverable(shared, "stac/clms-clcplus-ras-2025/collection.json")]
    real_copy = store.copy_if_absent

    def other_publisher_first(source: str, url: str) -> bool:
        if url.endswith("collection.json") and not store.exists(url):
            store.upload_verified(shared, url, publishing.sha256_file(shared))  # the other tile's publish
        return real_copy(source, url)

    monkeypatch.setattr(store, "copy_if_absent", other_publisher_first)
    published = publishing.publish(store, mine, root)
    assert [p.new for p in published] == [True, True, True, False]
    other = tmp_path / "other.json"
    other.write_text('{"id": "something else"}\n')
    monkeypatch.setattr(store, "copy_if_absent", lambda source, url: False)  # always beaten to it
    with pytest.raises(publishing.PublishConflict):
        publishing.publish(store, [publishing.Deliverable(other, "stac/other/collection.json")], root)


def test_a_failure_midway_leaves_nothing_at_the_final_keys(tmp_path, s3_server, s3_bucket, monkeypatch):
    from clcplus_ops.store import S3Settings, Store

    store = Store(S3Settings(endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing"))
    root = f"{s3_bucket}/delivery-fault"
    files = _files(tmp_path)
    real_copy, calls = store.copy_if_absent, []

    def failing_copy(source: str, url: str) -> bool:
        calls.append(url)
        if len(calls) == 3:
            raise ConnectionError("injected: connection lost while promoting")
        return real_copy(source, url)

    monkeypatch.setattr(store, "copy_if_absent", failing_copy)
    with pytest.raises(ConnectionError):
        publishing.publish(store, files, root)
    assert store.list(root) == []  # two promoted, withdrawn; staging removed
    # A staged object whose content changed after the upload is caught by the verification.
    monkeypatch.setattr(store, "copy_if_absent", real_copy)
    real_upload = store.upload_verified

    def corrupting_upload(local: Path, url: str, sha: str) -> None:
        real_upload(local, url, sha)
        if url.endswith("file1.bin"):
            store.write_bytes(url, b"damaged")

    monkeypatch.setattr(store, "upload_verified", corrupting_upload)
    with pytest.raises(publishing.PublishVerificationError, match="file1.bin"):
        publishing.publish(store, files, root)
    assert store.list(root) == []
    monkeypatch.setattr(store, "upload_verified", real_upload)
    assert all(p.new for p in publishing.publish(store, files, root))


def test_the_publish_stage_puts_a_tile_on_the_s3_server(world, s3_server, s3_bucket, s3_credentials):
    from clcplus_ops.store import S3Settings, Store

    config = world["config"]
    root = f"{s3_bucket}/delivery"
    on_s3 = config.model_copy(update={
        "products": config.products.model_copy(update={"publish_url": root}),
        "store": config.store.model_copy(update={"s3_endpoint_url": s3_server})})
    target = Target("demo", 2025, "B", RIGHT)
    summary = run_stage(PRODUCT_PUBLISH, on_s3, target)
    assert summary["published"] == 4 * 8 + 1 and summary["new"] == summary["published"]
    store = Store(S3Settings(endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing"))
    receipt = json.loads(Path(Locations(on_s3.for_layout("demo")).resolve(
        stage_record(on_s3, PRODUCT_PUBLISH, target).outputs["receipt"])[len("file://"):]).read_text())
    local = Path(Locations(config.for_layout("demo")).delivery[len("file://"):])
    assert sorted(receipt) == ["files"] and len(receipt["files"]) == summary["published"]
    for entry in receipt["files"]:
        url = f"{root}/{entry['key']}"
        # The same bytes as the tile's delivery in the local store, with S3's own SHA-256.
        assert store.checksum(url) == (entry["size"], entry["sha256"])
        assert store.read_bytes(url) == (local / entry["key"]).read_bytes()
    assert store.list(f"{root}/_staging") == []
    # Forced again: the same bytes, nothing new.
    assert run_stage(PRODUCT_PUBLISH, on_s3, target, force=True)["new"] == 0


def test_the_delivery_summary_says_what_each_tile_is(world, capsys):
    from clcplus_ops.cli import _print_delivery
    from clcplus_ops.products.summary import delivery_summary

    config = world["config"]
    summary = {t["tile"]: t for t in delivery_summary(config, "demo", 2025)}
    assert set(summary) == {LEFT, RIGHT}
    assert summary[LEFT]["state"] == "published" and summary[LEFT]["revision"] == 1
    assert summary[RIGHT]["state"] == "published" and summary[RIGHT]["check_passed"]
    assert summary[RIGHT]["area_km2"]["7"] > 1.0 and summary[RIGHT]["manifest"].endswith("_V01_R00_manifest.json")
    assert _print_delivery(list(summary.values()), config.codes.classes) == 0
    printed = capsys.readouterr().out
    assert "E45N33 R00 (published; made by B's run from B, C)" in printed and "Periodically herbaceous" in printed
    failing = {t["tile"]: t for t in delivery_summary(config, "demo", 2023)}
    assert failing[RIGHT]["state"] == "failed self-check" and failing[LEFT]["state"] == "published"
