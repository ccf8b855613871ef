"""``orchesjob clean --older-than 1d`` over 10^5 and 10^6 old finished jobs: wall time, peak RSS, output bytes.

Before (a wheel of ``--before-ref``, default ``main``) and after (this checkout), each installed in
its own venv as pipx would, against copies of one seeded state home per size and implementation
(the history is inserted in SQLite: ``benchlib.add_history_ours``, finished two days ago). Variants:
the default output (the spec's ``items``), ``--summary`` (after only), and ``--dry-run`` of each.

Peak RSS is the CLI process's own high-water mark: the CLI is forked by a small intermediate
interpreter that reports ``wait4``'s ``ru_maxrss``. (A child of this process would report at least
this process's size: a child's high-water mark starts from its parent's at fork and survives exec.)
Wall time is the median of ``--reps`` runs per size; ratios are after / before of the same run.

    flock /work/wt/bench.lock python bench/bench_clean.py --sizes 100000,1000000 --reps 3,1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT, add_history_ours, export_ref, home_env, install, median, seed_one

# Runs argv[1:] as its only child and prints that child's exit code, wall time, CPU and ru_maxrss
# (KiB) as the last line of stderr; the child writes straight to the inherited stdout.
MEASURE = """
import json, os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall": time.perf_counter() - t,
                  "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_kib": usage.ru_maxrss}), file=sys.stderr)
"""

VARIANTS = {  # name -> (extra options, implementations that have them)
    "items": ([], ("before", "after")),
    "--summary": (["--summary"], ("after",)),
    "--dry-run": (["--dry-run"], ("before", "after")),
    "--dry-run --summary": (["--dry-run", "--summary"], ("after",)),
}


def measured(argv: list[str], env: dict[str, str]) -> dict:
    """One CLI run: rc, wall, cpu, peak RSS, output bytes and ``deleted``.

    Its stdout is a pipe read as it comes, as an SSH session's would be (a file on the same
    disk would have its pages flushed by the clean's own fsyncs), and only counted.
    """
    p = subprocess.Popen([sys.executable, "-c", MEASURE, *argv], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)  # fmt: skip
    head, tail, size = b"", b"", 0
    while chunk := p.stdout.read(1 << 16):
        head = head or chunk[:200]
        tail = (tail + chunk)[-300:]
        size += len(chunk)
    err = p.stderr.read()
    p.wait()
    rec = json.loads(err.decode().strip().splitlines()[-1])
    if rec["rc"] != 0:
        raise RuntimeError(f"{argv} failed ({rec['rc']}): {err.decode(errors='replace')[-500:]}")
    rec["out_bytes"] = size
    # The counts are first (before: one json.dumps) or last (after: streamed).
    rec["deleted"] = int(re.search(rb'"deleted": (\d+)', head + b"\n" + tail).group(1))
    return rec


def template(bin_dir: str, work: str, name: str, rows: int) -> str:
    """A state home with ``rows`` jobs finished two days ago (and one by the CLI itself, for its schema)."""
    home = os.path.join(work, name)
    seed_one(os.path.join(bin_dir, "orchesjob"), home, run_key="bench-schema")
    add_history_ours(home, rows, finished_at=time.time() - 2 * 86400)
    return home


def run_size(bins: dict[str, str], work: str, rows: int, reps: int, log) -> list[dict]:
    results = []
    for impl, bin_dir in bins.items():
        seeded = template(bin_dir, work, f"template-{impl}-{rows}", rows)
        samples: dict[str, list[dict]] = {v: [] for v, (_, impls) in VARIANTS.items() if impl in impls}
        home = os.path.join(work, "run")
        for rep in range(reps):
            shutil.rmtree(home, ignore_errors=True)
            for variant in sorted(samples, key=lambda v: "--dry-run" not in v):
                # The dry runs first, on one copy (they delete nothing); a fresh copy for each real clean.
                if "--dry-run" not in variant or not os.path.exists(home):
                    shutil.rmtree(home, ignore_errors=True)
                    shutil.copytree(seeded, home)
                argv = [os.path.join(bin_dir, "orchesjob"), "clean", "--older-than", "1d", *VARIANTS[variant][0]]
                rec = measured(argv, home_env(home))
                if rec["deleted"] != rows:  # the schema's own job finished just now: never selected
                    raise RuntimeError(f"{impl} {variant}: deleted {rec['deleted']}, expected {rows}")
                samples[variant].append(rec)
                log(f"{rows} {impl} {variant} rep {rep}: {rec['wall']:.1f} s, {rec['peak_rss_kib'] / 1024:.0f} MiB")
        for variant, recs in samples.items():
            results.append({
                "rows": rows,
                "impl": impl,
                "variant": variant,
                "reps": len(recs),
                "wall_s": median(r["wall"] for r in recs),
                "cpu_s": median(r["cpu"] for r in recs),
                "peak_rss_mib": max(r["peak_rss_kib"] for r in recs) / 1024,
                "out_bytes": recs[0]["out_bytes"],
            })  # fmt: skip
    return results


def table(results: list[dict]) -> str:
    ref = {(r["rows"], r["variant"]): r for r in results if r["impl"] == "before"}
    lines = [
        "| jobs | code | output | wall (median) | CPU | peak RSS | output | wall / before | RSS / before |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = ref.get((r["rows"], "--dry-run" if "--dry-run" in r["variant"] else "items"))
        wall, rss = (
            (f"{r['wall_s'] / base['wall_s']:.2f}x", f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x")
            if base and r["impl"] == "after"
            else ("", "")
        )
        lines.append(
            f"| {r['rows']:,} | {r['impl']} | {r['variant']} | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s "
            f"| {r['peak_rss_mib']:.0f} MiB | {r['out_bytes']:,} B | {wall} | {rss} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="numbers of old jobs, comma-separated")
    ap.add_argument("--reps", default="3,1", help="runs per size (comma-separated, one per size)")
    ap.add_argument("--before-ref", default="main", help="git ref of the code measured as 'before'")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    reps = [int(r) for r in args.reps.split(",")]
    reps += [reps[-1]] * (len(sizes) - len(reps))

    work = tempfile.mkdtemp(prefix="bench-clean-")
    try:
        before_src = export_ref(args.before_ref, os.path.join(work, "before-src"))
        bins = {"before": install(before_src, work, "before-venv"), "after": install(ROOT, work, "after-venv")}
        results = []
        for rows, n in zip(sizes, reps[: len(sizes)], strict=True):
            results += run_size(bins, work, rows, n, lambda text: print(text, file=sys.stderr, flush=True))
        print(table(results))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
