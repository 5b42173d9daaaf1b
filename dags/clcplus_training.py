"""Airflow DAGs of the training side: one per layout (``clcplus_training`` for the production
layout, ``clcplus_training_demo`` for the demo).

For each production unit picked in the params, a mapped task group runs
extract ► audit ► expert review ► apply review ► evaluate ► final fit ► register.
The expert review is Airflow's human-in-the-loop operator: the request shows up under
"Required actions" with the audit's numbers and where the flagged samples are; the expert
accepts the suggested labels, keeps the given ones, or supplies decisions (a CSV URL in the
store, or the CSV pasted into the form). Tasks call ``clcplus_ops.model.stages``; no science
here.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import DAG, Param, get_current_context, task, task_group
from clcplus_ops.config import load_config
from clcplus_ops.geo.layout import layout_index

ACCEPT, KEEP, DECISIONS = "Accept suggested labels", "Keep given labels", "Apply uploaded decisions"
CHOICES = {ACCEPT: "accept", KEEP: "keep", DECISIONS: "decisions"}

DOC = """
### CLCplus Backbone model training ({layout} layout)
For each production unit picked: extract the sample time series ► Cleanlab label audit
({rounds} rounds) ► **expert review** (Required actions) ► hold-out evaluation against the targets
(overall accuracy ≥ {oa:.0%}, omission and commission ≤ {om:.0%} per class) ► final fit on all
samples ► register a new model version.

Import samples first with `clcplus samples import FILE`. The review offers: *{accept}*,
*{keep}*, or *{decisions}* (columns `sample_id, decision, label, comment`; decision is relabel,
keep or exclude; start from the `decisions_template.csv` the audit writes).
"""

# Rendered per mapped PU: that PU's audit summary.
_AUDIT = ("{% set a = ti.xcom_pull(task_ids=task.task_id.replace('expert_review', 'audit'), "
          "map_indexes=ti.map_index) %}")
SUBJECT = _AUDIT + "Label audit {{ a.pu_id }} {{ a.reference_year }}: {{ a.flagged }} of {{ a.samples }} samples flagged"
BODY = _AUDIT + """Cleanlab flagged **{{ a.flagged }}** of {{ a.samples }} samples of production unit
**{{ a.pu_id }}** in all {{ a.rounds }} rounds ({{ a.folds }}-fold cross-prediction each;
flagged per round: {{ a.flagged_per_round | join(', ') }}).

* Flagged samples with evidence (given and suggested label, probabilities, location):
  `{{ a.flagged_csv }}` (also as GeoJSON: `{{ a.flagged_geojson }}`)
* Decisions template: `{{ a.decisions_template }}`

