"""Process identity, liveness and signalling.

A bare PID proves nothing: PIDs are reused, and a reboot resets them all. A
process is identified by (boot id, pid, start time in clock ticks since boot),
read from /proc. A job is judged alive only if a recorded identity still
matches a live (non-zombie) process.
"""

from __future__ import annotations

import os
import signal
import time

_BOOT_ID: str | None = None


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _BOOT_ID = f.read().strip()
        except FileNotFoundError:
            # Non-Linux fallback: the boot time is stable for one boot.
            _BOOT_ID = "btime-" + str(int(time.time() - time.monotonic()))
        except OSError as exc:
            # (out of file descriptors ...) a made-up boot id would make every recorded process look dead
            from .errors import ResourceError

            raise ResourceError(f"cannot read the boot id: {exc.strerror}") from None
    return _BOOT_ID


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError as exc:
        # Out of file descriptors or memory says nothing about the process: never
        # let it pass for "gone" (a live job would be judged dead).
        from .errors import ResourceError

        raise ResourceError(f"cannot inspect process {pid}: {exc.strerror}", pid=pid) from None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(b")") + 2 :].decode().split()


def start_time(pid: int) -> int | None:
    """Start time of a live, non-zombie process in ticks since boot; None if gone."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of /proc/pid/stat


def identity(pid: int | None = None) -> tuple[int, int]:
    """(pid, start time) of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    start = start_time(pid)
    if start is None:
        raise ProcessLookupError(pid)
    return pid, start


def is_alive(pid: int | None, start: int | None, boot: str) -> bool:
    """True only if the exact recorded process still runs on this boot."""
    if pid is None or start is None or boot != boot_id():
        return False
    return start_time(pid) == start


def signal_process(pid: int | None, start: int | None, boot: str, sig: int) -> bool:
    """Send ``sig`` to one recorded process if its identity still matches."""
    if not is_alive(pid, start, boot):
        return False
    try:
        os.kill(pid, sig)  # type: ignore[arg-type]
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_exit(pid: int, start: int, boot: str, timeout: float | None) -> bool:
    """Block until the identified process exits (True) or ``timeout`` passes (False).

    Uses a pidfd where the kernel has one, so waiting costs no CPU and wakes at
    once; otherwise polls with a short, growing interval.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    fd = None
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None
    try:
        # Check identity after opening the pidfd: if it still matches, the fd
        # refers to our process and cannot be confused by later pid reuse.
        if not is_alive(pid, start, boot):
            return True
        if fd is not None:
            import select

            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if poller.poll(None if remaining is None else remaining * 1000):
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        delay = 0.005
        while is_alive(pid, start, boot):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return True
    finally:
        if fd is not None:
            os.close(fd)


def kill_point(name: str) -> None:
    """Crash-test hook: SIGKILL this process at the named point when asked to.

    Tests set ``ORCHESJOB_TEST_KILL_AT`` to a point name to prove that a crash
    at exactly that instant never duplicates or strands a job.
    """
    if os.environ.get("ORCHESJOB_TEST_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
