"""CLCplus Backbone production library.

Every stage is a declaration (:mod:`clcplus_ops.stage`) run by one runner
(:mod:`clcplus_ops.runner`); :mod:`clcplus_ops.pipeline` lists them in the order data flows.
Nothing here imports Airflow (``dags/`` and ``plugins/`` import this package, never the
reverse).
"""

__version__ = "0.1.0"
