#!/usr/bin/env bash
# Run the demo production on the embedded default (Airflow with SQLite and the LocalExecutor,
# file:// store under .demo/). Creates .venv on first use. Extra arguments go to `clcplus demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/clcplus demo --fresh "$@"
