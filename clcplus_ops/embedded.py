"""The embedded default deployment: Airflow with SQLite and the LocalExecutor, a ``file://``
store, everything under one folder. Used by the demo and the tests; Airflow runs as its own
processes (this module only prepares their environment)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from clcplus_ops.locations import static_catalog_template, synthetic_rules_template


def airflow_env(home: Path, repo: Path, config_path: Path) -> dict[str, str]:
    """Environment for Airflow processes of an embedded deployment rooted at ``home``."""
    home = home.resolve()
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str((repo / "dags").resolve()),
        AIRFLOW__CORE__PLUGINS_FOLDER=str((repo / "plugins").resolve()),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow' / 'airflow.db'}",
        AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="120",
        AIRFLOW__LOGGING__LOGGING_LEVEL=env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        CLCPLUS_CONFIG=str(config_path.resolve()),
        CLCPLUS_CACHE_DIR=str(home / "cache"),
    )
    return env


def write_embedded_config(home: Path, path: Path, overrides: dict | None = None) -> Path:
    """A configuration whose store roots are ``file://`` folders under ``home``, with the
    synthetic Sentinel-2 world (one static STAC catalogue per reference year) as scene source and
    its recoding rules (OSM, LPIS and expert AOIs written with each year's world)."""
    store = home.resolve() / "store"
    synthetic = (store / "synthetic").as_uri()
    data = {
        "store": {name: (store / name).as_uri() for name in ("work", "models", "samples", "products")},
        "synthetic": {"root": synthetic},
        "sentinel2": {"static_catalog": static_catalog_template(synthetic)},
        "recoding": {"rules": synthetic_rules_template(synthetic)},
        # The embedded deployment's one user answers the expert reviews.
        "training": {"reviewers": ["admin"]},
    }
    for key, value in (overrides or {}).items():
        data.setdefault(key, {}).update(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    return path


# --------------------------------------------------------------------------------------------
# A real Airflow on this machine: its processes and its REST API

COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
# Airflow 3.3's log servers (``serve-logs``, started by the scheduler and the triggerer for
# their local tasks) bind every interface and take no host setting. Everything runs on this
# machine and writes its logs to the same folder, which the API server reads directly: the
# embedded deployment starts no log server, so only the API server listens, on 127.0.0.1.
SERVER_OPTIONS = {"scheduler": ("--skip-serve-logs",), "triggerer": ("--skip-serve-logs",)}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _secret(path: Path) -> str:
    """A random secret kept in ``path`` (the API server, the scheduler and the task processes
    must share the JWT secret; a fresh one per start would also do, but logins would expire)."""
    import secrets

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _passwords(path: Path, users: str) -> Path:
    """The simple auth manager's passwords file: a generated password for each of ``users``
    (``name:role,...``) that has none, written here (0600) before the API server starts. The
    API server prints the password of a user missing from the file into its log; with every
    user in it, it prints none (the demo shows the login on the operator's terminal instead)."""
    import json
    import secrets

    known = json.loads(path.read_text()) if path.is_file() else {}
    wanted = {user.split(":")[0] for user in users.split(",") if user.strip()}
    if not wanted <= set(known):
        known.update({user: secrets.token_urlsafe(18) for user in sorted(wanted - set(known))})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(known) + "\n")
    return path


# SQLite connections of the embedded deployment's processes: writers wait for the lock up to a
# minute instead of Python's default 5 s (the scheduler, the API server and the task heartbeats
# write at once; WAL lets readers go on meanwhile).
SQLITE_CONNECT_ARGS = {"timeout": 60, "check_same_thread": False}


def server_env(env: dict[str, str], port: int, parallelism: int) -> dict[str, str]:
    """``env`` (see :func:`airflow_env`) for Airflow's own processes serving on 127.0.0.1:``port``:
    the API server listens on the loopback only (and no log server runs: ``SERVER_OPTIONS``);
    task processes reach the execution API there; one user ``admin``, its password generated
    into the deployment's passwords file (never printed into a log)."""
    home = Path(env["AIRFLOW_HOME"])
    secret = _secret(home / "jwt_secret")
    users = "admin:admin"
    out = dict(env)
    out.update(
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secret,
        AIRFLOW__API__SECRET_KEY=secret,
        # The LocalExecutor whose workers have imported the DAG files' modules (plugins folder).
        AIRFLOW__CORE__EXECUTOR="clcplus_airflow.executors.LocalExecutor",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=users,
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(_passwords(home / "passwords.json", users)),
        AIRFLOW__CORE__PARALLELISM=str(parallelism),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS="clcplus_ops.embedded.SQLITE_CONNECT_ARGS",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="30",
    )
    return out


def command_of(component) -> tuple[str, list[str], dict[str, str]]:
    """A component's name, ``airflow`` arguments and extra environment: an Airflow command's
    name (``scheduler``, with its ``SERVER_OPTIONS``), or ``(name, arguments, environment)`` as a
    Celery worker needs (``clcplus_ops.distributed``)."""
    if isinstance(component, str):
        return component, [component, *SERVER_OPTIONS.get(component, ())], {}
    name, arguments, extra_env = component
    return name, list(arguments), dict(extra_env)


class AirflowServices:
    """Airflow's scheduler, DAG processor, triggerer and API server as child processes, each in a
    process group of its own, stopped by their process ids (SIGTERM to the group, then SIGKILL):
    nothing is orphaned, unlike SIGTERM to ``airflow standalone``."""

    def __init__(self, env: dict[str, str], airflow: str, log_dir: Path, components=COMPONENTS):
        self.env, self.airflow, self.log_dir, self.components = env, airflow, Path(log_dir), components
        self.procs: dict[str, object] = {}
        self.port = int(env["AIRFLOW__API__PORT"])
        self.url = env["AIRFLOW__API__BASE_URL"]

    def start(self, timeout_s: float = 180) -> AirflowServices:
        import subprocess
        import time

        self.log_dir.mkdir(parents=True, exist_ok=True)
        for component in self.components:
            name, arguments, extra_env = command_of(component)
            log = (self.log_dir / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen([self.airflow, *arguments], env={**self.env, **extra_env},
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            log.close()
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            dead = {n: p.poll() for n, p in self.procs.items() if p.poll() is not None}
            if dead:
                self.stop()
                raise RuntimeError(f"Airflow {', '.join(dead)} exited ({dead}); see {self.log_dir}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Airflow did not become healthy in {timeout_s:.0f} s; see {self.log_dir}")
            time.sleep(1)
        return self

    def _healthy(self) -> bool:
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=2) as response:
                health = json.loads(response.read())
        except (OSError, ValueError):
            return False
        names = {command_of(c)[0].replace("-", "_") for c in self.components}
        wanted = {"scheduler", "triggerer", "dag_processor"} & names
        return all((health.get(part) or {}).get("status") == "healthy" for part in wanted)

    @property
    def password(self) -> str:
        """The password of ``admin`` (from the deployment's passwords file, see :func:`server_env`)."""
        import json

        path = Path(self.env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
                    or Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated")
        return json.loads(path.read_text())["admin"]

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def stop(self, grace_s: float = 30) -> None:
        """SIGTERM each process group, wait up to ``grace_s``, then SIGKILL what is left."""
        import os
        import signal
        import time

        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - still running: killed below
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # children of a stopped leader too
            except ProcessLookupError:
                pass
            proc.wait()
        self.procs = {}

    def __enter__(self) -> AirflowServices:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class AirflowApi:
    """Airflow's REST API (v2) as the UI calls it, with a token of the simple auth manager."""

    def __init__(self, url: str, username: str, password: str):
        self.url, self._login = url.rstrip("/"), {"username": username, "password": password}
        self._token: str | None = None

    def _call(self, method: str, path: str, body=None):
        import json
        import urllib.error
        import urllib.request

        if self._token is None and not path.startswith("/auth/"):
            self._token = self._call("POST", "/auth/token", self._login)["access_token"]
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"Airflow API {method} {path}: HTTP {error.code} {error.read()[:500]!r}") from None
        return json.loads(text) if text else None

    def get(self, path: str):
        return self._call("GET", path)

    def post(self, path: str, body):
        return self._call("POST", path, body)

    def patch(self, path: str, body):
        return self._call("PATCH", path, body)

    def dag_exists(self, dag_id: str) -> bool:
        try:
            self.get(f"/api/v2/dags/{dag_id}")
        except RuntimeError:
            return False
        return True

    def wait_for_dags(self, dag_ids, timeout_s: float = 300) -> None:
        """Until the DAG processor has parsed every one of ``dag_ids``."""
        import time

        deadline = time.monotonic() + timeout_s
        missing = list(dag_ids)
        while missing:
            missing = [dag_id for dag_id in missing if not self.dag_exists(dag_id)]
            if missing and time.monotonic() > deadline:
                raise RuntimeError(f"the DAG processor has not parsed {', '.join(missing)} in {timeout_s:.0f} s")
            if missing:
                time.sleep(2)

    def trigger(self, dag_id: str, logical_date: str, conf: dict) -> str:
        """Unpause ``dag_id`` and trigger a run; returns its run id."""
        self.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = self.post(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf})
        return run["dag_run_id"]

    def clear(self, dag_id: str, run_id: str, task_ids: list, downstream: bool = True) -> list[dict]:
        """Clear task instances of a run (a task id, or ``[task_id, map_index]`` for one mapped
        instance) and, by default, what follows them: the call the UI's "Clear" makes."""
        body = {"dag_run_id": run_id, "task_ids": task_ids, "dry_run": False, "only_failed": False,
                "include_downstream": downstream, "reset_dag_runs": True}
        return self.post(f"/api/v2/dags/{dag_id}/clearTaskInstances", body)["task_instances"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float, poll_s: float = 2) -> str:
        """The run's final state (success or failed); TimeoutError naming its state after ``timeout_s``."""
        import time

        deadline = time.monotonic() + timeout_s
        while (state := self.dag_run(dag_id, run_id)["state"]) not in ("success", "failed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout_s:.0f} s")
            time.sleep(poll_s)
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        out, offset = [], 0
        while True:
            page = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=500&offset={offset}")
            out += page["task_instances"]
            offset += len(page["task_instances"])
            if not page["task_instances"] or offset >= page["total_entries"]:
                return out


def run_progress(api: AirflowApi, dag_id: str, run_id: str) -> dict:
    """A PU run's progress from its task instances: its state, the tiles filtered of those
    planned, the tasks running now, the elapsed time and, once some tiles are done, an estimate
    of the time left for the tiles at the run's pace so far (the PU stages after them are short)."""
    import datetime as dt

    run = api.dag_run(dag_id, run_id)
    tis = api.task_instances(dag_id, run_id)
    filters = [ti for ti in tis if ti["task_id"] == "tile.filter" and ti["map_index"] >= 0]
    done = sum(ti["state"] in ("success", "skipped") for ti in filters)
    # Mapped instances appear task by task: the tiles planned are the first stage's instances.
    planned = len({ti["map_index"] for ti in tis if ti["task_id"].startswith("tile.") and ti["map_index"] >= 0})
    running = sorted({ti["task_id"] + (f"[{ti['rendered_map_index']}]" if ti["map_index"] >= 0 else "")
                      for ti in tis if ti["state"] in ("running", "deferred", "queued", "scheduled",
                                                       "up_for_retry")})
    started = run.get("start_date") or run.get("queued_at")
    elapsed = 0.0
    if started:
        begin = dt.datetime.fromisoformat(started.replace("Z", "+00:00"))
        end = run.get("end_date")
        stop = dt.datetime.fromisoformat(end.replace("Z", "+00:00")) if end else dt.datetime.now(dt.timezone.utc)
        elapsed = (stop - begin).total_seconds()
    eta = elapsed / done * (planned - done) if 0 < done < planned else None
    failed = sorted(ti["task_id"] + (f"[{ti['rendered_map_index']}]" if ti["map_index"] >= 0 else "")
                    for ti in tis if ti["state"] in ("failed", "upstream_failed"))
    return {"state": run["state"], "tiles_done": done, "tiles_total": planned, "running": running[:4],
            "elapsed_s": elapsed, "eta_s": eta, "failed": failed}


# --------------------------------------------------------------------------------------------
# No credential in any log

# Settings whose whole value is a secret, and settings holding URLs that may carry a password.
SECRET_SETTINGS = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY",
                   "AIRFLOW__CELERY__BROKER_PASSWORD")
