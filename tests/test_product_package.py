"""The delivery of a product tile: manifest (size and SHA-256 of every delivered file) and one zip
per delivered layer file for EEA's check; same bytes on rerun, files back byte-identical."""

from __future__ import annotations

import hashlib
import json
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from clcplus_ops.config import Config
from clcplus_ops.geo.eea_grid import product_name
from clcplus_ops.geo.grid import Grid
from clcplus_ops.products import cog, package

GRID = Grid.from_bounds(3035, (4_400_000.0, 3_600_000.0, 4_402_000.0, 3_602_000.0), 10.0)
PRODUCER = "CLCplus production consortium"


def _layer_files(folder: Path, layer: str = "ras", tile: str = "e44n36", revision: int = 0) -> list[Path]:
    """A delivered layer file: the COG, its attribute table and its INSPIRE metadata."""
    name = product_name(layer, 2023, tile, 3035, 1, revision)
    ras = np.random.default_rng(2).integers(1, 12, GRID.shape).astype(np.uint8)
    ras[:, :30] = 254
    tif = cog.write_layer_cog(folder / name.file(), ras, GRID, cog.layer_spec("ras", Config().codes))
    aux = folder / name.file(".tif.aux.xml")
    aux.write_text("<PAMDataset>\n" + "  <Row><F>1</F><F>Sealed</F></Row>\n" * 40 + "</PAMDataset>\n")
    xml = folder / name.file(".xml")
    xml.write_text("<gmd:MD_Metadata xmlns:gmd=\"http://www.isotc211.org/2005/gmd\">\n"
                   + "  <gmd:contact/>\n" * 40 + "</gmd:MD_Metadata>\n")
    clr = folder / name.file(".tif.clr")
    clr.write_text("1 255 0 0\n2 34 139 34\n")
    return [tif, aux, xml, clr]


@pytest.fixture
def files(tmp_path) -> list[Path]:
    folder = tmp_path / "tile"
    folder.mkdir()
    return _layer_files(folder)


def test_file_entry_gives_name_size_and_sha256(files):
    tif = files[0]
    entry = package.file_entry(tif)
    assert entry == {"name": tif.name, "size": len(tif.read_bytes()),
                     "sha256": hashlib.sha256(tif.read_bytes()).hexdigest()}
    assert package.file_entry(tif, name="other.tif")["name"] == "other.tif"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        package.file_entry(tif.with_name("missing.tif"))


def test_manifest_lists_every_file_in_name_order_with_matching_checksums(files):
    entries = [package.file_entry(p) for p in reversed(files)]
    data = package.manifest(entries, tile="E44N36", reference_year=2023, version=1, revision=0, producer=PRODUCER)
    assert (data["tile"], data["reference_year"], data["version"], data["revision"]) == ("e44n36", 2023, 1, 0)
    assert data["producer"] == PRODUCER
    assert [f["name"] for f in data["files"]] == sorted(p.name for p in files)
    by_name = {p.name: p for p in files}
    for entry in data["files"]:
        content = by_name[entry["name"]].read_bytes()
        assert entry["size"] == len(content) and entry["sha256"] == hashlib.sha256(content).hexdigest()
    written = package.manifest_bytes(data)
    assert json.loads(written) == data and written.endswith(b"}\n")
    again = package.manifest([package.file_entry(p) for p in files], tile="e44n36", reference_year=2023, version=1,
                             revision=0, producer=PRODUCER)
    assert package.manifest_bytes(again) == written


