"""The layers stage: the PU's own area of the product's four layers on its product grid
(ATBD 3.1.1, 3.1.6 e, 3.2-3.4), from the calibrated probabilities, the recoded classes and the
mosaic's counts.

A pixel of the grid is *in the area* when its centre is in the PU's polygon and in the delivery
area (EEA38 + UK buffered by ``grid.aoi_buffer_m``); every other pixel is outside (254 / 65535)
and another PU, or nobody, delivers it.

* **RAS** (uint8): the recoded class (1-11; the class of the highest calibrated probability
  where no rule recoded it); coastal seawater (253) where the area is not land
  (:mod:`clcplus_ops.geo.coast`); no data (255) only where a pixel without any valid observation
  has neither a previous production's class nor an observed pixel within
  ``layers.nodata_fill_radius_px``.
* **No data**: EEA's delivery check of this product accepts only 1-11, 253 and 254 in RAS, so
  a land pixel without valid observations takes the previous production's class (the
  calibration gives it the prior's probabilities) or else the class most probable over the
  observed pixels of its neighbourhood (the sum of their probability vectors within the radius).
  Such pixels are flagged in ``nodata.tif`` (1 filled from the neighbourhood, 2 left no data,
  3 the previous production's class) and counted in the record.
* **RASCL** (uint8): round(100 x (highest - second highest calibrated probability)), 0-100:
  where the calibration suppressed a change or a pixel took the prior, the prior's vector, so
  the class and its confidence come from one vector; 0 where the pixel has no probabilities (a
  pixel filled from its neighbourhood: no evidence of its own). A recoded pixel keeps the
  calibrated confidence (RASPL says its class came from a rule).
* **RASDL** (uint16): valid observations, 0..``layers.max_observations`` (200); a larger count is
  stored as 200, read "200 or more" (the record counts them).
* **RASPL** (uint8, ATBD 3.4): 1 where the final class differs from the calibrated class (the
  recoding changed it), 0 elsewhere in the area, 254 outside. Coastal seawater is not counted
  as recoded.
"""

from __future__ import annotations

import contextlib

import numpy as np

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.postprocessing.calibration import TOOK_PRIOR
from clcplus_ops.postprocessing.mosaic import COUNT_NODATA, area_hash, layout_units, product_grid
from clcplus_ops.postprocessing.recoding_rules import raspl as recoded_flags
from clcplus_ops.stage import External, Stage, StageIO, Target, blocks_with_progress

FILLED, UNFILLED, PREVIOUS = 1, 2, 3  # values of nodata.tif in the area (0: observed)

# --------------------------------------------------------------------------------------------
# Pure parts


