#!/usr/bin/env python3
"""Benchmark: a fleet of edge hosts, many deferred jobs, one (or two) triggerer processes.

Each "host" is its own sshd on loopback (tests/sshd_harness.py: own port, own verified
host key, key auth, VERBOSE log), its own Unix user (``<user-prefix>00`` …) with the
runtime pipx-installed from ONE wheel of this checkout, and its own state home. The
sshds run with OpenSSH's defaults (``MaxStartups 10:30:100``, ``MaxSessions 10``), as a
real host has them.

ours (``--side ours``):

1. **Start**: ``--jobs`` ``OrchesJobStartOperator.execute()`` calls (→ ``start_job``)
   in a pool of ``--start-workers`` threads, as that many worker tasks at a time would,
   jobs spread round-robin over the hosts. Each raises ``TaskDeferred``. Every job
   first waits on a shared ``flock`` of a gate file the bench holds (no CPU while
   waiting), so that all of them print their ``--job-seconds`` lines after the start
   phase, whatever its length; job *i* then waits ``(i mod 20) / 20`` of a poll
   interval more, so that the ends spread over a tick as real ends would.
2. **Poll**: the triggers, rebuilt from their ``serialize()`` output (round-tripped
   through JSON), run in ``--triggerers`` separate processes (as that many triggerer
   processes would; each gets an equal share of every host's triggers), each in one
   asyncio loop, until every trigger yields its event.

providers-ssh (``--side providers``): ``SSHRemoteJobOperator`` + ``SSHRemoteJobTrigger``
on the same hosts, the same way, at each ``--prov-levels`` jobs per host in turn (stops
after the first level with failures), to find where sshd's defaults stop it.

Figures: per host, from its sshd log (``Accepted publickey`` = connection,
``Starting session: command`` = command, ``exceeded MaxStartups`` = dropped connection
attempt, channel-open refusals), peak established connections from /proc/net/tcp, CPU of
sshd + its sessions in one cgroup per host; the jobs (moved to a second cgroup per host
after the start phase) are counted apart. Triggerer CPU (user + sys) and peak RSS
(VmHWM) of each triggerer process; job end (a marker the job writes) → trigger event lag.

Needs root (creates the users, cgroups; starts sshds); the bench kills every process of
its users on exit, so the users must be dedicated to it.

    python bench/bench_fleet.py --hosts 20 --jobs 1000 --job-seconds 60 --poll-interval 5 --triggerers 1,2 \\
        [--side ours|providers|both] [--prov-levels 10,25,50] [--json PATH]
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchssh import (  # noqa: E402 - the bench directory is not a package
    ConnSampler,
    FakeTI,
    HostCPU,
    close_shared_connections,
    follow_triggers,
    job_command,
    job_output_bytes,
    kill_user_processes,
    login_shell,
    make_user_dir,
    maxstartups_drops,
    mem_available_mib,
    probe_providers_submit,
    remove_dirs,
    set_user_shell,
    setup_bench_process,
    wait_connections_closed,
)

DAG_ID = "bench_fleet"
SPREAD_STEPS = 20  # job ends spread over this many points of one poll interval
MEM_RESERVE_MIB = 4096  # left to the rest of the (shared) machine when sizing a providers-ssh level


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=20, help="edge hosts: one sshd and one user each")
    ap.add_argument("--jobs", type=int, default=1000, help="deferred jobs (= triggers) on our side, over all hosts")
    ap.add_argument("--job-seconds", type=int, default=60, help="each job prints one line per second this long")
    ap.add_argument("--poll-interval", type=float, default=5.0, help="trigger poll interval, seconds")
    ap.add_argument(
        "--job-kind",
        choices=("exec", "builtin"),
        default="exec",
        help="exec: a shell loop that forks `sleep 1` per line; builtin: one bash, `read -t 1` waits, no fork per line",
    )
    ap.add_argument("--triggerers", default="1", help="triggerer processes: 1, 2, or 1,2 (our side once with each)")
    ap.add_argument("--side", choices=("ours", "providers", "both"), default="ours")
    ap.add_argument("--prov-levels", default="10,25,50", help="providers-ssh: jobs per host, tried in turn")
    ap.add_argument("--prov-job-seconds", type=int, default=20, help="providers-ssh: job length")
    ap.add_argument("--start-workers", type=int, default=40, help="concurrent execute() calls (worker tasks)")
    ap.add_argument("--user-prefix", default="orchesjob-f", help="users <prefix>00, <prefix>01, ... (created)")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up on triggers this long after the jobs end")
    ap.add_argument("--json", help="also write the raw figures to this file")
    ap.add_argument("--worker", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)  # a triggerer process
    return ap.parse_args(argv)


# ------------------------------------------------------------ triggerer process
def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def triggerer_main(in_path: str, out_path: str) -> int:
    """Run the triggers listed in ``in_path`` in one event loop, as one triggerer process would."""
    import asyncio

    with open(in_path) as f:
        spec = json.load(f)
    classes = {}
    for classpath in {classpath for classpath, _ in spec["triggers"]}:
        module, name = classpath.rsplit(".", 1)
        classes[classpath] = getattr(importlib.import_module(module), name)
    round_trips = time_status_commands()
    rss_idle_kib = proc_status_kib("VmRSS")  # Airflow and the trigger classes imported, no trigger yet
    triggers = [classes[classpath](**kwargs) for classpath, kwargs in spec["triggers"]]
    rss_built_kib = proc_status_kib("VmRSS")
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.time()

    async def run() -> tuple[list, list]:
        try:
            return await follow_triggers(triggers, spec["timeout"])
        finally:
            await close_shared_connections()

    events, ends = asyncio.run(run())
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "events": events,
        "ends": ends,
        "wall_s": time.time() - t0,
        "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "rss_idle_mib": rss_idle_kib / 1024,
        "rss_built_mib": rss_built_kib / 1024,
        "rss_peak_mib": proc_status_kib("VmHWM") / 1024,
        "status_round_trips_s": round_trips,
    }
    with open(out_path, "w") as f:
        json.dump(out, f, default=str)
    return 0


def time_status_commands() -> list[float]:
    """Wall time of each batched ``orchesjob status`` (ours) this process sends, appended to the returned list."""
    from airflow_provider_orchesjob.hooks import batching

    times: list[float] = []
    send = batching.StatusBatcher._send

    async def timed(self: Any, batch: list) -> None:
        t = time.monotonic()
        try:
            await send(self, batch)
        finally:
            times.append(time.monotonic() - t)

    batching.StatusBatcher._send = timed  # type: ignore[method-assign]
    return times


# ------------------------------------------------------------------ the fleet
class Host:
    """One edge host: its sshd (harness), cgroups, Airflow connection and the bench's state dirs on it."""

    def __init__(self, server: Any, index: int, run_id: str) -> None:
        self.server = server
        self.index = index
        self.cpu = HostCPU(f"bench-fleet-{run_id}-h{index:02d}")
        self.jobs_cpu = HostCPU(f"bench-fleet-{run_id}-h{index:02d}-jobs")
        self.cpu.add(server.process.pid)  # every session and job sshd forks from now on is counted
        self.ours_home = os.path.join(server.home, ".orchesjob-bench", run_id)
        self.prov_base = make_user_dir(os.path.join(server.workdir, "prov-jobs"), server.user)
        self.log_pos = 0

    def log_since_mark(self) -> str:
        """sshd log lines since the last call."""
        with open(self.server.log_file, errors="replace") as f:
            f.seek(self.log_pos)
            text = f.read()
            self.log_pos = f.tell()
        return text

    def close(self) -> None:
        self.server.stop()  # sshd, then pkill -KILL -u <user>
        kill_user_processes(self.server.user)
        self.cpu.remove()
        self.jobs_cpu.remove()
        remove_dirs(self.ours_home)
        try:
            os.rmdir(os.path.dirname(self.ours_home))  # .orchesjob-bench, unless another run uses it
        except OSError:
            pass


