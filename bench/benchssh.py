"""Pieces shared by the trigger benchmarks (bench_triggers.py, bench_fleet.py); benchlib.py holds
the ones every bench uses (venvs, timing, percentiles, plots).

Measuring instruments (established connections per sshd port, a cpuacct cgroup),
the job every remote task runs, the minimal task-instance context an operator's
``execute()`` reads, driving triggers in one event loop the way a triggerer does,
and the set-up/clean-up of the bench process itself.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def established(ports: Iterable[int]) -> dict[int, int]:
    """Established TCP connections per local (server-side) port, from /proc/net/tcp."""
    wanted = {f"{p:04X}": p for p in ports}
    counts = dict.fromkeys(wanted.values(), 0)
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            port = wanted.get(parts[1].rsplit(":", 1)[1])
            if port is not None and parts[3] == "01":  # ESTABLISHED
                counts[port] += 1
    return counts


def mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def maxstartups_drops(sshd_log: str) -> int:
    """Connection attempts sshd dropped because of MaxStartups (OpenSSH >= 8.x says "past", older "exceeded")."""
    return sshd_log.count("past MaxStartups") + sshd_log.count("exceeded MaxStartups")


class ConnSampler(threading.Thread):
    """Peak established connections per sshd port, and the lowest MemAvailable, sampled in a thread."""

    def __init__(self, ports: Iterable[int], every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.ports = list(ports)
        self.every = every
        self.peaks = dict.fromkeys(self.ports, 0)
        self.mem_low_mib = mem_available_mib()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for port, n in established(self.ports).items():
                self.peaks[port] = max(self.peaks[port], n)
            self.mem_low_mib = min(self.mem_low_mib, mem_available_mib())
            self._halt.wait(self.every)

    def stop(self) -> dict[int, int]:
        self._halt.set()
        self.join(5)
        return self.peaks


def wait_connections_closed(ports: Iterable[int], limit: float = 3.0) -> None:
    """Let connections of an earlier phase finish closing (so they are not counted in the next)."""
    ports = list(ports)
    deadline = time.time() + limit
    while any(established(ports).values()) and time.time() < deadline:
        time.sleep(0.05)


class FakeTI:
    """The few task-instance attributes the operators read in execute()."""

    def __init__(self, task_id: str, dag_id: str = "bench_triggers") -> None:
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = "bench"
        self.try_number = 1
        self.map_index = -1

    def xcom_push(self, key: str, value: Any) -> None:
        pass


class HostCPU:
    """CPU time of the processes in one cgroup: sshd and everything it forks (sessions, remote commands, jobs).

    Other processes on the machine are not counted. cgroup v1 ``cpuacct`` or cgroup v2; when
    neither can be created, figures are NaN.
    """

    def __init__(self, name: str) -> None:
        self.path: str | None = None
        self.usage_file = ""
        v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
        for root, usage in (("/sys/fs/cgroup/cpuacct", "cpuacct.usage"), ("/sys/fs/cgroup", "cpu.stat")):
            if (usage == "cpu.stat") != v2:
                continue
            if os.path.isdir(root) and os.access(root, os.W_OK):
                try:
                    os.mkdir(os.path.join(root, name))
                except OSError:
                    continue
                self.path, self.usage_file = os.path.join(root, name), usage
                break

    def add(self, pid: int) -> None:
        if self.path:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def adopt_user(self, user: str, keep: Iterable[int] = ()) -> int:
        """Move every process of ``user`` here (except ``keep``); their children stay here. Returns the count."""
        keep = set(keep)
        moved = 0
        out = subprocess.run(["pgrep", "-u", user], capture_output=True, text=True).stdout.split()
        for pid in map(int, out):
            if pid in keep:
                continue
            try:
                self.add(pid)
                moved += 1
            except OSError:  # exited meanwhile
                pass
        return moved

    def seconds(self) -> float:
        if not self.path:
            return float("nan")
        with open(os.path.join(self.path, self.usage_file)) as f:
            text = f.read()
        if self.usage_file == "cpu.stat":  # v2: "usage_usec N"
            return int(text.split("usage_usec")[1].split()[0]) / 1e6
        return int(text) / 1e9

    def remove(self) -> None:
        deadline = time.monotonic() + 5  # killed processes may take a moment to leave the group
        while self.path:
            try:
                os.rmdir(self.path)
                self.path = None
            except OSError:
                if time.monotonic() > deadline:
                    print(f"could not remove cgroup {self.path}", file=sys.stderr)
                    return
                time.sleep(0.1)


def job_command(
    seconds: int, marker: str, gate: str | None = None, delay: float = 0.0, idle_fifo: str | None = None
) -> str:
    """A line per second for ``seconds``, then the job's real end time into ``marker``.

    ``gate``: a file the bench holds an exclusive lock on; the job waits for a shared lock
    (no CPU while waiting) so that jobs started over a long start phase all begin together.
    ``delay``: seconds to wait after the gate, to spread the jobs' ends.
    ``idle_fifo``: a FIFO nobody writes to. Given, the job is one ``bash`` whose waits are
    ``read -t`` on it and whose end time is ``$EPOCHREALTIME``: no process per line. Without
    it, each second forks ``sleep`` (and the end ``date``), as a plain shell script does;
    with many jobs on few cores (a fleet simulated on one machine) that forking alone can
    take a core, which real hosts would spread over their own CPUs.
    """
    # One brace group: SSHRemoteJobOperator splices the command into its wrapper and appends
    # `>>log 2>&1`, which would otherwise capture only the last simple command's output.
    wait = f"flock -s {gate} true; " if gate else ""
    if idle_fifo is None:
        if delay:
            wait += f"sleep {delay:.2f}; "
        return (
            f'{{ {wait}i=0; while [ "$i" -lt {seconds} ]; do echo "tick $i"; i=$((i+1)); sleep 1; done; '
            f"date +%s.%N > {marker}; }}"
        )
    pause = f"read -t {delay:.2f} -u 3 _; " if delay else ""
    script = (
        f'exec 3<>{idle_fifo}; {pause}i=0; while [ "$i" -lt {seconds} ]; do echo "tick $i"; i=$((i+1)); '
        f'read -t 1 -u 3 _; done; echo "$EPOCHREALTIME" > {marker}'
    )
    return f"{{ {wait}bash -c {shlex.quote(script)}; }}"


def job_output_bytes(seconds: int) -> int:
    """Bytes a :func:`job_command` job writes to its stdout."""
    return sum(len(f"tick {i}\n") for i in range(seconds))


def set_user_shell(user: str, shell: str) -> None:
    subprocess.run(["usermod", "-s", shell, user], check=True, capture_output=True)


def login_shell(user: str) -> str:
    return subprocess.run(["getent", "passwd", user], capture_output=True, text=True).stdout.strip().rsplit(":", 1)[-1]


def probe_providers_submit(conn_id: str, base_dir: str, shell: str) -> str:
    """Submit one providers-ssh job (under the user's login shell ``shell``); return the outcome."""
    from airflow.providers.ssh.operators.ssh_remote_job import SSHRemoteJobOperator
    from airflow.sdk.exceptions import TaskDeferred

    op = SSHRemoteJobOperator(task_id="probe", ssh_conn_id=conn_id, command="true", remote_base_dir=base_dir)
    try:
        op.execute({"ti": FakeTI("probe")})
    except TaskDeferred:
        return f"login shell {shell}: submitted fine"
    except Exception as exc:  # noqa: BLE001
        return f"login shell {shell}: {type(exc).__name__}: {str(exc).strip()}"
    return f"login shell {shell}: execute() returned without deferring"


def kill_user_processes(user: str, limit: float = 5.0) -> None:
    """SIGKILL every process of ``user`` until none is left (detached supervisors fork while dying)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-u", user], capture_output=True).returncode == 0:
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
        time.sleep(0.1)


def setup_bench_process(prefix: str, test_user: str | None = None) -> str:
    """Airflow in a temporary home (never ~/airflow), quiet logging, SIGTERM/SIGHUP → SystemExit.

    Call before any airflow import; returns the Airflow home (remove it when done). The
    signals become SystemExit so that the caller's ``finally`` clean-up runs.
    """
    airflow_home = tempfile.mkdtemp(prefix=f"{prefix}-airflow-")
    os.environ["AIRFLOW_HOME"] = airflow_home
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # every trigger x every log line
    if test_user is not None:
        os.environ["ORCHESJOB_TEST_SSH_USER"] = test_user  # read by the harness at import
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    return airflow_home


def make_user_dir(path: str, user: str) -> str:
    """A directory owned by ``user`` (e.g. providers-ssh's ``remote_base_dir``: per run and per user, because
    a shared default such as /tmp/airflow-ssh-jobs belongs to whichever user created it first)."""
    import pwd

    os.makedirs(path)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def remove_dirs(*paths: str | None) -> None:
    for path in paths:
        if path:
            shutil.rmtree(path, ignore_errors=True)


async def follow_triggers(triggers: list, timeout: float) -> tuple[list, list]:
    """Run every trigger's ``run()`` in this loop until each yields; (payload or error text, wall time) each."""

    async def follow(trig: Any) -> tuple[Any, float]:
        async for event in trig.run():
            return event.payload, time.time()
        return "trigger ended without an event", time.time()

    if not triggers:  # every submission failed: nothing to follow (asyncio.wait refuses an empty set)
        return [], []
    tasks = [asyncio.ensure_future(follow(t)) for t in triggers]
    try:
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        results = []
        for t in tasks:
            if t in pending:
                results.append((f"no event within {timeout:.0f} s", time.time()))
            elif t.exception() is not None:
                results.append((f"{type(t.exception()).__name__}: {t.exception()}", time.time()))
            else:
                results.append(t.result())
        return [r[0] for r in results], [r[1] for r in results]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def close_shared_connections() -> None:
    """Close this loop's shared asyncssh connections (ours): a triggerer's would close at exit."""
    from airflow_provider_orchesjob.hooks import transport

    for shared in transport._POOL.pop(asyncio.get_running_loop(), {}).values():
        if shared.conn is not None:
            shared.conn.close()
