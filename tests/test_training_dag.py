"""The training DAG under a real Airflow: dag.test() of the demo layout's training for DEMO1,
extract ► audit ► expert review (answered by the test through Airflow's REST API, as the UI
does; an Admin who is not a configured reviewer is refused) ► apply review ► evaluate ► final
fit ► register; then the stages' guards and re-runs."""

from __future__ import annotations

import csv
import datetime as dt
import io
import threading
import time

import pytest

from clcplus_ops.config import load_config
from clcplus_ops.locations import Locations
from clcplus_ops.model import registry, stages
from clcplus_ops.model.sample_db import import_samples, load_sample_db
from clcplus_ops.pipeline import AUDIT, EVALUATE, EXTRACT, FINAL_FIT, REGISTER, REVIEW, TRAINING_STAGES
from clcplus_ops.runner import run_stage, stage_record, store_for
from clcplus_ops.stage import Target
from clcplus_ops.synthetic.samples import expert_decisions
from conftest import dagbag_of_all_layouts

YEAR, PU, DAG_ID = 2025, "DEMO1", "clcplus_training_demo"
TARGET = Target("demo", YEAR, PU)


def output_url(config, stage, name: str) -> str:
    """The URL of a committed output of a training stage of DEMO1 (from its record)."""
    record = stage_record(config, stage, TARGET)
    assert record is not None, f"{stage.name} has not run"
    return Locations(config).resolve(record.outputs[name])


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    bag = dagbag_of_all_layouts()  # the production layout's training DAG too
    assert bag.import_errors == {}
    return bag


def signed_in(app, username: str):
    """A client of Airflow's REST API signed in as ``username`` (an Admin)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    client = TestClient(app)
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role="ADMIN"))
    client.headers["Authorization"] = f"Bearer {token}"
    # The first request in this thread: lazy imports from the answering thread could deadlock.
    assert client.get("/api/v2/dags/~/dagRuns/~/hitlDetails").status_code == 200
    return client


@pytest.fixture(scope="module")
def core_app(dagbag):
    from airflow.api_fastapi.app import create_app

    return create_app("core")


@pytest.fixture(scope="module")
def api(core_app):
    """Airflow's core REST API in-process, signed in as "expert", the configured reviewer."""
    return signed_in(core_app, "expert")


@pytest.fixture(scope="module")
def admin_api(core_app):
    """The same API signed in as "admin": an Admin of the deployment, but not a reviewer."""
    return signed_in(core_app, "admin")


def test_training_dags_take_the_production_units_as_a_param(dagbag):
    from airflow.sdk.definitions.param import ParamValidationError

    dag = dagbag.get_dag("clcplus_training")
    chain = ["extract", "audit", "expert_review", "apply_review", "evaluate", "final_fit", "register"]
    # The chain is made from the declared training stages, with the expert's review before "review".
    assert [s.name for s in TRAINING_STAGES] == ["extract", "audit", "review", "evaluate", "final_fit", "register"]
    assert sorted(t for t in dag.task_ids if t.startswith("pu.")) == sorted(f"pu.{t}" for t in chain)
    for upstream, downstream in zip(chain, chain[1:]):
        assert f"pu.{downstream}" in dag.get_task(f"pu.{upstream}").downstream_task_ids
    assert type(dag.get_task("pu.expert_review")).__name__ == "HITLOperator"
    assert dag.get_task("pu.expert_review").retries == 0
    assert dag.get_task("pu.evaluate").retries == load_config().airflow.training_retries
    assert dag.get_task("pu.register").map_index_template == "{{ pu_id }}"
    units = dag.params.get_param("production_units")
    assert units.resolve(["PU001", "PU002"]) == ["PU001", "PU002"]
    for bad in ([], ["NOPE"], ["PU001", "PU001"]):
        with pytest.raises(ParamValidationError):
            units.resolve(bad)
    demo = dagbag.get_dag(DAG_ID).params.get_param("production_units")
    assert demo.resolve(demo.value) == ["DEMO1", "DEMO2"]


def _truth(world: dict) -> dict[str, dict]:
    return {r["sample_id"]: r for r in csv.DictReader(io.StringIO(store_for(load_config()).read_text(world["samples_csv_url"])))}


