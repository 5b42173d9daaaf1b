"""INSPIRE ISO 19139 metadata of the delivered product files: rendering, offline XSD validation
and the INSPIRE TG 2.0 requirement checks (on our records, on damaged ones, on EEA's own)."""

from __future__ import annotations

import datetime
import shutil

import pytest
from conftest import shared_path
from lxml import etree

from clcplus_ops.geo.eea_grid import product_filename
from clcplus_ops.products import metadata as md

NS = md.NS
EEA_RECORD = ("reference", "inspire", "records", "eea_qc_tool", "IMD_2018_010m_eu_03035_test.xml")


def product(layer="ras", tile="e44n36", epsg=3035, revision=0, **changes) -> md.ProductMetadata:
    values = dict(
        file_name=product_filename(layer, 2023, tile, epsg, 1, revision), layer=layer, reference_year=2023,
        tile=tile, epsg=epsg, bounds_wgs84=(9.1234567, 47.5, 10.0000001, 48.4), width=10_000, height=10_000,
        acquisition_start=datetime.date(2022, 10, 1), acquisition_end=datetime.date(2024, 3, 31),
        revision_date=datetime.date(2025, 4, 1), version=1, revision=revision,
        lineage="Sentinel-2 L2A time series classified per production unit with a TempCNN, then filtered.",
        producer=md.Contact("CLCplus production consortium", "production@example.eu", "https://example.eu"),
        metadata_contact=md.Contact("European Environment Agency", "copernicus@example.eu"))
    values.update(changes)
    return md.ProductMetadata(**values)


@pytest.fixture(scope="module")
def ras() -> tuple[bytes, str]:
    meta = product()
    return md.render_metadata(meta), meta.file_name


@pytest.fixture(scope="module")
def dom_raspl() -> tuple[bytes, str]:
    meta = product("raspl", "gf", 32622, revision=2, bounds_wgs84=(-54.61, 2.11, -51.61, 5.78), width=33_700,
                   height=41_200)
    return md.render_metadata(meta), meta.file_name


def failed(xml: bytes, file_name: str | None) -> dict[str, str]:
    return {r.ident: r.detail for r in md.inspire_requirements(xml, file_name) if not r.passed}


