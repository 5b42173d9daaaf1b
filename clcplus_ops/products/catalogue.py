"""The STAC catalogue of the delivered product: a collection per layer and reference year
(``clms-clcplus-ras-2023``) and an item per layer and 100 km product tile, id = the product file
stem (``CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00``).

Decisions:

* Time: the product is a composite of a whole acquisition window, so items carry
  ``start_datetime`` / ``end_datetime`` (the window's first day 00:00:00Z to its last day
  23:59:59Z) and ``datetime`` null. The revision date of the product file is the item's
  ``created``.
* Licence: ``other`` (STAC 1.1's value for a licence without an SPDX id) with a ``license`` link to
  the Copernicus data policy, Commission Delegated Regulation (EU) No 1159/2013 (free, full and
  open access with attribution).
* Providers: the producer (producer, processor) and the EEA (licensor, host).
* Collections do not list their items: a published collection never changes when a tile is
  published. Items link to their collection (``collection`` and ``parent``) by the relative href
  the caller gives; asset hrefs are taken as given, so the key layout stays the caller's.
* Extensions are those pystac writes: projection v2.0.0 (``proj:code`` and ``proj:bbox`` in the
  properties, ``proj:shape`` and ``proj:transform`` on the data asset: the thumbnail has another
  shape), file v2.1.0 (``file:size``, ``file:checksum`` as a SHA-256 multihash on every asset),
  raster v1.1.0 (``raster:bands`` on the data asset; ``nodata`` only where the file declares one,
  so not for RAS) and classification v2.0.0 (``classification:classes`` on the data asset when
  class names are given, with colour hints from the colour table).
* JSON: pystac's dict without a self link and with hrefs as given, two-space indent; the same
  inputs give the same bytes.

Validation runs offline: STAC core schemas from pystac's own copies, extension schemas from
``clcplus_ops/data/stac_schemas`` (see SOURCES.md there); a reference to any other schema is
refused with a ``GetSchemaError`` instead of being fetched.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from pystac.validation import GetSchemaError, STACValidator
from pystac.validation.local_validator import get_local_schema_cache
from pystac.validation.schema_uri_map import DefaultSchemaUriMap

from clcplus_ops.geo.eea_grid import parse_product_filename
from clcplus_ops.store import sha256_file

LAYERS = ("ras", "rascl", "rasdl", "raspl")
LAYER_TITLES = {
    "ras": "land cover",
    "rascl": "classification confidence",
    "rasdl": "valid observations",
    "raspl": "post-processing flag",
}
LAYER_DESCRIPTIONS = {
    "ras": ("Land cover in 11 classes (1 Sealed, 2 Woody needle leaved trees, 3 Woody broadleaved "
            "deciduous trees, 4 Woody broadleaved evergreen trees, 5 Low-growing woody plants, "
            "6 Permanent herbaceous, 7 Periodically herbaceous, 8 Lichens and mosses, 9 Non and sparsely "
            "vegetated, 10 Water, 11 Snow and ice); 253 coastal seawater, 254 outside area. "
            "No NoData value is declared."),
    "rascl": "Confidence of the land-cover classification per pixel, 0 to 100; the outside area has its "
             "own code, declared as NoData.",
    "rasdl": "Number of valid satellite observations per pixel over the acquisition window, 0 to 200; the "
             "outside area has its own code, declared as NoData.",
    "raspl": "Post-processing flag per pixel: 0 unchanged, 1 recoded by a post-processing rule; the "
             "outside area has its own code, declared as NoData.",
}
KEYWORDS = ["Copernicus", "CLMS", "CLCplus Backbone", "land cover", "Sentinel-2", "Europe"]
LICENSE = "other"
LICENSE_URL = "https://eur-lex.europa.eu/eli/reg_del/2013/1159/oj"
LICENSE_TITLE = ("Copernicus data policy: Commission Delegated Regulation (EU) No 1159/2013 "
                 "(free, full and open access)")
EEA = pystac.Provider(name="European Environment Agency (EEA)", url="https://www.eea.europa.eu",
                      roles=[pystac.ProviderRole.LICENSOR, pystac.ProviderRole.HOST])

# Asset keys, in the order they appear in an item, with their media type, roles and title.
ASSETS: dict[str, tuple[str, list[str], str]] = {
    "data": (pystac.MediaType.COG, ["data"], "Cloud-Optimized GeoTIFF"),
    "metadata": (pystac.MediaType.XML, ["metadata"], "INSPIRE metadata (ISO 19139)"),
    "attributes": (pystac.MediaType.XML, ["metadata"], "Raster attribute table (GDAL .tif.aux.xml)"),
    "thumbnail": (pystac.MediaType.PNG, ["thumbnail", "overview"], "Styled quicklook"),
}
STAC_SCHEMAS_DIR = "data/stac_schemas"
_EXTENSION_HOST = "https://stac-extensions.github.io/"


@dataclass(frozen=True)
class TileAsset:
    href: str  # where the file is published, as written in the item (relative path or URL)
    path: Path  # the local file, for its size and checksum


def collection_id(layer: str, reference_year: int) -> str:
    """``clms-clcplus-ras-2023``."""
    _check_layer(layer)
    return f"clms-clcplus-{layer}-{int(reference_year)}"


def layer_collection(layer: str, reference_year: int, bbox_wgs84, acquisition_start: date,
                     acquisition_end: date, producer: str) -> pystac.Collection:
    """The STAC collection of one layer and reference year (no item links: it never changes when
    a tile is published)."""
    _check_layer(layer)
    start, end = _window(acquisition_start, acquisition_end)
    if not producer:
        raise ValueError("the collection needs the producer's name")
    collection = pystac.Collection(
        id=collection_id(layer, reference_year),
        title=f"CLCplus Backbone {int(reference_year)} {layer.upper()}: {LAYER_TITLES[layer]}, 10 m",
        description=(f"Copernicus Land Monitoring Service, CLCplus Backbone, reference year {int(reference_year)}, "
                     f"layer {layer.upper()}. {LAYER_DESCRIPTIONS[layer]} 100 km tiles of 10,000 x 10,000 pixels "
                     "in EPSG:3035 (French overseas departments: one tile each in its UTM zone), delivered as "
                     "Cloud-Optimized GeoTIFFs with INSPIRE metadata."),
        extent=pystac.Extent(pystac.SpatialExtent([_bbox(bbox_wgs84, "bbox_wgs84")]),
                             pystac.TemporalExtent([[start, end]])),
        license=LICENSE,
        keywords=list(KEYWORDS),
        providers=[pystac.Provider(name=producer, roles=[pystac.ProviderRole.PRODUCER,
                                                         pystac.ProviderRole.PROCESSOR]), EEA],
    )
    collection.add_link(pystac.Link(rel=pystac.RelType.LICENSE, target=LICENSE_URL, media_type="text/html",
                                    title=LICENSE_TITLE))
    return collection


def tile_item(*, file_stem: str, layer: str, reference_year: int, tile: str, epsg: int,
              shape: tuple[int, int], transform, bbox_native, bbox_wgs84, footprint_wgs84: dict,
              acquisition_start: date, acquisition_end: date, revision_date: date, nodata: int | None,
              dtype: str, assets: dict[str, TileAsset], collection_href: str,
              class_names: dict[int, str] | None = None,
              colours: dict[int, tuple] | None = None) -> pystac.Item:
    """The STAC item of one layer of one product tile.

    ``transform``: the grid's affine coefficients in rasterio's order (a, b, c, d, e, f), 6 numbers
    or 9 ending 0, 0, 1 (an ``affine.Affine`` works); it must agree with ``shape`` (rows, cols) and
    ``bbox_native``. ``assets``: ``data`` (required), ``metadata``, ``attributes``, ``thumbnail``.
    ``class_names`` (value -> name, e.g. ``ras_class_names()``) adds the classification extension,
    ``colours`` (value -> RGB[A]) its colour hints."""
    _check_layer(layer)
    name = parse_product_filename(file_stem)
    if name.stem != file_stem or (name.layer, name.reference_year, name.tile, name.epsg) != \
            (layer, int(reference_year), tile.lower(), int(epsg)):
        raise ValueError(f"item id {file_stem!r} is not the product file stem of layer {layer}, year "
                         f"{reference_year}, tile {tile}, EPSG {epsg}")
    start, end = _window(acquisition_start, acquisition_end)
    if not isinstance(revision_date, date):
        raise TypeError(f"revision_date must be a date, got {revision_date!r}")
    rows, cols = _shape(shape)
    coefficients = _transform(transform)
    native = _bbox(bbox_native, "bbox_native")
    _check_grid(coefficients, rows, cols, native)
    try:
        data_type = DataType(dtype)
    except ValueError:
        known = ", ".join(d.value for d in DataType)
        raise ValueError(f"dtype {dtype!r} is not a raster data type ({known})") from None
    unknown = set(assets) - set(ASSETS)
    if unknown or "data" not in assets:
        raise ValueError(f"assets must include 'data' and may include {', '.join(k for k in ASSETS if k != 'data')}; "
                         f"got {sorted(assets)}")
    if colours is not None and class_names is None:
        raise ValueError("colours are colour hints of classes: give class_names with them")
    if not footprint_wgs84 or "type" not in footprint_wgs84:
        raise ValueError(f"footprint_wgs84 must be a GeoJSON geometry, got {footprint_wgs84!r}")

    item = pystac.Item(
        id=file_stem,
        geometry=footprint_wgs84,
        bbox=_bbox(bbox_wgs84, "bbox_wgs84"),
        datetime=None,
        start_datetime=start,
        end_datetime=end,
        properties={"title": f"CLCplus Backbone {int(reference_year)} {layer.upper()} tile {tile.upper()}"},
        collection=collection_id(layer, reference_year),
    )
    item.common_metadata.created = datetime.combine(revision_date, time(0, 0), tzinfo=timezone.utc)
    item.add_link(pystac.Link(rel=pystac.RelType.COLLECTION, target=collection_href,
                              media_type=pystac.MediaType.JSON))
    item.add_link(pystac.Link(rel=pystac.RelType.PARENT, target=collection_href, media_type=pystac.MediaType.JSON))

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code = f"EPSG:{int(epsg)}"
    proj.bbox = native

    for key in ASSETS:  # fixed order, whatever the caller's dict order
        if key not in assets:
            continue
        media_type, roles, title = ASSETS[key]
        tile_asset = assets[key]
        path = Path(tile_asset.path)
        if not path.is_file():
            raise FileNotFoundError(f"asset {key!r}: {path} does not exist or is not a regular file")
        item.add_asset(key, pystac.Asset(href=tile_asset.href, media_type=media_type, roles=list(roles),
                                         title=f"{layer.upper()} {title}"))
        asset = item.assets[key]
        info = FileExtension.ext(asset, add_if_missing=True)
        info.size = path.stat().st_size
        info.checksum = sha256_multihash(path)

    data = item.assets["data"]
    data_proj = ProjectionExtension.ext(data)
    data_proj.shape = [rows, cols]
    data_proj.transform = coefficients
    band = RasterBand.create(data_type=data_type, nodata=nodata, sampling="area",
                             spatial_resolution=abs(coefficients[0]))
    RasterExtension.ext(data, add_if_missing=True).bands = [band]
    if class_names:
        ClassificationExtension.ext(data, add_if_missing=True).classes = _classes(class_names, colours or {})
    return item


def ras_class_names() -> dict[int, str]:
    """RAS class names by code: the 11 land-cover classes, coastal seawater and outside area (the
    configured codes)."""
    from clcplus_ops.config import CodesConfig

    codes = CodesConfig()
    return {**codes.classes, codes.coastal_seawater: "Coastal seawater", codes.outside: "Outside area"}


def sha256_multihash(path: Path) -> str:
    """``file:checksum`` of a file: its SHA-256 as a multihash in hex (0x12 sha2-256, 0x20 bytes)."""
    return "1220" + sha256_file(path)


def to_json_bytes(obj: pystac.STACObject) -> bytes:
    """The published JSON of a collection or item: no self link, hrefs as given, two-space indent,
    final newline."""
    data = obj.to_dict(include_self_link=False, transform_hrefs=False)
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def validate_offline(obj: pystac.STACObject) -> None:
    """Validate the JSON that ``to_json_bytes`` writes against the STAC core schema and every
    extension schema it names, without network access. Raises ``pystac.errors.STACValidationError``
    naming the object, the schema and the failing field; ``GetSchemaError`` if a schema is not
    available locally."""
    data = obj.to_dict(include_self_link=False, transform_hrefs=False)
    pystac.validation.validate_dict(data, stac_object_type=obj.STAC_OBJECT_TYPE,
                                    stac_version=pystac.get_stac_version(),
                                    extensions=list(obj.stac_extensions), validator=_offline_validator())


class OfflineValidator(STACValidator):
    """A pystac validator over a fixed set of local schemas; any other schema URI is refused."""

    def __init__(self, schemas: dict[str, dict]) -> None:
        from referencing import Registry, Resource

        self._schemas = schemas
        self._registry = Registry(retrieve=self._refuse).with_resources(
            (uri, Resource.from_contents(schema)) for uri, schema in schemas.items())
        self._uri_map = DefaultSchemaUriMap()

    @staticmethod
    def _refuse(uri: str):
        raise GetSchemaError(uri, LookupError(
            "not shipped with pystac nor kept in clcplus_ops/data/stac_schemas, and schemas are never "
            "fetched over the network"))

    def validate_core(self, stac_dict, stac_object_type, stac_version, href=None):
        uri = self._uri_map.get_object_schema_uri(stac_object_type, stac_version)
        if uri is None:
            raise GetSchemaError(f"<{stac_object_type} {stac_version}>", LookupError("no core schema known"))
        self._validate(stac_dict, stac_object_type, uri)
        return uri

    def validate_extension(self, stac_dict, stac_object_type, stac_version, extension_id, href=None):
        self._validate(stac_dict, stac_object_type, extension_id)
        return extension_id

    def _validate(self, stac_dict: dict, stac_object_type, uri: str) -> None:
        import jsonschema
        from referencing.exceptions import Unresolvable

        key = uri.rstrip("#")
        if key not in self._schemas:
            self._refuse(uri)
        schema = self._schemas[key]
        cls = jsonschema.validators.validator_for(schema)
        validator = cls(schema, registry=self._registry)
        try:
            errors = list(validator.iter_errors(stac_dict))
        except Unresolvable as error:  # a $ref to a schema that is not kept locally
            raise _schema_error(error) from error
        if errors:
            best = jsonschema.exceptions.best_match(errors)
            if best.context:  # a oneOf / anyOf that quotes the whole object: find the field
                best = _deepest(best.context)
            where = "/".join(str(p) for p in best.absolute_path) or "(root)"
            raise pystac.errors.STACValidationError(
                f"{stac_object_type} {stac_dict.get('id')!r} is not valid against {uri}: at {where}: {best.message}",
                source=errors) from best


def _deepest(errors: list) -> Any:
    """The error that names the offending field. Extension schemas wrap everything in a ``oneOf``
    (item / collection) whose own message quotes the whole object; the failing field is the deepest
    error below it (the other branch fails at ``type``)."""
    leaves = []
    stack = list(errors)
    while stack:
        error = stack.pop()
        if error.context:
            stack.extend(error.context)
        else:
            leaves.append(error)
    return max(leaves, key=lambda e: (len(e.absolute_path), -len(e.message), e.message))


def _schema_error(error: BaseException) -> GetSchemaError:
    """The GetSchemaError that the registry's retrieve raised, found under jsonschema's and
    referencing's wrappers."""
    seen = error
    while seen is not None:
        if isinstance(seen, GetSchemaError):
            return seen
        seen = getattr(seen, "_wrapped", None) or seen.__cause__ or seen.__context__
    return GetSchemaError(str(error), error)


