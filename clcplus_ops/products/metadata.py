"""INSPIRE metadata of each delivered product file (ATBD 3.1.1-3.4.1: "XML metadata files
according to INSPIRE metadata standards"): one ISO 19139 record per layer of a 100 km tile (or
DOM), written from the Jinja2 template in ``include/metadata_templates/``, validated offline
against the ISO 19139 (2007-04-17) schemas packaged in ``clcplus_ops/data/inspire/``, and checked
against the INSPIRE Technical Guidance 2.0 requirements for data sets and for the
interoperability of spatial data sets (the requirement URIs are named in each check).

The checks read the XML by XPath, independently of how :func:`render_metadata` built it, so
they also judge records written by hand or by other tools (e.g. EEA's own records).

Decisions (see ``include/metadata_templates/README.md``):

- unique resource identifier: ``gmd:RS_Identifier`` with the file name without ``.tif`` as
  code and ``https://land.copernicus.eu`` as code space (EEA's records give the product name as
  the code); the metadata file identifier is a UUID derived from both (name-based UUID 5), so a
  rerun gives the same record and every revision of a file a new one;
- conformity with Regulation (EU) No 1089/2010: ``false`` (the tiles follow the CLCplus Backbone
  specification, not the INSPIRE Land Cover data specification);
- dates: ``revision_date`` is both the citation date (type ``creation`` for revision 00,
  ``revision`` after) and the metadata date stamp; nothing reads the clock.
"""

from __future__ import annotations

import datetime
import decimal
import os
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
from lxml import etree
from markupsafe import Markup

from clcplus_ops.config import CLASS_NAMES
from clcplus_ops.geo.aoi import DOMS
from clcplus_ops.geo.eea_grid import LAYERS, parse_product_filename, product_tile
from clcplus_ops.resources import DATA_DIR

INSPIRE_DIR = DATA_DIR / "inspire"
SCHEMA_ENTRY = INSPIRE_DIR / "xsd" / "metadata_20070417.xsd"

TEMPLATE_NAME = "product_metadata.xml.j2"
# Where the templates are when no folder is passed: this variable, else the repository checkout,
# else $AIRFLOW_HOME/include (the production image copies include/ there, the package itself is
# installed into site-packages).
TEMPLATES_ENV = "CLCPLUS_METADATA_TEMPLATES"
REPO_TEMPLATES = Path(__file__).resolve().parents[2] / "include" / "metadata_templates"

PIXEL_SIZE_M = 10  # every layer; the "R10m" of the file names

NS = {
    "gmd": "http://www.isotc211.org/2005/gmd",
    "gco": "http://www.isotc211.org/2005/gco",
    "gmx": "http://www.isotc211.org/2005/gmx",
    "gml": "http://www.opengis.net/gml/3.2",
    "xlink": "http://www.w3.org/1999/xlink",
}
_HREF = f"{{{NS['xlink']}}}href"

# Fixed values the TG 2.0 requirements name (official titles and dates must match exactly).
GEMET_THEMES_TITLE = "GEMET - INSPIRE themes, version 1.0"
GEMET_THEMES_DATE = "2008-06-01"
LAND_COVER_THEME_URI = "http://inspire.ec.europa.eu/theme/lc"
LAND_COVER_THEME_LABEL = "Land cover"
REGULATION_1089_TITLE = (
    "Commission Regulation (EU) No 1089/2010 of 23 November 2010 implementing Directive 2007/2/EC "
    "of the European Parliament and of the Council as regards interoperability of spatial data sets "
    "and services")
REGULATION_1089_DATE = "2010-12-08"
CONDITIONS_CODELIST = "http://inspire.ec.europa.eu/metadata-codelist/ConditionsApplyingToAccessAndUse/"
CONDITIONS_VALUES = ("noConditionsApply", "conditionsUnknown")
LIMITATIONS_CODELIST = "http://inspire.ec.europa.eu/metadata-codelist/LimitationsOnPublicAccess/"
LIMITATIONS_VALUES = ("noLimitations",) + tuple(f"INSPIRE_Directive_Article13_1{c}" for c in "abcdefgh")
ISO_639_2_CODELIST = "http://www.loc.gov/standards/iso639-2/"
# ISO 639-2/B codes of the official languages of the EU (TG 2.0 metadata-language-code).
EU_LANGUAGES = frozenset("bul cze dan dut eng est fin fre ger gre hrv hun gle ita lav lit mlt pol por "
                         "rum slo slv spa swe".split())
ROLE_CODES = frozenset("resourceProvider custodian owner user distributor originator pointOfContact "
                       "principalInvestigator processor publisher author".split())
TOPIC_CATEGORIES = frozenset(
    "farming biota boundaries climatologyMeteorologyAtmosphere economy elevation environment "
    "geoscientificInformation health imageryBaseMapsEarthCover intelligenceMilitary inlandWaters "
    "location oceans planningCadastre society structure transportation utilitiesCommunication".split())
EPSG_URI = re.compile(r"^https?://www\.opengis\.net/def/crs/EPSG/0/(\d+)$")

# Characters XML 1.0 cannot carry at all (escaping does not help): C0 controls but tab/LF/CR.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class Contact:
    """An organisation as INSPIRE names it: name, e-mail (required by TG 2.0), optional web site."""

    organisation: str
    email: str
    url: str | None = None

    def __post_init__(self):
        _check_text(self.organisation, "contact organisation")
        _check_text(self.email, "contact e-mail")
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", self.email):
            raise ValueError(f"contact e-mail {self.email!r} of {self.organisation!r} is not an e-mail address")
        if self.url is not None:
            _check_text(self.url, "contact URL")
            if not re.match(r"^https?://\S+$", self.url):
                raise ValueError(f"contact URL {self.url!r} of {self.organisation!r} is not an http(s) URL")