def classes_and_confidence(encoded: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class codes uint8, confidence uint8 0-100, valid bool) of encoded probabilities
    (uint16 (classes, rows, cols), probs_io encoding). Confidence is round half up of
    100 x (highest - second highest); 0 and class 0 where not valid."""
    valid = encoded[0] != probs_io.NODATA
    # One pass over the bands for the highest, its band and the second highest (a partition
    # along the band axis is several times slower); ties go to the first band, as argmax's.
    first = encoded[0].astype(np.int32)
    second = np.zeros_like(first)
    top = np.zeros(first.shape, np.intp)
    for k in range(1, encoded.shape[0]):
        band = encoded[k].astype(np.int32)
        higher = band > first
        second = np.maximum(second, np.where(higher, first, band))
        first = np.where(higher, band, first)
        top[higher] = k
    margin = first - second  # units of 1e-4
    confidence = np.minimum((margin + 50) // 100, 100).astype(np.uint8)
    codes = classes[top].astype(np.uint8)
    codes[~valid] = 0
    confidence[~valid] = 0
    return codes, confidence, valid


def fill_from_neighbourhood(encoded: np.ndarray, radius: int, classes: np.ndarray) -> np.ndarray:
    """For every pixel, the class with the highest sum of probabilities over the valid pixels
    within ``radius`` (a square window), 0 where none is valid."""
    from scipy.ndimage import uniform_filter

    valid = encoded[0] != probs_io.NODATA
    size = 2 * radius + 1
    sums = np.stack([uniform_filter(np.where(valid, band, 0).astype(np.float32), size=size, mode="constant")
                     for band in encoded])
    seen = uniform_filter(valid.astype(np.float32), size=size, mode="constant") > 0.5 / size**2
    out = classes[np.argmax(sums, axis=0)].astype(np.uint8)
    out[~seen] = 0
    return out


def layer_block(encoded: np.ndarray, counts: np.ndarray, in_area: np.ndarray, land: np.ndarray,
                filled: np.ndarray | None, classes: np.ndarray, codes, max_observations: int,
                final: np.ndarray | None = None, took_prior: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The four layers and the no-data flag of one block (pure). ``encoded``: calibrated
    probabilities; ``counts``: valid observations (COUNT_NODATA where no tile); ``in_area``: own
    area within the delivery area; ``land``: not sea; ``filled``: neighbourhood classes where
    pixels lack probabilities (None if all have them); ``final``: the recoded classes (0: no
    class; None: the calibrated ones); ``took_prior``: pixels whose probabilities the
    calibration took from the previous production for lack of observations."""
    cls, confidence, valid = classes_and_confidence(encoded, classes)
    final = cls if final is None else final
    ras = np.full(in_area.shape, codes.outside, np.uint8)
    on_land = in_area & land
    ras[in_area & ~land] = codes.coastal_seawater
    has = on_land & (final > 0)
    ras[has] = final[has]
    flag = np.full(in_area.shape, codes.outside, np.uint8)
    flag[in_area] = 0
    if took_prior is not None:
        flag[on_land & took_prior & has] = PREVIOUS
    missing = on_land & (final == 0)
    if missing.any():
        fill = filled if filled is not None else np.zeros(in_area.shape, np.uint8)
        got = missing & (fill > 0)
        ras[got] = fill[got]
        ras[missing & ~got] = codes.nodata
        flag[got] = FILLED
        flag[missing & ~got] = UNFILLED
    rascl = np.full(in_area.shape, codes.confidence_outside, np.uint8)
    rascl[in_area] = confidence[in_area]
    observed = np.where(counts == COUNT_NODATA, 0, counts)
    rasdl = np.full(in_area.shape, codes.data_score_outside, np.uint16)
    rasdl[in_area] = np.minimum(observed[in_area], max_observations)
    # Only land pixels count as recoded (coastal seawater is the coast's code, not a rule's).
    raspl = recoded_flags(cls, np.where(on_land, final, cls), in_area, codes.post_processing_outside)
    return {"ras": ras, "rascl": rascl, "rasdl": rasdl, "raspl": raspl, "nodata": flag,
            "clipped": in_area & (observed > max_observations)}


# --------------------------------------------------------------------------------------------
# The stage

LAYER_FILES = {"ras": "layers/ras.tif", "rascl": "layers/rascl.tif", "rasdl": "layers/rasdl.tif",
               "raspl": "layers/raspl.tif", "nodata": "layers/nodata.tif"}


def _params(config, target: Target, options) -> dict:
    unit = layout_units(config, target.layout)[target.pu_id]
    return {"grid": product_grid(config, unit).to_dict(), "area": area_hash(unit),
            "aoi_buffer_m": config.grid.aoi_buffer_m,
            "codes": config.codes.model_dump(mode="json"), "layers": config.layers.model_dump(mode="json"),
            "block_px": config.blending.block_px}


def _prepare(ctx) -> External:
    from clcplus_ops.geo.coast import CoastlineError, coastline_identity

    try:
        identity = coastline_identity(ctx.config.layers.coastline_path)
    except CoastlineError as error:
        raise StageInputError(str(error)) from error
    return External(identity={"coastline": identity}, value=layout_units(ctx.config, ctx.target.layout)[ctx.target.pu_id])


