#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the package with the pinned dependency set
# (constraints.txt). Cheap when nothing changed: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
"$python" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' || {
  echo "bootstrap: need Python 3.11 or 3.12, found $("$python" --version 2>&1)" >&2; exit 1; }

stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing into .venv with $python (first run takes a few minutes)" >&2
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  # This machine's pip configuration names local index folders that may be absent; drop
  # pip's one-line warnings about them, keep everything else it says.
  quiet_pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
  quiet_pip install --quiet --upgrade pip
  # torch is pinned to 2.13.0; the development and CI machines hold its CPU wheel locally.
  quiet_pip install --quiet --constraint constraints.txt --editable ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# Compile the numba kernels once (cached next to their modules) rather than in the first task
# or test that filters a tile; about 18 s on a cold cache, under a second once cached.
.venv/bin/python -m clcplus_ops.jit >&2
