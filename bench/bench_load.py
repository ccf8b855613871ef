"""Load held: one host under sustained load, every call a real CLI process (one per remote call).

For ``--seconds``, against one state home:

* ``orchesjob start --run-key load-<i> -- sleep <--job-seconds>`` at ``--start-rate`` per second
  (open loop: a call is launched at its scheduled instant whether or not earlier ones returned);
* ``orchesjob status --batch -`` with ``--batch`` lookups each (the newest started run keys, with
  log offsets, as a triggerer tick sends them), ``--status-rate`` lookups per second in all;
* ``orchesjob clean --older-than 1d`` over ``--history`` old finished jobs seeded directly in SQLite,
  started at once and again every 30 s (a retention timer), meanwhile.

Every call's wall time, CPU time (``wait4``), exit code and stderr are recorded; an error whose
text says "locked" (or exit code 5) counts as a lock error surfaced to a caller. Afterwards every
started job's outcome is read back (``status --batch``): none may be LOST, missing or unfinished.
The host's CPU use during the run comes from /proc/stat.

``--ceiling 20,40,60`` instead runs ``--ceiling-seconds`` at each start rate in turn (status rate
unchanged) and stops after the first whose p99 of some call passes 1 s.

    python bench/bench_load.py --seconds 300 --start-rate 20 --status-rate 200
    python bench/bench_load.py --ceiling 20,30,40,50,60,80 --ceiling-seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from benchlib import ROOT, add_history_ours, home_env, install, median, percentile, seed_one

CLEAN_EVERY_S = 30.0
LOCK_EXIT_CODE = 5  # the spec's exit code of a lock error


class Load:
    def __init__(self, orchesjob: str, home: str, args: argparse.Namespace, start_rate: float, seconds: float):
        self.orchesjob = orchesjob
        self.env = home_env(home)
        self.args = args
        self.start_rate = start_rate
        self.seconds = seconds
        self.calls: list[dict] = []
        self.started_keys: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=256)

    def call(self, kind: str, argv: list[str], scheduled: float, stdin: bytes | None = None) -> dict:
        """Run one CLI process; record its wall time from launch, its lag behind schedule and its CPU time."""
        t0 = time.monotonic()
        p = subprocess.Popen(argv, env=self.env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        if stdin is not None:
            p.stdin.write(stdin)
            p.stdin.close()
        out = p.stdout.read()  # the big stream first; stderr is one JSON line at most
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        rec = {
            "kind": kind,
            "at": t0,
            "lag": t0 - scheduled,
            "wall": wall,
            "cpu": usage.ru_utime + usage.ru_stime,
            "rc": p.returncode,
            "err": err.decode(errors="replace")[-300:] if p.returncode else "",
            "out": out,
        }
        with self.lock:
            self.calls.append(rec)
        return rec

    def _start(self, i: int, scheduled: float) -> None:
        key = f"load-{i}"
        rec = self.call("start", [self.orchesjob, "start", "--run-key", key, "--", "sleep", str(self.args.job_seconds)],
                        scheduled)  # fmt: skip
        rec["out"] = b""
        with self.lock:
            self.started_keys.append(key)  # attempted: the outcome check covers failed starts too

    def _status(self, scheduled: float) -> None:
        with self.lock:
            keys = self.started_keys[-self.args.batch :]
        if not keys:
            return
        lookups = [{"run_key": k, "stdout_offset": 0, "stderr_offset": 0} for k in keys]
        rec = self.call("status --batch", [self.orchesjob, "status", "--batch", "-"], scheduled,
                        json.dumps(lookups).encode())  # fmt: skip
        rec["out"] = b""

    def _cleaner(self) -> None:
        while not self.stop.is_set():
            rec = self.call("clean", [self.orchesjob, "clean", "--older-than", "1d"], time.monotonic())
            try:
                rec["deleted"] = json.loads(rec["out"])["deleted"]
            except (ValueError, KeyError):
                rec["deleted"] = None
            rec["out"] = b""
            self.stop.wait(CLEAN_EVERY_S)

    def _ticker(self, rate: float, fire) -> None:
        """Call ``fire(i, scheduled)`` at ``rate`` per second until the run's end (open loop)."""
        t0 = time.monotonic()
        i = 0
        while True:
            scheduled = t0 + i / rate
            if scheduled - t0 >= self.seconds:
                return
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.pool.submit(fire, i, scheduled)
            i += 1

    def run(self) -> dict:
        cpu0 = host_cpu()
        cleaner = threading.Thread(target=self._cleaner, daemon=True)
        cleaner.start()
        tickers = [
            threading.Thread(target=self._ticker, args=(self.start_rate, self._start)),
            threading.Thread(
                target=self._ticker, args=(self.args.status_rate / self.args.batch, lambda _i, s: self._status(s))
            ),  # fmt: skip
        ]
        t0 = time.monotonic()
        for t in tickers:
            t.start()
        for t in tickers:
            t.join()
        self.pool.shutdown(wait=True)
        elapsed = time.monotonic() - t0
        cpu1 = host_cpu()
        self.stop.set()
        cleaner.join()
        time.sleep(self.args.job_seconds + 2)
        return self.summary(elapsed, cpu0, cpu1)

    def outcomes(self) -> dict[str, int]:
        """Every attempted job's recorded status (``missing``: no job under its key), read back in batches."""
        counts: dict[str, int] = {}
        keys = list(self.started_keys)
        for i in range(0, len(keys), 500):
            lookups = json.dumps([{"run_key": k} for k in keys[i : i + 500]]).encode()
            p = subprocess.run([self.orchesjob, "status", "--batch", "-"], input=lookups, env=self.env,
                               capture_output=True, check=True)  # fmt: skip
            for entry in json.loads(p.stdout):
                status = entry.get("status") or "missing"
                counts[status] = counts.get(status, 0) + 1
        return counts

    def summary(self, elapsed: float, cpu0: tuple[float, float], cpu1: tuple[float, float]) -> dict:
        by_kind: dict[str, dict] = {}
        for kind in ("start", "status --batch", "clean"):
            recs = [c for c in self.calls if c["kind"] == kind]
            if not recs:
                continue
            walls = [c["wall"] for c in recs]
            failed = [c for c in recs if c["rc"] != 0]
            by_kind[kind] = {
                "calls": len(recs),
                "per_s": round(len(recs) / elapsed, 2),
                "p50_ms": round(median(walls) * 1000, 1),
                "p99_ms": round(percentile(walls, 99) * 1000, 1),
                "max_ms": round(max(walls) * 1000, 1),
                "cpu_ms_median": round(median(c["cpu"] for c in recs) * 1000, 1),
                "launch_lag_p99_ms": round(percentile([c["lag"] for c in recs], 99) * 1000, 1),
                "failed": len(failed),
                "lock_errors": sum(1 for c in failed if c["rc"] == LOCK_EXIT_CODE or "locked" in c["err"]),
                "errors": sorted({c["err"][:160] for c in failed})[:5],
            }
            if kind == "clean":
                by_kind[kind]["deleted"] = [c.get("deleted") for c in recs]
        busy = (cpu1[0] - cpu0[0]) / max(1e-9, cpu1[1] - cpu0[1]) * 100
        # The host's busy CPU time less the calls' own: what the detached supervisors (and jobs, the
        # bench itself, anything else on the machine) used, per job started.
        host_s = (cpu1[0] - cpu0[0]) / os.sysconf("SC_CLK_TCK")
        calls_s = sum(c["cpu"] for c in self.calls)
        starts = max(1, len(self.started_keys))
        return {
            "start_rate": self.start_rate,
            "status_rate": self.args.status_rate,
            "seconds": round(elapsed, 1),
            "host_cpu_busy_pct": round(busy, 1),
            "host_cpu_s": round(host_s, 1),
            "calls_cpu_s": round(calls_s, 1),
            "other_cpu_ms_per_job": round((host_s - calls_s) / starts * 1000, 1),
            "loadavg": os.getloadavg()[0],
            "calls": by_kind,
            "outcomes": self.outcomes(),
        }


