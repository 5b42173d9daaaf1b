"""Scheduler soak at the production size (issue 16, item 5): all 138 PU DAGs of the production
layout, with their real tile counts, run at once on the Celery + PostgreSQL deployment, the stages
no-ops through configuration (``drills.noop_stages``: plan_tiles plans each PU's tiles for real,
every other stage task returns at once; the DAG files are the production ones, unchanged).

What is measured is Airflow's own work at full size (the scheduler over 138 active runs and some
66,000 task instances, the broker, the workers starting task processes, the API server answering
the dashboard), for ``--minutes`` of sustained load:

* scheduling overhead per task: scheduled -> queued and queued -> running (median, p90), and the
  deployment's CPU seconds per finished task, by component;
* tasks finished per second over the soak, and over its second half (the steady state, once the
  plans are made and the tile tasks expanded);
* the metadata database's size (``pg_database_size``) at the start and the end, per task instance;
* the response time of the dashboard's API (``/clcplus/api/state/production/{year}``, the call its
  page repeats every few seconds, aggregating every PU's and tile's state) and of Airflow's own
  DAG-run list, sampled every ``--every`` seconds during the soak;
* how many of the production's task instances finished, and at the measured steady rate how long
  the rest would take on this deployment.

A 2-core machine cannot run 66,000 task processes in a test's time (each no-op task still starts
an Airflow task process), hence a soak of fixed length, not a run to the end. The deployment is
started on its own PostgreSQL database and Redis key prefix and stopped (database dropped) at the end.

    .venv/bin/python scripts/soak_scheduler.py                  # 20 minutes, 104 worker slots
    .venv/bin/python scripts/soak_scheduler.py --minutes 10 --baseline airflow-default   # and a second soak, Airflow's 16 per loop
    .venv/bin/python scripts/soak_scheduler.py --minutes 5 --pus PU004 PU010 --env AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY=16
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere

from bench_scheduler import (LOGICAL_DATE, MemoryWatch, _spread, bench_config, cpu_seconds,  # noqa: E402
                             deployment_env, own_backends)

from clcplus_ops import distributed  # noqa: E402
from clcplus_ops.embedded import AirflowApi, AirflowServices  # noqa: E402

YEAR = 2025  # the reference year of LOGICAL_DATE


class Database:
    """Read-only questions to the deployment's metadata database (plain SQL: cheaper than paging
    66,000 task instances through the REST API while it is under load)."""

    def __init__(self, backends: distributed.Backends):
        import psycopg2

        self._connection = psycopg2.connect(f"{backends.postgres}/{backends.database}")
        self._connection.autocommit = True

    def rows(self, sql: str, *args):
        with self._connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()

    def size_bytes(self) -> int:
        return self.rows("SELECT pg_database_size(current_database())")[0][0]

    def states(self) -> dict[str, int]:
        return {state or "none": n for state, n in self.rows("SELECT state, count(*) FROM task_instance GROUP BY state")}

    def finished_between(self, begin: float, end: float) -> int:
        return self.rows("SELECT count(*) FROM task_instance WHERE state = 'success' AND end_date >= to_timestamp(%s) "
                        "AND end_date < to_timestamp(%s)", begin, end)[0][0]

    def overheads(self, begin: float) -> dict:
        """Scheduled -> queued, queued -> running and the run time of the successful task instances
        that started after ``begin`` (epoch seconds), tile tasks and PU tasks apart."""
        rows = self.rows(
            "SELECT map_index >= 0, EXTRACT(EPOCH FROM queued_dttm - scheduled_dttm), "
            "EXTRACT(EPOCH FROM start_date - queued_dttm), EXTRACT(EPOCH FROM end_date - start_date) "
            "FROM task_instance WHERE state = 'success' AND start_date >= to_timestamp(%s)", begin)
        out = {}
        for mapped, label in ((True, "tile tasks"), (False, "PU tasks")):
            chosen = [r for r in rows if r[0] is mapped]
            out[label] = {name: _spread([round(float(r[i]), 3) for r in chosen if r[i] is not None])
                          for i, name in ((1, "scheduled_to_queued_s"), (2, "queued_to_running_s"), (3, "running_s"))}
        return out

    def close(self) -> None:
        self._connection.close()


def timed_get(api: AirflowApi, path: str) -> float | None:
    started = time.perf_counter()
    try:
        api.get(path)
    except (OSError, RuntimeError) as error:
        print(f"  {path}: {error}", flush=True)
        return None
    return time.perf_counter() - started


def soak(home: Path, pus: list[str] | None, minutes: float, slots: int, every_s: float,
         extra_env: dict[str, str] | None = None) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    config_path = bench_config(home)
    from clcplus_ops.config import load_config
    from clcplus_ops.geo.tile_index import tile_index

    config = load_config(config_path)
    tiles = tile_index(config.layout_path("production"), config.grid)
    pus = pus or sorted(tiles)
    unknown = sorted(set(pus) - set(tiles))
    if unknown:
        raise SystemExit(f"soak_scheduler: no such PU in the production layout: {', '.join(unknown)}")
    pu_tiles = sum(len(tiles[pu]) for pu in pus)
    print(f"soak_scheduler: {len(pus)} PUs, {pu_tiles:,} PU-tiles, {slots} worker slots, {minutes:g} minutes; "
          f"folder {home}", flush=True)

    backends = own_backends("soak")
    env = distributed.celery_env(deployment_env(home, config_path, slots), backends)
    env.update(extra_env or {})
    airflow = str(Path(sys.executable).with_name("airflow"))
    services = AirflowServices(env, airflow, home / "services",
                               distributed.components(cpu_concurrency=slots, gpu_concurrency=1))
    database = None
    samples: list[dict] = []
    try:
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        services.start(timeout_s=300)
        sessions = services.pids()
        api = AirflowApi(services.url, "admin", services.password)
        database = Database(backends)
        dag_ids = [f"clcplus_pu_{pu}" for pu in pus]
        parse_started = time.perf_counter()
        api.wait_for_dags(dag_ids, timeout_s=900)
        parsed_s = time.perf_counter() - parse_started
        size_before = database.size_bytes()
        print(f"  {len(dag_ids)} DAGs parsed in {parsed_s:.0f} s after the start; database {size_before / 2**20:.0f} MiB",
              flush=True)

        with MemoryWatch(sessions.values(), every_s=10) as memory:
            cpu_before = cpu_seconds(sessions)
            begin = time.time()
            for dag_id in dag_ids:
                api.trigger(dag_id, LOGICAL_DATE, {})
            triggered_s = time.time() - begin
            print(f"  {len(dag_ids)} runs triggered in {triggered_s:.0f} s", flush=True)
            deadline = begin + 60 * minutes
            while time.time() < deadline:
                sample = {"t": round(time.time() - begin),
                          "dashboard_state_s": timed_get(api, f"/clcplus/api/state/production/{YEAR}"),
                          "dag_runs_s": timed_get(api, "/api/v2/dags/~/dagRuns?limit=100&state=running")}
                sample.update(states=database.states(), db_mib=round(database.size_bytes() / 2**20, 1))
                samples.append(sample)
                done = sample["states"].get("success", 0)
                state_s = sample["dashboard_state_s"]
                print(f"  t={sample['t']:5d} s: {sum(sample['states'].values()):6,} task instances, {done:6,} succeeded, "
                      f"{sample['states'].get('running', 0) + sample['states'].get('queued', 0):4d} queued or running; "
                      f"dashboard {state_s if state_s is None else round(state_s, 2)} s; database {sample['db_mib']} MiB",
                      flush=True)
                time.sleep(max(0.0, min(every_s, deadline - time.time())))
            end = time.time()
            cpu = {name: used - cpu_before[name] for name, used in cpu_seconds(sessions).items()}

        states = database.states()
        total_tis = sum(states.values())
        succeeded = database.finished_between(begin, end)
        half = database.finished_between(begin + (end - begin) / 2, end)
        steady_rate = half / ((end - begin) / 2)
        size_after = database.size_bytes()
        overheads = database.overheads(begin)
        # Task instances the production has once every PU's tiles are expanded, from the DAG's
        # own tasks (every PU DAG has the same): one per tile of each task of the mapped "tile"
        # group, one of every other (a product tile's group counted once).
        task_ids = [t["task_id"] for t in api.get(f"/api/v2/dags/{dag_ids[0]}/tasks")["tasks"]]
        per_tile = sum(task_id.startswith("tile.") for task_id in task_ids)
        expected = sum(len(task_ids) - per_tile + per_tile * len(tiles[pu]) for pu in pus)
    finally:
        if database:
            database.close()
        services.stop()
        distributed.drop_database(backends)
        distributed.delete_broker_keys(backends)

    finished_cpu = sum(cpu.values())
    state_times = [s["dashboard_state_s"] for s in samples if s["dashboard_state_s"] is not None]
    run_times = [s["dag_runs_s"] for s in samples if s["dag_runs_s"] is not None]
    figures = {
        "pus": len(pus), "pu_tiles": pu_tiles, "slots": slots, "minutes": round((end - begin) / 60, 1),
        "dags_parsed_s": round(parsed_s), "trigger_s": round(triggered_s),
        "task_instances_created": total_tis, "task_instances_expected": expected, "states_at_end": states,
        "succeeded": succeeded, "tasks_per_s": round(succeeded / (end - begin), 2),
        "tasks_per_s_second_half": round(steady_rate, 2),
        "overheads": overheads,
        "cpu_s_by_component": {name: round(used) for name, used in cpu.items()},
        "cpu_s_per_task": round(finished_cpu / max(1, succeeded), 2),
        "database_mib": {"before": round(size_before / 2**20, 1), "after": round(size_after / 2**20, 1),
                         "kib_per_task_instance": round((size_after - size_before) / 1024 / max(1, total_tis), 2)},
        "dashboard_state_s": _spread([round(t, 3) for t in state_times]),
        "dag_runs_list_s": _spread([round(t, 3) for t in run_times]),
        "api_failures": sum(s["dashboard_state_s"] is None for s in samples) + sum(s["dag_runs_s"] is None for s in samples),
        "peak_pss_gb": round(memory.peak_bytes / 2**30, 1),
        "hours_for_the_rest": round((expected - states.get("success", 0)) / steady_rate / 3600, 2)
        if steady_rate else None,
    }
    (home / "samples.json").write_text(json.dumps(samples, indent=1))
    (home / "figures.json").write_text(json.dumps(figures, indent=1))
    left = distributed.session_processes(sessions.values())
    if left:
        raise SystemExit(f"soak_scheduler: processes {left} of the deployment outlived its stop")
    return figures


def report(f: dict) -> None:
    tile, pu = f["overheads"]["tile tasks"], f["overheads"]["PU tasks"]
    print("\n== scheduler soak: production layout, Celery + PostgreSQL + Redis, no-op stages ==")
    print(f"{f['pus']} PU DAGs ({f['pu_tiles']:,} PU-tiles) active at once for {f['minutes']} min, {f['slots']} worker slots; "
          f"DAGs parsed {f['dags_parsed_s']} s after the start, {f['pus']} runs triggered in {f['trigger_s']} s")
    print(f"task instances: {f['task_instances_created']:,} created of {f['task_instances_expected']:,} "
          f"the production has; {f['succeeded']:,} finished in the soak; states at the end {f['states_at_end']}")
    print(f"throughput: {f['tasks_per_s']} tasks/s over the soak, {f['tasks_per_s_second_half']} tasks/s in its second half; "
          f"the rest at that rate: {f['hours_for_the_rest']} h")
    for label, o in (("tile tasks", tile), ("PU tasks", pu)):
        print(f"overhead of {label} ({o['queued_to_running_s']['n']:,}): scheduled->queued median "
              f"{o['scheduled_to_queued_s']['median']} s (p90 {o['scheduled_to_queued_s']['p90']}), queued->running median "
              f"{o['queued_to_running_s']['median']} s (p90 {o['queued_to_running_s']['p90']}), run median "
              f"{o['running_s']['median']} s")
    print(f"deployment CPU per finished task: {f['cpu_s_per_task']} s; by component {f['cpu_s_by_component']}; "
          f"peak PSS {f['peak_pss_gb']} GB")
    d = f["database_mib"]
    print(f"metadata database: {d['before']} MiB before, {d['after']} MiB after ({d['kib_per_task_instance']} KiB per "
          f"task instance)")
    s, r = f["dashboard_state_s"], f["dag_runs_list_s"]
    print(f"dashboard API /clcplus/api/state/production/{YEAR} ({s['n']} calls): median {s['median']} s, p90 {s['p90']} s, "
          f"max {s['max']} s; Airflow's running DAG-run list: median {r['median']} s, max {r['max']} s; "
          f"{f['api_failures']} failed calls")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20, help="length of the soak (default %(default)s)")
    parser.add_argument("--pus", nargs="+", default=None, help="only these PUs (default: all 138)")
    parser.add_argument("--slots", type=int, default=104, help="the Celery cpu worker's concurrency")
    parser.add_argument("--every", type=float, default=30, help="seconds between samples (default %(default)s)")
    parser.add_argument("--keep", type=Path, default=None, help="the deployment's folder (default: a new temporary one)")
    parser.add_argument("--baseline", choices=["airflow-default", "none"], default="none",
                        help="airflow-default: a second soak of the same length with Airflow's default of 16 task "
                             "instances queued per scheduler loop (the deployment queues up to [core] parallelism)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra environment variable of the deployment (an Airflow setting), repeatable")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    home = args.keep or Path(tempfile.mkdtemp(prefix="clcplus-soak-"))
    extra = dict(item.split("=", 1) for item in args.env)
    figures = soak(home / "deployment", args.pus, args.minutes, args.slots, args.every, extra)
    report(figures)
    if args.baseline == "airflow-default":
        base = soak(home / "baseline", args.pus, args.minutes, args.slots, args.every,
                    {**extra, "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "16"})
        print("\nbaseline: the same deployment with Airflow's default of 16 task instances queued per scheduler loop")
        report(base)
        print(f"\nratio deployment / baseline: tasks per second {figures['tasks_per_s'] / base['tasks_per_s']:.2f} x "
              f"(second halves {figures['tasks_per_s_second_half'] / base['tasks_per_s_second_half']:.2f} x); "
              f"tile tasks' scheduled->queued median "
              f"{_ratio(figures, base, 'scheduled_to_queued_s')}; dashboard API median "
              f"{figures['dashboard_state_s']['median'] / base['dashboard_state_s']['median']:.2f} x")
    print(f"\nsamples and figures: {home}/*/samples.json, {home}/*/figures.json")
    return 0


def _ratio(figures: dict, base: dict, key: str) -> str:
    ours, theirs = (f["overheads"]["tile tasks"][key]["median"] for f in (figures, base))
    return f"{ours / theirs:.2f} x" if ours is not None and theirs else "n/a"


if __name__ == "__main__":
    sys.exit(main())
