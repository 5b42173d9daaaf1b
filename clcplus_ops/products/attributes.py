"""The attribute table of a delivered layer as a GDAL PAM sidecar (``<file>.tif.aux.xml``), and
the colour text file (``<file>.tif.clr``) EEA's colour check reads beside the GeoTIFF.

The ATBD (3.1.1-3.4.1) delivers every layer with an attribute table in ``.aux.xml``: RAS with
value, count, class_name, area_km2 and area_perc (EEA's check ``qc_tool.raster.attribute``
requires exactly these names, compared case-insensitively; we write them in lower case), RASCL
with value, count, confidence, RASDL with value, count, obs_count and RASPL with value, count,
class_name. The table is a thematic GDAL raster attribute table of band 1, computed from the
tile's own pixels (a histogram), so it always agrees with the raster.

Decisions:

* **Rows**: one per code of the layer's coding (RAS 1-11, 253, 254; RASCL 0-100, 254; RASDL
  0-``max_observations``, 65535; RASPL 0, 1, 254), with count 0 where a code does not occur, so
  every tile's table has the same rows; a value that occurs but is not a code of the layer gets a
  row too (named "Invalid code"), so the table stays a true histogram (the self-check fails
  such a tile on its value rule).
* **area_perc** is the share of the tile's delivered area, i.e. of the pixels that are not the
  outside code (254): classes 1-11 and coastal seawater (253) sum to 100; the outside row has
  area_perc 0. This follows EEA's own HRL example table (the QC tool's test data
  ``fty_2018_100m_eu_03035_v0_1.tif.vat.dbf``: "outside area" has AREA_PERC 0 and is not in the
  denominator).
* **area_km2** is count x pixel area (from the grid: 10 m -> 0.0001 km2).
* Reals are written with 6 fixed decimals (exact for 10 m pixels), integers as integers, so the
  bytes depend on the counts only.
* The descriptive columns are strings (GDAL usage "Name", the label GIS software shows in a
  legend): class names, "<v> %" for confidence, "<v> observations" for the observation count,
  "Outside area" for the outside code.
* **No XML declaration**: GDAL ignores a PAM file that starts with ``<?xml ...?>`` (checked: its
  default RAT is then empty), and EEA reads the table through GDAL.

GDAL field types (``GDALRATFieldType``): 0 Integer, 1 Real, 2 String; usages
(``GDALRATFieldUsage``): 0 Generic, 1 PixelCount, 2 Name, 5 MinMax (the pixel value column).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import numpy as np

INTEGER, REAL, STRING = 0, 1, 2
GENERIC, PIXEL_COUNT, NAME, MIN_MAX = 0, 1, 2, 5
REAL_DECIMALS = 6
INVALID_CODE = "Invalid code"
OUTSIDE_AREA = "Outside area"
# ATBD 3.1.1 and EEA's CLCplus symbology name 253 "Coastal seawater buffer", 255 "No data".
COASTAL_SEAWATER = "Coastal seawater buffer"
NO_DATA = "No data"
# ATBD 3.4.1 wording of the RASPL codes.
POST_PROCESSING_NAMES = {0: "No change during post-processing", 1: "Recoded during post-processing"}


@dataclass(frozen=True)
class Column:
    name: str
    type: int  # INTEGER, REAL, STRING
    usage: int  # GENERIC, PIXEL_COUNT, NAME, MIN_MAX


_VALUE = Column("value", INTEGER, MIN_MAX)
_COUNT = Column("count", INTEGER, PIXEL_COUNT)

# The columns of each layer's table, in order (ATBD 3.1.1, 3.2.1, 3.3.1, 3.4.1).
COLUMNS: dict[str, tuple[Column, ...]] = {
    "ras": (_VALUE, _COUNT, Column("class_name", STRING, NAME), Column("area_km2", REAL, GENERIC),
            Column("area_perc", REAL, GENERIC)),
    "rascl": (_VALUE, _COUNT, Column("confidence", STRING, NAME)),
    "rasdl": (_VALUE, _COUNT, Column("obs_count", STRING, NAME)),
    "raspl": (_VALUE, _COUNT, Column("class_name", STRING, NAME)),
}


@dataclass(frozen=True)
class AttributeTable:
    """A layer's raster attribute table: column names and rows (int, float or str cells).
    ``types`` and ``usages`` default to the layer's standard columns (:data:`COLUMNS`); a table
    read from a file carries the file's own."""

    layer: str
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]
    types: tuple[int, ...] = field(default=())
    usages: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.types or not self.usages:
            standard = COLUMNS.get(self.layer)
            if standard is None or tuple(c.name for c in standard) != tuple(self.columns):
                raise ValueError(f"table of layer {self.layer!r} with columns {list(self.columns)}: give types and "
                                 "usages, or use a layer's standard columns "
                                 f"({ {k: [c.name for c in v] for k, v in COLUMNS.items()} })")
            object.__setattr__(self, "types", tuple(c.type for c in standard))
            object.__setattr__(self, "usages", tuple(c.usage for c in standard))
        if not len(self.columns) == len(self.types) == len(self.usages):
            raise ValueError(f"{len(self.columns)} columns but {len(self.types)} types and {len(self.usages)} usages")
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"row {i} has {len(row)} cells for {len(self.columns)} columns")

    def column(self, name: str) -> list:
        """The cells of column ``name``."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns are {list(self.columns)}")
        i = self.columns.index(name)
        return [row[i] for row in self.rows]


def histogram(array: np.ndarray) -> dict[int, int]:
    """Pixel count of every value that occurs in ``array`` (uint8 or uint16), ascending."""
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"histogram counts uint8 or uint16 layers, got {array.dtype}")
    size = 256 if array.dtype == np.uint8 else 65536
    flat = np.ravel(array)
    counts = np.zeros(size, np.int64)
    # bincount works on an intp copy of its input; chunks keep that copy small for 100 M pixels.
    chunk = 1 << 22
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start:start + chunk], minlength=size)
    return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}


def layer_codes(layer: str, codes, max_observations: int = 200) -> dict[int, str]:
    """The codes of ``layer``'s coding and their labels (ATBD), ascending."""
    if layer == "ras":
        names = {int(k): str(v) for k, v in codes.classes.items()}
        names[codes.coastal_seawater] = COASTAL_SEAWATER
        names[codes.outside] = OUTSIDE_AREA
    elif layer == "rascl":
        names = {v: f"{v} %" for v in range(101)}
        names[codes.confidence_outside] = OUTSIDE_AREA
    elif layer == "rasdl":
        # The top count is "this many or more" (the layers stage stores larger counts as it).
        names = {v: f"{v} observation{'' if v == 1 else 's'}" for v in range(max_observations)}
        names[max_observations] = f"{max_observations} or more observations"
        names[codes.data_score_outside] = OUTSIDE_AREA
    elif layer == "raspl":
        names = dict(POST_PROCESSING_NAMES)
        names[codes.post_processing_outside] = OUTSIDE_AREA
    else:
        raise ValueError(f"unknown layer {layer!r}; layers are {list(COLUMNS)}")
    return dict(sorted(names.items()))


