#!/usr/bin/env python3
"""Stand-in for the daily-import steps: prints what it would do, fails on request.

IMPORT_FAIL_AT=<step> makes that step exit 1; IMPORT_STEP_SECONDS sets how long
each step takes (default 0.1 s).
"""

from __future__ import annotations

import os
import sys
import time

step = sys.argv[1] if len(sys.argv) > 1 else "?"
print(f"{step}: working", flush=True)
time.sleep(float(os.environ.get("IMPORT_STEP_SECONDS", "0.1")))
if os.environ.get("IMPORT_FAIL_AT") == step:
    print(f"{step}: failed on purpose (IMPORT_FAIL_AT={step})", file=sys.stderr, flush=True)
    sys.exit(1)
print(f"{step}: done", flush=True)
