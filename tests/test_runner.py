"""The stage runner (clcplus_ops.runner) with small declared toy stages, and the reliability
cases of issue 11 item 6, each as a test: outputs visible together or not at all (an
interrupted commit, kill -9 at random moments), damaged inputs and outputs, ids validated
before they name a location, temporaries of killed runs, an unreachable store, one-line errors
on the command line, records relative to the store roots (a copied store)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from clcplus_ops import store as store_module
from clcplus_ops.config import Config, parse_config
from clcplus_ops.errors import ClcplusError, InvalidIdError, StageInputError
from clcplus_ops.locations import Locations, check_version
from clcplus_ops.runner import (
    CorruptRecordError,
    read_record,
    run_stage,
    stage_record,
    store_for,
    verify_files,
)
from clcplus_ops.stage import External, Stage, StageIO, Target
from clcplus_ops.store import S3Settings, Store, StoreError, StoreUnreachableError, join

TESTS = Path(__file__).resolve().parent
ROOTS = ("work", "models", "samples", "products")
TILE = "33TUL_r21c37"  # a DEMO1 tile inside the session's synthetic world
TARGET = Target("demo", 2025, "DEMO1", TILE)
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there
TMP = store_module._TMP_PREFIX


# --------------------------------------------------------------------------------------------
# Toy stages (pure numpy / JSON, one raster through io.raster)

CALLS: list[str] = []


def _source_params(config: Config, target: Target, options) -> dict:
    return {"scale": int(options.get("scale", 3)), "profile": config.rasters.features.model_dump()}


def _source_compute(io: StageIO) -> dict:
    CALLS.append("toy_source")
    scale = io.params["scale"]
    grid = io.tile.grid(0)
    values = (np.arange(grid.height * grid.width, dtype=np.uint32).reshape(grid.shape) * scale % 65_000).astype(np.uint16)
    with io.raster("raster", grid, 1, "uint16", 65_535) as writer:
        writer.write(values, 1)
    np.save(io.output("table"), np.linspace(0, 1, 1000) * scale)
    io.write_json("meta", {"scale": scale, "tile": io.target.tile_id, "shape": list(grid.shape)})
    return {"pixels": int(values.size), "total": int(values.sum())}


TOY_SOURCE = Stage(
    name="toy_source", scope="tile",
    outputs={"raster": "toy/grid.tif", "table": "toy/table.npy", "meta": "toy/meta.json"},
    params=_source_params, compute=_source_compute, summary=("pixels",), options=("scale",),
)


def _sum_compute(io: StageIO) -> dict:
    CALLS.append("toy_sum")
    with io.input("toy_source", "raster").raster() as dataset:
        total = int(dataset.read(1).astype(np.int64).sum())
    meta = io.input("toy_source", "meta").read_json()
    io.write_json("sum", {"total": total, "scale": meta["scale"], "upstream": io.upstream("toy_source")["total"]})
    return {"total": total}


TOY_SUM = Stage(name="toy_sum", scope="tile", inputs=("toy_source",), outputs={"sum": "toy/sum.json"},
                compute=_sum_compute, summary=("total",))


# A stage with several sizeable outputs for the kill trials. Each file starts with the run's
# nonce (also in the record's details), then a deterministic payload: a record whose files do
# not all carry its nonce would mean outputs of two runs mixed under one record.
BIG_FILES = 4
BIG_BYTES = 1 << 20


def big_payload(i: int) -> bytes:
    return np.random.default_rng(i).integers(0, 255, BIG_BYTES, dtype=np.uint8).tobytes()


def _big_compute(io: StageIO) -> dict:
    nonce = os.urandom(8).hex().encode()
    for i in range(BIG_FILES):
        io.write_bytes(f"part{i}", nonce + big_payload(i))
    return {"nonce": nonce.decode()}


TOY_BIG = Stage(name="toy_big", scope="tile", outputs={f"part{i}": f"big/part{i}.bin" for i in range(BIG_FILES)},
                compute=_big_compute)


def _external_compute(io: StageIO) -> dict:
    CALLS.append("toy_external")
    io.write_json("copy", io.external)
    return {}


def _external_prepare(ctx) -> External:
    value = json.loads(Path(ctx.options["source"]).read_text())
    return External(identity={"version": value["version"]}, value=value)


TOY_EXTERNAL = Stage(name="toy_external", scope="pu", outputs={"copy": "external.json"}, prepare=_external_prepare,
                     compute=_external_compute, options=("source",))


# --------------------------------------------------------------------------------------------
# Configurations and helpers


def file_config(root: Path) -> Config:
    return parse_config({"store": {name: (root / name).as_uri() for name in ROOTS}})


def s3_config(bucket_url: str, endpoint: str, **store) -> Config:
    return parse_config({"store": {**{name: f"{bucket_url}/{name}" for name in ROOTS}, "s3_endpoint_url": endpoint,
                                   **store}})


_STORES: dict[tuple, Store] = {}


def store_of(config: Config) -> Store:
    """The store a deployment hands the runner: on S3 with the credentials as settings (as the
    Airflow connection gives them), not from the environment. One per store configuration (an
    S3 client takes a while to make)."""
    key = (config.store.work, config.store.s3_endpoint_url)
    if key not in _STORES:
        settings = store_for(config).s3_settings
        if config.store.work.startswith("s3://"):
            settings = S3Settings(endpoint_url=settings.endpoint_url, region=settings.region,
                                  access_key_id="testing", secret_access_key="testing")
        _STORES[key] = Store(settings)
    return _STORES[key]


def run(stage: Stage, config: Config, target: Target = TARGET, **kwargs) -> dict:
    return run_stage(stage, config, target, store=kwargs.pop("store", None) or store_of(config), **kwargs)


def temporaries(root: Path) -> list[Path]:
    return sorted(root.rglob(f"{TMP}*"))


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def record_of(config: Config, stage: Stage, store: Store | None = None):
    return stage_record(config, stage, TARGET, store or store_of(config))


def assert_verified(config: Config, stage: Stage, store: Store | None = None):
    """The stage's committed record, with every file checked by its full sha256."""
    store = store or store_of(config)
    record = record_of(config, stage, store)
    assert record is not None, f"{stage.name} has no committed record"
    locations = Locations(config)
    for name, location in record.outputs.items():
        assert store.sha256(locations.resolve(location)) == record.files[name]["sha256"], name
    assert verify_files(store, locations, record) == []
    return record


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def _no_calls():
    CALLS.clear()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return file_config(tmp_path / "store")