def outside_code(layer: str, codes) -> int:
    return {"ras": codes.outside, "rascl": codes.confidence_outside, "rasdl": codes.data_score_outside,
            "raspl": codes.post_processing_outside}[layer]


def attribute_table(layer: str, counts, *, pixel_area_m2: float, class_names: dict[int, str] | None = None,
                    codes=None, max_observations: int = 200) -> AttributeTable:
    """The attribute table of ``layer`` from its pixel ``counts`` (a :func:`histogram` dict, or
    an array of counts indexed by value). ``class_names`` overrides RAS's class names (default:
    ``codes.classes``); ``codes`` is a :class:`clcplus_ops.config.CodesConfig`."""
    if codes is None:
        from clcplus_ops.config import CodesConfig

        codes = CodesConfig()
    if pixel_area_m2 <= 0:
        raise ValueError(f"pixel_area_m2 must be positive, got {pixel_area_m2}")
    if not isinstance(counts, dict):
        counts = {int(v): int(n) for v, n in enumerate(np.asarray(counts)) if n}
    bad = {v: n for v, n in counts.items() if int(n) < 0 or int(v) < 0}
    if bad:
        raise ValueError(f"pixel values and counts must not be negative, got {bad}")
    labels = layer_codes(layer, codes, max_observations)
    if layer == "ras" and class_names is not None:
        labels.update({int(k): str(v) for k, v in class_names.items()})
    values = sorted(set(labels) | {int(v) for v, n in counts.items() if n})
    # RAS's no-data code is no delivered code (EEA refuses it) but keeps its name if it occurs.
    extra = {codes.nodata: NO_DATA} if layer == "ras" else {}
    outside = outside_code(layer, codes)
    rows = []
    delivered = sum(int(n) for v, n in counts.items() if int(v) != outside)
    for value in values:
        n = int(counts.get(value, 0))
        label = labels.get(value, extra.get(value, INVALID_CODE))
        if layer == "ras":
            km2 = _fixed(Decimal(n) * Decimal(repr(float(pixel_area_m2))) / Decimal(1_000_000))
            share = 0.0 if value == outside or delivered == 0 else _fixed(Decimal(n) * 100 / Decimal(delivered))
            rows.append((value, n, label, km2, share))
        else:
            rows.append((value, n, label))
    return AttributeTable(layer, tuple(c.name for c in COLUMNS[layer]), tuple(rows))


