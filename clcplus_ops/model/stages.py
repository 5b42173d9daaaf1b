"""The training stages of one production unit, as the training DAG runs them:

extract ► audit ► review (experts) ► evaluate ► final fit ► register

They are declared stages (:mod:`clcplus_ops.stage`) of scope ``training``: their outputs and
records live under the PU's training folder ``{work}/{year}/{pu}/training/``, and
:func:`clcplus_ops.runner.run_stage` runs them (skip when current, atomic commit, record).

* The **reading side** is each stage's ``prepare``: the sample DB, the extracted series of the
  PU's tiles (the *training table*), the decisions file of a review, the model registry. The
  training table's data hash (sample-DB labels and series values) is the identity that decides
  whether audit, evaluation and final fit are current, so a review that changes labels makes
  them run again and one that changes nothing does not.
* The **computation** is the pure functions :func:`~clcplus_ops.model.audit.audit_labels`,
  :func:`~clcplus_ops.model.trainer.fit` and :func:`~clcplus_ops.model.evaluation.accuracy`,
  wired to named outputs.
* **External effects**: extract runs the per-tile sample extraction
  (:data:`~clcplus_ops.model.extraction.EXTRACT_TILE_SAMPLES`, whose series files live under
  the samples root and are shared by the PUs of a tile); review adds revisions to the sample DB;
  register claims a new, immutable version under the models root.

torch is imported only inside the computations (the DAG files import this catalogue at parse
time).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from io import StringIO
from typing import Any

import numpy as np

from clcplus_ops.config import Config
from clcplus_ops.errors import ClcplusError
from clcplus_ops.locations import Locations
from clcplus_ops.model import evaluation
from clcplus_ops.model.extraction import EXTRACT_TILE_SAMPLES
from clcplus_ops.model.sample_db import SampleDB, SampleDBError, load_sample_db
from clcplus_ops.runner import RunContext, checked_target, run_stage, store_for, verify_files
from clcplus_ops.stage import External, Resources, Stage, StageIO, Target
from clcplus_ops.store import Store

log = logging.getLogger(__name__)

REVIEW_CHOICES = ("accept", "keep", "decisions")
DECISIONS = ("relabel", "keep", "exclude")


class TrainingError(ClcplusError):
    """A training stage cannot run on what it was given."""


# Errors no retry cures: bad samples, bad decisions, too few samples.
_PERMANENT = (TrainingError, SampleDBError)
_TRAINING = Resources(memory="large")


def _classes(config: Config) -> list[int]:
    return sorted(config.codes.classes)


def _class_name(config: Config, code: int) -> str:
    return config.codes.classes.get(int(code), str(code))


def _train_params(config: Config, **overrides: Any):
    from clcplus_ops.model.trainer import TrainParams

    return TrainParams.from_config(config.training, **overrides)


# --------------------------------------------------------------------------------------------
# extract


def _lonlat_box(tiles):
    """A lon/lat box around the tiles' outlines, padded so no point at a tile edge is lost."""
    from shapely import union_all
    from shapely.geometry import box

    return box(*union_all([tile.grid(0).footprint_lonlat() for tile in tiles]).buffer(0.01).bounds)


