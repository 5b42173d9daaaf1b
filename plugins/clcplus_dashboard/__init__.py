"""The CLCplus operators' dashboard: an Airflow plugin (:mod:`.clcplus_dashboard_plugin`) that
serves a FastAPI app on the API server under ``/clcplus`` (:mod:`.app`: a page with a map of the
PUs and their tiles coloured by state for a reference year, per-PU progress and ETA, the product
tiles with their publication state and self-check, links to task instances and logs) and adds
it to the Airflow UI's navigation as an embedded view.

What is shown is computed by :mod:`clcplus_ops.dashboard` from the metadata database's runs and
task instances (:mod:`.airflow_state`) and the store's product records.
"""
