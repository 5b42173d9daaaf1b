"""Blending between production units and the PU's layers.

Three PUs in Mecklenburg (UTM zone 33, EPSG:3035 squares of 2 km): A and B side by side, C below
both, so A|B is a straight border, and A, B and C meet at a corner. Each PU's tiles (written by
stand-ins of the tile stages, as in test_mosaic) hold one class at 0.9 (A: 1, B: 2, C: 3) and
0.01 for the others, so a blended pixel shows the weights: w_A = (p_1 - 0.01) / 0.89. A has two
patches without observations (in every PU's tiles) (one small, one larger than the fill radius). The real plan, join,
mosaic, blend and layers stages run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.config import parse_config
from clcplus_ops.geo.grid import Grid
from clcplus_ops.locations import Locations
from clcplus_ops.pipeline import BLEND, CALIBRATE, DEFINE_TILE, JOIN_TILES, LAYERS, MOSAIC, PLAN_TILES, RECODE
from clcplus_ops.postprocessing import blending
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.stage import StageIO, Target
from clcplus_ops.synthetic import probability_tiles
from clcplus_ops.synthetic.probability_tiles import points_3035

YEAR = 2025
X0, Y0, SIDE = 4_495_000.0, 3_322_000.0, 2_000.0  # EPSG:3035, on the 100 m distance lattice
SQUARES = {"A": (X0, Y0 + SIDE, X0 + SIDE, Y0 + 2 * SIDE), "B": (X0 + SIDE, Y0 + SIDE, X0 + 2 * SIDE, Y0 + 2 * SIDE),
           "C": (X0, Y0, X0 + 2 * SIDE, Y0 + SIDE)}
CLASS_OF = {"A": 1, "B": 2, "C": 3}
BUFFER = 1_000.0
# Patches of A without observations: (x, y, radius) in EPSG:3035 metres.
SMALL_GAP = (X0 + 1000, Y0 + SIDE + 1000, 22.0)
LARGE_GAP = (X0 + 600, Y0 + SIDE + 1500, 140.0)


def _lonlat_ring(bounds) -> list:
    from pyproj import Transformer

    xmin, ymin, xmax, ymax = bounds
    to_ll = Transformer.from_crs(3035, 4326, always_xy=True)
    # The shared corners (X0 + SIDE, Y0 + SIDE) lie on C's top edge: C gets that vertex too.
    ring = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax)]
    if bounds == SQUARES["C"]:
        ring = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (X0 + SIDE, ymax), (xmin, ymax)]
    points = [list(to_ll.transform(x, y)) for x, y in ring]
    return [*points, points[0]]


def _tile_outputs(io: StageIO, name: str) -> None:
    from clcplus_ops.postprocessing.bilateral import BilateralParams

    halo = io.config.grid.halo_px - BilateralParams.from_config(io.config.bilateral).extent
    grid = io.tile.grid(halo)
    x, y = points_3035(grid)
    gap = np.zeros(grid.shape, bool)  # the same observations for every PU: the same gaps
    for gx, gy, r in (SMALL_GAP, LARGE_GAP):
        gap |= (x - gx) ** 2 + (y - gy) ** 2 < r**2
    if name == "filtered":
        p = np.full((11, *grid.shape), 0.01, np.float32)
        p[CLASS_OF[io.target.pu_id] - 1] = 0.9
        with io.raster(name, grid, 11, probs_io.DTYPE, probs_io.NODATA, "probabilities") as out:
            probs_io.describe(out, list(range(1, 12)), io.config.codes.classes)
            out.write(probs_io.encode(p, ~gap))
    else:
        # A tile's counts are the tile's, whichever PU asks (ingestion is shared): 250 over B's
        # square, 50 elsewhere.
        with io.raster(name, grid, 1, "uint16", None) as out:
            out.write(np.where(gap, 0, np.where(x > X0 + SIDE, 250, 50)).astype(np.uint16)[None])


STAND_INS = probability_tiles.stand_in_tile_stages(_tile_outputs)


def _mosaic(config, pu_id: str) -> None:
    target = Target("demo", YEAR, pu_id)
    run_stage(PLAN_TILES, config, target)
    plan = json.loads(Path(Locations(config).pu(YEAR, pu_id).plan[len("file://"):]).read_text())
    for tile in plan["tiles"]:
        tile_target = Target("demo", YEAR, pu_id, tile["tile_id"])
        run_stage(DEFINE_TILE, config, tile_target)
        for stage in STAND_INS:
            run_stage(stage, config, tile_target)
    run_stage(JOIN_TILES, config, target)
    run_stage(MOSAIC, config, target)


@pytest.fixture(scope="module")
def three_pus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("blending")
    layout = root / "layout.geojson"
    layout.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"pu_id": pu, "name": f"square {pu}", "crs": "EPSG:3035"},
        "geometry": {"type": "Polygon", "coordinates": [_lonlat_ring(bounds)]}} for pu, bounds in SQUARES.items()]}))
    # Land: all but the northernmost 300 m of A (an inland stand-in for a coastline file).
    from pyproj import Transformer

    to_ll = Transformer.from_crs(3035, 4326, always_xy=True)
    land = [list(to_ll.transform(x, y)) for x, y in ((X0 - 5000, Y0 - 5000), (X0 + 9000, Y0 - 5000),
                                                     (X0 + 9000, Y0 + 2 * SIDE - 300), (X0 - 5000, Y0 + 2 * SIDE - 300))]
    coastline = root / "land.geojson"
    coastline.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[*land, land[0]]]}}]}))
    config = parse_config({
        "store": {name: (root / name).as_uri() for name in ("work", "models", "samples", "products")},
        "demo": {"layout_path": str(layout), "grid": {"tile_size_m": 2500, "pu_buffer_m": BUFFER, "halo_px": 8}},
        "blending": {"block_px": 256}, "layers": {"coastline_path": str(coastline)},
    }).for_layout("demo")
    for pu in ("A", "B"):
        _mosaic(config, pu)
    return {"config": config, "root": root}


def _read(config, stage, pu_id: str, name: str) -> tuple[np.ndarray, Grid]:
    record = stage_record(config, stage, Target("demo", YEAR, pu_id))
    with rasterio.open(Locations(config).resolve(record.outputs[name])[len("file://"):]) as ds:
        return ds.read(), Grid.of_dataset(ds)


def _weights(config, pu_id: str) -> tuple[np.ndarray, Grid]:
    """(3, rows, cols) weights of A, B, C recovered from ``pu_id``'s blended probabilities."""
    encoded, grid = _read(config, BLEND, pu_id, "probabilities")
    p, valid = probs_io.decode(encoded)
    w = (p[[0, 1, 2]] - 0.01) / 0.89
    w[:, ~valid] = np.nan
    return w, grid


