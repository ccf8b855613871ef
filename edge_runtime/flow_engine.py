"""The flow engine: flow-run state in SQLite and the loop that advances it.

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
from .errors import InvalidState, NotFound, OrchesError, UsageError
from .schema import FLOW_MIGRATIONS, FLOW_TERMINAL, STEP_TERMINAL
from .store import Store

# `status` (one process per remote poll) needs none of the definition, expression,
# random or client modules: they are imported where a run is advanced.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from typing import Any

    from .flow_definition import FlowDefinition, Step

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


def step_run_key(flow_run_key: str, step_id: str, attempt: int) -> str:
    return f"{flow_run_key}:{step_id}:{attempt}"


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


class FlowStore:
    """Flow runs in one SQLite file: creation, snapshots, payloads, cancel, repair, lease."""

    def __init__(self, path: str, *, check_dir: bool = True) -> None:
        self.path = path
        self.store = Store(path, FLOW_MIGRATIONS, check_dir=check_dir)
        self.store.conn.execute("PRAGMA foreign_keys=ON")
        self._defs: dict[str, FlowDefinition] = {}

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------- reading
    def run_row(self, run_key: str) -> sqlite3.Row:
        row = self.store.one("SELECT * FROM flow_runs WHERE run_key = ?", (run_key,))
        if row is None:
            raise NotFound(f"flow run not found: {run_key}", run_key=run_key)
        return row

    def step_rows(self, run_key: str) -> list[sqlite3.Row]:
        return self.store.all("SELECT * FROM flow_steps WHERE run_key = ? ORDER BY position", (run_key,))

    def definition(self, run: sqlite3.Row) -> FlowDefinition:
        sha = run["definition_sha"]
        if sha not in self._defs:
            from .flow_definition import from_snapshot

            self._defs[sha] = from_snapshot(run["definition"])
        return self._defs[sha]

    def payload(self, run_key: str) -> dict[str, Any]:
        """The spec's status document (spec fields first, then our extras)."""
        run = self.run_row(run_key)
        rows = self.step_rows(run_key)
        steps = [step_json(run_key, r) for r in rows]
        counts = {s: 0 for s in ("PENDING", "DELAYED", "RUNNING", "SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED")}
        for r in rows:
            counts[r["status"]] += 1
        out: dict[str, Any] = {
            "run_key": run["run_key"],
            "flow_id": run["flow_id"],
            "status": run["status"],
            "started_at": run["created_at"],
            "finished_at": run["finished_at"],
            "error": run["error"],
            "steps": steps,
            "progress": {
                "done": counts["SUCCEEDED"] + counts["SKIPPED"],
                "total": len(rows),
                "running": counts["RUNNING"],
                "failed": counts["FAILED"],
                "counts": counts,
            },
            "snapshot_sha256": run["definition_sha"],
            "repair_count": run["repair_count"],
            "advancer": self.advancer(run_key),
            "labels": json.loads(run["labels"]) if run["labels"] else {},
        }
        return out

    def list_runs(self, *, active: bool = False, labels: dict[str, str] | None = None, limit: int = 100) -> list:
        """Runs newest first (``active``: only PENDING/RUNNING ones, all of them), each as a summary;
        with ``labels``, only those carrying all of them."""
        if active:
            rows = self.store.all(
                "SELECT * FROM flow_runs WHERE status IN ('PENDING','RUNNING') ORDER BY created_at DESC"
            )
        else:
            rows = self.store.all("SELECT * FROM flow_runs ORDER BY created_at DESC LIMIT ?", (limit,))
        out = []
        for run in rows:
            run_labels = json.loads(run["labels"]) if run["labels"] else {}
            if labels and not labels.items() <= run_labels.items():
                continue
            out.append({"run_key": run["run_key"], "flow_id": run["flow_id"], "status": run["status"],
                        "started_at": run["created_at"], "finished_at": run["finished_at"],
                        "labels": run_labels})  # fmt: skip
        return out

    # ------------------------------------------------------------ creation
    def create_or_resume(
        self,
        defn: FlowDefinition,
        run_key: str,
        source_name: str | None,
        *,
        replace: bool = False,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Create the run bound to ``defn`` (with ``labels``) or check it against the stored snapshot
        (an existing run keeps the labels it was created with).

        Returns ``created``, ``resumed`` or ``replaced``.
        """
        from .store import validate_labels, validate_run_key

        validate_run_key(run_key)
        labels = validate_labels(labels)
        sha = defn.sha256()
        t = time.time()
        with self.store.write() as db:
            run = db.execute("SELECT * FROM flow_runs WHERE run_key = ?", (run_key,)).fetchone()
            if run is None:
                db.execute(
                    "INSERT INTO flow_runs (run_key, flow_id, status, definition, definition_sha, source_name, "
                    "workdir, created_at, updated_at, labels) VALUES (?, ?, 'PENDING', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_key,
                        defn.flow_id,
                        defn.canonical(),
                        sha,
                        source_name,
                        os.getcwd(),
                        t,
                        t,
                        json.dumps(labels, sort_keys=True) if labels else None,
                    ),  # fmt: skip
                )
                db.executemany(
                    "INSERT INTO flow_steps (run_key, step_id, position, status, max_retries, updated_at) "
                    "VALUES (?, ?, ?, 'PENDING', ?, ?)",
                    [(run_key, s.id, i, s.retries, t) for i, s in enumerate(defn.steps)],
                )
                return "created"
            if run["definition_sha"] == sha:
                return "resumed"
            if not replace:
                raise InvalidState(
                    f"flow run {run_key} is bound to the definition it was started with "
                    f"(snapshot {run['definition_sha'][:12]}); the given file differs ({sha[:12]}). "
                    "A run always resumes its stored snapshot. Pass --replace-definition to switch this run "
                    "to the new definition (steps keep their state by id), or use a new --run-key.",
                    run_key=run_key,
                    stored_sha256=run["definition_sha"],
                    given_sha256=sha,
                )
            if run["status"] in FLOW_TERMINAL:
                raise InvalidState(
                    f"flow run {run_key} is {run['status']}; use `repair --replace-definition` to re-run it "
                    "with a new definition",
                    run_key=run_key,
                    status=run["status"],
                )
            self._replace_locked(db, run_key, defn, source_name)
            return "replaced"

    def _replace_locked(self, db: sqlite3.Connection, run_key: str, defn: FlowDefinition, source: str | None) -> None:
        t = time.time()
        existing = {
            r["step_id"]: r for r in db.execute("SELECT * FROM flow_steps WHERE run_key = ?", (run_key,)).fetchall()
        }
        new_ids = {s.id for s in defn.steps}
        for sid, r in existing.items():
            if sid not in new_ids:
                if r["status"] == "RUNNING":
                    raise InvalidState(
                        f"step {sid} is RUNNING and is missing from the new definition; wait for it or cancel",
                        step=sid,
                    )
                db.execute("DELETE FROM flow_attempts WHERE run_key = ? AND step_id = ?", (run_key, sid))
                db.execute("DELETE FROM flow_steps WHERE run_key = ? AND step_id = ?", (run_key, sid))
        # Positions are UNIQUE: park them out of the way before renumbering.
        db.execute("UPDATE flow_steps SET position = -1 - position WHERE run_key = ?", (run_key,))
        for i, s in enumerate(defn.steps):
            if s.id in existing:
                db.execute(
                    "UPDATE flow_steps SET position=?, max_retries=?, updated_at=? WHERE run_key=? AND step_id=?",
                    (i, s.retries, t, run_key, s.id),
                )
            else:
                db.execute(
                    "INSERT INTO flow_steps (run_key, step_id, position, status, max_retries, updated_at) "
                    "VALUES (?, ?, ?, 'PENDING', ?, ?)",
                    (run_key, s.id, i, s.retries, t),
                )
        db.execute(
            "UPDATE flow_runs SET flow_id=?, definition=?, definition_sha=?, source_name=?, updated_at=? "
            "WHERE run_key=?",
            (defn.flow_id, defn.canonical(), defn.sha256(), source, t, run_key),
        )

    def mark_running(self, run_key: str) -> None:
        with self.store.write() as db:
            db.execute(
                "UPDATE flow_runs SET status='RUNNING', updated_at=? WHERE run_key=? AND status='PENDING'",
                (time.time(), run_key),
            )

    # --------------------------------------------------------------- clean
    def clean(
        self,
        *,
        before: float | None = None,
        after: float | None = None,
        all_: bool = False,
        run_key: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete finished flow runs (SUCCEEDED/FAILED/CANCELLED) by finish time, with their steps.

        Unfinished runs are never deleted. Rows go in batches of short write
        transactions; the detached advancer's logs of a deleted run go too. The
        jobs of the steps are orchesjob's (``orchesjob clean``).
        """
        from .store import CLEAN_BATCH, clean_selection
        from .timefmt import with_iso

        if before is None and after is None and not all_ and run_key is None:
            raise UsageError("choose what to clean: --all, --run-key, --before, --older-than or --after")
        if all_ and (before is not None or after is not None):
            raise UsageError("--all cannot be combined with --before/--older-than/--after")
        where, params = clean_selection("finished_at", FLOW_TERMINAL, before=before, after=after, run_key=run_key)
        rows = self.store.all(
            f"SELECT run_key, flow_id, status, finished_at FROM flow_runs WHERE {where} ORDER BY finished_at, run_key",
            params,
        )
        deleted = len(rows) if dry_run else 0
        marks = ",".join("?" * len(FLOW_TERMINAL))
        for i in range(0, 0 if dry_run else len(rows), CLEAN_BATCH):
            keys = [r["run_key"] for r in rows[i : i + CLEAN_BATCH]]
            with self.store.write() as db:
                deleted += db.execute(
                    f"DELETE FROM flow_runs WHERE run_key IN ({','.join('?' * len(keys))}) AND status IN ({marks})",
                    [*keys, *FLOW_TERMINAL],
                ).rowcount
        errors = 0 if dry_run else self._remove_logs([r["run_key"] for r in rows])
        runs = []
        for r in rows:
            item = {"run_key": r["run_key"], "flow_id": r["flow_id"], "status": r["status"]}
            with_iso(item, "finished_at", r["finished_at"])
            runs.append(item)
        return {"deleted": deleted, "errors": errors, "dry_run": dry_run, "matched": len(rows), "runs": runs}

    def _remove_logs(self, run_keys: list[str]) -> int:
        from .cli.flow import safe_key
        from .home import log_files, logs_dir

        errors = 0
        directory = logs_dir(os.path.dirname(self.path))
        for key in run_keys:
            if self.store.one("SELECT 1 FROM flow_runs WHERE run_key = ?", (key,)) is not None:
                continue  # not deleted (e.g. repaired meanwhile)
            for path in log_files(directory, f"orchesjob-flow-{safe_key(key)}", ".log"):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    errors += 1
        return errors

    # -------------------------------------------------------------- cancel
    def cancel(self, run_key: str, client: Any, grace: float | None) -> dict[str, Any]:
        """Mark the run and its unfinished steps CANCELLED, then abort the running jobs."""
        t = time.time()
        with self.store.write() as db:
            run = db.execute("SELECT * FROM flow_runs WHERE run_key = ?", (run_key,)).fetchone()
            if run is None:
                raise NotFound(f"flow run not found: {run_key}", run_key=run_key)
            if run["status"] in FLOW_TERMINAL:
                out = self.payload(run_key)
                out["cancelled"] = False
                return out
            running = db.execute(
                "SELECT step_id, attempt_no FROM flow_steps WHERE run_key=? AND status='RUNNING'", (run_key,)
            ).fetchall()
            db.execute(
                "UPDATE flow_runs SET status='CANCELLED', finished_at=?, cancelled_at=?, updated_at=? WHERE run_key=?",
                (t, t, t, run_key),
            )
            db.execute(
                "UPDATE flow_steps SET status='CANCELLED', error='flow cancelled', finished_at=?, "
                "next_attempt_at=NULL, updated_at=? WHERE run_key=? AND status IN ('PENDING','DELAYED','RUNNING')",
                (t, t, run_key),
            )
            db.execute(
                "UPDATE flow_attempts SET outcome='CANCELLED', finished_at=? WHERE run_key=? AND outcome IS NULL",
                (t, run_key),
            )
        for r in running:
            key = step_run_key(run_key, r["step_id"], r["attempt_no"])
            job: dict[str, Any] | None
            try:
                job = client.abort(key, reason="orchesjob-flow cancelled", grace=grace)
            except OrchesError:
                # Already finished, or never started: record what the job layer knows.
                try:
                    job = client.status(key)
                except OrchesError:
                    job = None
            if job is not None:
                with self.store.write() as db:
                    db.execute(
                        "UPDATE flow_steps SET orchesjob_status=? WHERE run_key=? AND step_id=?",
                        (json.dumps(job), run_key, r["step_id"]),
                    )
        out = self.payload(run_key)
        out["cancelled"] = True
        return out

    # -------------------------------------------------------------- repair
    def repair(
        self,
        run_key: str,
        *,
        downstream: bool = False,
        defn: FlowDefinition | None = None,
        source_name: str | None = None,
        replace: bool = False,
    ) -> list[str]:
        """Reset a FAILED/CANCELLED run's unsuccessful steps (and their dependents) to PENDING.

        Succeeded steps are kept (with ``downstream``, succeeded dependents of a
        reset step are re-run too). Attempt numbers continue, so every new
        attempt gets a new orchesjob run key. Returns the reset step ids.
        """
        t = time.time()
        with self.store.write() as db:
            run = db.execute("SELECT * FROM flow_runs WHERE run_key = ?", (run_key,)).fetchone()
            if run is None:
                raise NotFound(f"flow run not found: {run_key}", run_key=run_key)
            if run["status"] not in ("FAILED", "CANCELLED"):
                raise InvalidState(
                    f"flow run {run_key} is {run['status']}; only FAILED or CANCELLED runs can be repaired",
                    run_key=run_key,
                    status=run["status"],
                )
            if defn is not None and defn.sha256() != run["definition_sha"]:
                if not replace:
                    raise InvalidState(
                        f"the given definition differs from the snapshot of flow run {run_key}; "
                        "pass --replace-definition to repair with the new definition",
                        run_key=run_key,
                    )
                self._replace_locked(db, run_key, defn, source_name)
                run = db.execute("SELECT * FROM flow_runs WHERE run_key = ?", (run_key,)).fetchone()
            current = self.definition(run)
            rows = {
                r["step_id"]: r for r in db.execute("SELECT * FROM flow_steps WHERE run_key=?", (run_key,)).fetchall()
            }
            reset = {sid for sid, r in rows.items() if r["status"] in ("FAILED", "CANCELLED", "SKIPPED", "PENDING")}
            dependents = current.dependents()
            queue = list(reset)
            while queue:
                sid = queue.pop()
                for dep in dependents.get(sid, []):
                    if dep in reset:
                        continue
                    if rows[dep]["status"] != "SUCCEEDED" or downstream:
                        reset.add(dep)
                        queue.append(dep)
            for sid in reset:
                db.execute(
                    "UPDATE flow_steps SET status='PENDING', attempt_base=attempt_no, next_attempt_at=NULL, "
                    "started_at=NULL, finished_at=NULL, error=NULL, orchesjob_status=NULL, updated_at=? "
                    "WHERE run_key=? AND step_id=?",
                    (t, run_key, sid),
                )
            db.execute(
                "UPDATE flow_runs SET status='RUNNING', finished_at=NULL, cancelled_at=NULL, error=NULL, "
                "repair_count=repair_count+1, updated_at=? WHERE run_key=?",
                (t, run_key),
            )
        return [s.id for s in current.steps if s.id in reset]

    # --------------------------------------------------------------- lease
    def advancer(self, run_key: str) -> dict[str, Any] | None:
        row = self.store.one("SELECT * FROM flow_advancers WHERE run_key = ?", (run_key,))
        if row is None:
            return None
        return {
            "pid": row["pid"],
            "role": row["role"],
            "alive": process.is_alive(row["pid"], row["pid_start"], row["boot_id"]),
            "acquired_at": row["acquired_at"],
        }

    def acquire(self, run_key: str, role: str) -> bool:
        """Take the advancer lease of ``run_key`` (or confirm we hold it); False if a live process holds it."""
        pid, start = process.identity()
        boot = process.boot_id()
        with self.store.write() as db:
            row = db.execute("SELECT * FROM flow_advancers WHERE run_key = ?", (run_key,)).fetchone()
            previous = None
            if row is not None:
                if (row["pid"], row["pid_start"], row["boot_id"]) == (pid, start, boot):
                    return True
                if process.is_alive(row["pid"], row["pid_start"], row["boot_id"]):
                    return False
                previous = row["pid"]  # a dead advancer: take over its run
                db.execute("DELETE FROM flow_advancers WHERE run_key = ?", (run_key,))
            db.execute(
                "INSERT INTO flow_advancers (run_key, boot_id, pid, pid_start, role, acquired_at, taken_over_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_key, boot, pid, start, role, time.time(), previous),
            )
        return True

    def hand_over(self, run_key: str, pid: int, role: str) -> bool:
        """Pass the lease this process holds to the (live) process ``pid``; False if we no longer hold it."""
        me, my_start = process.identity()
        start = process.start_time(pid)
        if start is None:
            return False
        with self.store.write() as db:
            return bool(
                db.execute(
                    "UPDATE flow_advancers SET pid=?, pid_start=?, role=?, acquired_at=? "
                    "WHERE run_key=? AND pid=? AND pid_start=? AND boot_id=?",
                    (pid, start, role, time.time(), run_key, me, my_start, process.boot_id()),
                ).rowcount
            )

    def release(self, run_key: str) -> None:
        pid, start = process.identity()
        with self.store.write() as db:
            db.execute(
                "DELETE FROM flow_advancers WHERE run_key=? AND pid=? AND pid_start=? AND boot_id=?",
                (run_key, pid, start, process.boot_id()),
            )

    def holder(self, run_key: str) -> tuple[int, int, str] | None:
        """Identity of the live advancer of ``run_key``, if any."""
        row = self.store.one("SELECT * FROM flow_advancers WHERE run_key = ?", (run_key,))
        if row is None or not process.is_alive(row["pid"], row["pid_start"], row["boot_id"]):
            return None
        return row["pid"], row["pid_start"], row["boot_id"]


def step_json(flow_run_key: str, r: sqlite3.Row) -> dict[str, Any]:
    attempt = r["attempt_no"]
    # The run key of the current attempt, or of the next one while waiting to start.
    shown = attempt + 1 if attempt == 0 or r["status"] in ("PENDING", "DELAYED") else attempt
    return {
        "id": r["step_id"],
        "run_key": step_run_key(flow_run_key, r["step_id"], shown),
        "status": r["status"],
        "attempt_no": attempt,
        "max_retries": r["max_retries"],
        "next_attempt_at": r["next_attempt_at"],
        "started_at": r["started_at"],
        "finished_at": r["finished_at"],
        "error": r["error"],
        "orchesjob_status": json.loads(r["orchesjob_status"]) if r["orchesjob_status"] else None,
    }


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
            for step in defn.steps:
                r = rows[step.id]
                if r["status"] != "PENDING":
                    continue
                if any(rows[w]["status"] not in STEP_TERMINAL for w in step.waits):
                    continue
                ok = flow_expr.evaluate(step.condition, {w: rows[w]["status"] == "SUCCEEDED" for w in step.waits})
                if ok:
                    self._start(step, r, workdir)
                else:
                    self._skip(step, r)
                changed = True
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

    def _start(self, step: Step, r: sqlite3.Row, workdir: str) -> None:
        attempt = r["attempt_no"] + 1
        key = step_run_key(self.run_key, step.id, attempt)
        t = time.time()
        with self.db.write() as db:
            self._check_lease_locked(db)
            if not self._flow_running_locked(db):
                return
            cur = db.execute(
                "UPDATE flow_steps SET status='RUNNING', attempt_no=?, started_at=?, finished_at=NULL, error=NULL, "
                "orchesjob_status=NULL, next_attempt_at=NULL, updated_at=? "
                "WHERE run_key=? AND step_id=? AND status='PENDING' AND attempt_no=?",
                (attempt, t, t, self.run_key, step.id, r["attempt_no"]),
            )
            if cur.rowcount != 1:
                return
            db.execute(
                "INSERT INTO flow_attempts (run_key, step_id, attempt_no, job_run_key, started_at) VALUES (?,?,?,?,?)",
                (self.run_key, step.id, attempt, key, t),
            )
        kill_point("intent")
        self._launch(step, attempt, key, workdir)

    def _launch(self, step: Step, attempt: int, key: str, workdir: str) -> None:
        from .jobclient import start_options

        try:
            job = self.client.start(
                step.command,
                key,
                start_options(strict=step.strict, start_timeout=step.start_timeout_sec),
                cwd=step.cwd or workdir,
                env=step.env,
            )
        except OrchesError as exc:
            # A start that fails is a failed attempt (retry or FAILED), never an
            # endless re-start loop.
            self._attempt_failed(step, attempt, _prefixed("orchesjob start failed", exc), None)
            return
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
            self._launch(step, attempt, key, workdir)
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

    def run(self) -> str:
        """Advance until the flow is terminal; returns its final status."""
        while True:
            status = self.advance_once()
            if status in FLOW_TERMINAL:
                return status
            self.wait_for_progress()


def run_flow(flows: FlowStore, run_key: str, client: Any, poll_interval: float, role: str = "start") -> str:
    """Advance ``run_key`` to a terminal state, or follow the live advancer that holds it.

    If the holder dies, this loop takes over its lease and continues the run.
    """
    while True:
        if flows.run_row(run_key)["status"] in FLOW_TERMINAL:
            return flows.run_row(run_key)["status"]
        if flows.acquire(run_key, role):
            try:
                return Advancer(flows, run_key, client, poll_interval).run()
            finally:
                flows.release(run_key)
        holder = flows.holder(run_key)
        if holder is not None:
            process.wait_exit(holder[0], holder[1], holder[2], max(poll_interval, 1.0))
