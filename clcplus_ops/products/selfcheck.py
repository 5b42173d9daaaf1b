"""The self-check of a delivered product file: EEA's delivery checks for CLCplus Backbone 2023,
run here before delivery, plus the corresponding rules for the auxiliary layers and a few of ours.

The rules and their parameters come from the QC tool's product definition
(``clms_clcplus_ras_s2023_r10m.json``; a French DOM's tile ``gf``, ``gp``, ``mq``, ``re``, ``yt``
takes ``clms_clcplus_ras_s2023_r10m_<dom>.json``, which has no origin and no gap check; any
other definition, e.g. the ``_eu27`` one, can be passed in). What each of EEA's checks does was
read from the QC tool's source (github.com/eea/copernicus_quality_tools, ``src/qc_tool/raster``,
the newest stored version of each check); our rule of the same id does the same unless said:

``qc_tool.raster.unzip``
    The delivery's name ends in ``.zip`` (any case) and Python's ``zipfile`` extracts it.
``qc_tool.raster.naming``
    Every file of the delivery whose lower-cased name ends in ``.tif`` is a layer. The layer
    pattern (``layer_names.raster``) is *searched* in the file name case-insensitively: it is
    anchored at the start (``^``) but not at the end, so anything after ``_r00`` passes. Exactly
    one ``.tif`` must match; any further ``.tif`` fails the check as an "excessive layer" (so a
    delivery zip holds one layer). The ``aoi_code`` group, taken from the lower-cased name, must
    be one of ``aoi_codes`` (unless the list starts with ``*``); the ``epsg_code`` group must be
    one of ``epsg_codes`` (five-digit strings, ``03035``). GDAL must open the file and it must
    have one band. For every entry of ``extensions`` (``a|b`` means either) the file with that
    suffix instead of ``.tif`` must exist; the definition lists only ``.tif``, the file itself.
    ``reference_year`` is only recorded, not compared: the year is a literal (``s2023``) in the
    pattern.
``qc_tool.raster.inspire``
    The metadata folder is the one directory of the delivery whose path ends in ``metadata``
    (any case), else the delivery's root; two such directories fail. It must hold
    ``<file stem>.xml`` or ``<file stem>_metadata.xml``, which EEA sends to the INSPIRE validator
    (ETF test suite "INSPIRE data sets and data set series interoperability metadata"); when
    the validator cannot be reached EEA only notes it. We find the file the same way and
    validate it with the ``metadata_check`` passed in (offline; the production passes
    :func:`clcplus_ops.products.metadata.metadata_problems`); without one the rule is not
    evaluated and does not pass.
``qc_tool.raster.attribute``
    GDAL's default raster attribute table of band 1 (``GetDefaultRAT``; for a GeoTIFF it comes
    from the PAM sidecar ``<file>.tif.aux.xml``) must have, for each regex of
    ``attribute_regexes``, a column whose name matches it entirely, case-insensitively. A
    ``.vat.dbf`` is read only when GDAL gives no table. (EEA's current code raises instead of
    failing cleanly when there is no table or a column is missing; either way the delivery does
    not pass.) We read the PAM file with lxml (there is no GDAL Python binding here); a PAM file
    that starts with an XML declaration fails, as GDAL ignores such a file and EEA would find
    no table.
``qc_tool.raster.epsg``
    The SRS must be projected, and its EPSG code (after GDAL's ``AutoIdentifyEPSG``) must equal
    ``epsg`` (or ``extra_epsg_codes[aoi_code]``). We take the code PROJ identifies with full
    confidence.
``qc_tool.raster.pixel_size``
    Pixels are square (``|a| == |e|`` of the geotransform) and their size equals ``pixelsize``.
``qc_tool.raster.origin``
    The upper-left corner's x and y are multiples of ``grid_size`` (default 1,000 m: EEA's LEAC
    1 km grid). A multiple of the pixel size is checked only when ``grid_size`` is given, which
    the CLCplus definition does not do. (The 100 km tile origin is our ``clcplus.<layer>.grid``.)
``qc_tool.raster.bit_depth``
    GDAL's data type name of band 1, lower-cased, equals ``datatype`` (``byte``).
``qc_tool.raster.compress``
    The ``COMPRESSION`` item of the ``IMAGE_STRUCTURE`` metadata exists and is one of
    ``compression`` (any case).
``qc_tool.raster.value``
    Every value that occurs is one of ``validcodes`` (an item may be a ``[low, high]`` range).
    EEA counts with GDAL's default histogram (256 buckets from -0.5 to 255.5, NoData excluded);
    we count every pixel of any value, which is the same for RAS (uint8, no NoData) and exact
    for the uint16 RASDL.
``qc_tool.raster.gap``
    EEA rasterises its boundary mask (``mask`` = ``eea38uk``: EEA38 + UK) on the raster's grid
    and counts pixels inside it that hold ``outside_area_code`` (254). EEA only *reports* them
    (an info line and a warning raster; the check does not fail, and a missing mask cancels the
    check). Ours fails on any such pixel: the product is a wall-to-wall map. The mask is the
    ``required`` array passed in (``True`` where the tile must be delivered); without it the
    rule is not evaluated and does not pass.
``qc_tool.raster.tile``
    Band 1's block width and height are at most ``max_blocksize`` (1024).
``qc_tool.raster.cog``
    EEA runs GDAL's ``validate_cloud_optimized_geotiff.py --full-check=yes``: its errors fail
    the check, its warnings are information. There is no GDAL Python binding here, so
    :func:`cog_problems` re-implements that script's ``validate`` on rasterio (the TIFF metadata
    domain gives IFD and block offsets and sizes) and the file's bytes (GDAL's structural
    metadata header, block leaders and trailers). rio-cogeo's ``cog_validate`` is a port of an
    older version of the same script but differs where it matters: it calls every strip-organised
    file over 512 px "not tiled" (GDAL only when a strip is wider than 1024 px), accepts any main
    IFD offset under 300 (GDAL wants it right after the structural metadata) and has no full
    check (block order, leader and trailer bytes); and with ``strict=True`` it fails warnings.
    EEA's own test files show it: ``valid_cog_warning.tif`` (1000 px strips, no overviews) is
    valid with a warning for GDAL and EEA, invalid for rio-cogeo. An internal mask band, which
    our layers never have, is reported as an error since its layout cannot be inspected here.
``qc_tool.raster.color``
    For Byte and UInt16 rasters (others pass with a note): the embedded colour table must exist
    and, for every code of ``colors``, hold that RGB (alpha is not compared; other entries are
    free). Then a colour text file ``<name>.clr`` or ``<name>.tif.clr`` must lie beside the
    GeoTIFF, one ``code R G B`` line per entry (single spaces), with the same colours
    (:func:`clcplus_ops.products.attributes.clr_bytes` writes it; the ``.clr`` requirement is in
    the check's newest stored version, commit fe77c0f, not in the product definition).

EEA stops a delivery at a failed required check (unzip, naming); the self-check evaluates every
rule and returns them all.

**Auxiliary layers** (RASCL, RASDL, RASPL; EEA's definition covers RAS only) get the same
checks with their own parameters, under ``clcplus.<layer>.<check>``: the naming pattern with
the layer's name in place of ``ras``, the same aoi and EPSG codes, pixel size, origin, EPSG,
LZW, block size and COG layout; their data type (uint8; RASDL uint16), valid values (RASCL
0-100 and 254, RASDL 0-``max_observations`` and 65535, RASPL 0, 1 and 254), outside code in the
gap rule, colour table (what :func:`clcplus_ops.products.cog.layer_spec` embeds; RASDL has
none, so no colour rule) and attribute columns (:data:`clcplus_ops.products.attributes.COLUMNS`).

**Our own rules**, for every layer:

``clcplus.<layer>.grid``
    The raster is exactly the product tile: ``grid`` when passed, else the 100 km cell the file
    name's tile code names (EPSG from the name, pixel size from the definition: 10,000 x 10,000
    px at 10 m). For a DOM without ``grid`` only the pixel alignment is checked, and the message
    says so.
``clcplus.<layer>.nodata``
    RAS declares no NoData value; RASCL, RASDL and RASPL declare their outside code.
``clcplus.<layer>.attribute_values``
    The attribute table's rows are exactly what
    :func:`clcplus_ops.products.attributes.attribute_table` makes from the raster's histogram.

The raster is read once, in strips of its block height (a 100 km uint8 tile in a few seconds).
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EEA = "qc_tool.raster"
GDAL_TYPE_NAMES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                   "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64",
                   "complex64": "CFloat32", "complex128": "CFloat64"}
OWN_RULES = ("grid", "nodata", "attribute_values")
_LAYER_IN_NAME = re.compile(r"clcplus_(ras|rascl|rasdl|raspl)_", re.IGNORECASE)


@dataclass(frozen=True)
class RuleResult:
    """One rule's outcome. ``evaluated`` is False when an input the rule needs was not given
    (then ``passed`` is False too and ``message`` says what is missing)."""

    rule: str  # EEA's check id ("qc_tool.raster.compress") or ours ("clcplus.rascl.value")
    passed: bool
    message: str
    evaluated: bool = True


MetadataCheck = Callable[[bytes, str], list[str]]


# --------------------------------------------------------------------------------------------
# Product definitions


DEFINITION_YEAR = 2023  # the reference year of EEA's published CLCplus Backbone definitions


def definition_for(tile: str | None, reference_year: int | None = None) -> dict:
    """EEA's product definition for a tile code: the DOM's own for ``gf``, ``gp``, ``mq``, ``re``
    and ``yt``, else the mainland one. EEA publishes the definition of the 2023 product; for
    another reference year its rules apply with that year in the file names (``s2023`` ->
    ``s2025``) and as ``reference_year``, the only places the year occurs in it."""
    from clcplus_ops.geo.aoi import DOMS
    from clcplus_ops.resources import CONVENTIONS_DIR, PRODUCT_DEFINITION_JSON

    if tile is not None and tile.lower() in DOMS:
        path = CONVENTIONS_DIR / f"{PRODUCT_DEFINITION_JSON.stem}_{tile.lower()}.json"
    else:
        path = PRODUCT_DEFINITION_JSON
    definition = json.loads(path.read_text())
    if reference_year is None or int(reference_year) == DEFINITION_YEAR:
        return definition
    year = int(reference_year)
    for step in definition["steps"]:
        if step["check_ident"] == "qc_tool.raster.naming":
            params = step["parameters"]
            params["layer_names"] = {alias: regex.replace(f"_s{DEFINITION_YEAR}_", f"_s{year}_")
                                     for alias, regex in params["layer_names"].items()}
            params["reference_year"] = str(year)
    return definition


def _steps(definition: dict) -> list[tuple[str, dict]]:
    return [(step["check_ident"], dict(step.get("parameters", {}))) for step in definition["steps"]]


def _valid_codes(items) -> set[int]:
    codes: set[int] = set()
    for item in items:
        if isinstance(item, list):
            codes.update(range(int(item[0]), int(item[1]) + 1))
        else:
            codes.add(int(item))
    return codes


def _layer_params(ident: str, params: dict, layer: str, codes, max_observations: int) -> dict:
    """EEA's parameters of check ``ident`` turned into the corresponding ones of ``layer``."""
    from clcplus_ops.products import attributes
    from clcplus_ops.products.cog import layer_spec

    if layer == "ras":
        return params
    params = dict(params)
    spec = layer_spec(layer, codes)
    if ident == "naming":
        names = {}
        for alias, regex in params["layer_names"].items():
            renamed = regex.replace("clcplus_ras_", f"clcplus_{layer}_", 1)
            if renamed == regex:
                raise ValueError(f"naming pattern {regex!r} of the product definition has no 'clcplus_ras_' to "
                                 f"turn into layer {layer}'s name")
            names[alias] = renamed
        params["layer_names"] = names
    elif ident == "attribute":
        params["attribute_regexes"] = [re.escape(c.name) for c in attributes.COLUMNS[layer]]
    elif ident == "bit_depth":
        params["datatype"] = GDAL_TYPE_NAMES[spec.dtype].lower()
    elif ident == "value":
        params["validcodes"] = sorted(attributes.layer_codes(layer, codes, max_observations))
    elif ident == "gap":
        params["outside_area_code"] = attributes.outside_code(layer, codes)
    elif ident == "color":
        params["colors"] = {str(code): list(rgb) for code, rgb in spec.colours.items()}
    return params


