#!/usr/bin/env bash
# Zero-setup demo of the edge job runner: everything lives in a temp directory.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "demo: setting up .venv (scripts/setup.sh; the first time installs Airflow, a few minutes) ..." >&2
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
