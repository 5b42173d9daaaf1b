"""kill -9 drill on the real scheduler (issue 15, item 3): while both demo PUs' runs of a
reference year go on in the embedded deployment (scheduler, DAG processor, triggerer, API
server; LocalExecutor), a seeded schedule of 20 moments SIGKILLs the processes that run the
stages (the task runners the executor's workers fork), aimed at reads, writes, commits and
the publication's upload (``clcplus_ops.kill_drill``).

First the same production runs without Airflow into a clean store (its records also give the
stages' durations, the windows of the read and write moments). After each kill the drill store
is audited: every stage record verifies by sha256, no file at an output path differs from the
clean run's, no published object is incomplete. Airflow retries the killed tasks; both runs
must succeed with the clean run's bytes (records' outputs and the published delivery). Last,
no secret of the deployment (admin password, JWT secret, Fernet key, the S3 connection's
secret key) may be in any of its logs.

    .venv/bin/python scripts/drill_kill_worker.py                         # own world and models (made once)
    .venv/bin/python scripts/drill_kill_worker.py --config .demo/config.yaml   # the demo's

The world and the PUs' models of the year are made when the base store lacks them (as the
demo makes them); the drill's and the clean run's stores are made afresh under ``--work``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from clcplus_ops.config import load_config
from clcplus_ops.embedded import assert_no_credentials, deployment_logs, deployment_secrets, write_embedded_config
from clcplus_ops.kill_drill import KillDrill, clean_run, deployment, drill_env, schedule, stage_seconds
from clcplus_ops.locations import Locations
from clcplus_ops.runner import store_for
from clcplus_ops.store_audit import differences, problems, snapshot

REPO = Path(__file__).resolve().parents[1]
LAYOUT, PUS = "demo", ("DEMO2", "DEMO1")  # DEMO1, finishing last in the clean run, makes the product tiles
TILE_TASKS = ("tile.ingest", "tile.classify", "tile.filter")
# (aim, moments, tasks drawn from): 20 moments, every aim covered.
PLAN = (
    ("read", 7, (*TILE_TASKS, "mosaic", "blend", "calibrate", "layers", "product_tile.product_tile")),
    ("write", 6, (*TILE_TASKS, "mosaic", "calibrate", "recode", "layers", "product_tile.product_tile",
                  "product_tile.product_stac")),
    ("commit", 3, TILE_TASKS),
    ("upload", 4, ("product_tile.product_publish",)),
)


def prepare(args) -> tuple[Path, dict[str, str]]:
    """The base configuration (world and models) and each PU's model version of the year."""
    from clcplus_ops import demo
    from clcplus_ops.synthetic import build_world

    path = args.config
    if path is None:
        home = args.work / "base"
        path = write_embedded_config(home, home / "config.yaml", {"calibration": {"previous_productions": 1}})
    config = load_config(path)
    started = time.perf_counter()
    world = build_world(config, args.year)
    models = {m["pu_id"]: m["version"] for m in demo.ensure_models(config, args.year, list(PUS),
                                                                   [world["samples_csv_url"]])}
    print(f"base store {config.store.work.rsplit('/', 1)[0]}: world {args.year} and models {models} ready in "
          f"{time.perf_counter() - started:.0f} s")
    return path, models


