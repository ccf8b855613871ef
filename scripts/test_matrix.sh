#!/usr/bin/env bash
# The Airflow version matrix (docs/AIRFLOW_VERSIONS.md): for each Airflow that users run, a
# cached venv installed the way MWAA installs (Airflow's published constraints), then the
# provider's unit tests that apply to that version and a real-triggerer scenario against the
# real sshd (tests/matrix). Called by scripts/test.sh; extra arguments go to every pytest run.
#
#   bash scripts/test_matrix.sh                # every version
#   MATRIX=af30 bash scripts/test_matrix.sh    # some (af211, af30, af33, floor)
#
# A venv is rebuilt only when what it installs changed: its requirement, constraints file or
# the project's declared runtime dependencies (the project is installed editable, so code
# changes need no reinstall).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
MATRIX=${MATRIX:-"af211 af30 af33 floor"}
# A user of its own on the sshd harness, so this never collides with the other suites.
export ORCHESJOB_TEST_SSH_USER=${ORCHESJOB_TEST_SSH_USER:-orchesjob-itd}
TEST_DEPS=(pytest pytest-mock pytest-timeout)

# The minimum versions that work (docs/AIRFLOW_VERSIONS.md says how they were found), tested
# together on the oldest Airflow: the 2.11.0 constraints with these pins replaced.
# pyproject.toml's airflow extra must declare them (tests/matrix/test_floors.py checks).
FLOORS=("apache-airflow-providers-ssh==4.0.0" "paramiko==3.2.0" "asyncssh==2.15.0")

# Airflow 2.11's BaseOperator.execute guard keeps its state per thread: execute() called from a
# thread other than the one that imported Airflow raises AttributeError ('_thread._local' object
# has no attribute 'callers'). This test calls it from a thread (a real worker never does).
AF2_DESELECT="--deselect tests/provider/test_operators_local.py::test_killing_a_worker_waiting_for_a_reservation_cancels_it"

# name -> venv | Airflow requirement | constraints file ("" = the resolver's choice) | MWAA
# recipe installed ("" = none) | test paths and pytest options
spec() {
  case "$1" in
    af211) echo ".venv-af211|apache-airflow==2.11.0|tests/matrix/constraints/airflow-2.11.0.txt|docs/mwaa/requirements-2.11.0.txt|tests/provider tests/matrix $AF2_DESELECT" ;;
    af30) echo ".venv-af30|apache-airflow==3.0.6|tests/matrix/constraints/airflow-3.0.6.txt|docs/mwaa/requirements-3.0.6.txt|tests/provider tests/matrix" ;;
    # No constraints file of 3.3.x is reachable here: the dev venv (scripts/setup.sh, newest
    # releases of everything) is the 3.3 entry; the main suite runs tests/provider on it.
    af33) echo ".venv||||tests/matrix" ;;
    floor) echo ".venv-floor|apache-airflow==2.11.0|FLOORS||tests/provider tests/matrix/test_floors.py $AF2_DESELECT" ;;
    *) return 1 ;;
  esac
}

# The MWAA recipe (README "On MWAA") as this machine can install it: raw.githubusercontent.com,
# where its --constraint URL points, is not reachable here, so the stored pins of that same file
# stand in (tests/packaging/test_mwaa_recipe.py checks that they name the same tag and file),
# and this checkout stands in for the released provider of the same version.
mwaa_requirements() {  # recipe constraints
  sed -e "s|^--constraint .*|--constraint $PWD/$2|" -e 's|^airflow-provider-orchesjob\[airflow\]==.*|-e .[airflow]|' "$1"
}

floor_constraints() {  # the 2.11.0 pins with FLOORS replacing their packages
  local names
  names=$(printf '%s\n' "${FLOORS[@]}" | sed 's/==.*//' | paste -sd'|')
  grep -v -E "^($names)==" tests/matrix/constraints/airflow-2.11.0.txt
  printf '%s\n' "# floors" "${FLOORS[@]}"
}

if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
  echo "test_matrix: needs Python 3.10-3.12 (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

build() {  # venv requirement constraints [recipe]
  local venv=$1 req=$2 cons=$3 recipe=${4:-}
  local stamp="$venv/.orchesjob-matrix-stamp" want start reqs
  want=$({
    echo "$req ${TEST_DEPS[*]}"
    cat "$cons"
    [ -z "$recipe" ] || cat "$recipe"
    sed -n -e '/^dependencies = /p' -e '/^airflow = \[/,/^\]/p' pyproject.toml
  } | sha256sum | cut -d' ' -f1)
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  start=$(date +%s)
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv" || return 1
  # As MWAA installs requirements.txt: everything under the constraints, the provider included.
  # (The machine's pip config lists local index folders that may not exist: drop that noise.)
  if [ -n "$recipe" ]; then
    reqs=$(mktemp /tmp/orchesjob-mwaa-requirements.XXXXXX)
    mwaa_requirements "$recipe" "$cons" >"$reqs"
    set -- -r "$reqs"
  else
    set -- -c "$cons" -e '.[airflow]'
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" \
    "$req" "${TEST_DEPS[@]}" 2> >(grep -v "is neither a file nor a directory" >&2)
  local rc=$?
  [ -z "$recipe" ] || rm -f "$reqs"
  [ "$rc" -eq 0 ] || return 1
  echo "$want" >"$stamp"
  echo "test_matrix: built $venv in $(($(date +%s) - start))s" >&2
}

failed=()
for name in $MATRIX; do
  IFS='|' read -r venv req cons recipe paths < <(spec "$name") || { echo "test_matrix: unknown entry $name" >&2; exit 2; }
  t0=$(date +%s)
  if [ "$cons" = FLOORS ]; then
    cons=$(mktemp /tmp/orchesjob-floor-constraints.XXXXXX)
    floor_constraints >"$cons"
  fi
  if [ -n "$req" ]; then
    build "$venv" "$req" "$cons" "$recipe"
    brc=$?
    [[ "$cons" == /tmp/* ]] && rm -f "$cons"
    [ "$brc" -eq 0 ] || { echo "test_matrix: $name: install failed" >&2; failed+=("$name"); continue; }
  elif [ ! -x "$venv/bin/python" ]; then
    bash scripts/setup.sh || { failed+=("$name"); continue; }
  fi
  t1=$(date +%s)
  "$venv/bin/python" -c 'from importlib.metadata import version as v
print("test_matrix: Airflow", v("apache-airflow"), "providers-ssh", v("apache-airflow-providers-ssh"),
      "paramiko", v("paramiko"), "asyncssh", v("asyncssh"))' || { failed+=("$name"); continue; }
  floors=""
  [ "$name" = floor ] && floors="${FLOORS[*]}"
  # shellcheck disable=SC2086 # paths is a list
  ORCHESJOB_MATRIX=1 ORCHESJOB_MATRIX_FLOORS="$floors" "$venv/bin/python" -m pytest $paths -q -p no:cacheprovider -rfxXs "$@"
  rc=$?
  [ "$rc" -eq 5 ] && echo "test_matrix: $name: pytest collected no tests" >&2
  [ "$rc" -eq 0 ] || failed+=("$name")
  echo "test_matrix: $name: install $((t1 - t0))s, tests $(($(date +%s) - t1))s, exit $rc" >&2
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "test_matrix: failed: ${failed[*]}" >&2
  exit 1
fi
