#!/usr/bin/env python3
"""Example step that fails when HELLO_FAIL=1 (or --fail) — otherwise like hello_step.py."""

from __future__ import annotations

import os
import runpy
import sys

if os.environ.get("HELLO_FAIL") == "1" and "--fail" not in sys.argv:
    sys.argv.append("--fail")
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hello_step.py"), run_name="__main__")
