"""Benchmark: dispatch lateness of ``orchesjob-reserver run``, ours vs the public 0.1.2.

Lateness = the instant the reserved command actually started (it appends
``date +%s.%N`` to a file) minus its ``not_before``. Each implementation gets
its own temporary home and its own dispatcher (default ``--poll-interval``
2.0 for both), the same schedule of ``--n`` reservations due on whole seconds
(``--per-second`` of them each second: the public release stores whole seconds
only), and runs alone, one after the other, in the same invocation. The idle
CPU of each dispatcher is measured afterwards over ``--idle-seconds``.

    python bench/bench_reserver.py \\
        --public-reserver /opt/public/reserver/bin/orchesjob-reserver \\
        --public-orchesjob /opt/public/orchesjob/bin/orchesjob

Paths may also come from $BENCH_OURS_RESERVER, $BENCH_PUBLIC_RESERVER and
$BENCH_PUBLIC_ORCHESJOB. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from benchlib import cpu_seconds, percentile


def _default_ours() -> str:
    sibling = os.path.join(os.path.dirname(sys.executable), "orchesjob-reserver")
    return os.environ.get("BENCH_OURS_RESERVER") or (sibling if os.path.exists(sibling) else "orchesjob-reserver")


def measure(name: str, reserver: str, env: dict, n: int, per_second: int, poll: float, idle: float) -> dict:
    home = tempfile.mkdtemp(prefix=f"bench-res-{name}-")
    env = dict(env, ORCHESJOB_HOME=home)
    env.pop("ORCHESJOB_RESERVER_HOME", None)
    marks = os.path.join(home, "started.txt")
    dispatcher = subprocess.Popen(
        [reserver, "run", "--poll-interval", str(poll)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Leave enough time to create every reservation before the first is due.
        first = math.ceil(time.time() + 3 + n * 0.04)
        due = {f"{name}-{i}": first + i // per_second for i in range(n)}

        def reserve(key: str) -> None:
            cmd = ["sh", "-c", f'echo {key} $(date +%s.%N) >> "{marks}"']
            subprocess.run(
                [reserver, "reserve", "--run-key", key, "--not-before", str(due[key]), "--", *cmd],
                env=env,
                check=True,
                capture_output=True,
            )

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(reserve, due))
        if time.time() >= first:
            print(f"warning: {name}: reservations took longer than planned", file=sys.stderr)
        deadline = max(due.values()) + 3 * poll + 10
        started: dict[str, float] = {}
        while time.time() < deadline and len(started) < n:
            time.sleep(0.5)
            if os.path.exists(marks):
                with open(marks) as f:
                    for line in f:
                        key, _, ts = line.strip().partition(" ")
                        started.setdefault(key, float(ts))
        before = cpu_seconds(dispatcher.pid)
        time.sleep(idle)
        idle_cpu = (cpu_seconds(dispatcher.pid) - before) / idle * 100
    finally:
        dispatcher.terminate()
        dispatcher.wait(timeout=60)
        shutil.rmtree(home, ignore_errors=True)
    late = [started[k] - due[k] for k in started]
    return {
        "name": name,
        "n": n,
        "missing": n - len(late),
        "early": sum(1 for x in late if x < 0),
        "p50": statistics.median(late) if late else float("nan"),
        "p90": percentile(late, 90) if late else float("nan"),
        "p99": percentile(late, 99) if late else float("nan"),
        "max": max(late) if late else float("nan"),
        "idle_cpu_pct": idle_cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours-reserver", default=_default_ours())
    ap.add_argument(
        "--public-reserver",
        default=os.environ.get("BENCH_PUBLIC_RESERVER", "/opt/public/reserver/bin/orchesjob-reserver"),
    )
    ap.add_argument(
        "--public-orchesjob", default=os.environ.get("BENCH_PUBLIC_ORCHESJOB", "/opt/public/orchesjob/bin/orchesjob")
    )
    ap.add_argument("--n", type=int, default=100, help="reservations per implementation (default: 100)")
    ap.add_argument("--per-second", type=int, default=1, help="reservations due on each whole second (default: 1)")
    ap.add_argument("--poll-interval", type=float, default=2.0, help="dispatcher --poll-interval (default: 2.0)")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="idle CPU measurement window (default: 10)")
    args = ap.parse_args()

    base = {k: v for k, v in os.environ.items() if k != "ORCHESJOB_BIN"}
    rows = [measure("ours", args.ours_reserver, base, args.n, args.per_second, args.poll_interval, args.idle_seconds)]
    if os.path.exists(args.public_reserver):
        env = dict(base, ORCHESJOB_BIN=args.public_orchesjob)
        rows.append(
            measure(
                "public-0.1.2",
                args.public_reserver,
                env,
                args.n,
                args.per_second,
                args.poll_interval,
                args.idle_seconds,
            )  # fmt: skip
        )
    else:
        print(f"public reserver not found at {args.public_reserver}; measuring ours only", file=sys.stderr)

    print(f"\nDispatch lateness (command start - not_before), n={args.n}, {args.per_second} due per second, "
          f"--poll-interval {args.poll_interval:g}\n")  # fmt: skip
    print("| implementation | p50 | p90 | p99 | max | not started | started early | idle CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['p50'] * 1000:.0f} ms | {r['p90'] * 1000:.0f} ms | {r['p99'] * 1000:.0f} ms "
            f"| {r['max'] * 1000:.0f} ms | {r['missing']} | {r['early']} | {r['idle_cpu_pct']:.2f} % |"
        )
    if len(rows) == 2 and rows[0]["p50"] > 0 and rows[0]["p99"] > 0:
        print(
            f"\npublic / ours: p50 x{rows[1]['p50'] / rows[0]['p50']:.1f}, p99 x{rows[1]['p99'] / rows[0]['p99']:.1f}"
        )


if __name__ == "__main__":
    main()
