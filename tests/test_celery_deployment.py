"""The distributed deployment, run here: Airflow with the CeleryExecutor, a PostgreSQL metadata
database (127.0.0.1:5432) and the Redis broker (127.0.0.1:6379); scheduler, DAG processor,
triggerer, API server and two Celery workers (queues ``cpu`` and ``gpu``) started by the test and
stopped by their process ids. A demo PU run triggered through the REST API classifies on the gpu
worker, runs every other task on the cpu worker, and its outputs are byte-identical to the same
stages run in process (the embedded way) into another store.

The test owns a fresh database (a unique name, dropped at the end) and a unique Redis key prefix
(kombu's ``global_keyprefix`` before every broker key and channel): the queues keep the names the
deployment uses and meet no other run's messages, on whatever Redis database index."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from clcplus_ops.config import CONFIG_ENV, load_config
from clcplus_ops.distributed import (Backends, celery_env, components, create_database,
                                     delete_broker_keys, drop_database, session_processes)
from clcplus_ops.embedded import AirflowApi, AirflowServices, airflow_env, free_port, server_env
from clcplus_ops.pipeline import PLAN_TILES, PU_BLEND, PU_JOIN, TILE_STAGES
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.stage import Target
from clcplus_airflow.celery_settings import TASK_NICENESS
from conftest import REPO

DAG = "clcplus_pu_DEMO1"
BACKENDS = Backends()


def _config(path: Path, root: Path, noop: bool = False) -> Path:
    """The session's configuration (its synthetic world and registered models) with a fresh work
    and products store, the demo layout's DAGs, no retries, and classify on pool and queue ``gpu``
    as in deploy/clcplus.yaml."""
    data = yaml.safe_load(Path(os.environ[CONFIG_ENV]).read_text()) or {}
    data.setdefault("store", {}).update(work=(root / "work").as_uri(), products=(root / "products").as_uri())
    data["airflow"] = {**data.get("airflow", {}), "layouts": ["demo"], "scheduled_runs": False, "retries": 0}
    data["blending"] = {**data.get("blending", {}), "neighbour_timeout_minutes": 0.05, "neighbour_poll_seconds": 2}
    data["inference"] = {**data.get("inference", {}), "airflow_pool": "gpu", "airflow_queue": "gpu"}
    data["drills"] = {"noop_stages": noop}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def backends():
    """A database and a Redis key prefix of this test's own, removed afterwards."""
    reason = BACKENDS.reachable()
    if reason:
        pytest.skip(f"the Celery deployment needs PostgreSQL and Redis: {reason}")
    unique = uuid.uuid4().hex[:12]
    owned = Backends(BACKENDS.postgres, BACKENDS.redis, database=f"clcplus_test_{unique}",
                     key_prefix=f"clcplus-test-{unique}:")
    create_database(owned)
    try:
        yield owned
    finally:
        drop_database(owned)
        delete_broker_keys(owned)


