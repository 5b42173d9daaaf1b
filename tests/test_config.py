import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clcplus_ops.config import Config, ConfigError, load_config, parse_config


def test_defaults_are_the_atbd_values():
    c = Config()
    assert c.sentinel2.bands == ("B01", "B03", "B04", "B05", "B08", "B09", "B11", "B12")
    assert c.sentinel2.indices == ("NDVI", "NDWI", "NDMI", "NBR")
    assert c.sentinel2.scl_masked_classes == (2, 3, 8, 9)
    assert c.sentinel2.max_cloud_cover_percent == 80
    assert (c.time_series.step_days, c.time_series.n_steps) == (10, 54)
    start, end = c.time_series.window(2023)
    assert (str(start), str(end)) == ("2022-10-01", "2024-04-01")
    assert c.time_series.steps(2023)[-1] < end
    assert (c.grid.tile_size_m, c.grid.pu_buffer_m, c.grid.pixel_size_m) == (25_000, 10_000, 10)
    assert (c.bilateral.win_size, c.bilateral.sigma_spatial, c.bilateral.sigma_color) == (4, 0.8, 0.25)
    assert c.grid.pu_buffer_m == 10_000 and c.blending.distance_cell_m == 100
    assert c.calibration.percentile == 90 and c.calibration.previous_productions == 2
    percentiles = c.calibration.percentiles(range(1, 12))
    assert len(percentiles) == 110 and percentiles[(6, 7)] == 90
    assert percentiles[(2, 3)] == percentiles[(4, 2)] == 99 and percentiles[(7, 1)] == percentiles[(2, 9)] == 5
    assert percentiles[(6, 10)] == 5 and percentiles[(10, 6)] == 90
    assert sorted(c.codes.classes) == list(range(1, 12))
    assert (c.codes.coastal_seawater, c.codes.outside, c.codes.nodata) == (253, 254, 255)
    assert c.codes.data_score_outside == 65535
    assert (c.products.ras_dtype, c.products.rasdl_dtype, c.products.compression) == ("uint8", "uint16", "LZW")
    assert c.training.label_audit_rounds == 15
    assert (c.training.target_overall_accuracy, c.training.max_omission, c.training.max_commission) == (0.9, 0.15, 0.15)


def test_work_raster_profiles_airflow_and_years_are_configuration():
    c = Config()
    features, probabilities = c.rasters.features, c.rasters.probabilities
    assert (features.compress, features.level, features.predictor, features.block_px) == ("zstd", 1, 2, 256)
    assert (probabilities.compress, probabilities.level, probabilities.block_px) == ("zstd", 3, 256)
    assert probabilities.creation_options() == {
        "tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "pixel", "BIGTIFF": "IF_SAFER",
        "compress": "zstd", "predictor": 2, "zstd_level": 3}
    a = c.airflow
    assert (str(a.start_date), a.retries, a.retry_delay_minutes, a.training_retries) == ("2017-09-01", 2, 2.0, 1)
    assert (a.aws_conn_id, a.default_pool) == ("aws_default", "default_pool")
    t = c.time_series
    assert (t.first_reference_year, t.last_reference_year, t.historical_years) == (2017, 2100, (2018, 2021))
    assert (t.first_biennial_year, t.every_years) == (2023, 2)
    assert c.bilateral.block_px == 512


def test_raster_profiles_name_the_gdal_options():
    from clcplus_ops.config import RasterProfile

    # DEFLATE's level is GDAL's ZLEVEL (a "deflate_level" would be ignored), LZW has none
    assert RasterProfile(compress="deflate", level=6).creation_options()["zlevel"] == 6
    lzw = RasterProfile(compress="lzw", level=6).creation_options()
    assert lzw["compress"] == "lzw" and not any(k.endswith("level") for k in lzw)
    plain = RasterProfile(compress="none").creation_options()
    assert "compress" not in plain and "predictor" not in plain and plain["blockxsize"] == 256


def test_deflate_level_reaches_gdal(tmp_path):
    import numpy as np
    import rasterio
    from affine import Affine

    from clcplus_ops.config import RasterProfile

    y, x = np.mgrid[0:256, 0:256]
    rng = np.random.default_rng(0)
    data = (np.sin(x / 7) * np.cos(y / 5) * 3000 + rng.normal(0, 30, (256, 256))).astype("int16")
    sizes = {}
    for level in (1, 9):
        path = tmp_path / f"l{level}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=1, dtype="int16",
                           crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0),
                           **RasterProfile(compress="deflate", level=level).creation_options()) as dst:
            dst.write(data, 1)
        sizes[level] = path.stat().st_size
    assert sizes[9] < sizes[1]


