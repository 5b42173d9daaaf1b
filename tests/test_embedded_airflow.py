"""The embedded deployment on a real Airflow: its scheduler, DAG processor, triggerer and API
server started as processes on 127.0.0.1, reached through the REST API as the UI does, and
stopped by their process ids without leaving any process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from clcplus_ops.embedded import COMPONENTS, AirflowApi, AirflowServices, airflow_env, free_port, server_env, \
    write_embedded_config
from conftest import REPO


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("embedded")
    config = write_embedded_config(home, home / "config.yaml", {"airflow": {"layouts": ["demo"]}})
    env = server_env(airflow_env(home, REPO, config), free_port(), parallelism=2)
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    running = AirflowServices(env, airflow, home / "services").start()
    yield {"services": running, "seconds": time.perf_counter() - started, "home": home}
    running.stop()


def _family(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    return [parent, *parent.children(recursive=True)]


def test_the_components_serve_on_the_loopback_only(services, figure):
    running = services["services"]
    figure(f"embedded Airflow: {', '.join(COMPONENTS)} healthy {services['seconds']:.1f} s after start")
    assert set(running.pids()) == set(COMPONENTS)
    listening = []
    for pid in running.pids().values():
        for process in _family(pid):
            try:
                listening += [c.laddr for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:
                continue
    assert listening, "no listening socket found"
    assert {address.ip for address in listening} <= {"127.0.0.1"}, listening
    assert running.port in {address.port for address in listening}


def test_the_rest_api_lists_the_demo_dags_and_refuses_a_wrong_password(services):
    running = services["services"]
    api = AirflowApi(running.url, "admin", running.password)
    api.wait_for_dags(["clcplus_pu_DEMO1", "clcplus_pu_DEMO2"], timeout_s=240)
    dag = api.get("/api/v2/dags/clcplus_pu_DEMO1")
    assert dag["is_paused"] is True and dag["max_active_tasks"] == 256
    assert not api.dag_exists("clcplus_pu_PU001")  # the embedded deployment makes the demo layout's DAGs only
    with pytest.raises(RuntimeError, match="401"):
        AirflowApi(running.url, "admin", "not-the-password").get("/api/v2/dags")


def test_stopping_leaves_no_process_behind(tmp_path):
    home = tmp_path / "home"
    config = write_embedded_config(home, home / "config.yaml", {"airflow": {"layouts": ["demo"]}})
    env = server_env(airflow_env(home, REPO, config), free_port(), parallelism=2)
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    running = AirflowServices(env, airflow, home / "services").start()
    family = [p for pid in running.pids().values() for p in _family(pid)]
    assert len(family) > len(COMPONENTS)  # the scheduler's executor workers, the log servers...
    running.stop()
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [(p.pid, p.name()) for p in alive]
    assert os.path.exists(home / "services" / "scheduler.log")