URL_SETTINGS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                "AIRFLOW__CELERY__RESULT_BACKEND")
# Extras of a connection that are secrets (the Amazon provider's keys among them).
SECRET_EXTRAS = ("aws_secret_access_key", "aws_session_token", "secret_key", "token", "password")
# Shorter values cannot be told apart from ordinary text in a log.
MIN_SECRET_CHARS = 8


def deployment_secrets(env: dict[str, str]) -> dict[str, str]:
    """What -> value of every secret of a deployment with environment ``env``: the passwords of
    the simple auth manager's users, the JWT secret and the API secret key, the Fernet key (the
    environment's or the one Airflow wrote into ``airflow.cfg``), passwords in the database and
    Celery URLs, and the passwords and secret extras of the ``AIRFLOW_CONN_*`` connections (the
    S3 secret key of ``aws_default``)."""
    import configparser
    import json
    from urllib.parse import unquote, urlsplit

    out = {}
    passwords = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
    if passwords and Path(passwords).is_file():
        out.update({f"password of {user}": pw for user, pw in json.loads(Path(passwords).read_text()).items()})
    out.update({name: env[name] for name in SECRET_SETTINGS if env.get(name)})
    cfg = Path(env.get("AIRFLOW_CONFIG") or Path(env["AIRFLOW_HOME"]) / "airflow.cfg")
    if "AIRFLOW__CORE__FERNET_KEY" not in out and cfg.is_file():
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.read(cfg)
        if parser.get("core", "fernet_key", fallback=""):
            out["fernet_key of airflow.cfg"] = parser.get("core", "fernet_key")
    for name in URL_SETTINGS:
        password = urlsplit(env.get(name, "")).password
        if password:
            out[f"password in {name}"] = unquote(password)
    for name, value in env.items():
        if not name.startswith("AIRFLOW_CONN_"):
            continue
        try:
            connection = json.loads(value)
        except ValueError:  # a URI
            password = urlsplit(value).password
            connection = {"password": unquote(password) if password else None}
        extra = connection.get("extra") or {}
        extra = json.loads(extra) if isinstance(extra, str) else extra
        out.update({f"{key} of {name}": v for key, v in (("password", connection.get("password")), *(
            (k, extra.get(k)) for k in SECRET_EXTRAS)) if v})
    return out


