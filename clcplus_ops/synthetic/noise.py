"""Seeded random building blocks: streams of generators, smooth random fields and a bank of
pre-drawn normals for per-observation noise.

Every random draw of the world comes from a generator made by :func:`stream` from the world
seed and a fixed tuple naming what it is for, so parts do not shift each other's draws.
"""

from __future__ import annotations

import numpy as np

# Stream names (the second element of every seed sequence).
LANDSCAPE, SPECTRA, PHENOLOGY, ACQUISITION, CLOUDS, NOISE, SAMPLES = range(1, 8)
CHANGES, PLANTED, RECODING = range(8, 11)


def stream(seed: int, purpose: int, *key: int) -> np.random.Generator:
    """A generator for one purpose (and key, e.g. a date ordinal), independent of the others."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), purpose, *map(int, key)])))


def _smoothstep(f: np.ndarray) -> np.ndarray:
    return f * f * (3.0 - 2.0 * f)


def _lattice(rng: np.random.Generator, extent_y: float, extent_x: float) -> tuple[np.ndarray, float, float]:
    """Normals on a unit lattice covering [0, extent) plus a random phase."""
    gh, gw = int(extent_y) + 3, int(extent_x) + 3
    values = rng.standard_normal((gh, gw), dtype=np.float32)
    oy, ox = rng.random(2)
    return values, float(oy), float(ox)


def value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float, octaves: int = 3,
                persistence: float = 0.5) -> np.ndarray:
    """A smooth random field (float32, mean 0, std 1) over ``shape`` pixels: value noise with
    a lattice of ``cell`` pixels, plus ``octaves - 1`` finer octaves (fractal edges)."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    amp = 1.0
    for octave in range(octaves):
        c = max(cell / 2**octave, 1.5)
        lattice, oy, ox = _lattice(rng, h / c, w / c)
        y = (np.arange(h, dtype=np.float64) + 0.5) / c + oy
        x = (np.arange(w, dtype=np.float64) + 0.5) / c + ox
        iy, ix = y.astype(np.int64), x.astype(np.int64)
        fy = _smoothstep(y - iy).astype(np.float32)[:, None]
        fx = _smoothstep(x - ix).astype(np.float32)[None, :]
        rows = lattice[iy] * (1 - fy) + lattice[iy + 1] * fy  # (h, gw)
        layer = rows[:, ix]
        layer *= 1 - fx
        layer += rows[:, ix + 1] * fx
        layer *= amp
        out += layer
        amp *= persistence
    out -= out.mean(dtype=np.float64)
    std = float(out.std(dtype=np.float64))
    if std > 0:
        out /= std
    return out


def value_noise_at(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, extent: tuple[float, float],
                   cell: float, octaves: int = 2, persistence: float = 0.5) -> np.ndarray:
    """Value noise sampled at points (pixel coordinates inside ``extent`` = (h, w)); about
    unit variance (not re-normalised: few points would give a poor estimate)."""
    out = np.zeros(len(ys), np.float64)
    amp, total = 1.0, 0.0
    for octave in range(octaves):
        c = max(cell / 2**octave, 1.5)
        lattice, oy, ox = _lattice(rng, extent[0] / c, extent[1] / c)
        y, x = np.asarray(ys) / c + oy, np.asarray(xs) / c + ox
        iy, ix = y.astype(np.int64), x.astype(np.int64)
        fy, fx = _smoothstep(y - iy), _smoothstep(x - ix)
        top = lattice[iy, ix] * (1 - fx) + lattice[iy, ix + 1] * fx
        bottom = lattice[iy + 1, ix] * (1 - fx) + lattice[iy + 1, ix + 1] * fx
        out += amp * (top * (1 - fy) + bottom * fy)
        total += amp**2
        amp *= persistence
    # Smoothstep-interpolated value noise has about 0.6 of the lattice variance.
    return out / np.sqrt(total * 0.6)


class NoiseBank:
    """Pre-drawn standard normals; a slice at a random offset serves as one raster's noise.

    Drawing ~10 million normals per acquisition date would dominate the build; slices of one
    bank at independent random offsets are as good for observation noise (no pixel sees the
    same value twice except by coincidence of offsets) and cost a copy."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.size = int(size)
        self.values = rng.standard_normal(2 * self.size, dtype=np.float32)

    def take(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        if n > self.size:
            raise ValueError(f"noise bank of {self.size} values cannot serve {n}")
        start = int(rng.integers(0, self.size))
        return self.values[start:start + n].reshape(shape)
