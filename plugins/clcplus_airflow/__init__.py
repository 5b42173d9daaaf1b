"""The Airflow side of CLCplus: everything the DAG files compose.

* :mod:`.connections`: S3 settings from the Airflow connection (Amazon provider's hook),
  handed to the library as plain values;
* :mod:`.tasks`: the generic task factory that runs a declared stage
  (:func:`~clcplus_airflow.tasks.stage_task`);
* :mod:`.production` and :mod:`.training`: documentation, params, DAG arguments from the
  configuration, the ``select_model`` task and the expert review.

The library (:mod:`clcplus_ops`) never imports this package. This package lives in the plugins
folder (on ``sys.path`` for every Airflow process) and holds no Airflow plugin; the folder's
``.airflowignore`` keeps Airflow's plugin scan from importing its modules a second time under
bare module names.
"""
