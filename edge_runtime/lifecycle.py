"""The life of one job: its states, the transitions between them, and who may make each.

::

                 claim (one write txn,                supervisor records the command's
                 jobs_one_active_per_run_key)         identity, then opens its gate
      (none) ─────────────────────────────▶ STARTING ─────────────────────────────────▶ RUNNING
                                               │                                         │
                     gate never opened:        │ abort/cancel                            │ main command exits:
                     claimer and supervisor    │ before launch                           │ outcome made durable,
                     provably gone             ▼                                         │ rest of the tree stopped
                        NEVER_LAUNCHED    ABORTED / CANCELLED                            ▼
                                                                          SUCCEEDED / FAILED
             abort / cancel                         TERM to the tree once,
      RUNNING ─────────────▶ ABORTING / CANCELLING ─────grace, KILL, tree gone────▶ ABORTED / CANCELLED
                             (active: a start returns   (the command finished first: its real
                              it, never a new attempt)   outcome is kept, ``stop_too_late``)

      RUNNING / ABORTING / CANCELLING, supervisor and whole tree gone:
            durable outcome record present ──▶ that outcome
            no record                      ──▶ LOST (outcome unknown: not retried unless asked)

What each status promises:

* STARTING, RUNNING, ABORTING, CANCELLING are *active*: something of the job may
  run. At most one active job per run key (a unique partial index), so a start,
  a resend or a retry gets the active job back.
* Every other status is *terminal*: no process of the job's tree is alive.
  SUCCEEDED/FAILED are the command's own outcome (``exit_code``); ABORTED and
  CANCELLED mean a stop requested by a user ended it. LOST means the outcome is
  unknown: the command ran, and its supervisor vanished with it unrecorded.
  NEVER_LAUNCHED means the command provably never ran (its gate never opened),
  so any reuse policy may start it again.

Who may make each transition:

========================  =================================================
claim → STARTING          ``start``/``rerun`` (claim.py), inside one write txn
STARTING → RUNNING        the supervisor, only while the job is STARTING
→ ABORTING/CANCELLING     ``abort``/``cancel`` (only if it may signal the tree)
STARTING → ABORTED/...    ``abort``/``cancel``, when no command was released
→ terminal outcome        the supervisor, once its whole tree is gone
→ NEVER_LAUNCHED / LOST   any reader, under the write lock, once every recorded
                          process and every marked process is provably gone
========================  =================================================

The supervisor makes its outcome durable before it waits for anything: when the
whole tree ended with the main command and the write lock is free, by committing
it at once; otherwise by writing it to an fsynced record next to the logs, then
retrying the database write until it lands. A reader settling a job whose
supervisor is gone consults that record first, so an outcome is never lost to an
OOM kill or a locked database, and never guessed.
"""

from __future__ import annotations

import json
import os
import time

from . import process, proctree

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from typing import Any

STARTING, RUNNING, ABORTING, CANCELLING = "STARTING", "RUNNING", "ABORTING", "CANCELLING"
SUCCEEDED, FAILED, ABORTED, CANCELLED = "SUCCEEDED", "FAILED", "ABORTED", "CANCELLED"
LOST, NEVER_LAUNCHED = "LOST", "NEVER_LAUNCHED"

ACTIVE = (STARTING, RUNNING, ABORTING, CANCELLING)
TERMINAL = (SUCCEEDED, FAILED, ABORTED, CANCELLED, LOST, NEVER_LAUNCHED)
# The stopping state of each stop, and the terminal state it ends in.
STOPPING = {ABORTED: ABORTING, CANCELLED: CANCELLING}
STOPPED = {ABORTING: ABORTED, CANCELLING: CANCELLED}

# After the main command exits (or --timeout fires), how long the rest of the
# tree gets between its TERM and the KILL.
LEFTOVER_GRACE = 5.0
# How long the supervisor of a job started from this job's tree gets, after our
# own grace, to stop its tree and record the outcome before it is killed too.
NESTED_STOP_GRACE = LEFTOVER_GRACE + 5.0


