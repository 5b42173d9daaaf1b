"""The one stage runner: everything a stage does besides its computation.

``run_stage(stage, config, target)``:

1. checks the ids of the target (PU against the layout, tile against the grid, year against
   the supported range) before they name any location;
2. reads the committed records of the stage's inputs and verifies their files (size and a cheap
   stamp; the sha256 where the stamp changed): a missing or damaged input fails with a message
   naming the file and the stage that makes it;
3. prepares the external inputs and computes the fingerprint: the inputs' fingerprints and
   checksums, the external identity, the parameters and the code version;
4. skips when its own committed record has that fingerprint and its outputs verify; a damaged
   or missing output, a changed fingerprint or ``force`` recomputes. An unreachable store is an
   error at once, never "not done yet";
5. for a stage of a shared scope (a tile's time series, which every PU covering the tile asks
   for), claims it (:mod:`clcplus_ops.claims`): one run computes, the others wait for its
   record and skip;
6. removes what killed runs left (temporary files), computes into a private staging folder,
   checksums the outputs, then commits: the old record goes first, the outputs are moved
   (renamed on ``file://``, uploaded on ``s3://``) and the new record is written last. The
   record is the commit: outputs without a record are never trusted, so a run killed at any
   moment leaves either the complete old state, or no record (the next run recomputes), or the
   complete new state;
7. returns a small summary for Airflow (never a credential).

Records hold locations relative to the store roots (``work:2025/DEMO1/...``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import clcplus_ops
from clcplus_ops import claims
from clcplus_ops.config import Config
from clcplus_ops.errors import StageInputError
from clcplus_ops.locations import Locations, Place, check_product_tile, check_pu, check_tile, check_year
from clcplus_ops.stage import SHARED_SCOPES, External, Input, Stage, StageIO, Target
from clcplus_ops.store import (S3Settings, Store, StoreError, StoreUnreachableError, canonical_json, fingerprint,
                               sha256_file)

log = logging.getLogger("clcplus_ops.runner")

RECORD_FORMAT = 2


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class StageRecord:
    stage: str
    fingerprint: str
    target: dict[str, Any]
    inputs: dict[str, str]  # upstream stage -> its fingerprint
    outputs: dict[str, str]  # output name -> root:path
    files: dict[str, dict[str, Any]]  # output name -> sha256, size, stamp
    created: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    format: int = RECORD_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        """Strict parse: a record of another format or with missing fields is not trusted."""
        if not isinstance(data, Mapping) or data.get("format") != RECORD_FORMAT:
            raise ValueError(f"not a stage record of format {RECORD_FORMAT}")
        record = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        if set(record.outputs) != set(record.files):
            raise ValueError("outputs and files name different outputs")
        return record


class CorruptRecordError(StoreError):
    pass


def read_record(store: Store, url: str) -> StageRecord | None:
    """The record at ``url``; None if there is none; CorruptRecordError if it cannot be used;
    StoreUnreachableError (not None) if the store cannot be reached."""
    try:
        data = store.read_json(url)
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise CorruptRecordError(f"corrupt stage record {url}: {error}") from error
    try:
        return StageRecord.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise CorruptRecordError(f"unusable stage record {url}: {error!r}") from error


def verify_files(store: Store, locations: Locations, record: StageRecord) -> list[str]:
    """Problems with a record's files (empty: all present and unchanged). Size and stamp are
    compared; where only the stamp differs (a copied store, a touched file) the sha256 decides."""
    problems = []
    for name, location in record.outputs.items():
        url = locations.resolve(location)
        expected = record.files[name]
        try:
            found = store.stat(url)
        except FileNotFoundError:
            problems.append(f"{name} is missing ({url})")
            continue
        if found.size != expected["size"]:
            problems.append(f"{name} has {found.size} bytes, its record says {expected['size']} ({url})")
        elif found.stamp != expected["stamp"] and store.sha256(url) != expected["sha256"]:
            problems.append(f"{name} was changed since it was recorded ({url})")
    return problems


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class RunContext:
    """What ``prepare`` functions see: the reading side, with locations and the store."""

    stage: Stage
    config: Config
    target: Target
    options: Mapping[str, Any]
    store: Store
    locations: Locations
    # The run's ``force``: a stage whose prepare runs other stages (extract runs the tiles'
    # sample extraction) passes it on.
    force: bool = False

    def place(self, stage: Stage | None = None, target: Target | None = None) -> Place:
        return place_of((stage or self.stage).scope, self.locations, target or self.target)

    def record(self, stage_name: str, target: Target | None = None, scope: str | None = None) -> StageRecord | None:
        place = place_of(scope or self.stage.scope, self.locations, target or self.target)
        return read_record(self.store, place.record(stage_name))

    def input_of(self, stage_name: str, output: str, target: Target, scope: str) -> tuple[StageRecord, Input]:
        """Output ``output`` of another target's stage (a PU's tiles, a neighbouring PU), with
        its record, verified as declared inputs are; StageInputError when missing or damaged."""
        record = _verified_record(self, place_of(scope, self.locations, target), stage_name,
                                  f"{stage_name} {target.describe()}")
        url = self.locations.resolve(record.outputs[output])
        return record, Input(stage_name, output, url, _open_raster, self.store.read_bytes)


def place_of(scope: str, locations: Locations, target: Target) -> Place:
    year = target.reference_year
    if scope == "tile":
        return locations.tile(year, target.pu_id, target.tile_id)
    if scope == "shared_tile":
        return locations.tile_series(year, target.tile_id)
    if scope == "pu":
        return locations.pu(year, target.pu_id)
    if scope == "training":
        return locations.training(year, target.pu_id)
    if scope == "sample_tile":
        return locations.sample_series(year, target.tile_id)
    if scope == "product_tile":
        return locations.product_tile(year, target.tile_id)
    raise ValueError(f"unknown stage scope {scope!r}")


def store_for(config: Config, s3: S3Settings | None = None) -> Store:
    """The store of a configuration; ``s3`` (e.g. from an Airflow connection) overrides the
    configured endpoint and region and carries the credentials."""
    return Store(s3 or S3Settings(endpoint_url=config.store.s3_endpoint_url, region=config.store.s3_region,
                                   max_attempts=config.store.s3_max_attempts))


def checked_target(config: Config, stage: Stage, target: Target) -> Target:
    """``target`` with its ids verified for ``stage``'s scope (nothing touched before this)."""
    year = check_year(config, target.reference_year)
    pu_id, tile_id = target.pu_id, target.tile_id
    if stage.scope in ("pu", "training", "tile"):
        if not pu_id:
            raise StageInputError(f"stage {stage.name} runs for a production unit: give its id")
        check_pu(config, target.layout, pu_id)
    if stage.scope in ("tile", "shared_tile", "sample_tile"):
        if not tile_id:
            raise StageInputError(f"stage {stage.name} runs for a tile: give its id")
        check_tile(config, tile_id)
    if stage.scope == "shared_tile":
        if pu_id:
            check_pu(config, target.layout, pu_id)  # the PU asking is checked, its tile shared
        pu_id = None
    if stage.scope == "product_tile":
        if not tile_id:
            raise StageInputError(f"stage {stage.name} runs for a product tile: give its code (e.g. e44n36)")
        check_product_tile(tile_id)
        pu_id = None  # a product tile is the same whichever PU's run makes it
    return Target(target.layout, year, pu_id, tile_id)


