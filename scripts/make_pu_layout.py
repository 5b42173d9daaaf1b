"""Generate the packaged production-unit (PU) layouts.

The official CLCplus Backbone 2023 layout of 138 PUs is not public, so the product ships a
generated one: the mainland AOI (EEA38 + UK without the French DOMs, EPSG:3035, buffered by
250 m) split into 133 compact units of balanced size, plus one unit per DOM in its UTM zone.

Method (deterministic, seeded): the AOI is rasterised onto a regular EPSG:3035 grid of
``--cell-km`` cells weighted by the AOI area inside each cell; the cells are clustered by a
size-balanced k-means (per-cluster additive penalties, i.e. a power diagram, steer every
cluster's area towards total / k) in a feature space of position plus two environmental
proxies for the GEnZ strata used by the ATBD: latitude (temperature, season length) and
distance to the sea (continentality). Detached fragments of a cluster are given to the
neighbour they share most cell edges with. Each PU is then the AOI intersected with the union
of its cells, so the units partition the AOI exactly (no gaps, no overlaps).

    python scripts/make_pu_layout.py            # both layouts (~1 min)
    python scripts/make_pu_layout.py --demo     # only the two-PU demo layout
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from pyproj import Transformer
from scipy import ndimage
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from clcplus_ops.geo import aoi
from clcplus_ops.resources import DEFAULT_LAYOUT, DEMO_LAYOUT

ATBD_AREA_KM2 = 6_002_105.0
N_MAINLAND = 133
# Relative tolerance of the coverage check (gaps and overlaps versus the AOI area): the
# 4326 round trip moves vertices by ~1e-9 m, so anything above this is a real defect.
COVERAGE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LayoutParams:
    """Parameters of the mainland clustering (defaults: the shipped 133-unit layout)."""

    n_units: int = N_MAINLAND
    cell_m: float = 10_000.0
    seed: int = 2023
    # Feature weights relative to position. Latitude in km (deg × 111.2) with weight 0.75
    # stretches north-south distances, so units follow climate bands; distance to the sea is
    # capped, as continentality saturates inland.
    lat_weight: float = 0.75
    sea_weight: float = 0.75
    sea_cap_m: float = 150_000.0
    lloyd_iterations: int = 30
    balance_sweeps: int = 100


@dataclass
class Unit:
    """One PU as written to the layout file; ``geometry`` is in ``crs``."""

    pu_id: str
    name: str
    crs: str
    geometry: BaseGeometry
    countries: tuple[str, ...] = field(default_factory=tuple)

    @property
    def area_km2(self) -> float:
        return round(self.geometry.area / 1e6, 2)


@dataclass(frozen=True)
class CellGrid:
    """AOI area (km²) per cell of a regular grid whose lower-left corner is (x0, y0)."""

    x0: float
    y0: float
    cell_m: float
    weight_km2: np.ndarray  # shape (ny, nx), row 0 at y0

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        ny, nx = self.weight_km2.shape
        ys, xs = np.mgrid[0:ny, 0:nx]
        return self.x0 + (xs + 0.5) * self.cell_m, self.y0 + (ys + 0.5) * self.cell_m


# ---------------------------------------------------------------------------------- grid


def rasterise(area: BaseGeometry, cell_m: float) -> CellGrid:
    """Exact AOI area per grid cell, by quadtree clipping (only boundary blocks are split)."""
    minx, miny, maxx, maxy = area.bounds
    x0, y0 = math.floor(minx / cell_m) * cell_m, math.floor(miny / cell_m) * cell_m
    nx, ny = math.ceil((maxx - x0) / cell_m), math.ceil((maxy - y0) / cell_m)
    size = 1 << max(0, math.ceil(math.log2(max(nx, ny))))
    weight = np.zeros((size, size))
    geoms, ix, iy = np.array([area], dtype=object), np.array([0]), np.array([0])
    while len(geoms):
        areas = shapely.area(geoms)
        full = areas >= (size * cell_m) ** 2 * (1 - 1e-9)
        for i, j in zip(ix[full], iy[full]):
            weight[j : j + size, i : i + size] = cell_m**2 / 1e6
        if size == 1:
            weight[iy[~full], ix[~full]] = areas[~full] / 1e6
            break
        keep = ~full & (areas > 0)
        geoms, ix, iy, size = _split_blocks(geoms[keep], ix[keep], iy[keep], size, x0, y0, cell_m)
    return CellGrid(x0, y0, cell_m, weight[:ny, :nx].copy())


def _split_blocks(geoms, ix, iy, size, x0, y0, cell_m):
    """Clip every block's geometry to its four quadrants; drop empty quadrants."""
    half = size // 2
    offsets = np.array([(0, 0), (half, 0), (0, half), (half, half)])
    cix = (ix[:, None] + offsets[None, :, 0]).ravel()
    ciy = (iy[:, None] + offsets[None, :, 1]).ravel()
    boxes = shapely.box(x0 + cix * cell_m, y0 + ciy * cell_m, x0 + (cix + half) * cell_m, y0 + (ciy + half) * cell_m)
    parts = shapely.intersection(np.repeat(geoms, 4), boxes)
    keep = ~shapely.is_empty(parts)
    return parts[keep], cix[keep], ciy[keep], half


