"""Airflow DAG factory: one production DAG per production unit (PU).

Builds ``clcplus_pu_<PU id>`` for every PU of the layouts named in ``airflow.layouts``: the
production layout (138 PUs by default) and the demo layout. Each DAG plans the PU's tiles, fans out to one mapped task group per
tile (the map index shows the tile id) made of the declared tile stages
(:data:`clcplus_ops.pipeline.TILE_STAGES`, in order), then joins and runs the PU's stages on the
product grid (:data:`clcplus_ops.pipeline.PU_JOIN`: join, mosaic), waits for the neighbouring PUs'
mosaics without a worker slot (``wait_for_neighbours``, :mod:`clcplus_airflow.neighbours`), then
blends, calibrates against the previous productions, recodes with the rules and makes the layers
(:data:`clcplus_ops.pipeline.PU_BLEND`). It ends with the 100 km product tiles whose PUs all have
layers (``ready_product_tiles``; the last PU to finish makes a tile): one mapped task group per
tile (the map index shows the tile code) of product tile ▸ metadata ▸ STAC ▸ self-check ▸ publish
(:data:`clcplus_ops.pipeline.PRODUCT_TILE_STAGES`). ``select_model`` fixes the
model every tile of the run is classified with. Tasks only run stages
(:mod:`clcplus_airflow.tasks`); only ids and small summaries cross XCom.
"""

from __future__ import annotations

from airflow.sdk import DAG, chain, get_parsing_context, task_group
from clcplus_airflow.production import MODEL_OPTION, dag_arguments, pu_doc, pu_params, select_model_task
from clcplus_airflow.tasks import passed_self_check, planned_tile_ids, product_tiles_task, stage_task
from clcplus_ops.config import Config, load_config
from clcplus_ops.geo.layout import layout_index
from clcplus_ops.geo.tile_index import tile_index
from clcplus_airflow.neighbours import WaitForNeighboursOperator
from clcplus_ops.pipeline import PLAN_TILES, PRODUCT_CHECK, PRODUCT_TILE_STAGES, PU_BLEND, PU_JOIN, TILE_STAGES
from clcplus_timetable import ReferenceYearTimetable


def build_pu_dag(config: Config, layout: str, unit: dict, tile_ids: list[str], tile_km: float) -> DAG:
    pu_id = unit["pu_id"]
    with DAG(
        dag_id=f"clcplus_pu_{pu_id}",
        description=f"CLCplus production unit {pu_id} ({unit['name']})",
        schedule=ReferenceYearTimetable(),
        max_active_runs=1,
        tags=["clcplus", "production-unit", f"layout:{layout}"],
        doc_md=pu_doc(config, layout, unit, len(tile_ids), tile_km),
        params=pu_params(pu_id, tile_ids),
        **dag_arguments(config),
    ) as dag:

        @task_group(group_id="tile")
        def tile(tile_id: str, model: dict):
            # The stages taking a model version (classify) get the run's selected model.
            chain(*(stage_task(stage, layout, config, pu_id=pu_id)(
                tile_id=tile_id, given=model if MODEL_OPTION in stage.options else None) for stage in TILE_STAGES))

        @task_group(group_id="product_tile")
        def product_tile(tile_id: str):
            # A tile claimed by another PU's run skips here (and so does the rest of the group);
            # a tile failing the self-check fails that task and is not published.
            chain(*(stage_task(stage, layout, config, pu_id=pu_id,
                               returns=passed_self_check if stage is PRODUCT_CHECK else None)(tile_id=tile_id)
                    for stage in PRODUCT_TILE_STAGES))

        plan = stage_task(PLAN_TILES, layout, config, pu_id=pu_id, returns=planned_tile_ids)()
        tiles = tile.partial(model=select_model_task(layout, pu_id)()).expand(tile_id=plan)
        wait = WaitForNeighboursOperator(task_id="wait_for_neighbours", layout=layout, pu_id=pu_id)
        ready = product_tiles_task(layout, pu_id)()
        chain(tiles, *(stage_task(stage, layout, config, pu_id=pu_id)() for stage in PU_JOIN), wait,
              *(stage_task(stage, layout, config, pu_id=pu_id)() for stage in PU_BLEND), ready)
        product_tile.expand(tile_id=ready)
    return dag


def _build_all() -> None:
    config = load_config()
    # A task's process parses this file for its own DAG only: building all 140 would cost it
    # seconds and hundreds of MB (Airflow names the DAG while a task's process parses).
    wanted = get_parsing_context().dag_id
    for layout in config.airflow.layouts:
        path = config.layout_path(layout)
        grid = config.for_layout(layout).grid
        tiles = tile_index(path, grid)
        for unit in layout_index(path):
            if wanted and wanted != f"clcplus_pu_{unit['pu_id']}":
                continue
            dag = build_pu_dag(config, layout, unit, tiles[unit["pu_id"]], grid.tile_size_m / 1000)
            globals()[dag.dag_id] = dag


_build_all()
