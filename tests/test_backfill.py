"""Backfills of the earlier reference years on a real Airflow: ``airflow backfill create`` over
2017-2022 makes exactly the 2018 and 2021 runs, each with its own acquisition window (2018:
reference year +- 6 months, ATBD 3.1.3; 2021: +- 3 months like 2023), and a run whose year has
no model trained on its time series fails at select_model, naming the PU and the year."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pendulum
import pytest
import yaml

from clcplus_ops.config import CONFIG_ENV, load_config
from clcplus_ops.locations import Locations
from clcplus_ops.model import registry
from clcplus_ops.runner import store_for
from clcplus_ops.sentinel2.timeseries import feature_names
from conftest import REPO, random_tempcnn

DAG_ID = "clcplus_pu_DEMO1"
PU = "DEMO1"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="module")
def backfill_db(airflow_db, tmp_path_factory):
    """The environment of Airflow commands on a copy of the session's migrated metadata DB
    with the DAGs serialised into it (a backfill leaves runs and an active backfill behind:
    the session's DB stays as the other tests expect it)."""
    session_db = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    copy = tmp_path_factory.mktemp("backfill") / "airflow.db"
    shutil.copyfile(session_db, copy)
    env = {**os.environ, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{copy}",
           "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}
    _airflow(env, "dags", "reserialize")
    return env, copy


def _airflow(env, *args) -> str:
    result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"airflow {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


HISTORY = ("--dag-id", DAG_ID, "--from-date", "2017-01-01", "--to-date", "2022-12-31")


def test_backfill_over_2017_to_2022_makes_2018_and_2021_with_their_windows(backfill_db):
    env, db = backfill_db
    planned = _airflow(env, "backfill", "create", *HISTORY, "--dry-run")
    logical = [line.split("|")[1].strip() for line in planned.splitlines() if line.startswith("| 20")]
    assert logical == ["2017-07-01 00:00:00+00:00", "2020-10-01 00:00:00+00:00"], planned

    _airflow(env, "backfill", "create", *HISTORY)
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            # (The copied session DB may hold other tests' manual runs: the backfill's are these.)
            "SELECT run_type, data_interval_start, data_interval_end, backfill_id FROM dag_run "
            "WHERE dag_id = ? AND backfill_id IS NOT NULL ORDER BY data_interval_start", (DAG_ID,)).fetchall()
    assert [(kind, start[:10], end[:10]) for kind, start, end, _ in rows] == [
        ("backfill", "2017-07-01", "2019-07-01"),  # 2018: 1 Jul 2017 to 30 Jun 2019 (+- 6 months)
        ("backfill", "2020-10-01", "2022-04-01"),  # 2021: 1 Oct 2020 to 31 Mar 2022 (+- 3 months)
    ]
    assert len({backfill for *_, backfill in rows}) == 1

    # What the runs' tasks make of their intervals: the reference year, its window and steps.
    from clcplus_timetable import ReferenceYearTimetable

    series = load_config().time_series
    for (_, start, end, _), year, steps in zip(rows, (2018, 2021), (73, 54)):
        interval = ReferenceYearTimetable().interval(year)
        assert (interval.start, interval.end) == (pendulum.parse(start, tz="UTC"), pendulum.parse(end, tz="UTC"))
        assert len(series.steps(year)) == steps


# --------------------------------------------------------------------------------------------
# select_model follows the run's reference year


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    """A registry of its own (the session's holds the other tests' DEMO1 models)."""
    return (tmp_path_factory.mktemp("models") / "models").as_uri()


@pytest.fixture
def own_registry(models_root, tmp_path, monkeypatch):
    """The session's configuration with ``models_root`` as registry, for this process (DAG
    parsing and the tasks dag.test() runs in it)."""
    base = yaml.safe_load(Path(os.environ[CONFIG_ENV]).read_text()) or {}
    base.setdefault("store", {})["models"] = models_root
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return load_config().for_layout("demo")


def _register(config, year: int) -> str:
    """A (random, untrained) TempCNN on ``year``'s time series, registered for ``year`` with the
    card the register stage writes (input: features, steps, step length and window months)."""
    series = config.time_series.for_year(year)
    s2 = config.sentinel2
    names = feature_names(s2.bands, s2.indices)
    x = np.random.default_rng(year).normal(1500, 900, (512, len(names), series.n_steps)).astype(np.int16)
    model = random_tempcnn(config, x)
    card = {"reference_year": year,
            "model": {"classes": model.classes, "input": {"features": names, **series.input_signature()}}}
    return registry.register_model(store_for(config), Locations(config).models, PU, {"model.pt": model.to_bytes()},
                                   card).version


def _select(logical_date, conf=None):
    """Run the DEMO1 DAG's select_model task alone for the manual run at ``logical_date``."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag(DAG_ID)
    subset = dag.partial_subset(task_ids=["select_model"], include_upstream=False)
    # partial_subset keeps the mapped task groups, emptied, with their expand inputs naming
    # tasks left out (plan_tiles, ready_product_tiles): Airflow cannot serialise those, so
    # they go too. The task that runs is the DAG's own select_model.
    for name in [name for name in subset.task_group.children if name != "select_model"]:
        del subset.task_group.children[name]
    assert list(subset.task_dict) == ["select_model"]
    run = subset.test(logical_date=logical_date, run_conf=conf)
    ti = next(ti for ti in run.get_task_instances() if ti.task_id == "select_model")
    return run, ti


def test_a_run_without_a_model_of_its_year_fails_at_select_model(airflow_db, own_registry, capfd):
    v2025 = _register(own_registry, 2025)
    # A manual run after 2018's window closed (1 Jul 2019) is the 2018 run.
    run, ti = _select(pendulum.datetime(2019, 7, 2, tz="UTC"))
    assert (run.data_interval_start, run.data_interval_end) == (pendulum.datetime(2017, 7, 1, tz="UTC"),
                                                                pendulum.datetime(2019, 7, 1, tz="UTC"))
    assert run.state == "failed" and ti.state == "failed" and ti.try_number == 1  # at once, no retry
    output = capfd.readouterr()
    assert f"PU {PU}, reference year 2018: no model of PU {PU} for reference year 2018 (73 steps of 10 days " \
           f"from 2017-07-01" in output.out + output.err
    assert f"{v2025} (reference year 2025)" in output.out + output.err

    # The 2025 model does not fit 2018's 73 steps even when named: refused before any tile.
    run, ti = _select(pendulum.datetime(2019, 7, 3, tz="UTC"), {"model_version": v2025})
    assert run.state == "failed" and ti.state == "failed"
    output = capfd.readouterr()
    assert f"PU {PU}, reference year 2018: model {PU}/{v2025}" in output.out + output.err
    assert "steps: model 54, configuration 73" in output.out + output.err


def test_each_year_takes_the_newest_model_of_its_own_year(airflow_db, own_registry):
    v2018 = _register(own_registry, 2018)
    v2025 = _register(own_registry, 2025)  # newer, but of another year (and other steps)
    assert registry.list_versions(store_for(own_registry), Locations(own_registry).models, PU)[-1] == v2025

    run, ti = _select(pendulum.datetime(2019, 7, 4, tz="UTC"))
    assert run.state == "success", "select_model of the 2018 run failed"
    selected = ti.xcom_pull(task_ids="select_model")
    assert (selected["version"], selected["reference_year"], selected["model_version"]) == (v2018, 2018, v2018)

    run, ti = _select(pendulum.datetime(2026, 4, 2, tz="UTC"))  # the 2025 run
    assert run.state == "success"
    assert ti.xcom_pull(task_ids="select_model")["version"] == v2025