def _extract_prepare(ctx: RunContext) -> External:
    """The PU's active samples (inside the PU buffered by the PU buffer, so neighbouring PUs
    share their overlap's samples), each taken from one of the PU's tiles; every tile holding
    some is brought up to date by the tile stage (its series file holds all the DB's active
    samples in the tile, so PUs sharing a tile share the file). The identity is the manifest:
    which samples the PU takes from which tile; the series values enter the training table's
    data hash."""
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.tiles import buffered_lonlat, tiles_for_pu
    from clcplus_ops.model.extraction import assign_tiles, in_tile, samples_option
    from clcplus_ops.sentinel2.scenes import scene_source

    config, target = ctx.config, ctx.target
    grid = config.grid
    unit = load_layout(config.layout_path(target.layout))[target.pu_id]
    db = load_sample_db(ctx.store, ctx.locations.sample_db)
    points = db.within(buffered_lonlat(unit.geometry, unit.crs, grid.pu_buffer_m))
    if points.empty:
        raise TrainingError(f"{target.pu_id}: the sample DB at {ctx.locations.sample_db} has no active sample inside "
                            f"the PU buffered by {grid.pu_buffer_m:g} m ({len(db)} samples in the DB)")
    tiles = tiles_for_pu(unit, grid.tile_size_m, grid.pu_buffer_m, grid.pixel_size_m)
    lon, lat = points.geometry.x.to_numpy(), points.geometry.y.to_numpy()
    ids = points["sample_id"].to_numpy()
    chosen = assign_tiles(tiles, lon, lat)
    active = db.within(_lonlat_box(tiles))  # the DB may hold a million samples: only those near the PU
    all_ids = active["sample_id"].to_numpy()
    all_lon, all_lat = active.geometry.x.to_numpy(), active.geometry.y.to_numpy()
    used = sorted(set(chosen[chosen >= 0].tolist()), key=lambda i: tiles[i].tile_id)
    # One scene source for all the tiles (a static catalogue is read once).
    source = ctx.options.get("scene_source") or scene_source(config, target.reference_year, ctx.store)
    parts, skipped = [], 0
    for n, i in enumerate(used, start=1):
        tile = tiles[i]
        members = in_tile(tile, all_lon, all_lat)
        log.info("%s: extracting tile %d/%d %s (%d samples, %d of them this PU's)", target.pu_id, n, len(used),
                 tile.tile_id, members.sum(), (chosen == i).sum())
        # No PU in the tile's target: the PUs sharing a tile share its run and its file.
        result = run_stage(
            EXTRACT_TILE_SAMPLES, config, _tile_target(target, tile.tile_id), force=ctx.force, store=ctx.store,
            options={"samples": samples_option(all_ids[members], all_lon[members], all_lat[members]),
                     "scene_source": source},
        )
        skipped += bool(result["skipped"])
        parts.append({"tile_id": tile.tile_id, "sample_ids": sorted(str(s) for s in ids[chosen == i])})
    manifest = {
        "pu_id": target.pu_id, "reference_year": target.reference_year, "layout": target.layout,
        "samples": int((chosen >= 0).sum()), "outside_tiles": sorted(str(s) for s in ids[chosen < 0]),
        "series": parts,
    }
    log.info("%s: %d samples in %d tiles (%d tiles current), %d outside every tile", target.pu_id,
             manifest["samples"], len(parts), skipped, len(manifest["outside_tiles"]))
    return External(identity={"manifest": manifest}, value={"manifest": manifest, "tiles_skipped": skipped})


def _tile_target(target: Target, tile_id: str) -> Target:
    return Target(target.layout, target.reference_year, None, tile_id)


def _extract_compute(io: StageIO) -> dict:
    manifest = io.external["manifest"]
    io.write_json("manifest", manifest)
    return {"samples": manifest["samples"], "tiles": len(manifest["series"]),
            "tiles_skipped": io.external["tiles_skipped"], "outside_tiles": len(manifest["outside_tiles"])}


EXTRACT = Stage(
    name="extract",
    scope="training",
    outputs={"manifest": "extraction.json"},
    prepare=_extract_prepare,
    compute=_extract_compute,
    summary=("samples", "tiles", "tiles_skipped", "outside_tiles"),
    # A SceneSource object replacing the configured one for every tile (as for ingest).
    options=("scene_source",),
    resources=Resources(memory="medium"),
    permanent_errors=(*_PERMANENT, *EXTRACT_TILE_SAMPLES.permanent_errors),
    description="time series of the PU's active samples, extracted tile by tile",
)


# --------------------------------------------------------------------------------------------
# The training table: what audit, evaluation and final fit read


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


