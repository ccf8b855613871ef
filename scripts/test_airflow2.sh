#!/usr/bin/env bash
# The second CI environment: Airflow 2.11 in its own venv (.venv-airflow2, created
# idempotently) imports the provider and runs one example DAG end to end against the
# real sshd (tests/airflow2). Extra arguments go to pytest.
#
# The system parts the sshd harness needs (openssh-server, pipx) come from
# scripts/setup.sh, which scripts/test.sh runs first.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${AIRFLOW2_VENV:-.venv-airflow2}
# Only PyPI is reachable (no constraints file): the resolver's choice is what CI gets, and
# what it picked (providers-ssh 7.x, SQLAlchemy 1.4, Flask 2.3) works with Airflow 2.11.
REQUIREMENTS=(
  "apache-airflow==2.11.*"
  "apache-airflow-providers-ssh"
  "asyncssh>=2.14"
  "paramiko>=3.0"
  "pytest>=8"
  "pytest-timeout"
)

if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
  echo "test_airflow2: Airflow 2.11 needs Python 3.10-3.12 (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

# Reinstall only when what is installed could differ: this script or pyproject.toml changed.
# The project is installed editable, so code changes need no reinstall.
stamp="$VENV/.orchesjob-airflow2-stamp"
want=$(cat "$0" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  start=$(date +%s)
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || exit 1
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${REQUIREMENTS[@]}" -e . || exit 1
  echo "$want" >"$stamp"
  echo "test_airflow2: installed $VENV in $(($(date +%s) - start))s" >&2
fi

# (Not "import airflow": that would write an airflow.cfg into ~/airflow.)
"$VENV/bin/python" -c 'from importlib.metadata import version; print("test_airflow2: Airflow", version("apache-airflow"))' ||
  exit 1

"$VENV/bin/python" -m pytest tests/airflow2 -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test_airflow2: pytest collected no tests: the Airflow 2.11 environment is broken" >&2
  exit 1
fi
exit "$rc"
