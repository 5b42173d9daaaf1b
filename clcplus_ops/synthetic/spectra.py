"""Per-class spectra: endmember reflectances of the 12 Sentinel-2 bands and, per spectral unit
and pixel, the two states between which a unit moves in time.

Each pixel's surface reflectance on a date is ``S0 + g * D`` (``D = S1 - S0``): ``S0`` and
``S1`` are the unit's two states (leaf-off and leaf-on canopy, bare soil and full crop cover,
stubble and green sward, clear and turbid water, fresh and old snow...), mixed from the
endmembers below with per-unit fractions and scaled by a per-unit and a per-pixel brightness;
``g`` is the unit's state on that date (``phenology``). Seasonal snow is blended on top, then
the atmosphere (``clouds``). See ``CLASS_MODELS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clcplus_ops.sentinel2.bands import BANDS
from clcplus_ops.synthetic import noise
from clcplus_ops.synthetic.landscape import (
    BARE, CROPS, DECIDUOUS, EVERGREEN, GRASS, LICHENS, NEEDLE, PARCEL, ROAD, SEA, SEALED, SHRUBS, SNOW,
    WATER, Landscape,
)
from clcplus_ops.synthetic.planted import PlantedErrors, blend_planted, planted_errors

BAND_NAMES: tuple[str, ...] = tuple(BANDS)  # B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12
N_BANDS = len(BAND_NAMES)

# Endmember reflectances (0..1), bands in BAND_NAMES order:
#                         B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09   B11   B12
ENDMEMBERS: dict[str, tuple[float, ...]] = {
    "broadleaf":         (.025, .030, .062, .030, .095, .260, .340, .380, .400, .390, .190, .090),
    "grass":             (.030, .035, .078, .040, .115, .280, .345, .370, .390, .380, .230, .115),
    "crop":              (.030, .034, .080, .034, .125, .330, .430, .470, .490, .480, .240, .115),
    "needle":            (.020, .022, .040, .020, .060, .150, .200, .220, .230, .220, .110, .050),
    "evergreen":         (.024, .027, .052, .030, .080, .200, .255, .285, .300, .290, .165, .080),
    "shrub":             (.040, .045, .070, .062, .100, .190, .230, .250, .260, .255, .240, .150),
    "npv":               (.060, .070, .100, .120, .150, .190, .220, .240, .250, .255, .320, .240),
    "leafoff":           (.035, .040, .058, .068, .090, .120, .140, .160, .170, .170, .200, .130),
    "soil":              (.070, .080, .110, .140, .170, .190, .210, .230, .240, .250, .330, .280),
    "rock":              (.130, .150, .190, .220, .240, .250, .260, .270, .280, .280, .330, .270),
    "gravel":            (.110, .130, .170, .210, .235, .250, .265, .280, .290, .290, .360, .310),
    "lichen":            (.060, .070, .100, .100, .140, .190, .220, .240, .250, .250, .250, .170),
    "moss":              (.030, .040, .070, .050, .100, .200, .250, .280, .290, .280, .220, .130),
    "asphalt":           (.060, .070, .080, .090, .100, .110, .115, .120, .125, .125, .140, .130),
    "roof":              (.070, .080, .100, .170, .210, .240, .260, .280, .290, .290, .350, .300),
    "concrete":          (.150, .170, .200, .220, .230, .240, .250, .260, .260, .260, .280, .250),
    "sea":               (.050, .045, .035, .015, .010, .006, .005, .004, .004, .003, .002, .001),
    "lake":              (.055, .050, .055, .030, .025, .012, .009, .008, .007, .005, .002, .001),
    "turbid":            (.075, .075, .095, .075, .062, .030, .022, .016, .014, .010, .003, .002),
    "snow":              (.900, .920, .910, .880, .860, .840, .820, .800, .770, .700, .100, .060),
    "firn":              (.700, .720, .700, .650, .620, .580, .550, .520, .500, .450, .060, .040),
}
_E = {name: np.array(values, np.float32) for name, values in ENDMEMBERS.items()}

# How much of a unit's canopy seasonal snow covers (the rest stays visible through it).
SNOW_COVER: dict[int, float] = {
    SEALED: 0.7, NEEDLE: 0.45, DECIDUOUS: 0.7, EVERGREEN: 0.5, SHRUBS: 0.9, GRASS: 1.0, CROPS: 1.0,
    LICHENS: 1.0, BARE: 1.0, WATER: 0.0, SNOW: 0.0,
}


# Atypical units: a share of the parcels looks partly like a neighbouring class (sparse
# forest like shrubs, a fallow field like grassland, a gravel pit like a town...), in spectrum
# and season, so that the classes overlap a little as real ones do.
CONFUSABLE: dict[int, tuple[int, ...]] = {
    SEALED: (BARE,), NEEDLE: (EVERGREEN,), DECIDUOUS: (EVERGREEN, SHRUBS), EVERGREEN: (NEEDLE, SHRUBS),
    SHRUBS: (EVERGREEN, GRASS), GRASS: (CROPS, SHRUBS), CROPS: (GRASS,), LICHENS: (BARE, SHRUBS),
    BARE: (LICHENS, SEALED),
}
ATYPICAL_SHARE = 0.08
ATYPICAL_WEIGHT = (0.25, 0.65)


def atypical_units(landscape: Landscape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: the class it partly looks like (0: none) and how much (0..1)."""
    rng = noise.stream(seed, noise.SPECTRA, 2)
    n = landscape.n_units
    cls = landscape.unit_class
    chosen = (rng.random(n) < ATYPICAL_SHARE) & (landscape.unit_kind == PARCEL)
    pick = rng.random(n)
    weight = rng.uniform(*ATYPICAL_WEIGHT, n)
    partner = np.zeros(n, np.int64)
    present = set(np.unique(cls[landscape.unit_kind == PARCEL]).tolist())
    for c, options in CONFUSABLE.items():
        options = [o for o in options if o in present]
        m = chosen & (cls == c)
        if options and m.any():
            partner[m] = np.array(options)[(pick[m] * len(options)).astype(int)]
    return partner, np.where(partner > 0, weight, 0.0)


