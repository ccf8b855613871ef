"""The per-job supervisor process: it owns the job's process tree from launch to outcome.

``start`` claims the job, then becomes its supervisor in a detached process: a
double fork of the already-initialised CLI process, without an exec (a second
interpreter start would cost each start ~20 ms of the host's CPU, on the path to
the caller's reply). The fork is made safe for what a fresh interpreter got for
free: the caller closes its connection to the jobs database first, so no SQLite
state crosses; the supervisor closes every inherited descriptor but its progress
pipe (the caller's SSH channel can close at once, and nothing the caller held —
another database, a dispatcher's lock — is held on by a long-running job),
restores default signal handling and never collects the caller's objects. What it
imports later comes from the caller's own module path.

Ordering is what makes crashes safe. Each step is committed before the next
one can have an effect outside the database:

1. record our own identity (only while the job is still STARTING and nobody
   recorded a supervisor) — otherwise exit without running anything;
2. become the child subreaper (see proctree.py), fork the command's process into
   its own session, *held at a gate* (a pipe);
3. record the command's identity and RUNNING — if the job was stopped in the
   meantime, drop the gate and the command never executes;
4. open the gate; the child execs the command;
5. wait for the command, a stop request (SIGTERM from ``abort``/``cancel``) or the
   host-side timeout; a stop or timeout sends one TERM to every process of the
   tree, then KILL after the grace period;
6. when the main command exits and nothing else of the tree is alive, record the
   terminal status in the database if the write lock is free (one commit); else
   write the outcome to a durable record (fsync), stop whatever is left of the
   tree, and only when nothing of it is alive record the terminal status in the
   database, retrying until the write lands.

If the supervisor dies between 2 and 4, the gated child reads EOF and exits
without executing (NEVER_LAUNCHED). After 4, the tree runs on even if we die;
readers keep the job active until every marked process is gone, then take the
outcome from the record, or call it LOST when there is none.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sqlite3
import sys
import time

from . import lifecycle, process, proctree
from .errors import OrchesError
from .schema import JOBS_MIGRATIONS
from .store import Store

# Signals the supervisor takes synchronously (sigtimedwait) instead of in handlers.
_WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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


def spawn(db_path: str, job_id: str, systemd_run: str | None = None) -> Notify:
    """Start a detached supervisor for ``job_id``; returns its progress pipe.

    The caller must hold no connection to ``db_path`` (see the module docstring).
    ``systemd_run``: run it in the job's own transient scope (see systemd.py); that
    takes an exec (``systemd-run --scope`` moves itself into the scope, then execs
    the supervisor). If the scope cannot be made, systemd-run exits, the pipe reads
    EOF and the job is abandoned unrun: a job that asked for a scope never runs
    outside one.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # intermediate child: detach, fork again, exit
        try:
            os.setsid()
            os.chdir("/")  # the supervisor holds no directory of the caller's
            if os.fork() == 0:
                _detach(r, w)
                if systemd_run is None:
                    _become_supervisor(db_path, job_id, w)
                else:
                    _exec_in_scope(systemd_run, db_path, job_id, w)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    return Notify(r)


def _detach(r: int, w: int) -> None:
    """Keep nothing of the caller but the progress pipe's write end ``w``: stdio on /dev/null."""
    # The caller's objects stay as they are: a collection here could finalise one of its
    # SQLite connections (to another file), whose locks are the caller's, not ours.
    gc.freeze()
    os.close(r)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    _close_inherited(keep=(0, 1, 2, w))


def _become_supervisor(db_path: str, job_id: str, w: int) -> None:
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if callable(signal.getsignal(sig)):  # the caller's Python handlers (e.g. a dispatcher's)
            signal.signal(sig, signal.SIG_DFL)
    proctree.mark_supervisor()
    supervise(db_path, job_id, w)


def _exec_in_scope(systemd_run: str, db_path: str, job_id: str, w: int) -> None:
    from .systemd import scope_argv

    os.set_inheritable(w, True)
    # -I: no cwd, script dir or user site on sys.path, no PYTHON* variables. From a runtime
    # archive (agentless hosts) the archive itself is the program: -m would not find the package.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    program = [package_root] if os.path.isfile(package_root) else ["-m", "edge_runtime"]
    argv = [sys.executable, "-I", *program, "supervisor", db_path, job_id, str(w)]
    os.execv(systemd_run, scope_argv(systemd_run, job_id, argv))


def main() -> None:
    """The supervisor in a fresh interpreter (``python -m edge_runtime supervisor DB JOB FD``): how a
    job that runs in its own systemd scope is supervised (see :func:`spawn`)."""
    db_path, job_id, fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        os.set_inheritable(fd, False)  # inherited through the exec on purpose; not by the command
        proctree.mark_supervisor()
        supervise(db_path, job_id, fd)
    finally:
        os._exit(0)