def _compute(io: StageIO) -> dict:
    from clcplus_ops.geo.coast import CoastlineError, delivery_area, land
    from clcplus_ops.geo.masks import inside

    grid = Grid.from_dict(io.params["grid"])
    settings, codes = io.config.layers, io.config.codes
    unit = io.external
    own = unit.geometry_in(unit.crs)
    delivery = delivery_area(grid, io.config.grid.aoi_buffer_m)
    try:
        land_area = land(grid, settings.coastline_path)
    except CoastlineError as error:
        raise StageInputError(str(error)) from error
    classes = np.array(sorted(codes.classes))
    radius = settings.nodata_fill_radius_px
    totals = {"area": 0, "land": 0, "coastal_seawater": 0, "outside": 0, "nodata_filled": 0, "nodata_left": 0,
              "nodata_previous": 0, "counts_clipped": 0, "recoded": 0}
    class_pixels = np.zeros(256, np.int64)
    specs = {"ras": ("uint8", codes.outside), "rascl": ("uint8", codes.confidence_outside),
             "rasdl": ("uint16", codes.data_score_outside), "raspl": ("uint8", codes.post_processing_outside),
             "nodata": ("uint8", codes.outside)}
    with contextlib.ExitStack() as stack:
        calibrated = stack.enter_context(io.input("calibrate", "probabilities").raster())
        decisions_ds = stack.enter_context(io.input("calibrate", "decisions").raster())
        final_ds = stack.enter_context(io.input("recode", "classes").raster())
        counts_ds = stack.enter_context(io.input("mosaic", "valid_obs").raster())
        for ds in (calibrated, decisions_ds, final_ds, counts_ds):
            if Grid.of_dataset(ds) != grid:
                raise StageInputError(f"{io.target.describe()}: {ds.name} is not on the PU's grid; re-run mosaic, "
                                      f"blend, calibrate and recode")
        writers = {name: stack.enter_context(io.raster(name, grid, 1, dtype, nodata, "probabilities"))
                   for name, (dtype, nodata) in specs.items()}
        writers["ras"].update_tags(classes=",".join(str(c) for c in classes), coastal_seawater=str(codes.coastal_seawater),
                                   outside=str(codes.outside), nodata=str(codes.nodata))
        for _, _, block in blocks_with_progress(grid, io.params["block_px"], io.log, f"{io.target.pu_id} layers"):
            window = block.window_in(grid)
            in_area = inside(own, block) & inside(delivery, block)
            encoded = calibrated.read(window=window)
            final = final_ds.read(1, window=window)
            took_prior = decisions_ds.read(1, window=window) == TOOK_PRIOR
            counts = counts_ds.read(1, window=window)
            is_land = inside(land_area, block)
            filled = None
            if (in_area & is_land & (final == 0)).any():
                # The neighbourhood reaches beyond the block: read it with a margin.
                around = grid.intersection(block.pad(radius))
                inner = block.window_in(around)
                wide = fill_from_neighbourhood(calibrated.read(window=around.window_in(grid)), radius, classes)
                filled = wide[inner.row_off:inner.row_off + block.height, inner.col_off:inner.col_off + block.width]
            layers = layer_block(encoded, counts, in_area, is_land, filled, classes, codes, settings.max_observations,
                                 final=final, took_prior=took_prior)
            for name, writer in writers.items():
                writer.write(layers[name][None], window=window)
            ras = layers["ras"]
            totals["area"] += int(in_area.sum())
            totals["land"] += int((in_area & is_land).sum())
            totals["coastal_seawater"] += int((ras == codes.coastal_seawater).sum())
            totals["outside"] += int((ras == codes.outside).sum())
            totals["nodata_filled"] += int((layers["nodata"] == FILLED).sum())
            totals["nodata_left"] += int((layers["nodata"] == UNFILLED).sum())
            totals["counts_clipped"] += int(layers["clipped"].sum())
            totals["nodata_previous"] += int((layers["nodata"] == PREVIOUS).sum())
            totals["recoded"] += int((layers["raspl"] == 1).sum())
            class_pixels += np.bincount(ras.ravel(), minlength=256)
    counts_by_code = {str(code): int(n) for code, n in enumerate(class_pixels) if n}
    io.log.info("%s: layers on %d x %d px: %d px in its area (%d coastal seawater), %d recoded (RASPL 1); %d without "
                "observations (%d the previous production's class, %d filled from their neighbourhood, %d left no "
                "data)", io.target.describe(), grid.width, grid.height, totals["area"], totals["coastal_seawater"],
                totals["recoded"], totals["nodata_previous"] + totals["nodata_filled"] + totals["nodata_left"],
                totals["nodata_previous"], totals["nodata_filled"], totals["nodata_left"])
    if totals["nodata_left"]:
        io.log.warning("%s: %d px of land have no observation within %d px and stay no data (%d) in RAS",
                       io.target.describe(), totals["nodata_left"], radius, codes.nodata)
    return {**totals, "ras_pixels": counts_by_code}


LAYERS = Stage(
    name="layers",
    scope="pu",
    inputs=("mosaic", "calibrate", "recode"),
    outputs=LAYER_FILES,
    prepare=_prepare,
    params=_params,
    compute=_compute,
    summary=("area", "coastal_seawater", "nodata_filled", "nodata_left", "nodata_previous", "recoded"),
    permanent_errors=(StageInputError,),
    description="RAS, RASCL, RASDL and RASPL of the PU's own area, with the coastal, outside and no-data codes",
)