def create_fleet(args: argparse.Namespace, workdir: str, run_id: str, hosts: list[Host]) -> None:
    """Start ``args.hosts`` sshds, pipx-installing one wheel for each user (two at a time: 2 cores)."""
    from tests.sshd_harness import SSHServer, build_wheel

    wheel = build_wheel(os.path.join(workdir, "wheel"))

    def make(i: int) -> Any:
        return SSHServer.create(os.path.join(workdir, f"h{i:02d}"), user=f"{args.user_prefix}{i:02d}",
                                wheel=wheel, raised_limits=False)  # fmt: skip

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(make, i) for i in range(args.hosts)]
        for i, fut in enumerate(futures):
            hosts.append(Host(fut.result(), i, run_id))  # appended at once: cleaned up even if a later one fails


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


class Gate:
    """A file the bench holds an exclusive flock on; jobs wait for a shared lock (``job_command``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.chmod(path, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.opened_at: float | None = None

    def open(self) -> None:
        if self.opened_at is None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.opened_at = time.time()

    def close(self) -> None:
        self.open()
        os.close(self.fd)


# ------------------------------------------------------------------- one side
class Side:
    """Start ``n`` jobs over the fleet, then follow their triggers in triggerer processes."""

    name = ""
    kind = ""

    def __init__(self, args: argparse.Namespace, hosts: list[Host], markers: str, workdir: str, tag: str) -> None:
        self.args, self.hosts, self.markers, self.workdir, self.tag = args, hosts, markers, workdir, tag

    def conn_id(self, host: Host) -> str:
        return f"fleet_{self.kind}_h{host.index:02d}"

    def register_connections(self) -> None:
        raise NotImplementedError

    def make_operator(self, i: int, host: Host, command: str) -> Any:
        raise NotImplementedError

    def after_start(self, op: Any) -> None:
        pass

    def finished_ok(self, event: dict) -> bool:
        raise NotImplementedError

    def recorded_end(self, event: Any) -> float | None:
        """When the host recorded the job's end, if the event says."""
        return None

    def log_bytes(self, event: dict) -> int:
        raise NotImplementedError

    def marker(self, i: int) -> str:
        return os.path.join(self.markers, f"{self.kind}-{self.tag}-{i}")

    def start_one(self, i: int, job_seconds: int, gate: str) -> tuple[Any, str | None]:
        from airflow.sdk.exceptions import TaskDeferred

        host = self.hosts[i % len(self.hosts)]
        delay = (i % SPREAD_STEPS) / SPREAD_STEPS * self.args.poll_interval
        idle_fifo = os.path.join(self.markers, "idle.fifo") if self.args.job_kind == "builtin" else None
        op = self.make_operator(i, host, job_command(job_seconds, self.marker(i), gate, delay, idle_fifo))
        try:
            op.execute({"ti": FakeTI(op.task_id, DAG_ID)})
        except TaskDeferred as deferred:
            return deferred.trigger, None
        except Exception as exc:  # noqa: BLE001 - a failed submission is a figure
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            self.after_start(op)
        return None, "execute() returned without deferring"

    def run(self, n: int, job_seconds: int, triggerers: int) -> dict[str, Any]:
        args, hosts = self.args, self.hosts
        ports = [h.server.port for h in hosts]
        out: dict[str, Any] = {"side": self.name, "jobs": n, "hosts": len(hosts), "job_seconds": job_seconds,
                               "poll_interval": args.poll_interval, "triggerers": triggerers}  # fmt: skip
        self.register_connections()
        gate = Gate(os.path.join(self.workdir, f"gate-{self.kind}-{self.tag}"))
        workers: list[subprocess.Popen] = []
        try:
            # ---- start phase
            for h in hosts:
                h.log_since_mark()
            cpu0 = [h.cpu.seconds() for h in hosts]
            mem0 = mem_available_mib()
            sampler = ConnSampler(ports)
            sampler.start()
            t0 = time.time()
            with ThreadPoolExecutor(max_workers=args.start_workers) as pool:
                started = list(pool.map(lambda i: self.start_one(i, job_seconds, gate.path), range(n)))
            out["start_s"] = time.time() - t0
            out["start_jobs_per_s"] = n / out["start_s"]
            start_peaks = sampler.stop()
            out["start_failures"] = [err for _, err in started if err]
            wait_connections_closed(ports)
            logs = [h.log_since_mark() for h in hosts]
            out["start_host"] = host_rows(hosts, logs, start_peaks, cpu0)
            # What the waiting jobs hold on the host (supervisors, shells): the memory question.
            mem_after_start = mem_available_mib()
            out["start_mem_used_mib"] = mem0 - mem_after_start
            # From here the hosts' cgroups count sshd and the polls only; the jobs count apart.
            for h in hosts:
                h.jobs_cpu.adopt_user(h.server.user)
            names, specs = [], []
            for i, (trig, _) in enumerate(started):
                if trig is not None:
                    classpath, kwargs = trig.serialize()  # what the triggerer stores and rebuilds from
                    specs.append((classpath, json.loads(json.dumps(kwargs))))
                    names.append(i)

            # ---- poll phase: the triggerer processes
            timeout = job_seconds + args.poll_interval + args.timeout
            # Job i runs on host i mod hosts: deal the triggers out in blocks of one per host, so that every
            # triggerer process gets its share of every host (as Airflow's assignment would, in effect).
            parts = [
                [j for j in range(len(specs)) if names[j] // len(hosts) % triggerers == k] for k in range(triggerers)
            ]
            paths = []
            for k, part in enumerate(parts):
                in_path = os.path.join(self.workdir, f"triggerer-{self.kind}-{self.tag}-{k}.in.json")
                with open(in_path, "w") as f:
                    json.dump({"triggers": [specs[j] for j in part], "timeout": timeout}, f)
                paths.append((in_path, in_path.replace(".in.", ".out.")))
            cpu_host0 = [h.cpu.seconds() for h in hosts]
            cpu_jobs0 = [h.jobs_cpu.seconds() for h in hosts]
            sampler = ConnSampler(ports)
            sampler.start()
            t_poll0 = time.time()
            for in_path, out_path in paths:
                workers.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", in_path,
                                                 out_path]))  # fmt: skip
            gate.open()  # the jobs begin now
            for w in workers:
                w.wait()
            t_done = time.time()
            poll_peaks = sampler.stop()
            # Memory the poll phase took on top of the start phase's (the connections' sshd processes ...).
            out["poll_mem_extra_mib"] = mem_after_start - sampler.mem_low_mib
            logs = [h.log_since_mark() for h in hosts]
            out["poll_s"] = t_done - t_poll0
            out["poll_host"] = host_rows(hosts, logs, poll_peaks, cpu_host0)
            out["jobs_cpu_s"] = sum(h.jobs_cpu.seconds() - c for h, c in zip(hosts, cpu_jobs0, strict=True))
            results = []
            for (_, out_path), w in zip(paths, workers, strict=True):
                try:
                    with open(out_path) as f:
                        results.append(json.load(f))
                except (OSError, ValueError):
                    results.append({"error": f"triggerer process exited {w.returncode} without results"})
            out["triggerer"] = [{k: v for k, v in r.items() if k not in ("events", "ends")} for r in results]
            events: list[Any] = [None] * len(specs)
            ends: list[float] = [float("nan")] * len(specs)
            for part, r in zip(parts, results, strict=True):
                for j, e, t in zip(part, r.get("events", []), r.get("ends", []), strict=False):
                    events[j], ends[j] = e, t
            self.summarise(out, names, events, ends, gate.opened_at or t_poll0, n, job_seconds)
            return out
        finally:
            for w in workers:
                if w.poll() is None:
                    w.terminate()
                    w.wait(10)
            gate.close()

    def summarise(
        self, out: dict, names: list[int], events: list, ends: list, gate_opened: float, n: int, job_seconds: int
    ) -> None:
        ok = [e for e in events if isinstance(e, dict) and self.finished_ok(e)]
        out["triggers"] = len(names)
        out["finished_ok"] = len(ok)
        out["log_bytes_delivered"] = sum(self.log_bytes(e) for e in ok)
        out["log_bytes_written"] = job_output_bytes(job_seconds) * n
        out["trigger_failures"] = [
            (e if isinstance(e, str) else f"{(e or {}).get('status')}: {(e or {}).get('message', '')}"[:300])
            for e in events
            if not (isinstance(e, dict) and self.finished_ok(e))
        ]
        lags, settles, seen = [], [], []
        for i, event, end in zip(names, events, ends, strict=True):
            try:
                with open(self.marker(i)) as f:
                    job_end = float(f.read().strip())
            except (OSError, ValueError):
                continue
            lags.append(end - job_end)
            recorded = self.recorded_end(event)
            if recorded is not None:
                settles.append(recorded - job_end)
                seen.append(end - recorded)
        out["lag_p50_s"], out["lag_p99_s"] = pct(lags, 0.5), pct(lags, 0.99)
        out["lag_max_s"] = max(lags) if lags else float("nan")
        out["lags_measured"] = len(lags)
        # Of that lag, the part before the host had the outcome (ours: the supervisor's record).
        out["settle_p50_s"], out["settle_p99_s"] = pct(settles, 0.5), pct(settles, 0.99)
        out["seen_p50_s"], out["seen_p99_s"] = pct(seen, 0.5), pct(seen, 0.99)  # recorded outcome → event
        trips = [t for r in out["triggerer"] for t in r.get("status_round_trips_s", [])]
        out["status_round_trip_p50_s"], out["status_round_trip_p99_s"] = pct(trips, 0.5), pct(trips, 0.99)
        out["status_round_trip_max_s"] = max(trips) if trips else float("nan")
        for r in out["triggerer"]:
            r.pop("status_round_trips_s", None)
        # How long after the gate opened the last trigger event came (the jobs took job_seconds + spread).
        out["last_event_after_gate_s"] = max((t for t in ends if t == t), default=float("nan")) - gate_opened


