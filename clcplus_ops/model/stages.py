"""The training stages of one production unit, as the training DAG runs them:

extract ► audit ► review (experts) ► evaluate ► final fit ► register

Each stage reads what the previous one wrote under the PU's training folder
``{work}/{year}/{pu}/training/`` and writes its own outputs there (with a stage record, so a
re-run with the same inputs skips); only small summaries are returned. The sample DB and the
extracted series live under the samples root, registered models under the models root.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

import clcplus_ops
from clcplus_ops.config import Config
from clcplus_ops.geo.layout import load_layout
from clcplus_ops.geo.tiles import buffered_lonlat, tiles_for_pu
from clcplus_ops.model import evaluation, registry
from clcplus_ops.model.audit import audit_labels
from clcplus_ops.model.extraction import SampleSeries, assign_tiles, extract_tile_samples, in_tile, read_series
from clcplus_ops.model.sample_db import SampleDB, add_revisions, load_sample_db
from clcplus_ops.model.trainer import TrainedModel, TrainParams, fit, validation_split, with_epochs
from clcplus_ops.plan import pu_url, store_for
from clcplus_ops.sentinel2 import timeseries
from clcplus_ops.sentinel2.scenes import SceneSource, scene_source
from clcplus_ops.store import Store, fingerprint, join

log = logging.getLogger(__name__)

REVIEW_CHOICES = ("accept", "keep", "decisions")
DECISIONS = ("relabel", "keep", "exclude")


class TrainingError(RuntimeError):
    """A training stage cannot run on what it was given."""


def sample_db_url(config: Config) -> str:
    return join(config.store.samples, "sample_db")


def training_url(config: Config, reference_year: int, pu_id: str, *parts: str) -> str:
    return join(pu_url(config, reference_year, pu_id), "training", *parts)


def _record_url(config: Config, reference_year: int, pu_id: str, stage: str) -> str:
    return training_url(config, reference_year, pu_id, "_records", f"{stage}.json")


def _unit(config: Config, layout: str, pu_id: str):
    units = load_layout(config.layout_path(layout))
    if pu_id not in units:
        raise TrainingError(f"production unit {pu_id!r} is not in the {layout} layout ({sorted(units)})")
    return units[pu_id]


# --------------------------------------------------------------------------------------------
# extract


def extract_pu_samples(
    config: Config, layout: str, pu_id: str, reference_year: int, *, store: Store | None = None,
    source: SceneSource | None = None, force: bool = False,
) -> dict:
    """Series of the PU's active samples (those inside the PU buffered by the PU buffer, so
    neighbouring PUs share their overlap's samples), extracted tile by tile. A tile's series
    file holds all the DB's active samples in the tile, so PUs sharing the tile share the file."""
    store = store or store_for(config)
    grid = config.for_layout(layout).grid
    unit = _unit(config, layout, pu_id)
    db = load_sample_db(store, sample_db_url(config))
    points = db.within(buffered_lonlat(unit.geometry, unit.crs, grid.pu_buffer_m))
    if points.empty:
        raise TrainingError(f"{pu_id}: the sample DB at {sample_db_url(config)} has no active sample inside the "
                            f"PU buffered by {grid.pu_buffer_m:g} m ({len(db)} samples in the DB)")
    tiles = tiles_for_pu(unit, grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m)
    lon, lat = points.geometry.x.to_numpy(), points.geometry.y.to_numpy()
    ids = points["sample_id"].to_numpy()
    chosen = assign_tiles(tiles, lon, lat)
    active = db.within(_lonlat_box(tiles))  # the DB may hold a million samples: only those near the PU
    all_lon, all_lat = active.geometry.x.to_numpy(), active.geometry.y.to_numpy()
    source = source or scene_source(config, reference_year, store)
    parts, per_tile = [], []
    used = sorted(set(chosen[chosen >= 0].tolist()), key=lambda i: tiles[i].tile_id)
    for n, i in enumerate(used, start=1):
        tile = tiles[i]
        members = in_tile(tile, all_lon, all_lat)
        log.info("%s: extracting tile %d/%d %s (%d samples, %d of them this PU's)", pu_id, n, len(used),
                 tile.tile_id, members.sum(), (chosen == i).sum())
        result = extract_tile_samples(config, pu_id, reference_year, tile, list(active["sample_id"].to_numpy()[members]),
                                      all_lon[members], all_lat[members], force=force, store=store, source=source)
        parts.append({"tile_id": tile.tile_id, "url": result["url"], "sample_ids": sorted(ids[chosen == i].tolist())})
        per_tile.append(result)
    manifest = {
        "pu_id": pu_id, "reference_year": reference_year, "layout": layout,
        "samples": int((chosen >= 0).sum()), "outside_tiles": sorted(ids[chosen < 0].tolist()),
        "series": parts,
    }
    url = training_url(config, reference_year, pu_id, "extraction.json")
    store.write_json(url, manifest)
    skipped = sum(r["skipped"] for r in per_tile)
    log.info("%s: %d samples in %d tiles (%d tiles current), %d outside every tile", pu_id, manifest["samples"],
             len(parts), skipped, len(manifest["outside_tiles"]))
    return {"pu_id": pu_id, "samples": manifest["samples"], "tiles": len(parts), "tiles_skipped": skipped,
            "outside_tiles": len(manifest["outside_tiles"]), "manifest": url}