@lru_cache(maxsize=1)
def _offline_validator() -> OfflineValidator:
    return OfflineValidator({**get_local_schema_cache(), **local_extension_schemas()})


def local_extension_schemas() -> dict[str, dict]:
    """The vendored extension schemas by URI (``<extension>/<version>/schema.json`` under
    ``clcplus_ops/data/stac_schemas`` is ``https://stac-extensions.github.io/<extension>/<version>/schema.json``)."""
    root = resources.files("clcplus_ops").joinpath(STAC_SCHEMAS_DIR)
    schemas = {}
    for extension in sorted(p for p in root.iterdir() if p.is_dir()):
        for version in sorted(p for p in extension.iterdir() if p.is_dir()):
            uri = f"{_EXTENSION_HOST}{extension.name}/{version.name}/schema.json"
            schema = json.loads(version.joinpath("schema.json").read_text(encoding="utf-8"))
            if schema.get("$id", "").rstrip("#") != uri:
                raise ValueError(f"{STAC_SCHEMAS_DIR}/{extension.name}/{version.name}/schema.json has $id "
                                 f"{schema.get('$id')!r}, expected {uri}")
            schemas[uri] = schema
    return schemas


def _classes(class_names: dict[int, str], colours: dict[int, tuple]) -> list[Classification]:
    out = []
    for value in sorted(class_names):
        title = class_names[value]
        rgb = colours.get(value)
        out.append(Classification.create(
            value=int(value), name=_machine_name(title), title=title,
            color_hint=None if rgb is None else "".join(f"{int(c):02X}" for c in rgb[:3])))
    return out


