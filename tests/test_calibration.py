"""Interannual calibration and the import of previous productions.

Pure functions on arrays first; then one PU (a 2 km square in EPSG:3035) produced for 2021,
2023 and 2025 by stand-ins of the tile stages (known probabilities per year) and the real plan,
join, mosaic, blend stages, calibrated by the real stage, and an external production imported
from a GeoTIFF on a UTM grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio

from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.config import parse_config
from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.locations import Locations
from clcplus_ops.pipeline import BLEND, CALIBRATE, DEFINE_TILE, IMPORT_PRODUCTION, JOIN_TILES, MOSAIC, PLAN_TILES
from clcplus_ops.postprocessing import calibration as cal
from clcplus_ops.postprocessing.previous import ProductionImportError, detect_scale
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.stage import StageIO, Target
from clcplus_ops.synthetic import probability_tiles
from clcplus_ops.synthetic.probability_tiles import points_3035

CLASSES = np.arange(1, 12)


def _vector(weights: dict[int, float], shape=(1, 1)) -> np.ndarray:
    p = np.full((11, *shape), 0.0, np.float32)
    rest = (1.0 - sum(weights.values())) / (11 - len(weights))
    p[:] = rest
    for code, w in weights.items():
        p[code - 1] = w
    return probs_io.encode(p, np.ones(shape, bool))


# --------------------------------------------------------------------------------------------
# Pure functions


def test_prior_folds_from_the_oldest_year():
    old = np.concatenate([_vector({6: 0.7}), _vector({6: 0.7}), _vector({2: 0.8}), _vector({5: 0.6})], axis=2)
    new = np.concatenate([_vector({6: 0.9}), _vector({7: 0.9}), _vector({2: 0.6}), _vector({5: 0.6})], axis=2)
    new[:, 0, 3] = probs_io.NODATA  # the newer year without data: the older stays
    prior = cal.combined_prior([old, new], CLASSES)
    np.testing.assert_array_equal(prior[:, 0, 0], old[:, 0, 0])  # same class: the older vector
    np.testing.assert_array_equal(prior[:, 0, 1], new[:, 0, 1])  # changed: the newer
    np.testing.assert_array_equal(prior[:, 0, 2], old[:, 0, 2])
    np.testing.assert_array_equal(prior[:, 0, 3], old[:, 0, 3])
    # Three years: 2018 kept while 2021 and 2023 agree with it.
    third = np.concatenate([_vector({6: 0.8}), _vector({7: 0.5}), _vector({9: 0.9}), _vector({5: 0.7})], axis=2)
    prior3 = cal.combined_prior([old, new, third], CLASSES)
    np.testing.assert_array_equal(prior3[:, 0, 0], old[:, 0, 0])
    np.testing.assert_array_equal(prior3[:, 0, 1], new[:, 0, 1])
    np.testing.assert_array_equal(prior3[:, 0, 2], third[:, 0, 2])


def test_change_magnitude_is_the_euclidean_distance_up_to_sqrt_2():
    a, b = _vector({1: 1.0}), _vector({2: 1.0})
    assert int(cal.change_magnitude(a, b)[0, 0]) == round(math.sqrt(2) * 10_000) <= cal.M_MAX
    c, d = _vector({6: 0.5, 7: 0.3}), _vector({6: 0.3, 7: 0.5})
    expected = math.sqrt(2 * 0.2**2)
    assert abs(cal.change_magnitude(c, d)[0, 0] / 10_000 - expected) <= 1e-4
    assert cal.change_magnitude(a, a)[0, 0] == 0


def test_thresholds_are_nearest_rank_percentiles_per_direction():
    n = 11
    direction = np.full((1, 100), (7 - 1) * n + (6 - 1), np.int32)  # 7 -> 6
    m = np.arange(1, 101, dtype=np.uint16)[None] * 10
    histogram = cal.magnitude_histogram(direction, m, n * n)
    percentile = np.full(n * n, 90.0)
    t = cal.thresholds(histogram, percentile)
    assert t[(7 - 1) * n + (6 - 1)] == 900  # the 90th of 10, 20, ..., 1000
    assert t[0] == cal.M_MAX + 1  # no pixels: nothing to keep
    percentile[(7 - 1) * n + (6 - 1)] = 0.0
    assert cal.thresholds(histogram, percentile)[(7 - 1) * n + (6 - 1)] == 10  # keeps all


def test_suppressed_changes_and_pixels_without_data_take_the_prior_vector():
    prior = np.concatenate([_vector({7: 0.5}), _vector({2: 0.9}), _vector({6: 0.6}), _vector({6: 0.6})], axis=2)
    current = np.concatenate([_vector({6: 0.5}), _vector({9: 0.9}), _vector({6: 0.7}), _vector({6: 0.7})], axis=2)
    current[:, 0, 3] = probs_io.NODATA
    n = 11
    threshold = np.full(n * n, 7_000, np.int64)  # keep changes with M >= 0.7 (7 -> 6 here: 0.64)
    out, m, direction, kept = cal.calibrate_block(current, prior, threshold, CLASSES)
    np.testing.assert_array_equal(out[:, 0, 0], prior[:, 0, 0])  # weak 7 -> 6: suppressed
    np.testing.assert_array_equal(out[:, 0, 1], current[:, 0, 1])  # strong 2 -> 9: kept
    np.testing.assert_array_equal(out[:, 0, 2], current[:, 0, 2])  # no change
    np.testing.assert_array_equal(out[:, 0, 3], prior[:, 0, 3])  # no data: the prior
    assert kept.tolist() == [[False, True, False, False]]
    flags = cal.decisions_layer(current, prior, direction, kept)
    assert flags.tolist() == [[cal.SUPPRESSED, cal.KEPT, cal.UNCHANGED, cal.TOOK_PRIOR]]
    # RAS and RASCL read one vector: the class and the margin of the output agree.
    assert cal.top_class(out, CLASSES).tolist() == [[7, 9, 6, 6]]
    layer = cal.magnitude_layer(m, current, prior)
    assert layer[0, 3] == cal.MAGNITUDE_NODATA and 0 <= layer[0, 1] <= 100


def test_scale_of_an_external_production_is_found_from_band_sums():
    p = np.full((11, 4, 4), 1 / 11, np.float64)
    valid = np.ones((4, 4), bool)
    assert detect_scale(p, valid, "float32")[0] == 1.0
    assert detect_scale(np.rint(p * 10_000), valid, "uint16")[0] == 10_000
    assert detect_scale(np.rint(p * 100) + (np.arange(11) < 1)[:, None, None], valid, "uint8")[0] == 100
    scale, why = detect_scale(p * 37, valid, "float32")
    assert scale is None and "not class probabilities" in why


def test_previous_years_follow_the_calendar():
    config = parse_config({})
    assert cal.previous_years(config, 2023) == [2018, 2021]
    assert cal.previous_years(config, 2025) == [2021, 2023]
    assert cal.previous_years(config, 2018) == []
    one = parse_config({"calibration": {"previous_productions": 1}})
    assert cal.previous_years(one, 2025) == [2023]


# --------------------------------------------------------------------------------------------
# The stages on one PU over three years

X0, Y0, SIDE = 4_495_000.0, 3_322_000.0, 2_000.0
CUT = (X0 + 500, Y0 + 500, X0 + 900, Y0 + 900)  # 2023 needle-leaved, 2025 bare: a clear-cut
GAP = (X0 + 1400, Y0 + 1400, 60.0)  # no observation in 2025
STRONG_EVERY = 10  # in the 7|6 noise strip, one column in ten changes strongly


def _region(x, y, box) -> np.ndarray:
    return (x >= box[0]) & (x < box[2]) & (y >= box[1]) & (y < box[3])


def _year_field(x: np.ndarray, y: np.ndarray, year: int) -> np.ndarray:
    """Probabilities of one year: west half grassland (6), east half arable (7) with a weak
    7|6 flip between years along a noise strip, the clear-cut, and in 2021 a variant of 2023's
    vectors (same classes) to see which year the prior takes."""
    p = np.full((11, *x.shape), 0.02, np.float32)
    west = x < X0 + SIDE / 2
    strip = (x >= X0 + 1200) & (x < X0 + 1600) & (y < Y0 + 1000)
    p[5][west], p[6][~west] = 0.8, 0.8
    if year == 2025:
        # The strip flips 7 -> 6: weakly (noise), and strongly on every tenth 10 m column.
        column = np.floor((x - X0) / 10).astype(int)
        strong = strip & (column % STRONG_EVERY == 0)
        weak = strip & ~strong
        p[5][weak], p[6][weak] = 0.44, 0.36
        p[5][strong], p[6][strong] = 0.8, 0.02
    else:
        p[5][strip], p[6][strip] = 0.36, 0.44
    cut = _region(x, y, CUT)
    p[:, cut] = 0.01
    p[1 if year <= 2023 else 8][cut] = 0.9
    if year == 2021:
        p[6][~west & ~strip] = 0.7
    return p / p.sum(axis=0)


def _tile_outputs(io: StageIO, name: str) -> None:
    from clcplus_ops.postprocessing.bilateral import BilateralParams

    halo = io.config.grid.halo_px - BilateralParams.from_config(io.config.bilateral).extent
    grid = io.tile.grid(halo)
    x, y = points_3035(grid)
    year = io.target.reference_year
    gap = ((x - GAP[0]) ** 2 + (y - GAP[1]) ** 2 < GAP[2] ** 2) & (year == 2025)
    if name == "filtered":
        with io.raster(name, grid, 11, probs_io.DTYPE, probs_io.NODATA, "probabilities") as out:
            probs_io.describe(out, list(range(1, 12)), io.config.codes.classes)
            out.write(probs_io.encode(_year_field(x, y, year), ~gap))
    else:
        with io.raster(name, grid, 1, "uint16", None) as out:
            out.write(np.where(gap, 0, 40).astype(np.uint16)[None])


STAND_INS = probability_tiles.stand_in_tile_stages(_tile_outputs)


def _blend(config, year: int) -> None:
    target = Target("demo", year, "A")
    run_stage(PLAN_TILES, config, target)
    plan = json.loads(Path(Locations(config).pu(year, "A").plan[len("file://"):]).read_text())
    for tile in plan["tiles"]:
        tile_target = Target("demo", year, "A", tile["tile_id"])
        run_stage(DEFINE_TILE, config, tile_target)
        for stage in STAND_INS:
            run_stage(stage, config, tile_target)
    for stage in (JOIN_TILES, MOSAIC, BLEND):
        run_stage(stage, config, target)


@pytest.fixture(scope="module")
def years(tmp_path_factory) -> dict:
    from pyproj import Transformer

    root = tmp_path_factory.mktemp("calibration")
    to_ll = Transformer.from_crs(3035, 4326, always_xy=True)
    ring = [list(to_ll.transform(x, y)) for x, y in ((X0, Y0), (X0 + SIDE, Y0), (X0 + SIDE, Y0 + SIDE), (X0, Y0 + SIDE))]
    layout = root / "layout.geojson"
    layout.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"pu_id": "A", "name": "square A", "crs": "EPSG:3035"},
        "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}}]}))
    config = parse_config({
        "store": {name: (root / name).as_uri() for name in ("work", "models", "samples", "products")},
        "demo": {"layout_path": str(layout), "grid": {"tile_size_m": 2500, "pu_buffer_m": 500.0, "halo_px": 8}},
        "blending": {"block_px": 256},
        "calibration": {"directions": [{"from_classes": [2], "to_classes": [9], "percentile": 10}]},
    }).for_layout("demo")
    for year in (2021, 2023, 2025):
        _blend(config, year)
    return {"config": config, "root": root}


def _read(config, stage, name: str, year: int = 2025) -> tuple[np.ndarray, Grid]:
    record = stage_record(config, stage, Target("demo", year, "A"))
    with rasterio.open(Locations(config).resolve(record.outputs[name])[len("file://"):]) as ds:
        return ds.read(), Grid.of_dataset(ds)


def test_calibration_keeps_strong_changes_and_suppresses_weak_ones(years):
    config = years["config"]
    summary = run_stage(CALIBRATE, config, Target("demo", 2025, "A"))
    assert summary["calibrated"] and summary["previous_years"] == [2021, 2023] and summary["missing_years"] == []
    record = stage_record(config, CALIBRATE, Target("demo", 2025, "A")).details
    table = {(d["from"], d["to"]): d for d in record["directions"]}
    noise = table[(7, 6)]
    # The 90th percentile over 7 -> 6 keeps about the strongest tenth: the strong columns.
    assert noise["pixels"] > 1000 and 0.08 <= noise["kept"] / noise["pixels"] <= 0.12
    assert table[(2, 9)]["percentile"] == 10 and table[(2, 9)]["kept"] >= 0.9 * table[(2, 9)]["pixels"]
    assert sum(d["kept"] for d in table.values()) == record["kept"]
    calibrated, grid = _read(config, CALIBRATE, "probabilities")
    blended, _ = _read(config, BLEND, "probabilities")
    flags, _ = _read(config, CALIBRATE, "decisions")
    x, y = points_3035(grid)
    inner = lambda box, m=30: _region(x, y, (box[0] + m, box[1] + m, box[2] - m, box[3] - m))  # noqa: E731
    cls = cal.top_class(calibrated, CLASSES)
    assert (cls[inner(CUT)] == 9).all()  # the clear-cut is kept
    strip = inner((X0 + 1200, Y0, X0 + 1600, Y0 + 1000))
    column = np.floor((x - X0) / 10).astype(int)
    weak, strong = strip & (column % STRONG_EVERY != 0), strip & (column % STRONG_EVERY == 0)
    assert (cls[weak] == 7).mean() > 0.97 and (cls[strong] == 6).mean() > 0.97
    assert (flags[0][weak] == cal.SUPPRESSED).mean() > 0.97
    # The prior of a suppressed pixel: 2021's vector (its class equals 2023's).
    prior_2021, _ = _read(config, BLEND, "probabilities", 2021)
    suppressed = flags[0] == cal.SUPPRESSED
    np.testing.assert_array_equal(calibrated[:, suppressed & strip], prior_2021[:, suppressed & strip])
    # No observation in 2025: the prior's vector.
    gap = (x - GAP[0]) ** 2 + (y - GAP[1]) ** 2 < (GAP[2] - 15) ** 2
    assert (blended[0][gap] == probs_io.NODATA).all() and (flags[0][gap] == cal.TOOK_PRIOR).all()
    assert (calibrated[0][gap] != probs_io.NODATA).all()
    # Unchanged pixels pass through.
    same = flags[0] == cal.UNCHANGED
    np.testing.assert_array_equal(calibrated[:, same], blended[:, same])
    magnitude, _ = _read(config, CALIBRATE, "change_magnitude")
    assert magnitude[0][inner(CUT)].min() > 80 and np.median(magnitude[0][weak & suppressed]) <= 10


def test_rerun_skips_and_forced_run_gives_the_same_bytes(years):
    config = years["config"]
    target = Target("demo", 2025, "A")
    run_stage(CALIBRATE, config, target)
    before = stage_record(config, CALIBRATE, target).files
    assert run_stage(CALIBRATE, config, target)["skipped"]
    run_stage(CALIBRATE, config, target, force=True)
    assert {k: f["sha256"] for k, f in stage_record(config, CALIBRATE, target).files.items()} == \
        {k: f["sha256"] for k, f in before.items()}


def test_without_previous_production_the_stage_passes_the_blend_through(years):
    config = years["config"]
    summary = run_stage(CALIBRATE, config, Target("demo", 2021, "A"))
    assert not summary["calibrated"] and summary["missing_years"] == [2018]
    calibrated, _ = _read(config, CALIBRATE, "probabilities", 2021)
    blended, _ = _read(config, BLEND, "probabilities", 2021)
    np.testing.assert_array_equal(calibrated, blended)


def _utm_production(path: Path, year: int, dtype: str = "float32", bands: int = 11, scale: float = 1.0) -> None:
    """A production of the PU's area on a 20 m UTM 33 grid, as a provider might hold it."""
    from pyproj import Transformer

    to_utm = Transformer.from_crs(3035, 32633, always_xy=True)
    xs, ys = to_utm.transform([X0 - 600, X0 + SIDE + 600], [Y0 - 600, Y0 + SIDE + 600])
    bounds = (math.floor(min(xs) / 20) * 20, math.floor(min(ys) / 20) * 20, math.ceil(max(xs) / 20) * 20,
              math.ceil(max(ys) / 20) * 20)
    grid = Grid.from_bounds(32633, bounds, 20.0)
    x, y = points_3035(grid)
    p = _year_field(x, y, year)[:bands] * scale
    with rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height, count=bands, dtype=dtype,
                       crs=grid.crs, transform=grid.transform) as out:
        out.write(p.astype(dtype))


