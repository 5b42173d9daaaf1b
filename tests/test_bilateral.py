"""The bilateral filter on class probabilities (ATBD 3.1.6 a): against a brute-force reference,
its symmetries, its effect on noise and edges, the exactness of tiling, and how it differs from
scikit-image's ``denoise_bilateral``."""

from __future__ import annotations

import dataclasses
import warnings

import numba
import numpy as np
import pytest

from clcplus_ops.config import BilateralConfig
from clcplus_ops.postprocessing.bilateral import BilateralParams, _exp_neg, bilateral_filter, filter_tile

ATBD = BilateralParams.from_config(BilateralConfig())  # the configured defaults: the ATBD's values


def window(win_size: int) -> BilateralParams:
    """The ATBD parameters with another window size."""
    return dataclasses.replace(ATBD, win_size=win_size)


def reference(prob: np.ndarray, valid: np.ndarray, params: BilateralParams) -> np.ndarray:
    """The definition, in float64 and plain loops: for each valid pixel, the mean of the valid
    pixels of its window inside the array, weighted by the spatial Gaussian times the Gaussian of
    the Euclidean distance between the probability vectors."""
    prob = prob.astype(np.float64)
    n_bands, rows, cols = prob.shape
    e = (params.win_size - 1) // 2
    out = np.full(prob.shape, np.nan)
    for r in range(rows):
        for c in range(cols):
            if not valid[r, c]:
                continue
            num, den = np.zeros(n_bands), 0.0
            for dr in range(-e, e + 1):
                for dc in range(-e, e + 1):
                    rr, cc = r + dr, c + dc
                    if not (0 <= rr < rows and 0 <= cc < cols and valid[rr, cc]):
                        continue
                    ws = np.exp(-(dr * dr + dc * dc) / (2 * params.sigma_spatial**2))
                    wr = np.exp(-np.sum((prob[:, r, c] - prob[:, rr, cc]) ** 2) / (2 * params.sigma_color**2))
                    num += ws * wr * prob[:, rr, cc]
                    den += ws * wr
            out[:, r, c] = num / den
    return out


def dirichlet_field(seed: int, rows: int = 23, cols: int = 31, bands: int = 11, alpha: float = 0.5) -> np.ndarray:
    """Random probability vectors, float32 (bands, rows, cols)."""
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(rng.dirichlet(np.full(bands, alpha), size=(rows, cols)).transpose(2, 0, 1), dtype=np.float32)


def random_mask(seed: int, shape: tuple[int, int], fraction_invalid: float = 0.2) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) >= fraction_invalid


