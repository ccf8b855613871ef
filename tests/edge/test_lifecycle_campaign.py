"""An attacker's campaign against the job lifecycle, through real processes only.

Two parts:

* deterministic reproductions of each invariant violation found (xfail, strict,
  with the precise bug as the reason, until the lifecycle is fixed);
* a seeded, randomized fault campaign (``slow``): concurrent ``start`` (every
  reuse policy, with and without ``--request-id``, ``--retry-lost``), ``abort``/
  ``cancel`` (resent, concurrent, ``--wait 0``), ``status``, ``rerun``,
  ``unlock``, ``clean``, SIGKILL of CLI processes, of supervisors and of parts
  of job trees, SIGSTOP/SIGCONT of supervisors; a monitor thread scans /proc all
  along, and the end state is checked against the invariants I1-I5.

Payloads (lifecycle_attack.py) hold the run key's exclusive ``flock`` across
their whole tree, so any overlap of two attempts is recorded, and note each
execution, each own exit and each SIGTERM they trap.

Seed and length: ``LIFECYCLE_CAMPAIGN_SEEDS`` (comma-separated),
``LIFECYCLE_CAMPAIGN_SECONDS`` (action phase per seed).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shlex
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from edge_runtime import proctree
from tests.conftest import cli_path
from tests.edge.conftest import TERMINAL, alive
from tests.edge.lifecycle_attack import SHAPES, Payloads, marked_scan, marker_map, send, wait_for

ACTIVE = ("STARTING", "RUNNING", "ABORTING", "CANCELLING")


@pytest.fixture
def pl(runner, tmp_path):
    payloads = Payloads(tmp_path / "work")
    runner.env.update(payloads.env)
    runner.ok("info")  # the database exists before any test reads it behind the CLI's back
    return payloads


def db_row(runner, job_id: str) -> dict:
    db = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"))
    db.row_factory = sqlite3.Row
    try:
        row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else {}
    finally:
        db.close()


def db_rows(runner) -> list[dict]:
    db = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"), timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY run_key, attempt_no")]
    finally:
        db.close()


def settled(runner, job_id: str, timeout: float = 30) -> dict:
    """The job through the CLI (which settles) once terminal; fails after ``timeout``."""
    job = wait_for(lambda: (j := runner.ok("status", "--job-id", job_id))["status"] in TERMINAL and j, timeout, 0.1)
    assert job, f"job {job_id} not terminal within {timeout}s: {runner.ok('status', '--job-id', job_id)}"
    return job


# =====================================================================================
# Reproductions of the violations found
# =====================================================================================


def test_a_pid_hopping_leftover_keeps_the_job_active(runner, pl):
    first = runner.ok("start", "--run-key", "hop", "--", *pl.command("hop", "hopper", 0))
    wait_for(lambda: pl.heartbeats() > 0, 5)
    done = settled(runner, first["job_id"], timeout=20)
    beats = pl.heartbeats()
    time.sleep(0.4)
    alive_after = pl.heartbeats() - beats
    second = runner.ok("start", "--run-key", "hop", "--", *pl.command("hop", "quick", 0))
    settled(runner, second["job_id"])
    assert alive_after == 0, f"{done['status']} while a process of its tree still ran ({alive_after} heartbeats later)"
    assert pl.overlaps() == []


def test_a_stop_that_arrives_after_the_command_exited_keeps_its_real_outcome(runner, pl):
    job = runner.ok("start", "--run-key", "late", "--", *pl.command("late", "quick", 0))
    worker = job["worker_pid"]
    assert send(worker, signal.SIGSTOP)  # the supervisor is slow to be scheduled (loaded host)
    try:
        assert wait_for(lambda: job["job_id"] in pl.ends(), 5)
        time.sleep(0.3)  # the command has exited: a zombie, its SIGCHLD pending
        stop = runner.ok("abort", "--run-key", "late", "--wait", "0")
        assert stop["status"] == "ABORTING"
    finally:
        send(worker, signal.SIGCONT)
    done = settled(runner, job["job_id"])
    assert (done["status"], done["exit_code"], done["stop_too_late"]) == ("SUCCEEDED", 0, True), done


def test_concurrent_stops_of_an_orphaned_tree_send_one_term(runner, pl):
    job = runner.ok("start", "--run-key", "orph", "--", *pl.command("orph", "trap", 0))
    assert wait_for(lambda: pl.runs(job["job_id"]) == 1, 5)
    time.sleep(0.2)  # the trap is installed
    assert send(job["worker_pid"], signal.SIGKILL)  # the OOM killer takes the supervisor
    first = runner.popen("orchesjob", "abort", "--run-key", "orph", "--grace-seconds", "3", "--wait", "0",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    # The first stop's TERM has been handled; it is still inside its grace period when the stop is resent.
    assert wait_for(lambda: any(k[0] == job["job_id"] for k in pl.terms()), 10)
    resent = runner.run("orchesjob", "abort", "--run-key", "orph", "--grace-seconds", "3", "--wait", "0")
    first.wait(30)
    assert resent.code == 0, resent.err
    done = settled(runner, job["job_id"])
    assert done["status"] == "ABORTED"
    terms = {k: n for k, n in pl.terms().items() if k[0] == job["job_id"]}
    assert terms and max(terms.values()) == 1, f"SIGTERMs per process: {terms}"


def _chattr(path: Path, flag: str) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except OSError:
        return False


def test_a_command_that_cannot_open_its_logs_is_never_lost(runner, pl, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for chattr +i")
    logs = Path(runner.home) / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    if not _chattr(logs, "+i"):
        pytest.skip("chattr +i not supported here")
    # A busy database (other pollers writing) delays the supervisor's RUNNING write by a few ms.
    stop = threading.Event()

    def hammer() -> None:
        db = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"), isolation_level=None, timeout=30)
        while not stop.is_set():
            db.execute("BEGIN IMMEDIATE")
            time.sleep(0.02)
            db.execute("COMMIT")
            time.sleep(0.02)
        db.close()

    t = threading.Thread(target=hammer, daemon=True)
    t.start()
    seen = []
    try:
        for i in range(5):
            job = runner.ok("start", "--run-key", f"nolog{i}", "--", *pl.command(f"nolog{i}", "quick", 0))
            done = settled(runner, job["job_id"])
            seen.append((done["status"], done["exit_code"]))
            if done["status"] == "LOST":
                break
    finally:
        stop.set()
        t.join()
        _chattr(logs, "-i")
    assert pl.runs() == 0
    assert all(s == ("FAILED", 127) for s in seen), seen


def test_a_reader_out_of_file_descriptors_never_settles_a_running_job(runner, pl):
    job = runner.ok("start", "--run-key", "fds", "--", *pl.command("fds", "long", 0))
    assert wait_for(lambda: pl.runs(job["job_id"]) == 1, 5)
    seen = []
    for n in range(5, 11):

        def limit(n=n) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

        p = subprocess.run(
            [cli_path("orchesjob"), "status", "--run-key", "fds"],
            capture_output=True, text=True, env=runner.env, preexec_fn=limit, timeout=30,
        )  # fmt: skip
        if p.returncode == 0:
            seen.append((n, json.loads(p.stdout)["status"]))
    again = runner.ok("start", "--run-key", "fds", "--", *pl.command("fds", "quick", 0))
    settled(runner, again["job_id"], timeout=20)
    assert all(s == "RUNNING" for _, s in seen), seen
    assert again["job_id"] == job["job_id"] and pl.overlaps() == []


def test_a_full_disk_at_exit_delays_the_outcome_but_never_loses_it(runner, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    home = Path(runner.home)
    home.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(home)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        ran = tmp_path / "ran"
        # The command's own output fills the disk, then it exits 3.
        job = runner.ok(
            "start", "--run-key", "full", "--", "sh", "-c", f"head -c 3000000 /dev/zero; echo x > {ran}; exit 3"
        )
        assert wait_for(ran.exists, 10)
        time.sleep(1.0)
        Path(job["stdout_file"]).write_bytes(b"")  # space is back
        done = settled(runner, job["job_id"])
        assert (done["status"], done["exit_code"]) == ("FAILED", 3), (done["status"], done["error"])
    finally:
        from tests.edge.conftest import kill_processes_under

        kill_processes_under(str(tmp_path))
        subprocess.run(["umount", "-l", str(home)])


def test_a_recorded_stop_is_carried_out_even_if_the_abort_cli_dies(runner, pl, tmp_path):
    if shutil.which("strace") is None:
        pytest.skip("needs strace for syscall fault injection")
    job = runner.ok("start", "--run-key", "lost-stop", "--", *pl.command("lost-stop", "long", 0))
    assert wait_for(lambda: pl.runs(job["job_id"]) == 1, 5)
    # SIGKILL the abort CLI at the kill() that signals the supervisor (the K-th kill syscall; the
    # earlier ones are the permission probes, signal 0: dying there records nothing, try the next).
    for k in range(1, 6):
        p = subprocess.run(
            ["strace", "-f", "-qq", "-e", "trace=kill", "-e", f"inject=kill:error=ESRCH:signal=SIGKILL:when={k}",
             cli_path("orchesjob"), "abort", "--run-key", "lost-stop", "--grace-seconds", "1"],
            capture_output=True, text=True, env=runner.env, timeout=60,
        )  # fmt: skip
        if "SIGTERM) " in p.stderr and "killed by SIGKILL" in p.stderr:
            break
        assert runner.ok("status", "--job-id", job["job_id"])["status"] == "RUNNING", p.stderr
    else:
        pytest.fail("could not interrupt abort at its signal")
    assert runner.ok("status", "--job-id", job["job_id"])["status"] == "ABORTING"
    # Polling as a client does after "ABORTING means poll again": the stop must complete.
    done = wait_for(lambda: (j := runner.ok("status", "--job-id", job["job_id"]))["status"] in TERMINAL and j, 5, 0.2)
    assert done and done["status"] == "ABORTED", runner.ok("status", "--job-id", job["job_id"])["status"]


def test_a_scrubbed_setsid_daemon_is_held_by_the_live_supervisor(runner, tmp_path):
    """Passes: with its supervisor alive, a descendant that scrubs its environment, setsids and double-forks
    is still the supervisor's (subreaper): the job ends only once it is gone (TERM ignored: KILL after 5 s)."""
    beat = tmp_path / "daemon-beat"
    loop = f"trap '' TERM; while :; do echo x >> {beat}; sleep 0.1; done"
    body = f"(setsid env -i sh -c {shlex.quote(loop)} &) ; sleep 0.3; exit 0"
    job = runner.ok("start", "--run-key", "daemon", "--", "sh", "-c", body)
    done = settled(runner, job["job_id"], timeout=20)
    size = beat.stat().st_size
    time.sleep(0.4)
    assert done["status"] == "SUCCEEDED"
    assert beat.stat().st_size == size, "the daemon outlived its job"


