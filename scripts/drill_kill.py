"""kill -9 drill: forced re-runs of ingest, classify and filter on one tile, each killed at random
moments, then judged (issue 11, item 6).

For every stage and trial: ``clcplus --config C STAGE PU YEAR TILE --layout L --force`` starts as
a subprocess and gets SIGKILL after a seeded random delay. Odd trials count it from the moment
the run began to compute (its staging folder appeared in the tile folder), over the span a whole
forced run's computation and commit took when measured before the trials; even trials aim at
the commit, whose window is milliseconds: the delay counts from the removal of the old record,
over the commit's measured duration. The state found afterwards is one of

* ``no record``     the kill came between the removal of the old record and the new one: the
                    next run must recompute;
* ``old complete``  the old record and its outputs (killed before the commit began);
* ``new complete``  the new record and its outputs (killed after the commit);
* ``BROKEN``        a record whose outputs do not verify (sha256): must never happen.

Then a non-forced run follows; it must skip (complete states) or recompute (no record), leave no
temporaries (``.clcplus-tmp-*``), and the outputs must equal the reference bytes of the first
run. Temporaries are counted before and after that run.

    .venv/bin/python scripts/drill_kill.py --config .demo/config.yaml            # the demo tile
    .venv/bin/python scripts/drill_kill.py --config C --trials 5 --stages filter

The store must hold the world (``clcplus synthetic build``) and a registered model of the PU
(the demo makes both).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from clcplus_ops.config import load_config
from clcplus_ops.locations import Locations
from clcplus_ops.pipeline import STAGES
from clcplus_ops.runner import place_of, stage_record, store_for, verify_files
from clcplus_ops.stage import Target
from clcplus_ops.store import _TMP_PREFIX
from clcplus_ops.store_audit import checksums, record_state, temporaries

CLCPLUS = str(Path(sys.executable).with_name("clcplus"))


def command(args, stage: str, force: bool) -> list[str]:
    return [CLCPLUS, "--config", str(args.config), stage, args.pu, str(args.year), args.tile, "--layout", args.layout,
            *(["--force"] if force else [])]


def run_cli(args, stage: str, force: bool = False) -> dict:
    result = subprocess.run(command(args, stage, force), capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command(args, stage, force))} failed ({result.returncode}):\n{result.stderr}")
    return json.loads(result.stdout)


def staging_of(folder: Path, pid: int) -> bool:
    return any(folder.glob(f"{_TMP_PREFIX}{pid}@*@stage-*"))


def measure(args, stage: str, folder: Path, record: Path) -> tuple[float, float, float]:
    """A forced run, watched: (seconds until its staging folder appears, seconds from then to its
    end, seconds of its commit: from the removal of the old record to the new one)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command(args, stage, True), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    computing = removed = written = None
    while proc.poll() is None:
        now = time.perf_counter()
        if computing is None and staging_of(folder, proc.pid):
            computing = now
        if computing is not None and removed is None and not record.exists():
            removed = now
        if removed is not None and written is None and record.exists():
            written = now
        time.sleep(0.0005)
    if proc.returncode:
        raise SystemExit(f"forced {stage} failed: {proc.stderr.read().decode()}")
    ended = time.perf_counter()
    computing = computing or started
    commit = (written or ended) - removed if removed is not None else 0.01
    return computing - started, ended - computing, commit


