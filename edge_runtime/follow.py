"""``orchesjob logs --follow``: copy a job's log as it grows until the job has ended.

The supervisor writes the log through a descriptor it opened once, so the file
it writes is the inode we opened: a log renamed away (or deleted by ``clean``)
is read on through our descriptor. A log truncated in place (copytruncate) is
read again from its start; a new file put in its place is switched to once the
old one is drained. A log that does not exist yet is waited for.
"""

from __future__ import annotations

import os
import time

from .schema import TERMINAL_JOB_STATUSES

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from .jobs import Jobs

POLL_INTERVAL_S = 0.2
BLOCK = 1 << 16


def follow(jobs: Jobs, stream: str, run_key: str | None, job_id: str | None, out: BinaryIO) -> dict[str, Any]:
    """Write the log to ``out`` until the job is terminal and the log is drained; returns the final job."""
    job = jobs.status(run_key, job_id)
    path = job[stream + "_file"]
    f = None
    ended = False
    try:
        while True:
            if f is None:
                f = _open(path)
            elif _rotated(f, path):
                _drain(f, out)
                f.close()
                f = _open(path)
            data = f.read(BLOCK) if f is not None else b""
            if data:
                out.write(data)
                out.flush()
                continue
            if ended:
                return job
            job = jobs.status(job_id=job["job_id"])
            # One more read after the end is seen: what was written just before it.
            ended = job["status"] in TERMINAL_JOB_STATUSES
            if not ended:
                time.sleep(POLL_INTERVAL_S)
    finally:
        if f is not None:
            f.close()


def _open(path: str) -> BinaryIO | None:
    try:
        return open(path, "rb")  # noqa: SIM115 - kept open across polls, closed by follow()
    except FileNotFoundError:
        return None


def _rotated(f: BinaryIO, path: str) -> bool:
    """True when ``path`` now names another file; a file of ours that shrank below what was
    read (copytruncate) is rewound to its start instead."""
    mine = os.fstat(f.fileno())
    if mine.st_size < f.tell():
        f.seek(0)
        return False
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False  # renamed away or cleaned: keep reading what the supervisor writes
    return (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino)


def _drain(f: BinaryIO, out: BinaryIO) -> None:
    while data := f.read(BLOCK):
        out.write(data)
    out.flush()