def test_abort_reaches_a_scrubbed_member_of_the_group_after_the_supervisor_died(runner, pl, tmp_path):
    beat = tmp_path / "scrubbed-beat"
    # No setsid: the scrubbed process stays in the main command's process group, where the runtime sees it
    # for as long as the group's leader (the main command) runs. (Once the leader is gone too, its group id
    # may belong to a stranger: docs/orchesjob.md names that case as the one the runtime cannot see.)
    body = f"env -i sh -c 'while :; do echo x >> {beat}; sleep 0.1; done' & sleep 30; exit 0"
    job = runner.ok("start", "--run-key", "scrub", "--", "sh", "-c", body)
    assert wait_for(beat.exists, 5)
    assert send(job["worker_pid"], signal.SIGKILL)
    time.sleep(0.3)
    assert runner.ok("status", "--job-id", job["job_id"])["status"] == "RUNNING"
    stop = runner.ok("abort", "--run-key", "scrub", "--grace-seconds", "1", "--wait", "5")
    size = beat.stat().st_size
    time.sleep(0.5)
    assert (stop["status"], beat.stat().st_size - size) == ("ABORTED", 0), stop["status"]


def test_leftovers_are_stopped_even_if_the_supervisor_dies_after_the_record(runner, tmp_path):
    beat = tmp_path / "leftover-beat"
    env = dict(runner.env, ORCHESJOB_TEST_KILL_AT="supervisor:exited")
    body = f"(while :; do echo x >> {beat}; sleep 0.1; done) & sleep 0.3; exit 4"
    job = runner.ok("start", "--run-key", "leftover", "--", "sh", "-c", body, env=env)
    assert wait_for(beat.exists, 5)
    done = wait_for(lambda: (j := runner.ok("status", "--job-id", job["job_id"]))["status"] in TERMINAL and j, 12, 0.2)
    assert done and (done["status"], done["exit_code"]) == ("FAILED", 4)


