#!/usr/bin/env bash
# Run the test suite (creates .venv on first use). Extra arguments go to pytest.
# Two worker processes (pytest-xdist), a test module on one worker, the heaviest modules first
# (tests/conftest.py): on two cores the suite is CPU-bound and one process leaves a core idle
# while the Airflow drills wait on their deployments. ``-n 0`` runs it in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
