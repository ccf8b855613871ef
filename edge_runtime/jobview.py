"""What a job looks like from outside: its JSON, the log chunks a poller reads, batch poll input."""

from __future__ import annotations

import json
import os

from .errors import UsageError
from .schema import REUSE_NEVER
from .store import stored_labels
from .timefmt import with_iso

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3
    from typing import Any

    from .errors import OrchesError

DEFAULT_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024


def job_json(row: sqlite3.Row) -> dict[str, Any]:
    """The job object printed by every command (spec field names first)."""
    target = row["target_pid"]
    out: dict[str, Any] = {
        "job_id": row["job_id"],
        "run_key": row["run_key"],
        "command": json.loads(row["command"]),
        "pid": target if target is not None else row["worker_pid"],
        "pid_kind": "target" if target is not None else ("worker" if row["worker_pid"] is not None else None),
        "worker_pid": row["worker_pid"],
        "target_pid": target,
        "status": row["status"],
        "exit_code": row["exit_code"],
        "error": row["error"],
        "stdout_file": row["stdout_file"],
        "stderr_file": row["stderr_file"],
        "attempt_no": row["attempt_no"],
        "reuse_policy": row["reuse_policy"],
        "strict": row["reuse_policy"] == REUSE_NEVER,
        "strict_override_used": bool(row["strict_override_used"]),
        "rerun_of_job_id": row["rerun_of_job_id"],
        "rerun_reason": row["rerun_reason"],
        "abort_reason": row["abort_reason"],
        "cwd": row["cwd"],
        "env_keys": sorted(json.loads(row["env"])) if row["env"] else [],
        "labels": stored_labels(row["labels"]),
        "timeout": row["timeout"],
        # A stop was requested but the command had already finished on its own: its outcome stands.
        "stop_too_late": row["stop_requested_at"] is not None and row["status"] in ("SUCCEEDED", "FAILED"),
    }
    for name in ("started_at", "finished_at", "updated_at", "aborted_at", "stop_requested_at"):
        with_iso(out, name, row[name])
    return out


def start_reply(job: dict[str, Any], *, accepted: bool, sync: bool, strict: bool) -> dict[str, Any]:
    """The job JSON led by the spec's start fields (accepted, existing, mode, ...).

    ``strict`` and ``strict_override_used`` describe the call, as in the public
    release: a strict start that returns an older non-strict attempt still says
    ``strict: true``, and a start that returns an existing attempt consumed no
    override (``false``, even when that attempt was itself started with one;
    ``status`` keeps the attempt's own value).
    """
    out: dict[str, Any] = {
        "accepted": accepted,
        "existing": not accepted,
        "mode": "sync" if sync else "async",
        "strict": strict,
        "strict_override_used": bool(job.get("strict_override_used", False)) and accepted,
    }
    out.update((k, v) for k, v in job.items() if k not in ("strict", "strict_override_used"))
    return out


def tombstone_json(rk: sqlite3.Row) -> dict[str, Any]:
    """What is left of a run key whose job rows were removed by ``clean``."""
    out: dict[str, Any] = {
        "job_id": rk["last_job_id"],
        "run_key": rk["run_key"],
        "status": rk["last_status"],
        "exit_code": rk["last_exit_code"],
        "attempt_no": rk["last_attempt_no"] if rk["last_attempt_no"] is not None else rk["attempts"],
        "purged": True,
    }
    with_iso(out, "finished_at", rk["last_finished_at"])
    return out