def run_stage(stage: Stage, config: Config, target: Target, *, force: bool = False, store: Store | None = None,
              options: Mapping[str, Any] | None = None) -> dict:
    """Run ``stage`` for ``target`` (see the module documentation); returns its summary."""
    config = config.for_layout(target.layout)
    options = dict(options or {})
    if stage.scope == "product_tile" and target.pu_id:
        options.setdefault("made_by", target.pu_id)  # the PU whose run asks for the product tile
    asked_by = target.pu_id  # the PU whose run asks (a shared stage's target names none)
    target = checked_target(config, stage, target)
    options = {k: v for k, v in options.items() if k in stage.options}
    store = store or store_for(config)
    locations = Locations(config)
    ctx = RunContext(stage, config, target, options, store, locations, force)
    place = ctx.place()
    record_url = place.record(stage.name)
    what = f"{stage.name} {target.describe()}"
    if stage.scope in SHARED_SCOPES and asked_by:
        what += f" (for {asked_by})"

    upstream = {name: _input_record(ctx, name) for name in stage.inputs}
    external = stage.prepare(ctx) if stage.prepare else External()
    params = dict(stage.params(config, target, options))
    key = fingerprint(
        stage=stage.name,
        inputs={"target": target.to_dict(), "external": dict(external.identity),
                **{name: {"fingerprint": r.fingerprint, "files": {n: f["sha256"] for n, f in r.files.items()}}
                   for name, r in upstream.items()}},
        params=params, version=clcplus_ops.__version__,
    )
    files = {name: place.file(path) for name, path in stage.output_files(config).items()}

    # What killed runs left goes first, also when this run then skips.
    store.remove_temporaries(place.base)
    if not force:
        current = _current_record(store, locations, record_url, key, what, files)
        if current is not None:
            log.info("%s: current, skipped (%s)", what, record_url)
            return _summary(stage, target, current, locations, skipped=True)
    else:
        store.exists(record_url)  # a forced run, too, meets an unreachable store before computing

    _injected_fault(config, stage, target, asked_by)
    claim = None
    if stage.scope in SHARED_SCOPES:
        # Forced runs wait for each other, then each computes.
        current = (lambda: False) if force else \
            lambda: _current_record(store, locations, record_url, key, what, files, quiet=True) is not None
        claim = claims.acquire(store, place.base, stage.name, what, current, seconds=config.store.claim_seconds)
        if claim is None:
            log.info("%s: computed by another run meanwhile, skipped (%s)", what, record_url)
            return _summary(stage, target, read_record(store, record_url), locations, skipped=True)
    staging = store.staging_dir(place.base)
    started = time.perf_counter()
    try:
        inputs = {(s, n): Input(s, n, locations.resolve(loc), _open_raster, store.read_bytes)
                  for s, r in upstream.items() for n, loc in r.outputs.items()}
        io = StageIO(stage=stage, config=config, target=target, params=params, options=options,
                     external=external.value, inputs=inputs,
                     upstream_details={s: r.details for s, r in upstream.items()},
                     staging=staging, output_files=stage.output_files(config))
        log.info("%s: computing", what)
        with _gdal_env(store, locations):
            details = dict(stage.compute(io) or {})
        staged = {}
        for name in files:
            path = staging / name / Path(files[name]).name
            if not path.is_file():
                raise RuntimeError(f"{what}: the computation wrote no output {name!r}")
            staged[name] = (path, sha256_file(path))
        record = _commit(store, locations, stage, target, record_url, key, upstream, files, staged, details,
                         time.perf_counter() - started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if claim is not None:
            claim.release()
    log.info("%s: done in %.1f s, %d output(s) committed (%s)", what, record.seconds, len(files), record_url)
    return _summary(stage, target, record, locations, skipped=False)


def _injected_fault(config: Config, stage: Stage, target: Target, asked_by: str | None) -> None:
    """Fail here, before computing, where a drill's fault (``drills.faults``) matches (its PU:
    the PU whose run asks, also for a shared or product tile stage, whose target names none)."""
    from clcplus_ops.errors import InjectedFaultError

    for fault in config.drills.faults:
        if fault.stage == stage.name and fault.pu_id in (None, asked_by) \
                and fault.tile_id in (None, target.tile_id):
            raise InjectedFaultError(f"{stage.name} {target.describe()}: fault injected by the drill "
                                     f"(drills.faults); nothing was computed")


def _gdal_env(store: Store, locations: Locations):
    """Where a root is on S3, GDAL reads the inputs through this store's settings (endpoint,
    credentials); ``file://`` roots need no environment."""
    if not any(root.startswith("s3://") for root in locations.roots.values()):
        return contextlib.nullcontext()
    from clcplus_ops.raster_io import gdal_env

    return gdal_env(store.s3_settings)


def _open_raster(url: str):
    """A stage input opened with rasterio (inside the run's GDAL environment, see _gdal_env)."""
    import rasterio

    from clcplus_ops.raster_io import gdal_path

    return rasterio.open(gdal_path(url))


def _input_record(ctx: RunContext, name: str) -> StageRecord:
    scope = ctx.stage.input_scopes.get(name, ctx.stage.scope)
    return _verified_record(ctx, place_of(scope, ctx.locations, ctx.target), name, name)


def _verified_record(ctx: RunContext, place: Place, name: str, what: str) -> StageRecord:
    """The committed record of stage ``name`` at ``place`` with its files verified;
    StageInputError (saying what to re-run) when it is missing, corrupt or its files damaged."""
    url = place.record(name)
    try:
        record = read_record(ctx.store, url)
    except CorruptRecordError as error:
        raise StageInputError(f"{ctx.stage.name} {ctx.target.describe()}: {error}; re-run {what}") from error
    if record is None:
        raise StageInputError(f"{ctx.stage.name} {ctx.target.describe()}: no {name} record at {url}; run {what} first")
    problems = verify_files(ctx.store, ctx.locations, record)
    if problems:
        raise StageInputError(f"{ctx.stage.name} {ctx.target.describe()}: input of {what} is damaged: "
                              f"{'; '.join(problems)}; re-run {what} (it recomputes what is damaged)")
    return record


def _current_record(store: Store, locations: Locations, record_url: str, key: str, what: str,
                    files: Mapping[str, str], quiet: bool = False) -> StageRecord | None:
    """The committed record at ``record_url`` if it is current (``quiet``: asked again and
    again while waiting for another run, so it says nothing)."""
    info, warning = ((lambda *args: None),) * 2 if quiet else (log.info, log.warning)
    try:
        record = read_record(store, record_url)
    except CorruptRecordError as error:
        warning("%s: %s; recomputing", what, error)
        return None
    if record is None:
        return None
    if record.fingerprint != key:
        info("%s: inputs, parameters or code changed since the last run; recomputing", what)
        return None
    if record.outputs != {name: locations.relative(url) for name, url in files.items()}:
        info("%s: the recorded outputs are not the ones the stage declares now; recomputing", what)
        return None
    problems = verify_files(store, locations, record)
    if problems:
        warning("%s: recorded outputs are damaged (%s); recomputing", what, "; ".join(problems))
        return None
    return record


def _commit(store: Store, locations: Locations, stage: Stage, target: Target, record_url: str, key: str,
            upstream: Mapping[str, StageRecord], files: Mapping[str, str], staged: Mapping[str, tuple[Path, str]],
            details: Mapping[str, Any], seconds: float) -> StageRecord:
    # The old record goes first: from here until the new record exists, nothing is "current".
    store.delete(record_url)
    committed = {}
    for name, url in files.items():
        path, sha = staged[name]
        size = path.stat().st_size
        stamp = store.put_file(path, url)
        committed[name] = {"sha256": sha, "size": size, "stamp": stamp.stamp}
    record = StageRecord(
        stage=stage.name, fingerprint=key, target=target.to_dict(),
        inputs={name: r.fingerprint for name, r in upstream.items()},
        outputs={name: locations.relative(url) for name, url in files.items()}, files=committed,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=round(seconds, 2),
        details=dict(details),
    )
    store.write_text(record_url, canonical_json(record.to_dict()))
    return record


def _summary(stage: Stage, target: Target, record: StageRecord, locations: Locations, *, skipped: bool) -> dict:
    out = {"stage": stage.name, **target.to_dict(), "skipped": skipped,
           "outputs": {name: locations.resolve(loc) for name, loc in record.outputs.items()}}
    out.update({k: record.details[k] for k in stage.summary if k in record.details})
    return out


def stage_record(config: Config, stage: Stage, target: Target, store: Store | None = None) -> StageRecord | None:
    """The committed record of ``stage`` for ``target`` (None if it has not run)."""
    config = config.for_layout(target.layout)
    store = store or store_for(config)
    return read_record(store, place_of(stage.scope, Locations(config), target).record(stage.name))


__all__ = ["CorruptRecordError", "RunContext", "StageRecord", "StoreUnreachableError", "read_record", "run_stage",
           "stage_record", "store_for", "verify_files"]