@pytest.mark.parametrize("policy", ["failed-only", "never"])
def test_a_never_launched_attempt_does_not_hide_an_earlier_success(runner, pl, policy):
    key = f"hidden-{policy}"
    first = runner.ok("start", "--sync", "--run-key", key, "--reuse-policy", policy, "--", *pl.command(key, "quick"))
    assert first["status"] == "SUCCEEDED"
    killed = runner.oj("start", "--run-key", key, "--reuse-policy", "always", "--", *pl.command(key, "quick"),
                       env=dict(runner.env, ORCHESJOB_TEST_KILL_AT="start:claimed"))  # fmt: skip
    assert killed.code == -signal.SIGKILL
    assert runner.ok("status", "--run-key", key)["status"] == "NEVER_LAUNCHED"
    again = runner.ok("start", "--sync", "--run-key", key, "--reuse-policy", policy, "--", *pl.command(key, "quick"))
    assert not again["accepted"] and pl.runs() == 1, (again["attempt_no"], again["status"], pl.runs())


def test_an_orphaned_stop_is_completed_even_if_the_abort_cli_dies(runner, pl):
    """I4 (failed before bacc69f): with the supervisor gone the stop lived only inside the abort CLI
    (Jobs._await_stop -> lifecycle.stop_orphaned_tree: TERM, grace, KILL); an abort SIGKILLed in that grace
    left the job ABORTING, its TERM-surviving processes never KILLed, until they ended on their own."""
    job = runner.ok("start", "--run-key", "orph-kill", "--", *pl.command("orph-kill", "trap-long"))
    assert wait_for(lambda: pl.runs(job["job_id"]) == 1, 5)
    time.sleep(0.2)  # the trap is installed
    assert send(job["worker_pid"], signal.SIGKILL)
    stop = runner.popen("orchesjob", "abort", "--run-key", "orph-kill", "--grace-seconds", "2",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert wait_for(lambda: any(k[0] == job["job_id"] for k in pl.terms()), 10)  # the TERM went out
    stop.kill()  # the abort CLI dies inside its grace period
    stop.wait()
    done = wait_for(lambda: (j := runner.ok("status", "--job-id", job["job_id"]))["status"] in TERMINAL and j, 6, 0.2)
    assert done and done["status"] == "ABORTED", runner.ok("status", "--job-id", job["job_id"])["status"]
    assert marked_scan(job["job_id"]) == []


def _foreign_group_with_pgid(pgid: int) -> int | None:
    """A process group of someone else's whose id is ``pgid`` (a reused pid), leader gone; returns its member."""
    r, w = os.pipe()
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pgid - 1))  # the next pid is ``pgid`` (root; races with other forks on the host)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            member = os.fork()
            if member == 0:
                os.execvp("sleep", ["sleep", "30"])
            os.write(w, str(member).encode() if os.getpid() == pgid else b"0")
        finally:
            os._exit(0)
    os.close(w)
    member = int(os.read(r, 32) or b"0")
    os.close(r)
    os.waitpid(pid, 0)
    return member or None