def blend_atypical(values: np.ndarray, landscape: Landscape, seed: int,
                   planted: PlantedErrors | None = None) -> np.ndarray:
    """(U, ...) per-unit values moved towards the mean of the units' partner classes; planted
    units instead towards their donor's own (unblended) values."""
    partner, weight = atypical_units(landscape, seed)
    if planted is not None and planted.plants:
        partner[planted.units] = 0
    if not partner.any():
        return blend_planted(values, planted)
    out = values.copy()
    cls, typical = landscape.unit_class, (partner == 0) & (landscape.unit_kind == PARCEL)
    for c in np.unique(partner[partner > 0]):
        of_class = (cls == c) & typical
        if not of_class.any():
            of_class = (cls == c) & (landscape.unit_kind == PARCEL)
        mean = values[of_class].mean(axis=0)
        m = partner == c
        w = weight[m].reshape((-1,) + (1,) * (values.ndim - 1)).astype(values.dtype)
        out[m] = (1 - w) * values[m] + w * mean
    if planted is not None and planted.plants:
        out[planted.units] = blend_planted(values, planted)[planted.units]
    return out


@dataclass
class SurfaceModel:
    """Per-pixel states, (N_BANDS, H, W) float32 each, and the snow endmember."""

    s0: np.ndarray
    d: np.ndarray
    snow: np.ndarray  # (N_BANDS,) fresh-snow reflectance used for seasonal snow
    snow_cover: np.ndarray  # (H, W) float32: how much of the pixel seasonal snow can cover


def _mix(weights: np.ndarray, *names: str) -> np.ndarray:
    """(n, N_BANDS) mixtures of the named endmembers with (n, len(names)) weights."""
    return weights @ np.stack([_E[n] for n in names])


