"""The ground truth: an 11-class land-cover map at 10 m over the world's internal grid.

- Land and sea follow the real coastline: land is the union of the packaged Natural Earth
  country polygons (``clcplus_ops.geo.aoi.countries``), sea is water (class 10).
- A synthetic "elevation" (smooth random field, ranked to 0..1 over the land of the world)
  zones the land: lowland (sealed, crops, grassland, broadleaved trees, water), mid slopes
  (shrubs, needle-leaved trees), high ground (bare rock, lichens and mosses, snow and ice).
- The land is cut into parcels (a Voronoi partition of a jittered, rotated grid, so fields
  look like fields); each parcel gets one class from its elevation and per-class smooth
  suitability fields (neighbouring parcels tend to share a class, so forests and towns are
  coherent patches made of several stands or blocks), with per-class area targets met by
  adjusting class biases, and a minimum share of the land for every class.
- Roads (sealed lines, 10-20 m) and rivers (water lines, 25-40 m) are drawn on top.

Every pixel belongs to a spectral *unit* (a parcel, a road, a river, or the sea) that carries
the per-unit parameters of the spectral-temporal models (``spectra``, ``phenology``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from shapely.geometry import LineString

from clcplus_ops.synthetic import noise
from clcplus_ops.synthetic.grid import PIXEL_M, WorldGrid

CLASSES = tuple(range(1, 12))
SEALED, NEEDLE, DECIDUOUS, EVERGREEN, SHRUBS, GRASS, CROPS, LICHENS, BARE, WATER, SNOW = CLASSES

# Per class: preferred elevation (0..1, land quantile), tolerance, weight of the class's
# smooth suitability field.
PREFERENCE: dict[int, tuple[float, float, float]] = {
    SEALED: (0.15, 0.25, 1.0),
    NEEDLE: (0.62, 0.14, 0.8),
    DECIDUOUS: (0.40, 0.20, 1.0),
    EVERGREEN: (0.22, 0.20, 1.0),
    SHRUBS: (0.50, 0.20, 1.0),
    GRASS: (0.35, 0.25, 1.0),
    CROPS: (0.18, 0.20, 1.0),
    LICHENS: (0.88, 0.06, 0.3),
    BARE: (0.78, 0.10, 0.4),
    WATER: (0.12, 0.30, 1.0),
    SNOW: (0.97, 0.04, 0.2),
}
# Target shares of the parcels' land (before roads and rivers), and the minimum share every
# class keeps (so that a model can be trained on each).
TARGET_SHARE: dict[int, float] = {
    SEALED: 0.09, NEEDLE: 0.11, DECIDUOUS: 0.13, EVERGREEN: 0.07, SHRUBS: 0.07, GRASS: 0.13,
    CROPS: 0.16, LICHENS: 0.045, BARE: 0.06, WATER: 0.035, SNOW: 0.04,
}
MIN_SHARE = 0.025

PARCEL_M_MAX = 150.0  # nominal parcel spacing (m); smaller in tiny worlds so all classes fit
PARCEL_M_MIN = 60.0
ELEVATION_CELL_M = 4_000.0
SUITABILITY_CELL_M = 1_000.0

# Unit kinds.
PARCEL, ROAD, RIVER, SEA = range(4)


@dataclass
class Landscape:
    grid: WorldGrid
    classes: np.ndarray  # (H, W) uint8 class codes 1..11 over the internal 10 m grid
    unit: np.ndarray  # (H, W) int32 spectral unit of each pixel
    unit_class: np.ndarray  # (U,) uint8
    unit_kind: np.ndarray  # (U,) uint8: PARCEL, ROAD, RIVER, SEA
    elevation: np.ndarray  # (H, W) float32, 0..1 (land quantile; sea 0)
    land: np.ndarray  # (H, W) bool
    parcel_spacing_m: float
    # Road centrelines in internal-grid pixel coordinates (x = column, y = row) with their half
    # width in pixels; road number i is unit ``n_parcels + i`` where it is drawn.
    road_lines: tuple[tuple[LineString, float], ...] = ()

    @property
    def n_units(self) -> int:
        return len(self.unit_class)

    def world(self, array: np.ndarray) -> np.ndarray:
        rows, cols = self.grid.world_window(PIXEL_M)
        return array[rows, cols]


def build_landscape(grid: WorldGrid, seed: int) -> Landscape:
    rng = noise.stream(seed, noise.LANDSCAPE)
    shape = grid.shape(PIXEL_M)
    land = land_mask(grid)
    wrows, wcols = grid.world_window(PIXEL_M)
    in_world = np.zeros(shape, bool)
    in_world[wrows, wcols] = True

    elevation = _elevation(rng, shape, land, in_world)
    world_area = float(np.prod(grid.world_shape(PIXEL_M))) * PIXEL_M**2
    spacing = float(np.clip(math.sqrt(world_area / 250.0), PARCEL_M_MIN, PARCEL_M_MAX))
    parcel, n_parcels = _parcels(rng, shape, spacing / PIXEL_M)

    roads, road_lines = _lines(rng, shape, count=max(1, round(sum(shape) * PIXEL_M / 6_000)), step=5.0,
                               turn_sd=0.05, half_width=(0.55, 1.05))
    rivers, _ = _lines(rng, shape, count=max(1, round(sum(shape) * PIXEL_M / 15_000)), step=4.0,
                       turn_sd=0.2, half_width=(1.2, 2.0))
    river_px = (rivers > 0) & land
    road_px = (roads > 0) & land & ~river_px

    parcel_class = _assign_classes(rng, parcel, n_parcels, elevation, land & ~road_px & ~river_px & in_world)

    n_roads, n_rivers = int(roads.max()), int(rivers.max())
    unit = parcel.copy()
    unit[road_px] = n_parcels + roads[road_px] - 1
    unit[river_px] = n_parcels + n_roads + rivers[river_px] - 1
    sea_unit = n_parcels + n_roads + n_rivers
    unit[~land] = sea_unit
    unit_class = np.concatenate([
        parcel_class,
        np.full(n_roads, SEALED, np.uint8),
        np.full(n_rivers, WATER, np.uint8),
        np.array([WATER], np.uint8),
    ])
    unit_kind = np.concatenate([
        np.full(n_parcels, PARCEL, np.uint8),
        np.full(n_roads, ROAD, np.uint8),
        np.full(n_rivers, RIVER, np.uint8),
        np.array([SEA], np.uint8),
    ])
    classes = unit_class[unit]
    elevation[~land] = 0.0
    return Landscape(grid, classes, unit, unit_class, unit_kind, elevation, land, spacing, tuple(road_lines))


# ---------------------------------------------------------------------------------- land


def land_mask(grid: WorldGrid) -> np.ndarray:
    """True on land: the packaged Natural Earth countries rasterised on the internal grid."""
    import geopandas as gpd

    from clcplus_ops.geo.aoi import countries

    shape = grid.shape(PIXEL_M)
    box_utm = shapely.segmentize(shapely.box(*grid.inner_bounds), 250.0)
    box_ll = gpd.GeoSeries([box_utm], crs=grid.crs).to_crs("EPSG:4326").iloc[0].buffer(0.02)
    geoms = np.asarray(countries().geometry.values)
    hits = shapely.intersects(geoms, box_ll)
    if not hits.any():
        return np.zeros(shape, bool)
    land_ll = shapely.union_all(shapely.intersection(geoms[hits], box_ll))
    if land_ll.is_empty:
        return np.zeros(shape, bool)
    land_utm = gpd.GeoSeries([shapely.segmentize(land_ll, 0.002)], crs="EPSG:4326").to_crs(grid.crs).iloc[0]
    raster = features.rasterize([(land_utm, 1)], out_shape=shape, transform=grid.array_grid(PIXEL_M).transform, fill=0,
                                dtype="uint8")
    return raster.astype(bool)


def _elevation(rng: np.random.Generator, shape: tuple[int, int], land: np.ndarray,
               in_world: np.ndarray) -> np.ndarray:
    raw = noise.value_noise(rng, shape, ELEVATION_CELL_M / PIXEL_M, octaves=4, persistence=0.45)
    reference = raw[land & in_world]
    if reference.size < 100:
        reference = raw[in_world]
    levels = np.linspace(0.0, 1.0, 201)
    quantiles = np.quantile(reference, levels)
    return np.interp(raw, quantiles, levels).astype(np.float32)


# ------------------------------------------------------------------------------- parcels


def _parcels(rng: np.random.Generator, shape: tuple[int, int], spacing_px: float) -> tuple[np.ndarray, int]:
    """Voronoi cells of a jittered grid in a rotated frame, elongated 1.8:1 (field shapes)."""
    h, w = shape
    angle = rng.uniform(0.0, math.pi)
    su, sv = spacing_px * 1.35, spacing_px / 1.35
    ca, sa = math.cos(angle), math.sin(angle)
    rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(w, dtype=np.float32)[None, :] + 0.5
    u = cols * ca + rows * sa
    v = rows * ca - cols * sa
    corners_u = [0 * ca, w * ca, h * sa, w * ca + h * sa]
    corners_v = [0.0, -w * sa, h * ca, h * ca - w * sa]
    u0 = math.floor(min(corners_u) / su) - 2
    v0 = math.floor(min(corners_v) / sv) - 2
    nu = math.ceil(max(corners_u) / su) - u0 + 3
    nv = math.ceil(max(corners_v) / sv) - v0 + 3
    jitter_u = rng.uniform(0.2, 0.8, (nv, nu)).astype(np.float32)
    jitter_v = rng.uniform(0.2, 0.8, (nv, nu)).astype(np.float32)
    seeds_u = (np.arange(nu, dtype=np.float32)[None, :] + u0 + jitter_u) * su
    seeds_v = (np.arange(nv, dtype=np.float32)[:, None] + v0 + jitter_v) * sv
    cu = np.floor(u / su).astype(np.int32) - u0
    cv = np.floor(v / sv).astype(np.int32) - v0
    best = np.full(shape, np.inf, np.float32)
    label = np.zeros(shape, np.int32)
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            iu, iv = cu + du, cv + dv
            d = (u - seeds_u[iv, iu]) ** 2 + (v - seeds_v[iv, iu]) ** 2
            closer = d < best
            best[closer] = d[closer]
            label[closer] = (iv * nu + iu)[closer]
    _, compact = np.unique(label, return_inverse=True)
    compact = compact.reshape(shape).astype(np.int32)
    return compact, int(compact.max()) + 1


def _lines(rng: np.random.Generator, shape: tuple[int, int], count: int, step: float, turn_sd: float,
           half_width: tuple[float, float]) -> tuple[np.ndarray, list[tuple[LineString, float]]]:
    """``count`` wandering lines across the grid, each rasterised with its number (1..count);
    and the centrelines with their half widths (pixels)."""
    h, w = shape
    shapes, lines = [], []
    for number in range(1, count + 1):
        side, t = int(rng.integers(4)), rng.random()
        start = [(0.0, t * w), (h, t * w), (t * h, 0.0), (t * h, w)][side]
        target = (rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w)
        heading0 = math.atan2(target[0] - start[0], target[1] - start[1])
        heading, (r, c) = heading0, start
        points = [(c, r)]
        for _ in range(int(3 * (h + w) / step) + 10):
            heading += rng.normal(0.0, turn_sd) + 0.15 * (heading0 - heading)
            r, c = r + step * math.sin(heading), c + step * math.cos(heading)
            points.append((c, r))
            if not (-2 * step <= r <= h + 2 * step and -2 * step <= c <= w + 2 * step):
                break
        width = rng.uniform(*half_width)
        line = LineString(points)
        shapes.append((line.buffer(width, cap_style="flat"), number))
        lines.append((line, float(width)))
    raster = features.rasterize(shapes, out_shape=shape, transform=Affine.identity(), fill=0, dtype="int32")
    return raster, lines


def _assign_classes(rng: np.random.Generator, parcel: np.ndarray, n_parcels: int, elevation: np.ndarray,
                    counted: np.ndarray) -> np.ndarray:
    """One class per parcel: elevation preference + smooth suitability + class bias, the biases
    tuned so the classes' shares of the ``counted`` pixels meet the targets, then repaired so
    each class has at least ``MIN_SHARE`` (where the parcels allow it)."""
    h, w = parcel.shape
    flat = parcel.ravel()
    n_px = np.bincount(flat, minlength=n_parcels).astype(np.float64)
    rows, cols = np.indices(parcel.shape, dtype=np.float32)
    cy = np.bincount(flat, weights=rows.ravel(), minlength=n_parcels) / np.maximum(n_px, 1)
    cx = np.bincount(flat, weights=cols.ravel(), minlength=n_parcels) / np.maximum(n_px, 1)
    mean_e = np.bincount(flat, weights=elevation.ravel(), minlength=n_parcels) / np.maximum(n_px, 1)
    area = np.bincount(flat, weights=counted.ravel().astype(np.float64), minlength=n_parcels)

    k = len(CLASSES)
    mu = np.array([PREFERENCE[c][0] for c in CLASSES])
    sigma = np.array([PREFERENCE[c][1] for c in CLASSES])
    weight = np.array([PREFERENCE[c][2] for c in CLASSES])
    fields = np.stack([
        noise.value_noise_at(rng, cy, cx, (h, w), SUITABILITY_CELL_M / PIXEL_M, octaves=2) for _ in CLASSES
    ], axis=1)
    score = -(((mean_e[:, None] - mu) / sigma) ** 2) + weight * fields
    target = np.array([TARGET_SHARE[c] for c in CLASSES])
    target = target / target.sum()
    total = area.sum()
    bias = np.zeros(k)
    choice = np.argmax(score, axis=1)
    if total > 0:
        for _ in range(80):
            choice = np.argmax(score + bias, axis=1)
            share = np.bincount(choice, weights=area, minlength=k) / total
            bias += 0.4 * np.clip(np.log(target / np.maximum(share, 1e-4)), -2.0, 2.0)
        choice = np.argmax(score + bias, axis=1)
        choice = _repair(choice, score + bias, area, total, k)
    return (choice + 1).astype(np.uint8)


def _repair(choice: np.ndarray, score: np.ndarray, area: np.ndarray, total: float, k: int) -> np.ndarray:
    choice = choice.copy()
    counted = area > 0
    for _ in range(10 * len(choice)):
        share = np.bincount(choice, weights=area, minlength=k) / total
        low = np.flatnonzero(share < MIN_SHARE)
        if not low.size:
            break
        c = int(low[np.argmin(share[low])])
        donor_ok = counted & (choice != c) & (share[choice] - area / total >= MIN_SHARE)
        if not donor_ok.any():
            break
        gain = np.where(donor_ok, score[:, c] - score[np.arange(len(choice)), choice], -np.inf)
        choice[int(np.argmax(gain))] = c
    return choice


# ------------------------------------------------------------------------- unit statistics


@dataclass
class UnitStats:
    """Per unit, over the internal grid: pixels inside the world window and in all, centroid
    (row, column, pixel indices) and mean elevation."""

    pixels_world: np.ndarray  # (U,) int64
    pixels: np.ndarray  # (U,) int64
    row: np.ndarray  # (U,) float64
    col: np.ndarray  # (U,) float64
    elevation: np.ndarray  # (U,) float64

    @property
    def inside(self) -> np.ndarray:
        """Units lying wholly inside the world window."""
        return (self.pixels > 0) & (self.pixels_world == self.pixels)


def unit_stats(landscape: Landscape) -> UnitStats:
    n = landscape.n_units
    flat = landscape.unit.ravel()
    pixels = np.bincount(flat, minlength=n)
    pixels_world = np.bincount(landscape.world(landscape.unit).ravel(), minlength=n)
    rows, cols = np.indices(landscape.unit.shape, dtype=np.float32)
    div = np.maximum(pixels, 1)
    return UnitStats(
        pixels_world, pixels,
        np.bincount(flat, weights=rows.ravel(), minlength=n) / div,
        np.bincount(flat, weights=cols.ravel(), minlength=n) / div,
        np.bincount(flat, weights=landscape.elevation.ravel(), minlength=n) / div,
    )


def unit_neighbours(landscape: Landscape) -> tuple[np.ndarray, np.ndarray]:
    """Units sharing an edge of a pixel (4-neighbours), as CSR: the neighbours of unit ``u``
    are ``indices[indptr[u]:indptr[u + 1]]`` (sorted)."""
    n, unit = landscape.n_units, landscape.unit
    a = np.concatenate([unit[:, :-1].ravel(), unit[:-1, :].ravel()])
    b = np.concatenate([unit[:, 1:].ravel(), unit[1:, :].ravel()])
    differ = a != b
    a, b = a[differ].astype(np.int64), b[differ].astype(np.int64)
    keys = np.unique(np.concatenate([a * n + b, b * n + a]))
    src, dst = keys // n, keys % n
    return np.searchsorted(src, np.arange(n + 1)), dst


def unit_polygons(landscape: Landscape, units) -> dict[int, shapely.Geometry]:
    """Per unit, its pixels inside the world window as (Multi)Polygons in the world CRS: exactly
    the union of its 10 m pixels (4-connected pieces, so the parts only touch at corners)."""
    unit = np.ascontiguousarray(landscape.world(landscape.unit))
    wanted = np.zeros(landscape.n_units, bool)
    wanted[np.asarray(list(units), np.int64)] = True
    pieces: dict[int, list] = {}
    transform = landscape.grid.world_grid(PIXEL_M).transform
    for geometry, value in features.shapes(unit, mask=wanted[unit], transform=transform):
        pieces.setdefault(int(value), []).append(shapely.geometry.shape(geometry))
    return {u: p[0] if len(p) == 1 else shapely.MultiPolygon(p) for u, p in sorted(pieces.items())}
