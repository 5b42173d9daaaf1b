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
from clcplus_ops.config import Config
from clcplus_ops.locations import Locations, check_tile
from clcplus_ops.raster_io import gdal_env, gdal_path
from clcplus_ops.runner import run_stage, store_for
from clcplus_ops.stage import Target
from clcplus_ops.store import Store

log = logging.getLogger(__name__)
LAYOUT = "demo"


def ensure_models(config: Config, reference_year: int, pu_ids: Sequence[str], samples_csv_urls: Sequence[str],
                  store: Store | None = None) -> list[dict]:
    """Each PU's model of ``reference_year`` (registered with that reference year on its card),
    trained when there is none, as each production trains its own: on the samples of
    ``samples_csv_urls`` (imported into the sample DB first; a re-import changes nothing) with
    that year's time series."""
    from clcplus_ops.model import registry
    from clcplus_ops.model.sample_db import import_samples
    from clcplus_ops.model.stages import EVALUATE, EXTRACT, FINAL_FIT, REGISTER

    config = config.for_layout(LAYOUT)  # what the demo training DAG's tasks run with
    store = store or store_for(config)
    models_root = Locations(config).models
    results = []
    for pu_id in pu_ids:
        found = None
        for version in reversed(registry.list_versions(store, models_root, pu_id)):
            model = registry.resolve_model(store, models_root, pu_id, version)
            if model.card.get("reference_year") == reference_year:
                found = model
                break
        if found is not None:
            results.append({"pu_id": pu_id, "version": found.version, "trained": False,
                            "overall_accuracy": found.card.get("metrics", {}).get("overall_accuracy")})
            continue
        log.info("%s: no registered model of %d; training one", pu_id, reference_year)
        for url in samples_csv_urls:
            import_samples(store, Locations(config).sample_db, url, author="demo")
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


# --------------------------------------------------------------------------------------------
# The PUs' layers against the truth, and the seam between the demo PUs


def _layer(store: Store, url: str) -> tuple[np.ndarray, object]:
    from clcplus_ops.geo.grid import Grid

    with gdal_env(store.s3_settings), rasterio.open(gdal_path(url)) as ds:
        return ds.read(), Grid.of_dataset(ds)


def _truth_on(truth_url: str, grid, store: Store) -> np.ndarray:
    from rasterio.warp import Resampling, reproject

    out = np.zeros(grid.shape, np.uint8)
    with gdal_env(store.s3_settings), rasterio.open(gdal_path(truth_url)) as ds:
        reproject(rasterio.band(ds, 1), out, dst_transform=grid.transform, dst_crs=grid.crs,
                  resampling=Resampling.nearest, dst_nodata=0)
    return out


def pu_products(config: Config, reference_year: int, pu_ids: Sequence[str], truth_url: str,
                store: Store | None = None) -> dict:
    """Per PU over its own area: RAS against the synthetic truth (overall accuracy, per-class
    omission and commission) next to the PU's filtered map on the same pixels (its own model's
    probabilities on the product grid, unblended), the pixels blended and the counts of 253, 254
    and 255; and the seam between the PUs before and after blending."""
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.masks import inside
    from clcplus_ops.model.evaluation import accuracy
    from clcplus_ops.pipeline import BLEND, LAYERS, MOSAIC
    from clcplus_ops.runner import stage_record

    config = config.for_layout(LAYOUT)
    store = store or store_for(config)
    locations = Locations(config)
    units = load_layout(config.layout_path(LAYOUT))
    classes = np.array(sorted(config.codes.classes))
    codes = config.codes
    out: dict = {"pus": {}}
    maps = {}
    for pu_id in pu_ids:
        target = Target(LAYOUT, reference_year, pu_id)
        layers = stage_record(config, LAYERS, target, store)
        blend = stage_record(config, BLEND, target, store)
        mosaic = stage_record(config, MOSAIC, target, store)
        ras, grid = _layer(store, locations.resolve(layers.outputs["ras"]))
        ras = ras[0]
        encoded, _ = _layer(store, locations.resolve(mosaic.outputs["probabilities"]))
        unblended = np.where(encoded[0] == probs_io.NODATA, 0, classes[encoded.argmax(axis=0)]).astype(np.uint8)
        truth = _truth_on(truth_url, grid, store)
        own = inside(units[pu_id].geometry_in(units[pu_id].crs), grid)
        judged = own & np.isin(ras, classes) & np.isin(truth, classes) & (unblended > 0)
        ras_acc = accuracy(truth[judged], ras[judged], classes, config.codes.classes)
        filtered_acc = accuracy(truth[judged], unblended[judged], classes, config.codes.classes)
        out["pus"][pu_id] = {
            "pixels": int(judged.sum()), "own_pixels": int(own.sum()), "ras": ras_acc, "filtered": filtered_acc,
            "pixels_blended": blend.details["pixels_blended"], "neighbours": blend.details["neighbours"],
            "missing_neighbours": blend.details["missing_neighbours"],
            "coastal_seawater": int((own & (ras == codes.coastal_seawater)).sum()),
            "outside": int((own & (ras == codes.outside)).sum()), "nodata": int((own & (ras == codes.nodata)).sum()),
            "nodata_filled": layers.details["nodata_filled"],
        }
        before = np.where(np.isin(ras, classes) & (unblended > 0), unblended, ras)
        maps[pu_id] = (grid, own, ras, before, truth)
    if len(pu_ids) == 2:
        out["seam"] = seam_rates(maps[pu_ids[0]], maps[pu_ids[1]], classes)
    return out


