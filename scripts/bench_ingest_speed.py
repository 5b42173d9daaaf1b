"""Benchmark: the ingest stage's end-to-end time per tile, today's code against a baseline
revision measured in the same run, and whether both write the same bytes.

Tiles, on the synthetic world: ``demo`` (the demo layout's 2.5 km tile 33TUL_r22c37, 250 px plus
the 8 px halo, PU DEMO1), ``500`` and ``2500`` (the production layout's tiles of bench_ingest.py,
PU PU084; 2500 is the 25 km production tile). For each tile and reference year it builds the
world (once, reused), then runs ``define_tile`` and a forced ``ingest`` through the stage runner
in a fresh process, once per code version, each into its own work store:

* ``baseline``: the package ``clcplus_ops`` of ``--baseline-rev`` (``git archive`` into a
  temporary folder put first on PYTHONPATH; its numba kernels are compiled before timing);
* ``current``: the working tree's package.

It prints per tile the process's wall time (start to exit: what a task costs), the stage's own
seconds (its record's ``seconds``), the process's CPU seconds, the peak RSS, the ratios baseline
/ current, and whether the sha256 of every output file of the two stage records are equal.
``--only baseline|current`` runs one version; ``--save`` writes the hashes of the last version
run as JSON and ``--reference`` compares every version's with such a file (outputs saved before
a change; the worlds' paths are in the provenance, so keep the same ``--root``).

    .venv/bin/python scripts/bench_ingest_speed.py [--tiles demo 500 2500] [--years 2023 2025]
        [--baseline-rev REV] [--root /tmp/clcplus-bench-speed] [--only current --reference hashes.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from clcplus_ops.estimate import DEFAULT_RATES, Rate, record_rate
from clcplus_ops.geo.tiles import tile_from_id
from clcplus_ops.locations import static_catalog_template

REPO = Path(__file__).resolve().parents[1]
# The revision before the ingest speed-up (the baseline the 137.7 s per tile refers to).
BASELINE_REV = "2280c0a65b812cf4838005fa00652c74582c2ac7"
HALO_PX = 8
# name -> (layout, PU, tile id, tile size in m)
TILES = {
    "demo": ("demo", "DEMO1", "33TUL_r22c37", 2_500),
    "500": ("production", "PU084", "33TUL_r11c17", 5_000),
    "2500": ("production", "PU084", "33TUL_r2c3", 25_000),
}


def write_config(root: Path, name: str, work: Path) -> Path:
    """A configuration reading the tile's synthetic world (under ``root``) and writing to ``work``."""
    layout, _, tile_id, tile_m = TILES[name]
    xmin, ymin, xmax, ymax = tile_from_id(tile_id, tile_m).bounds
    pad = HALO_PX * 10
    synthetic = (root / f"world_{name}").as_uri()
    grid = {"tile_size_m": tile_m, "halo_px": HALO_PX}
    data = {
        "store": {part: (work / part).as_uri() for part in ("work", "models", "samples", "products")},
        "synthetic": {"root": synthetic, "bounds": [xmin - pad, ymin - pad, xmax + pad, ymax + pad],
                      "epsg": 32633, "n_samples": 60},
        "sentinel2": {"static_catalog": static_catalog_template(synthetic)},
    }
    if layout == "demo":
        data["demo"] = {"grid": {**grid, "pu_buffer_m": 1000}}
    else:
        data["grid"] = grid
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# A small launcher measures the command: on Linux a child's ru_maxrss includes the RSS of the
# process that exec'd it, so the (large) benchmark process must not be that process.
_MEASURE = """
import json, os, subprocess, sys, time
t = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=sys.stderr)  # stdout carries the figures
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - t, "maxrss_kib": usage.ru_maxrss,
                  "cpu": usage.ru_utime + usage.ru_stime}))
"""

