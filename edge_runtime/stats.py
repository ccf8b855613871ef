"""``orchesjob stats``: what an operator asks of a host, answered from its state home.

Read-only: nothing is settled, signalled or migrated here (a job whose supervisor
is gone is *reported* as stuck; the next ``status`` of it settles it). The
reserver's and the flow runner's databases, when they exist in the same home,
are opened read-only and never created.

"Stuck" is one of, for an active job:

* ``supervisor_gone``: RUNNING/ABORTING/CANCELLING but its supervisor process
  is not alive (the command may run on unsupervised, or it awaits settlement);
* ``stop_overdue``: a stop was requested longer ago than its grace period plus
  the margin an ``abort`` waits (``STOP_WAIT_MARGIN``), and it is still stopping;
* ``start_stalled``: STARTING for more than ``START_STALL_S`` seconds (a start
  records its supervisor within 30 seconds, or settles the job itself).
"""

from __future__ import annotations

import os
import sqlite3
import time

from . import lifecycle
from .home import flow_db_path, reserver_db_path
from .jobs import STOP_WAIT_MARGIN
from .schema import ACTIVE_JOB_STATUSES, TERMINAL_JOB_STATUSES
from .timefmt import with_iso

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .jobs import Jobs

START_STALL_S = 60.0
FAILURE_STATUSES = ("FAILED", "LOST")
MAX_LISTED = 20  # rows per list (failing run keys, LOST and stuck jobs): the counts say how many in all


def collect(jobs: Jobs, hours: float) -> dict[str, Any]:
    t = time.time()
    since = t - hours * 3600
    db = jobs.store
    by_status = {s: 0 for s in ACTIVE_JOB_STATUSES + TERMINAL_JOB_STATUSES}
    for row in db.all("SELECT status, count(*) AS n FROM jobs GROUP BY status"):
        by_status[row["status"]] = row["n"]
    marks = ",".join("?" * len(ACTIVE_JOB_STATUSES))
    active = db.all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY started_at", ACTIVE_JOB_STATUSES)
    out: dict[str, Any] = {"hours": hours}
    with_iso(out, "generated_at", t)
    with_iso(out, "since", since)
    out["jobs_by_status"] = by_status
    out["running_now"] = sum(1 for r in active if r["status"] != lifecycle.STARTING)
    out["starting_now"] = len(active) - out["running_now"]
    out["oldest_running"] = _job_brief(active[0], t) if active else None
    stuck = [dict(_job_brief(r, t), reason=why) for r in active if (why := stuck_reason(r, t))]
    out["stuck_count"] = len(stuck)
    out["stuck"] = stuck[:MAX_LISTED]
    finished = {s: 0 for s in TERMINAL_JOB_STATUSES}
    for row in db.all("SELECT status, count(*) AS n FROM jobs WHERE finished_at >= ? GROUP BY status", (since,)):
        finished[row["status"]] = row["n"]
    out["finished_in_window"] = finished
    fmarks = ",".join("?" * len(FAILURE_STATUSES))
    # SQLite fills the bare columns of an aggregate with max() from the row holding the maximum: the newest failure.
    failing = db.all(
        f"SELECT run_key, count(*) AS failures, max(finished_at) AS last_finished_at, job_id, status, exit_code, "
        f"error FROM jobs WHERE finished_at >= ? AND status IN ({fmarks}) GROUP BY run_key "
        "ORDER BY failures DESC, last_finished_at DESC",
        (since, *FAILURE_STATUSES),
    )
    out["failing_run_keys_count"] = len(failing)
    out["failures_by_run_key"] = [_failure(r) for r in failing[:MAX_LISTED]]
    lost = db.all(
        "SELECT * FROM jobs WHERE finished_at >= ? AND status = 'LOST' ORDER BY finished_at DESC LIMIT ?",
        (since, MAX_LISTED),
    )
    out["lost"] = [dict(_job_brief(r, t), error=r["error"]) for r in lost]
    out["logs"] = disk_usage(jobs.logs_dir)
    out["reservations"] = reservation_stats(reserver_db_path(), t)
    out["flow_runs"] = flow_stats(flow_db_path())
    return out


def stuck_reason(row: sqlite3.Row, t: float) -> str | None:
    status = row["status"]
    if status == lifecycle.STARTING:
        return "start_stalled" if t - row["started_at"] > START_STALL_S else None
    if not lifecycle.supervisor_alive(row):
        return "supervisor_gone"
    if status in lifecycle.STOPPED and row["stop_requested_at"] is not None:
        grace = row["stop_grace"] if row["stop_grace"] is not None else 0.0
        if t > row["stop_requested_at"] + grace + STOP_WAIT_MARGIN:
            return "stop_overdue"
    return None


def _job_brief(row: sqlite3.Row, t: float) -> dict[str, Any]:
    out: dict[str, Any] = {"job_id": row["job_id"], "run_key": row["run_key"], "status": row["status"]}
    with_iso(out, "started_at", row["started_at"])
    out["age_seconds"] = round(t - row["started_at"], 3)
    return out