# ------------------------------------------------------------------------------ features


def cell_features(grid: CellGrid, params: LayoutParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat indices of AOI cells, their weights, feature matrix) in units of a PU's width."""
    weight = grid.weight_km2
    flat = np.flatnonzero(weight.ravel() > 0)
    scale = math.sqrt(weight.sum() * 1e6 / params.n_units)
    x, y = (c.ravel()[flat] for c in grid.centres())
    _, lat = Transformer.from_crs(aoi.EEA_CRS, "EPSG:4326", always_xy=True).transform(x, y)
    sea = sea_distance_m(grid).ravel()[flat]
    features = np.column_stack(
        [
            x / scale,
            y / scale,
            params.lat_weight * lat * 111_200.0 / scale,
            params.sea_weight * np.minimum(sea, params.sea_cap_m) / scale,
        ]
    )
    return flat, weight.ravel()[flat], features


def sea_distance_m(grid: CellGrid) -> np.ndarray:
    """Distance from each cell to the nearest cell less than half land (a continentality proxy).

    The packaged boundaries hold only EEA38 + UK, so land borders with non-AOI countries (Russia,
    Belarus, Ukraine, Moldova, Turkey's eastern neighbours) count as coast here.
    """
    land = grid.weight_km2 >= 0.5 * grid.cell_m**2 / 1e6
    padded = np.pad(land, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1] * grid.cell_m


# ---------------------------------------------------------------------------- clustering


def balanced_kmeans(features: np.ndarray, weight: np.ndarray, params: LayoutParams) -> np.ndarray:
    """Cluster labels with areas near total / k.

    The assignment minimises squared feature distance plus a per-cluster penalty (a power
    diagram); penalties are set by exact coordinate ascent (see ``balance_penalties``).
    Lloyd steps move the centres to their clusters' means between balancing rounds. Of the
    final balancing sweeps, the labels with the smallest max/min area ratio are kept.
    """
    k = params.n_units
    centres = _kmeans_plus_plus(features, weight, k, np.random.default_rng(params.seed))
    penalty = np.zeros(k)
    for _ in range(params.lloyd_iterations):
        labels = balance_penalties(_sq_distances(features, centres), weight, penalty, sweeps=3)[-1]
        centres = _weighted_means(features, weight, labels, centres)
    return balance_penalties(_sq_distances(features, centres), weight, penalty, sweeps=params.balance_sweeps)[-1]


def balance_penalties(
    dist: np.ndarray, weight: np.ndarray, penalty: np.ndarray, sweeps: int, tolerance: float = 0.005
) -> tuple[np.ndarray, np.ndarray]:
    """Adjust ``penalty`` in place, one cluster at a time, so that each cluster's area becomes
    total / k given the others (Gauss-Seidel on the dual of the balanced assignment).

    Returns (penalty, labels) with the best max/min area ratio met during the sweeps.
    """
    k = dist.shape[1]
    target = weight.sum() / k
    cost = dist + penalty
    labels = np.argmin(cost, axis=1)
    best_cost = cost[np.arange(len(cost)), labels]
    kept, kept_ratio = labels.copy(), _ratio(weight, labels, k)
    for _ in range(sweeps):
        areas = np.bincount(labels, weight, minlength=k)
        if np.abs(areas - target).max() <= tolerance * target:
            break
        for c in np.argsort(-np.abs(areas - target), kind="stable"):
            need = target - np.bincount(labels, weight, minlength=k)[c]
            if abs(need) <= tolerance * target:
                continue
            if need > 0:
                delta = _grow(cost, best_cost, labels, weight, c, need)
            else:
                delta = _shrink(cost, best_cost, labels, weight, c, -need)
            penalty[c] += delta
        ratio = _ratio(weight, labels, k)
        if ratio < kept_ratio:
            kept, kept_ratio = labels.copy(), ratio
    return penalty, kept


