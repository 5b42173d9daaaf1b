"""The delivered layers of a product tile as COGs: EEA's layout rules, colours, codes, same bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import rasterio

from clcplus_ops.config import Config
from clcplus_ops.geo.grid import Grid
from clcplus_ops.products import cog

# A 4 km stand-in of a 100 km tile (same code, smaller array): origin on the 100 km grid.
GRID = Grid.from_bounds(3035, (4_400_000.0, 3_600_000.0, 4_404_000.0, 3_604_000.0), 10.0)


def _ras() -> np.ndarray:
    rng = np.random.default_rng(0)
    ras = rng.integers(1, 12, GRID.shape).astype(np.uint8)
    ras[:, :300] = 254
    ras[:50] = 253
    return ras


@pytest.mark.parametrize("layer", ["ras", "rascl", "rasdl", "raspl"])
def test_each_layer_is_a_valid_cog_with_the_delivery_options(tmp_path, layer):
    from rio_cogeo.cogeo import cog_validate

    spec = cog.layer_spec(layer, Config().codes)
    array = {"ras": _ras(), "rascl": np.full(GRID.shape, 73, np.uint8),
             "rasdl": np.full(GRID.shape, 120, np.uint16), "raspl": np.zeros(GRID.shape, np.uint8)}[layer]
    # 256 px tiles here so the 400 px stand-in gets overviews as a 10,000 px tile does with 1024.
    path = cog.write_layer_cog(tmp_path / f"{layer}.tif", array, GRID, spec, block_px=256)
    valid, errors, _ = cog_validate(str(path), strict=True)
    assert valid, errors
    with rasterio.open(path) as ds:
        assert ds.profile["compress"].upper() == "LZW" and ds.block_shapes == [(256, 256)]
        assert ds.crs.to_epsg() == 3035 and ds.res == (10.0, 10.0) and ds.transform.c % 1000 == 0
        assert ds.overviews(1) and ds.dtypes[0] == spec.dtype
        assert ds.nodata == spec.nodata
        np.testing.assert_array_equal(ds.read(1), array)
        if spec.colours:
            table = ds.colormap(1)
            assert all(table[v][:3] == rgb for v, rgb in spec.colours.items())
        # Nearest overviews keep codes that exist in the layer.
        overview = ds.read(1, out_shape=(GRID.height // 4, GRID.width // 4))
        assert set(np.unique(overview)) <= set(np.unique(array))


def test_ras_has_eea_colours_no_nodata_and_a_rerun_gives_the_same_bytes(tmp_path):
    assert cog.creation_options()["BLOCKSIZE"] == "1024" and cog.creation_options()["COMPRESS"] == "LZW"
    spec = cog.layer_spec("ras", Config().codes)
    assert spec.nodata is None and spec.colours[1] == (255, 0, 0) and spec.colours[253] == (191, 223, 255)
    assert set(spec.colours) == set(range(1, 12)) | {253, 254}
    first = cog.write_layer_cog(tmp_path / "a.tif", _ras(), GRID, spec)
    second = cog.write_layer_cog(tmp_path / "b.tif", _ras(), GRID, spec)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_a_wrong_array_is_refused(tmp_path):
    spec = cog.layer_spec("rasdl", Config().codes)
    with pytest.raises(ValueError, match="uint16"):
        cog.write_layer_cog(tmp_path / "x.tif", np.zeros(GRID.shape, np.uint8), GRID, spec)
    with pytest.raises(ValueError, match="not on the grid"):
        cog.write_layer_cog(tmp_path / "x.tif", np.zeros((3, 3), np.uint16), GRID, spec)
    with pytest.raises(ValueError, match="unknown layer"):
        cog.layer_spec("ndvi", Config().codes)
