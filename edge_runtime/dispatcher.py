"""The reservation dispatcher behind ``orchesjob-reserver run``.

Exactly-once dispatch
---------------------
A SIGKILL may hit the dispatcher at any instant. The protocol makes every such
instant recoverable without a second start:

1. *claim*: one write transaction moves the reservation RESERVED → DISPATCHING
   and records ``dispatch_claimed_at`` (fsynced, see ``store``);
2. *start*: the job runner commits the job row (same run key, ``started_at``
   taken after the claim) before its supervisor exists — so if anything runs,
   the job row exists;
3. *record*: DISPATCHING → DISPATCHED with the job id.

A dispatcher holds an exclusive lock per database, so at start-up any
DISPATCHING row belongs to a dead dispatcher. For each one it asks the job
runner for a job of that run key started at/after the claim: found → link it
(DISPATCHED, never start again); not found → no job was created, so nothing
ran and nothing can run later → back to RESERVED and dispatched normally. The
same lookup runs when a start reports an error, because a foreign
``orchesjob`` may fail *after* creating its job.

Retention
---------
``run --retention 30d`` deletes terminal reservations last updated more than
30 days ago, at start-up and hourly, in batches of short transactions (the
same as ``orchesjob-reserver clean --older-than 30d``).

Punctuality without busy polling
--------------------------------
Between passes the dispatcher sleeps in ``select`` until the earliest of: the
next ``not_before``/``expires_at`` (sub-second precision), ``--poll-interval``
(a safety net), a byte on the ``<db>.wake`` FIFO (``reserve`` writes one after
its commit), or a signal. An idle dispatcher wakes once per poll interval for
one indexed query.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

from .errors import LockError, OrchesError
from .jobclient import split_env_options
from .process import kill_point
from .reservations import Reservations, lock_path, stored_env, wake_path
from .timefmt import epoch_value, iso_utc, now

# typing costs ~2 ms of start-up; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from .jobclient import JobClient

# Crash-test points (``ORCHESJOB_TEST_KILL_AT=<name>``, see process.kill_point).
# With in-process dispatch the job layer's own points apply too:
# start:claimed (job row committed, no supervisor yet), start:spawned,
# start:worker-recorded.
KILL_POINTS = (
    "reserver:locked",
    "reserver:claimed",
    "reserver:start-logged",
    "start:claimed",
    "start:spawned",
    "start:worker-recorded",
    "reserver:started",
    "reserver:dispatched",
)


# How often ``run --retention`` deletes what has aged out (and once at start-up).
RETENTION_INTERVAL_S = 3600.0


def _request_id(reservation_id: str) -> str:
    """The start request id of a reservation's dispatch: recovery finds its job exactly.

    Reused when a reservation is requeued, which is only done when no job carries it.
    """
    return "reservation:" + reservation_id


class Dispatcher:
    """One foreground dispatcher over one reservation database."""

    def __init__(
        self,
        reservations: Reservations,
        client: JobClient,
        *,
        poll_interval: float = 2.0,
        error_sleep: float = 5.0,
        start_options: list[str] | None = None,
        retention: float | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.res = reservations
        self.client = client
        self.poll_interval = poll_interval
        self.error_sleep = error_sleep
        # Environment values never appear in a log line: --env options go apart, to the job's env.
        self.start_options, self.start_env = split_env_options(start_options or [])
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.stopping = False
        self._lock_fd: int | None = None
        self._wake_fd: int | None = None
        self._sig_r, self._sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._seen_seq = 0
        self.retention = retention
        self._next_retention = 0.0
        self._recovered = False

    # ----------------------------------------------------------------- output
    def log(self, event: str, stream: TextIO | None = None, **fields: Any) -> None:
        record = {"event": event, **fields, "ts": iso_utc(time.time())}
        try:
            (stream or self.out).write(json.dumps(record, separators=(",", ":")) + "\n")
            (stream or self.out).flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody reads the log any more; keep dispatching

    # ------------------------------------------------------------ exclusivity
    def acquire_lock(self) -> None:
        """Hold ``<db>.dispatcher.lock`` exclusively, or raise ``LockError`` at once."""
        import fcntl

        path = lock_path(self.res.db_path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise LockError(
                f"another dispatcher is already running on {self.res.db_path}"
                + (f" (pid {holder})" if holder else "")
                + "; only one `orchesjob-reserver run` per database",
                db=self.res.db_path,
                lock_file=path,
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _open_wake_fifo(self) -> None:
        import stat

        path = wake_path(self.res.db_path)
        try:
            if not os.path.exists(path):
                os.mkfifo(path, 0o600)
            # O_RDWR keeps a writer open (ourselves), so the FIFO never reports
            # EOF when a `reserve` closes its end: no spurious wake-ups.
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # no wake-ups: fall back to the poll interval
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            return
        self._wake_fd = fd

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        try:
            os.write(self._sig_w, b"s")
        except OSError:
            pass

    # ------------------------------------------------------------------- loop
    def run(self, once: bool = False) -> int:
        self.acquire_lock()
        kill_point("reserver:locked")
        code = 0
        self._open_wake_fifo()
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        started = now()
        self.log(
            "reserver_started",
            db=self.res.db_path,
            orchesjob_bin=self.client.bin,
            orchesjob_start_options=self.start_options,
            env_keys=sorted(self.start_env),
            poll_interval=self.poll_interval,
            run_started_at=int(started),
            dispatch="in-process" if self.client.in_process else "subprocess",
            once=once,
            retention=self.retention,
        )
        # History is not re-logged: only reservations inserted from now on.
        self._seen_seq = self.res.max_seq()
        try:
            while not self.stopping:
                try:
                    self._pass()
                except Exception as exc:  # noqa: BLE001 - a daemon must survive and report
                    message = exc.message if isinstance(exc, OrchesError) else f"{type(exc).__name__}: {exc}"
                    self.log("dispatcher_error", stream=self.err, error=message)
                    if once:
                        code = 1
                        break
                    self._sleep(self.error_sleep)
                    continue
                if once:
                    break
                self._sleep()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.log("reserver_stopped", reason="signal" if self.stopping else "done")
            self._close()
        return code

    def _close(self) -> None:
        for fd in (self._wake_fd, self._sig_r, self._sig_w, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._wake_fd = self._lock_fd = None
        self.client.close()

    def _pass(self) -> None:
        """Recover, log new reservations, expire, then dispatch everything due."""
        if not self._recovered:
            self.recover()
            self._recovered = True
        self._log_accepted()
        for row in self.res.expire_due(now()):
            self.log(
                "reservation_expired",
                **_reservation_fields(row),
                updated_at=int(row["updated_at"]),
                last_error=row["last_error"],
            )
        while not self.stopping:
            row = self.res.next_due(now())
            if row is None:
                break
            self.dispatch(row)
            self._log_accepted()
        if self.retention is not None and now() >= self._next_retention:
            self.apply_retention()

    def apply_retention(self) -> None:
        """Delete terminal reservations older than ``retention`` (batched; see ``Reservations.clean``)."""
        self._next_retention = now() + RETENTION_INTERVAL_S
        before = now() - self.retention
        deleted = self.res.clean(before=before).run().deleted
        self.log("retention_cleaned", deleted=deleted, before=int(before), retention=self.retention)

    def _log_accepted(self) -> None:
        for row in self.res.created_since(self._seen_seq):
            self._seen_seq = row["seq"]
            self.log("reservation_accepted", **_reservation_fields(row))

    def _sleep(self, seconds: float | None = None) -> None:
        """Sleep until something may be due, a wake-up byte, a signal, or the poll interval."""
        if self.stopping:
            return
        if seconds is None:
            seconds = self.poll_interval
            t = now()
            wake = self.res.next_wakeup(t)
            if wake is not None:
                seconds = min(seconds, max(0.0, wake - t))
        fds = [self._sig_r] + ([self._wake_fd] if self._wake_fd is not None else [])
        ready, _, _ = select.select(fds, [], [], seconds)
        for fd in ready:
            try:
                while os.read(fd, 4096):
                    pass
            except BlockingIOError:
                pass

    # --------------------------------------------------------------- dispatch
    def dispatch(self, row: Any) -> None:
        claimed_at = now()
        row = self.res.claim(row["reservation_id"], claimed_at)
        if row is None:
            return  # cancelled or expired in the meantime
        kill_point("reserver:claimed")
        rid, run_key = row["reservation_id"], row["run_key"]
        command = json.loads(row["command"])
        options, legacy_env = split_env_options(self.start_options + json.loads(row["start_options"]))
        env = {**self.start_env, **legacy_env, **stored_env(row)}
        self.log(
            "orchesjob_start_call",
            reservation_id=rid,
            run_key=run_key,
            command=self.client.start_argv(run_key, command, options),
            env_keys=sorted(env),
        )
        kill_point("reserver:start-logged")
        try:
            job = self.client.start(command, run_key, options, env=env or None, request_id=_request_id(rid))
        except OrchesError as exc:
            error = exc.message
        except Exception as exc:  # noqa: BLE001 - recorded on the reservation
            error = f"{type(exc).__name__}: {exc}"
        else:
            kill_point("reserver:started")
            if job.get("status") == "NEVER_LAUNCHED":
                # The runtime could not get a supervisor going: nothing ran. Failing the dispatch
                # visibly beats linking the reservation to a job that will never run.
                error = f"job {job['job_id']} never launched: {job.get('error')}"
                self.res.mark_failed(rid, error)
                self.log("dispatch_failed", reservation_id=rid, run_key=run_key, error=error)
                return
            self.res.mark_dispatched(rid, job["job_id"])
            self.log("dispatch_succeeded", reservation_id=rid, run_key=run_key, job_id=job["job_id"])
            kill_point("reserver:dispatched")
            return
        # The start failed — but a job may exist anyway (e.g. a foreign start
        # that crashed after creating it). Never leave it unlinked.
        try:
            job = self.client.find_started_since(run_key, claimed_at, request_id=_request_id(rid))
        except OrchesError:
            job = None
        if job is not None:
            note = f"start reported an error but created the job: {error}"
            self.res.mark_dispatched(rid, job["job_id"], note=note)
            self.log("dispatch_succeeded", reservation_id=rid, run_key=run_key, job_id=job["job_id"], note=note)
            return
        self.res.mark_failed(rid, error)
        self.log("dispatch_failed", reservation_id=rid, run_key=run_key, error=error)

    def recover(self) -> None:
        """Settle the DISPATCHING reservations a dead dispatcher left behind."""
        rows = self.res.dispatching()
        if not rows:
            return
        settled = []
        for row in rows:
            rid, run_key = row["reservation_id"], row["run_key"]
            job = self.client.find_started_since(run_key, row["dispatch_claimed_at"], request_id=_request_id(rid))
            if job is not None and job.get("status") == "NEVER_LAUNCHED":
                # Killed between the job's claim and its supervisor: the command provably never ran.
                # Dispatching again with the same request id launches it (the runtime frees that id).
                self.res.requeue(rid, "recovered from DISPATCHING: its job never launched; dispatching again")
                settled.append({"reservation_id": rid, "run_key": run_key, "action": "requeued", "job_id": None})
            elif job is not None:
                self.res.mark_dispatched(
                    rid, job["job_id"], note="recovered from DISPATCHING: linked to the job started before a restart"
                )
                settled.append({"reservation_id": rid, "run_key": run_key, "action": "linked", "job_id": job["job_id"]})
            else:
                self.res.requeue(rid, "recovered from DISPATCHING: no job had been created; dispatching again")
                settled.append({"reservation_id": rid, "run_key": run_key, "action": "requeued", "job_id": None})
        self.log("recovered_dispatching", count=len(rows), reservations=settled)
        for item in settled:
            if item["action"] == "linked":
                self.log(
                    "dispatch_succeeded",
                    reservation_id=item["reservation_id"],
                    run_key=item["run_key"],
                    job_id=item["job_id"],
                    recovered=True,
                )


def _reservation_fields(row: Any) -> dict[str, Any]:
    """What every reservation event says about the reservation."""
    return {
        "reservation_id": row["reservation_id"],
        "run_key": row["run_key"],
        "reservation_status": row["status"],
        "command": json.loads(row["command"]),
        "not_before": epoch_value(row["not_before"]),
        "expires_at": epoch_value(row["expires_at"]),
        "created_at": int(row["created_at"]),
    }
