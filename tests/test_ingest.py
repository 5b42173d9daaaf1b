"""The ingest stage end to end on the session's one-tile synthetic world: exact valid-observation
counts, observations kept at their dates, bad scenes skipped and recorded, idempotent re-runs,
the raster profile and the scene source in the fingerprint, S3."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import from_bounds

from clcplus_ops.config import parse_config
from clcplus_ops.errors import PermanentError
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.locations import Locations
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.sentinel2 import timeseries as ts
from clcplus_ops.sentinel2.ingest import INGEST, NoScenesError
from clcplus_ops.sentinel2.reading import is_transient, retrying
from clcplus_ops.sentinel2.scenes import StaticCatalogSource
from clcplus_ops.stage import Target
from clcplus_ops.store import S3Settings, Store
from clcplus_ops.synthetic import build_world
from clcplus_ops.locations import static_catalog_template

from conftest import TILE_WORLD_HALO as HALO
from conftest import TILE_WORLD_TILE as TILE_ID
from conftest import tile_world_config

YEAR = 2025
PU = "DEMO1"


def _tile(tile_id: str = TILE_ID):
    return tile_from_id(tile_id, 2_500)


def _target(tile_id: str = TILE_ID) -> Target:
    return Target("demo", YEAR, PU, tile_id)


def ingest(config, tile_id: str = TILE_ID, **kwargs) -> dict:
    """ingest through the runner, asked for by the PU's run."""
    return run_stage(INGEST, config, _target(tile_id), **kwargs)


def _place(config, tile_id: str = TILE_ID):
    return Locations(config).tile_series(YEAR, tile_id)


@pytest.fixture(scope="module")
def ingested(tile_world, tmp_path_factory):
    config = tile_world["config"](tmp_path_factory.mktemp("ingest-work"))
    result = ingest(config)
    return config, result


def _read(url: str, window_bounds=None) -> np.ndarray:
    path = url[len("file://"):]
    with rasterio.open(path) as dataset:
        if window_bounds is None:
            return dataset.read()
        return dataset.read(window=from_bounds(*window_bounds, transform=dataset.transform))


def test_valid_observation_counts_equal_the_generators(ingested, tile_world, figure):
    config, result = ingested
    grid = _tile().grid(HALO)
    assert result["outputs"]["valid_obs"] == _place(config).valid_obs
    counts = _read(_place(config).valid_obs)[0]
    truth = _read(tile_world["record"]["clear_count_url"], grid.bounds)[0]
    assert counts.shape == truth.shape == (grid.height, grid.width)
    np.testing.assert_array_equal(counts, truth)
    assert result["dates"] > 50 and counts.max() > 20
    figure(f"ingest: tile {TILE_ID} {grid.height}x{grid.width} px, {result['dates']} dates, valid obs "
           f"min {counts.min()} median {int(np.median(counts))} max {counts.max()}: equal to the generator's counts")


def test_stored_series_interpolate_the_observations_read_independently(ingested):
    """The red and NIR series are recomputed here from the COGs with plain rasterio reads and
    the NumPy reference interpolation: the stored steps are equal, and the interpolation
    evaluated on the observation dates gives back the observations."""
    config, _ = ingested
    start = config.time_series.window(YEAR)[0]
    source = StaticCatalogSource(config.sentinel2.static_catalog.format(year=YEAR), Store())
    scenes = sorted((s for s in source.scenes() if s.cloud_cover < config.sentinel2.max_cloud_cover_percent),
                    key=lambda s: s.datetime)
    assert {s.mgrs_square for s in scenes} == {"33TUL"}  # this tile lies in one granule only
    grid = _tile().grid(HALO)
    obs, valid, days = [], [], []
    for scene in scenes:
        with rasterio.open(scene.assets["SCL"].href[len("file://"):]) as ds:
            scl = ds.read(1, window=from_bounds(*grid.bounds, transform=ds.transform))
        clear = ~np.isin(np.repeat(np.repeat(scl, 2, 0), 2, 1), [0, 2, 3, 8, 9])
        values = []
        for band in ("B04", "B08"):  # 10 m bands: no resampling in the way
            asset = scene.assets[band]
            with rasterio.open(asset.href[len("file://"):]) as ds:
                dn = ds.read(1, window=from_bounds(*grid.bounds, transform=ds.transform)).astype(float)
            values.append(np.rint(dn * asset.scale * 10_000 + asset.offset * 10_000).ravel())
        obs.append(values)
        valid.append(clear.ravel())
        days.append(float((scene.acquisition_date - start).days))
    obs, valid, days = np.array(obs, dtype=np.int16), np.array(valid), np.array(days)
    no_index = np.zeros((0, 2), dtype=np.int64)
    steps = np.array([(d - start).days for d in config.time_series.steps(YEAR)], dtype=float)
    expected, counts = ts.interpolate_numpy(obs, valid, days, steps, no_index)
    for b, band in enumerate(("B04", "B08")):
        stored = _read(_place(config).feature(band)).reshape(len(steps), -1)
        np.testing.assert_array_equal(stored, expected[b])
    at_observations, _ = ts.interpolate_numpy(obs, valid, days, days, no_index)
    t, p = np.nonzero(valid)
    np.testing.assert_array_equal(at_observations[:, t, p], obs[t, :, p].T)
    assert len(t) > 100_000


