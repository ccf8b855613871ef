"""Helpers of the lifecycle fault campaign (test_lifecycle_campaign.py): payloads and /proc probes.

A payload is one shell script run as the job's command. It takes the run key's
lock on fd 9 (inherited by every process it starts, whatever session or group
it moves to) and notes every event in files of its work directory:

* ``<key>.overlaps``: the lock was held by another attempt of the key (I1);
* ``runs``: ``run <job id>`` once the lock is held (the command really ran);
* ``ends``: ``end <job id> <code>`` just before the main command exits on its own;
* ``terms``: ``term <job id> <pid>`` each time a trapping process gets SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

PAYLOAD_SH = r"""
d=$1; key=$2; shape=$3; code=$4
exec 9>>"$d/$key.lock"
if ! flock -n 9; then echo "overlap $ORCHESJOB_JOB_ID" >> "$d/$key.overlaps"; exit 99; fi
echo "run $ORCHESJOB_JOB_ID" >> "$d/runs"
term_trap() { trap 'echo "term $ORCHESJOB_JOB_ID $$" >> "$d/terms"' TERM; }
naps() { i=0; while [ "$i" -lt "$1" ]; do sleep 0.1; i=$((i + 1)); done; }
case $shape in
  quick) sleep 0.2 ;;
  slow) naps 12 ;;
  trap) term_trap; naps 30 ;;
  long) naps 80 ;;
  trap-long) term_trap; naps 100 ;;
  bg-child) (term_trap; naps 10) & sleep 0.1 ;;
  setsid) setsid sh -c 'trap "" TERM; sleep 1' & sleep 0.1 ;;
  double-fork) (sh -c 'sleep 1.2' &) ; sleep 0.1 ;;
  forker) n=0; while [ "$n" -lt 15 ]; do (sleep 0.4) & sleep 0.06; n=$((n + 1)); done ;;
  hopper) trap '' TERM; "$HOP_PYTHON" "$d/hop.py" "$d/heartbeat" 4 & sleep 0.1 ;;
esac
echo "end $ORCHESJOB_JOB_ID $code" >> "$d/ends"
exit "$code"
"""

# A process that never keeps a pid: it forks, the parent exits, the child goes
# on (a "pid hopper", what some daemonisers and crash-restart loops do). Its
# lifetime is bounded; it notes a heartbeat while it lives.
HOP_PY = r"""
import os, sys, time
beat, end = sys.argv[1], time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    if os.fork():
        os._exit(0)
    n += 1
    if n % 50 == 0:
        with open(beat, "a") as f:
            f.write(f"{time.time():.3f} {os.getpid()}\n")
    time.sleep(0.001)
"""

SHAPES = ("quick", "slow", "trap", "bg-child", "setsid", "double-fork", "forker")


def marker_map() -> dict[str, list[int]]:
    """One /proc scan: job id -> live (non-zombie) pids carrying its marker."""
    out: dict[str, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state in (b"Z", b"X"):
            continue
        for var in env:
            if var.startswith(b"ORCHESJOB_JOB_ID="):
                out.setdefault(var[17:].decode(errors="replace"), []).append(int(name))
    return out


class Payloads:
    """The payload script and the files it writes, in one work directory."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.script = workdir / "payload.sh"
        self.script.write_text(PAYLOAD_SH)
        (workdir / "hop.py").write_text(HOP_PY)
        self.env = {"HOP_PYTHON": sys.executable}

    def command(self, key: str, shape: str, code: int = 0) -> list[str]:
        return ["sh", str(self.script), str(self.dir), key, shape, str(code)]

    def _lines(self, name: str) -> list[list[str]]:
        path = self.dir / name
        if not path.exists():
            return []
        return [line.split() for line in path.read_text().splitlines() if line.strip()]

    def runs(self, job_id: str | None = None) -> int:
        return sum(1 for f in self._lines("runs") if job_id is None or f[1] == job_id)

    def ends(self) -> dict[str, int]:
        return {f[1]: int(f[2]) for f in self._lines("ends")}

    def terms(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for f in self._lines("terms"):
            out[(f[1], f[2])] = out.get((f[1], f[2]), 0) + 1
        return out

    def overlaps(self) -> list[str]:
        return [p.name + ": " + p.read_text().strip() for p in self.dir.glob("*.overlaps")]

    def heartbeats(self) -> int:
        return len(self._lines("heartbeat"))


def marked_scan(job_id: str) -> list[int]:
    """Our own /proc scan for processes carrying the job's marker (independent of proctree)."""
    needle = f"ORCHESJOB_JOB_ID={job_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


def send(pid: int | None, sig: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def same_process(pid: int | None, start: int | None) -> bool:
    """True if ``pid`` still is the process that started at ``start`` (ticks since boot)."""
    if not pid or start is None:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in (b"Z", b"X") and int(fields[19]) == start


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP, "CONT": signal.SIGCONT, "TERM": signal.SIGTERM}