def test_a_reused_process_group_id_is_not_the_job(runner):
    if os.geteuid() != 0 or not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs root and ns_last_pid to reuse a chosen pid")
    job = runner.ok("start", "--run-key", "reused", "--", "sh", "-c", "sleep 0.5; exit 0")
    assert send(job["worker_pid"], signal.SIGKILL)  # supervisor gone while the command runs
    target = job["pid"]
    assert wait_for(lambda: not os.path.exists(f"/proc/{target}"), 10)  # the job's group is gone
    time.sleep(0.3)
    member = None
    for _ in range(5):
        member = _foreign_group_with_pgid(target)
        if member:
            break
    if member is None:
        pytest.skip("could not get the pid reused")
    try:
        status = runner.ok("status", "--job-id", job["job_id"])["status"]
        runner.oj("abort", "--job-id", job["job_id"], "--grace-seconds", "0.3", "--wait", "3")
        foreign_alive = alive(member)
        assert foreign_alive, "aborting the job killed a process of a foreign group that reused its pgid"
        assert status == "LOST", status
    finally:
        send(member, signal.SIGKILL)


def test_an_unwritable_logs_dir_neither_blocks_a_stop_nor_breaks_other_polls(runner, pl):
    if os.geteuid() != 0:
        pytest.skip("needs root for chattr +i")
    other = runner.ok("start", "--sync", "--run-key", "other", "--", "true")
    job = runner.ok("start", "--run-key", "ro", "--", *pl.command("ro", "long"))
    assert wait_for(lambda: pl.runs(job["job_id"]) == 1, 5)
    assert send(job["worker_pid"], signal.SIGKILL)
    logs = Path(runner.home) / "logs"
    if not _chattr(logs, "+i"):
        pytest.skip("chattr +i not supported here")
    try:
        runner.oj("abort", "--run-key", "ro", "--grace-seconds", "0.5", "--wait", "2")
        batch = runner.run(
            "orchesjob", "status", "--batch", "-", input=json.dumps([{"run_key": "other"}, {"run_key": "ro"}])
        )
        stopped = wait_for(lambda: not marked_scan(job["job_id"]), 3)
    finally:
        _chattr(logs, "-i")
    assert batch.code == 0 and batch.json[0]["status"] == other["status"], batch.err
    assert stopped, "the stop never reached the tree"


