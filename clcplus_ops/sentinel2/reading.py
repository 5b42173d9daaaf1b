"""Reading scene assets onto a tile's 10 m grid: window reads, nearest-neighbour resampling of the
20 m and 60 m bands, and retries of transient read errors only."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from rasterio.errors import RasterioError
from rasterio.windows import Window

if TYPE_CHECKING:
    from clcplus_ops.geo.grid import Grid

log = logging.getLogger(__name__)
T = TypeVar("T")

# GDAL / curl messages of errors worth retrying: the network or the server, not the file.
_TRANSIENT_MARKERS = (
    "timed out", "timeout", "connection reset", "connection refused", "could not resolve",
    "temporarily unavailable", "curl error", "http response code: 5", "http response code: 429",
    "slowdown", "throttl", "broken pipe", "ssl",
)


def is_transient(error: BaseException) -> bool:
    """True for read errors that a retry may cure (network, throttling, server errors)."""
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    if isinstance(error, (RasterioError, OSError)):
        text = str(error).lower()
        return any(marker in text for marker in _TRANSIENT_MARKERS)
    return False


def retrying(fn: Callable[[], T], *, what: str, retries: int, backoff_s: float = 0.5,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn``; retry it up to ``retries`` times on transient errors, with exponential
    backoff. Other errors propagate at once (a corrupt file stays corrupt)."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - classified below
            if attempt >= retries or not is_transient(error):
                raise
            delay = backoff_s * 2**attempt
            attempt += 1
            log.warning("transient error reading %s (%s); retry %d/%d in %.1f s", what, error, attempt, retries, delay)
            sleep(delay)


def _source_index(centres: np.ndarray, origin: float, step: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of the source pixel containing each centre coordinate, and whether it exists."""
    index = np.floor((centres - origin) / step).astype(np.int64)
    return index, (index >= 0) & (index < size)


@dataclass(frozen=True)
class NearestWindow:
    """Where a grid's pixels are in a source raster, by nearest neighbour: the source window
    holding every source pixel the grid needs, and for each grid row (column) its row (column)
    in that window, -1 where the grid pixel lies outside the source."""

    window: Window
    rows: np.ndarray  # int64 (grid.height,)
    cols: np.ndarray  # int64 (grid.width,)


def nearest_window(transform, width: int, height: int, grid: Grid, name: str = "") -> NearestWindow | None:
    """The :class:`NearestWindow` of ``grid`` in a source raster of this transform and size
    (each target pixel takes the source pixel that contains its centre); None when they do
    not overlap."""
    src = transform
    if src.b != 0 or src.d != 0:
        raise ValueError(f"{name}: rotated rasters are not supported")
    t = grid.transform
    xs = t.c + (np.arange(grid.width) + 0.5) * t.a
    ys = t.f + (np.arange(grid.height) + 0.5) * t.e
    cols, col_ok = _source_index(xs, src.c, src.a, width)
    rows, row_ok = _source_index(ys, src.f, src.e, height)
    if not col_ok.any() or not row_ok.any():
        return None
    c0, c1 = cols[col_ok].min(), cols[col_ok].max() + 1
    r0, r1 = rows[row_ok].min(), rows[row_ok].max() + 1
    return NearestWindow(Window(c0, r0, c1 - c0, r1 - r0), np.where(row_ok, rows - r0, -1), np.where(col_ok, cols - c0, -1))


def read_nearest(dataset, grid: Grid, band: int = 1) -> np.ndarray | None:
    """The dataset's band on ``grid`` by nearest neighbour: each target pixel takes the source
    pixel that contains its centre. Pixels outside the source get the nodata value (0 if none).
    None when the grid and the dataset do not overlap (nothing is read)."""
    where = nearest_window(dataset.transform, dataset.width, dataset.height, grid, dataset.name)
    if where is None:
        return None
    data = dataset.read(band, window=where.window)
    fill = dataset.nodata if dataset.nodata is not None else 0
    out = np.full((grid.height, grid.width), fill, dtype=data.dtype)
    row_ok, col_ok = where.rows >= 0, where.cols >= 0
    out[np.ix_(row_ok, col_ok)] = data[np.ix_(where.rows[row_ok], where.cols[col_ok])]
    return out