def test_an_imported_production_calibrates_later_years(years, tmp_path):
    config = years["config"]
    source = tmp_path / "clcplus_2023_probabilities_utm.tif"
    _utm_production(source, 2023, "uint16", scale=10_000)
    summary = run_stage(IMPORT_PRODUCTION, config, Target("demo", 2023, "A"), options={"source": str(source)})
    assert summary["scale"] == 10_000 and summary["pixels_valid"] > 0
    imported, grid = _read(config, IMPORT_PRODUCTION, "probabilities", 2023)
    own, _ = _read(config, BLEND, "probabilities", 2023)
    both = (imported[0] != probs_io.NODATA) & (own[0] != probs_io.NODATA)
    agree = (cal.top_class(imported, CLASSES) == cal.top_class(own, CLASSES))[both].mean()
    assert agree > 0.97  # the same field through another grid and a bilinear warp
    again = run_stage(CALIBRATE, config, Target("demo", 2025, "A"))
    assert not again["skipped"]  # the import replaced 2023's production: the fingerprint moved
    record = stage_record(config, CALIBRATE, Target("demo", 2025, "A")).details
    assert record["previous_sources"] == {"2021": "blend", "2023": "import_production"}


@pytest.mark.parametrize("kind, message", [
    ("bands", "10 bands, expected 11"),
    ("scale", "not class probabilities"),
    ("text", "cannot be read as a raster"),
    ("far", "does not overlap"),
])
def test_a_bad_production_file_is_refused_with_the_reason(years, tmp_path, kind, message):
    config = years["config"]
    source = tmp_path / f"bad_{kind}.tif"
    if kind == "bands":
        _utm_production(source, 2023, bands=10)
    elif kind == "scale":
        _utm_production(source, 2023, scale=37.0)
    elif kind == "text":
        source.write_text("not a raster")
    else:
        with rasterio.open(source, "w", driver="GTiff", width=4, height=4, count=11, dtype="float32", crs="EPSG:4326",
                           transform=rasterio.transform.from_origin(100.0, 10.0, 0.1, 0.1)) as out:
            out.write(np.full((11, 4, 4), 1 / 11, np.float32))
    with pytest.raises(ProductionImportError, match=message) as caught:
        run_stage(IMPORT_PRODUCTION, config, Target("demo", 2018, "A"), options={"source": str(source)})
    assert isinstance(caught.value, StageInputError) and str(source) in str(caught.value)
    assert stage_record(config, IMPORT_PRODUCTION, Target("demo", 2018, "A")) is None


