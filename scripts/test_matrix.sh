#!/usr/bin/env bash
# The Airflow version matrix (docs/AIRFLOW_VERSIONS.md): for each Airflow that users run, a
# cached venv installed the way MWAA installs (Airflow's published constraints), then the
# provider's unit tests that apply to that version and a real-triggerer scenario against the
# real sshd (tests/matrix). Called by scripts/test.sh; extra arguments go to every pytest run.
#
#   bash scripts/test_matrix.sh                # every version
#   MATRIX=af30 bash scripts/test_matrix.sh    # one (af211, af30, af33)
#
# A venv is rebuilt only when what it installs changed: its requirement, constraints file or
# the project's declared runtime dependencies (the project is installed editable, so code
# changes need no reinstall).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
MATRIX=${MATRIX:-"af211 af30 af33"}
# A user of its own on the sshd harness, so this never collides with the other suites.
export ORCHESJOB_TEST_SSH_USER=${ORCHESJOB_TEST_SSH_USER:-orchesjob-itd}
TEST_DEPS=(pytest pytest-mock pytest-timeout)

# name -> venv, Airflow requirement, constraints file ("" = the resolver's choice)
spec() {
  case "$1" in
    af211) echo ".venv-af211|apache-airflow==2.11.0|tests/matrix/constraints/airflow-2.11.0.txt" ;;
    af30) echo ".venv-af30|apache-airflow==3.0.6|tests/matrix/constraints/airflow-3.0.6.txt" ;;
    # No constraints file of 3.3.x is reachable here: the dev venv (scripts/setup.sh, newest
    # releases of everything) is the 3.3 entry.
    af33) echo ".venv||" ;;
    *) return 1 ;;
  esac
}

if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
  echo "test_matrix: needs Python 3.10-3.12 (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

build() {  # venv requirement constraints
  local venv=$1 req=$2 cons=$3
  local stamp="$venv/.orchesjob-matrix-stamp" want start
  want=$({
    echo "$req ${TEST_DEPS[*]}"
    cat "$cons"
    "$PYTHON" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(p["dependencies"], p["optional-dependencies"]["airflow"])'
  } | sha256sum | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  start=$(date +%s)
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv" || return 1
  # As MWAA installs requirements.txt: everything under the constraints, the provider included.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$cons" \
    "$req" -e '.[airflow]' "${TEST_DEPS[@]}" || return 1
  echo "$want" >"$stamp"
  echo "test_matrix: built $venv in $(($(date +%s) - start))s" >&2
}

failed=()
for name in $MATRIX; do
  IFS='|' read -r venv req cons < <(spec "$name") || { echo "test_matrix: unknown entry $name" >&2; exit 2; }
  t0=$(date +%s)
  if [ -n "$req" ]; then
    build "$venv" "$req" "$cons" || { echo "test_matrix: $name: install failed" >&2; failed+=("$name"); continue; }
  elif [ ! -x "$venv/bin/python" ]; then
    bash scripts/setup.sh || { failed+=("$name"); continue; }
  fi
  t1=$(date +%s)
  "$venv/bin/python" -c 'from importlib.metadata import version as v
print("test_matrix: Airflow", v("apache-airflow"), "providers-ssh", v("apache-airflow-providers-ssh"),
      "paramiko", v("paramiko"), "asyncssh", v("asyncssh"))' || { failed+=("$name"); continue; }
  ORCHESJOB_MATRIX=1 "$venv/bin/python" -m pytest tests/matrix -q -p no:cacheprovider -rxXs "$@"
  rc=$?
  [ "$rc" -eq 5 ] && echo "test_matrix: $name: pytest collected no tests" >&2
  [ "$rc" -eq 0 ] || failed+=("$name")
  echo "test_matrix: $name: install $((t1 - t0))s, tests $(($(date +%s) - t1))s, exit $rc" >&2
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "test_matrix: failed: ${failed[*]}" >&2
  exit 1
fi
