"""What the production-unit DAGs are made of besides the stages: documentation, params, DAG
arguments from the configuration, and the ``select_model`` task."""

from __future__ import annotations

import calendar as month_names

import pendulum

from airflow.sdk import Param, get_current_context, task
from clcplus_ops.config import Config, load_config

# The run option of the stages that classify with the model select_model picked.
MODEL_OPTION = "model_version"

DOC = """
### CLCplus Backbone production unit {pu_id}: {name}
Layout **{layout}**, {area_km2:,.0f} km², CRS {crs}, {n_tiles} processing tiles of {tile_km:g} km.

Runs once per reference year; the data interval is the acquisition window
(1 {opens} Y-1 to 1 {closes} Y+1) and the reference year is read from it. Trigger with a logical
date after the window closed (e.g. {example_date} for {example_year}).

To re-run some tiles only, pick them in **only_tiles**; finished tiles are skipped anyway
unless **force** is set. Tiles are classified with the PU's latest registered model, or the
version named in **model_version**; a new model re-classifies every tile.
"""


def dag_arguments(config: Config, *, retries: int | None = None) -> dict:
    """Start date, retries and retry delay of a DAG, from ``config.airflow``."""
    settings = config.airflow
    start = settings.start_date
    return {
        "start_date": pendulum.datetime(start.year, start.month, start.day, tz="UTC"),
        "catchup": False,
        "max_active_tasks": settings.max_active_tasks,
        "default_args": {"retries": settings.retries if retries is None else retries,
                         "retry_delay": pendulum.duration(minutes=settings.retry_delay_minutes)},
    }


def pu_doc(config: Config, layout: str, unit: dict, n_tiles: int, tile_km: float) -> str:
    series = config.time_series
    example_year = series.first_biennial_year
    closed = series.window(example_year)[1]
    return DOC.format(layout=layout, n_tiles=n_tiles, tile_km=tile_km,
                      opens=month_names.month_abbr[series.window_start_month],
                      closes=month_names.month_abbr[series.window_end_month], example_date=closed.isoformat(),
                      example_year=example_year, **unit)


def pu_params(pu_id: str, tile_ids: list[str]) -> dict:
    return {
        "only_tiles": Param(
            [], type="array", items={"type": "string", "enum": tile_ids}, uniqueItems=True, title="Only these tiles",
            description=f"Tile ids of {pu_id} to (re)process; empty means all {len(tile_ids)}.",
        ),
        "force": Param(False, type="boolean", title="Redo finished work"),
        "model_version": Param(
            # (?![\s\S]) ends the string in both Python's and the UI's (JavaScript) regexes;
            # Python's $ would let "v0001\n" through.
            "latest", type="string", pattern=r"^(latest|v[0-9]{4,})(?![\s\S])", title="Model version",
            description=f"Registered model of {pu_id} to classify with, e.g. v0003; 'latest' by default.",
        ),
    }


def select_model_task(layout: str, pu_id: str):
    """The task that resolves the PU's model once per run (the ``model_version`` param, else the
    newest registered for the run's reference year), so every tile of the run is classified with
    the same version. A year without a model that fits its time series (2018's +- 6 months make
    73 steps, the other years' 54) fails it at once, without retries, naming the PU and the year;
    the tiles' ingestion goes on."""

    @task
    def select_model() -> dict:
        from airflow.sdk.exceptions import AirflowFailException
        from clcplus_airflow.tasks import interval_year, task_store
        from clcplus_ops.classification.classify import ClassifyError
        from clcplus_ops.classification.classify import select_model as select_registered
        from clcplus_ops.errors import InvalidIdError
        from clcplus_ops.model.registry import ModelNotFoundError

        context = get_current_context()
        version = context["params"]["model_version"]
        year = interval_year(context)
        config = load_config().for_layout(layout)
        if config.drills.noop_stages:  # classify does not run: no model to select
            return {MODEL_OPTION: version, "noop": True}
        try:
            selected = select_registered(config, pu_id, year, None if version == "latest" else version,
                                         task_store(config))
        # Retrying does not register a model, nor mend a malformed version.
        except (ModelNotFoundError, ClassifyError, InvalidIdError) as error:
            raise AirflowFailException(f"PU {pu_id}, reference year {year}: {error} (once a model for {year} is "
                                       f"registered, clear this task)") from error
        return {**selected, MODEL_OPTION: selected["version"]}

    return select_model