def _nested(runner, pl, gate: Path) -> tuple[dict, dict]:
    """Job "outer" starts job "inner" (whose command traps TERM), then exits once ``gate`` exists."""
    inner = shlex.join([cli_path("orchesjob"), "start", "--run-key", "inner", "--", *pl.command("inner", "trap-long")])
    body = f"{inner} > /dev/null; while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; exit 0"
    outer = runner.ok("start", "--run-key", "outer", "--", "sh", "-c", body)
    inner_job = wait_for(lambda: (j := runner.oj("status", "--run-key", "inner")).code == 0 and j.json, 10)
    assert inner_job and wait_for(lambda: pl.runs(inner_job["job_id"]) == 1, 10)
    time.sleep(0.2)  # the inner command's trap is installed
    return outer, runner.ok("status", "--job-id", inner_job["job_id"])


def test_an_orphaned_stop_of_an_outer_job_stops_the_jobs_it_started(runner, pl, tmp_path):
    outer, inner = _nested(runner, pl, tmp_path / "gate")
    assert send(outer["worker_pid"], signal.SIGKILL)  # the outer job's supervisor is OOM-killed
    stop = runner.ok("abort", "--run-key", "outer", "--grace-seconds", "1", "--wait", "15")
    left = marked_scan(inner["job_id"]) if stop["status"] in TERMINAL else []
    done = settled(runner, inner["job_id"], timeout=30)
    assert stop["status"] == "ABORTED" and left == [], (stop["status"], f"inner job's processes alive: {left}")
    assert done["status"] == "ABORTED", (done["status"], done["error"])


def test_a_job_started_by_a_job_gets_one_term_when_the_outer_one_ends(runner, pl, tmp_path):
    gate = tmp_path / "gate"
    outer, inner = _nested(runner, pl, gate)
    assert send(inner["worker_pid"], signal.SIGSTOP)  # the inner supervisor is a little slower than the outer
    try:
        gate.touch()
        settled_outer = wait_for(lambda: runner.ok("status", "--job-id", outer["job_id"])["status"] != "RUNNING", 1.5)
        assert not settled_outer, "the outer job cannot end while the job it started still runs"
    finally:
        send(inner["worker_pid"], signal.SIGCONT)
    settled(runner, outer["job_id"])
    settled(runner, inner["job_id"])
    terms = {k: n for k, n in pl.terms().items() if k[0] == inner["job_id"]}
    assert max(terms.values()) == 1, f"SIGTERMs per process of the inner job: {terms}"


def test_a_job_started_by_a_job_is_not_lost_when_the_outer_one_is_aborted(runner, pl, tmp_path):
    outer, inner = _nested(runner, pl, tmp_path / "gate")
    stop = runner.ok("abort", "--run-key", "outer", "--grace-seconds", "1")
    assert stop["status"] == "ABORTED"
    done = settled(runner, inner["job_id"])
    assert done["status"] == "ABORTED", (done["status"], done["error"])


