"""URL-addressed storage for every persisted artefact.

Two schemes are supported: ``file:///abs/path`` (the embedded default) and ``s3://bucket/key``
(production). URLs are handled as plain strings (no percent-encoding), like S3 keys are.

Writes are atomic for readers: ``file://`` writes land in a temporary file in the destination
directory and are renamed over the target; ``s3://`` writes are a single PUT or a managed
(multipart) upload, which S3 makes visible only once complete.

Stages do not write here directly: the stage runner (:mod:`clcplus_ops.runner`) stages their
outputs in a private folder, commits them with :meth:`Store.put_file` and records them. Path
segments ``.`` and ``..`` are refused, so no id can address anything outside its root.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from clcplus_ops.errors import ClcplusError

log = logging.getLogger("clcplus_ops.store")

SCHEMES = ("file", "s3")
# Temporary files/dirs of in-flight file:// writes start with this; list() hides them. The owner's
# process id and host follow, so the leftovers of killed processes can be told from live writes.
_TMP_PREFIX = ".clcplus-tmp-"
_HOST = socket.gethostname().replace("@", "_")


def _tmp_prefix(kind: str = "") -> str:
    return f"{_TMP_PREFIX}{os.getpid()}@{_HOST}@{kind}"


# Leftovers of another host (or of an older naming) are removed once they are this old.
FOREIGN_TMP_AGE_S = 24 * 3600
_CHUNK = 1 << 20
_SINGLE_PUT_MAX = 64 << 20  # larger files go up as a managed multipart upload
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


class StoreError(ClcplusError):
    """A storage problem other than a missing object (bad URL, missing bucket, S3 error...)."""


class StoreUnreachableError(StoreError):
    """The store cannot be reached (endpoint down, no credentials, network): never "not done"."""


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach S3. Credentials are plain settings handed over by the deployment
    (on Airflow: from a connection, through the Amazon provider's hook); when none are given,
    boto3's own chain applies (instance role, profile...). They never appear in a repr."""

    endpoint_url: str | None = None
    region: str = "eu-central-1"
    addressing_style: str = "path"
    max_attempts: int = 5  # per request, boto3's standard retry mode
    # Seconds a request waits for the server's answer before it counts as failed (and is retried):
    # a stalled connection must not hold a task for boto3's default minute.
    read_timeout: float = 60.0
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The settings, credentials included (for handing to a subprocess, never for logs)."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# URL helpers


def _split(url: str) -> tuple[str, str]:
    """(scheme, rest) of a supported URL, or StoreError."""
    if not isinstance(url, str):  # a Path passed where a URL is expected
        raise TypeError(f"expected a URL string, got {type(url).__name__} {url!r} (see as_url)")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise StoreError(f"unsupported URL {url!r}: supported schemes are {', '.join(SCHEMES)}")
    return scheme, rest


def _not_found(url: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "No such file or object", url)


def join(root_url: str, *parts: str) -> str:
    """``root_url`` extended by ``parts`` with exactly one ``/`` between segments."""
    scheme, rest = _split(root_url)
    if scheme == "file":
        _local_path(root_url)  # validates that it is absolute
    head = rest.rstrip("/")
    segments = [s for part in parts for s in str(part).split("/") if s]
    bad = [s for s in segments if s in (".", "..")]
    if bad:
        # An id such as "../../x" must never address anything outside the root it was joined to.
        raise StoreError(f"refusing the path segment {bad[0]!r} below {root_url}: {'/'.join(segments)!r}")
    if not segments:
        return f"{scheme}://{head or '/'}"
    return f"{scheme}://{'/'.join([head, *segments])}"


def as_url(path_or_url: str | os.PathLike[str]) -> str:
    """A URL for a filesystem path (made absolute) or a URL (passed through after validation)."""
    if isinstance(path_or_url, str) and "://" in path_or_url:
        _split(path_or_url)
        return path_or_url
    return "file://" + Path(os.path.abspath(path_or_url)).as_posix()


def _local_path(url: str) -> Path:
    rest = url[len("file://") :]
    if not rest.startswith("/"):
        raise StoreError(f"file URL must be absolute (file:///abs/path): {url!r}")
    return Path(rest)