# The measured child: define_tile, then a forced ingest, through the stage runner; the record's
# outputs and details go to the file named last.
_INGEST = """
import json, logging, sys
import clcplus_ops
from clcplus_ops.config import load_config
from clcplus_ops.plan import DEFINE_TILE
from clcplus_ops.runner import run_stage, stage_record
from clcplus_ops.sentinel2.ingest import INGEST
from clcplus_ops.stage import Target
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
config = load_config(sys.argv[1])
target = Target(sys.argv[2], int(sys.argv[4]), sys.argv[3], sys.argv[5])
run_stage(DEFINE_TILE, config, target)
outputs = run_stage(INGEST, config, target, force=True)["outputs"]
with open(sys.argv[6], "w") as f:
    json.dump({**stage_record(config, INGEST, target).details, "outputs": outputs, "code": clcplus_ops.__file__}, f,
              default=str)
"""


def code_env(package_root: Path) -> dict:
    """The environment of a child importing ``clcplus_ops`` from ``package_root``."""
    return {**os.environ, "PYTHONPATH": str(package_root)}


def run_measured(args: list[str], env: dict, cwd: Path) -> dict:
    launcher = subprocess.run([sys.executable, "-c", _MEASURE, *args], stdout=subprocess.PIPE, text=True,
                              check=True, env=env, cwd=cwd)
    result = json.loads(launcher.stdout.strip().splitlines()[-1])
    if result["rc"]:
        raise subprocess.CalledProcessError(result["rc"], args)
    return {"wall": result["wall"], "cpu": result["cpu"], "peak_gib": result["maxrss_kib"] / 2**20}


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ingest_once(root: Path, name: str, year: int, code: str, package_root: Path, cwd: Path) -> dict:
    layout, pu, tile_id, _ = TILES[name]
    work = root / f"work_{name}_{year}_{code}"
    config = write_config(root, name, work)
    result_file = work / "result.json"
    measured = run_measured([sys.executable, "-c", _INGEST, str(config), layout, pu, str(year), tile_id,
                             str(result_file)], code_env(package_root), cwd)
    result = json.loads(result_file.read_text())
    if not Path(result["code"]).is_relative_to(package_root):
        raise RuntimeError(f"the {code} run imported {result['code']}, not the package under {package_root}")
    hashes = {key: _output_hash(key, url.removeprefix("file://")) for key, url in sorted(result["outputs"].items())}
    sizes = {key: Path(url.removeprefix("file://")).stat().st_size for key, url in result["outputs"].items()}
    return {**measured, "seconds": result["seconds"], "hashes": hashes, "bytes": sum(sizes.values()),
            "files": len(sizes), "reads": result.get("reads") or 0,
            "details": {k: result.get(k) for k in ("dates", "reads", "read_s", "compute_s", "write_s")}}


def _output_hash(key: str, path: str) -> str:
    """The sha256 of an output; of the provenance without its ``pu_id``: a tile's time series are
    shared by the PUs covering it since they are made once per tile (older revisions named the
    PU that asked)."""
    if key != "provenance":
        return sha256(path)
    provenance = json.loads(Path(path).read_text())
    provenance.pop("pu_id", None)
    return hashlib.sha256(json.dumps(provenance, sort_keys=True).encode()).hexdigest()


