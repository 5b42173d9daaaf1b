"""Bilateral filter on the class-probability rasters (ATBD 3.1.6 a).

Per-pixel classification leaves salt-and-pepper noise: isolated pixels whose probabilities
differ from all their neighbours. The bilateral filter replaces each pixel's probability vector
by a weighted mean of its neighbours', the weights being a spatial Gaussian times a Gaussian of
the distance between probability vectors, so it smooths within a region but hardly across a
class edge (neighbours on the other side are far in probability space). For each valid pixel p::

    out(p) = sum_q ws(p,q) wr(p,q) P(q) / sum_q ws(p,q) wr(p,q)
    ws = exp(-(drow^2 + dcol^2) / (2 sigma_spatial^2))
    wr = exp(-||P(p) - P(q)||^2 / (2 sigma_color^2))       (Euclidean over all bands)

over the valid pixels q inside the array with |drow|, |dcol| <= extent = (win_size - 1) // 2.
Pixels outside the array and invalid pixels are left out (the weights renormalise), so the
output is a convex combination: bands still sum to 1. Invalid pixels come out NaN.

Tiling: a pixel's result depends only on its window and is computed by the same sequence of
IEEE operations wherever the pixel lies (see the kernel's notes), so a tile read with a halo of
at least ``extent`` pixels (outside the raster: invalid) gives, on its core, bitwise the same
values as filtering the whole raster, whatever the thread count. For the 3 x 3 window flips and
transposition of the input flip and transpose the output exactly too (see ``_row_3x3``).

Precision: the arithmetic is float32 throughout, the input's own precision (float64 input is
rounded to float32 first), with an exp of the kernel's own (relative error <= 1.0e-7 against
float64 exp; weights below exp(-87) = 1.6e-38 count as 0). A result is a convex combination of
float32 terms, each weight carrying a few roundings: it differs from the definition evaluated in
float64 on the same float32 input by at most about 2e-7 (measured: 7e-8 for the 3 x 3 window,
2e-7 for the 5 x 5), and the bands of a pixel sum to 1 within about 4e-7.

Differences from ``skimage.restoration.denoise_bilateral`` (0.26), which is why it is not used:
its spatial lookup table is built for a (2 (win_size // 2) + 1)^2 window but read with extent
(win_size - 1) // 2 and row stride win_size, so for even win_size the weights land on the wrong
offsets (asymmetric, the centre not the heaviest); it pads the borders with zeros (edge bands no
longer sum to 1); it discretises the colour distance into ``bins`` scaled by the image maximum
and divides it by the number of channels (with 11 bands sigma_color acts 11 times larger).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from clcplus_ops.jit import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic


@dataclass(frozen=True)
class BilateralParams:
    """The filter's parameters; the values come from the configuration (``bilateral``), where
    the ATBD's are the defaults."""

    win_size: int
    sigma_spatial: float
    sigma_color: float

    def __post_init__(self) -> None:
        if int(self.win_size) != self.win_size or self.win_size < 1:
            raise ValueError(f"win_size must be an integer >= 1, got {self.win_size!r}")
        if not self.sigma_spatial > 0:
            raise ValueError(f"sigma_spatial must be > 0, got {self.sigma_spatial!r}")
        if not self.sigma_color > 0:
            raise ValueError(f"sigma_color must be > 0, got {self.sigma_color!r}")

    @classmethod
    def from_config(cls, section) -> BilateralParams:
        """From a ``clcplus_ops.config.BilateralConfig``."""
        return cls(int(section.win_size), float(section.sigma_spatial), float(section.sigma_color))

    @property
    def extent(self) -> int:
        """Window reach in pixels, counted as scikit-image counts it (win_size 4 -> 1: 3x3)."""
        return (int(self.win_size) - 1) // 2

    def spatial_kernel(self) -> tuple[np.ndarray, np.ndarray]:
        """Offsets (n, 2) int64 of (drow, dcol) over the square window, row-major, and their
        Gaussian weights (n,) float64."""
        e = self.extent
        d = np.arange(-e, e + 1, dtype=np.int64)
        offsets = np.stack(np.meshgrid(d, d, indexing="ij"), axis=-1).reshape(-1, 2)
        r2 = (offsets**2).sum(axis=1).astype(np.float64)
        return offsets, np.exp(-r2 / (2.0 * self.sigma_spatial**2))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_ROWS_PER_CHUNK = 64  # rows per parallel task; each task recomputes the `extent` rows above it
