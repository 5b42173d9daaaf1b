"""Attribute tables of the delivered layers as GDAL PAM (.tif.aux.xml): rows from the tile's
histogram, EEA's column names, exact bytes, read back by us and by GDAL itself."""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import re

import numpy as np
import pytest
import rasterio

from clcplus_ops.config import CLASS_NAMES, CodesConfig
from clcplus_ops.geo.eea_grid import product_definition
from clcplus_ops.geo.grid import Grid
from clcplus_ops.products import attributes, cog

CODES = CodesConfig()
GRID = Grid.from_bounds(3035, (4_400_000.0, 3_600_000.0, 4_402_000.0, 3_602_000.0), 10.0)


def _ras() -> np.ndarray:
    ras = np.random.default_rng(1).integers(1, 11, GRID.shape).astype(np.uint8)  # no 11 (snow) in it
    ras[:, :50] = CODES.outside
    ras[:20, 50:] = CODES.coastal_seawater
    return ras


def _gdal():
    """rasterio's own GDAL library through ctypes (there is no GDAL Python binding): the engine
    EEA's attribute check reads the table with (``GetDefaultRAT``)."""
    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*"))
    if not libs:
        pytest.skip("rasterio's bundled libgdal is not found")
    lib = ctypes.CDLL(libs[0])
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, res, args in (("GDALOpen", p, [s, i]), ("GDALGetRasterBand", p, [p, i]), ("GDALGetDefaultRAT", p, [p]),
                            ("GDALRATGetColumnCount", i, [p]), ("GDALRATGetRowCount", i, [p]),
                            ("GDALRATGetNameOfCol", s, [p, i]), ("GDALRATGetTypeOfCol", i, [p, i]),
                            ("GDALRATGetUsageOfCol", i, [p, i]), ("GDALRATGetValueAsString", s, [p, i, i]),
                            ("GDALClose", None, [p])):
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    lib.GDALAllRegister()
    return lib


def _gdal_table(path) -> tuple[list[tuple[str, int, int]], list[list[str]]] | None:
    """(columns as (name, type, usage), rows as strings) of band 1's default RAT, as GDAL reads it."""
    lib = _gdal()
    ds = lib.GDALOpen(str(path).encode(), 0)
    assert ds, f"GDAL cannot open {path}"
    try:
        rat = lib.GDALGetDefaultRAT(lib.GDALGetRasterBand(ds, 1))
        if not rat:
            return None
        n_cols = lib.GDALRATGetColumnCount(rat)
        cols = [(lib.GDALRATGetNameOfCol(rat, c).decode(), lib.GDALRATGetTypeOfCol(rat, c),
                 lib.GDALRATGetUsageOfCol(rat, c)) for c in range(n_cols)]
        rows = [[lib.GDALRATGetValueAsString(rat, r, c).decode() for c in range(n_cols)]
                for r in range(lib.GDALRATGetRowCount(rat))]
        return cols, rows
    finally:
        lib.GDALClose(ds)


def test_histogram_counts_every_value_of_uint8_and_uint16():
    ras = _ras()
    values, counts = np.unique(ras, return_counts=True)
    assert attributes.histogram(ras) == dict(zip(values.tolist(), counts.tolist()))
    rasdl = np.array([[0, 200, 65535], [200, 7, 65535]], np.uint16)
    assert attributes.histogram(rasdl) == {0: 1, 7: 1, 200: 2, 65535: 2}
    with pytest.raises(ValueError, match="uint8 or uint16"):
        attributes.histogram(np.zeros(3, np.int16))


