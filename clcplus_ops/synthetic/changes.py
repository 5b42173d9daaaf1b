"""Known real change: the landscape changes between consecutive reference years.

The landscape of ``build_landscape`` is the state at the first scheduled reference year. For
each later scheduled year Y, events happen between the previous year's acquisition window and
Y's (the windows do not overlap), drawn from a generator keyed by (seed, CHANGES, Y) on the
state of the previous year, so the landscape of any year is the base with every event of the
years up to it applied, and two reference years differ exactly on the later one's events.

Per interval (shares of the world's land; worlds with less than ``MIN_LAND_HA`` of land have
no events, a parcel there would be a large share):

- ``clear_cut`` (~0.25 %): forest parcels (2 needle-leaved, twice as likely, 3 broadleaved
  deciduous) become 9, non and sparsely vegetated.
- ``construction`` (~0.08 %): crop parcels (7) become sealed (1), eight times as likely next to
  a sealed parcel (towns grow at their edges).
- ``reservoir`` (~0.12 %, at most 20 ha): one compact cluster of adjacent low-lying grassland or
  crop parcels (6, 7) fills with water (10).

Units are whole parcels lying wholly inside the world; roads, rivers, the sea and the
parcels of planted errors never change.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import shapely.geometry

from clcplus_ops.synthetic import noise
from clcplus_ops.synthetic.grid import PIXEL_M
from clcplus_ops.synthetic.landscape import (
    BARE, CROPS, DECIDUOUS, GRASS, NEEDLE, PARCEL, SEALED, WATER, Landscape, UnitStats, unit_neighbours,
    unit_polygons, unit_stats,
)
from clcplus_ops.synthetic.planted import PlantedErrors, planted_errors

CLEAR_CUT, CONSTRUCTION, RESERVOIR = KINDS = ("clear_cut", "construction", "reservoir")
CLEAR_CUT_SHARE = 0.0025
CONSTRUCTION_SHARE = 0.0008
RESERVOIR_SHARE = 0.0012
RESERVOIR_MAX_HA = 20.0
MIN_LAND_HA = 100.0
NEAR_SEALED_WEIGHT = 8.0
RESERVOIR_LOWEST = 0.25  # the reservoir starts in the lowest quarter of the candidate parcels


@dataclass(frozen=True)
class ChangeEvent:
    year: int  # the reference year the change is first seen in
    kind: str
    unit: int
    from_class: int
    to_class: int


def landscape_for_year(base: Landscape, year: int, seed: int, years: Iterable[int],
                       planted: PlantedErrors | None = None) -> tuple[Landscape, list[ChangeEvent]]:
    """The landscape of ``year`` and every event applied to reach it from ``base`` (the state
    at the first of ``years``, the scheduled reference years in ascending order; an infinite
    iterator such as ``calendar.scheduled_years()`` is fine)."""
    past = sorted(set(itertools.takewhile(lambda y: y <= year, years)))
    events = change_events(base, seed, past, planted)
    return apply_events(base, events), events


def change_events(base: Landscape, seed: int, years: list[int],
                  planted: PlantedErrors | None = None) -> list[ChangeEvent]:
    """The events of every year of ``years`` after the first, each drawn on the state the
    previous events left."""
    if len(years) < 2:
        return []
    stats = unit_stats(base)
    land_px = int(base.world(base.land).sum())
    if land_px * PIXEL_M**2 / 1e4 < MIN_LAND_HA:
        return []
    if planted is None:
        planted = planted_errors(base, seed)
    frozen = np.zeros(base.n_units, bool)
    frozen[planted.units] = True
    eligible = (base.unit_kind == PARCEL) & stats.inside & ~frozen
    neighbours = unit_neighbours(base)
    unit_class = base.unit_class.copy()
    events: list[ChangeEvent] = []
    for year in years[1:]:
        rng = noise.stream(seed, noise.CHANGES, year)
        new = _interval(rng, year, unit_class, eligible, stats, neighbours, land_px, planted.in_focus)
        for e in new:
            unit_class[e.unit] = e.to_class
            eligible[e.unit] = False  # a changed parcel stays as it became
        events += new
    return events


def apply_events(base: Landscape, events: list[ChangeEvent]) -> Landscape:
    if not events:
        return base
    unit_class = base.unit_class.copy()
    for e in events:
        unit_class[e.unit] = e.to_class
    return dataclasses.replace(base, unit_class=unit_class, classes=unit_class[base.unit])


def _interval(rng: np.random.Generator, year: int, unit_class: np.ndarray, eligible: np.ndarray,
              stats: UnitStats, neighbours: tuple[np.ndarray, np.ndarray], land_px: int,
              focus: np.ndarray | None = None) -> list[ChangeEvent]:
    px = stats.pixels.astype(np.float64)
    taken = np.zeros(len(unit_class), bool)
    events: list[ChangeEvent] = []

    def take(units, kind: str, to_class: int) -> None:
        for u in units:
            taken[u] = True
            events.append(ChangeEvent(year, kind, int(u), int(unit_class[u]), to_class))

    # The reservoir first: it needs a cluster of free neighbours.
    indptr, adjacent = neighbours
    pool = np.flatnonzero(eligible & np.isin(unit_class, (GRASS, CROPS)))
    target = min(RESERVOIR_SHARE * land_px, RESERVOIR_MAX_HA * 1e4 / PIXEL_M**2)
    if pool.size:
        # It starts in the focus area (the produced area, e.g. the demo PUs) where there is one.
        starts = pool[focus[pool]] if focus is not None and focus[pool].any() else pool
        low = starts[np.argsort(stats.elevation[starts], kind="stable")[:max(1, int(RESERVOIR_LOWEST * starts.size))]]
        start = int(rng.choice(low))
        cluster, area, members = [start], px[start], set(pool.tolist())
        frontier: set[int] = set()
        while True:
            frontier.update(int(v) for v in adjacent[indptr[cluster[-1]]:indptr[cluster[-1] + 1]] if v in members)
            frontier.difference_update(cluster)
            if not frontier:
                break
            # Compact and low: the closest neighbour, lower ground breaking near-ties.
            nxt = min(sorted(frontier), key=lambda v: math.hypot(stats.row[v] - stats.row[start],
                                                                stats.col[v] - stats.col[start])
                      + 20.0 * stats.elevation[v])
            if area + 0.5 * px[nxt] >= target:
                break
            cluster.append(nxt)
            area += px[nxt]
        take(cluster, RESERVOIR, WATER)

    # New construction on farmland, mostly at the edge of built-up land.
    crops = np.flatnonzero(eligible & (unit_class == CROPS) & ~taken)
    if crops.size:
        sealed = unit_class == SEALED
        near = np.array([sealed[adjacent[indptr[u]:indptr[u + 1]]].any() for u in crops])
        take(_draw(rng, crops, np.where(near, NEAR_SEALED_WEIGHT, 1.0), px, CONSTRUCTION_SHARE * land_px),
             CONSTRUCTION, SEALED)

    # Clear-cuts in the forests, conifer plantations first.
    forest = np.flatnonzero(eligible & np.isin(unit_class, (NEEDLE, DECIDUOUS)) & ~taken)
    if forest.size:
        weights = np.where(unit_class[forest] == NEEDLE, 2.0, 1.0)
        take(_draw(rng, forest, weights, px, CLEAR_CUT_SHARE * land_px), CLEAR_CUT, BARE)
    return events


def _draw(rng: np.random.Generator, units: np.ndarray, weights: np.ndarray, px: np.ndarray,
          target: float) -> list[int]:
    """Units drawn without replacement (probability ~ weight) until their area is nearest to
    ``target`` pixels; at least one."""
    order = units[_weighted_order(rng, weights)]
    chosen, area = [], 0.0
    for u in order:
        if chosen and area + 0.5 * px[u] >= target:
            break
        chosen.append(int(u))
        area += px[u]
    return sorted(chosen)


def _weighted_order(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """A random order of sampling without replacement with probabilities ~ weights
    (exponential keys)."""
    keys = rng.exponential(size=len(weights)) / weights
    return np.argsort(keys, kind="stable")


# ------------------------------------------------------------------------------ reporting


def events_of(events: list[ChangeEvent], year: int) -> list[ChangeEvent]:
    """The events first seen in ``year`` (changes since the previous reference year)."""
    return [e for e in events if e.year == year]


def summary(events: list[ChangeEvent], landscape: Landscape, year: int, years: Iterable[int]) -> dict:
    """world.json's ``changes``: per kind, the parcels and pixels changed since the previous
    reference year and their from -> to classes; the cumulative total since the base year."""
    past = sorted(set(itertools.takewhile(lambda y: y <= year, years)))
    px = unit_stats(landscape).pixels_world
    land = int(landscape.world(landscape.land).sum())
    recent = events_of(events, year)
    kinds = {}
    for kind in KINDS:
        mine = [e for e in recent if e.kind == kind]
        transitions: dict[str, int] = {}
        for e in mine:
            key = f"{e.from_class}->{e.to_class}"
            transitions[key] = transitions.get(key, 0) + int(px[e.unit])
        kinds[kind] = {"parcels": len(mine), "pixels": int(sum(px[e.unit] for e in mine)),
                       "from_to": dict(sorted(transitions.items()))}
    pixels = sum(k["pixels"] for k in kinds.values())
    return {
        "base_year": past[0] if past else year,
        "previous_year": max((y for y in past if y < year), default=None),
        "since_previous_year": kinds,
        "pixels": pixels,
        "share_of_land": round(pixels / land, 6) if land else 0.0,
        "since_base_year": {"parcels": len(events), "pixels": int(sum(px[e.unit] for e in events))},
        "file": "truth/changes.geojson",
    }


def changes_geojson(events: list[ChangeEvent], landscape: Landscape, year: int) -> dict:
    """truth/changes.geojson: the parcels changed since the previous reference year, exactly
    their 10 m pixels, in the world CRS (named in the legacy ``crs`` member)."""
    recent = events_of(events, year)
    polygons = unit_polygons(landscape, [e.unit for e in recent])
    px = unit_stats(landscape).pixels_world
    features = [{
        "type": "Feature",
        "properties": {"kind": e.kind, "from_class": e.from_class, "to_class": e.to_class, "year": e.year,
                       "parcel": e.unit, "pixels": int(px[e.unit]),
                       "area_ha": round(float(px[e.unit]) * PIXEL_M**2 / 1e4, 4)},
        "geometry": shapely.geometry.mapping(polygons[e.unit]),
    } for e in recent]
    return {
        "type": "FeatureCollection",
        "name": f"clcplus-synthetic-changes-{year}",
        "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{landscape.grid.epsg}"}},
        "features": features,
    }
