"""Scheduler overhead per mapped tile task on the Celery deployment (issue 15's target: queued ->
running, median <= 1 s with 100 tiles in flight), with a baseline measured in the same run: the
same deployment with the task processes at the workers' own priority, as Airflow leaves them
(``--baseline priority``, the default; see ``clcplus_airflow.celery_settings.TASK_NICENESS``), or the embedded
deployment (``--baseline embedded``: LocalExecutor, SQLite).

A production PU of the 138-PU layout runs its production DAG, as the deployments make it, under
``drills.noop_stages``: plan_tiles plans the PU's tiles for real, every other stage task returns at
once, so what is measured is Airflow's own work (scheduling, queueing, the broker, the workers
starting the task processes), not the chain's. PU004 has 103 tiles of 25 km (the smallest PU on
the mainland): its four tile stages make 412 mapped task instances, and the first stage's 103
become ready at once. Each deployment is started here (the Celery one on its own PostgreSQL
database and Redis key prefix, see ``clcplus_ops.distributed``) and stopped by process id.

Figures, per deployment, over the PU's mapped tile task instances (REST API: ``scheduled_when``,
``queued_when``, ``start_date``, ``end_date``): median and 90th percentile of queued -> running and
scheduled -> queued, the task's own run time, the most tile tasks in flight (queued or running)
at one moment, tile tasks per second over the run, and the peak memory (PSS) of the deployment's
processes, task processes included.

    .venv/bin/python scripts/bench_scheduler.py                       # PU004, all 103 tiles, both
    .venv/bin/python scripts/bench_scheduler.py --tiles 20 --baseline none
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere

from clcplus_ops import distributed  # noqa: E402
from clcplus_ops.embedded import (COMPONENTS, AirflowApi, AirflowServices, airflow_env, free_port,  # noqa: E402
                                  server_env, write_embedded_config)

LOGICAL_DATE = "2026-04-01T00:00:00Z"  # reference year 2025


# --------------------------------------------------------------------------------------------
# The figures, from a run's task instances (as the REST API returns them)


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _spread(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0, "median": None, "p90": None, "max": None}
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return {"n": len(values), "median": statistics.median(values), "p90": p90, "max": values[-1]}


def overhead(task_instances: list[dict], prefix: str = "tile.") -> dict:
    """Scheduling figures of the finished mapped instances of the tasks named ``prefix...``."""
    tis = [ti for ti in task_instances if ti["task_id"].startswith(prefix) and ti["map_index"] >= 0
           and ti["state"] == "success"]
    times = [{k: _time(ti[k]) for k in ("scheduled_when", "queued_when", "start_date", "end_date")} for ti in tis]
    seconds = lambda a, b: [(t[b] - t[a]).total_seconds() for t in times if t[a] and t[b]]  # noqa: E731
    events = sorted([(t["queued_when"], 1) for t in times if t["queued_when"]] +
                    [(t["end_date"], -1) for t in times if t["end_date"]], key=lambda e: (e[0], e[1]))
    in_flight = most = 0
    for _, step in events:
        in_flight += step
        most = max(most, in_flight)
    begin = min((t["scheduled_when"] or t["queued_when"] for t in times), default=None)
    end = max((t["end_date"] for t in times if t["end_date"]), default=None)
    span = (end - begin).total_seconds() if begin and end else None
    return {"tasks": len(tis), "queued_to_running": _spread(seconds("queued_when", "start_date")),
            "scheduled_to_queued": _spread(seconds("scheduled_when", "queued_when")),
            "running": _spread(seconds("start_date", "end_date")), "max_in_flight": most,
            "tasks_per_s": len(tis) / span if span else None}


# --------------------------------------------------------------------------------------------
# One deployment, one run


def bench_config(home: Path, noop: bool = True) -> Path:
    """The production layout's DAGs under ``drills.noop_stages``, every task on the default
    queue (``cpu``) and pool, no retries; the wait for the neighbours' mosaics gives up at once."""
    return write_embedded_config(home, home / "config.yaml", {
        "airflow": {"layouts": ["production"], "scheduled_runs": False, "retries": 0},
        "drills": {"noop_stages": noop},
        "blending": {"neighbour_timeout_minutes": 0.02, "neighbour_poll_seconds": 1},
    })


def cpu_seconds(sessions: dict[str, int]) -> dict[str, float]:
    """CPU time each component's session used so far, with the children's that ended (a task's
    process is reaped by its worker's pool process)."""
    import psutil

    out = {}
    for name, session in sessions.items():
        out[name] = 0.0
        for pid in distributed.session_processes([session]):
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            out[name] += times.user + times.system + times.children_user + times.children_system
    return out