def host_rows(hosts: list[Host], logs: list[str], peaks: dict[int, int], cpu0: list[float]) -> list[dict]:
    """Per host: the figures of its sshd log slice ``logs[i]``, peak connections, CPU since ``cpu0[i]``."""
    rows = []
    for h, log, c0 in zip(hosts, logs, cpu0, strict=True):
        rows.append(
            {
                "host": h.index,
                "connections": len(re.findall(r"Accepted publickey for ", log)),
                "sessions": len(re.findall(r"Starting session: command ", log)),
                "maxstartups_drops": maxstartups_drops(log),
                # sshd refuses a channel beyond MaxSessions (logged at VERBOSE or DEBUG depending on version).
                "session_refusals": len(re.findall(r"no more sessions|MaxSessions|open failed", log)),
                "peak_connections": peaks.get(h.server.port, 0),
                "cpu_s": h.cpu.seconds() - c0,
            }
        )
    return rows


class Ours(Side):
    name = "orchesjob (OrchesJobTrigger)"
    kind = "ours"

    def register_connections(self) -> None:
        from tests.provider.conftest import set_connection

        for h in self.hosts:
            set_connection(self.conn_id(h), h.server, orchesjob_home=h.ours_home)

    def make_operator(self, i: int, host: Host, command: str) -> Any:
        from airflow_provider_orchesjob.operators import OrchesJobStartOperator

        return OrchesJobStartOperator(
            task_id=f"ours_{self.tag}_{i}",
            ssh_conn_id=self.conn_id(host),
            command=command,
            run_key=f"fleet:{self.tag}:{i}",
            poll_interval=self.args.poll_interval,
        )

    def after_start(self, op: Any) -> None:
        op.hook.close()  # the worker process would exit here

    def finished_ok(self, event: dict) -> bool:
        return event.get("status") == "done" and event.get("job", {}).get("status") == "SUCCEEDED"

    def recorded_end(self, event: Any) -> float | None:
        return ((event or {}).get("job") or {}).get("finished_at") if isinstance(event, dict) else None

    def log_bytes(self, event: dict) -> int:
        return event["stdout_offset"] + event["stderr_offset"]


