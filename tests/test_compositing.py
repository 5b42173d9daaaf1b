"""Compositing a block from the scenes' source windows (the compiled kernels of
``sentinel2.compositing`` behind ``ingest.read_block``) against a straightforward NumPy
statement of the same rules (each asset resampled to the block, masked, scaled), on small
GeoTIFFs made here: two granules on one date (priority, partial cover), 10/20/60 m assets, band
nodata, float-typed SCL and bands, a grid reaching outside the rasters, and picked pixels."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box

from clcplus_ops.geo.grid import Grid
from clcplus_ops.sentinel2 import ingest
from clcplus_ops.sentinel2.bands import SCL
from clcplus_ops.sentinel2.cloudmask import valid_observations
from clcplus_ops.sentinel2.reading import read_nearest
from clcplus_ops.sentinel2.scenes import Asset, Scene

EPSG = 32633
BANDS = ("B01", "B03", "B04", "B05", "B08", "B09", "B11", "B12")
RES = {"B01": 60, "B09": 60, "B05": 20, "B11": 20, "B12": 20, SCL: 20, "B03": 10, "B04": 10, "B08": 10}
MASKED = (2, 3, 8, 9)
X0, Y0 = 400_000.0, 5_000_000.0  # upper-left corner of the granules' 60 m grid


def reference_block(grid, dates, scenes, bands, masked, pixels=None):
    """The compositing rules as plain NumPy on full 10 m arrays (the ingestion's code before
    the compiled kernels): first clear, not yet taken, no band at nodata; rint(DN x scale + offset)."""
    n_pix = grid.height * grid.width if pixels is None else len(pixels)

    def pick(values):
        return values.ravel() if pixels is None else values.ravel()[pixels]

    obs = np.zeros((len(dates), len(bands), n_pix), np.int16)
    valid = np.zeros((len(dates), n_pix), bool)
    days, k = np.zeros(len(dates)), 0
    for date in dates:
        taken = valid[k]
        for scene in date.scenes:
            scl = read_nearest(scenes.datasets[(scene.scene_id, SCL)].dataset, grid)
            if scl is None:
                continue
            new = valid_observations(pick(scl), masked) & ~taken
            if not new.any():
                continue
            values = []
            for band in bands:
                asset = scene.assets[band]
                dn = pick(read_nearest(scenes.datasets[(scene.scene_id, band)].dataset, grid))
                if asset.nodata is not None:
                    new &= dn != asset.nodata
                values.append(np.rint(dn * (asset.scale * 10_000) + asset.offset * 10_000))
            for b, value in enumerate(values):
                obs[k, b, new] = np.clip(value[new], -32767, 32767)
            taken |= new
        if taken.any():
            days[k] = date.day
            k += 1
    return obs[:k], valid[:k], days[:k]


def _write(path, values, res, x0, y0, nodata):
    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
                       dtype=values.dtype, crs=f"EPSG:{EPSG}", transform=Affine(res, 0, x0, 0, -res, y0),
                       nodata=nodata, tiled=True, blockxsize=16, blockysize=16) as ds:
        ds.write(values, 1)


def _scene(tmp_path, rng, scene_id, date, square, x0, y0, size_m, float_assets=()):
    """A granule of ``size_m`` from (x0, y0): random DNs with some nodata, a cloudy SCL."""
    assets = {}
    for name, res in RES.items():
        shape = (size_m // res, size_m // res)
        if name == SCL:
            values = rng.choice(np.arange(12, dtype=np.uint8), shape, p=[.05, .05, .1, .1, .3, .1, .1, .05, .05, .05, .03, .02])
            nodata = 0
        else:
            values = rng.integers(0, 12_000, shape).astype(np.uint16)
            values[rng.random(shape) < 0.03] = 0  # the bands' nodata
            nodata = 0
        if name in float_assets:
            values = values.astype(np.float32) + (0.25 if name != SCL else 0)
            if name == SCL:
                values[rng.random(shape) < 0.05] = np.nan
        path = tmp_path / f"{scene_id}_{name}.tif"
        _write(path, values, res, x0, y0, nodata)
        offset = -0.1 if name != SCL else 0.0
        assets[name] = Asset(path.as_uri(), 1e-4 if name != SCL else 1.0, offset, 0 if name != SCL else None, res)
    when = dt.datetime.combine(date, dt.time(10), dt.timezone.utc)
    return Scene(scene_id, "test", when, "sentinel-2a", square, EPSG, 10.0, "05.11",
                 box(14.0, 45.0, 14.1, 45.1), assets)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    tmp_path, rng = tmp_path_factory.mktemp("compositing"), np.random.default_rng(7)
    day = dt.date(2025, 5, 1)
    made = [
        # own granule covers the west, the neighbour the east and overlaps it
        _scene(tmp_path, rng, "A1", day, "33TUL", X0, Y0, 1_200),
        _scene(tmp_path, rng, "B1", day, "33TVL", X0 + 600, Y0 - 120, 1_200),
        _scene(tmp_path, rng, "A2", day + dt.timedelta(days=5), "33TUL", X0, Y0, 1_200, float_assets=("B04", SCL)),
        _scene(tmp_path, rng, "A3", day + dt.timedelta(days=10), "33TUL", X0, Y0, 1_200, float_assets=("B11",)),
        _scene(tmp_path, rng, "B3", day + dt.timedelta(days=10), "33TVL", X0 + 600, Y0 - 120, 1_200),
    ]
    opened = ingest.OpenScenes([*BANDS, SCL], 0)
    for scene in made:
        opened.open(scene)
    yield made, opened
    opened.close()


@pytest.mark.parametrize("offset_px, shape", [((3, 5), (97, 83)), ((-7, 40), (64, 150)), ((0, 0), (120, 180))])
def test_read_block_equals_the_numpy_rules(scenes, offset_px, shape):
    made, opened = scenes
    dates = ingest.group_by_date(made, dt.date(2025, 4, 1), "33TUL")
    assert [len(d.scenes) for d in dates] == [2, 1, 2]
    row, col = offset_px
    grid = Grid(EPSG, Affine(10, 0, X0 + 10 * col, 0, -10, Y0 - 10 * row), *shape)
    got = ingest.read_block(grid, dates, opened, BANDS, MASKED)
    expected = reference_block(grid, dates, opened, BANDS, MASKED)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    obs, valid, _ = got
    assert valid.any(axis=1).all() and 0 < valid.mean() < 1 and (obs[valid.nonzero()[0], 0] != 0).any()

    pixels = np.random.default_rng(1).choice(shape[0] * shape[1], 200, replace=False)
    picked = ingest.read_block(grid, dates, opened, BANDS, MASKED, pixels=pixels)
    for g, e in zip(picked, reference_block(grid, dates, opened, BANDS, MASKED, pixels=pixels)):
        np.testing.assert_array_equal(g, e)
