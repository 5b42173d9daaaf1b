"""The self-check equal to EEA's delivery checks: a correct tile passes every rule; breaking one
thing fails exactly the rules that look at it; EEA's COG test files get EEA's verdicts."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling

from clcplus_ops.config import CodesConfig
from clcplus_ops.geo.eea_grid import cell_bounds, product_filename
from clcplus_ops.geo.grid import Grid
from clcplus_ops.products import attributes, cog
from clcplus_ops.products.selfcheck import RuleResult, check_delivery_zip, check_product_file, cog_problems, definition_for

CODES = CodesConfig()
# A 2 km stand-in of tile E44N36 (origin on the 100 km grid); the grid rule is given it.
GRID = Grid.from_bounds(3035, (4_400_000.0, 3_600_000.0, 4_402_000.0, 3_602_000.0), 10.0)
EEA_COG = Path("/work/shared/reference/clcplus_conventions/eea_qc_tool/testing_data/cog")
EEA_RULES = ["naming", "inspire", "attribute", "epsg", "pixel_size", "origin", "bit_depth", "compress", "value", "gap",
             "tile", "cog", "color"]
OUR_RULES = ["grid", "nodata", "attribute_values"]


def _array(layer: str, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(3)
    if layer == "ras":
        a = rng.integers(1, 12, shape).astype(np.uint8)
        a[:15] = CODES.coastal_seawater
    elif layer == "rascl":
        a = rng.integers(0, 101, shape).astype(np.uint8)
    elif layer == "rasdl":
        a = rng.integers(0, 201, shape).astype(np.uint16)
    else:
        a = rng.integers(0, 2, shape).astype(np.uint8)
    a[:, :20] = attributes.outside_code(layer, CODES)
    return a


def _required(shape: tuple[int, int]) -> np.ndarray:
    required = np.ones(shape, bool)
    required[:, :20] = False
    return required


def _deliver(folder: Path, layer: str = "ras", *, array=None, grid: Grid = GRID, spec=None, name: str | None = None,
             write=None, aux: bytes | None = None, clr: bool = True, xml: bytes | None = b"<record/>") -> Path:
    """One delivered layer file with its attribute table, colour text file and metadata."""
    spec = spec or cog.layer_spec(layer, CODES)
    array = _array(layer, grid.shape) if array is None else array
    name = name or product_filename(layer, 2023, "e44n36", 3035, 1, 0)
    tif = folder / name
    (write or cog.write_layer_cog)(tif, array, grid, spec)
    if aux is None:
        table = attributes.attribute_table(layer, attributes.histogram(array), pixel_area_m2=grid.res ** 2, codes=CODES)
        aux = attributes.aux_xml_bytes(table)
    (folder / f"{name}.aux.xml").write_bytes(aux)
    colours = cog.layer_spec(layer, CODES).colours
    if clr and colours:
        (folder / f"{name}.clr").write_bytes(attributes.clr_bytes(colours))
    if xml is not None:
        (folder / f"{Path(name).stem}.xml").write_bytes(xml)
    return tif


def _metadata_ok(xml: bytes, file_name: str) -> list[str]:
    assert file_name.endswith(".tif")
    return [] if xml.startswith(b"<record") else ["the root element is not <record>"]


def _check(tif: Path, shape=GRID.shape, **options) -> list[RuleResult]:
    options.setdefault("required", _required(shape))
    options.setdefault("grid", GRID)
    return check_product_file(tif, metadata_check=_metadata_ok, codes=CODES, **options)


def _failed(results: list[RuleResult]) -> dict[str, str]:
    return {r.rule: r.message for r in results if not r.passed}


def _rule_ids(layer: str, eea_rules=EEA_RULES) -> list[str]:
    prefix = "qc_tool.raster" if layer == "ras" else f"clcplus.{layer}"
    return [f"{prefix}.{r}" for r in eea_rules] + [f"clcplus.{layer}.{r}" for r in OUR_RULES]


@pytest.mark.parametrize("layer", ["ras", "rascl", "rasdl", "raspl"])
def test_a_correct_tile_passes_every_rule(tmp_path, layer):
    results = _check(_deliver(tmp_path, layer))
    assert [r.rule for r in results] == _rule_ids(layer)
    assert _failed(results) == {}
    assert all(r.evaluated for r in results)


def test_a_correct_delivery_zip_passes_and_finds_metadata_in_a_metadata_folder(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    tif = _deliver(folder, xml=None)
    zipped = tmp_path / f"{tif.stem}.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
        archive.writestr(f"Metadata/{tif.stem}.xml", b"<record/>")
    results = check_delivery_zip(zipped, metadata_check=_metadata_ok, required=_required(GRID.shape), grid=GRID,
                                 codes=CODES)
    assert [r.rule for r in results] == ["qc_tool.raster.unzip"] + _rule_ids("ras")
    assert _failed(results) == {}


def test_zip_problems_fail_unzip_and_naming(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    tif = _deliver(folder)
    second = _deliver(folder, "rascl")
    zipped = tmp_path / "delivery.zp"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
    results = check_delivery_zip(zipped, metadata_check=_metadata_ok, required=_required(GRID.shape), grid=GRID,
                                 codes=CODES)
    failed = _failed(results)
    assert set(failed) == {"qc_tool.raster.unzip", "qc_tool.raster.naming", "clcplus.rascl.naming"}
    assert "no .zip" in failed["qc_tool.raster.unzip"]
    assert f"excessive layers in the delivery: {second.name}" in failed["qc_tool.raster.naming"]
    assert failed["qc_tool.raster.naming"].startswith(tif.name)
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    results = check_delivery_zip(tmp_path / "broken.zip")
    assert [(r.rule, r.passed, r.evaluated) for r in results] == [("qc_tool.raster.unzip", False, True),
                                                                   ("qc_tool.raster.naming", False, False)]


@pytest.mark.parametrize("name, found", [
    ("CLMS_CLCPLUS_RAS_S2023_R10m_E99N99_03035_V01_R00.tif", "tile code e99n99"),
    ("CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03857_V01_R00.tif", "EPSG code 03857"),
    ("CLMS_CLCPLUS_RAS_S2023_R20m_E44N36_03035_V01_R00.tif", "naming pattern"),
    ("CLMS_CLCPLUS_RAS_S2021_R10m_E44N36_03035_V01_R00.tif", "naming pattern"),
])
def test_a_wrong_name_fails_naming_only(tmp_path, name, found):
    failed = _failed(_check(_deliver(tmp_path, name=name)))
    assert set(failed) == {"qc_tool.raster.naming"}
    assert found in failed["qc_tool.raster.naming"]


def test_naming_is_case_insensitive_as_eea_s(tmp_path):
    assert _failed(_check(_deliver(tmp_path, name="clms_clcplus_ras_s2023_r10m_e44n36_03035_v01_r00.tif"))) == {}


def test_aux_layer_name_follows_the_pattern_with_its_layer(tmp_path):
    failed = _failed(_check(_deliver(tmp_path, "rascl", name="CLMS_CLCPLUS_RASCL_S2023_R10m_E99N99_03035_V01_R00.tif")))
    assert set(failed) == {"clcplus.rascl.naming"} and "e99n99" in failed["clcplus.rascl.naming"]


def test_wrong_epsg_fails_epsg_and_grid(tmp_path):
    utm = Grid(32633, GRID.transform, GRID.height, GRID.width)
    failed = _failed(_check(_deliver(tmp_path, grid=utm)))
    assert set(failed) == {"qc_tool.raster.epsg", "clcplus.ras.grid"}
    assert "EPSG:32633" in failed["qc_tool.raster.epsg"]


def test_20_m_pixels_fail_pixel_size_and_grid(tmp_path):
    coarse = Grid.from_bounds(3035, GRID.bounds, 20.0)
    failed = _failed(_check(_deliver(tmp_path, grid=coarse), shape=coarse.shape))
    assert set(failed) == {"qc_tool.raster.pixel_size", "clcplus.ras.grid"}
    assert "20 m" in failed["qc_tool.raster.pixel_size"]


def test_origin_off_the_1_km_grid_fails_origin_and_grid(tmp_path):
    shifted = Grid(3035, GRID.transform @ Affine.translation(1, 0), GRID.height, GRID.width)
    failed = _failed(_check(_deliver(tmp_path, grid=shifted)))
    assert set(failed) == {"qc_tool.raster.origin", "clcplus.ras.grid"}
    assert "1000 m grid" in failed["qc_tool.raster.origin"]


def test_uint16_ras_fails_bit_depth(tmp_path):
    spec = cog.LayerSpec("ras", "uint16", None, cog.ras_colours())
    failed = _failed(_check(_deliver(tmp_path, array=_array("ras", GRID.shape).astype(np.uint16), spec=spec)))
    assert set(failed) == {"qc_tool.raster.bit_depth"} and "UInt16" in failed["qc_tool.raster.bit_depth"]


def _copy_as_cog(tif, array, grid, spec, **options):
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype=spec.dtype,
                         crs=grid.crs, transform=grid.transform) as source:
            source.write(array, 1)
            source.write_colormap(1, {v: (*rgb, 255) for v, rgb in spec.colours.items()})
        with memory.open() as source:
            copy(source, tif, driver="COG", **{**cog.creation_options(), **options})


def test_deflate_fails_compress(tmp_path):
    failed = _failed(_check(_deliver(tmp_path, write=lambda *a: _copy_as_cog(*a, COMPRESS="DEFLATE"))))
    assert set(failed) == {"qc_tool.raster.compress"} and "DEFLATE" in failed["qc_tool.raster.compress"]


def test_a_code_12_fails_value(tmp_path):
    array = _array("ras", GRID.shape)
    array[100, 100] = 12
    failed = _failed(_check(_deliver(tmp_path, array=array)))
    assert set(failed) == {"qc_tool.raster.value"} and "12 (1 px)" in failed["qc_tool.raster.value"]


@pytest.mark.parametrize("layer, bad", [("rascl", 101), ("rasdl", 201), ("raspl", 2)])
def test_an_invalid_aux_value_fails_its_value_rule(tmp_path, layer, bad):
    array = _array(layer, GRID.shape)
    array[50, 50] = bad
    failed = _failed(_check(_deliver(tmp_path, layer, array=array)))
    assert set(failed) == {f"clcplus.{layer}.value"} and f"{bad} (1 px)" in failed[f"clcplus.{layer}.value"]


def test_2048_px_blocks_fail_tile(tmp_path):
    failed = _failed(_check(_deliver(tmp_path, write=lambda *a: _copy_as_cog(*a, BLOCKSIZE="2048"))))
    assert set(failed) == {"qc_tool.raster.tile"} and "2048 x 2048" in failed["qc_tool.raster.tile"]


def test_a_plain_geotiff_with_added_overviews_fails_cog(tmp_path):
    def plain(tif, array, grid, spec):
        with rasterio.open(tif, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8",
                           crs=grid.crs, transform=grid.transform, tiled=True, blockxsize=64, blockysize=64,
                           compress="lzw") as ds:
            ds.write(array, 1)
            ds.write_colormap(1, {v: (*rgb, 255) for v, rgb in spec.colours.items()})
        with rasterio.open(tif, "r+") as ds:
            ds.build_overviews([2], Resampling.nearest)

    failed = _failed(_check(_deliver(tmp_path, write=plain)))
    assert set(failed) == {"qc_tool.raster.cog"}
    assert "main IFD" in failed["qc_tool.raster.cog"] and "overview 0" in failed["qc_tool.raster.cog"]


def test_one_changed_colour_or_a_missing_clr_fails_color(tmp_path):
    colours = {**cog.ras_colours(), 3: (1, 2, 3)}
    failed = _failed(_check(_deliver(tmp_path, spec=cog.LayerSpec("ras", "uint8", None, colours))))
    assert set(failed) == {"qc_tool.raster.color"}
    assert "value 3: expected RGB [128, 255, 0], found [1, 2, 3]" in failed["qc_tool.raster.color"]
    other = tmp_path / "other"
    other.mkdir()
    failed = _failed(_check(_deliver(other, "raspl", clr=False)))
    assert set(failed) == {"clcplus.raspl.color"} and ".clr" in failed["clcplus.raspl.color"]


def test_a_missing_attribute_column_fails_attribute(tmp_path):
    table = attributes.attribute_table("ras", attributes.histogram(_array("ras", GRID.shape)), pixel_area_m2=100.0,
                                       codes=CODES)
    keep = [0, 1, 2, 3]
    without = attributes.AttributeTable("ras", tuple(table.columns[i] for i in keep),
                                        tuple(tuple(row[i] for i in keep) for row in table.rows),
                                        tuple(table.types[i] for i in keep), tuple(table.usages[i] for i in keep))
    failed = _failed(_check(_deliver(tmp_path, aux=attributes.aux_xml_bytes(without))))
    assert set(failed) == {"qc_tool.raster.attribute", "clcplus.ras.attribute_values"}
    assert "lacks the attribute(s) area_perc" in failed["qc_tool.raster.attribute"]


def test_a_pam_file_gdal_would_ignore_fails_attribute(tmp_path):
    table = attributes.attribute_table("ras", attributes.histogram(_array("ras", GRID.shape)), pixel_area_m2=100.0,
                                       codes=CODES)
    declared = b'<?xml version="1.0" encoding="UTF-8"?>\n' + attributes.aux_xml_bytes(table)
    failed = _failed(_check(_deliver(tmp_path, aux=declared)))
    assert set(failed) == {"qc_tool.raster.attribute", "clcplus.ras.attribute_values"}
    assert "GDAL ignores it" in failed["qc_tool.raster.attribute"]


def test_stale_counts_fail_attribute_values_only(tmp_path):
    stale = attributes.attribute_table("ras", {1: 5, 254: 7}, pixel_area_m2=100.0, codes=CODES)
    failed = _failed(_check(_deliver(tmp_path, aux=attributes.aux_xml_bytes(stale))))
    assert set(failed) == {"clcplus.ras.attribute_values"}
    assert "does not match the pixels" in failed["clcplus.ras.attribute_values"]


def test_bad_or_missing_metadata_fails_inspire(tmp_path):
    failed = _failed(_check(_deliver(tmp_path, xml=b"<wrong/>")))
    assert set(failed) == {"qc_tool.raster.inspire"} and "not <record>" in failed["qc_tool.raster.inspire"]
    other = tmp_path / "other"
    other.mkdir()
    tif = _deliver(other, xml=None)
    failed = _failed(_check(tif))
    assert set(failed) == {"qc_tool.raster.inspire"} and "is missing" in failed["qc_tool.raster.inspire"]
    results = check_product_file(tif, metadata_xml=tmp_path / f"{tif.stem}.xml", required=_required(GRID.shape),
                                 grid=GRID, codes=CODES)
    inspire = next(r for r in results if r.rule == "qc_tool.raster.inspire")
    assert not inspire.passed and not inspire.evaluated and "no metadata_check" in inspire.message


def test_outside_code_inside_the_delivery_area_fails_gap(tmp_path):
    tif = _deliver(tmp_path)
    failed = _failed(_check(tif, required=np.ones(GRID.shape, bool)))
    assert set(failed) == {"qc_tool.raster.gap"}
    assert f"{20 * GRID.height} px inside the delivery area" in failed["qc_tool.raster.gap"]
    gap = next(r for r in _check(tif, required=None) if r.rule == "qc_tool.raster.gap")
    assert (gap.passed, gap.evaluated) == (False, False) and "not evaluated" in gap.message
    failed = _failed(_check(tif, required=np.ones((3, 3), bool)))
    assert set(failed) == {"qc_tool.raster.gap"} and "3 x 3 px" in failed["qc_tool.raster.gap"]


def test_a_declared_nodata_in_ras_fails_nodata(tmp_path):
    failed = _failed(_check(_deliver(tmp_path, spec=cog.LayerSpec("ras", "uint8", 254, cog.ras_colours()))))
    assert set(failed) == {"clcplus.ras.nodata"}


def test_grid_defaults_to_the_100_km_cell_of_the_name(tmp_path):
    tif = _deliver(tmp_path)
    failed = _failed(_check(tif, grid=None))
    assert set(failed) == {"clcplus.ras.grid"} and "instead of 10000 x 10000" in failed["clcplus.ras.grid"]


def test_a_dom_tile_is_checked_with_its_own_definition(tmp_path):
    dom = Grid.from_bounds(32622, (300_000.0, 500_000.0, 302_000.0, 502_000.0), 10.0)
    tif = _deliver(tmp_path, grid=dom, name=product_filename("ras", 2023, "gf", 32622, 1, 0))
    results = check_product_file(tif, metadata_check=_metadata_ok, grid=dom, codes=CODES)
    no_origin_no_gap = [r for r in EEA_RULES if r not in ("origin", "gap")]
    assert [r.rule for r in results] == _rule_ids("ras", no_origin_no_gap)
    assert _failed(results) == {}
    grid_rule = next(r for r in check_product_file(tif, metadata_check=_metadata_ok, codes=CODES)
                     if r.rule == "clcplus.ras.grid")
    assert grid_rule.passed and "DOM gf: extent not compared" in grid_rule.message


def test_an_unreadable_file_fails_the_raster_rules_without_raising(tmp_path):
    tif = tmp_path / product_filename("ras", 2023, "e44n36", 3035, 1, 0)
    tif.write_bytes(b"not a tiff")
    failed = _failed(_check(tif))
    for rule in ("naming", "epsg", "pixel_size", "origin", "bit_depth", "compress", "value", "gap", "tile", "cog",
                 "color"):
        assert "cannot open" in failed[f"qc_tool.raster.{rule}"]


@pytest.mark.skipif(not EEA_COG.is_dir(), reason="EEA's QC tool test files (/work/shared) are not here")
def test_cog_rule_agrees_with_eea_on_its_test_files():
    assert cog_problems(EEA_COG / "valid_cog.tif") == ([], [])
    errors, warnings = cog_problems(EEA_COG / "invalid_cog.tif")
    assert errors == ["the image is larger than 512 px but not tiled (strips wider than 1024 px)"] and warnings
    # Valid for GDAL's validator and EEA, with a warning only (rio-cogeo calls it invalid).
    errors, warnings = cog_problems(EEA_COG / "valid_cog_warning.tif")
    assert errors == [] and warnings == ["the image is larger than 512 px and has no internal overviews (recommended)"]


def test_a_full_100_km_tile_passes_in_seconds(tmp_path):
    grid = Grid.from_bounds(3035, cell_bounds("e44n36"), 10.0)
    array = np.repeat(np.repeat(_array("ras", (500, 500)), 20, 0), 20, 1)
    tif = _deliver(tmp_path, array=array, grid=grid)
    required = np.repeat(np.repeat(_required((500, 500)), 20, 0), 20, 1)
    start = time.perf_counter()
    results = check_product_file(tif, metadata_check=_metadata_ok, required=required, codes=CODES)
    elapsed = time.perf_counter() - start
    assert _failed(results) == {}
    assert elapsed < 20, f"the self-check of a 100 km tile took {elapsed:.1f} s"


def test_cog_full_check_reads_block_leaders_and_trailers(tmp_path):
    tif = cog.write_layer_cog(tmp_path / "ras.tif", _array("ras", GRID.shape), GRID, cog.layer_spec("ras", CODES))
    assert cog_problems(tif) == ([], [])
    with rasterio.open(tif) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    data = bytearray(tif.read_bytes())
    data[offset - 4:offset] = (size + 1).to_bytes(4, "little")  # the leader states the block's size
    data[offset + size] ^= 0xFF  # the trailer repeats the block's last 4 bytes
    tif.write_bytes(bytes(data))
    errors, _ = cog_problems(tif)
    assert errors == [f"the main image: block (0, 0) leader says {size + 1} bytes, the block has {size}",
                      "the main image: block (0, 0) trailer does not repeat its last 4 bytes"]


def test_another_reference_year_takes_eeas_rules_with_its_year(tmp_path):
    name = "CLMS_CLCPLUS_RAS_S2025_R10m_E44N36_03035_V01_R00.tif"
    (tmp_path / "strict").mkdir()
    (tmp_path / "year").mkdir()
    assert set(_failed(_check(_deliver(tmp_path / "strict", name=name)))) == {"qc_tool.raster.naming"}
    assert _failed(_check(_deliver(tmp_path / "year", name=name), reference_year=2025)) == {}
    naming = next(s for s in definition_for("e44n36", 2025)["steps"] if s["check_ident"] == "qc_tool.raster.naming")
    assert "_s2025_" in naming["parameters"]["layer_names"]["raster"] and naming["parameters"]["reference_year"] == "2025"
