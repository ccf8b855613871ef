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
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_ours(workdir: str) -> str:
    """Build a wheel of the checkout and install it into a private venv; return the orchesjob path."""
    venv = os.path.join(workdir, "ours-venv")
    wheels = os.path.join(workdir, "wheels")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = os.path.join(venv, "bin", "pip")
    subprocess.run([pip, "wheel", "-q", "--no-deps", "-w", wheels, ROOT], check=True)
    wheel = [f for f in os.listdir(wheels) if f.endswith(".whl")][0]
    subprocess.run([pip, "install", "-q", os.path.join(wheels, wheel)], check=True)
    return os.path.join(venv, "bin", "orchesjob")


def interpreter_of(script: str) -> str:
    with open(script) as f:
        first = f.readline()
    return first[2:].strip() if first.startswith("#!") else sys.executable


def median_ms(argv: list[str], env: dict, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(argv, env=env, capture_output=True)
        samples.append(time.perf_counter() - t0)
        if p.returncode != 0:
            raise SystemExit(f"{argv} failed ({p.returncode}): {p.stderr.decode()[:500]}")
    return statistics.median(samples) * 1000


def seed_one(bin_path: str, home: str) -> None:
    env = dict(os.environ, ORCHESJOB_HOME=home)
    subprocess.run(
        [bin_path, "start", "--run-key", "K", "--sync", "--", "true"], env=env, check=True, stdout=subprocess.DEVNULL
    )


def add_history_ours(home: str, rows: int) -> None:
    db = sqlite3.connect(os.path.join(home, "orchesjob.db"))
    t = time.time() - 86400
    with db:
        db.executemany(
            "INSERT INTO run_keys (run_key, attempts, created_at, updated_at) VALUES (?, 1, ?, ?)",
            ((f"hist-{i}", t, t) for i in range(rows)),
        )
        db.executemany(
            "INSERT INTO jobs (job_id, run_key, attempt_no, status, command, mode, reuse_policy, boot_id, "
            "exit_code, stdout_file, stderr_file, started_at, finished_at, updated_at) "
            "VALUES (?, ?, 1, 'SUCCEEDED', '[\"true\"]', 'async', 'always', 'old-boot', 0, ?, ?, ?, ?, ?)",
            ((f"job-{i}", f"hist-{i}", f"/x/{i}.stdout", f"/x/{i}.stderr", t, t, t) for i in range(rows)),
        )
    db.close()


def add_history_public(home: str, rows: int) -> None:
    db = sqlite3.connect(os.path.join(home, "orchesjob.db"))
    t = int(time.time()) - 86400
    with db:
        db.executemany(
            "INSERT INTO jobs (job_id, run_key, command, status, exit_code, stdout_file, stderr_file, "
            "started_at, finished_at, updated_at, attempt_no, strict) "
            "VALUES (?, ?, '[\"true\"]', 'SUCCEEDED', 0, ?, ?, ?, ?, ?, 1, 0)",
            ((f"job-{i}", f"hist-{i}", f"/x/{i}.stdout", f"/x/{i}.stderr", t, t, t) for i in range(rows)),
        )
        db.executemany(
            "INSERT INTO run_keys (run_key, job_id, created_at) VALUES (?, ?, ?)",
            ((f"hist-{i}", f"job-{i}", t) for i in range(rows)),
        )
    db.close()


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
    ours = args.ours_bin or build_ours(work)
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