def seam_rates(west, east, classes: np.ndarray, inside_px: int = 100, width_px: int = 10, beside_px: int = 10) -> dict:
    """Class-change rates between horizontally adjacent pixels whose left pixel is the west PU's
    and right pixel the east PU's (pairs straddling the border), and between pairs ``inside_px``
    to ``inside_px + width_px`` pixels inside either PU on the same rows; for the map before
    blending, after blending (RAS) and the truth; and between pairs 1 to ``beside_px`` pixels
    beside the border on either side (the same rows and nearly the same landscape: a seam is an
    excess across the border over these). Also the *spurious* change rates: the map
    changes class where the truth does not (a seam shows as spurious changes across the border;
    the plain rates also count the landscape's own class boundaries, which differ between the
    border's rows and 1 km inside). Each argument: (grid, own, ras, before, truth) on aligned
    grids of one CRS."""
    from clcplus_ops.geo.grid import Grid

    (g1, own1, *maps1), (g2, own2, *maps2) = west, east
    x0, y0 = min(g1.bounds[0], g2.bounds[0]), min(g1.bounds[1], g2.bounds[1])
    x1, y1 = max(g1.bounds[2], g2.bounds[2]), max(g1.bounds[3], g2.bounds[3])
    canvas = Grid.from_bounds(g1.epsg, (x0, y0, x1, y1), g1.res)

    def paste(grid, own, array, owner_id, into, owner):
        w = grid.window_in(canvas)
        sl = (slice(w.row_off, w.row_off + w.height), slice(w.col_off, w.col_off + w.width))
        into[sl][own] = array[own]
        owner[sl][own] = owner_id

    owner = np.zeros(canvas.shape, np.uint8)
    layers = [np.zeros(canvas.shape, np.uint8) for _ in range(3)]
    for i in range(3):
        paste(g1, own1, maps1[i], 1, layers[i], owner)
        paste(g2, own2, maps2[i], 2, layers[i], owner)
    rows, cols = np.nonzero((owner[:, :-1] == 1) & (owner[:, 1:] == 2))
    truth = layers[2]

    def pairs(c_left: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, left columns) of the pairs at ``c_left`` on the border rows, both pixels of
        PU ``side`` (0: the border pairs themselves) and classed in the maps and the truth."""
        ok = (c_left >= 0) & (c_left + 1 < canvas.width)
        r, c = rows[ok], c_left[ok]
        keep = (owner[r, c] == side) & (owner[r, c + 1] == side) if side else np.ones(r.size, bool)
        for layer in layers:
            keep &= np.isin(layer[r, c], classes) & np.isin(layer[r, c + 1], classes)
        return r[keep], c[keep]

    def both_sides(first: int, count: int) -> list:
        return [pairs(cols - shift, 1) for shift in range(first, first + count)] + \
            [pairs(cols + shift, 2) for shift in range(first, first + count)]

    across, inner, beside = [pairs(cols, 0)], both_sides(inside_px, width_px), both_sides(1, beside_px)
    result = {"pairs_across": int(across[0][0].size), "pairs_inside": int(sum(r.size for r, _ in inner)),
              "pairs_beside": int(sum(r.size for r, _ in beside))}
    for name, layer in zip(("after", "before", "truth"), layers):
        def rates(chosen) -> tuple[float, float]:
            r = np.concatenate([p[0] for p in chosen])
            c = np.concatenate([p[1] for p in chosen])
            if not r.size:
                return float("nan"), float("nan")
            changes = layer[r, c] != layer[r, c + 1]
            spurious = changes & (truth[r, c] == truth[r, c + 1])
            return float(changes.mean()), float(spurious.mean())

        (a, a_spurious), (i, i_spurious), (b, b_spurious) = rates(across), rates(inner), rates(beside)
        result[name] = {"across": a, "inside": i, "beside": b, "spurious_across": a_spurious,
                        "spurious_inside": i_spurious, "spurious_beside": b_spurious}
    return result


# --------------------------------------------------------------------------------------------
# Calibration and recoding against the synthetic truth of two reference years


def calibration_figures(config: Config, reference_year: int, previous_year: int, pu_ids: Sequence[str],
                        truth_urls: dict[int, str], store: Store | None = None) -> dict:
    """Per PU over its own land area, against the truth of both years:

    * *spurious changes*: the true class did not change but the blended class differs from the
      previous production's; the share the calibration suppressed;
    * *real changes* the classification saw: the true class changed and so did the map's; the
      share the calibration kept (a real change the blended map missed is not the calibration's
      to keep; it is counted apart);
    * per change direction (prior class -> blended class): pixels, real, spurious, kept;
    * overall accuracy of RAS's class after blending, after calibration and after recoding;
    * the recoded pixels (final class != calibrated class) and the share now correct."""
    from clcplus_ops.geo.layout import load_layout
    from clcplus_ops.geo.masks import inside
    from clcplus_ops.pipeline import BLEND, CALIBRATE, LAYERS, RECODE
    from clcplus_ops.postprocessing import calibration as cal
    from clcplus_ops.runner import stage_record

    config = config.for_layout(LAYOUT)
    store = store or store_for(config)
    locations = Locations(config)
    units = load_layout(config.layout_path(LAYOUT))
    classes = np.array(sorted(config.codes.classes))
    n = len(classes)
    out: dict = {"pus": {}}
    for pu_id in pu_ids:
        target, before = Target(LAYOUT, reference_year, pu_id), Target(LAYOUT, previous_year, pu_id)

        def read(stage, name, t=target):
            record = stage_record(config, stage, t, store)
            return _layer(store, locations.resolve(record.outputs[name]))

        (ras, grid), (blended, _) = read(LAYERS, "ras"), read(BLEND, "probabilities")
        calibrated, _ = read(CALIBRATE, "probabilities")
        decisions, _ = read(CALIBRATE, "decisions")
        final, _ = read(RECODE, "classes")
        previous, previous_grid = read(BLEND, "probabilities", before)
        if previous_grid != grid:
            raise ValueError(f"{pu_id}: the {previous_year} production is on another grid")
        now, then = _truth_on(truth_urls[reference_year], grid, store), _truth_on(truth_urls[previous_year], grid, store)
        own = inside(units[pu_id].geometry_in(units[pu_id].crs), grid) & np.isin(ras[0], classes)
        blend_cls, cal_cls = cal.top_class(blended, classes), cal.top_class(calibrated, classes)
        prior_cls, final_cls, decision = cal.top_class(previous, classes), final[0], decisions[0]
        judged = own & np.isin(now, classes) & np.isin(then, classes) & (blend_cls > 0) & (prior_cls > 0)
        real = judged & (now != then)
        map_changed = judged & (prior_cls != blend_cls)
        spurious, seen = map_changed & ~real, map_changed & real
        kept, suppressed = decision == cal.KEPT, decision == cal.SUPPRESSED
        directions = []
        index = np.where(map_changed, (prior_cls.astype(np.int64) - 1) * n + blend_cls - 1, -1)
        for d in np.unique(index[index >= 0]):
            at = index == d
            directions.append({"from": int(d // n + 1), "to": int(d % n + 1), "pixels": int(at.sum()),
                               "real": int((at & real).sum()), "real_kept": int((at & real & kept).sum()),
                               "spurious": int((at & ~real).sum()),
                               "spurious_suppressed": int((at & ~real & suppressed).sum())})
        accurate = own & np.isin(now, classes) & (final_cls > 0) & (blend_cls > 0)
        recoded = accurate & (final_cls != cal_cls)
        out["pus"][pu_id] = {
            "pixels": int(judged.sum()), "real": int(real.sum()), "real_seen": int(seen.sum()),
            "real_kept": int((seen & kept).sum()), "spurious": int(spurious.sum()),
            "spurious_suppressed": int((spurious & suppressed).sum()),
            "directions": sorted(directions, key=lambda d: -d["pixels"]),
            "accuracy_pixels": int(accurate.sum()),
            "correct_blended": int((blend_cls == now)[accurate].sum()),
            "correct_calibrated": int((cal_cls == now)[accurate].sum()),
            "correct_recoded": int((final_cls == now)[accurate].sum()),
            "recoded": int(recoded.sum()), "recoded_correct": int((final_cls == now)[recoded].sum()),
            "recoded_correct_before": int((cal_cls == now)[recoded].sum()),
            "calibration": stage_record(config, CALIBRATE, target, store).details,
            "recoding": stage_record(config, RECODE, target, store).details,
        }
    keys = ("pixels", "real", "real_seen", "real_kept", "spurious", "spurious_suppressed", "accuracy_pixels",
            "correct_blended", "correct_calibrated", "correct_recoded", "recoded", "recoded_correct")
    out["total"] = {k: sum(f[k] for f in out["pus"].values()) for k in keys}
    return out
