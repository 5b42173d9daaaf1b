"""kill -9 of Airflow task processes while a production runs on the real scheduler.

While PU runs go on (the embedded deployment: LocalExecutor), a seeded schedule of moments
SIGKILLs the process that executes a stage's code. The LocalExecutor's worker is the task's
supervisor; it forks the task runner, which retitles itself ``airflow worker -- <task instance
id>`` and runs the stage: that process is found among the workers' children under the scheduler
and named through the REST API's task instances. A moment aims at

* ``read``:   the stage holds an input open for reading (scenes, features, tiles, the model);
* ``write``:  it holds an output open for writing in its private staging folder;
* ``commit``: it has begun moving its staged outputs into place (its staging folder lost a
  file; the commit lasts milliseconds, so the process is watched every millisecond from the
  moment it writes its outputs);
* ``upload``: its publication's staging prefix holds staged objects (uploading, verifying or
  promoting, milliseconds as well);

and fires at the first moment, its delay after the aim first held, when the aim holds. Commit
and upload moments are armed before their aim holds (a commit once the stage writes, an upload
as soon as the task's process runs); commit, upload and write moments are watched every
millisecond once armed. Moments whose process ended first wait for the next process of their
task.
After each kill the store is audited (:mod:`clcplus_ops.store_audit`). Airflow retries the
killed task. :func:`clean_run` makes the same production without Airflow, stage by stage, in
another store: the bytes every kill must leave complete or absent, and the run must end with.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from clcplus_ops.store import _TMP_PREFIX
from clcplus_ops.store_audit import Hashes, Snapshot, record_state, snapshot

AIMS = ("read", "write", "commit", "upload")
TASK_TITLE = "airflow worker -- "  # the task runner's process title, then its task instance id
WORKER_TITLE = "airflow worker -- LocalExecutor"  # the executor's workers (task supervisors)
# Watched every hot_poll_s once armed: commits and uploads last milliseconds, and so do the
# writes of the small stages (a product tile's STAC files).
HOT_AIMS = ("commit", "upload", "write")
# A commit moment is armed once the stage writes its staged outputs, an upload moment as soon as
# the task's process is seen: polled every poll_s under load, a short aim would slip by unseen.
ARMED_BY = {"commit": "write", "upload": "start"}


@dataclass(frozen=True)
class Moment:
    task: str  # the Airflow task id, e.g. "tile.ingest", "product_tile.product_publish"
    aim: str  # one of AIMS
    delay_s: float  # after the aim first held in the task's process

    def describe(self) -> str:
        return f"{self.task} {self.aim} +{self.delay_s:.2f} s"


# The share of a stage's duration a write moment's delay is drawn from: many stages write their
# outputs in a short last part of their run (a product tile's STAC files in milliseconds).
WRITE_SHARE = 0.25


def schedule(seed: int, plan: Sequence[tuple[str, int, Sequence[str]]], windows: dict[str, float]) -> list[Moment]:
    """Moments drawn with ``seed``: for each (aim, count, candidate tasks) of ``plan``, ``count``
    moments on tasks drawn from the candidates, each delayed by uniform(0, window) where the
    window is ``windows[task]`` for a read (a share of the stage's duration), WRITE_SHARE of it
    for a write, 0 for a commit (it lasts milliseconds) and 50 ms for an upload."""
    rng = random.Random(seed)
    out = []
    for aim, count, tasks in plan:
        for _ in range(count):
            task = rng.choice(list(tasks))
            window = {"commit": 0.0, "upload": 0.05}.get(aim, windows.get(task, 1.0))
            window *= WRITE_SHARE if aim == "write" else 1.0
            out.append(Moment(task, aim, round(rng.uniform(0.0, window), 3)))
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------------------------
# The task processes under the scheduler


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux's /proc children list: no scan of every process)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def task_processes(scheduler_pid: int, workers: list[int]) -> dict[int, str]:
    """Process id -> task instance id of every task runner under the LocalExecutor's workers
    (``workers`` is refreshed in place when empty: the scheduler's children titled as workers)."""
    if not workers:
        workers += [p for p in _children(scheduler_pid) if _title(p).startswith(WORKER_TITLE)]
    out = {}
    for worker in workers:
        for pid in _children(worker):
            title = _title(pid)
            if title.startswith(TASK_TITLE) and not title.startswith(WORKER_TITLE):
                out[pid] = title[len(TASK_TITLE):].split()[0]
    return out


def open_files(pid: int) -> list[tuple[str, str]]:
    """(path, mode) of the files ``pid`` holds open ([] once it is gone)."""
    import psutil

    try:
        return [(f.path, f.mode) for f in psutil.Process(pid).open_files()]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie its supervisor has not reaped yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


# --------------------------------------------------------------------------------------------
# What a task process is doing


@dataclass
class Watched:
    """A task process a moment is armed on."""

    pid: int
    ti: dict
    moment: Moment
    since: float | None = None  # when its aim first held (the delay counts from there)
    last: float | None = None  # when its aim was last seen holding
    staging: Path | None = None  # its staging folder, once seen
    staged: int = 0  # most files seen in it
    label: str | None = None  # its tile id or product tile code (mapped tasks)


class Aims:
    """The aims' conditions on a task process: ``read_roots`` are the folders its inputs lie
    in (synthetic world, work store, models), ``delivery`` the delivery's local folder."""

    def __init__(self, read_roots: Sequence[Path], delivery: Path | None):
        self.read_roots = [str(p.resolve()) + "/" for p in read_roots]
        self.delivery = delivery

    def holds(self, aim: str, watched: Watched, files: Callable[[], list[tuple[str, str]]]) -> str | None:
        """What the process is doing when ``aim`` holds for it (None when it does not);
        ``files()`` are the files it holds open."""
        if aim == "commit" and watched.staging is not None:
            return self._committing(watched)  # polled every millisecond: its staging folder only
        if aim == "upload":
            return self._publishing(watched)
        if aim == "start":
            return "running"
        files = files()
        staged = [p for p, mode in files if _TMP_PREFIX in p and mode != "r"]
        if staged and watched.staging is None:
            watched.staging = _staging_folder(Path(staged[0]))
            watched.staged = sum(1 for p in watched.staging.rglob("*") if p.is_file())
        if aim == "read":
            inputs = [p for p, mode in files if mode == "r" and _TMP_PREFIX not in p
                      and any(p.startswith(root) for root in self.read_roots)]
            return f"reading {len(inputs)} input(s), e.g. {Path(inputs[0]).name}" if inputs else None
        if aim == "write":
            return f"writing {len(staged)} staged output(s), e.g. {Path(staged[0]).name}" if staged else None
        if aim == "commit":
            return None  # its staging folder is not known yet
        raise ValueError(f"unknown aim {aim!r} (one of {', '.join(AIMS)})")

    def _publishing(self, watched: Watched) -> str | None:
        """The process's publication has staged objects (a staging prefix made since it started:
        killed attempts leave theirs behind)."""
        import psutil

        staging = self.delivery / "_staging" if self.delivery else None
        if staging is None or not staging.is_dir():
            return None
        try:
            started = psutil.Process(watched.pid).create_time()
        except psutil.NoSuchProcess:
            return None
        for attempt in staging.iterdir():
            try:
                if attempt.stat().st_mtime < started:
                    continue
            except FileNotFoundError:
                continue
            try:
                count = sum(1 for p in attempt.rglob("*") if p.is_file() and not p.name.startswith(_TMP_PREFIX))
            except FileNotFoundError:  # the publication removed its staging meanwhile: done with it
                continue
            if count:
                return f"publishing: {count} object(s) staged"
        return None

    @staticmethod
    def _committing(watched: Watched) -> str | None:
        """The stage moves its staged outputs into place: its staging folder lost a file."""
        if watched.staging is None or not watched.staging.is_dir():
            return None
        count = sum(1 for p in watched.staging.rglob("*") if p.is_file())
        watched.staged = max(watched.staged, count)
        if count < watched.staged:
            return f"committing: {watched.staged - count} of {watched.staged} outputs moved into place"
        return None


def _staging_folder(path: Path) -> Path:
    """The outermost ``.clcplus-tmp-*`` folder of ``path``."""
    for parent in [path, *path.parents][::-1]:
        if parent.name.startswith(_TMP_PREFIX):
            return parent
    return path.parent


# --------------------------------------------------------------------------------------------
# The drill


@dataclass
class Kill:
    moment: Moment
    dag_id: str
    task: str
    target: str  # the rendered map index (tile id, product tile code); "" for a PU task
    try_number: int
    pid: int
    at_s: float  # seconds since the drill began
    doing: str  # what the aim found the process doing
    state: str = ""  # what the stage left of its record (store_audit.record_state)
    found: Snapshot | None = field(default=None, repr=False)  # the store right after the kill

    def describe(self) -> str:
        where = f"{self.dag_id.removeprefix('clcplus_pu_')} {self.task}" + (f"[{self.target}]" if self.target else "")
        line = (f"{where} try {self.try_number}, pid {self.pid}, at {self.at_s:.1f} s ({self.moment.aim} "
                f"+{self.moment.delay_s:.2f} s: {self.doing}) -> {self.state}")
        if self.found is not None:
            found = self.found
            line += (f"; store: {len(found.records)} records verify, {len(found.broken)} broken, "
                     f"{found.temporaries[0]} temporaries ({found.temporaries[1] / 1e6:.1f} MB), "
                     f"{len(found.unrecorded)} files no record lists, {len(found.published)} published")
        return line


@dataclass
class DrillResult:
    kills: list[Kill]
    missed: list[Moment]  # moments that found no task process to fire on
    slipped: int  # times an armed moment's process ended before its delay
    states: dict[str, str]  # dag id -> the run's final state
    seconds: float


class KillDrill:
    """Fires ``moments`` at the task processes of ``runs`` (PU DAG id -> run id, reference year
    ``year`` of ``layout``) until every run is done, each task instance killed at most
    ``kills_per_instance`` times (Airflow's retries must outnumber them); audits the store of
    ``config`` after each kill."""

    def __init__(self, api, scheduler_pid: int, runs: dict[str, str], moments: Sequence[Moment], config,
                 layout: str, year: int, kills_per_instance: int = 1, on_kill: Callable[[Kill], None] | None = None,
                 poll_s: float = 0.01, hot_poll_s: float = 0.001):
        from clcplus_ops.locations import Locations
        from clcplus_ops.runner import store_for

        self.api, self.scheduler_pid, self.runs = api, scheduler_pid, runs
        self.pending = list(moments)
        self.config, self.layout, self.year = config.for_layout(layout), layout, year
        self.locations, self.store, self.hashes = Locations(self.config), store_for(self.config), Hashes()
        roots = [self.locations.roots[n] for n in ("work", "products", "models")] + [self.config.synthetic.root]
        delivery = self.locations.delivery
        self.aims = Aims([Path(r[len("file://"):]) for r in roots if r.startswith("file://")],
                         Path(delivery[len("file://"):]) if delivery.startswith("file://") else None)
        self.kills_per_instance, self.on_kill = kills_per_instance, on_kill
        self.poll_s, self.hot_poll_s = poll_s, hot_poll_s
        self._instances: dict[str, dict] = {}  # task instance id -> task instance
        self._refreshed = 0.0
        self._workers: list[int] = []
        self._labels: dict[tuple, list[str]] = {}  # (dag, task group) -> labels by map index

    def _instance(self, ti_id: str, fresh: bool = False) -> dict | None:
        """The task instance of ``ti_id`` (``fresh``: as it is now, its try number running)."""
        if fresh or ti_id not in self._instances and time.monotonic() - self._refreshed > 0.5:
            self._refreshed = time.monotonic()
            for dag_id, run_id in self.runs.items():
                self._instances.update({ti["id"]: ti for ti in self.api.task_instances(dag_id, run_id)})
        return self._instances.get(ti_id)

    def _states(self) -> dict[str, str]:
        return {dag_id: self.api.dag_run(dag_id, run_id)["state"] for dag_id, run_id in self.runs.items()}

    def label(self, ti: dict) -> str | None:
        """The tile id or product tile code a mapped task instance runs for (a running task's
        rendered map index is not known yet): the n-th of the PU's plan, or of the product
        tiles its run found ready."""
        if ti["map_index"] < 0:
            return None
        key = (ti["dag_id"], ti["task_id"].split(".")[0])
        if key not in self._labels:
            pu = ti["dag_id"].removeprefix("clcplus_pu_")
            if key[1] == "tile":
                plan = self.store.read_json(self.locations.pu(self.year, pu).plan)
                self._labels[key] = [t["tile_id"] for t in plan["tiles"]]
            else:
                value = self.api.get(f"/api/v2/dags/{ti['dag_id']}/dagRuns/{self.runs[ti['dag_id']]}"
                                     "/taskInstances/ready_product_tiles/xcomEntries/return_value")["value"]
                self._labels[key] = json.loads(value) if isinstance(value, str) else value
        return self._labels[key][ti["map_index"]]

    def record_url(self, ti: dict, label: str | None) -> str | None:
        return record_url(self.config, self.layout, self.year, ti["dag_id"].removeprefix("clcplus_pu_"),
                          ti["task_id"], label)

    def audit(self) -> Snapshot:
        return snapshot(self.locations, self.store, self.hashes)

    def run(self, timeout_s: float) -> DrillResult:
        began = time.monotonic()
        deadline = began + timeout_s
        watched: dict[int, Watched] = {}
        killed: dict[tuple, int] = {}  # (dag, task, map index) -> kills
        kills, slipped, next_state, next_scan, states = [], 0, 0.0, 0.0, {}
        while True:
            now = time.monotonic()
            # Processes and open files are looked at every poll_s; armed commits and uploads,
            # which last milliseconds, every hot_poll_s.
            scan = now >= next_scan
            next_scan = now + self.poll_s if scan else next_scan
            if now >= next_state:
                try:
                    states, next_state = self._states(), now + 1.0
                except OSError:  # the API server is slow to answer (a loaded machine): ask again
                    next_state = now + 2.0
                    continue
                self._workers.clear()  # the executor may have started workers since
                if all(s in ("success", "failed") for s in states.values()):
                    break
                if now > deadline:
                    raise TimeoutError(f"runs not done after {timeout_s:.0f} s: {states}")
            processes = task_processes(self.scheduler_pid, self._workers) if scan else {}
            for pid in [p for p in watched if (scan and p not in processes) or gone(p)]:
                # Ended before its delay: the moment waits for the task's next process, its delay
                # cut to half the time its aim was seen to hold (a stage writes its outputs in a
                # short last share of its run).
                ended = watched.pop(pid)
                moment = ended.moment
                if ended.since is not None:
                    held = (ended.last or ended.since) - ended.since
                    moment = replace(moment, delay_s=round(min(moment.delay_s, 0.5 * held), 3))
                self.pending.insert(0, moment)
                slipped += 1
            for pid, ti_id in processes.items():
                if not self.pending:
                    break
                if pid in watched:
                    continue
                try:
                    ti = self._instance(ti_id)
                except OSError:  # asked again at the next poll
                    continue
                if ti is None or killed.get(_key(ti), 0) >= self.kills_per_instance:
                    continue
                files = _once(lambda pid=pid: open_files(pid))
                for moment in [m for m in self.pending if m.task == ti["task_id"]]:
                    # An aim armed on itself held now: its delay counts from here. A commit is
                    # watched from the moment the stage writes its staged outputs.
                    direct = moment.aim not in ARMED_BY
                    candidate = Watched(pid, ti, moment, since=now if direct else None,
                                        last=now if direct else None)
                    if self.aims.holds(ARMED_BY.get(moment.aim, moment.aim), candidate, files):
                        try:
                            candidate.ti = self._instance(ti_id, fresh=True) or ti
                            candidate.label = self.label(candidate.ti)
                        except OSError:  # armed at a later poll
                            break
                        self.pending.remove(moment)
                        watched[pid] = candidate
                        break
            for pid, watch in list(watched.items()):
                if not scan and watch.moment.aim not in HOT_AIMS:
                    continue
                doing = self.aims.holds(watch.moment.aim, watch, lambda pid=pid: open_files(pid))
                if doing is None:
                    continue
                watch.since = now if watch.since is None else watch.since
                watch.last = now
                if now - watch.since < watch.moment.delay_s:
                    continue
                kills.append(self._kill(watch, doing, began))
                if self.on_kill:
                    self.on_kill(kills[-1])
                del watched[pid]
                killed[_key(watch.ti)] = killed.get(_key(watch.ti), 0) + 1
            hot = any(w.moment.aim in HOT_AIMS for w in watched.values())
            time.sleep(self.hot_poll_s if hot else self.poll_s)
        return DrillResult(kills, list(self.pending) + [w.moment for w in watched.values()], slipped, states,
                           time.monotonic() - began)

    def _kill(self, watch: Watched, doing: str, began: float) -> Kill:
        """SIGKILL the process, wait until it is gone, then judge the store."""
        ti = watch.ti
        url = self.record_url(ti, watch.label)
        before = self.store.read_bytes(url) if url and self.store.exists(url) else None
        os.kill(watch.pid, signal.SIGKILL)
        kill = Kill(watch.moment, ti["dag_id"], ti["task_id"], watch.label or "", ti["try_number"],
                    watch.pid, time.monotonic() - began, doing)
        deadline = time.monotonic() + 30
        while not gone(watch.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
        kill.state = record_state(self.store, self.locations, url, before) if url else "no stage"
        kill.found = self.audit()
        return kill


def _once(function: Callable[[], list]) -> Callable[[], list]:
    """``function``, called at most once."""
    kept = []

    def call() -> list:
        if not kept:
            kept.append(function())
        return kept[0]

    return call


def _key(ti: dict) -> tuple:
    return ti["dag_id"], ti["task_id"], ti["map_index"]


# --------------------------------------------------------------------------------------------
# The deployment drilled


def drill_env(home: Path, repo: Path, config_path: Path, parallelism: int) -> dict[str, str]:
    """The embedded deployment's environment (``clcplus_ops.embedded.server_env``) with an S3
    connection ``aws_default`` holding a generated secret key: every task reads the connection
    (file:// stores or not), and no log of the drill may show the key."""
    import secrets

    from clcplus_ops.embedded import airflow_env, free_port, server_env

    env = server_env(airflow_env(home, repo, config_path), free_port(), parallelism=parallelism)
    env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({"conn_type": "aws", "login": "AKIACLCPLUSDRILL0001",
                                                  "password": f"clcplus-drill-{secrets.token_urlsafe(16)}"})
    return env


@contextlib.contextmanager
def deployment(env: dict[str, str], log_dir: Path, dag_ids: Sequence[str], pools: dict[str, int] | None = None):
    """Airflow's database migrated, its services started (stopped on leaving), ``pools`` (name ->
    slots) created, as the demo creates classify's, and ``dag_ids`` parsed: yields the services
    and their REST API (as ``admin``)."""
    import subprocess
    import sys

    from clcplus_ops.embedded import AirflowApi, AirflowServices

    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    with AirflowServices(env, airflow, log_dir) as services:
        api = AirflowApi(services.url, "admin", services.password)
        for name, slots in (pools or {}).items():
            api.post("/api/v2/pools", {"name": name, "slots": slots, "description": "made by the drill"})
        api.wait_for_dags(dag_ids, timeout_s=300)
        yield services, api


# --------------------------------------------------------------------------------------------
# Where a task writes, and the clean run


def record_url(config, layout: str, year: int, pu_id: str, task_id: str, label: str | None) -> str | None:
    """The URL of the record of the stage a PU DAG's task runs (``label``: the tile id or
    product tile code of a mapped task); None for tasks that run no stage."""
    from clcplus_ops.locations import Locations
    from clcplus_ops.pipeline import STAGES
    from clcplus_ops.runner import place_of
    from clcplus_ops.stage import TILE_SCOPES, Target

    stage = STAGES.get(task_id.rsplit(".", 1)[-1])
    if stage is None:
        return None
    target = Target(layout, year, None if stage.scope == "product_tile" else pu_id,
                    label if stage.scope in TILE_SCOPES else None)
    return place_of(stage.scope, Locations(config.for_layout(layout)), target).record(stage.name)


def _tile_chain(config, target, options: dict) -> None:
    from clcplus_ops.pipeline import TILE_STAGES
    from clcplus_ops.runner import run_stage

    for stage in TILE_STAGES:
        run_stage(stage, config, target, options=options)


def clean_run(config, layout: str, year: int, pu_ids: Sequence[str], only_tiles: dict[str, list[str]],
              models: dict[str, str], workers: int = 1) -> dict[str, str]:
    """The production of ``year`` for ``pu_ids`` without Airflow, in the DAGs' order: each PU's
    plan (``only_tiles[pu]``, empty for all) and tile stages (``workers`` tiles at once), then
    every PU's join and mosaic, then every PU's blend, calibration, recoding and layers (each PU
    blends with the others' mosaics, as when their runs wait for each other), then the product
    tiles the last PU finds ready, made by it. Returns each product tile's fate: published or
    failed the self-check (with a few tiles of a PU, most of its land has no data)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from clcplus_ops.pipeline import PLAN_TILES, PRODUCT_TILE_STAGES, PU_BLEND, PU_JOIN
    from clcplus_ops.products.stages import SelfCheckFailed
    from clcplus_ops.products.tiling import layers_not_final, readiness
    from clcplus_ops.runner import run_stage, store_for
    from clcplus_ops.stage import Target

    config = config.for_layout(layout)
    store = store_for(config)
    chains = []
    for pu in pu_ids:
        options = {"only_tiles": only_tiles.get(pu, []), "model_version": models[pu]}
        plan = run_stage(PLAN_TILES, config, Target(layout, year, pu), options=options)
        chains += [(config, Target(layout, year, pu, t["tile_id"]), options)
                   for t in store.read_json(plan["outputs"]["plan"])["tiles"]]
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in [pool.submit(_tile_chain, *chain) for chain in chains]:
                done.result()
    else:
        for chain in chains:
            _tile_chain(*chain)
    for stages in (PU_JOIN, PU_BLEND):
        for pu in pu_ids:
            for stage in stages:
                run_stage(stage, config, Target(layout, year, pu))
    last = pu_ids[-1]
    ready = [t.code for t in readiness(config, layout, year, last,
                                       lambda pu: layers_not_final(config, layout, year, pu, store)) if t.ready]
    made = {}
    for code in ready:
        made[code] = "published"
        for stage in PRODUCT_TILE_STAGES:
            try:
                run_stage(stage, config, Target(layout, year, last, code))
            except SelfCheckFailed:  # as in the DAG: not published, the run fails
                made[code] = "failed the self-check"
                break
    return made


def stage_seconds(config, layout: str) -> dict[str, float]:
    """Task id -> the median duration (s) of its stage's runs in ``config``'s work store
    (from the records): the windows of the read and write moments."""
    import statistics

    from clcplus_ops.locations import RECORDS
    from clcplus_ops.pipeline import PRODUCT_TILE_STAGES, TILE_STAGES
    from clcplus_ops.runner import read_record, store_for

    config = config.for_layout(layout)
    store = store_for(config)
    seconds: dict[str, list[float]] = {}
    for root in (config.store.work, config.store.products):
        for url in store.list(root):
            if url.rsplit("/", 2)[-2] == RECORDS:
                record = read_record(store, url)
                seconds.setdefault(record.stage, []).append(record.seconds)
    prefix = {**{s.name: "tile." for s in TILE_STAGES}, **{s.name: "product_tile." for s in PRODUCT_TILE_STAGES}}
    return {prefix.get(name, "") + name: statistics.median(values) for name, values in seconds.items()}
