"""The classify stage: the PU's registered TempCNN applied to every pixel of one tile.

Reads the tile's persisted time series (``features/*.tif``, tile grid plus halo) block by
block, runs the model through an :class:`~clcplus_ops.classification.inference.InferenceEngine`
and writes ``probabilities.tif`` (11 bands, see :mod:`.probabilities` for the encoding) on the
same grid, halo included, so the bilateral filter is exact at the tile edges. Memory is bounded
by the block size (``inference.block_px``), not by the tile size.

The model is the PU's latest registered version unless a version is named; the version and
the sha256 of its weights are part of the stage's fingerprint, so a new model re-classifies
and a re-run with the same one skips.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

import clcplus_ops
from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.classification.inference import Agreement, InferenceEngine, check_agreement, create_engine
from clcplus_ops.config import Config
from clcplus_ops.geo.tiles import ProcessingTile
from clcplus_ops.model import registry
from clcplus_ops.model.trainer import TrainedModel
from clcplus_ops.plan import previous_stage, stage_record_url, store_for, tile_url
from clcplus_ops.raster_io import gdal_env, gdal_path
from clcplus_ops.sentinel2 import timeseries
from clcplus_ops.sentinel2.ingest import feature_url, provenance_url, valid_obs_url
from clcplus_ops.sentinel2.reading import tile_grid
from clcplus_ops.store import Store, fingerprint

log = logging.getLogger(__name__)

STAGE = "classify"


class ClassifyError(RuntimeError):
    """The tile cannot be classified with what is there (no time series, incompatible model)."""


# --------------------------------------------------------------------------------------------
# The model


def _selection(model: registry.RegisteredModel) -> dict:
    """What a run records of the model it classifies with (small enough for XCom)."""
    return {"pu_id": model.pu_id, "version": model.version, "url": model.url,
            "model_sha256": model.card["artefacts"]["model.pt"]["sha256"],
            "hold_out_overall_accuracy": model.card.get("metrics", {}).get("overall_accuracy")}


def select_model(config: Config, pu_id: str, version: str | None = None, store: Store | None = None) -> dict:
    """The registered model a PU run classifies with (latest unless ``version``), as a small
    dict for XCom; ModelNotFoundError names the PU and the folder it looked in."""
    store = store or store_for(config)
    selected = _selection(registry.resolve_model(store, config.store.models, pu_id, version or None))
    log.info("%s: classifying with model %s (%s, hold-out OA %s)", pu_id, selected["version"], selected["url"],
             selected["hold_out_overall_accuracy"])
    return selected


def model_weights(config: Config, registered: registry.RegisteredModel, reference_year: int, store: Store
                  ) -> TrainedModel:
    """The model's weights (checked against its card), refused if its inputs are not the
    features this configuration ingests."""
    model = TrainedModel.from_bytes(registry.read_artefact(store, registered, "model.pt"))
    s2 = config.sentinel2
    expected = {"features": timeseries.feature_names(s2.bands, s2.indices),
                "steps": len(config.time_series.steps(reference_year))}
    given = registered.card.get("model", {}).get("input", {})
    problems = [f"{key}: model {given.get(key)!r}, configuration {value!r}" for key, value in expected.items()
                if given.get(key) != value]
    if (model.arch.channels, model.arch.time_steps) != (len(expected["features"]), expected["steps"]):
        problems.append(f"network input {(model.arch.channels, model.arch.time_steps)}")
    if sorted(model.classes) != sorted(config.codes.classes):
        problems.append(f"classes {model.classes}")
    if problems:
        raise ClassifyError(f"model {registered.pu_id}/{registered.version} ({registered.url}) does not fit this "
                            f"configuration's time series: {'; '.join(problems)}")
    return model


def load_model(config: Config, pu_id: str, reference_year: int, version: str | None, store: Store
               ) -> tuple[registry.RegisteredModel, TrainedModel]:
    """The registered model ``version`` (None: the latest) of ``pu_id`` and its weights."""
    registered = registry.resolve_model(store, config.store.models, pu_id, version or None)
    return registered, model_weights(config, registered, reference_year, store)


# --------------------------------------------------------------------------------------------
# Reading the time series


class TimeSeriesReader:
    """Window reads of a tile's feature rasters as (valid pixels, features, steps) tables.

    The feature files are decompressed in parallel (GDAL releases the GIL), one thread per
    core; reading and classifying alternate, since running them at once stalls torch's threads
    (measured: no gain on 2 cores)."""

    def __init__(self, tile_base: str, feature_names: list[str]):
        self._stack = contextlib.ExitStack()
        self._pool = self._stack.enter_context(ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)),
                                                                  thread_name_prefix="read-features"))
        self.features = [self._stack.enter_context(rasterio.open(gdal_path(feature_url(tile_base, name))))
                         for name in feature_names]
        self.counts = self._stack.enter_context(rasterio.open(gdal_path(valid_obs_url(tile_base))))
        self.steps = self.features[0].count

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(x int16 (valid pixels, features, steps) row-major, valid bool (rows, cols))."""
        valid = self.counts.read(1, window=window) > 0
        rows, cols = valid.shape
        stack = np.empty((len(self.features), self.steps, rows, cols), np.int16)
        # Each dataset is read by one thread at a time (GDAL handles are not shared).
        list(self._pool.map(lambda f: self.features[f].read(window=window, out=stack[f]), range(len(self.features))))
        flat = stack.reshape(len(self.features), self.steps, rows * cols)
        return flat[:, :, valid.ravel()].transpose(2, 0, 1), valid

    def close(self) -> None:
        self._stack.close()


