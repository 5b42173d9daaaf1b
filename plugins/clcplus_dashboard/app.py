"""The dashboard's FastAPI app, mounted by the plugin under ``/clcplus`` on Airflow's API server.

``/`` is the page (plain HTML, JS and an SVG map; no build step), ``/static/`` its files, and
``/api/...`` the JSON it reads. Every API answer needs a signed-in Airflow user (the UI's session
cookie, or a bearer token) and covers only the PU DAGs that user may read.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

from fastapi import FastAPI, HTTPException, Path as PathParam, Query
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.configuration import conf
from clcplus_dashboard import airflow_state
from clcplus_ops import dashboard
from clcplus_ops.calendar import scheduled_years
from clcplus_ops.config import load_config

STATIC = Path(__file__).with_name("static")
LAYOUTS = ("production", "demo")
# The store's product records are read at most this often per layout and year (on S3 a read of
# 875 tiles' records is hundreds of requests); the page refreshes every 30 s.
PRODUCTS_TTL_S = 20.0

app = FastAPI(title="CLCplus operators' dashboard", docs_url=None, redoc_url=None, openapi_url=None)
# The 138-PU map is 1.5 MB of JSON; compressed it is a fraction of that.
app.add_middleware(GZipMiddleware, minimum_size=4096)
app.mount("/static", StaticFiles(directory=STATIC), name="static")

LayoutParam = Annotated[str, PathParam(pattern=r"^[a-z]+$")]
YearParam = Annotated[int, PathParam()]


@app.get("/", include_in_schema=False)
def page() -> FileResponse:
    # The page holds no data: it asks the API, which needs a signed-in user.
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@app.get("/api/options")
def options(user: GetUserDep, dag_id: str | None = None, run_id: str | None = None) -> dict:
    """The layouts, the reference years to choose from, the default choice and the UI's base path;
    with a PU DAG's ``dag_id`` and ``run_id`` (the page opened from a run), that PU's layout and
    the run's reference year as the choice."""
    config = load_config()
    layouts = [*config.airflow.layouts, *(name for name in LAYOUTS if name not in config.airflow.layouts)]
    series = config.time_series
    with_runs: dict[int, dt.datetime | None] = {}
    for layout in config.airflow.layouts:
        pus = [pu["pu_id"] for pu in dashboard.layout_map(config, layout)["pus"]]
        for year, when in airflow_state.run_years(pus, series).items():
            if year not in with_runs or (when and (with_runs[year] is None or when > with_runs[year])):
                with_runs[year] = when
    today = dt.date.today()
    closed = []
    for year in scheduled_years(series=series):
        if year > series.last_reference_year or series.window(year)[1] > today:
            break
        closed.append(year)
    years = sorted(set(closed) | set(with_runs), reverse=True)
    if with_runs:  # the year most recently worked on
        default = max(with_runs, key=lambda y: (with_runs[y] or dt.datetime.min.replace(tzinfo=dt.timezone.utc), y))
    else:
        default = closed[-1] if closed else series.first_biennial_year
    answer = {"layouts": layouts, "default_layout": layouts[0], "years": years, "default_year": default,
              "years_with_runs": sorted(with_runs), "ui_base": _ui_base(), "user": user.get_name()}
    if dag_id is not None:
        answer["run"] = _run_choice(config, user, dag_id, run_id)
    return answer


def _run_choice(config, user, dag_id: str, run_id: str | None) -> dict:
    """The layout, PU and reference year of a PU DAG's run, or why there is none."""
    pu_id = dag_id.removeprefix(airflow_state.DAG_PREFIX)
    layout = next((name for name in LAYOUTS
                   if any(pu["pu_id"] == pu_id for pu in dashboard.layout_map(config, name)["pus"])), None)
    if not dag_id.startswith(airflow_state.DAG_PREFIX) or layout is None:
        return {"error": f"{dag_id} is not a CLCplus production-unit DAG"}
    if not _readable_pus(user, [pu_id]):
        return {"error": f"{dag_id} does not exist or you may not read it"}
    year = airflow_state.run_year(dag_id, run_id, config.time_series) if run_id else None
    return {"layout": layout, "pu_id": pu_id, "year": year}


@app.get("/api/map/{layout}")
def layout_map(layout: LayoutParam, user: GetUserDep) -> dict:
    """Frames, PU outlines, processing tiles and product tiles of a layout (see
    :func:`clcplus_ops.dashboard.layout_map`)."""
    config = load_config()
    _check_layout(layout)
    started = time.perf_counter()
    data = dashboard.layout_map(config, layout)
    return {"layout": layout, **data, "built_s": round(time.perf_counter() - started, 3)}