def read_chunk(path: str, offset: int, max_bytes: int) -> dict[str, Any]:
    """The next chunk of a log file from a byte ``offset``.

    ``next_offset`` is where the caller continues. The chunk never ends inside
    a UTF-8 sequence unless it cannot be decoded anyway; text that is valid
    UTF-8 is returned as ``encoding: utf-8``, anything else as base64, so
    arbitrary bytes survive JSON unchanged.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            data = f.read(max_bytes)
    except FileNotFoundError:
        size, data = 0, b""
    # Do not cut a multi-byte UTF-8 character in two: back off to its start.
    if len(data) == max_bytes:
        for back in range(1, 4):
            if len(data) > back and (data[-back] & 0xC0) == 0xC0:
                need = 2 if data[-back] < 0xE0 else 3 if data[-back] < 0xF0 else 4
                if need > back:
                    data = data[:-back]
                break
            if (data[-back] & 0xC0) != 0x80:
                break
    chunk: dict[str, Any] = {"offset": offset, "next_offset": offset + len(data), "size": size}
    try:
        chunk["encoding"], chunk["data"] = "utf-8", data.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        chunk["encoding"], chunk["data"] = "base64", base64.b64encode(data).decode("ascii")
    return chunk


def add_log_chunks(
    job: dict[str, Any],
    stdout_offset: int | None = None,
    stderr_offset: int | None = None,
    max_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """Attach ``stdout_chunk``/``stderr_chunk`` for the offsets given (a poller's one call per poll)."""
    if not 1 <= max_bytes <= MAX_CHUNK_BYTES:
        raise UsageError(f"max_bytes must be between 1 and {MAX_CHUNK_BYTES}")
    for stream, offset in (("stdout", stdout_offset), ("stderr", stderr_offset)):
        if offset is None:
            continue
        if not 0 <= offset < 1 << 62:  # also keeps seek() within a file offset
            raise UsageError(f"{stream} offset must be between 0 and 2**62")
        job[stream + "_chunk"] = read_chunk(job[stream + "_file"], offset, max_bytes)
    return job


def failed_lookup(selector: dict[str, Any], exc: OrchesError) -> dict[str, Any]:
    """The entry of a multi-job status for a lookup that failed: callers test ``status is None``."""
    return {**selector, "status": None, "error": exc.message, "error_type": exc.kind}


POLL_SELECTORS = ("run_key", "job_id")
POLL_FIELDS = (*POLL_SELECTORS, "stdout_offset", "stderr_offset", "max_bytes")


def parse_poll_requests(data: Any) -> list[dict[str, Any]]:
    """Validate `status --batch` input: a JSON array of {run_key|job_id, stdout_offset, stderr_offset, max_bytes}."""
    if not isinstance(data, list):
        raise UsageError("--batch expects a JSON array of objects")
    for i, req in enumerate(data):
        if not isinstance(req, dict):
            raise UsageError(f"--batch entry {i} is not an object")
        unknown = sorted(set(req) - set(POLL_FIELDS))
        if unknown:
            raise UsageError(f"--batch entry {i}: unknown field(s) {unknown}; allowed: {list(POLL_FIELDS)}")
        selectors = [k for k in POLL_SELECTORS if req.get(k) is not None]
        if len(selectors) != 1 or not isinstance(req[selectors[0]], str):
            raise UsageError(f"--batch entry {i}: give exactly one of run_key or job_id, as a string")
        for field in POLL_FIELDS[2:]:
            value = req.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise UsageError(f"--batch entry {i}: {field} must be an integer")
    return data


# `--exit-code`: a finished job without an exit code of its own. The command's own
# codes are 0-255 (a signal N reads 128 + N, as in a shell); these two follow `timeout`'s
# and `env`'s convention of codes a wrapper reserves for itself.
EXIT_LOST = 124  # LOST: the outcome is unknown, the command may have completed
EXIT_NO_OUTCOME = 125  # ABORTED, CANCELLED (stopped on request) or NEVER_LAUNCHED (never ran)


def exit_status(job: dict[str, Any]) -> int:
    """The process exit code that passes a finished job's outcome on (`start --sync --exit-code`)."""
    status, code = job["status"], job["exit_code"]
    if status == "SUCCEEDED":
        return 0
    if status == "LOST":
        return EXIT_LOST
    if status == "FAILED" and code is not None:
        return 128 - code if code < 0 else min(code, 255)
    if status == "FAILED":
        return 1  # recorded without an exit code (an older outcome record): a failure all the same
    return EXIT_NO_OUTCOME


# ------------------------------------------------------------------ tables
JOB_COLUMNS = ("Job id", "Run key", "#", "Status", "Exit", "Started", "Elapsed", "Labels", "Error")


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    """Several jobs (`list`, `status --running/--all`, several selectors), one row each."""
    from .table import elapsed, fmt_time, render

    rows = [
        (
            j.get("job_id"),
            j.get("run_key"),
            j.get("attempt_no"),
            j.get("status") or "NOT FOUND",
            j.get("exit_code"),
            fmt_time(j.get("started_at")),
            elapsed(j.get("started_at"), j.get("finished_at")),
            ",".join(f"{k}={v}" for k, v in (j.get("labels") or {}).items()),
            j.get("error"),
        )
        for j in jobs
    ]
    return render(JOB_COLUMNS, rows, caps={"Labels": 60, "Error": 60})


def job_fields(job: dict[str, Any]) -> str:
    """One job as ``name: value`` lines (`status --format table`)."""
    import shlex

    from .table import elapsed, fmt_time, render_fields

    pairs = [
        ("Job id", job["job_id"]),
        ("Run key", job["run_key"]),
        ("Attempt", job["attempt_no"]),
        ("Status", job["status"]),
        ("Exit code", job["exit_code"]),
        ("Error", job["error"]),
        ("Command", shlex.join(job["command"])),
        ("Started", fmt_time(job["started_at"])),
        ("Finished", fmt_time(job["finished_at"])),
        ("Elapsed", elapsed(job["started_at"], job["finished_at"])),
        ("PID", job["pid"]),
        ("Reuse policy", job["reuse_policy"]),
        ("Labels", ", ".join(f"{k}={v}" for k, v in job["labels"].items())),
        ("Stop reason", job["abort_reason"]),
        ("Stdout", job["stdout_file"]),
        ("Stderr", job["stderr_file"]),
    ]
    return render_fields(pairs)
