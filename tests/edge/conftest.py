"""Black-box helpers: run the real console scripts as separate processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import cli_path

TERMINAL = ("SUCCEEDED", "FAILED", "LOST", "ABORTED", "CANCELLED", "NEVER_LAUNCHED")


def wait_until(predicate, timeout=20.0, interval=0.05):
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie, not dead) process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def pid_gone(pid: int) -> bool:
    return not alive(pid)


def wait_status(runner, run_key=None, statuses=TERMINAL, timeout=20, *, job_id=None) -> dict:
    """The job (by run key or job id) once its status is in ``statuses``, or as it is after ``timeout``."""
    selector = ["--run-key", run_key] if job_id is None else ["--job-id", job_id]
    deadline = time.monotonic() + timeout
    while True:
        job = runner.ok("status", *selector)
        if job["status"] in statuses or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def processes_under(root: str) -> list[int]:
    """Live processes (not this one) whose command line or environment mentions ``root``.

    Everything a test starts carries its temp directory: the CLIs and every job,
    supervisor and detached advancer inherit ``ORCHESJOB_HOME``/``--db`` under it,
    and gated commands name their gate file there.
    """
    needle, me, found = os.fsencode(os.path.join(root, "")), os.getpid(), []  # "/tmp/x/", not "/tmp/x1"
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue  # gone, a zombie, or not ours
        if needle in cmdline or needle in environ:
            found.append(int(name))
    return found


def kill_processes_under(root: str, rounds: int = 20) -> list[int]:
    """SIGKILL every process ``processes_under(root)`` finds, until none is left; returns the pids."""
    killed: list[int] = []
    for _ in range(rounds):
        pids = [p for p in processes_under(root) if alive(p)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed += pids
        time.sleep(0.05)
    return killed


@pytest.fixture
def reap_processes(tmp_path):
    """After the test, passed or failed, kill whatever it left running under ``tmp_path``.

    Gated steps (``while [ ! -e gate ]``) and long sleeps would otherwise outlive
    a failing test, and the test session.
    """
    yield
    kill_processes_under(str(tmp_path))


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error(self) -> dict:
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON error line on stderr, got: {self.err!r}"
        return json.loads(lines[0])


class Runner:
    """Runs ``orchesjob`` / ``orchesjob-reserver`` / ``orchesjob-flow`` against one temp home."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.started: list[subprocess.Popen] = []
        self.env = dict(os.environ, ORCHESJOB_HOME=home)
        for var in ("ORCHESJOB_RESERVER_HOME", "ORCHESJOB_FLOW_HOME", "ORCHESJOB_BIN"):
            self.env.pop(var, None)

    def run(self, tool: str, *args: str, timeout: float = 60, input: str | None = None, **kw: Any) -> Result:
        p = subprocess.run(
            [cli_path(tool), *args],
            capture_output=True,
            text=True,
            env=kw.pop("env", self.env),
            timeout=timeout,
            input=input,
            **kw,
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def popen(self, tool: str, *args: str, **kw: Any) -> subprocess.Popen:
        """Start a console script in the background (same environment as ``run``)."""
        proc = subprocess.Popen([cli_path(tool), *args], env=kw.pop("env", self.env), **kw)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        """Reap the background processes (``kill_processes_under`` has ended them) and close their pipes."""
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def query(self, db_name: str, sql: str, params: tuple = ()) -> list:
        """Rows of ``sql`` on the database ``db_name`` in this home (read behind the tools' backs)."""
        db = sqlite3.connect(os.path.join(self.home, db_name))
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def oj(self, *args: str, **kw: Any) -> Result:
        return self.run("orchesjob", *args, **kw)

    def ok(self, *args: str, tool: str = "orchesjob", **kw: Any) -> Any:
        r = self.run(tool, *args, **kw)
        assert r.code == 0, f"{tool} {args} -> {r.code}\nstdout={r.out}\nstderr={r.err}"
        return r.json


@pytest.fixture
def runner(tmp_path, reap_processes):
    r = Runner(str(tmp_path / "home"))
    yield r
    # Runs before reap_processes' finalizer: kill first, then reap our own children.
    kill_processes_under(str(tmp_path))
    r.close()