def host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def one_run(orchesjob: str, work: str, args: argparse.Namespace, start_rate: float, seconds: float) -> dict:
    home = tempfile.mkdtemp(prefix=f"load-{start_rate:g}-", dir=work)
    try:
        seed_one(orchesjob, home)
        add_history_ours(home, args.history, finished_at=time.time() - 2 * 86400, prefix="old")
        result = Load(orchesjob, home, args, start_rate, seconds).run()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def table(results: list[dict]) -> None:
    print("| start/s | status lookups/s | call | calls/s | p50 ms | p99 ms | max ms | CPU ms/call (median) "
          "| failed | lock errors | host CPU busy | outcomes |")  # fmt: skip
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        for kind, c in r["calls"].items():
            print(f"| {r['start_rate']:g} | {r['status_rate']:g} | `{kind}` | {c['per_s']} | {c['p50_ms']} "
                  f"| {c['p99_ms']} | {c['max_ms']} | {c['cpu_ms_median']} | {c['failed']} | {c['lock_errors']} "
                  f"| {r['host_cpu_busy_pct']} % | {outcomes} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--start-rate", type=float, default=20)
    ap.add_argument("--status-rate", type=float, default=200, help="status lookups per second (all batches)")
    ap.add_argument("--batch", type=int, default=50, help="lookups per status --batch call")
    ap.add_argument("--job-seconds", type=float, default=1.0, help="how long each started job runs")
    ap.add_argument("--history", type=int, default=1_000_000, help="old finished jobs for clean to delete")
    ap.add_argument("--ceiling", help="comma-separated start rates: find the one where a p99 passes 1 s")
    ap.add_argument("--ceiling-seconds", type=float, default=30)
    ap.add_argument("--ours-bin-dir", help="bin dir of an installed runtime (default: build this checkout)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-load-")
    try:
        orchesjob = os.path.join(args.ours_bin_dir or install(ROOT, work, "ours-venv"), "orchesjob")
        results = []
        if args.ceiling:
            for rate in (float(r) for r in args.ceiling.split(",")):
                results.append(one_run(orchesjob, work, args, rate, args.ceiling_seconds))
                if any(c["p99_ms"] > 1000 for k, c in results[-1]["calls"].items() if k != "clean"):
                    break
        else:
            results.append(one_run(orchesjob, work, args, args.start_rate, args.seconds))
        table(results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
