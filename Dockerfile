# Production image: the official Airflow image plus the clcplus_ops library, the DAGs and the
# plugin, installed with the same pinned dependency set as development and CI.
FROM apache/airflow:3.3.2-python3.11

USER airflow

COPY --chown=airflow:root pyproject.toml constraints.txt README.md /opt/clcplus/
COPY --chown=airflow:root clcplus_ops /opt/clcplus/clcplus_ops
# constraints.txt pins torch 2.13.0; from PyPI that is the CUDA build, as the gpu queue wants.
# For a CPU-only image add: --extra-index-url https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --constraint /opt/clcplus/constraints.txt /opt/clcplus

COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root plugins/ /opt/airflow/plugins/
COPY --chown=airflow:root include/ /opt/airflow/include/

ENV CLCPLUS_CACHE_DIR=/opt/airflow/cache
# Warm the tile-index cache so the first DAG parse does not compute it.
RUN python -c "from clcplus_ops.config import load_config; from clcplus_ops.geo.tile_index import tile_index; c = load_config(); [tile_index(c.layout_path(l), c.for_layout(l).grid) for l in c.LAYOUTS]"
# Compile the numba kernels (bilateral filter, time-series interpolation) once into a cache the
# airflow user can write (the package folder may not be writable), so tasks load them instead of
# compiling for seconds each in every fresh container.
ENV NUMBA_CACHE_DIR=/opt/airflow/cache/numba
RUN python -m clcplus_ops.jit
