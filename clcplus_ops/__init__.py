"""CLCplus Backbone production library.

Every stage is a plain function over URLs and a configuration object; nothing here imports
Airflow (``dags/`` and ``plugins/`` import this package, never the reverse).
"""

__version__ = "0.1.0"