@dataclass(frozen=True)
class ProductMetadata:
    """What one delivered file's record says. The parts of ``file_name`` must agree with
    ``layer``, ``reference_year``, ``tile``, ``epsg``, ``version`` and ``revision``."""

    file_name: str  # the delivered .tif file name
    layer: str  # ras | rascl | rasdl | raspl
    reference_year: int
    tile: str  # e44n36 or a DOM code
    epsg: int
    bounds_wgs84: tuple[float, float, float, float]  # west, south, east, north
    width: int  # grid size in pixels (10000 x 10000 for a 100 km tile)
    height: int
    acquisition_start: datetime.date
    acquisition_end: datetime.date
    revision_date: datetime.date  # date of this revision: reference date and metadata date stamp
    version: int
    revision: int
    lineage: str
    producer: Contact  # responsible party
    metadata_contact: Contact  # metadata point of contact

    def __post_init__(self):
        if self.layer not in LAYERS:
            raise ValueError(f"unknown layer {self.layer!r}; layers are {LAYERS}")
        if not self.file_name.endswith(".tif"):
            raise ValueError(f"file_name {self.file_name!r} is not the delivered .tif file")
        name = parse_product_filename(self.file_name)
        given = {"layer": self.layer, "reference_year": self.reference_year, "tile": self.tile,
                 "epsg": self.epsg, "version": self.version, "revision": self.revision}
        wrong = [f"{key} {value!r} (the name says {getattr(name, key)!r})"
                 for key, value in given.items() if getattr(name, key) != value]
        if wrong:
            raise ValueError(f"metadata of {self.file_name} disagrees with its file name: {', '.join(wrong)}")
        if product_tile(self.tile).epsg != self.epsg:
            raise ValueError(f"tile {self.tile} is delivered in EPSG:{product_tile(self.tile).epsg}, "
                             f"not EPSG:{self.epsg}")
        west, south, east, north = self.bounds_wgs84
        if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
            raise ValueError(f"bounds_wgs84 {self.bounds_wgs84} of {self.file_name} are not (west, south, "
                             "east, north) in degrees with west <= east and south <= north")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"grid size {self.width} x {self.height} of {self.file_name} is not positive")
        for what in ("acquisition_start", "acquisition_end", "revision_date"):
            if not isinstance(getattr(self, what), datetime.date) or isinstance(getattr(self, what), datetime.datetime):
                raise ValueError(f"{what} of {self.file_name} must be a datetime.date, got {getattr(self, what)!r}")
        if self.acquisition_start > self.acquisition_end:
            raise ValueError(f"acquisition window of {self.file_name} ends ({self.acquisition_end}) "
                             f"before it starts ({self.acquisition_start})")
        _check_text(self.lineage, f"lineage of {self.file_name}")


def _check_text(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is empty")
    bad = _NOT_XML.search(value)
    if bad:
        raise ValueError(f"{what} contains the control character U+{ord(bad.group()):04X}, which XML "
                         "cannot carry")


def _degrees(value: float, rounding: str) -> str:
    """Degrees with 6 decimals (about 0.1 m), rounded outward so the box still contains the tile."""
    return str(decimal.Decimal(repr(float(value))).quantize(decimal.Decimal("0.000001"), rounding=rounding))


def templates_dir(templates: Path | None = None) -> Path:
    """The folder of the metadata templates: ``templates``, else ``$CLCPLUS_METADATA_TEMPLATES``,
    else the repository's ``include/metadata_templates``, else ``$AIRFLOW_HOME/include/...``."""
    if templates is not None:
        candidates = [Path(templates)]
    elif os.environ.get(TEMPLATES_ENV):
        candidates = [Path(os.environ[TEMPLATES_ENV])]
    else:
        candidates = [REPO_TEMPLATES]
        if os.environ.get("AIRFLOW_HOME"):
            candidates.append(Path(os.environ["AIRFLOW_HOME"]) / "include" / "metadata_templates")
    for folder in candidates:
        if (folder / TEMPLATE_NAME).is_file():
            return folder
    raise FileNotFoundError(f"no metadata template {TEMPLATE_NAME} in {', '.join(map(str, candidates))} "
                            f"(pass the folder, or set {TEMPLATES_ENV})")


def template_identity(templates: Path | None = None) -> str:
    """``sha256:<hex>`` of the template that :func:`render_metadata` would use: the same while
    the template is unchanged, another after any edit (stage parameters, so records are rewritten
    when the template changes)."""
    import hashlib

    return "sha256:" + hashlib.sha256((templates_dir(templates) / TEMPLATE_NAME).read_bytes()).hexdigest()


def _environment(folder: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=True,  # every value is XML-escaped (&, <, >, quotes)
        undefined=jinja2.StrictUndefined,  # a misspelt value in the template fails, not blanks
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    # Text blocks may be wrapped in the template; the record carries them as one paragraph.
    # (The input is already escaped markup, so joining keeps it safe.)
    env.filters["collapse"] = lambda text: Markup(" ".join(str(text).split()))
    env.filters["uuid5"] = lambda text: str(uuid.uuid5(uuid.NAMESPACE_URL, str(text)))
    return env


def render_metadata(meta: ProductMetadata, templates: Path | None = None) -> bytes:
    """The INSPIRE ISO 19139 record of ``meta``'s file: UTF-8 with an XML declaration; the same
    bytes for the same ``meta`` and template."""
    name = parse_product_filename(meta.file_name)
    west, south, east, north = meta.bounds_wgs84
    context = {
        "identifier": name.stem,
        "file_name": meta.file_name,
        "layer": meta.layer,
        "layer_acronym": meta.layer.upper(),
        "reference_year": meta.reference_year,
        "tile_code": meta.tile.upper(),
        "dom_name": DOMS[meta.tile].name if meta.tile in DOMS else None,
        "epsg": meta.epsg,
        "west": _degrees(west, decimal.ROUND_FLOOR), "south": _degrees(south, decimal.ROUND_FLOOR),
        "east": _degrees(east, decimal.ROUND_CEILING), "north": _degrees(north, decimal.ROUND_CEILING),
        "width": meta.width, "height": meta.height, "pixel_size_m": PIXEL_SIZE_M,
        "acquisition_start": meta.acquisition_start.isoformat(),
        "acquisition_end": meta.acquisition_end.isoformat(),
        "revision_date": meta.revision_date.isoformat(),
        "date_type": "creation" if meta.revision == 0 else "revision",
        "version": f"{meta.version:02d}", "revision": f"{meta.revision:02d}",
        "lineage": meta.lineage,
        "producer": meta.producer, "metadata_contact": meta.metadata_contact,
        "classes": sorted(CLASS_NAMES.items()),
    }
    folder = templates_dir(templates)
    try:
        text = _environment(folder).get_template(TEMPLATE_NAME).render(context)
    except jinja2.TemplateError as exc:
        raise ValueError(f"template {folder / TEMPLATE_NAME} cannot be filled for {meta.file_name}: {exc}") from exc
    xml = text.encode("utf-8")
    try:
        _parse(xml)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"template {folder / TEMPLATE_NAME} gave XML that is not well-formed for "
                         f"{meta.file_name}: line {exc.lineno}: {exc.msg}") from exc
    return xml


def metadata_filename(file_name: str) -> str:
    """The record's file name beside the product: ``<stem>.xml`` (EEA's delivery check looks for
    ``<stem>.xml`` or ``<stem>.tif.xml``)."""
    return parse_product_filename(file_name).file(".xml")


# ---------------------------------------------------------------------------------------------
# Validation


def _parser() -> etree.XMLParser:
    # No network, no entity expansion: a record (or a schema) can make this process fetch nothing.
    return etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False, huge_tree=False)


