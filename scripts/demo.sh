#!/usr/bin/env bash
# Zero-setup demo of the edge job runner: everything lives in a temp directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
