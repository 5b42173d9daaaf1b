"""Hostile ids at every entry point: PU ids, tile ids, product tile codes, model versions, years
and layouts given through the PU and training DAGs' Params, the runner, the expert review's
answer, the operators' dashboard API and the ``clcplus`` command are refused with a clear
message before they make a path, and nothing is created anywhere (inside the store roots or
beside them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from clcplus_ops.config import load_config, parse_config
from clcplus_ops.errors import ClcplusError, InvalidIdError
from clcplus_ops.pipeline import STAGES
from clcplus_ops.runner import run_stage
from clcplus_ops.stage import Target

REPO = Path(__file__).resolve().parents[1]
YEAR, PU, TILE, PRODUCT_TILE = 2025, "DEMO1", "33TUL_r22c37", "e47n25"

# Ids that would leave their folder, name another one, or are not ids at all.
HOSTILE = [
    "../../etc", "..", ".", "", " ", "/etc/passwd", "PU001/../x", "DEMO1/..", "DEMO1/../../../x",
    "DEMO1/sub", "DEMO1\\..\\..\\x", "DEMO1\x00", "DEMO1\n", "%2e%2e%2f", "~root", "x" * 5000,
    "ДЕМО1", "DEMO1\u202e", "v0001/..",
]
HOSTILE_YEARS = ["2025/..", "../2025", "2025\x00", "-1", "0", "99999", "10" * 400, "", "٢٠٢٥", "2025.0", None]
HOSTILE_VERSIONS = ["v0001/..", "../v0001", "v1", "V0001", "v0001\n", "v٠٠٠١", "", "/v0001", "v" + "0" * 5000 + "/.."]


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (what a refused request must leave as it was)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path):
    """A configuration whose store roots lie three levels deep in an empty folder: a path that
    escaped a root by up to three ``..`` would still show up in that folder."""
    store = tmp_path / "a" / "b" / "c"
    config = parse_config({
        "store": {name: (store / name).as_uri() for name in ("work", "models", "samples", "products")},
        "synthetic": {"root": (store / "synthetic").as_uri()},
        "training": {"reviewers": ["expert"]},
    })
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    before = tree(tmp_path)
    yield {"config": config, "path": path, "root": tmp_path}
    assert tree(tmp_path) == before, "a refused id created something"


# --------------------------------------------------------------------------------------------
# The runner: every stage scope


def _targets():
    """(stage, target) pairs with one hostile id each, over the runner's scopes."""
    for bad in HOSTILE:
        yield "plan_tiles", Target("demo", YEAR, bad)                  # pu
        yield "review", Target("demo", YEAR, bad)                      # training
        yield "define_tile", Target("demo", YEAR, PU, bad)             # tile: the tile id
        yield "define_tile", Target("demo", YEAR, bad, TILE)           # tile: the PU id
        yield "extract_samples", Target("demo", YEAR, None, bad)       # sample_tile
        yield "product_tile", Target("demo", YEAR, PU, bad)            # product_tile
    for bad in (f"{PRODUCT_TILE}\n", "e٤٧n25", f"{PRODUCT_TILE}/..", f"../{PRODUCT_TILE}", "gf/.."):
        yield "product_tile", Target("demo", YEAR, PU, bad)
    for bad in (f"{TILE}\n", f"{TILE}/..", "٣٣TUL_r22c37", "33TUL_r٢٢c37", f"{TILE} "):
        yield "define_tile", Target("demo", YEAR, PU, bad)
    for bad in HOSTILE_YEARS:
        yield "plan_tiles", Target("demo", bad, PU)
        yield "product_tile", Target("demo", bad, PU, PRODUCT_TILE)


def test_run_stage_refuses_hostile_ids_before_touching_anything(sandbox):
    config = sandbox["config"]
    refused = 0
    for name, target in _targets():
        with pytest.raises(ClcplusError) as error:
            run_stage(STAGES[name], config, target, options={"reviewer": "expert", "choice": "keep"})
        message = str(error.value)
        # The message says which kind of id is wrong (and the stage, when none was given).
        assert any(word in message for word in ("production unit", "tile", "square", "reference year", "give its")), message
        refused += 1
    assert refused == 6 * len(HOSTILE) + 10 + 2 * len(HOSTILE_YEARS)
    for bad in ("../../etc", "", "production/..", "démo"):
        with pytest.raises(ValueError, match="unknown layout"):
            run_stage(STAGES["plan_tiles"], config, Target(bad, YEAR, PU))


