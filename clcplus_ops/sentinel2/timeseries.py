"""The equidistant time series: cloud-free observations of a block of pixels interpolated
linearly onto the steps of the acquisition window, with the spectral indices.

This module is pure computation on arrays (reading and writing live in ``ingest``).

Encoding (inputs and outputs): reflectance and indices as ``int16`` = round(value * 10 000);
``NODATA`` (-32768) where a pixel has no valid observation at all.

Spectral indices, from the band reflectances of one observation (ATBD 3.1.3; Sentinel-2 band
numbers: B03 green, B04 red, B08 NIR, B11 SWIR 1.6 um, B12 SWIR 2.2 um)::

    NDVI = (B08 - B04) / (B08 + B04)    vegetation (Rouse et al. 1974)
    NDWI = (B03 - B08) / (B03 + B08)    open water (McFeeters 1996)
    NDMI = (B08 - B11) / (B08 + B11)    vegetation moisture (Gao 1996's NDWI, called NDMI)
    NBR  = (B08 - B12) / (B08 + B12)    burn ratio (Key & Benson 2006)

An index is computed at each valid observation and then interpolated like a band (the index of
interpolated reflectances would not be an index of anything observed). A non-positive
denominator (possible: L2A reflectance can be slightly negative) gives 0; values are clipped to
[-1, 1].

Interpolation rule, per pixel and feature, on the valid observations sorted by date:

* a step on or between two valid observations gets the linear interpolation between the last
  observation on or before it and the first one after it; on an observation date this is that
  observation exactly;
* a step before the first (after the last) valid observation takes the first (last) valid value:
  the series is held constant at its ends, never extrapolated;
* a pixel without any valid observation gets ``NODATA`` in every feature and a count of 0.

Values are rounded half up (``floor(v + 0.5)``) back to int16.
"""

from __future__ import annotations

from collections.abc import Sequence

from clcplus_ops.jit import numba
import numpy as np

from clcplus_ops.sentinel2.bands import INDEX_BANDS

NODATA = -32768
SCALE = 10_000  # int16 units per reflectance / index unit



def index_band_positions(bands: Sequence[str], indices: Sequence[str]) -> np.ndarray:
    """(n_indices, 2) positions in ``bands`` of the (a, b) bands of each index."""
    missing = {name: [b for b in INDEX_BANDS[name] if b not in bands] for name in indices}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        raise ValueError(f"indices need bands that are not configured: {missing}")
    return np.array([[bands.index(a), bands.index(b)] for a, b in (INDEX_BANDS[n] for n in indices)], dtype=np.int64)


def feature_names(bands: Sequence[str], indices: Sequence[str]) -> list[str]:
    return [*bands, *indices]


_CHUNK = 256  # pixels processed together: contiguous, so the inner loops vectorise


