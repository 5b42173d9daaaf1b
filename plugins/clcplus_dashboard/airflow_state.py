"""Reads a reference year's PU runs, their task instances and the tiles they mapped from
Airflow's metadata database, as the plain rows :mod:`clcplus_ops.dashboard` aggregates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import and_, select

from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from clcplus_ops import calendar
from clcplus_ops.pipeline import PLAN_TILES, PRODUCT_TILE_STAGES, PU_BLEND, PU_JOIN, TILE_STAGES

DAG_PREFIX = "clcplus_pu_"
# The PU DAG's task ids (dags/clcplus_production_units.py): the mapped tile group, the PU's own
# chain, the mapped product tile group.
TILE_GROUP, PRODUCT_GROUP = "tile", "product_tile"
TILE_TASKS = tuple(f"{TILE_GROUP}.{stage.name}" for stage in TILE_STAGES)
PRODUCT_TASKS = tuple(f"{PRODUCT_GROUP}.{stage.name}" for stage in PRODUCT_TILE_STAGES)
READY_PRODUCT_TILES = "ready_product_tiles"
PU_TASKS = (PLAN_TILES.name, "select_model", TILE_GROUP, *(s.name for s in PU_JOIN), "wait_for_neighbours",
            *(s.name for s in PU_BLEND), READY_PRODUCT_TILES, PRODUCT_GROUP)
_CHUNK = 500  # ids per IN clause (SQLite's limit on bound parameters)


def dag_id(pu_id: str) -> str:
    return f"{DAG_PREFIX}{pu_id}"


def year_rows(pu_ids: Iterable[str], year: int, series) -> tuple[list[dict], list[dict], dict, dict]:
    """The runs of reference year ``year`` of the PUs' DAGs, their task instances, and what
    plan_tiles and ready_product_tiles returned in each: (runs, task instances, tile plans,
    product plans), plans keyed by (pu_id, run_id)."""
    by_dag = {dag_id(pu): pu for pu in pu_ids}
    if not by_dag:
        return [], [], {}, {}
    with create_session() as session:
        runs = []
        for chunk in _chunks(sorted(by_dag)):
            query = select(DagRun.id, DagRun.dag_id, DagRun.run_id, DagRun.state, DagRun.start_date, DagRun.end_date,
                           DagRun.queued_at, DagRun.logical_date, DagRun.data_interval_start,
                           DagRun.data_interval_end).where(DagRun.dag_id.in_(chunk))
            for row in session.execute(query):
                if _year_of(row.data_interval_start, row.data_interval_end, series) != year:
                    continue
                runs.append({"id": row.id, "pu_id": by_dag[row.dag_id], "dag_id": row.dag_id, "run_id": row.run_id,
                             "state": str(row.state) if row.state else None, "start_date": row.start_date,
                             "end_date": row.end_date, "queued_at": row.queued_at, "logical_date": row.logical_date})
        ids = [run["id"] for run in runs]
        tis = []
        for chunk in _chunks(ids):
            query = (select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index,
                            TaskInstance._rendered_map_index, TaskInstance.state, TaskInstance.try_number,
                            TaskInstance.start_date, TaskInstance.end_date)
                     .join(DagRun, and_(DagRun.dag_id == TaskInstance.dag_id, DagRun.run_id == TaskInstance.run_id))
                     .where(DagRun.id.in_(chunk)))
            for row in session.execute(query):
                tis.append({"pu_id": by_dag[row.dag_id], "run_id": row.run_id, "task_id": row.task_id,
                            "map_index": row.map_index, "rendered_map_index": row._rendered_map_index,
                            "state": str(row.state) if row.state else None, "try_number": row.try_number,
                            "start_date": row.start_date, "end_date": row.end_date})
        tile_plans, product_plans = {}, {}
        for chunk in _chunks(ids):
            query = select(XComModel).where(XComModel.dag_run_id.in_(chunk), XComModel.key == "return_value",
                                            XComModel.map_index == -1,
                                            XComModel.task_id.in_([PLAN_TILES.name, READY_PRODUCT_TILES]))
            for xcom in session.scalars(query):
                value = XComModel.deserialize_value(xcom)
                if not isinstance(value, list):
                    continue
                plans = tile_plans if xcom.task_id == PLAN_TILES.name else product_plans
                plans[(by_dag[xcom.dag_id], xcom.run_id)] = [str(v) for v in value]
    return runs, tis, tile_plans, product_plans


def run_years(pu_ids: Iterable[str], series) -> dict[int, dt.datetime | None]:
    """The reference years that have PU runs, with the newest run's time (for the default)."""
    years: dict[int, dt.datetime | None] = {}
    dag_ids = sorted(dag_id(pu) for pu in pu_ids)
    with create_session() as session:
        for chunk in _chunks(dag_ids):
            query = select(DagRun.data_interval_start, DagRun.data_interval_end, DagRun.queued_at, DagRun.start_date
                           ).where(DagRun.dag_id.in_(chunk))
            for row in session.execute(query):
                year = _year_of(row.data_interval_start, row.data_interval_end, series)
                if year is None:
                    continue
                when = row.start_date or row.queued_at
                if year not in years or (when and (years[year] is None or when > years[year])):
                    years[year] = when
    return years


def run_year(dag: str, run_id: str, series) -> int | None:
    """The reference year of one run (None when there is no such run or its interval is no window)."""
    with create_session() as session:
        row = session.execute(select(DagRun.data_interval_start, DagRun.data_interval_end)
                              .where(DagRun.dag_id == dag, DagRun.run_id == run_id)).first()
    return _year_of(row.data_interval_start, row.data_interval_end, series) if row else None


def _year_of(start, end, series) -> int | None:
    if start is None or end is None:
        return None
    try:
        return calendar.reference_year(start, end, series)
    except ValueError:  # not an acquisition window (e.g. a run made by hand with another interval)
        return None


def _chunks(values: list, size: int = _CHUNK):
    for i in range(0, len(values), size):
        yield values[i:i + size]
