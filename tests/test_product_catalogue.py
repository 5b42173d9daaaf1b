"""The STAC catalogue of the product tiles (collections, items, offline validation) and the styled
quicklook PNG that is the items' thumbnail."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from PIL import Image

from clcplus_ops.config import Config
from clcplus_ops.geo.eea_grid import product_name
from clcplus_ops.geo.grid import Grid
from clcplus_ops.products import catalogue, cog, quicklook

# A 2 km stand-in of a 100 km tile: origin on the 100 km grid, 200 x 200 px.
GRID = Grid.from_bounds(3035, (4_400_000.0, 3_600_000.0, 4_402_000.0, 3_602_000.0), 10.0)
START, END, REVISED = date(2022, 10, 1), date(2024, 3, 31), date(2024, 6, 14)
PRODUCER = "CLCplus production consortium"
SCHEMAS = Path(catalogue.__file__).resolve().parents[1] / "data" / "stac_schemas"


def _ras() -> np.ndarray:
    ras = np.random.default_rng(1).integers(1, 12, GRID.shape).astype(np.uint8)
    ras[:, :60] = 254  # outside area on the west
    ras[:40, 60:] = 253  # coastal seawater in the north
    return ras


def _rasdl() -> np.ndarray:
    counts = np.full(GRID.shape, 100, np.uint16)
    counts[:, :60] = 0
    counts[:, 140:] = 200
    counts[:40] = 65535  # outside area
    return counts


def _write_tile(folder: Path, layer: str, array: np.ndarray) -> dict[str, Path]:
    """The files of one delivered layer: COG, stand-in attribute table and metadata, quicklook."""
    name = product_name(layer, 2023, "e44n36", 3035, 1, 0)
    spec = cog.layer_spec(layer, Config().codes)
    # 64 px blocks so the 200 px stand-in has overviews, as a 10,000 px tile has with 1024.
    tif = cog.write_layer_cog(folder / name.file(), array, GRID, spec, block_px=64)
    aux = folder / name.file(".tif.aux.xml")
    aux.write_text("<PAMDataset><PAMRasterBand band=\"1\"/></PAMDataset>\n")
    xml = folder / name.file(".xml")
    xml.write_text("<gmd:MD_Metadata xmlns:gmd=\"http://www.isotc211.org/2005/gmd\"/>\n")
    png = quicklook.write_quicklook(tif, folder / name.file(".png"), size=100)
    return {"data": tif, "attributes": aux, "metadata": xml, "thumbnail": png}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> dict[str, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("tiles")
    return {"ras": _write_tile(folder, "ras", _ras()), "rasdl": _write_tile(folder, "rasdl", _rasdl())}


def _item(files: dict[str, Path], layer: str) -> pystac.Item:
    spec = cog.layer_spec(layer, Config().codes)
    footprint = GRID.footprint_lonlat()
    return catalogue.tile_item(
        file_stem=product_name(layer, 2023, "e44n36", 3035, 1, 0).stem, layer=layer, reference_year=2023,
        tile="e44n36", epsg=3035, shape=GRID.shape, transform=GRID.transform, bbox_native=GRID.bounds,
        bbox_wgs84=footprint.bounds, footprint_wgs84=shapely.geometry.mapping(footprint),
        acquisition_start=START, acquisition_end=END, revision_date=REVISED, nodata=spec.nodata,
        dtype=spec.dtype, assets={k: catalogue.TileAsset(href=p.name, path=p) for k, p in files.items()},
        collection_href="../collection.json",
        class_names=catalogue.ras_class_names() if layer == "ras" else None,
        colours=spec.colours if layer == "ras" else None)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- collections -------------------------------------------------------------------------------

def test_a_collection_per_layer_and_year_validates_offline_and_lists_no_items(no_network):
    bbox = (-31.3, 27.6, 44.8, 71.2)
    for layer in catalogue.LAYERS:
        collection = catalogue.layer_collection(layer, 2023, bbox, START, END, PRODUCER)
        catalogue.validate_offline(collection)
        data = json.loads(catalogue.to_json_bytes(collection))
        assert data["id"] == f"clms-clcplus-{layer}-2023" and data["type"] == "Collection"
        assert data["extent"]["spatial"]["bbox"] == [list(bbox)]
        assert data["extent"]["temporal"]["interval"] == [["2022-10-01T00:00:00Z", "2024-03-31T23:59:59Z"]]
        assert data["license"] == "other"
        assert [link["rel"] for link in data["links"]] == ["license"]  # no item, child or self link
        assert data["links"][0]["href"] == catalogue.LICENSE_URL
        roles = {p["name"]: p["roles"] for p in data["providers"]}
        assert roles[PRODUCER] == ["producer", "processor"] and "host" in roles["European Environment Agency (EEA)"]
    again = catalogue.layer_collection("ras", 2023, bbox, START, END, PRODUCER)
    assert catalogue.to_json_bytes(again) == catalogue.to_json_bytes(
        catalogue.layer_collection("ras", 2023, bbox, START, END, PRODUCER))
    with pytest.raises(ValueError, match="unknown layer"):
        catalogue.layer_collection("ndvi", 2023, bbox, START, END, PRODUCER)
    with pytest.raises(ValueError, match="ends .* before it starts"):
        catalogue.layer_collection("ras", 2023, bbox, END, START, PRODUCER)


# --- items -------------------------------------------------------------------------------------

def test_ras_item_has_projection_file_raster_and_classification_fields_and_validates_offline(tiles, no_network):
    files = tiles["ras"]
    item = _item(files, "ras")
    catalogue.validate_offline(item)
    data = json.loads(catalogue.to_json_bytes(item))

    assert data["id"] == "CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00"
    assert data["collection"] == "clms-clcplus-ras-2023"
    assert {(link["rel"], link["href"]) for link in data["links"]} == {
        ("collection", "../collection.json"), ("parent", "../collection.json")}
    props = data["properties"]
    assert props["datetime"] is None
    assert (props["start_datetime"], props["end_datetime"]) == ("2022-10-01T00:00:00Z", "2024-03-31T23:59:59Z")
    assert props["created"] == "2024-06-14T00:00:00Z"
    assert props["proj:code"] == "EPSG:3035" and props["proj:bbox"] == list(GRID.bounds)
    assert data["stac_extensions"] == [
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/file/v2.1.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "https://stac-extensions.github.io/classification/v2.0.0/schema.json"]

    assets = data["assets"]
    assert list(assets) == ["data", "metadata", "attributes", "thumbnail"]
    for key, path in files.items():
        assert assets[key]["href"] == path.name
        assert assets[key]["file:size"] == path.stat().st_size
        assert assets[key]["file:checksum"] == "1220" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert assets["data"]["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert assets["metadata"]["type"] == assets["attributes"]["type"] == "application/xml"
    assert assets["thumbnail"]["type"] == "image/png" and "thumbnail" in assets["thumbnail"]["roles"]
    with rasterio.open(files["data"]) as ds:
        assert assets["data"]["proj:shape"] == [ds.height, ds.width]
        assert assets["data"]["proj:transform"] == list(ds.transform)[:6]
        table = ds.colormap(1)
    band = assets["data"]["raster:bands"][0]
    assert band["data_type"] == "uint8" and band["spatial_resolution"] == 10.0
    assert "nodata" not in band  # RAS declares no NoData
    classes = {c["value"]: c for c in assets["data"]["classification:classes"]}
    assert set(classes) == set(range(1, 12)) | {253, 254}
    assert classes[2]["title"] == "Woody needle leaved trees" and classes[2]["name"] == "woody_needle_leaved_trees"
    assert classes[254]["title"] == "Outside area"
    for value, cls in classes.items():
        assert cls["color_hint"] == "{:02X}{:02X}{:02X}".format(*table[value][:3])

    # pystac reads it back to the same JSON.
    assert catalogue.to_json_bytes(pystac.Item.from_dict(json.loads(catalogue.to_json_bytes(item)))) == \
        catalogue.to_json_bytes(item)


def test_rasdl_item_declares_its_outside_code_as_nodata_and_has_no_classes(tiles, no_network):
    item = _item(tiles["rasdl"], "rasdl")
    catalogue.validate_offline(item)
    data = json.loads(catalogue.to_json_bytes(item))
    band = data["assets"]["data"]["raster:bands"][0]
    assert band["data_type"] == "uint16" and band["nodata"] == 65535
    assert "classification:classes" not in data["assets"]["data"]
    assert not any("classification" in uri for uri in data["stac_extensions"])


def test_same_inputs_give_the_same_item_bytes_whatever_the_asset_order(tiles):
    files = tiles["ras"]
    first = catalogue.to_json_bytes(_item(files, "ras"))
    second = catalogue.to_json_bytes(_item(dict(reversed(list(files.items()))), "ras"))
    assert first == second and first.endswith(b"}\n")


def test_invalid_fields_fail_validation(tiles, no_network):
    item = _item(tiles["ras"], "ras")
    item.assets["data"].extra_fields["proj:shape"] = "200 x 200"
    with pytest.raises(pystac.errors.STACValidationError,
                       match=r"projection/v2.0.0.*at assets/data/proj:shape: '200 x 200' is not of type 'array'"):
        catalogue.validate_offline(item)

    item = _item(tiles["ras"], "ras")
    item.assets["metadata"].extra_fields["file:checksum"] = "sha256:" + "ab" * 32
    with pytest.raises(pystac.errors.STACValidationError,
                       match=r"file/v2.1.0.*at assets/metadata/file:checksum: 'sha256:(ab)+' does not match"):
        catalogue.validate_offline(item)

    item = _item(tiles["ras"], "ras")
    item.assets["data"].extra_fields["classification:classes"][0]["color_hint"] = "red"
    with pytest.raises(pystac.errors.STACValidationError,
                       match=r"classification/v2.0.0.*classification:classes/0/color_hint: 'red' does not match"):
        catalogue.validate_offline(item)

    item = _item(tiles["ras"], "ras")
    del item.properties["start_datetime"]  # datetime null needs the window
    with pytest.raises(pystac.errors.STACValidationError, match="item.json.*'start_datetime' is a required"):
        catalogue.validate_offline(item)


def test_a_schema_not_kept_locally_is_refused_not_fetched(tiles, no_network):
    item = _item(tiles["ras"], "ras")
    # The guard bites: pystac's own validator fetches extension schemas and is stopped here.
    with pytest.raises(pystac.validation.GetSchemaError, match="network access attempted"):
        pystac.validation.validate(item, validator=pystac.validation.JsonSchemaSTACValidator())
    item.stac_extensions.append("https://stac-extensions.github.io/eo/v1.1.0/schema.json")
    with pytest.raises(pystac.validation.GetSchemaError, match="eo/v1.1.0.*never fetched"):
        catalogue.validate_offline(item)
    # A $ref inside a kept schema to one that is not (PROJJSON, followed only for proj:projjson).
    item = _item(tiles["ras"], "ras")
    item.properties["proj:projjson"] = {"type": "ProjectedCRS", "name": "ETRS89-extended / LAEA Europe"}
    with pytest.raises(pystac.validation.GetSchemaError, match="projjson"):
        catalogue.validate_offline(item)


def test_wrong_arguments_are_refused_with_the_reason(tiles):
    files = tiles["ras"]
    gdal_order = (GRID.transform.c, 10.0, 0.0, GRID.transform.f, 0.0, -10.0)
    kwargs = dict(file_stem="CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00", layer="ras", reference_year=2023, tile="e44n36", epsg=3035, shape=GRID.shape,
                  transform=GRID.transform, bbox_native=GRID.bounds, bbox_wgs84=(11.2, 55.4, 11.3, 55.6),
                  footprint_wgs84={"type": "Point", "coordinates": [11.25, 55.5]}, acquisition_start=START,
                  acquisition_end=END, revision_date=REVISED, nodata=None, dtype="uint8",
                  assets={"data": catalogue.TileAsset("a.tif", files["data"])}, collection_href="../c.json")
    catalogue.tile_item(**kwargs)
    with pytest.raises(ValueError, match="not the product file stem of layer ras, year 2023, tile e45n36"):
        catalogue.tile_item(**{**kwargs, "tile": "e45n36"})
    with pytest.raises(ValueError, match="naming rule"):
        catalogue.tile_item(**{**kwargs, "file_stem": "ras_e44n36"})
    with pytest.raises(ValueError, match="GDAL's geotransform order"):
        catalogue.tile_item(**{**kwargs, "transform": gdal_order})
    with pytest.raises(ValueError, match="spans"):
        catalogue.tile_item(**{**kwargs, "shape": (100, 200)})
    with pytest.raises(ValueError, match="must include 'data'"):
        catalogue.tile_item(**{**kwargs, "assets": {"metadata": catalogue.TileAsset("a.xml", files["metadata"])}})
    with pytest.raises(ValueError, match="must include 'data'"):
        catalogue.tile_item(**{**kwargs, "assets": {**kwargs["assets"],
                                                    "preview": catalogue.TileAsset("p", files["thumbnail"])}})
    with pytest.raises(FileNotFoundError, match="asset 'data'"):
        catalogue.tile_item(**{**kwargs, "assets": {"data": catalogue.TileAsset("a.tif", Path("/nonexistent.tif"))}})
    with pytest.raises(ValueError, match="dtype 'int7'"):
        catalogue.tile_item(**{**kwargs, "dtype": "int7"})
    with pytest.raises(ValueError, match="give class_names"):
        catalogue.tile_item(**{**kwargs, "colours": {1: (255, 0, 0)}})


def test_vendored_schemas_are_the_recorded_ones():
    """Every vendored schema is listed in SOURCES.md with its SHA-256, and matches it."""
    rows = re.findall(r"^\| `([^`]+/schema\.json)` \| (\S+) \|.*\| ([0-9a-f]{64}) \|$",
                      (SCHEMAS / "SOURCES.md").read_text(), re.MULTILINE)
    on_disk = sorted(str(p.relative_to(SCHEMAS)) for p in SCHEMAS.rglob("schema.json"))
    assert sorted(r[0] for r in rows) == on_disk and len(on_disk) == 4
    for path, uri, sha in rows:
        assert hashlib.sha256((SCHEMAS / path).read_bytes()).hexdigest() == sha, path
        assert uri in catalogue.local_extension_schemas()
    assert "Apache License\n                           Version 2.0" in (SCHEMAS / "LICENSE-Apache-2.0.txt").read_text()


# --- quicklook ---------------------------------------------------------------------------------

def _png_chunks(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append(kind)
        pos += 12 + length
    return chunks


def test_ras_quicklook_uses_the_colour_table_with_the_outside_area_transparent(tiles, tmp_path):
    tif, png = tiles["ras"]["data"], tiles["ras"]["thumbnail"]
    image = np.asarray(Image.open(png))
    assert image.shape == (100, 100, 4)
    with rasterio.open(tif) as ds:
        table = ds.colormap(1)
        codes = ds.read(1, out_shape=(100, 100))  # the same nearest decimation
    assert (image[..., 3][codes == 254] == 0).all()
    inside = codes != 254
    assert (image[..., 3][inside] == 255).all()
    expected = np.array([table[v][:3] for v in codes[inside]], np.uint8)
    np.testing.assert_array_equal(image[..., :3][inside], expected)
    assert set(_png_chunks(png)) == {b"IHDR", b"IDAT", b"IEND"}  # no time or text chunks
    again = quicklook.write_quicklook(tif, tmp_path / "again.png", size=100)
    assert again.read_bytes() == png.read_bytes()
    # Never larger than the COG itself.
    assert Image.open(quicklook.write_quicklook(tif, tmp_path / "full.png", size=5000)).size == (200, 200)


def test_rasdl_quicklook_uses_the_count_ramp(tiles):
    image = np.asarray(Image.open(tiles["rasdl"]["thumbnail"]))
    ramp = dict(quicklook.COUNT_RAMP)
    assert tuple(image[80, 10]) == (*ramp[0], 255)
    assert tuple(image[80, 50]) == (*ramp[100], 255)
    assert tuple(image[80, 90]) == (*ramp[200], 255)
    assert image[5, 50, 3] == 0  # 65535: outside area
    lut = quicklook.count_ramp()
    assert tuple(lut[50][:3]) == tuple(round((a + b) / 2) for a, b in zip(ramp[0], ramp[100]))
    assert tuple(lut[5000]) == (*ramp[200], 255)


def test_rascl_quicklook_drops_the_declared_nodata(tmp_path):
    spec = cog.layer_spec("rascl", Config().codes)
    confidence = np.full(GRID.shape, 73, np.uint8)
    confidence[:, :100] = spec.nodata
    tif = cog.write_layer_cog(tmp_path / "rascl.tif", confidence, GRID, spec, block_px=64)
    image = np.asarray(Image.open(quicklook.write_quicklook(tif, tmp_path / "rascl.png", size=50)))
    assert (image[:, :25, 3] == 0).all()
    assert (image[:, 25:] == (*spec.colours[73], 255)).all()