def unit_states(landscape: Landscape, seed: int, base: Landscape | None = None,
                planted: PlantedErrors | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(U, N_BANDS) states S0 and S1 of every unit, with per-unit fractions and brightness.

    ``base``: the landscape of the first reference year when ``landscape`` is a later one.
    Draws are made per class, so a class assignment that differs would shift the draws of
    unchanged units: their rows come from the base, only the changed units' rows from
    ``landscape``. ``planted``: the planted errors of the base (computed when not given)."""
    base = landscape if base is None else base
    if planted is None:
        planted = planted_errors(base, seed)
    s0, s1 = _unit_states(base, seed, planted)
    changed = landscape.unit_class != base.unit_class
    if changed.any():
        c0, c1 = _unit_states(landscape, seed, None)
        s0[changed], s1[changed] = c0[changed], c1[changed]
    return s0, s1


def _unit_states(landscape: Landscape, seed: int, planted: PlantedErrors | None) -> tuple[np.ndarray, np.ndarray]:
    rng = noise.stream(seed, noise.SPECTRA)
    n = landscape.n_units
    cls, kind = landscape.unit_class, landscape.unit_kind
    s0 = np.zeros((n, N_BANDS), np.float32)
    s1 = np.zeros((n, N_BANDS), np.float32)
    u = lambda lo, hi, size: rng.uniform(lo, hi, size)  # noqa: E731

    def put(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        s0[mask], s1[mask] = a, b

    # Sealed: asphalt, roofs and concrete with some urban greenery (lawns, street trees).
    m = (cls == SEALED) & (kind != ROAD)
    k = int(m.sum())
    asphalt, roof, veg = u(0.25, 0.5, k), u(0.15, 0.4, k), u(0.05, 0.2, k)
    concrete = np.clip(1 - asphalt - roof - veg, 0, None)
    w = np.stack([asphalt, roof, concrete, veg], 1)
    put(m, _mix(w, "asphalt", "roof", "concrete", "npv"), _mix(w, "asphalt", "roof", "concrete", "grass"))
    m = kind == ROAD
    k = int(m.sum())
    w = np.stack([u(0.75, 0.9, k), np.zeros(k), np.zeros(k)], 1)
    w[:, 1] = 1 - w[:, 0]
    put(m, _mix(w, "asphalt", "concrete", "npv"), _mix(w, "asphalt", "concrete", "grass"))

    # Needle-leaved trees: dark canopy, understory brown in winter, green in summer.
    m = cls == NEEDLE
    k = int(m.sum())
    canopy = u(0.65, 0.95, k)[:, None]
    put(m, canopy * _E["needle"] + (1 - canopy) * _E["leafoff"], canopy * _E["needle"] + (1 - canopy) * _E["grass"])
    # Broadleaved deciduous: leaf-off (branches, litter) to closed green canopy.
    m = cls == DECIDUOUS
    k = int(m.sum())
    cover = u(0.7, 1.0, k)[:, None]
    put(m, np.broadcast_to(_E["leafoff"], (k, N_BANDS)), cover * _E["broadleaf"] + (1 - cover) * _E["leafoff"])
    # Broadleaved evergreen: sclerophyllous canopy, a little dry litter in summer drought.
    m = cls == EVERGREEN
    k = int(m.sum())
    cover = u(0.7, 0.95, k)[:, None]
    put(m, cover * _E["evergreen"] + (1 - cover) * _E["npv"],
        (0.3 + 0.7 * cover) * _E["evergreen"] + (0.7 - 0.7 * cover) * _E["npv"])
    # Shrubs: shrub canopy with dry grass and soil; green flush in spring.
    m = cls == SHRUBS
    k = int(m.sum())
    shrub, npv = u(0.3, 0.65, k), u(0.2, 0.35, k)
    w = np.stack([shrub, npv, 1 - shrub - npv], 1)
    put(m, _mix(w, "shrub", "npv", "soil"), _mix(np.stack([shrub + 0.5 * npv, 0.5 * npv, 1 - shrub - npv], 1),
                                                "shrub", "grass", "soil"))
    # Permanent grassland: stubble/dry sward to dense green sward.
    m = cls == GRASS
    k = int(m.sum())
    npv, soil = u(0.5, 0.7, k), u(0.1, 0.2, k)
    green = u(0.7, 1.0, k)[:, None]  # extensive, drier swards stay less green
    w = np.stack([npv, soil, 1 - npv - soil], 1)
    put(m, _mix(w, "npv", "soil", "grass"), green * _E["grass"] + (1 - green) * _E["npv"])
    # Crops: bare soil (colour and moisture per parcel) to full crop canopy.
    m = cls == CROPS
    k = int(m.sum())
    soil = _E["soil"] * u(0.75, 1.25, k)[:, None].astype(np.float32)
    soil[:, 3] *= u(0.9, 1.15, k).astype(np.float32)  # redder or greyer soils
    put(m, soil, np.broadcast_to(_E["crop"], (k, N_BANDS)))
    # Lichens and mosses: a lichen mat that greens a little in the wet season.
    m = cls == LICHENS
    k = int(m.sum())
    moss = u(0.1, 0.55, k)[:, None]
    put(m, (1 - moss) * _E["lichen"] + moss * _E["moss"] * 0.8,
        (1 - moss * 1.5) * _E["lichen"] + moss * 1.5 * _E["moss"])
    # Bare ground: rock, gravel and soil; g is wetness (darker, much darker in the SWIR).
    m = cls == BARE
    k = int(m.sum())
    rock, gravel = u(0.4, 0.8, k), u(0.0, 0.3, k)
    w = np.stack([rock, gravel, np.clip(1 - rock - gravel, 0, None)], 1)
    dry = _mix(w, "rock", "gravel", "soil")
    wet = dry * np.linspace(0.8, 0.55, N_BANDS, dtype=np.float32)
    put(m, dry, wet)
    # Water: clear to turbid; the sea deeper than lakes and rivers.
    m = (cls == WATER) & (kind == SEA)
    put(m, _E["sea"], 0.6 * _E["sea"] + 0.4 * _E["turbid"])
    m = (cls == WATER) & (kind != SEA)
    k = int(m.sum())
    put(m, _E["lake"] * u(0.85, 1.15, k)[:, None], np.broadcast_to(_E["turbid"], (k, N_BANDS)))
    # Permanent snow and ice: fresh snow to old firn / bare glacier ice in late summer.
    m = cls == SNOW
    k = int(m.sum())
    put(m, _E["snow"] * u(0.95, 1.02, k)[:, None], _E["firn"] * u(0.85, 1.05, k)[:, None])

    # Per-unit brightness (stand density, soil colour, roof material...).
    brightness = rng.normal(1.0, 0.07, n).clip(0.8, 1.2).astype(np.float32)
    brightness[kind == SEA] = 1.0
    s0, s1 = s0 * brightness[:, None], s1 * brightness[:, None]
    return blend_atypical(s0, landscape, seed, planted), blend_atypical(s1, landscape, seed, planted)


def surface_model(landscape: Landscape, seed: int, base: Landscape | None = None,
                  planted: PlantedErrors | None = None) -> SurfaceModel:
    """Per-pixel S0 and D: unit states with a per-pixel brightness and contrast variation
    (``base``, ``planted``: as in :func:`unit_states`)."""
    rng = noise.stream(seed, noise.SPECTRA, 1)
    s0_unit, s1_unit = unit_states(landscape, seed, base, planted)
    shape = landscape.unit.shape
    texture = 0.035 * noise.value_noise(rng, shape, 4.0, octaves=2)
    texture += rng.normal(0.0, 0.02, shape).astype(np.float32)
    bright = 1.0 + texture
    contrast = 1.0 + rng.normal(0.0, 0.05, shape).astype(np.float32)
    unit = landscape.unit
    s0 = np.empty((N_BANDS, *shape), np.float32)
    d = np.empty((N_BANDS, *shape), np.float32)
    diff_unit = s1_unit - s0_unit
    for b in range(N_BANDS):
        np.multiply(s0_unit[:, b][unit], bright, out=s0[b])
        np.multiply(diff_unit[:, b][unit], bright, out=d[b])
        d[b] *= contrast
    cover = np.array([SNOW_COVER[c] for c in range(1, 12)], np.float32)
    snow_cover = cover[landscape.classes - 1]
    return SurfaceModel(s0, d, _E["snow"].copy(), snow_cover)


def endmember(name: str) -> np.ndarray:
    return _E[name].copy()
