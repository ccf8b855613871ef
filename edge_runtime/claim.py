"""The claim: whether a run key gets a new execution, decided and recorded in one write transaction.

Both functions run inside ``store.write()`` (``BEGIN IMMEDIATE``): the decision
reads the run key's newest attempt (or its tombstone after ``clean``) and the
insert that follows cannot interleave with another claimer's. The schema backs
the decision: ``jobs_one_active_per_run_key`` refuses a second active job and
``UNIQUE (run_key, attempt_no)`` a reused attempt number, whatever the code did.
"""

from __future__ import annotations

import json

from . import lifecycle, process
from .errors import InvalidState
from .home import log_files
from .jobview import tombstone_json
from .schema import ACTIVE_JOB_STATUSES, REUSE_ALWAYS, REUSE_FAILED_ONLY
from .store import labels_column, new_id
from .timefmt import now

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3


def decide(
    db: sqlite3.Connection, run_key: str, policy: str, retry_lost: bool = False
) -> tuple[sqlite3.Row | dict | None, str | None]:
    """Inside the write lock: (the attempt to return instead of a new one, or None; unlock reason used)."""
    latest = db.execute("SELECT * FROM jobs WHERE run_key = ? ORDER BY attempt_no DESC LIMIT 1", (run_key,)).fetchone()
    if latest is not None and latest["status"] in ACTIVE_JOB_STATUSES:
        latest = lifecycle.settle_locked(db, latest["job_id"])
        if latest["status"] in ACTIVE_JOB_STATUSES:
            return latest, None  # running, or being stopped: never a second copy beside it
    rk = db.execute("SELECT * FROM run_keys WHERE run_key = ?", (run_key,)).fetchone()
    if rk is None or rk["attempts"] == 0 or policy == REUSE_ALWAYS:
        return None, None
    # The newest attempt that launched decides (a NEVER_LAUNCHED one ran nothing, so
    # it can neither consume the key nor hide an earlier success). If `clean` removed
    # it, its outcome lives on in the run key's tombstone.
    previous: sqlite3.Row | dict | None = db.execute(
        "SELECT * FROM jobs WHERE run_key = ? AND status <> 'NEVER_LAUNCHED' ORDER BY attempt_no DESC LIMIT 1",
        (run_key,),
    ).fetchone()
    if rk["last_status"] is not None and rk["last_status"] != lifecycle.NEVER_LAUNCHED:
        tomb = tombstone_json(rk)
        if previous is None or tomb["attempt_no"] > previous["attempt_no"]:
            previous = tomb
    if previous is None:
        return None, None  # nothing ever ran: not an execution under any policy
    if policy == REUSE_FAILED_ONLY and previous["status"] not in ("SUCCEEDED", "LOST"):
        return None, None
    if policy == REUSE_FAILED_ONLY and previous["status"] == "LOST" and retry_lost:
        return None, None
    t = now()
    if rk["unlock_at"] is not None and (rk["unlock_expires_at"] is None or rk["unlock_expires_at"] > t):
        # A one-time override: consumed by this very claim.
        db.execute(
            "UPDATE run_keys SET unlock_at=NULL, unlock_expires_at=NULL, unlock_reason=NULL, "
            "updated_at=? WHERE run_key=?",
            (t, run_key),
        )
        return None, rk["unlock_reason"] or ""
    return previous, None


def insert_job(
    db: sqlite3.Connection,
    logs_dir: str,
    *,
    run_key: str,
    command: list[str],
    cwd: str | None,
    env: dict[str, str] | None,
    timeout: float | None,
    mode: str,
    reuse_policy: str,
    override: str | None = None,
    rerun_of: str | None = None,
    rerun_reason: str | None = None,
    request_id: str | None = None,
    labels: dict[str, str] | None = None,
) -> str:
    t = now()
    db.execute(
        "INSERT INTO run_keys (run_key, attempts, created_at, updated_at) VALUES (?, 1, ?, ?) "
        "ON CONFLICT (run_key) DO UPDATE SET attempts = attempts + 1, updated_at = excluded.updated_at",
        (run_key, t, t),
    )
    attempt = db.execute("SELECT attempts FROM run_keys WHERE run_key = ?", (run_key,)).fetchone()[0]
    job_id = new_id()
    claimer_pid, claimer_start = process.identity()
    try:
        db.execute(
            "INSERT INTO jobs (job_id, run_key, attempt_no, status, command, cwd, env, timeout, mode, "
            "reuse_policy, strict_override_used, override_reason, boot_id, claimer_pid, claimer_start, "
            "stdout_file, stderr_file, rerun_of_job_id, rerun_reason, started_at, updated_at, request_id, labels) "
            "VALUES (?, ?, ?, 'STARTING', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                run_key,
                attempt,
                json.dumps(command),
                cwd,
                json.dumps(env) if env else None,
                timeout,
                mode,
                reuse_policy,
                int(override is not None),
                override or None,
                process.boot_id(),
                claimer_pid,
                claimer_start,
                *log_files(logs_dir, job_id),
                rerun_of,
                rerun_reason,
                t,
                t,
                request_id,
                labels_column(labels),
            ),
        )
    except sqlite3.IntegrityError as exc:
        # Only reachable if the decision logic were wrong: the schema refuses
        # a second active execution for the key.
        raise InvalidState(f"run key {run_key} already has an active job ({exc})", run_key=run_key) from None
    return job_id
