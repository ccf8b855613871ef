"""A job is its whole process tree, not a pid.

Commands leave their process group all the time: ``setsid`` (sudo with
``use_pty``, daemonising scripts), double forks, ``sh -c 'child & exit'``. Two
mechanisms keep every descendant accounted for, without root:

* **Subreaper.** The supervisor marks itself a *child subreaper*
  (``prctl(PR_SET_CHILD_SUBREAPER)``, Linux >= 3.4). A descendant whose parent
  exits is re-parented to the supervisor instead of to init, so the tree stays a
  tree under the supervisor: a ``Snapshot`` of the supervisor is the whole job,
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
# Every supervisor's process name (``comm``, at most 15 bytes): lets an outer job's
# supervisor recognise the supervisor of a job its command started, whose tree is
# that supervisor's to stop. A name, not an environment variable: the supervisor is
# forked from the CLI without an exec, and /proc/<pid>/environ only ever shows the
# environment a process was exec'd with.
SUPERVISOR_COMM = b"orchesjob-sv"
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


def _unreadable(exc: OSError) -> bool:
    """True when an OSError reading /proc says the process is gone, or is not ours to read.

    Anything else (out of file descriptors, memory ...) says nothing about the
    process: it is raised, because judging a live job dead on such an error
    would be a guess.
    """
    return isinstance(exc, (FileNotFoundError, ProcessLookupError, PermissionError))


def _cannot_inspect(what: str, exc: OSError) -> Exception:
    from .errors import ResourceError

    return ResourceError(f"cannot inspect {what}: {exc.strerror}")


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError as exc:
        raise _cannot_inspect("/proc", exc) from None


def mark_supervisor() -> None:
    """Name this process as a job's supervisor (see ``SUPERVISOR_COMM``)."""
    try:
        with open("/proc/self/comm", "wb") as f:
            f.write(SUPERVISOR_COMM)
    except OSError:
        pass  # no /proc: process-group tracking, which never looks at names


def _stat(pid: int) -> tuple[int, int, bytes, bytes] | None:
    """(parent pid, process group, state letter, name) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError as exc:
        if _unreadable(exc):
            return None
        raise _cannot_inspect(f"process {pid}", exc) from None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    end = data.rindex(b")")
    rest = data[end + 2 :].split(None, 3)
    return int(rest[1]), int(rest[2]), rest[0], data[data.index(b"(") + 1 : end]


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"\0" + f.read() + b"\0"
    except OSError as exc:
        if _unreadable(exc):
            return b""
        raise _cannot_inspect(f"process {pid}", exc) from None


class Snapshot:
    """One walk of the tree below ``root``: its processes, and the nested jobs' supervisors.

    A job may start other orchesjob jobs; their supervisors (named
    ``SUPERVISOR_COMM``) are descendants too. With ``split_nested``, their own
    trees are left to them: such a supervisor is listed in ``nested`` and
    everything below it is left out, so that every process is signalled by one
    owner only. Without it, the snapshot is everything below ``root``.
    """

    def __init__(self, root: int, split_nested: bool = False) -> None:
        children: dict[int, list[int]] = {}
        groups: dict[int, int] = {}
        supervisors: set[int] = set()
        for pid in _pids():
            st = _stat(pid)
            if st is not None and st[2] not in _DEAD_STATES:
                children.setdefault(st[0], []).append(pid)
                groups[pid] = st[1]
                if split_nested and st[3] == SUPERVISOR_COMM:
                    supervisors.add(pid)
        self.pids: list[int] = []
        self.nested: list[int] = []
        queue = [root]
        while queue:
            for child in children.get(queue.pop(0), ()):
                if child in supervisors:
                    self.nested.append(child)
                    continue
                self.pids.append(child)
                queue.append(child)
        mine = os.getpgrp()
        self.groups = sorted({groups[p] for p in self.pids if p in groups and groups[p] != mine})

    def __bool__(self) -> bool:
        return bool(self.pids or self.nested)


def marked(job_id: str) -> list[int]:
    """Live processes of this user that carry the job's environment marker."""
    needle = f"{ENV_MARKER}={job_id}".encode()
    me = os.getpid()
    out = []
    for pid in _pids():
        if pid != me and b"\0" + needle + b"\0" in _environ(pid):
            st = _stat(pid)
            if st is not None and st[2] not in _DEAD_STATES:
                out.append(pid)
    return out


def supervisors_among(pids: list[int]) -> list[int]:
    """Which of ``pids`` are supervisors (of jobs started from a job's tree)."""
    out = []
    for pid in pids:
        st = _stat(pid)
        if st is not None and st[3] == SUPERVISOR_COMM:
            out.append(pid)
    return out


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (a member that scrubbed its environment included)."""
    out = []
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[1] == pgid and st[2] not in _DEAD_STATES:
            out.append(pid)
    return out


def groups_of(pids: list[int]) -> list[int]:
    """The process groups of ``pids`` (never the caller's own)."""
    mine = os.getpgrp()
    groups = set()
    for pid in pids:
        st = _stat(pid)
        if st is not None and st[1] != mine:
            groups.add(st[1])
    return sorted(groups)


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


def kill_now(pids: list[int], groups: list[int] = ()) -> None:
    """SIGKILL, the escalation nobody can trap; to whole process groups too.

    A group signal also reaches the children a process forks while we look,
    so a process that forks and exits in a loop cannot outrun the kill.
    """
    send(pids, signal.SIGKILL)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