# --------------------------------------------------------------------------------------------
# The raster, read once


@dataclass
class _Raster:
    opened: bool
    error: str = ""
    driver: str = ""
    count: int = 0
    dtype: str = ""
    crs: object = None
    transform: object = None
    width: int = 0
    height: int = 0
    block: tuple[int, int] = (0, 0)  # (rows, cols)
    compression: str | None = None
    colormap: dict | None = None
    nodata: float | None = None
    histogram: dict | None = None
    gap_pixels: int | None = None
    required_shape: tuple[int, int] | None = None


def _read_raster(tif: Path, required: np.ndarray | None, outside: int) -> _Raster:
    import rasterio
    from rasterio.windows import Window

    from clcplus_ops.products.attributes import histogram

    try:
        ds = rasterio.open(tif)
    except Exception as error:  # noqa: BLE001 - any reason GDAL cannot open it fails every rule
        return _Raster(False, f"GDAL cannot open {tif.name}: {error}")
    with ds:
        facts = _Raster(True, driver=ds.driver, count=ds.count, dtype=ds.dtypes[0], crs=ds.crs,
                        transform=ds.transform, width=ds.width, height=ds.height, block=tuple(ds.block_shapes[0]),
                        compression=ds.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION"), nodata=ds.nodata)
        try:
            facts.colormap = ds.colormap(1)
        except ValueError:
            facts.colormap = None
        if facts.dtype not in ("uint8", "uint16"):
            return facts
        counts: dict[int, int] = {}
        use_mask = required is not None and required.shape == (ds.height, ds.width)
        if required is not None:
            facts.required_shape = tuple(required.shape)
        gaps = 0
        step = max(1, facts.block[0])
        try:
            for row in range(0, ds.height, step):
                rows = min(step, ds.height - row)
                strip = ds.read(1, window=Window(0, row, ds.width, rows))
                for value, n in histogram(strip).items():
                    counts[value] = counts.get(value, 0) + n
                if use_mask:
                    gaps += int(np.count_nonzero((strip == outside) & required[row:row + rows]))
        except Exception as error:  # noqa: BLE001 - undecodable blocks fail the value-based rules
            facts.error = f"reading the pixels of {tif.name} failed: {error}"
            return facts
        facts.histogram = dict(sorted(counts.items()))
        facts.gap_pixels = gaps if use_mask else None
    return facts


# --------------------------------------------------------------------------------------------
# GDAL's COG validator, on rasterio


_GHOST_PATTERN = "GDAL_STRUCTURAL_METADATA_SIZE=000000 bytes\n"


def cog_problems(path: str | Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of GDAL's ``validate_cloud_optimized_geotiff.py --full-check=yes`` for
    the local file ``path``, re-implemented on rasterio (see the module's docstring)."""
    import rasterio

    path = str(path)
    errors: list[str] = []
    warnings: list[str] = []
    try:
        ds = rasterio.open(path)
    except Exception as error:  # noqa: BLE001
        return [f"GDAL cannot open the file: {error}"], []
    with ds:
        if ds.driver != "GTiff":
            return ["the file is not a GeoTIFF"], []
        if path + ".ovr" in ds.files:
            errors.append("the overviews are in an external .ovr file, not inside the GeoTIFF")
        n_overviews = len(ds.overviews(1))
        shapes = [(ds.width, ds.height, ds.block_shapes[0][1], ds.block_shapes[0][0])]
        for i in range(n_overviews):
            with rasterio.open(path, OVERVIEW_LEVEL=i) as ovr:
                shapes.append((ovr.width, ovr.height, ovr.block_shapes[0][1], ovr.block_shapes[0][0]))
        width, height, block_x, _ = shapes[0]
        if width > 512 or height > 512:
            if block_x == width and block_x > 1024:
                errors.append("the image is larger than 512 px but not tiled (strips wider than 1024 px)")
            if n_overviews == 0:
                warnings.append("the image is larger than 512 px and has no internal overviews (recommended)")

        def tag(item: str, ovr: int | None = None) -> str | None:
            return ds.get_tag_item(item, "TIFF", bidx=1, ovr=ovr)

        ifd_offsets = [int(tag("IFD_OFFSET"))]
        row_major = leader = trailer = False
        if ifd_offsets[0] not in (8, 16):
            with open(path, "rb") as f:
                signature = f.read(4)
                expected = 16 if signature in (b"II+\x00", b"MM\x00+") else 8
                f.seek(expected)
                got = f.read(len(_GHOST_PATTERN)).decode("latin-1")
                if len(got) == len(_GHOST_PATTERN) and got.startswith("GDAL_STRUCTURAL_METADATA_SIZE="):
                    size = int(got[len("GDAL_STRUCTURAL_METADATA_SIZE="):][:6])
                    header = f.read(size).decode("latin-1")
                    row_major = "BLOCK_ORDER=ROW_MAJOR" in header
                    leader = "BLOCK_LEADER=SIZE_AS_UINT4" in header
                    trailer = "BLOCK_TRAILER=LAST_4_BYTES_REPEATED" in header
                    if "KNOWN_INCOMPATIBLE_EDITION=YES" in header:
                        errors.append("the file declares KNOWN_INCOMPATIBLE_EDITION=YES (edited after it was written)")
                    expected += len(_GHOST_PATTERN) + size
                    expected += expected % 2
            if expected != ifd_offsets[0]:
                errors.append(f"the main IFD is at byte {ifd_offsets[0]}, it should be at byte {expected}")
        for i in range(n_overviews):
            w, h, bx, _ = shapes[i + 1]
            pw, ph = shapes[i][:2]
            if w > pw or h > ph:
                errors.append(f"overview {i} is larger than the {'main image' if i == 0 else f'overview {i - 1}'}")
            if bx == w and bx > 1024:
                errors.append(f"overview {i} is not tiled")
            ifd_offsets.append(int(tag("IFD_OFFSET", i)))
            if ifd_offsets[-1] < ifd_offsets[-2]:
                before = "the main image's" if i == 0 else f"overview {i - 1}'s"
                errors.append(f"overview {i}'s IFD (byte {ifd_offsets[-1]}) comes before {before} "
                              f"(byte {ifd_offsets[-2]})")

        def first_block_offset(level: int) -> int:
            w, h, bx, by = shapes[level]
            ovr = None if level == 0 else level - 1
            for y in range((h + by - 1) // by):
                for x in range((w + bx - 1) // bx):
                    offset = tag(f"BLOCK_OFFSET_{x}_{y}", ovr)
                    if offset:
                        return int(offset)
            return 0

        data_offsets = [first_block_offset(level) for level in range(n_overviews + 1)]
        if data_offsets[-1] != 0 and data_offsets[-1] < ifd_offsets[-1]:
            errors.append("the first block of the smallest overview comes before its IFD" if n_overviews
                          else "the first block of the image comes before its IFD")
        for i in range(len(data_offsets) - 2, 0, -1):
            if data_offsets[i] != 0 and data_offsets[i] < data_offsets[i + 1]:
                errors.append(f"the first block of overview {i - 1} comes before that of overview {i}")
        if len(data_offsets) >= 2 and data_offsets[0] != 0 and data_offsets[0] < data_offsets[1]:
            errors.append(f"the first block of the main image comes before that of overview {n_overviews - 1}")

        if any("per_dataset" in str(flag) for flag in ds.mask_flag_enums[0]):
            errors.append("the file has an internal mask band, whose block layout this validator cannot inspect")
        if row_major or leader or trailer:
            with open(path, "rb") as f:
                for level in range(n_overviews + 1):
                    name = "the main image" if level == 0 else f"overview {level - 1}"
                    errors += _full_check(f, name, shapes[level], lambda item, lv=level: tag(
                        item, None if lv == 0 else lv - 1), row_major, leader, trailer)
    return errors, warnings


def _full_check(f, name: str, shape, tag, row_major: bool, leader: bool, trailer: bool) -> list[str]:
    """Block order and the leader / trailer bytes GDAL's COG layout promises, block by block."""
    errors = []
    w, h, bx, by = shape
    last = 0
    for y in range((h + by - 1) // by):
        for x in range((w + bx - 1) // bx):
            offset = int(tag(f"BLOCK_OFFSET_{x}_{y}") or 0)
            size = int(tag(f"BLOCK_SIZE_{x}_{y}") or 0)
            if offset > 0:
                if row_major and offset < last:
                    errors.append(f"{name}: block ({x}, {y}) comes before the previous block")
                if leader:
                    f.seek(offset - 4)
                    stated = struct.unpack("<I", f.read(4))[0]
                    if stated != size:
                        errors.append(f"{name}: block ({x}, {y}) leader says {stated} bytes, the block has {size}")
                if trailer and size >= 4:
                    f.seek(offset + size - 4)
                    last8 = f.read(8)
                    if last8[:4] != last8[4:8]:
                        errors.append(f"{name}: block ({x}, {y}) trailer does not repeat its last 4 bytes")
            last = offset
    return errors


# --------------------------------------------------------------------------------------------
# The rules


class _Check:
    """Everything the rules of one file need."""

    def __init__(self, tif: Path, layer: str, prefix: str, raster: _Raster, codes, max_observations: int):
        self.tif, self.layer, self.prefix, self.raster = tif, layer, prefix, raster
        self.codes, self.max_observations = codes, max_observations

    def rule(self, check: str) -> str:
        # Our own rules are "clcplus.<layer>.<check>" for RAS too; EEA's keep EEA's id for RAS.
        return f"clcplus.{self.layer}.{check}" if check in OWN_RULES else f"{self.prefix}.{check}"

    def result(self, check: str, problems: list[str], ok: str) -> RuleResult:
        if problems:
            return RuleResult(self.rule(check), False, "; ".join(problems))
        return RuleResult(self.rule(check), True, ok)

    def not_evaluated(self, check: str, why: str) -> RuleResult:
        return RuleResult(self.rule(check), False, f"not evaluated: {why}", evaluated=False)

    def unreadable(self, check: str) -> RuleResult | None:
        if not self.raster.opened:
            return RuleResult(self.rule(check), False, self.raster.error)
        return None


def _naming(c: _Check, params: dict, other_tifs: Sequence[str]) -> RuleResult:
    name = c.tif.name
    problems = []
    if not name.lower().endswith(".tif"):
        problems.append(f"{name} does not end in .tif, so it is no layer of the delivery")
    for alias, regex in params["layer_names"].items():
        if not re.search(regex, name, re.IGNORECASE):
            problems.append(f"{name} does not match the {alias} naming pattern {regex}")
            continue
        match = re.match(regex, name.lower())
        groups = match.groupdict() if match else {}
        aoi_codes = params.get("aoi_codes") or []
        if aoi_codes and aoi_codes[0] != "*" and "aoi_code" in groups and groups["aoi_code"] not in aoi_codes:
            problems.append(f"tile code {groups['aoi_code']} is not one of the definition's "
                            f"{len(aoi_codes)} tile codes")
        epsg_codes = params.get("epsg_codes") or []
        if epsg_codes and "epsg_code" in groups and groups["epsg_code"] not in epsg_codes:
            problems.append(f"EPSG code {groups['epsg_code']} in the name is not one of {', '.join(epsg_codes)}")
    if other_tifs:
        problems.append(f"excessive layers in the delivery: {', '.join(sorted(other_tifs))} (EEA's check allows "
                        "one .tif per delivery)")
    if not c.raster.opened:
        problems.append(c.raster.error)
    elif c.raster.count != 1:
        problems.append(f"{name} has {c.raster.count} bands, one is expected")
    for ext in params.get("extensions", []):
        options = ext.split("|")
        if not any(c.tif.with_suffix(option).exists() for option in options):
            problems.append(f"supplementary file {' or '.join(c.tif.with_suffix(o).name for o in options)} is missing")
    return c.result("naming", problems, f"{name} follows the naming convention")


def _metadata_file(root: Path, tif: Path) -> tuple[Path | None, str]:
    folders = sorted(d for d in root.glob("**/*") if d.is_dir() and str(d).lower().endswith("metadata"))
    if len(folders) > 1:
        return None, f"{len(folders)} folders named 'metadata' in the delivery, one is allowed"
    folder = folders[0] if folders else root
    for candidate in (folder / f"{tif.stem}.xml", folder / f"{tif.stem}_metadata.xml"):
        if candidate.is_file():
            return candidate, ""
    return None, f"the metadata file {tif.stem}.xml (or {tif.stem}_metadata.xml) is missing in {folder.name or root}"


def _inspire(c: _Check, metadata_xml: Path | None, root: Path, metadata_check: MetadataCheck | None) -> RuleResult:
    if metadata_xml is None:
        metadata_xml, missing = _metadata_file(root, c.tif)
        if metadata_xml is None:
            return c.result("inspire", [missing], "")
    elif not Path(metadata_xml).is_file():
        return c.result("inspire", [f"the metadata file {metadata_xml} does not exist"], "")
    if metadata_check is None:
        return c.not_evaluated("inspire", f"found {Path(metadata_xml).name} but no metadata_check was given to "
                               "validate it")
    problems = list(metadata_check(Path(metadata_xml).read_bytes(), c.tif.name))
    return c.result("inspire", [f"{Path(metadata_xml).name}: {p}" for p in problems],
                    f"{Path(metadata_xml).name} is valid metadata")


def _read_table(aux_xml: Path, layer: str):
    """(table, problem): the attribute table as GDAL would see it."""
    from clcplus_ops.products.attributes import read_aux_xml

    if not aux_xml.is_file():
        return None, f"the attribute table {aux_xml.name} is missing"
    data = aux_xml.read_bytes()
    if data.lstrip().startswith(b"<?xml"):
        return None, f"{aux_xml.name} starts with an XML declaration, so GDAL ignores it and finds no attribute table"
    try:
        return read_aux_xml(data, layer), ""
    except ValueError as error:
        return None, f"{aux_xml.name}: {error}"


def _attribute(c: _Check, params: dict, aux_xml: Path) -> RuleResult:
    table, problem = _read_table(aux_xml, c.layer)
    if table is None:
        return c.result("attribute", [problem], "")
    missing = [regex for regex in params["attribute_regexes"]
               if not any(re.match(f"{regex}$", name, re.IGNORECASE) for name in table.columns)]
    return c.result("attribute", [f"the attribute table lacks the attribute(s) {', '.join(missing)} (it has "
                                  f"{', '.join(table.columns)})"] if missing else [],
                    f"the attribute table has {', '.join(table.columns)}")


def _epsg(c: _Check, params: dict, aoi_code: str | None) -> RuleResult:
    if (bad := c.unreadable("epsg")) is not None:
        return bad
    expected = int(params.get("extra_epsg_codes", {}).get(aoi_code, params["epsg"]) if aoi_code else params["epsg"])
    crs = c.raster.crs
    if crs is None or not crs.is_projected:
        return c.result("epsg", ["the raster has no projected coordinate reference system"], "")
    authority = crs.to_authority(confidence_threshold=100)
    if authority is None or authority[0] != "EPSG":
        return c.result("epsg", [f"the raster's CRS has no EPSG code: {crs.to_wkt()[:120]}..."], "")
    if int(authority[1]) != expected:
        return c.result("epsg", [f"the raster is in EPSG:{authority[1]}, EPSG:{expected} is required"], "")
    return c.result("epsg", [], f"the raster is in EPSG:{expected}")


def _pixel_size(c: _Check, params: dict) -> RuleResult:
    if (bad := c.unreadable("pixel_size")) is not None:
        return bad
    x, y = abs(c.raster.transform.a), abs(c.raster.transform.e)
    if x != y:
        return c.result("pixel_size", [f"pixels are not square ({x} x {y} m)"], "")
    if x != params["pixelsize"]:
        return c.result("pixel_size", [f"the pixel size is {x:g} m, {params['pixelsize']} m is required"], "")
    return c.result("pixel_size", [], f"pixels are {x:g} m")


def _origin(c: _Check, params: dict) -> RuleResult:
    if (bad := c.unreadable("origin")) is not None:
        return bad
    t = c.raster.transform
    grid_size = params.get("grid_size", 1000)
    problems = []
    if "grid_size" in params and grid_size >= t.a and grid_size >= t.e and (t.c % t.a or t.f % t.e):
        problems.append(f"the upper-left corner ({t.c}, {t.f}) is not a multiple of the pixel size")
    if t.c % grid_size or t.f % grid_size:
        problems.append(f"the upper-left corner ({t.c:.10g}, {t.f:.10g}) is not on the {grid_size} m grid")
    return c.result("origin", problems, f"the upper-left corner ({t.c:.10g}, {t.f:.10g}) is on the {grid_size} m grid")


def _bit_depth(c: _Check, params: dict) -> RuleResult:
    if (bad := c.unreadable("bit_depth")) is not None:
        return bad
    name = GDAL_TYPE_NAMES.get(c.raster.dtype, c.raster.dtype)
    if name.lower() != str(params["datatype"]).lower():
        return c.result("bit_depth", [f"the data type is {name}, {params['datatype']} is required"], "")
    return c.result("bit_depth", [], f"the data type is {name}")


def _compress(c: _Check, params: dict) -> RuleResult:
    if (bad := c.unreadable("compress")) is not None:
        return bad
    allowed = [a.lower() for a in params["compression"]]
    found = c.raster.compression
    if found is None:
        return c.result("compress", ["the raster is not compressed"], "")
    if found.lower() not in allowed:
        return c.result("compress", [f"the compression is {found}, allowed: {', '.join(params['compression'])}"], "")
    return c.result("compress", [], f"the compression is {found}")


def _histogram_problem(c: _Check, check: str) -> RuleResult | None:
    if (bad := c.unreadable(check)) is not None:
        return bad
    if c.raster.histogram is None:
        why = c.raster.error or f"its data type {c.raster.dtype} is no layer's (uint8 or uint16)"
        return c.result(check, [f"the pixels were not counted: {why}"], "")
    return None


def _value(c: _Check, params: dict) -> RuleResult:
    if (bad := _histogram_problem(c, "value")) is not None:
        return bad
    valid = _valid_codes(params["validcodes"])
    invalid = {v: n for v, n in c.raster.histogram.items() if v not in valid}
    if invalid:
        return c.result("value", ["pixels with invalid values: " + ", ".join(f"{v} ({n} px)" for v, n in
                                                                            invalid.items())], "")
    return c.result("value", [], "every pixel holds a valid code")


def _gap(c: _Check, params: dict, required: np.ndarray | None) -> RuleResult:
    outside = int(params["outside_area_code"])
    if required is None:
        return c.not_evaluated("gap", f"no mask of the pixels that must be delivered "
                                      f"({params.get('mask', 'delivery area')}) was given")
    if (bad := _histogram_problem(c, "gap")) is not None:
        return bad
    if c.raster.required_shape != (c.raster.height, c.raster.width):
        return c.result("gap", [f"the mask is {c.raster.required_shape[0]} x {c.raster.required_shape[1]} px, the "
                                f"raster {c.raster.height} x {c.raster.width}"], "")
    gaps = c.raster.gap_pixels
    return c.result("gap", [f"{gaps} px inside the delivery area ({params.get('mask', 'mask')}) hold the outside "
                            f"code {outside}"] if gaps else [],
                    f"no pixel inside the delivery area holds the outside code {outside}")


def _tile(c: _Check, params: dict) -> RuleResult:
    if (bad := c.unreadable("tile")) is not None:
        return bad
    rows, cols = c.raster.block
    limit = int(params["max_blocksize"])
    if cols > limit or rows > limit:
        return c.result("tile", [f"blocks are {cols} x {rows} px, at most {limit} x {limit} are allowed"], "")
    return c.result("tile", [], f"blocks are {cols} x {rows} px")


def _cog(c: _Check) -> RuleResult:
    if (bad := c.unreadable("cog")) is not None:
        return bad
    errors, warnings = cog_problems(c.tif)
    note = f" (warnings: {'; '.join(warnings)})" if warnings else ""
    if errors:
        return c.result("cog", [f"not a cloud optimized GeoTIFF: {'; '.join(errors)}{note}"], "")
    return c.result("cog", [], f"a valid cloud optimized GeoTIFF{note}")


def _parse_clr(path: Path) -> dict[str, list[int]] | str:
    colours = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        items = line.split(" ")
        try:
            if len(items) != 4:
                raise ValueError
            colours[items[0]] = [int(items[1]), int(items[2]), int(items[3])]
        except ValueError:
            return f"{path.name} is not 'code R G B' lines: {line!r}"
    return colours or f"{path.name} is empty"


def _compare_colours(expected: dict, actual: dict, where: str) -> list[str]:
    missing = [code for code in expected if code not in actual]
    if missing:
        return [f"{where} has no entry for value(s) {', '.join(missing)}"]
    wrong = [f"value {code}: expected RGB {list(rgb)}, found {actual[code]}" for code, rgb in expected.items()
             if list(rgb) != actual[code]]
    return [f"{where} has wrong colours: {'; '.join(wrong)}"] if wrong else []


def _color(c: _Check, params: dict) -> RuleResult:
    if (bad := c.unreadable("color")) is not None:
        return bad
    if c.raster.dtype not in ("uint8", "uint16"):
        return c.result("color", [], f"a {c.raster.dtype} raster has no colour table to check")
    expected = {str(k): list(v) for k, v in params["colors"].items()}
    if c.raster.colormap is None:
        return c.result("color", [f"{c.tif.name} has no embedded colour table"], "")
    embedded = {str(k): list(v[:3]) for k, v in c.raster.colormap.items()}
    problems = _compare_colours(expected, embedded, "the embedded colour table")
    if problems:
        return c.result("color", problems, "")
    candidates = [c.tif.with_name(c.tif.name.replace(".tif", ".clr")),
                  c.tif.with_name(c.tif.name.replace(".tif", ".tif.clr"))]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return c.result("color", [f"the colour text file {candidates[0].name} or {candidates[1].name} is missing"], "")
    parsed = _parse_clr(found)
    if isinstance(parsed, str):
        return c.result("color", [parsed], "")
    return c.result("color", _compare_colours(expected, parsed, found.name),
                    f"the embedded colour table and {found.name} hold the {len(expected)} required colours")


# ---- our rules ---------------------------------------------------------------------------------


def _expected_grid(c: _Check, grid, pixel_size: float):
    from clcplus_ops.geo.eea_grid import cell_bounds, parse_product_filename
    from clcplus_ops.geo.grid import Grid

    if grid is not None:
        return grid, ""
    try:
        name = parse_product_filename(c.tif.name)
    except ValueError as error:
        return None, f"no grid given and the tile cannot be told from the file name ({error})"
    if not re.fullmatch(r"e\d{2}n\d{2}", name.tile):
        return None, f"DOM {name.tile}"
    return Grid.from_bounds(name.epsg, cell_bounds(name.tile), pixel_size), ""


def _grid(c: _Check, grid, pixel_size: float) -> RuleResult:
    if (bad := c.unreadable("grid")) is not None:
        return bad
    r = c.raster
    epsg = r.crs.to_epsg() if r.crs is not None else None
    expected, why = _expected_grid(c, grid, pixel_size)
    if expected is None and why.startswith("DOM "):
        # A DOM's tile is its land buffered in its UTM zone: without the grid, only the alignment.
        t = r.transform
        aligned = t.c % t.a == 0 and t.f % t.a == 0
        return RuleResult(c.rule("grid"), aligned, f"{why}: extent not compared (no grid given); the corner "
                          f"({t.c:.10g}, {t.f:.10g}) is {'' if aligned else 'not '}on the {t.a:g} m pixel grid")
    if expected is None:
        return c.not_evaluated("grid", why)
    problems = []
    if epsg != expected.epsg:
        problems.append(f"EPSG:{epsg} instead of EPSG:{expected.epsg}")
    if tuple(r.transform)[:6] != tuple(expected.transform)[:6]:
        problems.append(f"geotransform {tuple(r.transform)[:6]} instead of {tuple(expected.transform)[:6]}")
    if (r.height, r.width) != expected.shape:
        problems.append(f"{r.width} x {r.height} px instead of {expected.width} x {expected.height}")
    return c.result("grid", [f"the raster is not the product tile's grid: {'; '.join(problems)}"] if problems else [],
                    f"the raster is the product tile's grid ({expected.width} x {expected.height} px of "
                    f"{expected.res:g} m in EPSG:{expected.epsg})")


def _nodata(c: _Check) -> RuleResult:
    from clcplus_ops.products.cog import layer_spec

    if (bad := c.unreadable("nodata")) is not None:
        return bad
    expected = layer_spec(c.layer, c.codes).nodata
    found = c.raster.nodata
    if expected is None and found is not None:
        return c.result("nodata", [f"{c.layer.upper()} declares NoData {found:g}; it must declare none"], "")
    if expected is not None and found != expected:
        return c.result("nodata", [f"NoData is {found}, the outside code {expected} is required"], "")
    return c.result("nodata", [], "no NoData declared" if expected is None else f"NoData is {expected}")


def _attribute_values(c: _Check, aux_xml: Path) -> RuleResult:
    from clcplus_ops.products.attributes import attribute_table

    if (bad := _histogram_problem(c, "attribute_values")) is not None:
        return bad
    table, problem = _read_table(aux_xml, c.layer)
    if table is None:
        return c.result("attribute_values", [problem], "")
    area = abs(c.raster.transform.a * c.raster.transform.e)
    expected = attribute_table(c.layer, c.raster.histogram, pixel_area_m2=area, codes=c.codes,
                               max_observations=c.max_observations)
    if table.columns != expected.columns:
        return c.result("attribute_values", [f"columns {list(table.columns)} instead of {list(expected.columns)}"], "")
    if table.rows == expected.rows:
        return c.result("attribute_values", [], f"the attribute table's {len(table.rows)} rows match the pixels")
    got = {row[0]: row for row in table.rows}
    wrong = [f"value {row[0]}: {got.get(row[0])} instead of {row}" for row in expected.rows if got.get(row[0]) != row]
    wrong += [f"value {v}: a row the pixels do not give" for v in sorted(set(got) - {r[0] for r in expected.rows})]
    return c.result("attribute_values", [f"the attribute table does not match the pixels: {'; '.join(wrong[:5])}"
                                         + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")], "")


# --------------------------------------------------------------------------------------------
# Entry points


def _layer_of(name: str, layer: str | None) -> tuple[str, str | None, str | None]:
    """(layer, tile code, aoi code) of a file name; RAS when the name tells no layer (EEA applies
    RAS's definition to whatever is delivered)."""
    from clcplus_ops.geo.eea_grid import parse_product_filename

    try:
        parsed = parse_product_filename(name)
        tile = parsed.tile
        found = parsed.layer
    except ValueError:
        tile = None
        match = _LAYER_IN_NAME.search(name)
        found = match.group(1).lower() if match else "ras"
    aoi = tile if tile and re.fullmatch(r"e\d{2}n\d{2}", tile) else None
    return layer or found, tile, aoi


def check_product_file(tif: str | Path, *, aux_xml: str | Path | None = None, metadata_xml: str | Path | None = None,
                       metadata_check: MetadataCheck | None = None, required: np.ndarray | None = None,
                       grid=None, codes=None, definition: dict | None = None, max_observations: int = 200,
                       layer: str | None = None, delivery_root: str | Path | None = None,
                       other_tifs: Sequence[str] = (), reference_year: int | None = None) -> list[RuleResult]:
    """Every rule of the delivered file ``tif`` (layer from its name, or ``layer``).

    ``aux_xml``: its attribute table (default ``<tif>.aux.xml``); ``metadata_xml``: its metadata
    record (default: found as EEA does, under ``delivery_root``, which defaults to the tif's
    folder); ``metadata_check(xml_bytes, tif_name)`` lists the record's problems; ``required``:
    bool array on the tile grid, True where the outside code must not occur (the gap rule);
    ``grid``: the product tile's grid (default: the 100 km cell of the file name); ``codes``: a
    :class:`clcplus_ops.config.CodesConfig`; ``definition``: EEA's product definition (default:
    the tile's for ``reference_year``, default 2023, see :func:`definition_for`); ``other_tifs``: names of the delivery's other
    ``.tif`` files (EEA's naming check fails them as excessive)."""
    from clcplus_ops.products.attributes import COLUMNS, outside_code

    if codes is None:
        from clcplus_ops.config import CodesConfig

        codes = CodesConfig()
    tif = Path(tif)
    layer, tile, aoi_code = _layer_of(tif.name, layer)
    if layer not in COLUMNS:
        raise ValueError(f"unknown layer {layer!r}; layers are {list(COLUMNS)}")
    if definition is None:
        definition = definition_for(tile, reference_year)
    aux_xml = Path(aux_xml) if aux_xml is not None else tif.with_name(tif.name + ".aux.xml")
    root = Path(delivery_root) if delivery_root is not None else tif.parent
    if required is not None:
        required = np.asarray(required, dtype=bool)
    raster = _read_raster(tif, required, outside_code(layer, codes))
    c = _Check(tif, layer, EEA if layer == "ras" else f"clcplus.{layer}", raster, codes, max_observations)
    pixel_size = 10.0
    results = []
    for ident, params in _steps(definition):
        check = ident.rsplit(".", 1)[-1]
        if check == "unzip":
            continue
        params = _layer_params(check, params, layer, codes, max_observations)
        if check == "pixel_size":
            pixel_size = float(params["pixelsize"])
        if check == "naming":
            results.append(_naming(c, params, other_tifs))
        elif check == "inspire":
            results.append(_inspire(c, Path(metadata_xml) if metadata_xml is not None else None, root,
                                    metadata_check))
        elif check == "attribute":
            results.append(_attribute(c, params, aux_xml))
        elif check == "epsg":
            results.append(_epsg(c, params, aoi_code))
        elif check == "pixel_size":
            results.append(_pixel_size(c, params))
        elif check == "origin":
            results.append(_origin(c, params))
        elif check == "bit_depth":
            results.append(_bit_depth(c, params))
        elif check == "compress":
            results.append(_compress(c, params))
        elif check == "value":
            results.append(_value(c, params))
        elif check == "gap":
            results.append(_gap(c, params, required))
        elif check == "tile":
            results.append(_tile(c, params))
        elif check == "cog":
            results.append(_cog(c))
        elif check == "color":
            results.append(_color(c, params))
        else:
            raise ValueError(f"the product definition's check {ident} is not implemented by the self-check")
    results.append(_grid(c, grid, pixel_size))
    results.append(_nodata(c))
    results.append(_attribute_values(c, aux_xml))
    return results


def check_delivery_zip(zip_path: str | Path, **options) -> list[RuleResult]:
    """The unzip rule of the delivery ``zip_path``, then :func:`check_product_file` of every
    ``.tif`` in it (same keyword options; metadata found as EEA does inside the delivery). With
    more than one ``.tif`` every message starts with its file's name."""
    zip_path = Path(zip_path)
    problems = []
    if not zip_path.name.lower().endswith(".zip"):
        problems.append(f"{zip_path.name} is no .zip file")
    with tempfile.TemporaryDirectory(prefix="clcplus-selfcheck-") as scratch:
        root = Path(scratch) / "delivery"
        root.mkdir()
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(root)
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            problems.append(f"{zip_path.name} cannot be unzipped: {error}")
            return [RuleResult(f"{EEA}.unzip", False, "; ".join(problems)),
                    RuleResult(f"{EEA}.naming", False, "not evaluated: the delivery could not be unzipped",
                               evaluated=False)]
        results = [RuleResult(f"{EEA}.unzip", not problems, "; ".join(problems) or f"{zip_path.name} unzips")]
        tifs = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(".tif"))
        if not tifs:
            return results + [RuleResult(f"{EEA}.naming", False, "no .tif file in the delivery")]
        options = dict(options)
        options.setdefault("delivery_root", root)
        for tif in tifs:
            others = [t.name for t in tifs if t != tif]
            found = check_product_file(tif, other_tifs=others, **options)
            if len(tifs) > 1:
                found = [RuleResult(r.rule, r.passed, f"{tif.name}: {r.message}", r.evaluated) for r in found]
            results += found
    return results


__all__ = ["RuleResult", "check_delivery_zip", "check_product_file", "cog_problems", "definition_for"]
