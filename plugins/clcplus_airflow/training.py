"""What the training DAGs are made of besides the stages: documentation, params, and the expert
review (Airflow's human-in-the-loop operator) whose answer becomes the review stage's options."""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from clcplus_airflow.tasks import TaskRun
from clcplus_ops.config import Config

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

# Rendered per mapped PU: that PU's audit summary (the audit task's output).
_AUDIT = ("{% set a = ti.xcom_pull(task_ids=task.task_id.replace('expert_review', 'audit'), "
          "map_indexes=ti.map_index) %}")
SUBJECT = _AUDIT + "Label audit {{ a.pu_id }} {{ a.reference_year }}: {{ a.flagged }} of {{ a.samples }} samples flagged"
BODY = _AUDIT + """Cleanlab flagged **{{ a.flagged }}** of {{ a.samples }} samples of production unit
**{{ a.pu_id }}** in all {{ a.rounds }} rounds ({{ a.folds }}-fold cross-prediction each;
flagged per round: {{ a.flagged_per_round | join(', ') }}).

* Flagged samples with evidence (given and suggested label, probabilities, location):
  `{{ a.outputs.flagged_csv }}` (also as GeoJSON: `{{ a.outputs.flagged_geojson }}`)
* Decisions template: `{{ a.outputs.decisions_template }}`

Choose **Accept suggested labels**, **Keep given labels**, or **Apply uploaded decisions**
with a decisions CSV (a URL in the store, or pasted below)."""


def training_doc(config: Config, layout: str) -> str:
    t = config.training
    return DOC.format(layout=layout, rounds=t.label_audit_rounds, oa=t.target_overall_accuracy, om=t.max_omission,
                      accept=ACCEPT, keep=KEEP, decisions=DECISIONS)


def training_params(config: Config, layout: str, units: list[str]) -> dict:
    series = config.time_series
    return {
        "production_units": Param(
            units if layout == "demo" else [], type="array", minItems=1, uniqueItems=True,
            items={"type": "string", "enum": units}, title="Production units",
            description="The PUs whose models are trained in this run.",
        ),
        "reference_year": Param(2025, type="integer", minimum=series.first_reference_year,
                                maximum=series.last_reference_year, title="Reference year",
                                description="The year of the Sentinel-2 time series the samples are extracted from."),
        "force": Param(False, type="boolean", title="Redo finished work"),
    }


def expert_review(config: Config) -> HITLOperator:
    """The review request ("Required actions"), showing the audit's numbers and files. Only the
    users in ``training.reviewers`` may answer it: Airflow's API refuses anyone else (403), and
    with none configured the request fails at once rather than wait for an answer nobody may give."""
    reviewers = config.training.reviewers
    # Names as text, never as template code.
    who = "{% raw %}" + ", ".join(reviewers) + "{% endraw %}"
    return HITLOperator(
        task_id="expert_review",
        subject=SUBJECT,
        body=BODY + f"\n\nReviewers (training.reviewers): {who}." if reviewers else BODY,
        options=[ACCEPT, KEEP, DECISIONS],
        params={
            "decisions_url": Param(None, type=["null", "string"], title="Decisions CSV URL",
                                   description="file:// or s3:// URL of a decisions CSV"),
            "decisions_csv": Param(None, type=["null", "string"], format="multiline", title="Decisions CSV",
                                   description="or paste the CSV here: sample_id,decision,label,comment"),
        },
        assigned_users=[{"id": user, "name": user} for user in reviewers] or None,
        pre_execute=_needs_reviewers,
        # Unanswered reviews fail after a month (no default: nothing is decided silently).
        response_timeout=timedelta(days=30),
        retries=0,
    )


def _needs_reviewers(context) -> None:
    """Without configured reviewers Airflow would let any user answer; refuse to ask instead."""
    from airflow.sdk.exceptions import AirflowFailException
    from clcplus_ops.config import load_config

    if not load_config().training.reviewers:
        raise AirflowFailException("no expert may answer the label audit's review: training.reviewers names nobody; "
                                   "name the Airflow users who review in the configuration, then clear this task")


def review_options(answer: dict, run: TaskRun) -> dict:
    """The review stage's options from the expert's answer: the answering user must be one of
    ``training.reviewers`` (checked before anything of the answer is used); decisions pasted
    into the form are kept as a file beside the audit (the audit trail) and given by their URL."""
    from clcplus_ops.model.stages import REVIEW, check_reviewer, store_uploaded_decisions
    from clcplus_ops.runner import checked_target

    # The user id is what Airflow checks against the request's assigned users.
    reviewer = (answer.get("responded_by_user") or {}).get("id")
    target = checked_target(run.config, REVIEW, run.target)  # the ids, before they make a path
    check_reviewer(run.config, target, reviewer)
    choice = CHOICES[answer["chosen_options"][0]]
    given = answer.get("params_input") or {}
    decisions_url = given.get("decisions_url")
    if choice == "decisions" and not decisions_url and given.get("decisions_csv"):
        decisions_url = store_uploaded_decisions(run.config, target.pu_id, target.reference_year,
                                                 given["decisions_csv"], run.context["run_id"], store=run.store)
    return {"choice": choice, "decisions_url": decisions_url, "reviewer": reviewer}