@numba.njit(cache=True, nogil=True, parallel=True)
def _interpolate(obs, valid, obs_days, step_days, before, index_pairs, out, counts):
    n_obs, n_bands, n_pix = obs.shape
    n_idx = index_pairs.shape[0]
    n_steps = step_days.shape[0]
    n_chunks = (n_pix + _CHUNK - 1) // _CHUNK
    for c in numba.prange(n_chunks):
        p0 = c * _CHUNK
        m = min(_CHUNK, n_pix - p0)
        # last_valid[t]: the last valid observation at or before t (-1: none yet);
        # next_valid[t]: the first valid observation at or after t (n_obs: none left).
        last_valid = np.empty((n_obs, m), dtype=np.int32)
        next_valid = np.empty((n_obs, m), dtype=np.int32)
        count = np.zeros(m, dtype=np.int32)
        for t in range(n_obs):
            for p in range(m):
                if valid[t, p0 + p]:
                    last_valid[t, p] = t
                    count[p] += 1
                else:
                    last_valid[t, p] = last_valid[t - 1, p] if t > 0 else -1
        for t in range(n_obs - 1, -1, -1):
            for p in range(m):
                if valid[t, p0 + p]:
                    next_valid[t, p] = t
                else:
                    next_valid[t, p] = next_valid[t + 1, p] if t < n_obs - 1 else n_obs
        for p in range(m):
            counts[p0 + p] = count[p]
        i0 = np.empty(m, dtype=np.int32)
        i1 = np.empty(m, dtype=np.int32)
        w = np.empty(m, dtype=np.float64)
        g0 = np.empty((n_bands, m), dtype=np.float64)
        g1 = np.empty((n_bands, m), dtype=np.float64)
        for s in range(n_steps):
            day = step_days[s]
            b = before[s]  # last observation (valid or not) on or before the step
            for p in range(m):
                lo = last_valid[b, p] if b >= 0 else -1
                hi = next_valid[b + 1, p] if b + 1 < n_obs else n_obs
                if lo < 0:  # before the first valid observation: hold it
                    lo = next_valid[0, p]
                    hi = lo
                elif hi >= n_obs:  # after the last one: hold it
                    hi = lo
                if lo >= n_obs:  # no valid observation at all
                    lo = 0
                    hi = 0
                i0[p] = lo
                i1[p] = hi
                span = obs_days[hi] - obs_days[lo]
                w[p] = (day - obs_days[lo]) / span if span > 0 else 0.0
            # Gather the two bracketing observations (scalar), then blend (vectorised).
            for f in range(n_bands):
                for p in range(m):
                    g0[f, p] = obs[i0[p], f, p0 + p]
                    g1[f, p] = obs[i1[p], f, p0 + p]
            for f in range(n_bands):
                row = out[f, s]
                for p in range(m):
                    v0 = g0[f, p]
                    row[p0 + p] = np.int16(np.floor(v0 + w[p] * (g1[f, p] - v0) + 0.5))
            for i in range(n_idx):
                ba = index_pairs[i, 0]
                bb = index_pairs[i, 1]
                row = out[n_bands + i, s]
                for p in range(m):
                    a0 = g0[ba, p]
                    b0 = g0[bb, p]
                    a1 = g1[ba, p]
                    b1 = g1[bb, p]
                    d0 = a0 + b0
                    d1 = a1 + b1
                    v0 = min(1.0, max(-1.0, (a0 - b0) / d0)) * SCALE if d0 > 0 else 0.0
                    v1 = min(1.0, max(-1.0, (a1 - b1) / d1)) * SCALE if d1 > 0 else 0.0
                    row[p0 + p] = np.int16(np.floor(v0 + w[p] * (v1 - v0) + 0.5))
        for p in range(m):
            if count[p] == 0:
                for f in range(n_bands + n_idx):
                    for s in range(n_steps):
                        out[f, s, p0 + p] = NODATA