def _bucket_key(url: str, *, allow_empty_key: bool = False) -> tuple[str, str]:
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or (not key and not allow_empty_key):
        raise StoreError(f"S3 URL needs a bucket and a key (s3://bucket/key): {url!r}")
    return bucket, key


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: equal objects give equal text (and so equal bytes and hashes)."""
    return json.dumps(obj, sort_keys=True, indent=2) + "\n"


def fingerprint(
    *, stage: str, inputs: Mapping[str, Any], params: Mapping[str, Any], version: str
) -> str:
    """sha256 hex identifying one execution of ``stage`` (inputs, parameters and code version)."""
    payload = {"stage": stage, "inputs": dict(inputs), "params": dict(params), "version": version}
    try:
        text = canonical_json(payload)
    except (TypeError, ValueError) as exc:
        # Name the offending argument: json's own message only names the type.
        culprit = next(
            (n for n in ("inputs", "params") if not _json_ok(payload[n])), "stage/version"
        )
        raise TypeError(
            f"fingerprint({stage!r}): {culprit} must be JSON-serialisable with string keys: {exc}"
        ) from exc
    return hashlib.sha256(text.encode()).hexdigest()


def _json_ok(obj: Any) -> bool:
    try:
        canonical_json(obj)
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Store


class Store:
    """Read/write/list artefacts by URL; one instance may be shared between threads."""

    def __init__(self, s3: S3Settings | None = None) -> None:
        self.s3_settings = s3 or S3Settings()
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._known_buckets: set[str] = set()

    # ---- S3 plumbing -------------------------------------------------------------------------

    @property
    def _s3(self) -> Any:
        # Created on first s3:// use so file://-only runs never resolve credentials or touch AWS.
        with self._client_lock:
            if self._client is None:
                s = self.s3_settings
                extra: dict[str, Any] = {}
                if s.endpoint_url:
                    # S3-compatible servers (Ceph, MinIO...) often reject the CRC checksums
                    # that recent boto3 sends by default; only send them where required.
                    extra = {
                        "request_checksum_calculation": "when_required",
                        "response_checksum_validation": "when_required",
                    }
                config = botocore.config.Config(
                    s3={"addressing_style": s.addressing_style}, read_timeout=s.read_timeout,
                    retries={"mode": "standard", "total_max_attempts": s.max_attempts},  # first try included
                    **extra,
                )
                # A private session: boto3's default session is not thread-safe.
                session = boto3.session.Session(
                    aws_access_key_id=s.access_key_id, aws_secret_access_key=s.secret_access_key,
                    aws_session_token=s.session_token)
                self._client = session.client(
                    "s3", endpoint_url=s.endpoint_url, region_name=s.region, config=config
                )
            return self._client

    def _s3_error(self, exc: ClientError, url: str) -> Exception:
        """Translate a botocore error: missing object -> FileNotFoundError, else StoreError."""
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(err.get("Code") or status)
        bucket = url[len("s3://") :].partition("/")[0]
        if code == "NoSuchBucket":
            return StoreError(f"S3 bucket {bucket!r} does not exist (accessing {url})")
        if code in _NOT_FOUND_CODES:
            # HEAD responses carry no body, so a missing bucket also looks like a bare 404.
            if code != "NoSuchKey" and not self._bucket_exists(bucket, url):
                return StoreError(f"S3 bucket {bucket!r} does not exist (accessing {url})")
            return _not_found(url)
        return StoreError(f"S3 error {code} for {url}: {err.get('Message', exc)}")

    def _bucket_exists(self, bucket: str, url: str) -> bool:
        if bucket in self._known_buckets:
            return True
        try:
            self._s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
                return False
            raise StoreError(f"S3 error checking bucket {bucket!r} for {url}: {exc}") from exc
        self._known_buckets.add(bucket)
        return True

    @contextlib.contextmanager
    def _s3_errors(self, url: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            raise self._s3_error(exc, url) from exc
        except S3UploadFailedError as exc:
            # boto3 wraps the ClientError of a managed upload without chaining it explicitly.
            if isinstance(exc.__context__, ClientError):
                raise self._s3_error(exc.__context__, url) from exc
            raise StoreError(f"S3 upload failed for {url}: {exc}") from exc
        except BotoCoreError as exc:  # endpoint unreachable, no credentials, ...
            raise StoreUnreachableError(f"S3 store unreachable for {url}: {exc}") from exc

    # ---- basic operations --------------------------------------------------------------------

    def exists(self, url: str) -> bool:
        scheme, _ = _split(url)
        if scheme == "file":
            return _local_path(url).is_file()
        try:
            self.size(url)
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, url: str) -> bytes:
        scheme, _ = _split(url)
        if scheme == "file":
            try:
                return _local_path(url).read_bytes()
            except FileNotFoundError:
                raise _not_found(url) from None
        bucket, key = _bucket_key(url)
        with self._s3_errors(url):
            return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def write_bytes(self, url: str, data: bytes) -> None:
        scheme, _ = _split(url)
        if scheme == "file":
            with self.local_write(url) as tmp:
                tmp.write_bytes(data)
            return
        bucket, key = _bucket_key(url)
        with self._s3_errors(url):
            self._s3.put_object(Bucket=bucket, Key=key, Body=data)  # single PUT: atomic

    def write_bytes_if_absent(self, url: str, data: bytes) -> bool:
        """Create the object at ``url`` only if nothing exists there; never overwrites.

        Returns True if this call created it, False if something was already there. Atomic with
        respect to concurrent writers (exactly one of several racing callers gets True) and to
        readers (they see nothing or the whole content):

        - ``file://``: the data goes to a temporary file in the destination folder, is fsynced,
          then hard-linked to the target name (``link`` fails if the name exists) and the
          temporary name removed. On a filesystem without hard links the target is created with
          ``O_CREAT | O_EXCL`` and written in place: still race-free among writers, but a reader
          may briefly see it partially written.
        - ``s3://``: a single ``PUT`` with ``If-None-Match: *`` (S3 conditional writes); S3
          answers 412 PreconditionFailed if the key exists, or 409 ConditionalRequestConflict
          while a conflicting write of the same key is in flight: both give False. AWS S3 (since
          August 2024) and the moto server of the tests honour the header; an S3-compatible
          endpoint that ignores it would silently overwrite (check older Ceph/MinIO releases).
          If the response to a successful PUT is lost and the SDK retries, the retry sees the
          object and False is returned although this call created it: callers that must tell
          the two apart can compare the content read back.
        """
        data = bytes(data)
        scheme, _ = _split(url)
        if scheme == "file":
            return _file_create_if_absent(_local_path(url), data)
        bucket, key = _bucket_key(url)
        try:
            with self._s3_errors(url):
                self._s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                err = cause.response.get("Error", {})
                status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = str(err.get("Code") or status)
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    log.debug("write_bytes_if_absent: %s already exists (%s)", url, code)
                    return False
            raise
        return True

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode("utf-8")

    def write_text(self, url: str, text: str) -> None:
        self.write_bytes(url, text.encode("utf-8"))

    def read_json(self, url: str) -> Any:
        return json.loads(self.read_bytes(url))

    def write_json(self, url: str, obj: Any) -> None:
        self.write_text(url, canonical_json(obj))

    def delete(self, url: str) -> None:
        """Remove an object; deleting a missing one is a no-op (as on S3), so clean-ups retry."""
        scheme, _ = _split(url)
        if scheme == "file":
            _local_path(url).unlink(missing_ok=True)
            return
        bucket, key = _bucket_key(url)
        with self._s3_errors(url):
            self._s3.delete_object(Bucket=bucket, Key=key)

    def list(self, prefix_url: str) -> list[str]:
        """Sorted URLs of all objects below ``prefix_url``, recursively.

        The prefix is a directory on both schemes: ``.../tile`` lists ``.../tile/x`` but not
        ``.../tile2/x``.
        """
        scheme, _ = _split(prefix_url)
        if scheme == "file":
            root = _local_path(prefix_url)
            found = []
            for dirpath, dirnames, filenames in os.walk(root):
                # Skip in-flight temporary writes: they are not artefacts (yet).
                dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
                found += [
                    "file://" + Path(dirpath, f).as_posix()
                    for f in filenames
                    if not f.startswith(_TMP_PREFIX)
                ]
            return sorted(found)
        bucket, key = _bucket_key(prefix_url, allow_empty_key=True)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        urls = []
        with self._s3_errors(prefix_url):
            for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            ):
                urls += [
                    f"s3://{bucket}/{o['Key']}"
                    for o in page.get("Contents", [])
                    if not o["Key"].endswith("/")  # "folder" marker objects are not artefacts
                ]
        return sorted(urls)

    def size(self, url: str) -> int:
        scheme, _ = _split(url)
        if scheme == "file":
            try:
                return _local_path(url).stat().st_size
            except FileNotFoundError:
                raise _not_found(url) from None
        bucket, key = _bucket_key(url)
        with self._s3_errors(url):
            return int(self._s3.head_object(Bucket=bucket, Key=key)["ContentLength"])

    def sha256(self, url: str) -> str:
        """Hex sha256 of the content, streamed (outputs may be multi-GB rasters)."""
        digest = hashlib.sha256()
        scheme, _ = _split(url)
        if scheme == "file":
            try:
                with _local_path(url).open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
            except FileNotFoundError:
                raise _not_found(url) from None
            return digest.hexdigest()
        bucket, key = _bucket_key(url)
        with self._s3_errors(url):
            body = self._s3.get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    # ---- checksummed copies (publishing) -----------------------------------------------------

    def checksum(self, url: str) -> tuple[int, str | None]:
        """(size, hex sha256) of an object as its store states it: on S3 the SHA-256 checksum S3
        keeps for the object (None if it was stored without one), on a filesystem the digest of
        the file. FileNotFoundError when absent."""
        scheme, _ = _split(url)
        if scheme == "file":
            return self.size(url), self.sha256(url)
        bucket, key = _bucket_key(url)
        with self._s3_errors(url):
            head = self._s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        stated = head.get("ChecksumSHA256")
        # A checksum of a multipart upload is a checksum of part checksums ("...-N"): not the file's.
        digest = base64.b64decode(stated).hex() if stated and "-" not in stated else None
        return int(head["ContentLength"]), digest

    def upload_verified(self, local: Path, url: str, sha256_hex: str) -> None:
        """Copy the local file to ``url`` (the file stays) so that the store itself verifies the
        content: on S3 one PUT carrying the SHA-256 checksum, which S3 checks and keeps (files up
        to S3's 5 GB single-PUT limit); on a filesystem a temporary copy whose digest is checked
        before the rename. A mismatch is a StoreError and leaves nothing at ``url``."""
        scheme, _ = _split(url)
        if scheme == "file":
            with self.local_write(url) as tmp:
                shutil.copyfile(local, tmp)
                if sha256_file(tmp) != sha256_hex:
                    raise StoreError(f"copy of {local} to {url} does not have sha256 {sha256_hex}")
            return
        bucket, key = _bucket_key(url)
        with self._s3_errors(url), local.open("rb") as body:
            self._s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256",
                                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256_hex)).decode())

    def copy_if_absent(self, source_url: str, url: str) -> bool:
        """Copy ``source_url`` to ``url`` unless something is there (False then). A filesystem
        copy is a hard link (atomic, never overwrites); an S3 copy is a server-side CopyObject
        with ``If-None-Match: *`` that keeps the SHA-256 checksum (S3 answers 412 if the key
        exists), after a look whether the key exists."""
        scheme, _ = _split(url)
        if scheme == "file":
            target = _local_path(url)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(_local_path(source_url), target)
            except FileExistsError:
                return False
            with contextlib.suppress(OSError):
                _fsync(target.parent)
            return True
        if self.exists(url):  # also where a server ignores If-None-Match on copies (moto does)
            return False
        bucket, key = _bucket_key(url)
        source_bucket, source_key = _bucket_key(source_url)
        try:
            with self._s3_errors(url):
                self._s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": source_bucket, "Key": source_key},
                                     ChecksumAlgorithm="SHA256", IfNoneMatch="*")
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError):
                code = str(cause.response.get("Error", {}).get("Code")
                           or cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
            raise
        return True

    # ---- local paths for GDAL & co ------------------------------------------------------------

    @contextlib.contextmanager
    def local_write(self, url: str) -> Iterator[Path]:
        """Yield a fresh local path (same file name, hence suffix, as ``url``) to write to.

        On clean exit the file is committed atomically to ``url``; if the body raises, nothing
        appears at ``url`` and the temporary file is removed. The path does not exist yet, so
        drivers that refuse to overwrite (or that append to) an existing file behave; sidecar
        files a driver may create next to it are discarded.
        """
        scheme, _ = _split(url)
        if scheme == "file":
            target = _local_path(url)
            target.parent.mkdir(parents=True, exist_ok=True)
            # A private directory next to the target: same filesystem, so os.replace is atomic.
            tmpdir = Path(tempfile.mkdtemp(prefix=_tmp_prefix(), dir=target.parent))
        else:
            bucket, key = _bucket_key(url)
            tmpdir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=scratch_root()))
        tmp = tmpdir / (url.rstrip("/").rsplit("/", 1)[-1])
        try:
            yield tmp
            if not tmp.is_file():
                raise StoreError(f"local_write({url}): nothing was written to {tmp}")
            if scheme == "file":
                _fsync(tmp)  # data on disk before the rename makes it visible
                os.replace(tmp, target)
                # Persist the rename itself; some filesystems cannot fsync a directory.
                with contextlib.suppress(OSError):
                    _fsync(target.parent)
            else:
                with self._s3_errors(url):
                    if tmp.stat().st_size <= _SINGLE_PUT_MAX:
                        # One PUT: no transfer-manager thread pool for the many small files.
                        with tmp.open("rb") as body:
                            self._s3.put_object(Bucket=bucket, Key=key, Body=body)
                    else:
                        self._s3.upload_file(str(tmp), bucket, key)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    @contextlib.contextmanager
    def local_read(self, url: str) -> Iterator[Path]:
        """Yield a local path holding the content of ``url`` (file:// is read in place)."""
        scheme, _ = _split(url)
        if scheme == "file":
            path = _local_path(url)
            if not path.is_file():
                raise _not_found(url)
            yield path
            return
        bucket, key = _bucket_key(url)
        with tempfile.TemporaryDirectory(prefix=f"{os.getpid()}-", dir=scratch_root()) as tmpdir:
            tmp = Path(tmpdir, key.rsplit("/", 1)[-1])
            with self._s3_errors(url):
                self._s3.download_file(bucket, key, str(tmp))
            yield tmp

    # ---- committing files and checking them cheaply ------------------------------------------

    def stat(self, url: str) -> FileStamp:
        """Size and a cheap change stamp of an object: the modification time on a filesystem,
        the ETag on S3 (both change when the content is rewritten)."""
        scheme, _ = _split(url)
        if scheme == "file":
            try:
                st = _local_path(url).stat()
            except FileNotFoundError:
                raise _not_found(url) from None
            return FileStamp(st.st_size, str(st.st_mtime_ns))
        bucket, key = _bucket_key(url)
        with self._s3_errors(url):
            head = self._s3.head_object(Bucket=bucket, Key=key)
        return FileStamp(int(head["ContentLength"]), str(head.get("ETag", "")).strip('"'))

    def put_file(self, local: Path, url: str) -> FileStamp:
        """Move (``file://`` on the same filesystem: rename) or upload the local file ``local``
        to ``url``; readers see the old object or the new one, never part of one."""
        scheme, _ = _split(url)
        if scheme == "file":
            target = _local_path(url)
            target.parent.mkdir(parents=True, exist_ok=True)
            _fsync(local)
            try:
                os.replace(local, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                with self.local_write(url) as tmp:  # another filesystem: copy, then rename
                    shutil.copyfile(local, tmp)
            with contextlib.suppress(OSError):
                _fsync(target.parent)
            return self.stat(url)
        bucket, key = _bucket_key(url)
        with self._s3_errors(url):
            if local.stat().st_size <= _SINGLE_PUT_MAX:
                with local.open("rb") as body:
                    self._s3.put_object(Bucket=bucket, Key=key, Body=body)
            else:
                self._s3.upload_file(str(local), bucket, key)
        return self.stat(url)

    def remove_temporaries(self, folder_url: str) -> tuple[int, int]:
        """Remove what killed writes left in a ``file://`` folder (``.clcplus-tmp-*`` files and
        folders, recursively): those of dead processes of this host at once, others once they
        are :data:`FOREIGN_TMP_AGE_S` old. Returns (entries removed, bytes freed). S3 writes
        leave nothing in the bucket (an unfinished upload is invisible): for ``s3://`` folders
        the local scratch folders of dead processes (:func:`scratch_root`) are removed."""
        scheme, _ = _split(folder_url)
        if scheme != "file":
            return _remove_dead_scratch(_scratch_path())
        root = _local_path(folder_url)
        if not root.is_dir():
            return 0, 0
        removed = freed = 0
        cutoff = time.time() - FOREIGN_TMP_AGE_S
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                if not name.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                pid, _, rest = name[len(_TMP_PREFIX):].partition("@")
                host = rest.partition("@")[0]
                try:
                    if pid.isdigit() and host == _HOST:
                        if int(pid) == os.getpid() or _alive(int(pid)):
                            continue
                    elif path.lstat().st_mtime > cutoff:
                        continue
                    size = _tree_size(path)
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                except FileNotFoundError:
                    continue
                removed, freed = removed + 1, freed + size
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
        if removed:
            log.info("removed %d temporary entries (%.1f MB) of killed writes under %s", removed, freed / 1e6,
                     folder_url)
        return removed, freed

    def staging_dir(self, folder_url: str) -> Path:
        """A fresh private local folder to write a stage's outputs in before they are committed
        to ``folder_url``: inside it on ``file://`` (same filesystem, so commits are renames),
        under the scratch folder (:func:`scratch_root`) for ``s3://``."""
        scheme, _ = _split(folder_url)
        if scheme == "file":
            parent = _local_path(folder_url)
            parent.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=_tmp_prefix("stage-"), dir=parent))
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=scratch_root()))