def answer_reviews(api, answer, timeout=600, intruder=None):
    """A thread that answers this DAG's pending review requests: answer(detail) -> (option, params).
    With ``intruder`` (a client of another user), that user tries to answer first; their replies
    are kept in ``refused``."""
    errors, answered, refused = [], [], []

    def run():
        deadline = time.monotonic() + timeout
        while not answered and time.monotonic() < deadline:
            pending = api.get("/api/v2/dags/~/dagRuns/~/hitlDetails", params={
                "dag_id_pattern": DAG_ID, "response_received": False, "state": "awaiting_input"}).json()["hitl_details"]
            for detail in pending:
                ti = detail["task_instance"]
                if ti["dag_id"] != DAG_ID:
                    continue
                option, params = answer(detail)
                url = (f"/api/v2/dags/{DAG_ID}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}/"
                       f"{ti['map_index']}/hitlDetails")
                if intruder is not None:
                    refused.append(intruder.patch(url, json={"chosen_options": ["Keep given labels"], "params_input": {}}))
                reply = api.patch(url, json={"chosen_options": [option], "params_input": params})
                if reply.status_code != 200:
                    errors.append(f"{url}: {reply.status_code} {reply.text}")
                answered.append(detail)
            time.sleep(0.5)
        if not answered:
            errors.append(f"no review request within {timeout} s")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors, answered, refused