def interpolate(
    obs: np.ndarray,
    valid: np.ndarray,
    obs_days: np.ndarray,
    step_days: np.ndarray,
    index_pairs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate a block of pixels onto the steps.

    ``obs``: int16 (observations, bands, pixels) reflectance x 10 000, observations sorted by
    ``obs_days`` (float days since the window start, strictly increasing); ``valid``: bool
    (observations, pixels); ``step_days``: float days of the steps; ``index_pairs`` from
    :func:`index_band_positions`.

    Returns ``features`` int16 (bands + indices, steps, pixels) and ``counts`` uint16 (pixels):
    the number of valid observations of each pixel.
    """
    obs, valid, obs_days, step_days, index_pairs = _checked(obs, valid, obs_days, step_days, index_pairs)
    n_obs, n_bands, n_pix = obs.shape
    out = np.empty((n_bands + len(index_pairs), len(step_days), n_pix), dtype=np.int16)
    counts = np.empty(n_pix, dtype=np.uint16)
    before = (np.searchsorted(obs_days, step_days, side="right") - 1).astype(np.int64)
    _interpolate(obs, valid, obs_days, step_days, before, index_pairs, out, counts)
    return out, counts


def interpolate_numpy(
    obs: np.ndarray,
    valid: np.ndarray,
    obs_days: np.ndarray,
    step_days: np.ndarray,
    index_pairs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The same result as :func:`interpolate`, written as straightforward vectorised NumPy
    (the benchmark's baseline and the tests' second opinion)."""
    obs, valid, obs_days, step_days, index_pairs = _checked(obs, valid, obs_days, step_days, index_pairs)
    n_obs, n_bands, n_pix = obs.shape
    values = obs.astype(np.float64)
    a, b = values[:, index_pairs[:, 0], :], values[:, index_pairs[:, 1], :]
    den = a + b
    with np.errstate(divide="ignore", invalid="ignore"):
        nd = np.where(den > 0, np.clip((a - b) / den, -1.0, 1.0) * SCALE, 0.0)
    values = np.concatenate([values, nd], axis=1)  # (obs, features, pixels)

    # Last valid observation on or before each step, first valid one after it.
    order = np.arange(n_obs)[:, None]
    last_valid = np.maximum.accumulate(np.where(valid, order, -1), axis=0)  # (obs, pixels)
    next_valid = np.minimum.accumulate(np.where(valid, order, n_obs)[::-1], axis=0)[::-1]
    first = next_valid[0]
    last = last_valid[-1]
    before = np.searchsorted(obs_days, step_days, side="right") - 1  # obs position <= step
    prev_idx = np.where(before[:, None] >= 0, last_valid[np.clip(before, 0, None)], -1)  # (steps, pixels)
    after = before + 1
    next_idx = np.where(after[:, None] < n_obs, next_valid[np.clip(after, None, n_obs - 1)], n_obs)
    prev_idx = np.where(prev_idx < 0, first, prev_idx)  # before the first valid: hold it
    next_idx = np.where(next_idx >= n_obs, last, next_idx)  # after the last valid: hold it
    counts = valid.sum(axis=0).astype(np.uint16)
    none = counts == 0
    prev_idx = np.where(none, 0, prev_idx)
    next_idx = np.where(none, 0, np.minimum(next_idx, n_obs - 1))

    d0, d1 = obs_days[prev_idx], obs_days[next_idx]
    span = d1 - d0
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(span > 0, (step_days[:, None] - d0) / span, 0.0)  # (steps, pixels)
    by_feature = values.transpose(1, 0, 2)  # (features, obs, pixels)
    v0 = np.take_along_axis(by_feature, prev_idx[None], axis=1)  # (features, steps, pixels)
    v1 = np.take_along_axis(by_feature, next_idx[None], axis=1)
    out = np.floor(v0 + w[None] * (v1 - v0) + 0.5).astype(np.int16)
    out[:, :, none] = NODATA
    return out, counts


def _checked(obs, valid, obs_days, step_days, index_pairs):
    obs = np.ascontiguousarray(obs, dtype=np.int16)
    valid = np.ascontiguousarray(valid, dtype=np.bool_)
    obs_days = np.ascontiguousarray(obs_days, dtype=np.float64)
    step_days = np.ascontiguousarray(step_days, dtype=np.float64)
    index_pairs = np.ascontiguousarray(index_pairs, dtype=np.int64).reshape(-1, 2)
    if obs.ndim != 3 or valid.shape != (obs.shape[0], obs.shape[2]) or obs_days.shape != (obs.shape[0],):
        raise ValueError(
            f"shapes do not match: obs {obs.shape} (obs, bands, pixels), valid {valid.shape}, days {obs_days.shape}"
        )
    if obs.shape[0] > 1 and not np.all(np.diff(obs_days) > 0):
        raise ValueError("observation days must be strictly increasing (one composite per date)")
    if index_pairs.size and (index_pairs.min() < 0 or index_pairs.max() >= obs.shape[1]):
        raise ValueError(f"index band positions {index_pairs.tolist()} out of range for {obs.shape[1]} bands")
    return obs, valid, obs_days, step_days, index_pairs