@pytest.fixture(params=["file", "s3"])
def any_config(request, tmp_path: Path) -> Config:
    if request.param == "file":
        return file_config(tmp_path / "store")
    return s3_config(request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_server"))


# --------------------------------------------------------------------------------------------
# The runner with toy stages


def test_run_skip_force_and_the_summary(any_config: Config) -> None:
    config = any_config
    first = run(TOY_SOURCE, config)
    place = Locations(config.for_layout("demo")).tile(2025, "DEMO1", TILE)
    assert first == {"stage": "toy_source", "layout": "demo", "reference_year": 2025, "pu_id": "DEMO1",
                     "tile_id": TILE, "skipped": False, "pixels": 250 * 250,
                     "outputs": {"raster": place.file("toy/grid.tif"), "table": place.file("toy/table.npy"),
                                 "meta": place.file("toy/meta.json")}}
    assert CALLS == ["toy_source"]
    second = run(TOY_SOURCE, config)
    assert second == {**first, "skipped": True} and CALLS == ["toy_source"]
    third = run(TOY_SOURCE, config, force=True)
    assert third == first and CALLS == ["toy_source"] * 2

    record = assert_verified(config, TOY_SOURCE)
    assert record.outputs == {"raster": f"work:2025/DEMO1/tiles/{TILE}/toy/grid.tif",
                              "table": f"work:2025/DEMO1/tiles/{TILE}/toy/table.npy",
                              "meta": f"work:2025/DEMO1/tiles/{TILE}/toy/meta.json"}
    assert record.target == TARGET.to_dict() and record.details["pixels"] == 250 * 250
    store = store_of(config)
    with rasterio.Env(), store.local_read(first["outputs"]["raster"]) as path, rasterio.open(path) as dataset:
        assert (dataset.width, dataset.height, dataset.dtypes[0], dataset.nodata) == (250, 250, "uint16", 65535)
        assert dataset.profile["blockxsize"] == config.rasters.features.block_px
        assert dataset.compression.name.lower() == config.rasters.features.compress
        assert int(dataset.read(1).astype(np.int64).sum()) == record.details["total"]
    assert json.loads(store.read_text(first["outputs"]["meta"]))["scale"] == 3
    # nothing but the outputs and the record (no staging leftovers)
    assert store.list(place.base) == sorted([*first["outputs"].values(), place.record("toy_source")])


def test_inputs_are_read_through_their_records(any_config: Config) -> None:
    config = any_config
    with pytest.raises(StageInputError, match=r"no toy_source record at .*_records/toy_source.json; run toy_source first"):
        run(TOY_SUM, config)
    source = run(TOY_SOURCE, config)
    summed = run(TOY_SUM, config)
    assert not summed["skipped"] and summed["total"] == assert_verified(config, TOY_SOURCE).details["total"]
    assert source["pixels"] == 250 * 250
    out = json.loads(store_of(config).read_text(summed["outputs"]["sum"]))
    assert out["total"] == out["upstream"] == assert_verified(config, TOY_SOURCE).details["total"]

    # the upstream recomputed to the same bytes: the downstream stays current
    run(TOY_SOURCE, config, force=True)
    assert run(TOY_SUM, config)["skipped"]
    # other parameters upstream (other bytes): both recompute, the downstream sees the new values
    changed = run(TOY_SOURCE, config, options={"scale": 5})
    assert not changed["skipped"]
    again = run(TOY_SUM, config)
    assert not again["skipped"]
    assert json.loads(store_of(config).read_text(again["outputs"]["sum"]))["scale"] == 5
    # unknown options are not the stage's: they neither reach it nor change its fingerprint
    assert run(TOY_SOURCE, config, options={"scale": 5, "other": 1})["skipped"]


def test_external_identity_enters_the_fingerprint(config: Config, tmp_path: Path) -> None:
    source = tmp_path / "registry.json"
    source.write_text(json.dumps({"version": "v0001", "weights": [1, 2]}))
    pu = Target("demo", 2025, "DEMO1")
    assert not run(TOY_EXTERNAL, config, pu, options={"source": str(source)})["skipped"]
    assert run(TOY_EXTERNAL, config, pu, options={"source": str(source)})["skipped"]
    source.write_text(json.dumps({"version": "v0002", "weights": [3]}))
    summary = run(TOY_EXTERNAL, config, pu, options={"source": str(source)})
    assert not summary["skipped"] and CALLS == ["toy_external"] * 2
    assert json.loads(store_of(config).read_text(summary["outputs"]["copy"]))["version"] == "v0002"
    # a PU-scope record lives in the PU's folder
    assert summary["outputs"]["copy"] == Locations(config).pu(2025, "DEMO1").file("external.json")


def test_a_record_of_other_outputs_is_not_current(config: Config) -> None:
    """Same fingerprint, but the stage now declares other files (e.g. a renamed output): the
    record does not vouch for them."""
    run(TOY_SOURCE, config)
    renamed = dataclasses.replace(TOY_SOURCE, outputs={**TOY_SOURCE.outputs, "raster": "toy/grid_v2.tif"})
    summary = run(renamed, config)
    assert not summary["skipped"] and summary["outputs"]["raster"].endswith("/toy/grid_v2.tif")
    assert run(renamed, config)["skipped"] and CALLS == ["toy_source"] * 2


def test_a_stage_that_writes_no_declared_output_commits_nothing(config: Config) -> None:
    lazy = Stage(name="toy_lazy", scope="tile", outputs={"a": "a.json", "b": "b.json"},
                 compute=lambda io: io.write_json("a", {}))
    with pytest.raises(RuntimeError, match="wrote no output 'b'"):
        run(lazy, config)
    assert record_of(config, lazy) is None
    assert all_files(Path(config.store.work[len("file://"):])) == []


# --------------------------------------------------------------------------------------------
# Outputs visible together or not at all


class FailingStore(Store):
    """Fault injection: the commit is interrupted after ``after`` outputs were put."""

    def __init__(self, s3: S3Settings | None = None, after: int = 1):
        super().__init__(s3)
        self.after, self.put = after, 0

    def put_file(self, local: Path, url: str):
        if self.put >= self.after:
            raise OSError(f"injected failure before putting {url}")
        self.put += 1
        return super().put_file(local, url)


def test_an_interrupted_commit_leaves_no_current_record(any_config: Config) -> None:
    config = any_config
    run(TOY_SOURCE, config)  # the complete old state
    old = assert_verified(config, TOY_SOURCE)
    failing = FailingStore(store_of(config).s3_settings, after=1)
    with pytest.raises(OSError, match="injected failure"):
        run(TOY_SOURCE, config, force=True, store=failing, options={"scale": 7})
    # one output is new, the others old: no record says any of them is current
    assert failing.put == 1
    assert record_of(config, TOY_SOURCE) is None
    with pytest.raises(StageInputError, match="no toy_source record"):
        run(TOY_SUM, config)

    # the next (non-forced) run recomputes, and everything verifies
    summary = run(TOY_SOURCE, config, options={"scale": 7})
    assert not summary["skipped"]
    new = assert_verified(config, TOY_SOURCE)
    assert new.fingerprint != old.fingerprint
    assert json.loads(store_of(config).read_text(summary["outputs"]["meta"]))["scale"] == 7
    assert run(TOY_SOURCE, config, options={"scale": 7})["skipped"]
    if config.store.work.startswith("file://"):
        assert temporaries(Path(config.store.work[len("file://"):])) == []


def test_a_failing_computation_keeps_the_old_state(config: Config) -> None:
    run(TOY_SOURCE, config)
    old = assert_verified(config, TOY_SOURCE)

    def broken(io: StageIO) -> dict:
        io.write_json("meta", {"half": "written"})
        raise ValueError("computation failed")

    broken_stage = Stage(name="toy_source", scope="tile", outputs=TOY_SOURCE.outputs, params=_source_params,
                         compute=broken, options=("scale",))
    with pytest.raises(ValueError, match="computation failed"):
        run(broken_stage, config, force=True)
    assert assert_verified(config, TOY_SOURCE) == old  # nothing was committed
    assert temporaries(Path(config.store.work[len("file://"):])) == []


def _forced_reruns_until_killed(config: Config) -> int:
    """A child process (forked: no start-up time, so kills land all over the runs) running the
    forced stage again and again; returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            store = store_of(config)
            while True:
                run_stage(TOY_BIG, config, TARGET, force=True, store=store)
        finally:
            os._exit(1)
    return pid


def _kill_state(config: Config, old_record: bytes | None) -> str:
    """'no record', 'old complete' or 'new complete'; asserts a record's outputs are all its own."""
    store = store_of(config)
    record_url = Locations(config).tile(2025, "DEMO1", TILE).record(TOY_BIG.name)
    try:
        raw = store.read_bytes(record_url)
    except FileNotFoundError:
        return "no record"
    record = assert_verified(config, TOY_BIG, store)
    nonce = record.details["nonce"].encode()
    locations = Locations(config)
    for location in record.outputs.values():
        assert store.read_bytes(locations.resolve(location))[: len(nonce)] == nonce, "outputs of two runs mixed"
    return "old complete" if raw == old_record else "new complete"


@pytest.mark.parametrize(("backend", "kills"), [("file", 5), ("s3", 2)])
def test_kill_9_at_random_moments_of_forced_reruns(backend: str, kills: int, tmp_path: Path, request,
                                                   monkeypatch) -> None:
    if backend == "file":
        config = file_config(tmp_path / "store")
    else:
        config = s3_config(request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_server"))
    scratch = tmp_path / "scratch"
    monkeypatch.setenv(store_module.SCRATCH_ENV, str(scratch))
    work = tmp_path / "store" / "work"
    store = store_of(config)
    record_url = Locations(config).tile(2025, "DEMO1", TILE).record(TOY_BIG.name)
    run(TOY_BIG, config)
    rng = random.Random(11 if backend == "file" else 12)
    states = []
    for _ in range(kills):
        old = store.read_bytes(record_url) if store.exists(record_url) else None
        pid = _forced_reruns_until_killed(config)
        moment = rng.uniform(0.0, 0.6 if backend == "file" else 1.0)
        time.sleep(moment)
        os.kill(pid, signal.SIGKILL)
        assert os.waitpid(pid, 0)[1] == signal.SIGKILL, "the child stopped before it was killed"
        state = _kill_state(config, old)
        states.append(f"{moment:.2f} s: {state}")
        before = temporaries(work) if backend == "file" else list(scratch.iterdir())
        summary = run(TOY_BIG, config)  # not forced
        assert summary["skipped"] == (state != "no record")
        record = assert_verified(config, TOY_BIG)
        for i, url in enumerate(summary["outputs"].values()):
            data = store.read_bytes(url)
            assert data[:16] == record.details["nonce"].encode() and data[16:] == big_payload(i)
        if backend == "file":
            assert temporaries(work) == [], f"left after the next run (before it: {len(before)})"
        else:  # s3 writes leave nothing in the bucket, and the killed run's scratch goes
            assert [u for u in store.list(config.store.work) if TMP in u] == []
            assert list(scratch.iterdir()) == [], f"left after the next run (before it: {len(before)})"
    print(f"kill -9 trials ({backend}): {states}")


# --------------------------------------------------------------------------------------------
# Damaged inputs and outputs


def test_a_damaged_input_fails_the_stage_naming_the_file(any_config: Config) -> None:
    config = any_config
    source = run(TOY_SOURCE, config)
    store = store_of(config)
    url = source["outputs"]["raster"]
    data = store.read_bytes(url)
    store.write_bytes(url, data[: len(data) // 2])  # truncated
    with pytest.raises(StageInputError) as info:
        run(TOY_SUM, config)
    message = str(info.value)
    assert url in message and "toy_source" in message and f"{len(data) // 2} bytes" in message
    assert CALLS == ["toy_source"]  # the downstream computation never started
    # same size, other content: the sha256 decides (the stamp changed)
    store.write_bytes(url, data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(StageInputError, match=f"raster was changed since it was recorded \\({url}\\)"):
        run(TOY_SUM, config)
    # re-running the upstream repairs it
    assert not run(TOY_SOURCE, config)["skipped"]
    assert not run(TOY_SUM, config)["skipped"]


def test_an_unreadable_input_names_the_file(config: Config) -> None:
    """A raster that verifies against its record but cannot be opened: a message naming it,
    never a crash (the record was made for garbage, e.g. by a broken writer)."""
    def write_garbage(io: StageIO) -> dict:
        io.write_bytes("raster", b"not a tiff")
        io.write_bytes("table", b"")
        io.write_json("meta", {"scale": 3})
        return {"total": 0}

    garbage = Stage(name="toy_source", scope="tile", outputs=TOY_SOURCE.outputs, params=_source_params,
                    options=("scale",), compute=write_garbage)
    run(garbage, config)
    with pytest.raises(StageInputError, match=r"input raster of toy_source \(file://.*toy/grid.tif\) cannot be opened"):
        run(TOY_SUM, config)


@pytest.mark.parametrize("damage", ["truncate", "remove", "rewrite"])
def test_a_damaged_output_found_at_skip_time_is_recomputed(config: Config, damage: str, caplog) -> None:
    summary = run(TOY_SOURCE, config)
    path = Path(summary["outputs"]["raster"][len("file://"):])
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:100])
    elif damage == "remove":
        path.unlink()
    else:
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, new mtime
    with caplog.at_level("WARNING", logger="clcplus_ops.runner"):
        again = run(TOY_SOURCE, config)
    assert not again["skipped"] and CALLS == ["toy_source"] * 2
    assert "recorded outputs are damaged" in caplog.text and str(path) in caplog.text
    assert path.read_bytes() == data
    assert_verified(config, TOY_SOURCE)


def test_a_corrupt_own_record_recomputes(config: Config, caplog) -> None:
    run(TOY_SOURCE, config)
    url = Locations(config).tile(2025, "DEMO1", TILE).record("toy_source")
    store = store_of(config)
    for content in (b"{not json", b'{"format": 1, "stage": "toy_source"}', b"[1]", b"\xff\xfe"):
        store.write_bytes(url, content)
        with pytest.raises(CorruptRecordError, match=url):
            read_record(store, url)
        with caplog.at_level("WARNING", logger="clcplus_ops.runner"):
            assert not run(TOY_SOURCE, config)["skipped"]
        assert url in caplog.text
        assert_verified(config, TOY_SOURCE)
    # as an input, a corrupt record is a StageInputError naming the stage to re-run
    store.write_bytes(url, b"{not json")
    with pytest.raises(StageInputError, match="re-run toy_source"):
        run(TOY_SUM, config)


# --------------------------------------------------------------------------------------------
# Ids checked before they name a location


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (Target("demo", 2025, "../../../../escaped", TILE), "production unit '../../../../escaped' is not in the demo layout"),
        (Target("demo", 2025, "DEMO1/../../x", TILE), "is not in the demo layout"),
        (Target("demo", 2025, "PU001", TILE), "'PU001' is not in the demo layout"),
        (Target("demo", 2025, "DEMO1", "../33TUL_r22c37"), "is not a tile id"),
        (Target("demo", 2025, "DEMO1", "33TUL_r99c37"), "is not a tile of the 2500 m grid"),
        (Target("demo", 2025, "DEMO1", "99ZZZ_r1c1"), "is not a tile id"),
        (Target("demo", 1900, "DEMO1", TILE), "outside the supported range 2017..2100"),
        (Target("demo", 99999, "DEMO1", TILE), "outside the supported range"),
        (Target("demo", "20x5", "DEMO1", TILE), "is not a year"),
        (Target("demo", "2025/..", "DEMO1", TILE), "is not a year"),
        (Target("demo", 2025, None, TILE), "runs for a production unit"),
        (Target("demo", 2025, "DEMO1", None), "runs for a tile"),
    ],
)
def test_ids_are_checked_before_they_touch_a_location(tmp_path: Path, target: Target, words: str) -> None:
    config = file_config(tmp_path / "a" / "b" / "c" / "store")
    with pytest.raises(ClcplusError, match=re.escape(words)):
        run_stage(TOY_SOURCE, config, target)
    assert CALLS == [] and all_files(tmp_path) == [] and not list(tmp_path.rglob("escaped"))


def test_versions_are_checked_and_the_store_refuses_dot_segments() -> None:
    assert check_version("v0001") == "v0001"
    for bad in ("../v0001", "v1", "v0001/..", "latest", "", None):
        with pytest.raises(InvalidIdError, match="is not like v0001"):
            check_version(bad)
    locations = Locations(Config())
    with pytest.raises(InvalidIdError):
        locations.model("DEMO1", "../../etc")
    for parts in (("..", "x"), ("a/../../b",), ("./a",), ("a", ".")):
        with pytest.raises(StoreError, match="refusing the path segment"):
            join("file:///data/work", *parts)
        with pytest.raises(StoreError, match="refusing the path segment"):
            join("s3://bucket/work", *parts)
    with pytest.raises(StoreError, match="refusing"):
        locations.resolve("work:2025/../../etc/passwd")
    assert join("file:///data", "a..b", "..c") == "file:///data/a..b/..c"  # only whole segments


# --------------------------------------------------------------------------------------------
# Temporaries of killed runs


def test_temporaries_of_killed_runs_are_removed_by_the_next_run(config: Config) -> None:
    run(TOY_SOURCE, config)
    place = Path(Locations(config).tile(2025, "DEMO1", TILE).base[len("file://"):])
    host = store_module._HOST
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leftovers = {
            place / f"{TMP}{dead}@{host}@stage-abc": "dead",  # a killed run's staging folder
            place / "toy" / f"{TMP}{dead}@{host}@xyz": "dead",  # a killed write's folder
            place / f"{TMP}{dead}@{host}@" f"0123-CLAIM": "dead file",  # a killed claim's file
            place / f"{TMP}{live.pid}@{host}@stage-live": "live",  # a running process's
            place / f"{TMP}{dead}@other-host@stage-new": "foreign, young",
            place / f"{TMP}{dead}@other-host@stage-old": "foreign, old",
            place / f"{TMP}legacy-name": "foreign, old",
        }
        for path, kind in leftovers.items():
            if kind == "dead file":
                path.write_bytes(b"x" * 1000)
            else:
                path.mkdir()
                (path / "features").mkdir()
                (path / "features" / "B01.tif").write_bytes(b"x" * 10_000)
            if "old" in kind:
                stamp = time.time() - store_module.FOREIGN_TMP_AGE_S - 60
                os.utime(path, (stamp, stamp))
        assert len(temporaries(place)) == 7
        assert run(TOY_SOURCE, config, force=True)["skipped"] is False
        kept = {p.name for p in place.rglob(f"{TMP}*")}
        assert kept == {f"{TMP}{live.pid}@{host}@stage-live", f"{TMP}{dead}@other-host@stage-new"}
        # the store's listing never shows temporaries
        assert all(TMP not in url for url in store_of(config).list(config.store.work))
    finally:
        live.kill()
        live.wait()
    assert store_of(config).remove_temporaries(place.as_uri()) == (1, 10_000)


# --------------------------------------------------------------------------------------------
# An unreachable store


@pytest.mark.parametrize("force", [False, True])
def test_an_unreachable_store_is_an_error_at_once(force: bool, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = s3_config("s3://clcplus-nowhere/root", UNREACHABLE, s3_max_attempts=1)  # no retries to wait for
    assert store_for(config)._s3.meta.config.retries["total_max_attempts"] == 1
    started = time.perf_counter()
    with pytest.raises(StoreUnreachableError, match="S3 store unreachable for s3://clcplus-nowhere/root/work/2025/DEMO1"):
        run(TOY_SOURCE, config, force=force)
    assert CALLS == []  # never "not done yet": nothing was computed
    assert time.perf_counter() - started < 30
    if not force:
        with pytest.raises(StoreUnreachableError):
            run(TOY_SUM, config)  # reading an input's record
        with pytest.raises(StoreUnreachableError):
            stage_record(config, TOY_SOURCE, TARGET)


# --------------------------------------------------------------------------------------------
# Records are relative to the store roots: a copied store judges by its own files


def test_a_copied_store_skips_and_does_not_depend_on_the_original(tmp_path: Path) -> None:
    original = file_config(tmp_path / "original")
    run(TOY_SOURCE, original)
    run(TOY_SUM, original)
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    copy = file_config(tmp_path / "copy")
    # the copy's files got other stamps: the sha256 decides, and they are the same
    for path in all_files(tmp_path / "copy"):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    summary = run(TOY_SOURCE, copy)
    assert summary["skipped"] and summary["outputs"]["raster"].startswith((tmp_path / "copy").as_uri() + "/")
    assert run(TOY_SUM, copy)["skipped"]
    assert CALLS == ["toy_source", "toy_sum"]
    assert_verified(copy, TOY_SOURCE)

    # the original's files go: the copy is unaffected
    shutil.rmtree(tmp_path / "original" / "work" / "2025" / "DEMO1" / "tiles" / TILE / "toy")
    assert run(TOY_SOURCE, copy)["skipped"] and run(TOY_SUM, copy)["skipped"]
    assert not run(TOY_SOURCE, original)["skipped"]
    # and a damaged copy recomputes in the copy only
    raster = Path(summary["outputs"]["raster"][len("file://"):])
    raster.write_bytes(b"")
    assert not run(TOY_SOURCE, copy)["skipped"]
    assert_verified(copy, TOY_SOURCE)
    def checksums(config: Config) -> dict:
        return {name: f["sha256"] for name, f in assert_verified(config, TOY_SOURCE).files.items()}

    assert checksums(original) == checksums(copy)


# --------------------------------------------------------------------------------------------
# The command line: expected errors as one line and exit 2 (most cases in-process through
# clcplus_ops.cli.main, the code path of the command; a few as the installed command)


def clcplus(*args: str, config: Path | None = None, verbose: bool = False, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("clcplus"))]
    if config is not None:
        command += ["--config", str(config)]
    if verbose:
        command.append("-v")
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def cli_main(capsys, *args: str, config: Path | None = None, verbose: bool = False) -> subprocess.CompletedProcess:
    from clcplus_ops.cli import main

    argv = (["--config", str(config)] if config is not None else []) + (["-v"] if verbose else []) + list(args)
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def test_cli_bad_config_path_is_one_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert_one_line_error(clcplus("config", "show", config=missing), str(missing), "does not exist")
    bad = write_config(tmp_path / "bad.yaml", {"grid": {"pu_buffer_m": -5}, "bilateral": {"sigma_color": 0}})
    line = assert_one_line_error(cli_main(capsys, "config", "show", config=bad), "grid.pu_buffer_m",
                                 "bilateral.sigma_color")
    assert line.startswith(f"error: invalid configuration in {bad}: ")
    verbose = cli_main(capsys, "config", "show", config=missing, verbose=True)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr and "ConfigError" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("error: ")


def test_cli_escaping_pu_id_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """The issue's command, as the installed command runs it."""
    root = tmp_path / "a" / "b" / "c" / "d"
    config = write_config(tmp_path / "c.yaml", {"store": {name: (root / name).as_uri() for name in ROOTS}})
    result = clcplus("ingest", "../../../../escaped", "2025", TILE, "--layout", "demo", config=config)
    assert_one_line_error(result, "'../../../../escaped' is not in the demo layout")
    assert all_files(tmp_path) == [config] and not list(tmp_path.rglob("escaped"))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("ingest", "../../../../escaped", "2025", TILE), ("'../../../../escaped' is not in the demo layout",)),
        (("classify", "DEMO1", "2025", "../../x"), ("is not a tile id",)),
        (("filter", "DEMO1", "2025", "33TUL_r99c37"), ("is not a tile of the 2500 m grid",)),
        (("ingest", "DEMO1", "1900", TILE), ("1900", "supported range")),
        (("ingest", "DEMO1", "99999", TILE), ("99999", "supported range")),
        (("ingest", "DEMO1", "20x5", TILE), ("is not a year",)),
        (("classify", "DEMO1", "2025", TILE, "--model-version", "../../v0001"), ("is not like v0001",)),
        (("plan", "../DEMO1", "2025"), ("is not in the demo layout",)),
        (("plan", "DEMO1", "2025", "--only-tiles", "../x"), ("only_tiles names ['../x']",)),
        (("train", "extract", "DEMO9", "2025"), ("'DEMO9' is not in the demo layout",)),
        (("run", "ingest", "DEMO1", "2025", "../x"), ("is not a tile id",)),
        (("run", "classify", "DEMO1", "2025", TILE, "--option", "model_version=../v1"), ("is not like v0001",)),
        (("run", "no_such_stage", "DEMO1", "2025"), ("no stage 'no_such_stage'", "ingest")),
        (("run", "filter", "DEMO1", "2025", TILE, "--option", "speed=3"), ("takes no option 'speed'",)),
        (("run", "filter", "DEMO1", "2025"), ("runs for a tile",)),
        (("models", "show", "../DEMO1"), ("'../DEMO1' is not in the",)),
        (("models", "show", "DEMO1", "--version", "../v0001"), ("is not like v0001",)),
        (("previous", "import", "nowhere.tif", "DEMO1", "2021"), ("nowhere.tif cannot be read as a raster",)),
        (("previous", "import", "nowhere.tif", "DEMO1", "1700"), ("1700", "supported range")),
    ],
)
def test_cli_bad_ids_are_one_line_and_write_nothing(tmp_path: Path, capsys, args: tuple[str, ...], words) -> None:
    root = tmp_path / "a" / "b" / "c" / "d"
    config = write_config(tmp_path / "c.yaml", {"store": {name: (root / name).as_uri() for name in ROOTS}})
    layout = ("--layout", "demo") if args[0] not in ("models",) else ()
    assert_one_line_error(cli_main(capsys, *args, *layout, config=config), *words)
    assert all_files(tmp_path) == [config] and not root.exists()
    assert not list(tmp_path.rglob("escaped")) and not (tmp_path.parent / "escaped").exists()
    verbose = cli_main(capsys, *args, *layout, config=config, verbose=True)
    assert verbose.returncode == 2 and "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1].startswith("error: ")


