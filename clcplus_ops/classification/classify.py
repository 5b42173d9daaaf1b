"""The classify stage: the PU's registered TempCNN applied to the pixels of one tile that the
PU's products use (its area plus buffer and a margin, :mod:`.area`; every pixel with
``inference.pu_area_only`` off).

Input: the ingest stage's time series of the tile (``features/*.tif`` and ``valid_obs.tif``, tile
grid plus the ingestion halo), shared by the PUs covering the tile; each classifies it with its
own model. The model is external (the registry): the PU's newest version registered
for the reference year (its card's ``reference_year``; a card without one counts for every
year), or the one the ``model_version`` option names; either must have been trained on the
year's time series (features, window, steps: 2018's +- 6 months give 73 steps, the other years'
+- 3 months 54). Its version and the sha256 of its weights enter the fingerprint, so a new
model re-classifies and a re-run with the same one skips.

Output: ``probabilities.tif`` (11 bands, see :mod:`.probabilities` for the encoding) on the
same grid as the input, halo included, so the bilateral filter is exact at the tile edges; no
data outside the PU's area (blocks wholly outside are not read). The
tile is read, classified through an :class:`~clcplus_ops.classification.inference.InferenceEngine`
and written block by block, so memory is bounded by ``inference.block_px``, not by the tile.

torch is imported only when a tile is classified (DAG files import this module to declare
their tasks).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clcplus_ops.classification import area
from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.config import Config
from clcplus_ops.errors import ClcplusError, StageInputError
from clcplus_ops.model import registry
from clcplus_ops.model.registry import ModelNotFoundError
from clcplus_ops.stage import External, Input, Resources, Stage, StageIO, Target, blocks_with_progress

if TYPE_CHECKING:
    from clcplus_ops.classification.inference import Agreement, InferenceEngine
    from clcplus_ops.model.trainer import TrainedModel
    from clcplus_ops.store import Store

log = logging.getLogger(__name__)


class ClassifyError(ClcplusError):
    """The tile cannot be classified with what is there (a model that does not fit the time
    series, a time series on another grid)."""


# --------------------------------------------------------------------------------------------
# The model


class NoModelForYearError(ModelNotFoundError):
    """The PU has registered models, but none for the run's reference year (models are trained
    on one year's time series: its window and steps)."""

    def __init__(self, pu_id: str, reference_year: int, url: str, registered: Mapping[str, object], wanted: str):
        super().__init__(pu_id, None, url, list(registered))
        self.reference_year = reference_year
        held = ", ".join(f"{version} (reference year {year})" for version, year in registered.items())
        self.args = (f"no model of PU {pu_id} for reference year {reference_year} ({wanted}); {url} holds {held}; "
                     f"train and register one for {reference_year} (the training DAG with reference_year "
                     f"{reference_year}), or name in model_version a version whose time series fits",)


def _selection(model: registry.RegisteredModel) -> dict:
    """What a run records of the model it classifies with (small enough for XCom)."""
    return {"pu_id": model.pu_id, "version": model.version, "url": model.url,
            "model_sha256": model.card["artefacts"]["model.pt"]["sha256"],
            "reference_year": model.card.get("reference_year"),
            "hold_out_overall_accuracy": model.card.get("metrics", {}).get("overall_accuracy")}


def expected_input(config: Config, reference_year: int) -> dict:
    """What a model must take to classify ``reference_year``: the configured features over that
    year's time series (its own window and number of steps)."""
    from clcplus_ops.sentinel2 import timeseries

    s2 = config.sentinel2
    return {"features": timeseries.feature_names(s2.bands, s2.indices),
            **config.time_series.for_year(reference_year).input_signature()}


def _misfits(config: Config, card: Mapping, reference_year: int) -> list[str]:
    """How the input recorded on a model card differs from ``reference_year``'s time series.
    Features and steps are on every card; the step length and window months on the cards of
    models trained since years have their own windows (compared where recorded)."""
    given = card.get("model", {}).get("input", {})
    return [f"{key}: model {given.get(key)!r}, configuration {value!r}"
            for key, value in expected_input(config, reference_year).items()
            if (key in ("features", "steps") or key in given) and given.get(key) != value]


def _check_fits(config: Config, model: registry.RegisteredModel, reference_year: int) -> None:
    problems = _misfits(config, model.card, reference_year)
    if problems:
        raise ClassifyError(f"model {model.pu_id}/{model.version} ({model.url}) does not fit this configuration's "
                            f"time series: {'; '.join(problems)} (PU {model.pu_id}, reference year {reference_year}: "
                            f"{config.time_series.for_year(reference_year).describe()})")