def _close_inherited(keep: tuple[int, ...]) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every possible descriptor
        fds = range(os.sysconf("SC_OPEN_MAX"))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # (the listing's own descriptor, already closed)


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
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())  # the mask survives exec: give a clean one
            if os.read(gate_r, 1) != b"g":
                os._exit(0)  # supervisor gone or job stopped: never run
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


class _Tree:
    """The running job: its main command and everything it spawned (see proctree.py).

    The tree is empty exactly when the supervisor has no child left at all
    (``waitpid`` says ECHILD): as child subreaper it inherits every orphan, so
    any live descendant has an ancestor among its children. That test is atomic,
    unlike a walk of /proc, which a process forking and exiting in a loop can
    outrun. The walk is used only to find whom to signal.
    """

    def __init__(self, main_pid: int, job_id: str) -> None:
        self.main_pid = main_pid
        self.job_id = job_id
        self.main_status: int | None = None  # waitpid status once the main command exited
        self.childless = False
        self.term_at: float | None = None  # monotonic time of the tree's one TERM
        self.grace = lifecycle.LEFTOVER_GRACE
        self.stop_first: str | None = None  # stop status, if the stop's TERM came before the main exit
        self.timed_out = False
        self.killed = False  # something outlived its TERM

    def reap(self) -> None:
        """Collect every exited child (the command, and orphans re-parented to us)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.childless = True
                return
            if pid == 0:
                return
            if pid == self.main_pid:
                self.main_status = status

    def snapshot(self) -> proctree.Snapshot:
        return proctree.Snapshot(os.getpid(), split_nested=True)

    def terminate(self, grace: float) -> None:
        """The stop's one TERM round: every process of the tree gets one SIGTERM, once.

        Later calls (a resent stop, the main command exiting during the stop) send
        nothing: processes the tree starts while it cleans up (a TERM trap's
        cleanup script) are left alone until the grace ends, then KILLed, as a
        service manager does. The supervisor of a job started from this one gets
        the TERM instead of its tree: it stops that tree itself and records it.
        """
        if self.term_at is not None:
            return
        self.term_at = time.monotonic()
        self.grace = grace
        if self.childless:
            # Nothing left to walk: every orphan of the tree is re-parented to us (subreaper), so
            # no child means no descendant. Spares the common end of a job a walk of all of /proc
            # (~50 ms of CPU on a host running 3,000 processes).
            return
        snap = self.snapshot()
        proctree.send(snap.pids + snap.nested, signal.SIGTERM)

    def escalate(self) -> None:
        """After the grace: KILL what is left; nested jobs' supervisors get longer to record their stop."""
        if self.term_at is None:
            return
        overdue = time.monotonic() - (self.term_at + self.grace)
        if overdue < 0:
            return
        snap = self.snapshot()
        if snap.pids:
            self.killed = True
            proctree.kill_now(snap.pids, snap.groups)
        if snap.nested and overdue >= lifecycle.NESTED_STOP_GRACE:
            self.killed = True
            for sup in snap.nested:
                below = proctree.Snapshot(sup)
                proctree.kill_now([sup, *below.pids], below.groups)


def _stop_requested(store: Store, job_id: str) -> tuple[str, float]:
    """(terminal status, grace) of the stop that signalled us.

    ``abort``/``cancel`` record ABORTING/CANCELLING before they signal; a SIGTERM
    with no stop recorded (host shutdown, a user's kill) is treated as an abort.
    """
    try:
        row = store.one("SELECT status, stop_grace FROM jobs WHERE job_id=?", (job_id,))
    except Exception:  # noqa: BLE001 - a read must not keep us from stopping the tree
        row = None
    if row is not None and row["status"] in lifecycle.STOPPED:
        grace = row["stop_grace"] if row["stop_grace"] is not None else lifecycle.LEFTOVER_GRACE
        return lifecycle.STOPPED[row["status"]], grace
    return lifecycle.ABORTED, lifecycle.LEFTOVER_GRACE


def _finish_if_unlocked(store: Store, job_id: str, outcome: dict, killed: bool) -> bool:
    """Record the terminal status if the write lock is free right now; False (nothing written) if not.

    The common end of a job: its whole tree is gone with the main command, and one
    commit (an fsync of the WAL) makes the outcome durable. Only when that cannot
    happen at once does the outcome go to its own record first (two more fsyncs), so
    that a supervisor killed while it waits for the lock does not take it along.
    """
    try:
        _record_terminal(store, job_id, outcome, killed, wait=False)
        return True
    except (OrchesError, sqlite3.Error):
        return False


def _record_terminal(store: Store, job_id: str, outcome: dict, killed: bool, *, wait: bool = True) -> None:
    with store.write(wait=wait) as db:
        lifecycle.finish(db, job_id, outcome["status"], outcome["exit_code"], outcome["error"], killed)


