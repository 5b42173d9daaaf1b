#!/usr/bin/env bash
# Lint the deployment files; exit 1 naming every linter that found a problem.
#   Dockerfile              hadolint (deploy/hadolint.yaml), checkov's Dockerfile checks
#   deploy/compose.yaml     the Compose Specification's JSON schema (check-jsonschema), yamllint
#   deploy/helm/values.yaml yamllint
#   all of them             checkov's secret scan (no credential in a committed file)
# Findings that cannot be fixed are skipped in the file itself, each with its reason
# (`# hadolint ignore=...`, `# checkov:skip=...`), never here.
#
# The linters live in .venv-tools/ (Python 3.11, deploy/lint-requirements.txt pinned by
# deploy/lint-constraints.txt), installed on first use (about 30 s) and reused while a stamp
# matches those two files.
#
# Usage: scripts/lint_deploy.sh                 the repository's files
#        scripts/lint_deploy.sh [--dockerfile F] [--compose F] [--helm-values F]
#                                               only the files named (the tests lint bad ones)
#        scripts/lint_deploy.sh --install-only  install the linters and stop
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
absolute() { [ -e "$1" ] || { echo "lint_deploy: no such file: $1" >&2; exit 2; }; realpath "$1"; }

dockerfile="" compose="" helm_values="" named=0 install_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dockerfile) dockerfile=$(absolute "${2:?--dockerfile needs a file}"); named=1; shift 2 ;;
    --compose) compose=$(absolute "${2:?--compose needs a file}"); named=1; shift 2 ;;
    --helm-values) helm_values=$(absolute "${2:?--helm-values needs a file}"); named=1; shift 2 ;;
    --install-only) install_only=1; shift ;;
    *) usage ;;
  esac
done

cd "$(dirname "$0")/.."
repo=$(pwd)
if [ "$named" = 0 ]; then
  dockerfile=$repo/Dockerfile compose=$repo/deploy/compose.yaml helm_values=$repo/deploy/helm/values.yaml
fi

# --- the linters ---------------------------------------------------------------------------
tools=.venv-tools
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
stamp="$tools/.installed-$(cat deploy/lint-requirements.txt deploy/lint-constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "lint_deploy: installing the linters into $tools with $python (first run, about 30 s)" >&2
  [ -x "$tools/bin/python" ] || "$python" -m venv "$tools"
  # This machine's pip configuration names local index folders that may be absent; drop pip's
  # one-line warnings about them, keep everything else it says.
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check \
      --requirement deploy/lint-requirements.txt --constraint deploy/lint-constraints.txt \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  rm -f "$tools"/.installed-*
  touch "$stamp"
fi
[ "$install_only" = 1 ] && exit 0
bin=$repo/$tools/bin

# --- the checks ----------------------------------------------------------------------------
failed=()
check() {  # check NAME COMMAND...: run one linter, print what it says, remember a failure
  local name=$1; shift
  local output status=0
  output=$("$@" 2>&1) || status=$?
  if [ "$status" = 0 ]; then
    echo "ok      $name"
  else
    echo "FAILED  $name (exit $status)"
    printf '%s\n' "$output" | sed 's/^/        /'
    failed+=("$name")
  fi
}
# checkov: local checks only (no download of external checks or guidelines, no platform).
checkov() { "$bin/checkov" --quiet --compact --skip-download "$@"; }

# Paths as the caller knows them: relative to the repository where they are inside it.
show() { case "$1" in "$repo"/*) echo "${1#"$repo"/}" ;; *) echo "$1" ;; esac; }

if [ -n "$dockerfile" ]; then
  check "hadolint $(show "$dockerfile")" "$bin/hadolint" --no-color --config "$repo/deploy/hadolint.yaml" "$dockerfile"
  check "checkov dockerfile+secrets $(show "$dockerfile")" checkov --framework dockerfile secrets --file "$dockerfile"
fi
yaml_files=()
[ -n "$compose" ] && yaml_files+=("$compose")
[ -n "$helm_values" ] && yaml_files+=("$helm_values")
# The repository's run also covers the configuration the deployments mount and the example
# environment file.
[ "$named" = 0 ] && yaml_files+=("$repo/deploy/clcplus.yaml")
for yaml_file in "${yaml_files[@]}"; do
  check "yamllint $(show "$yaml_file")" "$bin/yamllint" --strict --config-file "$repo/deploy/yamllint.yaml" "$yaml_file"
done
if [ -n "$compose" ]; then
  check "compose-spec schema $(show "$compose")" "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$compose"
fi
secret_files=("${yaml_files[@]}")
[ "$named" = 0 ] && secret_files+=("$repo/deploy/env.example" "$repo/deploy/README.md")
# checkov only warns about a file it cannot read: make a missing one an error here.
for f in "${secret_files[@]}"; do absolute "$f" >/dev/null; done
if [ "${#secret_files[@]}" -gt 0 ]; then
  check "checkov secrets $(for f in "${secret_files[@]}"; do printf '%s ' "$(show "$f")"; done)" \
    checkov --framework secrets --file "${secret_files[@]}"
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "lint_deploy: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint_deploy: all checks passed"