def _grow(cost, best_cost, labels, weight, c, need) -> float:
    """Lower cluster c's penalty just enough to take ``need`` km² from the others."""
    others = np.flatnonzero(labels != c)
    delta = -_quantile(cost[others, c] - best_cost[others], weight[others], need) - 1e-12
    cost[:, c] += delta
    moved = cost[:, c] < best_cost
    labels[moved], best_cost[moved] = c, cost[moved, c]
    return delta


def _shrink(cost, best_cost, labels, weight, c, excess) -> float:
    """Raise cluster c's penalty just enough to hand ``excess`` km² to the runners-up."""
    own = np.flatnonzero(labels == c)
    rest = cost[own].copy()
    rest[:, c] = np.inf
    runner = np.argmin(rest, axis=1)
    runner_cost = rest[np.arange(len(own)), runner]
    delta = _quantile(runner_cost - cost[own, c], weight[own], excess) + 1e-12
    cost[:, c] += delta
    moved = cost[own, c] > runner_cost
    labels[own[moved]], best_cost[own[moved]] = runner[moved], runner_cost[moved]
    return delta


def _quantile(values: np.ndarray, weight: np.ndarray, amount: float) -> float:
    """The value at which the cumulative weight of the sorted values comes closest to ``amount``."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weight[order])
    pos = min(int(np.searchsorted(cumulative, amount)), len(order) - 1)
    if pos > 0 and amount - cumulative[pos - 1] < cumulative[pos] - amount:
        pos -= 1
    return float(values[order[pos]])


def _ratio(weight: np.ndarray, labels: np.ndarray, k: int) -> float:
    areas = np.bincount(labels, weight, minlength=k)
    return float(areas.max() / areas.min()) if areas.min() > 0 else math.inf


def _kmeans_plus_plus(features: np.ndarray, weight: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Area-weighted k-means++ seeding."""
    chosen = [int(rng.choice(len(features), p=weight / weight.sum()))]
    nearest = ((features - features[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        p = weight * nearest
        chosen.append(int(rng.choice(len(features), p=p / p.sum())))
        nearest = np.minimum(nearest, ((features - features[chosen[-1]]) ** 2).sum(axis=1))
    return features[chosen].copy()


def _sq_distances(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # Feature by feature, no BLAS: the same sums on every machine.
    out = np.zeros((len(features), len(centres)))
    for j in range(features.shape[1]):
        out += (features[:, j, None] - centres[None, :, j]) ** 2
    return out


def _weighted_means(features: np.ndarray, weight: np.ndarray, labels: np.ndarray, old: np.ndarray) -> np.ndarray:
    k = len(old)
    mass = np.bincount(labels, weight, minlength=k)
    sums = np.column_stack([np.bincount(labels, weight * f, minlength=k) for f in features.T])
    new = old.copy()
    has = mass > 0
    new[has] = sums[has] / mass[has, None]
    return new


def merge_fragments(labels_grid: np.ndarray, weight: np.ndarray, passes: int = 5) -> np.ndarray:
    """Give each detached fragment of a cluster (not its largest 4-connected component) to the
    cluster it shares most cell edges with; fragments with no neighbour (islands) stay."""
    grid = labels_grid.copy()
    for _ in range(passes):
        changed = False
        for label in np.unique(grid[grid >= 0]):
            components, n = ndimage.label(grid == label)
            if n < 2:
                continue
            mass = ndimage.sum(weight, components, index=np.arange(1, n + 1))
            main = int(np.argmax(mass)) + 1
            for comp in range(1, n + 1):
                if comp == main:
                    continue
                target = _best_neighbour(grid, components == comp, label)
                if target is not None:
                    grid[components == comp] = target
                    changed = True
        if not changed:
            break
    return grid


def _best_neighbour(grid: np.ndarray, mask: np.ndarray, own: int) -> int | None:
    counts: dict[int, int] = {}
    for shift, axis in ((1, 0), (-1, 0), (1, 1), (-1, 1)):
        moved = np.roll(mask, shift, axis=axis)
        # np.roll wraps around; the grid border rows/columns are never both AOI and a neighbour.
        other = grid[moved & ~mask]
        for value in other[(other >= 0) & (other != own)]:
            counts[int(value)] = counts.get(int(value), 0) + 1
    if not counts:
        return None
    return min(counts, key=lambda v: (-counts[v], v))


def cluster_cells(grid: CellGrid, params: LayoutParams) -> np.ndarray:
    """Label grid (−1 outside the AOI) of the balanced, defragmented clustering."""
    flat, weight, features = cell_features(grid, params)
    labels = balanced_kmeans(features, weight, params)
    labels_grid = np.full(grid.weight_km2.size, -1)
    labels_grid[flat] = labels
    return merge_fragments(labels_grid.reshape(grid.weight_km2.shape), grid.weight_km2)


# ---------------------------------------------------------------------------- geometry


def unit_geometries(area: BaseGeometry, grid: CellGrid, labels_grid: np.ndarray) -> list[BaseGeometry]:
    """AOI ∩ union of each cluster's cells, one geometry per label 0..k-1.

    The cell unions are densified to one vertex per cell corner so that two neighbours carry
    the same vertices along their shared border and stay an exact partition in any CRS.
    """
    xs, ys = grid.centres()
    half = grid.cell_m / 2
    shapely.prepare(area)
    out = []
    for label in range(int(labels_grid.max()) + 1):
        sel = labels_grid == label
        cells = shapely.box(xs[sel] - half, ys[sel] - half, xs[sel] + half, ys[sel] + half)
        union = shapely.segmentize(shapely.coverage_union_all(cells), grid.cell_m)
        out.append(shapely.intersection(area, union))
    return out


def _to_lonlat(geometry: BaseGeometry, crs: str) -> BaseGeometry:
    lonlat = gpd.GeoSeries([geometry], crs=crs).to_crs("EPSG:4326").iloc[0]
    return shapely.orient_polygons(lonlat)  # RFC 7946: exterior rings counter-clockwise


# ------------------------------------------------------------------------------ naming


def country_table() -> gpd.GeoDataFrame:
    """AOI countries in EPSG:3035, restricted to the production land (no DOMs)."""
    table = aoi.countries().copy()
    table["geometry"] = shapely.intersection(table.geometry.values, aoi.land_lonlat())
    table = table[~table.geometry.is_empty].set_crs("EPSG:4326", allow_override=True)
    return table.to_crs(aoi.EEA_CRS).reset_index(drop=True)


def country_shares(geometry: BaseGeometry, table: gpd.GeoDataFrame) -> list[tuple[str, float]]:
    """(ADM0_A3, share of the unit's land) for every country with at least 0.01 km² in it."""
    hits = table.sindex.query(geometry, predicate="intersects")
    pieces = shapely.intersection(table.geometry.values[hits], geometry)
    areas = shapely.area(pieces)
    land = areas.sum()
    shares = [(table["ADM0_A3"].iloc[h], a / land) for h, a in zip(hits, areas) if a >= 1e4]
    return sorted(shares, key=lambda s: (-s[1], s[0]))


_COMPASS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")


def compass_hint(geometry: BaseGeometry, country: BaseGeometry) -> str:
    """Where the unit's part of a country lies within the country: 'central' or a compass point."""
    part = geometry.intersection(country)
    cx, cy = country.centroid.x, country.centroid.y
    dx, dy = part.centroid.x - cx, part.centroid.y - cy
    if math.hypot(dx, dy) < 0.3 * math.sqrt(country.area / math.pi):
        return "central"
    return _COMPASS[round(math.degrees(math.atan2(dy, dx)) / 45) % 8]


def unit_name(geometry: BaseGeometry, shares: list[tuple[str, float]], table: gpd.GeoDataFrame, units_per_country: dict[str, int]) -> str:
    """'Spain – north-west', 'France / Spain – south-west' (second country if ≥ 25 %)."""
    names = dict(zip(table["ADM0_A3"], table["NAME"]))
    shapes = dict(zip(table["ADM0_A3"], table.geometry))
    main = shares[0][0]
    label = " / ".join(names[c] for c, s in shares[:2] if c == main or s >= 0.25)
    if units_per_country.get(main, 0) <= 1:
        return label
    return f"{label} – {compass_hint(geometry, shapes[main])}"


def _dedupe(names: list[str]) -> list[str]:
    """Number repeated names in id order ('Norway – north 1', 'Norway – north 2')."""
    seen: dict[str, int] = {}
    total = {n: names.count(n) for n in names}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(f"{n} {seen[n]}" if total[n] > 1 else n)
    return out


def reading_order(geometries: list[BaseGeometry], band_m: float = 250_000.0) -> list[int]:
    """Indices sorted north-west to south-east: rows of ``band_m`` from the north, then west to east."""
    cents = [g.centroid for g in geometries]
    top = max(c.y for c in cents)
    return sorted(range(len(geometries)), key=lambda i: (math.floor((top - cents[i].y) / band_m), cents[i].x, i))


# ------------------------------------------------------------------------------ layouts


def mainland_units(area: BaseGeometry, params: LayoutParams, first_number: int = 1) -> list[Unit]:
    """The AOI (EPSG:3035) split into ``params.n_units`` named units PU001…"""
    grid = rasterise(area, params.cell_m)
    geometries = unit_geometries(area, grid, cluster_cells(grid, params))
    geometries = [geometries[i] for i in reading_order(geometries)]
    table = country_table()
    shares = [country_shares(g, table) for g in geometries]
    per_country: dict[str, int] = {}
    for s in shares:
        per_country[s[0][0]] = per_country.get(s[0][0], 0) + 1
    names = _dedupe([unit_name(g, s, table, per_country) for g, s in zip(geometries, shares)])
    return [
        Unit(f"PU{first_number + i:03d}", names[i], aoi.EEA_CRS, g, tuple(sorted(c for c, _ in s)))
        for i, (g, s) in enumerate(zip(geometries, shares))
    ]


def dom_units(first_number: int) -> list[Unit]:
    """One unit per French overseas department, in its UTM zone, order gf, gp, mq, re, yt."""
    return [
        Unit(f"PU{first_number + i:03d}", dom.name, dom.crs, aoi.dom_aoi(code, 250.0), ("FRA",))
        for i, (code, dom) in enumerate(aoi.DOMS.items())
    ]


# Two adjacent 5 km × 5 km squares on the EEA 1 km grid across the Slovenian coast (UTM 33N):
# in the packaged boundaries the western one is about one third land, the eastern one almost
# all land, so land, the 250 m coastal buffer and open sea all appear.
DEMO_SQUARES: tuple[tuple[str, str, tuple[float, float, float, float]], ...] = (
    ("DEMO1", "Demo – Piran peninsula and Strunjan bay (Slovenian coast)", (4_601_000, 2_496_000, 4_606_000, 2_501_000)),
    ("DEMO2", "Demo – Izola, west of Koper (Slovenian coast)", (4_606_000, 2_496_000, 4_611_000, 2_501_000)),
)


def demo_units() -> list[Unit]:
    table = country_table()
    units = []
    for pu_id, name, bounds in DEMO_SQUARES:
        geometry = box(*bounds)
        units.append(Unit(pu_id, name, aoi.EEA_CRS, geometry, tuple(sorted(c for c, _ in country_shares(geometry, table)))))
    return units


# ------------------------------------------------------------------------------- output


def feature_collection(units: list[Unit], name: str) -> bytes:
    """Deterministic GeoJSON (RFC 7946, EPSG:4326): one feature per line, fixed key order,
    coordinates at full double precision (shortest round-trip repr)."""
    lines = []
    for unit in units:
        feature = {
            "type": "Feature",
            "properties": {
                "pu_id": unit.pu_id,
                "name": unit.name,
                "area_km2": unit.area_km2,
                "crs": unit.crs,
                "countries": ",".join(unit.countries),
            },
            "geometry": mapping(_to_lonlat(unit.geometry, unit.crs)),
        }
        lines.append(json.dumps(feature, ensure_ascii=False, separators=(",", ":")))
    head = json.dumps({"type": "FeatureCollection", "name": name}, separators=(",", ":"))[:-1]
    return (head + ',"features":[\n' + ",\n".join(lines) + "\n]}\n").encode("utf-8")
