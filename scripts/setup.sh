#!/usr/bin/env bash
# Idempotent development setup: a virtualenv at .venv with the project and its
# test dependencies. Safe to run repeatedly; used by test.sh, demo.sh and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: Python >= 3.10 is required (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Quiet, but show errors. Editable install so the console scripts track the checkout.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