def test_model_versions_are_checked_before_they_make_a_path(sandbox):
    from clcplus_ops.classification.classify import select_model
    from clcplus_ops.locations import Locations, check_version, model_version_url
    from clcplus_ops.model import registry

    config = sandbox["config"]
    models = Locations(config).models
    for bad in HOSTILE_VERSIONS:
        with pytest.raises(InvalidIdError):
            check_version(bad)
        with pytest.raises(InvalidIdError):
            model_version_url(models, PU, bad)
        with pytest.raises(InvalidIdError, match="v0001"):
            registry.resolve_model(_store(config), models, PU, bad)
        with pytest.raises(InvalidIdError):
            select_model(config, PU, YEAR, bad, _store(config))
    for bad in HOSTILE:  # the registry's own PU check (the entry points check the layout's ids first)
        with pytest.raises(InvalidIdError, match="PU id"):
            registry.resolve_model(_store(config), models, bad, "v0001")


def _store(config):
    from clcplus_ops.runner import store_for

    return store_for(config)


def test_the_review_answer_of_a_run_with_a_hostile_pu_stores_nothing(sandbox):
    """The review's options hook stores pasted decisions under the PU's training folder: the
    run's ids are checked before (the DAG param's enum is the first guard, this the second)."""
    from clcplus_airflow.tasks import TaskRun
    from clcplus_airflow.training import DECISIONS, review_options

    config = sandbox["config"]
    answer = {"chosen_options": [DECISIONS], "responded_by_user": {"id": "expert", "name": "expert"},
              "params_input": {"decisions_csv": "sample_id,decision,label,comment\n"}}
    targets = [Target("demo", YEAR, bad) for bad in HOSTILE] + [Target("demo", bad, PU) for bad in HOSTILE_YEARS]
    for target in targets:
        with pytest.raises(ClcplusError):
            review_options(answer, TaskRun({"run_id": "manual__../../x"}, config, target, _store(config)))


# --------------------------------------------------------------------------------------------
# The DAGs' Params (what the trigger form and the REST API validate a run's conf against)


@pytest.fixture(scope="module")
def dags(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))  # the session's layouts: the demo's
    assert bag.import_errors == {}
    return bag


def test_pu_dag_params_refuse_hostile_tiles_and_versions(dags):
    from airflow.sdk.definitions.param import ParamValidationError

    params = dags.get_dag(f"clcplus_pu_{PU}").params
    only_tiles, version = params.get_param("only_tiles"), params.get_param("model_version")
    tiles = only_tiles.schema["items"]["enum"]
    assert TILE in tiles and only_tiles.resolve([TILE]) == [TILE]
    for bad in HOSTILE + [f"{TILE}/..", f"../{TILE}", TILE.lower()]:
        with pytest.raises(ParamValidationError):
            only_tiles.resolve([bad])
        with pytest.raises(ParamValidationError):
            only_tiles.resolve([TILE, bad])
    assert version.resolve("latest") == "latest" and version.resolve("v0012") == "v0012"
    for bad in HOSTILE_VERSIONS + ["latest/..", "latest\n"]:
        with pytest.raises(ParamValidationError):
            version.resolve(bad)


def test_training_dag_params_refuse_hostile_pus_and_years(dags):
    from airflow.sdk.definitions.param import ParamValidationError

    params = dags.get_dag("clcplus_training_demo").params
    units, year = params.get_param("production_units"), params.get_param("reference_year")
    assert units.resolve([PU]) == [PU] and year.resolve(YEAR) == YEAR
    for bad in HOSTILE:
        with pytest.raises(ParamValidationError):
            units.resolve([bad])
    for bad in HOSTILE_YEARS + [10**9, -2025, 2025.5]:
        with pytest.raises(ParamValidationError):
            year.resolve(bad)


# --------------------------------------------------------------------------------------------
# The operators' dashboard API (on Airflow's API server, as the plugin mounts it)


