"""The interannual calibration (ATBD 3.1.6 c): the blended probabilities of a reference year
against its previous productions, so that class changes between productions are kept where
they are strong and suppressed where they look like classification noise.

* **Prior**: the previous productions' probabilities combined, folding from the oldest: a
  year's vector is kept while the next year has the same class, else the next year's is taken
  (for 2023 with 2018 and 2021: 2018's where both years agree, else 2021's). A year without
  data at a pixel leaves the older one.
* **Change magnitude** M: the Euclidean distance between the current and the prior vectors,
  0 .. sqrt 2, computed on the stored values (steps of 1e-4) so it is exact and repeatable.
* **Direction**: (prior class, current class) where they differ, 110 of them. The threshold of a
  direction is a percentile of M over the PU's pixels changing in that direction
  (``calibration.percentile``, overridden per direction by ``calibration.directions``; the
  reading of the rule is in :class:`clcplus_ops.config.CalibrationConfig`), nearest rank. A change
  is kept where M reaches its threshold.
* **Suppressed change**: the pixel takes the prior's probability vector, so RAS (its highest
  class) is the prior class and RASCL (its margin) is the prior's confidence in it; RAS and RASCL
  always come from one vector.
* **No valid observation** this year (no blended probabilities): the prior's vector, where there
  is one (the layers stage flags such pixels).

The stage makes two passes over the PU by blocks: the first counts M per direction (a histogram
in steps of 1e-4, so the percentiles are exact), the second applies the thresholds.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence

import numpy as np

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.postprocessing.blending import read_encoded
from clcplus_ops.stage import External, Stage, StageIO, Target, blocks_with_progress

# M in steps of 1e-4 of a probability: 0 .. round(sqrt(2) x 10 000).
M_MAX = math.ceil(math.sqrt(2) * probs_io.SCALE)
MAGNITUDE_NODATA = 255
# calibrate/decisions.tif: what the calibration did at each pixel (a QC layer; the layers stage
# flags TOOK_PRIOR pixels).
UNCHANGED, KEPT, SUPPRESSED, TOOK_PRIOR, NO_DECISION = 0, 1, 2, 3, 255

# --------------------------------------------------------------------------------------------
# Pure parts


def top_class(encoded: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The class of the highest stored probability (ties: the first band), 0 where no data.
    One pass over the bands (several times faster than argmax along the band axis)."""
    best = encoded[0].copy()
    top = np.zeros(best.shape, np.uint8)
    for k in range(1, encoded.shape[0]):
        higher = encoded[k] > best
        np.copyto(best, encoded[k], where=higher)
        top[higher] = k
    codes = classes.astype(np.uint8)[top]
    codes[encoded[0] == probs_io.NODATA] = 0
    return codes


def combined_prior(priors: Sequence[np.ndarray], classes: np.ndarray) -> np.ndarray:
    """The prior of encoded previous productions ordered oldest first: folding from the oldest,
    the running vector is kept where the next year has the same class (or no data), else the
    next year's vector is taken."""
    prior = priors[0].copy()
    for newer in priors[1:]:
        ours, theirs = top_class(prior, classes), top_class(newer, classes)
        take = (theirs > 0) & (ours != theirs)
        np.copyto(prior, newer, where=take[None])
    return prior


