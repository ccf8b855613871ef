#!/usr/bin/env bash
# Runs the whole test suite (what CI runs). Extra arguments go to pytest.
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
exit "$rc"
