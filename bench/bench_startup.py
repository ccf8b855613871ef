"""Benchmark: start-up cost of the two calls every remote task makes, against an earlier commit.

Each remote poll is one ``orchesjob status`` process and each task starts with
one ``orchesjob start``: their wall time is what the host pays per call. This
builds a wheel of the working tree and of ``--baseline`` (a git ref, default the
commit before the job-lifecycle rewrite) into private venvs, as ``pipx install``
would, and times in the same run, interleaved round by round:

* ``status --run-key K`` on a small database, of a finished job and of a running one,
* ``start --run-key K_i -- true`` (async: returns once the command is released),
* ``start --sync --run-key K_i -- true`` (returns once the outcome is recorded),
* a bare ``python -c pass`` of the same interpreter (the floor), and the same
  interpreter importing only the standard-library modules the CLI cannot do
  without (``json``, which imports ``re`` and with it ``enum``; ``sqlite3``, which
  imports ``datetime``; ``argparse``), one by one and together: where the
  milliseconds between a bare interpreter and ``status`` go.

Figures are medians over ``--rounds``; ratios are against the baseline measured
in the same run, since these machines (2 cores) are noisy.

    python bench/bench_startup.py --rounds 40 [--baseline d2ed6b3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile

from benchlib import ROOT, export_ref, install, timed

DEFAULT_BASELINE = "d2ed6b3"  # main before the lifecycle rewrite (issue 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref to compare with")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="orchesjob-bench-startup-")
    baseline_src = export_ref(args.baseline, os.path.join(work, "src-baseline"))
    tools = {
        "current": os.path.join(install(ROOT, work, "current"), "orchesjob"),
        "baseline": os.path.join(install(baseline_src, work, "baseline"), "orchesjob"),
    }
    homes = {name: os.path.join(work, "home-" + name) for name in tools}
    envs = {name: dict(os.environ, ORCHESJOB_HOME=homes[name]) for name in tools}
    for name, bin_ in tools.items():
        subprocess.run([bin_, "start", "--run-key", "k", "--sync", "--", "true"], env=envs[name], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        # What a poll mostly sees: a job still running (its processes are checked in /proc).
        subprocess.run([bin_, "start", "--run-key", "r", "--", "sleep", "3600"], env=envs[name], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        out = measure(args, tools, envs)
    finally:
        for name, bin_ in tools.items():
            subprocess.run([bin_, "abort", "--run-key", "r", "--grace-seconds", "1"], env=envs[name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"medians over {args.rounds} interleaved rounds; bare python -c pass: {out['python_ms']} ms")
    print(f"{'call':<24}{'current ms':>12}{'baseline ms':>13}{'ratio':>8}{'/ bare':>8}")
    for r in out["rows"]:
        print(f"{r['call']:<24}{r['current_ms']:>12}{r['baseline_ms']:>13}{r['ratio']:>8}{r['vs_bare']:>8}")
    print(f"\n{'the same interpreter, only importing':<44}{'ms':>8}{'/ bare':>8}")
    for r in out["floor"]:
        print(f"{r['imports']:<44}{r['ms']:>8}{r['vs_bare']:>8}")


CALLS = ("status", "status (running job)", "start", "start --sync")
# What `status` imports from the standard library that no JSON-and-SQLite CLI avoids.
FLOOR = ("re", "json", "sqlite3", "argparse", "json, sqlite3, argparse")


def measure(args: argparse.Namespace, tools: dict[str, str], envs: dict[str, dict]) -> dict:
    python = os.path.join(os.path.dirname(tools["current"]), "python")
    samples: dict[str, list[float]] = {}
    for i in range(args.rounds):
        samples.setdefault("python -c pass", []).append(timed([python, "-c", "pass"], dict(os.environ)))
        for modules in FLOOR:
            samples.setdefault(f"import {modules}", []).append(timed([python, "-c", f"import {modules}"], os.environ))
        for name, bin_ in tools.items():
            env = envs[name]
            samples.setdefault(f"{name}: status", []).append(timed([bin_, "status", "--run-key", "k"], env))
            samples.setdefault(f"{name}: status (running job)", []).append(
                timed([bin_, "status", "--run-key", "r"], env)
            )
            samples.setdefault(f"{name}: start", []).append(
                timed([bin_, "start", "--run-key", f"a{i}", "--", "true"], env)
            )
            samples.setdefault(f"{name}: start --sync", []).append(
                timed([bin_, "start", "--run-key", f"s{i}", "--sync", "--", "true"], env)
            )
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    bare = med["python -c pass"]
    rows = []
    for call in CALLS:
        cur, base = med[f"current: {call}"], med[f"baseline: {call}"]
        rows.append({"call": call, "current_ms": round(cur, 1), "baseline_ms": round(base, 1),
                     "ratio": round(cur / base, 2), "vs_bare": round(cur / bare, 2)})  # fmt: skip
    floor = [{"imports": m, "ms": round(med[f"import {m}"], 1), "vs_bare": round(med[f"import {m}"] / bare, 2)}
             for m in FLOOR]  # fmt: skip
    return {"rounds": args.rounds, "baseline": args.baseline, "python_ms": round(bare, 1), "rows": rows,
            "floor": floor}  # fmt: skip


if __name__ == "__main__":
    main()