# --------------------------------------------------------------------------------------------
# The stage


def _stage_key(config: Config, tile: ProcessingTile, ingest_record, selected: dict) -> str:
    inference = config.inference
    return fingerprint(
        stage=STAGE,
        inputs={"tile": tile.to_dict(), "time_series": ingest_record.fingerprint,
                "time_series_checksums": ingest_record.checksums,
                "model": {k: selected[k] for k in ("pu_id", "version", "model_sha256")}},
        # What was asked for, not what ran: a retry on a GPU worker of a tile done on a CPU
        # worker is current (the engine that ran is in the record's details).
        params={"encoding": {"dtype": probs_io.DTYPE, "scale": 1 / probs_io.SCALE, "nodata": probs_io.NODATA},
                "device": inference.device, "precision": inference.precision,
                "tolerances": [inference.min_top_class_agreement, inference.max_probability_difference]},
        version=clcplus_ops.__version__,
    )


def classify_tile(
    config: Config,
    pu_id: str,
    reference_year: int,
    tile: ProcessingTile,
    model_version: str | None = None,
    *,
    force: bool = False,
    store: Store | None = None,
) -> dict:
    """Write the tile's class probabilities with the PU's model (``model_version``, else the
    latest); skipped when its record shows the same time series, model and parameters."""
    store = store or store_for(config)
    base = tile_url(config, reference_year, pu_id, tile.tile_id)
    ingest_record = previous_stage(store, base, "ingest", ClassifyError,
                                   f"tile {tile.tile_id} ({pu_id} {reference_year}) has no time series")
    registered = registry.resolve_model(store, config.store.models, pu_id, model_version or None)
    selected = _selection(registered)
    key = _stage_key(config, tile, ingest_record, selected)
    record_url = stage_record_url(base, STAGE)
    out_url = probs_io.probabilities_url(base)
    if not force and store.is_current(record_url, key):
        log.info("%s: probabilities are current, skipped", tile.tile_id)
        return {"tile_id": tile.tile_id, "skipped": True, "record": record_url, "model": selected["version"]}

    started = time.perf_counter()
    model = model_weights(config, registered, reference_year, store)
    provenance = store.read_json(provenance_url(base))
    grid = tile_grid(tile, provenance["grid"]["halo_px"])
    if [provenance["grid"][k] for k in ("height", "width")] != [grid.height, grid.width]:
        raise ClassifyError(f"tile {tile.tile_id}: time series grid {provenance['grid']} is not the tile's {grid}")
    inference = config.inference
    if inference.cpu_threads:
        torch.set_num_threads(inference.cpu_threads)
    engine = create_engine(model, inference.device, inference.precision, inference.batch_px)
    stats = {"read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "valid_pixels": 0}
    with gdal_env(store.s3_settings), store.local_write(out_url) as path:
        reader = TimeSeriesReader(base, provenance["features"])
        try:
            engine, agreement = _classify_blocks(reader, engine, grid, path, model, config, selected, stats, tile)
        finally:
            reader.close()
        checksum = store.sha256(path.as_uri())
    seconds = time.perf_counter() - started
    details = {"model": selected["version"], "model_url": selected["url"], "engine": engine.describe(),
               "agreement": agreement.to_dict(), "seconds": round(seconds, 2),
               "pixels_per_second": round(stats["valid_pixels"] / max(stats["compute_s"], 1e-9)),
               **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}}
    store.write_record(record_url, stage=STAGE, fingerprint=key, outputs={"probabilities": out_url},
                       checksums={out_url: checksum}, details=details)
    log.info("%s: %d pixels classified with %s in %.1f s (%.0f px/s in the model)", tile.tile_id,
             stats["valid_pixels"], selected["version"], seconds, details["pixels_per_second"])
    return {"tile_id": tile.tile_id, "skipped": False, "record": record_url, "model": selected["version"],
            "engine": f"{engine.device}/{engine.precision}", "valid_pixels": stats["valid_pixels"]}


