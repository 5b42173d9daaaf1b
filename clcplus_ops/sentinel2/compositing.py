"""Compositing one scene into a block's observations of its acquisition date, straight from the
source windows (compiled kernels, one pass over the block per scene).

A scene asset is read as its source window (see :class:`~clcplus_ops.sentinel2.reading.NearestWindow`)
and never resampled into a full 10 m array: each target pixel (y, x) looks its value up at
``(rows[y], cols[x])`` of the window (-1: outside the source, where the asset's fill value
applies: its nodata, else 0). The rules are those of ``ingest.read_block``:

* a pixel is *new* for the date when its SCL class is clear (:mod:`cloudmask`) and no earlier
  scene of the date gave it a valid observation;
* it is taken only if no band has its nodata value there;
* a taken pixel's band value is ``rint(DN * scale * 10 000 + offset * 10 000)`` (float64, as
  NumPy computes it for integer DNs), clipped to the int16 range above ``NODATA``.

Integer digital numbers (uint16 in every archive met) go to the kernels as read. Other data
types (float SCL or bands, seen in some archives) are first turned into what these rules make
of them with NumPy expressions of the rules (:func:`scl_codes`, :func:`coded_band`), so that
the kernels only look values up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clcplus_ops.jit import numba
from clcplus_ops.sentinel2.cloudmask import clear_lookup, scl_codes

_INT16 = np.iinfo(np.int16)
_LOW, _HIGH = float(_INT16.min + 1), float(_INT16.max)  # NODATA (-32768) is never a value
_CODED_NODATA = -(2**40)  # a coded band's nodata: outside any int16 value


@dataclass(frozen=True)
class Pixels:
    """The target pixels of a block: all of them (row-major), or the given ones."""

    width: int  # block width
    count: int
    ty: np.ndarray  # int32 (count,) row and column of each pixel; empty for the whole block
    tx: np.ndarray

    @classmethod
    def of(cls, height: int, width: int, pixels: np.ndarray | None) -> Pixels:
        if pixels is None:
            empty = np.zeros(0, np.int32)
            return cls(width, height * width, empty, empty)
        pixels = np.asarray(pixels, np.int64)
        return cls(width, len(pixels), (pixels // width).astype(np.int32), (pixels % width).astype(np.int32))


@numba.njit(cache=True, nogil=True)
def _clear_new(codes, width, rows, cols, fill, clear, block_width, ty, tx, taken, new):
    """new = clear SCL class and not taken; returns how many pixels are new."""
    whole = ty.shape[0] == 0
    y = 0
    x = 0
    n = 0
    for i in range(new.shape[0]):
        if not whole:
            y = ty[i]
            x = tx[i]
        r = rows[y]
        c = cols[x]
        code = codes[r * width + c] if r >= 0 and c >= 0 else fill
        ok = clear[code] and not taken[i]
        new[i] = ok
        n += ok
        if whole:
            x += 1
            if x == block_width:
                x = 0
                y += 1
    return n


@numba.njit(cache=True, nogil=True)
def _composite(values, start, width, rows, cols, fill, nodata, has_nodata, scale, offset,
               block_width, ty, tx, new, taken, out):
    """For each new pixel without a band at nodata: out[:, i] = the bands' int16 values and
    taken[i] = True."""
    n_bands = start.shape[0]
    dn = np.empty(n_bands, values.dtype)
    whole = ty.shape[0] == 0
    y = 0
    x = 0
    for i in range(new.shape[0]):
        if not whole:
            y = ty[i]
            x = tx[i]
        if new[i]:
            ok = True
            for b in range(n_bands):
                r = rows[b, y]
                c = cols[b, x]
                v = values[start[b] + r * width[b] + c] if r >= 0 and c >= 0 else fill[b]
                if has_nodata[b] and v == nodata[b]:
                    ok = False
                    break
                dn[b] = v
            if ok:
                for b in range(n_bands):
                    value = np.rint(np.float64(dn[b]) * scale[b] + offset[b])
                    out[b, i] = np.int16(min(max(value, _LOW), _HIGH))
                taken[i] = True
        if whole:
            x += 1
            if x == block_width:
                x = 0
                y += 1


@dataclass
class SourceWindow:
    """One asset's source window on a block: its values (row-major, ``width`` wide), each
    block row's and column's index into it (-1 outside the source), the fill value outside."""

    values: np.ndarray  # 2-D as read
    rows: np.ndarray  # int64 (block height,)
    cols: np.ndarray  # int64 (block width,)
    fill: object  # as np.full(shape, fill, dtype) casts the dataset's nodata (else 0)

    def fill_value(self):
        return np.array(self.fill).astype(self.values.dtype)[()]


def new_clear(scl: SourceWindow, clear: np.ndarray, pixels: Pixels, taken: np.ndarray, new: np.ndarray) -> int:
    """Mark in ``new`` the pixels with a clear SCL class not yet ``taken``; their count."""
    codes, fill = scl.values, scl.fill_value()
    if codes.dtype != np.uint8:
        codes, fill = scl_codes(codes), scl_codes(np.array([fill]))[0]
    return int(_clear_new(np.ascontiguousarray(codes).reshape(-1), codes.shape[1], scl.rows, scl.cols, fill,
                          clear, pixels.width, pixels.ty, pixels.tx, taken, new))


def _integer(dtype: np.dtype) -> bool:
    return dtype.kind in "ui" and dtype.itemsize <= 4  # exact in float64 and int64


def coded_band(values: np.ndarray, nodata: int | None, scale: float, offset: float) -> np.ndarray:
    """int64 values of non-integer DNs by the rules' NumPy expressions (the DNs' dtype's
    arithmetic): the int16 value, or ``_CODED_NODATA`` where the DN is the band's nodata."""
    coded = np.clip(np.rint(values * scale + offset), _INT16.min + 1, _INT16.max).astype(np.int16).astype(np.int64)
    if nodata is not None:
        coded[values == nodata] = _CODED_NODATA
    return coded


