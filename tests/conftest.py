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

# Same code, smaller configuration: two 2-fold label-audit rounds of 6 epochs (not 15 3-fold
# rounds of 12) and hold-out and final models of at most 12 epochs (not 60; no test of the
# session's models asserts an accuracy) keep the training DAG test short (the 15-round, 60-epoch
# figures come from scripts/bench_training.py and the demo); the synthetic world covers the six DEMO1 tiles the tests run (rows
# 21-22, columns 35-37 of square 33TUL, plus the halo) with 1,500 samples, not both demo PUs
# with 6,000 (the demo runs on the whole area).
_WORLD = {"bounds": [387_500 - 80, 5_042_500 - 80, 395_000 + 80, 5_047_500 + 80], "epsg": 32633, "n_samples": 1500}
# The session's Airflow makes the demo layout's DAGs only: every dag.test() re-parses and
# re-serialises the whole DAG folder, and the 139 production DAGs cost seconds each time. The
# DagBag tests parse both layouts (``ALL_LAYOUTS_CONFIG``), which the deployments make by default.
# "expert" (a user of the session's Airflow) is the one reviewer allowed to answer label reviews.
_SETTINGS = {"training": {"label_audit_rounds": 2, "label_audit_folds": 2, "epochs": 12, "reviewers": ["expert"]},
             "demo": {"label_audit_epochs": 6}, "synthetic": _WORLD,
             # A DEMO1 run waits 3 s (not a day) for DEMO2's mosaic, polling every second.
             "blending": {"neighbour_timeout_minutes": 0.05, "neighbour_poll_seconds": 1}}
_config = write_embedded_config(_home, _home / "config.yaml", {**_SETTINGS, "airflow": {"layouts": ["demo"]}})
ALL_LAYOUTS_CONFIG = write_embedded_config(_home, _home / "config-all-layouts.yaml", _SETTINGS)
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


def dagbag_of_all_layouts():
    """The DAG folder parsed as a deployment with both layouts parses it (142 DAGs)."""
    from airflow.dag_processing.dagbag import DagBag

    from clcplus_ops.config import CONFIG_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_ENV, str(ALL_LAYOUTS_CONFIG))
        return DagBag(dag_folder=str(REPO / "dags"))


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
    """The session's synthetic Sentinel-2 world (reference year 2025, six DEMO1 tiles), built
    once into the session's store (the demo DAGs read its static catalogue)."""
    from clcplus_ops.config import load_config
    from clcplus_ops.synthetic import build_world

    started = time.perf_counter()
    record = build_world(load_config(), 2025)
    FIGURES.append(f"synthetic world (six DEMO1 tiles, 2025): {record['items']} items built in {time.perf_counter() - started:.1f} s")
    return record


TILE_WORLD_TILE = "33TUL_r22c37"  # a demo-grid tile (2.5 km) on the coast near Izola: land and sea
TILE_WORLD_HALO = 8


