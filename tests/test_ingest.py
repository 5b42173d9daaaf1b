"""The ingest stage end to end on a small synthetic world: exact valid-observation counts,
observations kept at their dates, bad scenes skipped and recorded, idempotent re-runs, S3."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import from_bounds

from clcplus_ops.config import parse_config
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.plan import stage_record_url, tile_url
from clcplus_ops.sentinel2 import ingest as ingest_mod
from clcplus_ops.sentinel2 import timeseries as ts
from clcplus_ops.sentinel2.ingest import NoScenesError, ingest_tile
from clcplus_ops.sentinel2.reading import is_transient, retrying, tile_grid
from clcplus_ops.sentinel2.scenes import StaticCatalogSource
from clcplus_ops.store import Store, S3Settings, join
from clcplus_ops.synthetic import build_world

YEAR = 2025
PU = "DEMO1"
TILE_ID = "33TUL_r22c37"  # a demo-grid tile (2.5 km) on the coast near Izola: land and sea
HALO = 8


def _tile():
    return tile_from_id(TILE_ID, 2_500)


def _config(root: Path, **extra):
    tile = _tile()
    xmin, ymin, xmax, ymax = tile.bounds
    pad = HALO * 10
    synthetic = (root / "synthetic").as_uri()
    data = {
        "store": {name: (root / name).as_uri() for name in ("work", "models", "samples", "products")},
        "synthetic": {"root": synthetic, "bounds": [xmin - pad, ymin - pad, xmax + pad, ymax + pad],
                      "epsg": 32633, "n_samples": 50},
        "sentinel2": {"static_catalog": f"{synthetic}/{{year}}/catalog.json"},
        "demo": {"grid": {"tile_size_m": 2500, "pu_buffer_m": 1000, "halo_px": HALO}},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data).for_layout("demo")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest-world")
    config = _config(root)
    record = build_world(config, YEAR)
    return root, config, record


@pytest.fixture(scope="module")
def ingested(world):
    root, config, _ = world
    result = ingest_tile(config, PU, YEAR, _tile())
    return root, config, result


def _read(url: str, window_bounds=None) -> np.ndarray:
    path = url[len("file://"):]
    with rasterio.open(path) as dataset:
        if window_bounds is None:
            return dataset.read()
        return dataset.read(window=from_bounds(*window_bounds, transform=dataset.transform))


def _tile_base(config):
    return tile_url(config, YEAR, PU, TILE_ID)


def test_valid_observation_counts_equal_the_generators(ingested, world, figure):
    root, config, result = ingested
    grid = tile_grid(_tile(), HALO)
    counts = _read(ingest_mod.valid_obs_url(_tile_base(config)))[0]
    truth = _read(world[2]["clear_count_url"], grid.bounds)[0]
    assert counts.shape == truth.shape == (grid.height, grid.width)
    np.testing.assert_array_equal(counts, truth)
    assert result["dates"] > 50 and counts.max() > 20
    figure(f"ingest: tile {TILE_ID} {grid.height}x{grid.width} px, {result['dates']} dates, valid obs "
           f"min {counts.min()} median {int(np.median(counts))} max {counts.max()}: equal to the generator's counts")


def test_stored_series_interpolate_the_observations_read_independently(ingested):
    """The red and NIR series are recomputed here from the COGs with plain rasterio reads and
    the NumPy reference interpolation: the stored steps are equal, and the interpolation
    evaluated on the observation dates gives back the observations."""
    root, config, _ = ingested
    base = _tile_base(config)
    start = config.time_series.window(YEAR)[0]
    source = StaticCatalogSource(config.sentinel2.static_catalog.format(year=YEAR), Store())
    scenes = sorted((s for s in source.scenes() if s.cloud_cover < config.sentinel2.max_cloud_cover_percent),
                    key=lambda s: s.datetime)
    assert {s.mgrs_square for s in scenes} == {"33TUL"}  # this tile lies in one granule only
    grid = tile_grid(_tile(), HALO)
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
        stored = _read(ingest_mod.feature_url(base, band)).reshape(len(steps), -1)
        np.testing.assert_array_equal(stored, expected[b])
    at_observations, _ = ts.interpolate_numpy(obs, valid, days, days, no_index)
    t, p = np.nonzero(valid)
    np.testing.assert_array_equal(at_observations[:, t, p], obs[t, :, p].T)
    assert len(t) > 100_000


def test_outputs_and_provenance(ingested):
    root, config, result = ingested
    base = _tile_base(config)
    store = Store()
    provenance = store.read_json(ingest_mod.provenance_url(base))
    assert provenance["features"] == [*config.sentinel2.bands, *config.sentinel2.indices]
    assert len(provenance["steps"]) == 54 and provenance["steps"][0] == "2024-10-01"
    assert provenance["scenes_skipped"] == [] and len(provenance["scenes_used"]) == result["scenes_used"]
    with rasterio.open((base + "/features/NDVI.tif")[len("file://"):]) as ds:
        assert ds.count == 54 and ds.dtypes[0] == "int16" and ds.nodata == -32768
        assert ds.descriptions[0] == "2024-10-01" and ds.descriptions[-1] == "2026-03-15"
        assert (ds.width, ds.height) == (250 + 2 * HALO, 250 + 2 * HALO)
        ndvi = ds.read()
    assert ndvi.min() >= -10_000 and ndvi.max() <= 10_000


def test_second_run_skips_and_forced_run_gives_the_same_bytes(ingested):
    root, config, _ = ingested
    base = _tile_base(config)
    record = Store().read_record(stage_record_url(base, "ingest"))
    assert ingest_tile(config, PU, YEAR, _tile())["skipped"] is True
    again = ingest_tile(config, PU, YEAR, _tile(), force=True)
    assert again["skipped"] is False
    rerun = Store().read_record(stage_record_url(base, "ingest"))
    assert rerun.checksums == record.checksums  # byte-identical outputs


def _corrupt_copy(world, tmp_path) -> tuple:
    root, _, _ = world
    shutil.copytree(root / "synthetic", tmp_path / "synthetic")
    config = _config(tmp_path)
    items = sorted((tmp_path / "synthetic" / str(YEAR) / "sentinel-2-c1-l2a").glob("*_T33TUL_*"))
    return config, items


def test_missing_and_corrupt_assets_are_skipped_and_recorded(world, tmp_path, caplog):
    config, items = _corrupt_copy(world, tmp_path)
    missing, truncated = items[10], items[20]
    (missing / "scl.tif").unlink()  # the open fails
    data = (truncated / "red.tif").read_bytes()
    (truncated / "red.tif").write_bytes(data[: len(data) // 3])  # header fine, pixels cut: the read fails
    result = ingest_tile(config, PU, YEAR, _tile())
    provenance = Store().read_json(ingest_mod.provenance_url(_tile_base(config)))
    skipped = {entry["scene_id"]: entry for entry in provenance["scenes_skipped"]}
    assert set(skipped) == {missing.name, truncated.name}
    assert skipped[missing.name]["asset"] == "SCL" and skipped[truncated.name]["asset"] == "B04"
    assert result["scenes_skipped"] == 2
    assert missing.name in caplog.text and truncated.name in caplog.text
    counts = _read(ingest_mod.valid_obs_url(_tile_base(config)))[0]
    truth = _read(world[2]["clear_count_url"], tile_grid(_tile(), HALO).bounds)[0]
    assert (counts <= truth).all() and (counts < truth).any()


def test_empty_search_names_tile_and_window(world):
    root, config, _ = world
    far = tile_from_id("33TUL_r00c00", 2_500)  # outside the synthetic world
    with pytest.raises(NoScenesError, match=r"33TUL_r00c00.*2024-10-01 to 2026-04-01"):
        ingest_tile(config, PU, YEAR, far)


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
        "sentinel2": {"static_catalog": f"s3://{bucket}/synthetic/{{year}}/catalog.json"},
        "demo": {"grid": {"tile_size_m": 2500, "pu_buffer_m": 1000, "halo_px": HALO}},
    }).for_layout("demo")
    store = Store(S3Settings(endpoint_url=endpoint, region=config.store.s3_region))
    world = build_world(config, YEAR, store=store)
    result = ingest_tile(config, PU, YEAR, tile, store=store)
    assert result["dates"] >= 15
    base = _tile_base(config)
    with store.local_read(ingest_mod.valid_obs_url(base)) as path, rasterio.open(path) as ds:
        counts = ds.read(1)
    with store.local_read(world["clear_count_url"]) as path, rasterio.open(path) as ds:
        truth = ds.read(1)
        bounds = ds.bounds
    grid = tile_grid(tile, HALO)
    window = from_bounds(bounds.left, bounds.bottom, bounds.right, bounds.top, transform=grid.transform)
    r0, c0 = int(round(window.row_off)), int(round(window.col_off))
    np.testing.assert_array_equal(counts[r0:r0 + truth.shape[0], c0:c0 + truth.shape[1]], truth)
    assert ingest_tile(config, PU, YEAR, tile, store=store)["skipped"] is True