# --------------------------------------------------------------------------------------------
# Pure functions


def test_signed_distance_of_complementary_areas_is_opposite():
    area = np.zeros((40, 60), bool)
    area[:, :25] = True
    d = blending.signed_distance(area, 100.0)
    assert np.array_equal(d, -blending.signed_distance(~area, 100.0))
    assert d[5, 24] == 50.0 and d[5, 25] == -50.0 and d[5, 0] == 2450.0


def test_weights_sum_to_one_are_symmetric_and_continuous():
    lattice = Grid.from_bounds(3035, (0, 0, 6000, 4000), 100)
    fine = Grid.from_bounds(3035, (1000, 1000, 5000, 3000), 10)
    x = np.arange(lattice.width)
    a = np.broadcast_to(x < 30, lattice.shape)  # A west of x = 3000 m, B east
    raw = [blending.weight(blending.interpolate(blending.signed_distance(m, 100.0), lattice, fine), 1000.0)
           for m in (a, ~a)]
    wa, wb = blending.normalised_weights(raw)
    assert np.allclose(wa + wb, 1.0, atol=1e-6)
    assert np.allclose(wa, wb[:, ::-1], atol=1e-6)  # mirror image across the border
    assert np.abs(np.diff(wa, axis=1)).max() <= 10 / 2000 + 1e-6  # 10 m of a 2 km ramp per pixel
    assert np.allclose(wa[:, 199], 0.5 + 5 / 2000) and np.allclose(wa[:, 100], 0.5 + 995 / 2000)  # border, ~1 km in
    assert (wa[:, :100] == 1).all() and (wb[:, :100] == 0).all()  # 1 km or more inside A: A alone


