"""Styled quicklook PNG of a delivered layer COG (the STAC item's thumbnail).

A decimated view is read with nearest resampling, so GDAL serves it from the COG's overviews (which
are nearest too) and every quicklook pixel is a code that exists in the layer. Codes are coloured
with the file's embedded colour table (RAS: EEA's colours; RASCL, RASPL: the delivery's colours).
RASDL (uint16 counts of valid observations) has no colour table; it gets a ramp from dark red
(0 observations) through pale yellow (100) to dark blue (200 and more). The layer's outside code is
transparent: the file's NoData value where one is declared, else the configured outside-area code
(RAS declares none; 254).

The PNG is RGBA, written by Pillow without optimisation and without text or time chunks, so the
same COG gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Ramp anchors for the observation count (value -> RGB); linear between them.
COUNT_RAMP: tuple[tuple[int, tuple[int, int, int]], ...] = (
    (0, (128, 0, 0)),
    (100, (255, 240, 160)),
    (200, (0, 32, 128)),
)


def count_ramp(max_value: int = 65535) -> np.ndarray:
    """RGBA lookup table (``max_value + 1`` rows) of the observation-count ramp; counts above the
    last anchor take its colour."""
    values = np.arange(max_value + 1, dtype=np.float64)
    xs = [v for v, _ in COUNT_RAMP]
    lut = np.empty((max_value + 1, 4), np.uint8)
    for band in range(3):
        ys = [rgb[band] for _, rgb in COUNT_RAMP]
        lut[:, band] = np.rint(np.interp(values, xs, ys)).astype(np.uint8)
    lut[:, 3] = 255
    return lut


def _lut_from_colour_table(table: dict[int, tuple[int, ...]], size: int) -> np.ndarray:
    """RGBA lookup table from a GDAL colour table; codes missing from the table are transparent."""
    lut = np.zeros((size, 4), np.uint8)
    for value, rgba in table.items():
        if 0 <= value < size:
            lut[value] = rgba[:4] if len(rgba) >= 4 else (*rgba[:3], 255)
    return lut


def write_quicklook(tif_path: Path, png_path: Path, size: int = 1000, *, outside: int | None = None) -> Path:
    """Write a styled RGBA PNG of the layer COG at ``tif_path``, its longer side ``size`` px (never
    more than the COG's own). ``outside``: the code drawn transparent (default: the file's NoData,
    else the configured outside-area code)."""
    import rasterio
    from PIL import Image
    from rasterio.enums import Resampling

    from clcplus_ops.config import CodesConfig

    if size < 1:
        raise ValueError(f"quicklook size must be at least 1 px, got {size}")
    tif_path, png_path = Path(tif_path), Path(png_path)
    with rasterio.open(tif_path) as ds:
        if ds.count != 1:
            raise ValueError(f"{tif_path.name} has {ds.count} bands; a product layer has one")
        dtype = ds.dtypes[0]
        if dtype not in ("uint8", "uint16"):
            raise ValueError(f"{tif_path.name} is {dtype}; product layers are uint8 or uint16")
        scale = min(1.0, size / max(ds.height, ds.width))
        shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        codes = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        try:
            table = ds.colormap(1)
        except ValueError:  # rasterio's answer for a band without a colour table
            table = None
        if outside is None:
            outside = int(ds.nodata) if ds.nodata is not None else CodesConfig().outside

    levels = 256 if dtype == "uint8" else 65536
    lut = _lut_from_colour_table(table, levels) if table else count_ramp(levels - 1)
    if 0 <= outside < levels:
        lut[outside] = (0, 0, 0, 0)
    rgba = lut[codes]

    png_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba).save(png_path, format="PNG", optimize=False)
    return png_path