def _fixed(value: Decimal) -> float:
    return float(value.quantize(Decimal(1).scaleb(-REAL_DECIMALS), rounding=ROUND_HALF_EVEN))


def _cell_text(value, kind: int) -> str:
    if kind == INTEGER:
        return str(int(value))
    if kind == REAL:
        return f"{float(value):.{REAL_DECIMALS}f}"
    return str(value)


def aux_xml_bytes(table: AttributeTable) -> bytes:
    """The GDAL PAM document (UTF-8, no XML declaration) holding ``table`` as band 1's default
    raster attribute table."""
    from lxml import etree

    root = etree.Element("PAMDataset")
    band = etree.SubElement(root, "PAMRasterBand", band="1")
    rat = etree.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for i, (name, kind, usage) in enumerate(zip(table.columns, table.types, table.usages)):
        defn = etree.SubElement(rat, "FieldDefn", index=str(i))
        etree.SubElement(defn, "Name").text = name
        etree.SubElement(defn, "Type").text = str(kind)
        etree.SubElement(defn, "Usage").text = str(usage)
    for i, row in enumerate(table.rows):
        element = etree.SubElement(rat, "Row", index=str(i))
        for value, kind in zip(row, table.types):
            etree.SubElement(element, "F").text = _cell_text(value, kind)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=False, pretty_print=True)


def read_aux_xml(source: str | Path | bytes, layer: str | None = None) -> AttributeTable:
    """Band 1's raster attribute table from a PAM document (a path or its bytes). ``layer``
    defaults to the layer whose standard columns the table has ("" when none has them).
    ValueError names what is missing or malformed."""
    from lxml import etree

    what = "PAM document" if isinstance(source, bytes) else str(source)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        root = etree.fromstring(data)
    except etree.XMLSyntaxError as error:
        raise ValueError(f"{what} is not well-formed XML: {error}") from None
    if root.tag != "PAMDataset":
        raise ValueError(f"{what}: the root element is <{root.tag}>, GDAL's PAM root is <PAMDataset>")
    band = next((b for b in root.findall("PAMRasterBand") if b.get("band") == "1"), None)
    if band is None:
        raise ValueError(f'{what} has no <PAMRasterBand band="1">')
    rat = band.find("GDALRasterAttributeTable")
    if rat is None:
        raise ValueError(f"{what}: band 1 has no <GDALRasterAttributeTable>")
    defns = sorted(rat.findall("FieldDefn"), key=lambda d: int(d.get("index", "-1")))
    try:
        columns = tuple((d.findtext("Name") or "") for d in defns)
        types = tuple(int(d.findtext("Type")) for d in defns)
        usages = tuple(int(d.findtext("Usage") or GENERIC) for d in defns)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: a <FieldDefn> lacks an integer <Type> or <Usage>") from None
    rows = []
    for row in rat.findall("Row"):
        cells = [f.text or "" for f in row.findall("F")]
        if len(cells) != len(columns):
            raise ValueError(f"{what}: row {row.get('index')} has {len(cells)} cells for {len(columns)} columns")
        try:
            rows.append(tuple(int(c) if t == INTEGER else float(c) if t == REAL else c for c, t in zip(cells, types)))
        except ValueError:
            raise ValueError(f"{what}: row {row.get('index')} has a cell that is not of its column's type") from None
    if layer is None:
        layer = next((name for name, cols in COLUMNS.items() if tuple(c.name for c in cols) == columns), "")
    return AttributeTable(layer, columns, tuple(rows), types, usages)


def clr_bytes(colours: dict[int, tuple[int, int, int]]) -> bytes:
    """The colour text file of a layer: one "code R G B" line per code, ascending (the format
    EEA's colour check parses beside the GeoTIFF as ``<file>.clr`` or ``<file>.tif.clr``)."""
    lines = []
    for code, rgb in sorted(colours.items()):
        if len(rgb) < 3 or not all(0 <= int(c) <= 255 for c in rgb[:3]):
            raise ValueError(f"colour of code {code} must be three 0-255 values, got {rgb}")
        lines.append(f"{int(code)} {int(rgb[0])} {int(rgb[1])} {int(rgb[2])}")
    return ("\n".join(lines) + "\n").encode("ascii")