def test_outputs_provenance_and_record(ingested):
    config, result = ingested
    place = _place(config)
    names = [*config.sentinel2.bands, *config.sentinel2.indices]
    assert result["outputs"] == {**{n: place.feature(n) for n in names}, "valid_obs": place.valid_obs,
                                 "provenance": place.provenance}
    provenance = Store().read_json(place.provenance)
    assert provenance["features"] == names
    assert len(provenance["steps"]) == 54 and provenance["steps"][0] == "2024-10-01"
    assert provenance["scenes_skipped"] == [] and len(provenance["scenes_used"]) == result["scenes_used"]
    assert provenance["grid"] == {**_tile().grid(HALO).to_dict(), "halo_px": HALO}
    profile = config.rasters.features
    with rasterio.open(place.feature("NDVI")[len("file://"):]) as ds:
        assert ds.count == 54 and ds.dtypes[0] == "int16" and ds.nodata == -32768
        assert ds.descriptions[0] == "2024-10-01" and ds.descriptions[-1] == "2026-03-15"
        assert (ds.width, ds.height) == (250 + 2 * HALO, 250 + 2 * HALO)
        assert ds.block_shapes[0] == (profile.block_px, profile.block_px)
        assert ds.compression.value.lower() == profile.compress
        ndvi = ds.read()
    assert ndvi.min() >= -10_000 and ndvi.max() <= 10_000
    record = stage_record(config, INGEST, _target())
    assert record.details["scenes_used"] == result["scenes_used"] and record.details["dates"] == result["dates"]
    assert {"read_s", "compute_s", "write_s", "reads", "seconds"} <= set(record.details)
    assert {k: result[k] for k in INGEST.summary} == {k: record.details[k] for k in INGEST.summary}


def test_second_run_skips_and_forced_run_gives_the_same_bytes(ingested):
    config, _ = ingested
    record = stage_record(config, INGEST, _target())
    assert run_stage(INGEST, config, _target())["skipped"] is True
    again = run_stage(INGEST, config, _target(), force=True)
    assert again["skipped"] is False
    rerun = stage_record(config, INGEST, _target())
    assert rerun.fingerprint == record.fingerprint
    assert {n: f["sha256"] for n, f in rerun.files.items()} == {n: f["sha256"] for n, f in record.files.items()}


class _Renamed:
    """A scene source as given by a caller (a shared one, a test's stub): the scenes of
    ``source`` under another description."""

    def __init__(self, source, name: str):
        self.source, self.name = source, name

    def search(self, *args, **kwargs):
        return self.source.search(*args, **kwargs)

    def describe(self) -> str:
        return self.name


def test_profile_and_scene_source_enter_the_fingerprint(tile_world, tmp_path):
    config = tile_world["config"](tmp_path)
    first = ingest(config)
    place = _place(config)
    fingerprint = stage_record(config, INGEST, _target()).fingerprint

    # The raster profile comes from the configuration: another block size recomputes.
    small_blocks = config.model_copy(update={"rasters": config.rasters.model_copy(
        update={"features": config.rasters.features.model_copy(update={"block_px": 128})})})
    assert run_stage(INGEST, small_blocks, _target())["skipped"] is False
    with rasterio.open(place.valid_obs[len("file://"):]) as ds:
        assert ds.block_shapes[0] == (128, 128)

    # A scene source given as a run option is used, and its description enters the fingerprint.
    catalogue = StaticCatalogSource(config.sentinel2.static_catalog.format(year=YEAR), Store())
    stub = _Renamed(catalogue, "stub archive A")
    result = run_stage(INGEST, config, _target(), options={"scene_source": stub})
    assert result["skipped"] is False and result["dates"] == first["dates"]
    assert Store().read_json(place.provenance)["scene_source"] == "stub archive A"
    assert stage_record(config, INGEST, _target()).fingerprint != fingerprint
    assert run_stage(INGEST, config, _target(), options={"scene_source": stub})["skipped"] is True
    # Back to the configured source: the first fingerprint again.
    assert run_stage(INGEST, config, _target())["skipped"] is False
    assert stage_record(config, INGEST, _target()).fingerprint == fingerprint


def _corrupt_copy(tile_world, tmp_path) -> tuple:
    shutil.copytree(tile_world["root"] / "synthetic", tmp_path / "synthetic")
    config = tile_world_config(tmp_path)
    items = sorted((tmp_path / "synthetic" / str(YEAR) / "sentinel-2-c1-l2a").glob("*_T33TUL_*"))
    return config, items


