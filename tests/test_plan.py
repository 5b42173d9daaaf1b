import pytest

from clcplus_ops import plan
from clcplus_ops.config import load_config
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.store import Store, as_url


@pytest.fixture
def config(tmp_path):
    base = load_config()
    store = base.store.model_copy(update={"work": as_url(tmp_path / "work")})
    return base.model_copy(update={"store": store})


def test_plan_writes_the_tiles_of_the_pu(config):
    result = plan.plan_tiles(config, "demo", "DEMO1", 2023)
    assert result.tiles and all(t.bounds[2] - t.bounds[0] == 2_500 for t in result.tiles)
    saved = Store().read_json(result.plan_url)
    assert [t["tile_id"] for t in saved["tiles"]] == [t.tile_id for t in result.tiles]
    assert saved["pu_buffer_m"] == 1_000


def test_plan_refuses_unknown_units_and_tiles(config):
    with pytest.raises(ValueError, match="'PU999' is not in the demo layout"):
        plan.plan_tiles(config, "demo", "PU999", 2023)
    with pytest.raises(ValueError, match=r"\['33TUL_r00c00'\], which are not tiles of DEMO1"):
        plan.plan_tiles(config, "demo", "DEMO1", 2023, ["33TUL_r00c00"])


def test_define_tile_is_idempotent_and_can_be_forced(config):
    tile_id = plan.plan_tiles(config, "demo", "DEMO1", 2023).tiles[0].tile_id
    demo = config.for_layout("demo")
    tile = tile_from_id(tile_id, demo.grid.tile_size_m)
    first = plan.define_tile(demo, "DEMO1", 2023, tile)
    second = plan.define_tile(demo, "DEMO1", 2023, tile)
    forced = plan.define_tile(demo, "DEMO1", 2023, tile, force=True)
    assert (first["skipped"], second["skipped"], forced["skipped"]) == (False, True, False)
    definition = Store().read_json(first["url"])
    assert definition["shape"] == [250, 250] and definition["crs"] == tile.crs


def test_join_names_unfinished_tiles(config):
    plan.plan_tiles(config, "demo", "DEMO1", 2023)
    with pytest.raises(RuntimeError, match="have not finished; re-run them with only_tiles"):
        plan.join_tiles(config, "DEMO1", 2023)


def test_plan_and_define_tile_on_s3(config, s3_server, s3_bucket):
    """The same stages with the work root on s3:// (moto's S3 server on 127.0.0.1)."""
    store_cfg = config.store.model_copy(update={"work": s3_bucket, "s3_endpoint_url": s3_server, "s3_region": "us-east-1"})
    s3_config = config.model_copy(update={"store": store_cfg})
    result = plan.plan_tiles(s3_config, "demo", "DEMO2", 2021)
    assert result.plan_url.startswith("s3://")
    demo = s3_config.for_layout("demo")
    for tile in result.tiles:
        assert plan.define_tile(demo, "DEMO2", 2021, tile)["skipped"] is False
    assert plan.define_tile(demo, "DEMO2", 2021, result.tiles[0])["skipped"] is True
    # Defined but not ingested: the join names the missing stage (test_ingest covers ingest on S3).
    with pytest.raises(RuntimeError, match=r"stages missing per tile: \{'33TUL_r21c37': \['ingest', 'classify', 'filter'\]"):
        plan.join_tiles(s3_config, "DEMO2", 2021)
    store = plan.store_for(s3_config)
    assert store.read_json(plan.pu_url(s3_config, 2021, "DEMO2") + "/plan.json")["pu_id"] == "DEMO2"