def _failure(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {"run_key": row["run_key"], "failures": row["failures"]}
    out["last"] = {"job_id": row["job_id"], "status": row["status"], "exit_code": row["exit_code"],
                   "error": row["error"]}  # fmt: skip
    with_iso(out["last"], "finished_at", row["last_finished_at"])
    return out


def disk_usage(directory: str) -> dict[str, Any]:
    """Files and bytes on disk (allocated blocks) under the logs directory (job and detached flow logs)."""
    files = used = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # cleaned meanwhile
        if entry.is_file(follow_symlinks=False):
            files += 1
            used += st.st_blocks * 512
    return {"dir": directory, "files": files, "bytes": used}


def _read_only(path: str) -> sqlite3.Connection | None:
    """The database at ``path`` opened read-only, or None when there is none (never created here)."""
    if not os.path.exists(path):
        return None
    from urllib.parse import quote

    conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


def reservation_stats(path: str, t: float) -> dict[str, Any] | None:
    """Pending reservations and how late the due ones are; None without a reserver database."""
    conn = _read_only(path)
    if conn is None:
        return None
    try:
        counts = {r["status"]: r["n"] for r in conn.execute(
            "SELECT status, count(*) AS n FROM reservations GROUP BY status")}  # fmt: skip
        # Due: RESERVED whose not_before has passed (or never had one); late by that long.
        due = conn.execute(
            "SELECT count(*) AS n, min(COALESCE(not_before, created_at)) AS since FROM reservations "
            "WHERE status = 'RESERVED' AND COALESCE(not_before, created_at) <= ?",
            (t,),
        ).fetchone()
        oldest = conn.execute(
            "SELECT reservation_id, run_key, COALESCE(not_before, created_at) AS due_at FROM reservations "
            "WHERE status = 'RESERVED' AND COALESCE(not_before, created_at) <= ? ORDER BY due_at LIMIT 1",
            (t,),
        ).fetchone()
        dispatching = conn.execute(
            "SELECT min(dispatch_claimed_at) AS since FROM reservations WHERE status = 'DISPATCHING'"
        ).fetchone()
    except sqlite3.Error as exc:
        return {"db": path, "error": str(exc)}
    finally:
        conn.close()
    out: dict[str, Any] = {"db": path, "by_status": counts}
    out["pending"] = counts.get("RESERVED", 0) + counts.get("DISPATCHING", 0)
    out["due_not_dispatched"] = due["n"]
    out["max_lateness_seconds"] = round(t - due["since"], 3) if due["since"] is not None else None
    out["most_late"] = dict(oldest) if oldest is not None else None
    out["oldest_dispatching_seconds"] = round(t - dispatching["since"], 3) if dispatching["since"] else None
    return out


def flow_stats(path: str) -> dict[str, Any] | None:
    """Flow runs by status; None without a flow database."""
    conn = _read_only(path)
    if conn is None:
        return None
    try:
        counts = {r["status"]: r["n"] for r in conn.execute(
            "SELECT status, count(*) AS n FROM flow_runs GROUP BY status")}  # fmt: skip
    except sqlite3.Error as exc:
        return {"db": path, "error": str(exc)}
    finally:
        conn.close()
    return {"db": path, "by_status": counts, "active": counts.get("PENDING", 0) + counts.get("RUNNING", 0)}


def render_stats(stats: dict[str, Any]) -> str:
    """The table view of ``collect``'s result."""
    from .table import fmt_bytes, fmt_duration, render, render_fields

    oldest = stats["oldest_running"]
    logs = stats["logs"]
    summary = [
        ("Window", f"last {stats['hours']:g} h (since {stats['since_iso']})"),
        ("Running now", stats["running_now"]),
        ("Starting now", stats["starting_now"]),
        (
            "Oldest running",
            f"{oldest['run_key']} ({oldest['job_id']}), {fmt_duration(oldest['age_seconds'])}" if oldest else None,
        ),  # fmt: skip
        ("Stuck", stats["stuck_count"]),
        ("Failing run keys", stats["failing_run_keys_count"]),
        ("LOST in window", len(stats["lost"])),
        ("Logs", f"{fmt_bytes(logs['bytes'])} in {logs['files']} files ({logs['dir']})"),
    ]
    res = stats["reservations"]
    if res is not None and "error" not in res:
        late = res["max_lateness_seconds"]
        summary.append(("Reservations", f"{res['pending']} pending, {res['due_not_dispatched']} due and not "
                        f"dispatched{f' (most late {fmt_duration(late)})' if late is not None else ''}"))  # fmt: skip
    flows = stats["flow_runs"]
    if flows is not None and "error" not in flows:
        summary.append(("Flow runs active", flows["active"]))
    text = render_fields(summary)
    counts = [(s, n) for s, n in stats["jobs_by_status"].items() if n]
    text += "\nJobs by status\n" + render(("Status", "Jobs", "Finished in window"), [
        (s, n, stats["finished_in_window"].get(s, "")) for s, n in counts])  # fmt: skip
    if stats["stuck"]:
        text += "\nStuck\n" + render(("Job id", "Run key", "Status", "Age", "Reason"), [
            (j["job_id"], j["run_key"], j["status"], fmt_duration(j["age_seconds"]), j["reason"])
            for j in stats["stuck"]])  # fmt: skip
    if stats["failures_by_run_key"]:
        text += "\nFailures by run key\n" + render(
            ("Run key", "Failures", "Last status", "Exit", "Last job id", "Error"),
            [(f["run_key"], f["failures"], f["last"]["status"], f["last"]["exit_code"], f["last"]["job_id"],
              f["last"]["error"]) for f in stats["failures_by_run_key"]],
            caps={"Error": 60},
        )  # fmt: skip
    return text
