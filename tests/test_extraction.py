"""Sample time-series extraction: the series of a sample equals the ingested tile's features at
that pixel (same scenes, compositing, cloud mask and interpolation), read from sample windows
only; tile assignment depends on the location only; re-runs skip."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import rasterio
from affine import Affine

from clcplus_ops.errors import StageInputError
from clcplus_ops.geo.grid import Grid
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.locations import Locations
from clcplus_ops.model.extraction import (
    EXTRACT_TILE_SAMPLES, assign_tiles, cells, pixels_inside, read_series, samples_option,
)
from clcplus_ops.plan import DEFINE_TILE
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.sentinel2 import timeseries as ts
from clcplus_ops.sentinel2.ingest import INGEST
from clcplus_ops.stage import Target
from clcplus_ops.store import Store

YEAR = 2025
PU = "DEMO1"


@pytest.fixture(scope="module")
def world(tile_world, tmp_path_factory):
    # Small cells, so the samples fall in several windows.
    config = tile_world["config"](tmp_path_factory.mktemp("extract-work"), time_series={"block_px": 256})
    rows = list(csv.DictReader(io.StringIO(Store().read_text(tile_world["record"]["samples_csv_url"]))))
    return config, rows, tile_world["tile_id"], tile_world["halo"]


def _extract(config, tile_id, ids, lon, lat, pu_id=None, **kwargs) -> dict:
    return run_stage(EXTRACT_TILE_SAMPLES, config, Target("demo", YEAR, pu_id, tile_id),
                     options={"samples": samples_option(ids, lon, lat)}, **kwargs)


def test_sample_series_equal_the_ingested_features_at_their_pixels(world):
    config, rows, tile_id, halo = world
    tile = tile_from_id(tile_id, 2_500)
    ids = [r["sample_id"] for r in rows]
    lon = np.array([float(r["lon"]) for r in rows])
    lat = np.array([float(r["lat"]) for r in rows])
    inside = assign_tiles([tile], lon, lat) == 0
    assert inside.sum() >= 40
    ids = [i for i, ok in zip(ids, inside) if ok]
    result = _extract(config, tile_id, ids, lon[inside], lat[inside])
    assert not result["skipped"] and result["samples"] == len(ids) and result["never_observed"] == 0
    place = Locations(config).sample_series(YEAR, tile_id)
    assert result["outputs"]["series"].startswith(place.base + "/")
    record = stage_record(config, EXTRACT_TILE_SAMPLES, Target("demo", YEAR, None, tile_id))
    assert record.details["cells"] >= 2 and record.details["samples"] == len(ids)
    got = read_series(Store(), result["outputs"]["series"])
    assert got.sample_ids == sorted(ids)

    target = Target("demo", YEAR, PU, tile_id)
    run_stage(DEFINE_TILE, config, target)
    ingested = run_stage(INGEST, config, target)["outputs"]
    grid = tile.grid(halo)
    by_id = {r["sample_id"]: r for r in rows}
    x = np.array([float(by_id[i]["x"]) for i in got.sample_ids])
    y = np.array([float(by_id[i]["y"]) for i in got.sample_ids])
    r, c = grid.pixel_of(x, y)
    names = ts.feature_names(config.sentinel2.bands, config.sentinel2.indices)
    for f, name in enumerate(names):
        with rasterio.open(ingested[name][len("file://"):]) as dataset:
            cube = dataset.read()
        np.testing.assert_array_equal(got.series[:, f, :], cube[:, r, c].T, err_msg=name)
    with rasterio.open(ingested["valid_obs"][len("file://"):]) as dataset:
        np.testing.assert_array_equal(got.valid_obs, dataset.read(1)[r, c])
    assert (got.valid_obs > 0).all()

    # The same samples in another order skip; fewer samples recompute.
    again = _extract(config, tile_id, list(reversed(ids)), lon[inside][::-1], lat[inside][::-1])
    assert again["skipped"]
    fewer = _extract(config, tile_id, ids[:-1], lon[inside][:-1], lat[inside][:-1])
    assert not fewer["skipped"] and fewer["samples"] == len(ids) - 1
    assert read_series(Store(), fewer["outputs"]["series"]).sample_ids == sorted(ids[:-1])


def test_samples_must_be_given_and_lie_in_the_tile(world):
    config, rows, tile_id, _ = world
    with pytest.raises(StageInputError, match="samples"):
        run_stage(EXTRACT_TILE_SAMPLES, config, Target("demo", YEAR, None, tile_id))
    with pytest.raises(StageInputError, match="2 sample ids but 1 lon"):
        run_stage(EXTRACT_TILE_SAMPLES, config, Target("demo", YEAR, None, tile_id),
                  options={"samples": {"sample_ids": ["a", "b"], "lon": [13.6], "lat": [45.5]}})
    with pytest.raises(StageInputError, match="outside the tile grid"):
        _extract(config, tile_id, ["far"], [14.5], [46.0])


def test_pixels_inside_refuses_points_outside_the_grid():
    grid = Grid(32633, Affine(10, 0, 0, 0, -10, 10_000), 1000, 1000)
    rows, cols = pixels_inside(grid, np.array([5.0, 9_995.0]), np.array([9_995.0, 5.0]))
    assert rows.tolist() == [0, 999] and cols.tolist() == [0, 999]
    with pytest.raises(ValueError, match="outside"):
        pixels_inside(grid, np.array([10_000.0]), np.array([5.0]))


def test_cells_read_only_the_bounding_box_of_their_samples():
    grid = Grid(32633, Affine(10, 0, 0, 0, -10, 10_000), 1000, 1000)
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