def test_cli_unreachable_store_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    config = write_config(tmp_path / "c.yaml", {"store": {**{name: f"s3://clcplus-nowhere/{name}" for name in ROOTS},
                                                          "s3_endpoint_url": UNREACHABLE, "s3_max_attempts": 1}})
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    result = clcplus("run", "define_tile", "DEMO1", "2025", TILE, "--layout", "demo", config=config, env=keys)
    assert_one_line_error(result, "S3 store unreachable", "127.0.0.1:9")
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    for args in (("filter", "DEMO1", "2025", TILE, "--layout", "demo", "--force"),
                 ("plan", "DEMO1", "2025", "--layout", "demo")):
        assert_one_line_error(cli_main(capsys, *args, config=config), "S3 store unreachable", "127.0.0.1:9")
    verbose = cli_main(capsys, "filter", "DEMO1", "2025", TILE, "--layout", "demo", config=config, verbose=True)
    assert verbose.returncode == 2 and "StoreUnreachableError" in verbose.stderr and "Traceback" in verbose.stderr


def test_cli_missing_files_are_one_line(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "c.yaml", {"store": {name: (tmp_path / name).as_uri() for name in ROOTS}})
    line = assert_one_line_error(cli_main(capsys, "filter", "DEMO1", "2025", TILE, "--layout", "demo", config=config),
                                 "no classify record", "run classify first")
    assert (tmp_path / "work").as_uri() in line
    assert_one_line_error(cli_main(capsys, "samples", "import", str(tmp_path / "none.csv"), config=config),
                          "none.csv")
    assert_one_line_error(cli_main(capsys, "models", "show", "DEMO1", config=config), "no registered model",
                          "DEMO1")