class Providers(Side):
    name = "providers-ssh (SSHRemoteJobTrigger)"
    kind = "prov"

    def register_connections(self) -> None:
        from tests.provider.conftest import set_connection

        for h in self.hosts:
            # paramiko's SSHHook has no known_hosts-path extra: pin the host key.
            set_connection(self.conn_id(h), h.server, host_key=h.server.host_key_line)

    def make_operator(self, i: int, host: Host, command: str) -> Any:
        from airflow.providers.ssh.operators.ssh_remote_job import SSHRemoteJobOperator

        return SSHRemoteJobOperator(task_id=f"prov_{self.tag}_{i}", ssh_conn_id=self.conn_id(host), command=command,
                                    remote_base_dir=host.prov_base, poll_interval=self.args.poll_interval)  # fmt: skip

    def finished_ok(self, event: dict) -> bool:
        return event.get("status") == "success" and event.get("exit_code") == 0

    def log_bytes(self, event: dict) -> int:
        return event["log_offset"]


# ------------------------------------------------------------------- report
def totals(rows: list[dict], key: str) -> tuple[float, float, float]:
    values = [r[key] for r in rows]
    return min(values), statistics.mean(values), max(values)


def report(r: dict) -> str:
    ticks = r["poll_s"] / r["poll_interval"]
    nan = float("nan")
    poll, start = r["poll_host"], r["start_host"]
    trig = [t for t in r["triggerer"] if "cpu_s" in t]
    cpu = " / ".join(f"{t['cpu_s']:.1f}" for t in trig)
    rss = [f"{t['rss_idle_mib']:.0f} / {t['rss_built_mib']:.0f} / {t['rss_peak_mib']:.0f}" for t in trig]

    def mmm(rows: list[dict], key: str, fmt: str = "{:.0f}", per: float = 1.0) -> str:
        lo, mean, hi = totals(rows, key)
        return " / ".join(fmt.format(v / per) for v in (lo, mean, hi))

    lines = [
        f"### {r['side']}: {r['jobs']} jobs on {r['hosts']} hosts, job {r['job_seconds']} s, "
        f"poll {r['poll_interval']:g} s, {r['triggerers']} triggerer process(es)",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| start: wall time / throughput | {r['start_s']:.1f} s / {r['start_jobs_per_s']:.1f} jobs/s |",
        f"| start: failures | {len(r['start_failures'])} |",
        f"| start: memory held by the waiting jobs (MemAvailable drop) | {r['start_mem_used_mib']:.0f} MiB |",
        f"| poll: memory taken on top of that, peak (MemAvailable) | {r.get('poll_mem_extra_mib', 0):.0f} MiB |",
        f"| start: connections per host (min / mean / max) | {mmm(start, 'connections')} |",
        f"| start: MaxStartups drops, all hosts | {sum(h['maxstartups_drops'] for h in start)} |",
        f"| poll: SSH connections per host (min / mean / max) | {mmm(poll, 'connections')} |",
        f"| poll: peak concurrent connections per host (min / mean / max) | {mmm(poll, 'peak_connections')} |",
        f"| poll: commands per host (min / mean / max) | {mmm(poll, 'sessions')} |",
        f"| poll: commands per host per tick ({ticks:.1f} ticks) (min / mean / max) "
        f"| {mmm(poll, 'sessions', '{:.2f}', ticks)} |",
        f"| poll: MaxStartups drops / session refusals, all hosts | {sum(h['maxstartups_drops'] for h in poll)} / "
        f"{sum(h['session_refusals'] for h in poll)} |",
        f"| poll: host CPU per host, sshd + commands (s) (min / mean / max) | {mmm(poll, 'cpu_s', '{:.2f}')} |",
        f"| poll: CPU of the jobs themselves, all hosts (s) | {r['jobs_cpu_s']:.1f} |",
        f"| triggerer CPU, user + sys (s) per process | {cpu} |",
        f"| triggerer RSS: idle / triggers built / peak (MiB) per process | {'; '.join(rss)} |",
        f"| jobs observed SUCCEEDED / triggers | {r['finished_ok']} / {r['triggers']} |",
        f"| trigger failures | {len(r['trigger_failures'])} |",
        f"| detection lag p50 / p99 / max (s), {r['lags_measured']} jobs "
        f"| {r['lag_p50_s']:.2f} / {r['lag_p99_s']:.2f} / {r['lag_max_s']:.2f} |",
        f"| log bytes delivered / written | {r['log_bytes_delivered']} / {r['log_bytes_written']} |",
        f"| job end → outcome recorded on the host (supervisor), p50 / p99 (s) "
        f"| {r.get('settle_p50_s', nan):.2f} / {r.get('settle_p99_s', nan):.2f} |",
        f"| outcome recorded → trigger event, p50 / p99 (s) "
        f"| {r.get('seen_p50_s', nan):.2f} / {r.get('seen_p99_s', nan):.2f} |",
        f"| one batched status command's round trip, p50 / p99 / max (s) "
        f"| {r.get('status_round_trip_p50_s', nan):.2f} / {r.get('status_round_trip_p99_s', nan):.2f} "
        f"/ {r.get('status_round_trip_max_s', nan):.2f} |",
        f"| gate opened → last trigger event (s) | {r['last_event_after_gate_s']:.1f} |",
    ]
    errors = r["start_failures"][:3] + r["trigger_failures"][:3]
    lines += [f"\nfailure: {e}" for e in errors]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if args.worker:
        setup_bench_process_worker()
        return triggerer_main(*args.worker)
    if os.geteuid() != 0:
        print("needs root (the harness creates users and starts sshd)", file=sys.stderr)
        return 2
    airflow_home = setup_bench_process("bench-fleet")
    from tests.sshd_harness import missing_parts

    missing = missing_parts()
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:8]
    workdir = tempfile.mkdtemp(prefix="bench-fleet-")
    os.chmod(workdir, 0o755)
    hosts: list[Host] = []
    shells_changed = False
    results: dict[str, Any] = {"args": vars(args)}
    try:
        t = time.time()
        create_fleet(args, workdir, run_id, hosts)
        print(f"{len(hosts)} sshds ready in {time.time() - t:.1f} s (one wheel, {len(hosts)} pipx installs)",
              flush=True)  # fmt: skip
        markers = os.path.join(workdir, "ends")
        os.makedirs(markers)
        os.chmod(markers, 0o1777)
        os.mkfifo(os.path.join(markers, "idle.fifo"), 0o666)  # --job-kind builtin: waits on it, nobody writes
        os.chmod(os.path.join(markers, "idle.fifo"), 0o666)
        if args.side in ("ours", "both"):
            results["ours"] = []
            for triggerers in (int(x) for x in args.triggerers.split(",")):
                print(f"ours: {args.jobs} jobs, {triggerers} triggerer process(es) ...", flush=True)
                r = Ours(args, hosts, markers, workdir, f"t{triggerers}").run(args.jobs, args.job_seconds, triggerers)
                results["ours"].append(r)
                print(report(r), flush=True)
                kill_leftovers(hosts)
        if args.side in ("providers", "both"):
            prov = Providers(args, hosts, markers, workdir, "probe")
            prov.register_connections()
            h0 = hosts[0]
            results["probe"] = probe_providers_submit(prov.conn_id(h0), h0.prov_base, login_shell(h0.server.user))
            print(f"providers-ssh probe under the harness's login shell: {results['probe']}", flush=True)
            for h in hosts:
                set_user_shell(h.server.user, "/bin/bash")
            shells_changed = True
            results["providers"] = []
            per_job_mib = 0.0
            for level in (int(x) for x in args.prov_levels.split(",")):
                # Each trigger holds a connection (two sshd processes on the host): this box is shared.
                need = per_job_mib * level * len(hosts)
                if need > mem_available_mib() - MEM_RESERVE_MIB:
                    print(f"providers-ssh: {level} jobs per host not run: would need ~{need:.0f} MiB (measured at "
                          f"the previous level), {mem_available_mib():.0f} MiB available", flush=True)  # fmt: skip
                    results["providers_not_run"] = {"level": level, "need_mib": need}
                    break
                print(f"providers-ssh: {level} jobs per host ...", flush=True)
                prov = Providers(args, hosts, markers, workdir, f"l{level}")
                r = prov.run(level * len(hosts), args.prov_job_seconds, triggerers=1)
                results["providers"].append(r)
                per_job_mib = (r["start_mem_used_mib"] + r["poll_mem_extra_mib"]) / r["jobs"]
                print(report(r), flush=True)
                kill_leftovers(hosts)
                if r["start_failures"] or r["trigger_failures"] or r["finished_ok"] < r["jobs"]:
                    print(f"providers-ssh: first failing level {level} jobs per host", flush=True)
                    break
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2, default=str)
        return 0
    finally:
        for h in hosts:
            h.close()
            if shells_changed:
                set_user_shell(h.server.user, "/bin/sh")
        remove_dirs(workdir, airflow_home)


def kill_leftovers(hosts: list[Host]) -> None:
    """Between runs: no job of an earlier run may hold CPU (sshd itself runs as root and stays)."""
    for h in hosts:
        kill_user_processes(h.server.user)


def setup_bench_process_worker() -> None:
    """A triggerer process: the parent's Airflow home and connections (environment), quiet logs."""
    import logging

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
