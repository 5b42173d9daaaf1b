"""The cloud mask from the Scene Classification Layer (ATBD 3.1.3, 3.3.3).

A pixel of an acquisition is a valid observation unless its SCL class is one of the configured
masked classes (by default 2 dark features / shadows, 3 cloud shadows, 8 and 9 cloud of medium
and high probability) or 0, no data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCL_NODATA = 0


def scl_codes(scl: np.ndarray) -> np.ndarray:
    """The SCL as uint8 class codes (non-finite float values count as no data)."""
    scl = np.asarray(scl)
    if scl.dtype.kind == "f":  # some archives ship SCL as float (e.g. eo-learn patches)
        scl = np.where(np.isfinite(scl), scl, SCL_NODATA).astype(np.uint8)
    return scl.astype(np.uint8, copy=False)


def clear_lookup(masked_classes: Sequence[int]) -> np.ndarray:
    """bool (256,): True for the SCL codes of a clear (valid) observation."""
    lookup = np.ones(256, dtype=bool)
    lookup[SCL_NODATA] = False
    lookup[np.asarray(list(masked_classes), dtype=np.intp)] = False
    return lookup


def valid_observations(scl: np.ndarray, masked_classes: Sequence[int]) -> np.ndarray:
    """Boolean array, True where the SCL pixel is a clear (valid) observation."""
    return clear_lookup(masked_classes)[scl_codes(scl)]
