"""The DAG factory under a real Airflow (SQLite metadata DB): import, parse time, params, and a
demo production-unit DAG run with dag.test()."""

import time

import pendulum
import pytest
from airflow.sdk.definitions.param import ParamValidationError

from clcplus_ops.config import load_config
from clcplus_ops.geo.layout import layout_index
from clcplus_ops.locations import Locations
from clcplus_ops.model import registry
from clcplus_ops.pipeline import BLEND, CLASSIFY, DEFINE_TILE, INGEST, LAYERS, MOSAIC, PRODUCT_TILE_STAGES, TILE_STAGES
from clcplus_ops.runner import stage_record, store_for
from clcplus_ops.stage import Target
from conftest import REPO, dagbag_of_all_layouts


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    """Both layouts' DAGs, as a deployment parses them (the session's Airflow makes the demo's)."""
    from conftest import FIGURES

    timings = []
    for _ in range(2):  # the first parse may fill the tile-index cache; the second is the usual one
        start = time.perf_counter()
        bag = dagbag_of_all_layouts()
        timings.append(time.perf_counter() - start)
    FIGURES.append(
        f"DagBag: {len(bag.dags)} DAGs from {len(bag.dagbag_stats)} file(s); "
        f"parse {timings[0]:.2f} s (first, cold tile-index cache), {timings[1]:.2f} s (warm)"
    )
    return bag


def test_dagbag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    config = load_config()
    expected = {f"clcplus_pu_{u['pu_id']}" for layout in ("production", "demo") for u in layout_index(config.layout_path(layout))}
    assert len(expected) == 138 + 2
    assert set(dagbag.dag_ids) == expected | {"clcplus_training", "clcplus_training_demo"}
    # The session's own configuration names only the demo layout (airflow.layouts): its DAGs only.
    from airflow.dag_processing.dagbag import DagBag

    assert load_config().airflow.layouts == ("demo",)
    demo_only = DagBag(dag_folder=str(REPO / "dags"))
    assert demo_only.import_errors == {}
    assert set(demo_only.dag_ids) == {"clcplus_pu_DEMO1", "clcplus_pu_DEMO2", "clcplus_training_demo"}