def with_nan(prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Invalid pixels carry NaN, as nodata would: the filter must never read them."""
    return np.where(valid, prob, np.float32(np.nan))


# --- the definition ---------------------------------------------------------------------------


@pytest.mark.parametrize("win_size, sigma_spatial, sigma_color",
                         [(4, 0.8, 0.25), (3, 0.8, 0.25), (5, 0.8, 0.25), (6, 1.5, 0.1), (4, 2.0, 1.0), (7, 1.0, 0.05)])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_brute_force_reference(win_size, sigma_spatial, sigma_color, masked):
    params = BilateralParams(win_size, sigma_spatial, sigma_color)
    prob = dirichlet_field(1)
    valid = random_mask(2, prob.shape[1:]) if masked else np.ones(prob.shape[1:], bool)
    out = bilateral_filter(with_nan(prob, valid), valid if masked else None, params)
    ref = reference(prob, valid, params)
    assert out.dtype == np.float32 and out.shape == prob.shape
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.nanmax(np.abs(out - ref)) < 1e-6


def test_float64_input_and_small_windows():
    prob = dirichlet_field(3).astype(np.float64)
    valid = random_mask(4, prob.shape[1:])
    out = bilateral_filter(prob, valid, ATBD)
    assert out.dtype == np.float32
    assert np.nanmax(np.abs(out - reference(prob, valid, ATBD))) < 1e-6
    for win_size in (1, 2):  # extent 0: the window is the pixel itself
        assert np.array_equal(bilateral_filter(prob, valid, window(win_size)), np.where(valid, prob, np.nan).astype(np.float32),
                              equal_nan=True)


def test_spatial_kernel_and_extent():
    assert [window(w).extent for w in range(1, 8)] == [0, 0, 1, 1, 2, 2, 3]
    offsets, weights = ATBD.spatial_kernel()
    assert offsets.dtype == np.int64 and weights.dtype == np.float64
    assert offsets.tolist() == [[dr, dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1)]  # 3 x 3 for win_size 4
    assert weights[4] == 1.0
    assert np.array_equal(weights, weights[::-1])
    assert np.allclose(weights, np.exp(-(offsets**2).sum(1) / (2 * 0.8**2)), rtol=0, atol=1e-15)
    assert len(window(6).spatial_kernel()[0]) == 25


@numba.njit
def exp_neg(d2: np.ndarray) -> np.ndarray:
    out = np.empty_like(d2)
    for i in range(d2.size):
        out[i] = _exp_neg(d2[i], np.float32(1.0))
    return out


def test_the_kernels_exp_is_exp():
    """The kernel's own exp (vectorisable, unlike libm's) is exp to within float32 rounding, down
    to exp(-87) = 1.6e-38; below (about where float32 leaves its normal range) it is 0."""
    d2 = np.concatenate([np.linspace(0, 2, 100_001), np.geomspace(1e-30, 87, 10_001)]).astype(np.float32)
    assert np.max(np.abs(exp_neg(d2) / np.exp(-d2.astype(np.float64)) - 1)) < 1.5e-7
    assert exp_neg(np.zeros(1, np.float32))[0] == 1.0
    assert np.array_equal(exp_neg(np.array([87.01, 88, 750, 1e30, np.inf], np.float32)), np.zeros(5, np.float32))


# --- symmetries and invariants ----------------------------------------------------------------


def test_flips_and_transpose_commute_with_the_filter():
    prob = dirichlet_field(5)
    valid = random_mask(6, prob.shape[1:])
    out = bilateral_filter(prob, valid, ATBD)
    for view in (lambda a: a[:, ::-1, :], lambda a: a[:, :, ::-1], lambda a: a.transpose(0, 2, 1)):
        moved = bilateral_filter(np.ascontiguousarray(view(prob)), np.ascontiguousarray(view(valid[None])[0]), ATBD)
        assert np.array_equal(moved, view(out), equal_nan=True)  # exactly, for the 3 x 3 window (see _row_3x3)


def test_constant_image_is_unchanged_up_to_the_borders():
    vector = dirichlet_field(7, rows=1, cols=1)[:, 0, 0]
    prob = np.broadcast_to(vector[:, None, None], (11, 17, 13)).copy()
    valid = random_mask(8, prob.shape[1:], 0.3)
    for mask in (None, valid):
        out = bilateral_filter(prob, mask, ATBD)
        expected = prob if mask is None else np.where(mask, prob, np.nan)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)


def test_bands_still_sum_to_one_and_invalid_pixels_are_nan():
    prob = dirichlet_field(9, rows=40, cols=37)
    valid = random_mask(10, prob.shape[1:], 0.3)
    out = bilateral_filter(with_nan(prob, valid), valid, ATBD)
    assert np.isnan(out[:, ~valid]).all()
    assert np.isfinite(out[:, valid]).all()
    np.testing.assert_allclose(out[:, valid].sum(axis=0), 1.0, rtol=0, atol=1e-6)
    # the borders and the pixels next to invalid ones are among them
    next_to_invalid = valid & ~np.pad(valid, 1, constant_values=True)[2:, 1:-1]
    assert next_to_invalid.sum() > 50
    np.testing.assert_allclose(out[:, next_to_invalid].sum(axis=0), 1.0, rtol=0, atol=1e-6)
    assert np.all((out[:, valid] >= 0) & (out[:, valid] <= 1))


def test_result_does_not_depend_on_the_thread_count():
    prob = dirichlet_field(11, rows=300, cols=90)
    valid = random_mask(12, prob.shape[1:], 0.1)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = bilateral_filter(prob, valid, ATBD)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(single, bilateral_filter(prob, valid, ATBD), equal_nan=True)


# --- what it is for ---------------------------------------------------------------------------


def two_class_vector(main: int, other: int, p_main: float, p_other: float, bands: int = 11) -> np.ndarray:
    rest = (1.0 - p_main - p_other) / (bands - 2)
    v = np.full(bands, rest)
    v[main], v[other] = p_main, p_other
    return v


def test_salt_and_pepper_pulled_toward_the_field():
    field = two_class_vector(3, 5, 0.7, 0.1)
    salt = two_class_vector(5, 3, 0.5, 0.4)  # a pixel the classifier got (narrowly) wrong
    prob = np.broadcast_to(field[:, None, None], (11, 15, 15)).astype(np.float32)
    prob[:, 7, 7] = salt
    out = bilateral_filter(prob, None, ATBD)
    before = np.linalg.norm(salt - field)
    after = np.linalg.norm(out[:, 7, 7] - field)
    assert after < 0.8 * before
    assert out[:, 7, 7].argmax() == 3 and prob[:, 7, 7].argmax() == 5
    assert (out.argmax(axis=0) == 3).all()
    # an outlier far beyond sigma_color is an edge, not noise: it stays (edge preservation)
    prob[:, 7, 7] = two_class_vector(5, 3, 0.95, 0.0)
    assert bilateral_filter(prob, None, ATBD)[:, 7, 7].argmax() == 5


def test_edge_between_two_regions_stays_put():
    left, right = two_class_vector(0, 1, 0.8, 0.1), two_class_vector(1, 0, 0.8, 0.1)
    prob = np.empty((11, 20, 20), np.float32)
    prob[:, :, :10], prob[:, :, 10:] = left[:, None, None], right[:, None, None]
    out = bilateral_filter(prob, None, ATBD)
    assert np.array_equal(out.argmax(axis=0), prob.argmax(axis=0))
    assert np.max(np.abs(out - prob)) < 1e-3  # the edge columns included: no blur across


# --- tiling -----------------------------------------------------------------------------------


def read_boundless(prob, valid, r0, r1, c0, c1):
    """A window that may reach outside the raster, outside filled as nodata (NaN, invalid)."""
    _, rows, cols = prob.shape
    sub = np.full((prob.shape[0], r1 - r0, c1 - c0), np.nan, np.float32)
    ok = np.zeros((r1 - r0, c1 - c0), bool)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols)
    sub[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = prob[:, rr0:rr1, cc0:cc1]
    ok[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = valid[rr0:rr1, cc0:cc1]
    return sub, ok


@pytest.mark.parametrize("win_size, halo_px", [(4, 8), (4, 1), (6, 2), (6, 5)])
def test_tiles_with_halo_mosaic_to_the_filtered_whole_exactly(win_size, halo_px):
    params = window(win_size)
    prob = dirichlet_field(13, rows=200, cols=170, alpha=0.3)
    valid = random_mask(14, prob.shape[1:], 0.1)
    prob = with_nan(prob, valid)
    whole = bilateral_filter(prob, valid, params)
    row_edges, col_edges = [0, 37, 101, 160, 200], [0, 61, 113, 170]  # 4 x 3 tiles of unequal sizes
    mosaic = np.full(prob.shape, -1.0, np.float32)
    e = params.extent
    for r0, r1 in zip(row_edges, row_edges[1:]):
        for c0, c1 in zip(col_edges, col_edges[1:]):
            sub, ok = read_boundless(prob, valid, r0 - halo_px, r1 + halo_px, c0 - halo_px, c1 + halo_px)
            core = filter_tile(sub, ok, params, halo_px)
            assert core.shape == (11, r1 - r0 + 2 * (halo_px - e), c1 - c0 + 2 * (halo_px - e))
            m = halo_px - e
            mosaic[:, r0:r1, c0:c1] = core[:, m:m + r1 - r0, m:m + c1 - c0]
    assert np.array_equal(mosaic, whole, equal_nan=True)


def test_halo_smaller_than_the_window_extent_is_refused():
    prob = dirichlet_field(15, rows=10, cols=10)
    with pytest.raises(ValueError, match="halo"):
        filter_tile(prob, None, ATBD, 0)
    with pytest.raises(ValueError, match="halo"):
        filter_tile(prob, None, window(6), 1)
    assert filter_tile(prob, None, window(2), 0).shape == prob.shape  # extent 0


# --- not scikit-image's filter ----------------------------------------------------------------


def skimage_bilateral(prob: np.ndarray, bins: int = 10_000) -> np.ndarray:
    """scikit-image's filter with the ATBD parameters, on and back to (bands, rows, cols)."""
    from skimage.restoration import denoise_bilateral

    with warnings.catch_warnings():  # it warns for more than 4 channels
        warnings.simplefilter("ignore")
        out = denoise_bilateral(np.ascontiguousarray(prob.transpose(1, 2, 0)).astype(np.float64), win_size=4,
                                sigma_color=0.25, sigma_spatial=0.8, bins=bins, channel_axis=-1)
    return out.transpose(2, 0, 1)