class MemoryWatch:
    """The summed PSS of the processes in the given sessions, sampled every ``every_s``."""

    def __init__(self, sessions, every_s: float = 2.0):
        self.sessions, self.every_s, self.peak_bytes = list(sessions), every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for pid in distributed.session_processes(self.sessions):
                try:
                    total += psutil.Process(pid).memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.every_s)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _patiently(call, otherwise, tries: int = 1):
    """``call()``; on a time-out or a server error (an API server swamped by a hundred task
    processes on two cores) ``otherwise`` after ``tries`` attempts, or the error when that is None."""
    for attempt in range(tries):
        try:
            return call()
        except (OSError, RuntimeError):
            if attempt == tries - 1 and otherwise is None:
                raise
            time.sleep(5)
    return otherwise


def deployment_env(home: Path, config_path: Path, slots: int) -> dict[str, str]:
    """The environment of a deployment serving on a free port of 127.0.0.1 with ``slots`` of
    parallelism. The DAG file does not change during a run: the DAG processor parses its 138
    production DAGs once (several seconds of CPU, every 30 s by default, on two cores)."""
    env = server_env(airflow_env(home, REPO, config_path), free_port(), parallelism=slots)
    env.update(AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="3600",
               AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT="600")
    return env


def own_backends(kind: str) -> distributed.Backends:
    """A PostgreSQL database and a Redis key prefix of the deployment's own, the database made."""
    unique = uuid.uuid4().hex[:12]
    backends = distributed.Backends(database=f"clcplus_{kind}_{unique}", key_prefix=f"clcplus-{kind}-{unique}:")
    reason = backends.reachable()
    if reason:
        raise SystemExit(f"{Path(sys.argv[0]).stem}: {reason}")
    distributed.create_database(backends)
    return backends


def run_pu(kind: str, home: Path, pu_id: str, tiles: int | None, slots: int, timeout_s: float = 1800,
           log=print, extra_env: dict[str, str] | None = None, label: str | None = None) -> dict:
    """Start the deployment ``kind`` (``celery`` or ``embedded``, with ``extra_env``) under
    ``home``, run ``pu_id``'s DAG (its first ``tiles`` tiles, all when None) to the end, stop it;
    the figures."""
    import subprocess

    home.mkdir(parents=True, exist_ok=True)
    config_path = bench_config(home)
    env = deployment_env(home, config_path, slots)
    backends = None
    if kind == "celery":
        backends = own_backends("bench")
        env = distributed.celery_env(env, backends)
        components = distributed.components(cpu_concurrency=slots, gpu_concurrency=1)
    else:
        components = list(COMPONENTS)
    env.update(extra_env or {})
    airflow = str(Path(sys.executable).with_name("airflow"))
    services = AirflowServices(env, airflow, home / "services", components)
    try:
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        services.start(timeout_s=300)
        sessions = services.pids()
        api = AirflowApi(services.url, "admin", services.password)
        dag_id = f"clcplus_pu_{pu_id}"
        api.wait_for_dags([dag_id], timeout_s=600)
        conf = {}
        if tiles is not None:
            from clcplus_ops.config import load_config
            from clcplus_ops.geo.tile_index import tile_index

            config = load_config(config_path)
            conf["only_tiles"] = tile_index(config.layout_path("production"), config.grid)[pu_id][:tiles]
        with MemoryWatch(sessions.values()) as memory:
            cpu_before = cpu_seconds(sessions)
            started = time.perf_counter()
            run_id = api.trigger(dag_id, LOGICAL_DATE, conf)
            state = "queued"
            while state not in ("success", "failed"):
                if time.perf_counter() - started > timeout_s:
                    raise SystemExit(f"bench_scheduler: the {kind} run of {pu_id} still {state} after "
                                     f"{timeout_s:.0f} s; see {home / 'services'}")
                time.sleep(5)
                state = _patiently(lambda: api.dag_run(dag_id, run_id)["state"], state)
            seconds = time.perf_counter() - started
            cpu = {name: used - cpu_before[name] for name, used in cpu_seconds(sessions).items()}
        tis = _patiently(lambda: api.task_instances(dag_id, run_id), None, tries=10)
        if state != "success":
            failed = sorted({ti["task_id"] for ti in tis if ti["state"] in ("failed", "upstream_failed")})
            raise SystemExit(f"bench_scheduler: the {kind} run of {pu_id} {state} ({', '.join(failed)}); "
                             f"see {home / 'services'}")
    finally:
        services.stop()
        if backends:
            distributed.drop_database(backends)
            distributed.delete_broker_keys(backends)
    left = distributed.session_processes(sessions.values())
    if left:
        raise SystemExit(f"bench_scheduler: processes {left} of the {kind} deployment outlived its stop")
    figures = overhead(tis)
    # Every task instance's times, for a closer look (the deployment's folder stays with --keep).
    (home / "task_instances.json").write_text(json.dumps(tis, indent=1))
    figures.update(run_s=seconds, peak_pss_gb=memory.peak_bytes / 2**30, slots=slots, load=os.getloadavg()[0],
                   cpu_per_task_s=sum(cpu.values()) / max(1, figures["tasks"]),
                   cpu_s={name: round(used) for name, used in cpu.items()})
    log(f"{label or kind}: {describe(figures)}")
    return figures