def _parse(xml: bytes) -> etree._ElementTree:
    return etree.ElementTree(etree.fromstring(xml, _parser()))


@lru_cache(maxsize=1)
def _schema() -> etree.XMLSchema:
    """ISO 19139 gmd + gmx (2007-04-17) from the packaged copy; built once per process."""
    if not SCHEMA_ENTRY.is_file():
        raise FileNotFoundError(f"packaged metadata schema {SCHEMA_ENTRY} is missing (clcplus_ops/data/inspire)")
    return etree.XMLSchema(etree.parse(str(SCHEMA_ENTRY), _parser()))


def schema_errors(xml: bytes) -> list[str]:
    """XSD validation errors of ``xml`` as ``"line: message"``; ``[]`` when it is a valid ISO 19139
    ``gmd:MD_Metadata`` record. Offline: only the packaged schemas are read."""
    try:
        tree = _parse(xml)
    except etree.XMLSyntaxError as exc:
        return [f"{exc.lineno}: not well-formed XML: {exc.msg}"]
    root = tree.getroot()
    errors = []
    if root.tag != f"{{{NS['gmd']}}}MD_Metadata":
        errors.append(f"{root.sourceline}: the root element is {root.tag}, not gmd:MD_Metadata")
    schema = _schema()
    if not schema.validate(tree):
        errors += [f"{e.line}: {e.message}" for e in schema.error_log]
    return errors


@dataclass(frozen=True)
class Requirement:
    """The outcome of one INSPIRE TG 2.0 requirement on a record."""

    ident: str
    description: str
    passed: bool
    detail: str  # what was found, or what is missing or wrong


# ident -> description (TG 2.0 requirement URIs, prefix http://inspire.ec.europa.eu/id/spec/)
REQUIREMENTS: dict[str, str] = {
    "unique-resource-identifier": "file identifier and unique resource identifier (the product file name) "
                                  "(metadata/2.0/req/datasets-and-series/dataset-uid)",
    "resource-type-and-language": "resource type dataset with the ISO MD_ScopeCode code list, metadata language "
                                  "(ISO 639-2/B, EU language), metadata character set utf8, resource language "
                                  "(req/datasets-and-series/resource-type, req/common/metadata-language-code, "
                                  "req/datasets-and-series/resource-language)",
    "title-and-abstract": "non-empty resource title and abstract, naming the layer, reference year and tile "
                          "(req/common/resource-title, req/common/resource-abstract)",
    "inspire-theme-keyword": f"INSPIRE theme '{LAND_COVER_THEME_LABEL}' as gmx:Anchor to {LAND_COVER_THEME_URI} "
                             f"from the thesaurus '{GEMET_THEMES_TITLE}' dated {GEMET_THEMES_DATE} (publication) "
                             "(req/datasets-and-series/inspire-theme-keyword, req/common/keyword-originating-cv)",
    "topic-category": "ISO topic category environment and/or imageryBaseMapsEarthCover "
                      "(req/datasets-and-series/topic-category)",
    "geographic-bounding-box": "geographic bounding box in WGS 84 decimal degrees (req/common/bounding-box)",
    "temporal-reference": "temporal extent (the acquisition window, containing the reference year) and at most "
                          "one creation and one revision date among the citation dates "
                          "(req/common/temporal-reference, max-1-date-of-creation, max-1-date-of-last-revision)",
    "lineage": "exactly one data quality element scoped to the data set, with a lineage statement "
               "(req/datasets-and-series/one-data-quality-element, req/datasets-and-series/lineage)",
    "spatial-resolution": "spatial resolution as a distance with a unit (10 m for the products) "
                          "(req/datasets-and-series/spatial-resolution)",
    "conformity": "conformity with Regulation (EU) No 1089/2010 cited by its exact title and publication date "
                  f"{REGULATION_1089_DATE}, degree true/false or not evaluated "
                  "(req/datasets-and-series/conformity, req/common/conformity-specification, "
                  "req/common/conformity-degree)",
    "conditions-for-access-and-use": "conditions applying to access and use: MD_LegalConstraints with "
                                     "otherRestrictions and otherConstraints, an INSPIRE code-list anchor if any "
                                     "(req/common/conditions-for-access-and-use)",
    "limitations-on-public-access": "limitations on public access: MD_LegalConstraints with accessConstraints "
                                    "otherRestrictions and a gmx:Anchor to the LimitationsOnPublicAccess code list "
                                    "(req/common/limitations-on-public-access)",
    "responsible-organisation": "responsible party of the resource with organisation name, e-mail and role "
                                "(req/common/responsible-organisation)",
    "metadata-point-of-contact": "metadata point of contact with organisation name, e-mail and role pointOfContact "
                                 "(req/common/md-point-of-contact)",
    "spatial-representation-type": "spatial representation type from MD_SpatialRepresentationTypeCode (grid for "
                                   "the products) (req/isdss/spatial-representation-type)",
    "coordinate-reference-system": "coordinate reference system identified by its EPSG HTTP URI "
                                   "(req/isdss/crs, req/isdss/crs-id)",
    "encoding": "distribution format with name and version (GeoTIFF for the products); resource character set "
                "from MD_CharacterSetCode where given (req/isdss/data-encoding, req/isdss/character-encoding)",
    "metadata-date-and-standard": "metadata date stamp (ISO 8601 date) and metadata standard name and version "
                                  "(req/common/md-date)",
}


