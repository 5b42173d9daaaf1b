"""The blending stage (ATBD 3.1.6 b): in the overlap of neighbouring production units, the
probabilities of their models are averaged with distance weights.

A PU's weight at a point is ``clip(1/2 + s / (2 B), 0, 1)``: ``s`` is the signed distance to the
PU's border (positive inside), ``B`` the PU buffer (``grid.pu_buffer_m``, 10 km). So it is 1/2
on the border, 1 at ``B`` inside and 0 at the outer edge of the buffer, and two PUs sharing a
straight border weigh 1 together everywhere. Where the weights of the PUs with data do not sum
to 1 (three or more PUs at a corner, a bent border, a neighbour without data or not ready) they
are normalised.

Signed distances are computed once per run on a coarse lattice (``blending.distance_cell_m``,
aligned with the product grid's origin, so two neighbours compute the same distances) by
Euclidean distance transforms of the rasterised PU areas, then interpolated bilinearly to the
pixels of each block, where the weights are taken: continuous, and exact to a fraction of a cell
(exact for a border along the lattice lines).

The stage writes the blended probabilities of the PU's own area (a pixel belongs to the PU whose
polygon holds its centre); its record names the neighbours blended with and those missing.
Neighbours are the PUs of the layout nearer than ``B`` to the PU (only they have a weight
inside it); a neighbour is ready once its mosaic is committed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from shapely.geometry.base import BaseGeometry

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.stage import External, Input, Stage, StageIO, Target, blocks_with_progress

# --------------------------------------------------------------------------------------------
# Pure parts: distances, weights, blending


def distance_lattice(grid: Grid, cell: float, margin: float) -> Grid:
    """A lattice of ``cell`` metres, on whole multiples of ``cell`` in ``grid``'s CRS, covering
    ``grid`` plus ``margin``."""
    import math

    xmin, ymin, xmax, ymax = grid.bounds
    bounds = (math.floor((xmin - margin) / cell) * cell, math.floor((ymin - margin) / cell) * cell,
              math.ceil((xmax + margin) / cell) * cell, math.ceil((ymax + margin) / cell) * cell)
    return Grid.from_bounds(grid.epsg, bounds, cell)


def signed_distance(area: np.ndarray, cell: float) -> np.ndarray:
    """Signed distance (metres, float32) from each lattice cell centre to the border of ``area``
    (bool, True inside): positive inside, negative outside. A cell next to the border is half a
    cell from it, so two complementary areas get exactly opposite distances."""
    from scipy.ndimage import distance_transform_edt

    if area.all() or not area.any():
        sign = 1.0 if area.any() else -1.0
        return np.full(area.shape, sign * np.inf, np.float32)
    inside = distance_transform_edt(area, sampling=cell)
    outside = distance_transform_edt(~area, sampling=cell)
    return np.where(area, inside - cell / 2, -(outside - cell / 2)).astype(np.float32)


def weight(distance: np.ndarray, buffer_m: float) -> np.ndarray:
    """A PU's raw weight from its signed distance: 1/2 on the border, 1 at ``buffer_m`` inside, 0
    at ``buffer_m`` outside, linear in between."""
    return np.clip(0.5 + distance / (2.0 * buffer_m), 0.0, 1.0).astype(np.float32)


def normalised_weights(weights: Sequence[np.ndarray], available: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """The weights divided by their sum over the PUs with data (``available``, default all);
    0 where no PU with data has a weight."""
    masked = [w * a for w, a in zip(weights, available)] if available is not None else list(weights)
    total = np.sum(masked, axis=0)
    safe = np.where(total > 0, total, 1.0)
    return [np.where(total > 0, w / safe, 0.0).astype(np.float32) for w in masked]


def interpolate(field: np.ndarray, lattice: Grid, block: Grid) -> np.ndarray:
    """``field`` on ``lattice`` interpolated bilinearly at the pixel centres of ``block``."""
    t, cell = lattice.transform, lattice.res
    cols = (block.transform.c + (np.arange(block.width) + 0.5) * block.res - t.c) / cell - 0.5
    rows = (t.f - (block.transform.f - (np.arange(block.height) + 0.5) * block.res)) / cell - 0.5
    c0 = np.clip(np.floor(cols).astype(np.int64), 0, field.shape[1] - 2)
    r0 = np.clip(np.floor(rows).astype(np.int64), 0, field.shape[0] - 2)
    tc = np.clip(cols - c0, 0.0, 1.0).astype(np.float32)[None, :]
    tr = np.clip(rows - r0, 0.0, 1.0).astype(np.float32)[:, None]
    r, c = r0[:, None], c0[None, :]
    top = field[r, c] * (1 - tc) + field[r, c + 1] * tc
    bottom = field[r + 1, c] * (1 - tc) + field[r + 1, c + 1] * tc
    return (top * (1 - tr) + bottom * tr).astype(np.float32)


def blend(probabilities: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The weighted mean of the PUs' probabilities (each (classes, rows, cols), NaN where a PU
    has no data), weights normalised over the PUs with data; and how many PUs contributed to
    each pixel (weight > 0 and data). NaN where none did."""
    available = [~np.isnan(p[0]) for p in probabilities]
    norm = normalised_weights(weights, available)
    out = np.zeros(probabilities[0].shape, np.float32)
    for p, w, a in zip(probabilities, norm, available):
        out += np.where(a, p, 0.0) * w
    contributors = np.sum([(w > 0) & a for w, a in zip(norm, available)], axis=0)
    out[:, contributors == 0] = np.nan
    return out, contributors


