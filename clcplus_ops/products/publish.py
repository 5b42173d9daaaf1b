"""Publishing a delivery: staging, verification, promotion; never overwriting.

``publish(store, files, root)`` puts local files at their keys under ``root`` (``s3://`` in
production, ``file://`` for the embedded demo):

1. every final key is looked up first: a key holding the same bytes (size and SHA-256) is
   already published and left alone; a key holding other bytes stops the whole publication
   (:class:`PublishConflict`: a published object is never overwritten; a changed tile is a new
   revision with new names);
2. the remaining files are uploaded to a staging prefix private to this attempt
   (``{root}/_staging/{token}/...``), each with its SHA-256 (S3 verifies the PUT against it and
   keeps it), then read back as the store states them (size and SHA-256) and compared;
3. only when every staged file verified are they promoted to their final keys (server-side copy
   on S3, a hard link on a filesystem; neither overwrites), in the order given (data first, the
   manifest, which lists everything, last), each verified again;
4. a failure in 2 or 3 removes what this attempt promoted, so nothing of it stays visible at
   final keys; the staging prefix is removed in every case. An attempt killed outright leaves
   its staging prefix behind: the next attempt of the same publication (``stale``: the tokens'
   common beginning) removes it first.

Publishing the same bytes again finds every key published and does nothing.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clcplus_ops.errors import PermanentError
from clcplus_ops.store import Store, StoreError, join, sha256_file

log = logging.getLogger(__name__)

STAGING = "_staging"


class PublishConflict(PermanentError):
    """A final key already holds other bytes."""


class PublishVerificationError(StoreError):
    """A staged or promoted object does not have the size or SHA-256 of its file."""


@dataclass(frozen=True)
class Deliverable:
    path: Path  # the local file
    key: str  # its key under the publication root, e.g. "2023/E46N24/CLMS_..._R00.tif"


@dataclass(frozen=True)
class Published:
    key: str
    url: str
    size: int
    sha256: str
    new: bool  # False: the same bytes were already there

    def to_dict(self) -> dict:
        return {"key": self.key, "url": self.url, "size": self.size, "sha256": self.sha256, "new": self.new}


def _stated(store: Store, url: str) -> tuple[int, str | None] | None:
    try:
        return store.checksum(url)
    except FileNotFoundError:
        return None


def _verify(store: Store, url: str, size: int, sha: str, what: str) -> None:
    stated = _stated(store, url)
    if stated is None:
        raise PublishVerificationError(f"{what} {url} is missing after it was written")
    if stated != (size, sha):
        raise PublishVerificationError(f"{what} {url} has {stated[0]} bytes, sha256 {stated[1]}; "
                                       f"expected {size} bytes, sha256 {sha}")


def _remove_stale_staging(store: Store, root: str, stale: str, token: str | None) -> None:
    """Remove the staging prefixes of earlier attempts whose token begins with ``stale``."""
    folder = join(root, STAGING)
    if folder.startswith("file://"):
        base = Path(folder[len("file://"):])
        attempts = [p for p in base.iterdir() if p.name.startswith(stale) and p.name != token] if base.is_dir() else []
        for attempt in attempts:  # temporaries of a write killed mid-file included
            shutil.rmtree(attempt, ignore_errors=True)
        if attempts:
            log.info("publish: removed the staging of %d earlier attempt(s): %s", len(attempts),
                     ", ".join(p.name for p in attempts))
        return
    urls = [u for u in store.list(folder)
            if (attempt := u[len(folder) + 1:].split("/", 1)[0]).startswith(stale) and attempt != token]
    for url in urls:
        store.delete(url)
    if urls:
        log.info("publish: removed %d staged object(s) of earlier attempts under %s", len(urls), folder)


def publish(store: Store, files: Sequence[Deliverable], root: str, token: str | None = None,
            stale: str | None = None) -> list[Published]:
    """Publish ``files`` under ``root`` (see the module documentation); returns one entry per
    file, in order. ``stale``: the beginning of the tokens of earlier attempts of this
    publication, whose staging is removed first."""
    keys = [f.key for f in files]
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys given twice: {sorted({k for k in keys if keys.count(k) > 1})}")
    if stale:
        _remove_stale_staging(store, root, stale, token)
    entries = [(f, join(root, f.key), f.path.stat().st_size, sha256_file(f.path)) for f in files]
    # 1. What is there already.
    todo, out = [], {}
    for file, url, size, sha in entries:
        stated = _stated(store, url)
        if stated is None:
            todo.append((file, url, size, sha))
        elif stated == (size, sha):
            out[file.key] = Published(file.key, url, size, sha, new=False)
        else:
            raise PublishConflict(f"{url} is already published with other content ({stated[0]} bytes, sha256 "
                                  f"{stated[1]}; this one: {size} bytes, sha256 {sha}). Published objects are never "
                                  "overwritten: a changed tile is published as its next revision.")
    if not todo:
        log.info("publish: all %d files already published under %s", len(files), root)
        return [out[f.key] for f in files]
    staging = join(root, STAGING, token or uuid.uuid4().hex)
    promoted: list[str] = []
    try:
        # 2. Stage and verify everything before anything becomes visible.
        for file, _, size, sha in todo:
            staged = join(staging, file.key)
            store.upload_verified(file.path, staged, sha)
            _verify(store, staged, size, sha, "staged object")
        # 3. Promote in order.
        for file, url, size, sha in todo:
            if not store.copy_if_absent(join(staging, file.key), url):
                # Another publisher got there first (two tiles of a run share their STAC
                # collections): the same bytes are published already; other bytes are a conflict.
                if _stated(store, url) == (size, sha):
                    out[file.key] = Published(file.key, url, size, sha, new=False)
                    continue
                raise PublishConflict(f"{url} appeared while publishing with other content (another publisher?); "
                                      "nothing of this attempt is left visible")
            promoted.append(url)
            _verify(store, url, size, sha, "published object")
            out[file.key] = Published(file.key, url, size, sha, new=True)
    except BaseException:
        for url in reversed(promoted):  # nothing of a failed attempt stays visible
            try:
                store.delete(url)
            except Exception as error:  # noqa: BLE001 - report, keep removing the others
                log.error("publish: could not withdraw %s after a failure: %s", url, error)
        raise
    finally:
        for file, _, _, _ in todo:
            try:
                store.delete(join(staging, file.key))
            except Exception as error:  # noqa: BLE001 - staging is private; a leftover is harmless
                log.warning("publish: staging object %s not removed: %s", join(staging, file.key), error)
        if staging.startswith("file://"):  # the attempt's (now empty) folders
            shutil.rmtree(staging[len("file://"):], ignore_errors=True)
    log.info("publish: %d new, %d already published under %s", len(todo), len(files) - len(todo), root)
    return [out[f.key] for f in files]
