#!/usr/bin/env bash
# Runs the whole test suite (what CI runs): lint, then pytest with Airflow 3, then
# the Airflow 2.11 environment and the Airflow version matrix. Extra arguments go to the
# main pytest run only (and then the Airflow 2.11 and matrix runs are skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

.venv/bin/ruff check . || exit 1
.venv/bin/ruff format --check . || exit 1

.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: the setup is broken" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"

if [ $# -eq 0 ]; then
  echo "test.sh: Airflow 2.11 environment" >&2
  bash scripts/test_airflow2.sh || exit 1
  echo "test.sh: Airflow version matrix (docs/AIRFLOW_VERSIONS.md)" >&2
  bash scripts/test_matrix.sh || exit 1
fi
