"""Training-side figures of issue 4, measured in one run on this machine:

1. Label audit on the synthetic world's samples (5 % injected label noise): precision and
   recall of the samples flagged in every one of the 15 rounds, per demo PU and pooled.
2. After an expert review of the flagged samples (the expert knows the truth, as one with VHR
   imagery would), the hold-out accuracy against the targets (OA >= 90 %, omission and
   commission <= 15 % per class), next to the same evaluation before the review.
3. The Formosat-2 example of the TempCNN paper (train/test split as given): TempCNN test
   accuracy next to a random-forest baseline on the same split.
4. Training throughput (samples/s on this machine) of the production TempCNN on 12 x 54
   inputs, against the paper's batch size of 32 as the named baseline, and the projected time
   to train one PU on 100,000 samples.

    .venv/bin/python scripts/bench_training.py [--home /tmp/clcplus-bench/training]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from clcplus_ops.config import load_config
from clcplus_ops.embedded import write_embedded_config
from clcplus_ops.geo.layout import layout_index
from clcplus_ops.locations import Locations
from clcplus_ops.model import stages
from clcplus_ops.model.sample_db import import_samples
from clcplus_ops.model.stages import AUDIT, EVALUATE, EXTRACT, FINAL_FIT, REGISTER, REVIEW
from clcplus_ops.model.trainer import TrainParams, fit
from clcplus_ops.runner import run_stage, store_for
from clcplus_ops.stage import Target
from clcplus_ops.synthetic import build_world
from clcplus_ops.synthetic.samples import expert_decisions

YEAR = 2025
FORMOSAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries" / "formosat2_tempcnn_example"


def synthetic_audit(home: Path) -> None:
    print("== 1-2. Label audit and hold-out accuracy on the synthetic world (demo layout) ==")
    store_root = home / "store"
    for part in ("work", "models", "samples"):  # the world (store/synthetic) is kept and reused
        shutil.rmtree(store_root / part, ignore_errors=True)
    config = load_config(write_embedded_config(home, home / "config.yaml")).for_layout("demo")
    store = store_for(config)
    t = config.training
    started = time.perf_counter()
    world = build_world(config, YEAR)
    print(f"world {YEAR}: {'reused' if world['skipped'] else 'built'} in {time.perf_counter() - started:.0f} s")
    import_samples(store, Locations(config).sample_db, world["samples_csv_url"],
                   created=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    samples_csv = store.read_text(world["samples_csv_url"])
    truth = {r["sample_id"]: r for r in csv.DictReader(io.StringIO(samples_csv))}
    print(f"audit: {t.label_audit_rounds} rounds x {t.label_audit_folds}-fold cross-prediction, filter "
          f"{t.label_audit_filter}, audit models {t.label_audit_epochs or t.epochs} epochs; hold-out and final models up "
          f"to {t.epochs} epochs with early stopping; flagged = flagged in every round")
    pooled = {"flagged": 0, "true_positive": 0, "noisy": 0}
    for pu_id in [u["pu_id"] for u in layout_index(config.layout_path("demo"))]:
        target = Target("demo", YEAR, pu_id)
        t0 = time.perf_counter()
        extracted = run_stage(EXTRACT, config, target, store=store)
        t1 = time.perf_counter()
        before = run_stage(EVALUATE, config, target, store=store)
        audit = run_stage(AUDIT, config, target, store=store)
        t2 = time.perf_counter()
        flagged_csv = store.read_text(audit["outputs"]["flagged_csv"])
        flagged = {r["sample_id"] for r in csv.DictReader(io.StringIO(flagged_csv))}
        table_ids = stages.load_training_table(config, target, store).sample_ids
        noisy = {sid for sid in table_ids if truth[sid]["mislabelled"] == "true"}
        tp = len(flagged & noisy)
        precision, recall = tp / max(len(flagged), 1), tp / max(len(noisy), 1)
        pooled["flagged"] += len(flagged)
        pooled["true_positive"] += tp
        pooled["noisy"] += len(noisy)
        decisions = stages.store_uploaded_decisions(config, pu_id, YEAR, expert_decisions(flagged_csv, samples_csv), "bench",
                                                    store=store)
        review = run_stage(REVIEW, config, target, store=store,
                           options={"choice": "decisions", "decisions_url": decisions, "reviewer": "bench expert"})
        after = run_stage(EVALUATE, config, target, store=store)
        accuracy = store.read_json(after["outputs"]["accuracy"])["accuracy"]
        worst_om = max((v for v in accuracy["omission"].values() if v is not None), default=0)
        worst_com = max((v for v in accuracy["commission"].values() if v is not None), default=0)
        print(f"{pu_id}: {extracted['samples']} samples ({len(noisy)} mislabelled) extracted from {extracted['tiles']} tiles "
              f"in {t1 - t0:.0f} s; audit {t2 - t1:.0f} s")
        print(f"  audit: {len(flagged)} flagged, {tp} of them mislabelled: precision {precision:.1%}, recall {recall:.1%} "
              f"(per round: {audit['flagged_per_round']})")
        print(f"  review: {review['revisions']} relabelled, {len(flagged) - review['revisions']} kept")
        print(f"  hold-out ({after['test']} samples) before review: OA {before['overall_accuracy']:.1%}, targets "
              f"{'met' if before['targets_met'] else 'not met'}; after review: OA {after['overall_accuracy']:.1%}, "
              f"kappa {after['kappa']:.3f}, worst omission {worst_om:.1%}, worst commission {worst_com:.1%}, "
              f"targets {'MET' if after['targets_met'] else 'NOT met: ' + '; '.join(after['failures'])}")
        fitted = run_stage(FINAL_FIT, config, target, store=store)
        registered = run_stage(REGISTER, config, target, store=store)
        print(f"  final model: {fitted['samples']} samples, {fitted['epochs']} epochs (the hold-out run's best); registered {registered['version']} "
              f"at {registered['url']}")
    p = pooled["true_positive"] / max(pooled["flagged"], 1)
    r = pooled["true_positive"] / max(pooled["noisy"], 1)
    print(f"pooled audit: {pooled['flagged']} flagged, {pooled['true_positive']} of {pooled['noisy']} mislabelled found: "
          f"precision {p:.1%}, recall {r:.1%} (targets >= 70 %)")


def _formosat(name: str):
    table = np.loadtxt(FORMOSAT / name, delimiter=",")
    x = table[:, 2:].reshape(len(table), -1, 3).transpose(0, 2, 1).astype(np.float32)
    return x, table[:, 0].astype(int)


def formosat() -> None:
    from sklearn.ensemble import RandomForestClassifier

    print("== 3. Formosat-2 example of the TempCNN paper (train/test split as given) ==")
    x_train, y_train = _formosat("train_dataset.csv")
    x_test, y_test = _formosat("test_dataset.csv")
    print(f"train {x_train.shape}, test {x_test.shape}, {len(np.unique(y_train))} classes")
    configured = TrainParams.from_config(load_config().training)
    for seed in (0, 1, 2):
        t0 = time.perf_counter()
        model = fit(x_train, y_train, replace(configured, batch_size=32, seed=seed))
        oa_cnn = float((model.predict(x_test) == y_test).mean())
        t1 = time.perf_counter()
        forest = RandomForestClassifier(n_estimators=500, random_state=seed, n_jobs=2)
        forest.fit(x_train.reshape(len(x_train), -1), y_train)
        oa_rf = float((forest.predict(x_test.reshape(len(x_test), -1)) == y_test).mean())
        t2 = time.perf_counter()
        print(f"seed {seed}: TempCNN test OA {oa_cnn:.1%} ({len(model.history)} epochs, best {model.best_epoch}, "
              f"{t1 - t0:.0f} s) | random forest (500 trees) test OA {oa_rf:.1%} ({t2 - t1:.1f} s) | "
              f"difference {100 * (oa_cnn - oa_rf):+.1f} points")


def throughput() -> None:
    import torch

    print("== 4. Training throughput of the production TempCNN (12 features x 54 steps, 11 classes) ==")
    rng = np.random.default_rng(0)
    x = rng.integers(-2000, 9000, (20_000, 12, 54)).astype(np.int16)
    y = rng.integers(1, 12, 20_000)
    rates = {}
    configured = TrainParams.from_config(load_config().training)
    for batch in (32, 128):
        model = fit(x, y, replace(configured, epochs=2, batch_size=batch, validation_fraction=0), classes=range(1, 12))
        rates[batch] = model.samples_per_second
        print(f"batch {batch}: {model.samples_per_second:,.0f} samples/s ({torch.get_num_threads()} threads)")
    flops = model.arch.flops_per_sample() * 3  # forward + backward ~ 3 forward passes
    print(f"batch 128 vs the paper's batch 32 (baseline): {rates[128] / rates[32]:.2f}x; "
          f"{rates[128] * flops / 1e9:.1f} GFLOP/s of training")
    config = load_config()
    t = config.training
    n = 100_000
    train_share = (1 - 1 / t.label_audit_folds) * (1 - t.validation_fraction)
    for audit_epochs, epochs, what in ((t.epochs, t.epochs, f"every model {t.epochs} epochs (upper bound)"),
                                       (12, 25, "audit models 12 epochs, others stopping early at 25")):
        audit = t.label_audit_rounds * t.label_audit_folds * n * train_share * audit_epochs / rates[128]
        holdout = n * (1 - t.holdout_fraction) * (1 - t.validation_fraction) * epochs / rates[128]
        final = n * epochs / rates[128]
        print(f"100,000 samples, {what}: final fit {final / 3600:.2f} h; 15-round audit {audit / 3600:.1f} h; "
              f"whole PU (audit + hold-out + final) {(audit + holdout + final) / 3600:.1f} h on these 2 cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="/tmp/clcplus-bench/training")
    parser.add_argument("--skip", nargs="*", default=[], choices=["synthetic", "formosat", "throughput"])
    args = parser.parse_args()
    started = time.perf_counter()
    if "synthetic" not in args.skip:
        synthetic_audit(Path(args.home))
    if "formosat" not in args.skip:
        formosat()
    if "throughput" not in args.skip:
        throughput()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
