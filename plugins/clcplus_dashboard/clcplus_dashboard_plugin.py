"""Airflow plugin: the CLCplus operators' dashboard (a FastAPI app under ``/clcplus`` on the API
server, and an entry in the UI's navigation that shows it embedded)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/clcplus"


class ClcplusDashboardPlugin(AirflowPlugin):
    name = "clcplus_dashboard"
    external_views = [
        {
            "name": "CLCplus production",
            "href": f"{URL_PREFIX}/",
            "url_route": "clcplus-dashboard",
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/static/icon.svg",
        },
        {
            # On a PU run's page: the same dashboard, that run's PU and year selected.
            "name": "CLCplus map",
            "href": f"{URL_PREFIX}/?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "url_route": "clcplus-run-map",
            "destination": "dag_run",
            "icon": f"{URL_PREFIX}/static/icon.svg",
        },
    ]

    # Every Airflow process loads the plugins (task runners too, for macros): the app, with
    # FastAPI and Airflow's API security imports, is built only where it is served.
    @property
    def fastapi_apps(self):
        from clcplus_dashboard.app import app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "CLCplus operators' dashboard"}]