def describe(f: dict) -> str:
    q, s, r = f["queued_to_running"], f["scheduled_to_queued"], f["running"]
    return (f"{f['tasks']} tile tasks, at most {f['max_in_flight']} in flight, {f['slots']} worker slots; "
            f"queued->running median {q['median']:.2f} s, p90 {q['p90']:.2f} s; "
            f"scheduled->queued median {s['median']:.2f} s, p90 {s['p90']:.2f} s; "
            f"task run median {r['median']:.2f} s; {f['tasks_per_s']:.2f} tile tasks/s; "
            f"run {f['run_s']:.0f} s; the deployment's CPU per tile task {f['cpu_per_task_s']:.2f} s; "
            f"peak PSS {f['peak_pss_gb']:.1f} GB; load average {f['load']:.1f} at the end; CPU s by component "
            f"{f['cpu_s']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pu", default="PU004", help="a PU of the production layout (default PU004, 103 tiles)")
    parser.add_argument("--tiles", type=int, default=None, help="only the PU's first N tiles (default: all)")
    parser.add_argument("--slots", type=int, default=104, help="the Celery cpu worker's concurrency")
    # The embedded deployment's task processes import the library each (its LocalExecutor workers
    # preload nothing): some 300 MB each, so 100 of them do not fit this machine's memory.
    parser.add_argument("--baseline-slots", type=int, default=16, help="the embedded deployment's parallelism")
    parser.add_argument("--baseline", choices=["priority", "embedded", "none"], default="priority",
                        help="priority (default): the same Celery deployment with the task processes at the "
                             "workers' own priority (CLCPLUS_TASK_NICENESS=0, as Airflow leaves them); "
                             "embedded: the embedded deployment (LocalExecutor, SQLite); none")
    parser.add_argument("--keep", type=Path, default=None, help="keep the deployments' folders here")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    args = parser.parse_args(argv)
    # Stopped (timeout, kill): stop the deployment's processes and drop its database on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    root = args.keep or Path(tempfile.mkdtemp(prefix="clcplus-bench-scheduler-"))
    print(f"bench_scheduler: {args.pu}, {'all' if args.tiles is None else args.tiles} tiles, no-op stages; "
          f"folders under {root}", flush=True)
    results = {"celery": run_pu("celery", root / "celery", args.pu, args.tiles, args.slots, args.timeout)}
    if args.baseline == "priority":
        results[args.baseline] = run_pu("celery", root / "celery-priority", args.pu, args.tiles, args.slots,
                                        args.timeout, extra_env={"CLCPLUS_TASK_NICENESS": "0"},
                                        label="celery, task processes at the workers' priority (baseline)")
    elif args.baseline == "embedded":
        results[args.baseline] = run_pu("embedded", root / "embedded", args.pu, args.tiles, args.baseline_slots,
                                        args.timeout, label="embedded, LocalExecutor (baseline)")
    celery = results["celery"]["queued_to_running"]["median"]
    verdict = "meets" if celery <= 1.0 else "misses"
    print(f"target: queued->running median {celery:.2f} s on the Celery deployment with "
          f"{results['celery']['max_in_flight']} tile tasks in flight: {verdict} the target (<= 1 s)")
    if args.baseline != "none":
        base = results[args.baseline]
        print(f"ratio Celery / {args.baseline} baseline: queued->running median "
              f"{celery / base['queued_to_running']['median']:.2f} x, tile tasks per second "
              f"{results['celery']['tasks_per_s'] / base['tasks_per_s']:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