def load_training_table(config: Config, target: Target, store: Store | None = None) -> TrainingTable:
    """The training table of ``target``'s PU (after its extract stage ran): extracted series
    joined with the sample DB's current labels (active samples only); samples never observed
    (no valid Sentinel-2 observation) are left out and listed."""
    config = config.for_layout(target.layout)
    target = checked_target(config, EXTRACT, target)
    store = store or store_for(config)
    return _training_table(RunContext(EXTRACT, config, target, {}, store, Locations(config)))


def _training_table(ctx: RunContext) -> TrainingTable:
    from clcplus_ops.model.extraction import SampleSeries, read_series

    target, store = ctx.target, ctx.store
    what = f"{target.pu_id} {target.reference_year}"
    extract = ctx.record(EXTRACT.name, scope=EXTRACT.scope)
    problems = ["no committed record"] if extract is None else verify_files(store, ctx.locations, extract)
    if problems:
        raise TrainingError(f"{what}: the extraction is not usable ({'; '.join(problems)}); run extract first")
    manifest = store.read_json(ctx.locations.resolve(extract.outputs["manifest"]))
    parts = []
    for part in manifest["series"]:
        record = ctx.record(EXTRACT_TILE_SAMPLES.name, target=_tile_target(target, part["tile_id"]),
                            scope=EXTRACT_TILE_SAMPLES.scope)
        problems = ["no committed record"] if record is None else verify_files(store, ctx.locations, record)
        if problems:
            raise TrainingError(f"{what}: the sample series of tile {part['tile_id']} are not usable "
                                f"({'; '.join(problems)}); re-run extract")
        series = read_series(store, ctx.locations.resolve(record.outputs["series"]))
        try:
            parts.append(series.subset(part["sample_ids"]))
        except KeyError as error:
            raise TrainingError(f"{what}: the series of tile {part['tile_id']} changed since this PU's extraction "
                                f"({error.args[0]}); re-run extract") from None
    series = SampleSeries.concat(parts)
    db = load_sample_db(store, ctx.locations.sample_db)
    points = db.active().set_index("sample_id")
    ids = np.asarray(series.sample_ids, dtype=object)
    labelled = np.isin(ids, points.index.to_numpy())
    keep = labelled & (series.valid_obs > 0)
    never = sorted(ids[labelled & (series.valid_obs == 0)].tolist())
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


def _table_prepare(ctx: RunContext) -> External:
    """The training table; its data hash (labels and series) is the identity."""
    table = _training_table(ctx)
    return External(identity={"data": table.data_hash}, value=table)


# --------------------------------------------------------------------------------------------
# audit


def _audit_stage_params(config: Config, target: Target, options) -> dict:
    t = config.training
    return {"train": _audit_params_of(config).to_dict(), "rounds": t.label_audit_rounds, "folds": t.label_audit_folds,
            "filter": t.label_audit_filter, "classes": _classes(config)}


def _audit_params_of(config: Config):
    t = config.training
    return _train_params(config, epochs=t.label_audit_epochs or t.epochs)


