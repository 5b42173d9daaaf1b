"""TempCNN and its trainer on plain arrays: architecture, cyclic learning rate, early stopping,
determinism, serialisation, the Formosat-2 example of the TempCNN paper, and the label audit;
then the training stages of a PU on the runner (extract ► audit ► review ► evaluate ► final fit
► register) on the session's one-tile synthetic world."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np
import pytest
import torch

from clcplus_ops.config import Config, parse_config
from clcplus_ops.errors import ClcplusError, InvalidIdError, StageInputError
from clcplus_ops.locations import Locations
from clcplus_ops.model import registry
from clcplus_ops.model.audit import audit_labels, flag_label_issues
from clcplus_ops.model.tempcnn import Architecture, TempCNN
from clcplus_ops.model.extraction import EXTRACT_TILE_SAMPLES
from clcplus_ops.model.sample_db import import_samples, load_sample_db
from clcplus_ops.model.stages import (
    AUDIT, EVALUATE, EXTRACT, FINAL_FIT, REGISTER, REVIEW, TrainingError, TrainingTable, holdout_split,
    store_uploaded_decisions,
)
from clcplus_ops.model.trainer import TrainedModel, TrainParams, fit, validation_split
from clcplus_ops.runner import run_stage, stage_record, store_for
from clcplus_ops.stage import Target
from clcplus_ops.synthetic.samples import expert_decisions
from conftest import SHARED, shared_path

FORMOSAT = SHARED / "data" / "timeseries" / "formosat2_tempcnn_example"
TRAINING = Config().training
ATBD = TrainParams.from_config(TRAINING)
SMALL = replace(ATBD, epochs=4, batch_size=32, conv_filters=8, dense_units=16, patience_epochs=10)


def blobs(n_per_class: int = 60, classes=(1, 2, 3, 4), channels: int = 3, steps: int = 12, seed: int = 0):
    """Separable classes: each a distinct temporal profile per channel, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, steps)
    x, y = [], []
    for k, code in enumerate(classes):
        profile = np.stack([np.sin(t + k + c) * 1000 + 500 * k for c in range(channels)])
        x.append(profile + rng.normal(0, 150, (n_per_class, channels, steps)))
        y += [code] * n_per_class
    return np.concatenate(x).astype(np.int16), np.array(y)


def test_tempcnn_has_the_papers_layers_and_counts_its_flops():
    arch = Architecture(channels=12, time_steps=54, classes=11)
    net = TempCNN(arch)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(12, 64, 5), (64, 64, 5), (64, 64, 5)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == 4
    dense = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(64 * 54, 256), (256, 11)]
    assert net.eval()(torch.zeros(7, 12, 54)).shape == (7, 11)
    expected = 2 * 54 * 5 * (12 * 64 + 64 * 64 * 2) + 2 * 64 * 54 * 256 + 2 * 256 * 11
    assert arch.flops_per_sample() == expected
    small = TempCNN(Architecture(channels=3, time_steps=20, classes=4, conv_layers=2, conv_filters=8, kernel_size=3))
    assert small(torch.zeros(2, 3, 20)).shape == (2, 4)


def test_learning_rate_follows_the_triangular2_cycle():
    x, y = blobs(n_per_class=32)
    # 128 samples, batch 32 -> 4 steps per epoch; a cycle of 4 epochs rises for 2 epochs.
    params = replace(SMALL, epochs=8, min_lr=1e-4, max_lr=1e-2, lr_cycle_epochs=4, validation_fraction=0)
    model = fit(x, y, params)
    lr = [h["lr"] for h in model.history]
    assert lr[1] == pytest.approx(1e-2)            # top of the first cycle
    assert lr[3] == pytest.approx(1e-4)            # back at the bottom
    assert lr[5] == pytest.approx(1e-4 + (1e-2 - 1e-4) / 2)  # second peak halved
    assert lr[7] == pytest.approx(1e-4)


def test_early_stopping_keeps_the_best_validation_weights():
    x, y = blobs()
    params = replace(SMALL, epochs=40, patience_epochs=3, max_lr=2e-2)
    model = fit(x, y, params)
    assert len(model.history) < 40
    losses = [h["val_loss"] for h in model.history]
    assert model.best_epoch == 1 + int(np.argmin(losses))
    assert len(model.history) - model.best_epoch == 3
    assert (model.predict(x) == y).mean() > 0.95