def _texts(node, path: str) -> list[str]:
    """Stripped text of ``path``'s CharacterString or Anchor children (Free Text Elements)."""
    return [(t or "").strip() for t in node.xpath(f"{path}/*[self::gco:CharacterString or self::gmx:Anchor]/text()",
                                                  namespaces=NS)]


def _text(node, path: str) -> str:
    texts = [t for t in _texts(node, path) if t]
    return texts[0] if texts else ""


def _xp(node, path: str) -> list:
    return node.xpath(path, namespaces=NS)


def _date_of(node) -> datetime.date | None:
    """The date of a gmd:date-like element (gco:Date or gco:DateTime), None when absent or bad."""
    values = _xp(node, "gco:Date/text() | gco:DateTime/text()")
    if not values:
        return None
    try:
        return datetime.date.fromisoformat(values[0].strip()[:10])
    except ValueError:
        return None


class _Record:
    """The parts of a record that several checks need."""

    def __init__(self, tree: etree._ElementTree, expected: str | None):
        self.root = tree.getroot()
        self.expected = expected
        self.name = None
        if expected is not None:
            try:
                self.name = parse_product_filename(expected)
            except ValueError:
                self.name = None  # not a product file (e.g. someone else's record): generic checks only
        idents = _xp(self.root, "gmd:identificationInfo[1]/*")
        self.ident = idents[0] if idents else None
        self.dq = _xp(self.root, "gmd:dataQualityInfo/gmd:DQ_DataQuality")


def _unique_identifier(r: _Record) -> tuple[bool, str]:
    problems = []
    file_id = _text(r.root, "gmd:fileIdentifier")
    if not file_id:
        problems.append("no gmd:fileIdentifier")
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    codes = []
    for ident in _xp(r.ident, "gmd:citation/gmd:CI_Citation/gmd:identifier/*[self::gmd:MD_Identifier or "
                              "self::gmd:RS_Identifier]"):
        code = _text(ident, "gmd:code")
        space = _text(ident, "gmd:codeSpace")
        if code:
            codes.append((code, space))
    if not codes:
        problems.append("no gmd:citation/gmd:CI_Citation/gmd:identifier with a non-empty gmd:code")
    elif r.expected is not None:
        want = r.name.stem if r.name else r.expected
        if not any(code == want or code.rstrip("/").rsplit("/", 1)[-1] == want for code, _ in codes):
            problems.append(f"no identifier code is {want!r} (found {', '.join(c for c, _ in codes)})")
    if problems:
        return False, "; ".join(problems)
    shown = ", ".join(f"{code} (code space {space})" if space else code for code, space in codes)
    return True, f"file identifier {file_id}; resource identifier {shown}"


def _resource_type(r: _Record) -> tuple[bool, str]:
    problems = []
    scope = _xp(r.root, "gmd:hierarchyLevel[1]/gmd:MD_ScopeCode")
    if not scope:
        problems.append("no gmd:hierarchyLevel/gmd:MD_ScopeCode")
    else:
        value, codelist = scope[0].get("codeListValue", ""), scope[0].get("codeList", "")
        if value not in ("dataset", "series"):
            problems.append(f"resource type is {value!r}, not dataset or series")
        if not re.search(r"^https?://standards\.iso\.org/.*gmxCodelists\.xml#MD_ScopeCode$", codelist):
            problems.append(f"MD_ScopeCode codeList {codelist!r} is not the ISO 19139 code list")
    lang = _xp(r.root, "gmd:language/gmd:LanguageCode")
    if not lang:
        problems.append("no metadata language gmd:language/gmd:LanguageCode")
    elif lang[0].get("codeList") != ISO_639_2_CODELIST or lang[0].get("codeListValue") not in EU_LANGUAGES:
        problems.append(f"metadata language {lang[0].get('codeListValue')!r} (code list {lang[0].get('codeList')!r}) "
                        "is not an EU language of ISO 639-2/B")
    charset = _xp(r.root, "gmd:characterSet/gmd:MD_CharacterSetCode/@codeListValue")
    if charset[:1] != ["utf8"]:
        problems.append(f"metadata character set is {charset[0] if charset else 'not given'}, not utf8")
    if r.ident is None or r.ident.tag != f"{{{NS['gmd']}}}MD_DataIdentification":
        problems.append("the first gmd:identificationInfo holds no gmd:MD_DataIdentification")
    res_lang = _xp(r.ident, "gmd:language/gmd:LanguageCode/@codeListValue") if r.ident is not None else []
    if not res_lang or not all(re.fullmatch(r"[a-z]{3}", v) for v in res_lang):
        problems.append(f"resource language {res_lang or 'not given'} is not ISO 639-2/B codes")
    if problems:
        return False, "; ".join(problems)
    return True, (f"{scope[0].get('codeListValue')}; metadata in {lang[0].get('codeListValue')}, utf8; "
                  f"resource language {', '.join(res_lang)}")