# ------------------------------------------------------------- outcome record
def outcome_path(row: sqlite3.Row | dict) -> str:
    """``<logs>/<job id>.outcome``: the supervisor's durable record of how the job ended."""
    return os.path.join(os.path.dirname(row["stdout_file"]), row["job_id"] + ".outcome")


def write_outcome(path: str, outcome: dict[str, Any]) -> None:
    """Write ``outcome`` so that it survives a crash: temp file, fsync, rename, fsync the directory."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(outcome).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_outcome(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None  # absent, or torn before the rename (then it never counted)
    if not isinstance(data, dict) or data.get("status") not in TERMINAL:
        return None
    return data


def discard_outcome(path: str) -> None:
    """Once the database holds the outcome the record is redundant."""
    for p in (path, f"{path}.tmp"):
        try:
            os.unlink(p)
        except OSError:
            pass


def decide_outcome(
    exit_code: int,
    *,
    launch_error: str | None = None,
    stopped_as: str | None = None,
    timeout: float | None = None,
) -> tuple[str, str | None]:
    """(status, error) of a job whose main command exited with ``exit_code``.

    ``stopped_as`` is the terminal status of a stop whose TERM reached the tree
    *before* the command exited; ``timeout`` is set when the host-side limit did.
    A command that exits on its own keeps its own outcome, even if a stop was
    requested a moment later.
    """
    if launch_error is not None:
        return FAILED, f"failed to launch: {launch_error}"
    if stopped_as is not None:
        return stopped_as, None
    if timeout is not None:
        return FAILED, f"timed out after {timeout:g} s (host-side --timeout)"
    return (SUCCEEDED, None) if exit_code == 0 else (FAILED, None)


# ------------------------------------------------------------------ the tree
def tree_pids(row: sqlite3.Row | dict) -> list[int]:
    """Live processes of the job when its supervisor is gone (by marker and by the command's group).

    The supervisor of a job started from this tree is counted, and so are that
    job's own processes (they carry its id, not ours): this job is not over
    while any of them runs.
    """
    own, nested = _orphaned_tree(row)
    return own + [p for pids in nested.values() for p in pids]


def _orphaned_tree(row: sqlite3.Row | dict) -> tuple[list[int], dict[int, list[int]]]:
    """(our processes, {nested supervisor: that job's processes}) of a job whose supervisor is gone."""
    if row["boot_id"] != process.boot_id():
        return [], {}  # a reboot ended everything
    pids = proctree.marked(row["job_id"])
    if process.is_alive(row["target_pid"], row["target_start"], row["boot_id"]):
        # The command's own group, also a member that scrubbed its environment. Only while
        # its leader is provably ours: once the leader is gone its pid, and with it the
        # group id, may be reused by a stranger's group, which must never be taken for the job.
        pids += [p for p in proctree.group_members(row["target_pid"]) if p not in pids]
    nested = proctree.supervisors_among(pids)
    own = [p for p in pids if p not in nested]
    # A live supervisor is its job's child subreaper: everything of that job is below it.
    return own, {sup: [sup, *proctree.Snapshot(sup).pids] for sup in nested}


def supervisor_alive(row: sqlite3.Row | dict) -> bool:
    return process.is_alive(row["worker_pid"], row["worker_start"], row["boot_id"])


def settlement(row: sqlite3.Row | dict) -> tuple[str, int | None, str | None] | None:
    """How an active job whose processes are all gone must be recorded; None while it may still run.

    Cheap on the common path: a live supervisor answers it with one /proc read.
    """
    if row["status"] not in ACTIVE or supervisor_alive(row):
        return None
    if row["target_pid"] is None:
        # The gate opens only after RUNNING (with the target) is committed: the command never ran.
        if row["worker_pid"] is None:
            if process.is_alive(row["claimer_pid"], row["claimer_start"], row["boot_id"]):
                return None  # start still in progress
            return NEVER_LAUNCHED, None, "start was interrupted before the supervisor launched"
        return NEVER_LAUNCHED, None, "the supervisor exited before releasing the command"
    if tree_pids(row):
        return None  # supervisor gone, command tree still running: stay active
    record = read_outcome(outcome_path(row))
    if record is not None:
        return record["status"], record.get("exit_code"), record.get("error")  # (the TERM/KILL detail is lost)
    if row["status"] in STOPPED:
        return LOST, None, "the supervisor vanished during the stop; the command's outcome was never recorded"
    return LOST, None, "the supervisor and the command exited without recording a result"


# ------------------------------------------------------------- transitions
# Each takes a connection inside a write transaction (``store.write()``).


def _get(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    return db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()


def settle_locked(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    """Re-read the job under the write lock and record its settlement, if it has one.

    Re-reading matters: the supervisor may have just recorded the real outcome,
    which must never be overwritten.
    """
    row = _get(db, job_id)
    decided = settlement(row)
    if decided is not None:
        finish(db, job_id, *decided)
        row = _get(db, job_id)
        if row["status"] == NEVER_LAUNCHED:
            _return_unused_unlock(db, row)
    return row


def _return_unused_unlock(db: sqlite3.Connection, row: sqlite3.Row) -> None:
    """A one-time ``unlock`` consumed by a claim whose command never ran is granted again."""
    if row["strict_override_used"]:
        t = time.time()
        db.execute(
            "UPDATE run_keys SET unlock_at=?, unlock_reason=?, updated_at=? WHERE run_key=? AND unlock_at IS NULL",
            (t, row["override_reason"], t, row["run_key"]),
        )


def finish(
    db: sqlite3.Connection,
    job_id: str,
    status: str,
    exit_code: int | None,
    error: str | None,
    killed: bool = False,
) -> bool:
    """Active → terminal (never overwrites an outcome already recorded; LOST can be corrected).

    ``killed``: part of the tree outlived its TERM and needed SIGKILL.
    """
    t = time.time()
    return bool(
        db.execute(
            "UPDATE jobs SET status=?, exit_code=COALESCE(?, exit_code), error=COALESCE(?, error), "
            "tree_killed=MAX(tree_killed, ?), finished_at=?, updated_at=? "
            "WHERE job_id=? AND status IN ('STARTING','RUNNING','ABORTING','CANCELLING','LOST')",
            (status, exit_code, error, int(killed), t, t, job_id),
        ).rowcount
    )


def record_supervisor(db: sqlite3.Connection, job_id: str, pid: int, start: int) -> bool:
    """The supervisor claims the job: only once, and only while it is STARTING."""
    return bool(
        db.execute(
            "UPDATE jobs SET worker_pid=?, worker_start=?, updated_at=? "
            "WHERE job_id=? AND status='STARTING' AND worker_pid IS NULL",
            (pid, start, time.time(), job_id),
        ).rowcount
    )


def record_running(db: sqlite3.Connection, job_id: str, pid: int, start: int | None) -> bool:
    """STARTING → RUNNING with the command's identity; False if it was stopped first (gate stays shut)."""
    return bool(
        db.execute(
            "UPDATE jobs SET target_pid=?, target_start=?, status='RUNNING', updated_at=? "
            "WHERE job_id=? AND status='STARTING'",
            (pid, start, time.time(), job_id),
        ).rowcount
    )


def abandon(db: sqlite3.Connection, job_id: str, reason: str) -> None:
    """A claimer that could not get a supervisor going: the command never ran."""
    t = time.time()
    db.execute(
        "UPDATE jobs SET status='NEVER_LAUNCHED', error=?, finished_at=?, updated_at=? "
        "WHERE job_id=? AND status='STARTING' AND worker_pid IS NULL",
        (reason, t, t, job_id),
    )
    row = _get(db, job_id)
    if row is not None and row["status"] == NEVER_LAUNCHED:
        _return_unused_unlock(db, row)


def request_stop(db: sqlite3.Connection, row: sqlite3.Row, final: str, reason: str | None, grace: float) -> bool:
    """Record a stop; True if the supervisor must be told (a released command is running).

    A job whose command was never released is stopped right here: its gate can
    no longer open, because the supervisor only opens it while STARTING.
    A stop already in progress is left as it is (a resend is harmless).
    """
    t = time.time()
    if row["status"] == STARTING and row["target_pid"] is None:
        db.execute(
            "UPDATE jobs SET status=?, abort_reason=?, aborted_at=?, stop_requested_at=?, finished_at=?, "
            "updated_at=? WHERE job_id=?",
            (final, reason, t, t, t, t, row["job_id"]),
        )
        return False
    if row["status"] == RUNNING:
        db.execute(
            "UPDATE jobs SET status=?, abort_reason=?, aborted_at=?, stop_requested_at=?, stop_grace=?, "
            "updated_at=? WHERE job_id=?",
            (STOPPING[final], reason, t, t, grace, t, row["job_id"]),
        )
    return True


# --------------------------------------------------- stopping without a supervisor
def advance_orphaned_stop(db: sqlite3.Connection, row: sqlite3.Row) -> bool:
    """One non-blocking step of stopping a tree whose supervisor is gone; True if it signalled anything.

    Two trees are stopped this way: one a stop was recorded for, and the
    leftovers of a main command whose outcome record exists (the supervisor died
    between the record and stopping them). Any caller may take the step — the
    ``abort`` that finds the supervisor dead, a resent stop, every later
    ``status`` — so a stop is carried out even if the process that recorded it
    died. Inside a write transaction:

    * the first caller claims the TERM (``orphan_term_at``), so each process
      gets one. If the main command is still running at that moment, the stop
      ends the job: that is written to the outcome record first;
    * once the grace (counted from that TERM) is over, every caller KILLs what
      is left, including whole process groups.
    """
    if row["status"] not in ACTIVE or row["target_pid"] is None or supervisor_alive(row):
        return False
    stopping = row["status"] in STOPPED
    record = read_outcome(outcome_path(row))
    if not stopping and record is None:
        return False  # the command may still be running on its own: nobody asked to stop it
    own, nested = _orphaned_tree(row)
    if not own and not nested:
        return False
    t = time.time()
    if row["orphan_term_at"] is None:
        db.execute("UPDATE jobs SET orphan_term_at=?, updated_at=? WHERE job_id=?", (t, t, row["job_id"]))
        if record is None and process.is_alive(row["target_pid"], row["target_start"], row["boot_id"]):
            try:
                write_outcome(outcome_path(row), {"status": STOPPED[row["status"]], "exit_code": None, "error": None})
            except OSError:
                pass  # (logs dir full or read-only) the stop goes on; the outcome will read LOST
        # A nested job's supervisor gets the TERM, not that job's processes: it stops its own tree.
        proctree.send(own + list(nested), 15)
        return True
    grace = row["stop_grace"] if stopping and row["stop_grace"] is not None else LEFTOVER_GRACE
    overdue = t - (row["orphan_term_at"] + grace)
    if overdue < 0:
        return False
    doomed = own + ([p for pids in nested.values() for p in pids] if overdue >= NESTED_STOP_GRACE else [])
    if not doomed:
        return False
    proctree.kill_now(doomed, proctree.groups_of(doomed))
    db.execute("UPDATE jobs SET tree_killed=1 WHERE job_id=?", (row["job_id"],))
    return True


def may_stop(row: sqlite3.Row) -> str | None:
    """Why this user cannot stop the job's processes (another user's job), or None."""
    boot = row["boot_id"]
    for pid, start in ((row["worker_pid"], row["worker_start"]), (row["target_pid"], row["target_start"])):
        if process.is_alive(pid, start, boot) and not proctree.may_signal(pid):
            return f"process {pid} of job {row['job_id']} belongs to another user; this user cannot stop it"
    return None