def change_magnitude(current: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """M in steps of 1e-4 (uint16, 0..M_MAX) between encoded vectors; 0 where either has no data.
    Squares summed band by band in int32 (at most 11 x 10 000^2 < 2^31)."""
    squares = np.zeros(current.shape[1:], np.int32)
    for k in range(current.shape[0]):
        diff = current[k].astype(np.int32)
        diff -= prior[k]
        diff *= diff
        squares += diff
    squares[(current[0] == probs_io.NODATA) | (prior[0] == probs_io.NODATA)] = 0  # (wrapped: no data)
    return np.rint(np.sqrt(squares, dtype=np.float64)).astype(np.uint16)


def direction_index(prior_class: np.ndarray, current_class: np.ndarray, n_classes: int) -> np.ndarray:
    """Index (prior band x n + current band) of each pixel's change direction; -1 where the
    class did not change or either year has no class. Codes are 1..n here (band = code - 1)."""
    index = (prior_class.astype(np.int32) - 1) * n_classes + (current_class.astype(np.int32) - 1)
    index[(prior_class == current_class) | (prior_class == 0) | (current_class == 0)] = -1
    return index


def magnitude_histogram(direction: np.ndarray, m: np.ndarray, n_directions: int) -> np.ndarray:
    """(n_directions, M_MAX + 1) counts of M per direction."""
    changed = direction >= 0
    flat = direction[changed].astype(np.int64) * (M_MAX + 1) + m[changed]
    return np.bincount(flat, minlength=n_directions * (M_MAX + 1)).reshape(n_directions, M_MAX + 1)


def thresholds(histogram: np.ndarray, percentiles: np.ndarray) -> np.ndarray:
    """Per direction, the nearest-rank ``percentiles`` of M (steps of 1e-4): the smallest M with
    at least that share of the direction's pixels at or below it. M_MAX + 1 (nothing kept) for a
    direction without pixels."""
    counts = histogram.sum(axis=1)
    cumulative = np.cumsum(histogram, axis=1)
    rank = np.maximum(1, np.ceil(percentiles / 100.0 * counts)).astype(np.int64)
    out = np.full(len(counts), M_MAX + 1, np.int64)
    has = counts > 0
    # First M whose cumulative count reaches the rank.
    out[has] = np.argmax(cumulative[has] >= rank[has, None], axis=1)
    return out


def calibrate_block(current: np.ndarray, prior: np.ndarray | None, threshold: np.ndarray,
                    classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(calibrated encoded probabilities, M (uint16, steps of 1e-4), direction index, kept
    (bool)) of one block: suppressed changes and pixels without data take the prior's vector."""
    n = len(classes)
    if prior is None:
        empty = np.full(current.shape[1:], -1, np.int32)
        return current, np.zeros(current.shape[1:], np.uint16), empty, np.zeros(current.shape[1:], bool)
    m = change_magnitude(current, prior)
    direction = direction_index(top_class(prior, classes), top_class(current, classes), n)
    changed = direction >= 0
    kept = np.zeros(changed.shape, bool)
    kept[changed] = m[changed] >= threshold[direction[changed]]
    take_prior = (changed & ~kept) | ((current[0] == probs_io.NODATA) & (prior[0] != probs_io.NODATA))
    out = current.copy()
    np.copyto(out, prior, where=take_prior[None])
    return out, m, direction, kept


def decisions_layer(current: np.ndarray, prior: np.ndarray | None, direction: np.ndarray,
                    kept: np.ndarray) -> np.ndarray:
    """UNCHANGED / KEPT / SUPPRESSED / TOOK_PRIOR per pixel; NO_DECISION where neither year
    has data."""
    has_current = current[0] != probs_io.NODATA
    out = np.where(has_current, UNCHANGED, NO_DECISION).astype(np.uint8)
    if prior is None:
        return out
    changed = direction >= 0
    out[changed & kept] = KEPT
    out[changed & ~kept] = SUPPRESSED
    out[~has_current & (prior[0] != probs_io.NODATA)] = TOOK_PRIOR
    return out


def magnitude_layer(m: np.ndarray, current: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """The QC layer: M scaled to 0..100 (100 = sqrt 2), MAGNITUDE_NODATA where either year has
    no data."""
    out = np.full(m.shape, MAGNITUDE_NODATA, np.uint8)
    if prior is None:
        return out
    both = (current[0] != probs_io.NODATA) & (prior[0] != probs_io.NODATA)
    out[both] = np.rint(m[both].astype(np.float32) * (100.0 / (math.sqrt(2) * probs_io.SCALE))).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Previous productions


def previous_years(config, year: int) -> list[int]:
    """The reference years before ``year`` whose productions calibrate it, oldest first."""
    from clcplus_ops.calendar import scheduled_years

    n = config.calibration.previous_productions
    if n == 0:
        return []
    earlier = list(itertools.takewhile(lambda y: y < year, scheduled_years(series=config.time_series)))
    return earlier[-n:]


# A year's production is its own chain's blend, or one imported from outside (the import
# wins: importing is an operator's explicit statement of what was delivered).
PRODUCTION_STAGES = ("import_production", "blend")


def find_production(ctx, year: int):
    """(stage name, record, probabilities Input) of the PU's production of ``year``, or None."""
    target = Target(ctx.target.layout, year, ctx.target.pu_id)
    for stage_name in PRODUCTION_STAGES:
        if ctx.record(stage_name, target, "pu") is not None:
            record, probabilities = ctx.input_of(stage_name, "probabilities", target, "pu")
            return stage_name, record, probabilities
    return None


# --------------------------------------------------------------------------------------------
# The stage


def _outputs(config) -> dict[str, str]:
    files = {"probabilities": "calibrate/probabilities.tif", "decisions": "calibrate/decisions.tif"}
    if config.calibration.change_magnitude_layer:
        files["change_magnitude"] = "calibrate/change_magnitude.tif"
    return files


def _params(config, target: Target, options) -> dict:
    from clcplus_ops.postprocessing.mosaic import layout_units, product_grid

    unit = layout_units(config, target.layout)[target.pu_id]
    classes = sorted(config.codes.classes)
    return {"grid": product_grid(config, unit).to_dict(), "previous_years": previous_years(config, target.reference_year),
            "percentiles": {f"{a}>{b}": p for (a, b), p in sorted(config.calibration.percentiles(classes).items())},
            "encoding": probs_io.encoding(), "block_px": config.blending.block_px}


def _prepare(ctx) -> External:
    found, identity, missing = [], {}, []
    for year in previous_years(ctx.config, ctx.target.reference_year):
        production = find_production(ctx, year)
        if production is None:
            missing.append(year)
            identity[str(year)] = "missing"
            continue
        stage_name, record, probabilities = production
        found.append((year, stage_name, probabilities))
        identity[str(year)] = {"stage": stage_name, "fingerprint": record.fingerprint}
    return External(identity={"previous_productions": identity}, value={"found": found, "missing": missing})


def _compute(io: StageIO) -> dict:
    grid = Grid.from_dict(io.params["grid"])
    classes = np.array(sorted(io.config.codes.classes))
    n = len(classes)
    found, missing = io.external["found"], io.external["missing"]
    percentiles = io.config.calibration.percentiles(classes.tolist())
    percentile = np.full(n * n, 100.0)
    for (a, b), p in percentiles.items():
        percentile[(a - 1) * n + (b - 1)] = p
    write_magnitude = "change_magnitude" in io.stage.output_files(io.config)
    block_px = io.params["block_px"]
    where = io.target.describe()
    with contextlib.ExitStack() as stack:
        current_ds = stack.enter_context(io.input("blend", "probabilities").raster())
        if Grid.of_dataset(current_ds) != grid:
            raise StageInputError(f"{where}: the blended probabilities are not on the PU's grid; re-run blend")
        previous = []
        for year, stage_name, inp in found:
            ds = stack.enter_context(inp.raster())
            g = Grid.of_dataset(ds)
            aligned = (g.epsg == grid.epsg and g.res == grid.res and ds.count == n
                       and ((g.transform.c - grid.transform.c) / grid.res).is_integer()
                       and ((g.transform.f - grid.transform.f) / grid.res).is_integer())
            if not aligned:
                raise StageInputError(f"{where}: the {year} production ({inp.label}) is not {n} bands on this PU's "
                                      f"pixel lattice (EPSG:{grid.epsg}, {grid.res:g} m); import it again with "
                                      f"`clcplus previous import`")
            previous.append((ds, g))

        def blocks(what: str):
            return blocks_with_progress(grid, block_px, io.log, f"{io.target.pu_id} {what}")

        def prior_of(block: Grid) -> np.ndarray | None:
            if not previous:
                return None
            # A previous production's PU grid may differ from this year's (same lattice):
            # what it does not cover reads as no data.
            return combined_prior([read_encoded(g, ds, block, n) for ds, g in previous], classes)

        # Pass 1: M per change direction over the PU.
        histogram = np.zeros((n * n, M_MAX + 1), np.int64)
        if previous:
            for _, _, block in blocks("calibration, pass 1 (change magnitudes)"):
                current = current_ds.read(window=block.window_in(grid))
                prior = prior_of(block)
                m = change_magnitude(current, prior)
                direction = direction_index(top_class(prior, classes), top_class(current, classes), n)
                histogram += magnitude_histogram(direction, m, n * n)
        threshold = thresholds(histogram, percentile)
        # Pass 2: keep or suppress, write.
        kept_by = np.zeros(n * n, np.int64)
        totals = {"pixels_with_prior": 0, "changed": 0, "kept": 0, "suppressed": 0, "from_previous_no_data": 0}
        out = stack.enter_context(io.raster("probabilities", grid, n, probs_io.DTYPE, probs_io.NODATA, "probabilities"))
        probs_io.describe(out, classes.tolist(), io.config.codes.classes)
        decisions = stack.enter_context(io.raster("decisions", grid, 1, "uint8", NO_DECISION, "probabilities"))
        decisions.update_tags(unchanged=str(UNCHANGED), kept=str(KEPT), suppressed=str(SUPPRESSED),
                              took_prior=str(TOOK_PRIOR))
        magnitude = (stack.enter_context(io.raster("change_magnitude", grid, 1, "uint8", MAGNITUDE_NODATA,
                                                   "probabilities")) if write_magnitude else None)
        for _, _, block in blocks("calibration, pass 2 (apply)" if previous else "calibration (no previous production)"):
            window = block.window_in(grid)
            current = current_ds.read(window=window)
            prior = prior_of(block)
            calibrated, m, direction, kept = calibrate_block(current, prior, threshold, classes)
            out.write(calibrated, window=window)
            decisions.write(decisions_layer(current, prior, direction, kept)[None], window=window)
            if magnitude is not None:
                magnitude.write(magnitude_layer(m, current, prior)[None], window=window)
            if prior is not None:
                changed = direction >= 0
                kept_by += np.bincount(direction[kept], minlength=n * n)
                totals["pixels_with_prior"] += int((prior[0] != probs_io.NODATA).sum())
                totals["changed"] += int(changed.sum())
                totals["kept"] += int(kept.sum())
                totals["suppressed"] += int((changed & ~kept).sum())
                totals["from_previous_no_data"] += int(((current[0] == probs_io.NODATA)
                                                        & (prior[0] != probs_io.NODATA)).sum())
    counts = histogram.sum(axis=1)
    directions = [{"from": int(classes[d // n]), "to": int(classes[d % n]), "pixels": int(counts[d]),
                   "percentile": float(percentile[d]), "threshold": round(int(threshold[d]) / probs_io.SCALE, 4),
                   "kept": int(kept_by[d]), "suppressed": int(counts[d] - kept_by[d])}
                  for d in range(n * n) if counts[d]]
    years = [year for year, _, _ in found]
    if missing:
        io.log.warning("%s: no production of %s in the store (neither its blend nor an imported one); calibrated "
                       "with %s. Import it (`clcplus previous import`) and re-run calibrate", where,
                       ", ".join(map(str, missing)), ", ".join(map(str, years)) or "none")
    if not previous:
        io.log.info("%s: no previous production: calibration skipped, the blended probabilities pass through", where)
        return {"calibrated": False, "reason": "no previous production", "previous_years": [],
                "missing_years": missing, "directions": []}
    io.log.info("%s: calibrated against %s: %d px changed class, %d kept, %d suppressed; %d px without observations "
                "took the prior", where, ", ".join(f"{y} ({s})" for y, s, _ in found), totals["changed"],
                totals["kept"], totals["suppressed"], totals["from_previous_no_data"])
    return {"calibrated": True, "previous_years": years,
            "previous_sources": {str(y): s for y, s, _ in found}, "missing_years": missing, **totals,
            "directions": directions}


CALIBRATE = Stage(
    name="calibrate",
    scope="pu",
    inputs=("blend",),
    outputs=_outputs,
    prepare=_prepare,
    params=_params,
    compute=_compute,
    summary=("calibrated", "previous_years", "missing_years", "changed", "kept", "suppressed"),
    permanent_errors=(StageInputError,),
    description="keep strong class changes against the previous productions, suppress weak ones (interannual "
                "calibration)",
)