def _audit_compute(io: StageIO) -> dict:
    """Cleanlab label audit over ``training.label_audit_rounds`` rounds; writes the samples
    flagged in every round, with their evidence, for expert review."""
    from clcplus_ops.model.audit import audit_labels

    config, target, table = io.config, io.target, io.external
    t = config.training
    if len(table) < 2 * t.label_audit_folds:
        raise TrainingError(f"{target.pu_id}: {len(table)} labelled samples are too few for a "
                            f"{t.label_audit_folds}-fold audit")
    result = audit_labels(table.x, table.y, _audit_params_of(config), classes=_classes(config),
                          rounds=t.label_audit_rounds, folds=t.label_audit_folds, seed=t.seed, groups=table.groups,
                          filter_by=t.label_audit_filter)
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
    io.write_text("flagged_csv", _csv(rows, _flagged_columns(result.classes)))
    io.write_json("flagged_geojson", {
        "type": "FeatureCollection", "name": f"{target.pu_id}-{target.reference_year}-label-audit",
        "features": [{"type": "Feature", "id": r["sample_id"], "properties": r,
                      "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]}} for r in rows],
    })
    io.write_text("decisions_template", _csv(
        [{"sample_id": r["sample_id"], "given_label": r["given_label"], "suggested_label": r["suggested_label"],
          "decision": "", "label": "", "comment": ""} for r in rows],
        ["sample_id", "given_label", "suggested_label", "decision", "label", "comment"]))
    codes, counts = np.unique(table.y[flagged], return_counts=True)
    summary = {
        "pu_id": target.pu_id, "reference_year": target.reference_year, "samples": len(table),
        "rounds": result.rounds, "folds": result.folds, "filter": result.filter_by, "flagged": len(rows),
        "flagged_per_round": result.flagged_per_round,
        "flagged_by_given_label": {str(int(k)): int(v) for k, v in zip(codes, counts)},
        "never_observed": table.never_observed, "data_hash": table.data_hash,
    }
    io.write_json("summary", summary)
    io.log.info("%s: label audit flagged %d of %d samples in all %d rounds", target.pu_id, len(rows), len(table),
                result.rounds)
    return {k: summary[k] for k in ("pu_id", "reference_year", "samples", "rounds", "folds", "filter", "flagged",
                                    "flagged_per_round", "data_hash")}


def _flagged_columns(classes) -> list[str]:
    return ["sample_id", "lon", "lat", "given_label", "given_name", "suggested_label", "suggested_name",
            "given_probability", "suggested_probability", "rounds_flagged", *[f"p{c:02d}" for c in classes]]


def _csv(rows: list[Mapping[str, Any]], columns: list[str]) -> str:
    out = StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


AUDIT = Stage(
    name="audit",
    scope="training",
    inputs=("extract",),
    outputs={"flagged_csv": "audit/flagged.csv", "flagged_geojson": "audit/flagged.geojson",
             "decisions_template": "audit/decisions_template.csv", "summary": "audit/audit.json"},
    prepare=_table_prepare,
    params=_audit_stage_params,
    compute=_audit_compute,
    resources=_TRAINING,
    summary=("pu_id", "reference_year", "flagged", "samples", "rounds", "folds", "flagged_per_round", "filter"),
    permanent_errors=_PERMANENT,
    description="Cleanlab label audit of the PU's samples over rounds of k-fold cross-prediction",
)


# --------------------------------------------------------------------------------------------
# review


def store_uploaded_decisions(config: Config, pu_id: str, reference_year: int, text: str, run_id: str,
                             store: Store | None = None) -> str:
    """Keep decisions pasted into the review form as a file beside the audit (the audit trail);
    returns its URL, to be given to the review stage as ``decisions_url``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    url = Locations(config).training(reference_year, pu_id).file("audit", f"decisions-{safe}.csv")
    (store or store_for(config)).write_text(url, text if text.endswith("\n") else text + "\n")
    return url


def check_reviewer(config: Config, target: Target, reviewer: Any) -> str:
    """``reviewer`` if ``training.reviewers`` names them, else a TrainingError naming the user and
    the configured reviewers (no retry makes someone else a reviewer)."""
    allowed = config.training.reviewers
    if isinstance(reviewer, str) and reviewer in allowed:
        return reviewer
    who = f"user {reviewer!r}" if reviewer else "an unknown user"
    named = (f"the configured reviewers are {', '.join(map(repr, allowed))}" if allowed
             else "none is configured, so nobody may answer it until training.reviewers names the reviewers")
    raise TrainingError(f"the expert review of {target.pu_id} {target.reference_year} was answered by {who}, who "
                        f"may not answer it: only the users in training.reviewers may ({named})")


def _review_options(config: Config, target: Target, options: Mapping[str, Any]) -> tuple[str, str | None, str]:
    reviewer = check_reviewer(config, target, options.get("reviewer"))  # first: nothing of theirs is read
    choice = options.get("choice")
    if choice not in REVIEW_CHOICES:
        raise TrainingError(f"review choice {choice!r} is not one of {list(REVIEW_CHOICES)}")
    decisions_url = options.get("decisions_url") or None
    if choice == "decisions" and not decisions_url:
        raise TrainingError("review choice 'decisions' needs the URL of a decisions file")
    return choice, decisions_url if choice == "decisions" else None, reviewer


def _review_params(config: Config, target: Target, options) -> dict:
    choice, decisions_url, reviewer = _review_options(config, target, options)
    return {"choice": choice, "decisions_url": decisions_url, "reviewer": reviewer}


def _review_prepare(ctx: RunContext) -> External:
    """The decisions file (its sha256 is the identity) and where the revisions go."""
    choice, decisions_url, _ = _review_options(ctx.config, ctx.target, ctx.options)
    value = {"store": ctx.store, "sample_db": ctx.locations.sample_db, "decisions": None}
    if decisions_url is None:
        return External(identity={}, value=value)
    try:
        data = ctx.store.read_bytes(decisions_url)
    except FileNotFoundError:
        raise TrainingError(f"decisions file {decisions_url} does not exist") from None
    try:
        value["decisions"] = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TrainingError(f"decisions file {decisions_url} is not UTF-8 text ({error})") from None
    return External(identity={"decisions_sha256": hashlib.sha256(data).hexdigest()}, value=value)


def _read_decisions(text: str, url: str, flagged_ids: set[str], classes: list[int]) -> list[dict]:
    """An expert's decisions file: sample_id, decision (relabel | keep | exclude), label, comment."""
    reader = csv.DictReader(StringIO(text))
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
                problems.append(f"line {line}: relabel needs a class code {classes[0]}..{classes[-1]} in 'label', "
                                f"got {label_text!r}")
            else:
                label = int(label_text)
        seen.add(sid)
        decisions.append({"sample_id": sid, "decision": decision, "label": label, "comment": comment})
    if problems:
        raise TrainingError(f"decisions file {url}: {len(problems)} problem(s), nothing applied:\n  "
                            + "\n  ".join(problems[:20]))
    return decisions


def _review_compute(io: StageIO) -> dict:
    """The expert review of the flagged samples as sample-DB revisions.

    ``choice``: "accept" (every flagged sample takes its suggested label), "keep" (the given
    labels stay; nothing is revised) or "decisions" (per-sample decisions from the CSV at
    ``decisions_url``: relabel with a label, keep, or exclude from training)."""
    from clcplus_ops.model.sample_db import add_revisions

    target = io.target
    choice, decisions_url, reviewer = (io.params[k] for k in ("choice", "decisions_url", "reviewer"))
    flagged = list(csv.DictReader(StringIO(io.input("audit", "flagged_csv").read_bytes().decode("utf-8"))))
    reason = f"label audit {target.pu_id} {target.reference_year}"
    if choice == "accept":
        revisions = [{"sample_id": r["sample_id"], "label": int(r["suggested_label"]),
                      "reason": f"{reason}: suggested label accepted"} for r in flagged]
    elif choice == "keep":
        revisions = []
    else:
        decisions = _read_decisions(io.external["decisions"], decisions_url, {r["sample_id"] for r in flagged},
                                    _classes(io.config))
        revisions = []
        for d in decisions:
            why = f"{reason}: {d['decision']}" + (f" ({d['comment']})" if d["comment"] else "")
            if d["decision"] == "relabel":
                revisions.append({"sample_id": d["sample_id"], "label": d["label"], "reason": why})
            elif d["decision"] == "exclude":
                revisions.append({"sample_id": d["sample_id"], "status": "excluded", "reason": why})
    result = (add_revisions(io.external["store"], io.external["sample_db"], revisions, author=reviewer)
              if revisions else None)
    review = {
        "pu_id": target.pu_id, "reference_year": target.reference_year, "choice": choice,
        "decisions_url": decisions_url, "reviewer": reviewer, "flagged": len(flagged),
        "revisions": result.revised if result else 0, "batch_id": result.batch_id if result else None,
        "reviewed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    io.write_json("review", review)
    io.log.info("%s: review %r by %s: %d of %d flagged samples revised", target.pu_id, choice, reviewer,
                review["revisions"], len(flagged))
    return {k: review[k] for k in ("choice", "decisions_url", "reviewer", "flagged", "revisions", "batch_id")}


REVIEW = Stage(
    name="review",
    scope="training",
    inputs=("audit",),
    outputs={"review": "review.json"},
    prepare=_review_prepare,
    params=_review_params,
    compute=_review_compute,
    options=("choice", "decisions_url", "reviewer"),
    summary=("choice", "reviewer", "flagged", "revisions", "batch_id", "decisions_url"),
    permanent_errors=_PERMANENT,
    description="the expert review of the flagged samples, applied as sample-DB revisions",
)


# --------------------------------------------------------------------------------------------
# evaluate


def holdout_split(table: TrainingTable, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices, grouped by polygon where the samples have one (samples of
    a polygon are never on both sides)."""
    if table.groups is None:
        from clcplus_ops.model.trainer import validation_split

        return validation_split(table.y, fraction, seed)  # its "validation" share is the test set
    from sklearn.model_selection import StratifiedGroupKFold

    splits = max(2, int(round(1 / fraction)))
    train, test = next(StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed).split(
        table.y, table.y, table.groups))
    return np.sort(train), np.sort(test)


def _evaluate_params(config: Config, target: Target, options) -> dict:
    t = config.training
    return {"train": _train_params(config).to_dict(), "holdout": t.holdout_fraction, "classes": _classes(config),
            "targets": dataclasses.asdict(evaluation.Targets.from_config(t))}


def _evaluate_compute(io: StageIO) -> dict:
    """Hold out ``training.holdout_fraction`` of the samples, train on the rest and report the
    accuracy against the targets (JSON, markdown report, confusion-matrix plot)."""
    from clcplus_ops.model.trainer import fit

    config, target, table = io.config, io.target, io.external
    t, pu_id, year = config.training, target.pu_id, target.reference_year
    train, test = holdout_split(table, t.holdout_fraction, t.seed)
    model = fit(table.x[train], table.y[train], _train_params(config), classes=_classes(config),
                label=f"{pu_id} hold-out model")
    predicted = model.predict(table.x[test])
    acc = evaluation.accuracy(table.y[test], predicted, _classes(config), config.codes.classes)
    check = evaluation.check_targets(acc, evaluation.Targets.from_config(t))
    result = {
        "pu_id": pu_id, "reference_year": year, "samples": len(table), "train": len(train),
        "test": len(test), "grouped_by_polygon": table.groups is not None, "best_epoch": model.best_epoch,
        "epochs_run": len(model.history), "samples_per_second": round(model.samples_per_second, 1),
        "data_hash": table.data_hash, "accuracy": acc.to_dict(), "targets": check.to_dict(),
        "history": model.history,
    }
    context = {"Production unit": pu_id, "Reference year": str(year),
               "Samples": f"{len(table)} ({len(train)} train, {len(test)} hold-out)",
               "Hold-out": f"stratified {t.holdout_fraction:.0%}" + (", grouped by polygon" if table.groups is not None else ""),
               "Epochs": f"{len(model.history)} run, best {model.best_epoch}"}
    title = f"Hold-out accuracy, {pu_id} {year}"
    io.write_json("accuracy", result)
    io.write_text("report", evaluation.report_markdown(acc, check, title=title, context=context))
    io.write_bytes("confusion_matrix", evaluation.plot_confusion_matrix(acc, title=title))
    io.log.info("%s: hold-out overall accuracy %.1f %%, kappa %.3f; targets %s%s", pu_id, 100 * acc.overall_accuracy,
                acc.kappa, "met" if check.met else "NOT met", "" if check.met else ": " + "; ".join(check.failures))
    return {"overall_accuracy": acc.overall_accuracy, "kappa": acc.kappa, "targets_met": check.met,
            "failures": check.failures, "best_epoch": model.best_epoch, "test": len(test), "samples": len(table),
            "data_hash": table.data_hash}


# The expert review is not an input: the training table's data hash (labels and series) is what
# the evaluation depends on, so a review that changes labels re-evaluates and one that changes
# nothing does not; and the demo evaluates without an audit.
EVALUATE = Stage(
    name="evaluate",
    scope="training",
    inputs=("extract",),
    outputs={"accuracy": "evaluation/accuracy.json", "report": "evaluation/report.md",
             "confusion_matrix": "evaluation/confusion_matrix.png"},
    prepare=_table_prepare,
    params=_evaluate_params,
    compute=_evaluate_compute,
    resources=_TRAINING,
    summary=("overall_accuracy", "kappa", "targets_met", "failures", "best_epoch", "test"),
    permanent_errors=_PERMANENT,
    description="hold-out accuracy of a TempCNN trained on the rest, against the accuracy targets",
)


# --------------------------------------------------------------------------------------------
# final fit


def _final_fit_params(config: Config, target: Target, options) -> dict:
    return {"train": _train_params(config).to_dict(), "classes": _classes(config)}


def _final_fit_compute(io: StageIO) -> dict:
    """Train on all samples for the best epoch count the hold-out run found."""
    from clcplus_ops.model.trainer import fit, with_epochs

    pu_id, table = io.target.pu_id, io.external
    evaluated = io.input("evaluate", "accuracy").read_json()
    if evaluated["data_hash"] != table.data_hash:
        raise TrainingError(f"{pu_id}: the samples changed since the evaluation; evaluate again before the final fit")
    params = with_epochs(_train_params(io.config), max(1, int(evaluated["best_epoch"])))
    model = fit(table.x, table.y, params, classes=_classes(io.config), label=f"{pu_id} final model")
    io.write_bytes("model", model.to_bytes())
    io.log.info("%s: final model trained on %d samples for %d epochs (%.0f samples/s)", pu_id, len(table),
                params.epochs, model.samples_per_second)
    return {"samples": len(table), "epochs": params.epochs, "samples_per_second": round(model.samples_per_second, 1),
            "train_seconds": round(model.train_seconds, 2)}


FINAL_FIT = Stage(
    name="final_fit",
    scope="training",
    inputs=("evaluate",),
    outputs={"model": "final/model.pt"},
    prepare=_table_prepare,
    params=_final_fit_params,
    compute=_final_fit_compute,
    resources=_TRAINING,
    summary=("samples", "epochs"),
    permanent_errors=_PERMANENT,
    description="the final TempCNN on all samples, for the hold-out run's best epoch count",
)


# --------------------------------------------------------------------------------------------
# register


def _register_prepare(ctx: RunContext) -> External:
    """The registry's answer to "is this final model registered already?" (the identity), the
    review that shaped the samples (for the card) and where the registry is."""
    from clcplus_ops.model import registry

    fitted = ctx.record(FINAL_FIT.name)
    model_sha = fitted.files["model"]["sha256"] if fitted else None
    models = ctx.locations.models
    existing = None
    for version in reversed(registry.list_versions(ctx.store, models, ctx.target.pu_id)):
        candidate = registry.resolve_model(ctx.store, models, ctx.target.pu_id, version)
        if candidate.card.get("artefacts", {}).get("model.pt", {}).get("sha256") == model_sha:
            existing = candidate
            break
    reviewed = ctx.record(REVIEW.name)
    review = ctx.store.read_json(ctx.locations.resolve(reviewed.outputs["review"])) if reviewed else None
    return External(identity={"registered_as": existing.version if existing else None},
                    value={"store": ctx.store, "models": models, "existing": existing, "review": review,
                           "sample_db": ctx.locations.sample_db})


def _register_compute(io: StageIO) -> dict:
    """Register the final model with its model card; a model registered already keeps the
    version it has (a registered version is never overwritten)."""
    from clcplus_ops.model import registry
    from clcplus_ops.model.trainer import TrainedModel
    from clcplus_ops.sentinel2 import timeseries

    config, target, external = io.config, io.target, io.external
    pu_id, year = target.pu_id, target.reference_year
    model_bytes = io.input("final_fit", "model").read_bytes()
    model_sha = hashlib.sha256(model_bytes).hexdigest()
    existing = external["existing"]
    if existing is not None:
        io.log.info("%s: this model is already registered as %s", pu_id, existing.version)
        registered, already = existing, True
    else:
        evaluated = io.input("evaluate", "accuracy").read_json()
        model = TrainedModel.from_bytes(model_bytes)
        s2 = config.sentinel2
        features = timeseries.feature_names(s2.bands, s2.indices)
        artefacts = {
            "model.pt": model_bytes,
            "normalisation.json": json.dumps({"features": features, "mean": model.normaliser.mean.tolist(),
                                              "std": model.normaliser.std.tolist()}, indent=1).encode(),
            "accuracy.json": io.input("evaluate", "accuracy").read_bytes(),
            "report.md": io.input("evaluate", "report").read_bytes(),
            "confusion_matrix.png": io.input("evaluate", "confusion_matrix").read_bytes(),
        }
        acc = evaluated["accuracy"]
        card = {
            "reference_year": year,
            "model": {"architecture": "TempCNN (Pelletier et al. 2019)", **model.arch.to_dict(),
                      "classes": model.classes, "epochs": model.params.epochs,
                      # The year's time series (window, step length and count: 2018 has its own):
                      # a run of another year takes this model only if its series is the same.
                      "input": {"features": features, **config.time_series.for_year(year).input_signature(),
                                "encoding": "int16, value x 10 000"}},
            "training_data": {"samples": evaluated["samples"], "hash": evaluated["data_hash"],
                              "hold_out_samples_per_class": acc["support"], "sample_db": external["sample_db"],
                              "review": external["review"]},
            "metrics": {"overall_accuracy": acc["overall_accuracy"], "kappa": acc["kappa"], "n": acc["n"],
                        "omission": acc["omission"], "commission": acc["commission"],
                        "targets": evaluated["targets"]},
            # Who may review is access control, not how the model was trained.
            "configuration": {"training": config.training.model_dump(mode="json", exclude={"reviewers"}),
                              "sentinel2": {"bands": list(s2.bands), "indices": list(s2.indices)},
                              "time_series": config.time_series.model_dump(mode="json")},
        }
        registered = registry.register_model(external["store"], external["models"], pu_id, artefacts, card)
        already = False
        io.log.info("%s: registered model %s at %s (hold-out OA %.1f %%)", pu_id, registered.version, registered.url,
                    100 * acc["overall_accuracy"])
    io.write_json("registration", {"pu_id": pu_id, "reference_year": year, "version": registered.version,
                                   "model_sha256": model_sha, "already_registered": already})
    return {"version": registered.version, "url": registered.url, "already_registered": already,
            "model_sha256": model_sha}


REGISTER = Stage(
    name="register",
    scope="training",
    inputs=("evaluate", "final_fit"),
    outputs={"registration": "registered.json"},
    prepare=_register_prepare,
    compute=_register_compute,
    summary=("version", "url", "already_registered"),
    permanent_errors=_PERMANENT,
    description="a new immutable version of the PU's model in the registry, with its model card",
)


TRAINING_STAGES = (EXTRACT, AUDIT, REVIEW, EVALUATE, FINAL_FIT, REGISTER)

__all__ = ["AUDIT", "EVALUATE", "EXTRACT", "FINAL_FIT", "REGISTER", "REVIEW", "TRAINING_STAGES", "TrainingError",
           "TrainingTable", "check_reviewer", "holdout_split", "load_training_table", "store_uploaded_decisions"]