def edit(xml: bytes, change) -> bytes:
    """``xml`` with ``change(root)`` applied (an lxml edit, as a broken template or tool would do)."""
    root = etree.fromstring(xml)
    change(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def one(root, path: str):
    found = root.xpath(path, namespaces=NS)
    assert len(found) >= 1, path
    return found[0]


# --- XSD validation -------------------------------------------------------------------------


def test_generated_records_validate_against_the_packaged_xsds(ras, dom_raspl):
    for layer in ("rascl", "rasdl"):
        assert md.schema_errors(md.render_metadata(product(layer))) == []
    assert md.schema_errors(ras[0]) == []
    assert md.schema_errors(dom_raspl[0]) == []


def test_the_schema_loads_only_packaged_files():
    """Offline: building the schema reads files of clcplus_ops/data/inspire and nothing else."""
    requested = []

    class Record(etree.Resolver):
        def resolve(self, url, pubid, context):
            requested.append(url)

    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(Record())
    etree.XMLSchema(etree.parse(str(md.SCHEMA_ENTRY), parser))
    # Exactly the packaged schema files: none is fetched from elsewhere, none is packaged unused.
    packaged = {str(path.resolve()) for path in md.INSPIRE_DIR.rglob("*.xsd")}
    assert len(packaged) == 64
    assert set(requested) == packaged
    assert (md.INSPIRE_DIR / "LICENSE.EUPL-1.2.txt").is_file() and (md.INSPIRE_DIR / "SOURCES.md").is_file()


def test_damaged_records_give_schema_errors(ras):
    xml, _ = ras
    no_date = edit(xml, lambda root: root.remove(one(root, "gmd:dateStamp")))
    errors = md.schema_errors(no_date)
    assert errors and "dateStamp" in errors[0] and errors[0].split(":")[0].isdigit()

    def misspell(root):
        one(root, "//gmd:abstract").tag = f"{{{NS['gmd']}}}abstrct"

    errors = md.schema_errors(edit(xml, misspell))
    assert any("abstrct" in e for e in errors)
    # Bad content, not only bad structure: a boolean that is not one.
    errors = md.schema_errors(xml.replace(b"<gco:Boolean>false</gco:Boolean>", b"<gco:Boolean>no</gco:Boolean>"))
    assert any("Boolean" in e for e in errors)
    # A valid gmd element that is not a metadata record.
    citation = etree.tostring(one(etree.fromstring(xml), "//gmd:citation/gmd:CI_Citation"))
    assert any("not gmd:MD_Metadata" in e for e in md.schema_errors(citation))
    assert md.schema_errors(b"<gmd:MD_Metadata")[0].split(":")[0].isdigit()


# --- INSPIRE TG 2.0 requirements ------------------------------------------------------------

# The requirements of the product's metadata (items 1-16 of the metadata issue; 11 and 12 are
# two TG 2.0 requirements each).
LISTED = [
    "unique-resource-identifier",  # 1 file identifier, unique resource identifier = file name
    "resource-type-and-language",  # 2 dataset (ISO code list), eng, utf8
    "title-and-abstract",  # 3 per layer, with reference year and tile
    "inspire-theme-keyword",  # 4 GEMET INSPIRE theme Land cover as gmx:Anchor
    "topic-category",  # 5 environment / imageryBaseMapsEarthCover
    "geographic-bounding-box",  # 6 WGS 84
    "temporal-reference",  # 7 acquisition window + dated reference
    "lineage",  # 8
    "spatial-resolution",  # 9 10 m
    "conformity",  # 10 Regulation (EU) No 1089/2010
    "conditions-for-access-and-use",  # 11
    "limitations-on-public-access",  # 11
    "responsible-organisation",  # 12
    "metadata-point-of-contact",  # 12
    "spatial-representation-type",  # 13 grid
    "coordinate-reference-system",  # 14 EPSG URI
    "encoding",  # 15 GeoTIFF + character set
    "metadata-date-and-standard",  # 16
]


def test_the_checker_lists_every_requirement_once(ras):
    assert list(md.REQUIREMENTS) == LISTED
    assert [r.ident for r in md.inspire_requirements(*ras)] == LISTED


@pytest.mark.parametrize("ident", LISTED)
def test_generated_records_meet_the_requirement(ident, ras, dom_raspl):
    for xml, file_name in (ras, dom_raspl):
        (result,) = [r for r in md.inspire_requirements(xml, file_name) if r.ident == ident]
        assert result.passed, f"{file_name}: {result.detail}"
        assert result.description and result.detail


def test_requirement_details_show_what_was_found(ras, dom_raspl):
    details = {r.ident: r.detail for r in md.inspire_requirements(*ras)}
    assert "CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00 (code space https://land.copernicus.eu)" in \
        details["unique-resource-identifier"]
    assert details["conformity"] == "Regulation (EU) No 1089/2010: false"
    assert details["limitations-on-public-access"] == "noLimitations"
    assert details["conditions-for-access-and-use"].startswith("noConditionsApply; 2 statement(s)")
    assert details["spatial-representation-type"] == "grid; grid of 10000 x 10000 cells"
    assert details["geographic-bounding-box"] == "W 9.123456 E 10.000001 S 47.5 N 48.4"  # rounded outward
    assert details["temporal-reference"] == "acquisition 2022-10-01..2024-03-31; dates creation 2025-04-01"
    dom = {r.ident: r.detail for r in md.inspire_requirements(*dom_raspl)}
    assert dom["coordinate-reference-system"] == "EPSG:32622"
    assert dom["temporal-reference"].endswith("dates revision 2025-04-01")  # revision 02
    assert dom["spatial-representation-type"] == "grid; grid of 33700 x 41200 cells"


def _remove(path):
    return lambda root: one(root, path).getparent().remove(one(root, path))


def _set_text(path, text):
    def change(root):
        one(root, path).text = text
    return change


def _set_attr(path, name, value):
    def change(root):
        one(root, path).set(name, value)
    return change


def _plain_crs(root):
    anchor = one(root, "gmd:referenceSystemInfo//gmd:code/gmx:Anchor")
    code = anchor.getparent()
    code.remove(anchor)
    etree.SubElement(code, f"{{{NS['gco']}}}CharacterString").text = "EPSG:3035"


HREF = f"{{{NS['xlink']}}}href"
THEME = "//gmd:descriptiveKeywords/gmd:MD_Keywords[gmd:thesaurusName]"
CONFORMITY = "//gmd:DQ_ConformanceResult/gmd:specification/gmd:CI_Citation"

NEGATIVE = [
    ("inspire-theme-keyword", _remove(f"{THEME}/gmd:keyword"),
     "no keyword gmx:Anchor to http://inspire.ec.europa.eu/theme/lc"),
    ("inspire-theme-keyword", _set_text(f"{THEME}/gmd:thesaurusName//gmd:title/gmx:Anchor", "GEMET - INSPIRE themes"),
     "thesaurus title is 'GEMET - INSPIRE themes', not exactly 'GEMET - INSPIRE themes, version 1.0'"),
    ("inspire-theme-keyword", _set_text(f"{THEME}/gmd:thesaurusName//gco:Date", "2008-06-02"),
     "not 2008-06-01 publication"),
    ("inspire-theme-keyword", _set_text(f"{THEME}/gmd:keyword/gmx:Anchor", "Landcover"),
     "theme anchor text is 'Landcover', not 'Land cover'"),
    ("coordinate-reference-system", _plain_crs, "no reference system identified by an EPSG HTTP URI"),
    ("coordinate-reference-system", _set_attr("gmd:referenceSystemInfo//gmx:Anchor", HREF,
                                              "http://www.opengis.net/def/crs/EPSG/0/4326"),
     "do not include the file's EPSG:3035"),
    ("unique-resource-identifier", _set_text("//gmd:citation//gmd:RS_Identifier/gmd:code/gco:CharacterString",
                                             "CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R01"),
     "no identifier code is 'CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00'"),
    ("unique-resource-identifier", _remove("gmd:fileIdentifier"), "no gmd:fileIdentifier"),
    ("resource-type-and-language", _set_attr("gmd:hierarchyLevel/gmd:MD_ScopeCode", "codeListValue", "service"),
     "resource type is 'service'"),
    ("resource-type-and-language", _set_attr("gmd:language/gmd:LanguageCode", "codeListValue", "en"),
     "metadata language 'en'"),
    ("title-and-abstract", _set_text("//gmd:citation//gmd:title/gco:CharacterString", "CLCplus Backbone 2023 RAS"),
     "the title does not name the tile E44N36"),
    ("title-and-abstract", _set_text("//gmd:abstract/gco:CharacterString", "  "), "empty abstract"),
    ("topic-category", _set_text("//gmd:topicCategory[1]/gmd:MD_TopicCategoryCode", "landCover"),
     "unknown topic categories ['landCover']"),
    ("geographic-bounding-box", _set_text("//gmd:northBoundLatitude/gco:Decimal", "40.0"),
     "not in degrees with south <= north"),
    ("temporal-reference", _set_text("//gml:endPosition", "2023-06-30"),
     "does not contain the reference year 2023"),
    ("temporal-reference", _remove("//gmd:temporalElement"), "no temporal extent"),
    ("lineage", _set_text("//gmd:LI_Lineage/gmd:statement/gco:CharacterString", ""),
     "no gmd:lineage/gmd:LI_Lineage/gmd:statement text"),
    ("spatial-resolution", _set_text("//gmd:spatialResolution//gco:Distance", "20"), "is not 10 m"),
    ("conformity", _set_text(f"{CONFORMITY}/gmd:title/gmx:Anchor",
                             "Commission Regulation (EU) No 1089/2010 on interoperability"),
     "no conformity statement cites the exact title of Regulation (EU) No 1089/2010"),
    ("conformity", _set_text(f"{CONFORMITY}//gco:Date", "2010-11-23"), "is not 2010-12-08 publication"),
    ("conformity", _remove("//gmd:pass/gco:Boolean"), "gmd:pass is neither a gco:Boolean nor empty"),
    ("limitations-on-public-access",
     _set_attr("//gmx:Anchor[contains(@xlink:href, 'LimitationsOnPublicAccess')]", HREF,
               "http://inspire.ec.europa.eu/metadata-codelist/LimitationsOnPublicAccess/none"),
     "['none'] are not values of the LimitationsOnPublicAccess code list"),
    ("conditions-for-access-and-use",
     _set_attr("//gmx:Anchor[contains(@xlink:href, 'ConditionsApplying')]", HREF,
               "http://inspire.ec.europa.eu/metadata-codelist/ConditionsApplyingToAccessAndUse/free"),
     "are not values of the ConditionsApplyingToAccessAndUse code list"),
    ("responsible-organisation",
     _set_text("//gmd:pointOfContact//gmd:electronicMailAddress/gco:CharacterString", ""), "no e-mail address"),
    ("metadata-point-of-contact", _set_attr("gmd:contact//gmd:CI_RoleCode", "codeListValue", "owner"),
     "role is not pointOfContact"),
    ("spatial-representation-type", _set_attr("//gmd:MD_SpatialRepresentationTypeCode", "codeListValue", "vector"),
     "is not grid"),
    ("encoding", _set_text("//gmd:distributionFormat[1]//gmd:version/gco:CharacterString", ""),
     "format 'GeoTIFF' has no version"),
    ("metadata-date-and-standard", _set_text("gmd:dateStamp/gco:Date", "1 April 2025"),
     "no ISO 8601 gmd:dateStamp"),
]


@pytest.mark.parametrize("ident, change, detail", NEGATIVE, ids=[f"{n[0]}-{i}" for i, n in enumerate(NEGATIVE)])
def test_a_broken_record_fails_exactly_that_requirement(ident, change, detail, ras):
    xml, file_name = ras
    failures = failed(edit(xml, change), file_name)
    assert list(failures) == [ident]
    assert detail in failures[ident]


def test_the_identifier_is_checked_against_the_expected_file(ras):
    xml, _ = ras
    other = product_filename("ras", 2023, "e45n36", 3035, 1, 0)
    failures = failed(xml, other)
    assert "no identifier code is 'CLMS_CLCPLUS_RAS_S2023_R10m_E45N36_03035_V01_R00'" in \
        failures["unique-resource-identifier"]
    assert "the title does not name the tile E45N36" in failures["title-and-abstract"]
    # Without an expected file only the generic TG 2.0 checks run.
    assert failed(xml, None) == {}
    # The metadata file's own name (.xml) names the same product.
    assert failed(xml, md.metadata_filename(product().file_name)) == {}


def test_metadata_problems_collects_schema_and_requirement_failures(ras):
    xml, file_name = ras
    assert md.metadata_problems(xml, file_name) == []
    broken = edit(xml, lambda root: root.remove(one(root, "gmd:referenceSystemInfo")))
    problems = md.metadata_problems(broken, file_name)
    assert problems == ["INSPIRE coordinate-reference-system: no reference system identified by an EPSG HTTP URI "
                        "(http://www.opengis.net/def/crs/EPSG/0/<code>)"]
    problems = md.metadata_problems(edit(xml, _remove("gmd:dateStamp")), file_name)
    assert problems[0].startswith("schema: ") and "INSPIRE metadata-date-and-standard: no ISO 8601" in problems[-1]
    problems = md.metadata_problems(b"not xml", file_name)
    assert len(problems) == 1 and problems[0].startswith("schema: 1: not well-formed XML")
    with pytest.raises(ValueError, match="not well-formed XML"):
        md.inspire_requirements(b"<a>", file_name)


# --- EEA's own record -----------------------------------------------------------------------


def test_the_real_eea_record_validates_and_is_judged_by_tg2():
    xml = shared_path(*EEA_RECORD).read_bytes()
    assert md.schema_errors(xml) == []
    results = {r.ident: r for r in md.inspire_requirements(xml, "IMD_2018_010m_eu_03035")}
    assert list(results) == LISTED
    # Read in the record: the Land cover anchor with the exact GEMET title, the EPSG:3035 URI as
    # gmx:Anchor, conformity "not evaluated" (nilReason unknown), GeoVille as metadata contact.
    for ident in ("unique-resource-identifier", "inspire-theme-keyword", "coordinate-reference-system",
                  "conformity", "metadata-point-of-contact", "spatial-resolution", "lineage"):
        assert results[ident].passed, results[ident].detail
    assert results["conformity"].detail == "Regulation (EU) No 1089/2010: not evaluated"
    assert results["coordinate-reference-system"].detail == "EPSG:3035"
    # Older than TG 2.0: "no limitations" is text, not the INSPIRE anchor; the responsible party
    # sits only under resourceMaintenance; no spatial representation type; a month-precision date.
    assert not results["limitations-on-public-access"].passed
    assert "other constraints given as text: ['no limitations']" in results["limitations-on-public-access"].detail
    assert results["responsible-organisation"].detail == \
        "no gmd:identificationInfo/*/gmd:pointOfContact/gmd:CI_ResponsibleParty"
    assert not results["spatial-representation-type"].passed
    assert "creation date '2019-09' is not an ISO 8601 date" in results["temporal-reference"].detail
    assert not md.inspire_requirements(xml, "IMD_2018_100m_eu_03035")[0].passed


# --- rendering ------------------------------------------------------------------------------


def test_rendering_is_deterministic(tmp_path, ras):
    meta = product()
    first = md.render_metadata(meta)
    assert first == ras[0] == md.render_metadata(meta)
    copy = tmp_path / "templates"
    shutil.copytree(md.templates_dir(), copy)
    assert md.render_metadata(meta, copy) == first
    assert first.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<gmd:MD_Metadata')
    # Another revision is another record.
    second = md.render_metadata(product(revision=1))
    file_id = "string(gmd:fileIdentifier/gco:CharacterString)"
    ids = [etree.fromstring(xml).xpath(file_id, namespaces=NS) for xml in (first, second)]
    assert ids[0] != ids[1] and all(ids)


def test_special_characters_are_escaped():
    lineage = 'Recoded where OSM <highway> & LPIS say "crop"; ]]> Ø é – 10 % \n second line'
    xml = md.render_metadata(product(lineage=lineage, producer=md.Contact("Smith & Söhne <GmbH>", "a@b.eu")))
    assert md.schema_errors(xml) == []
    root = etree.fromstring(xml)
    assert root.xpath("string(//gmd:LI_Lineage/gmd:statement/gco:CharacterString)", namespaces=NS) == lineage
    assert root.xpath("string(//gmd:pointOfContact//gmd:organisationName/gco:CharacterString)",
                      namespaces=NS) == "Smith & Söhne <GmbH>"
    assert b"OSM &lt;highway&gt; &amp; LPIS" in xml and "Ø é –".encode() in xml
    with pytest.raises(ValueError, match="control character U\\+0007"):
        product(lineage="bell \x07")


def test_abstracts_follow_the_layer():
    texts = {}
    for layer in ("ras", "rascl", "rasdl", "raspl"):
        root = etree.fromstring(md.render_metadata(product(layer)))
        texts[layer] = root.xpath("string(//gmd:abstract/gco:CharacterString)", namespaces=NS)
        assert "  " not in texts[layer] and "\n" not in texts[layer]
    assert "1 Sealed; 2 Woody needle leaved trees;" in texts["ras"] and "253 coastal seawater buffer" in texts["ras"]
    assert "0 to 100 confidence; 254 outside area" in texts["rascl"]
    assert "0 to 200 valid observations; 65535 outside area" in texts["rasdl"]
    assert "0 unchanged; 1 recoded during post-processing" in texts["raspl"]
    assert "colour table" not in texts["rasdl"] and "colour table" in texts["rascl"]
    dom = etree.fromstring(md.render_metadata(product("rascl", "gf", 32622)))
    assert "French Guiana, delivered whole as tile GF in EPSG:32622" in \
        dom.xpath("string(//gmd:abstract/gco:CharacterString)", namespaces=NS)


def test_product_metadata_must_agree_with_its_file_name():
    with pytest.raises(ValueError, match=r"disagrees with its file name: layer 'rascl' \(the name says 'ras'\)"):
        product(layer="rascl", file_name=product_filename("ras", 2023, "e44n36", 3035, 1, 0))
    with pytest.raises(ValueError, match="tile gf is delivered in EPSG:32622, not EPSG:3035"):
        product("ras", "gf", 3035)
    with pytest.raises(ValueError, match="ends .* before it starts"):
        product(acquisition_end=datetime.date(2022, 1, 1))
    with pytest.raises(ValueError, match="not the delivered .tif"):
        product(file_name="CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00.xml")
    with pytest.raises(ValueError, match="west <= east"):
        product(bounds_wgs84=(10.0, 47.0, 9.0, 48.0))
    with pytest.raises(ValueError, match="must be a datetime.date"):
        product(revision_date=datetime.datetime(2025, 4, 1, 12, 0))
    with pytest.raises(ValueError, match="not an e-mail address"):
        md.Contact("EEA", "copernicus at eea")


def test_templates_are_found_and_overridable(tmp_path, monkeypatch):
    assert md.templates_dir() == md.REPO_TEMPLATES
    custom = tmp_path / "custom"
    shutil.copytree(md.REPO_TEMPLATES, custom)
    template = custom / md.TEMPLATE_NAME
    template.write_text(template.read_text().replace(
        '{% set code_space = "https://land.copernicus.eu" %}', '{% set code_space = "https://example.eu/id" %}'))
    assert md.template_identity(custom) != md.template_identity() == md.template_identity(md.REPO_TEMPLATES)
    monkeypatch.setenv(md.TEMPLATES_ENV, str(custom))
    assert md.template_identity() == md.template_identity(custom)
    xml = md.render_metadata(product())
    assert etree.fromstring(xml).xpath("string(//gmd:RS_Identifier/gmd:codeSpace/gco:CharacterString)",
                                       namespaces=NS) == "https://example.eu/id"
    assert md.metadata_problems(xml, product().file_name) == []
    template.write_text(template.read_text().replace("</gmd:MD_Metadata>", "</gmd:MD_Metadat>"))
    with pytest.raises(ValueError, match="gave XML that is not well-formed"):
        md.render_metadata(product())
    template.write_text(template.read_text().replace("</gmd:MD_Metadat>", "</gmd:MD_Metadata>")
                        .replace("{{ text(lineage) }}", "{{ text(lineage_text) }}"))
    with pytest.raises(ValueError, match="'lineage_text' is undefined"):
        md.render_metadata(product())
    monkeypatch.setenv(md.TEMPLATES_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="CLCPLUS_METADATA_TEMPLATES"):
        md.render_metadata(product())


def test_metadata_file_name_sits_beside_the_product():
    name = product().file_name
    assert md.metadata_filename(name) == "CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00.xml"