def test_parsing_the_dags_imports_no_torch():
    """DAG files import the stage catalogue at parse time: no stage module may import torch
    (or the like) at its top level."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'plugins'); import clcplus_ops.pipeline, clcplus_airflow.tasks, "
            "clcplus_airflow.production, clcplus_airflow.training; "
            "print(sorted(m for m in ('torch', 'sklearn', 'cleanlab') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_a_pu_dag_fans_out_per_tile_and_joins(dagbag):
    dag = dagbag.get_dag("clcplus_pu_PU001")
    config = load_config()
    stages = [f"tile.{stage.name}" for stage in TILE_STAGES]  # the group is made from the declared stages
    assert stages == ["tile.define_tile", "tile.ingest", "tile.classify", "tile.filter"]
    products = [f"product_tile.{stage.name}" for stage in PRODUCT_TILE_STAGES]
    assert products == ["product_tile.product_tile", "product_tile.product_metadata", "product_tile.product_stac",
                        "product_tile.product_check", "product_tile.product_publish"]
    assert set(dag.task_ids) == {"plan_tiles", "select_model", *stages, "join_tiles", "mosaic", "wait_for_neighbours",
                                 "blend", "calibrate", "recode", "layers", "ready_product_tiles", *products}
    for upstream, downstream in zip(stages, stages[1:]):
        assert upstream in dag.get_task(downstream).upstream_task_ids
    for task_id in stages:
        assert dag.get_task(task_id).map_index_template == "{{ tile_id }}"
    assert dag.get_task("tile.classify").upstream_task_ids == {"plan_tiles", "select_model", "tile.ingest"}
    assert "select_model" not in dag.get_task("tile.ingest").upstream_task_ids  # ingestion goes on without a model
    assert dag.get_task("tile.classify").pool == config.inference.airflow_pool
    assert dag.get_task("tile.ingest").pool == config.airflow.default_pool
    assert "tile.filter" in dag.get_task("join_tiles").upstream_task_ids
    # then the PU's stages, in order, with the wait for the neighbours' mosaics before the blend
    pu_stages = ["join_tiles", "mosaic", "wait_for_neighbours", "blend", "calibrate", "recode", "layers"]
    for upstream, downstream in zip(pu_stages, pu_stages[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    # and last the product tiles its run completes, each a mapped group: tile, metadata, STAC,
    # self-check, publish
    assert dag.get_task("ready_product_tiles").upstream_task_ids == {"layers"}
    for upstream, downstream in zip(products, products[1:]):
        assert upstream in dag.get_task(downstream).upstream_task_ids
        assert dag.get_task(downstream).map_index_template == "{{ tile_id }}"
    assert dag.get_task("wait_for_neighbours").pool == config.airflow.default_pool
    assert type(dag.timetable).__name__ == "ReferenceYearTimetable"
    assert dag.max_active_runs == 1
    # Retries, retry delay and start date are the configuration's.
    task = dag.get_task("tile.ingest")
    assert task.retries == config.airflow.retries
    assert task.retry_delay.total_seconds() == 60 * config.airflow.retry_delay_minutes
    assert dag.start_date.date() == config.airflow.start_date


def test_only_tiles_param_refuses_a_wrong_tile_id(dagbag):
    dag = dagbag.get_dag("clcplus_pu_DEMO1")
    choices = dag.params.get_param("only_tiles").schema["items"]["enum"]
    assert choices and all("_r" in t for t in choices)
    dag.params.validate()
    param = dag.params.get_param("only_tiles")
    assert param.resolve([choices[0]]) == [choices[0]]
    with pytest.raises(ParamValidationError, match="'33ZZZ_r0c0' is not one of"):
        param.resolve(["33ZZZ_r0c0"])
    with pytest.raises(ParamValidationError, match="non-unique"):
        param.resolve([choices[0], choices[0]])
    version = dag.params.get_param("model_version")
    assert version.resolve("latest") == "latest" and version.resolve("v0012") == "v0012"
    with pytest.raises(ParamValidationError, match="does not match"):
        version.resolve("12")


def _run(dag, conf=None):
    # Logical date = the day the 2025 window closed; the timetable derives the interval.
    return dag.test(logical_date=pendulum.datetime(2026, 4, 1, tz="UTC"), run_conf=conf)


def test_demo_pu_dag_runs_end_to_end_and_reruns_skip_done_tiles(dagbag, demo_world, demo_random_model, figure):
    dag = dagbag.get_dag("clcplus_pu_DEMO1")
    # Two of DEMO1's 13 tiles: the same tasks, mapping and join as all of them (the demo runs
    # every tile), in a fraction of the time.
    chosen = dag.params.get_param("only_tiles").schema["items"]["enum"][:2]
    started = time.perf_counter()
    run = _run(dag, {"only_tiles": chosen})
    figure(f"dag.test clcplus_pu_DEMO1 (define, ingest, classify, filter 2 tiles): {time.perf_counter() - started:.1f} s")
    assert run.state == "success", [(ti.task_id, ti.map_index, ti.state) for ti in run.get_task_instances()]
    config = load_config().for_layout("demo")
    store = store_for(config)
    locations = Locations(config)
    pu = locations.pu(2025, "DEMO1")
    planned = store.read_json(pu.plan)
    tile_ids = [t["tile_id"] for t in planned["tiles"]]
    assert planned["reference_year"] == 2025 and tile_ids == chosen
    assert store.read_json(pu.tiles_done)["tiles"] == tile_ids
    mosaic = stage_record(config, MOSAIC, Target("demo", 2025, "DEMO1"))
    assert mosaic.details["tiles"] == 2 and mosaic.details["zones"] == [32633] and mosaic.details["grid"]["epsg"] == 3035
    # DEMO2 has no mosaic: the wait deferred, timed out after blending.neighbour_timeout_minutes and
    # the PU blended without it, saying so.
    wait_ti = next(ti for ti in run.get_task_instances() if ti.task_id == "wait_for_neighbours")
    assert wait_ti.xcom_pull(task_ids="wait_for_neighbours") == {"ready": [], "missing": ["DEMO2"], "timed_out": True}
    blended = stage_record(config, BLEND, Target("demo", 2025, "DEMO1"))
    assert blended.details["missing_neighbours"] == ["DEMO2"] and blended.details["neighbours"] == []
    layers = stage_record(config, LAYERS, Target("demo", 2025, "DEMO1"))
    assert layers.details["area"] > 0 and layers.details["coastal_seawater"] > 0
    # Its layers are provisional (blended without DEMO2) and DEMO2 has none: no product tile is
    # made by this run; the mapped product tile group has no instance.
    ready_ti = next(ti for ti in run.get_task_instances() if ti.task_id == "ready_product_tiles")
    assert ready_ti.state == "success" and ready_ti.xcom_pull(task_ids="ready_product_tiles") == []
    assert not [ti for ti in run.get_task_instances()
                if ti.task_id.startswith("product_tile.") and ti.state == "success"]
    for task_id in ("tile.define_tile", "tile.ingest", "tile.classify", "tile.filter"):
        mapped = [ti for ti in run.get_task_instances() if ti.task_id == task_id]
        assert sorted(ti.rendered_map_index for ti in mapped) == sorted(tile_ids)
    target = Target("demo", 2025, "DEMO1", tile_ids[0])
    first = stage_record(config, DEFINE_TILE, target)
    ingested = stage_record(config, INGEST, target)
    assert ingested.details["dates"] > 50
    classified = stage_record(config, CLASSIFY, target)
    latest = registry.resolve_model(store, locations.models, "DEMO1").version
    assert classified.details["model"] == latest
    assert store.exists(locations.tile(2025, "DEMO1", tile_ids[0]).filtered)
    # What crossed XCom: the planned tile ids, and each stage's small summary.
    plan_ti = next(ti for ti in run.get_task_instances() if ti.task_id == "plan_tiles")
    assert plan_ti.xcom_pull(task_ids="plan_tiles") == tile_ids

    # A second run finds every tile current and rewrites nothing.
    again = _run(dag, {"only_tiles": chosen})
    assert again.state == "success"
    assert stage_record(config, DEFINE_TILE, target).created == first.created
    assert stage_record(config, INGEST, target).created == ingested.created
    assert stage_record(config, CLASSIFY, target).created == classified.created

    # A partial re-run of one tile plans just that tile; a model version that is not registered
    # fails the run before any tile is classified, while the tile's ingestion goes on.
    missing = _run(dag, {"only_tiles": [tile_ids[-1]], "model_version": "v0099"})
    assert [t["tile_id"] for t in store.read_json(pu.plan)["tiles"]] == [tile_ids[-1]]
    states = {ti.task_id: ti.state for ti in missing.get_task_instances()}
    assert missing.state == "failed"
    assert states["select_model"] == "failed" and states["tile.ingest"] == "success"
    assert states["tile.classify"] == "upstream_failed"


def test_the_last_pu_to_finish_makes_the_product_tiles_and_a_failed_self_check_stops_them(
        dagbag, demo_world, demo_random_model, figure):
    """DEMO2 runs (2 tiles), then DEMO1 again: DEMO1's blend is redone with DEMO2's mosaic, and,
    finishing last, DEMO1's run makes the two product tiles both PUs touch. With 2 of each PU's
    tiles most of the PUs' land has no observation: RAS keeps no data (255) there, which EEA's
    value check refuses, so the tiles fail the self-check and are not published."""
    import numpy as np

    from clcplus_ops.locations import Locations
    from clcplus_ops.products.stages import PRODUCT_CHECK, PRODUCT_TILE
    from conftest import random_tempcnn, register_model

    config = load_config().for_layout("demo")
    s2 = config.sentinel2
    x = np.random.default_rng(0).normal(1500, 900, (4096, len(s2.bands) + len(s2.indices), config.time_series.n_steps))
    register_model(config, random_tempcnn(config, x.clip(-9999, 9999).astype(np.int16)), "DEMO2")
    first, second = dagbag.get_dag("clcplus_pu_DEMO2"), dagbag.get_dag("clcplus_pu_DEMO1")
    started = time.perf_counter()
    demo2 = _run(first, {"only_tiles": first.params.get_param("only_tiles").schema["items"]["enum"][:2]})
    assert demo2.state == "success", [(ti.task_id, ti.map_index, ti.state) for ti in demo2.get_task_instances()]
    ready = next(ti for ti in demo2.get_task_instances() if ti.task_id == "ready_product_tiles")
    assert ready.xcom_pull(task_ids="ready_product_tiles") == []  # DEMO1's layers are provisional
    # (The run of this logical date keeps the conf of the previous test's last run: name the model.)
    demo1 = _run(second, {"only_tiles": second.params.get_param("only_tiles").schema["items"]["enum"][:2],
                          "model_version": "latest"})
    figure(f"dag.test DEMO2 (2 tiles) then DEMO1 again, making 2 product tiles: {time.perf_counter() - started:.1f} s")
    states = {(ti.task_id, ti.rendered_map_index): ti.state for ti in demo1.get_task_instances()}
    assert states[("blend", None)] == "success"
    assert stage_record(config, BLEND, Target("demo", 2025, "DEMO1")).details["missing_neighbours"] == []
    ready = next(ti for ti in demo1.get_task_instances() if ti.task_id == "ready_product_tiles")
    assert ready.xcom_pull(task_ids="ready_product_tiles") == ["e46n24", "e46n25"]
    by_index = {(ti.task_id, ti.map_index): ti.state for ti in demo1.get_task_instances()}
    for index, code in enumerate(("e46n24", "e46n25")):
        assert states[("product_tile.product_tile", code)] == "success"  # the map index shows the tile code
        assert states[("product_tile.product_stac", code)] == "success"
        assert states[("product_tile.product_check", code)] == "failed"
        assert by_index[("product_tile.product_publish", index)] == "upstream_failed"
        made = stage_record(config, PRODUCT_TILE, Target("demo", 2025, None, code)).details
        assert made["claimed_by"] == "DEMO1" and made["pus"] == ["DEMO1", "DEMO2"] and made["revision"] == 0
        check = stage_record(config, PRODUCT_CHECK, Target("demo", 2025, None, code)).details
        assert not check["passed"] and any("qc_tool.raster.value" in line and "255" in line for line in check["failed"])
    assert demo1.state == "failed"
    delivery = Locations(config).delivery
    assert not store_for(config).list(delivery)  # nothing published