# --------------------------------------------------------------------------------------------
# Recoding and the layers after the calibration


def _rules(folder: Path, source_box, bad: bool = False) -> Path:
    import geopandas as gpd
    import shapely

    folder.mkdir(parents=True, exist_ok=True)
    gpd.GeoDataFrame({"fclass": ["building", "park"]}, geometry=[shapely.box(*source_box), shapely.box(X0, Y0, X0 + 50, Y0 + 50)],
                     crs="EPSG:3035").to_crs(4326).to_file(folder / "buildings.gpkg", layer="buildings")
    column = "fclas" if bad else "fclass"
    rules = folder / "rules.yaml"
    rules.write_text(f"""version: 1
rules:
  - name: buildings
    source: buildings.gpkg
    where: {{{column}: [building]}}
    to_class: 1
    from_classes: [6, 7]
""")
    return rules


def test_recoding_writes_the_rule_classes_and_raspl_flags_them(years, tmp_path):
    from clcplus_ops.pipeline import LAYERS, RECODE

    box = (X0 + 200, Y0 + 1200, X0 + 400, Y0 + 1400)  # grassland (west half) in every year
    config = years["config"].model_copy(update={"recoding": parse_config({"recoding": {
        "rules": str(_rules(tmp_path / "rules", box))}}).recoding})
    target = Target("demo", 2025, "A")
    run_stage(CALIBRATE, config, target)
    summary = run_stage(RECODE, config, target)
    assert summary["rules"] == {"buildings": 20 * 20} and summary["recoded"] == 400
    run_stage(LAYERS, config, target)
    final, grid = _read(config, RECODE, "classes")
    calibrated, _ = _read(config, CALIBRATE, "probabilities")
    ras, _ = _read(config, LAYERS, "ras")
    raspl, _ = _read(config, LAYERS, "raspl")
    x, y = points_3035(grid)
    inside_box = _region(x, y, box)
    assert (ras[0][inside_box] == 1).all() and (raspl[0][inside_box] == 1).all()
    assert ((raspl[0] == 1) == (final[0] != cal.top_class(calibrated, CLASSES)) & (raspl[0] != 254)).all()
    assert int((raspl[0] == 1).sum()) == 400
    # The pixels without observations in 2025 took the prior: flagged 3 in nodata.tif, classed.
    flags, _ = _read(config, LAYERS, "nodata")
    gap = (x - GAP[0]) ** 2 + (y - GAP[1]) ** 2 < (GAP[2] - 15) ** 2
    assert (flags[0][gap] == 3).all() and np.isin(ras[0][gap], CLASSES).all()
    assert stage_record(config, LAYERS, target).details["nodata_previous"] >= int(gap.sum())


def test_a_bad_rules_file_is_refused_before_anything_is_recoded(years, tmp_path):
    from clcplus_ops.pipeline import RECODE
    from clcplus_ops.postprocessing.recoding_rules import RecodingRulesError

    root = years["root"]
    config = years["config"].model_copy(update={"recoding": parse_config({"recoding": {
        "rules": str(_rules(tmp_path / "bad", (X0, Y0, X0 + 100, Y0 + 100), bad=True))}}).recoding})
    target = Target("demo", 2023, "A")
    run_stage(CALIBRATE, config, target)
    with pytest.raises(RecodingRulesError, match="rule 'buildings'.*fclas"):
        run_stage(RECODE, config, target)
    assert stage_record(config, RECODE, target) is None
    assert not list((root / "work" / "2023" / "A").glob("recode/*"))
