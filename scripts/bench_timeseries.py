"""Benchmark: interpolation of the equidistant time series with the spectral indices.

Target (issue "Sentinel-2 ingestion"): at least 300,000 pixels per second per core for 150
observations to 12 features x 54 steps, and at least 4x a straightforward vectorised NumPy
implementation (``timeseries.interpolate_numpy``) measured in the same run on the same input.

    .venv/bin/python scripts/bench_timeseries.py [--pixels 65536] [--observations 150] [--repeat 5]

Prints pixels/s of both on one core (best of --repeat), their ratio, the check that both give
identical results, and the rate on all cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np

from clcplus_ops.config import Config
from clcplus_ops.sentinel2 import timeseries as ts


def make_input(n_obs: int, n_pix: int, seed: int = 0):
    """Realistic shapes and validity: ~55 % clear observations, clouds coherent over dates."""
    rng = np.random.default_rng(seed)
    config = Config()
    bands = list(config.sentinel2.bands)
    obs = rng.integers(0, 6000, (n_obs, len(bands), n_pix)).astype(np.int16)
    cloudiness = rng.random(n_obs)  # per date, like scenes
    valid = rng.random((n_obs, n_pix)) > cloudiness[:, None] * 0.9
    days = np.sort(rng.choice(np.arange(548 * 2), n_obs, replace=False)) / 2.0
    steps = np.array([(d - config.time_series.window(2025)[0]).days for d in config.time_series.steps(2025)], float)
    pairs = ts.index_band_positions(bands, list(config.sentinel2.indices))
    return obs, valid, days, steps, pairs


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=65_536)
    parser.add_argument("--observations", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    obs, valid, days, steps, pairs = make_input(args.observations, args.pixels)
    n_feat = obs.shape[1] + len(pairs)
    print(f"input: {args.observations} observations x {obs.shape[1]} bands x {args.pixels:,} pixels "
          f"({valid.mean():.0%} valid) -> {n_feat} features x {len(steps)} steps")

    ts.interpolate(obs[:, :, :64], valid[:, :64], days, steps, pairs)  # compile outside the timing
    cores = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(1)
    fast = best_time(lambda: ts.interpolate(obs, valid, days, steps, pairs), args.repeat)
    baseline = best_time(lambda: ts.interpolate_numpy(obs, valid, days, steps, pairs), max(1, args.repeat // 2))
    numba.set_num_threads(cores)
    parallel = best_time(lambda: ts.interpolate(obs, valid, days, steps, pairs), args.repeat)

    a, ca = ts.interpolate(obs, valid, days, steps, pairs)
    b, cb = ts.interpolate_numpy(obs, valid, days, steps, pairs)
    identical = bool(np.array_equal(a, b) and np.array_equal(ca, cb))

    fast_rate, base_rate = args.pixels / fast, args.pixels / baseline
    print(f"baseline  straightforward vectorised NumPy (1 core): {base_rate:12,.0f} px/s")
    print(f"product   numba kernel, 1 core:                       {fast_rate:12,.0f} px/s   target >= 300,000: "
          f"{'met' if fast_rate >= 300_000 else 'NOT MET'}")
    print(f"ratio     product / baseline:                         {fast_rate / base_rate:12.1f} x   target >= 4: "
          f"{'met' if fast_rate / base_rate >= 4 else 'NOT MET'}")
    print(f"product   numba kernel, {cores} cores (os.cpu_count={os.cpu_count()}): {args.pixels / parallel:12,.0f} px/s")
    print(f"identical results (features and counts): {identical}")


if __name__ == "__main__":
    main()