# =====================================================================================
# The seeded fault campaign
# =====================================================================================
KEYS = ("k0", "k1", "k2")
# The hopper is left out by default: its violation has its own reproduction above.
CAMPAIGN_SHAPES = tuple(os.environ.get("LIFECYCLE_CAMPAIGN_SHAPES", ",".join(SHAPES)).split(","))
POLICIES = ("always", "failed-only", "never")


class Campaign:
    def __init__(self, runner, pl: Payloads, seed: int) -> None:
        self.runner, self.pl, self.rng = runner, pl, random.Random(seed)
        self.inflight: list[tuple[subprocess.Popen, float | None]] = []
        self.actions: Counter = Counter()
        self.violations: list[str] = []
        self.known: list[str] = []  # violations of a bug reproduced (xfail) above: reported, not failed
        self.harmed: set[str] = set()  # jobs whose supervisor we SIGKILLed
        self.paused: set[str] = set()  # jobs whose supervisor we SIGSTOPped at some point
        self.tree_killed: set[str] = set()  # jobs of which we SIGKILLed a process
        self.conts: list[tuple[float, int]] = []
        self.stop_monitor = threading.Event()
        self.samples = 0
        self.seen: dict[str, dict] = {}  # the last row read of every job (clean may delete it later)
        self.request_ids = {k: [f"rq-{k}-{i}" for i in range(3)] for k in KEYS}

    # ------------------------------------------------------------------ helpers
    def violation(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)

    def cli(self, *args: str) -> None:
        kill_at = None
        if self.rng.random() < 0.12:
            kill_at = time.monotonic() + self.rng.uniform(0.0, 0.6)  # SIGKILL this CLI mid-flight
            self.actions["sigkill-cli"] += 1
        p = self.runner.popen("orchesjob", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.inflight.append((p, kill_at))

    def active_rows(self) -> list[dict]:
        return [r for r in db_rows(self.runner) if r["status"] in ACTIVE]

    def tick(self) -> None:
        now = time.monotonic()
        keep = []
        for p, kill_at in self.inflight:
            if p.poll() is None and kill_at is not None and now >= kill_at:
                p.kill()
            if p.poll() is None:
                keep.append((p, kill_at))
        self.inflight = keep
        due = [c for c in self.conts if c[0] <= now]
        for c in due:
            send(c[1], signal.SIGCONT)
            self.conts.remove(c)

    def hold_write_lock(self, seconds: float) -> None:
        db = sqlite3.connect(os.path.join(self.runner.home, "orchesjob.db"), isolation_level=None, timeout=30)
        try:
            db.execute("BEGIN IMMEDIATE")
            time.sleep(seconds)
            db.execute("COMMIT")
        except sqlite3.Error:
            pass
        finally:
            db.close()

    # ------------------------------------------------------------------ actions
    def act(self) -> None:
        rng = self.rng
        key = rng.choice(KEYS)
        roll = rng.random()
        if roll < 0.34:
            policy = rng.choice(POLICIES)
            args = ["start", "--run-key", key, "--reuse-policy", policy]
            r = rng.random()
            if r < 0.3:
                args += ["--request-id", rng.choice(self.request_ids[key])]
            elif r < 0.4 and policy == "failed-only":
                args += ["--retry-lost", "--request-id", f"rl-{key}-{rng.random():.9f}"]
            if rng.random() < 0.15:
                args.append("--sync")
            shape, code = rng.choice(CAMPAIGN_SHAPES), rng.choice((0, 0, 1, 3))
            self.cli(*args, "--", *self.pl.command(key, shape, code))
            self.actions[f"start:{policy}"] += 1
        elif roll < 0.52:
            verb = rng.choice(("abort", "cancel"))
            args = [verb, "--run-key", key, "--grace-seconds", f"{rng.uniform(0.2, 1.5):.2f}"]
            args += ["--wait", rng.choice(("0", "0", "1", "3"))]
            for _ in range(rng.choice((1, 1, 2))):  # sometimes resent at once
                self.cli(*args)
            self.actions[verb] += 1
        elif roll < 0.62:
            self.cli(*rng.choice((["status", "--run-key", key], ["status", "--running"])))
            self.actions["status"] += 1
        elif roll < 0.67:
            self.cli("rerun", "--run-key", key, "--reason", "campaign-rerun")
            self.actions["rerun"] += 1
        elif roll < 0.71:
            extra = ["--ttl", "5"] if rng.random() < 0.5 else []
            self.cli("unlock", "--run-key", key, "--reason", "campaign-unlock", *extra)
            self.actions["unlock"] += 1
        elif roll < 0.73:
            hold = rng.uniform(0.5, 2.5)  # another writer holds the database's write lock (below the busy timeout)
            threading.Thread(target=self.hold_write_lock, args=(hold,), daemon=True).start()
            self.actions["db-locked"] += 1
        elif roll < 0.76:
            rows = [r for r in db_rows(self.runner) if r["run_key"] == key]
            if rows:
                self.cli("clean", "--job-id", rng.choice(rows)["job_id"])
                self.actions["clean"] += 1
        else:
            rows = [r for r in self.active_rows() if r["worker_pid"]]
            if not rows:
                return
            row = rng.choice(rows)
            fault = rng.random()
            if fault < 0.3:
                if send(row["worker_pid"], signal.SIGKILL):
                    self.harmed.add(row["job_id"])
                    self.actions["sigkill-supervisor"] += 1
            elif fault < 0.55:
                if send(row["worker_pid"], signal.SIGSTOP):
                    self.paused.add(row["job_id"])
                    self.conts.append((time.monotonic() + rng.uniform(0.2, 1.5), row["worker_pid"]))
                    self.actions["sigstop-supervisor"] += 1
            else:
                pids = proctree.marked(row["job_id"])
                if pids and send(rng.choice(pids), signal.SIGKILL):
                    self.tree_killed.add(row["job_id"])
                    self.actions["sigkill-tree-part"] += 1

    # ------------------------------------------------------------------ monitor
    def monitor(self) -> None:
        """I1 and I2 at every instant: no terminal job with live processes, one live attempt per key."""
        while not self.stop_monitor.is_set():
            try:
                rows = {r["job_id"]: r for r in db_rows(self.runner)}
            except sqlite3.Error:
                continue
            self.seen.update(rows)
            live = marker_map()
            self.samples += 1
            per_key: dict[str, set[str]] = {}
            for job_id, pids in live.items():
                row = rows.get(job_id)
                if row is None:
                    continue
                per_key.setdefault(row["run_key"], set()).add(job_id)
                if row["status"] in TERMINAL:
                    still = [p for p in pids if p in marked_scan(job_id)]
                    if still:
                        self.violation(f"I2: job {job_id} {row['status']} while {still} of its tree live")
            for key, jobs in per_key.items():
                if len(jobs) > 1:
                    self.violation(f"I1: run key {key} has live processes of {len(jobs)} attempts: {sorted(jobs)}")
            time.sleep(0.03)

    # ------------------------------------------------------------------ the run
    def run(self, seconds: float) -> None:
        mon = threading.Thread(target=self.monitor, daemon=True)
        mon.start()
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                self.tick()
                if len(self.inflight) < 6:
                    self.act()
                time.sleep(self.rng.uniform(0.0, 0.12))
            # Quiesce: no new action; resume paused supervisors, let the CLIs finish.
            for _, pid in self.conts:
                send(pid, signal.SIGCONT)
            self.conts.clear()
            for p, _ in self.inflight:
                try:
                    p.wait(40)
                except subprocess.TimeoutExpired:
                    self.violation(f"a CLI call did not return within 40 s: {p.args}")
                    p.kill()
            # I5: every job ends terminal once its processes are gone (payloads are short-lived).
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                active = [r for r in self.active_rows()]
                for r in active:
                    self.runner.oj("status", "--job-id", r["job_id"])  # readers settle what they may
                if not self.active_rows():
                    break
                time.sleep(0.5)
        finally:
            self.stop_monitor.set()
            mon.join()
        for r in self.active_rows():
            self.violation(f"I5: job {r['job_id']} still {r['status']} with live pids {marked_scan(r['job_id'])}")

    # ------------------------------------------------------------------ the end state
    def check(self) -> dict:
        current = db_rows(self.runner)
        gone = [r for j, r in self.seen.items() if j not in {c["job_id"] for c in current} and r["status"] in TERMINAL]
        rows = current + gone  # cleaned jobs are judged by their last terminal row
        by_key_attempt = {(r["run_key"], r["attempt_no"]): r for r in rows}
        ends = self.pl.ends()
        for o in self.pl.overlaps():
            self.violation(f"I1: attempts overlapped ({o})")
        for r in rows:
            j, st = r["job_id"], r["status"]
            runs = self.pl.runs(j)
            if runs > 1:
                self.violation(f"I1: job {j} executed its command {runs} times")
            if st == "NEVER_LAUNCHED" and runs:
                self.violation(f"I3: job {j} NEVER_LAUNCHED but its command ran")
            if st in ("SUCCEEDED", "FAILED") and r["exit_code"] is not None and r["exit_code"] >= 0:
                if j in ends and ends[j] != r["exit_code"]:
                    self.violation(f"I3: job {j} {st} exit {r['exit_code']} but the command exited {ends[j]}")
                if j not in ends and r["exit_code"] != 99 and j not in self.tree_killed:
                    self.violation(f"I3: job {j} {st} exit {r['exit_code']} but the command never exited itself")
            if st == "LOST" and j not in self.harmed:
                self.violation(f"I3: job {j} LOST although its supervisor was never killed ({r['error']})")
            shape = json.loads(r["command"])[4] if r["command"].startswith('["sh"') else ""
            if (
                st in ("ABORTED", "CANCELLED")
                and shape != "trap"
                and (r["exit_code"] if r["exit_code"] is not None else -1) >= 0
            ):
                # The main sh does not trap TERM: an exit code >= 0 means it exited on its own first.
                paused = " (supervisor paused)" if j in self.paused else ""
                self.known.append(
                    f"late stop (test_a_stop_that_arrives_after...): {j} {st} exit {r['exit_code']}{paused}"
                )
            if st == "SUCCEEDED" and ends.get(j) != 0:
                self.violation(f"I3: job {j} SUCCEEDED without the command's exit 0")
            # failed-only / never must not run again after an outcome that forbids it.
            start_made = (r["rerun_reason"] or "") != "campaign-rerun" and not (r["request_id"] or "").startswith("rl-")
            # The newest earlier attempt that launched (NEVER_LAUNCHED ones ran nothing).
            n, prev = r["attempt_no"] - 1, None
            while n > 0 and (prev := by_key_attempt.get((r["run_key"], n))) is not None:
                if prev["status"] != "NEVER_LAUNCHED":
                    break
                n, prev = n - 1, None
            if start_made and prev is not None and not r["strict_override_used"]:
                policy, hidden = r["reuse_policy"], n != r["attempt_no"] - 1
                what = f"{policy} started {j} after {prev['status']} {prev['job_id']}"
                bad = (policy == "failed-only" and prev["status"] in ("SUCCEEDED", "LOST")) or policy == "never"
                if bad and hidden:
                    self.known.append(f"never-launched hides an outcome (test_a_never_launched...): {what}")
                elif bad:
                    self.violation(f"I3: {what}")
        for (j, pid), n in self.pl.terms().items():
            if n > 1 and j not in self.harmed:
                self.violation(f"I4: process {pid} of job {j} got {n} SIGTERMs")
        return {
            "jobs": len(rows),
            "cleaned": len(gone),
            "statuses": dict(Counter(r["status"] for r in rows)),
            "actions": dict(self.actions),
            "executions": self.pl.runs(),
            "monitor_samples": self.samples,
            "known": self.known,
        }


SEEDS = [int(s) for s in os.environ.get("LIFECYCLE_CAMPAIGN_SEEDS", "20261129,7").split(",")]
SECONDS = float(os.environ.get("LIFECYCLE_CAMPAIGN_SECONDS", "35"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_seeded_fault_campaign(runner, pl, seed):
    campaign = Campaign(runner, pl, seed)
    t0 = time.monotonic()
    campaign.run(SECONDS)
    summary = campaign.check()
    summary["seconds"] = round(time.monotonic() - t0, 1)
    print(f"\ncampaign seed={seed}: {json.dumps(summary, sort_keys=True)}")
    assert not campaign.violations, "\n".join(campaign.violations)
