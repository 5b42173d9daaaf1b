"""Sample time-series extraction: the series of a sample equals the ingested tile's features at
that pixel (same scenes, compositing, cloud mask and interpolation), read from sample windows
only; tile assignment depends on the location only; re-runs skip."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import rasterio

from clcplus_ops.config import parse_config
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.model.extraction import (
    assign_tiles, cells, extract_tile_samples, pixel_of, read_series, series_url,
)
from clcplus_ops.plan import tile_url
from clcplus_ops.sentinel2 import timeseries as ts
from clcplus_ops.sentinel2.ingest import feature_url, ingest_tile, valid_obs_url
from clcplus_ops.sentinel2.reading import Grid, tile_grid
from clcplus_ops.store import Store
from clcplus_ops.synthetic import build_world

YEAR = 2025
PU = "DEMO1"
TILE_ID = "33TUL_r22c37"
HALO = 8


def _config(root: Path):
    tile = tile_from_id(TILE_ID, 2_500)
    xmin, ymin, xmax, ymax = tile.bounds
    pad = HALO * 10
    synthetic = (root / "synthetic").as_uri()
    return parse_config({
        "store": {name: (root / name).as_uri() for name in ("work", "models", "samples", "products")},
        "synthetic": {"root": synthetic, "bounds": [xmin - pad, ymin - pad, xmax + pad, ymax + pad],
                      "epsg": 32633, "n_samples": 60},
        "sentinel2": {"static_catalog": f"{synthetic}/{{year}}/catalog.json"},
        # Small cells, so the samples fall in several windows.
        "time_series": {"block_px": 256},
        "demo": {"grid": {"tile_size_m": 2500, "pu_buffer_m": 1000, "halo_px": HALO}},
    }).for_layout("demo")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract-world")
    config = _config(root)
    record = build_world(config, YEAR)
    rows = list(csv.DictReader(io.StringIO(Store().read_text(record["samples_csv_url"]))))
    return config, rows


def test_sample_series_equal_the_ingested_features_at_their_pixels(world):
    config, rows = world
    tile = tile_from_id(TILE_ID, 2_500)
    ids = [r["sample_id"] for r in rows]
    lon = np.array([float(r["lon"]) for r in rows])
    lat = np.array([float(r["lat"]) for r in rows])
    inside = assign_tiles([tile], lon, lat) == 0
    assert inside.sum() >= 40
    ids = [i for i, ok in zip(ids, inside) if ok]
    result = extract_tile_samples(config, PU, YEAR, tile, ids, lon[inside], lat[inside])
    assert not result["skipped"] and result["samples"] == len(ids)
    got = read_series(Store(), series_url(config, YEAR, TILE_ID))
    assert got.sample_ids == sorted(ids)

    ingest_tile(config, PU, YEAR, tile)
    base = tile_url(config, YEAR, PU, TILE_ID)
    grid = tile_grid(tile, HALO)
    by_id = {r["sample_id"]: r for r in rows}
    x = np.array([float(by_id[i]["x"]) for i in got.sample_ids])
    y = np.array([float(by_id[i]["y"]) for i in got.sample_ids])
    r, c = pixel_of(grid, x, y)
    names = ts.feature_names(config.sentinel2.bands, config.sentinel2.indices)
    for f, name in enumerate(names):
        with rasterio.open(feature_url(base, name)[len("file://"):]) as dataset:
            cube = dataset.read()
        np.testing.assert_array_equal(got.series[:, f, :], cube[:, r, c].T, err_msg=name)
    with rasterio.open(valid_obs_url(base)[len("file://"):]) as dataset:
        np.testing.assert_array_equal(got.valid_obs, dataset.read(1)[r, c])
    assert (got.valid_obs > 0).all()

    again = extract_tile_samples(config, PU, YEAR, tile, list(reversed(ids)), lon[inside][::-1], lat[inside][::-1])
    assert again["skipped"]
    fewer = extract_tile_samples(config, PU, YEAR, tile, ids[:-1], lon[inside][:-1], lat[inside][:-1])
    assert not fewer["skipped"] and fewer["samples"] == len(ids) - 1


def test_cells_read_only_the_bounding_box_of_their_samples():
    grid = Grid(32633, rasterio.Affine(10, 0, 0, 0, -10, 10_000), 1000, 1000)
    rows = np.array([5, 10, 300, 999, 0])
    cols = np.array([7, 3, 260, 999, 255])
    got = cells(grid, rows, cols, 256)
    assert [sorted(c.members.tolist()) for c in got] == [[0, 1, 4], [2], [3]]
    first = got[0]
    assert (first.window.height, first.window.width) == (11, 253)
    flat_r, flat_c = np.divmod(first.pixels, first.window.width)
    np.testing.assert_array_equal(flat_r, rows[first.members] - 0)
    np.testing.assert_array_equal(flat_c, cols[first.members] - 3)


def _tile_around(tile_id: str, epsg: int, lon: float, lat: float):
    from pyproj import Transformer

    from clcplus_ops.geo.tiles import ProcessingTile

    x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    x0, y0 = int(x // 10_000) * 10_000 - 10_000, int(y // 10_000) * 10_000 - 10_000
    return ProcessingTile(tile_id, tile_id[:5], epsg, 0, 0, (x0, y0, x0 + 30_000, y0 + 30_000), 10)


def test_tile_assignment_prefers_the_points_own_zone_then_the_tile_id():
    lon, lat = 12.05, 45.6  # east of 12 E: UTM zone 33
    zone32 = _tile_around("32TQR_r1c1", 32632, lon, lat)
    zone33_a = _tile_around("33TUL_r0c0", 32633, lon, lat)
    zone33_b = _tile_around("33TUL_r0c1", 32633, lon, lat)
    for tiles in ([zone32, zone33_b, zone33_a], [zone33_a, zone32, zone33_b]):
        chosen = assign_tiles(tiles, np.array([lon]), np.array([lat]))[0]
        assert tiles[chosen] is zone33_a
    # Only tiles of another zone: one of them still extracts the point.
    assert assign_tiles([zone32], np.array([lon]), np.array([lat])).tolist() == [0]
    assert assign_tiles([zone32], np.array([0.0]), np.array([0.0])).tolist() == [-1]