def _resolve(store: Store, config: Config, pu_id: str, version: str | None, reference_year: int
             ) -> registry.RegisteredModel:
    """The model ``version`` of ``pu_id`` for a run of ``reference_year``; without a version the
    newest one registered for that year (a card that records no reference year counts for
    every year). Either way its recorded input must fit the year's time series: ClassifyError
    if not, NoModelForYearError if the PU has models but none of that year."""
    from clcplus_ops.locations import Locations, model_pu_url

    models = Locations(config).models
    if version not in (None, "latest"):
        chosen = registry.resolve_model(store, models, pu_id, version)
        if chosen.card.get("reference_year") not in (None, reference_year):
            log.info("%s: model %s was trained for %s; it classifies %d as asked", pu_id, version,
                     chosen.card.get("reference_year"), reference_year)
    else:
        chosen, registered = None, {}
        for candidate in reversed(registry.list_versions(store, models, pu_id)):
            model = registry.resolve_model(store, models, pu_id, candidate)
            year = model.card.get("reference_year")
            registered[candidate] = year
            if year in (None, reference_year):
                chosen = model
                break
        if chosen is None:
            if not registered:  # nothing complete at all: the registry's own message (incomplete ones)
                registry.resolve_model(store, models, pu_id, None)
            raise NoModelForYearError(pu_id, reference_year, model_pu_url(models, pu_id), registered,
                                      config.time_series.for_year(reference_year).describe())
    _check_fits(config, chosen, reference_year)
    return chosen


def select_model(config: Config, pu_id: str, reference_year: int, version: str | None = None,
                 store: Store | None = None) -> dict:
    """The registered model a PU run of ``reference_year`` classifies with (the newest of that
    year unless ``version``), as a small dict for XCom. It reads the model cards only, so a run
    without a model for its year fails at once: ModelNotFoundError (NoModelForYearError) or
    ClassifyError, naming the PU and the year."""
    from clcplus_ops.runner import store_for

    store = store or store_for(config)
    selected = _selection(_resolve(store, config, pu_id, version, reference_year))
    log.info("%s %d: classifying with model %s (%s, hold-out OA %s)", pu_id, reference_year, selected["version"],
             selected["url"], selected["hold_out_overall_accuracy"])
    return selected


@dataclass(frozen=True)
class ChosenModel:
    """The registered model a classify run uses (``prepare``'s value) and how to read its
    weights (checked against its card) when the tile is computed."""

    registered: registry.RegisteredModel
    read_weights: Callable[[], bytes]

    @property
    def selection(self) -> dict:
        return _selection(self.registered)


def model_weights(config: Config, registered: registry.RegisteredModel, reference_year: int, data: bytes
                  ) -> TrainedModel:
    """The model of the weights ``data``, refused if its inputs are not the features this
    configuration ingests for ``reference_year``."""
    from clcplus_ops.model.trainer import TrainedModel

    model = TrainedModel.from_bytes(data)
    expected = expected_input(config, reference_year)
    problems = _misfits(config, registered.card, reference_year)
    if (model.arch.channels, model.arch.time_steps) != (len(expected["features"]), expected["steps"]):
        problems.append(f"network input {(model.arch.channels, model.arch.time_steps)}")
    if sorted(model.classes) != sorted(config.codes.classes):
        problems.append(f"classes {model.classes}")
    if problems:
        raise ClassifyError(f"model {registered.pu_id}/{registered.version} ({registered.url}) does not fit this "
                            f"configuration's time series: {'; '.join(problems)} (reference year {reference_year})")
    return model


def load_model(config: Config, pu_id: str, reference_year: int, version: str | None, store: Store
               ) -> tuple[registry.RegisteredModel, TrainedModel]:
    """The registered model ``version`` (None: the newest of ``reference_year``) of ``pu_id``
    and its weights."""
    registered = _resolve(store, config, pu_id, version, reference_year)
    return registered, model_weights(config, registered, reference_year,
                                     registry.read_artefact(store, registered, "model.pt"))


# --------------------------------------------------------------------------------------------
# Reading the time series