def test_yaml_overrides_a_subset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sentinel2:\n  max_cloud_cover_percent: 60\ngrid:\n  tile_size_m: 20000\n")
    c = load_config(path)
    assert c.sentinel2.max_cloud_cover_percent == 60
    assert c.grid.tile_size_m == 20000
    assert c.grid.pu_buffer_m == 10_000


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"sentinel2": {"max_cloud_cover_percent": 150}}, "sentinel2.max_cloud_cover_percent", "less than or equal to 100"),
        ({"grid": {"tile_size_m": 30000}}, "grid", "must divide the 100 km MGRS square"),
        ({"sentinel2": {"bands": ["B01", "B13"]}}, "sentinel2.bands", "unknown band"),
        ({"sentinel2": {"scl_masked_classes": [2, 12]}}, "sentinel2.scl_masked_classes", "0..11"),
        ({"bilateral": {"sigma_color": 0}}, "bilateral.sigma_color", "greater than 0"),
        ({"time_series": {"n_steps": 60}}, "time_series", "overruns"),
        ({"products": {"blocksize": 1000}}, "products.blocksize", "power of two"),
        ({"store": {"work": "/tmp/x"}}, "store.work", "file:///absolute/path"),
        ({"grid": {"tile_sise_m": 25000}}, "grid.tile_sise_m", "Extra inputs are not permitted"),
        ({"rasters": {"features": {"block_px": 100}}}, "rasters.features.block_px", "multiples of 16"),
        ({"rasters": {"probabilities": {"compress": "jpeg"}}}, "rasters.probabilities.compress", "'zstd'"),
        ({"rasters": {"features": {"level": 0}}}, "rasters.features.level", "greater than or equal to 1"),
        ({"airflow": {"retries": -1}}, "airflow.retries", "greater than or equal to 0"),
        ({"airflow": {"start_date": "someday"}}, "airflow.start_date", "valid date"),
        ({"airflow": {"aws_conn": "x"}}, "airflow.aws_conn", "Extra inputs are not permitted"),
        ({"airflow": {"layouts": []}}, "airflow.layouts", "at least one"),
        ({"airflow": {"layouts": ["demo", "demo"]}}, "airflow.layouts", "each layout once"),
        ({"airflow": {"layouts": ["europe"]}}, "airflow.layouts", "'production' or 'demo'"),
        ({"time_series": {"first_reference_year": 2030, "last_reference_year": 2020}}, "time_series",
         "no year would be accepted"),
        ({"bilateral": {"block_px": 8}}, "bilateral.block_px", "greater than or equal to 16"),
    ],
)
def test_bad_values_name_the_field_and_the_rule(data, field, words):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    message = str(info.value)
    assert "test.yaml" in message and field in message and words in message


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("grid: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_config_show_prints_the_effective_configuration(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochs: 7\nrasters:\n  features:\n    level: 5\n"
                    "airflow:\n  start_date: 2020-01-01\n  aws_conn_id: clcplus_s3\n")
    clcplus = Path(sys.executable).with_name("clcplus")
    out = subprocess.run([clcplus, "--config", path, "config", "show"], capture_output=True, text=True, check=True).stdout
    shown = yaml.safe_load(out)
    assert shown["training"]["epochs"] == 7
    assert shown["rasters"]["features"] == {"compress": "zstd", "level": 5, "predictor": 2, "block_px": 256}
    assert shown["rasters"]["probabilities"]["level"] == 3
    assert shown["airflow"]["aws_conn_id"] == "clcplus_s3" and str(shown["airflow"]["start_date"]) == "2020-01-01"
    assert shown["time_series"]["first_reference_year"] == 2017
    assert parse_config(shown) == load_config(path)
    # the environment variable names the file when --config is absent
    env = {**os.environ, "CLCPLUS_CONFIG": str(path)}
    assert subprocess.run([clcplus, "config", "show"], capture_output=True, text=True, check=True, env=env).stdout == out


def test_config_show_refuses_a_bad_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("grid:\n  pu_buffer_m: -5\nairflow:\n  retries: -1\n")
    clcplus = Path(sys.executable).with_name("clcplus")
    result = subprocess.run([clcplus, "--config", path, "config", "show"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    # one line naming every offending field, no traceback
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: invalid configuration in {path}: ")
    assert "grid.pu_buffer_m" in result.stderr and "greater than or equal to 0" in result.stderr
    assert "airflow.retries" in result.stderr and "Traceback" not in result.stderr


def test_demo_configuration_shrinks_only_the_grid_and_the_audit_epochs():
    c = Config()
    demo = c.for_layout("demo")
    assert demo.grid.tile_size_m == 2_500 and demo.grid.pu_buffer_m == 1_000
    assert demo.training.label_audit_epochs == c.demo.label_audit_epochs and c.training.label_audit_epochs is None
    assert demo.training.epochs == c.training.epochs
    assert demo.sentinel2 == c.sentinel2 and demo.bilateral == c.bilateral
    with pytest.raises(ValueError, match="unknown layout"):
        c.for_layout("test")


def test_halo_must_cover_the_bilateral_filter_and_inference_blocks_are_whole():
    with pytest.raises(ConfigError, match=r"grid.halo_px=0 is smaller than the bilateral filter's reach"):
        parse_config({"grid": {"halo_px": 0}})
    with pytest.raises(ConfigError, match=r"demo.grid.halo_px=1 is smaller"):
        parse_config({"bilateral": {"win_size": 5}, "demo": {"grid": {"tile_size_m": 2500, "halo_px": 1}}})
    assert parse_config({"grid": {"halo_px": 1}}).grid.halo_px == 1
    with pytest.raises(ConfigError, match="inference.block_px"):
        parse_config({"inference": {"block_px": 300}})
    with pytest.raises(ConfigError, match="inference.device"):
        parse_config({"inference": {"device": "tpu"}})