class _TaskPriorities:
    """The niceness of the deployment's task runners (titled ``airflow worker -- <task instance
    id>``) and of their parents, the pool processes supervising them, by process id: sampled
    every 0.2 s while in the ``with``."""

    def __init__(self, sessions):
        import threading

        self.sessions, self.tasks, self.supervisors = list(sessions), {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            for pid in session_processes(self.sessions):
                try:
                    process = psutil.Process(pid)
                    if not " ".join(process.cmdline()).startswith("airflow worker -- "):
                        continue
                    self.tasks[pid], parent = process.nice(), process.parent()
                    self.supervisors[parent.pid] = parent.nice()
                except psutil.Error:  # ended meanwhile
                    continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _listening(pids) -> set[tuple[str, int]]:
    import psutil

    out = set()
    for pid in pids:
        try:
            out |= {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_pu_runs_on_celery_workers_with_postgresql_and_redis(tmp_path, backends, demo_world, demo_random_model,
                                                                 figure):
    home = tmp_path / "home"
    config_path = _config(tmp_path / "config.yaml", home / "store")
    tiles = _demo_tiles()
    options = {"only_tiles": tiles, "model_version": demo_random_model["version"]}
    port = free_port()
    env = celery_env(server_env(airflow_env(home, REPO, config_path), port, parallelism=8), backends)
    # The DAG files do not change during the test: parsed once, not every 30 s (CPU of two cores).
    env["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"] = "600"
    airflow = str(Path(sys.executable).with_name("airflow"))
    started = time.perf_counter()
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    services = AirflowServices(env, airflow, home / "services", components(cpu_concurrency=2, gpu_concurrency=1))
    with ThreadPoolExecutor(1) as background:
        try:
            services.start()
            sessions = services.pids()  # each component leads a session of its own
            api = AirflowApi(services.url, "admin", services.password)
            # The pool classify asks for (deploy/compose.yaml's init job makes it with the CLI).
            api.post("/api/v2/pools", {"name": "gpu", "slots": 1, "description": "classify on the gpu workers"})
            api.wait_for_dags([DAG], timeout_s=240)
            run = api.trigger(DAG, "2026-04-01T00:00:00Z", options)
            # Meanwhile the same stages in process (the embedded way), into another store.
            reference = background.submit(_in_process, config_path, tmp_path / "in-process", tiles, options)
            with _TaskPriorities(sessions.values()) as priorities:
                assert api.wait_for_run(DAG, run, timeout_s=900) == "success"
            # The task runners run below the pool processes that start and supervise them
            # (celery_settings.TASK_NICENESS); those keep the workers' priority.
            assert priorities.tasks and set(priorities.tasks.values()) == {TASK_NICENESS}, priorities.tasks
            assert set(priorities.supervisors.values()) == {0}, priorities.supervisors
            seconds = time.perf_counter() - started
            tis = api.task_instances(DAG, run)
            celery = _records(config_path, tiles)
            # Only the API server listens, on the loopback (no worker or scheduler log server).
            assert _listening(session_processes(sessions.values())) == {("127.0.0.1", port)}

            # drills.noop_stages (the scheduler benchmark's switch, read by each task): two other
            # tiles run through the same deployment, and nothing but the plan is written.
            _config(config_path, home / "store", noop=True)
            noop_tiles = _demo_tiles(4)[2:]
            noop_run = api.trigger(DAG, "2026-04-02T00:00:00Z", {"only_tiles": noop_tiles})
            assert api.wait_for_run(DAG, noop_run, timeout_s=900) == "success"
            noop_tis = api.task_instances(DAG, noop_run)
        finally:
            services.stop()
        assert not session_processes(sessions.values()), "processes of the deployment outlived its stop"
        in_process = reference.result()

    ran = [ti for ti in tis if ti["state"] == "success"]
    classify = [ti for ti in ran if ti["task_id"] == "tile.classify"]
    assert sorted(ti["rendered_map_index"] for ti in classify) == sorted(tiles)
    assert {(ti["queue"], ti["pool"], ti["hostname"].split("@")[0]) for ti in classify} == {("gpu", "gpu", "gpu")}
    others = [ti for ti in ran if ti["task_id"] != "tile.classify"]
    assert {(ti["queue"], ti["hostname"].split("@")[0]) for ti in others} == {("cpu", "cpu")}
    # Every stage of the PU ran (its product tiles wait for DEMO2, which did not run).
    assert {name for name, _ in in_process} <= {ti["task_id"].removeprefix("tile.") for ti in ran}
    figure(f"Celery deployment (PostgreSQL, Redis, cpu and gpu workers): a two-tile DEMO1 run in {seconds:.0f} s "
           f"from migration to success, {len(ran)} task instances")

    # Byte-identical outputs: the Celery run's records against the in-process run's.
    for key, sums in in_process.items():
        assert celery[key][0] == sums, f"{key[0]} {key[1].describe()}"
    figure(f"Celery deployment: {sum(map(len, in_process.values()))} output files of {len(tiles)} tiles x "
           f"{len(TILE_STAGES)} tile stages and {len(PU_STAGES)} PU stages byte-identical to the in-process run")

    # The no-op run: every tile task succeeded without computing; the first run's records stand.
    bench = _bench_module()
    figures = bench.overhead(noop_tis)
    assert figures["tasks"] == len(TILE_STAGES) * len(noop_tiles), figures
    assert {k: v for k, v in _records(config_path, tiles).items() if k[0] != PLAN_TILES.name} == \
        {k: v for k, v in celery.items() if k[0] != PLAN_TILES.name}
    work = Path(load_config(config_path).store.work.removeprefix("file://"))
    assert not [path for tile in noop_tiles for path in work.rglob(f"*{tile}*")]
    q = figures["queued_to_running"]
    figure(f"Celery deployment, drills.noop_stages: {figures['tasks']} tile tasks, queued->running median "
           f"{q['median']:.2f} s, max {q['max']:.2f} s (scripts/bench_scheduler.py for 100 tiles in flight)")


PU_STAGES = (PLAN_TILES, *PU_JOIN, *PU_BLEND)


def _in_process(config_path: Path, root: Path, tiles: list[str], options: dict) -> dict:
    """Every stage of the run by ``run_stage`` into a work store under ``root``: the sha256 of each
    stage record's files."""
    config = load_config(config_path).for_layout("demo")
    config = config.model_copy(update={"store": config.store.model_copy(update={"work": root.as_uri()})})
    out = {}
    for stage, target in _stage_targets(tiles):
        run_stage(stage, config, target, options=options)
        out[(stage.name, target)] = {name: f["sha256"] for name, f in stage_record(config, stage, target).files.items()}
    return out


def _records(config_path: Path, tiles: list[str]) -> dict:
    """The Celery store's records of the run: sha256 of each file and the commit time."""
    config = load_config(config_path).for_layout("demo")
    out = {}
    for stage, target in _stage_targets(tiles):
        record = stage_record(config, stage, target)
        out[(stage.name, target)] = ({name: f["sha256"] for name, f in record.files.items()}, record.created)
    return out


def _stage_targets(tiles: list[str]) -> list:
    """The run's stages and targets in data order (the plan, the tiles, then the PU's stages)."""
    return [(PLAN_TILES, Target("demo", 2025, "DEMO1"))] + \
        [(s, Target("demo", 2025, "DEMO1", t)) for t in tiles for s in TILE_STAGES] + \
        [(s, Target("demo", 2025, "DEMO1")) for s in (*PU_JOIN, *PU_BLEND)]


def _bench_module():
    """scripts/bench_scheduler.py, whose figures the no-op run is measured with."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scheduler", REPO / "scripts" / "bench_scheduler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_tiles(count: int = 2) -> list[str]:
    from clcplus_ops.geo.tile_index import tile_index

    config = load_config()
    return tile_index(config.layout_path("demo"), config.for_layout("demo").grid)["DEMO1"][:count]
