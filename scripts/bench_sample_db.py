"""Benchmark: the sample DB at production scale (a million samples per run).

    .venv/bin/python scripts/bench_sample_db.py [--samples 1000000] [--reviews 10000] [--seed 0]

In a temporary folder: writes N seeded random points over Europe as a CSV in EPSG:3035
(x, y, epsg, like the synthetic world's sample file), imports it into a file:// sample DB,
loads it, selects the active points in a polygon (``within``), hashes the active samples,
re-imports the unchanged file (a no-op), applies a review batch of relabels and reloads. Prints
the seconds of each step, the peak RSS of the process after it (resource ru_maxrss, so it only
grows) and the sizes of the CSV and of the batch files.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from clcplus_ops.config import load_config
from clcplus_ops.locations import Locations
from clcplus_ops.model.sample_db import add_revisions, import_samples, load_sample_db
from clcplus_ops.store import Store, as_url


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class Steps:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, str]] = []

    def run(self, name: str, fn, note=lambda result: ""):
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        self.rows.append((name, seconds, peak_rss_mb(), note(result)))
        print(f"{name:<38} {seconds:8.2f} s   peak RSS {self.rows[-1][2]:8.0f} MB   {self.rows[-1][3]}", flush=True)
        return result


def write_csv(path: Path, n: int, seed: int) -> None:
    """N points over Europe (lon -10..30, lat 36..70) as EPSG:3035 metres, labels 1..11."""
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-10, 30, n)
    lat = rng.uniform(36, 70, n)
    x, y = Transformer.from_crs(4326, 3035, always_xy=True).transform(lon, lat)
    pd.DataFrame({
        "sample_id": np.char.add("bench-", np.char.zfill(np.arange(n).astype(str), 7)),
        "x": np.round(x, 2),
        "y": np.round(y, 2),
        "epsg": 3035,
        "label": rng.integers(1, 12, n),
        "polygon_id": np.char.add("poly-", (np.arange(n) // 25).astype(str)),
    }).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--reviews", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    store = Store()
    created = datetime(2025, 1, 1, tzinfo=timezone.utc)
    # Central Europe, about 12 % of the sampled box: an irregular 7-vertex polygon.
    polygon = shapely.Polygon([(5, 45), (12, 44), (19, 47), (20, 52), (14, 55), (7, 54), (4, 50)])

    with tempfile.TemporaryDirectory(prefix="bench-sample-db-") as tmp:
        csv_path = Path(tmp, "samples.csv")
        config = load_config()
        # The sample DB of the configuration, with its samples root in the temporary folder.
        root = Locations(config.model_copy(update={"store": config.store.model_copy(
            update={"samples": as_url(Path(tmp, "samples"))})})).sample_db
        steps = Steps()
        print(f"{args.samples:,} samples, {args.reviews:,} review relabels, seed {args.seed}")
        steps.run("generate CSV (EPSG:3035)", lambda: write_csv(csv_path, args.samples, args.seed),
                  lambda _: f"{csv_path.stat().st_size / 2**20:.1f} MB CSV")
        summary = steps.run("import CSV", lambda: import_samples(store, root, csv_path, created=created),
                            lambda s: f"{s.added:,} added, batch {store.size(s.url) / 2**20:.1f} MB")
        db = steps.run("load", lambda: load_sample_db(store, root), lambda d: f"{len(d):,} samples")
        inside = steps.run("within(polygon)", lambda: db.within(polygon), lambda r: f"{len(r):,} points inside")
        steps.run("content_hash (all active)", db.content_hash, lambda h: h[:16])
        rng = np.random.default_rng(args.seed + 1)
        picked = rng.choice(len(db), size=min(args.reviews, len(db)), replace=False)
        current = db.points.iloc[picked]
        decisions = pd.DataFrame({
            "sample_id": current["sample_id"].to_numpy(object),
            "label": current["label"].to_numpy() % 11 + 1,
            "reason": "expert relabel (benchmark)",
        })
        del db, inside, current  # each of the following steps is a task of its own in production

        again = steps.run("re-import unchanged CSV (no-op)",
                          lambda: import_samples(store, root, csv_path, created=created + timedelta(hours=1)),
                          lambda s: f"{s.unchanged:,} unchanged, batch {s.batch_id}")
        review = steps.run("add_revisions (relabels)", lambda: add_revisions(
            store, root, decisions, author="bench", created=created + timedelta(days=1)),
            lambda r: f"{r.revised:,} revised, batch {store.size(r.url) / 2**10:.0f} KB")
        db = steps.run("reload", lambda: load_sample_db(store, root),
                       lambda d: f"{len(d.revisions):,} revisions in {len(d.batch_ids)} batches")
        assert summary.added == args.samples and review.revised == len(picked) and again.batch_id is None
        relabelled = db.points.iloc[np.sort(picked)]
        assert (relabelled["revision"] == 2).all() and len(db.revisions) == args.samples + len(picked)

        slowest = max(steps.rows, key=lambda r: r[1])
        print(f"slowest step: {slowest[0]} ({slowest[1]:.1f} s); peak RSS {max(r[2] for r in steps.rows):.0f} MB")


if __name__ == "__main__":
    main()