def _lonlat_box(tiles):
    """A lon/lat box around the tiles' outlines, padded so no point at a tile edge is lost."""
    from shapely import union_all
    from shapely.geometry import box

    from clcplus_ops.sentinel2.ingest import footprint_lonlat
    from clcplus_ops.sentinel2.reading import tile_grid

    return box(*union_all([footprint_lonlat(tile_grid(t, 0)) for t in tiles]).buffer(0.01).bounds)


@dataclass
class TrainingTable:
    """The PU's labelled samples with their series, in sample-id order."""

    sample_ids: np.ndarray
    x: np.ndarray          # int16 (samples, features, steps)
    y: np.ndarray          # class codes
    groups: np.ndarray | None
    lon: np.ndarray
    lat: np.ndarray
    data_hash: str
    never_observed: list[str]

    def __len__(self) -> int:
        return len(self.sample_ids)


def load_training_table(config: Config, pu_id: str, reference_year: int, store: Store | None = None) -> TrainingTable:
    """Extracted series joined with the sample DB's current labels (active samples only); samples
    never observed (no valid Sentinel-2 observation) are left out and listed."""
    store = store or store_for(config)
    manifest = store.read_json(training_url(config, reference_year, pu_id, "extraction.json"))
    series = SampleSeries.concat([read_series(store, part["url"]).subset(part["sample_ids"])
                                  for part in manifest["series"]])
    db = load_sample_db(store, sample_db_url(config))
    points = db.active().set_index("sample_id")
    ids = np.asarray(series.sample_ids, dtype=object)
    keep = np.isin(ids, points.index.to_numpy()) & (series.valid_obs > 0)
    never = sorted(ids[np.isin(ids, points.index.to_numpy()) & (series.valid_obs == 0)].tolist())
    order = np.argsort(ids[keep], kind="stable")
    ids, x = ids[keep][order], series.series[keep][order]
    rows = points.loc[ids]
    groups = rows["polygon_id"].to_numpy() if rows["polygon_id"].notna().all() and len(rows) else None
    return TrainingTable(
        sample_ids=ids, x=x, y=rows["label"].to_numpy(np.int64), groups=groups,
        lon=rows.geometry.x.to_numpy(), lat=rows.geometry.y.to_numpy(),
        data_hash=_table_hash(db, ids, x), never_observed=never,
    )


