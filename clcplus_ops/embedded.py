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
    }
    for key, value in (overrides or {}).items():
        data.setdefault(key, {}).update(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    return path
