"""The PU run's first and last stages and the tile definition, through the stage runner."""

import pytest

from clcplus_ops.config import load_config
from clcplus_ops.errors import InvalidIdError, StageInputError
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.locations import Locations
from clcplus_ops.plan import DEFINE_TILE, JOIN_TILES, PLAN_TILES, TilesNotFinishedError, planned_tiles
from clcplus_ops.runner import run_stage, stage_record, store_for
from clcplus_ops.stage import Target
from clcplus_ops.store import Store, as_url


@pytest.fixture
def config(tmp_path):
    base = load_config()
    store = base.store.model_copy(update={"work": as_url(tmp_path / "work")})
    return base.model_copy(update={"store": store})


def test_plan_writes_the_tiles_of_the_pu(config):
    result = run_stage(PLAN_TILES, config, Target("demo", 2023, "DEMO1"))
    assert result["outputs"]["plan"] == Locations(config).pu(2023, "DEMO1").plan
    saved = Store().read_json(result["outputs"]["plan"])
    tiles = saved["tiles"]
    assert tiles and all(t["bounds"][2] - t["bounds"][0] == 2_500 for t in tiles)
    assert result["tiles"] == len(tiles)
    assert saved["pu_buffer_m"] == 1_000 and saved["only_tiles"] == []
    assert planned_tiles(config, "demo", "DEMO1", 2023) == [t["tile_id"] for t in tiles]
    # The same plan again is current; a subset is another plan.
    assert run_stage(PLAN_TILES, config, Target("demo", 2023, "DEMO1"))["skipped"]
    subset = run_stage(PLAN_TILES, config, Target("demo", 2023, "DEMO1"), options={"only_tiles": [tiles[0]["tile_id"]]})
    assert not subset["skipped"] and subset["tiles"] == 1
    assert planned_tiles(config, "demo", "DEMO1", 2023) == [tiles[0]["tile_id"]]


def test_plan_refuses_unknown_units_and_tiles(config):
    with pytest.raises(InvalidIdError, match="'PU999' is not in the demo layout"):
        run_stage(PLAN_TILES, config, Target("demo", 2023, "PU999"))
    with pytest.raises(InvalidIdError, match=r"\['33TUL_r00c00'\], which are not tiles of DEMO1"):
        run_stage(PLAN_TILES, config, Target("demo", 2023, "DEMO1"), options={"only_tiles": ["33TUL_r00c00"]})
    assert stage_record(config, PLAN_TILES, Target("demo", 2023, "DEMO1")) is None


def test_define_tile_is_idempotent_and_can_be_forced(config):
    run_stage(PLAN_TILES, config, Target("demo", 2023, "DEMO1"))
    tile_id = planned_tiles(config, "demo", "DEMO1", 2023)[0]
    target = Target("demo", 2023, "DEMO1", tile_id)
    first = run_stage(DEFINE_TILE, config, target)
    second = run_stage(DEFINE_TILE, config, target)
    forced = run_stage(DEFINE_TILE, config, target, force=True)
    assert (first["skipped"], second["skipped"], forced["skipped"]) == (False, True, False)
    assert first["outputs"]["tile"] == Locations(config).tile(2023, "DEMO1", tile_id).definition
    definition = Store().read_json(first["outputs"]["tile"])
    planned_tile = tile_from_id(tile_id, config.for_layout("demo").grid.tile_size_m)
    assert definition["shape"] == [250, 250] and definition["crs"] == planned_tile.crs
    assert definition["pu_id"] == "DEMO1" and definition["reference_year"] == 2023


def test_join_names_unfinished_tiles(config):
    with pytest.raises(StageInputError, match="no plan_tiles record"):
        run_stage(JOIN_TILES, config, Target("demo", 2023, "DEMO1"))
    run_stage(PLAN_TILES, config, Target("demo", 2023, "DEMO1"))
    with pytest.raises(TilesNotFinishedError, match="have not finished; re-run them with only_tiles"):
        run_stage(JOIN_TILES, config, Target("demo", 2023, "DEMO1"))


def test_plan_and_define_tile_on_s3(config, s3_server, s3_bucket):
    """The same stages with the work root on s3:// (moto's S3 server on 127.0.0.1)."""
    store_cfg = config.store.model_copy(update={"work": s3_bucket, "s3_endpoint_url": s3_server, "s3_region": "us-east-1"})
    s3_config = config.model_copy(update={"store": store_cfg})
    result = run_stage(PLAN_TILES, s3_config, Target("demo", 2021, "DEMO2"))
    assert result["outputs"]["plan"].startswith("s3://")
    tile_ids = planned_tiles(s3_config, "demo", "DEMO2", 2021)
    for tile_id in tile_ids:
        assert run_stage(DEFINE_TILE, s3_config, Target("demo", 2021, "DEMO2", tile_id))["skipped"] is False
    assert run_stage(DEFINE_TILE, s3_config, Target("demo", 2021, "DEMO2", tile_ids[0]))["skipped"] is True
    # Defined but not ingested: the join names the missing stages (test_ingest covers ingest on S3).
    with pytest.raises(TilesNotFinishedError,
                       match=r"stages missing per tile: \{'33TUL_r21c37': \['ingest', 'classify', 'filter'\]"):
        run_stage(JOIN_TILES, s3_config, Target("demo", 2021, "DEMO2"))
    store = store_for(s3_config)
    assert store.read_json(result["outputs"]["plan"])["pu_id"] == "DEMO2"
