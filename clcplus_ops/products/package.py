"""What is handed over for a product tile: the manifest of its delivered files (size and SHA-256
of each) and one zip per delivered layer file for EEA's delivery check.

EEA's QC tool (``qc_tool.raster.unzip``) extracts the whole zip and then finds the ``.tif`` files
anywhere below the extraction folder; the INSPIRE metadata (``<stem>.xml``) and the attribute
table (``<stem>.tif.aux.xml``) are looked up beside the ``.tif``. The zips here hold exactly those
three files at the top level, and a zip is published under their product file stem
(``CLMS_CLCPLUS_RAS_S2023_R10m_E44N36_03035_V01_R00.zip``).

Same inputs give the same bytes: JSON with a fixed layout, zip members in name order with a fixed
timestamp (1980-01-01 unless a date is given), fixed permissions (0644, Unix) and fixed methods:
the ``.tif`` is stored (it is LZW-compressed already; deflating it again gains little and costs
time on 100 km tiles), the XML files are deflated at zlib's default level.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from datetime import date
from pathlib import Path

from clcplus_ops.geo.eea_grid import parse_product_filename
from clcplus_ops.store import sha256_file

_CHUNK = 1 << 20
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# The delivery unit of one layer file, by suffix after the product stem.
# The layer, its attribute table, its metadata record and its colour text file (EEA's colour
# check compares the embedded colour table and a ``.clr`` beside the file with the product's).
ZIP_MEMBER_SUFFIXES = (".tif", ".tif.aux.xml", ".xml", ".tif.clr")
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def _is_product_name(name: str) -> bool:
    try:
        parse_product_filename(name)
    except ValueError:
        return False
    return True


def file_entry(path: Path, name: str | None = None) -> dict:
    """The manifest entry of a delivered file: name (default: the file's name), size, sha256."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"delivered file {path} does not exist or is not a regular file")
    return {"name": name if name is not None else path.name, "size": path.stat().st_size,
            "sha256": sha256_file(path)}


def manifest(entries: list[dict], *, tile: str, reference_year: int, version: int, revision: int,
             producer: str) -> dict:
    """The manifest of a product tile's delivery: every delivered file with its size and SHA-256,
    in name order. A name is the file's name or its published key relative to the delivery root
    (``2023/E44N36/CLMS_..._R00.tif``); its last part must be a product file name of this tile,
    reference year, version and revision (any suffix), so files of another tile or revision
    cannot slip in."""
    if not producer:
        raise ValueError("manifest needs the producer's name")
    files = []
    seen: set[str] = set()
    for entry in entries:
        if set(entry) != {"name", "size", "sha256"}:
            raise ValueError(f"manifest entry {entry!r} must have exactly name, size and sha256 "
                             "(use file_entry)")
        name, size, sha = entry["name"], entry["size"], entry["sha256"]
        if name in seen:
            raise ValueError(f"file {name!r} is listed twice in the manifest")
        seen.add(name)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size of {name!r} must be a non-negative integer, got {size!r}")
        if not isinstance(sha, str) or not _SHA256_HEX.match(sha):
            raise ValueError(f"sha256 of {name!r} must be 64 lower-case hex digits, got {sha!r}")
        if not isinstance(name, str) or name.startswith("/") or "\\" in name or ".." in name.split("/"):
            raise ValueError(f"manifest name {name!r} must be a file name or a relative key with '/'")
        parts = parse_product_filename(name.rsplit("/", 1)[-1])
        found = (parts.tile, parts.reference_year, parts.version, parts.revision)
        wanted = (tile.lower(), int(reference_year), int(version), int(revision))
        if found != wanted:
            raise ValueError(f"{name!r} is tile {found[0]}, year {found[1]}, V{found[2]:02d} R{found[3]:02d}; "
                             f"the manifest is for tile {wanted[0]}, year {wanted[1]}, "
                             f"V{wanted[2]:02d} R{wanted[3]:02d}")
        files.append({"name": name, "size": size, "sha256": sha})
    if not files:
        raise ValueError("a manifest lists at least one delivered file")
    return {"product": "CLMS CLCplus Backbone", "tile": tile.lower(), "reference_year": int(reference_year),
            "version": int(version), "revision": int(revision), "producer": producer,
            "files": sorted(files, key=lambda f: f["name"])}


def manifest_bytes(data: dict) -> bytes:
    """The manifest as it is written: JSON, two-space indent, keys in manifest order, final newline."""
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def delivery_zip_name(files: list[Path]) -> str:
    """The name a delivery zip is published under: the product file stem + ``.zip``."""
    return parse_product_filename(Path(files[0]).name).stem + ".zip"


def delivery_zip(zip_path: Path, files: list[Path], *, date_time: date | None = None) -> Path:
    """Write the zip of one delivered layer file: its ``.tif``, ``.tif.aux.xml`` and ``.xml`` at
    the top level. It is published as ``<product stem>.zip`` (``delivery_zip_name``); ``zip_path``
    may be a staging name, but a product file name there must be that one. Entries carry
    ``date_time`` (midnight; default 1980-01-01) so a rerun gives the same bytes."""
    zip_path = Path(zip_path)
    files = [Path(f) for f in files]
    by_suffix: dict[str, Path] = {}
    stems = set()
    for path in files:
        parts = parse_product_filename(path.name)
        suffix = path.name[len(parts.stem):]
        if suffix not in ZIP_MEMBER_SUFFIXES:
            raise ValueError(f"{path.name!r}: a delivery zip holds only {', '.join(ZIP_MEMBER_SUFFIXES)} "
                             "files of one product file")
        if suffix in by_suffix:
            raise ValueError(f"two {suffix} files given: {by_suffix[suffix]} and {path}")
        if not path.is_file():
            raise FileNotFoundError(f"delivered file {path} does not exist or is not a regular file")
        by_suffix[suffix] = path
        stems.add(parts.stem)
    if len(stems) != 1:
        raise ValueError(f"a delivery zip holds the files of one product file, got stems {sorted(stems)}")
    stem = stems.pop()
    missing = [s for s in ZIP_MEMBER_SUFFIXES if s not in by_suffix]
    if missing:
        raise ValueError(f"delivery zip of {stem} lacks {', '.join(stem + s for s in missing)} "
                         "(EEA's check needs the GeoTIFF, its attribute table and its INSPIRE metadata)")
    # A staging name (``ras.zip``) is the caller's; a product name must be this file's.
    if _is_product_name(zip_path.name) and zip_path.name != stem + ".zip":
        raise ValueError(f"the zip of {stem} is published as {stem}.zip, not {zip_path.name}")
    stamp = _EPOCH if date_time is None else (date_time.year, date_time.month, date_time.day, 0, 0, 0)
    if stamp[0] < 1980:
        raise ValueError(f"zip entries cannot carry a date before 1980, got {date_time}")

    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + ".part")
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
        for path in sorted(by_suffix.values(), key=lambda p: p.name):
            info = zipfile.ZipInfo(path.name, date_time=stamp)
            info.create_system = 3  # Unix, whatever system writes it
            info.external_attr = (0o100644 & 0xFFFF) << 16  # regular file, rw-r--r--
            info.compress_type = zipfile.ZIP_STORED if path.name.endswith(".tif") else zipfile.ZIP_DEFLATED
            # Known size up front: zip64 records only where a member needs them.
            info.file_size = path.stat().st_size
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    tmp.replace(zip_path)
    return zip_path