def _machine_name(title: str) -> str:
    # classification v2 names are machine-readable ([0-9A-Za-z-_]); the title keeps the product's words.
    name = re.sub(r"[^0-9A-Za-z]+", "_", title.strip()).strip("_").lower()
    if not name:
        raise ValueError(f"class name {title!r} has no letters or digits")
    return name


def _check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; layers are {', '.join(LAYERS)}")


def _window(start: date, end: date) -> tuple[datetime, datetime]:
    for what, value in (("acquisition_start", start), ("acquisition_end", end)):
        if not isinstance(value, date) or isinstance(value, datetime):
            raise TypeError(f"{what} must be a date (a day), got {value!r}")
    if end < start:
        raise ValueError(f"acquisition window ends ({end}) before it starts ({start})")
    return (datetime.combine(start, time(0, 0, 0), tzinfo=timezone.utc),
            datetime.combine(end, time(23, 59, 59), tzinfo=timezone.utc))


def _bbox(bbox, what: str) -> list[float]:
    values = [float(v) for v in bbox]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be 4 finite numbers (min x, min y, max x, max y), got {bbox!r}")
    if values[0] >= values[2] or values[1] >= values[3]:
        raise ValueError(f"{what} {values} has min >= max")
    return values


def _shape(shape) -> tuple[int, int]:
    if len(shape) != 2 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"shape must be (rows, cols) of positive integers, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _transform(transform) -> list[float]:
    values = [float(v) for v in transform]
    if len(values) == 9:
        if values[6:] != [0.0, 0.0, 1.0]:
            raise ValueError(f"a 9-number transform ends 0, 0, 1; got {values}")
        values = values[:6]
    if len(values) != 6:
        raise ValueError(f"transform must be 6 or 9 affine coefficients, got {len(values)}: {transform!r}")
    return values


def _check_grid(t: list[float], rows: int, cols: int, bbox: list[float]) -> None:
    """The transform, the shape and the native bbox describe the same north-up grid."""
    a, b, c, d, e, f = t
    corners = (c, f + e * rows, c + a * cols, f)
    tolerance = 1e-6 * max(abs(a), abs(e), 1.0)
    if b != 0 or d != 0 or a <= 0 or e >= 0 or any(abs(x - y) > tolerance for x, y in zip(corners, bbox)):
        raise ValueError(
            f"transform {t} with shape ({rows}, {cols}) spans {list(corners)}, not bbox_native {bbox}; "
            "give a north-up transform in affine order (a, b, c, d, e, f) as rasterio's Affine, "
            "not GDAL's geotransform order")
