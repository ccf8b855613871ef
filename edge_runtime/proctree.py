"""A job is its whole process tree, not a pid.

Commands leave their process group all the time: ``setsid`` (sudo with
``use_pty``, daemonising scripts), double forks, ``sh -c 'child & exit'``. Two
mechanisms keep every descendant accounted for, without root:

* **Subreaper.** The supervisor marks itself a *child subreaper*
  (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux >= 3.4). A descendant whose parent
  exits is re-parented to the supervisor instead of to init, so the tree stays a
  tree under the supervisor: ``descendants(supervisor_pid)`` is the whole job,
  whatever sessions and groups its members moved to.
* **Environment marker.** Every process of the job inherits
  ``ORCHESJOB_JOB_ID=<job id>``. If the supervisor itself is gone (OOM killer,
  SIGKILL), its orphans are re-parented to init and the parent links no longer
  say who belongs to the job; ``marked(job_id)`` still finds them by the marker
  in ``/proc/<pid>/environ`` (readable for the user's own processes).

A cgroup per job would be stronger still (a process cannot leave it), but it
needs a delegated cgroup v2 subtree, which a pipx-installed runtime on a plain
host does not have; ``orchesjob info`` reports which mechanism is in use.

Zombies are dead: they are never counted as alive.
"""

from __future__ import annotations

import os
import signal

ENV_MARKER = "ORCHESJOB_JOB_ID"
_PR_SET_CHILD_SUBREAPER = 36
_DEAD_STATES = (b"Z", b"X", b"x")


def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def tracking() -> str:
    """Which mechanism keeps a job's tree together on this host (for ``orchesjob info``)."""
    return "subreaper+environ" if os.path.isdir("/proc/self") else "process-group"


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _stat(pid: int) -> tuple[int, bytes] | None:
    """(parent pid, state letter) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split(None, 2)
    return int(rest[1]), rest[0]


def descendants(root: int) -> list[int]:
    """Live (non-zombie) descendants of ``root``, parents before their children."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[1] not in _DEAD_STATES:
            children.setdefault(st[0], []).append(pid)
    out: list[int] = []
    queue = [root]
    while queue:
        for child in children.get(queue.pop(0), ()):
            out.append(child)
            queue.append(child)
    return out


def marked(job_id: str) -> list[int]:
    """Live processes of this user that carry the job's environment marker."""
    needle = b"\0" + f"{ENV_MARKER}={job_id}".encode() + b"\0"
    out = []
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue  # gone, or another user's process (not ours to judge or signal)
        if needle in b"\0" + env + b"\0":
            st = _stat(pid)
            if st is not None and st[1] not in _DEAD_STATES:
                out.append(pid)
    return out


def send(pids: list[int], sig: int) -> list[int]:
    """Send ``sig`` to each pid; returns the pids this user may not signal."""
    denied = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            denied.append(pid)
    return denied


def may_signal(pid: int) -> bool:
    """False if ``pid`` is alive but belongs to someone this user may not signal."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return False
    except ProcessLookupError:
        return True
    return True


def kill_now(pids: list[int]) -> None:
    """SIGKILL, the escalation nobody can trap."""
    send(pids, signal.SIGKILL)
