"""Airflow DAGs of the training side: one per layout named in ``airflow.layouts``
(``clcplus_training`` for the production layout, ``clcplus_training_demo`` for the demo).

For each production unit picked in the params, a mapped task group runs the declared training
stages (:data:`clcplus_ops.pipeline.TRAINING_STAGES`): extract ► audit ► expert review ► apply
review ► evaluate ► final fit ► register. The expert review is Airflow's human-in-the-loop
operator (:mod:`clcplus_airflow.training`): the request shows up under "Required actions" with
the audit's numbers and where the flagged samples are; the answer becomes the review stage's
options. Tasks only run stages; no science here.
"""

from __future__ import annotations

from functools import partial

from airflow.sdk import DAG, chain, get_current_context, task, task_group
from clcplus_airflow.production import dag_arguments
from clcplus_airflow.tasks import param_year, stage_task
from clcplus_airflow.training import expert_review, review_options, training_doc, training_params
from clcplus_ops.config import load_config
from clcplus_ops.geo.layout import layout_index
from clcplus_ops.pipeline import AUDIT, EVALUATE, EXTRACT, FINAL_FIT, REGISTER, REVIEW


def build_training_dag(layout: str, dag_id: str) -> DAG:
    config = load_config()
    units = [u["pu_id"] for u in layout_index(config.layout_path(layout))]

    with DAG(
        dag_id=dag_id,
        description=f"CLCplus model training per production unit ({layout} layout)",
        schedule=None,
        tags=["clcplus", "training", f"layout:{layout}"],
        doc_md=training_doc(config, layout),
        params=training_params(config, layout, units),
        **dag_arguments(config, retries=config.airflow.training_retries),
    ) as dag:

        @task
        def production_units() -> list[str]:
            return list(get_current_context()["params"]["production_units"])

        @task_group(group_id="pu")
        def train_unit(pu_id: str):
            stage = partial(stage_task, layout=layout, config=config, year=param_year, map_index="pu_id")
            review = expert_review(config)
            # The review and the registration are not repeated by force: they would add revisions
            # to the sample DB again, or register the same model again.
            applied = stage(REVIEW, task_id="apply_review", options=review_options, force=False)(
                pu_id=pu_id, given=review.output)
            chain(stage(EXTRACT)(pu_id=pu_id), stage(AUDIT)(pu_id=pu_id), review, applied,
                  *(stage(s, force=s is not REGISTER)(pu_id=pu_id) for s in (EVALUATE, FINAL_FIT, REGISTER)))

        train_unit.expand(pu_id=production_units())

    return dag


for _layout in load_config().airflow.layouts:
    _dag = build_training_dag(_layout, "clcplus_training" if _layout == "production" else f"clcplus_training_{_layout}")
    globals()[_dag.dag_id] = _dag