def test_cli_runs_any_declared_stage(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "c.yaml", {"store": {name: (tmp_path / name).as_uri() for name in ROOTS}})
    stages = cli_main(capsys, "stages", config=config)
    assert stages.returncode == 0 and "plan_tiles" in stages.stdout and "model_version" in stages.stdout
    planned = cli_main(capsys, "plan", "DEMO1", "2025", "--layout", "demo", config=config)
    assert planned.returncode == 0, planned.stderr
    count, _, url = planned.stdout.strip().partition(" tiles planned: ")
    assert int(count) > 0 and url == Locations(parse_config({"store": {n: (tmp_path / n).as_uri() for n in ROOTS}})
                                               ).pu(2025, "DEMO1").file("plan.json")
    again = cli_main(capsys, "run", "plan_tiles", "DEMO1", "2025", "--layout", "demo", config=config)
    summary = json.loads(again.stdout)
    assert summary["skipped"] and summary["tiles"] == int(count) and summary["outputs"]["plan"] == url
    forced = cli_main(capsys, "run", "define_tile", "DEMO1", "2025", TILE, "--layout", "demo", "--force",
                      config=config)
    assert json.loads(forced.stdout)["skipped"] is False
    subset = cli_main(capsys, "run", "plan_tiles", "DEMO1", "2025", "--layout", "demo", "--option",
                      f'only_tiles=["{TILE}"]', config=config)
    assert json.loads(subset.stdout)["tiles"] == 1


