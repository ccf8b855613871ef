"""The flow engine: the loop that advances a flow run (its stored state is ``flow_store.py``).

State machine of a step::

    PENDING ──ready & when true──▶ RUNNING ──job SUCCEEDED──▶ SUCCEEDED
       │                             │
       │ ready & when false          └─job failed / timeout / start error─┐
       ▼                                                                  ▼
    SKIPPED                     retries left: DELAYED ──due──▶ PENDING   no retries left: FAILED
    (cancel turns PENDING/DELAYED/RUNNING into CANCELLED)

Exactness after crashes rests on three rules:

1. *Intent before effect.* Before a job is started, the attempt (its number and
   its orchesjob run key ``<flow>:<step>:<n>``) is committed with the step in
   RUNNING. A resumed advancer looks that run key up: found -> poll it (never
   start a second copy); not found -> the previous advancer died before the
   job existed, so start it under the same key. Strict keys make the job layer
   refuse a second execution even if this logic were wrong.
2. *Conditional writes.* Every outcome is recorded with ``WHERE status='RUNNING'
   AND attempt_no=?`` inside a write transaction that also re-checks the flow
   is still RUNNING, so a concurrent ``cancel`` is never overwritten.
3. *One advancer.* A lease row per flow run (primary key = run key) records the
   advancer's process identity; another loop takes it over only when that
   process is provably dead (see ``edge_runtime.process``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from . import process
from .errors import NotFound, OrchesError
from .flow_store import step_run_key
from .schema import FLOW_TERMINAL, STEP_TERMINAL

# `status` (one process per remote poll) needs none of the definition, expression,
# random or client modules: they are imported where a run is advanced.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

    from .flow_definition import FlowDefinition, Step
    from .flow_store import FlowStore

JOB_TERMINAL = ("SUCCEEDED", "FAILED", "LOST", "CANCELLED", "ABORTED", "NEVER_LAUNCHED")
DEFAULT_POLL_INTERVAL = 5.0
TIMEOUT_ABORT_GRACE = 5.0
# A job whose start was cut short by our own crash (the command provably never
# ran) is started again without consuming a retry — but only this many times.
MAX_FREE_RESTARTS = 3


def kill_point(name: str) -> None:
    """Crash-test hook: ``ORCHESJOB_FLOW_TEST_KILL_AT=name[:n]`` SIGKILLs us at the n-th hit of ``name``."""
    spec = os.environ.get("ORCHESJOB_FLOW_TEST_KILL_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    counter = f"_ORCHESJOB_FLOW_KILL_COUNT_{name}"
    hits = int(os.environ.get(counter, "0")) + 1
    os.environ[counter] = str(hits)
    if hits >= int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def retry_delay(step: Step, failures: int, rng: random.Random | None = None) -> float:
    """Delay before the next attempt after ``failures`` failed attempts (1-based)."""
    if step.retry_backoff != "exponential":
        return float(step.retry_delay_sec)
    base = float(step.retry_delay_sec) or 1.0
    delay = base * (2 ** (failures - 1))
    if step.retry_max_delay_sec is not None:
        delay = min(delay, float(step.retry_max_delay_sec))
    if step.retry_jitter and delay > 0:
        # "Equal jitter": keep at least half the delay so retries still back off,
        # randomise the rest so many flows failing together do not retry in lockstep.
        if rng is None:
            import random as rng
        delay = delay / 2 + rng.uniform(0, delay / 2)
    return delay


def wait_any(targets: list[tuple[int, int, str]], timeout: float) -> None:
    """Block until any identified process exits or ``timeout`` passes (pidfds where available)."""
    if timeout <= 0:
        return
    if not targets or not hasattr(os, "pidfd_open"):
        time.sleep(timeout)
        return
    import select

    fds: list[int] = []
    try:
        for pid, start, boot in targets:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                return  # already gone: something finished
            fds.append(fd)
            # Identity checked after opening: the fd now pins the right process.
            if not process.is_alive(pid, start, boot):
                return
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(timeout * 1000)
    finally:
        for fd in fds:
            os.close(fd)


def _prefixed(prefix: str, exc: OrchesError) -> str:
    # The subprocess client already names the failing call; do not say it twice.
    return exc.message if exc.message.startswith(prefix) else f"{prefix}: {exc.message}"


class LeaseLost(OrchesError):
    """This process no longer holds the advancer lease (never expected; stops the loop)."""

    kind = "lock_error"
    exit_code = 5


class Advancer:
    """Advances one flow run. Must hold the run's lease (``FlowStore.acquire``) while advancing."""

    def __init__(self, flows: FlowStore, run_key: str, client: Any, poll_interval: float = DEFAULT_POLL_INTERVAL):
        self.flows = flows
        self.run_key = run_key
        self.client = client
        self.poll_interval = poll_interval
        self.db = flows.store
        self._identity = (*process.identity(), process.boot_id())

    # ------------------------------------------------------------- helpers
    def _check_lease_locked(self, db: sqlite3.Connection) -> None:
        row = db.execute(
            "SELECT pid, pid_start, boot_id FROM flow_advancers WHERE run_key=?", (self.run_key,)
        ).fetchone()
        if row is None or tuple(row) != self._identity:
            raise LeaseLost(f"advancer lease of flow run {self.run_key} is no longer held by this process")

    def _flow_running_locked(self, db: sqlite3.Connection) -> bool:
        row = db.execute("SELECT status FROM flow_runs WHERE run_key=?", (self.run_key,)).fetchone()
        return row is not None and row["status"] == "RUNNING"

    def _step_row(self, step_id: str) -> sqlite3.Row:
        return self.db.one("SELECT * FROM flow_steps WHERE run_key=? AND step_id=?", (self.run_key, step_id))

    # ---------------------------------------------------------------- pass
    def advance_once(self) -> str:
        """One engine pass; returns the flow status afterwards."""
        run = self.flows.run_row(self.run_key)
        if run["status"] in FLOW_TERMINAL:
            return run["status"]
        if run["status"] == "PENDING":
            self.flows.mark_running(self.run_key)
        defn = self.flows.definition(run)
        workdir = run["workdir"]
        for r in self.flows.step_rows(self.run_key):
            if r["status"] == "RUNNING":
                self._poll(defn.step(r["step_id"]), r, workdir)
        t = time.time()
        with self.db.write() as db:
            db.execute(
                "UPDATE flow_steps SET status='PENDING', next_attempt_at=NULL, updated_at=? "
                "WHERE run_key=? AND status='DELAYED' AND next_attempt_at <= ?",
                (t, self.run_key, t),
            )
        self._resolve_pending(defn, workdir)
        return self._finalize()

    def _resolve_pending(self, defn: FlowDefinition, workdir: str) -> None:
        """Start ready steps whose condition holds; skip those whose condition cannot hold.

        Repeats until nothing changes, so skips cascade within one pass.
        """
        from . import flow_expr

        changed = True
        while changed:
            changed = False
            rows = {r["step_id"]: r for r in self.flows.step_rows(self.run_key)}
            ready: list[tuple[Step, sqlite3.Row]] = []
            for step in defn.steps:
                r = rows[step.id]
                if r["status"] != "PENDING":
                    continue
                if any(rows[w]["status"] not in STEP_TERMINAL for w in step.waits):
                    continue
                ok = flow_expr.evaluate(step.condition, {w: rows[w]["status"] == "SUCCEEDED" for w in step.waits})
                if ok:
                    ready.append((step, r))
                else:
                    self._skip(step, r)
                changed = True
            # A fan-out's ready steps are launched together (their supervisors' hand-shakes
            # overlap), each recorded RUNNING just before its start, as long as the flow runs.
            self._launch((a for step, r in ready if (a := self._start(step, r)) is not None), workdir)
            if changed and not self._still_running():
                return

    def _still_running(self) -> bool:
        return self.flows.run_row(self.run_key)["status"] == "RUNNING"

    def _skip(self, step: Step, r: sqlite3.Row) -> None:
        t = time.time()
        with self.db.write() as db:
            self._check_lease_locked(db)
            if not self._flow_running_locked(db):
                return
            db.execute(
                "UPDATE flow_steps SET status='SKIPPED', error='condition not satisfied', finished_at=?, updated_at=? "
                "WHERE run_key=? AND step_id=? AND status='PENDING'",
                (t, t, self.run_key, step.id),
            )

    def _start(self, step: Step, r: sqlite3.Row) -> tuple[Step, int, str] | None:
        """Record the step's next attempt as RUNNING; returns what to launch (None: nothing, the flow ended)."""
        attempt = r["attempt_no"] + 1
        key = step_run_key(self.run_key, step.id, attempt)
        t = time.time()
        with self.db.write() as db:
            self._check_lease_locked(db)
            if not self._flow_running_locked(db):
                return None
            cur = db.execute(
                "UPDATE flow_steps SET status='RUNNING', attempt_no=?, started_at=?, finished_at=NULL, error=NULL, "
                "orchesjob_status=NULL, next_attempt_at=NULL, updated_at=? "
                "WHERE run_key=? AND step_id=? AND status='PENDING' AND attempt_no=?",
                (attempt, t, t, self.run_key, step.id, r["attempt_no"]),
            )
            if cur.rowcount != 1:
                return None
            db.execute(
                "INSERT INTO flow_attempts (run_key, step_id, attempt_no, job_run_key, started_at) VALUES (?,?,?,?,?)",
                (self.run_key, step.id, attempt, key, t),
            )
        kill_point("intent")
        return step, attempt, key

    def _launch(self, attempts: Iterable[tuple[Step, int, str]], workdir: str) -> None:
        """Start the jobs of attempts recorded RUNNING (consumed one start at a time), and record each reply."""
        from .jobclient import start_options

        launched: list[tuple[Step, int, str]] = []

        def starts() -> Iterator[dict[str, Any]]:
            for step, attempt, key in attempts:
                launched.append((step, attempt, key))
                yield {
                    "command": step.command,
                    "run_key": key,
                    "options": start_options(strict=step.strict, start_timeout=step.start_timeout_sec),
                    "cwd": step.cwd or workdir,
                    "env": step.env,
                }

        replies = self.client.start_many(starts())
        for (step, attempt, key), job in zip(launched, replies, strict=True):
            if isinstance(job, OrchesError):
                # A start that fails is a failed attempt (retry or FAILED), never an
                # endless re-start loop.
                self._attempt_failed(step, attempt, _prefixed("orchesjob start failed", job), None)
                continue
            kill_point("started")
            if not self._still_running() and job.get("status") not in JOB_TERMINAL:
                # Cancelled while we were starting it: cancel could not see this job yet.
                try:
                    job = self.client.abort(key, reason="orchesjob-flow cancelled")
                except OrchesError:
                    pass
            self._record(step, attempt, job)

    def _poll(self, step: Step, r: sqlite3.Row, workdir: str) -> None:
        attempt = r["attempt_no"]
        key = step_run_key(self.run_key, step.id, attempt)
        try:
            job = self.client.status(key)
        except NotFound:
            # The attempt was recorded but its job never created (the previous
            # advancer died in between): start it now under the same key.
            self._launch([(step, attempt, key)], workdir)
            return
        except OrchesError as exc:
            self._attempt_failed(step, attempt, _prefixed("orchesjob status failed", exc), None)
            return
        if (
            job.get("status") not in JOB_TERMINAL
            and step.timeout_sec is not None
            and r["started_at"] is not None
            and time.time() - r["started_at"] > step.timeout_sec
        ):
            try:
                job = self.client.abort(key, reason="orchesjob-flow step timeout", grace=TIMEOUT_ABORT_GRACE)
            except OrchesError:
                pass
            self._attempt_failed(step, attempt, f"step timeout exceeded: {step.timeout_sec:g}s", job)
            return
        self._record(step, attempt, job, previous=r["orchesjob_status"])

    def _record(self, step: Step, attempt: int, job: dict[str, Any], previous: str | None = None) -> None:
        status = job.get("status")
        if status == "SUCCEEDED":
            t = time.time()
            with self.db.write() as db:
                if not self._flow_running_locked(db):
                    return
                cur = db.execute(
                    "UPDATE flow_steps SET status='SUCCEEDED', finished_at=?, error=NULL, orchesjob_status=?, "
                    "updated_at=? WHERE run_key=? AND step_id=? AND status='RUNNING' AND attempt_no=?",
                    (t, json.dumps(job), t, self.run_key, step.id, attempt),
                )
                if cur.rowcount:
                    db.execute(
                        "UPDATE flow_attempts SET outcome='SUCCEEDED', finished_at=? "
                        "WHERE run_key=? AND step_id=? AND attempt_no=?",
                        (t, self.run_key, step.id, attempt),
                    )
            kill_point("recorded")
        elif status in JOB_TERMINAL:
            # NEVER_LAUNCHED (or, from an older/foreign orchesjob, LOST with no process ever recorded).
            never_ran = status == "NEVER_LAUNCHED" or (
                status == "LOST" and job.get("worker_pid") is None and job.get("target_pid") is None
            )
            if never_ran and self._free_restart(step, attempt, job):
                return
            detail = f" (exit code {job['exit_code']})" if job.get("exit_code") not in (None, 0) else ""
            if status == "LOST" and not never_ran:
                # The command ran and its outcome is unknown: retrying could run it twice.
                detail += "; outcome unknown, not retried automatically (use `repair` to run it again)"
            self._attempt_failed(
                step, attempt, f"orchesjob ended with {status}{detail}", job, retry=never_ran or status != "LOST"
            )
        else:
            # Still running: store the payload only when it says something new.
            encoded = json.dumps(job)
            if previous is None or json.loads(previous).get("status") != status:
                with self.db.write() as db:
                    db.execute(
                        "UPDATE flow_steps SET orchesjob_status=? WHERE run_key=? AND step_id=? "
                        "AND status='RUNNING' AND attempt_no=?",
                        (encoded, self.run_key, step.id, attempt),
                    )

    def _free_restart(self, step: Step, attempt: int, job: dict[str, Any]) -> bool:
        """The job was claimed but its supervisor never launched (we crashed mid-start):
        the command never ran, so start a new attempt without consuming a retry."""
        t = time.time()
        with self.db.write() as db:
            self._check_lease_locked(db)
            if not self._flow_running_locked(db):
                return True
            n = db.execute(
                "SELECT COUNT(*) FROM flow_attempts WHERE run_key=? AND step_id=? AND outcome='NEVER_RAN'",
                (self.run_key, step.id),
            ).fetchone()[0]
            if n >= MAX_FREE_RESTARTS:
                return False
            cur = db.execute(
                "UPDATE flow_steps SET status='PENDING', attempt_base=attempt_base+1, orchesjob_status=?, "
                "error='previous start was interrupted before the command ran; attempt not counted', updated_at=? "
                "WHERE run_key=? AND step_id=? AND status='RUNNING' AND attempt_no=?",
                (json.dumps(job), t, self.run_key, step.id, attempt),
            )
            if cur.rowcount:
                db.execute(
                    "UPDATE flow_attempts SET outcome='NEVER_RAN', finished_at=? "
                    "WHERE run_key=? AND step_id=? AND attempt_no=?",
                    (t, self.run_key, step.id, attempt),
                )
        return True

    def _attempt_failed(
        self, step: Step, attempt: int, error: str, job: dict[str, Any] | None, retry: bool = True
    ) -> None:
        t = time.time()
        with self.db.write() as db:
            if not self._flow_running_locked(db):
                return
            r = db.execute(
                "SELECT * FROM flow_steps WHERE run_key=? AND step_id=? AND status='RUNNING' AND attempt_no=?",
                (self.run_key, step.id, attempt),
            ).fetchone()
            if r is None:
                return
            failures = attempt - r["attempt_base"]
            payload = json.dumps(job) if job is not None else r["orchesjob_status"]
            if retry and failures <= step.retries:
                delay = retry_delay(step, failures)
                status, due, finished = ("DELAYED", t + delay, None) if delay > 0 else ("PENDING", None, None)
            else:
                status, due, finished = "FAILED", None, t
            db.execute(
                "UPDATE flow_steps SET status=?, next_attempt_at=?, finished_at=?, error=?, orchesjob_status=?, "
                "updated_at=? WHERE run_key=? AND step_id=?",
                (status, due, finished, error, payload, t, self.run_key, step.id),
            )
            db.execute(
                "UPDATE flow_attempts SET outcome='FAILED', error=?, finished_at=? "
                "WHERE run_key=? AND step_id=? AND attempt_no=?",
                (error, t, self.run_key, step.id, attempt),
            )

    def _finalize(self) -> str:
        with self.db.write() as db:
            run = db.execute("SELECT status FROM flow_runs WHERE run_key=?", (self.run_key,)).fetchone()
            if run["status"] != "RUNNING":
                return run["status"]
            rows = db.execute(
                "SELECT step_id, status FROM flow_steps WHERE run_key=? ORDER BY position", (self.run_key,)
            )
            statuses = [(r["step_id"], r["status"]) for r in rows]
            if any(s not in STEP_TERMINAL for _, s in statuses):
                return "RUNNING"
            failed = [sid for sid, s in statuses if s in ("FAILED", "CANCELLED")]
            status = "FAILED" if failed else "SUCCEEDED"
            error = f"step(s) failed: {', '.join(failed)}" if failed else None
            t = time.time()
            db.execute(
                "UPDATE flow_runs SET status=?, error=?, finished_at=?, updated_at=? "
                "WHERE run_key=? AND status='RUNNING'",
                (status, error, t, t, self.run_key),
            )
            return status

    # ---------------------------------------------------------------- wait
    def wait_for_progress(self) -> None:
        """Sleep until something may have changed: a step's job ends (pidfd), a retry is
        due, a step timeout expires — or at most one poll interval."""
        t = time.time()
        wake = t + self.poll_interval
        job_ids: list[str] = []
        running = 0
        for r in self.flows.step_rows(self.run_key):
            if r["status"] == "DELAYED" and r["next_attempt_at"] is not None:
                wake = min(wake, r["next_attempt_at"])
            elif r["status"] == "RUNNING":
                running += 1
                run = self.flows.run_row(self.run_key)
                step = self.flows.definition(run).step(r["step_id"])
                if step.timeout_sec is not None and r["started_at"] is not None:
                    wake = min(wake, r["started_at"] + step.timeout_sec + 0.01)
                if r["orchesjob_status"]:
                    job_id = json.loads(r["orchesjob_status"]).get("job_id")
                    if job_id:
                        job_ids.append(job_id)
        timeout = max(0.0, wake - t)
        if not running or not self.client.in_process:
            time.sleep(timeout)
            return
        targets = self.client.waitables(job_ids)
        if targets is None:
            return  # a step's job has already finished: advance now
        if len(targets) < running:
            # Some running job has no live supervisor to wait on (or is still
            # being recorded): poll it at a modest pace instead.
            timeout = min(timeout, 0.2)
        wait_any(targets, timeout)

    def run(self, progress: Callable[[], None] | None = None) -> str:
        """Advance until the flow is terminal; returns its final status. ``progress`` is called
        after every pass (a foreground ``start`` on a terminal prints step transitions from it)."""
        while True:
            status = self.advance_once()
            if progress is not None:
                progress()
            if status in FLOW_TERMINAL:
                return status
            self.wait_for_progress()


def run_flow(
    flows: FlowStore,
    run_key: str,
    client: Any,
    poll_interval: float,
    role: str = "start",
    progress: Callable[[], None] | None = None,
) -> str:
    """Advance ``run_key`` to a terminal state, or follow the live advancer that holds it.

    If the holder dies, this loop takes over its lease and continues the run.
    """
    while True:
        if flows.run_row(run_key)["status"] in FLOW_TERMINAL:
            return flows.run_row(run_key)["status"]
        if flows.acquire(run_key, role):
            try:
                return Advancer(flows, run_key, client, poll_interval).run(progress)
            finally:
                flows.release(run_key)
        holder = flows.holder(run_key)
        if holder is not None:
            process.wait_exit(holder[0], holder[1], holder[2], max(poll_interval, 1.0))
        if progress is not None:
            progress()