def deployment_logs(env: dict[str, str], services_log_dir: Path) -> list[Path]:
    """Every folder a deployment writes logs into: its services' output (``services_log_dir``)
    and Airflow's log folder (task logs, the DAG processor's logs)."""
    base = env.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER") or str(Path(env["AIRFLOW_HOME"]) / "logs")
    return [Path(services_log_dir), Path(base)]


def credentials_in_logs(folders, secrets: dict[str, str]) -> list[str]:
    """``file: what`` for every secret of ``secrets`` (as it is, or URL-encoded) found in any
    file under ``folders``; the secrets themselves are never part of the answer."""
    from urllib.parse import quote

    short = sorted(what for what, value in secrets.items() if len(value) < MIN_SECRET_CHARS)
    if short:
        raise ValueError(f"secrets too short to look for in logs (under {MIN_SECRET_CHARS} characters): "
                         f"{', '.join(short)}")
    forms = {what: {value.encode(), quote(value, safe="").encode()} for what, value in secrets.items()}
    found = []
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            text = path.read_bytes()
            found += [f"{path}: {what}" for what, variants in forms.items() if any(v in text for v in variants)]
    return found


def assert_no_credentials(folders, secrets: dict[str, str]) -> int:
    """AssertionError naming the files and the secrets (never their values) when any of
    ``secrets`` appears in a file under ``folders``; else the number of files read."""
    found = credentials_in_logs(folders, secrets)
    if found:
        raise AssertionError("credentials in logs:\n" + "\n".join(found))
    return sum(1 for folder in folders for p in Path(folder).rglob("*") if p.is_file())
