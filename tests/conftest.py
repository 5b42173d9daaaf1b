"""Test session setup: an embedded Airflow (SQLite) home and a file:// store in a temporary
folder, configured before Airflow is first imported; the real S3 API server plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

_home = Path(tempfile.mkdtemp(prefix="clcplus-test-"))

from clcplus_ops.embedded import airflow_env, write_embedded_config  # noqa: E402

# Same code, smaller configuration: two label-audit rounds instead of 15 keep the training DAG
# test to about a minute (the 15-round figures come from scripts/bench_training.py).
_config = write_embedded_config(_home, _home / "config.yaml", {"training": {"label_audit_rounds": 2}})
os.environ.update(airflow_env(_home, REPO, _config))
os.environ.update(
    # The expert who answers review requests through the REST API in the training DAG test.
    AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,expert:admin",
    AIRFLOW__API_AUTH__JWT_SECRET="clcplus-test-session-secret-" * 3,
)
# DAG files import the timetable from the plugins folder, as Airflow's processes do.
sys.path.insert(0, str(REPO / "plugins"))

pytest_plugins = ["s3_server"]


def pytest_report_header(config):
    return [f"embedded Airflow home: {os.environ['AIRFLOW_HOME']}", f"clcplus config: {_config}"]


@pytest.fixture(scope="session")
def test_home() -> Path:
    return _home


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated Airflow metadata database (SQLite) for the session."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, env=os.environ.copy(), capture_output=True)


@pytest.fixture(scope="session")
def demo_world() -> dict:
    """The synthetic Sentinel-2 world of the demo layout for reference year 2025, built once
    into the session's store (the demo DAGs read its static catalogue)."""
    from clcplus_ops.config import load_config
    from clcplus_ops.synthetic import build_world

    started = time.perf_counter()
    record = build_world(load_config(), 2025)
    FIGURES.append(f"synthetic world (demo area, 2025): {record['items']} items built in {time.perf_counter() - started:.1f} s")
    return record


@pytest.fixture(scope="session")
def demo_model(demo_world) -> dict:
    """DEMO1's registered model, trained on the world's samples the way the demo does when the
    registry has none (the training DAG test may register later versions)."""
    from clcplus_ops.config import load_config
    from clcplus_ops.demo import ensure_models

    started = time.perf_counter()
    (model,) = ensure_models(load_config(), 2025, ["DEMO1"], demo_world["samples_csv_url"])
    if model["trained"]:
        FIGURES.append(f"DEMO1 model trained for the session (extract, hold-out, final fit, register): "
                       f"{time.perf_counter() - started:.1f} s, hold-out OA {100 * model['overall_accuracy']:.1f} %")
    return model


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is not available (the shared/ folder beside the repository)")
    return path


FIGURES: list[str] = []


@pytest.fixture
def figure():
    """Record a measured figure; all of them are printed at the end of the run."""
    return FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
