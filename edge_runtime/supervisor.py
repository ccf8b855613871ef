"""The per-job supervisor process.

``start`` claims the job, then spawns this module as a detached process (double
fork + exec of a fresh interpreter, so it inherits no SQLite state, threads or
terminal from the caller, and its caller's SSH channel can close at once).

Ordering is what makes crashes safe. Each step is committed before the next
one can have an effect outside the database:

1. record our own identity (only while the job is still STARTING and nobody
   recorded a supervisor) — otherwise exit without running anything;
2. fork the command's process into its own session, *held at a gate* (a pipe);
3. record the command's identity and RUNNING — if the job was cancelled in the
   meantime, drop the gate and the command never executes;
4. open the gate; the child execs the command;
5. wait (enforcing the host-side timeout), record the exit status.

If the supervisor dies between 2 and 4, the gated child reads EOF and exits
without executing. After 4, the command runs on even if we die, and observers
keep the job active until its process group is gone (then LOST).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

from . import process
from .schema import JOBS_MIGRATIONS
from .store import Store

TIMEOUT_KILL_GRACE = 5.0


class Notify:
    """The read end of the pipe through which the supervisor reports progress."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""

    def wait_for(self, marker: bytes, timeout: float) -> bool:
        """Wait until ``marker`` arrives (or any later marker / EOF / timeout)."""
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                return False
            data = os.read(self.fd, 64)
            if not data:  # supervisor exited
                return False
            self.seen += data
            if b"F" in self.seen:  # finished (e.g. launch failure): nothing more will come
                return marker in self.seen
        return True

    def close(self) -> None:
        os.close(self.fd)


def spawn(db_path: str, job_id: str) -> Notify:
    """Start a detached supervisor for ``job_id``; returns its progress pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # intermediate child: detach, fork again, exit
        try:
            os.setsid()
            if os.fork() == 0:
                os.close(r)
                os.set_inheritable(w, True)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.execv(
                    sys.executable,
                    [sys.executable, "-m", "edge_runtime.supervisor", db_path, job_id, str(w)],
                )
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    return Notify(r)


class _Timeout(Exception):
    pass


def _launch_child(argv: list[str], env: dict, cwd: str | None, out_path: str, err_path: str):
    """Fork the command, held at a gate; returns (pid, gate_write_fd, error_read_fd)."""
    gate_r, gate_w = os.pipe()
    err_r, err_w = os.pipe()  # close-on-exec: EOF on successful exec
    pid = os.fork()
    if pid == 0:
        try:
            os.close(gate_w)
            os.close(err_r)
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
                signal.signal(sig, signal.SIG_DFL)
            if os.read(gate_r, 1) != b"g":
                os._exit(0)  # supervisor gone or job cancelled: never run
            if cwd:
                os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:  # noqa: BLE001 - reported to the supervisor
            try:
                os.write(err_w, f"{type(exc).__name__}: {exc}".encode(errors="replace"))
            finally:
                os._exit(127)
    os.close(gate_r)
    os.close(err_w)
    return pid, gate_w, err_r


def supervise(db_path: str, job_id: str, notify_fd: int) -> None:
    # Inherited on purpose through our exec; the command must not inherit it in turn.
    os.set_inheritable(notify_fd, False)
    store = Store(db_path, JOBS_MIGRATIONS)
    db = store.conn

    def tell(marker: bytes) -> None:
        try:
            os.write(notify_fd, marker)
        except OSError:
            pass  # the caller stopped listening; that is fine

    me_pid, me_start = process.identity()
    with store.write():
        claimed = db.execute(
            "UPDATE jobs SET worker_pid=?, worker_start=?, updated_at=? "
            "WHERE job_id=? AND status='STARTING' AND worker_pid IS NULL",
            (me_pid, me_start, time.time(), job_id),
        ).rowcount
        row = db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
    if not claimed:
        tell(b"F")
        return
    tell(b"W")
    process.kill_point("supervisor:recorded-self")

    env = dict(os.environ)
    if row["env"]:
        env.update(json.loads(row["env"]))
    argv = json.loads(row["command"])
    pid, gate_w, err_r = _launch_child(argv, env, row["cwd"], row["stdout_file"], row["stderr_file"])
    child_start = process.start_time(pid)
    process.kill_point("supervisor:forked")
    with store.write():
        running = db.execute(
            "UPDATE jobs SET target_pid=?, target_start=?, status='RUNNING', updated_at=? "
            "WHERE job_id=? AND status='STARTING'",
            (pid, child_start, time.time(), job_id),
        ).rowcount
    process.kill_point("supervisor:recorded-target")
    if running:
        os.write(gate_w, b"g")
    os.close(gate_w)
    launch_error = os.read(err_r, 4096).decode(errors="replace")  # EOF once exec succeeded
    os.close(err_r)
    if running and not launch_error:
        tell(b"T")
    process.kill_point("supervisor:running")

    timed_out = False
    timeout = row["timeout"]

    def on_term(signum, frame):
        # Someone (abort, shutdown) wants the job stopped: pass it to the command.
        process.signal_group(pid, child_start, process.boot_id(), signal.SIGTERM)

    def on_alarm(signum, frame):
        raise _Timeout

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    if timeout and running and not launch_error:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        _, status = os.waitpid(pid, 0)
    except _Timeout:
        timed_out = True
        boot = process.boot_id()
        process.signal_group(pid, child_start, boot, signal.SIGTERM)
        try:
            signal.setitimer(signal.ITIMER_REAL, TIMEOUT_KILL_GRACE)
            _, status = os.waitpid(pid, 0)
        except _Timeout:
            process.signal_group(pid, child_start, boot, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)

    # -N for a command killed by signal N, as the public release records it.
    code = os.waitstatus_to_exitcode(status)
    process.kill_point("supervisor:exited")
    t = time.time()
    if launch_error:
        outcome, error, code = "FAILED", f"failed to launch: {launch_error}", 127
    elif timed_out:
        outcome, error = "FAILED", f"timed out after {timeout:g} s (host-side --timeout)"
    else:
        outcome, error = ("SUCCEEDED" if code == 0 else "FAILED"), None
    if running:
        with store.write():
            # ABORTED/CANCELLED were recorded by whoever stopped the job: keep them,
            # but still record the exit code. LOST cannot be right if we are here.
            db.execute(
                "UPDATE jobs SET exit_code=?, updated_at=?, "
                "finished_at=COALESCE(finished_at, ?), "
                "error=COALESCE(?, error), "
                "status=CASE WHEN status IN ('STARTING','RUNNING','LOST') THEN ? ELSE status END "
                "WHERE job_id=?",
                (code, t, t, error, outcome, job_id),
            )
    tell(b"F")


def main() -> None:
    db_path, job_id, fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        supervise(db_path, job_id, fd)
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
