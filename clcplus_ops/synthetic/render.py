"""One acquisition of the world: surface reflectance on the date, seasonal snow, atmosphere,
observation noise, digital numbers and the SCL, on the world's internal grids.

Bands are computed at 10 m; 20 m (and 60 m) bands are the mean of 2x2 10 m pixels of the
world (everything lies on the 20 m grid, so all granules share these values). The
atmosphere is constant over a 20 m pixel, so it is applied at 20 m to the 20/60 m bands and
broadcast to the 10 m bands. Noise is drawn at each band's native resolution; the 60 m bands
are finished per granule (``finish_60m``) because each granule has its own 60 m grid.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from clcplus_ops.sentinel2.bands import BANDS, REFLECTANCE_SCALE
from clcplus_ops.synthetic import clouds, noise
from clcplus_ops.synthetic.acquisitions import Acquisition
from clcplus_ops.synthetic.landscape import Landscape
from clcplus_ops.synthetic.spectra import BAND_NAMES, SurfaceModel

NOISE_ABS = 0.0025  # observation noise: NOISE_ABS + NOISE_REL * reflectance (1 sigma)
NOISE_REL = 0.012
CALIBRATION_SD = 0.015  # per date and band multiplicative bias (atmospheric correction residual)
SNOW_EDGE = 0.04  # elevation span over which seasonal snow goes from patchy to full


@dataclass
class Scene:
    acquisition: Acquisition
    sun_azimuth: float
    sun_elevation: float
    dn: dict[str, np.ndarray]  # 10 m and 20 m bands: uint16 DN on the internal grid of their resolution
    reflectance_60m: dict[str, np.ndarray]  # B01, B09: float32 reflectance at 20 m, before noise
    scl: np.ndarray  # uint8, internal 20 m grid
    cloud_fraction: float


def mean2x2(array: np.ndarray) -> np.ndarray:
    out = array[0::2, 0::2] + array[1::2, 0::2]
    out += array[0::2, 1::2]
    out += array[1::2, 1::2]
    out *= np.float32(0.25)
    return out


def mean3x3(array: np.ndarray) -> np.ndarray:
    h, w = array.shape
    return array.reshape(h // 3, 3, w // 3, 3).mean(axis=(1, 3), dtype=np.float32)


def to_dn(reflectance: np.ndarray, offset: float) -> np.ndarray:
    """uint16 digital numbers: round((reflectance - offset) / 1e-4) clipped to 1..65535 (0 is no data)."""
    r = reflectance - np.float32(offset)
    r *= np.float32(1.0 / REFLECTANCE_SCALE)
    np.rint(r, out=r)
    np.clip(r, 1, 65535, out=r)
    return r.astype(np.uint16)


class Renderer:
    def __init__(self, landscape: Landscape, surface: SurfaceModel, states: np.ndarray, snow_lines: np.ndarray,
                 terrain: clouds.Terrain, seed: int, offset: float, workers: int = 2) -> None:
        self.landscape = landscape
        self.surface = surface
        self.states = states
        self.snow_lines = snow_lines
        self.terrain = terrain
        self.seed = seed
        self.offset = offset
        self.shape = landscape.unit.shape
        self.bank = noise.NoiseBank(noise.stream(seed, noise.NOISE), self.shape[0] * self.shape[1])
        self.elevation = landscape.elevation
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="synthetic-render")

    def close(self) -> None:
        self.pool.shutdown()

    def render(self, acquisition: Acquisition, sun: tuple[float, float]) -> Scene:
        d = acquisition.index
        g = self.states[:, d][self.landscape.unit]
        snow_index = snow_amount = None
        line = float(self.snow_lines[d])
        if line < 1.0:
            amount = np.clip((self.elevation - line) * np.float32(1.0 / SNOW_EDGE), 0.0, 1.0)
            amount *= self.surface.snow_cover
            snow_index = np.flatnonzero(amount)
            snow_amount = amount.ravel()[snow_index]
        atmosphere = clouds.atmosphere(self.seed, acquisition.datetime, *sun, self.terrain)
        rng = noise.stream(self.seed, noise.NOISE, acquisition.date.toordinal())
        bias = rng.normal(1.0, CALIBRATION_SD, len(BAND_NAMES)).astype(np.float32)
        band_rngs = [noise.stream(self.seed, noise.NOISE, acquisition.date.toordinal(), i + 1)
                     for i in range(len(BAND_NAMES))]
        tasks = [
            self.pool.submit(self._band, i, name, g, snow_index, snow_amount, atmosphere, float(bias[i]), band_rngs[i])
            for i, name in enumerate(BAND_NAMES)
        ]
        results = [t.result() for t in tasks]
        dn, refl60, surf20 = {}, {}, {}
        for name, (kind, array, surface20) in zip(BAND_NAMES, results):
            (dn if kind == "dn" else refl60)[name] = array
            if surface20 is not None:
                surf20[name] = surface20
        scl = clouds.surface_codes(surf20["B03"], surf20["B04"], surf20["B8A"], surf20["B11"])
        codes = atmosphere.codes
        np.copyto(scl, codes, where=codes != 0)
        return Scene(acquisition, sun[0], sun[1], dn, refl60, scl, atmosphere.cloud_fraction)

    def _band(self, i: int, name: str, g: np.ndarray, snow_index, snow_amount, atmosphere: clouds.Atmosphere,
              bias: float, rng: np.random.Generator):
        res = BANDS[name].resolution_m
        r = self.surface.d[i] * g
        r += self.surface.s0[i]
        if snow_index is not None and snow_index.size:
            flat = r.reshape(-1)
            values = flat[snow_index]
            values += snow_amount * (self.surface.snow[i] - values)
            flat[snow_index] = values
        if bias != 1.0:
            r *= np.float32(bias)
        mult, add = atmosphere.band_terms(i)
        surface20 = None
        if res == 10:
            if name in ("B03", "B04"):
                surface20 = mean2x2(r)
            h2, w2 = r.shape[0] // 2, r.shape[1] // 2
            view = r.reshape(h2, 2, w2, 2)
            if mult is not None:
                view *= mult[:, None, :, None]
            if add is not None:
                view += add[:, None, :, None]
        else:
            r = mean2x2(r)
            if name in ("B8A", "B11"):
                surface20 = r.copy()
            if mult is not None:
                r *= mult
            if add is not None:
                r += add
        if res == 60:
            return "refl60", r, surface20
        add_noise(r, self.bank, rng)
        return "dn", to_dn(r, self.offset), surface20


def add_noise(reflectance: np.ndarray, bank: noise.NoiseBank, rng: np.random.Generator) -> None:
    """In place: reflectance += (NOISE_ABS + NOISE_REL * reflectance) * N(0, 1)."""
    n = bank.take(rng, reflectance.shape)
    scaled = reflectance * np.float32(NOISE_REL)
    scaled += np.float32(NOISE_ABS)
    scaled *= n
    reflectance += scaled


def finish_60m(reflectance20: np.ndarray, bank: noise.NoiseBank, rng: np.random.Generator, offset: float) -> np.ndarray:
    """A granule's 60 m band from its window of the 20 m reflectance: 3x3 mean, noise, DN."""
    r = mean3x3(reflectance20)
    add_noise(r, bank, rng)
    return to_dn(r, offset)
