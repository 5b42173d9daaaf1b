"""Tile classification and bilateral filtering on two neighbouring tiles of the demo world: the
fast inference paths against torch fp32 eager, the classify and filter stages through the runner
(outputs, encoding, halo, re-runs, errors, damaged inputs), the exactness of the filtered tiles
across tile edges, the PU join and the demo's map accuracy.

Inference and filtering do not depend on how a model was trained, so these tests classify with a
randomly initialised TempCNN (seeded, with random batch-norm statistics so that folding them is
tested) registered in a registry of their own. The bf16 agreement on a trained model is measured by
scripts/bench_inference.py; classification checks it on every tile at run time anyway."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio

from clcplus_ops.classification import area, inference
from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.classification.classify import CLASSIFY, ClassifyError
from clcplus_ops.config import load_config
from clcplus_ops.demo import map_accuracy
from clcplus_ops.errors import InvalidIdError, StageInputError
from clcplus_ops.locations import Locations
from clcplus_ops.model import registry
from clcplus_ops.model.registry import ModelNotFoundError
from clcplus_ops.plan import DEFINE_TILE, JOIN_TILES, PLAN_TILES, planned_tiles
from clcplus_ops.postprocessing.bilateral import BilateralParams, bilateral_filter
from clcplus_ops.postprocessing.filtering import FILTER
from clcplus_ops.runner import run_stage, stage_record, store_for
from clcplus_ops.sentinel2.ingest import INGEST
from clcplus_ops.sentinel2.timeseries import feature_names
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.stage import Target
from clcplus_ops.store import as_url
from conftest import random_tempcnn, register_model

YEAR, PU, LAYOUT = 2025, "DEMO1", "demo"


def target(tile_id: str) -> Target:
    return Target(LAYOUT, YEAR, PU, tile_id)


@pytest.fixture(scope="module")
def config(demo_world, tmp_path_factory):
    """The session's configuration (its synthetic world) with this module's own work store and
    model registry, so the random model never reaches another test."""
    root = tmp_path_factory.mktemp("classify")
    base = load_config().for_layout(LAYOUT)
    stores = {"work": as_url(root / "work"), "models": as_url(root / "models")}
    return base.model_copy(update={"store": base.store.model_copy(update=stores)})


@pytest.fixture(scope="module")
def pair(config):
    """Two side-by-side tiles of one MGRS square, defined and ingested."""
    run_stage(PLAN_TILES, config, Target(LAYOUT, YEAR, PU))
    ids = set(planned_tiles(config, LAYOUT, PU, YEAR))
    for tile_id in sorted(ids):
        square, rc = tile_id.split("_")
        row, col = rc[1:].split("c")
        right = f"{square}_r{row}c{int(col) + 1:02d}"
        if right in ids:
            break
    else:
        pytest.fail("DEMO1 has no two side-by-side tiles")
    for t in (tile_id, right):
        run_stage(DEFINE_TILE, config, target(t))
        run_stage(INGEST, config, target(t))
    return tile_id, right


def read_features(config, tile_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(x int16 (valid pixels, features, steps), valid (rows, cols)) of an ingested tile, read
    here with rasterio (not with the stage's reader)."""
    place = Locations(config).tile_series(YEAR, tile_id)
    with rasterio.open(place.valid_obs.removeprefix("file://")) as ds:
        valid = ds.read(1) > 0
    s2 = config.sentinel2
    stack = []
    for name in feature_names(s2.bands, s2.indices):
        with rasterio.open(place.feature(name).removeprefix("file://")) as ds:
            stack.append(ds.read()[:, valid])
    return np.ascontiguousarray(np.stack(stack).transpose(2, 0, 1)), valid


def classified_area(config, tile_id: str) -> np.ndarray:
    """bool (rows, cols): the tile's pixels in DEMO1's area plus buffer and margin."""
    grid = tile_from_id(tile_id, config.grid.tile_size_m, config.grid.pixel_size_m).grid(config.grid.halo_px)
    return area.needed(config, LAYOUT, PU, grid)


@pytest.fixture(scope="module")
def features(config, pair):
    """The random model (registered as DEMO1's) and the raw features of the first tile."""
    x, valid = read_features(config, pair[0])
    model = random_tempcnn(config, x)
    version = register_model(config, model, PU)
    return model, x, valid, version


