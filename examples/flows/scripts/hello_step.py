#!/usr/bin/env python3
"""Example step: print "Hello <flow-name>" a few times, optionally fail.

The spec's script runs for about a minute; here the total duration defaults to
0.2 s so the examples run quickly in tests. Set HELLO_STEP_SECONDS (or pass
--seconds) for a longer, watchable run, e.g. HELLO_STEP_SECONDS=60.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--flow-name", required=True)
    p.add_argument("--step-id", required=True)
    p.add_argument("--seconds", type=float, default=float(os.environ.get("HELLO_STEP_SECONDS", "0.2")))
    p.add_argument("--interval", type=float, default=None, help="seconds between greetings (default: seconds/4)")
    p.add_argument("--fail", action="store_true", help="exit with status 1 at the end")
    args = p.parse_args()
    interval = args.interval if args.interval is not None else max(args.seconds / 4, 0.01)
    deadline = time.monotonic() + args.seconds
    n = 0
    while True:
        n += 1
        print(f"Hello {args.flow_name} from step {args.step_id} ({n})", flush=True)
        if time.monotonic() + interval > deadline:
            break
        time.sleep(interval)
    if args.fail:
        print(f"step {args.step_id} fails on purpose", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
