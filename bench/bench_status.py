"""Benchmark: wall time of one ``orchesjob status --run-key K`` process (every remote poll is one).

Compares this checkout (installed from a freshly built wheel into its own venv,
as ``pipx install`` would) with the public orchesjob release, in the same run:

* a small database (one job), and
* a database with ``--rows`` jobs of history (default 1,000,000).

Figures are medians; ratios are against the public release and against a bare
``python -c pass`` of the same interpreter measured in the same run, since
these machines are noisy.

    python bench/bench_status.py --public-bin /opt/public/orchesjob/bin/orchesjob
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from benchlib import ROOT, add_history_ours, add_history_public, install, interpreter_of, median, seed_one, timed


def median_ms(argv: list[str], env: dict, runs: int) -> float:
    return median(timed(argv, env) for _ in range(runs)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours-bin", help="orchesjob to test (default: build this checkout into a temp venv)")
    ap.add_argument("--public-bin", default=os.environ.get("PUBLIC_ORCHESJOB", "/opt/public/orchesjob/bin/orchesjob"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=40, help="status calls per small-DB measurement")
    ap.add_argument("--big-runs", type=int, default=15, help="status calls per big-DB measurement (ours)")
    ap.add_argument("--public-big-runs", type=int, default=3, help="status calls per big-DB measurement (public)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-status-")
    ours = args.ours_bin or os.path.join(install(ROOT, work, "ours-venv"), "orchesjob")
    have_public = os.path.exists(args.public_bin)
    results: dict[str, float | None] = {}

    py = interpreter_of(ours)
    results["python -c pass"] = median_ms([py, "-c", "pass"], dict(os.environ), args.runs)

    homes = {name: os.path.join(work, name) for name in ("ours-small", "public-small", "ours-big", "public-big")}
    seed_one(ours, homes["ours-small"])
    seed_one(ours, homes["ours-big"])
    add_history_ours(homes["ours-big"], args.rows)
    if have_public:
        seed_one(args.public_bin, homes["public-small"])
        seed_one(args.public_bin, homes["public-big"])
        add_history_public(homes["public-big"], args.rows)

    status = ["status", "--run-key", "K"]
    for size, runs, pruns in (("small", args.runs, args.runs), ("big", args.big_runs, args.public_big_runs)):
        env = dict(os.environ, ORCHESJOB_HOME=homes[f"ours-{size}"])
        results[f"ours {size}"] = median_ms([ours, *status], env, runs)
        if have_public:
            env = dict(os.environ, ORCHESJOB_HOME=homes[f"public-{size}"])
            results[f"public {size}"] = median_ms([args.public_bin, *status], env, pruns)

    base = results["python -c pass"]
    print(f"\n`orchesjob status --run-key K`, median wall time per process (ms); history = {args.rows:,} jobs\n")
    print("| database | ours | public 1.1.0 | public / ours | ours / bare python |")
    print("|---|---:|---:|---:|---:|")
    for size, label in (("small", "1 job"), ("big", f"{args.rows:,} jobs")):
        o, p = results[f"ours {size}"], results.get(f"public {size}")
        public = f"{p:.1f} | {p / o:.1f}x" if p else "n/a | n/a"
        print(f"| {label} | {o:.1f} | {public} | {o / base:.2f}x |")
    print(f"\nbare `python -c pass` (same interpreter): {base:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