def _classify_blocks(reader: TimeSeriesReader, engine: InferenceEngine, grid, path, model: TrainedModel,
                     config: Config, selected: dict, stats: dict, tile: ProcessingTile) -> tuple[InferenceEngine, Agreement]:
    """Classify the tile block by block into ``path``. The engine is checked against fp32 eager
    on the first block with valid pixels, before that block is classified; returns the engine
    that ran and its agreement."""
    inference = config.inference
    windows = [Window(col, row, block.width, block.height) for row, col, block in grid.blocks(inference.block_px)]
    n_classes = len(model.classes)
    agreement = None
    with rasterio.open(path, "w", **probs_io.profile(grid, n_classes)) as writer:
        probs_io.describe(writer, model.classes, config.codes.classes, model=f"{selected['pu_id']}/{selected['version']}",
                          model_sha256=selected["model_sha256"])
        for i, window in enumerate(windows, start=1):
            t0 = time.perf_counter()
            x, valid = reader.read(window)
            t1 = time.perf_counter()
            if agreement is None and len(x):
                pick = np.unique(np.linspace(0, len(x) - 1, min(inference.check_px, len(x))).astype(np.int64))
                engine, agreement = check_agreement(engine, np.ascontiguousarray(x[pick]),
                                                    inference.min_top_class_agreement, inference.max_probability_difference)
                log.info("%s: %s inference (%s), agreement with fp32 eager on %d pixels: top class %.4f %%, "
                         "max |dp| %.2e", tile.tile_id, engine.precision, engine.device, agreement.pixels,
                         100 * agreement.top_class_agreement, agreement.max_probability_difference)
                t1 = time.perf_counter()
            dense = np.zeros((n_classes, valid.size), np.float32)
            dense[:, valid.ravel()] = engine.predict_proba(x).T
            t2 = time.perf_counter()
            writer.write(probs_io.encode(dense.reshape(n_classes, *valid.shape), valid), window=window)
            t3 = time.perf_counter()
            stats["read_s"] += t1 - t0
            stats["compute_s"] += t2 - t1
            stats["write_s"] += t3 - t2
            stats["valid_pixels"] += len(x)
            log.debug("%s block %d/%d: %d valid pixels; read %.2f s, classify %.2f s, write %.2f s",
                      tile.tile_id, i, len(windows), len(x), t1 - t0, t2 - t1, t3 - t2)
            if i % 16 == 0 or i == len(windows):
                log.info("%s: %d/%d blocks classified", tile.tile_id, i, len(windows))
    return engine, agreement or Agreement(0, 1.0, 0.0)  # a tile without a valid pixel checks nothing
