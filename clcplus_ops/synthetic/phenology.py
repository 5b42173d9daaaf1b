"""The state ``g`` of every spectral unit on every acquisition date, and the seasonal snow line.

``g`` moves a unit between its two spectral states (``spectra``): leaf-on for trees, green
cover for crops and grassland, wetness for bare ground, turbidity for water, age for snow.
Per-unit parameters are drawn per calendar year (crop calendars per crop year, mowing dates
per year) from generators keyed by the year or the date, so a date shared by two reference
years' windows looks the same in both.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from clcplus_ops.synthetic import noise
from clcplus_ops.synthetic.landscape import (
    BARE, CROPS, DECIDUOUS, EVERGREEN, GRASS, LICHENS, NEEDLE, RIVER, SEA, SEALED, SHRUBS, SNOW, WATER,
    Landscape,
)
from clcplus_ops.synthetic.planted import PlantedErrors, planted_errors

YEAR_DAYS = 365.25
# Crop types per parcel and crop year: winter cereal, summer crop, spring cereal, fallow ley
# (the first draw of the stream (seed, PHENOLOGY, CROPS, year); the LPIS declarations use it).
CROP_TYPE_P = (0.42, 0.38, 0.12, 0.08)


def _doy(dates: list[dt.date]) -> np.ndarray:
    return np.array([d.timetuple().tm_yday for d in dates], np.float64)


def _circular(doy: np.ndarray, centre: np.ndarray | float) -> np.ndarray:
    """Signed day distance from ``centre`` on the yearly circle."""
    return (doy - centre + YEAR_DAYS / 2) % YEAR_DAYS - YEAR_DAYS / 2


def _bump(doy: np.ndarray, centre, width) -> np.ndarray:
    return np.exp(-0.5 * (_circular(doy, centre) / width) ** 2)


def _logistic(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _per_year(seed: int, what: int, years: list[int], n: int, draw) -> dict[int, np.ndarray]:
    """Per-unit parameters of each year: ``draw(rng, n)`` with a generator keyed by the year."""
    return {y: draw(noise.stream(seed, noise.PHENOLOGY, what, y), n) for y in years}


def unit_states(landscape: Landscape, dates: list[dt.date], seed: int, base: Landscape | None = None,
                planted: PlantedErrors | None = None) -> np.ndarray:
    """(U, n_dates) float32 ``g`` of every unit on every date. ``base`` and ``planted`` as in
    ``spectra.unit_states``: unchanged units keep the rows they have in the base landscape."""
    base = landscape if base is None else base
    if planted is None:
        planted = planted_errors(base, seed)
    g = _unit_states(base, dates, seed, planted)
    changed = landscape.unit_class != base.unit_class
    if changed.any():
        g[changed] = _unit_states(landscape, dates, seed, None)[changed]
    return g


def _unit_states(landscape: Landscape, dates: list[dt.date], seed: int, planted: PlantedErrors | None) -> np.ndarray:
    n, nd = landscape.n_units, len(dates)
    cls, kind = landscape.unit_class, landscape.unit_kind
    doy = _doy(dates)
    years = sorted({d.year for d in dates})
    year_of = np.array([d.year for d in dates])
    g = np.zeros((n, nd), np.float64)

    def yearly(what: int, draw) -> np.ndarray:
        """(n, nd) per-unit parameter taken from the year of each date."""
        params = _per_year(seed, what, years, n, draw)
        out = np.empty((n, nd))
        for y in years:
            out[:, year_of == y] = params[y][:, None]
        return out

    # Deciduous trees and urban greenery: leaf-on between green-up and senescence.
    up = yearly(DECIDUOUS * 10 + 1, lambda r, k: r.normal(110.0, 6.0, k))
    down = yearly(DECIDUOUS * 10 + 2, lambda r, k: r.normal(292.0, 7.0, k))
    leaf_on = _logistic((doy - up) / 5.5) - _logistic((doy - down) / 7.0)
    for c in (DECIDUOUS, SEALED):
        g[cls == c] = leaf_on[cls == c]

    # Needle-leaved trees: a small seasonal swing of the understory.
    phase = noise.stream(seed, noise.PHENOLOGY, NEEDLE).normal(0.0, 8.0, n)[:, None]
    g[cls == NEEDLE] = (0.5 - 0.5 * np.cos(2 * np.pi * (doy - 20.0 - phase) / YEAR_DAYS))[cls == NEEDLE]

    # Broadleaved evergreen: green all year, a dip in the late-summer drought.
    centre = yearly(EVERGREEN * 10, lambda r, k: r.normal(222.0, 10.0, k))
    depth = noise.stream(seed, noise.PHENOLOGY, EVERGREEN).uniform(0.4, 0.8, n)[:, None]
    g[cls == EVERGREEN] = (1.0 - depth * _bump(doy, centre, 32.0))[cls == EVERGREEN]

    # Shrubs: green flush in spring, a smaller one after the autumn rains.
    centre = yearly(SHRUBS * 10, lambda r, k: r.normal(132.0, 10.0, k))
    shrub = 0.2 + 0.8 * _bump(doy, centre, 42.0) + 0.3 * _bump(doy, 300.0, 25.0)
    g[cls == SHRUBS] = np.clip(shrub, 0, 1)[cls == SHRUBS]

    # Permanent grassland: green most of the year, cut by mowing events.
    base = 0.55 + 0.45 * _bump(doy, 150.0, 70.0)
    m = cls == GRASS
    g[m] = (base * _mowing(seed, years, dates, n))[m]

    # Crops: crop calendars per parcel and crop year, bare soil in between.
    m = np.flatnonzero(cls == CROPS)
    if m.size:
        g[m] = _crop_curves(seed, m, dates, n)

    # Lichens and mosses: low, slow, greener in spring.
    offset = noise.stream(seed, noise.PHENOLOGY, LICHENS).normal(0.0, 0.05, n)[:, None]
    g[cls == LICHENS] = (0.45 + 0.3 * np.sin(2 * np.pi * (doy - 105.0) / YEAR_DAYS) + offset)[cls == LICHENS]

    # Bare ground: wetness after rain, wetter in winter.
    wet = np.array([noise.stream(seed, noise.PHENOLOGY, BARE, d.toordinal()).beta(1.2, 3.0) for d in dates])
    wet = wet + 0.25 * _bump(doy, 15.0, 60.0)
    sens = noise.stream(seed, noise.PHENOLOGY, BARE).uniform(0.6, 1.2, n)[:, None]
    g[cls == BARE] = np.clip(wet * sens, 0, 1)[cls == BARE]

    # Water: turbidity from spring runoff and rain events; rivers most, the sea least.
    rain = np.array([noise.stream(seed, noise.PHENOLOGY, WATER, d.toordinal()).beta(1.5, 5.0) for d in dates])
    r = noise.stream(seed, noise.PHENOLOGY, WATER)
    base = r.uniform(0.0, 0.3, n)
    base[kind == RIVER] = r.uniform(0.3, 0.6, int((kind == RIVER).sum()))
    base[kind == SEA] = 0.1
    jitter = r.normal(0.0, 0.05, (n, nd))
    turbidity = base[:, None] + 0.25 * _bump(doy, 100.0, 35.0) + 0.6 * rain + jitter
    g[cls == WATER] = np.clip(turbidity, 0, 1)[cls == WATER]

    # Snow and ice: fresh snow in winter, old firn / bare ice in late summer.
    offset = noise.stream(seed, noise.PHENOLOGY, SNOW).normal(0.0, 0.05, n)[:, None]
    g[cls == SNOW] = np.clip(0.1 + 0.7 * _bump(doy, 225.0, 40.0) + offset, 0, 1)[cls == SNOW]

    from clcplus_ops.synthetic.spectra import blend_atypical

    return blend_atypical(g, landscape, seed, planted).astype(np.float32)


def _mowing(seed: int, years: list[int], dates: list[dt.date], n: int) -> np.ndarray:
    """(n, nd) factor of green cover left by mowing: drops to 0.2 at a cut, regrows in ~30 days."""
    t = np.array([d.toordinal() for d in dates], np.float64)
    factor = np.ones((n, len(dates)))
    for year in range(years[0] - 1, years[-1] + 1):
        rng = noise.stream(seed, noise.PHENOLOGY, GRASS, year)
        cuts = rng.choice([0, 2, 3, 4], size=n, p=[0.15, 0.35, 0.35, 0.15])
        first = dt.date(year, 1, 1).toordinal() - 1 + rng.uniform(130.0, 155.0, n)
        gaps = rng.uniform(35.0, 50.0, (n, 4))
        when = first[:, None] + np.concatenate([np.zeros((n, 1)), np.cumsum(gaps[:, :3], axis=1)], axis=1)
        for i in range(4):
            since = t[None, :] - when[:, i:i + 1]
            cut = np.where((since >= 0) & (i < cuts[:, None]), 0.2 + 0.8 * np.clip(since / 30.0, 0, 1), 1.0)
            factor = np.minimum(factor, cut)
    return factor


def _crop_curves(seed: int, units: np.ndarray, dates: list[dt.date], n: int) -> np.ndarray:
    """(len(units), nd) green cover of crop parcels: winter cereals (30 % followed by a catch
    crop), summer crops (maize, sunflower, soy), spring cereals or a fallow ley per crop year,
    each with sowing, emergence, peak, senescence, harvest, stubble and ploughing; bare soil
    between crops."""
    t = np.array([d.toordinal() for d in dates], np.float64)
    crop_years = range(min(d.year for d in dates) - 1, max(d.year for d in dates) + 2)
    draws = {}
    for y in crop_years:
        rng = noise.stream(seed, noise.PHENOLOGY, CROPS, y)
        draws[y] = {
            "type": rng.choice(4, size=n, p=CROP_TYPE_P),
            "cover_crop": rng.random(n) < 0.3,
            "u": rng.random((n, 4)),
            "peak": rng.normal(0.0, 8.0, n),
            "amp": rng.uniform(0.85, 1.05, n),
        }
    out = np.empty((len(units), len(dates)), np.float64)
    for row, unit in enumerate(units):
        times: list[float] = []
        values: list[float] = []
        last_harvest = -np.inf
        for y in crop_years:
            p = draws[y]
            kind, (u0, u1, u2, _), amp = int(p["type"][unit]), p["u"][unit], float(p["amp"][unit])
            if kind == 0:  # winter cereal, sown in the autumn before
                sow = max(dt.date(y - 1, 10, 1).toordinal() + 40 * u0, last_harvest + 7)
                spring = dt.date(y, 3, 1).toordinal() + 20 * u1 - 10
                peak = dt.date(y, 5, 10).toordinal() + p["peak"][unit]
                harvest = dt.date(y, 7, 1).toordinal() + 25 * u2 - 10
                keys = [(sow, 0.0), (sow + 18, 0.05), (sow + 45, 0.25), (max(spring, sow + 50), 0.3),
                        (peak, 0.95 * amp), (peak + 30, 0.6), (harvest, 0.3)]
            elif kind == 1:  # summer crop
                sow = max(dt.date(y, 4, 20).toordinal() + 30 * u0, last_harvest + 7)
                peak = sow + 80 + p["peak"][unit]
                harvest = peak + 55 + 20 * u2
                keys = [(sow, 0.0), (sow + 15, 0.03), (peak, amp), (peak + 40, 0.55), (harvest, 0.35)]
            elif kind == 2:  # spring cereal
                sow = max(dt.date(y, 3, 15).toordinal() + 20 * u0, last_harvest + 7)
                peak = sow + 70 + p["peak"][unit]
                harvest = peak + 50
                keys = [(sow, 0.0), (sow + 15, 0.05), (peak, 0.9 * amp), (peak + 30, 0.5), (harvest, 0.3)]
            else:  # fallow: a temporary ley, green from spring, cut once in early summer
                sow = max(dt.date(y, 3, 1).toordinal() + 30 * u0, last_harvest + 7)
                peak = dt.date(y, 5, 20).toordinal() + p["peak"][unit]
                harvest = dt.date(y, 8, 20).toordinal() + 20 * u2
                keys = [(sow, 0.05), (sow + 30, 0.45), (peak, 0.8 * amp), (peak + 1, 0.3),
                        (peak + 35, 0.7 * amp), (harvest, 0.4)]
            keys += [(harvest + 1, 0.12), (harvest + 35, 0.02)]
            if p["cover_crop"][unit] and kind == 0:  # a catch crop after the cereal harvest
                keys += [(harvest + 50, 0.15), (harvest + 90, 0.45), (harvest + 120, 0.05)]
            for when, value in keys:
                if times and when <= times[-1]:
                    when = times[-1] + 1
                times.append(when)
                values.append(value)
            last_harvest = times[-1]
        out[row] = np.interp(t, times, values)
    return out


def snow_lines(dates: list[dt.date], seed: int) -> np.ndarray:
    """Per date, the elevation (0..1 land quantile) above which seasonal snow lies; above 1 in
    the snow-free season. Deep winter with snowfall events brings it down to ~0.6."""
    doy = _doy(dates)
    winter = _bump(doy, 25.0, 40.0)
    events = np.array([noise.stream(seed, noise.PHENOLOGY, 99, d.toordinal()).random() for d in dates])
    return (1.05 - winter * (0.12 + 0.33 * events)).astype(np.float32)
