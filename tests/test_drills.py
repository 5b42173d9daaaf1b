"""Drills on a real Airflow (the embedded deployment's scheduler, DAG processor, triggerer and
API server, LocalExecutor).

Repair: a fault injected into one tile's ingestion fails that tile; once the fault is gone,
clearing only that task instance through the REST API (the call the UI's "Clear" makes) lets
the run complete, the other tile untouched, and the repaired tile's outputs are byte-identical
to those of a clean run.

After the drill no secret of the deployment is in any of its logs (``_deployment``, shared with
the kill -9 drill of ``test_kill_drill.py``); a unit test shows the check finds each secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from clcplus_ops.config import CONFIG_ENV, load_config
from clcplus_ops.embedded import (AirflowServices, airflow_env, assert_no_credentials, credentials_in_logs,
                                  deployment_logs, deployment_secrets, free_port, server_env, write_embedded_config)
from clcplus_ops.kill_drill import deployment, drill_env
from clcplus_ops.pipeline import CLASSIFY, DEFINE_TILE, FILTER, INGEST
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.stage import Target
from conftest import REPO

DAG = "clcplus_pu_DEMO1"


def _config(path: Path, root: Path, faults: list[dict], **airflow) -> Path:
    """The session's configuration (its synthetic world and registered models) with a fresh work
    and products store, the demo layout's DAGs only, no retries (unless ``airflow`` says) and
    the drill's faults."""
    data = yaml.safe_load(Path(os.environ[CONFIG_ENV]).read_text()) or {}
    data.setdefault("store", {}).update(work=(root / "work").as_uri(), products=(root / "products").as_uri())
    data["airflow"] = {**data.get("airflow", {}), "layouts": ["demo"], "scheduled_runs": False, "retries": 0,
                       **airflow}
    data["blending"] = {**data.get("blending", {}), "neighbour_timeout_minutes": 0.05, "neighbour_poll_seconds": 2}
    data["drills"] = {"faults": faults}
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def _deployment(home: Path, config_path: Path):
    """The embedded deployment started on ``config_path`` (DAG parsed), with the S3 connection
    ``aws_default`` holding a secret key; yields (services, API, environment). Afterwards no
    secret of the deployment is in any of its logs."""
    env = drill_env(home, REPO, config_path, parallelism=2)
    with deployment(env, home / "services", [DAG]) as (services, api):
        yield services, api, env
    secrets_of = deployment_secrets(env)
    assert {"password of admin", "AIRFLOW__API_AUTH__JWT_SECRET", "fernet_key of airflow.cfg",
            "password of AIRFLOW_CONN_AWS_DEFAULT"} <= set(secrets_of)
    assert assert_no_credentials(deployment_logs(env, services.log_dir), secrets_of) > 10


def test_clearing_only_the_failed_tile_repairs_the_run(tmp_path, demo_world, demo_random_model, figure):
    home = tmp_path / "home"
    tiles = _demo_tiles()  # two of the session world's DEMO1 tiles (tests/test_dags.py runs the same)
    broken, healthy = tiles
    config_path = _config(tmp_path / "config.yaml", home / "store",
                          [{"stage": "ingest", "pu_id": "DEMO1", "tile_id": broken}])
    started = time.perf_counter()
    with _deployment(home, config_path) as (_, api, _):
        run = api.trigger(DAG, "2026-04-01T00:00:00Z", {"only_tiles": tiles, "model_version": demo_random_model["version"]})
        assert api.wait_for_run(DAG, run, timeout_s=420) == "failed"
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
        assert api.wait_for_run(DAG, run, timeout_s=420) == "success"
        after = {(ti["task_id"], ti["map_index"]): ti for ti in api.task_instances(DAG, run)}
        figure(f"repair drill: run failed on the injected fault, cleared one tile through the REST API, completed; "
               f"{time.perf_counter() - started:.0f} s with the embedded Airflow")
    other = next(i for (task, i) in after if task == "tile.ingest" and i != index)
    assert after[("tile.ingest", other)]["try_number"] == 1 and after[("tile.ingest", index)]["try_number"] == 2
    config = _store_config(config_path)
    assert stage_record(config, INGEST, Target("demo", 2025, "DEMO1", healthy)).created == healthy_ingest.created
    # The repaired tile is byte-identical to a clean run's (the same stages, another store).
    clean = _in_store(config, tmp_path / "clean")
    target = Target("demo", 2025, "DEMO1", broken)
    for stage in (DEFINE_TILE, INGEST, CLASSIFY, FILTER):
        run_stage(stage, clean, target, options={"model_version": demo_random_model["version"]})
        repaired, reference = stage_record(config, stage, target), stage_record(clean, stage, target)
        assert {k: f["sha256"] for k, f in repaired.files.items()} == {k: f["sha256"] for k, f in reference.files.items()}


def test_the_credential_check_finds_every_secret_in_any_log(tmp_path):
    home = tmp_path / "home"
    config = write_embedded_config(home, home / "config.yaml")
    env = server_env(airflow_env(home, REPO, config), free_port(), parallelism=2)
    env.update(AIRFLOW_CONN_AWS_DEFAULT=json.dumps({"conn_type": "aws", "password": "s3-secret/Key+9",
                                                    "extra": {"aws_session_token": "session-token-77"}}),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql://airflow:db%2Fpass-123@127.0.0.1/airflow",
               AIRFLOW__CORE__FERNET_KEY="fernet-key-of-the-test-0123456789=")
    found = deployment_secrets(env)
    assert found == {"password of admin": AirflowServices(env, "airflow", tmp_path).password,
                     "AIRFLOW__API_AUTH__JWT_SECRET": env["AIRFLOW__API_AUTH__JWT_SECRET"],
                     "AIRFLOW__API__SECRET_KEY": env["AIRFLOW__API__SECRET_KEY"],
                     "AIRFLOW__CORE__FERNET_KEY": "fernet-key-of-the-test-0123456789=",
                     "password in AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "db/pass-123",
                     "password of AIRFLOW_CONN_AWS_DEFAULT": "s3-secret/Key+9",
                     "aws_session_token of AIRFLOW_CONN_AWS_DEFAULT": "session-token-77"}
    logs = tmp_path / "logs"
    (logs / "task_id=ingest").mkdir(parents=True)
    (logs / "scheduler.log").write_text("a log without any secret\n")
    assert assert_no_credentials([logs], found) == 1
    for what, value in found.items():
        for form in (value, quote(value, safe="")):  # as it is, or inside a URI
            leaked = logs / "task_id=ingest" / "attempt=1.log"
            leaked.write_text(f"connection: s3://key:{form}@host\n")
            with pytest.raises(AssertionError, match=re.escape(f"{leaked}: {what}")) as error:
                assert_no_credentials([logs], found)
            assert value not in str(error.value)
    with pytest.raises(ValueError, match="too short"):
        credentials_in_logs([logs], {"password of admin": "admin"})


def _in_store(config, root: Path):
    """``config`` with its work and products roots under ``root``."""
    stores = {"work": (root / "work").as_uri(), "products": (root / "products").as_uri()}
    return config.model_copy(update={"store": config.store.model_copy(update=stores)})


def _store_config(path: Path):
    return load_config(path).for_layout("demo")


def _demo_tiles() -> list[str]:
    from clcplus_ops.geo.tile_index import tile_index

    config = load_config()
    return tile_index(config.layout_path("demo"), config.for_layout("demo").grid)["DEMO1"][:2]