_GROUP = 4  # bands per pass over a row (the band count is padded to a multiple, see the notes)

# All the arithmetic is float32: the input's precision, half the memory traffic of float64 and
# twice the SIMD lanes. Constants are float32: a Python float would promote an expression to
# float64.
_F32 = np.float32
_ZERO, _ONE, _NAN = _F32(0.0), _F32(1.0), _F32(np.nan)

# exp(x) for x <= 0 from IEEE +, *, floor only (libm's exp does not vectorise): x = n ln2 + r,
# |r| <= ln2 / 2, exp(r) by its Taylor series to degree 7 (truncation < 6e-9 relative, below
# float32 rounding), 2^n built in the exponent bits. Same bits whatever the machine and wherever
# the pixel.
_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)  # Cephes' split of ln 2: 9 significant bits, so n * _LN2_HI is exact
_LN2_LO = _F32(-2.12194440e-4)  # ln 2 - _LN2_HI
_EXP_MIN = _F32(-87.0)  # below: exp(x) < 1.7e-38, taken as 0 (2^n would leave the normal range)
_EXP_C = tuple(_F32(1.0 / f) for f in (5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0))  # 1/7! .. 1/0!


@intrinsic
def _pow2(typingctx, n):
    """2^n for a float32 n integral in [-126, 127]: the int32 (n + 127) << 23 (the exponent
    bits), bitcast to float32, which numba has no function for."""
    if n != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), i32(127)), i32(23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(types.float32), codegen


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _exp_neg(d2, scale):
    """exp(-d2 * scale) for float32 d2 >= 0, scale > 0."""
    x = -d2 * scale
    low = x < _EXP_MIN
    x = _EXP_MIN if low else x
    n = np.floor(x * _LOG2E + _F32(0.5))
    r = (x - n * _LN2_HI) - n * _LN2_LO
    c7, c6, c5, c4, c3, c2, c1, c0 = _EXP_C
    p = c7 * r + c6
    p = p * r + c5
    p = p * r + c4
    p = p * r + c3
    p = p * r + c2
    p = p * r + c1
    p = p * r + c0
    return _ZERO if low else p * _pow2(n)


# Kernel notes. Rows are held as float32 in ring buffers, padded with `extent` zero columns each
# side: pixels outside the array and invalid pixels are zeros with weight 0, so every pixel runs
# the same code with no edge cases, and a term 0 * 0 added to a sum leaves it unchanged, bit for
# bit (the same as leaving the pixel out). The bands are padded likewise with zero bands up to a
# multiple of _GROUP, so that distances take _GROUP bands per pass with no remainder: a zero band
# adds (0 - 0)^2 = 0. Each pair weight ws * wr is computed once, anchored at the pair's first
# pixel in row-major order, and serves both pixels (half the exps).
# Loops run along a row over slices with range(n), so that LLVM vectorises them (with
# range(lo, hi), numba's negative-index handling prevents it; error_model "numpy" drops the
# ZeroDivisionError check that would too). That changes no bits: every step is an element-wise
# IEEE operation, the same in the vector body and the scalar tail (no fastmath: no reassociation,
# no fused multiply-add; no horizontal sums), and each pixel adds its terms in one fixed order,
# whatever its column, its tile and the thread count. Terms are added several per pass as
# ((a + t0) + t1) + t2: the same order as one by one, with fewer loads and stores of a.
# Performance: _row_3x3 takes one band per pass (with two, storing two rows of `out`, LLVM's
# run-time overlap check sent the loop to its scalar version, 3x slower); helpers take whole
# rows (a call costs about a microsecond of reference counting of its arrays, more than cutting
# rows into cache-sized blocks saved); inlining them all (inline="always") would save 5 % but
# triple the compilation (20 s where no cache is written).


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _load_row(pix, valid, r, e, x, v):
    """x (padded bands, cols + 2e) <- row r, 0 where invalid or outside; v likewise. Pad columns
    and pad bands are never written: zero from the start."""
    n_bands, rows, cols = pix.shape
    vv = v[e:e + cols]
    if r < 0 or r >= rows:
        x[:n_bands, e:e + cols] = _ZERO
        vv[:] = False
        return
    vr = valid[r]
    for i in range(cols):
        vv[i] = vr[i]
    for b in range(n_bands):
        src, dst = pix[b, r], x[b, e:e + cols]
        for i in range(cols):
            dst[i] = src[i] if vr[i] else _ZERO


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _to_weights(d2, vp, vq, ws, scale):
    """d2 <- ws * exp(-d2 * scale), 0 where vp or vq is False."""
    for i in range(d2.size):
        d2[i] = ws * _exp_neg(d2[i], scale) if vp[i] and vq[i] else _ZERO


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pair_weights(xa, va, xb, vb, dc, e, ws, scale, out):
    """out[e + c] = ws * wr of the pair (row a, c) - (row b, c + dc); 0 where either pixel is
    invalid or outside (pad columns: 0 from the start)."""
    n_pad, width = xa.shape
    cols = width - 2 * e
    d2 = out[e:e + cols]
    d2[:] = _ZERO
    for b in range(0, n_pad, _GROUP):  # bands in order
        p0, q0 = xa[b, e:e + cols], xb[b, e + dc:e + dc + cols]
        p1, q1 = xa[b + 1, e:e + cols], xb[b + 1, e + dc:e + dc + cols]
        p2, q2 = xa[b + 2, e:e + cols], xb[b + 2, e + dc:e + dc + cols]
        p3, q3 = xa[b + 3, e:e + cols], xb[b + 3, e + dc:e + dc + cols]
        for i in range(cols):
            t0, t1, t2, t3 = p0[i] - q0[i], p1[i] - q1[i], p2[i] - q2[i], p3[i] - q3[i]
            d2[i] = d2[i] + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3
    _to_weights(d2, va[e:e + cols], vb[e + dc:e + dc + cols], ws, scale)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _pair_weights_3x3(xa, va, xb, vb, weights, scale, pair):
    """pair (4, cols + 2) <- the 3 x 3 window's forward pairs (0, +1), (+1, -1), (+1, 0), (+1, +1)
    of row a's pixels (row b = a + 1): _pair_weights for each, in one pass over the bands (each
    value of row a is loaded once for all four)."""
    n_pad, width = xa.shape
    cols = width - 2
    d_r, d_bl, d_b, d_br = pair[0, 1:1 + cols], pair[1, 1:1 + cols], pair[2, 1:1 + cols], pair[3, 1:1 + cols]
    d_r[:] = _ZERO
    d_bl[:] = _ZERO
    d_b[:] = _ZERO
    d_br[:] = _ZERO
    for b in range(0, n_pad, _GROUP):  # bands in order; pixel (a, i + 1) in padded columns
        p0, q0, p1, q1 = xa[b], xb[b], xa[b + 1], xb[b + 1]
        p2, q2, p3, q3 = xa[b + 2], xb[b + 2], xa[b + 3], xb[b + 3]
        for i in range(cols):
            t0, t1, t2, t3 = p0[i + 1] - p0[i + 2], p1[i + 1] - p1[i + 2], p2[i + 1] - p2[i + 2], p3[i + 1] - p3[i + 2]
            d_r[i] = d_r[i] + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3
            t0, t1, t2, t3 = p0[i + 1] - q0[i], p1[i + 1] - q1[i], p2[i + 1] - q2[i], p3[i + 1] - q3[i]
            d_bl[i] = d_bl[i] + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3
            t0, t1, t2, t3 = p0[i + 1] - q0[i + 1], p1[i + 1] - q1[i + 1], p2[i + 1] - q2[i + 1], p3[i + 1] - q3[i + 1]
            d_b[i] = d_b[i] + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3
            t0, t1, t2, t3 = p0[i + 1] - q0[i + 2], p1[i + 1] - q1[i + 2], p2[i + 1] - q2[i + 2], p3[i + 1] - q3[i + 2]
            d_br[i] = d_br[i] + t0 * t0 + t1 * t1 + t2 * t2 + t3 * t3
    va1 = va[1:1 + cols]
    _to_weights(d_r, va1, va[2:2 + cols], weights[5], scale)
    _to_weights(d_bl, va1, vb[0:cols], weights[6], scale)
    _to_weights(d_b, va1, vb[1:1 + cols], weights[7], scale)
    _to_weights(d_br, va1, vb[2:2 + cols], weights[8], scale)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _weights(pair, ones, offsets, k, r, e, cols):
    """The weights of window offset k for the pixels of row r (a view of the pair ring)."""
    n_off = offsets.shape[0]
    centre = n_off // 2
    dr, dc = offsets[k, 0], offsets[k, 1]
    if k == centre:
        return ones[:cols]
    if k > centre:  # anchored at the pixel itself, (r, c)
        return pair[r % (e + 1), k - centre - 1, e:e + cols]
    # the mirrored pair, anchored at the neighbour (r + dr, c + dc)
    return pair[(r + dr) % (e + 1), n_off - 1 - k - centre - 1, e + dc:e + dc + cols]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _row_3x3(x, pair, ones, offsets, r, valid_row, out, total):
    """Row r for the 3 x 3 window (the ATBD's): all 9 terms of a band in one pass.

    The terms are added in an order that the window's flips and transposition only permute
    within commutative additions: the diagonal corner pairs, the opposite edge pairs, then the
    centre. A pair weight is the same bits seen from either pixel ((p - q)^2 == (q - p)^2), so
    flipping or transposing the input flips or transposes the output exactly."""
    n_bands, cols = out.shape[0], total.shape[0]
    w0 = _weights(pair, ones, offsets, 0, r, 1, cols)  # offsets 0 1 2 / 3 (4: centre, weight 1) 5 / 6 7 8
    w1 = _weights(pair, ones, offsets, 1, r, 1, cols)
    w2 = _weights(pair, ones, offsets, 2, r, 1, cols)
    w3 = _weights(pair, ones, offsets, 3, r, 1, cols)
    w5 = _weights(pair, ones, offsets, 5, r, 1, cols)
    w6 = _weights(pair, ones, offsets, 6, r, 1, cols)
    w7 = _weights(pair, ones, offsets, 7, r, 1, cols)
    w8 = _weights(pair, ones, offsets, 8, r, 1, cols)
    # total <- 1 / the sum of the weights (one division per pixel, not one per band), NaN where
    # the pixel is invalid: its bands come out NaN with no test per band
    for i in range(cols):
        s = ((w0[i] + w8[i]) + (w2[i] + w6[i])) + ((w1[i] + w7[i]) + (w3[i] + w5[i])) + _ONE
        total[i] = _ONE / s if valid_row[i] else _NAN
    xa, xb, xc = x[(r - 1) % 3], x[r % 3], x[(r + 1) % 3]
    for b in range(n_bands):
        a, m, c = xa[b], xb[b], xc[b]
        o = out[b, r]  # (not out[:, r][b]: a non-contiguous view does not vectorise)
        for i in range(cols):
            s = (((w0[i] * a[i] + w8[i] * c[i + 2]) + (w2[i] * a[i + 2] + w6[i] * c[i]))
                 + ((w1[i] * a[i + 1] + w7[i] * c[i + 1]) + (w3[i] * m[i] + w5[i] * m[i + 2])) + m[i + 1])
            o[i] = s * total[i]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _add_terms(acc, pair, ones, offsets, r, e, k0, n, x):
    """acc += w_k * x[e + dc:] for the n window offsets k0.. of one window row, in order."""
    cols = acc.shape[0]
    j = 0
    while j < n:
        dc = j - e
        w0, x0 = _weights(pair, ones, offsets, k0 + j, r, e, cols), x[e + dc:e + dc + cols]
        if j + 3 <= n:
            w1, x1 = _weights(pair, ones, offsets, k0 + j + 1, r, e, cols), x[e + dc + 1:e + dc + 1 + cols]
            w2, x2 = _weights(pair, ones, offsets, k0 + j + 2, r, e, cols), x[e + dc + 2:e + dc + 2 + cols]
            for i in range(cols):
                acc[i] = acc[i] + w0[i] * x0[i] + w1[i] * x1[i] + w2[i] * x2[i]
            j += 3
        else:
            for i in range(cols):
                acc[i] = acc[i] + w0[i] * x0[i]
            j += 1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _row_any(x, pair, ones, offsets, r, e, valid_row, out, total, num):
    """Row r for any window: the sum of the weights, then each band, window row by window row."""
    n_bands, cols = out.shape[0], total.shape[0]
    side = 2 * e + 1
    for band in range(-1, n_bands):  # -1: the sum of the weights, then each band
        acc = total if band < 0 else num
        acc[:] = _ZERO
        for dr in range(-e, e + 1):
            xr = ones if band < 0 else x[(r + dr) % side, band]
            _add_terms(acc, pair, ones, offsets, r, e, (dr + e) * side, side, xr)
        if band < 0:  # 1 / the sum, NaN where invalid (as in _row_3x3)
            for i in range(cols):
                total[i] = _ONE / total[i] if valid_row[i] else _NAN
        else:
            o = out[band, r]
            for i in range(cols):
                o[i] = num[i] * total[i]


@numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _filter(pix, valid, offsets, weights, e, scale, out):
    """pix (bands, rows, cols) float32, valid (rows, cols); out (bands, rows, cols) float32;
    weights: the spatial kernel, float32; scale = 1 / (2 sigma_color^2), float32."""
    n_bands, rows, cols = pix.shape
    n_pad = -(-n_bands // _GROUP) * _GROUP
    n_off = offsets.shape[0]
    side = 2 * e + 1
    centre = n_off // 2  # offsets are row-major: those after the centre are the forward half
    n_fwd = n_off - centre - 1
    width = cols + 2 * e
    n_chunks = (rows + _ROWS_PER_CHUNK - 1) // _ROWS_PER_CHUNK
    for chunk in numba.prange(n_chunks):
        r0 = chunk * _ROWS_PER_CHUNK
        r1 = min(rows, r0 + _ROWS_PER_CHUNK)
        x = np.zeros((side, n_pad, width), dtype=np.float32)  # rows r - e .. r + e at slot row % side
        v = np.zeros((side, width), dtype=np.bool_)
        pair = np.zeros((e + 1, n_fwd, width), dtype=np.float32)  # forward pairs anchored at rows r - e .. r
        ones = np.ones(width, dtype=np.float32)
        total = np.empty(cols, dtype=np.float32)
        num = np.empty(cols, dtype=np.float32)
        for r in range(r0 - e, r0 + e):
            _load_row(pix, valid, r, e, x[r % side], v[r % side])
        for r in range(r0 - e, r1):
            _load_row(pix, valid, r + e, e, x[(r + e) % side], v[(r + e) % side])
            if side == 3:
                _pair_weights_3x3(x[r % 3], v[r % 3], x[(r + 1) % 3], v[(r + 1) % 3], weights, scale, pair[r % 2])
            else:
                for f in range(n_fwd):
                    dr, dc = offsets[centre + 1 + f, 0], offsets[centre + 1 + f, 1]
                    _pair_weights(x[r % side], v[r % side], x[(r + dr) % side], v[(r + dr) % side], dc, e,
                                  weights[centre + 1 + f], scale, pair[r % (e + 1), f])
            if r < r0:
                continue
            if side == 3:
                _row_3x3(x, pair, ones, offsets, r, valid[r], out, total)
            else:
                _row_any(x, pair, ones, offsets, r, e, valid[r], out, total, num)


def bilateral_filter(probabilities: np.ndarray, valid: np.ndarray | None, params: BilateralParams) -> np.ndarray:
    """probabilities: float32 (or float64, rounded to float32 first) array (bands, rows, cols) as
    rasterio reads it. valid: bool (rows, cols) or None (= all valid).
    Returns float32 (bands, rows, cols); NaN in every band where not valid."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3 or probabilities.shape[0] < 1:
        raise ValueError(f"probabilities must be (bands, rows, cols), got shape {probabilities.shape}")
    if probabilities.dtype not in (np.float32, np.float64):
        raise ValueError(f"probabilities must be float32 or float64, got {probabilities.dtype}")
    _, rows, cols = probabilities.shape
    if valid is None:
        valid = np.ones((rows, cols), dtype=bool)
    valid = np.asarray(valid)
    if valid.shape != (rows, cols):
        raise ValueError(f"valid must have shape {(rows, cols)}, got {valid.shape}")
    if valid.dtype != bool:
        raise ValueError(f"valid must be bool, got {valid.dtype}")
    pix = np.ascontiguousarray(probabilities, dtype=np.float32)  # no copy for C-ordered float32
    offsets, weights = params.spatial_kernel()
    out = np.empty(pix.shape, dtype=np.float32)
    scale = np.float32(1.0 / (2.0 * params.sigma_color**2))
    _filter(pix, np.ascontiguousarray(valid), offsets, weights.astype(np.float32), params.extent, scale, out)
    return out


def filter_tile(probabilities: np.ndarray, valid: np.ndarray | None, params: BilateralParams,
                halo_px: int) -> np.ndarray:
    """Filter a tile read with a halo of halo_px pixels and return only the part that is exact: the
    array cropped by params.extent on every side (so the tile plus halo_px - extent). Raises ValueError
    if halo_px < params.extent (the tile edges could not be exact).

    Read the halo boundless, marking what lies outside the raster invalid: invalid pixels and
    pixels outside the array are left out alike, so the result matches the filtered whole."""
    e = params.extent
    if halo_px < e:
        raise ValueError(f"halo_px {halo_px} < window extent {e}: the tile edges would not be exact")
    out = bilateral_filter(probabilities, valid, params)
    _, rows, cols = out.shape
    return out[:, e:rows - e, e:cols - e]