@app.get("/api/state/{layout}/{year}")
def production_state(layout: LayoutParam, year: YearParam, user: GetUserDep) -> dict:
    """Per PU of the layout, the year's run, tile states (in the map's tile order), progress,
    current stage, elapsed time and ETA."""
    config = load_config()
    _check_layout(layout)
    _check_year(config, year)
    data = dashboard.layout_map(config, layout)
    pu_tiles = {pu: [data["tiles"]["ids"][i] for i in refs] for pu, refs in data["pu_tiles"].items()}
    readable = _readable_pus(user, pu_tiles)
    runs, tis, plans, _ = airflow_state.year_rows(readable, year, config.time_series)
    now = dt.datetime.now(dt.timezone.utc)
    states = dashboard.production_state(pu_tiles, runs, tis, plans, tile_tasks=airflow_state.TILE_TASKS,
                                        pu_tasks=airflow_state.PU_TASKS, now=now, readable=readable)
    for pu_id, summary in states.items():
        summary["dag_id"] = airflow_state.dag_id(pu_id)
    return {"layout": layout, "year": year, "now": now.isoformat(), "pus": states,
            "tile_tasks": list(airflow_state.TILE_TASKS), "states": list(dashboard.TILE_STATES)}


_products_cache: dict[tuple[str, int], tuple[float, list[dict]]] = {}


@app.get("/api/products/{layout}/{year}")
def products(layout: LayoutParam, year: YearParam, user: GetUserDep) -> dict:
    """Per product tile: its state in the store (waiting, made, checked, failed self-check,
    published), revision, self-check result and manifest, and the task chain that made it."""
    from clcplus_ops.products.summary import delivery_summary

    config = load_config()
    _check_layout(layout)
    _check_year(config, year)
    cached = _products_cache.get((layout, year))
    if cached and time.monotonic() - cached[0] < PRODUCTS_TTL_S:
        summary = cached[1]
    else:
        summary = delivery_summary(config, layout, year)
        _products_cache[(layout, year)] = (time.monotonic(), summary)
    pu_ids = sorted({pu for entry in summary for pu in entry["pus"]})
    readable = _readable_pus(user, {pu: () for pu in pu_ids})
    runs, tis, _, plans = airflow_state.year_rows(readable, year, config.time_series)
    tasks = dashboard.product_tasks([e["tile"] for e in summary], runs, tis, plans,
                                    product_tasks=airflow_state.PRODUCT_TASKS)
    tiles = []
    for entry in summary:
        if not set(entry["pus"]) & readable:
            continue  # the user may read none of the DAGs that make it
        task = tasks.get(entry["tile"])
        if task:
            task = {**task, "dag_id": airflow_state.dag_id(task["pu_id"])}
        tiles.append({**{k: v for k, v in entry.items() if k != "files"}, "task": task})
    return {"layout": layout, "year": year, "tiles": tiles}


@app.get("/api/geojson/{layout}")
def geojson(layout: LayoutParam, user: GetUserDep, year: int | None = None,
            crs: Annotated[str, Query(pattern=r"^(4326|3035)$")] = "4326") -> dict:
    """The layout's PUs and tiles as GeoJSON (lon/lat, or EPSG:3035), with a year's states if given."""
    config = load_config()
    _check_layout(layout)
    states = None
    if year is not None:
        states = production_state(layout, year, user)["pus"]
    return dashboard.layout_geojson(config, layout, lonlat=crs == "4326", states=states)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise HTTPException(404, f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")


def _check_year(config, year: int) -> None:
    series = config.time_series
    if not series.first_reference_year <= year <= series.last_reference_year:
        raise HTTPException(404, f"reference year {year} is outside time_series.first_reference_year.."
                                 f"last_reference_year ({series.first_reference_year}..{series.last_reference_year})")


def _readable_pus(user, pu_ids) -> set[str]:
    """The PUs whose DAG exists and ``user`` may read."""
    dag_ids = get_auth_manager().get_authorized_dag_ids(user=user, method="GET")
    return {pu for pu in pu_ids if airflow_state.dag_id(pu) in dag_ids}


def _ui_base() -> str:
    """The path the Airflow UI is served under ("/" unless ``[api] base_url`` has a path)."""
    path = urlparse(conf.get("api", "base_url", fallback="") or "").path or "/"
    return path if path.endswith("/") else path + "/"
