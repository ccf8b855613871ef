"""Flow runs in SQLite: creation against a definition snapshot, status payloads,
listing, cancel, repair, and the advancer lease — everything about a run's
stored state. The loop that advances a run is ``flow_engine.py``; the step state
machine and the rules that make it exact after crashes are described there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from . import process
from .errors import InvalidState, NotFound, OrchesError, UsageError
from .schema import FLOW_MIGRATIONS, FLOW_TERMINAL
from .store import Cleaning, Store, has_labels, labels_column, stored_labels


def step_run_key(flow_run_key: str, step_id: str, attempt: int) -> str:
    """The orchesjob run key of one attempt of a step: ``<flow run key>:<step id>:<n>``."""
    return f"{flow_run_key}:{step_id}:{attempt}"


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .flow_definition import FlowDefinition


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
            "labels": stored_labels(run["labels"]),
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
        return [
            {"run_key": run["run_key"], "flow_id": run["flow_id"], "status": run["status"],
             "started_at": run["created_at"], "finished_at": run["finished_at"],
             "labels": stored_labels(run["labels"])}
            for run in rows
            if has_labels(run["labels"], labels)
        ]  # fmt: skip

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
                        labels_column(labels),
                    ),
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
    ) -> FlowsCleaning:
        """Delete finished flow runs (SUCCEEDED/FAILED/CANCELLED) by finish time, with their steps,
        as the result is iterated.

        Unfinished runs are never deleted. Rows go in batches of short write
        transactions; the detached advancer's logs of a deleted run go too. The
        jobs of the steps are orchesjob's (``orchesjob clean``).
        """
        if before is None and after is None and not all_ and run_key is None:
            raise UsageError("choose what to clean: --all, --run-key, --before, --older-than or --after")
        if all_ and (before is not None or after is not None):
            raise UsageError("--all cannot be combined with --before/--older-than/--after")
        return FlowsCleaning(self.store, before=before, after=after, run_key=run_key, dry_run=dry_run)

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
                out["already_ended"] = True
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
        out["already_ended"] = False
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


class FlowsCleaning(Cleaning):
    """``orchesjob-flow clean``: runs by finish time; their steps go by cascade, then the advancer's logs."""

    table = "flow_runs"
    columns = "run_key, flow_id, status, finished_at"
    time_column = "finished_at"
    statuses = FLOW_TERMINAL
    list_key = "runs"
    fields = ("deleted", "errors", "dry_run", "matched")

    def describe(self, row: sqlite3.Row) -> dict[str, Any]:
        from .timefmt import with_iso

        item = {"run_key": row["run_key"], "flow_id": row["flow_id"], "status": row["status"]}
        with_iso(item, "finished_at", row["finished_at"])
        return item

    def deleted_files(self, rows: list[sqlite3.Row]) -> int:
        from .cli.flow import safe_key
        from .home import log_files, logs_dir

        directory = logs_dir(os.path.dirname(self.store.path))
        return self.remove(
            path for r in rows for path in log_files(directory, f"orchesjob-flow-{safe_key(r['run_key'])}", ".log")
        )