# --------------------------------------------------------------------------------------------
# Neighbours


@lru_cache(maxsize=512)
def _neighbours_cached(layout_path: str, mtime: float, pu_id: str, reach_m: float) -> tuple[str, ...]:
    from clcplus_ops.geo.layout import load_layout

    units = load_layout(layout_path)
    own = units[pu_id]
    # Cheap first: lon/lat boxes widened by the reach (at most 1° per 60 km at 60°N).
    pad = reach_m / 50_000.0 + 0.01
    x0, y0, x1, y1 = own.geometry.bounds
    geometry = own.geometry_in(own.crs)
    found = []
    for other in units.values():
        if other.pu_id == pu_id:
            continue
        a0, b0, a1, b1 = other.geometry.bounds
        if a0 > x1 + pad or a1 < x0 - pad or b0 > y1 + pad or b1 < y0 - pad:
            continue
        if geometry.distance(other.geometry_in(own.crs)) < reach_m:
            if other.crs != own.crs:
                raise StageInputError(f"PUs {pu_id} ({own.crs}) and {other.pu_id} ({other.crs}) are nearer than "
                                      f"{reach_m:g} m but are processed in different CRSs: they cannot be blended")
            found.append(other.pu_id)
    return tuple(sorted(found))


def neighbours(config, layout: str, pu_id: str) -> tuple[str, ...]:
    """The PUs of ``layout`` that have a weight inside ``pu_id`` (nearer than the PU buffer)."""
    import os

    path = str(config.layout_path(layout))
    return _neighbours_cached(path, os.stat(path).st_mtime, pu_id, float(config.grid.pu_buffer_m))


def neighbour_status(config, target: Target, store) -> dict[str, list[str]]:
    """Which neighbours of ``target``'s PU have a committed mosaic (``ready``) and which not."""
    from clcplus_ops.locations import Locations

    locations = Locations(config)
    status: dict[str, list[str]] = {"ready": [], "missing": []}
    for pu_id in neighbours(config, target.layout, target.pu_id):
        url = locations.pu(target.reference_year, pu_id).record("mosaic")
        status["ready" if store.exists(url) else "missing"].append(pu_id)
    return status


# --------------------------------------------------------------------------------------------
# The stage


@dataclass(frozen=True)
class NeighbourMosaic:
    pu_id: str
    geometry: BaseGeometry  # in the PU's product CRS
    probabilities: Input


def _params(config, target: Target, options) -> dict:
    from clcplus_ops.postprocessing.mosaic import area_hash, layout_units, product_grid

    units = layout_units(config, target.layout)
    involved = (target.pu_id, *neighbours(config, target.layout, target.pu_id))
    return {"grid": product_grid(config, units[target.pu_id]).to_dict(),
            "buffer_m": config.grid.pu_buffer_m, "distance_cell_m": config.blending.distance_cell_m,
            "areas": {pu: area_hash(units[pu]) for pu in involved},
            "encoding": probs_io.encoding(), "block_px": config.blending.block_px}


def _prepare(ctx) -> External:
    from clcplus_ops.postprocessing.mosaic import layout_units

    units = layout_units(ctx.config, ctx.target.layout)
    own = units[ctx.target.pu_id]
    ready, missing, identity = [], [], {}
    for pu_id in neighbours(ctx.config, ctx.target.layout, ctx.target.pu_id):
        neighbour = Target(ctx.target.layout, ctx.target.reference_year, pu_id)
        if ctx.record("mosaic", neighbour, "pu") is None:
            missing.append(pu_id)
            identity[pu_id] = "missing"
            continue
        record, probabilities = ctx.input_of("mosaic", "probabilities", neighbour, "pu")
        ready.append(NeighbourMosaic(pu_id, units[pu_id].geometry_in(own.crs), probabilities))
        identity[pu_id] = record.fingerprint
    return External(identity={"neighbours": identity},
                    value={"own": own.geometry_in(own.crs), "ready": ready, "missing": missing})


def read_encoded(dataset_grid: Grid, dataset, block: Grid, n_classes: int) -> np.ndarray:
    """``block`` of an encoded probability raster on ``dataset_grid`` (uint16, NODATA where the
    raster does not reach)."""
    out = np.full((n_classes, block.height, block.width), probs_io.NODATA, np.uint16)
    part = block.intersection(dataset_grid)
    if part is None:
        return out
    into = part.window_in(block)
    out[:, into.row_off:into.row_off + into.height, into.col_off:into.col_off + into.width] = \
        dataset.read(window=part.window_in(dataset_grid))
    return out