def _title_abstract(r: _Record) -> tuple[bool, str]:
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    title = _text(r.ident, "gmd:citation/gmd:CI_Citation/gmd:title")
    abstract = _text(r.ident, "gmd:abstract")
    problems = [f"empty {what}" for what, value in (("title", title), ("abstract", abstract)) if not value]
    if r.name and title:
        for what, want in (("layer", r.name.layer.upper()), ("reference year", str(r.name.reference_year)),
                           ("tile", r.name.tile.upper())):
            if not re.search(rf"\b{want}\b", title):  # RAS must not match inside RASCL
                problems.append(f"the title does not name the {what} {want}")
    if problems:
        return False, "; ".join(problems) + (f" (title {title!r})" if title else "")
    return True, f"title {title!r}; abstract of {len(abstract)} characters"


def _theme_keyword(r: _Record) -> tuple[bool, str]:
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    found = []
    for kw in _xp(r.ident, "gmd:descriptiveKeywords/gmd:MD_Keywords"):
        title = _text(kw, "gmd:thesaurusName/gmd:CI_Citation/gmd:title")
        if "INSPIRE themes" not in title and not _xp(kw, "gmd:keyword/gmx:Anchor[starts-with(@xlink:href, "
                                                           "'http://inspire.ec.europa.eu/theme/')]"):
            continue
        problems = []
        if title != GEMET_THEMES_TITLE:
            problems.append(f"thesaurus title is {title!r}, not exactly {GEMET_THEMES_TITLE!r}")
        dates = [(_date_of(d), d.xpath("string(../gmd:dateType/gmd:CI_DateTypeCode/@codeListValue)", namespaces=NS))
                 for d in _xp(kw, "gmd:thesaurusName/gmd:CI_Citation/gmd:date/gmd:CI_Date/gmd:date")]
        if (datetime.date.fromisoformat(GEMET_THEMES_DATE), "publication") not in dates:
            problems.append(f"thesaurus date is {[(str(d), t) for d, t in dates]}, not {GEMET_THEMES_DATE} publication")
        anchors = _xp(kw, "gmd:keyword/gmx:Anchor")
        theme = [a for a in anchors if a.get(_HREF) == LAND_COVER_THEME_URI]
        if not theme:
            shown = [f"{(a.text or '').strip()} ({a.get(_HREF)})" for a in anchors] or _texts(kw, "gmd:keyword")
            problems.append(f"no keyword gmx:Anchor to {LAND_COVER_THEME_URI} (keywords given: {shown})")
        elif (theme[0].text or "").strip() != LAND_COVER_THEME_LABEL:
            problems.append(f"theme anchor text is {(theme[0].text or '').strip()!r}, not {LAND_COVER_THEME_LABEL!r}")
        found.append(problems)
        if not problems:
            thesaurus_href = kw.xpath("string(gmd:thesaurusName/gmd:CI_Citation/gmd:title/gmx:Anchor/@xlink:href)",
                                      namespaces=NS)
            return True, (f"{LAND_COVER_THEME_LABEL} ({LAND_COVER_THEME_URI}) from {GEMET_THEMES_TITLE}"
                          + (f" ({thesaurus_href})" if thesaurus_href else ""))
    if not found:
        return False, f"no descriptive keywords from the thesaurus {GEMET_THEMES_TITLE!r}"
    return False, "; ".join(p for problems in found for p in problems)


def _topic_category(r: _Record) -> tuple[bool, str]:
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    topics = [t.strip() for t in _xp(r.ident, "gmd:topicCategory/gmd:MD_TopicCategoryCode/text()")]
    unknown = [t for t in topics if t not in TOPIC_CATEGORIES]
    if unknown:
        return False, f"unknown topic categories {unknown}"
    if not {"environment", "imageryBaseMapsEarthCover"} & set(topics):
        return False, f"topic categories {topics or 'none'} include neither environment nor imageryBaseMapsEarthCover"
    return True, ", ".join(topics)


def _bounding_box(r: _Record) -> tuple[bool, str]:
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    boxes = _xp(r.ident, "gmd:extent/gmd:EX_Extent/gmd:geographicElement/gmd:EX_GeographicBoundingBox")
    if not boxes:
        return False, "no gmd:EX_GeographicBoundingBox"
    found = []
    for box in boxes:
        values = {}
        for side in ("westBoundLongitude", "eastBoundLongitude", "southBoundLatitude", "northBoundLatitude"):
            text = box.xpath(f"string(gmd:{side}/gco:Decimal)", namespaces=NS).strip()
            try:
                values[side] = float(text)
            except ValueError:
                return False, f"{side} is {text!r}, not a decimal number of degrees"
        w, e = values["westBoundLongitude"], values["eastBoundLongitude"]
        s, n = values["southBoundLatitude"], values["northBoundLatitude"]
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
            return False, f"bounding box W {w} E {e} S {s} N {n} is not in degrees with south <= north"
        found.append(f"W {w} E {e} S {s} N {n}")
    return True, "; ".join(found)