def test_manifest_refuses_files_of_another_tile_or_revision_and_bad_entries(files, tmp_path):
    entries = [package.file_entry(p) for p in files]
    args = dict(tile="e44n36", reference_year=2023, version=1, revision=0, producer=PRODUCER)
    other = _layer_files(tmp_path, tile="e45n36")[0]
    with pytest.raises(ValueError, match="is tile e45n36.*manifest is for tile e44n36"):
        package.manifest(entries + [package.file_entry(other)], **args)
    with pytest.raises(ValueError, match="R01"):
        package.manifest(entries, **{**args, "revision": 1})
    with pytest.raises(ValueError, match="listed twice"):
        package.manifest(entries + entries[:1], **args)
    with pytest.raises(ValueError, match="64 lower-case hex"):
        package.manifest([{**entries[0], "sha256": "ABC"}], **args)
    with pytest.raises(ValueError, match="exactly name, size and sha256"):
        package.manifest([{"name": files[0].name}], **args)
    with pytest.raises(ValueError, match="naming rule"):
        package.manifest([{**entries[0], "name": "readme.txt"}], **args)
    with pytest.raises(ValueError, match="relative key"):
        package.manifest([{**entries[0], "name": "../" + files[0].name}], **args)
    # Published keys relative to the delivery root are names too.
    keyed = [package.file_entry(p, f"2023/E44N36/{p.name}") for p in files]
    keyed.append(package.file_entry(files[0], f"stac/clms-clcplus-ras-2023/{files[0].stem}.json"))
    data = package.manifest(keyed, **args)
    assert [f["name"] for f in data["files"]][0] == f"2023/E44N36/{files[0].name}"
    with pytest.raises(ValueError, match="is tile e45n36"):
        package.manifest(keyed + [package.file_entry(other, f"2023/E45N36/{other.name}")], **args)


def test_delivery_zip_is_the_same_bytes_twice_and_gives_the_files_back(files, tmp_path):
    stem = product_name("ras", 2023, "e44n36", 3035, 1, 0).stem
    first = package.delivery_zip(tmp_path / "a" / f"{stem}.zip", files)
    second = package.delivery_zip(tmp_path / "b" / f"{stem}.zip", list(reversed(files)))
    assert first.read_bytes() == second.read_bytes()
    assert not list(first.parent.glob("*.part"))

    with zipfile.ZipFile(first) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
        # Top level, in name order: .tif, .tif.aux.xml, .tif.clr, .xml.
        assert [i.filename for i in infos] == [f"{stem}.tif", f"{stem}.tif.aux.xml", f"{stem}.tif.clr", f"{stem}.xml"]
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr >> 16 == 0o100644 and info.create_system == 3
        assert infos[0].compress_type == zipfile.ZIP_STORED
        assert infos[1].compress_type == infos[3].compress_type == zipfile.ZIP_DEFLATED
        assert infos[3].compress_size < infos[3].file_size  # the XML is deflated
        out = tmp_path / "unzipped"
        zf.extractall(out)  # what EEA's unzip check does
    for path in files:
        assert (out / path.name).read_bytes() == path.read_bytes()

    # A staging name is the caller's; the published name comes from the files.
    staged = package.delivery_zip(tmp_path / "d" / "ras.zip", files)
    assert staged.read_bytes() == first.read_bytes()
    assert package.delivery_zip_name(files) == f"{stem}.zip"

    dated = package.delivery_zip(tmp_path / "c" / f"{stem}.zip", files, date_time=date(2024, 6, 14))
    with zipfile.ZipFile(dated) as zf:
        assert {i.date_time for i in zf.infolist()} == {(2024, 6, 14, 0, 0, 0)}
    assert dated.read_bytes() != first.read_bytes()


def test_delivery_zip_refuses_what_eea_would_not_take(files, tmp_path):
    stem = product_name("ras", 2023, "e44n36", 3035, 1, 0).stem
    target = tmp_path / f"{stem}.zip"
    with pytest.raises(ValueError, match=r"lacks .*\.xml"):
        package.delivery_zip(target, files[:2] + files[3:])
    wrong = product_name("ras", 2023, "e44n36", 3035, 1, 1).stem + ".zip"
    with pytest.raises(ValueError, match=f"published as {stem}.zip, not {wrong}"):
        package.delivery_zip(tmp_path / wrong, files)
    other = _layer_files(tmp_path, tile="e45n36")
    with pytest.raises(ValueError, match="one product file"):
        package.delivery_zip(target, files[:2] + other[2:3] + files[3:])
    png = files[0].with_suffix(".png")
    png.write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match="holds only"):
        package.delivery_zip(target, files + [png])
    with pytest.raises(ValueError, match="before 1980"):
        package.delivery_zip(target, files, date_time=date(1970, 1, 1))
    assert not target.exists()
