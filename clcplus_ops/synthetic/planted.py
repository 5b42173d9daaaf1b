"""Planted errors: parcels made to look strongly like another class, so that the classifier
gets them wrong in a known way and the recoding sources written with each world
(``recoding_sources``) have real errors to fix:

- ``sealed_missed``: sealed blocks looking like bare ground (gravel yards, building sites);
  the OSM buildings fix them.
- ``grassland_as_arable``: every grassland parcel inside one round review area looks like a
  crop field; the LPIS rule limited to that area fixes them.
- ``expert_aoi``: a compact group of parcels of class X looking like class Y (holm oak stands
  like conifers, garrigue like grassland); an expert AOI drawn exactly around them fixes them.

A planted parcel takes ``weight`` (0.9..0.97) of the spectral states and seasonal course of one
typical *donor* parcel of the class it imitates (``blend_planted``), so it looks like a real
parcel of that class, not like a class average. The choice is made on the base landscape (the
first reference year's) and never changes: change events leave planted parcels alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely

from clcplus_ops.synthetic import noise
from clcplus_ops.synthetic.grid import PIXEL_M
from clcplus_ops.synthetic.landscape import (
    BARE, CROPS, EVERGREEN, GRASS, NEEDLE, PARCEL, SEALED, SHRUBS, Landscape, unit_neighbours, unit_stats,
)

SEALED_MISSED, GRASS_AS_ARABLE, EXPERT_AOI = "sealed_missed", "grassland_as_arable", "expert_aoi"
WEIGHT = (0.9, 0.97)
MIN_PIXELS = 8  # parcels smaller than this are not planted (sliver parcels at the world's edge)
FOCUS_SHARE = 0.95  # a planted parcel lies (almost) wholly in the focus area
# Shares of the candidate parcels planted, and caps (a few hectares each in the demo world).
SEALED_SHARE, SEALED_MAX = 0.02, 10
GRASS_SHARE, GRASS_MAX = 0.015, 10
AOI_SHARE, AOI_MAX = 0.008, 4
# Expert AOIs: (true class, look-alike class, from_classes text of the AOI, comment).
AOI_CONFUSIONS: tuple[tuple[int, int, str, str], ...] = (
    (EVERGREEN, NEEDLE, "2", "holm oak stands mapped as conifers (checked in the field)"),
    (SHRUBS, GRASS, "6,7", "garrigue mapped as grassland/arable (checked on VHR imagery)"),
)


@dataclass(frozen=True)
class Plant:
    kind: str
    unit: int
    true_class: int
    looks_like: int
    donor: int
    weight: float
    group: int = 0  # the expert AOI's number (1, 2, ...); 0 for the other kinds


@dataclass
class PlantedErrors:
    plants: list[Plant]
    review_area: shapely.Geometry | None  # world CRS: the grassland-as-arable region
    aois: dict[int, tuple[int, int, str, str]]  # group -> AOI_CONFUSIONS entry
    in_focus: np.ndarray | None = None  # (U,) bool: the unit lies in the focus area (None: no focus)

    @property
    def units(self) -> np.ndarray:
        return np.array([p.unit for p in self.plants], np.int64)

    def of_kind(self, kind: str) -> list[Plant]:
        return [p for p in self.plants if p.kind == kind]


def planted_errors(base: Landscape, seed: int, focus: np.ndarray | None = None) -> PlantedErrors:
    """The planted errors of a world; with ``focus`` (bool, the internal grid: the area that
    is produced, e.g. the demo PUs' polygons), only parcels lying in it, so the product shows
    them and their fixes."""
    rng = noise.stream(seed, noise.PLANTED)
    stats = unit_stats(base)
    cls, kind = base.unit_class, base.unit_kind
    eligible = (kind == PARCEL) & stats.inside & (stats.pixels >= MIN_PIXELS)
    in_focus = None
    if focus is not None:
        in_focus = np.bincount(base.unit[focus], minlength=base.n_units) >= FOCUS_SHARE * np.maximum(stats.pixels, 1)
        eligible &= in_focus
    used = np.zeros(base.n_units, bool)
    plants: list[Plant] = []

    def donors_of(c: int) -> np.ndarray:
        return np.flatnonzero(eligible & (cls == c))

    def plant(kind_name: str, units, true_class: int, looks_like: int, group: int = 0) -> None:
        donors = np.setdiff1d(donors_of(looks_like), np.flatnonzero(used))
        for u in units:
            used[u] = True
            donor = int(donors[rng.integers(donors.size)])
            plants.append(Plant(kind_name, int(u), true_class, looks_like, donor, float(rng.uniform(*WEIGHT)), group))

    def candidates(c: int) -> np.ndarray:
        return np.flatnonzero(eligible & (cls == c) & ~used)

    # (a) Sealed blocks that look like bare ground (grass where there is no bare ground).
    sealed = candidates(SEALED)
    looks = BARE if donors_of(BARE).size else GRASS
    if sealed.size and donors_of(looks).size:
        n = int(np.clip(round(SEALED_SHARE * sealed.size), 1, SEALED_MAX))
        plant(SEALED_MISSED, np.sort(rng.choice(sealed, n, replace=False)), SEALED, looks)

    # (b) A round review area whose grassland parcels all look like crop fields.
    review_area = None
    grass = candidates(GRASS)
    if grass.size and donors_of(CROPS).size:
        k = int(np.clip(round(GRASS_SHARE * grass.size), 1, GRASS_MAX))
        centre = int(rng.choice(grass))
        cy, cx = stats.row[centre], stats.col[centre]
        far = _farthest_pixel(base, grass, cy, cx)
        nearest = grass[np.argsort(np.hypot(stats.row[grass] - cy, stats.col[grass] - cx), kind="stable")[:k]]
        # Every pixel square of a planted parcel lies inside the circle with a margin (> 2.5 m).
        radius = float(far[nearest].max()) + 1.5
        inside = grass[far[grass] <= radius - 1.0]
        plant(GRASS_AS_ARABLE, inside, GRASS, CROPS)
        x0, _, _, y1 = base.grid.inner_bounds
        circle = shapely.Point(x0 + (cx + 0.5) * PIXEL_M, y1 - (cy + 0.5) * PIXEL_M).buffer(radius * PIXEL_M,
                                                                                          quad_segs=32)
        review_area = shapely.intersection(circle, shapely.box(*base.grid.bounds))

    # (c) Compact groups of parcels of one class looking like another, for the expert AOIs.
    indptr, neighbours = unit_neighbours(base)
    aois: dict[int, tuple[int, int, str, str]] = {}
    for confusion in AOI_CONFUSIONS:
        true_class, looks_like = confusion[:2]
        pool = candidates(true_class)
        if not pool.size or not donors_of(looks_like).size:
            continue
        k = int(np.clip(round(AOI_SHARE * pool.size), 1, AOI_MAX))
        group = _grow(int(rng.choice(pool)), k, set(pool.tolist()), indptr, neighbours, stats)
        number = len(aois) + 1
        aois[number] = confusion
        plant(EXPERT_AOI, group, true_class, looks_like, number)
    return PlantedErrors(plants, review_area, aois, in_focus)


def _farthest_pixel(base: Landscape, units: np.ndarray, cy: float, cx: float) -> np.ndarray:
    """(U,) the largest distance (pixels) from (cy, cx) to a pixel centre of each of ``units``."""
    member = np.zeros(base.n_units, bool)
    member[units] = True
    rows, cols = np.nonzero(member[base.unit])
    owner = base.unit[rows, cols]
    far = np.zeros(base.n_units)
    np.maximum.at(far, owner, np.hypot(rows - cy, cols - cx))
    return far


def _grow(start: int, k: int, pool: set[int], indptr: np.ndarray, neighbours: np.ndarray, stats) -> list[int]:
    """A compact group of up to ``k`` adjacent units of ``pool``: the closest neighbour first."""
    group, frontier = [start], set()
    while len(group) < k:
        frontier.update(int(v) for v in neighbours[indptr[group[-1]]:indptr[group[-1] + 1]] if v in pool)
        frontier.difference_update(group)
        if not frontier:
            break
        nxt = min(sorted(frontier), key=lambda v: math.hypot(stats.row[v] - stats.row[start],
                                                            stats.col[v] - stats.col[start]))
        group.append(nxt)
    return sorted(group)


def blend_planted(values: np.ndarray, planted: PlantedErrors | None) -> np.ndarray:
    """(U, ...) per-unit values with each planted unit moved ``weight`` of the way to its donor."""
    if planted is None or not planted.plants:
        return values
    out = values.copy()
    for p in planted.plants:
        out[p.unit] = (1 - p.weight) * values[p.unit] + p.weight * values[p.donor]
    return out