def test_three_pus_at_a_corner_are_normalised():
    w = [np.array([0.7, 0.5, 0.0]), np.array([0.6, 0.5, 0.0]), np.array([0.4, 0.0, 0.0])]
    out = blending.normalised_weights(w)
    assert np.allclose(np.sum(out, axis=0), [1.0, 1.0, 0.0]) and np.isclose(out[0][0], 0.7 / 1.7)
    # A PU without data drops out and the others share its weight.
    out = blending.normalised_weights(w, [np.ones(3, bool), np.ones(3, bool), np.zeros(3, bool)])
    assert np.isclose(out[0][0], 0.7 / 1.3) and out[2][0] == 0


# --------------------------------------------------------------------------------------------
# The stages


def test_neighbours_are_the_pus_within_the_buffer(three_pus):
    config = three_pus["config"]
    assert blending.neighbours(config, "demo", "A") == ("B", "C")
    production = parse_config({})
    found = blending.neighbours(production, "production", "PU001")
    assert found and "PU001" not in found


def test_a_missing_neighbour_is_recorded_and_a_rerun_picks_it_up(three_pus):
    config = three_pus["config"]
    first = run_stage(BLEND, config, Target("demo", YEAR, "A"))
    assert first["neighbours"] == ["B"] and first["missing_neighbours"] == ["C"]
    assert run_stage(BLEND, config, Target("demo", YEAR, "A"))["skipped"]
    _mosaic(config, "C")
    again = run_stage(BLEND, config, Target("demo", YEAR, "A"))
    assert not again["skipped"] and again["neighbours"] == ["B", "C"] and again["missing_neighbours"] == []
    record = stage_record(config, BLEND, Target("demo", YEAR, "A"))
    assert record.details["pixels_blended"] > 0 and set(record.details["pixels_by_neighbour"]) == {"B", "C"}


@pytest.fixture(scope="module")
def blended(three_pus) -> dict:
    config = three_pus["config"]
    _mosaic(config, "C")
    for pu in SQUARES:
        run_stage(BLEND, config, Target("demo", YEAR, pu))
        for stage in (CALIBRATE, RECODE, LAYERS):  # no previous production, no rules: pass-through
            run_stage(stage, config, Target("demo", YEAR, pu))
    return three_pus