# --------------------------------------------------------------------------------------------
# The real stages on a demo tile: damaged files met by the command


@pytest.fixture(scope="module")
def real_tile(demo_world, demo_random_model, tmp_path_factory) -> dict:
    """A demo tile ingested and classified into a work root of its own, with the session's world
    and DEMO1 model."""
    from clcplus_ops.config import load_config
    from clcplus_ops.pipeline import STAGES

    root = tmp_path_factory.mktemp("real-tile")
    data = load_config().model_dump(mode="json")
    data["store"]["work"] = (root / "work").as_uri()
    path = write_config(root / "config.yaml", data)
    config = load_config(path)
    for name in ("define_tile", "ingest", "classify"):
        run_stage(STAGES[name], config, TARGET)
    locations = Locations(config.for_layout("demo"))
    return {"path": path, "config": config, "place": locations.tile(2025, "DEMO1", TILE),
            "series": locations.tile_series(2025, TILE), "stages": STAGES}


def _local(url: str) -> Path:
    return Path(url[len("file://"):])


def test_cli_damaged_feature_file_fails_classify_naming_it(real_tile) -> None:
    config, place, classify = real_tile["config"], real_tile["series"], real_tile["stages"]["classify"]
    before = stage_record(config, classify, TARGET)
    feature = _local(place.feature("B01"))
    data, stat = feature.read_bytes(), feature.stat()
    try:
        # truncated: the input's record tells, before anything is read
        feature.write_bytes(data[: len(data) // 3])
        result = clcplus("classify", "DEMO1", "2025", TILE, "--layout", "demo", "--force", config=real_tile["path"])
        assert_one_line_error(result, place.feature("B01"), f"{len(data) // 3} bytes", "re-run ingest")
        # same size, the stamp put back: the record cannot tell; reading it fails naming the file
        # (a message, exit 2, never a crash of the reading threads)
        feature.write_bytes(data[: len(data) // 3] + bytes(len(data) - len(data) // 3))
        os.utime(feature, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        result = clcplus("classify", "DEMO1", "2025", TILE, "--layout", "demo", "--force", config=real_tile["path"])
        assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
        assert_one_line_error(result, place.feature("B01"))
    finally:
        feature.write_bytes(data)
    assert stage_record(config, classify, TARGET) == before  # the failed runs committed nothing
    assert_verified(config.for_layout("demo"), classify)


def test_cli_damaged_probabilities_are_recomputed_at_skip_time(real_tile, capsys) -> None:
    config, place = real_tile["config"], real_tile["place"]
    probabilities = _local(place.probabilities)
    data = probabilities.read_bytes()
    probabilities.write_bytes(data[:1000])
    result = cli_main(capsys, "classify", "DEMO1", "2025", TILE, "--layout", "demo", config=real_tile["path"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["skipped"] is False and summary["outputs"]["probabilities"] == place.probabilities
    assert probabilities.read_bytes() == data  # the same bytes again
    again = cli_main(capsys, "classify", "DEMO1", "2025", TILE, "--layout", "demo", config=real_tile["path"])
    assert json.loads(again.stdout)["skipped"] is True