@dataclass(frozen=True)
class FileStamp:
    size: int
    stamp: str  # mtime_ns on a filesystem, ETag on S3


SCRATCH_ENV = "CLCPLUS_SCRATCH_DIR"


def scratch_root() -> Path:
    """Local scratch space of s3:// writes; folders of processes that died are removed when a
    new one is made (their name starts with the owner's process id)."""
    root = _scratch_path()
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_scratch(root)
    return root


def _scratch_path() -> Path:
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir(), "clcplus-scratch"))


def _remove_dead_scratch(root: Path) -> tuple[int, int]:
    """Remove the scratch folders of dead processes; (entries removed, bytes freed)."""
    removed = freed = 0
    if not root.is_dir():
        return 0, 0
    for entry in root.iterdir():
        pid = entry.name.partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                size = _tree_size(entry)
            except FileNotFoundError:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed, freed = removed + 1, freed + size
    return removed, freed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tree_size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a local file, streamed (outputs may be multi-GB rasters)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# errno values of a filesystem that cannot hard-link (FAT/exFAT, some FUSE and SMB mounts).
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _file_create_if_absent(target: Path, data: bytes) -> bool:
    """``Store.write_bytes_if_absent`` for a local path (see there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # cheap early exit; the link below is what decides
        return False
    # Not mkstemp: its 0600 mode would stick to the target; this honours the umask like
    # write_bytes does.
    tmp = target.parent / f"{_tmp_prefix()}{uuid.uuid4().hex}-{target.name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # data on disk before the name makes it visible
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            log.warning("no hard links at %s (%s): creating %s in place",
                        target.parent, exc, target)
            return _file_create_exclusive(target, data)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        _fsync(target.parent)  # persist the new name
    return True


def _file_create_exclusive(target: Path, data: bytes) -> bool:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        target.unlink(missing_ok=True)  # a half-written object must not count as present
        raise
    with contextlib.suppress(OSError):
        _fsync(target.parent)
    return True