def store_config(base: Path, path: Path, root: Path, args) -> Path:
    """The base configuration with fresh work and products roots under ``root``, the demo
    layout's DAGs, retries that outnumber the kills of one task, a short retry delay, and PUs
    that wait for each other's mosaics."""
    data = yaml.safe_load(base.read_text()) or {}
    data.setdefault("store", {}).update(work=(root / "work").as_uri(), products=(root / "products").as_uri())
    data["airflow"] = {**data.get("airflow", {}), "layouts": [LAYOUT], "scheduled_runs": False,
                       "retries": args.kills_per_task + 2, "retry_delay_minutes": 0.02}
    data["blending"] = {**data.get("blending", {}), "neighbour_timeout_minutes": 30, "neighbour_poll_seconds": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="configuration of a store holding the world and models "
                                                    "(default: one made under --work)")
    parser.add_argument("--year", type=int, default=2025)
    parser.add_argument("--tiles", type=int, default=0, help="tiles per PU (default all: the product tiles need "
                                                             "every tile to pass their self-check)")
    parser.add_argument("--seed", type=int, default=20250401)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--kills-per-task", type=int, default=2, help="kills of one task instance at most")
    parser.add_argument("--work", type=Path, default=Path(".bench/drill_kill_worker"))
    args = parser.parse_args()
    args.work = args.work.resolve()
    base, models = prepare(args)
    for folder in ("drill", "clean"):
        shutil.rmtree(args.work / folder, ignore_errors=True)
    drill_path = store_config(base, args.work / "drill" / "config.yaml", args.work / "drill" / "store", args)
    clean_path = store_config(base, args.work / "clean" / "config.yaml", args.work / "clean" / "store", args)
    config, clean = load_config(drill_path).for_layout(LAYOUT), load_config(clean_path).for_layout(LAYOUT)
    only = {}
    if args.tiles:
        from clcplus_ops.geo.tile_index import tile_index

        index = tile_index(config.layout_path(LAYOUT), config.grid)
        only = {pu: index[pu][:args.tiles] for pu in PUS}

    started = time.perf_counter()
    made = clean_run(clean, LAYOUT, args.year, list(PUS), only, models, workers=2)
    reference = snapshot(Locations(clean), store_for(clean))
    print(f"clean run (no Airflow, no kills): {len(reference.records)} stage records, {len(reference.published)} "
          f"published objects (product tiles: {', '.join(f'{c} {fate}' for c, fate in made.items()) or 'none'}) in "
          f"{time.perf_counter() - started:.0f} s")
    # A product tile failing its self-check fails its maker's run in Airflow too (--tiles: most
    # land has no data).
    expected = {"success"} if all(fate == "published" for fate in made.values()) else {"success", "failed"}
    windows = {task: 0.8 * seconds for task, seconds in stage_seconds(clean, LAYOUT).items()}
    moments = schedule(args.seed, PLAN, windows)
    print(f"schedule (seed {args.seed}): " + "; ".join(m.describe() for m in moments))

    home = args.work / "drill"
    env = drill_env(home, REPO, drill_path, args.parallelism)
    env.setdefault("PYTHONWARNINGS", "ignore")
    verdict = True
    # classify's pool when the configuration names one (the demo's: `gpu`, one slot).
    pool = config.inference.airflow_pool
    pools = {} if pool == "default_pool" else {pool: 1}
    with deployment(env, home / "services", [f"clcplus_pu_{pu}" for pu in PUS], pools) as (services, api):
        print(f"embedded Airflow up ({services.url}), LocalExecutor, parallelism {args.parallelism}; triggering "
              f"{', '.join(PUS)} for {args.year} at once")
        runs = {f"clcplus_pu_{pu}": api.trigger(f"clcplus_pu_{pu}", f"{args.year + 1}-04-01T00:00:00Z",
                                                {"model_version": models[pu], "only_tiles": only.get(pu, [])})
                for pu in PUS}

        def report(kill) -> None:
            nonlocal verdict
            found = problems(kill.found, reference) + (["BROKEN record"] if kill.state == "BROKEN" else [])
            verdict &= not found
            print(f"  kill {report.count:2d}: {kill.describe()}"
                  + (f"\n           PARTIAL OR WRONG: {'; '.join(found)}" if found else "; nothing partial"),
                  flush=True)
            report.count += 1

        report.count = 1
        drill = KillDrill(api, services.pids()["scheduler"], runs, moments, config, LAYOUT, args.year,
                          kills_per_instance=args.kills_per_task, on_kill=report)
        result = drill.run(timeout_s=3600)
        tries = Counter(ti["try_number"] for dag_id, run_id in runs.items() for ti in api.task_instances(dag_id, run_id)
                        if ti["state"] == "success")
    final = drill.audit()
    different = differences(final, reference)
    # A publication killed mid-upload leaves its attempt's staging prefix (never at final keys);
    # the next attempt removes it.
    staging = Path(Locations(config).delivery[len("file://"):]) / "_staging"
    stale = [p for p in staging.rglob("*") if p.is_file()] if staging.is_dir() else []
    logs = deployment_logs(env, services.log_dir)
    secrets_of = deployment_secrets(env)
    checked = assert_no_credentials(logs, secrets_of)  # raises, naming file and secret, on a find

    print(f"\nruns: {result.states} after {result.seconds:.0f} s; {len(result.kills)} kills, "
          f"{result.slipped} armed moments whose task ended first (re-armed), {len(result.missed)} never fired"
          + (f" ({'; '.join(m.describe() for m in result.missed)})" if result.missed else ""))
    print(f"successful tries: {dict(sorted(tries.items()))} (try number: task instances)")
    states = Counter((k.moment.aim, k.state) for k in result.kills)
    print("states found: " + ", ".join(f"{aim} -> {state}: {n}" for (aim, state), n in sorted(states.items())))
    print(f"final store: {len(final.records)} records (clean run: {len(reference.records)}), {len(final.published)} "
          f"published objects (clean: {len(reference.published)}), temporaries left {final.temporaries[0]} "
          f"({final.temporaries[1] / 1e6:.1f} MB), {len(stale)} files of killed publications' staging; "
          + ("byte-identical to the clean run" if not different else f"DIFFERS: {'; '.join(different[:10])}"))
    print(f"credentials: none of {len(secrets_of)} secrets ({', '.join(sorted(secrets_of))}) in {checked} log files")
    # Every moment fired, the runs ended as the clean run did with its bytes, and nothing of the
    # killed attempts is left (temporaries, publications' staging).
    verdict &= set(result.states.values()) <= expected and not different and len(result.kills) > 0 \
        and not result.missed and final.temporaries[0] == 0 and not stale
    print("verdict: " + ("PASS" if verdict else "FAIL"))
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
