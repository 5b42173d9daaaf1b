"""kill -9 drill of publishing (issue 15, item 3): ``clcplus run product_publish`` of one product
tile, to a fresh delivery root per trial, gets SIGKILL after a seeded random delay within the
span a whole publication took (measured first). Afterwards every object found at a final key
must be complete (the same bytes as the reference delivery: published objects are never
partial), then a re-run must complete the delivery with exactly the reference bytes. Odd trials
aim at the upload and promotion: their delay counts from the moment the attempt's staging
folder appears, over 80 ms.

    .venv/bin/python scripts/drill_kill_publish.py --config .demo/config.yaml --trials 20

The store must hold the tile's checked delivery (the demo makes it).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from clcplus_ops.store import Store
from clcplus_ops.store_audit import published_objects

CLCPLUS = str(Path(sys.executable).with_name("clcplus"))


def files_under(root: Path) -> dict[str, str]:
    """key -> sha256 of the objects published under ``root`` (staging left out)."""
    return published_objects(Store(), root.as_uri())


def trial_config(args, root: Path, name: str) -> Path:
    data = yaml.safe_load(args.config.read_text()) or {}
    data.setdefault("products", {})["publish_url"] = root.as_uri()
    path = args.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def publish_command(config: Path, args) -> list[str]:
    return [CLCPLUS, "--config", str(config), "run", "product_publish", args.pu, str(args.year), args.tile,
            "--layout", args.layout, "--force"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--pu", default="DEMO1")
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--tile", default="e46n24")
    parser.add_argument("--layout", default="demo")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20250401)
    parser.add_argument("--work", type=Path, default=Path(".bench/drill_publish"))
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    reference_root = args.work / "reference"
    started = time.perf_counter()
    subprocess.run(publish_command(trial_config(args, reference_root, "reference"), args), check=True,
                   capture_output=True)
    span = time.perf_counter() - started
    reference = files_under(reference_root)
    print(f"reference publication: {len(reference)} objects in {span:.2f} s (the process, start-up included)")

    states, broken = Counter(), 0
    for trial in range(args.trials):
        root = args.work / f"trial{trial:02d}"
        config = trial_config(args, root, f"trial{trial:02d}")
        process = subprocess.Popen(publish_command(config, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if trial % 2:
            # Aim at the upload and the promotion (milliseconds): count from the moment the
            # attempt's staging folder appears.
            deadline = time.monotonic() + 2 * span
            while not (root / "_staging").exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            delay = rng.uniform(0.0, 0.08)
        else:
            delay = rng.uniform(0.0, span)
        time.sleep(delay)
        killed = process.poll() is None
        if killed:
            process.kill()
        process.wait()
        found = files_under(root) if root.exists() else {}
        wrong = [key for key, sha in found.items() if reference.get(key) != sha]
        broken += bool(wrong)
        state = ("nothing published" if not found else "complete" if found == reference else
                 f"{len(found)} of {len(reference)} objects, each complete")
        states[state if killed else "finished before the kill"] += 1
        subprocess.run(publish_command(config, args), check=True, capture_output=True)
        again = files_under(root)
        print(f"trial {trial:2d}: kill after {delay:5.3f} s{' of staging' if trial % 2 else ''}: {'killed' if killed else 'done'}; found {state}"
              f"{'; PARTIAL OR WRONG: ' + ', '.join(wrong) if wrong else ''}; re-run "
              f"{'identical' if again == reference else 'DIFFERENT'}")
        broken += again != reference
    print(f"{args.trials} trials: {dict(states)}; partial or wrong objects or re-runs: {broken}")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
