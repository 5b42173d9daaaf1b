"""The Airflow side in the Amazon provider's style: S3 settings come from the Airflow
connection (through the provider's hook), and the secret never reaches a task log.

The DEMO1 DAG runs with dag.test() with its work store on the local S3 server (moto) while the
only credentials anywhere are those of the connection ``aws_default``: no AWS_* variable, no
credentials or config file, no instance metadata. The moto server accepts any credentials, so
what this shows is that the connection's credentials and endpoint are the ones used (without
them boto3 finds none and the run fails), and that the secret key appears in no task log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pendulum
import pytest
import yaml

from clcplus_ops.config import CONFIG_ENV, load_config
from clcplus_ops.geo.tile_index import tile_index
from clcplus_ops.locations import Locations
from clcplus_ops.pipeline import CLASSIFY, FILTER, INGEST, MOSAIC, PLAN_TILES
from clcplus_ops.runner import stage_record
from clcplus_ops.stage import Target
from clcplus_ops.store import S3Settings, Store, StoreError
from conftest import REPO

PU, YEAR = "DEMO1", 2025
ACCESS_KEY = "AKIACLCPLUSTESTKEY01"
# Distinctive, so that a hit in the logs can only be this secret.
SECRET = "clcplus-s3-secret-Zq7WvX3kP9tL2mR8"


@pytest.fixture
def s3_only_in_connection(s3_server, s3_bucket, monkeypatch, tmp_path):
    """The session's configuration with its work root in a fresh bucket, the connection
    ``aws_default`` holding the credentials and the endpoint, and nothing else that boto3 could
    take credentials from."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)  # the fake keys s3_bucket set, and anything from the shell
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role either
    data = yaml.safe_load(Path(os.environ[CONFIG_ENV]).read_text())
    data["store"]["work"] = f"{s3_bucket}/work"
    data["store"].pop("s3_endpoint_url", None)  # the endpoint is the connection's
    path = tmp_path / "config-s3.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    connection = {"conn_type": "aws", "login": ACCESS_KEY, "password": SECRET,
                  "extra": {"endpoint_url": s3_server, "region_name": "eu-central-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    return {"config": load_config(), "endpoint": s3_server, "bucket": s3_bucket}


def test_s3_settings_come_from_the_connection(s3_only_in_connection, monkeypatch, caplog):
    from clcplus_airflow.connections import s3_settings

    config, endpoint = s3_only_in_connection["config"], s3_only_in_connection["endpoint"]
    settings = s3_settings(config)
    assert (settings.endpoint_url, settings.region) == (endpoint, "eu-central-1")
    assert (settings.access_key_id, settings.secret_access_key) == (ACCESS_KEY, SECRET)
    assert SECRET not in repr(settings)
    assert settings.max_attempts == config.store.s3_max_attempts  # the configured retries stay
    # The connection's region wins over the configured one; the configured one fills in.
    connection = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    del connection["extra"]["region_name"]
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    assert s3_settings(config).region == config.store.s3_region

    # Without the connection: the configured endpoint, no credentials, said once at INFO.
    missing = config.model_copy(update={"airflow": config.airflow.model_copy(update={"aws_conn_id": "clcplus_absent"}),
                                        "store": config.store.model_copy(update={"s3_endpoint_url": endpoint})})
    # (When Airflow sets its logging up at the first connection lookup of the session, it replaces
    # the root handlers, pytest's log capture among them: then give it to this module's logger.)
    logger = logging.getLogger("clcplus_airflow.connections")
    if caplog.handler not in logging.getLogger().handlers:
        logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="clcplus_airflow.connections"):
            first, second = s3_settings(missing), s3_settings(missing)
    finally:
        logger.removeHandler(caplog.handler)
    assert first == second == S3Settings(endpoint_url=endpoint, region=config.store.s3_region)
    said = [r for r in caplog.records if "clcplus_absent" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    # ... and boto3 finds no credentials anywhere else in this environment.
    with pytest.raises(StoreError, match="credentials"):
        Store(first).exists(f"{s3_only_in_connection['bucket']}/work/anything")


MASKER_HANDOVER = re.compile(r"\[debug +\] Sending request +loc=supervisor\.py:\d+ msg=MaskSecret\(value=")

# dag.test() in a process of its own, so that Airflow sets its logging up at DEBUG there (the
# test session's Airflow logs at WARNING): every task log line of the run is printed and kept.
RUN_DAG = """
import sys
import pendulum
sys.path.insert(0, sys.argv[1] + "/plugins")
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder=sys.argv[1] + "/dags").get_dag(sys.argv[2])
run = dag.test(logical_date=pendulum.datetime(int(sys.argv[3]) + 1, 4, 1, tz="UTC"), run_conf={"only_tiles": [sys.argv[4]]})
print("dag run state:", run.state)
"""


def test_demo_dag_on_s3_with_credentials_only_in_the_connection(s3_only_in_connection, demo_world, demo_random_model,
                                                                airflow_db, tmp_path, figure):
    config = s3_only_in_connection["config"]
    demo = config.for_layout("demo")
    locations = Locations(demo)
    assert locations.roots["work"].startswith("s3://") and not config.store.s3_endpoint_url
    tile_id = tile_index(demo.layout_path("demo"), demo.grid)[PU][0]  # one tile keeps the run short
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    before = {p: p.stat().st_mtime for p in logs.rglob("*") if p.is_file()} if logs.exists() else {}

    started = time.perf_counter()
    env = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG"}
    result = subprocess.run([sys.executable, "-c", RUN_DAG, str(REPO), f"clcplus_pu_{PU}", str(YEAR), tile_id],
                            env=env, capture_output=True, text=True, timeout=900)
    figure(f"dag.test clcplus_pu_DEMO1 on S3 (one tile, credentials only in the connection, DEBUG logs): "
           f"{time.perf_counter() - started:.1f} s")
    printed = result.stdout + result.stderr
    (tmp_path / "dag_test.log").write_text(printed)  # kept for a look when the test fails
    assert result.returncode == 0 and "dag run state: success" in printed, printed[-6000:]

    # The work artefacts are in the bucket, under the records the runner committed there.
    store = Store(S3Settings(endpoint_url=s3_only_in_connection["endpoint"], access_key_id="any",
                             secret_access_key="any"))
    plan = stage_record(demo, PLAN_TILES, Target("demo", YEAR, PU), store)
    assert [t["tile_id"] for t in store.read_json(locations.resolve(plan.outputs["plan"]))["tiles"]] == [tile_id]
    target = Target("demo", YEAR, PU, tile_id)
    for stage in (INGEST, CLASSIFY, FILTER):
        record = stage_record(demo, stage, target, store)
        assert record is not None, stage.name
        for name, location in record.outputs.items():
            url = locations.resolve(location)
            assert url.startswith(s3_only_in_connection["bucket"]), url
            assert store.stat(url).size == record.files[name]["size"]
    assert store.exists(locations.tile(YEAR, PU, tile_id).filtered)
    mosaic = stage_record(demo, MOSAIC, Target("demo", YEAR, PU), store)  # read the tile through GDAL's /vsis3
    assert mosaic.details["tiles"] == 1 and mosaic.details["valid_pixels"] > 0

    # The secret is in no task log: neither what dag.test printed (every task's log, at DEBUG)
    # nor any file this run wrote under AIRFLOW_HOME/logs. One kind of line is not a task's log
    # but dag.test's own: its in-process supervisor (InProcessSupervisorComms.send in
    # airflow/sdk/execution_time/supervisor.py) logs at DEBUG every message a task sends it,
    # including the hand-over of a secret to the log masker, MaskSecret(value=...), whose body
    # the real supervisor omits ("body omitted"). Those lines are set aside (they show that the
    # secret was registered for masking); every other line is searched.
    lines = printed.splitlines()
    handed_to_masker = [line for line in lines if MASKER_HANDOVER.search(line)]
    assert any(f"MaskSecret(value='{SECRET}'" in line for line in handed_to_masker)
    written = [p for p in logs.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime] if logs.exists() else []
    texts = {"dag.test output": "\n".join(line for line in lines if not MASKER_HANDOVER.search(line)),
             **{str(p): p.read_text(errors="replace") for p in written}}
    assert not [where for where, text in texts.items() if SECRET in text]
    figure(f"secret grep over the S3 run's task logs: {len(lines) - len(handed_to_masker):,} log lines and "
           f"{len(written)} log files searched, no secret; {len(handed_to_masker)} hand-over(s) to the masker set aside")
    # What was searched is the run's log: the tasks, the stages and the S3 client speak in it, and
    # the S3 requests were signed with the connection's access key.
    for expected in ("tile.classify", f"ingest {tile_id} {YEAR} (for {PU}): computing", "output(s) committed",
                     f"Credential={ACCESS_KEY}/"):
        assert expected in printed, expected
