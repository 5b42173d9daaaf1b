"""Tile classification and bilateral filtering on the demo world with DEMO1's trained model:
the fast inference paths against torch fp32 eager, the classify and filter stages (outputs,
encoding, halo, re-runs, errors), and the exactness of the filtered tiles across tile edges."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from clcplus_ops.classification import inference
from clcplus_ops.classification import probabilities as probs_io
from clcplus_ops.classification.classify import ClassifyError, TimeSeriesReader, classify_tile, load_model
from clcplus_ops.config import load_config
from clcplus_ops.model.registry import ModelNotFoundError
from clcplus_ops.plan import plan_tiles, stage_record_url, store_for, tile_url
from clcplus_ops.postprocessing.bilateral import BilateralParams, bilateral_filter
from clcplus_ops.postprocessing.filtering import FilterError, filter_tile_probabilities
from clcplus_ops.sentinel2.ingest import ingest_tile

YEAR, PU = 2025, "DEMO1"


@pytest.fixture(scope="module")
def config():
    return load_config().for_layout("demo")


@pytest.fixture(scope="module")
def pair(config, demo_world):
    """Two side-by-side tiles of one MGRS square, ingested."""
    tiles = plan_tiles(load_config(), "demo", PU, YEAR).tiles
    by_id = {t.tile_id: t for t in tiles}
    for tile in tiles:
        square, row, col = tile.tile_id.split("_")[0], tile.tile_id.split("_r")[1].split("c")[0], int(tile.tile_id.split("c")[-1])
        right = by_id.get(f"{square}_r{row}c{col + 1}")
        if right is not None:
            break
    else:
        pytest.fail("DEMO1 has no two side-by-side tiles")
    for t in (tile, right):
        ingest_tile(config, PU, YEAR, t)
    return tile, right


@pytest.fixture(scope="module")
def features(config, pair, demo_model):
    """DEMO1's model and the raw features of the first tile's valid pixels."""
    store = store_for(config)
    _, model = load_model(config, PU, YEAR, demo_model["version"], store)
    base = tile_url(config, YEAR, PU, pair[0].tile_id)
    provenance = store.read_json(f"{base}/ingest.json")
    reader = TimeSeriesReader(base, provenance["features"])
    size = provenance["grid"]["height"]
    x, valid = reader.read(Window(0, 0, size, size))
    reader.close()
    return model, np.ascontiguousarray(x), valid


@pytest.fixture(scope="module")
def classified(config, pair, demo_model):
    results = [classify_tile(config, PU, YEAR, t, demo_model["version"]) for t in pair]
    filtered = [filter_tile_probabilities(config, PU, YEAR, t) for t in pair]
    return results, filtered


# --------------------------------------------------------------------------------------------
# Inference paths


def test_folded_fp32_matches_torch_eager(features, figure):
    model, x, _ = features
    reference = model.predict_proba(x)
    fast = inference.create_engine(model, "cpu", "fp32").predict_proba(x)
    agreement = inference.compare(reference, fast)
    figure(f"folded fp32 vs torch fp32 eager on {len(x):,} px of a trained model: top class "
           f"{100 * agreement.top_class_agreement:.3f} %, max |dp| {agreement.max_probability_difference:.1e}")
    assert agreement.top_class_agreement == 1.0
    assert agreement.max_probability_difference < 1e-5


@pytest.mark.skipif(not inference.native_bf16("cpu"), reason="this CPU has no native bf16 (AMX / AVX512-BF16)")
def test_bf16_agrees_with_fp32_eager_within_the_tolerances(features, figure):
    model, x, _ = features
    agreement = inference.compare(model.predict_proba(x), inference.create_engine(model, "cpu", "bf16").predict_proba(x))
    figure(f"bf16 vs torch fp32 eager on {len(x):,} px of a trained model: top class "
           f"{100 * agreement.top_class_agreement:.3f} %, max |dp| {agreement.max_probability_difference:.4f}")
    assert agreement.holds(0.999, 0.01)


def test_a_pixels_result_does_not_depend_on_its_batch(features):
    model, x, _ = features
    for precision in ("fp32", "bf16") if inference.native_bf16("cpu") else ("fp32",):
        engine = inference.create_engine(model, "cpu", precision, batch_px=1000)
        whole = engine.predict_proba(x)
        order = np.random.default_rng(0).permutation(len(x))
        shuffled = np.empty_like(whole)
        shuffled[order] = engine.predict_proba(x[order])
        assert np.array_equal(whole, shuffled)
        assert np.array_equal(whole[7:], engine.predict_proba(x[7:]))


def test_engine_choice_is_automatic_and_overridable(features):
    model, x, _ = features
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
    store = store_for(config)
    model, x, valid = features
    base = tile_url(config, YEAR, PU, pair[0].tile_id)
    with rasterio.open(probs_io.probabilities_url(base).removeprefix("file://")) as ds, \
            rasterio.open(f"{base.removeprefix('file://')}/valid_obs.tif") as counts:
        assert (ds.count, ds.dtypes[0], ds.nodata) == (11, "uint16", probs_io.NODATA)
        assert (ds.transform, ds.shape, ds.crs) == (counts.transform, counts.shape, counts.crs)
        assert ds.descriptions[0] == "1 Sealed" and ds.tags()["scale"] == "0.0001"
        stored = ds.read()
    assert ds.shape == (pair[0].shape[0] + 2 * config.grid.halo_px,) * 2
    assert np.array_equal(stored[0] != probs_io.NODATA, valid)
    sums = stored[:, valid].astype(np.int64).sum(axis=0)
    assert np.abs(sums - probs_io.SCALE).max() <= 6  # 11 bands rounded to 1e-4 each
    # The stored values are the engine's probabilities, encoded.
    record = store.read_record(stage_record_url(base, "classify"))
    engine = inference.create_engine(model, "cpu", record.details["engine"]["precision"])
    expected = np.rint(engine.predict_proba(x) * probs_io.SCALE).astype(np.uint16)
    assert np.array_equal(stored[:, valid].T, expected)
    assert record.details["model"] == classified[0][0]["model"]
    assert record.details["agreement"]["top_class_agreement"] >= 0.999


def test_classify_reruns_skip_and_forced_runs_give_the_same_bytes(config, pair, classified, demo_model):
    store = store_for(config)
    url = probs_io.probabilities_url(tile_url(config, YEAR, PU, pair[0].tile_id))
    before = store.sha256(url)
    assert classify_tile(config, PU, YEAR, pair[0], demo_model["version"])["skipped"]
    assert not classify_tile(config, PU, YEAR, pair[0], demo_model["version"], force=True)["skipped"]
    assert store.sha256(url) == before
    assert filter_tile_probabilities(config, PU, YEAR, pair[0])["skipped"]


def test_missing_model_or_time_series_fail_with_what_and_where(config, pair, tmp_path):
    elsewhere = config.model_copy(update={"store": config.store.model_copy(update={"models": (tmp_path / "models").as_uri()})})
    with pytest.raises(ModelNotFoundError, match=f"PU '{PU}'; looked in {(tmp_path / 'models').as_uri()}/{PU}"):
        classify_tile(elsewhere, PU, YEAR, pair[0])
    with pytest.raises(ModelNotFoundError, match="no model v0099"):
        classify_tile(config, PU, YEAR, pair[0], "v0099")
    other_work = config.model_copy(update={"store": config.store.model_copy(update={"work": (tmp_path / "work").as_uri()})})
    with pytest.raises(ClassifyError, match="has no time series: no ingest record"):
        classify_tile(other_work, PU, YEAR, pair[0])
    with pytest.raises(FilterError, match="has no probabilities: no classify record"):
        filter_tile_probabilities(other_work, PU, YEAR, pair[0])


# --------------------------------------------------------------------------------------------
# The filter stage


def _read(url: str) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(url.removeprefix("file://")) as ds:
        return ds.read(), ds.transform


def test_filtered_tiles_mosaic_to_exactly_the_filtered_whole(config, pair, classified):
    """Two neighbouring tiles: their probabilities agree where their halos overlap, and their
    filtered cores equal the filter applied to the probabilities mosaicked first."""
    left, right = pair
    halo, reach = config.grid.halo_px, BilateralParams.from_config(config.bilateral).extent
    (p_left, t_left), (p_right, t_right) = (_read(probs_io.probabilities_url(tile_url(config, YEAR, PU, t.tile_id)))
                                            for t in pair)
    size = left.shape[1]
    offset = round((t_right.c - t_left.c) / t_left.a)
    assert offset == size and t_right.f == t_left.f
    # The halos hold what the neighbour computes for the same pixels, bit for bit.
    assert np.array_equal(p_left[:, :, offset:], p_right[:, :, : p_left.shape[2] - offset])
    whole = np.concatenate([p_left[:, :, :offset], p_right], axis=2)
    probabilities, valid = probs_io.decode(whole)
    expected = probs_io.encode(bilateral_filter(probabilities, valid, BilateralParams.from_config(config.bilateral)), valid)
    for tile, shift in ((left, 0), (right, offset)):
        filtered, transform = _read(probs_io.filtered_url(tile_url(config, YEAR, PU, tile.tile_id)))
        assert filtered.shape[1:] == (size + 2 * (halo - reach),) * 2
        assert transform.c == (t_left.c + (shift + reach) * t_left.a)
        core = slice(halo - reach, halo - reach + size)
        got = filtered[:, core, core]
        want = expected[:, halo:halo + size, shift + halo:shift + halo + size]
        assert np.array_equal(got, want)


def test_filter_changes_little_and_keeps_probabilities(config, pair, classified):
    store = store_for(config)
    base = tile_url(config, YEAR, PU, pair[0].tile_id)
    record = store.read_record(stage_record_url(base, "filter"))
    filtered, _ = _read(probs_io.filtered_url(base))
    valid = filtered[0] != probs_io.NODATA
    assert np.abs(filtered[:, valid].astype(np.int64).sum(axis=0) - probs_io.SCALE).max() <= 6
    assert record.details["top_class_changed"] < 0.01 * record.details["valid_pixels"]
    assert record.details["halo_px"] == config.grid.halo_px - 1
    # It smooths: probabilities move (most where the classifier was unsure), the top class seldom.
    unfiltered, _ = _read(probs_io.probabilities_url(base))
    moved = np.abs(unfiltered[:, 1:-1, 1:-1].astype(np.int64) - filtered).max(axis=0)[valid]
    assert (moved > 10).mean() > 0.01


def test_classify_and_filter_with_work_on_s3(config, pair, classified, demo_model, s3_server, s3_bucket):
    """Time series, probabilities and records on a real S3 API (moto server): GDAL reads the
    features through /vsis3/ (also from the read-ahead thread) and the outputs match file://."""
    from clcplus_ops.store import S3Settings, Store

    bucket = s3_bucket[len("s3://"):].split("/")[0]
    on_s3 = config.model_copy(update={"store": config.store.model_copy(
        update={"work": f"s3://{bucket}/work", "s3_endpoint_url": s3_server})})
    store = Store(S3Settings(endpoint_url=s3_server, region=on_s3.store.s3_region))
    tile = pair[0]
    ingest_tile(on_s3, PU, YEAR, tile, store=store)
    assert not classify_tile(on_s3, PU, YEAR, tile, demo_model["version"], store=store)["skipped"]
    assert not filter_tile_probabilities(on_s3, PU, YEAR, tile, store=store)["skipped"]
    local = store_for(config)
    for url in (probs_io.probabilities_url, probs_io.filtered_url):
        with store.local_read(url(tile_url(on_s3, YEAR, PU, tile.tile_id))) as path, rasterio.open(path) as ds:
            on_s3_values = ds.read()
        with local.local_read(url(tile_url(config, YEAR, PU, tile.tile_id))) as path, rasterio.open(path) as ds:
            assert np.array_equal(on_s3_values, ds.read())
    assert classify_tile(on_s3, PU, YEAR, tile, demo_model["version"], store=store)["skipped"]
