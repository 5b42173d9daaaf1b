"""The Celery settings of the distributed deployment (``[celery] celery_config_options`` names
``CELERY_CONFIG`` here): Airflow's own plus the deployment's. Each worker imports the DAG files'
modules before it forks its pool (``clcplus_ops.distributed.PRELOAD``), makes the result tables
before the fork, opens result-backend connections per result, and runs its task processes below
the pool processes that start and supervise them."""

from __future__ import annotations

import os

from clcplus_ops.distributed import PRELOAD

# The niceness of the task processes a worker's pool forks (task runners and what they start):
# Airflow's own work on the node (the pool processes that start and supervise tasks and send their
# heartbeats, the scheduler and API server where they share it) goes first, so a node full of
# busy tasks still starts the next one at once instead of after a share of every task's time.
# The pool processes and the task processes share a scheduling group (the worker's session, with
# Linux's autogroups), where 100 busy tasks at niceness 19 weigh about 1.5 pool processes at 0.
# The environment variable sets another (0: the pool's own, as Airflow leaves it).
TASK_NICENESS, TASK_NICENESS_ENV = 19, "CLCPLUS_TASK_NICENESS"


def task_niceness() -> int:
    return int(os.environ.get(TASK_NICENESS_ENV, TASK_NICENESS))


def _lower_priority() -> None:
    os.nice(task_niceness())


def _in_pool_process(**_) -> None:
    """Celery's ``worker_process_init``: whatever this pool process forks (the task runner of
    each task it supervises) runs at :func:`task_niceness`; the pool process itself does not."""
    if task_niceness() > 0:
        os.register_at_fork(after_in_child=_lower_priority)


def _in_worker(sender=None, **_) -> None:
    """Celery's ``worker_init`` (a worker's main process, before it forks its pool): the result
    backend's tables are made here, once. Otherwise each pool process makes them on its first task
    (a task's start is recorded there), and a hundred doing so at once collide and retry with
    back-off: the first tasks of a fresh deployment then waited up to 45 s to start."""
    from celery.backends.database import DatabaseBackend

    backend = sender.app.backend
    if isinstance(backend, DatabaseBackend):
        backend.ResultSession().close()


def celery_config() -> dict:
    """Airflow's Celery settings (of this process's configuration) with the deployment's own."""
    from celery.signals import worker_init, worker_process_init
    from sqlalchemy.pool import NullPool

    # Read by each worker (and the scheduler, where the signals never fire) once, at start.
    worker_init.connect(_in_worker, weak=False)
    worker_process_init.connect(_in_pool_process, weak=False)

    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    return {
        **DEFAULT_CELERY_CONFIG,
        "imports": list(PRELOAD),
        # A worker slot opens its connection to the result backend for each result and closes it:
        # held, 100 slots would take all of PostgreSQL's default 100 connections.
        "database_engine_options": {**DEFAULT_CELERY_CONFIG.get("database_engine_options", {}), "poolclass": NullPool},
    }


def __getattr__(name: str):
    # ``[celery] celery_config_options`` names CELERY_CONFIG, which replaces Airflow's defaults
    # whole: it is made when a worker or the scheduler asks for it, from their configuration.
    if name == "CELERY_CONFIG":
        return celery_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