def test_ras_table_has_every_code_areas_and_shares_of_the_delivered_area():
    ras = _ras()
    table = attributes.attribute_table("ras", attributes.histogram(ras), pixel_area_m2=100.0,
                                       class_names=CODES.classes, codes=CODES)
    assert table.columns == ("value", "count", "class_name", "area_km2", "area_perc")
    # Every code of RAS's coding, present or not, and nothing else.
    assert table.column("value") == list(range(1, 12)) + [253, 254]
    rows = {row[0]: row for row in table.rows}
    assert rows[11][1:] == (0, "Snow and ice", 0.0, 0.0)
    assert rows[1][2] == CLASS_NAMES[1] and rows[253][2] == "Coastal seawater buffer" and rows[254][2] == "Outside area"
    assert sum(table.column("count")) == ras.size
    n_outside = int((ras == 254).sum())
    assert rows[254][1] == n_outside and rows[254][3] == n_outside / 10_000 and rows[254][4] == 0.0
    # Shares of the delivered area (everything but 254): they sum to 100.
    delivered = ras.size - n_outside
    assert rows[5][4] == round(100 * int((ras == 5).sum()) / delivered, 6)
    assert sum(table.column("area_perc")) == pytest.approx(100.0, abs=1e-4)
    assert rows[5][3] == int((ras == 5).sum()) * 1e-4


def test_an_unknown_value_gets_its_own_row_and_the_aux_tables_have_their_columns():
    table = attributes.attribute_table("ras", {1: 5, 12: 2, 255: 1}, pixel_area_m2=100.0, codes=CODES)
    rows = {row[0]: row for row in table.rows}
    assert rows[12][1:3] == (2, "Invalid code") and rows[255][1:3] == (1, "No data")
    rascl = attributes.attribute_table("rascl", {0: 3, 100: 1, 254: 9}, pixel_area_m2=100.0, codes=CODES)
    assert rascl.columns == ("value", "count", "confidence") and len(rascl.rows) == 102
    assert rascl.rows[0] == (0, 3, "0 %") and rascl.rows[100] == (100, 1, "100 %")
    assert rascl.rows[-1] == (254, 9, "Outside area")
    rasdl = attributes.attribute_table("rasdl", {65535: 4}, pixel_area_m2=100.0, codes=CODES, max_observations=200)
    assert rasdl.columns == ("value", "count", "obs_count") and len(rasdl.rows) == 202
    assert rasdl.rows[1] == (1, 0, "1 observation") and rasdl.rows[200][2] == "200 or more observations"
    raspl = attributes.attribute_table("raspl", {0: 5, 1: 1}, pixel_area_m2=100.0, codes=CODES)
    assert raspl.rows == ((0, 5, "No change during post-processing"), (1, 1, "Recoded during post-processing"),
                          (254, 0, "Outside area"))
    with pytest.raises(ValueError, match="unknown layer"):
        attributes.attribute_table("ndvi", {}, pixel_area_m2=100.0, codes=CODES)


def test_ras_columns_satisfy_eea_attribute_regexes():
    step = next(s for s in product_definition()["steps"] if s["check_ident"] == "qc_tool.raster.attribute")
    names = [c.name for c in attributes.COLUMNS["ras"]]
    for regex in step["parameters"]["attribute_regexes"]:
        assert any(re.match(f"{regex}$", name, re.IGNORECASE) for name in names), regex


def test_pam_bytes_are_deterministic_without_declaration_and_read_back_equal():
    table = attributes.attribute_table("ras", attributes.histogram(_ras()), pixel_area_m2=100.0, codes=CODES)
    data = attributes.aux_xml_bytes(table)
    assert data == attributes.aux_xml_bytes(table)
    assert data.startswith(b"<PAMDataset>") and b"<?xml" not in data
    assert b"<F>0.000000</F>" in data  # fixed decimals
    back = attributes.read_aux_xml(data)
    assert back == table and back.layer == "ras"
    for layer, counts in (("rascl", {0: 1, 254: 2}), ("rasdl", {3: 1}), ("raspl", {1: 1})):
        t = attributes.attribute_table(layer, counts, pixel_area_m2=100.0, codes=CODES)
        assert attributes.read_aux_xml(attributes.aux_xml_bytes(t)) == t


