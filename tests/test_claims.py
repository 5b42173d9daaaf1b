"""A tile's time series is made once per reference year, however many PUs ask for it (issue 16,
item 2): the ``shared_tile`` scope, and the claims that let one run compute while the others
wait (clcplus_ops.claims), on file:// and on the S3 server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clcplus_ops import claims
from clcplus_ops.config import Config, parse_config
from clcplus_ops.locations import Locations
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.stage import Stage, StageIO, Target
from clcplus_ops.store import Store

ROOTS = ("work", "models", "samples", "products")
TILE = "33TUL_r21c37"  # a tile of the demo grid
COMPUTED: list[str] = []  # who computed, in this process


def _slow_compute(io: StageIO) -> dict:
    COMPUTED.append(io.options["asked_by"])
    time.sleep(float(io.options.get("seconds", 1.0)))
    io.write_json("series", {"tile": io.target.tile_id, "year": io.target.reference_year})
    return {}


SHARED = Stage(name="toy_series", scope="shared_tile", outputs={"series": "toy/series.json"}, compute=_slow_compute,
               options=("asked_by", "seconds"))


def _config(store: dict) -> Config:
    return parse_config({"store": {**store, "claim_seconds": 5}})


@pytest.fixture(params=["file", "s3"])
def config(request, tmp_path) -> Config:
    if request.param == "file":
        return _config({name: (tmp_path / name).as_uri() for name in ROOTS})
    bucket, endpoint = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_server")
    request.getfixturevalue("s3_credentials")
    return _config({**{name: f"{bucket}/{name}" for name in ROOTS}, "s3_endpoint_url": endpoint})


def test_the_time_series_of_a_tile_live_once_for_every_pu(tmp_path):
    from clcplus_ops.pipeline import CLASSIFY, INGEST

    config = _config({name: (tmp_path / name).as_uri() for name in ROOTS}).for_layout("demo")
    locations = Locations(config)
    assert INGEST.scope == "shared_tile" and CLASSIFY.input_scopes == {"ingest": "shared_tile"}
    assert locations.tile_series(2025, TILE).base == f"{config.store.work}/2025/tiles/{TILE}"
    # The PU asking is checked (a bad PU id names nothing), then the record is the tile's.
    from clcplus_ops.errors import InvalidIdError
    from clcplus_ops.runner import checked_target

    assert checked_target(config, INGEST, Target("demo", 2025, "DEMO2", TILE)) == Target("demo", 2025, None, TILE)
    with pytest.raises(InvalidIdError):
        checked_target(config, INGEST, Target("demo", 2025, "../DEMO1", TILE))


def test_pus_asking_at_once_compute_once_and_wait_for_the_record(config):
    COMPUTED.clear()
    results, barrier = [], threading.Barrier(3)

    def ask(pu: str) -> None:
        barrier.wait()
        started = time.perf_counter()
        summary = run_stage(SHARED, config, Target("demo", 2025, pu, TILE), options={"asked_by": pu, "seconds": 1.5})
        results.append((summary, time.perf_counter() - started))

    threads = [threading.Thread(target=ask, args=(pu,)) for pu in ("DEMO1", "DEMO2", "DEMO1")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(COMPUTED) == 1, COMPUTED  # one of the three computed
    computed = [s for s, _ in results if not s["skipped"]]
    waited = [(s, seconds) for s, seconds in results if s["skipped"]]
    assert len(computed) == 1 and len(waited) == 2
    for summary, seconds in waited:
        assert seconds >= 1.0  # they waited for the record, not for nothing
        assert summary["outputs"] == computed[0]["outputs"]
    record = stage_record(config, SHARED, Target("demo", 2025, None, TILE))
    assert record.target == {"layout": "demo", "reference_year": 2025, "tile_id": TILE}
    # The claims are gone once the record is there; a later PU skips at once.
    store = Store(_s3(config))
    assert store.list(Locations(config.for_layout("demo")).tile_series(2025, TILE).file(claims.FOLDER)) == []
    assert run_stage(SHARED, config, Target("demo", 2025, "DEMO2", TILE), options={"asked_by": "late"})["skipped"]
    assert len(COMPUTED) == 1


def _slow_in_a_file(io: StageIO) -> dict:
    marks = Path(io.options["marks"])
    (marks / f"{os.getpid()}-{io.options['asked_by']}").write_text("computing")
    time.sleep(1.5)
    io.write_json("series", {"tile": io.target.tile_id})
    return {}


SHARED_IN_PROCESSES = Stage(name="toy_series", scope="shared_tile", outputs={"series": "toy/series.json"},
                            compute=_slow_in_a_file, options=("asked_by", "marks"))


def _ask_in_a_process(store: dict, pu: str, marks: str, start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    summary = run_stage(SHARED_IN_PROCESSES, _config(store), Target("demo", 2025, pu, TILE),
                        options={"asked_by": pu, "marks": marks})
    Path(marks, f"summary-{pu}.json").write_text(json.dumps(summary))


def test_pu_runs_in_separate_processes_compute_a_tile_once(tmp_path):
    import multiprocessing

    store = {name: (tmp_path / name).as_uri() for name in ROOTS}
    marks = tmp_path / "marks"
    marks.mkdir()
    start_at = time.time() + 3  # both past their imports
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_ask_in_a_process, args=(store, pu, str(marks), start_at))
                 for pu in ("DEMO1", "DEMO2")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    computed = [p.name for p in marks.iterdir() if not p.name.startswith("summary-")]
    summaries = {pu: json.loads((marks / f"summary-{pu}.json").read_text()) for pu in ("DEMO1", "DEMO2")}
    assert len(computed) == 1, computed
    assert sorted(s["skipped"] for s in summaries.values()) == [False, True]


def _s3(config: Config):
    from clcplus_ops.runner import store_for

    return store_for(config).s3_settings


def _claim(store: Store, place: str, generation: int, **fields) -> str:
    body = {"what": "toy", "host": socket.gethostname(), "pid": os.getpid(), "token": "other",
            "started": claims._process_started(os.getpid()), "until": "2999-01-01T00:00:00+00:00", **fields}
    url = f"{place}/{claims.FOLDER}/toy_series.{generation:06d}.json"
    store.write_bytes(url, json.dumps(body).encode())
    return url


def test_a_claim_whose_process_is_gone_is_taken_over_at_once(config, caplog):
    COMPUTED.clear()
    store = Store(_s3(config))
    place = Locations(config.for_layout("demo")).tile_series(2025, TILE).base
    # A holder killed on this host: its process ended, its claim says it holds for years.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = _claim(store, place, 1, pid=int(ended.stdout), started=time.time() - 5)
    started = time.perf_counter()
    summary = run_stage(SHARED, config, Target("demo", 2025, "DEMO1", TILE), options={"asked_by": "DEMO1", "seconds": 0})
    assert not summary["skipped"] and COMPUTED == ["DEMO1"] and time.perf_counter() - started < 5
    assert "took over claim 1" in caplog.text and "is gone" in caplog.text
    assert not store.exists(stale)  # removed with the taker's own claim


def test_a_claim_not_renewed_goes_stale_and_a_live_one_is_waited_for(config, caplog):
    COMPUTED.clear()
    store = Store(_s3(config))
    place = Locations(config.for_layout("demo")).tile_series(2025, TILE).base
    # Held by a live process (this one) until 3 s from now, never renewed: the run waits that long.
    until = time.time() + 3
    from datetime import datetime, timezone

    _claim(store, place, 4, until=datetime.fromtimestamp(until, timezone.utc).isoformat())
    summary = run_stage(SHARED, config, Target("demo", 2025, "DEMO2", TILE), options={"asked_by": "DEMO2", "seconds": 0})
    assert not summary["skipped"] and COMPUTED == ["DEMO2"] and time.time() >= until
    assert "took over claim 4 (not renewed since" in caplog.text
    assert store.list(f"{place}/{claims.FOLDER}") == []


def test_a_holder_renews_its_claim_while_it_computes(tmp_path):
    store = Store()
    place = (tmp_path / "tile").as_uri()
    claim = claims.acquire(store, place, "toy_series", "toy", lambda: False, seconds=5)
    first = json.loads(store.read_bytes(claim.url))["until"]
    time.sleep(1.5)  # a renewal every seconds / 4
    renewed = json.loads(store.read_bytes(claim.url))
    assert renewed["until"] > first and renewed["pid"] == os.getpid()
    # Another run of this process waits for it (the holder is alive) and gets it once released.
    got = []
    waiter = threading.Thread(target=lambda: got.append(claims.acquire(store, place, "toy_series", "toy",
                                                                        lambda: False, seconds=5, poll_s=0.1)))
    waiter.start()
    time.sleep(0.5)
    assert not got
    claim.release()
    waiter.join(timeout=10)
    assert got and got[0].generation == 1 and got[0].url == claim.url  # claim 1 again: the folder was empty
    got[0].release()
    assert store.list(f"{place}/{claims.FOLDER}") == []
