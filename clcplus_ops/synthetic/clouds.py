"""The atmosphere of one acquisition at 20 m (the SCL grid): clouds, thin cirrus, cloud
shadows, topographic dark areas, and the Scene Classification Layer (SCL) codes.

- Cloud fraction per date: clear (0-2 %), partly cloudy or overcast (65-100 %), with
  probabilities following the season (cloudier in winter), so that many scenes are clear,
  a realistic share is mostly cloudy and some exceed the 80 % scene limit.
- Clouds: a smooth fractal random field thresholded at the quantile giving that fraction over
  the world; the inner 70 % (by field value) is the opaque core (SCL 9), the rest the
  semi-transparent edges (SCL 8). Thin cirrus (SCL 10) is a separate, larger-scale field on
  some dates; it only adds a little reflectance.
- Shadows (SCL 3): the clouds' opacity shifted away from the sun by ``height / tan(sun
  elevation)`` (cloud height 0.8-2.5 km), where there is no cloud.
- Dark area pixels (SCL 2): slopes of the synthetic terrain facing away from a low winter sun.
- Clear pixels: vegetation (4), not vegetated (5), water (6), snow (11) from the 20 m surface
  reflectance as Sen2Cor's tests do (NDSI, NDWI, NDVI); a small random share unclassified (7)
  and rarely saturated/defective (1).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from clcplus_ops.synthetic import noise

SCL_NODATA, SCL_SATURATED, SCL_DARK, SCL_SHADOW = 0, 1, 2, 3
SCL_VEGETATION, SCL_NOT_VEGETATED, SCL_WATER, SCL_UNCLASSIFIED = 4, 5, 6, 7
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_SNOW = 8, 9, 10, 11

#                     B01  B02  B03  B04  B05  B06  B07  B08  B8A  B09  B11  B12
CLOUD = np.array([.520, .530, .530, .530, .530, .530, .530, .530, .530, .450, .400, .300], np.float32)
CIRRUS = np.array([.050, .045, .040, .035, .033, .032, .031, .030, .030, .020, .020, .015], np.float32)
# Share of a band's reflectance left in full shade (diffuse light only).
SHADE_KEEP = np.array([.55, .50, .45, .42, .40, .38, .37, .36, .36, .36, .33, .32], np.float32)


@dataclass
class Atmosphere:
    cloud_fraction: float  # drawn fraction of the world covered by cloud
    alpha: np.ndarray | None  # (H2, W2) float32 cloud opacity, None if no cloud
    cirrus: np.ndarray | None  # (H2, W2) float32 cirrus thickness (0..1), None if none
    shade: np.ndarray | None  # (H2, W2) float32 share of direct light blocked, None if none
    brightness: float  # cloud brightness factor of the date
    codes: np.ndarray  # (H2, W2) uint8: atmospheric SCL codes (0 where the surface shows)

    def band_terms(self, band: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(multiplier, addend) on the surface reflectance of ``band`` (20 m arrays)."""
        mult = add = None
        if self.shade is not None:
            mult = 1.0 - self.shade * (1.0 - SHADE_KEEP[band])
        if self.alpha is not None:
            keep = 1.0 - self.alpha
            mult = keep if mult is None else mult * keep
            add = self.alpha * (CLOUD[band] * self.brightness)
        if self.cirrus is not None:
            term = self.cirrus * CIRRUS[band]
            add = term if add is None else add + term
        return mult, add


def cloud_fraction(rng: np.random.Generator, day: dt.date) -> float:
    cloudiness = 0.5 + 0.2 * math.cos(2 * math.pi * (day.month - 1) / 12)  # Jan 0.7, Jul 0.3
    p_clear, p_overcast = 0.55 - 0.35 * cloudiness, 0.10 + 0.35 * cloudiness
    u = rng.random()
    if u < p_clear:
        return float(rng.uniform(0.0, 0.02))
    if u < p_clear + p_overcast:
        return float(rng.uniform(0.65, 1.0))
    return float(0.02 + 0.6 * rng.beta(1.3, 2.0))


@dataclass
class Terrain:
    """Static 20 m inputs: land mask and terrain slopes (for dark areas), the world window."""

    land: np.ndarray  # (H2, W2) bool
    slope_east: np.ndarray  # (H2, W2) float32, d elevation / d east
    slope_north: np.ndarray  # (H2, W2) float32
    world: tuple[slice, slice]

    @classmethod
    def from_elevation(cls, elevation20: np.ndarray, land20: np.ndarray, world: tuple[slice, slice]) -> Terrain:
        d_row, d_col = np.gradient(elevation20.astype(np.float32))
        return cls(land20, d_col.astype(np.float32), (-d_row).astype(np.float32), world)


