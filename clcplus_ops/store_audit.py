"""What a store shows after a process was killed: the kill drills' judging.

A run killed at any moment must leave every artefact complete or absent. :func:`snapshot` takes
what a ``file://`` store shows: every stage record with its outputs verified by sha256 (a record
whose outputs do not verify is *broken*), the files at final paths (outputs a killed commit
moved into place before its record are complete files too: renames), the temporaries killed
writes left (hidden ``.clcplus-tmp-*`` names, never at a final path) and the published objects
of the delivery. :func:`problems` judges a snapshot against a clean run's: no broken record, no
file at an output path with other bytes than the clean run's, no published object other than
the clean run's. :func:`record_state` says what a killed stage left of its own record.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from clcplus_ops.locations import RECORDS, Locations
from clcplus_ops.store import _TMP_PREFIX, Store

STAGING = "_staging"  # a delivery's private staging prefix (clcplus_ops.products.publish)


def checksums(record) -> dict[str, str]:
    """Output name -> sha256 of a stage record."""
    return {name: f["sha256"] for name, f in record.files.items()}


def temporaries(folder: Path) -> tuple[int, int]:
    """(entries, bytes) of temporaries under ``folder`` (outermost entries only)."""
    entries = size = 0
    for path in folder.rglob(f"{_TMP_PREFIX}*"):
        if any(part.startswith(_TMP_PREFIX) for part in path.relative_to(folder).parts[:-1]):
            continue
        entries += 1
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size += sum(p.stat().st_size for p in files if p.exists())
    return entries, size


def record_state(store: Store, locations: Locations, record_url: str, old: bytes | None) -> str:
    """What a stage killed while it ran left of its record: ``no record`` (killed between the
    removal of the old record and the new one), ``old complete`` (the record from before it ran,
    its outputs verify), ``new complete`` (its own record, its outputs verify) or ``BROKEN`` (a
    record whose outputs do not verify by sha256: must never happen)."""
    from clcplus_ops.runner import read_record, verify_files

    try:
        raw = store.read_bytes(record_url)
    except FileNotFoundError:
        return "no record"
    record = read_record(store, record_url)
    full = all(store.sha256(locations.resolve(loc)) == record.files[name]["sha256"]
               for name, loc in record.outputs.items())
    if verify_files(store, locations, record) or not full:
        return "BROKEN"
    return "old complete" if raw == old else "new complete"


def published_objects(store: Store, root: str) -> dict[str, str]:
    """Key -> sha256 of the objects published under ``root`` (its staging prefix left out)."""
    out = {}
    for url in store.list(root):
        key = url[len(root.rstrip("/")) + 1:]
        if key.split("/", 1)[0] != STAGING:
            out[key] = store.sha256(url)
    return out


class Hashes:
    """sha256 of local files, kept while a file's size and mtime stay (a drill audits a store
    many times; most of it does not change between two audits)."""

    def __init__(self):
        self._known: dict[str, tuple[int, int, str]] = {}

    def __call__(self, path: Path) -> str:
        stat = path.stat()
        known = self._known.get(str(path))
        if known and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        self._known[str(path)] = (stat.st_size, stat.st_mtime_ns, digest.hexdigest())
        return digest.hexdigest()


@dataclass
class Snapshot:
    """What a store shows at one moment (locations in the records' ``root:path`` form)."""

    records: dict[str, dict[str, str]] = field(default_factory=dict)  # record -> {output location: sha256}
    broken: list[str] = field(default_factory=list)  # records that do not verify, and why
    files: dict[str, str] = field(default_factory=dict)  # every file at a final path -> sha256
    temporaries: tuple[int, int] = (0, 0)  # (entries, bytes) left by killed or running writes
    published: dict[str, str] = field(default_factory=dict)  # delivery key -> sha256

    @property
    def outputs(self) -> dict[str, str]:
        """Output location -> sha256 over every record."""
        return {loc: sha for outputs in self.records.values() for loc, sha in outputs.items()}

    @property
    def unrecorded(self) -> list[str]:
        """Files at output paths of a clean run that no record lists here (a commit killed
        between its first rename and its record)."""
        listed = set(self.outputs)
        return sorted(loc for loc in self.files if loc not in listed)


def _local(url: str) -> Path:
    if not url.startswith("file://"):
        raise ValueError(f"the store audit reads file:// roots only, not {url}")
    return Path(url[len("file://"):])


def snapshot(locations: Locations, store: Store, hashes: Hashes | None = None) -> Snapshot:
    """What the store of ``locations`` shows now: its work and products roots (``file://``)
    and its delivery (any store)."""
    from clcplus_ops.runner import CorruptRecordError, read_record

    hashes = hashes or Hashes()
    out = Snapshot()
    delivery = locations.delivery
    entries = size = 0
    for name in ("work", "products"):
        root = _local(locations.roots[name])
        if not root.is_dir():
            continue
        found = temporaries(root)
        entries, size = entries + found[0], size + found[1]
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(_TMP_PREFIX))
            folder = Path(dirpath)
            url = folder.as_uri()
            if url == delivery or url.startswith(delivery + "/"):
                dirnames[:] = []
                continue
            for filename in sorted(f for f in filenames if not f.startswith(_TMP_PREFIX)):
                path = folder / filename
                location = f"{name}:{path.relative_to(root).as_posix()}"
                try:
                    if folder.name == RECORDS:
                        _record(out, locations, store, hashes, location, read_record(store, path.as_uri()))
                    else:
                        out.files[location] = hashes(path)
                except CorruptRecordError as error:
                    out.broken.append(str(error))
                except FileNotFoundError:  # removed while we looked (a commit going on)
                    continue
    out.temporaries = (entries, size)
    out.published = published_objects(store, delivery)
    return out