class TimeSeriesReader:
    """Window reads of a tile's feature rasters as (valid pixels, features, steps) tables.

    The feature files are decompressed in parallel (GDAL releases the GIL), one thread per
    core; reading and classifying alternate, since running them at once stalls torch's threads
    (measured: no gain on 2 cores). Every read of a block finishes before the block's result
    (or error) is returned, and :meth:`close` stops the threads before it closes the rasters:
    no thread ever reads a closed dataset. A read error names the file.
    """

    def __init__(self, features: Sequence[Input], valid_obs: Input):
        self._inputs = [*features, valid_obs]
        self._contexts = []
        self._pool = None
        try:
            datasets = [self._open(i) for i in self._inputs]
            self.features, self.counts = datasets[:-1], datasets[-1]
            self.steps = self.features[0].count
            self._pool = ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)), thread_name_prefix="read-features")
        except BaseException:
            self.close()
            raise

    def _open(self, source: Input):
        context = source.raster()
        dataset = context.__enter__()
        self._contexts.append(context)
        return dataset

    def _read(self, i: int, **kwargs) -> np.ndarray:
        from rasterio.errors import RasterioError

        dataset = self.features[i] if i < len(self.features) else self.counts
        try:
            return dataset.read(**kwargs)
        except (RasterioError, OSError) as error:
            source = self._inputs[i]
            reason = error.__cause__ or error  # rasterio's own message points at GDAL's
            raise StageInputError(f"input {source.name} of {source.stage} ({source.label}) cannot be read: {reason}; "
                                  f"re-run {source.stage} (--force)") from error

    def read(self, window, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x int16 (valid pixels, features, steps) C-contiguous, valid bool (rows, cols)): the
        pixels with observations, of those in ``keep`` (bool (rows, cols)) when given. A window
        without any such pixel reads no features."""
        import torch  # not at the top: DAG files import this module

        valid = self._read(len(self.features), indexes=1, window=window) > 0
        if keep is not None:
            valid &= keep
        rows, cols = valid.shape
        if not valid.any():
            return np.empty((0, len(self.features), self.steps), np.int16), valid
        stack = np.empty((len(self.features), self.steps, rows, cols), np.int16)
        # Each dataset is read by one thread at a time (GDAL handles are not shared). All reads
        # end before this returns or raises.
        futures = [self._pool.submit(self._read, f, window=window, out=stack[f]) for f in range(len(self.features))]
        wait(futures)
        for future in futures:
            future.result()  # the first error, naming its file
        flat = stack.reshape(len(self.features) * self.steps, rows * cols)
        # Pixels to rows with torch's blocked 2-D transpose, then the valid rows: 3x faster than
        # numpy's boolean gather along the pixel axis (measured on a 256 px block: 78 ms vs 223 ms,
        # some 14 s of a 25 km tile).
        x = torch.from_numpy(flat).t().contiguous()
        if not valid.all():
            x = x.index_select(0, torch.from_numpy(np.flatnonzero(valid)))
        return x.numpy().reshape(-1, len(self.features), self.steps), valid

    def close(self) -> None:
        """Stop the reading threads, then close the rasters (in this order)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        while self._contexts:
            self._contexts.pop().__exit__(None, None, None)

    def __enter__(self) -> TimeSeriesReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def time_series_reader(io: StageIO, feature_names: Sequence[str]) -> TimeSeriesReader:
    """The reader of the classify run's ingest inputs."""
    return TimeSeriesReader([io.input("ingest", name) for name in feature_names], io.input("ingest", "valid_obs"))


# --------------------------------------------------------------------------------------------
# The stage


def _prepare(ctx) -> External:
    from clcplus_ops.locations import check_version

    version = ctx.options.get("model_version") or None
    if version not in (None, "latest"):
        check_version(version)
    registered = _resolve(ctx.store, ctx.config, ctx.target.pu_id, version, ctx.target.reference_year)
    store = ctx.store
    chosen = ChosenModel(registered, lambda: registry.read_artefact(store, registered, "model.pt"))
    selected = chosen.selection
    return External(identity={k: selected[k] for k in ("pu_id", "version", "model_sha256")}, value=chosen)


def _params(config: Config, target: Target, options: Mapping) -> dict:
    inference = config.inference
    # What was asked for, not what ran: a retry on a GPU worker of a tile done on a CPU worker
    # is current (the engine that ran is in the record's details).
    return {"encoding": probs_io.encoding(), "profile": config.rasters.probabilities.model_dump(),
            "device": inference.device, "precision": inference.precision, "compile": inference.compile,
            "tolerances": [inference.min_top_class_agreement, inference.max_probability_difference],
            "area": area.identity(config, target.layout, target.pu_id)}


