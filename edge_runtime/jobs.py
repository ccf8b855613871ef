"""Jobs: the idempotent one-shot job runner behind ``orchesjob``.

The states of a job and who may move it between them are lifecycle.py (with the
diagram); the process tree is proctree.py; the per-job supervisor is
supervisor.py. This module is the command layer: claim, queries, stop, clean.

Who may run: the claim — deciding whether a run key gets a new execution and
inserting it — happens inside one ``BEGIN IMMEDIATE`` transaction, backed by the
``jobs_one_active_per_run_key`` index and ``UNIQUE(run_key, attempt_no)``.

Who may declare a job dead: anyone reading an active job asks
``lifecycle.settlement``; only when every recorded and every marked process is
provably gone does it record an outcome (from the supervisor's durable record),
NEVER_LAUNCHED or LOST, inside a write transaction that re-reads the row first.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

from . import lifecycle, process
from .errors import InvalidState, NotFound, OrchesError, ResourceError, UsageError
from .home import jobs_db_path, jobs_home, logs_dir
from .jobview import (
    DEFAULT_CHUNK_BYTES,
    POLL_SELECTORS,
    add_log_chunks,
    failed_lookup,
    job_json,
    start_reply,
)
from .schema import (
    ACTIVE_JOB_STATUSES,
    JOBS_MIGRATIONS,
    REUSE_ALWAYS,
    REUSE_NEVER,
    REUSE_POLICIES,
    TERMINAL_JOB_STATUSES,
)
from .store import (
    Cleaning,
    Store,
    has_labels,
    stored_labels,
    validate_labels,
    validate_run_key,
)
from .timefmt import now, with_iso

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from .supervisor import Notify

# How long abort/cancel wait for the stop to complete beyond the grace period.
STOP_WAIT_MARGIN = 10.0
MAX_LIST_LIMIT = 100_000
LIST_PAGE = 500
# Supervisors whose hand-shake ``overlap_starts`` awaits at once: enough to overlap a
# fan-out's launches on a few cores, few enough that their first writes do not
# queue on the database's write lock.
LAUNCH_WINDOW = 16


def overlap_starts(
    begins: Iterable[Callable[[], Callable[[], dict[str, Any]]]],
) -> list[dict[str, Any] | OrchesError]:
    """Run several starts, each ``begin()`` a :meth:`Jobs.begin_start` call, their launches overlapping.

    Each start is judged and claimed on its own, in order, exactly as ``start`` does;
    what overlaps is the wait for each supervisor's hand-shake (it records itself,
    forks the command, records RUNNING): up to ``LAUNCH_WINDOW`` supervisors do that
    at once while this process claims the next jobs. ``begins`` is consumed lazily, so
    a caller can decide before each start whether there is still one to make (a
    flow's fan-out stops launching once the flow is cancelled). Returns, in order,
    each start's reply or the ``OrchesError`` that refused it.
    """
    from collections import deque

    out: list[dict[str, Any] | OrchesError] = []
    in_flight: deque[tuple[int, Callable[[], dict[str, Any]]]] = deque()

    def settle_oldest() -> None:
        index, finish = in_flight.popleft()
        try:
            out[index] = finish()
        except OrchesError as exc:
            out[index] = exc

    try:
        for begin in begins:
            out.append({})
            try:
                in_flight.append((len(out) - 1, begin()))
            except OrchesError as exc:
                out[-1] = exc
            if len(in_flight) >= LAUNCH_WINDOW:
                settle_oldest()
    finally:
        # Even when the caller's generator raises, every spawned launch is awaited (a
        # supervisor that never hears back would be settled as not started after 30 s).
        while in_flight:
            settle_oldest()
    return out


def _done(reply: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """A start that had nothing to launch: its reply is already known."""
    return lambda: reply


def validate_job_id(job_id: str) -> str:
    # Job ids name log files: refuse anything that is not a plain token.
    if not job_id or any(c in job_id for c in "/\\\x00") or job_id in (".", "..") or len(job_id) > 128:
        what = "contains path separator: " if any(c in job_id for c in "/\\") else ""
        raise UsageError(f"Invalid job_id: {what}{job_id!r} (a job id is a plain token)", job_id=job_id)
    return job_id


class Jobs:
    """The job runner's operations over one ``orchesjob.db`` and its logs."""

    def __init__(self, home: str | None = None) -> None:
        self.home = home or jobs_home()
        self.db_path = jobs_db_path(self.home)
        self.logs_dir = logs_dir(self.home)
        self.store = Store(self.db_path, JOBS_MIGRATIONS)

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ lookup
    def _latest(self, run_key: str) -> sqlite3.Row | None:
        return self.store.one("SELECT * FROM jobs WHERE run_key = ? ORDER BY attempt_no DESC LIMIT 1", (run_key,))

    def _by_id(self, job_id: str) -> sqlite3.Row | None:
        return self.store.one("SELECT * FROM jobs WHERE job_id = ?", (job_id,))

    def _find(self, run_key: str | None = None, job_id: str | None = None) -> sqlite3.Row:
        if job_id is not None:
            row = self._by_id(validate_job_id(job_id))
            if row is None:
                raise NotFound(f"Job not found: {job_id}", job_id=job_id)
        else:
            assert run_key is not None
            row = self._latest(validate_run_key(run_key))
            if row is None:
                raise NotFound(f"run_key not found: {run_key}", run_key=run_key)
        return self._judge(row)

    # --------------------------------------------------------------- liveness
    def _judge(self, row: sqlite3.Row) -> sqlite3.Row:
        """Return ``row``, first moving a recorded stop along and settling a job whose processes are all gone.

        The poll of a running job pays one /proc read: its supervisor is alive.
        """
        if row["status"] not in lifecycle.ACTIVE:
            return row
        if lifecycle.supervisor_alive(row):
            if row["status"] in lifecycle.STOPPED:
                # The process that recorded the stop may have died before it
                # signalled (a killed `abort`, a dropped SSH session): signal
                # again; a repeat is a no-op for the supervisor.
                process.signal_process(row["worker_pid"], row["worker_start"], row["boot_id"], 15)
            return row
        if row["status"] != lifecycle.STARTING:
            row = self._carry_out_orphaned_stop(row)
        if lifecycle.settlement(row) is None:
            return row
        with self.store.write() as db:
            return lifecycle.settle_locked(db, row["job_id"])

    def _carry_out_orphaned_stop(self, row: sqlite3.Row) -> sqlite3.Row:
        """A job whose supervisor is gone: whoever reads it helps its stop happen.

        The tree is stopped here, one step per read (``lifecycle.advance_orphaned_stop``),
        when a stop was recorded or the supervisor recorded the outcome before it
        died (the command's leftovers); a command running on without its supervisor
        that nobody asked to stop is only watched.
        """
        if row["status"] not in lifecycle.STOPPED and lifecycle.read_outcome(lifecycle.outcome_path(row)) is None:
            return row
        with self.store.write() as db:
            current = db.execute("SELECT * FROM jobs WHERE job_id = ?", (row["job_id"],)).fetchone()
            if not lifecycle.advance_orphaned_stop(db, current):
                return current
            return db.execute("SELECT * FROM jobs WHERE job_id = ?", (row["job_id"],)).fetchone()

    # ------------------------------------------------------------------ start
    def start(self, command: list[str], run_key: str, **options: Any) -> dict[str, Any]:
        """Start ``command`` under ``run_key`` or return the attempt that must not be repeated.

        Keyword options: see :meth:`begin_start`. Returns ``orchesjob start``'s reply.
        """
        return self.begin_start(command, run_key, **options)()

    def begin_start(
        self,
        command: list[str],
        run_key: str,
        *,
        sync: bool = False,
        reuse_policy: str = REUSE_ALWAYS,
        start_timeout: float = 10.0,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        retry_lost: bool = False,
        labels: dict[str, str] | None = None,
    ) -> Callable[[], dict[str, Any]]:
        """Judge and claim a start of ``command`` under ``run_key``; returns the call that completes it.

        Everything that decides (the claim, in one write transaction) is done when this
        returns, and a launched job's supervisor is already spawned; the returned
        callable waits for its hand-shake as the mode asks and gives ``orchesjob
        start``'s reply. It must be called (a job left unawaited still runs: its
        supervisor owns it, only the reply is lost). Refusals raise here.

        ``request_id`` makes the call itself idempotent: a resent request returns
        the job its first copy created, whatever the reuse policy would say now —
        unless that job provably never launched, in which case this request
        launches it anew. ``retry_lost`` lets ``failed-only`` start a new attempt
        after LOST (an unknown outcome: the command may have completed).
        """
        validate_run_key(run_key)
        labels = validate_labels(labels)
        if request_id is not None and (not request_id or len(request_id) > 200 or "\x00" in request_id):
            raise UsageError("--request-id must be 1-200 characters")
        if not command:
            raise UsageError("command is required (provide it after --)")
        if reuse_policy not in REUSE_POLICIES:
            raise UsageError(f"unknown reuse policy {reuse_policy!r}; choose from {', '.join(REUSE_POLICIES)}")
        if cwd is not None and not os.path.isdir(cwd):
            raise UsageError(f"--cwd: not a directory: {cwd}", cwd=cwd)
        if timeout is not None and timeout <= 0:
            raise UsageError("--timeout must be positive")
        from .systemd import job_scope

        systemd_run = job_scope()  # a scope asked for and not available fails here, before the claim
        with self.store.write() as db:
            same_request = (
                db.execute("SELECT * FROM jobs WHERE request_id = ?", (request_id,)).fetchone() if request_id else None
            )
            if same_request is not None:
                if same_request["run_key"] != run_key:
                    raise UsageError(
                        f"--request-id {request_id} was already used for run key {same_request['run_key']}"
                    )
                first = lifecycle.settle_locked(db, same_request["job_id"])
                if first["status"] != lifecycle.NEVER_LAUNCHED:
                    reply = start_reply(job_json(first), accepted=False, sync=sync, strict=reuse_policy == REUSE_NEVER)
                    return _done(reply)
                # The first copy's job never ran: this request is still unserved. Free its id.
                db.execute(
                    "UPDATE jobs SET request_id = request_id || ' (never launched: ' || job_id || ')' WHERE job_id=?",
                    (first["job_id"],),
                )
            from . import claim  # only a start claims: a poll never imports it

            existing, override = claim.decide(db, run_key, reuse_policy, retry_lost)
            if existing is not None:
                job = existing if isinstance(existing, dict) else job_json(existing)
                return _done(start_reply(job, accepted=False, sync=sync, strict=reuse_policy == REUSE_NEVER))
            previous = db.execute(
                "SELECT job_id FROM jobs WHERE run_key = ? ORDER BY attempt_no DESC LIMIT 1", (run_key,)
            ).fetchone()
            job_id = claim.insert_job(
                db,
                self.logs_dir,
                run_key=run_key,
                rerun_of=previous["job_id"] if previous else None,
                rerun_reason=override or None,
                command=command,
                cwd=cwd,
                env=env,
                timeout=timeout,
                mode="sync" if sync else "async",
                reuse_policy=reuse_policy,
                override=override,
                request_id=request_id,
                labels=labels,
            )
        return self._launch(job_id, sync=sync, start_timeout=start_timeout, systemd_run=systemd_run)

    def _launch(
        self, job_id: str, *, sync: bool, start_timeout: float, systemd_run: str | None
    ) -> Callable[[], dict[str, Any]]:
        """Spawn the supervisor (in a scope when ``systemd_run`` is given); returns the wait the mode asks for."""
        from .supervisor import spawn

        os.makedirs(self.logs_dir, mode=0o700, exist_ok=True)
        process.kill_point("start:claimed")
        # The supervisor is forked from this process: no SQLite state of this file may cross.
        self.store.close()
        try:
            try:
                notify = spawn(self.db_path, job_id, systemd_run)
            finally:
                self.store.reopen()
        except OSError as exc:  # fork/pipe limits: nothing was launched
            self._abandon_unsupervised(job_id, f"could not spawn the supervisor: {exc}")
            raise OrchesError(f"could not spawn the supervisor for job {job_id}: {exc}", job_id=job_id) from None
        process.kill_point("start:spawned")
        return lambda: self._await_launch(job_id, notify, sync=sync, start_timeout=start_timeout)

    def _await_launch(self, job_id: str, notify: Notify, *, sync: bool, start_timeout: float) -> dict[str, Any]:
        if not notify.wait_for(b"W", timeout=max(start_timeout, 30.0)):
            # The supervisor never recorded itself (exec failed, or it is stuck). The
            # claimer (maybe a long-lived dispatcher) stays alive, so nobody else would
            # ever judge this job dead: settle it now. A late supervisor finds the job
            # no longer STARTING-without-worker and exits without running anything.
            self._abandon_unsupervised(job_id, "the supervisor did not start")
        process.kill_point("start:worker-recorded")
        if not sync:
            notify.wait_for(b"T", timeout=start_timeout)
        notify.close()
        if sync:
            self.wait(job_id)
        job = job_json(self._judge(self._by_id(job_id)))
        return start_reply(job, accepted=True, sync=sync, strict=job["strict"])

    def _abandon_unsupervised(self, job_id: str, reason: str) -> None:
        with self.store.write() as db:
            lifecycle.abandon(db, job_id, reason)

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is terminal (or ``timeout``); returns its JSON.

        Waits on the supervisor's exit through a pidfd, so it wakes as soon as the
        outcome is recorded and costs no CPU meanwhile. If the supervisor is gone
        but the command still runs, falls back to polling the process group.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            row = self._judge(self._by_id(job_id))
            if row["status"] not in ACTIVE_JOB_STATUSES:
                return job_json(row)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return job_json(row)
            if process.is_alive(row["worker_pid"], row["worker_start"], row["boot_id"]):
                process.wait_exit(row["worker_pid"], row["worker_start"], row["boot_id"], remaining)
            else:
                time.sleep(delay if remaining is None else min(delay, remaining))
                delay = min(delay * 2, 0.5)

    # ----------------------------------------------------------------- status
    def status(self, run_key: str | None = None, job_id: str | None = None) -> dict[str, Any]:
        row = self._find(run_key, job_id)
        out = job_json(row)
        out["strict_override"] = self._override(row["run_key"])
        return out

    def _override(self, run_key: str) -> dict[str, Any] | None:
        """The pending, unexpired ``unlock`` of a run key, if any."""
        rk = self.store.one(
            "SELECT unlock_reason, unlock_at, unlock_expires_at FROM run_keys WHERE run_key = ?", (run_key,)
        )
        if rk is None or rk["unlock_at"] is None:
            return None
        if rk["unlock_expires_at"] is not None and rk["unlock_expires_at"] <= now():
            return None
        out: dict[str, Any] = {"reason": rk["unlock_reason"]}
        with_iso(out, "allowed_at", rk["unlock_at"])
        with_iso(out, "expires_at", rk["unlock_expires_at"])
        with_iso(out, "used_at", None)  # a pending override is unused by definition (public field)
        return out

    def status_many(self, run_keys: Iterable[str] = (), job_ids: Iterable[str] = ()) -> list[dict[str, Any]]:
        """One entry per selector, in order; a missing one is reported, not fatal."""
        out: list[dict[str, Any]] = []
        for kind, values in (("run_key", run_keys), ("job_id", job_ids)):
            for value in values:
                try:
                    out.append(self.status(**{kind: value}))
                except (NotFound, UsageError, ResourceError) as exc:
                    out.append(failed_lookup({kind: value}, exc))
        return out

    def poll_many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Status plus log chunks for many pollers in one process (see ``parse_poll_requests``)."""
        out: list[dict[str, Any]] = []
        for req in requests:
            selector = {k: req[k] for k in POLL_SELECTORS if req.get(k) is not None}
            max_bytes = req.get("max_bytes")
            try:
                job = self.status(**selector)
                add_log_chunks(job, req.get("stdout_offset"), req.get("stderr_offset"),
                               DEFAULT_CHUNK_BYTES if max_bytes is None else max_bytes)  # fmt: skip
            except (NotFound, UsageError, ResourceError) as exc:
                # Reported per entry: one poller's bad or vanished job must not fail the others' polls.
                out.append(failed_lookup(selector, exc))
                continue
            out.append(job)
        return out

    def history(self, run_key: str) -> list[dict[str, Any]]:
        rows = self.store.all("SELECT * FROM jobs WHERE run_key = ? ORDER BY attempt_no DESC", (run_key,))
        if not rows and self.store.one("SELECT 1 FROM run_keys WHERE run_key = ?", (run_key,)) is None:
            raise NotFound(f"No jobs found for run_key: {run_key} (run_key not found)", run_key=run_key)
        override = self._override(run_key)
        return [dict(job_json(self._judge(r)), strict_override=override) for r in rows]

    def running(self, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every active job, oldest first; with ``labels``, only those carrying all of them."""
        marks = ",".join("?" * len(ACTIVE_JOB_STATUSES))
        rows = self.store.all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY started_at", ACTIVE_JOB_STATUSES)
        judged = (self._judge(r) for r in rows if has_labels(r["labels"], labels))
        # strict_override on each entry, as the public release's `status --running` prints it
        return [
            dict(job_json(r), strict_override=self._override(r["run_key"]))
            for r in judged
            if r["status"] in ACTIVE_JOB_STATUSES
        ]

    def list_jobs(
        self,
        *,
        statuses: Iterable[str] = (),
        run_key_prefix: str | None = None,
        since: float | None = None,
        labels: dict[str, str] | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Jobs newest first (by creation), narrowed by status, run key prefix, start time and labels.

        Walks the table backwards in insertion order (its rowid: no index to maintain) and
        stops after ``limit`` matches; a run key prefix is a range on the run key index.
        """
        statuses = list(dict.fromkeys(statuses))
        unknown = [s for s in statuses if s not in ACTIVE_JOB_STATUSES + TERMINAL_JOB_STATUSES]
        if unknown:
            raise UsageError(
                f"--status: unknown status {unknown[0]!r}; choose from "
                f"{', '.join(ACTIVE_JOB_STATUSES + TERMINAL_JOB_STATUSES)}"
            )
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise UsageError(f"--limit must be between 1 and {MAX_LIST_LIMIT}")
        clauses, params = [], []
        if statuses:
            clauses.append(f"status IN ({','.join('?' * len(statuses))})")
            params += statuses
        if run_key_prefix:
            # Every key with the prefix sorts in [prefix, prefix + U+10FFFF); substr makes it exact.
            clauses.append("run_key >= ? AND run_key < ? AND substr(run_key, 1, ?) = ?")
            params += [run_key_prefix, run_key_prefix + "\U0010ffff", len(run_key_prefix), run_key_prefix]
        if since is not None:
            clauses.append("started_at >= ?")
            params.append(since)
        where = " AND ".join(clauses) or "1"
        out: list[dict[str, Any]] = []
        before = None
        # Pages read whole (no statement left open while _judge may write), each below the previous one.
        while len(out) < limit:
            page = self.store.all(
                f"SELECT rowid, * FROM jobs WHERE {where} AND rowid <= ? ORDER BY rowid DESC LIMIT ?",
                [*params, (1 << 63) - 1 if before is None else before, LIST_PAGE],
            )
            for row in page:
                if len(out) < limit and has_labels(row["labels"], labels):
                    judged = self._judge(row)
                    # A settled job may no longer have the status asked for.
                    if not statuses or judged["status"] in statuses:
                        out.append(job_json(judged))
            if len(page) < LIST_PAGE:
                break
            before = page[-1]["rowid"] - 1
        return out

    def first_started_since(self, run_key: str, since: float) -> dict[str, Any] | None:
        """The status of the first job of ``run_key`` started at or after ``since``, if any.

        The job row is committed before its supervisor exists, with a
        ``started_at`` taken after the caller recorded ``since``: this finds a job
        whose start the caller lost track of (crash, error after the claim).
        """
        row = self.store.one(
            "SELECT job_id FROM jobs WHERE run_key = ? AND started_at >= ? ORDER BY attempt_no LIMIT 1",
            (run_key, since),
        )
        return None if row is None else self.status(job_id=row["job_id"])

    def by_request(self, request_id: str) -> dict[str, Any] | None:
        """The status of the job a ``start --request-id`` created, if any (exact, clock-free)."""
        row = self.store.one("SELECT job_id FROM jobs WHERE request_id = ?", (request_id,))
        return None if row is None else self.status(job_id=row["job_id"])

    def supervisors(self, job_ids: Iterable[str]) -> list[tuple[int, int, str]] | None:
        """Identities (pid, start time, boot id) of the recorded supervisors of active jobs.

        None when one of ``job_ids`` is unknown or no longer STARTING/RUNNING (nothing
        to wait for). A job whose supervisor is not recorded yet has no entry.
        """
        ids = list(job_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.store.all(
            f"SELECT status, worker_pid, worker_start, boot_id FROM jobs WHERE job_id IN ({marks})", ids
        )
        if len(rows) < len(set(ids)) or any(r["status"] not in ACTIVE_JOB_STATUSES for r in rows):
            return None
        return [(r["worker_pid"], r["worker_start"], r["boot_id"]) for r in rows if r["worker_pid"] is not None]

    def result(self, run_key: str | None = None, job_id: str | None = None) -> dict[str, Any]:
        """The terminal job; ``InvalidState`` while it is still active."""
        row = self._find(run_key, job_id)
        if row["status"] in ACTIVE_JOB_STATUSES:
            raise InvalidState(
                f"job {row['job_id']} has not finished (status {row['status']})",
                job_id=row["job_id"],
                run_key=row["run_key"],
                status=row["status"],
            )
        return job_json(row)

    def log_path(self, stream: str, run_key: str | None = None, job_id: str | None = None) -> str:
        row = self._find(run_key, job_id)
        path = row["stdout_file"] if stream == "stdout" else row["stderr_file"]
        if not os.path.exists(path):
            raise NotFound(f"Log file not found: {path}", job_id=row["job_id"], path=path)
        return path

    # ------------------------------------------------------------ abort/cancel
    def stop(
        self,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        status: str = "ABORTED",
        reason: str | None = None,
        grace: float = 5.0,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Stop the job's whole tree; ABORTED/CANCELLED is recorded only once nothing of it is alive.

        Records ABORTING/CANCELLING (an active state: a retry in the meantime gets
        this job back), has the supervisor TERM the tree once and KILL it after
        ``grace``, and waits up to ``wait`` seconds for the end. The reply may
        still say ABORTING/CANCELLING; resending the stop is harmless.
        """
        stopping = lifecycle.STOPPING[status]
        row = self._find(run_key, job_id)
        if row["status"] in ACTIVE_JOB_STATUSES:
            refused = lifecycle.may_stop(row)
            if refused:
                raise InvalidState(refused, job_id=row["job_id"], run_key=row["run_key"], status=row["status"])
        with self.store.write() as db:
            row = lifecycle.settle_locked(db, row["job_id"])
            ended = row["status"] not in ACTIVE_JOB_STATUSES
            signal_tree = not ended and lifecycle.request_stop(db, row, status, reason, grace)
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (row["job_id"],)).fetchone()
        told = False
        if signal_tree:
            told = process.signal_process(row["worker_pid"], row["worker_start"], row["boot_id"], 15)
            row = self._await_stop(row, grace, grace + STOP_WAIT_MARGIN if wait is None else wait)
        out = job_json(row)
        # The spec's signal report. The supervisor sends the signals now, each process gets one TERM.
        out["sent_term_worker"] = told
        out["sent_term_target"] = not ended and row["target_pid"] is not None and not out["stop_too_late"]
        out["sent_kill_target"] = bool(row["tree_killed"])
        out["sent_kill_worker"] = False
        out["aborted" if status == "ABORTED" else "cancelled"] = row["status"] == status
        out["stopping"] = row["status"] == stopping or row["status"] in lifecycle.STOPPED
        # Stopping a job that had already ended is not an error (every stop of the three tools
        # follows this rule): nothing is signalled or recorded, the job is reported as it is.
        out["already_ended"] = ended
        if ended and row["status"] != status:
            out["already_finished"] = True  # what a provider hook made of the older exit 4
        return out

    def _await_stop(self, row: sqlite3.Row, grace: float, wait: float) -> sqlite3.Row:
        """Wait up to ``wait`` seconds for the stop to complete (moving it along if the supervisor is gone)."""
        job_id = row["job_id"]
        deadline = time.monotonic() + wait
        while True:
            row = self._judge(row)
            remaining = deadline - time.monotonic()
            if row["status"] not in ACTIVE_JOB_STATUSES or remaining <= 0:
                return row
            if lifecycle.supervisor_alive(row):
                process.wait_exit(row["worker_pid"], row["worker_start"], row["boot_id"], min(remaining, 0.5))
            else:
                time.sleep(min(0.05, remaining))
            row = self._by_id(job_id)

    # ----------------------------------------------------------- unlock/rerun
    def unlock(self, run_key: str, reason: str | None = None, ttl: float | None = None) -> dict[str, Any]:
        validate_run_key(run_key)
        with self.store.write() as db:
            # Judged under the write lock: a concurrent start cannot slip in between.
            latest = db.execute(
                "SELECT job_id FROM jobs WHERE run_key = ? ORDER BY attempt_no DESC LIMIT 1", (run_key,)
            ).fetchone()
            if latest is not None:
                latest = lifecycle.settle_locked(db, latest["job_id"])
            rk = db.execute("SELECT * FROM run_keys WHERE run_key = ?", (run_key,)).fetchone()
            if rk is None or rk["attempts"] == 0:
                raise NotFound(f"run_key not found: {run_key}", run_key=run_key)
            if latest is not None and latest["status"] in ACTIVE_JOB_STATUSES:
                raise InvalidState(
                    f"Cannot unlock active job: status={latest['status']}; run key {run_key} can be unlocked "
                    "once its job finishes",
                    run_key=run_key,
                    status=latest["status"],
                )
            t = now()
            expires = t + ttl if ttl is not None else None
            db.execute(
                "UPDATE run_keys SET unlock_reason=?, unlock_at=?, unlock_expires_at=?, updated_at=? WHERE run_key=?",
                (reason, t, expires, t, run_key),
            )
        out: dict[str, Any] = {"unlocked": True, "run_key": run_key, "reason": reason}
        with_iso(out, "allowed_at", t)
        with_iso(out, "expires_at", expires)
        return out

    def rerun(
        self,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        sync: bool = False,
        reason: str | None = None,
        start_timeout: float = 10.0,
    ) -> dict[str, Any]:
        source = self._find(run_key, job_id)
        if source["status"] in ACTIVE_JOB_STATUSES:
            raise InvalidState(
                f"Cannot rerun active job: status={source['status']}; job {source['job_id']} is still active, "
                "only finished jobs can be rerun",
                job_id=source["job_id"],
                status=source["status"],
            )
        from . import claim
        from .systemd import job_scope

        systemd_run = job_scope()
        with self.store.write() as db:
            new_id = claim.insert_job(
                db,
                self.logs_dir,
                run_key=source["run_key"],
                command=json.loads(source["command"]),
                cwd=source["cwd"],
                env=json.loads(source["env"]) if source["env"] else None,
                timeout=source["timeout"],
                mode="sync" if sync else "async",
                reuse_policy=source["reuse_policy"],
                rerun_of=source["job_id"],
                rerun_reason=reason,
                labels=stored_labels(source["labels"]),
            )
        out = self._launch(new_id, sync=sync, start_timeout=start_timeout, systemd_run=systemd_run)()
        out["rerun"] = True
        return out

    # ------------------------------------------------------------------ clean
    def clean(
        self,
        *,
        before: float | None = None,
        after: float | None = None,
        all_: bool = False,
        job_id: str | None = None,
        run_key: str | None = None,
        dry_run: bool = False,
        forget_keys: bool = False,
    ) -> JobsCleaning:
        """Delete terminal jobs (and logs) by the spec's selection rules, as the result is iterated.

        The ``run_keys`` row survives (remembering the last outcome) so a
        consumed strict key stays consumed, unless ``forget_keys`` is set.
        """
        if job_id is not None:
            if before is not None or after is not None or all_ or run_key is not None:
                raise UsageError("--job-id cannot be combined with --before, --after, --all, or --run-key")
            row = self._find(job_id=job_id)
            if row["status"] in ACTIVE_JOB_STATUSES:
                raise InvalidState(f"job {job_id} is still {row['status']}; only terminal jobs are cleaned")
        else:
            if before is None and after is None and not all_:
                raise UsageError("choose what to clean: one of --before, --after, --all, or --job-id is required")
            if all_ and (before is not None or after is not None):
                raise UsageError("--all cannot be combined with --before or --after")
        return JobsCleaning(
            self.store,
            before=before,
            after=after,
            run_key=run_key,
            by_id=("job_id", job_id) if job_id is not None else None,
            dry_run=dry_run,
            forget_keys=forget_keys,
        )

    # ------------------------------------------------------------------ stats
    def stats(self, hours: float) -> dict[str, Any]:
        """The operations summary of this home (read-only; see stats.py)."""
        from .stats import collect

        return collect(self, hours)

    # ------------------------------------------------------------------- info
    def info(self) -> dict[str, Any]:
        from . import runtime_summary, systemd
        from .home import describe
        from .proctree import tracking

        out = {**runtime_summary(), "python": sys.version.split()[0]}
        out["process_tracking"] = tracking()
        out["systemd"] = systemd.describe()
        out.update(describe())
        out["orchesjob_home"] = self.home
        out["orchesjob_db"] = self.db_path
        return out


class JobsCleaning(Cleaning):
    """``orchesjob clean``: jobs by finish time, with their logs and outcome records."""

    table = "jobs"
    columns = "job_id, run_key, attempt_no, status, exit_code, finished_at, stdout_file, stderr_file"
    time_column = "finished_at"
    statuses = TERMINAL_JOB_STATUSES
    list_key = "items"

    def __init__(self, store: Store, *, forget_keys: bool = False, **selection: Any) -> None:
        super().__init__(store, **selection)
        self.forget_keys = forget_keys

    def describe(self, row: sqlite3.Row) -> dict[str, Any]:
        item = {"job_id": row["job_id"], "run_key": row["run_key"], "status": row["status"]}
        with_iso(item, "selected_at", row["finished_at"])
        return item

    def deleted_locked(self, db: sqlite3.Connection, rows: list[sqlite3.Row]) -> None:
        for r in rows:
            if r["status"] == "NEVER_LAUNCHED":
                continue  # nothing ran: it must not hide the outcome of an attempt that did
            # Remember the outcome of a key's newest launched attempt now that its row is gone.
            db.execute(
                "UPDATE run_keys SET last_job_id=?, last_status=?, last_exit_code=?, last_finished_at=?, "
                "last_attempt_no=? WHERE run_key=? AND "
                "COALESCE(last_attempt_no, CASE WHEN last_status IS NULL THEN 0 ELSE attempts END) < ?",
                (r["job_id"], r["status"], r["exit_code"], r["finished_at"], r["attempt_no"], r["run_key"],
                 r["attempt_no"]),
            )  # fmt: skip
        if self.forget_keys:
            keys = {r["run_key"] for r in rows}
            db.executemany(
                "DELETE FROM run_keys WHERE run_key = ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_key = ?)",
                [(k, k) for k in keys],
            )

    def deleted_files(self, rows: list[sqlite3.Row]) -> int:
        paths: list[str] = []
        for r in rows:
            # Logs, and an outcome record a crash may have left (the database already holds it).
            record = lifecycle.outcome_path(r)
            paths += (r["stdout_file"], r["stderr_file"], record, record + ".tmp")
        return self.remove(paths)


def open_jobs(home: str | None = None) -> Jobs:
    try:
        return Jobs(home)
    except OrchesError:
        raise
    except sqlite3.DatabaseError as exc:
        raise OrchesError(f"cannot use job database: {exc}") from None