def test_training_is_seeded_and_the_model_round_trips_with_its_normalisation():
    x, y = blobs()
    a, b = fit(x, y, SMALL), fit(x, y, SMALL)
    assert a.to_bytes() == b.to_bytes()
    c = fit(x, y, replace(SMALL, seed=1))
    assert c.to_bytes() != a.to_bytes()
    restored = TrainedModel.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(restored.normaliser.mean, a.normaliser.mean)
    np.testing.assert_array_equal(restored.predict_proba(x), a.predict_proba(x))
    assert restored.classes == [1, 2, 3, 4]
    p = a.predict_proba(x)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)


def test_fixed_classes_give_one_output_per_class_even_when_absent():
    x, y = blobs(classes=(2, 5, 7))
    model = fit(x, y, SMALL, classes=range(1, 12))
    assert model.classes == list(range(1, 12)) and model.predict_proba(x[:3]).shape == (3, 11)
    assert set(model.predict(x)) <= {2, 5, 7} or (model.predict(x) == y).mean() > 0.5


def test_bad_tables_are_refused_with_clear_errors():
    x, y = blobs()
    with pytest.raises(ValueError, match="samples, channels, time steps"):
        fit(x[:, 0], y, SMALL)
    with pytest.raises(ValueError, match="labels"):
        fit(x, y[:-1], SMALL)
    with pytest.raises(ValueError, match=r"labels \[9\] are not among the classes"):
        fit(x, np.where(y == 4, 9, y), SMALL, classes=[1, 2, 3, 4])
    model = fit(x, y, SMALL)
    with pytest.raises(ValueError, match="expects"):
        model.predict(x[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        fit(np.full((10, 2, 5), np.nan), np.arange(10) % 2, SMALL)


def test_validation_split_is_stratified_and_keeps_rare_classes():
    y = np.array([1] * 50 + [2] * 10 + [3] * 2 + [4])
    train, val = validation_split(y, 0.2, 0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
    assert np.bincount(y[val], minlength=5).tolist() == [0, 10, 2, 1, 0]


def test_training_config_names_the_schedule_and_refuses_bad_rates():
    from clcplus_ops.config import ConfigError

    params = TrainParams.from_config(parse_config({}).training)
    assert (params.conv_filters, params.kernel_size, params.dense_units, params.conv_layers) == (64, 5, 256, 3)
    # A view of the configuration: every field comes from it, overrides are checked.
    params = TrainParams.from_config(parse_config({"training": {"epochs": 7, "dropout": 0.3}}).training, seed=5)
    assert (params.epochs, params.dropout, params.seed) == (7, 0.3, 5)
    with pytest.raises(TypeError):
        TrainParams()  # no defaults of its own
    with pytest.raises(TypeError, match="no field"):
        TrainParams.from_config(TRAINING, learning_rate=0.1)
    with pytest.raises(ConfigError, match="min_lr"):
        parse_config({"training": {"min_lr": 0.1, "max_lr": 0.01}})
    with pytest.raises(ConfigError, match="kernel_size"):
        parse_config({"training": {"kernel_size": 4}})


def _formosat(name: str):
    table = np.loadtxt(shared_path(*FORMOSAT.relative_to(SHARED).parts, name), delimiter=",")
    # class, polygon id, then 149 dates x (NIR, R, G), date-major
    x = table[:, 2:].reshape(len(table), -1, 3).transpose(0, 2, 1).astype(np.float32)
    return x, table[:, 0].astype(int), table[:, 1].astype(int)


def test_tempcnn_learns_the_formosat2_example_of_the_paper():
    x_train, y_train, _ = _formosat("train_dataset.csv")
    x_test, y_test, _ = _formosat("test_dataset.csv")
    assert x_train.shape == (260, 3, 149) and len(np.unique(y_train)) == 13
    model = fit(x_train, y_train, replace(ATBD, epochs=8, batch_size=32, patience_epochs=8))
    accuracy = (model.predict(x_test) == y_test).mean()
    assert accuracy > 0.45, accuracy  # 13 balanced classes: chance is 7.7 %


def test_cleanlab_filter_finds_flipped_labels_given_good_probabilities():
    rng = np.random.default_rng(0)
    y = np.repeat([1, 2, 3], 100)
    probabilities = np.full((300, 3), 0.05)
    probabilities[np.arange(300), y - 1] = 0.9
    noisy = y.copy()
    flipped = rng.choice(300, 15, replace=False)
    noisy[flipped] = np.where(y[flipped] == 3, 1, y[flipped] + 1)
    issues = flag_label_issues(noisy, probabilities, [1, 2, 3], TRAINING.label_audit_filter)
    assert set(np.flatnonzero(issues)) == set(flipped)


def test_audit_flags_injected_label_noise_over_rounds():
    x, y = blobs(n_per_class=80)
    rng = np.random.default_rng(1)
    noisy = y.copy()
    flipped = rng.choice(len(y), 16, replace=False)
    noisy[flipped] = rng.choice([1, 2, 3, 4], 16)
    noisy[flipped] = np.where(noisy[flipped] == y[flipped], noisy[flipped] % 4 + 1, noisy[flipped])
    progress = []
    result = audit_labels(x, noisy, replace(SMALL, epochs=15, max_lr=2e-2), classes=range(1, 12), rounds=2, folds=3,
                          seed=0, filter_by=TRAINING.label_audit_filter, progress=lambda r, n, k: progress.append((r, n)))
    assert progress == [(1, 2), (2, 2)]
    truth = np.isin(np.arange(len(y)), flipped)
    flagged = result.flagged
    precision = (flagged & truth).sum() / max(flagged.sum(), 1)
    recall = (flagged & truth).sum() / truth.sum()
    assert precision >= 0.7 and recall >= 0.7, (precision, recall)
    assert (result.suggested()[flagged & truth] == y[flagged & truth]).mean() > 0.8
    assert result.probabilities.shape == (len(y), 11)


# ---- the training stages on the runner ---------------------------------------------------------

YEAR, PU = 2025, "DEMO1"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Same code, smaller models: the one-tile world has about 60 samples.
STAGES = {stage.name: stage for stage in (EXTRACT, AUDIT, REVIEW, EVALUATE, FINAL_FIT, REGISTER)}
SMALL_TRAINING = {"epochs": 6, "label_audit_epochs": 4, "label_audit_rounds": 2, "conv_filters": 8, "dense_units": 16,
                  "batch_size": 16, "patience_epochs": 3,
                  "reviewers": ("expert", "second expert")}


@pytest.fixture(scope="module")
def chain(tile_world, tmp_path_factory):
    """The six training stages of DEMO1 run once through the runner, the review answered with
    the synthetic truth's expert decisions (as the training DAG's expert does)."""
    config = tile_world["config"](tmp_path_factory.mktemp("training"), training=SMALL_TRAINING)
    store, locations = store_for(config), Locations(config)
    samples_csv = tile_world["record"]["samples_csv_url"]
    imported = import_samples(store, locations.sample_db, samples_csv, created=T0)
    target = Target("demo", YEAR, PU)
    runs = {"extract": run_stage(EXTRACT, config, target, store=store)}
    runs["audit"] = run_stage(AUDIT, config, target, store=store)
    decisions = expert_decisions(store.read_text(runs["audit"]["outputs"]["flagged_csv"]), store.read_text(samples_csv))
    url = store_uploaded_decisions(config, PU, YEAR, decisions, "manual__2026-01-01T00:00:00+00:00", store=store)
    runs["review"] = run_stage(REVIEW, config, target, store=store,
                               options={"choice": "decisions", "decisions_url": url, "reviewer": "expert"})
    for stage in (EVALUATE, FINAL_FIT, REGISTER):
        runs[stage.name] = run_stage(stage, config, target, store=store)
    truth = {r["sample_id"]: r for r in csv.DictReader(io.StringIO(store.read_text(samples_csv)))}
    return {"config": config, "store": store, "locations": locations, "target": target, "runs": runs,
            "decisions_url": url, "truth": truth, "imported": imported}


def test_training_stages_write_their_outputs_under_the_training_folder(chain):
    config, store, locations, runs = chain["config"], chain["store"], chain["locations"], chain["runs"]
    training = locations.training(YEAR, PU)
    assert [runs[name]["skipped"] for name in runs] == [False] * 6
    expected = {
        "extract": {"manifest": "extraction.json"},
        "audit": {"flagged_csv": "audit/flagged.csv", "flagged_geojson": "audit/flagged.geojson",
                  "decisions_template": "audit/decisions_template.csv", "summary": "audit/audit.json"},
        "review": {"review": "review.json"},
        "evaluate": {"accuracy": "evaluation/accuracy.json", "report": "evaluation/report.md",
                     "confusion_matrix": "evaluation/confusion_matrix.png"},
        "final_fit": {"model": "final/model.pt"},
        "register": {"registration": "registered.json"},
    }
    for name, outputs in expected.items():
        assert runs[name]["outputs"] == {k: training.file(v) for k, v in outputs.items()}, name
        assert all(store.exists(url) for url in runs[name]["outputs"].values())
        record = stage_record(config, STAGES[name], chain["target"], store)
        assert record.outputs == {k: locations.relative(u) for k, u in runs[name]["outputs"].items()}
        assert record.outputs[next(iter(outputs))].startswith(f"work:{YEAR}/{PU}/training/")

    extracted = runs["extract"]
    manifest = store.read_json(extracted["outputs"]["manifest"])
    assert extracted["samples"] == manifest["samples"] >= 40 and extracted["tiles"] == len(manifest["series"]) >= 1
    assert sum(len(p["sample_ids"]) for p in manifest["series"]) == manifest["samples"]
    # Each tile's series file is the tile stage's, under the samples root, shared by the PUs of the tile.
    for part in manifest["series"]:
        tile_record = stage_record(config, EXTRACT_TILE_SAMPLES, Target("demo", YEAR, None, part["tile_id"]), store)
        assert tile_record.outputs["series"] == f"samples:series/{YEAR}/{part['tile_id']}/series.parquet"


def test_audit_summary_holds_what_the_expert_review_shows(chain):
    audit, store = chain["runs"]["audit"], chain["store"]
    # The HITL request's subject and body (dags/clcplus_training.py) are rendered from this summary.
    for key in ("pu_id", "reference_year", "flagged", "samples", "rounds", "folds", "flagged_per_round"):
        assert key in audit, key
    assert (audit["pu_id"], audit["reference_year"], audit["rounds"], audit["folds"]) == (PU, YEAR, 2, 3)
    assert len(audit["flagged_per_round"]) == 2 and audit["samples"] <= chain["runs"]["extract"]["samples"]
    flagged = list(csv.DictReader(io.StringIO(store.read_text(audit["outputs"]["flagged_csv"]))))
    assert len(flagged) == audit["flagged"] <= min(audit["flagged_per_round"])
    assert {r["rounds_flagged"] for r in flagged} <= {"2"}
    geojson = store.read_json(audit["outputs"]["flagged_geojson"])
    assert [f["id"] for f in geojson["features"]] == [r["sample_id"] for r in flagged]
    template = store.read_text(audit["outputs"]["decisions_template"])
    assert template.startswith("sample_id,given_label,suggested_label,decision,label,comment\n")
    summary = store.read_json(audit["outputs"]["summary"])
    assert summary["flagged"] == audit["flagged"] and summary["filter"] == "low_self_confidence"
    assert len(summary["data_hash"]) == 64


def test_review_decisions_became_sample_db_revisions(chain):
    store, truth, review = chain["store"], chain["truth"], chain["runs"]["review"]
    assert review["choice"] == "decisions" and review["reviewer"] == "expert"
    assert review["decisions_url"] == chain["decisions_url"]
    assert chain["decisions_url"] == chain["locations"].training(YEAR, PU).file(
        "audit", "decisions-manual__2026-01-01T00_00_00_00_00.csv")
    flagged = list(csv.DictReader(io.StringIO(store.read_text(chain["runs"]["audit"]["outputs"]["flagged_csv"]))))
    relabelled = [r["sample_id"] for r in flagged if truth[r["sample_id"]]["mislabelled"] == "true"]
    assert review["revisions"] == len(relabelled) and review["flagged"] == len(flagged)
    db = load_sample_db(store, chain["locations"].sample_db)
    for sid in relabelled:
        history = db.history(sid)
        assert len(history) == 2  # the import, then the review: nothing replaced
        assert int(history.iloc[-1]["label"]) == int(truth[sid]["true_label"])
        assert history.iloc[-1]["author"] == "expert"
    written = store.read_json(review["outputs"]["review"])
    assert written["revisions"] == review["revisions"] and written["batch_id"] == review["batch_id"]


def test_evaluation_report_and_registered_model(chain):
    config, store, runs = chain["config"], chain["store"], chain["runs"]
    evaluated = runs["evaluate"]
    for key in ("overall_accuracy", "kappa", "targets_met", "failures", "best_epoch", "test"):
        assert key in evaluated, key
    accuracy = store.read_json(evaluated["outputs"]["accuracy"])
    assert accuracy["test"] == evaluated["test"] == pytest.approx(0.2 * accuracy["samples"], abs=11)
    assert accuracy["accuracy"]["overall_accuracy"] == pytest.approx(evaluated["overall_accuracy"], abs=1e-6)
    assert accuracy["targets"]["targets"] == {"overall_accuracy": 0.9, "max_omission": 0.15, "max_commission": 0.15}
    assert "Confusion matrix" in store.read_text(evaluated["outputs"]["report"])
    assert store.read_bytes(evaluated["outputs"]["confusion_matrix"]).startswith(b"\x89PNG")
    assert runs["final_fit"]["epochs"] == max(1, evaluated["best_epoch"])

    registered = runs["register"]
    assert registered["version"] == "v0001" and not registered["already_registered"]
    assert registered["url"] == chain["locations"].model(PU, "v0001")
    model = registry.resolve_model(store, chain["locations"].models, PU)
    assert model.version == "v0001" and model.url == registered["url"]
    card = model.card
    assert card["training_data"]["hash"] == accuracy["data_hash"]
    assert card["training_data"]["review"]["batch_id"] == runs["review"]["batch_id"]
    assert card["metrics"]["overall_accuracy"] == accuracy["accuracy"]["overall_accuracy"]
    assert card["configuration"]["training"]["label_audit_rounds"] == 2
    weights = registry.read_artefact(store, model, "model.pt")
    assert weights == store.read_bytes(runs["final_fit"]["outputs"]["model"])
    assert store.read_json(registered["outputs"]["registration"])["version"] == "v0001"
    restored = TrainedModel.from_bytes(weights)
    assert (restored.arch.channels, restored.arch.time_steps, restored.arch.classes) == (12, 54, 11)


def test_rerunning_stages_skips_and_never_overwrites_a_registered_version(chain):
    config, store, target = chain["config"], chain["store"], chain["target"]
    extracted = run_stage(EXTRACT, config, target, store=store)
    assert extracted["skipped"] and extracted["samples"] == chain["runs"]["extract"]["samples"]
    # (The audit is not current any more when the review changed labels: it audits the current labels.)
    for stage in (EVALUATE, FINAL_FIT):
        assert run_stage(stage, config, target, store=store)["skipped"], stage.name
    review = run_stage(REVIEW, config, target, store=store,
                       options={"choice": "decisions", "decisions_url": chain["decisions_url"], "reviewer": "expert"})
    assert review["skipped"]  # the same decisions are not applied twice
    # The registry now answers "registered as v0001": the stage says so, then it is current.
    again = run_stage(REGISTER, config, target, store=store)
    assert not again["skipped"] and again["already_registered"] and again["version"] == "v0001"
    assert run_stage(REGISTER, config, target, store=store)["skipped"]
    assert registry.list_versions(store, chain["locations"].models, PU) == ["v0001"]

    # Another seed: a new hold-out run and final model, registered as the next version.
    first = registry.resolve_model(store, chain["locations"].models, PU, "v0001")
    before = registry.read_artefact(store, first, "model.pt")
    other = config.model_copy(update={"training": config.training.model_copy(update={"seed": 7})})
    assert not run_stage(EVALUATE, other, target, store=store)["skipped"]
    assert not run_stage(FINAL_FIT, other, target, store=store)["skipped"]
    following = run_stage(REGISTER, other, target, store=store)
    assert following["version"] == "v0002" and not following["already_registered"]
    assert registry.read_artefact(store, first, "model.pt") == before


def test_bad_decisions_are_refused_with_their_lines_and_nothing_is_applied(chain):
    config, store, target = chain["config"], chain["store"], chain["target"]
    flagged = list(csv.DictReader(io.StringIO(store.read_text(chain["runs"]["audit"]["outputs"]["flagged_csv"]))))
    some = flagged[0]["sample_id"] if flagged else "nosample"
    url = store_uploaded_decisions(config, PU, YEAR, "sample_id,decision,label,comment\n"
                                   f"{some},relabel,14,\n"
                                   "nosuchsample,keep,,\n"
                                   f"{some},maybe,,\n", "bad", store=store)
    batches = len(load_sample_db(store, chain["locations"].sample_db).batch_ids)
    review_record = stage_record(config, REVIEW, target, store)
    with pytest.raises(TrainingError) as error:
        run_stage(REVIEW, config, target, store=store, options={"reviewer": "expert", "choice": "decisions", "decisions_url": url})
    message = str(error.value)
    assert url in message and "nothing applied" in message
    if flagged:
        assert "line 2: relabel needs a class code" in message
    assert "line 3: sample 'nosuchsample' was not flagged" in message
    assert "line 4" in message and "'maybe'" in message
    assert isinstance(error.value, ClcplusError) and TrainingError in REVIEW.permanent_errors
    assert len(load_sample_db(store, chain["locations"].sample_db).batch_ids) == batches
    assert stage_record(config, REVIEW, target, store) == review_record  # the committed review stays as it was
    with pytest.raises(TrainingError, match="not one of"):
        run_stage(REVIEW, config, target, store=store, options={"reviewer": "expert", "choice": "approve"})
    with pytest.raises(TrainingError, match="needs the URL"):
        run_stage(REVIEW, config, target, store=store, options={"reviewer": "expert", "choice": "decisions"})
    with pytest.raises(TrainingError, match="does not exist"):
        run_stage(REVIEW, config, target, store=store,
                  options={"reviewer": "expert", "choice": "decisions", "decisions_url": chain["locations"].training(YEAR, PU).file("none.csv")})


def test_a_review_that_changes_labels_makes_the_evaluation_run_again(chain):
    """The training table's data hash (labels and series) decides whether the evaluation is
    current: accepting suggested labels changes it, keeping the given ones does not."""
    config, store, target = chain["config"], chain["store"], chain["target"]
    run_stage(EVALUATE, config, target, store=store)  # current again for this configuration (a test used seed 7)
    assert run_stage(EVALUATE, config, target, store=store)["skipped"]
    kept = run_stage(REVIEW, config, target, store=store, options={"choice": "keep", "reviewer": "second expert"})
    assert not kept["skipped"] and kept["revisions"] == 0
    assert run_stage(EVALUATE, config, target, store=store)["skipped"]
    db = load_sample_db(store, chain["locations"].sample_db)
    flagged = list(csv.DictReader(io.StringIO(store.read_text(chain["runs"]["audit"]["outputs"]["flagged_csv"]))))
    changes = [r for r in flagged if int(db.points.set_index("sample_id").loc[r["sample_id"], "label"])
               != int(r["suggested_label"])]
    accepted = run_stage(REVIEW, config, target, store=store, options={"choice": "accept", "reviewer": "second expert"})
    assert accepted["revisions"] == len(changes)  # a suggested label that is the current one is no revision
    assert run_stage(EVALUATE, config, target, store=store)["skipped"] == (not changes)


def test_a_unit_without_samples_or_unknown_fails_with_a_clear_message(tile_world, tmp_path):
    config = tile_world["config"](tmp_path)
    with pytest.raises(TrainingError, match="no active sample inside the PU"):
        run_stage(EXTRACT, config, Target("demo", YEAR, "DEMO2"))
    with pytest.raises(InvalidIdError, match="not in the demo layout"):
        run_stage(EXTRACT, config, Target("demo", YEAR, "NOPE"))
    with pytest.raises(StageInputError, match="run extract first"):
        run_stage(AUDIT, config, Target("demo", YEAR, "DEMO2"))


def test_holdout_is_stratified_and_keeps_polygons_on_one_side():
    y = np.repeat(np.arange(1, 6), 40)
    groups = np.array([f"poly{i // 4}" for i in range(len(y))])  # 4 samples per polygon, one class each
    table = TrainingTable(sample_ids=np.arange(len(y)).astype(str), x=np.zeros((len(y), 1, 1), np.int16), y=y,
                          groups=groups, lon=np.zeros(len(y)), lat=np.zeros(len(y)), data_hash="", never_observed=[])
    train, test = holdout_split(table, 0.2, 0)
    assert not set(groups[train]) & set(groups[test])
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    assert np.bincount(y[test], minlength=6)[1:].tolist() == [8] * 5
    ungrouped = TrainingTable(**{**table.__dict__, "groups": None})
    train, test = holdout_split(ungrouped, 0.2, 0)
    assert len(test) == 40 and np.bincount(y[test], minlength=6)[1:].tolist() == [8] * 5


def test_the_stage_catalogue_does_not_import_torch():
    """The DAG files import the catalogue at parse time."""
    code = "import sys, clcplus_ops.model.stages; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