def _record(out: Snapshot, locations: Locations, store: Store, hashes: Hashes, location: str, record) -> None:
    if record is None:
        return
    verified, problems = {}, []
    for name, loc in record.outputs.items():
        expected = record.files[name]["sha256"]
        url = locations.resolve(loc)
        try:
            found = hashes(_local(url)) if url.startswith("file://") else store.sha256(url)
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        if found != expected:
            problems.append(f"{name} does not have its recorded sha256")
        verified[loc] = found
    out.records[location] = verified
    if problems:
        out.broken.append(f"{location}: {'; '.join(problems)}")


def problems(found: Snapshot, clean: Snapshot) -> list[str]:
    """What ``found`` (a store after a kill) shows that no kill may leave, judged against
    ``clean`` (the same production without kills): broken records, files at the clean run's
    output paths with other bytes (a partial file), published objects with other bytes or not
    in the clean delivery."""
    out = list(found.broken)
    clean_outputs = clean.outputs
    for loc, sha in sorted(found.files.items()):
        if loc in clean_outputs and clean_outputs[loc] != sha:
            out.append(f"{loc} differs from the clean run's (partial?)")
    for key, sha in sorted(found.published.items()):
        if clean.published.get(key) != sha:
            out.append(f"published {key} is {'not in' if key not in clean.published else 'other than'} "
                       "the clean delivery")
    return out


def differences(found: Snapshot, clean: Snapshot) -> list[str]:
    """Where a finished store differs from the clean run's: records, their outputs' bytes, the
    published objects."""
    out = []
    mine, theirs = found.outputs, clean.outputs
    for loc in sorted(set(mine) | set(theirs)):
        if mine.get(loc) != theirs.get(loc):
            out.append(f"{loc}: {'missing' if loc not in mine else 'extra' if loc not in theirs else 'other bytes'}")
    for key in sorted(set(found.published) | set(clean.published)):
        if found.published.get(key) != clean.published.get(key):
            out.append(f"published {key}: {'missing' if key not in found.published else 'differs'}")
    return out

