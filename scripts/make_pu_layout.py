"""Generate the packaged production-unit (PU) layouts.

The official CLCplus Backbone 2023 layout of 138 PUs is not public, so the product ships a
generated one: the mainland AOI (EEA38 + UK without the French DOMs, EPSG:3035, buffered by
250 m) split into 133 compact units of balanced size, plus one unit per DOM (its AOI, in its
UTM zone). The ATBD delineated PUs on the Global Environmental Zones; with no such data here,
the clustering uses two honest proxies computed from the packaged boundaries: latitude
(temperature, season length) and distance to the sea (continentality).

Method (deterministic; the only randomness is a seeded k-means++ start):
1. rasterise the AOI onto a 10 km EPSG:3035 grid, each cell weighted by the AOI area in it;
2. size-balanced k-means on (x, y, latitude, distance to sea): each cell goes to the cluster
   minimising squared feature distance plus a per-cluster penalty, and the penalties are
   solved so that every cluster's area is total / k (a power diagram);
3. refine with distances over land (a cell graph; crossing the sea costs twice its length)
   so that units end at coasts rather than spanning straits, re-seeding clusters stuck on
   small islands; penalties are bounded, so large islands keep natural sizes;
4. give small detached fragments to the neighbour they share most cell edges with;
5. each PU = AOI ∩ union of its cells (border vertices shared, so the units partition the
   AOI exactly); ids PU001… run north-west to south-east, names from the countries met.

    python scripts/make_pu_layout.py            # both layouts and the report (~1 min)
    python scripts/make_pu_layout.py --demo     # only the two-PU demo layout
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from pyproj import Transformer
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from clcplus_ops.geo import aoi
from clcplus_ops.geo.layout import ProductionUnit, layout_report, load_layout
from clcplus_ops.resources import DEFAULT_LAYOUT, DEMO_LAYOUT

ATBD_AREA_KM2 = 6_002_105.0
N_MAINLAND = 133
# Relative tolerance of the coverage check (gaps and overlaps versus the AOI area). Units share
# their border vertices, so they never overlap; but the EPSG:3035 → 4326 → 3035 round trip of
# the file moves vertices by up to ~1.2 mm (PROJ's inverse LAEA), i.e. slivers of ~2e-9 of the
# AOI along the coast. Anything above 1e-8 (0.06 km² of 5.8 million) is a real defect.
COVERAGE_TOLERANCE = 1e-8


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
    # Clustering: straight-line balanced k-means, then refinement with distances over land.
    lloyd_iterations: int = 15
    geodesic_iterations: int = 12
    balance_sweeps: int = 100
    sea_factor: float = 2.0
    penalty_limit: float = 1.5
    # Clusters below this share of the mean area after a refinement round are re-seeded.
    reseed_share: float = 0.6
    # Detached fragments below this share of the mean unit area join their best neighbour.
    fragment_share: float = 0.1


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


def _split_blocks(
    geoms: np.ndarray, ix: np.ndarray, iy: np.ndarray, size: int, x0: float, y0: float, cell_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
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
    scale = _scale(weight, params.n_units)
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
    """Size-balanced k-means in feature space (straight-line distances): the starting point
    of ``geodesic_refine``. Lloyd steps move the centres to their clusters' means between
    balancing rounds."""
    k = params.n_units
    centres = _kmeans_plus_plus(features, weight, k, np.random.default_rng(params.seed))
    penalty = np.zeros(k)
    for i in range(params.lloyd_iterations):
        sweeps = params.balance_sweeps if i == params.lloyd_iterations - 1 else 3
        labels = balance_penalties(_sq_distances(features, centres), weight, penalty, sweeps)
        centres = _weighted_means(features, weight, labels, centres)
    return labels


def balance_penalties(
    dist: np.ndarray, weight: np.ndarray, penalty: np.ndarray, sweeps: int, limit: float = math.inf, tolerance: float = 0.005
) -> np.ndarray:
    """Labels of the penalised assignment argmin(dist + penalty) with areas near total / k.

    Gauss-Seidel on the dual of the balanced assignment: one cluster at a time, its penalty
    is set so that its area becomes total / k given the others (a power diagram). Penalties
    stay within ±``limit`` (squared PU widths), so an island cannot reach its target by
    grabbing a far coast and keeps its natural size. ``penalty`` is updated in place; the
    labels with the best max/min area ratio met during the sweeps are returned.
    """
    k = dist.shape[1]
    target = weight.sum() / k
    state = _Assignment(dist + penalty, weight)
    kept, kept_ratio = state.labels.copy(), state.ratio()
    for _ in range(sweeps):
        areas = state.areas()
        if np.abs(areas - target).max() <= tolerance * target:
            break
        for c in np.argsort(-np.abs(areas - target), kind="stable"):
            need = target - state.areas()[c]
            if abs(need) <= tolerance * target:
                continue
            wanted = -state.grow_step(c, need) if need > 0 else state.shrink_step(c, -need)
            delta = min(max(penalty[c] + wanted, -limit), limit) - penalty[c]
            if delta:
                state.shift(c, delta)
                penalty[c] += delta
        if state.ratio() < kept_ratio:
            kept, kept_ratio = state.labels.copy(), state.ratio()
    return kept


class _Assignment:
    """Penalised costs (n × k), current labels and their costs, updated one cluster at a time."""

    def __init__(self, cost: np.ndarray, weight: np.ndarray) -> None:
        self.cost, self.weight = cost, weight
        self.labels = np.argmin(cost, axis=1)
        self.best = cost[np.arange(len(cost)), self.labels]

    def areas(self) -> np.ndarray:
        return np.bincount(self.labels, self.weight, minlength=self.cost.shape[1])

    def ratio(self) -> float:
        areas = self.areas()
        return float(areas.max() / areas.min()) if areas.min() > 0 else math.inf

    def grow_step(self, c: int, need: float) -> float:
        """Penalty decrease that lets cluster c take ``need`` km² from the others."""
        others = np.flatnonzero(self.labels != c)
        return _quantile(self.cost[others, c] - self.best[others], self.weight[others], need) + 1e-12

    def shrink_step(self, c: int, excess: float) -> float:
        """Penalty increase that hands ``excess`` km² of cluster c to the runners-up."""
        own, runner, runner_cost = self._runners_up(c)
        return _quantile(runner_cost - self.cost[own, c], self.weight[own], excess) + 1e-12

    def shift(self, c: int, delta: float) -> None:
        """Add ``delta`` to cluster c's costs and reassign the cells that change side."""
        if delta < 0:
            self.cost[:, c] += delta
            moved = self.cost[:, c] < self.best
            self.labels[moved], self.best[moved] = c, self.cost[moved, c]
            return
        own, runner, runner_cost = self._runners_up(c)
        self.cost[:, c] += delta
        self.best[own] = self.cost[own, c]
        moved = self.cost[own, c] > runner_cost
        self.labels[own[moved]], self.best[own[moved]] = runner[moved], runner_cost[moved]

    def _runners_up(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        own = np.flatnonzero(self.labels == c)
        rest = self.cost[own].copy()
        rest[:, c] = np.inf
        runner = np.argmin(rest, axis=1)
        return own, runner, rest[np.arange(len(own)), runner]


def _quantile(values: np.ndarray, weight: np.ndarray, amount: float) -> float:
    """The value at which the cumulative weight of the sorted values comes closest to ``amount``."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weight[order])
    pos = min(int(np.searchsorted(cumulative, amount)), len(order) - 1)
    if pos > 0 and amount - cumulative[pos - 1] < cumulative[pos] - amount:
        pos -= 1
    return float(values[order[pos]])


def geodesic_refine(
    grid: CellGrid, flat: np.ndarray, weight: np.ndarray, features: np.ndarray, labels: np.ndarray, params: LayoutParams
) -> np.ndarray:
    """Re-cluster with distances measured over land (sea crossings cost ``sea_factor`` times
    their length), so that units stop at the coast instead of spanning straits and gulfs.

    Each cluster's centre is its member cell nearest to its mean position; the environmental
    features keep their straight differences to the cluster means.
    """
    k = params.n_units
    graph = land_graph(grid, flat, _scale(weight, k))
    xy, env = features[:, :2], features[:, 2:]
    penalty = np.zeros(k)
    for empty in np.flatnonzero(np.bincount(labels, weight, minlength=k) == 0):
        labels = _split_largest(labels, weight, xy, int(empty))
    for i in range(params.geodesic_iterations):
        centres = np.array([_medoid(xy, weight, np.flatnonzero(labels == c)) for c in range(k)])
        over_land = csgraph.dijkstra(graph, directed=False, indices=centres).T
        straight = np.sqrt(_sq_distances(xy, xy[centres]))
        dist = np.minimum(over_land, params.sea_factor * straight) ** 2
        dist += _sq_distances(env, _weighted_means(env, weight, labels, np.zeros((k, env.shape[1]))))
        last = i == params.geodesic_iterations - 1
        labels = balance_penalties(dist, weight, penalty, params.balance_sweeps if last else 3, limit=params.penalty_limit)
        if not last:
            labels = reseed_small(labels, weight, xy, dist, params.reseed_share)
    return labels


def reseed_small(labels: np.ndarray, weight: np.ndarray, xy: np.ndarray, dist: np.ndarray, min_share: float) -> np.ndarray:
    """Move the label of each cluster below ``min_share`` of the mean area (a small island
    that cannot grow) to half of the largest cluster; its cells go to their nearest other
    cluster. Without this an islet keeps a unit of its own."""
    k = dist.shape[1]
    labels = labels.copy()
    target = weight.sum() / k
    for small in np.argsort(np.bincount(labels, weight, minlength=k), kind="stable"):
        areas = np.bincount(labels, weight, minlength=k)
        if areas[small] >= min_share * target:
            break
        own = np.flatnonzero(labels == small)
        rest = dist[own].copy()
        rest[:, small] = np.inf
        labels[own] = np.argmin(rest, axis=1)
        labels = _split_largest(labels, weight, xy, int(small))
    return labels


def _split_largest(labels: np.ndarray, weight: np.ndarray, xy: np.ndarray, free: int) -> np.ndarray:
    """Give the (unused) label ``free`` to one half of the largest cluster."""
    labels = labels.copy()
    largest = int(np.argmax(np.bincount(labels, weight)))
    members = np.flatnonzero(labels == largest)
    labels[members[_upper_half(xy[members], weight[members])]] = free
    return labels


def _upper_half(xy: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Mask of the points beyond the weighted median along the principal axis."""
    centred = xy - np.average(xy, axis=0, weights=weight)
    _, vectors = np.linalg.eigh(np.cov(centred.T, aweights=weight))
    along = centred @ vectors[:, -1]
    order = np.argsort(along, kind="stable")
    half = np.searchsorted(np.cumsum(weight[order]), weight.sum() / 2)
    mask = np.zeros(len(xy), dtype=bool)
    mask[order[half + 1 :]] = True
    return mask


def _scale(weight: np.ndarray, k: int) -> float:
    """Width of an average unit in metres (the unit of the feature space)."""
    return math.sqrt(weight.sum() * 1e6 / k)


def _medoid(xy: np.ndarray, weight: np.ndarray, members: np.ndarray) -> int:
    mean = np.average(xy[members], axis=0, weights=weight[members])
    return int(members[np.argmin(((xy[members] - mean) ** 2).sum(axis=1))])


def land_graph(grid: CellGrid, flat: np.ndarray, scale: float) -> sparse.csr_matrix:
    """8-neighbour graph of the AOI cells, edge length in units of ``scale``."""
    ny, nx = grid.weight_km2.shape
    node = np.full(ny * nx, -1)
    node[flat] = np.arange(len(flat))
    node = node.reshape(ny, nx)
    rows, cols, lengths = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = node[: ny - dy, max(0, -dx) : nx - max(0, dx)]
        b = node[dy:, max(0, dx) : nx - max(0, -dx)]
        both = (a >= 0) & (b >= 0)
        rows.append(a[both])
        cols.append(b[both])
        lengths.append(np.full(int(both.sum()), math.hypot(dx, dy) * grid.cell_m / scale))
    n = len(flat)
    return sparse.coo_matrix((np.concatenate(lengths), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()


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


def merge_fragments(labels_grid: np.ndarray, weight: np.ndarray, max_km2: float, passes: int = 5) -> np.ndarray:
    """Give each small detached fragment of a cluster (a 4-connected component other than its
    largest, below ``max_km2``) to the cluster it shares most cell edges with. Fragments with
    no neighbour (islands) and large ones (a coast across a strait) stay."""
    grid = labels_grid.copy()
    for _ in range(passes):
        changed = False
        for label in np.unique(grid[grid >= 0]):
            components, n = ndimage.label(grid == label)
            if n < 2:
                continue
            mass = ndimage.sum(weight, components, index=np.arange(1, n + 1))
            for comp in np.flatnonzero((mass < max_km2) & (np.arange(n) != np.argmax(mass))) + 1:
                target = _best_neighbour(grid, components == comp, label)
                if target is not None:
                    grid[components == comp] = target
                    changed = True
        if not changed:
            break
    return grid


def _best_neighbour(grid: np.ndarray, mask: np.ndarray, own: int) -> int | None:
    """The other label sharing most cell edges with ``mask`` (ties: the lowest label)."""
    ring = []
    padded = np.pad(grid, 1, constant_values=-1)
    ny, nx = grid.shape
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        beside = padded[1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx]
        ring.append(beside[mask])
    values = np.concatenate(ring)
    values = values[(values >= 0) & (values != own)]
    if not len(values):
        return None
    counts = np.bincount(values)
    return int(np.argmax(counts))


def cluster_cells(grid: CellGrid, params: LayoutParams) -> np.ndarray:
    """Label grid (−1 outside the AOI) of the balanced, defragmented clustering."""
    flat, weight, features = cell_features(grid, params)
    labels = balanced_kmeans(features, weight, params)
    labels = geodesic_refine(grid, flat, weight, features, labels, params)
    labels_grid = np.full(grid.weight_km2.size, -1)
    labels_grid[flat] = labels
    max_fragment = params.fragment_share * weight.sum() / params.n_units
    return merge_fragments(labels_grid.reshape(grid.weight_km2.shape), grid.weight_km2, max_fragment)


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


# Natural Earth's short or dated names, spelled out for unit names.
_NAME_FIXES = {"BIH": "Bosnia and Herzegovina", "MKD": "North Macedonia"}


def country_table() -> gpd.GeoDataFrame:
    """AOI countries in EPSG:3035, restricted to the production land (no DOMs)."""
    table = aoi.countries().copy()
    table["NAME"] = [_NAME_FIXES.get(code, name) for code, name in zip(table["ADM0_A3"], table["NAME"])]
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
    if not shares:
        return "Coastal waters"
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
    if len(geometries) != params.n_units or any(g.is_empty for g in geometries):
        raise RuntimeError(f"clustering produced {len(geometries)} units, some empty; expected {params.n_units}")
    geometries = [geometries[i] for i in reading_order(geometries)]
    table = country_table()
    shares = [country_shares(g, table) for g in geometries]
    per_country: dict[str, int] = {}
    for s in shares:
        if s:
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


def write_layout(units: list[Unit], path: Path, name: str) -> bytes:
    data = feature_collection(units, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# ------------------------------------------------------------------------------ report


def coverage_check(units: dict[str, ProductionUnit], area: BaseGeometry, crs: str) -> dict:
    """Gaps and overlaps of the written units (read back, reprojected to ``crs``) versus ``area``."""
    geoms = np.array([u.geometry_in(crs) for u in units.values()], dtype=object)
    union = shapely.union_all(geoms)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    pairs = left < right
    overlap = float(shapely.area(shapely.intersection(geoms[left[pairs]], geoms[right[pairs]])).sum())
    return {
        "aoi_km2": area.area / 1e6,
        "gap_km2": area.difference(union).area / 1e6,
        "outside_km2": union.difference(area).area / 1e6,
        "overlap_km2": overlap / 1e6,
    }


def part_counts(units: dict[str, ProductionUnit], crs: str) -> tuple[int, int]:
    """(units with more than one polygon, units whose second-largest polygon is ≥ 5 % of the unit)."""
    multi = fragmented = 0
    for unit in units.values():
        parts = sorted((p.area for p in getattr(unit.geometry_in(crs), "geoms", [unit.geometry])), reverse=True)
        multi += len(parts) > 1
        fragmented += len(parts) > 1 and parts[1] >= 0.05 * sum(parts)
    return multi, fragmented


def tiles_report(units: dict[str, ProductionUnit]) -> str:
    """Processing tiles (25 km, PU buffered by 10 km) per PU, where the tile module exists."""
    try:
        from clcplus_ops.geo.tiles import tiles_for_pu
    except ImportError as exc:
        return f"tiles per PU: skipped ({exc})"
    counts = [len(tiles_for_pu(u, tile_size_m=25_000, buffer_m=10_000)) for u in units.values()]
    return (
        f"tiles per PU (25 km, 10 km buffer): min {min(counts)}, median {statistics.median(counts)}, "
        f"max {max(counts)}, total {sum(counts)} (a tile shared by neighbouring PUs counts for each)"
    )


def report(path: Path, area: BaseGeometry, with_tiles: bool) -> list[str]:
    units = load_layout(path)
    mainland = {k: u for k, u in units.items() if u.crs == aoi.EEA_CRS}
    figures, main = layout_report(units), layout_report(mainland)
    cover = coverage_check(mainland, area, aoi.EEA_CRS)
    multi, fragmented = part_counts(mainland, aoi.EEA_CRS)
    rel = max(cover["gap_km2"], cover["outside_km2"], cover["overlap_km2"]) / cover["aoi_km2"]
    doms = ", ".join(f"{u.name} {u.area_km2:,.2f}" for u in units.values() if u.crs != aoi.EEA_CRS)
    lines = [
        f"file: {path} ({path.stat().st_size / 1e6:.2f} MB)",
        f"PUs: {figures['count']} ({main['count']} mainland in EPSG:3035, {figures['count'] - main['count']} DOMs)",
        f"total area: {figures['total_area_km2']:,.2f} km² (ATBD: {ATBD_AREA_KM2:,.0f} km², "
        f"{100 * (figures['total_area_km2'] / ATBD_AREA_KM2 - 1):+.2f} %)",
        f"mainland PU area km²: min {main['min_area_km2']:,.2f}, median {main['median_area_km2']:,.2f}, "
        f"max {main['max_area_km2']:,.2f}, max/min {main['max_min_ratio']:.3f}",
        f"DOM PU areas km²: {doms}" if doms else "DOM PUs: none",
        f"coverage (read back, EPSG:3035): AOI {cover['aoi_km2']:,.2f} km²; AOI minus union "
        f"{cover['gap_km2']:.3g} km²; union minus AOI {cover['outside_km2']:.3g} km²; pairwise overlaps "
        f"{cover['overlap_km2']:.3g} km²; worst relative {rel:.2g} "
        f"({'OK' if rel <= COVERAGE_TOLERANCE else 'FAILED'}: tolerance {COVERAGE_TOLERANCE:g})",
        f"mainland PUs with more than one polygon: {multi} (islands count); with a second polygon "
        f"≥ 5 % of the PU: {fragmented}",
    ]
    if with_tiles:
        lines.append(tiles_report(units))
    return lines


def demo_report(path: Path) -> list[str]:
    """Size of each demo PU and how much of it is AOI (land + 250 m) and land."""
    area, land = aoi.mainland_aoi(250.0), aoi.mainland_aoi(0.0)
    lines = [f"file: {path} ({path.stat().st_size} bytes)"]
    for unit in load_layout(path).values():
        geometry = unit.geometry_in(aoi.EEA_CRS)
        minx, miny, maxx, maxy = geometry.bounds
        lines.append(
            f"{unit.pu_id} {unit.name}: {(maxx - minx) / 1e3:.1f} km × {(maxy - miny) / 1e3:.1f} km, "
            f"{unit.area_km2} km², AOI {geometry.intersection(area).area / geometry.area:.0%}, "
            f"land {geometry.intersection(land).area / geometry.area:.0%}, countries {','.join(unit.countries)}"
        )
    return lines


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="write only the demo layout")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_LAYOUT.parent)
    parser.add_argument("--no-tiles", action="store_true", help="skip the tiles-per-PU figures")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    demo_path = args.out_dir / DEMO_LAYOUT.name
    write_layout(demo_units(), demo_path, "CLCplus Backbone demo production units")
    print("\n".join(demo_report(demo_path)))
    if args.demo:
        return 0

    area = aoi.mainland_aoi(250.0)
    units = mainland_units(area, LayoutParams()) + dom_units(N_MAINLAND + 1)
    path = args.out_dir / DEFAULT_LAYOUT.name
    write_layout(units, path, "CLCplus Backbone production units (generated, 133 + 5 DOMs)")
    generated = time.perf_counter() - started
    print("\n".join(report(path, area, with_tiles=not args.no_tiles)))
    print(f"generation time: {generated:.1f} s (report: {time.perf_counter() - started - generated:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