def atmosphere(seed: int, when: dt.datetime, sun_azimuth: float, sun_elevation: float,
               terrain: Terrain) -> Atmosphere:
    rng = noise.stream(seed, noise.CLOUDS, when.date().toordinal())
    shape = terrain.land.shape
    codes = np.zeros(shape, np.uint8)
    f = cloud_fraction(rng, when.date())
    brightness = float(rng.uniform(0.8, 1.15))
    alpha = cirrus = shade = None

    if f >= 0.001:
        # Shadows fall away from the sun, at height / tan(elevation) from their cloud: the
        # cloud field covers the grid extended towards the sun, so that clouds just outside
        # the grid cast their shadows into it.
        height = rng.uniform(800.0, 2500.0)
        length = height / math.tan(math.radians(max(sun_elevation, 5.0)))
        away = math.radians(sun_azimuth + 180.0)
        drow = int(round(-length * math.cos(away) / 20.0))
        dcol = int(round(length * math.sin(away) / 20.0))
        h, w = shape
        ext_shape = (h + abs(drow), w + abs(dcol))
        field = noise.value_noise(rng, ext_shape, rng.uniform(60.0, 150.0), octaves=4, persistence=0.55)
        r0, c0 = max(0, drow), max(0, dcol)
        rows, cols = terrain.world
        world_field = field[r0 + rows.start:r0 + rows.stop, c0 + cols.start:c0 + cols.stop]
        t_cloud, t_core = np.quantile(world_field, [1.0 - f, 1.0 - 0.7 * f])
        span = max(float(t_core - t_cloud), 0.3)
        alpha_ext = np.where(field > t_cloud, 0.4 + 0.6 * np.clip((field - t_cloud) / span, 0.0, 1.0),
                             0.0).astype(np.float32)
        alpha = alpha_ext[r0:r0 + h, c0:c0 + w]
        inner = field[r0:r0 + h, c0:c0 + w]
        cloudy = alpha > 0
        codes[cloudy] = SCL_CLOUD_MEDIUM
        codes[inner > t_core] = SCL_CLOUD_HIGH
        shadow = alpha_ext[r0 - drow:r0 - drow + h, c0 - dcol:c0 - dcol + w].copy()
        shadow[cloudy] = 0.0
        shade = 0.85 * shadow
        codes[shadow > 0] = SCL_SHADOW

    if rng.random() < 0.3:
        ci_field = noise.value_noise(rng, shape, rng.uniform(150.0, 300.0), octaves=2)
        t_ci = np.quantile(ci_field[terrain.world], 1.0 - rng.uniform(0.1, 0.7))
        cirrus = (np.clip(ci_field - t_ci, 0.0, 1.0) * rng.uniform(0.5, 1.0)).astype(np.float32)
        codes[(cirrus > 0) & (codes == 0)] = SCL_CIRRUS

    dark_share = 0.02 * min(max((28.0 - sun_elevation) / 15.0, 0.0), 1.0)
    if dark_share > 0:
        az = math.radians(sun_azimuth)
        facing_away = -(terrain.slope_east * math.sin(az) + terrain.slope_north * math.cos(az))
        land_world = terrain.land[terrain.world]
        if land_world.any():
            limit = np.quantile(facing_away[terrain.world][land_world], 1.0 - dark_share)
            dark = (facing_away > limit) & terrain.land & (codes == 0)
            codes[dark] = SCL_DARK
            dark_shade = np.where(dark, np.float32(0.6), np.float32(0.0))
            shade = dark_shade if shade is None else np.maximum(shade, dark_shade)

    u = rng.random(shape, dtype=np.float32)
    p_saturated = 2e-5 if rng.random() < 0.15 else 0.0
    p_unclassified = rng.uniform(0.002, 0.008)
    free = codes == 0
    codes[free & (u < p_unclassified)] = SCL_UNCLASSIFIED
    codes[free & (u < p_saturated)] = SCL_SATURATED
    return Atmosphere(f, alpha, cirrus, shade, brightness, codes)


def surface_codes(b03: np.ndarray, b04: np.ndarray, b8a: np.ndarray, b11: np.ndarray) -> np.ndarray:
    """SCL of clear pixels from 20 m surface reflectance: snow 11, water 6, vegetation 4, else 5."""
    eps = np.float32(1e-6)
    ndsi = (b03 - b11) / (b03 + b11 + eps)
    ndwi = (b03 - b8a) / (b03 + b8a + eps)
    ndvi = (b8a - b04) / (b8a + b04 + eps)
    codes = np.full(b03.shape, SCL_NOT_VEGETATED, np.uint8)
    codes[ndvi > 0.4] = SCL_VEGETATION
    codes[(ndwi > 0.4) & (b8a < 0.06)] = SCL_WATER
    codes[(ndsi > 0.4) & (b03 > 0.22)] = SCL_SNOW
    return codes