@pytest.fixture(scope="module")
def trained(dagbag, api, admin_api, demo_world):
    config = load_config().for_layout("demo")  # what the demo training DAG's tasks run with
    store = store_for(config)
    imported = import_samples(store, Locations(config).sample_db, demo_world["samples_csv_url"],
                              created=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    # Other tests (the PU DAG's model) may have imported them and registered a model first.
    assert imported.added + imported.unchanged == load_config().synthetic.n_samples
    versions_before = registry.list_versions(store, Locations(config).models, PU)
    truth = _truth(demo_world)

    def answer(detail):
        flagged = store.read_text(output_url(config, AUDIT, "flagged_csv"))
        decisions = expert_decisions(flagged, store.read_text(demo_world["samples_csv_url"]))
        return "Apply uploaded decisions", {"decisions_url": None, "decisions_csv": decisions}

    thread, errors, answered, refused = answer_reviews(api, answer, intruder=admin_api)
    started = time.perf_counter()
    run = dagbag.get_dag(DAG_ID).test(run_conf={"production_units": [PU], "reference_year": YEAR})
    seconds = time.perf_counter() - started
    thread.join(5)
    assert not errors, errors
    version = registry.resolve_model(store, Locations(config).models, PU).version
    assert version not in versions_before
    return {"run": run, "answered": answered, "seconds": seconds, "config": config, "store": store, "truth": truth,
            "version": version, "refused": refused}


def test_training_dag_runs_every_stage_with_the_expert_review(trained, figure):
    run = trained["run"]
    figure(f"dag.test clcplus_training_demo (DEMO1: extract, 2-round audit, review, evaluate, fit, register): "
           f"{trained['seconds']:.1f} s")
    assert run.state == "success", [(ti.task_id, ti.map_index, ti.state) for ti in run.get_task_instances()]
    states = {ti.task_id: (ti.state, ti.rendered_map_index) for ti in run.get_task_instances()}
    for task_id in ("extract", "audit", "expert_review", "apply_review", "evaluate", "final_fit", "register"):
        assert states[f"pu.{task_id}"][0] == "success"
    assert states["pu.register"][1] == PU
    detail = trained["answered"][0]
    config = trained["config"]
    audit = trained["store"].read_json(output_url(config, AUDIT, "summary"))
    assert detail["subject"] == f"Label audit {PU} {YEAR}: {audit['flagged']} of {audit['samples']} samples flagged"
    assert output_url(config, AUDIT, "flagged_csv") in detail["body"] and audit["rounds"] == 2
    assert output_url(config, AUDIT, "decisions_template") in detail["body"]


def test_only_the_configured_reviewers_may_answer_the_review(trained):
    # The request names the configured reviewers; Airflow refused the Admin who is not one, and
    # the reviewer's answer is the one the review stage applied.
    detail = trained["answered"][0]
    assert load_config().training.reviewers == ("expert",)
    assert detail["assigned_users"] == [{"id": "expert", "name": "expert"}]
    assert "Reviewers (training.reviewers): expert." in detail["body"]
    [refused] = trained["refused"]
    assert refused.status_code == 403, refused.text
    assert "User=admin (id=admin) is not a respondent" in refused.json()["detail"]
    review = trained["store"].read_json(output_url(trained["config"], REVIEW, "review"))
    assert review["choice"] == "decisions" and review["reviewer"] == "expert"


def test_an_answer_by_someone_else_fails_the_review_stage_for_good(trained, tmp_path):
    """Behind Airflow's check, the apply_review task's own: an answer whose user is not (or no
    longer) a reviewer fails it without retries, naming the user and the reviewers; nothing of
    the answer is stored."""
    from airflow.sdk.exceptions import AirflowFailException
    from clcplus_airflow.tasks import TaskRun
    from clcplus_airflow.training import ACCEPT, DECISIONS, _needs_reviewers, review_options

    config, store = trained["config"], trained["store"]
    run = TaskRun({"run_id": "manual__intruder"}, config, TARGET, store)
    pasted = Locations(config).training(YEAR, PU).file("audit", "decisions-manual__intruder.csv")
    answer = {"chosen_options": [DECISIONS], "params_input": {"decisions_csv": "sample_id,decision,label,comment\n"},
              "responded_by_user": {"id": "admin", "name": "admin"}}
    with pytest.raises(stages.TrainingError) as error:
        review_options(answer, run)
    assert "answered by user 'admin'" in str(error.value) and "reviewers are 'expert'" in str(error.value)
    assert not store.exists(pasted)
    with pytest.raises(stages.TrainingError, match="unknown user"):
        review_options({"chosen_options": [ACCEPT], "params_input": {}}, run)
    accepted = review_options({**answer, "responded_by_user": {"id": "expert", "name": "expert"}}, run)
    assert accepted["reviewer"] == "expert" and store.exists(accepted["decisions_url"])
    # The stage refuses it too (the command line's reviewers, or options given by hand).
    with pytest.raises(stages.TrainingError, match="answered by user 'mallory'"):
        run_stage(REVIEW, config, TARGET, store=store, options={"choice": "keep", "reviewer": "mallory"})
    nobody = config.model_copy(update={"training": config.training.model_copy(update={"reviewers": ()})})
    with pytest.raises(stages.TrainingError, match="none is configured"):
        run_stage(REVIEW, nobody, TARGET, store=store, options={"choice": "keep", "reviewer": "expert"})

    # With no reviewer configured, the review request is not even made (Airflow would let
    # anyone answer a request with no assigned users).
    empty = tmp_path / "no-reviewers.yaml"
    empty.write_text("training:\n  reviewers: []\n")
    with pytest.MonkeyPatch.context() as patch:
        from clcplus_ops.config import CONFIG_ENV

        patch.setenv(CONFIG_ENV, str(empty))
        with pytest.raises(AirflowFailException, match="training.reviewers names nobody"):
            _needs_reviewers({})
    _needs_reviewers({})  # the session's configuration names "expert"


def test_review_decisions_became_sample_db_revisions(trained):
    config, store, truth = trained["config"], trained["store"], trained["truth"]
    review = store.read_json(output_url(config, REVIEW, "review"))
    assert review["choice"] == "decisions" and review["reviewer"] == "expert"
    assert review["decisions_url"].endswith(".csv") and store.exists(review["decisions_url"])
    db = load_sample_db(store, Locations(config).sample_db)
    flagged = list(csv.DictReader(io.StringIO(store.read_text(output_url(config, AUDIT, "flagged_csv")))))
    relabelled = [r["sample_id"] for r in flagged if truth[r["sample_id"]]["mislabelled"] == "true"]
    assert relabelled and review["revisions"] == len(relabelled)
    for sid in relabelled:
        history = db.history(sid)
        assert len(history) == 2  # the import, then the review: nothing replaced
        assert int(history.iloc[0]["label"]) == int(truth[sid]["label"])
        assert int(history.iloc[-1]["label"]) == int(truth[sid]["true_label"])
        assert history.iloc[-1]["author"] == "expert"


def test_evaluation_report_and_registered_model(trained):
    config, store = trained["config"], trained["store"]
    accuracy = store.read_json(output_url(config, EVALUATE, "accuracy"))
    assert accuracy["test"] == pytest.approx(0.2 * accuracy["samples"], abs=11)
    assert 0 <= accuracy["accuracy"]["overall_accuracy"] <= 1 and "met" in accuracy["targets"]
    report = store.read_text(output_url(config, EVALUATE, "report"))
    assert "Confusion matrix" in report or "confusion matrix" in report.lower()
    png = store.read_bytes(output_url(config, EVALUATE, "confusion_matrix"))
    assert png.startswith(b"\x89PNG")

    model = registry.resolve_model(store, Locations(config).models, PU)
    assert model.version == trained["version"]
    card = model.card
    assert card["training_data"]["hash"] == accuracy["data_hash"]
    assert card["metrics"]["overall_accuracy"] == accuracy["accuracy"]["overall_accuracy"]
    assert card["configuration"]["training"]["label_audit_rounds"] == 2
    assert card["software"]["torch"] and card["model"]["classes"] == list(range(1, 12))
    from clcplus_ops.model.trainer import TrainedModel

    restored = TrainedModel.from_bytes(registry.read_artefact(store, model, "model.pt"))
    assert restored.arch.channels == 12 and restored.arch.time_steps == 54 and restored.arch.classes == 11


def test_rerunning_stages_skips_and_never_overwrites_a_registered_version(trained):
    config, store = trained["config"], trained["store"]
    assert run_stage(EXTRACT, config, TARGET, store=store)["skipped"]
    assert run_stage(EVALUATE, config, TARGET, store=store)["skipped"]
    assert run_stage(FINAL_FIT, config, TARGET, store=store)["skipped"]
    # Registering the same model again returns its version (the registry now knows it, so the
    # stage runs once more and records that); from then on the stage is current.
    again = run_stage(REGISTER, config, TARGET, store=store)
    assert again["already_registered"] and again["version"] == trained["version"]
    third = run_stage(REGISTER, config, TARGET, store=store)
    assert third["skipped"] and third["version"] == trained["version"]
    forced = run_stage(REGISTER, config, TARGET, store=store, force=True)
    assert forced["already_registered"] and forced["version"] == trained["version"]
    # A new final model (forced refit with another seed) gets the next version; the DAG's stays as it was.
    models = Locations(config).models
    first = registry.resolve_model(store, models, PU, trained["version"])
    before = registry.read_artefact(store, first, "model.pt")
    other = config.model_copy(update={"training": config.training.model_copy(update={"seed": 7})})
    run_stage(EVALUATE, other, TARGET, store=store)
    run_stage(FINAL_FIT, other, TARGET, store=store)
    following = f"v{int(trained['version'][1:]) + 1:04d}"
    assert run_stage(REGISTER, other, TARGET, store=store)["version"] == following
    assert registry.read_artefact(store, first, "model.pt") == before


def test_bad_decisions_are_refused_with_their_lines_and_nothing_is_applied(trained):
    config, store = trained["config"], trained["store"]
    flagged = list(csv.DictReader(io.StringIO(store.read_text(output_url(config, AUDIT, "flagged_csv")))))
    url = Locations(config).training(YEAR, PU).file("audit", "bad-decisions.csv")
    store.write_text(url, "sample_id,decision,label,comment\n"
                          f"{flagged[0]['sample_id']},relabel,14,\n"
                          "nosuchsample,keep,,\n"
                          f"{flagged[0]['sample_id']},maybe,,\n")
    sample_db = Locations(config).sample_db
    batches = len(load_sample_db(store, sample_db).batch_ids)
    review = stage_record(config, REVIEW, TARGET, store)

    def apply(**options):
        return run_stage(REVIEW, config, TARGET, store=store, options={"reviewer": "expert", **options})

    with pytest.raises(stages.TrainingError) as error:
        apply(choice="decisions", decisions_url=url)
    message = str(error.value)
    assert "line 2: relabel needs a class code" in message
    assert "line 3: sample 'nosuchsample' was not flagged" in message
    assert "line 4" in message and "'maybe'" in message
    assert len(load_sample_db(store, sample_db).batch_ids) == batches
    assert stage_record(config, REVIEW, TARGET, store) == review  # the committed review stays as it was
    with pytest.raises(stages.TrainingError, match="not one of"):
        apply(choice="approve")
    with pytest.raises(stages.TrainingError, match="needs the URL"):
        apply(choice="decisions")
