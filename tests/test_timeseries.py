"""The cloud mask and the equidistant time series (pure functions fed with arrays)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from clcplus_ops.config import Config
from clcplus_ops.sentinel2 import timeseries as ts
from clcplus_ops.sentinel2.cloudmask import valid_observations
from conftest import shared_path

BANDS = list(Config().sentinel2.bands)
INDICES = list(Config().sentinel2.indices)
PAIRS = ts.index_band_positions(BANDS, INDICES)
B = {name: i for i, name in enumerate(BANDS)}


def random_block(seed=0, n_obs=40, n_pix=700, p_valid=0.5):
    rng = np.random.default_rng(seed)
    obs = rng.integers(-900, 9000, (n_obs, len(BANDS), n_pix)).astype(np.int16)
    valid = rng.random((n_obs, n_pix)) < p_valid
    valid[:, :5] = False  # never observed
    valid[:, 5:10] = False
    valid[rng.integers(0, n_obs, 5), np.arange(5, 10)] = True  # exactly one observation
    days = np.sort(rng.choice(np.arange(548), n_obs, replace=False)).astype(float)
    return obs, valid, days


def test_fast_and_numpy_implementations_agree_exactly():
    obs, valid, days = random_block()
    steps = np.arange(54) * 10.0
    fast, fast_counts = ts.interpolate(obs, valid, days, steps, PAIRS)
    slow, slow_counts = ts.interpolate_numpy(obs, valid, days, steps, PAIRS)
    assert fast.shape == (12, 54, obs.shape[2]) and fast.dtype == np.int16
    np.testing.assert_array_equal(fast_counts, valid.sum(axis=0))
    np.testing.assert_array_equal(fast_counts, slow_counts)
    np.testing.assert_array_equal(fast, slow)


def test_linear_interpolation_hand_example():
    # One pixel, NIR observed 1000 on day 0, (cloud on day 10), 3000 on day 20, 2000 on day 40.
    obs = np.zeros((4, len(BANDS), 1), dtype=np.int16)
    obs[:, B["B08"], 0] = [1000, 9999, 3000, 2000]
    valid = np.array([[True], [False], [True], [True]])
    days = np.array([0.0, 10.0, 20.0, 40.0])
    steps = np.array([0.0, 5.0, 10.0, 25.0, 40.0, 50.0])
    out, counts = ts.interpolate(obs, valid, days, steps, PAIRS)
    assert counts.tolist() == [3]
    assert out[B["B08"], :, 0].tolist() == [1000, 1500, 2000, 2750, 2000, 2000]


def test_values_at_observation_dates_are_the_observations():
    obs, valid, days = random_block(seed=3)
    out, _ = ts.interpolate(obs, valid, days, days, PAIRS)  # target = the observation days
    t, p = np.nonzero(valid)
    np.testing.assert_array_equal(out[: len(BANDS), t, p], obs[t, :, p].T)
    # ... and the indices at an observation are that observation's indices.
    nir, red = obs[t, B["B08"], p].astype(float), obs[t, B["B04"], p].astype(float)
    den = nir + red
    ndvi = np.where(den > 0, np.clip((nir - red) / np.where(den > 0, den, 1), -1, 1), 0.0)
    np.testing.assert_array_equal(out[len(BANDS) + INDICES.index("NDVI"), t, p], np.floor(ndvi * 10_000 + 0.5))


def test_series_ends_hold_the_first_and_last_valid_value_and_no_data_is_marked():
    obs = np.zeros((3, len(BANDS), 2), dtype=np.int16)
    obs[:, B["B04"], 0] = [500, 700, 900]
    valid = np.array([[False, False], [True, False], [False, False]])
    out, counts = ts.interpolate(obs, valid, np.array([10.0, 100.0, 200.0]), np.array([0.0, 50.0, 100.0, 300.0]), PAIRS)
    assert counts.tolist() == [1, 0]
    assert out[B["B04"], :, 0].tolist() == [700, 700, 700, 700]
    assert (out[:, :, 1] == ts.NODATA).all()


def test_index_formulas():
    obs = np.zeros((1, len(BANDS), 4), dtype=np.int16)
    obs[0, B["B03"]] = [1000, 0, 500, 0]
    obs[0, B["B04"]] = [1000, 0, 500, 300]
    obs[0, B["B08"]] = [3000, 0, -800, -100]  # negative reflectances happen (L2A offset)
    obs[0, B["B11"]] = [2000, 0, 100, 0]
    obs[0, B["B12"]] = [1000, 0, 100, 0]
    out, _ = ts.interpolate(obs, np.ones((1, 4), bool), np.array([0.0]), np.array([0.0]), PAIRS)
    ndvi, ndwi, ndmi, nbr = (out[len(BANDS) + INDICES.index(n), 0] for n in ("NDVI", "NDWI", "NDMI", "NBR"))
    assert ndvi[0] == 5000 and ndwi[0] == -5000 and ndmi[0] == 2000 and nbr[0] == 5000
    assert ndvi[1] == ndwi[1] == ndmi[1] == nbr[1] == 0  # zero denominator
    assert ndvi[2] == ndwi[2] == nbr[2] == 0  # negative denominator -> 0
    assert ndvi[3] == -10_000  # (-100 - 300) / 200 = -2, clipped to -1


def test_bad_input_is_refused():
    obs, valid, days = random_block(n_obs=5, n_pix=10)
    with pytest.raises(ValueError, match="strictly increasing"):
        ts.interpolate(obs, valid, days[::-1], np.arange(3.0), PAIRS)
    with pytest.raises(ValueError, match="shapes"):
        ts.interpolate(obs, valid[:, :5], days, np.arange(3.0), PAIRS)
    with pytest.raises(ValueError, match="not configured"):
        ts.index_band_positions(["B01", "B03"], ["NDVI"])


def test_cloud_mask_on_real_sen2cor_scl():
    """The real SCL of an eo-learn Sentinel-2 patch (Slovenia, 36 dates, values 2..11)."""
    folder = shared_path("data", "timeseries", "eolearn_patch_with_scl", "v2018_c70dbc59_with_SCL")
    scl = np.load(folder / "mask_SCL.npy")[..., 0]  # float32 (36, 101, 100)
    dates = json.loads((folder / "timestamps.json").read_text())
    assert len(dates) == scl.shape[0] == 36
    valid = valid_observations(scl, (2, 3, 8, 9))
    codes = scl.astype(np.uint8)
    np.testing.assert_array_equal(valid, ~np.isin(codes, [0, 2, 3, 8, 9]))
    # Every masked class is present in this real patch, so the mask really removes something.
    for masked in (2, 3, 8, 9):
        assert (codes == masked).any() and not valid[codes == masked].any()
    assert valid[codes == 4].all() and valid[codes == 10].all()  # vegetation kept; cirrus not masked by default
    counts = valid.sum(axis=0)
    assert 0 < counts.min() and counts.max() <= 36
    # Masking thin cirrus as well (a configuration choice) can only lower the counts.
    stricter = valid_observations(scl, (2, 3, 8, 9, 10)).sum(axis=0)
    assert (stricter <= counts).all() and (stricter < counts).any()
    # A no-data pixel is never valid, whatever the configuration.
    codes[0, 0, 0] = 0
    assert not valid_observations(codes, ())[0, 0, 0]
    dt.datetime.fromisoformat(dates[0])