def composite(bands: Sequence[SourceWindow], nodata: Sequence[int | None], scale: Sequence[float],
              offset: Sequence[float], pixels: Pixels, new: np.ndarray, taken: np.ndarray, out: np.ndarray) -> None:
    """Write the new pixels' band values (``scale`` and ``offset`` already x 10 000) into
    ``out`` (bands, pixels) and mark them ``taken``, except where a band is at its nodata."""
    n = len(bands)
    scale_, offset_ = np.array(scale, np.float64), np.array(offset, np.float64)
    nodata_ = np.array([0 if v is None else v for v in nodata], np.int64)
    has_nodata = np.array([v is not None for v in nodata])
    dtypes = {w.values.dtype for w in bands}
    if len(dtypes) == 1 and _integer(next(iter(dtypes))):
        arrays, fills = [w.values for w in bands], [w.fill_value() for w in bands]
    else:  # mixed or non-integer DNs: int64, the non-integer ones coded (value or nodata)
        arrays, fills = [], []
        for b, w in enumerate(bands):
            fill = np.array([w.fill_value()])
            if _integer(w.values.dtype):
                arrays.append(w.values.astype(np.int64))
                fills.append(fill.astype(np.int64)[0])
            else:
                arrays.append(coded_band(w.values, nodata[b], scale[b], offset[b]))
                fills.append(coded_band(fill, nodata[b], scale[b], offset[b])[0])
                scale_[b], offset_[b], nodata_[b], has_nodata[b] = 1.0, 0.0, _CODED_NODATA, True
    sizes = [a.size for a in arrays]
    start = np.zeros(n, np.int64)
    start[1:] = np.cumsum(sizes)[:-1]
    values = np.concatenate([a.reshape(-1) for a in arrays])
    width = np.array([a.shape[1] for a in arrays], np.int64)
    rows, cols = np.stack([w.rows for w in bands]), np.stack([w.cols for w in bands])
    _composite(values, start, width, rows, cols, np.array(fills, values.dtype), nodata_, has_nodata, scale_, offset_,
               pixels.width, pixels.ty, pixels.tx, new, taken, out)


__all__ = ["Pixels", "SourceWindow", "clear_lookup", "composite", "coded_band", "new_clear"]