@pytest.fixture(scope="module")
def dashboard(dags):
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    client = TestClient(create_app("core"))
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="ADMIN"))
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_dashboard_api_refuses_hostile_layouts_and_years(dashboard):
    config = load_config()
    store = Path(config.store.work.removeprefix("file://")).parent
    store.mkdir(parents=True, exist_ok=True)
    before = tree(store)
    assert dashboard.get("/clcplus/api/map/demo").status_code == 200
    paths = []
    for bad in HOSTILE + ["Demo", "production2"]:
        part = quote(bad, safe="")
        paths += [f"/clcplus/api/map/{part}", f"/clcplus/api/state/{part}/{YEAR}",
                  f"/clcplus/api/products/{part}/{YEAR}", f"/clcplus/api/geojson/{part}"]
    for bad in HOSTILE_YEARS[:-1]:
        if bad == "2025.0":
            continue  # FastAPI reads it as the int 2025: a year, not a path
        part = quote(bad, safe="")
        paths += [f"/clcplus/api/state/demo/{part}", f"/clcplus/api/products/demo/{part}",
                  f"/clcplus/api/geojson/demo?year={part}"]
    paths += ["/clcplus/api/geojson/demo?crs=..%2F4326", "/clcplus/api/geojson/demo?crs=4326%0A"]
    for path in paths:
        reply = dashboard.get(path)
        # Refused: not found (no such layout or year, or no route for an id holding "/"), or
        # not valid (422 names the parameter); never an answer, never a server error.
        assert reply.status_code in (404, 422), (path, reply.status_code, reply.text[:200])
        if reply.headers.get("content-type", "").startswith("application/json"):
            assert reply.json()["detail"], path
    refused = dashboard.get(f"/clcplus/api/state/demo/{YEAR + 100}")
    assert refused.status_code == 404 and "outside" in refused.json()["detail"]
    unknown = dashboard.get("/clcplus/api/map/nosuchlayout")
    assert unknown.status_code == 404 and "unknown layout 'nosuchlayout'" in unknown.json()["detail"]
    # A run's DAG id and run id (the page opened from a run) are looked up, never a path.
    for bad in HOSTILE[:12]:
        reply = dashboard.get("/clcplus/api/options", params={"dag_id": f"clcplus_pu_{bad}", "run_id": bad})
        assert reply.status_code == 200, reply.text[:200]
        assert "is not a CLCplus production-unit DAG" in reply.json()["run"]["error"]
    assert tree(store) == before


# --------------------------------------------------------------------------------------------
# The command line


def _cli(sandbox, capsys, *argv: str) -> str:
    from clcplus_ops.cli import main

    assert main(["--config", str(sandbox["path"]), *argv]) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err[:300]  # one line, no traceback
    return err


def test_cli_refuses_hostile_ids_in_one_line(sandbox, capsys):
    for bad in HOSTILE:
        if bad.startswith("-"):
            continue
        _cli(sandbox, capsys, "run", "plan_tiles", bad, str(YEAR), "--layout", "demo")
        _cli(sandbox, capsys, "run", "define_tile", PU, str(YEAR), bad, "--layout", "demo")
        _cli(sandbox, capsys, "run", "product_tile", PU, str(YEAR), bad, "--layout", "demo")
        _cli(sandbox, capsys, "run", "extract", bad, str(YEAR), "--layout", "demo")
        _cli(sandbox, capsys, "plan", PU, str(YEAR), "--layout", "demo", "--only-tiles", bad)
        _cli(sandbox, capsys, "train", "review", bad, str(YEAR), "--layout", "demo", "--reviewer", "expert")
        _cli(sandbox, capsys, "tiles", bad, "--layout", "demo")
        _cli(sandbox, capsys, "models", "show", bad)
        _cli(sandbox, capsys, "previous", "import", "nothing.tif", bad, str(YEAR), "--layout", "demo")
    for bad in HOSTILE_YEARS[:-1]:
        if bad.startswith("-"):
            bad = " " + bad  # not an option to argparse; still not a year
        _cli(sandbox, capsys, "run", "plan_tiles", PU, bad, "--layout", "demo")
        _cli(sandbox, capsys, "products", bad, "--layout", "demo")
    for bad in HOSTILE_VERSIONS:
        if not bad:
            continue  # an empty --version is no version: the latest
        assert "v0001" in _cli(sandbox, capsys, "models", "show", PU, "--version", bad)
        _cli(sandbox, capsys, "run", "classify", PU, str(YEAR), TILE, "--layout", "demo",
             "--option", f"model_version={bad}")
    # A reviewer the configuration does not name.
    assert "'mallory'" in _cli(sandbox, capsys, "train", "review", PU, str(YEAR), "--layout", "demo",
                               "--reviewer", "mallory")


def test_the_installed_command_refuses_a_hostile_pu(sandbox):
    clcplus = Path(sys.executable).with_name("clcplus")
    result = subprocess.run([str(clcplus), "--config", str(sandbox["path"]), "run", "plan_tiles", "../../etc",
                             str(YEAR), "--layout", "demo"], capture_output=True, text=True, timeout=120,
                            env={**os.environ}, cwd=sandbox["root"])
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: production unit '../../etc' is not in the demo layout (DEMO1, DEMO2)\n"
