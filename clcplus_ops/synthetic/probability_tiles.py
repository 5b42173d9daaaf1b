"""Generated filtered probabilities and valid-observation counts for processing tiles: a smooth
field defined on the ground (EPSG:3035 metres), so tiles of any UTM zone sample one landscape
and a correct mosaic shows no edge. Used by the mosaic tests and the PU benchmark, where the
question is geometry and speed, not classification."""

from __future__ import annotations

import numpy as np

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.geo.grid import Grid


def field(x: np.ndarray, y: np.ndarray, n_classes: int = 11, scale_m: float = 2_000.0) -> np.ndarray:
    """Probabilities float32 (classes, *x.shape) at EPSG:3035 points: a softmax of waves whose
    phase and direction differ per class (wavelength ``scale_m``)."""
    k = np.arange(n_classes, dtype=np.float64)[:, None]
    angle = 2 * np.pi * k / n_classes
    u = (np.cos(angle) * x.ravel() + np.sin(angle) * y.ravel()) * (2 * np.pi / scale_m)
    logits = 2.5 * np.sin(u + k) + 0.5 * np.cos(0.37 * u - k)
    logits -= logits.max(axis=0)
    p = np.exp(logits)
    p /= p.sum(axis=0)
    return p.reshape((n_classes, *x.shape)).astype(np.float32)


def counts(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Valid-observation counts (uint16) at EPSG:3035 points: 20..99 in 1 km steps."""
    return (20 + (np.floor(x / 1000) + 3 * np.floor(y / 1000)) % 80).astype(np.uint16)


def points_3035(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:3035 coordinates of the pixel centres of ``grid``."""
    from pyproj import Transformer

    t = grid.transform
    x, y = np.meshgrid(t.c + (np.arange(grid.width) + 0.5) * t.a, t.f + (np.arange(grid.height) + 0.5) * t.e)
    if grid.epsg == 3035:
        return x, y
    return Transformer.from_crs(grid.epsg, 3035, always_xy=True).transform(x, y)


def tile_arrays(grid: Grid, n_classes: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Encoded probabilities (uint16, as the filter stage writes them) and counts on ``grid``."""
    x, y = points_3035(grid)
    return probs_io.encode(field(x, y, n_classes), np.ones(grid.shape, bool)), counts(x, y)


def stand_in_tile_stages(write) -> tuple:
    """Stages with the names, scope and outputs of the tile stages the PU stages read (ingest's
    ``valid_obs``, filter's ``filtered``; classify only leaves a note), whose computation is
    ``write(io, name)`` for "valid_obs" and "filtered": the mosaic tests and the PU benchmark
    run the real plan, join and PU stages on generated tiles through them."""
    from clcplus_ops.sentinel2.ingest import INGEST
    from clcplus_ops.stage import Stage

    return (
        Stage(name="ingest", scope=INGEST.scope, outputs={"valid_obs": "valid_obs.tif"},
              compute=lambda io: write(io, "valid_obs")),
        Stage(name="classify", scope="tile", outputs={"note": "classify.json"},
              compute=lambda io: io.write_json("note", {"generated": True})),
        Stage(name="filter", scope="tile", outputs={"filtered": "probabilities_filtered.tif"},
              compute=lambda io: write(io, "filtered")),
    )