def _decoded(encoded: np.ndarray) -> np.ndarray:
    """float32 probabilities, NaN where there are no data."""
    p, valid = probs_io.decode(encoded)
    p[:, ~valid] = np.nan
    return p


def _compute(io: StageIO) -> dict:
    from clcplus_ops.geo.masks import inside

    grid = Grid.from_dict(io.params["grid"])
    buffer_m, cell = io.params["buffer_m"], io.params["distance_cell_m"]
    own_geometry: BaseGeometry = io.external["own"]
    ready: list[NeighbourMosaic] = io.external["ready"]
    n_classes = len(io.config.codes.classes)

    # Distances on the lattice: the margin lets a neighbour's area beyond the grid count.
    # Distances are interpolated, weights taken per pixel (clipping before interpolating would
    # round the ramp's ends); beyond the ramp they only need their sign.
    lattice = distance_lattice(grid, cell, buffer_m + cell)
    reach = buffer_m + 2 * cell
    distances = {io.target.pu_id: np.clip(signed_distance(inside(own_geometry, lattice), cell), -reach, reach)}
    for n in ready:
        distances[n.pu_id] = np.clip(signed_distance(inside(n.geometry, lattice), cell), -reach, reach)
    pixels = {"own": 0, "blended": 0, "by_neighbour": {n.pu_id: 0 for n in ready}, "no_data": 0}
    with contextlib.ExitStack() as stack, io.input("mosaic", "probabilities").raster() as own_ds:
        own_grid = Grid.of_dataset(own_ds)
        datasets = {n.pu_id: stack.enter_context(n.probabilities.raster()) for n in ready}
        grids = {name: Grid.of_dataset(ds) for name, ds in datasets.items()}
        for name, g in grids.items():
            if g.epsg != grid.epsg:
                raise StageInputError(f"{io.target.describe()}: the mosaic of {name} is in EPSG:{g.epsg}, not "
                                      f"EPSG:{grid.epsg}")
        with io.raster("probabilities", grid, n_classes, probs_io.DTYPE, probs_io.NODATA, "probabilities") as out:
            probs_io.describe(out, sorted(io.config.codes.classes), io.config.codes.classes)
            for _, _, block in blocks_with_progress(grid, io.params["block_px"], io.log, f"{io.target.pu_id} blend"):
                own_area = inside(own_geometry, block)
                encoded = read_encoded(own_grid, own_ds, block, n_classes)
                if own_area.any():
                    weights = [weight(interpolate(distances[io.target.pu_id], lattice, block), buffer_m)]
                    others = []
                    for n in ready:
                        w = weight(interpolate(distances[n.pu_id], lattice, block), buffer_m)
                        if (w[own_area] > 0).any():
                            others.append(n.pu_id)
                            weights.append(w)
                    pixels["own"] += int(own_area.sum())
                    if others:
                        stack_p = [_decoded(encoded)] + [_decoded(read_encoded(grids[name], datasets[name], block, n_classes))
                                                         for name in others]
                        blended, contributors = blend(stack_p, weights)
                        encoded = probs_io.encode(np.nan_to_num(blended), contributors > 0)
                        pixels["blended"] += int((own_area & (contributors > 1)).sum())
                        for name, p, w in zip(others, stack_p[1:], weights[1:]):
                            pixels["by_neighbour"][name] += int((own_area & (w > 0) & ~np.isnan(p[0])).sum())
                    # (no neighbour weighs here: the PU's own probabilities, as stored)
                    pixels["no_data"] += int((own_area & (encoded[0] == probs_io.NODATA)).sum())
                encoded[:, ~own_area] = probs_io.NODATA
                out.write(encoded, window=block.window_in(grid))
    missing = io.external["missing"]
    if missing:
        io.log.warning("%s: neighbours %s have no mosaic yet: blended without them; re-run blend once they have "
                       "one", io.target.describe(), ", ".join(missing))
    io.log.info("%s: %d px of its own area, %d blended with %s", io.target.describe(), pixels["own"],
                pixels["blended"], ", ".join(n.pu_id for n in ready) or "no neighbour")
    return {"neighbours": [n.pu_id for n in ready], "missing_neighbours": missing,
            "own_pixels": pixels["own"], "pixels_blended": pixels["blended"],
            "pixels_by_neighbour": pixels["by_neighbour"], "pixels_without_data": pixels["no_data"]}


BLEND = Stage(
    name="blend",
    scope="pu",
    inputs=("mosaic",),
    outputs={"probabilities": "blend/probabilities.tif"},
    prepare=_prepare,
    params=_params,
    compute=_compute,
    summary=("neighbours", "missing_neighbours", "pixels_blended"),
    permanent_errors=(StageInputError,),
    description="average the PU's and its neighbours' probabilities with distance weights over its own area",
)