def test_differs_from_scikit_image_denoise_bilateral():
    """scikit-image's ``denoise_bilateral`` (0.26) is not this filter, for three reasons:

    a) Its spatial lookup table is built for the window np.arange(-win_size // 2, win_size // 2 + 1)
       (5 x 5 for win_size 4) but read with extent (win_size - 1) // 2 = 1 and a row stride of
       win_size, so a 3 x 3 window gets the weights of the wrong offsets: the response to a
       symmetric impulse is lopsided (the centre pixel is not even the heaviest), and flipping or
       transposing the input does not flip or transpose the output.
    b) It pads the borders with zeros (mode 'constant', cval 0) and counts them in the
       normalisation, so the bands of border pixels no longer sum to 1 (about 0.5 in a corner).
    c) It looks the colour weight up in ``bins`` steps of a table scaled by the image maximum, at
       the colour distance divided by the number of channels: with 11 bands sigma_color acts as
       about 11 x 0.25, and a class edge that this filter keeps is blurred.
    """
    pytest.importorskip("skimage.restoration")
    # a) a symmetric impulse: one pixel of another class in the middle of a uniform field
    field, spot = two_class_vector(0, 1, 0.6, 0.2), two_class_vector(1, 0, 0.6, 0.2)
    prob = np.broadcast_to(field[:, None, None], (11, 9, 9)).astype(np.float32)
    prob[:, 4, 4] = spot
    ours, theirs = bilateral_filter(prob, None, ATBD)[1], skimage_bilateral(prob)[1]  # class 1
    for a, b in (((4, 3), (4, 5)), ((3, 4), (5, 4)), ((3, 3), (5, 5)), ((3, 5), (5, 3))):
        assert abs(ours[a] - ours[b]) < 1e-7
    # observed: left 0.345 / right 0.201, diagonals 0.230 / 0.201 and 0.345 / 0.230 (above / below
    # happen to agree), and the impulse keeps 0.214, less than its left neighbour receives
    for a, b in (((4, 3), (4, 5)), ((3, 3), (5, 5)), ((3, 5), (5, 3))):
        assert abs(theirs[a] - theirs[b]) > 0.02
    assert theirs[4, 4] < theirs[4, 3] and ours[4, 4] > 2 * ours[4, 3]
    # ... and so it does not commute with flips and transposition
    prob = dirichlet_field(16)
    theirs = skimage_bilateral(prob)
    assert np.max(np.abs(skimage_bilateral(prob[:, ::-1]) - theirs[:, ::-1])) > 0.05
    assert np.max(np.abs(skimage_bilateral(prob.transpose(0, 2, 1)) - theirs.transpose(0, 2, 1))) > 0.05
    # b) zero padding at the borders: the corner's bands sum to about a half (less at some corners)
    ours = bilateral_filter(prob, None, ATBD)
    corners = theirs[:, [0, 0, -1, -1], [0, -1, 0, -1]].sum(axis=0)
    assert 0.4 < corners[0] < 0.6 and (corners < 0.9).all()
    np.testing.assert_allclose(ours[:, [0, 0, -1, -1], [0, -1, 0, -1]].sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(theirs[:, 2:-2, 2:-2].sum(axis=0), 1.0, atol=1e-6)  # interior fine
    # not the same filter in the interior either
    assert np.max(np.abs(ours[:, 2:-2, 2:-2] - theirs[:, 2:-2, 2:-2])) > 1e-3
    # c) colour weights looked up in bins (the result depends on their number) at the colour
    # distance divided by the channel count: a class edge gets blurred
    assert np.max(np.abs(skimage_bilateral(prob, bins=20) - theirs)) > 1e-3
    left, right = two_class_vector(0, 1, 0.8, 0.1), two_class_vector(1, 0, 0.8, 0.1)  # 0.99 apart
    prob = np.empty((11, 12, 12), np.float32)
    prob[:, :, :6], prob[:, :, 6:] = left[:, None, None], right[:, None, None]
    ours, theirs = bilateral_filter(prob, None, ATBD), skimage_bilateral(prob)
    assert abs(ours[1, 6, 5] - prob[1, 6, 5]) < 1e-3  # observed 0.1 -> 0.1001
    assert theirs[1, 6, 5] - prob[1, 6, 5] > 0.2  # observed 0.1 -> 0.45


# --- parameters -------------------------------------------------------------------------------


def test_params_from_config_and_to_dict():
    assert ATBD.to_dict() == {"win_size": 4, "sigma_spatial": 0.8, "sigma_color": 0.25}  # ATBD 3.1.6 a
    params = BilateralParams.from_config(BilateralConfig(win_size=6, sigma_spatial=1.5, sigma_color=0.1))
    assert params.to_dict() == {"win_size": 6, "sigma_spatial": 1.5, "sigma_color": 0.1}
    assert params.extent == 2


@pytest.mark.parametrize("kwargs", [dict(win_size=0), dict(win_size=2.5), dict(sigma_spatial=0.0),
                                    dict(sigma_color=-0.1), dict(sigma_color=float("nan"))])
def test_invalid_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        dataclasses.replace(ATBD, **kwargs)


def test_invalid_inputs_are_refused():
    prob = dirichlet_field(17, rows=5, cols=6)
    with pytest.raises(ValueError, match="bands, rows, cols"):
        bilateral_filter(prob[0], None, ATBD)
    with pytest.raises(ValueError, match="bands, rows, cols"):
        bilateral_filter(prob[:0], None, ATBD)
    with pytest.raises(ValueError, match="float32 or float64"):
        bilateral_filter((prob * 100).astype(np.int16), None, ATBD)
    with pytest.raises(ValueError, match="shape"):
        bilateral_filter(prob, np.ones((6, 5), bool), ATBD)
    with pytest.raises(ValueError, match="bool"):
        bilateral_filter(prob, np.ones((5, 6), np.uint8), ATBD)


def test_compiled_kernels_are_loaded_from_the_cache_by_a_new_process():
    """What the image build and the bootstrap rely on: once compiled (here, or before the tests),
    a fresh process loads every kernel from numba's cache instead of compiling it."""
    import subprocess
    import sys

    from clcplus_ops.jit import compile_kernels

    kernels = {"bilateral filter", "time-series interpolation", "cloud mask of a scene", "compositing a scene"}
    assert set(compile_kernels()) == kernels
    result = subprocess.run([sys.executable, "-m", "clcplus_ops.jit"], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == len(kernels) and all("loaded from the cache" in line for line in lines), result.stdout