def _temporal(r: _Record) -> tuple[bool, str]:
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    problems = []
    dates = []  # (date type, text, parsed date or None)
    for cited in _xp(r.ident, "gmd:citation/gmd:CI_Citation/gmd:date/gmd:CI_Date"):
        kind = cited.xpath("string(gmd:dateType/gmd:CI_DateTypeCode/@codeListValue)", namespaces=NS)
        text = cited.xpath("string(gmd:date/gco:Date | gmd:date/gco:DateTime)", namespaces=NS).strip()
        dates.append((kind, text, _date_of(_xp(cited, "gmd:date")[0]) if _xp(cited, "gmd:date") else None))
    kinds = [kind for kind, _, _ in dates]
    if not {"creation", "revision", "publication"} & set(kinds):
        problems.append(f"no creation, revision or publication date among the citation dates {kinds}")
    for kind in ("creation", "revision"):
        if kinds.count(kind) > 1:
            problems.append(f"{kinds.count(kind)} {kind} dates (at most one)")
    problems += [f"{kind} date {text!r} is not an ISO 8601 date (YYYY-MM-DD) or date and time"
                 for kind, text, when in dates if when is None]
    periods = _xp(r.ident, "gmd:extent/gmd:EX_Extent/gmd:temporalElement/gmd:EX_TemporalExtent/gmd:extent/"
                           "gml:TimePeriod")
    window = None
    if not periods:
        problems.append("no temporal extent (gml:TimePeriod of GML 3.2)")
    else:
        begin_text = periods[0].xpath("string(gml:beginPosition)", namespaces=NS).strip()
        end_text = periods[0].xpath("string(gml:endPosition)", namespaces=NS).strip()
        try:
            begin = datetime.date.fromisoformat(begin_text[:10])
            end = datetime.date.fromisoformat(end_text[:10])
        except ValueError:
            problems.append(f"the temporal extent {begin_text!r}..{end_text!r} is not two ISO 8601 dates")
        else:
            window = (begin, end)
            if begin > end:
                problems.append(f"the temporal extent ends ({end}) before it begins ({begin})")
            elif r.name and not (begin <= datetime.date(r.name.reference_year, 1, 1)
                                 and end >= datetime.date(r.name.reference_year, 12, 31)):
                problems.append(f"the temporal extent {begin}..{end} does not contain the reference year "
                                f"{r.name.reference_year}")
    if problems:
        return False, "; ".join(problems)
    return True, f"acquisition {window[0]}..{window[1]}; dates " + ", ".join(f"{k} {t}" for k, t, _ in dates)


def _lineage(r: _Record) -> tuple[bool, str]:
    scoped = [dq for dq in r.dq if dq.xpath("string(gmd:scope/gmd:DQ_Scope/gmd:level/gmd:MD_ScopeCode/@codeListValue)",
                                             namespaces=NS) in ("dataset", "series")]
    if len(scoped) != 1:
        return False, f"{len(scoped)} gmd:DQ_DataQuality elements scoped to the data set (exactly one)"
    statement = _text(scoped[0], "gmd:lineage/gmd:LI_Lineage/gmd:statement")
    if not statement:
        return False, "no gmd:lineage/gmd:LI_Lineage/gmd:statement text"
    return True, f"lineage of {len(statement)} characters"


def _resolution(r: _Record) -> tuple[bool, str]:
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    distances = _xp(r.ident, "gmd:spatialResolution/gmd:MD_Resolution/gmd:distance/gco:Distance")
    scales = _xp(r.ident, "gmd:spatialResolution/gmd:MD_Resolution/gmd:equivalentScale")
    if not distances:
        return False, "no gmd:spatialResolution/gmd:MD_Resolution/gmd:distance/gco:Distance" + (
            " (only an equivalent scale)" if scales else "")
    if scales:
        return False, "both a distance and an equivalent scale (use one)"
    found = []
    for d in distances:
        uom, text = d.get("uom", ""), (d.text or "").strip()
        try:
            value = float(text)
        except ValueError:
            return False, f"resolution {text!r} is not a number"
        if not uom:
            return False, f"resolution {text} has no uom"
        found.append((value, uom))
    if r.name and (float(PIXEL_SIZE_M), "m") not in found:
        return False, f"resolution {found} is not {PIXEL_SIZE_M} m"
    return True, ", ".join(f"{v:g} {u}" for v, u in found)


def _conformity(r: _Record) -> tuple[bool, str]:
    results = [res for dq in r.dq for res in
               _xp(dq, "gmd:report/gmd:DQ_DomainConsistency/gmd:result/gmd:DQ_ConformanceResult")]
    titles = []
    for res in results:
        title = _text(res, "gmd:specification/gmd:CI_Citation/gmd:title")
        titles.append(title)
        if title != REGULATION_1089_TITLE:
            continue
        problems = []
        dates = [(_date_of(d), d.xpath("string(../gmd:dateType/gmd:CI_DateTypeCode/@codeListValue)", namespaces=NS))
                 for d in _xp(res, "gmd:specification/gmd:CI_Citation/gmd:date/gmd:CI_Date/gmd:date")]
        if (datetime.date.fromisoformat(REGULATION_1089_DATE), "publication") not in dates:
            problems.append(f"citation date {[(str(d), t) for d, t in dates]} is not {REGULATION_1089_DATE} "
                            "publication")
        passes = _xp(res, "gmd:pass")
        degree = passes[0].xpath("string(gco:Boolean)", namespaces=NS).strip() if passes else ""
        if degree in ("true", "false", "1", "0"):
            degree = {"1": "true", "0": "false"}.get(degree, degree)
        elif passes and passes[0].get(f"{{{NS['gco']}}}nilReason") == "unknown" and not len(passes[0]):
            degree = "not evaluated"
        else:
            problems.append("gmd:pass is neither a gco:Boolean nor empty with nilReason unknown")
        if problems:
            return False, "; ".join(problems)
        return True, f"Regulation (EU) No 1089/2010: {degree}"
    if not results:
        return False, "no gmd:DQ_ConformanceResult"
    near = [t for t in titles if "1089/2010" in t]
    return False, ("no conformity statement cites the exact title of Regulation (EU) No 1089/2010"
                   + (f" (found {near[0]!r})" if near else f" (found {titles})"))


def _legal_constraints(r: _Record) -> list:
    return _xp(r.ident, "gmd:resourceConstraints/gmd:MD_LegalConstraints") if r.ident is not None else []