def _write_until_it_lands(store: Store, job_id: str, outcome: dict, killed: bool, record: str | None) -> None:
    """Record the terminal status; a locked database or a full disk delays it, never drops it.

    ``record``: the outcome record still to be written (it failed the first time).
    """
    delay = 0.05
    while True:
        if record is not None:
            try:
                lifecycle.write_outcome(record, outcome)
                record = None
            except OSError:
                pass
        try:
            _record_terminal(store, job_id, outcome, killed)
            return
        except (OrchesError, sqlite3.Error):
            # Locked past the busy timeout, disk full, I/O error: the supervisor is the only
            # one who knows this outcome, so it keeps trying (backing off) until it is stored.
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def supervise(db_path: str, job_id: str, notify_fd: int) -> None:
    store = Store(db_path, JOBS_MIGRATIONS)

    def tell(marker: bytes) -> None:
        try:
            os.write(notify_fd, marker)
        except OSError:
            pass  # the caller stopped listening; that is fine

    me_pid, me_start = process.identity()
    with store.write() as db:
        claimed = lifecycle.record_supervisor(db, job_id, me_pid, me_start)
        row = db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
    if not claimed:
        tell(b"F")
        return
    tell(b"W")
    process.kill_point("supervisor:recorded-self")

    env = dict(os.environ)
    env.pop("ORCHESJOB_TEST_KILL_AT", None)  # crash-test hook: ours, not the command's
    if row["env"]:
        env.update(json.loads(row["env"]))
    env[proctree.ENV_MARKER] = job_id
    proctree.set_child_subreaper()
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    argv = json.loads(row["command"])
    pid, gate_w, err_r = _launch_child(argv, env, row["cwd"], row["stdout_file"], row["stderr_file"])
    child_start = process.start_time(pid)
    process.kill_point("supervisor:forked")
    with store.write() as db:
        running = lifecycle.record_running(db, job_id, pid, child_start)
    process.kill_point("supervisor:recorded-target")
    if running:
        try:
            os.write(gate_w, b"g")
        except BrokenPipeError:
            pass  # the child died before exec (e.g. its log files could not be opened): its error follows
    os.close(gate_w)
    launch_error = os.read(err_r, 4096).decode(errors="replace") or None  # EOF once exec succeeded
    os.close(err_r)
    if running and not launch_error:
        tell(b"T")
    process.kill_point("supervisor:running")

    tree = _Tree(pid, job_id)
    timeout = row["timeout"] if running and not launch_error else None
    deadline = time.monotonic() + timeout if timeout else None
    record_path = lifecycle.outcome_path(row)
    record_pending: str | None = None
    finished = False  # the outcome went straight to the database: no separate record was written
    outcome = None
    while True:
        tree.reap()
        if tree.main_status is not None and outcome is None:
            # The main command is done: its outcome becomes durable before anything else.
            code = os.waitstatus_to_exitcode(tree.main_status)  # -N: killed by signal N
            status, error = lifecycle.decide_outcome(
                127 if launch_error else code,
                launch_error=launch_error,
                stopped_as=tree.stop_first,
                timeout=timeout if tree.timed_out else None,
            )
            outcome = {"status": status, "exit_code": 127 if launch_error else code, "error": error}
            process.kill_point("supervisor:main-exited")
            if running and tree.childless and _finish_if_unlocked(store, job_id, outcome, tree.killed):
                finished = True  # nothing left of the tree, and the database took the outcome at once
            elif running:
                # Leftovers to stop first, or a busy database: the outcome becomes durable on its own.
                try:
                    lifecycle.write_outcome(record_path, outcome)
                except OSError:
                    record_pending = record_path  # (disk full ...) retried with the database write
            process.kill_point("supervisor:exited")
            tree.terminate(lifecycle.LEFTOVER_GRACE)  # what the command left behind (no-op during a stop)
        if outcome is not None and tree.childless:
            break
        if tree.term_at is None and deadline is not None and time.monotonic() >= deadline:
            tree.timed_out = True
            tree.terminate(lifecycle.LEFTOVER_GRACE)
        tree.escalate()
        if tree.term_at is None:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        else:
            wait = 0.05  # grandchildren exiting send us no SIGCHLD: look again shortly
        sig = signal.sigtimedwait(_WATCHED, 3600.0 if wait is None else wait)
        if sig is None or sig.si_signo not in _STOP_SIGNALS:
            continue
        # A stop. Reap first: a command that already exited finished on its own,
        # whatever order the kernel hands us its SIGCHLD and the stop's SIGTERM.
        tree.reap()
        if tree.term_at is None:  # (a resent stop changes nothing)
            stopped_as, grace = _stop_requested(store, job_id)
            if tree.main_status is None:
                tree.stop_first = stopped_as
            tree.terminate(grace)

    if running:
        process.kill_point("supervisor:tree-gone")
        if not finished:
            _write_until_it_lands(store, job_id, outcome, tree.killed, record_pending)
            lifecycle.discard_outcome(record_path)
    tell(b"F")
