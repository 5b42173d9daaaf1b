"""clcplus_ops.store against both backends: file:// under tmp_path and s3:// on a moto server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import rasterio
from affine import Affine

from clcplus_ops.errors import ClcplusError
from clcplus_ops.store import (
    S3Settings,
    Store,
    StoreError,
    StoreUnreachableError,
    as_url,
    fingerprint,
    join,
)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, str]:
    """(store, root URL) for each backend; the S3 server starts only for s3 cases."""
    if request.param == "file":
        return Store(), as_url(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_server")
    return Store(S3Settings(endpoint_url=endpoint)), request.getfixturevalue("s3_bucket")


@pytest.fixture
def s3_store(s3_server: str, s3_credentials: None) -> Store:
    return Store(S3Settings(endpoint_url=s3_server))


# ---- URL helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "parts", "expected"),
    [
        ("s3://bucket", ("a", "b.tif"), "s3://bucket/a/b.tif"),
        ("s3://bucket/", ("/a/", "/b/c.tif"), "s3://bucket/a/b/c.tif"),
        ("s3://bucket/p//", ("a//b",), "s3://bucket/p/a/b"),
        ("file:///data/", ("x", "y.json"), "file:///data/x/y.json"),
        ("file:///", ("x",), "file:///x"),
        ("file:///data", (), "file:///data"),
    ],
)
def test_join(root: str, parts: tuple[str, ...], expected: str) -> None:
    assert join(root, *parts) == expected


def test_as_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert as_url(tmp_path / "a.tif") == "file://" + (tmp_path / "a.tif").as_posix()
    assert as_url(str(tmp_path)) == "file://" + tmp_path.as_posix()
    monkeypatch.chdir(tmp_path)
    assert as_url("rel/x.json") == "file://" + (tmp_path / "rel" / "x.json").as_posix()
    assert as_url("s3://b/k") == "s3://b/k"
    assert as_url("file:///abs/k") == "file:///abs/k"


def test_unknown_scheme_is_rejected() -> None:
    with pytest.raises(StoreError, match=r"gs://b/k.*file, s3"):
        as_url("gs://b/k")
    with pytest.raises(StoreError, match="http://host/x"):
        Store().read_bytes("http://host/x")
    with pytest.raises(StoreError, match="absolute"):
        Store().read_bytes("file://relative/path")


def test_file_backend_never_creates_an_s3_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("S3 client created for file:// work")

    monkeypatch.setattr(boto3.session, "Session", boom)
    store = Store(S3Settings(endpoint_url="http://127.0.0.1:9"))
    url = as_url(tmp_path / "x.txt")
    store.write_text(url, "x")
    assert store.read_text(url) == "x"


# ---- basic operations ----------------------------------------------------------------------


def test_round_trips(backend: tuple[Store, str]) -> None:
    store, root = backend
    blob = bytes(range(256)) * 10
    store.write_bytes(join(root, "a", "blob.bin"), blob)
    assert store.read_bytes(join(root, "a", "blob.bin")) == blob
    assert store.size(join(root, "a", "blob.bin")) == len(blob)

    store.write_text(join(root, "t.txt"), "Grünland ✓\n")
    assert store.read_text(join(root, "t.txt")) == "Grünland ✓\n"

    obj = {"b": [1, 2.5, None], "a": {"z": True, "y": "é"}}
    store.write_json(join(root, "o.json"), obj)
    assert store.read_json(join(root, "o.json")) == obj

    # overwrite replaces the content
    store.write_bytes(join(root, "a", "blob.bin"), b"new")
    assert store.read_bytes(join(root, "a", "blob.bin")) == b"new"


def test_canonical_json_bytes(backend: tuple[Store, str]) -> None:
    store, root = backend
    store.write_json(join(root, "1.json"), {"a": 1, "b": {"d": 2, "c": 3}})
    store.write_json(join(root, "2.json"), {"b": {"c": 3, "d": 2}, "a": 1})
    raw = store.read_bytes(join(root, "1.json"))
    assert raw == store.read_bytes(join(root, "2.json"))
    assert raw.endswith(b"}\n") and b'\n  "a": 1' in raw
    assert store.sha256(join(root, "1.json")) == store.sha256(join(root, "2.json"))


def test_exists_delete_sha256(backend: tuple[Store, str]) -> None:

    store, root = backend
    url = join(root, "d", "x.bin")
    assert not store.exists(url)
    store.write_bytes(url, b"hello")
    assert store.exists(url)
    assert store.sha256(url) == hashlib.sha256(b"hello").hexdigest()
    store.delete(url)
    assert not store.exists(url)
    store.delete(url)  # idempotent


def test_list_is_recursive_sorted_and_directory_scoped(backend: tuple[Store, str]) -> None:
    store, root = backend
    names = ["tile/b.tif", "tile/a.tif", "tile/sub/deep/z.json", "tile2/other.tif", "top.txt"]
    for name in names:
        store.write_bytes(join(root, name), b"x")
    assert store.list(join(root, "tile")) == [
        join(root, "tile/a.tif"),
        join(root, "tile/b.tif"),
        join(root, "tile/sub/deep/z.json"),
    ]
    assert store.list(join(root, "tile") + "/") == store.list(join(root, "tile"))
    assert store.list(root) == sorted(join(root, n) for n in names)
    assert store.list(join(root, "nothing-here")) == []


def test_missing_object_raises_file_not_found_naming_url(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "missing", "x.tif")
    for op in (store.read_bytes, store.read_json, store.size, store.sha256):
        with pytest.raises(FileNotFoundError, match=url):
            op(url)
    with pytest.raises(FileNotFoundError, match=url):
        with store.local_read(url):
            pass


def test_missing_bucket_is_a_clear_store_error(s3_store: Store) -> None:
    url = "s3://no-such-bucket-clcplus/a/b.json"
    ops = [
        lambda: s3_store.read_bytes(url),
        lambda: s3_store.exists(url),  # HEAD: a bare 404 that must not read as "missing object"
        lambda: s3_store.size(url),
        lambda: s3_store.write_bytes(url, b"x"),
        lambda: s3_store.list("s3://no-such-bucket-clcplus/a"),
    ]
    for op in ops:
        with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-clcplus' does not exist"):
            op()
    with pytest.raises(StoreError, match="no-such-bucket-clcplus"):
        with s3_store.local_write(url) as tmp:
            tmp.write_bytes(b"x")


def test_other_s3_errors_carry_url_and_code(
    s3_server: str, s3_store: Store, s3_bucket: str
) -> None:
    # An archived (GLACIER) object cannot be read: a real S3 error that is not a 404.
    url = join(s3_bucket, "archived.tif")
    bucket, key = url[len("s3://") :].split("/", 1)
    boto3.session.Session().client("s3", endpoint_url=s3_server).put_object(
        Bucket=bucket, Key=key, Body=b"x", StorageClass="GLACIER"
    )
    assert s3_store.exists(url)
    with pytest.raises(StoreError, match=r"InvalidObjectState for " + url):
        s3_store.read_bytes(url)


# ---- local_write / local_read --------------------------------------------------------------


def test_local_write_commits_on_success(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "out", "map.tif")
    with store.local_write(url) as tmp:
        assert tmp.suffix == ".tif" and not tmp.exists()
        tmp.write_bytes(b"payload")
        assert not store.exists(url)  # nothing visible before commit
    assert store.read_bytes(url) == b"payload"
    assert not tmp.exists()
    assert store.list(root) == [url]


def test_local_write_leaves_nothing_when_body_raises(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "out", "map.tif")
    with pytest.raises(RuntimeError, match="boom"):
        with store.local_write(url) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not store.exists(url)
    assert store.list(root) == []
    assert not tmp.exists() and not tmp.parent.exists()


def test_local_write_keeps_old_content_when_overwrite_fails(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "map.tif")
    store.write_bytes(url, b"old")
    with pytest.raises(RuntimeError):
        with store.local_write(url) as tmp:
            tmp.write_bytes(b"new but broken")
            raise RuntimeError
    assert store.read_bytes(url) == b"old"


def test_local_write_with_nothing_written_is_an_error(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "never.tif")
    with pytest.raises(StoreError, match="nothing was written"):
        with store.local_write(url):
            pass
    assert not store.exists(url)


def test_file_write_is_atomic_in_same_directory(tmp_path: Path) -> None:
    store = Store()
    target = tmp_path / "d" / "map.tif"
    url = as_url(target)
    store.write_bytes(url, b"old")
    with store.local_write(url) as tmp:
        # temp lives next to the target (same filesystem -> rename is atomic)...
        assert tmp.parent.parent == target.parent
        assert os.stat(tmp.parent).st_dev == os.stat(target.parent).st_dev
        tmp.write_bytes(b"new" * 1000)
        # ...the target is untouched until the context exits, and list() hides the temp
        assert target.read_bytes() == b"old"
        assert store.list(as_url(tmp_path)) == [url]
    assert target.read_bytes() == b"new" * 1000
    assert sorted(p.name for p in target.parent.iterdir()) == ["map.tif"]


def test_file_concurrent_reader_sees_only_whole_versions(tmp_path: Path) -> None:
    store = Store()
    url = as_url(tmp_path / "hot.bin")
    versions = [bytes([i]) * 256_000 for i in range(2)]
    store.write_bytes(url, versions[0])
    done = threading.Event()
    seen: list[bytes] = []

    def reader() -> None:
        while not done.is_set():
            data = store.read_bytes(url)
            if data not in versions:
                seen.append(data)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(100):
            store.write_bytes(url, versions[i % 2])
    finally:
        done.set()
        thread.join()
    assert seen == [], f"reader saw {len(seen)} partial file(s)"


def test_local_read(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "in", "lut.csv")
    store.write_text(url, "code,name\n1,forest\n")
    with store.local_read(url) as path:
        assert path.suffix == ".csv"
        assert path.read_text() == "code,name\n1,forest\n"
    if url.startswith("s3://"):
        assert not path.exists()  # temp download removed
    else:
        assert path == Path(url[len("file://") :])


def test_geotiff_through_local_write_and_read(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "rasters", "tile.tif")
    data = np.arange(64, dtype=np.uint8).reshape(8, 8)
    transform = Affine(10, 0, 4_000_000, 0, -10, 3_000_000)  # 10 m, EPSG:3035
    with store.local_write(url) as path:
        with rasterio.open(
            path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
            crs="EPSG:3035", transform=transform,
        ) as dst:
            dst.write(data, 1)
    with store.local_read(url) as path:
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 3035
            assert src.transform == transform
            np.testing.assert_array_equal(src.read(1), data)


# ---- fingerprints --------------------------------------------------------


def test_fingerprint_stable_and_sensitive() -> None:
    base = dict(stage="classify", inputs={"s3://b/a": "1", "s3://b/c": "2"},
                params={"k": 3, "bands": ["B02", "B03"]}, version="0.1.0")
    fp = fingerprint(**base)
    assert len(fp) == 64
    reordered = dict(base, inputs={"s3://b/c": "2", "s3://b/a": "1"},
                     params={"bands": ["B02", "B03"], "k": 3})
    assert fingerprint(**reordered) == fp
    assert fingerprint(**dict(base, params={"k": 4, "bands": ["B02", "B03"]})) != fp
    assert fingerprint(**dict(base, version="0.1.1")) != fp
    assert fingerprint(**dict(base, stage="other")) != fp
    assert fingerprint(**dict(base, inputs={"s3://b/a": "1"})) != fp


def test_fingerprint_rejects_non_json() -> None:
    with pytest.raises(TypeError, match=r"params must be JSON-serialisable.*set"):
        fingerprint(stage="s", inputs={}, params={"x": {1, 2}}, version="1")
    with pytest.raises(TypeError, match="inputs"):
        fingerprint(stage="s", inputs={"u": object()}, params={}, version="1")


# ---- committing files and checking them cheaply ----------------------------------------------


def test_stat_gives_size_and_a_stamp_that_changes_with_the_content(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "s", "x.bin")
    store.write_bytes(url, b"12345")
    first = store.stat(url)
    assert first.size == 5 and first.stamp
    assert store.stat(url) == first  # stable while unchanged
    if url.startswith("file://"):
        os.utime(url[len("file://"):], ns=(0, 1_000_000_000))  # a rewrite moves the mtime
    store.write_bytes(url, b"54321")
    second = store.stat(url)
    assert second.size == 5 and second.stamp != first.stamp
    with pytest.raises(FileNotFoundError, match=join(root, "s", "none.bin")):
        store.stat(join(root, "s", "none.bin"))


def test_put_file_moves_or_uploads_whole_files(backend: tuple[Store, str], tmp_path: Path) -> None:
    store, root = backend
    staging = store.staging_dir(join(root, "tile"))
    local = staging / "out.tif"
    local.write_bytes(b"new" * 1000)
    url = join(root, "tile", "sub", "out.tif")
    store.write_bytes(url, b"old")
    stamp = store.put_file(local, url)
    assert store.read_bytes(url) == b"new" * 1000
    assert stamp == store.stat(url) and stamp.size == 3000
    if url.startswith("file://"):
        assert not local.exists()  # renamed, not copied: same filesystem as the target
        assert os.stat(staging).st_dev == os.stat(Path(url[len("file://"):])).st_dev
    with pytest.raises(FileNotFoundError):
        store.put_file(tmp_path / "missing.tif", join(root, "tile", "never.tif"))
    assert not store.exists(join(root, "tile", "never.tif"))


def test_staging_dir_is_private_and_hidden(backend: tuple[Store, str]) -> None:
    store, root = backend
    folder = join(root, "tile")
    one, two = store.staging_dir(folder), store.staging_dir(folder)
    assert one != two and one.is_dir() and two.is_dir()
    (one / "x.tif").write_bytes(b"x")
    if folder.startswith("file://"):
        # inside the destination folder (commits are renames) and named as a temporary
        assert one.parent == Path(folder[len("file://"):])
        assert one.name.startswith(f".clcplus-tmp-{os.getpid()}@")
    assert store.list(root) == []  # never listed as an artefact


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_temporaries_of_dead_processes(tmp_path: Path) -> None:
    from clcplus_ops import store as store_module

    store, folder = Store(), tmp_path / "tile"
    prefix, host = store_module._TMP_PREFIX, store_module._HOST
    dead = _dead_pid()
    mine = store.staging_dir(as_url(folder))  # this live process's
    (folder / "features").mkdir()
    (folder / "features" / "B01.tif").write_bytes(b"artefact")
    killed = folder / f"{prefix}{dead}@{host}@stage-x"
    killed.mkdir()
    (killed / "B01.tif").write_bytes(b"x" * 700)
    (folder / "features" / f"{prefix}{dead}@{host}@0-B02.tif").write_bytes(b"y" * 300)
    young_foreign = folder / f"{prefix}1@elsewhere@stage-y"
    young_foreign.mkdir()
    old_foreign = folder / f"{prefix}1@elsewhere@stage-z"
    old_foreign.write_bytes(b"z" * 50)
    stamp = time.time() - store_module.FOREIGN_TMP_AGE_S - 1
    os.utime(old_foreign, (stamp, stamp))

    assert store.remove_temporaries(as_url(folder)) == (3, 1050)
    assert sorted(p.name for p in folder.rglob("*")) == sorted(
        ["features", "B01.tif", mine.name, young_foreign.name])
    assert store.remove_temporaries(as_url(folder)) == (0, 0)
    assert store.remove_temporaries(as_url(tmp_path / "nothing")) == (0, 0)


def test_remove_temporaries_on_s3_clears_the_scratch_of_dead_processes(
    s3_store: Store, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clcplus_ops import store as store_module

    monkeypatch.setenv(store_module.SCRATCH_ENV, str(tmp_path / "scratch"))
    staging = s3_store.staging_dir(join(s3_bucket, "tile"))
    assert staging.parent == tmp_path / "scratch"
    leftover = tmp_path / "scratch" / f"{_dead_pid()}-abc"
    leftover.mkdir()
    (leftover / "x.tif").write_bytes(b"x" * 10)
    assert s3_store.remove_temporaries(join(s3_bucket, "tile")) == (1, 10)
    assert sorted((tmp_path / "scratch").iterdir()) == [staging]


@pytest.mark.parametrize("parts", [("..",), ("a", "..", "b"), ("a/../../etc",), (".",), ("./x",)])
def test_join_refuses_dot_segments(parts: tuple[str, ...]) -> None:
    for root in ("file:///data/work", "s3://bucket/work"):
        with pytest.raises(StoreError, match="refusing the path segment"):
            join(root, *parts)
    assert join("s3://bucket/work", "a..b", ".c") == "s3://bucket/work/a..b/.c"


def test_an_unreachable_store_is_an_error_not_a_missing_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # Two attempts per request (the default is 5): the retry happens, and still ends in the error.
    store = Store(S3Settings(endpoint_url="http://127.0.0.1:9", max_attempts=2))
    url = "s3://bucket/work/_records/ingest.json"
    for op in (store.read_bytes, store.exists, store.stat):
        with pytest.raises(StoreUnreachableError, match="S3 store unreachable for s3://bucket/work"):
            op(url)
    assert issubclass(StoreUnreachableError, StoreError) and issubclass(StoreError, ClcplusError)
    assert store._s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 2}


def test_settings_never_show_credentials() -> None:
    settings = S3Settings(endpoint_url="http://s3.local", access_key_id="AKIDSECRET", secret_access_key="hush",
                          session_token="tok")
    assert "AKIDSECRET" not in repr(settings) and "hush" not in repr(settings) and "tok" not in repr(settings)
    assert settings.to_dict()["secret_access_key"] == "hush"


# ---- write_bytes_if_absent -----------------------------------------------------------------


def test_write_bytes_if_absent_creates_once_and_never_overwrites(
    backend: tuple[Store, str],
) -> None:
    store, root = backend
    url = join(root, "claims", "v0001", "CLAIM")
    assert store.write_bytes_if_absent(url, b"first")
    assert store.read_bytes(url) == b"first"
    assert not store.write_bytes_if_absent(url, b"second")
    assert store.read_bytes(url) == b"first"
    # an object written by plain write_bytes counts as present too
    other = join(root, "claims", "other.json")
    store.write_bytes(other, b"plain")
    assert not store.write_bytes_if_absent(other, b"x")
    assert store.read_bytes(other) == b"plain"
    # no temporary files are left behind
    assert store.list(root) == sorted([url, other])


def test_write_bytes_if_absent_after_delete_creates_again(backend: tuple[Store, str]) -> None:
    store, root = backend
    url = join(root, "k.bin")
    assert store.write_bytes_if_absent(url, b"a")
    store.delete(url)
    assert store.write_bytes_if_absent(url, b"b")
    assert store.read_bytes(url) == b"b"


def test_write_bytes_if_absent_concurrent_writers_exactly_one_wins(
    backend: tuple[Store, str],
) -> None:
    store, root = backend
    rounds, writers = 5, 8
    for r in range(rounds):
        url = join(root, "race", f"{r}", "CLAIM")
        barrier = threading.Barrier(writers)
        results: dict[int, bool] = {}
        errors: list[BaseException] = []

        def write(i: int, url: str = url, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                results[i] = store.write_bytes_if_absent(url, f"writer {i}".encode() * 1000)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        winners = [i for i, won in results.items() if won]
        assert len(results) == writers and len(winners) == 1, results
        assert store.read_bytes(url) == f"writer {winners[0]}".encode() * 1000
    assert len(store.list(root)) == rounds


def test_write_bytes_if_absent_file_is_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    store = Store()
    url = as_url(tmp_path / "d" / "card.json")
    assert store.write_bytes_if_absent(url, b"{}\n")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["card.json"]
    assert os.stat(tmp_path / "d" / "card.json").st_nlink == 1
    # same permissions as a plain write (the umask applies, not a private temp-file mode)
    store.write_bytes(as_url(tmp_path / "d" / "plain.json"), b"{}\n")
    assert (
        os.stat(tmp_path / "d" / "card.json").st_mode
        == os.stat(tmp_path / "d" / "plain.json").st_mode
    )
    assert not store.write_bytes_if_absent(url, b"other")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["card.json", "plain.json"]


def test_write_bytes_if_absent_file_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    store = Store()
    url = as_url(tmp_path / "fat" / "CLAIM")
    assert store.write_bytes_if_absent(url, b"one")
    assert not store.write_bytes_if_absent(url, b"two")
    assert store.read_bytes(url) == b"one"
    assert [p.name for p in (tmp_path / "fat").iterdir()] == ["CLAIM"]


def test_write_bytes_if_absent_sends_if_none_match(
    s3_store: Store, s3_bucket: str
) -> None:
    seen: list[str | None] = []

    def record(request: object, **kwargs: object) -> None:
        value = request.headers.get("If-None-Match")  # type: ignore[attr-defined]
        seen.append(value.decode() if isinstance(value, bytes) else value)

    s3_store._s3.meta.events.register("before-send.s3.PutObject", record)
    assert s3_store.write_bytes_if_absent(join(s3_bucket, "x"), b"x")
    assert not s3_store.write_bytes_if_absent(join(s3_bucket, "x"), b"y")
    assert seen == ["*", "*"]


def test_write_bytes_if_absent_missing_bucket(s3_store: Store) -> None:
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-clcplus' does not exist"):
        s3_store.write_bytes_if_absent("s3://no-such-bucket-clcplus/a/CLAIM", b"x")
