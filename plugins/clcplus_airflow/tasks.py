"""Airflow tasks made from declared stages.

:func:`stage_task` turns a :class:`~clcplus_ops.stage.Stage` into the task that runs it with
:func:`~clcplus_ops.runner.run_stage`: the target from the task's arguments (PU, tile) and the
run's reference year, ``force`` from the DAG param, options from the DAG params and from an
upstream task's output, pool and queue from the stage's declared resources, the store with the
S3 settings of the Airflow connection. Errors no retry cures (``PermanentError`` and the
stage's ``permanent_errors``) fail the task at once. The task returns the runner's small
summary (never a credential).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk import get_current_context, task
from clcplus_airflow.connections import s3_settings
from clcplus_ops.config import Config, load_config
from clcplus_ops.stage import TILE_SCOPES, Stage, Target
from clcplus_ops.store import Store

log = logging.getLogger(__name__)

# Stages that run for real under ``drills.noop_stages``: the tiles are mapped over the plan it commits.
RUN_WHEN_NOOP = ("plan_tiles",)


def interval_year(context: Mapping[str, Any]) -> int:
    """The reference year of a scheduled run: read from its data interval (the window)."""
    from clcplus_ops import calendar

    return calendar.reference_year(context["data_interval_start"], context["data_interval_end"])


def param_year(context: Mapping[str, Any]) -> int:
    """The reference year given in the ``reference_year`` param (the training DAGs)."""
    return int(context["params"]["reference_year"])


def task_store(config: Config) -> Store:
    """The store of ``config`` with the S3 settings of its Airflow connection."""
    from clcplus_ops.runner import store_for

    return store_for(config, s3_settings(config))


@dataclass(frozen=True)
class TaskRun:
    """What an options or result hook sees of the running task."""

    context: Mapping[str, Any]
    config: Config
    target: Target
    store: Store


def stage_task(stage: Stage, layout: str, config: Config, *, pu_id: str | None = None,
               year: Callable[[Mapping[str, Any]], int] = interval_year,
               options: Callable[[Any, TaskRun], Mapping[str, Any]] | None = None,
               returns: Callable[[dict, TaskRun], Any] | None = None,
               force: bool = True, map_index: str | None = None, **task_kwargs):
    """The Airflow task (a ``@task``-decorated callable) that runs ``stage`` of ``layout``.

    Call it with ``pu_id`` (unless given here), ``tile_id`` for tile stages, and ``given``: an
    upstream output turned into run options by ``options`` (default: taken as they are).
    ``returns`` replaces the summary as the task's result; ``force=False`` ignores the DAG's
    force param (stages that must not repeat their effects); ``map_index`` names the argument
    that labels mapped instances (default ``tile_id`` for tile stages). ``config`` gives the
    task's pool and queue; the run itself loads the configuration afresh."""
    label = map_index or ("tile_id" if stage.scope in TILE_SCOPES else None)
    arguments = {"task_id": stage.name, **stage.resources.placement(config), **task_kwargs}
    if label:
        arguments["map_index_template"] = "{{ %s }}" % label
    fixed_pu = pu_id

    def run(pu_id: str | None = None, tile_id: str | None = None, given: Any = None):
        from airflow.sdk.exceptions import AirflowFailException
        from clcplus_ops.errors import InvalidIdError, PermanentError
        from clcplus_ops.runner import run_stage

        context = get_current_context()
        pu_id = pu_id or fixed_pu
        if label:
            context[label] = {"pu_id": pu_id, "tile_id": tile_id}[label]  # the rendered map index
        params = context["params"]
        run_config = load_config()
        target = Target(layout, year(context), pu_id, tile_id)
        if run_config.drills.noop_stages and stage.name not in RUN_WHEN_NOOP:
            log.warning("%s %s: not run (drills.noop_stages)", stage.name, target.describe())
            return {"target": target.to_dict(), "noop": True}
        store = task_store(run_config.for_layout(layout))
        current = TaskRun(context, run_config.for_layout(layout), target, store)
        run_options = {name: params[name] for name in stage.options if name in params}
        try:
            # The options hook checks what it is given (who answered a review): its refusals
            # are as final as the stage's.
            if given is not None:
                run_options.update(options(given, current) if options else given)
            summary = run_stage(stage, run_config, target, force=force and bool(params.get("force")), store=store,
                                options=run_options)
        except stage.skip_errors as error:  # another run does this work
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(str(error)) from error
        except (PermanentError, InvalidIdError, *stage.permanent_errors) as error:  # no retry cures these
            raise AirflowFailException(str(error)) from error
        if returns is None:
            return summary
        log.info("%s: %s", stage.name, summary)
        return returns(summary, current)

    run.__name__ = run.__qualname__ = stage.name
    run.__doc__ = stage.description or f"the {stage.name} stage"
    return task(run, **arguments)


def planned_tile_ids(summary: dict, run: TaskRun) -> list[str]:
    """The plan stage's result for Airflow: the planned tile ids, which the tile tasks map over
    (Airflow maps only over a task's whole return value), read from the plan it committed."""
    return [t["tile_id"] for t in run.store.read_json(summary["outputs"]["plan"])["tiles"]]


def product_tiles_task(layout: str, pu_id: str):
    """The task that lists the PU's 100 km product tiles whose PUs all have committed layers:
    this run makes those (the others wait for a PU still running; its run will make them). The
    product tile stages map over its result."""

    @task(task_id="ready_product_tiles")
    def ready_product_tiles() -> list[str]:
        from clcplus_ops.products.tiling import layers_not_final, readiness

        context = get_current_context()
        config = load_config().for_layout(layout)
        year = interval_year(context)
        store = task_store(config)
        reasons = {}

        def not_final(pu: str) -> str | None:
            reasons[pu] = layers_not_final(config, layout, year, pu, store)
            return reasons[pu]

        tiles = readiness(config, layout, year, pu_id, not_final)
        for tile in tiles:
            if tile.ready:
                log.info("product tile %s: every PU has final layers (%s): this run makes it", tile.code,
                         ", ".join(tile.pus))
            else:
                log.info("product tile %s: waits for %s; the last of its PUs to finish makes it", tile.code,
                         "; ".join(f"{pu}: {reasons[pu]}" for pu in tile.waiting_for))
        return [tile.code for tile in tiles if tile.ready]

    return ready_product_tiles


def passed_self_check(summary: dict, run: TaskRun) -> dict:
    """The self-check's result for Airflow: a tile that failed fails the task (after its report
    was committed), naming every failed rule; it is not published."""
    from airflow.sdk.exceptions import AirflowFailException

    if not summary.get("passed"):
        raise AirflowFailException(f"product tile {run.target.tile_id} {run.target.reference_year} failed the "
                                   "self-check: " + "; ".join(summary.get("failed", [])))
    return summary