def _anchors_to(node, prefix: str) -> list[str]:
    return [a.get(_HREF, "") for a in _xp(node, "gmd:otherConstraints/gmx:Anchor")
            if a.get(_HREF, "").startswith(prefix)]


def _restriction(node, which: str) -> list[str]:
    return _xp(node, f"gmd:{which}/gmd:MD_RestrictionCode/@codeListValue")


def _conditions(r: _Record) -> tuple[bool, str]:
    # The element for conditions is the one that is not the limitations-on-public-access one.
    candidates = [lc for lc in _legal_constraints(r) if not _anchors_to(lc, LIMITATIONS_CODELIST)]
    usable = [lc for lc in candidates
              if "otherRestrictions" in _restriction(lc, "useConstraints") + _restriction(lc, "accessConstraints")
              and any(_texts(lc, "gmd:otherConstraints"))]
    if len(usable) != 1:
        return False, (f"{len(usable)} gmd:MD_LegalConstraints with use/access constraint otherRestrictions and "
                       "otherConstraints for the conditions applying to access and use (exactly one, apart from "
                       "the one for limitations on public access)")
    anchors = _anchors_to(usable[0], CONDITIONS_CODELIST)
    bad = [a for a in anchors if a[len(CONDITIONS_CODELIST):] not in CONDITIONS_VALUES]
    if bad:
        return False, f"anchors {bad} are not values of the ConditionsApplyingToAccessAndUse code list"
    texts = [t for t in _texts(usable[0], "gmd:otherConstraints") if t]
    what = ", ".join(a[len(CONDITIONS_CODELIST):] for a in anchors) if anchors else "free text"
    return True, f"{what}; {len(texts)} statement(s): {texts[0][:80]!r}"


def _limitations(r: _Record) -> tuple[bool, str]:
    found = [lc for lc in _legal_constraints(r) if _anchors_to(lc, LIMITATIONS_CODELIST)]
    if len(found) != 1:
        texts = [t for lc in _legal_constraints(r) for t in _texts(lc, "gmd:otherConstraints") if t]
        return False, (f"{len(found)} gmd:MD_LegalConstraints with a gmx:Anchor to {LIMITATIONS_CODELIST} "
                       f"(exactly one){f'; other constraints given as text: {texts}' if texts else ''}")
    if "otherRestrictions" not in _restriction(found[0], "accessConstraints"):
        return False, "the limitations on public access lack gmd:accessConstraints otherRestrictions"
    values = [a[len(LIMITATIONS_CODELIST):] for a in _anchors_to(found[0], LIMITATIONS_CODELIST)]
    bad = [v for v in values if v not in LIMITATIONS_VALUES]
    if bad:
        return False, f"{bad} are not values of the LimitationsOnPublicAccess code list"
    return True, ", ".join(values)


def _party(node) -> tuple[list[str], str]:
    """Problems of a CI_ResponsibleParty and a short description of it."""
    problems = []
    org = _text(node, "gmd:organisationName")
    email = _text(node, "gmd:contactInfo/gmd:CI_Contact/gmd:address/gmd:CI_Address/gmd:electronicMailAddress")
    role = node.xpath("string(gmd:role/gmd:CI_RoleCode/@codeListValue)", namespaces=NS)
    if not org:
        problems.append("no organisation name")
    if "@" not in email:
        problems.append(f"no e-mail address (found {email!r})" if email else "no e-mail address")
    if role not in ROLE_CODES:
        problems.append(f"role {role!r} is not a CI_RoleCode value")
    return problems, f"{org} <{email}> ({role})"


def _responsible(r: _Record) -> tuple[bool, str]:
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    parties = _xp(r.ident, "gmd:pointOfContact/gmd:CI_ResponsibleParty")
    if not parties:
        return False, "no gmd:identificationInfo/*/gmd:pointOfContact/gmd:CI_ResponsibleParty"
    results = [_party(p) for p in parties]
    if any(problems for problems, _ in results):
        return False, "; ".join(f"{who}: {', '.join(problems)}" for problems, who in results if problems)
    return True, "; ".join(who for _, who in results)


def _metadata_contact(r: _Record) -> tuple[bool, str]:
    parties = _xp(r.root, "gmd:contact/gmd:CI_ResponsibleParty")
    if not parties:
        return False, "no gmd:contact/gmd:CI_ResponsibleParty"
    results = [_party(p) for p in parties]
    for p, (problems, who) in zip(parties, results):
        if p.xpath("string(gmd:role/gmd:CI_RoleCode/@codeListValue)", namespaces=NS) != "pointOfContact":
            problems.append("role is not pointOfContact")
    if any(problems for problems, _ in results):
        return False, "; ".join(f"{who}: {', '.join(problems)}" for problems, who in results if problems)
    return True, "; ".join(who for _, who in results)


def _representation(r: _Record) -> tuple[bool, str]:
    if r.ident is None:
        return False, "no gmd:identificationInfo"
    codes = _xp(r.ident, "gmd:spatialRepresentationType/gmd:MD_SpatialRepresentationTypeCode")
    if not codes:
        return False, "no gmd:spatialRepresentationType/gmd:MD_SpatialRepresentationTypeCode"
    values = [c.get("codeListValue", "") for c in codes]
    problems = [f"{v!r} is not vector, grid, tin or textTable" for v in values
                if v not in ("vector", "grid", "tin", "textTable")]
    problems += [f"codeList {c.get('codeList')!r} is not the ISO 19139 MD_SpatialRepresentationTypeCode list"
                 for c in codes if not c.get("codeList", "").endswith("#MD_SpatialRepresentationTypeCode")]
    if r.name and "grid" not in values:
        problems.append(f"spatial representation {values} is not grid (a raster product)")
    if problems:
        return False, "; ".join(problems)
    grids = _xp(r.root, "gmd:spatialRepresentationInfo/gmd:MD_GridSpatialRepresentation")
    sizes = [" x ".join(g.xpath("gmd:axisDimensionProperties/gmd:MD_Dimension/gmd:dimensionSize/gco:Integer/text()",
                                namespaces=NS)) for g in grids]
    return True, ", ".join(values) + (f"; grid of {sizes[0]} cells" if sizes else "")


