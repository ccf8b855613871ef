#!/usr/bin/env python3
"""Benchmark: 50 deferred remote jobs polled from ONE event loop, against a real sshd.

Side by side, in the same run, against the same sshd (tests/sshd_harness.py):

* ours: ``OrchesJobStartOperator.execute`` (→ ``OrchesJobHook.start_job``) for each
  job, then the ``OrchesJobTrigger`` it defers with;
* providers-ssh: ``SSHRemoteJobOperator.execute`` for each job (OS detection +
  detached wrapper, exactly as in a worker), then the ``SSHRemoteJobTrigger`` it
  defers with.

Each operator's ``execute()`` runs in its own thread (50 concurrent "worker
tasks") with a minimal context, and raises ``TaskDeferred``. Like a triggerer, the
bench then rebuilds every trigger from its ``serialize()`` output (classpath +
kwargs, round-tripped through JSON) and runs all 50 ``run()`` generators
concurrently in one asyncio event loop until each yields its event. The only
change to the triggers is a subclass that counts polls (one per loop iteration)
before calling the original method.

Server-side figures come from the sshd VERBOSE log (``Accepted publickey`` = one
authenticated connection, ``Starting session: command`` = one remote command),
read before and after each phase; peak concurrent connections are sampled from
/proc/net/tcp; host-side CPU comes from a cpuacct cgroup holding sshd and all it
forks (sessions, remote commands, jobs), triggerer CPU from this process. Each
job prints a line per second for ``--job-seconds`` and then writes its end time
to a marker file, so the lag from the job's real end to the trigger's event is
measured too.

The sides run one after the other (order alternates with ``--rounds``), each in
a fresh event loop, so every sshd log line is attributed to exactly one side.
sshd limits are the harness's (MaxStartups 200:30:400, MaxSessions 64).

The harness creates its test user with ``/bin/sh`` (dash on Debian) as login
shell. SSHRemoteJobOperator's wrapper starts with ``set -euo pipefail``, which
dash rejects, so the bench first submits one providers-ssh job under the
harness's shell and records the outcome, then switches the bench user's login
shell to bash for both sides (restored on exit).

Needs root (creates a dedicated user, default ``orchesjob-bench``, so that the
final ``pkill -u`` never touches another user's jobs).

    python bench/bench_triggers.py [--jobs 50] [--poll-interval 2] [--job-seconds 20] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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
    kill_user_processes,
    login_shell,
    make_user_dir,
    maxstartups_drops,
    probe_providers_submit,
    remove_dirs,
    set_user_shell,
    setup_bench_process,
    wait_connections_closed,
)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=50, help="remote jobs (= triggers) per side")
    ap.add_argument("--poll-interval", type=float, default=2.0, help="trigger poll interval, seconds (both sides)")
    ap.add_argument("--job-seconds", type=int, default=20, help="each job prints one line per second this long")
    ap.add_argument("--rounds", type=int, default=1, help="rounds; the side order alternates between rounds")
    ap.add_argument("--user", default="orchesjob-bench", help="dedicated test user on the host (created)")
    ap.add_argument("--timeout", type=float, default=180.0, help="give up on a side's triggers after this long")
    ap.add_argument("--json", help="also write the raw figures to this file")
    return ap.parse_args()


# ------------------------------------------------------------------- sides
class Side:
    name = ""

    def __init__(
        self, args: argparse.Namespace, server: Any, conn_id: str, markers: str, tag: str, host_cpu: HostCPU
    ) -> None:
        self.args = args
        self.host_cpu = host_cpu
        self.server = server
        self.conn_id = conn_id
        self.markers = markers
        self.tag = tag

    def make_operator(self, i: int) -> Any:
        raise NotImplementedError

    def after_start(self, op: Any) -> None:
        pass

    def counting_class(self, cls: type) -> type:
        raise NotImplementedError

    def finished_ok(self, event: dict) -> bool:
        raise NotImplementedError

    def log_bytes(self, event: dict) -> int:
        raise NotImplementedError

    async def close_loop_resources(self) -> None:
        pass

    def start_one(self, i: int) -> tuple[Any, str | None]:
        from airflow.sdk.exceptions import TaskDeferred

        op = self.make_operator(i)
        try:
            op.execute({"ti": FakeTI(op.task_id)})
        except TaskDeferred as deferred:
            return deferred.trigger, None
        except Exception as exc:  # noqa: BLE001 - a failed submission is a figure
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            self.after_start(op)
        return None, "execute() returned without deferring"

    def run(self) -> dict[str, Any]:
        args, server = self.args, self.server
        n = args.jobs
        out: dict[str, Any] = {"side": self.name}

        # ---- start phase: n operator.execute() calls in parallel, as n worker tasks would
        c0, s0 = server.connections(), server.sessions()
        cpu0 = self.host_cpu.seconds()
        sampler = ConnSampler([server.port])
        sampler.start()
        t0 = time.time()
        with ThreadPoolExecutor(max_workers=n) as pool:
            started = list(pool.map(self.start_one, range(n)))
        t_started = time.time()
        out["start_peak_conns"] = sampler.stop()[server.port]
        c1, s1 = server.connections(), server.sessions()
        out["start_conns"], out["start_sessions"] = c1 - c0, s1 - s0
        out["start_s"] = t_started - t0
        out["start_cpu_host_s"] = self.host_cpu.seconds() - cpu0
        out["start_failures"] = [err for _, err in started if err]
        triggers = []
        for trig, _ in started:
            if trig is None:
                continue
            classpath, kwargs = trig.serialize()  # what the triggerer stores and rebuilds from
            kwargs = json.loads(json.dumps(kwargs))
            triggers.append(self.counting_class(type(trig))(**kwargs))

        # ---- poll phase: every trigger in one event loop
        wait_connections_closed([server.port])
        c1, s1 = server.connections(), server.sessions()
        t_poll0 = time.time()
        cpu_host0, cpu_self0 = self.host_cpu.seconds(), time.process_time()
        sampler = ConnSampler([server.port])
        sampler.start()
        events, ends = asyncio.run(self.run_triggers(triggers))
        t_done = time.time()
        out["poll_cpu_self_s"] = time.process_time() - cpu_self0
        out["poll_cpu_host_s"] = self.host_cpu.seconds() - cpu_host0
        out["poll_peak_conns"] = sampler.stop()[server.port]
        c2, s2 = server.connections(), server.sessions()
        out["poll_conns"], out["poll_sessions"] = c2 - c1, s2 - s1
        polls = sum(t.polls for t in triggers)
        out["polls"] = polls
        out["client_commands"] = sum(t.commands for t in triggers)
        out["cmds_per_poll"] = (s2 - s1) / polls if polls else float("nan")
        out["poll_s"] = t_done - t_poll0
        out["total_s"] = max(ends) - t0 if ends else float("nan")
        ok = [e for e in events if isinstance(e, dict) and self.finished_ok(e)]
        out["finished_ok"] = len(ok)
        out["log_bytes"] = sum(self.log_bytes(e) for e in ok)  # remote output streamed into task logs
        out["trigger_failures"] = [
            (e if isinstance(e, str) else f"{e.get('status')}: {e.get('message', '')}"[:300])
            for e in events
            if not (isinstance(e, dict) and self.finished_ok(e))
        ]
        # Lag from each job's real end (marker written by the job) to its trigger event.
        lags = []
        for trig, end in zip(triggers, ends, strict=True):
            marker = os.path.join(self.markers, trig.bench_name)
            try:
                with open(marker) as f:
                    lags.append(end - float(f.read().strip()))
            except (OSError, ValueError):
                pass
        out["lag_median_s"] = statistics.median(lags) if lags else float("nan")
        out["lag_max_s"] = max(lags) if lags else float("nan")
        out["jobs"] = n
        out["triggers"] = len(triggers)
        return out

    async def run_triggers(self, triggers: list) -> tuple[list, list]:
        try:
            return await follow_triggers(triggers, self.args.timeout)
        finally:
            await self.close_loop_resources()


class Ours(Side):
    name = "orchesjob (OrchesJobTrigger)"

    def make_operator(self, i: int) -> Any:
        from airflow_provider_orchesjob.operators import OrchesJobStartOperator

        name = f"ours-{self.tag}-{i}"
        op = OrchesJobStartOperator(
            task_id=f"ours_{i}",
            ssh_conn_id=self.conn_id,
            command=job_command(self.args.job_seconds, os.path.join(self.markers, name)),
            run_key=f"bench:{self.tag}:{i}",
            poll_interval=self.args.poll_interval,
        )
        return op

    def after_start(self, op: Any) -> None:
        op.hook.close()  # the worker process would exit here

    def counting_class(self, cls: type) -> type:
        side = self

        class Counting(cls):  # type: ignore[misc, valid-type]
            polls = 0
            commands = 0

            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.bench_name = f"ours-{side.tag}-{self.run_key.rsplit(':', 1)[1]}"

            async def poll(self, hook: Any) -> Any:
                self.polls += 1
                return await super().poll(hook)

            async def hook(self) -> Any:
                h = await super().hook()
                if not getattr(h, "_bench_counted", False):
                    original, trig = h.arun_cli, self

                    async def counted(*a: Any, **kw: Any) -> Any:
                        trig.commands += 1
                        return await original(*a, **kw)

                    h.arun_cli, h._bench_counted = counted, True
                return h

        return Counting

    def finished_ok(self, event: dict) -> bool:
        return event.get("status") == "done" and event.get("job", {}).get("status") == "SUCCEEDED"

    def log_bytes(self, event: dict) -> int:
        return event["stdout_offset"] + event["stderr_offset"]

    async def close_loop_resources(self) -> None:
        await close_shared_connections()


class Providers(Side):
    name = "providers-ssh (SSHRemoteJobTrigger)"

    def __init__(self, *a: Any, base_dir: str, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.base_dir = base_dir

    def make_operator(self, i: int) -> Any:
        from airflow.providers.ssh.operators.ssh_remote_job import SSHRemoteJobOperator

        name = f"prov-{self.tag}-{i}"
        return SSHRemoteJobOperator(
            task_id=f"prov_{self.tag}_{i}",
            ssh_conn_id=self.conn_id,
            command=job_command(self.args.job_seconds, os.path.join(self.markers, name)),
            remote_base_dir=self.base_dir,
            poll_interval=self.args.poll_interval,
        )

    def counting_class(self, cls: type) -> type:
        side = self

        class Counting(cls):  # type: ignore[misc, valid-type]
            polls = 0
            commands = 0

            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                # task id prov_<tag>_<i> is in the job id: af_bench_triggers_prov_<tag>_<i>_bench_try1_<rand>
                i = self.job_id.split(f"prov_{side.tag}_", 1)[1].split("_", 1)[0]
                self.bench_name = f"prov-{side.tag}-{i}"

            async def _check_completion(self, conn: Any) -> Any:  # called once per poll
                self.polls += 1
                return await super()._check_completion(conn)

            async def _run_command(self, conn: Any, command: str) -> Any:
                self.commands += 1
                return await super()._run_command(conn, command)

        return Counting

    def finished_ok(self, event: dict) -> bool:
        return event.get("status") == "success" and event.get("exit_code") == 0

    def log_bytes(self, event: dict) -> int:
        return event["log_offset"]


# ------------------------------------------------------------------ report
def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


ROWS = [  # (label, key, format, show the providers / ours ratio)
    ("triggers polling in one event loop", "triggers", "{:.0f}", False),
    ("SSH connections opened while polling (sshd log)", "poll_conns", "{:.0f}", True),
    ("peak concurrent SSH connections while polling", "poll_peak_conns", "{:.0f}", True),
    ("SSH sessions (commands) while polling (sshd log)", "poll_sessions", "{:.0f}", True),
    ("polls (all triggers)", "polls", "{:.0f}", True),
    ("commands per poll per trigger", "cmds_per_poll", "{:.2f}", True),
    ("CPU while polling: the triggerer (bench) process (s)", "poll_cpu_self_s", "{:.1f}", True),
    ("CPU while polling: host side, sshd + remote commands + jobs (s)", "poll_cpu_host_s", "{:.1f}", True),
    ("start: SSH connections (sshd log)", "start_conns", "{:.0f}", True),
    ("start: SSH sessions (sshd log)", "start_sessions", "{:.0f}", True),
    ("start: wall time of the parallel execute() calls (s)", "start_s", "{:.2f}", True),
    ("start: CPU host side (s)", "start_cpu_host_s", "{:.1f}", True),
    ("wall time until all jobs observed finished (s)", "total_s", "{:.2f}", True),
    ("job end → trigger event, median (s)", "lag_median_s", "{:.2f}", True),
    ("job end → trigger event, max (s)", "lag_max_s", "{:.2f}", True),
    ("jobs observed SUCCEEDED", "finished_ok", "{:.0f}", False),
    ("remote output streamed to task logs (bytes)", "log_bytes", "{:.0f}", False),
]


def table(rows: list[tuple[dict, dict]], args: argparse.Namespace) -> str:
    lines = []
    for rnd, (ours, prov) in enumerate(rows, 1):
        if len(rows) > 1:
            first = "ours" if rnd % 2 else "providers-ssh"
            lines.append(f"\nRound {rnd} ({first} first):\n")
        lines += [
            f"| {args.jobs} jobs, poll {args.poll_interval:g} s, job {args.job_seconds} s | ours | providers-ssh "
            "| providers / ours |",
            "|---|---:|---:|---:|",
        ]
        for label, key, fmt, show_ratio in ROWS:
            a, b = ours[key], prov[key]
            lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio(b, a) if show_ratio else ''} |")
        lines.append(
            f"| failures (start / trigger) | {len(ours['start_failures'])} / {len(ours['trigger_failures'])} "
            f"| {len(prov['start_failures'])} / {len(prov['trigger_failures'])} | |"
        )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("needs root (the harness creates a user and starts sshd)", file=sys.stderr)
        return 2
    airflow_home = setup_bench_process("bench-triggers", args.user)
    from tests.provider.conftest import set_connection
    from tests.sshd_harness import SSHServer, missing_parts

    missing = missing_parts()
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2

    workdir = tempfile.mkdtemp(prefix="bench-triggers-sshd-")
    server = None
    shell_changed = False
    run_id = uuid.uuid4().hex[:8]
    host_cpu = HostCPU(f"bench-triggers-{run_id}")
    ours_home = None
    try:
        t = time.time()
        server = SSHServer.create(workdir)
        host_cpu.add(server.process.pid)  # every session and job sshd forks from now on is counted
        print(f"sshd on 127.0.0.1:{server.port} for user {server.user} ready in {time.time() - t:.1f} s "
              "(wheel built and pipx-installed)", flush=True)  # fmt: skip
        markers = os.path.join(workdir, "ends")
        os.makedirs(markers)
        os.chmod(markers, 0o1777)
        prov_base = make_user_dir(os.path.join(workdir, "prov-jobs"), server.user)
        ours_home = os.path.join(server.home, ".orchesjob-bench", run_id)
        ours_conn = set_connection("bench_orchesjob", server, orchesjob_home=ours_home)
        # paramiko's SSHHook has no known_hosts-path extra: pin the host key for providers-ssh.
        prov_conn = set_connection("bench_providers", server, host_key=server.host_key_line)

        probe = probe_providers_submit(prov_conn, prov_base, login_shell(server.user))
        print(f"providers-ssh probe under the harness's login shell: {probe}", flush=True)
        set_user_shell(server.user, "/bin/bash")
        shell_changed = True

        rows = []
        for rnd in range(args.rounds):
            tag = f"r{rnd}"
            ours = Ours(args, server, ours_conn, markers, tag, host_cpu)
            prov = Providers(args, server, prov_conn, markers, tag, host_cpu, base_dir=prov_base)
            order = [ours, prov] if rnd % 2 == 0 else [prov, ours]
            results = {}
            for side in order:
                print(f"round {rnd + 1}: {side.name} ...", flush=True)
                results[side.name] = side.run()
                r = results[side.name]
                print(f"  start {r['start_s']:.1f} s, {r['triggers']} triggers, {r['finished_ok']} ok, "
                      f"{r['poll_conns']} conns / {r['poll_sessions']} sessions while polling, "
                      f"total {r['total_s']:.1f} s", flush=True)  # fmt: skip
                for err in (r["start_failures"] + r["trigger_failures"])[:5]:
                    print(f"  failure: {err}", flush=True)
            rows.append((results[ours.name], results[prov.name]))

        log = server.log()
        limits = {
            "MaxStartups drops": maxstartups_drops(log),
            "MaxSessions refusals": log.count("no more sessions") + log.count("MaxSessions"),
        }
        print()
        print(table(rows, args))
        print()
        print(f"sshd (MaxStartups 200:30:400, MaxSessions 64) log: {limits}")
        print(f"providers-ssh probe under the harness's /bin/sh login shell: {probe}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "probe": probe, "limits": limits, "rounds": rows}, f, indent=2)
        return 0
    finally:
        if server is not None:
            server.stop()  # stops sshd, then pkill -KILL -u <bench user>: every leftover job
            kill_user_processes(server.user)
            if shell_changed:
                set_user_shell(server.user, "/bin/sh")
        host_cpu.remove()
        remove_dirs(ours_home, workdir, airflow_home)  # workdir holds the providers-ssh job dirs


if __name__ == "__main__":
    sys.exit(main())