def test_read_aux_xml_names_what_is_wrong():
    with pytest.raises(ValueError, match="not well-formed"):
        attributes.read_aux_xml(b"<PAMDataset>")
    with pytest.raises(ValueError, match="PAMRasterBand"):
        attributes.read_aux_xml(b"<PAMDataset/>")
    with pytest.raises(ValueError, match="GDALRasterAttributeTable"):
        attributes.read_aux_xml(b'<PAMDataset><PAMRasterBand band="1"/></PAMDataset>')
    # A table with other columns is read as it is, with no layer.
    other = attributes.read_aux_xml(b'<PAMDataset><PAMRasterBand band="1"><GDALRasterAttributeTable>'
                                    b'<FieldDefn index="0"><Name>Value</Name><Type>0</Type><Usage>5</Usage></FieldDefn>'
                                    b'<Row index="0"><F>3</F></Row></GDALRasterAttributeTable></PAMRasterBand>'
                                    b'</PAMDataset>')
    assert other.layer == "" and other.columns == ("Value",) and other.rows == ((3,),)


def test_gdal_reads_the_table_beside_the_cog_and_opens_it_without_warnings(tmp_path, caplog):
    ras = _ras()
    tif = cog.write_layer_cog(tmp_path / "ras.tif", ras, GRID, cog.layer_spec("ras", CODES))
    table = attributes.attribute_table("ras", attributes.histogram(ras), pixel_area_m2=100.0, codes=CODES)
    (tmp_path / "ras.tif.aux.xml").write_bytes(attributes.aux_xml_bytes(table))
    with caplog.at_level(logging.DEBUG, logger="rasterio"):
        with rasterio.open(tif) as ds:
            np.testing.assert_array_equal(ds.read(1), ras)
            assert ds.colormap(1)[1][:3] == (255, 0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    columns, rows = _gdal_table(tif)
    assert columns == [("value", 0, 5), ("count", 0, 1), ("class_name", 2, 2), ("area_km2", 1, 0),
                       ("area_perc", 1, 0)]
    assert len(rows) == 13 and rows[0][0] == "1" and int(rows[0][1]) == int((ras == 1).sum())
    assert rows[-1][2] == "Outside area" and float(rows[-1][3]) == pytest.approx(int((ras == 254).sum()) * 1e-4)
    # The reason for writing no declaration: GDAL then ignores the whole PAM file.
    (tmp_path / "ras.tif.aux.xml").write_bytes(b'<?xml version="1.0" encoding="UTF-8"?>\n'
                                               + attributes.aux_xml_bytes(table))
    assert _gdal_table(tif) is None


def test_uint16_rasdl_table_is_read_by_gdal(tmp_path):
    rasdl = np.full(GRID.shape, 120, np.uint16)
    rasdl[:, :10] = 65535
    tif = cog.write_layer_cog(tmp_path / "rasdl.tif", rasdl, GRID, cog.layer_spec("rasdl", CODES))
    table = attributes.attribute_table("rasdl", attributes.histogram(rasdl), pixel_area_m2=100.0, codes=CODES)
    (tmp_path / "rasdl.tif.aux.xml").write_bytes(attributes.aux_xml_bytes(table))
    columns, rows = _gdal_table(tif)
    assert [c[0] for c in columns] == ["value", "count", "obs_count"] and len(rows) == 202
    assert rows[120][:2] == ["120", str(GRID.width * GRID.height - 10 * GRID.height)] and rows[-1][0] == "65535"


def test_clr_text_is_code_and_rgb_per_line():
    data = attributes.clr_bytes(cog.ras_colours())
    lines = data.decode().splitlines()
    assert lines[0] == "1 255 0 0" and lines[-1] == "254 230 230 230" and len(lines) == 13
    assert data.endswith(b"\n")
    with pytest.raises(ValueError, match="0-255"):
        attributes.clr_bytes({1: (256, 0, 0)})