def _crs(r: _Record) -> tuple[bool, str]:
    epsg = []
    others = []
    for code in _xp(r.root, "gmd:referenceSystemInfo/gmd:MD_ReferenceSystem/gmd:referenceSystemIdentifier/"
                            "gmd:RS_Identifier/gmd:code"):
        values = [a.get(_HREF, "") for a in _xp(code, "gmx:Anchor")] + _texts(code, ".")
        hits = [m.group(1) for v in values if (m := EPSG_URI.match(v.strip()))]
        if hits:
            epsg.append(int(hits[0]))
        else:
            others.append(" / ".join(v for v in values if v))
    if not epsg:
        return False, ("no reference system identified by an EPSG HTTP URI (http://www.opengis.net/def/crs/EPSG/0/"
                       f"<code>){f'; found {others}' if others else ''}")
    if r.name and r.name.epsg not in epsg:
        return False, f"reference systems EPSG {epsg} do not include the file's EPSG:{r.name.epsg}"
    return True, ", ".join(f"EPSG:{e}" for e in epsg)


def _encoding(r: _Record) -> tuple[bool, str]:
    formats = _xp(r.root, "gmd:distributionInfo/gmd:MD_Distribution/gmd:distributionFormat/gmd:MD_Format")
    if not formats:
        return False, "no gmd:distributionInfo/gmd:MD_Distribution/gmd:distributionFormat/gmd:MD_Format"
    found, problems = [], []
    for fmt in formats:
        name = _text(fmt, "gmd:name")
        version = _text(fmt, "gmd:version")
        nil = fmt.xpath("string(gmd:version/@gco:nilReason)", namespaces=NS)
        if not name:
            problems.append("a format has no name")
        if not version and nil not in ("unknown", "inapplicable"):
            problems.append(f"format {name!r} has no version (nor nilReason unknown/inapplicable)")
        found.append(f"{name} {version or '(' + nil + ')'}")
    if r.name and not any("geotiff" in f.lower() for f in found):
        problems.append(f"formats {found} do not name GeoTIFF")
    if r.ident is not None:
        charset = _xp(r.ident, "gmd:characterSet/gmd:MD_CharacterSetCode")
        if charset and not charset[0].get("codeList", "").endswith("#MD_CharacterSetCode"):
            problems.append("the resource character set does not use the MD_CharacterSetCode code list")
        if charset:
            found.append(f"character set {charset[0].get('codeListValue')}")
    if problems:
        return False, "; ".join(problems)
    return True, "; ".join(found)


def _metadata_date(r: _Record) -> tuple[bool, str]:
    stamp = _xp(r.root, "gmd:dateStamp")
    when = _date_of(stamp[0]) if stamp else None
    problems = []
    if when is None:
        problems.append("no ISO 8601 gmd:dateStamp (gco:Date or gco:DateTime)")
    name = _text(r.root, "gmd:metadataStandardName")
    version = _text(r.root, "gmd:metadataStandardVersion")
    if not name or not version:
        problems.append("no metadata standard name and version")
    if problems:
        return False, "; ".join(problems)
    return True, f"{when}; {name} {version}"


_CHECKS = {
    "unique-resource-identifier": _unique_identifier,
    "resource-type-and-language": _resource_type,
    "title-and-abstract": _title_abstract,
    "inspire-theme-keyword": _theme_keyword,
    "topic-category": _topic_category,
    "geographic-bounding-box": _bounding_box,
    "temporal-reference": _temporal,
    "lineage": _lineage,
    "spatial-resolution": _resolution,
    "conformity": _conformity,
    "conditions-for-access-and-use": _conditions,
    "limitations-on-public-access": _limitations,
    "responsible-organisation": _responsible,
    "metadata-point-of-contact": _metadata_contact,
    "spatial-representation-type": _representation,
    "coordinate-reference-system": _crs,
    "encoding": _encoding,
    "metadata-date-and-standard": _metadata_date,
}
assert _CHECKS.keys() == REQUIREMENTS.keys()


def inspire_requirements(xml: bytes, file_name: str | None = None) -> list[Requirement]:
    """One :class:`Requirement` per entry of :data:`REQUIREMENTS`, checked by XPath on ``xml``.
    ``file_name``: the expected unique resource identifier (a product file name with or without
    suffix, or any other code); with a product file name the checks also hold the record to that
    file (layer, year, tile, EPSG, 10 m, grid, GeoTIFF). ValueError when ``xml`` is not XML."""
    try:
        record = _Record(_parse(xml), file_name)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"metadata is not well-formed XML: line {exc.lineno}: {exc.msg}") from exc
    out = []
    for ident, check in _CHECKS.items():
        passed, detail = check(record)
        out.append(Requirement(ident, REQUIREMENTS[ident], passed, detail))
    return out


def metadata_problems(xml: bytes, file_name: str | None = None) -> list[str]:
    """Schema errors and failed INSPIRE requirements of ``xml`` as messages; ``[]`` when the
    record is valid and meets every requirement."""
    problems = [f"schema: {e}" for e in schema_errors(xml)]
    try:
        requirements = inspire_requirements(xml, file_name)
    except ValueError:
        return problems  # not XML: the schema check has said so
    return problems + [f"INSPIRE {r.ident}: {r.detail}" for r in requirements if not r.passed]


__all__ = [
    "Contact",
    "ProductMetadata",
    "REQUIREMENTS",
    "Requirement",
    "inspire_requirements",
    "metadata_filename",
    "metadata_problems",
    "render_metadata",
    "schema_errors",
    "template_identity",
    "templates_dir",
]
