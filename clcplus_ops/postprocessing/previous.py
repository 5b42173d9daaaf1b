"""Importing a previous production made elsewhere (the 2018 or 2021 probabilities a service
provider holds) as the production of its reference year, for the calibration of later years.

The source is an 11-band GeoTIFF of class probabilities (band i = class i) on any grid and in
any CRS, stored as floats 0..1, or integers scaled to 100, 255 or 10 000 (found from the
bands' sums). It is validated first (every problem named at once), then resampled bilinearly
onto the PU's product grid, renormalised and stored in this system's encoding, as the
``import_production`` stage of that year: `clcplus previous import FILE PU YEAR`.
"""

from __future__ import annotations

import contextlib

import numpy as np

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.stage import External, Stage, StageIO, Target, blocks_with_progress

SCALES = (1.0, 100.0, 255.0, 10_000.0)
SAMPLE_PX = 512  # the validation reads the source decimated to at most this many pixels a side
SUM_TOLERANCE = 0.05  # a valid pixel's bands sum to its scale within 5 %
SUM_SHARE = 0.99  # ... on at least this share of the valid pixels


class ProductionImportError(StageInputError):
    """An external production that cannot be imported (the message lists every problem)."""


def detect_scale(sample: np.ndarray, valid: np.ndarray, dtype: str) -> tuple[float | None, str]:
    """The scale of probabilities ``sample`` (bands, rows, cols) at ``valid`` pixels: the one of
    SCALES their sums match on at least SUM_SHARE of the pixels; (None, why) if none."""
    if not valid.any():
        return None, "no valid pixel in the sample"
    values = sample[:, valid].astype(np.float64)
    if (values < 0).any():
        return None, f"negative values (minimum {values.min():g})"
    sums = values.sum(axis=0)
    candidates = SCALES if np.dtype(dtype).kind == "f" else SCALES[1:]
    for scale in candidates:
        if (np.abs(sums - scale) <= SUM_TOLERANCE * scale).mean() >= SUM_SHARE:
            return scale, ""
    return None, (f"the bands of a pixel sum to {np.median(sums):g} (median), not to one of "
                  f"{', '.join(f'{s:g}' for s in candidates)}: not class probabilities")


def validate(dataset, grid: Grid, n_classes: int) -> tuple[float, dict]:
    """(scale, description) of an open source raster for ``grid``; ProductionImportError
    naming every problem."""
    from rasterio.warp import transform_bounds

    problems = []
    if dataset.count != n_classes:
        problems.append(f"{dataset.count} bands, expected {n_classes} (band i = class i)")
    if dataset.crs is None:
        problems.append("no coordinate reference system")
    if dataset.transform.b != 0 or dataset.transform.d != 0:
        problems.append("a rotated geotransform")
    if np.dtype(dataset.dtypes[0]).kind not in "uf" or len(set(dataset.dtypes)) > 1:
        problems.append(f"data type {'/'.join(sorted(set(dataset.dtypes)))}: expected one unsigned integer or float "
                        f"type for all bands")
    overlap = None
    if dataset.crs is not None and not problems:
        left, bottom, right, top = transform_bounds(grid.crs, dataset.crs, *grid.bounds, densify_pts=21)
        b = dataset.bounds
        if b.left >= right or b.right <= left or b.bottom >= top or b.top <= bottom:
            problems.append(f"it does not overlap the PU's grid (its bounds {tuple(round(v, 3) for v in b)} in "
                            f"{dataset.crs}; the PU's {tuple(round(v, 3) for v in (left, bottom, right, top))})")
        else:
            overlap = (max(b.left, left), max(b.bottom, bottom), min(b.right, right), min(b.top, top))
    scale = None
    if overlap is not None:
        from rasterio.enums import Resampling
        from rasterio.windows import from_bounds

        window = from_bounds(*overlap, transform=dataset.transform).round_offsets().round_lengths()
        rows, cols = max(1, min(SAMPLE_PX, int(window.height))), max(1, min(SAMPLE_PX, int(window.width)))
        sample = dataset.read(window=window, out_shape=(dataset.count, rows, cols), resampling=Resampling.nearest)
        valid = sample.any(axis=0)
        if dataset.nodata is not None:
            valid &= ~(sample == dataset.nodata).all(axis=0)
        valid &= np.isfinite(sample).all(axis=0)
        scale, why = detect_scale(sample, valid, dataset.dtypes[0])
        if scale is None:
            problems.append(why)
    if problems:
        raise ProductionImportError("; ".join(problems))
    return scale, {"crs": str(dataset.crs), "bounds": list(dataset.bounds), "dtype": dataset.dtypes[0],
                   "scale": scale, "nodata": dataset.nodata, "size": [dataset.width, dataset.height]}