def kill_after(args, stage: str, folder: Path, record: Path, delay: float, aim: str) -> bool:
    """Start a forced run and SIGKILL it ``delay`` s after it began computing (``aim`` "any") or
    after it removed the old record (``aim`` "commit"); whether it was killed."""
    proc = subprocess.Popen(command(args, stage, True), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = None
    while proc.poll() is None:
        now = time.perf_counter()
        if began is None and staging_of(folder, proc.pid) and (aim == "any" or not record.exists()):
            began = now
        if began is not None and now - began >= delay:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.0005)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="configuration YAML of the store to drill")
    parser.add_argument("--pu", default="DEMO1")
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--tile", default="33TUL_r22c37")
    parser.add_argument("--layout", default="demo")
    parser.add_argument("--stages", nargs="+", default=["ingest", "classify", "filter"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20250401)
    args = parser.parse_args()

    config = load_config(args.config).for_layout(args.layout)
    store, locations = store_for(config), Locations(config)
    target = Target(args.layout, args.year, args.pu, args.tile)
    if not config.store.work.startswith("file://"):
        raise SystemExit("the drill watches the tile folders: give a configuration with a file:// work root")
    rng = random.Random(args.seed)

    print(f"drill: {args.pu} {args.year} {args.tile} ({args.layout}), store {config.store.work}, seed {args.seed}")
    for stage in ("ingest", "classify", "filter"):  # the chain up to the drilled stages, once
        summary = run_cli(args, stage)
        print(f"  {stage}: {'current' if summary['skipped'] else 'computed'}")
        if stage == args.stages[-1]:
            break
    reference = {name: checksums(stage_record(config, STAGES[name], target, store)) for name in args.stages}

    verdict, tally = True, {}
    for name in args.stages:
        place = place_of(STAGES[name].scope, locations, target)  # the PU's tile, or the shared one (ingest)
        folder = Path(place.base[len("file://"):])
        record_url = place.record(name)
        record_path = Path(record_url[len("file://"):])
        start_s, span_s, commit_s = measure(args, name, folder, record_path)
        print(f"\n{name}: a forced run starts computing after {start_s:.1f} s, computes and commits in {span_s:.2f} s, "
              f"its commit (old record removed .. new record written) takes {1000 * commit_s:.1f} ms. Odd trials: "
              f"kill at uniform(0, {1.1 * span_s:.2f}) s after it began computing; even trials: at "
              f"uniform(0, {1000 * 1.2 * commit_s:.1f}) ms after the old record went")
        for trial in range(1, args.trials + 1):
            old = store.read_bytes(record_url) if store.exists(record_url) else None
            aim = "any" if trial % 2 else "commit"
            delay = rng.uniform(0.0, 1.1 * span_s if aim == "any" else 1.2 * commit_s)
            killed = kill_after(args, name, folder, record_path, delay, aim)
            state = record_state(store, locations, record_url, old) if killed else "finished before the kill"
            tmp_before = temporaries(folder)
            summary = run_cli(args, name)  # not forced
            tmp_after = temporaries(folder)
            record = stage_record(config, STAGES[name], target, store)
            equal = record is not None and not verify_files(store, locations, record) \
                and checksums(record) == reference[name]
            expected_skip = state in ("old complete", "new complete", "finished before the kill")
            ok = state != "BROKEN" and equal and tmp_after[0] == 0 and summary["skipped"] == expected_skip
            verdict &= ok
            tally[(name, state)] = tally.get((name, state), 0) + 1
            moment = f"{delay:6.2f} s" if aim == "any" else f"{1000 * delay:4.1f} ms into the commit"
            print(f"  {name} #{trial:2d}: kill at {moment:>24s} -> {state:24s} temporaries {tmp_before[0]:2d} "
                  f"({tmp_before[1] / 1e6:6.1f} MB) -> {tmp_after[0]} after the next run, which "
                  f"{'skipped' if summary['skipped'] else 'recomputed'}; outputs "
                  f"{'= reference' if equal else 'DIFFER from the reference'}{'' if ok else '  <-- FAIL'}")

    print("\nstates found:")
    for (name, state), count in sorted(tally.items()):
        print(f"  {name:9s} {state:24s} {count}")
    if verdict:
        print("verdict: PASS: every kill left no record, the complete old or the complete new state; the next run "
              "skipped or recomputed accordingly, removed the temporaries and gave the reference bytes")
    else:
        print("verdict: FAIL (see the lines marked FAIL)")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
