"""What the demo production does around the PU DAGs: models for the demo PUs, trained on the
synthetic world's samples when none is registered, and the accuracy of the classified and the
filtered maps against the synthetic ground truth.

The demo trains without the label audit's expert review (a person answers it in the training
DAG, ``clcplus_training_demo``): extract ► hold-out evaluation ► final fit ► register, the
same stages the training DAG runs, through the same runner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import rasterio

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.classification.classify import select_model
from clcplus_ops.config import Config
from clcplus_ops.locations import Locations, check_tile
from clcplus_ops.model.registry import ModelNotFoundError
from clcplus_ops.raster_io import gdal_env, gdal_path
from clcplus_ops.runner import run_stage, store_for
from clcplus_ops.stage import Target
from clcplus_ops.store import Store

log = logging.getLogger(__name__)
LAYOUT = "demo"


def ensure_models(config: Config, reference_year: int, pu_ids: Sequence[str], samples_csv_url: str,
                  store: Store | None = None) -> list[dict]:
    """The registered model of each PU; PUs without one get one trained on the samples of
    ``samples_csv_url`` (imported into the sample DB first; a re-import changes nothing)."""
    from clcplus_ops.model.sample_db import import_samples
    from clcplus_ops.model.stages import EVALUATE, EXTRACT, FINAL_FIT, REGISTER

    config = config.for_layout(LAYOUT)  # what the demo training DAG's tasks run with
    store = store or store_for(config)
    results = []
    for pu_id in pu_ids:
        try:
            chosen = select_model(config, pu_id, store=store)
            results.append({"pu_id": pu_id, "version": chosen["version"], "trained": False,
                            "overall_accuracy": chosen["hold_out_overall_accuracy"]})
            continue
        except ModelNotFoundError:
            log.info("%s: no registered model; training one on %s", pu_id, samples_csv_url)
        import_samples(store, Locations(config).sample_db, samples_csv_url, author="demo")
        target = Target(LAYOUT, reference_year, pu_id)
        run_stage(EXTRACT, config, target, store=store)
        evaluated = run_stage(EVALUATE, config, target, store=store)
        run_stage(FINAL_FIT, config, target, store=store)
        registered = run_stage(REGISTER, config, target, store=store)
        results.append({"pu_id": pu_id, "version": registered["version"], "trained": True,
                        "overall_accuracy": evaluated["overall_accuracy"]})
    return results


def _read_classes(url: str, grid, classes: np.ndarray) -> np.ndarray:
    """Class codes (argmax of the stored probabilities) on ``grid``; 0 where there is no data."""
    from clcplus_ops.sentinel2.reading import read_nearest

    with rasterio.open(gdal_path(url)) as dataset:
        stack = np.stack([read_nearest(dataset, grid, band) for band in range(1, dataset.count + 1)])
    codes = classes[stack.argmax(axis=0)]
    return np.where(stack[0] == probs_io.NODATA, 0, codes)


def map_accuracy(config: Config, reference_year: int, pu_id: str, truth_url: str, store: Store | None = None) -> dict:
    """Overall accuracy over the cores of the PU's tiles of the classified map (argmax of the
    probabilities) and of the filtered map, against the ground truth raster at ``truth_url``.
    The tiles are those of the PU run's join (``tiles_done.json``)."""
    from clcplus_ops.sentinel2.reading import read_nearest

    config = config.for_layout(LAYOUT)
    store = store or store_for(config)
    locations = Locations(config)
    done = store.read_json(locations.pu(reference_year, pu_id).tiles_done)
    classes = np.array(sorted(config.codes.classes))
    totals = {"pixels": 0, "classified_correct": 0, "filtered_correct": 0, "changed_by_filter": 0}
    with gdal_env(store.s3_settings), rasterio.open(gdal_path(truth_url)) as truth_ds:
        for tile_id in done["tiles"]:
            core = check_tile(config, tile_id).grid(0)
            if truth_ds.crs.to_epsg() != core.epsg:
                raise ValueError(f"ground truth {truth_url} is in {truth_ds.crs}, tile {tile_id} in EPSG:{core.epsg}")
            truth = read_nearest(truth_ds, core)
            place = locations.tile(reference_year, pu_id, tile_id)
            classified = _read_classes(place.probabilities, core, classes)
            filtered = _read_classes(place.filtered, core, classes)
            judged = np.isin(truth, classes) & (classified > 0) & (filtered > 0)
            totals["pixels"] += int(judged.sum())
            totals["classified_correct"] += int((classified == truth)[judged].sum())
            totals["filtered_correct"] += int((filtered == truth)[judged].sum())
            totals["changed_by_filter"] += int((classified != filtered)[judged].sum())
    n = max(totals["pixels"], 1)
    return {"pu_id": pu_id, "tiles": len(done["tiles"]), "pixels": totals["pixels"],
            "overall_accuracy_classified": totals["classified_correct"] / n,
            "overall_accuracy_filtered": totals["filtered_correct"] / n,
            "changed_by_filter": totals["changed_by_filter"] / n}