def to_encoded(values: np.ndarray, scale: float, nodata) -> np.ndarray:
    """Source values (bands, rows, cols) as this system's encoded probabilities: divided by the
    scale and renormalised to sum 1; no data where the source has none or all bands are 0."""
    data = values.astype(np.float64)
    valid = np.isfinite(data).all(axis=0) & (np.nan_to_num(data).sum(axis=0) > 0)
    if nodata is not None:
        valid &= ~(values == nodata).all(axis=0)
    total = np.where(valid, np.nan_to_num(data).sum(axis=0), 1.0)
    return probs_io.encode((np.nan_to_num(data) / total).astype(np.float32), valid)


# --------------------------------------------------------------------------------------------
# The stage


def _params(config, target: Target, options) -> dict:
    from clcplus_ops.postprocessing.mosaic import layout_units, product_grid

    unit = layout_units(config, target.layout)[target.pu_id]
    return {"grid": product_grid(config, unit).to_dict(), "encoding": probs_io.encoding(),
            "block_px": config.blending.block_px}


def _source_url(options) -> str:
    from pathlib import Path

    source = options.get("source")
    if not source:
        raise ProductionImportError("import_production needs the option source=FILE (the production's GeoTIFF)")
    source = str(source)
    return source if "://" in source else Path(source).resolve().as_uri()


def _prepare(ctx) -> External:
    import rasterio
    from rasterio.errors import RasterioError

    from clcplus_ops.postprocessing.mosaic import layout_units, product_grid
    from clcplus_ops.raster_io import gdal_env, gdal_path

    url = _source_url(ctx.options)
    grid = product_grid(ctx.config, layout_units(ctx.config, ctx.target.layout)[ctx.target.pu_id])
    s3 = ctx.store.s3_settings if url.startswith("s3://") else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_env(s3))
        try:
            dataset = stack.enter_context(rasterio.open(gdal_path(url)))
        except (RasterioError, OSError, ValueError) as error:
            raise ProductionImportError(f"{url} cannot be read as a raster: {error}") from error
        try:
            scale, description = validate(dataset, grid, len(ctx.config.codes.classes))
        except ProductionImportError as error:
            raise ProductionImportError(f"{url} cannot be imported as the {ctx.target.reference_year} production of "
                                        f"{ctx.target.pu_id}: {error}") from None
    try:
        digest = ctx.store.sha256(url)
    except (OSError, ValueError):
        digest = None  # not in a store (e.g. https): size and time stamp of GDAL's view suffice
    return External(identity={"source": url, "sha256": digest, **description},
                    value={"url": url, "scale": scale, "s3": s3})


def _compute(io: StageIO) -> dict:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    from clcplus_ops.raster_io import gdal_env, gdal_path

    grid = Grid.from_dict(io.params["grid"])
    classes = sorted(io.config.codes.classes)
    url, scale = io.external["url"], io.external["scale"]
    valid_px = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(gdal_env(io.external["s3"]))
        source = stack.enter_context(rasterio.open(gdal_path(url)))
        # Bilinear: a weighted mean of probability vectors is one (renormalised after).
        vrt = stack.enter_context(WarpedVRT(source, crs=grid.crs, transform=grid.transform, width=grid.width,
                                            height=grid.height, resampling=Resampling.bilinear,
                                            src_nodata=source.nodata, nodata=source.nodata))
        out = stack.enter_context(io.raster("probabilities", grid, len(classes), probs_io.DTYPE, probs_io.NODATA,
                                            "probabilities"))
        probs_io.describe(out, classes, io.config.codes.classes, source=url)
        for _, _, block in blocks_with_progress(grid, io.params["block_px"], io.log, f"{io.target.pu_id} import"):
            window = block.window_in(grid)
            encoded = to_encoded(vrt.read(window=window), scale, source.nodata)
            valid_px += int((encoded[0] != probs_io.NODATA).sum())
            out.write(encoded, window=window)
    if not valid_px:
        raise ProductionImportError(f"{url} has no valid pixel on the grid of {io.target.pu_id}")
    io.log.info("%s: imported %s (scale %g): %d px with probabilities on the PU's grid", io.target.describe(), url,
                scale, valid_px)
    return {"source": url, "scale": scale, "pixels_valid": valid_px}


IMPORT_PRODUCTION = Stage(
    name="import_production",
    scope="pu",
    outputs={"probabilities": "imported/probabilities.tif"},
    prepare=_prepare,
    params=_params,
    compute=_compute,
    options=("source",),
    summary=("source", "scale", "pixels_valid"),
    permanent_errors=(StageInputError,),
    description="an external production's probabilities (any grid) as this PU's production of its year, for the "
                "calibration of later years",
)
