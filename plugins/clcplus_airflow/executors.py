"""The embedded deployment's executor: Airflow's LocalExecutor whose worker processes have
imported what the DAG files import (``clcplus_ops.distributed.PRELOAD``, as the Celery workers
do) before they fork the task processes.

The LocalExecutor forks its workers from the scheduler when it starts, and each worker forks a
task process per task, which parses its DAG file. Without the modules in memory every task
process imports them itself: about 3 CPU s per task, more than most tile stages of the demo
compute. Imported here once, in the scheduler, every worker and task process shares them.

Named ``LocalExecutor`` like its base: Airflow tells a local deployment from a production one by
the executor's class name (the simple auth manager warns otherwise)."""

from __future__ import annotations

import importlib

from airflow.executors import local_executor


class LocalExecutor(local_executor.LocalExecutor):
    """LocalExecutor with the DAG files' modules imported before its workers are forked."""

    def start(self) -> None:
        from clcplus_ops.distributed import PRELOAD

        for module in PRELOAD:
            importlib.import_module(module)
        super().start()
