"""Cost curves: how each CLI's cost grows with its data, ours vs the public releases, in the same run.

Sub-curves (``--curves``, default all):

* ``history``: one ``orchesjob status --run-key K`` and one ``orchesjob start`` (async, ``-- true``)
  against a database holding N finished jobs (seeded directly in SQLite, as bench_status does);
  ours also answers a 50-lookup ``status --batch -`` (a triggerer tick).
* ``flow``: wall time of ``orchesjob-flow start`` (foreground) of N ``true`` steps, as a chain and as
  a 200-wide fan-out (a root, then steps each waiting for the step 200 before it, or for the root:
  at most 200 ready at once). The public runner at ``--poll-interval 0.2``.
* ``dispatcher``: ``orchesjob-reserver run`` (default ``--poll-interval 2``) over N pending far-future
  reservations: its CPU over ``--idle-seconds`` read from /proc, then the lateness of a few
  reservations made due at known whole seconds among them, and the ``reserve`` call's wall time.

Ours is this checkout built as a wheel into a fresh venv (as pipx would); the public releases are
read from ``--public-bin-dir``. Figures are medians over ``--reps`` per point; a public point that
does not finish within ``--budget`` seconds is left out of the plot (and shown as such in the table),
and larger sizes of that series are not tried. Plots (log-x) go to ``--img-dir``, figures to ``--json``.

    python bench/bench_curves.py [--quick] [--curves history,flow,dispatcher]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import (
    PUBLIC_BIN,
    ROOT,
    add_history_ours,
    add_history_public,
    budgeted_median,
    clone_rows,
    cpu_seconds,
    home_env,
    install,
    median,
    plot,
    seed_one,
    timed,
)

SIZES = {
    "history": ([1_000, 10_000, 100_000, 1_000_000], [1_000, 10_000, 100_000]),
    "flow": ([10, 30, 100, 300, 1_000], [10, 30, 100]),
    "dispatcher": ([10, 100, 1_000, 10_000, 100_000], [10, 1_000, 10_000]),
}
FANOUT_WIDTH = 200
FAR_FUTURE = "2099-01-01T00:00:00Z"


class Bench:
    def __init__(self, args: argparse.Namespace, work: str, ours: str) -> None:
        self.args = args
        self.work = work
        self.impls = {"ours": ours}
        if not args.no_public and os.path.isdir(args.public_bin_dir):
            self.impls["public"] = args.public_bin_dir
        self.results: dict[str, list[dict]] = {}

    def home(self, name: str) -> str:
        return tempfile.mkdtemp(prefix=name + "-", dir=self.work)

    def bin(self, impl: str, tool: str) -> str:
        return os.path.join(self.impls[impl], tool)

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # ------------------------------------------------------------- history
    def history(self, sizes: list[int]) -> None:
        rows = self.results.setdefault("history", [])
        gave_up: set[str] = set()
        for n in sizes:
            for impl in self.impls:
                if impl in gave_up:
                    rows.append({"impl": impl, "jobs": n, "status_ms": None, "start_ms": None})
                    continue
                home = self.home(f"hist-{impl}-{n}")
                orchesjob = self.bin(impl, "orchesjob")
                seed_one(orchesjob, home)
                (add_history_ours if impl == "ours" else add_history_public)(home, n)
                env = home_env(home)
                budget = self.args.budget if impl == "public" else 10 * self.args.budget
                reps = self.args.reps
                status = budgeted_median(lambda _, b=orchesjob: [b, "status", "--run-key", "K"], env, reps, budget)
                start = budgeted_median(
                    lambda i, b=orchesjob: [b, "start", "--run-key", f"new-{i}", "--", "true"], env, reps, budget
                )
                row = {"impl": impl, "jobs": n, "status_ms": ms(status), "start_ms": ms(start)}
                if impl == "ours":
                    lookups = json.dumps([{"run_key": f"hist-{i * (n // 50)}", "stdout_offset": 0,
                                           "stderr_offset": 0} for i in range(50)]).encode()  # fmt: skip
                    argv = [orchesjob, "status", "--batch", "-"]
                    row["batch50_ms"] = ms(median(timed(argv, env, stdin=lookups) for _ in range(reps)))
                if status is None or start is None:
                    gave_up.add(impl)
                rows.append(row)
                self.log(f"history {impl} {n}: {row}")
                shutil.rmtree(home, ignore_errors=True)

    # ---------------------------------------------------------------- flow
    def flow(self, sizes: list[int]) -> None:
        rows = self.results.setdefault("flow", [])
        gave_up: set[tuple[str, str]] = set()
        for n in sizes:
            for shape in ("chain", "fanout"):
                for impl in self.impls:
                    if (impl, shape) in gave_up:
                        rows.append({"impl": impl, "shape": shape, "steps": n, "wall_s": None})
                        continue
                    wall = self._flow_point(impl, shape, n)
                    if wall is None:
                        gave_up.add((impl, shape))
                    rows.append({"impl": impl, "shape": shape, "steps": n, "wall_s": wall})
                    self.log(f"flow {impl} {shape} {n}: {wall}")

    def _flow_point(self, impl: str, shape: str, n: int) -> float | None:
        reps = self.args.reps if n <= 100 else 1
        budget = self.args.budget if impl == "public" else 10 * self.args.budget
        deadline = time.monotonic() + budget
        samples = []
        for _ in range(reps):
            home = self.home(f"flow-{impl}-{n}")
            path = os.path.join(home, "flow.json")
            with open(path, "w") as f:
                json.dump(flow_definition(shape, n), f)
            argv = [self.bin(impl, "orchesjob-flow")]
            if impl == "public":
                argv += ["--orchesjob-bin", self.bin(impl, "orchesjob"), "--poll-interval", "0.2"]
            try:
                samples.append(timed([*argv, "start", "--run-key", "bench", path], home_env(home),
                                     timeout=max(0.1, deadline - time.monotonic())))  # fmt: skip
            except TimeoutError:
                break
            finally:
                shutil.rmtree(home, ignore_errors=True)
        return median(samples) if samples else None

    # ---------------------------------------------------------- dispatcher
    def dispatcher(self, sizes: list[int]) -> None:
        rows = self.results.setdefault("dispatcher", [])
        for n in sizes:
            for impl in self.impls:
                row = self._dispatcher_point(impl, n)
                rows.append(row)
                self.log(f"dispatcher {impl} {n}: {row}")

    def _dispatcher_point(self, impl: str, n: int) -> dict:
        home = self.home(f"disp-{impl}-{n}")
        env = home_env(home, ORCHESJOB_BIN=self.bin(impl, "orchesjob"))
        reserver = self.bin(impl, "orchesjob-reserver")
        subprocess.run([reserver, "reserve", "--run-key", "template", "--not-before", FAR_FUTURE, "--", "true"],
                       env=env, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        if n > 1:
            clone_rows(os.path.join(home, "reserver.sqlite3"), "reservations", "run_key = 'template'", n - 1,
                       {"run_key": "pending-{i}", "reservation_id": "pending-id-{i}"})  # fmt: skip
        marks = os.path.join(home, "started.txt")
        dispatcher = subprocess.Popen([reserver, "run", "--poll-interval", "2"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            time.sleep(self.args.settle)
            startup_cpu = cpu_seconds(dispatcher.pid)
            before = time.monotonic(), cpu_seconds(dispatcher.pid)
            time.sleep(self.args.idle_seconds)
            idle_pct = (cpu_seconds(dispatcher.pid) - before[1]) / (time.monotonic() - before[0]) * 100
            # Due on whole seconds: the public release stores whole seconds only.
            first = math.ceil(time.time() + 2 + self.args.due * 0.3)
            due = {f"due-{i}": first + i for i in range(self.args.due)}
            reserve_s = []
            for key, t in due.items():
                cmd = ["sh", "-c", f'echo {key} $(date +%s.%N) >> "{marks}"']
                reserve_s.append(timed([reserver, "reserve", "--run-key", key, "--not-before", str(t), "--", *cmd],
                                       env))  # fmt: skip
            started = wait_marks(marks, len(due), max(due.values()) + 15)
        finally:
            dispatcher.terminate()
            try:
                dispatcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                dispatcher.kill()
                dispatcher.wait()
            shutil.rmtree(home, ignore_errors=True)
        late = [started[k] - due[k] for k in started]
        return {
            "impl": impl,
            "pending": n,
            "startup_cpu_s": round(startup_cpu, 3),
            "idle_cpu_pct": round(idle_pct, 2),
            "reserve_ms": ms(median(reserve_s)),
            "late_p50_ms": ms(median(late)) if late else None,
            "late_max_ms": ms(max(late)) if late else None,
            "not_started": len(due) - len(late),
        }

    # ------------------------------------------------------------- output
    def report(self) -> None:
        r = self.results
        if "history" in r:
            print("\n`orchesjob status` / `start` vs history (median ms; - = over the budget)\n")
            print("| jobs | status ours | status public | start ours | start public | status --batch (50) ours |")
            print("|---:|---:|---:|---:|---:|---:|")
            for n in sorted({x["jobs"] for x in r["history"]}):
                o, p = pick(r["history"], impl="ours", jobs=n), pick(r["history"], impl="public", jobs=n)
                print(f"| {n:,} | {cell(o, 'status_ms')} | {cell(p, 'status_ms')} | {cell(o, 'start_ms')} "
                      f"| {cell(p, 'start_ms')} | {cell(o, 'batch50_ms')} |")  # fmt: skip
        if "flow" in r:
            print(f"\n`orchesjob-flow start` wall time (median s), chain and {FANOUT_WIDTH}-wide fan-out\n")
            print("| steps | chain ours | chain public | fan-out ours | fan-out public |")
            print("|---:|---:|---:|---:|---:|")
            for n in sorted({x["steps"] for x in r["flow"]}):
                cells = [cell(pick(r["flow"], impl=i, shape=s, steps=n), "wall_s", "{:.2f}")
                         for s in ("chain", "fanout") for i in ("ours", "public")]  # fmt: skip
                print(f"| {n:,} | " + " | ".join(cells) + " |")
        if "dispatcher" in r:
            print("\n`orchesjob-reserver run` vs pending reservations\n")
            print("| pending | impl | idle CPU % | start-up CPU s | lateness p50 ms | max ms | not started "
                  "| `reserve` ms |")  # fmt: skip
            print("|---:|---|---:|---:|---:|---:|---:|---:|")
            for x in r["dispatcher"]:
                print(f"| {x['pending']:,} | {x['impl']} | {x['idle_cpu_pct']} | {x['startup_cpu_s']} "
                      f"| {cell(x, 'late_p50_ms')} | {cell(x, 'late_max_ms')} | {x['not_started']} "
                      f"| {x['reserve_ms']} |")  # fmt: skip

    def plots(self, img_dir: str) -> None:
        r = self.results
        note = "points over the per-point budget are left out" if "public" in self.impls else None
        if "history" in r:
            series = {}
            for impl in self.impls:
                for key, what in (("status_ms", "status"), ("start_ms", "start"), ("batch50_ms", "status --batch 50")):
                    pts = [(x["jobs"], x[key]) for x in r["history"] if x["impl"] == impl and x.get(key)]
                    if pts:
                        series[f"{what} ({impl})"] = pts
            plot(os.path.join(img_dir, "curve-history.png"), "orchesjob: one call vs jobs in history",
                 "jobs in history", "median wall time per call (ms)", series, note=note)  # fmt: skip
        if "flow" in r:
            series = {
                f"{shape} ({impl})": [(x["steps"], x["wall_s"]) for x in r["flow"]
                                      if x["impl"] == impl and x["shape"] == shape and x["wall_s"]]
                for impl in self.impls for shape in ("chain", "fanout")
            }  # fmt: skip
            plot(os.path.join(img_dir, "curve-flow.png"), "orchesjob-flow: wall time vs steps",
                 "steps", "median wall time (s)", series, note=note)  # fmt: skip
        if "dispatcher" in r:
            rows = r["dispatcher"]
            cpu = {impl: [(x["pending"], x["idle_cpu_pct"]) for x in rows if x["impl"] == impl] for impl in self.impls}
            plot(os.path.join(img_dir, "curve-dispatcher-cpu.png"), "orchesjob-reserver run: idle CPU",
                 "pending reservations", "CPU of the idle dispatcher (% of one core)", cpu, logy=False)  # fmt: skip
            late = {
                f"lateness {stat} ({impl})": [(x["pending"], x[f"late_{stat}_ms"]) for x in rows
                                              if x["impl"] == impl and x[f"late_{stat}_ms"] is not None]
                for impl in self.impls for stat in ("p50", "max")
            }  # fmt: skip
            plot(os.path.join(img_dir, "curve-dispatcher-lateness.png"), "orchesjob-reserver run: dispatch lateness",
                 "pending reservations", "command start - not_before (ms)", late)  # fmt: skip


def flow_definition(shape: str, n: int) -> dict:
    """``n`` steps of ``true``: a chain, or a root then steps each waiting for the one FANOUT_WIDTH before it."""
    steps = [{"id": "s0", "command": ["true"]}]
    for i in range(1, n):
        parent = i - 1 if shape == "chain" else max(0, i - FANOUT_WIDTH)
        steps.append({"id": f"s{i}", "when": f"s{parent}", "command": ["true"]})
    return {"flow_id": f"{shape}-{n}", "steps": steps}


def wait_marks(path: str, count: int, until: float) -> dict[str, float]:
    """``key -> instant`` lines the dispatched commands appended, once ``count`` are in or at ``until`` (epoch)."""
    started: dict[str, float] = {}
    while time.time() < until and len(started) < count:
        time.sleep(0.25)
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    key, _, ts = line.strip().partition(" ")
                    started.setdefault(key, float(ts))
    return started


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def pick(rows: list[dict], **match: object) -> dict | None:
    return next((x for x in rows if all(x.get(k) == v for k, v in match.items())), None)


def cell(row: dict | None, key: str, fmt: str = "{}") -> str:
    if row is None or key not in row:
        return "n/a"
    return "-" if row[key] is None else fmt.format(row[key])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    ap.add_argument("--curves", default="history,flow,dispatcher", help="comma-separated sub-curves")
    ap.add_argument("--reps", type=int, default=5, help="calls (or runs) per point; the median is reported")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per public point (ours: 10x)")
    ap.add_argument("--ours-bin-dir", help="bin dir of an installed runtime (default: build this checkout)")
    ap.add_argument("--public-bin-dir", default=os.environ.get("BENCH_PUBLIC_BIN_DIR", PUBLIC_BIN))
    ap.add_argument("--no-public", action="store_true", help="measure ours only")
    ap.add_argument("--idle-seconds", type=float, default=20.0, help="dispatcher CPU window")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the dispatcher starts before measuring")
    ap.add_argument("--due", type=int, default=5, help="reservations made due among the pending ones")
    ap.add_argument("--img-dir", default=os.path.join(ROOT, "docs", "img"))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--from-json", metavar="PATH", help="report and plot the figures a --json run wrote; no measuring")
    args = ap.parse_args()

    if args.from_json:  # the figures of an earlier run: report and plot them again, measure nothing
        with open(args.from_json) as f:
            results = json.load(f)
        bench = Bench(args, "", "")
        bench.impls = {impl: "" for rows in results.values() for impl in (x["impl"] for x in rows)}
        bench.results = results
        bench.report()
        if not args.no_plot:
            bench.plots(args.img_dir)
        return

    work = tempfile.mkdtemp(prefix="bench-curves-")
    try:
        bench = Bench(args, work, args.ours_bin_dir or install(ROOT, work, "ours-venv"))
        for name in args.curves.split(","):
            full, quick = SIZES[name]
            getattr(bench, name)(quick if args.quick else full)
        bench.report()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(bench.results, f, indent=2)
        if not args.no_plot:
            bench.plots(args.img_dir)
    finally:
        time.sleep(1)  # the last async starts' supervisors record their outcome before their home goes
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
