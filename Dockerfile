# Production image: the official Airflow image plus the clcplus_ops library, the DAGs and the
# plugin, installed with the same pinned dependency set as development and CI (constraints.txt
# pins apache-airflow to the image's version; tests/test_deploy_files.py checks they agree).
# One image serves every service of deploy/compose.yaml and deploy/helm/values.yaml.
# Linted by scripts/lint_deploy.sh (hadolint and checkov).
# checkov:skip=CKV_DOCKER_2: one image runs six different commands (scheduler, DAG processor, triggerer, API server, two kinds of Celery worker); each service's health check is in deploy/compose.yaml and the Helm chart's probes
FROM apache/airflow:3.3.2-python3.11

LABEL org.opencontainers.image.title="clcplus-airflow" \
      org.opencontainers.image.description="CLCplus Backbone production on Apache Airflow 3.3.2" \
      org.opencontainers.image.licenses="EUPL-1.2"

# The official image's airflow user (uid 50000, group 0), by number so that Kubernetes'
# runAsNonRoot can verify it.
USER 50000

# Dependencies first, from the project metadata and the lock only, so that a code change does
# not reinstall them (torch alone is gigabytes). constraints.txt pins torch 2.13.0; from PyPI
# that is the CUDA build, as the gpu queue wants (for a CPU-only image add
# --extra-index-url https://download.pytorch.org/whl/cpu).
COPY --chown=50000:0 pyproject.toml constraints.txt /opt/clcplus/
RUN python -c "import tomllib; print(*tomllib.load(open('/opt/clcplus/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && pip install --no-cache-dir --constraint /opt/clcplus/constraints.txt --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY --chown=50000:0 README.md /opt/clcplus/
COPY --chown=50000:0 clcplus_ops /opt/clcplus/clcplus_ops
RUN pip install --no-cache-dir --no-deps --constraint /opt/clcplus/constraints.txt /opt/clcplus

COPY --chown=50000:0 dags/ /opt/airflow/dags/
COPY --chown=50000:0 plugins/ /opt/airflow/plugins/
COPY --chown=50000:0 include/ /opt/airflow/include/

# Caches the airflow user can write (the package folder may not be writable): the tile index of
# both layouts, so the first DAG parse does not compute it, and the numba kernels (bilateral
# filter, time-series interpolation), compiled once here instead of for seconds in every fresh
# container's first task.
ENV CLCPLUS_CACHE_DIR=/opt/airflow/cache \
    NUMBA_CACHE_DIR=/opt/airflow/cache/numba
RUN python -c "from clcplus_ops.config import load_config; from clcplus_ops.geo.tile_index import tile_index; c = load_config(); [tile_index(c.layout_path(l), c.for_layout(l).grid) for l in c.LAYOUTS]" \
    && python -m clcplus_ops.jit
