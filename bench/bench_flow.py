#!/usr/bin/env python3
"""Benchmark: wall time of an N-step chain of `true`, ours vs the public releases.

Ours: this checkout's ``orchesjob-flow`` (in-process job layer, default settings).
Public: orchesjob-flow 0.1.0.dev0 driving the public orchesjob 1.1.0 (subprocess
per call, fixed poll interval) — at its default poll of 5 s and at 0.2 s.

Every run uses a fresh state directory. Prints a markdown table with medians.

    python bench/bench_flow.py [--repeat 3] [--ours PATH] [--public-flow PATH] [--public-orchesjob PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def chain(n: int) -> str:
    steps = [{"id": "s1", "command": ["true"]}]
    steps += [{"id": f"s{i}", "when": f"s{i - 1}", "command": ["true"]} for i in range(2, n + 1)]
    return json.dumps({"flow_id": f"chain-{n}", "steps": steps})


def run_once(argv_prefix: list[str], n: int, extra_env: dict[str, str]) -> float:
    home = tempfile.mkdtemp(prefix="bench-flow-")
    try:
        path = os.path.join(home, "flow.json")
        with open(path, "w") as f:
            f.write(chain(n))
        env = dict(os.environ, ORCHESJOB_HOME=home, **extra_env)
        for var in ("ORCHESJOB_FLOW_HOME", "ORCHESJOB_BIN"):
            if var not in extra_env:
                env.pop(var, None)
        t0 = time.perf_counter()
        p = subprocess.run([*argv_prefix, "start", "--run-key", "bench", path], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        status = json.loads(p.stdout)["status"] if p.stdout.strip() else None
        if p.returncode != 0 or status != "SUCCEEDED":
            raise SystemExit(f"run failed: {argv_prefix} rc={p.returncode} status={status} stderr={p.stderr[-500:]}")
        return elapsed
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per fast configuration (median reported)")
    ap.add_argument("--slow-repeat", type=int, default=1, help="runs of the public release at its default 5 s poll")
    ap.add_argument(
        "--ours",
        default=os.environ.get("BENCH_OURS") or os.path.join(os.path.dirname(sys.executable), "orchesjob-flow"),
    )
    ap.add_argument("--public-flow", default=os.environ.get("BENCH_PUBLIC_FLOW", "/opt/public/flow/bin/orchesjob-flow"))
    ap.add_argument(
        "--public-orchesjob", default=os.environ.get("BENCH_PUBLIC_ORCHESJOB", "/opt/public/orchesjob/bin/orchesjob")
    )
    ap.add_argument("--skip-slow", action="store_true", help="skip the public release at its default poll interval")
    args = ap.parse_args()

    pub = [args.public_flow, "--orchesjob-bin", args.public_orchesjob]
    configs = [
        # (label, steps, argv prefix, env, repeats)
        ("ours, default settings", 10, [args.ours], {}, args.repeat),
        ("ours, --poll-interval 0.2", 10, [args.ours, "--poll-interval", "0.2"], {}, args.repeat),
        ("public 0.1.0.dev0 + orchesjob 1.1.0, poll 0.2 s", 10, [*pub, "--poll-interval", "0.2"], {}, args.repeat),
        ("public 0.1.0.dev0 + orchesjob 1.1.0, default poll 5 s", 10, pub, {}, args.slow_repeat),
        ("ours, default settings", 50, [args.ours], {}, args.repeat),
        ("public 0.1.0.dev0 + orchesjob 1.1.0, poll 0.2 s", 50, [*pub, "--poll-interval", "0.2"], {}, args.slow_repeat),
    ]
    if args.skip_slow:
        configs = [c for c in configs if "default poll 5 s" not in c[0]]
    results = []
    for label, n, prefix, env, repeats in configs:
        times = [run_once(prefix, n, env) for _ in range(max(1, repeats))]
        results.append((label, n, statistics.median(times), len(times)))
        print(f"  {n:>3} steps  {label}: {', '.join(f'{t:.2f}' for t in times)} s", file=sys.stderr, flush=True)
    ours = {n: t for label, n, t, _ in results if label == "ours, default settings"}
    print("| steps | runner | median wall time (s) | runs | vs ours (default) |")
    print("|---:|---|---:|---:|---:|")
    for label, n, t, k in results:
        print(f"| {n} | {label} | {t:.2f} | {k} | {t / ours[n]:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