def tile_world_config(root: Path, **extra):
    """The configuration of a one-tile synthetic world under ``root`` (demo layout), with
    ``extra`` sections merged in (e.g. ``time_series={"block_px": 256}``)."""
    from clcplus_ops.config import parse_config
    from clcplus_ops.geo.tiles import tile_from_id
    from clcplus_ops.locations import static_catalog_template

    xmin, ymin, xmax, ymax = tile_from_id(TILE_WORLD_TILE, 2_500).bounds
    pad = TILE_WORLD_HALO * 10
    synthetic = (root / "synthetic").as_uri()
    data = {
        "store": {name: (root / name).as_uri() for name in ("work", "models", "samples", "products")},
        "synthetic": {"root": synthetic, "bounds": [xmin - pad, ymin - pad, xmax + pad, ymax + pad],
                      "epsg": 32633, "n_samples": 60},
        "sentinel2": {"static_catalog": static_catalog_template(synthetic)},
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


def random_tempcnn(config, x, seed: int = 0):
    """An untrained TempCNN: the configured architecture made narrower (16 filters, 64 dense
    units: the inference code is the same for any width, and it runs several times faster),
    seeded random weights and batch-norm affine terms; the normalisation and the batch-norm
    statistics are those of ``x`` (int16 (pixels, features, steps); one forward pass over a
    sample of it, no training), so activations keep their spread, pixels get different classes
    and folding non-trivial statistics is tested. Inference, filtering and the DAGs do not
    depend on how a model was trained: their tests use this instead of training one."""
    import torch

    from clcplus_ops.model.tempcnn import Architecture, TempCNN
    from clcplus_ops.model.trainer import Normaliser, TrainedModel, TrainParams

    training = config.training
    classes = sorted(config.codes.classes)
    arch = Architecture(channels=x.shape[1], time_steps=x.shape[2], classes=len(classes),
                        conv_layers=training.conv_layers, conv_filters=16, kernel_size=training.kernel_size,
                        dense_units=64, dropout=training.dropout)
    torch.manual_seed(seed)
    net = TempCNN(arch)
    normaliser = Normaliser.fit(x)
    generator = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(len(x), generator=generator)[:4096].numpy()]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5, generator=generator)
            norm.bias.normal_(0.0, 0.2, generator=generator)
            norm.reset_running_stats()
            norm.momentum = None  # the running statistics become the sample's
        net.train()
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        net(normaliser.apply(sample))
        net.logits.weight.mul_(3.0)  # less flat probabilities
    state = {name: value.clone() for name, value in net.state_dict().items()}
    return TrainedModel(arch, classes, normaliser, state, TrainParams.from_config(training))


def register_model(config, model, pu_id: str, reference_year: int = 2025) -> str:
    """Register ``model`` as the next version of ``pu_id``'s model in ``config``'s registry, with
    the card fields classification checks; returns the version."""
    from clcplus_ops.locations import Locations
    from clcplus_ops.model import registry
    from clcplus_ops.runner import store_for
    from clcplus_ops.sentinel2.timeseries import feature_names

    s2 = config.sentinel2
    card = {"model": {"architecture": "TempCNN, untrained (test)", "classes": model.classes,
                      "input": {"features": feature_names(s2.bands, s2.indices),
                                "steps": len(config.time_series.steps(reference_year))}}}
    return registry.register_model(store_for(config), Locations(config).models, pu_id,
                                   {"model.pt": model.to_bytes()}, card).version


@pytest.fixture(scope="session")
def demo_random_model(demo_world) -> dict:
    """A randomly initialised TempCNN registered as DEMO1's model in the session's registry
    (normalised on synthetic-range reflectances), for the DAG and runner tests that classify."""
    import numpy as np

    from clcplus_ops.config import load_config

    config = load_config().for_layout("demo")
    s2 = config.sentinel2
    shape = (4096, len(s2.bands) + len(s2.indices), config.time_series.n_steps)
    x = np.random.default_rng(0).normal(1500, 900, shape).clip(-9999, 9999).astype(np.int16)
    model = random_tempcnn(config, x)
    return {"pu_id": "DEMO1", "version": register_model(config, model, "DEMO1")}


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is not available (the shared/ folder beside the repository)")
    return path


FIGURES: list[str] = []


# The modules that take longest (each a minute or more on two cores), longest first: the suite's
# two xdist workers take whole modules in collection order (scripts/test.sh, --dist loadfile), so
# starting with these leaves short modules to fill in at the end instead of a long one alone.
HEAVY_MODULES = ("test_celery_deployment.py", "test_drills.py", "test_kill_drill.py", "test_training_dag.py",
                 "test_dags.py", "test_embedded_airflow.py", "test_airflow_s3.py", "test_product_tiles.py",
                 "test_dashboard.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_MODULES)))  # stable: others keep their order


@pytest.fixture
def figure():
    """Record a measured figure; all of them are printed at the end of the run."""
    return FIGURES.append


def pytest_sessionfinish(session):
    # Under pytest-xdist each worker hands its figures to the controlling process.
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["figures"] = FIGURES


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FIGURES.extend(getattr(node, "workeroutput", {}).get("figures", []))


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("measured figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