def test_missing_and_corrupt_assets_are_skipped_and_recorded(tile_world, tmp_path, caplog):
    config, items = _corrupt_copy(tile_world, tmp_path)
    missing, truncated = items[10], items[20]
    (missing / "scl.tif").unlink()  # the open fails
    data = (truncated / "red.tif").read_bytes()
    (truncated / "red.tif").write_bytes(data[: len(data) // 3])  # header fine, pixels cut: the read fails
    result = ingest(config)
    provenance = Store().read_json(_place(config).provenance)
    skipped = {entry["scene_id"]: entry for entry in provenance["scenes_skipped"]}
    assert set(skipped) == {missing.name, truncated.name}
    assert skipped[missing.name]["asset"] == "SCL" and skipped[truncated.name]["asset"] == "B04"
    assert result["scenes_skipped"] == 2
    assert missing.name in caplog.text and truncated.name in caplog.text
    counts = _read(_place(config).valid_obs)[0]
    truth = _read(tile_world["record"]["clear_count_url"], _tile().grid(HALO).bounds)[0]
    assert (counts <= truth).all() and (counts < truth).any()


def test_empty_search_names_tile_and_window_and_is_permanent(ingested):
    config, _ = ingested
    far = "33TUL_r00c00"  # outside the synthetic world
    with pytest.raises(NoScenesError, match=r"33TUL_r00c00.*2024-10-01 to 2026-04-01") as raised:
        ingest(config, far)
    assert isinstance(raised.value, PermanentError) and isinstance(raised.value, INGEST.permanent_errors)
    assert stage_record(config, INGEST, _target(far)) is None


def test_retries_only_transient_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RasterioIOError("CURL error: HTTP response code: 503")
        return "ok"

    assert retrying(flaky, what="x", retries=3, sleep=lambda s: None) == "ok" and len(calls) == 3
    calls.clear()

    def corrupt():
        calls.append(1)
        raise RasterioIOError("'x.tif' not recognized as being in a supported file format")

    with pytest.raises(RasterioIOError):
        retrying(corrupt, what="x", retries=3, sleep=lambda s: None)
    assert len(calls) == 1
    assert is_transient(TimeoutError()) and not is_transient(ValueError("boom"))
    with pytest.raises(RasterioIOError):  # retries run out
        retrying(lambda: (_ for _ in ()).throw(RasterioIOError("Connection timed out")), what="x", retries=2,
                 sleep=lambda s: None)


def test_ingest_with_world_and_work_on_s3(s3_server, s3_bucket):
    """World, catalogue and outputs on a real S3 API (moto server): GDAL reads /vsis3/."""
    endpoint, bucket = s3_server, s3_bucket[len("s3://"):].split("/")[0]
    tile = _tile()
    xmin, ymin, xmax, ymax = tile.bounds
    config = parse_config({
        "store": {"work": f"s3://{bucket}/work", "models": f"s3://{bucket}/models", "samples": f"s3://{bucket}/samples",
                  "products": f"s3://{bucket}/products", "s3_endpoint_url": endpoint},
        # a small world (part of the tile, an acquisition every 25 days) keeps this test quick:
        # the S3 API server takes ~30 ms a request and every scene is 14 objects
        "synthetic": {"root": f"s3://{bucket}/synthetic", "bounds": [xmin - 80, ymax - 640, xmin + 560, ymax + 80],
                      "epsg": 32633, "n_samples": 20, "revisit_days": 25},
        "sentinel2": {"static_catalog": static_catalog_template(f"s3://{bucket}/synthetic")},
        "demo": {"grid": {"tile_size_m": 2500, "pu_buffer_m": 1000, "halo_px": HALO}},
    }).for_layout("demo")
    store = Store(S3Settings(endpoint_url=endpoint, region=config.store.s3_region))
    world = build_world(config, YEAR, store=store)
    result = ingest(config, store=store)
    assert result["dates"] >= 15
    assert result["outputs"]["valid_obs"] == _place(config).valid_obs
    assert result["outputs"]["valid_obs"].startswith(f"s3://{bucket}/work/")
    with store.local_read(result["outputs"]["valid_obs"]) as path, rasterio.open(path) as ds:
        counts = ds.read(1)
    with store.local_read(world["clear_count_url"]) as path, rasterio.open(path) as ds:
        truth = ds.read(1)
        bounds = ds.bounds
    grid = tile.grid(HALO)
    window = from_bounds(bounds.left, bounds.bottom, bounds.right, bounds.top, transform=grid.transform)
    r0, c0 = int(round(window.row_off)), int(round(window.col_off))
    np.testing.assert_array_equal(counts[r0:r0 + truth.shape[0], c0:c0 + truth.shape[1]], truth)
    assert run_stage(INGEST, config, _target(), store=store)["skipped"] is True
