"""How class probabilities are stored: one GeoTIFF per tile, one band per class.

Encoding: uint16, value = round(probability x 10 000), so a stored value is within 5e-5 of the
computed probability (the 11 bands of a pixel sum to 10 000 within +-6). 65535 marks pixels
without data (never a valid Sentinel-2 observation). Band i holds class code ``classes[i]``;
its description is the class name. The GeoTIFF profile (block size, compression, level,
predictor) is the configuration's ``rasters.probabilities`` (by default 256 px blocks, zstd with
a horizontal predictor: most probabilities are near 0 or 1 and compress well); stages write
through ``StageIO.raster(..., kind="probabilities")``, which applies it.

Both the classifier's output (``probabilities.tif``, on the tile grid with the ingestion halo)
and the bilateral filter's (``probabilities_filtered.tif``, on a halo narrower by the filter's
reach) use this encoding; decoding returns float32 probabilities and the valid-pixel mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SCALE = 10_000
NODATA = 65535
DTYPE = "uint16"


def encoding() -> dict:
    """The encoding, as stages put it in their fingerprint."""
    return {"dtype": DTYPE, "scale": 1 / SCALE, "nodata": NODATA}


def encode(probabilities: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint16 (bands, rows, cols) of float probabilities (bands, rows, cols); NODATA where not valid."""
    out = np.rint(np.clip(probabilities, 0.0, 1.0) * SCALE).astype(np.uint16)
    out[:, ~valid] = NODATA
    return out


def decode(encoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 probabilities (bands, rows, cols), valid (rows, cols)) of stored values."""
    valid = encoded[0] != NODATA
    return encoded.astype(np.float32) / np.float32(SCALE), valid


def describe(writer, classes: Sequence[int], names: Mapping[int, str], **tags: str) -> None:
    """Band descriptions (class names) and the tags a reader needs to decode the raster."""
    writer.descriptions = tuple(f"{code} {names[code]}" for code in classes)
    writer.update_tags(scale=str(1 / SCALE), offset="0", classes=",".join(str(c) for c in classes),
                       units="probability", **tags)
    for band, code in enumerate(classes, start=1):
        writer.update_tags(band, class_code=str(code))
