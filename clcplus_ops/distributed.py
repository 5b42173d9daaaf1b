"""The distributed deployment on one machine: Airflow with the CeleryExecutor, its metadata
database and Celery's result backend on PostgreSQL, the Redis broker, and Celery workers for the
queues ``cpu`` (every task by default) and ``gpu`` (classify, through ``inference.airflow_queue``
and ``inference.airflow_pool``). The same settings as ``deploy/compose.yaml``, with the processes
started here by :class:`~clcplus_ops.embedded.AirflowServices` (the test and the scheduler
benchmark). This module only prepares environments and command lines, and the database and
broker keys a deployment owns."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

# The queue of every task whose stage names none ([operators] default_queue), and classify's.
CPU_QUEUE, GPU_QUEUE = "cpu", "gpu"
WORKER_HOSTNAME_ENV = "CLCPLUS_WORKER_HOSTNAME"
# Airflow's Celery settings with the deployment's own (the plugins folder: it imports Airflow).
CELERY_CONFIG_OPTIONS = "clcplus_airflow.celery_settings.CELERY_CONFIG"
# What the DAG files import, imported once by each Celery worker before it forks its pool
# (Airflow preloads its own modules the same way): a task's process, forked from the pool, then
# parses its DAG without importing them again, which costs over a second of CPU and a few
# hundred MB per task otherwise.
PRELOAD = ("clcplus_ops.pipeline", "clcplus_ops.geo.layout", "clcplus_ops.geo.tile_index", "clcplus_timetable",
           "clcplus_airflow.tasks", "clcplus_airflow.production", "clcplus_airflow.neighbours",
           "clcplus_airflow.training")


@dataclass(frozen=True)
class Backends:
    """Where a Celery deployment keeps its state. Several deployments share one PostgreSQL
    server (a database each) and one Redis (a key prefix each: kombu's ``global_keyprefix`` puts
    it before every key and channel of the broker, queues included, so the queues keep their
    names ``cpu`` and ``gpu`` and still meet no other deployment's messages)."""

    postgres: str = "postgresql://postgres@127.0.0.1:5432"  # the server; no database
    redis: str = "redis://127.0.0.1:6379/0"
    database: str = "airflow"
    key_prefix: str = ""

    @property
    def metadata_url(self) -> str:
        return f"{_with_driver(self.postgres)}/{self.database}"

    def reachable(self) -> str | None:
        """Why the servers cannot be used (None when both answer)."""
        for url in (self.postgres, self.redis):
            parts = urlsplit(url)
            try:
                socket.create_connection((parts.hostname, parts.port), timeout=3).close()
            except OSError as error:
                return f"{parts.scheme} at {parts.hostname}:{parts.port} is not reachable ({error})"
        return None


def _with_driver(url: str) -> str:
    """SQLAlchemy's URL of the psycopg2 driver (the one installed)."""
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


MAX_TIS_PER_QUERY = "0"  # see celery_env; deploy/compose.yaml and the Helm values set the same


def celery_env(env: dict[str, str], backends: Backends) -> dict[str, str]:
    """``env`` (see :func:`clcplus_ops.embedded.server_env`: Airflow's processes serving on
    127.0.0.1) turned into a Celery deployment's on ``backends``."""
    out = dict(env)
    # The embedded deployment's SQLite connection arguments mean nothing to psycopg2.
    out.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", None)
    out.update(
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=backends.metadata_url,
        AIRFLOW__CELERY__BROKER_URL=backends.redis,
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+{backends.metadata_url}",
        AIRFLOW__OPERATORS__DEFAULT_QUEUE=CPU_QUEUE,
        AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=CELERY_CONFIG_OPTIONS,
        # A task longer than this is handed to another worker; tile stages take minutes.
        AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT="86400",
        # Task instances the scheduler queues per loop: 0 = [core] parallelism. Airflow's 16 starved
        # the workers with the 138 PU runs active (scripts/soak_scheduler.py: a loop over 35,000
        # task instances takes seconds, so 16 per loop capped the production at 1.4 tasks/s).
        AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY=MAX_TIS_PER_QUERY,
    )
    if backends.key_prefix:
        out["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] = backends.key_prefix
    return out


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the workers started here: the worker's Celery node name
    (``gpu@host``), which task instances record as their ``hostname``. Containers of the compose
    deployment each have a hostname of their own; two workers on one machine need this to tell
    which of them ran a task."""
    return os.environ.get(WORKER_HOSTNAME_ENV) or socket.getfqdn()


def worker(queue: str, concurrency: int) -> tuple[str, list[str], dict[str, str]]:
    """A Celery worker serving ``queue`` as an :class:`~clcplus_ops.embedded.AirflowServices`
    component: ``(name, airflow arguments, extra environment)``. No log server (the API server
    reads the task logs from the shared folder; the worker's would bind every interface)."""
    node = f"{queue}@{socket.getfqdn()}"
    arguments = ["celery", "worker", "--queues", queue, "--concurrency", str(concurrency), "--celery-hostname", node,
                 "--skip-serve-logs", "--without-gossip", "--without-mingle"]
    env = {WORKER_HOSTNAME_ENV: node, "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname"}
    return f"worker-{queue}", arguments, env


def components(cpu_concurrency: int = 2, gpu_concurrency: int = 1) -> list:
    """Airflow's scheduler, DAG processor, triggerer, API server and the two workers."""
    from clcplus_ops.embedded import COMPONENTS

    return [*COMPONENTS, worker(CPU_QUEUE, cpu_concurrency), worker(GPU_QUEUE, gpu_concurrency)]


# --------------------------------------------------------------------------------------------
# What a deployment owns on the shared servers


def create_database(backends: Backends) -> None:
    _admin(backends, f'CREATE DATABASE "{_identifier(backends.database)}"')


def drop_database(backends: Backends) -> None:
    """Drop the deployment's database, closing what still holds a connection to it."""
    _admin(backends, f'DROP DATABASE IF EXISTS "{_identifier(backends.database)}" WITH (FORCE)')


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError(f"not a plain database name: {name!r}")
    return name


def _admin(backends: Backends, statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{backends.postgres}/postgres")
    try:
        connection.autocommit = True  # CREATE/DROP DATABASE run outside a transaction
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def delete_broker_keys(backends: Backends) -> int:
    """Remove the deployment's keys from Redis (those under its prefix); returns how many."""
    import redis

    if not backends.key_prefix:
        raise ValueError("a deployment without a key prefix does not own its broker's keys")
    client = redis.Redis.from_url(backends.redis)
    try:
        keys = list(client.scan_iter(match=f"{backends.key_prefix}*", count=1000))
        return client.delete(*keys) if keys else 0
    finally:
        client.close()


def session_processes(session_ids) -> list[int]:
    """Processes still running in the given sessions. Each component starts a session of its
    own; a task process moves to a process group of its own (Airflow's supervisor) but stays in
    its worker's session, so this finds what stopping the process groups could leave."""
    sessions, found = set(session_ids), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # After the command: state, ppid, pgrp, session.
        if int(fields[3]) in sessions and fields[0] != b"Z":
            found.append(int(entry.name))
    return found