@pytest.fixture(scope="module")
def classified(config, pair, features):
    results = [run_stage(CLASSIFY, config, target(t)) for t in pair]
    filtered = [run_stage(FILTER, config, target(t)) for t in pair]
    return results, filtered


# --------------------------------------------------------------------------------------------
# Inference paths


def test_folded_fp32_matches_torch_eager(features, figure):
    model, x, _, _ = features
    x = x[::8]  # torch eager is the slow part
    reference = model.predict_proba(x)
    fast = inference.create_engine(model, "cpu", "fp32").predict_proba(x)
    agreement = inference.compare(reference, fast)
    figure(f"folded fp32 vs torch fp32 eager on {len(x):,} px of a random model: top class "
           f"{100 * agreement.top_class_agreement:.3f} %, max |dp| {agreement.max_probability_difference:.1e}")
    assert agreement.top_class_agreement == 1.0
    assert agreement.max_probability_difference < 1e-5
    assert np.bincount(reference.argmax(axis=1)).max() < 0.5 * len(x)  # the model tells pixels apart


@pytest.mark.skipif(not inference.native_bf16("cpu"), reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
def test_bf16_is_used_only_where_it_agrees_with_fp32_eager(features, figure):
    """The runtime guard: bf16 is kept where it holds the tolerances on the tile's check pixels,
    else the tile runs in fp32. An untrained model's flat probabilities are where bf16 rounding
    shows (a trained model's agreement is scripts/bench_inference.py's figure)."""
    model, x, _, _ = features
    x = x[::4]
    bf16 = inference.create_engine(model, "cpu", "bf16")
    agreement = inference.compare(model.predict_proba(x), bf16.predict_proba(x))
    figure(f"bf16 vs torch fp32 eager on {len(x):,} px of the untrained test model: top class "
           f"{100 * agreement.top_class_agreement:.3f} %, max |dp| {agreement.max_probability_difference:.4f}")
    assert agreement.top_class_agreement > 0.98 and agreement.max_probability_difference < 0.05
    loose = (agreement.top_class_agreement - 1e-6, agreement.max_probability_difference + 1e-6)
    kept, held = inference.check_agreement(bf16, x, *loose)
    assert kept.precision == "bf16" and held == agreement
    strict = (min(1.0, agreement.top_class_agreement + 1e-3), agreement.max_probability_difference / 2)
    fallback, checked = inference.check_agreement(bf16, x, *strict)
    assert fallback.precision == "fp32" and checked.holds(0.999, 1e-5)


def test_a_pixels_result_does_not_depend_on_its_batch(features):
    model, x, _, _ = features
    x = x[::4]
    for precision in ("fp32", "bf16") if inference.native_bf16("cpu") else ("fp32",):
        engine = inference.create_engine(model, "cpu", precision, batch_px=1000)
        whole = engine.predict_proba(x)
        order = np.random.default_rng(0).permutation(len(x))
        shuffled = np.empty_like(whole)
        shuffled[order] = engine.predict_proba(x[order])
        assert np.array_equal(whole, shuffled)
        assert np.array_equal(whole[7:], engine.predict_proba(x[7:]))


def test_engine_choice_is_automatic_and_overridable(features):
    model, x, _, _ = features
    auto = inference.create_engine(model)
    assert auto.device == ("cuda" if inference.cuda_available() else "cpu")
    assert auto.precision == ("bf16" if inference.native_bf16(auto.device) else "fp32")
    assert inference.create_engine(model, "cpu", "fp32").precision == "fp32"
    if not inference.cuda_available():
        with pytest.raises(inference.InferenceSetupError, match="no CUDA GPU"):
            inference.create_engine(model, "cuda")
    # A bf16 engine that misses the tolerances falls back to fp32 for the tile.
    strict, agreement = inference.check_agreement(inference.create_engine(model, "cpu", "bf16"), x[:512], 1.0, 0.0)
    assert strict.precision == "fp32" and agreement.max_probability_difference < 1e-5
    with pytest.raises(ValueError, match="expected features"):
        auto.predict_proba(x[:, :, :10])


# --------------------------------------------------------------------------------------------
# The classify stage


def test_probabilities_raster_covers_the_tile_with_its_halo(config, pair, classified, features):
    model, x, valid, version = features
    place = Locations(config).tile(YEAR, PU, pair[0])
    result = classified[0][0]
    assert result["outputs"]["probabilities"] == place.probabilities
    # Pixels with observations in the PU's classified area; no data elsewhere.
    kept = valid & classified_area(config, pair[0])
    x = x[kept[valid]]
    valid = kept
    assert (result["model"], result["valid_pixels"]) == (version, int(valid.sum()))
    with rasterio.open(place.probabilities.removeprefix("file://")) as ds, \
            rasterio.open(Locations(config).tile_series(YEAR, pair[0]).valid_obs.removeprefix("file://")) as counts:
        assert (ds.count, ds.dtypes[0], ds.nodata) == (11, "uint16", probs_io.NODATA)
        assert (ds.transform, ds.shape, ds.crs) == (counts.transform, counts.shape, counts.crs)
        assert ds.descriptions[0] == "1 Sealed" and ds.tags()["scale"] == "0.0001"
        assert ds.profile["blockxsize"] == config.rasters.probabilities.block_px
        assert ds.tags()["model"] == f"{PU}/{version}"
        stored = ds.read()
    assert ds.shape == (250 + 2 * config.grid.halo_px,) * 2
    assert np.array_equal(stored[0] != probs_io.NODATA, valid)
    sums = stored[:, valid].astype(np.int64).sum(axis=0)
    assert np.abs(sums - probs_io.SCALE).max() <= 6  # 11 bands rounded to 1e-4 each
    # The stored values are the engine's probabilities of the features, encoded.
    record = stage_record(config, CLASSIFY, target(pair[0]))
    engine = inference.create_engine(model, "cpu", record.details["engine"]["precision"])
    expected = np.rint(engine.predict_proba(x) * probs_io.SCALE).astype(np.uint16)
    assert np.array_equal(stored[:, valid].T, expected)
    assert record.details["model"] == version and record.details["valid_pixels"] == len(x)
    assert record.details["model_url"] == Locations(config).model(PU, version)
    assert record.details["agreement"]["pixels"] > 0
    assert {"read_s", "compute_s", "write_s", "pixels_per_second", "seconds"} <= set(record.details)


def test_classify_reruns_skip_and_forced_runs_give_the_same_bytes(config, pair, classified):
    store = store_for(config)
    url = Locations(config).tile(YEAR, PU, pair[0]).probabilities
    before = store.sha256(url)
    assert run_stage(CLASSIFY, config, target(pair[0]))["skipped"]
    assert not run_stage(CLASSIFY, config, target(pair[0]), force=True)["skipped"]
    assert store.sha256(url) == before
    assert run_stage(FILTER, config, target(pair[0]))["skipped"]  # same probabilities: current


def test_a_new_model_reclassifies_and_a_named_version_is_used(config, pair, classified, features, tmp_path):
    model, x, _, version = features
    other = config.model_copy(update={"store": config.store.model_copy(update={"models": as_url(tmp_path / "models")})})
    assert register_model(other, model, PU) == version  # the same weights as the module's registry holds
    newer = register_model(other, random_tempcnn(config, x, seed=1), PU)
    result = run_stage(CLASSIFY, other, target(pair[0]))  # the latest: the new model
    assert not result["skipped"] and result["model"] == newer
    back = run_stage(CLASSIFY, other, target(pair[0]), options={"model_version": version})
    assert not back["skipped"] and back["model"] == version
    # The same version and weights, wherever registered, are the same model: current again.
    assert run_stage(CLASSIFY, config, target(pair[0]))["skipped"]
    assert run_stage(FILTER, config, target(pair[0]))["skipped"]


def test_missing_model_or_time_series_fail_with_what_and_where(config, pair, classified, tmp_path):
    elsewhere = config.model_copy(update={"store": config.store.model_copy(update={"models": as_url(tmp_path / "models")})})
    with pytest.raises(ModelNotFoundError, match=f"PU '{PU}'; looked in {as_url(tmp_path / 'models')}/{PU}"):
        run_stage(CLASSIFY, elsewhere, target(pair[0]))
    with pytest.raises(ModelNotFoundError, match="no model v0099"):
        run_stage(CLASSIFY, config, target(pair[0]), options={"model_version": "v0099"})
    with pytest.raises(InvalidIdError, match="'v99' is not like v0001"):
        run_stage(CLASSIFY, config, target(pair[0]), options={"model_version": "v99"})
    assert {ModelNotFoundError, ClassifyError} <= set(CLASSIFY.permanent_errors)
    other_work = config.model_copy(update={"store": config.store.model_copy(update={"work": as_url(tmp_path / "work")})})
    with pytest.raises(StageInputError, match=f"classify {PU} {pair[0]} {YEAR}: no ingest record at .*; run ingest first"):
        run_stage(CLASSIFY, other_work, target(pair[0]))
    with pytest.raises(StageInputError, match="no classify record at .*; run classify first"):
        run_stage(FILTER, other_work, target(pair[0]))


def test_a_model_for_other_time_series_is_refused(config, pair, classified, features, tmp_path):
    model, x, _, _ = features
    other = config.model_copy(update={"store": config.store.model_copy(update={"models": as_url(tmp_path / "models")})})
    s2 = config.sentinel2
    card = {"model": {"input": {"features": feature_names(s2.bands, s2.indices)[:-1], "steps": 54}}}
    registry.register_model(store_for(other), Locations(other).models, PU, {"model.pt": model.to_bytes()}, card)
    with pytest.raises(ClassifyError, match=r"does not fit this configuration's time series: features: model"):
        run_stage(CLASSIFY, other, target(pair[0]), force=True)


READ_DAMAGED = """
import sys
import rasterio
from rasterio.windows import Window
from clcplus_ops.classification.classify import TimeSeriesReader
from clcplus_ops.errors import StageInputError
from clcplus_ops.stage import Input

def opener(url):
    return rasterio.open(url.removeprefix("file://"))

def read_bytes(url):
    return open(url.removeprefix("file://"), "rb").read()

*features, valid_obs = sys.argv[1:]
inputs = [Input("ingest", url.rsplit("/", 1)[1][:-4], url, opener, read_bytes) for url in features]
try:
    with TimeSeriesReader(inputs, Input("ingest", "valid_obs", valid_obs, opener, read_bytes)) as reader:
        for row in range(0, reader.counts.height, 64):
            reader.read(Window(0, row, reader.counts.width, min(64, reader.counts.height - row)))
except StageInputError as error:
    print(error)
"""


def test_a_damaged_feature_file_fails_naming_it(config, pair, classified, tmp_path):
    """A truncated feature file: the stage refuses it before reading (its size is not the
    recorded one), and the reader, given it anyway, fails naming the file, without crashing
    (its threads end before the rasters are closed; it used to die with a segmentation fault).
    The reader runs in a subprocess, so that a crash fails this test only."""
    import subprocess
    import sys

    place = Locations(config).tile_series(YEAR, pair[1])
    path = place.feature("B08").removeprefix("file://")
    saved = tmp_path / "B08.tif"
    shutil.copyfile(path, saved)
    try:
        with open(path, "r+b") as fh:
            fh.truncate(saved.stat().st_size // 2)
        with pytest.raises(StageInputError, match=r"input of ingest is damaged: B08 has \d+ bytes, its record says"):
            run_stage(CLASSIFY, config, target(pair[1]), force=True)
        s2 = config.sentinel2
        urls = [place.feature(name) for name in feature_names(s2.bands, s2.indices)]
        done = subprocess.run([sys.executable, "-c", READ_DAMAGED, *urls, place.valid_obs], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"the reader crashed ({done.returncode}): {done.stderr[-2000:]}"
        assert f"input B08 of ingest ({place.feature('B08')}) cannot be read: " in done.stdout
        assert "failed" in done.stdout.split("cannot be read: ")[1]  # GDAL's reason, not rasterio's pointer to it
    finally:
        shutil.copyfile(saved, path)
    assert run_stage(CLASSIFY, config, target(pair[1]))["skipped"]  # the restored file verifies again


# --------------------------------------------------------------------------------------------
# The filter stage


def _read(url: str) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(url.removeprefix("file://")) as ds:
        return ds.read(), ds.transform


def test_filtered_tiles_mosaic_to_exactly_the_filtered_whole(config, pair, classified):
    """Two neighbouring tiles: their probabilities agree where their halos overlap, and their
    filtered cores equal the filter applied to the probabilities mosaicked first."""
    params = BilateralParams.from_config(config.bilateral)
    halo, reach = config.grid.halo_px, params.extent
    places = [Locations(config).tile(YEAR, PU, t) for t in pair]
    (p_left, t_left), (p_right, t_right) = (_read(place.probabilities) for place in places)
    assert classified[1][0]["outputs"]["filtered"] == places[0].filtered
    size = 250
    offset = round((t_right.c - t_left.c) / t_left.a)
    assert offset == size and t_right.f == t_left.f
    # The halos hold what the neighbour computes for the same pixels, bit for bit.
    assert np.array_equal(p_left[:, :, offset:], p_right[:, :, : p_left.shape[2] - offset])
    whole = np.concatenate([p_left[:, :, :offset], p_right], axis=2)
    probabilities, valid = probs_io.decode(whole)
    expected = probs_io.encode(bilateral_filter(probabilities, valid, params), valid)
    for place, shift in ((places[0], 0), (places[1], offset)):
        filtered, transform = _read(place.filtered)
        assert filtered.shape[1:] == (size + 2 * (halo - reach),) * 2
        assert transform.c == (t_left.c + (shift + reach) * t_left.a)
        core = slice(halo - reach, halo - reach + size)
        got = filtered[:, core, core]
        want = expected[:, halo:halo + size, shift + halo:shift + halo + size]
        assert np.array_equal(got, want)


def test_only_the_pu_area_is_classified_and_what_its_products_read_is_unchanged(config, pair, classified,
                                                                                 tmp_path_factory):
    """``inference.pu_area_only``: a tile partly beyond DEMO1's buffer is classified within the
    buffer plus margin only (no data beyond). Wherever the mosaic and the blending can read the
    PU's filtered probabilities (its buffer, two blending-lattice cells and the resampling's two
    pixels), they are the bytes of the whole tile classified and filtered."""
    from clcplus_ops.geo.grid import Grid
    from clcplus_ops.geo.tile_index import tile_index

    tiles = tile_index(config.layout_path(LAYOUT), config.grid)[PU]
    partial = next(t for t in sorted(tiles) if 0.2 < classified_area(config, t).mean() < 0.9)
    whole = config.model_copy(update={
        "inference": config.inference.model_copy(update={"pu_area_only": False}),
        "store": config.store.model_copy(update={"work": as_url(tmp_path_factory.mktemp("whole-tiles") / "work")})})
    results = {}
    for name, c in (("area", config), ("whole", whole)):
        run_stage(DEFINE_TILE, c, target(partial))
        run_stage(INGEST, c, target(partial))
        results[name] = run_stage(CLASSIFY, c, target(partial)), run_stage(FILTER, c, target(partial))
    (area_classify, area_filter), (whole_classify, whole_filter) = results["area"], results["whole"]
    needed = classified_area(config, partial)
    assert 0 < area_classify["valid_pixels"] < whole_classify["valid_pixels"]
    assert stage_record(config, CLASSIFY, target(partial)).details["area_pixels"] == int(needed.sum())
    probabilities, _ = _read(area_classify["outputs"]["probabilities"])
    assert (probabilities[:, ~needed] == probs_io.NODATA).all()

    (a, _), (b, _) = _read(area_filter["outputs"]["filtered"]), _read(whole_filter["outputs"]["filtered"])
    with rasterio.open(area_filter["outputs"]["filtered"].removeprefix("file://")) as ds:
        filtered_grid = Grid.of_dataset(ds)
    read_by_products = area.within(config, LAYOUT, PU, filtered_grid, config.grid.pu_buffer_m
                                   + 2 * config.blending.distance_cell_m + 2 * config.grid.pixel_size_m)
    assert read_by_products.any() and not read_by_products.all()
    assert np.array_equal(a[:, read_by_products], b[:, read_by_products])
    assert area_filter["valid_pixels"] < whole_filter["valid_pixels"]


def test_filter_smooths_and_keeps_probabilities(config, pair, classified):
    place = Locations(config).tile(YEAR, PU, pair[0])
    record = stage_record(config, FILTER, target(pair[0]))
    filtered, _ = _read(place.filtered)
    valid = filtered[0] != probs_io.NODATA
    assert np.abs(filtered[:, valid].astype(np.int64).sum(axis=0) - probs_io.SCALE).max() <= 6
    assert record.details["valid_pixels"] == int(valid.sum())
    assert record.details["halo_px"] == config.grid.halo_px - 1
    unfiltered, _ = _read(place.probabilities)
    before = unfiltered[:, 1:-1, 1:-1].argmax(axis=0)[valid]
    recount = int((before != filtered.argmax(axis=0)[valid]).sum())  # of the stored values: ties may differ
    assert abs(record.details["top_class_changed"] - recount) <= 0.001 * valid.sum()
    assert 0 < record.details["top_class_changed"] < record.details["valid_pixels"]
    # It smooths: probabilities move.
    moved = np.abs(unfiltered[:, 1:-1, 1:-1].astype(np.int64) - filtered).max(axis=0)[valid]
    assert (moved > 10).mean() > 0.01


def test_classify_and_filter_with_work_on_s3(config, pair, classified, s3_server, s3_bucket):
    """Time series, probabilities and records on a real S3 API (moto server): GDAL reads the
    features through /vsis3/ (also from the reading threads) and the outputs match file://."""
    from s3_server import FAKE_CREDENTIALS

    from clcplus_ops.store import S3Settings, Store

    on_s3 = config.model_copy(update={"store": config.store.model_copy(
        update={"work": f"{s3_bucket}/work", "s3_endpoint_url": s3_server})})
    # Credentials as plain settings, as a deployment hands them over (not from the environment).
    store = Store(S3Settings(endpoint_url=s3_server, region=on_s3.store.s3_region,
                             access_key_id=FAKE_CREDENTIALS["aws_access_key_id"],
                             secret_access_key=FAKE_CREDENTIALS["aws_secret_access_key"]))
    tile = target(pair[0])
    for stage in (DEFINE_TILE, INGEST):
        run_stage(stage, on_s3, tile, store=store)
    classified_s3 = run_stage(CLASSIFY, on_s3, tile, store=store)
    filtered_s3 = run_stage(FILTER, on_s3, tile, store=store)
    assert not classified_s3["skipped"] and not filtered_s3["skipped"]
    local = store_for(config)
    for name, url in (("probabilities", classified_s3["outputs"]["probabilities"]),
                      ("filtered", filtered_s3["outputs"]["filtered"])):
        assert url.startswith("s3://")
        local_url = classified[0 if name == "probabilities" else 1][0]["outputs"][name]
        assert store.sha256(url) == local.sha256(local_url)
    assert run_stage(CLASSIFY, on_s3, tile, store=store)["skipped"]


# --------------------------------------------------------------------------------------------
# The PU's join and the demo's map accuracy


def test_join_and_map_accuracy_over_the_planned_tiles(config, pair, classified, demo_world):
    plan = run_stage(PLAN_TILES, config, Target(LAYOUT, YEAR, PU), options={"only_tiles": list(pair)})
    assert plan["tiles"] == 2
    joined = run_stage(JOIN_TILES, config, Target(LAYOUT, YEAR, PU))
    assert joined["tiles"] == 2 and not joined["skipped"]
    assert sorted(store_for(config).read_json(joined["outputs"]["tiles_done"])["tiles"]) == sorted(pair)
    assert run_stage(JOIN_TILES, config, Target(LAYOUT, YEAR, PU))["skipped"]
    accuracy = map_accuracy(config, YEAR, PU, demo_world["truth_url"])
    halo = config.grid.halo_px
    in_area = sum(int(classified_area(config, t)[halo:-halo, halo:-halo].sum()) for t in pair)
    assert accuracy["tiles"] == 2 and accuracy["pixels"] > 0.9 * in_area > 0
    for key in ("overall_accuracy_classified", "overall_accuracy_filtered", "changed_by_filter"):
        assert 0 <= accuracy[key] <= 1
    assert accuracy["changed_by_filter"] > 0  # the filtered map is read, not the classified one twice