def _table_hash(db: SampleDB, ids: np.ndarray, x: np.ndarray) -> str:
    digest = hashlib.sha256(db.content_hash(list(ids)).encode())
    digest.update(np.ascontiguousarray(x).tobytes())
    return digest.hexdigest()


def _params(config: Config, **overrides: Any) -> TrainParams:
    return TrainParams.from_config(config.training, **overrides)


def _classes(config: Config) -> list[int]:
    return sorted(config.codes.classes)


def _class_name(config: Config, code: int) -> str:
    return config.codes.classes.get(int(code), str(code))


# --------------------------------------------------------------------------------------------
# audit


def audit_pu_labels(config: Config, pu_id: str, reference_year: int, *, store: Store | None = None,
                    force: bool = False) -> dict:
    """Cleanlab label audit over ``training.label_audit_rounds`` rounds; writes the samples
    flagged in every round, with their evidence, for expert review."""
    store = store or store_for(config)
    table = load_training_table(config, pu_id, reference_year, store)
    t = config.training
    params = _params(config, epochs=t.label_audit_epochs or t.epochs)
    key = fingerprint(stage="audit", inputs={"data": table.data_hash},
                      params={"train": params.to_dict(), "rounds": t.label_audit_rounds, "folds": t.label_audit_folds,
                              "filter": t.label_audit_filter},
                      version=clcplus_ops.__version__)
    record_url = _record_url(config, reference_year, pu_id, "audit")
    summary_url = training_url(config, reference_year, pu_id, "audit", "audit.json")
    if not force and store.is_current(record_url, key):
        log.info("%s: label audit is current, skipped", pu_id)
        return {**store.read_json(summary_url), "skipped": True}
    if len(table) < 2 * t.label_audit_folds:
        raise TrainingError(f"{pu_id}: {len(table)} labelled samples are too few for a {t.label_audit_folds}-fold audit")

    result = audit_labels(table.x, table.y, params, classes=_classes(config), rounds=t.label_audit_rounds,
                          folds=t.label_audit_folds, seed=t.seed, groups=table.groups, filter_by=t.label_audit_filter)
    flagged = np.flatnonzero(result.flagged)
    suggested = result.suggested()
    given_p = result.given_label_probability(table.y)
    rows = []
    for i in flagged:
        row = {
            "sample_id": table.sample_ids[i], "lon": round(float(table.lon[i]), 8), "lat": round(float(table.lat[i]), 8),
            "given_label": int(table.y[i]), "given_name": _class_name(config, table.y[i]),
            "suggested_label": int(suggested[i]), "suggested_name": _class_name(config, suggested[i]),
            "given_probability": round(float(given_p[i]), 4),
            "suggested_probability": round(float(result.probabilities[i].max()), 4),
            "rounds_flagged": int(result.times_flagged[i]),
        }
        row.update({f"p{c:02d}": round(float(p), 4) for c, p in zip(result.classes, result.probabilities[i])})
        rows.append(row)
    base = training_url(config, reference_year, pu_id, "audit")
    outputs = {"flagged_csv": join(base, "flagged.csv"), "flagged_geojson": join(base, "flagged.geojson"),
               "decisions_template": join(base, "decisions_template.csv"), "summary": summary_url}
    store.write_text(outputs["flagged_csv"], _csv(rows, _flagged_columns(result.classes)))
    store.write_json(outputs["flagged_geojson"], {
        "type": "FeatureCollection", "name": f"{pu_id}-{reference_year}-label-audit",
        "features": [{"type": "Feature", "id": r["sample_id"], "properties": r,
                      "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]}} for r in rows],
    })
    store.write_text(outputs["decisions_template"], _csv(
        [{"sample_id": r["sample_id"], "given_label": r["given_label"], "suggested_label": r["suggested_label"],
          "decision": "", "label": "", "comment": ""} for r in rows],
        ["sample_id", "given_label", "suggested_label", "decision", "label", "comment"]))
    by_class = pd.Series(table.y[flagged]).value_counts().sort_index()
    summary = {
        "pu_id": pu_id, "reference_year": reference_year, "samples": len(table), "rounds": result.rounds,
        "folds": result.folds, "filter": result.filter_by, "flagged": len(rows), "flagged_per_round": result.flagged_per_round,
        "flagged_by_given_label": {str(k): int(v) for k, v in by_class.items()},
        "never_observed": table.never_observed, "data_hash": table.data_hash,
        "flagged_csv": outputs["flagged_csv"], "flagged_geojson": outputs["flagged_geojson"],
        "decisions_template": outputs["decisions_template"],
    }
    store.write_json(summary_url, summary)
    store.write_record(record_url, stage="audit", fingerprint=key, outputs=outputs,
                       details={"flagged": len(rows), "samples": len(table)})
    log.info("%s: label audit flagged %d of %d samples in all %d rounds (%s)", pu_id, len(rows), len(table),
             result.rounds, outputs["flagged_csv"])
    return {**summary, "skipped": False}


def _flagged_columns(classes) -> list[str]:
    return ["sample_id", "lon", "lat", "given_label", "given_name", "suggested_label", "suggested_name",
            "given_probability", "suggested_probability", "rounds_flagged", *[f"p{c:02d}" for c in classes]]


def _csv(rows: list[Mapping[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# review


def _read_decisions(store: Store, url: str, flagged_ids: set[str], classes: list[int]) -> list[dict]:
    """An expert's decisions file: sample_id, decision (relabel | keep | exclude), label, comment."""
    try:
        text = store.read_text(url)
    except FileNotFoundError:
        raise TrainingError(f"decisions file {url} does not exist") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"sample_id", "decision"} - set(reader.fieldnames or [])
    if missing:
        raise TrainingError(f"decisions file {url}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
    decisions, problems, seen = [], [], set()
    for line, row in enumerate(reader, start=2):
        sid, decision = (row.get("sample_id") or "").strip(), (row.get("decision") or "").strip().lower()
        label_text, comment = (row.get("label") or "").strip(), (row.get("comment") or "").strip()
        if not sid and not decision:
            continue
        if sid not in flagged_ids:
            problems.append(f"line {line}: sample {sid!r} was not flagged by this audit")
        elif sid in seen:
            problems.append(f"line {line}: sample {sid!r} appears twice")
        if decision not in DECISIONS:
            problems.append(f"line {line}: decision {decision!r} is not one of {list(DECISIONS)}")
        label = None
        if decision == "relabel":
            if not label_text.isdigit() or int(label_text) not in classes:
                problems.append(f"line {line}: relabel needs a class code 1..11 in 'label', got {label_text!r}")
            else:
                label = int(label_text)
        seen.add(sid)
        decisions.append({"sample_id": sid, "decision": decision, "label": label, "comment": comment})
    if problems:
        raise TrainingError(f"decisions file {url}: {len(problems)} problem(s), nothing applied:\n  " + "\n  ".join(problems[:20]))
    return decisions


def store_uploaded_decisions(config: Config, pu_id: str, reference_year: int, text: str, run_id: str) -> str:
    """Keep decisions pasted into the review form as a file beside the audit (the audit trail)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    url = training_url(config, reference_year, pu_id, "audit", f"decisions-{safe}.csv")
    store_for(config).write_text(url, text if text.endswith("\n") else text + "\n")
    return url


def apply_review(
    config: Config, pu_id: str, reference_year: int, choice: str, *, decisions_url: str | None = None,
    reviewer: str = "expert", created: datetime | None = None, store: Store | None = None,
) -> dict:
    """Turn the expert review of the flagged samples into sample-DB revisions.

    ``choice``: "accept" (every flagged sample takes its suggested label), "keep" (the given
    labels stay; nothing is revised) or "decisions" (per-sample decisions from the CSV at
    ``decisions_url``: relabel with a label, keep, or exclude from training)."""
    store = store or store_for(config)
    if choice not in REVIEW_CHOICES:
        raise TrainingError(f"review choice {choice!r} is not one of {list(REVIEW_CHOICES)}")
    summary = store.read_json(training_url(config, reference_year, pu_id, "audit", "audit.json"))
    flagged = list(csv.DictReader(io.StringIO(store.read_text(summary["flagged_csv"]))))
    reason = f"label audit {pu_id} {reference_year}"
    if choice == "accept":
        revisions = [{"sample_id": r["sample_id"], "label": int(r["suggested_label"]),
                      "reason": f"{reason}: suggested label accepted"} for r in flagged]
    elif choice == "keep":
        revisions = []
    else:
        if not decisions_url:
            raise TrainingError("review choice 'decisions' needs the URL of a decisions file")
        decisions = _read_decisions(store, decisions_url, {r["sample_id"] for r in flagged}, _classes(config))
        revisions = []
        for d in decisions:
            why = f"{reason}: {d['decision']}" + (f" ({d['comment']})" if d["comment"] else "")
            if d["decision"] == "relabel":
                revisions.append({"sample_id": d["sample_id"], "label": d["label"], "reason": why})
            elif d["decision"] == "exclude":
                revisions.append({"sample_id": d["sample_id"], "status": "excluded", "reason": why})
    result = add_revisions(store, sample_db_url(config), revisions, author=reviewer, created=created) if revisions else None
    review = {
        "pu_id": pu_id, "reference_year": reference_year, "choice": choice, "decisions_url": decisions_url,
        "reviewer": reviewer, "flagged": len(flagged), "revisions": result.revised if result else 0,
        "batch_id": result.batch_id if result else None,
        "reviewed_at": (created or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
    }
    store.write_json(training_url(config, reference_year, pu_id, "review.json"), review)
    log.info("%s: review %r by %s: %d of %d flagged samples revised", pu_id, choice, reviewer, review["revisions"], len(flagged))
    return review


# --------------------------------------------------------------------------------------------
# evaluate


def holdout_split(table: TrainingTable, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices, grouped by polygon where the samples have one (samples of
    a polygon are never on both sides)."""
    if table.groups is None:
        return validation_split(table.y, fraction, seed)  # its "validation" share is the test set
    from sklearn.model_selection import StratifiedGroupKFold

    splits = max(2, int(round(1 / fraction)))
    train, test = next(StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed).split(
        table.y, table.y, table.groups))
    return np.sort(train), np.sort(test)


def evaluate_pu(config: Config, pu_id: str, reference_year: int, *, store: Store | None = None,
                force: bool = False) -> dict:
    """Hold out ``training.holdout_fraction`` of the reviewed samples, train on the rest and
    report accuracy against the targets (JSON, markdown report, confusion-matrix plot)."""
    store = store or store_for(config)
    table = load_training_table(config, pu_id, reference_year, store)
    t = config.training
    params = _params(config)
    key = fingerprint(stage="evaluate", inputs={"data": table.data_hash},
                      params={"train": params.to_dict(), "holdout": t.holdout_fraction,
                              "targets": [t.target_overall_accuracy, t.max_omission, t.max_commission]},
                      version=clcplus_ops.__version__)
    record_url = _record_url(config, reference_year, pu_id, "evaluate")
    base = training_url(config, reference_year, pu_id, "evaluation")
    outputs = {"accuracy": join(base, "accuracy.json"), "report": join(base, "report.md"),
               "confusion_matrix": join(base, "confusion_matrix.png")}
    if not force and store.is_current(record_url, key):
        log.info("%s: evaluation is current, skipped", pu_id)
        return _evaluation_summary(store.read_json(outputs["accuracy"]), skipped=True)

    train, test = holdout_split(table, t.holdout_fraction, t.seed)
    model = fit(table.x[train], table.y[train], params, classes=_classes(config), label=f"{pu_id} hold-out model")
    predicted = model.predict(table.x[test])
    acc = evaluation.accuracy(table.y[test], predicted, _classes(config), config.codes.classes)
    check = evaluation.check_targets(acc, evaluation.Targets.from_config(t))
    result = {
        "pu_id": pu_id, "reference_year": reference_year, "samples": len(table), "train": len(train),
        "test": len(test), "grouped_by_polygon": table.groups is not None, "best_epoch": model.best_epoch,
        "epochs_run": len(model.history), "samples_per_second": round(model.samples_per_second, 1),
        "data_hash": table.data_hash, "accuracy": acc.to_dict(), "targets": check.to_dict(),
        "history": model.history,
    }
    context = {"Production unit": pu_id, "Reference year": str(reference_year),
               "Samples": f"{len(table)} ({len(train)} train, {len(test)} hold-out)",
               "Hold-out": f"stratified {t.holdout_fraction:.0%}" + (", grouped by polygon" if table.groups is not None else ""),
               "Epochs": f"{len(model.history)} run, best {model.best_epoch}"}
    title = f"Hold-out accuracy, {pu_id} {reference_year}"
    store.write_json(outputs["accuracy"], result)
    store.write_text(outputs["report"], evaluation.report_markdown(acc, check, title=title, context=context))
    store.write_bytes(outputs["confusion_matrix"], evaluation.plot_confusion_matrix(acc, title=title))
    store.write_record(record_url, stage="evaluate", fingerprint=key, outputs=outputs,
                       details={"overall_accuracy": acc.overall_accuracy, "targets_met": check.met})
    log.info("%s: hold-out overall accuracy %.1f %%, kappa %.3f; targets %s%s", pu_id, 100 * acc.overall_accuracy,
             acc.kappa, "met" if check.met else "NOT met", "" if check.met else ": " + "; ".join(check.failures))
    return _evaluation_summary(result, skipped=False)


def _evaluation_summary(result: dict, *, skipped: bool) -> dict:
    acc = result["accuracy"]
    return {"pu_id": result["pu_id"], "overall_accuracy": acc["overall_accuracy"], "kappa": acc["kappa"],
            "targets_met": result["targets"]["met"], "failures": result["targets"]["failures"],
            "best_epoch": result["best_epoch"], "test": result["test"], "skipped": skipped}


# --------------------------------------------------------------------------------------------
# final fit and register


def final_fit_pu(config: Config, pu_id: str, reference_year: int, *, store: Store | None = None,
                 force: bool = False) -> dict:
    """Train on all reviewed samples for the best epoch count the hold-out run found."""
    store = store or store_for(config)
    table = load_training_table(config, pu_id, reference_year, store)
    evaluated = store.read_json(training_url(config, reference_year, pu_id, "evaluation", "accuracy.json"))
    if evaluated["data_hash"] != table.data_hash:
        raise TrainingError(f"{pu_id}: the samples changed since the evaluation; evaluate again before the final fit")
    params = with_epochs(_params(config), max(1, int(evaluated["best_epoch"])))
    key = fingerprint(stage="final_fit", inputs={"data": table.data_hash}, params=params.to_dict(),
                      version=clcplus_ops.__version__)
    record_url = _record_url(config, reference_year, pu_id, "final_fit")
    model_url = training_url(config, reference_year, pu_id, "final", "model.pt")
    if not force and store.is_current(record_url, key):
        log.info("%s: final model is current, skipped", pu_id)
        return {"pu_id": pu_id, "model": model_url, "skipped": True}
    model = fit(table.x, table.y, params, classes=_classes(config), label=f"{pu_id} final model")
    store.write_bytes(model_url, model.to_bytes())
    details = {"samples": len(table), "epochs": params.epochs, "samples_per_second": round(model.samples_per_second, 1),
               "train_seconds": round(model.train_seconds, 2)}
    store.write_record(record_url, stage="final_fit", fingerprint=key, outputs={"model": model_url}, details=details)
    log.info("%s: final model trained on %d samples for %d epochs (%.0f samples/s)", pu_id, len(table),
             params.epochs, model.samples_per_second)
    return {"pu_id": pu_id, "model": model_url, "skipped": False, **details}


def register_pu_model(config: Config, pu_id: str, reference_year: int, *, store: Store | None = None,
                      created: datetime | None = None) -> dict:
    """Register the final model with its model card; re-registering the same model returns
    the version it already has (a registered version is never overwritten)."""
    store = store or store_for(config)
    model_bytes = store.read_bytes(training_url(config, reference_year, pu_id, "final", "model.pt"))
    evaluated = store.read_json(training_url(config, reference_year, pu_id, "evaluation", "accuracy.json"))
    model_sha = hashlib.sha256(model_bytes).hexdigest()
    for version in reversed(registry.list_versions(store, config.store.models, pu_id)):
        existing = registry.resolve_model(store, config.store.models, pu_id, version)
        if existing.card["artefacts"].get("model.pt", {}).get("sha256") == model_sha:
            log.info("%s: this model is already registered as %s", pu_id, version)
            return {"pu_id": pu_id, "version": version, "url": existing.url, "already_registered": True}
    model = TrainedModel.from_bytes(model_bytes)
    review_url = training_url(config, reference_year, pu_id, "review.json")
    review = store.read_json(review_url) if store.exists(review_url) else None
    s2 = config.sentinel2
    artefacts = {
        "model.pt": model_bytes,
        "normalisation.json": json.dumps({"features": timeseries.feature_names(s2.bands, s2.indices),
                                          "mean": model.normaliser.mean.tolist(),
                                          "std": model.normaliser.std.tolist()}, indent=1).encode(),
        "accuracy.json": store.read_bytes(training_url(config, reference_year, pu_id, "evaluation", "accuracy.json")),
        "report.md": store.read_bytes(training_url(config, reference_year, pu_id, "evaluation", "report.md")),
        "confusion_matrix.png": store.read_bytes(training_url(config, reference_year, pu_id, "evaluation", "confusion_matrix.png")),
    }
    counts = evaluated["accuracy"]["support"]
    card = {
        "reference_year": reference_year,
        "model": {"architecture": "TempCNN (Pelletier et al. 2019)", **model.arch.to_dict(), "classes": model.classes,
                  "epochs": model.params.epochs, "input": {"features": timeseries.feature_names(s2.bands, s2.indices),
                  "steps": len(config.time_series.steps(reference_year)), "encoding": "int16, value x 10 000"}},
        "training_data": {"samples": evaluated["samples"], "hash": evaluated["data_hash"],
                          "hold_out_samples_per_class": counts, "sample_db": sample_db_url(config),
                          "review": review},
        "metrics": {"overall_accuracy": evaluated["accuracy"]["overall_accuracy"],
                    "kappa": evaluated["accuracy"]["kappa"], "n": evaluated["accuracy"]["n"],
                    "omission": evaluated["accuracy"]["omission"], "commission": evaluated["accuracy"]["commission"],
                    "targets": evaluated["targets"]},
        "configuration": {"training": config.training.model_dump(mode="json"),
                          "sentinel2": {"bands": list(s2.bands), "indices": list(s2.indices)},
                          "time_series": config.time_series.model_dump(mode="json")},
    }
    registered = registry.register_model(store, config.store.models, pu_id, artefacts, card, created=created)
    log.info("%s: registered model %s at %s (hold-out OA %.1f %%)", pu_id, registered.version, registered.url,
             100 * evaluated["accuracy"]["overall_accuracy"])
    return {"pu_id": pu_id, "version": registered.version, "url": registered.url, "already_registered": False}