def _compute(io: StageIO) -> dict:
    import torch

    from clcplus_ops.classification.inference import create_engine

    started = time.perf_counter()
    config, tile, chosen = io.config, io.tile, io.external
    selected = chosen.selection
    model = model_weights(config, chosen.registered, io.target.reference_year, chosen.read_weights())
    provenance = io.input("ingest", "provenance").read_json()
    grid = tile.grid(provenance["grid"]["halo_px"])
    if [provenance["grid"][k] for k in ("height", "width")] != [grid.height, grid.width]:
        raise ClassifyError(f"tile {tile.tile_id}: time series grid {provenance['grid']} is not the tile's {grid}")
    inference = config.inference
    if inference.cpu_threads:
        torch.set_num_threads(inference.cpu_threads)
    engine = create_engine(model, inference.device, inference.precision, inference.batch_px, inference.compile)
    needed = area.needed(config, io.target.layout, io.target.pu_id, grid)
    stats = {"read_s": 0.0, "compute_s": 0.0, "write_s": 0.0, "valid_pixels": 0,
             "area_pixels": grid.width * grid.height if needed is None else int(needed.sum())}
    with time_series_reader(io, provenance["features"]) as reader:
        engine, agreement = _classify_blocks(io, reader, engine, grid, model, selected, stats, needed)
    seconds = time.perf_counter() - started
    details = {"model": selected["version"], "model_url": selected["url"], "engine": engine.describe(),
               "agreement": agreement.to_dict(), "seconds": round(seconds, 2),
               "pixels_per_second": round(stats["valid_pixels"] / max(stats["compute_s"], 1e-9)),
               **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}}
    io.log.info("%s: %d pixels classified with %s in %.1f s (%.0f px/s in the model)", tile.tile_id,
                stats["valid_pixels"], selected["version"], seconds, details["pixels_per_second"])
    return details


def _classify_blocks(io: StageIO, reader: TimeSeriesReader, engine: InferenceEngine, grid, model: TrainedModel,
                     selected: dict, stats: dict, needed: np.ndarray | None) -> tuple[InferenceEngine, Agreement]:
    """Classify the tile block by block into the ``probabilities`` output, only the ``needed``
    pixels (all when None; a block without any is not even read). The engine is
    checked against fp32 eager on the first block with valid pixels, before that block is
    classified; returns the engine that ran and its agreement."""
    from clcplus_ops.classification.inference import Agreement, check_agreement

    config, tile_id = io.config, io.target.tile_id
    inference = config.inference
    n_classes = len(model.classes)
    agreement = None
    with io.raster("probabilities", grid, n_classes, probs_io.DTYPE, probs_io.NODATA, "probabilities") as writer:
        probs_io.describe(writer, model.classes, config.codes.classes,
                          model=f"{selected['pu_id']}/{selected['version']}", model_sha256=selected["model_sha256"])
        for _, _, block in blocks_with_progress(grid, inference.block_px, io.log, f"{tile_id} classify"):
            window = block.window_in(grid)
            t0 = time.perf_counter()
            x, valid = reader.read(window, None if needed is None else needed[window.toslices()])
            t1 = time.perf_counter()
            if agreement is None and len(x):
                pick = np.unique(np.linspace(0, len(x) - 1, min(inference.check_px, len(x))).astype(np.int64))
                engine, agreement = check_agreement(engine, np.ascontiguousarray(x[pick]),
                                                    inference.min_top_class_agreement, inference.max_probability_difference)
                io.log.info("%s: %s inference (%s), agreement with fp32 eager on %d pixels: top class %.4f %%, "
                            "max |dp| %.2e", tile_id, engine.precision, engine.device, agreement.pixels,
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
            io.log.debug("%s block (%d, %d): %d valid pixels; read %.2f s, classify %.2f s, write %.2f s", tile_id,
                         window.row_off, window.col_off, len(x), t1 - t0, t2 - t1, t3 - t2)
    return engine, agreement or Agreement(0, 1.0, 0.0)  # a tile without a valid pixel checks nothing


CLASSIFY = Stage(
    name="classify",
    scope="tile",
    inputs=("ingest",),
    input_scopes={"ingest": "shared_tile"},
    outputs={"probabilities": "probabilities.tif"},
    prepare=_prepare,
    params=_params,
    compute=_compute,
    options=("model_version",),
    resources=Resources(pool="inference.airflow_pool", queue="inference.airflow_queue", memory="large"),
    summary=("model", "valid_pixels"),
    permanent_errors=(ModelNotFoundError, ClassifyError),
    description="the PU's registered TempCNN over the tile's time series: 11-band class probabilities",
)
