"""Repair drill on a real Airflow (the embedded deployment's scheduler, DAG processor, triggerer
and API server): a fault injected into one tile's ingestion fails that tile; once the fault is
gone, clearing only that task instance through the REST API (the call the UI's "Clear" makes)
lets the run complete, the other tile untouched, and the repaired tile's outputs are
byte-identical to those of a clean run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from clcplus_ops.config import CONFIG_ENV, load_config
from clcplus_ops.embedded import AirflowApi, AirflowServices, airflow_env, free_port, server_env
from clcplus_ops.pipeline import CLASSIFY, DEFINE_TILE, FILTER, INGEST
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.stage import Target
from conftest import REPO

DAG = "clcplus_pu_DEMO1"


def _config(path: Path, root: Path, faults: list[dict]) -> Path:
    """The session's configuration (its synthetic world and registered models) with a fresh work
    and products store, the demo layout's DAGs only, no retries and the drill's faults."""
    data = yaml.safe_load(Path(os.environ[CONFIG_ENV]).read_text()) or {}
    data.setdefault("store", {}).update(work=(root / "work").as_uri(), products=(root / "products").as_uri())
    data["airflow"] = {**data.get("airflow", {}), "layouts": ["demo"], "scheduled_runs": False, "retries": 0}
    data["blending"] = {**data.get("blending", {}), "neighbour_timeout_minutes": 0.05, "neighbour_poll_seconds": 2}
    data["drills"] = {"faults": faults}
    path.write_text(yaml.safe_dump(data))
    return path


def _wait(api: AirflowApi, run_id: str, timeout_s: float = 420) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := api.dag_run(DAG, run_id)["state"]) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"run {run_id} still {state} after {timeout_s:.0f} s"
        time.sleep(3)
    return state


def test_clearing_only_the_failed_tile_repairs_the_run(tmp_path, demo_world, demo_random_model, figure):
    home = tmp_path / "home"
    tiles = _demo_tiles()  # two of the session world's DEMO1 tiles (tests/test_dags.py runs the same)
    broken, healthy = tiles
    config_path = _config(tmp_path / "config.yaml", home / "store",
                          [{"stage": "ingest", "pu_id": "DEMO1", "tile_id": broken}])
    env = server_env(airflow_env(home, REPO, config_path), free_port(), parallelism=2)
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    with AirflowServices(env, airflow, home / "services") as services:
        api = AirflowApi(services.url, "admin", services.password)
        api.wait_for_dags([DAG], timeout_s=240)
        run = api.trigger(DAG, "2026-04-01T00:00:00Z", {"only_tiles": tiles, "model_version": demo_random_model["version"]})
        assert _wait(api, run) == "failed"
        first = {(ti["task_id"], ti["rendered_map_index"] or ti["map_index"]): ti for ti in api.task_instances(DAG, run)}
        by_index = {(ti["task_id"], ti["map_index"]): ti for ti in api.task_instances(DAG, run)}
        index = next(i for (task, i), ti in by_index.items() if task == "tile.ingest" and ti["state"] == "failed")
        assert first[("tile.ingest", broken)]["state"] == "failed"
        assert by_index[("tile.filter", index)]["state"] == "upstream_failed"
        assert first[("tile.filter", healthy)]["state"] == "success"
        assert by_index[("join_tiles", -1)]["state"] == "upstream_failed"
        healthy_ingest = stage_record(_store_config(config_path), INGEST, Target("demo", 2025, "DEMO1", healthy))

        # The fault is gone (the operator fixed the cause); clear just that task instance.
        _config(config_path, home / "store", [])
        cleared = api.clear(DAG, run, [["tile.ingest", index]])
        assert {(ti["task_id"], ti["map_index"]) for ti in cleared} >= {("tile.ingest", index), ("tile.filter", index)}
        assert not any(ti["map_index"] not in (index, -1) for ti in cleared)  # the other tile is left alone
        assert _wait(api, run) == "success"
        after = {(ti["task_id"], ti["map_index"]): ti for ti in api.task_instances(DAG, run)}
        figure(f"repair drill: run failed on the injected fault, cleared one tile through the REST API, completed; "
               f"{time.perf_counter() - started:.0f} s with the embedded Airflow")
    other = next(i for (task, i) in after if task == "tile.ingest" and i != index)
    assert after[("tile.ingest", other)]["try_number"] == 1 and after[("tile.ingest", index)]["try_number"] == 2
    config = _store_config(config_path)
    assert stage_record(config, INGEST, Target("demo", 2025, "DEMO1", healthy)).created == healthy_ingest.created
    # The repaired tile is byte-identical to a clean run's (the same stages, another store).
    clean = config.model_copy(update={"store": config.store.model_copy(update={"work": (tmp_path / "clean").as_uri()})})
    target = Target("demo", 2025, "DEMO1", broken)
    for stage in (DEFINE_TILE, INGEST, CLASSIFY, FILTER):
        run_stage(stage, clean, target, options={"model_version": demo_random_model["version"]})
        repaired, reference = stage_record(config, stage, target), stage_record(clean, stage, target)
        assert {k: f["sha256"] for k, f in repaired.files.items()} == {k: f["sha256"] for k, f in reference.files.items()}


def _store_config(path: Path):
    return load_config(path).for_layout("demo")


def _demo_tiles() -> list[str]:
    from clcplus_ops.geo.tile_index import tile_index

    config = load_config()
    return tile_index(config.layout_path("demo"), config.for_layout("demo").grid)["DEMO1"][:2]
