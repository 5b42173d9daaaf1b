"""Airflow DAG factory: one production DAG per production unit (PU).

Builds ``clcplus_pu_<PU id>`` for every PU of the configured production layout (138 by default)
and of the demo layout. Each DAG plans the PU's 25 km tiles, fans out to one mapped task group
per tile (the map index shows the tile id: define the tile, ingest its Sentinel-2 time series,
classify it with the PU's registered model, filter the probabilities), then joins. Tasks call
``clcplus_ops`` stages; only tile ids and small dicts cross XCom. No science here.
"""

from __future__ import annotations

import pendulum

from airflow.sdk import DAG, Param, get_current_context, task, task_group
from clcplus_ops.config import Config, load_config
from clcplus_ops.geo.layout import layout_index
from clcplus_ops.geo.tile_index import tile_index
from clcplus_timetable import ReferenceYearTimetable

DOC = """
### CLCplus Backbone production unit {pu_id}: {name}
Layout **{layout}**, {area_km2:,.0f} km², CRS {crs}, {n_tiles} processing tiles of {tile_km:g} km.

Runs once per reference year; the data interval is the acquisition window
(1 Oct Y-1 to 1 Apr Y+1) and the reference year is read from it. Trigger with a logical date
after the window closed (e.g. 2024-04-01 for 2023, 2019-04-01 for 2018).

To re-run some tiles only, pick them in **only_tiles**; finished tiles are skipped anyway
unless **force** is set. Tiles are classified with the PU's latest registered model, or the
version named in **model_version**; a new model re-classifies every tile.
"""


def _reference_year(context) -> int:
    from clcplus_ops import calendar

    return calendar.reference_year(context["data_interval_start"], context["data_interval_end"])


def _tile_task(layout: str, tile: dict):
    """What every per-tile task starts from: names its map index after the tile and returns
    (the layout's config, the processing tile, the reference year, the force param)."""
    from clcplus_ops.geo.tiles import tile_from_id

    context = get_current_context()
    context["tile_id"] = tile["tile_id"]
    config = load_config().for_layout(layout)
    grid_tile = tile_from_id(tile["tile_id"], config.grid.tile_size_m, config.grid.pixel_size_m)
    return config, grid_tile, _reference_year(context), context["params"]["force"]


def build_pu_dag(config: Config, layout: str, unit: dict, tile_ids: list[str], tile_km: float) -> DAG:
    pu_id = unit["pu_id"]
    # Classification may go to GPU workers: pool and queue come from the configuration.
    placement = {"pool": config.inference.airflow_pool}
    if config.inference.airflow_queue:
        placement["queue"] = config.inference.airflow_queue

    with DAG(
        dag_id=f"clcplus_pu_{pu_id}",
        description=f"CLCplus production unit {pu_id} ({unit['name']})",
        schedule=ReferenceYearTimetable(),
        start_date=pendulum.datetime(2017, 9, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=["clcplus", "production-unit", f"layout:{layout}"],
        doc_md=DOC.format(layout=layout, n_tiles=len(tile_ids), tile_km=tile_km, **unit),
        default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2)},
        params={
            "only_tiles": Param(
                [],
                type="array",
                items={"type": "string", "enum": tile_ids},
                uniqueItems=True,
                title="Only these tiles",
                description=f"Tile ids of {pu_id} to (re)process; empty means all {len(tile_ids)}.",
            ),
            "force": Param(False, type="boolean", title="Redo finished work"),
            "model_version": Param(
                "latest",
                type="string",
                pattern=r"^(latest|v[0-9]{4,})$",
                title="Model version",
                description=f"Registered model of {pu_id} to classify with, e.g. v0003; 'latest' by default.",
            ),
        },
    ) as dag:

        @task
        def plan_tiles() -> list[dict]:
            from clcplus_ops import plan

            context = get_current_context()
            config = load_config()
            only = context["params"]["only_tiles"]
            return plan.plan_tiles(config, layout, pu_id, _reference_year(context), only).for_tasks()

        @task
        def select_model() -> dict:
            from airflow.sdk.exceptions import AirflowFailException
            from clcplus_ops.classification.classify import select_model as select_registered
            from clcplus_ops.model.registry import ModelNotFoundError

            version = get_current_context()["params"]["model_version"]
            try:
                return select_registered(load_config().for_layout(layout), pu_id, None if version == "latest" else version)
            except ModelNotFoundError as error:  # retrying does not register a model
                raise AirflowFailException(f"{error}. Register one with the training DAG, then clear this task.") from error

        @task_group(group_id="tile")
        def tile_stages(tile: dict, model: dict):
            @task(map_index_template="{{ tile_id }}")
            def define_tile(tile: dict) -> dict:
                from clcplus_ops import plan

                config, grid_tile, year, force = _tile_task(layout, tile)
                return plan.define_tile(config, pu_id, year, grid_tile, force=force)

            @task(map_index_template="{{ tile_id }}")
            def ingest(tile: dict) -> dict:
                from airflow.sdk.exceptions import AirflowFailException
                from clcplus_ops.sentinel2.ingest import NoScenesError, ingest_tile

                config, grid_tile, year, force = _tile_task(layout, tile)
                try:
                    return ingest_tile(config, pu_id, year, grid_tile, force=force)
                except NoScenesError as error:  # no retry brings scenes into the archive
                    raise AirflowFailException(str(error)) from error

            @task(map_index_template="{{ tile_id }}", **placement)
            def classify(tile: dict, model: dict) -> dict:
                from clcplus_ops.classification.classify import classify_tile

                config, grid_tile, year, force = _tile_task(layout, tile)
                return classify_tile(config, pu_id, year, grid_tile, model["version"], force=force)

            @task(task_id="filter", map_index_template="{{ tile_id }}")
            def filter_probabilities(tile: dict) -> dict:
                from clcplus_ops.postprocessing.filtering import filter_tile_probabilities

                config, grid_tile, year, force = _tile_task(layout, tile)
                return filter_tile_probabilities(config, pu_id, year, grid_tile, force=force)

            ingested = ingest(define_tile(tile))
            classified = classify(tile, model)
            ingested >> classified >> filter_probabilities(tile)

        @task
        def join_tiles() -> dict:
            from clcplus_ops import plan

            context = get_current_context()
            return plan.join_tiles(load_config(), pu_id, _reference_year(context))

        tile_stages.partial(model=select_model()).expand(tile=plan_tiles()) >> join_tiles()

    return dag


def _build_all() -> None:
    config = load_config()
    for layout in config.LAYOUTS:
        path = config.layout_path(layout)
        grid = config.for_layout(layout).grid
        tiles = tile_index(path, grid)
        for unit in layout_index(path):
            dag = build_pu_dag(config, layout, unit, tiles[unit["pu_id"]], grid.tile_size_m / 1000)
            globals()[dag.dag_id] = dag


_build_all()