def baseline_package(rev: str, into: Path) -> Path:
    """``clcplus_ops`` of ``rev`` under ``into``, its numba kernels compiled (cached there)."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "clcplus_ops"], check=True,
                             stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "clcplus_ops.jit"], env=code_env(into), cwd=into.parent / "run", check=True,
                   stdout=subprocess.DEVNULL)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/clcplus-bench-speed")
    parser.add_argument("--tiles", nargs="+", default=["demo", "500", "2500"], choices=sorted(TILES))
    parser.add_argument("--years", type=int, nargs="+", default=[2025])
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--only", choices=["baseline", "current"], help="run this code version alone")
    parser.add_argument("--save", help="write the output hashes (of the last code version run) to this JSON file")
    parser.add_argument("--reference", help="compare the output hashes of the code versions with this JSON file")
    parser.add_argument("--rates", type=Path, default=DEFAULT_RATES,
                        help="the rates file `clcplus estimate` reads: the current code's rate on the largest tile run "
                             "is recorded there (default %(default)s)")
    args = parser.parse_args()
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    clcplus = str(Path(sys.executable).with_name("clcplus"))
    reference = json.loads(Path(args.reference).read_text()) if args.reference else {}
    saved: dict[str, dict] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="clcplus-baseline-") as tmp:
        # Children run in an empty folder: `python -c` puts its working folder first on sys.path.
        tmp = Path(tmp) / "run"
        tmp.mkdir()
        codes = {}
        if args.only in (None, "baseline"):
            print(f"baseline: clcplus_ops of {args.baseline_rev}", flush=True)
            codes["baseline"] = baseline_package(args.baseline_rev, tmp.parent / "baseline")
        if args.only in (None, "current"):
            subprocess.run([sys.executable, "-m", "clcplus_ops.jit"], env=code_env(REPO), cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            codes["current"] = REPO
        for name in args.tiles:
            for year in args.years:
                config = write_config(root, name, root / f"work_{name}_{year}_world")
                subprocess.run([clcplus, "--config", str(config), "synthetic", "build", str(year)], check=True,
                               stdout=subprocess.DEVNULL, env=code_env(REPO), cwd=tmp)
                runs = {code: ingest_once(root, name, year, code, package, tmp) for code, package in codes.items()}
                key = f"{name}/{year}"
                last = list(runs.values())[-1]
                saved[key] = last["hashes"]
                row = {"tile": name, "year": year, **runs, "last": last}
                if len(runs) == 2:
                    row["identical"] = runs["baseline"]["hashes"] == runs["current"]["hashes"]
                if key in reference:
                    row["as_reference"] = all(reference[key] == run["hashes"] for run in runs.values())
                rows.append(row)
                line = "; ".join(f"{code} {run['wall']:.1f} s (cpu {run['cpu']:.1f} s, stage {run['seconds']:.1f} s, peak {run['peak_gib']:.2f} GiB, "
                                 f"{run['details']})" for code, run in runs.items())
                print(f"{key}: {line}; outputs identical: {row.get('identical', '-')}; "
                      f"as reference: {row.get('as_reference', '-')}", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(saved, indent=1))
    largest = max((row for row in rows if "current" in row), key=lambda row: TILES[row["tile"]][3], default=None)
    if largest is not None:
        run, px = largest["current"], TILES[largest["tile"]][3] // 10 + 2 * HALO_PX
        mpx = px * px / 1e6
        record_rate(Rate("ingest", cpu_seconds_per_mpx=run["cpu"] / mpx, bytes_per_mpx=run["bytes"] / mpx,
                         files_per_unit=run["files"], inputs_per_unit=run["reads"],
                         measured_by=f"scripts/bench_ingest_speed.py --tiles {largest['tile']}",
                         detail=f"tile {TILES[largest['tile']][2]} ({px} px a side, {largest['year']}): "
                                f"{run['wall']:.1f} s wall, {run['cpu']:.1f} CPU s, {run['details']['dates']} dates, "
                                f"{run['reads']} window reads"), args.rates)
        print(f"rate recorded in {args.rates} (clcplus estimate): ingest {run['cpu'] / mpx:.2f} CPU s/Mpx")

    print("\ntile  year  px/side  baseline s (stage, cpu)  current s (stage, cpu)  ratio  stage  cpu  "
          "peak GiB base/cur  identical  as reference")
    for row in rows:
        px = (TILES[row["tile"]][3] // 10) + 2 * HALO_PX
        cur, base = row["last"], row.get("baseline") if "current" in row else None

        def figures(run: dict) -> str:
            return f"{run['wall']:>7.1f} ({run['seconds']:>6.1f}, {run['cpu']:>6.1f})"

        ratio = (f"{base['wall'] / cur['wall']:>5.2f}  {base['seconds'] / cur['seconds']:>5.2f}  "
                 f"{base['cpu'] / cur['cpu']:>4.2f}") if base else f"{'-':>5}  {'-':>5}  {'-':>4}"
        peaks = f"{base['peak_gib']:.2f}/{cur['peak_gib']:.2f}" if base else f"{cur['peak_gib']:.2f}"
        print(f"{row['tile']:<5} {row['year']}  {px:>7}  {figures(base) if base else '-':>23}  {figures(cur):>22}  "
              f"{ratio}  {peaks:>17}  {str(row.get('identical', '-')):>9}  {str(row.get('as_reference', '-')):>12}")
    print(f"(cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at the end; wall = the task process "
          "from start to exit, stage = the record's seconds, cpu = the process's user + system seconds)")


if __name__ == "__main__":
    main()