def _xy(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    t = grid.transform
    return t.c + (np.arange(grid.width) + 0.5) * t.a, t.f - (np.arange(grid.height) + 0.5) * t.a


def test_blended_weights_sum_to_one_and_meet_on_the_border(blended, figure):
    config = blended["config"]
    wa, grid_a = _weights(config, "A")
    wb, grid_b = _weights(config, "B")
    own = ~np.isnan(wa[0])
    assert np.allclose(wa[:, own].sum(axis=0), 1.0, atol=2e-3)
    # The A|B border at x = X0 + SIDE, 1 km or more above C: the last A column and the first B column.
    xa, ya = _xy(grid_a)
    xb, _ = _xy(grid_b)
    rows = (ya > Y0 + SIDE + 1000) & (ya < Y0 + 2 * SIDE)
    ca, cb = int(np.argmin(np.abs(xa - (X0 + SIDE - 5)))), int(np.argmin(np.abs(xb - (X0 + SIDE + 5))))
    rb = np.arange(grid_b.height)[np.isin(_xy(grid_b)[1], ya[rows])]
    left, right = wa[0][rows, ca], wb[0][rb, cb]
    assert np.allclose(left, 0.5 + 5 / 2000, atol=2e-3) and np.allclose(right, 0.5 - 5 / 2000, atol=2e-3)
    assert np.allclose(wa[0][rows, ca], wb[1][rb, cb], atol=2e-3)  # symmetric: A's side of the border mirrors B's
    # 1 km inside A (and 1 km from C): A alone.
    inner = int(np.argmin(np.abs(xa - (X0 + SIDE - 1005))))
    alone = wa[0][rows, inner]
    alone = alone[~np.isnan(alone)]  # the small patch without observations crosses this column
    assert alone.size > 50 and np.allclose(alone, 1.0, atol=2e-3)
    figure(f"blend A|B: weight of A at the border {left.mean():.4f} (A side) / {right.mean():.4f} (B side), "
           f"1 km inside A {alone.mean():.4f}; corner A/B/C normalised, sum within 2e-3 of 1")


def test_layers_codes_and_the_own_areas_partition_the_pus(blended, figure):
    config = blended["config"]
    codes = config.codes
    ras, grid = _read(config, LAYERS, "A", "ras")
    rascl, _ = _read(config, LAYERS, "A", "rascl")
    rasdl, _ = _read(config, LAYERS, "A", "rasdl")
    raspl, _ = _read(config, LAYERS, "A", "raspl")
    flag, _ = _read(config, LAYERS, "A", "nodata")
    ras, rascl, rasdl, raspl, flag = ras[0], rascl[0], rasdl[0], raspl[0], flag[0]
    x, y = np.meshgrid(*_xy(grid))
    in_a = (x > X0) & (x < X0 + SIDE) & (y > Y0 + SIDE) & (y < Y0 + 2 * SIDE)
    sea = in_a & (y > Y0 + 2 * SIDE - 300)
    assert np.array_equal(ras == codes.outside, ~in_a)
    assert np.array_equal(ras == codes.coastal_seawater, sea)
    record = stage_record(config, LAYERS, Target("demo", YEAR, "A")).details
    assert record["area"] == in_a.sum() and record["coastal_seawater"] == sea.sum()
    # No observations: the small patch takes its neighbourhood's class (A's), the large one's
    # centre has no observed pixel within 5 px and stays no data.
    small = (x - SMALL_GAP[0]) ** 2 + (y - SMALL_GAP[1]) ** 2 < SMALL_GAP[2] ** 2
    large_core = (x - LARGE_GAP[0]) ** 2 + (y - LARGE_GAP[1]) ** 2 < (LARGE_GAP[2] - 80) ** 2
    # (the patch on the product grid is that of the tiles after bilinear resampling: about the circle)
    filled = small & (flag == 1)
    assert filled.sum() >= small.sum() // 2 and set(np.unique(flag[small])) <= {0, 1}
    assert (ras[filled] == 1).all() and (rascl[filled] == 0).all() and (rasdl[filled] == 0).all()
    assert (ras[large_core] == codes.nodata).all() and (flag[large_core] == 2).all()
    assert record["nodata_filled"] == (flag == 1).sum() > 0 and record["nodata_left"] == (flag == 2).sum() > 0
    land = in_a & ~sea & (flag == 0)
    interior = land & (x < X0 + SIDE - 1000) & (y > Y0 + SIDE + 1000)
    assert (ras[interior] == 1).all() and (rascl[interior] == 89).all()  # round(100 x (0.9 - 0.01))
    # (within a pixel of the A|B border the resampled counts may be B's)
    assert (rasdl[in_a & (flag == 0) & (x < X0 + SIDE - 20)] == 50).all() and (rasdl[~in_a] == 65535).all()
    assert set(np.unique(raspl[in_a])) == {0} and (raspl[~in_a] == 254).all()
    # B's counts of 250 are stored as 200 ("200 or more").
    rasdl_b, grid_b = _read(config, LAYERS, "B", "rasdl")
    xb, _ = np.meshgrid(*_xy(grid_b))
    assert set(np.unique(rasdl_b[0][xb > X0 + SIDE + 20])) == {200, 65535}
    assert set(np.unique(rasdl_b[0])) <= {50, 200, 65535}
    assert stage_record(config, LAYERS, Target("demo", YEAR, "B")).details["counts_clipped"] > 0

    # Each pixel of the three squares belongs to exactly one PU's area.
    owners = None
    for pu in SQUARES:
        layer, g = _read(config, LAYERS, pu, "ras")
        full = np.zeros((400, 400), np.int32)  # the 4 x 4 km of the three squares at 10 m
        frame = Grid.from_bounds(3035, (X0, Y0, X0 + 4000, Y0 + 4000), 10)
        part = frame.intersection(g)
        w = part.window_in(g)
        into = part.window_in(frame)
        full[into.row_off:into.row_off + into.height, into.col_off:into.col_off + into.width] = \
            layer[0, w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] != codes.outside
        owners = full if owners is None else owners + full
    union = np.zeros((400, 400), bool)
    union[:200, :] = True  # A and B (north half)
    union[200:, :] = True  # C (south half)
    assert np.array_equal(owners, union.astype(np.int32))
    figure(f"layers of A: {record['area']} px in its area, {record['coastal_seawater']} coastal seawater (253), "
           f"{record['nodata_filled']} filled from their neighbourhood, {record['nodata_left']} left no data (255); "
           f"A, B, C own areas partition the 3 squares (every pixel exactly once)")


@pytest.mark.parametrize("stage", [BLEND, LAYERS], ids=lambda s: s.name)
def test_rerun_skips_and_forced_run_gives_the_same_bytes(blended, stage):
    config = blended["config"]
    target = Target("demo", YEAR, "A")
    before = stage_record(config, stage, target)
    assert run_stage(stage, config, target)["skipped"]
    run_stage(stage, config, target, force=True)
    after = stage_record(config, stage, target)
    assert {k: v["sha256"] for k, v in after.files.items()} == {k: v["sha256"] for k, v in before.files.items()}


def test_an_unusable_coastline_file_is_a_clear_error(blended, tmp_path):
    from clcplus_ops.errors import StageInputError

    config = blended["config"]
    bad = config.model_copy(update={"layers": config.layers.model_copy(update={"coastline_path": str(tmp_path / "no.gpkg")})})
    with pytest.raises(StageInputError, match="coastline file .*no.gpkg does not exist"):
        run_stage(LAYERS, bad, Target("demo", YEAR, "A"))


def test_class_and_confidence_are_argmax_and_the_top_two_margin():
    from clcplus_ops.postprocessing.layers import classes_and_confidence

    rng = np.random.default_rng(0)
    encoded = rng.integers(0, 10_000, (11, 200, 200)).astype(np.uint16)
    encoded[:, :5] = encoded[0, :5]  # ties: the first class, margin 0
    encoded[:, 10, 10] = probs_io.NODATA
    codes, confidence, valid = classes_and_confidence(encoded, np.arange(1, 12))
    top_two = np.sort(encoded.astype(np.int32), axis=0)[-2:]
    assert valid.sum() == 200 * 200 - 1 and codes[10, 10] == 0 and confidence[10, 10] == 0
    assert np.array_equal(codes[valid], (np.argmax(encoded, axis=0) + 1)[valid])
    assert np.array_equal(confidence[valid], np.minimum((top_two[1] - top_two[0] + 50) // 100, 100)[valid])
    assert (confidence[:5] == 0).all() and (codes[:5] == 1).all()
