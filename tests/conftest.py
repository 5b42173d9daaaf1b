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


TILE_WORLD_TILE = "33TUL_r22c37"  # a demo-grid tile (2.5 km) on the coast near Izola: land and sea
TILE_WORLD_HALO = 8


def tile_world_config(root: Path, **extra) -> "Config":
    """The configuration of a one-tile synthetic world under ``root`` (demo layout), with
    ``extra`` sections merged in (e.g. ``time_series={"block_px": 256}``)."""
    from clcplus_ops.config import parse_config
    from clcplus_ops.geo.tiles import tile_from_id

    xmin, ymin, xmax, ymax = tile_from_id(TILE_WORLD_TILE, 2_500).bounds
    pad = TILE_WORLD_HALO * 10
    synthetic = (root / "synthetic").as_uri()
    data = {
        "store": {name: (root / name).as_uri() for name in ("work", "models", "samples", "products")},
        "synthetic": {"root": synthetic, "bounds": [xmin - pad, ymin - pad, xmax + pad, ymax + pad],
                      "epsg": 32633, "n_samples": 60},
        "sentinel2": {"static_catalog": f"{synthetic}/{{year}}/catalog.json"},
        "demo": {"grid": {"tile_size_m": 2500, "pu_buffer_m": 1000, "halo_px": TILE_WORLD_HALO}},
    }
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data).for_layout("demo")


@pytest.fixture(scope="session")
def tile_world(tmp_path_factory) -> dict:
    """One small synthetic world (one demo tile plus its halo, 2025, 60 samples), built once for
    the session and shared by the tests that need scenes of a single tile. Tests write their
    own work stores: take ``config(root)`` for a fresh root that reads this world."""
    from clcplus_ops.synthetic import build_world

    root = tmp_path_factory.mktemp("tile-world")
    started = time.perf_counter()
    record = build_world(tile_world_config(root), 2025)
    FIGURES.append(f"synthetic world (one tile, 2025): {record['items']} items built in "
                   f"{time.perf_counter() - started:.1f} s")

    def config(work_root: Path | None = None, **extra):
        """The world's configuration, with its work/models/samples/products under ``work_root``."""
        cfg = tile_world_config(root, **extra)
        if work_root is None:
            return cfg
        stores = {name: (work_root / name).as_uri() for name in ("work", "models", "samples", "products")}
        return cfg.model_copy(update={"store": cfg.store.model_copy(update=stores)})

    return {"root": root, "record": record, "config": config, "tile_id": TILE_WORLD_TILE,
            "halo": TILE_WORLD_HALO, "year": 2025}


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