Choose **Accept suggested labels**, **Keep given labels**, or **Apply uploaded decisions**
with a decisions CSV (a URL in the store, or pasted below)."""


def _units(layout: str) -> list[str]:
    return [u["pu_id"] for u in layout_index(load_config().layout_path(layout))]


def build_training_dag(layout: str, dag_id: str) -> DAG:
    config = load_config()
    units = _units(layout)
    t = config.training

    with DAG(
        dag_id=dag_id,
        description=f"CLCplus model training per production unit ({layout} layout)",
        schedule=None,
        start_date=pendulum.datetime(2017, 9, 1, tz="UTC"),
        catchup=False,
        tags=["clcplus", "training", f"layout:{layout}"],
        doc_md=DOC.format(layout=layout, rounds=t.label_audit_rounds, oa=t.target_overall_accuracy,
                          om=t.max_omission, accept=ACCEPT, keep=KEEP, decisions=DECISIONS),
        default_args={"retries": 1, "retry_delay": pendulum.duration(minutes=2)},
        params={
            "production_units": Param(
                units if layout == "demo" else [], type="array", minItems=1, uniqueItems=True,
                items={"type": "string", "enum": units}, title="Production units",
                description="The PUs whose models are trained in this run.",
            ),
            "reference_year": Param(2025, type="integer", minimum=2017, title="Reference year",
                                    description="The year of the Sentinel-2 time series the samples are extracted from."),
            "force": Param(False, type="boolean", title="Redo finished work"),
        },
    ) as dag:

        def _run():
            context = get_current_context()
            params = context["params"]
            return load_config().for_layout(layout), int(params["reference_year"]), bool(params["force"])

        @task
        def production_units() -> list[str]:
            return list(get_current_context()["params"]["production_units"])

        @task_group(group_id="pu")
        def train_unit(pu_id: str):
            @task(map_index_template="{{ pu_id }}")
            def extract(pu_id: str) -> dict:
                from clcplus_ops.model import stages

                get_current_context()["pu_id"] = pu_id
                config, year, force = _run()
                return stages.extract_pu_samples(config, layout, pu_id, year, force=force)

            @task(map_index_template="{{ pu_id }}")
            def audit(extracted: dict) -> dict:
                from clcplus_ops.model import stages

                get_current_context()["pu_id"] = extracted["pu_id"]
                config, year, force = _run()
                return stages.audit_pu_labels(config, extracted["pu_id"], year, force=force)

            review = HITLOperator(
                task_id="expert_review",
                subject=SUBJECT,
                body=BODY,
                options=[ACCEPT, KEEP, DECISIONS],
                params={
                    "decisions_url": Param(None, type=["null", "string"], title="Decisions CSV URL",
                                           description="file:// or s3:// URL of a decisions CSV"),
                    "decisions_csv": Param(None, type=["null", "string"], format="multiline", title="Decisions CSV",
                                           description="or paste the CSV here: sample_id,decision,label,comment"),
                },
                # Unanswered reviews fail after a month (no default: nothing is decided silently).
                response_timeout=timedelta(days=30),
                retries=0,
            )

            @task(map_index_template="{{ pu_id }}")
            def apply_review(audited: dict, answer: dict) -> dict:
                from clcplus_ops.model import stages

                context = get_current_context()
                context["pu_id"] = pu_id = audited["pu_id"]
                config, year, _ = _run()
                choice = CHOICES[answer["chosen_options"][0]]
                given = answer.get("params_input") or {}
                decisions_url = given.get("decisions_url")
                if choice == "decisions" and not decisions_url and given.get("decisions_csv"):
                    decisions_url = stages.store_uploaded_decisions(config, pu_id, year, given["decisions_csv"],
                                                                    context["run_id"])
                reviewer = (answer.get("responded_by_user") or {}).get("name") or "expert"
                return stages.apply_review(config, pu_id, year, choice, decisions_url=decisions_url, reviewer=reviewer)

            @task(map_index_template="{{ pu_id }}")
            def evaluate(reviewed: dict) -> dict:
                from clcplus_ops.model import stages

                get_current_context()["pu_id"] = reviewed["pu_id"]
                config, year, force = _run()
                return stages.evaluate_pu(config, reviewed["pu_id"], year, force=force)

            @task(map_index_template="{{ pu_id }}")
            def final_fit(evaluated: dict) -> dict:
                from clcplus_ops.model import stages

                get_current_context()["pu_id"] = evaluated["pu_id"]
                config, year, force = _run()
                return stages.final_fit_pu(config, evaluated["pu_id"], year, force=force)

            @task(map_index_template="{{ pu_id }}")
            def register(fitted: dict) -> dict:
                from clcplus_ops.model import stages

                get_current_context()["pu_id"] = fitted["pu_id"]
                config, year, _ = _run()
                return stages.register_pu_model(config, fitted["pu_id"], year)

            audited = audit(extract(pu_id))
            audited >> review
            return register(final_fit(evaluate(apply_review(audited, review.output))))

        train_unit.expand(pu_id=production_units())

    return dag


clcplus_training = build_training_dag("production", "clcplus_training")
clcplus_training_demo = build_training_dag("demo", "clcplus_training_demo")
