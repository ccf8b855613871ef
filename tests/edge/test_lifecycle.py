"""The job's whole life on the host, through real processes: no overlap, no unknown outcome retried.

Every payload here holds an exclusive ``flock`` for as long as any process of its
tree lives (the lock's file description is inherited by every descendant). A
second attempt of the same run key that starts while anything of the first is
alive cannot take the lock and writes to ``overlaps``: that file must stay empty.
Whenever a job reads terminal, no process carrying its marker may be alive.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from edge_runtime import proctree
from tests.edge.conftest import TERMINAL, wait_status, wait_until


class Payload:
    """Builds commands that hold the run key's lock across their whole tree."""

    def __init__(self, tmp_path) -> None:
        self.lock = tmp_path / "payload.lock"
        self.overlaps = tmp_path / "overlaps"
        self.runs = tmp_path / "runs"

    def command(self, body: str) -> list[str]:
        inner = f"echo run >> {self.runs}; {body}"
        return [
            "sh",
            "-c",
            f"flock -n -E 99 {self.lock} sh -c '{inner}'; rc=$?; "
            f"[ $rc -eq 99 ] && echo overlap >> {self.overlaps}; exit $rc",
        ]

    def executions(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0

    def assert_no_overlap(self) -> None:
        assert not self.overlaps.exists(), "two attempts of one run key ran at the same time"


@pytest.fixture
def payload(tmp_path):
    return Payload(tmp_path)


def wait_terminal_and_check_tree(runner, key: str, timeout: float = 30) -> dict:
    """The job once terminal; asserts that at that moment nothing of its tree is alive."""
    deadline = time.monotonic() + timeout
    while True:
        job = runner.ok("status", "--run-key", key)
        if job["status"] in TERMINAL:
            assert proctree.marked(job["job_id"]) == [], f"{job['status']} while processes of the job still run"
            return job
        assert time.monotonic() < deadline, f"not terminal in {timeout}s: {job}"
        time.sleep(0.05)


def retry_while_active(runner, key: str, command: list[str], first: dict, *extra: str) -> dict:
    """Hammer ``start --reuse-policy failed-only`` while the first attempt is active; return the final one."""
    while True:
        again = runner.ok("start", "--run-key", key, "--reuse-policy", "failed-only", *extra, "--", *command)
        if again["accepted"]:
            return again
        assert again["job_id"] == first["job_id"], "a second attempt was returned while the first is active"
        time.sleep(0.05)


# ------------------------------------------------------------ the job is its tree
TREE_SHAPES = {
    # sh exits; its TERM-ignoring child lives on in the same group
    "background-child": '(trap "" TERM; touch {ready}; sleep 10) & {wait}; exit 3',
    # a descendant in its own session and group (sudo use_pty, daemonising scripts)
    "setsid-descendant": 'setsid sh -c "trap \\"\\" TERM; touch {ready}; sleep 10" & {wait}; exit 3',
    # classic daemon: double fork, the grandchild is orphaned at once
    "double-fork": '(sh -c "trap \\"\\" TERM; touch {ready}; sleep 10" &) ; {wait}; exit 3',
}


def tree_shape(shape: str, tmp_path) -> str:
    """The shape's body; the main command exits only once the leftover ignores TERM.

    Without the wait, the supervisor's single TERM round could reach the leftover
    before its trap is installed, and the test would see a correct but different
    story (the leftover dies at once).
    """
    ready = tmp_path / f"{shape}.ready"
    wait = f"while [ ! -e {ready} ]; do sleep 0.01; done"
    return TREE_SHAPES[shape].format(ready=ready, wait=wait)


@pytest.mark.parametrize("shape", sorted(TREE_SHAPES))
def test_leftovers_keep_the_job_active_until_the_whole_tree_is_gone(runner, payload, shape, tmp_path):
    command = payload.command(tree_shape(shape, tmp_path))
    first = runner.ok("start", "--run-key", shape, "--", *command)
    wait_until(lambda: (tmp_path / f"{shape}.ready").exists())
    time.sleep(0.3)
    # The main command has exited 3; what it left behind still holds the lock.
    assert runner.ok("status", "--run-key", shape)["status"] in ("RUNNING",)
    retry = retry_while_active(runner, shape, command, first)
    payload.assert_no_overlap()
    assert retry["attempt_no"] == 2
    old = runner.ok("status", "--job-id", first["job_id"])
    # The leftover ignored TERM: it was KILLed after the 5 s grace.
    assert old["status"] == "FAILED" and old["exit_code"] == 3
    wait_terminal_and_check_tree(runner, shape)
    assert payload.executions() == 2


def test_leftovers_are_stopped_after_the_main_command_exits(runner, payload):
    command = payload.command('(trap "" TERM; sleep 60) & exit 0')
    job = runner.ok("start", "--run-key", "left", "--", *command)
    t0 = time.monotonic()
    done = wait_terminal_and_check_tree(runner, "left", timeout=20)
    # TERM ignored, KILL after the 5 s grace: far less than the 60 s the child wanted.
    assert done["status"] == "SUCCEEDED" and time.monotonic() - t0 < 15
    assert done["job_id"] == job["job_id"]


def test_the_end_of_a_job_that_left_no_child_walks_no_proc(monkeypatch):
    """A supervisor with no child left has no descendant (orphans are re-parented to it): the end of
    most jobs must not pay a walk of every process on the host; one with children must still walk."""
    from edge_runtime import supervisor

    walks = []

    class Walk:
        def __init__(self, root, split_nested=False):
            walks.append(root)
            self.pids, self.nested, self.groups = [], [], []

    monkeypatch.setattr(proctree, "Snapshot", Walk)
    alone = supervisor._Tree(main_pid=2**22 + 1, job_id="j1")
    alone.childless = True
    alone.terminate(1.0)
    assert alone.term_at is not None and walks == []
    with_children = supervisor._Tree(main_pid=2**22 + 1, job_id="j2")
    with_children.terminate(1.0)
    assert walks == [os.getpid()]


def test_timeout_ends_with_the_whole_tree_gone(runner, payload):
    command = payload.command('(trap "" TERM; sleep 60) & trap "" TERM; sleep 60')
    runner.ok("start", "--run-key", "to", "--timeout", "1", "--", *command)
    done = wait_terminal_and_check_tree(runner, "to", timeout=20)
    assert done["status"] == "FAILED" and "timed out after 1 s" in done["error"]
    payload.assert_no_overlap()


# --------------------------------------------------------- stopping is a state
def test_abort_of_a_term_trapping_job_then_immediate_retry_never_overlaps(runner, payload, tmp_path):
    terms = tmp_path / "terms"
    command = payload.command(f'trap "echo term >> {terms}" TERM; while :; do sleep 0.2; done')
    first = runner.ok("start", "--run-key", "ab", "--", *command)
    wait_until(lambda: payload.executions() == 1)
    out = runner.ok("abort", "--run-key", "ab", "--grace-seconds", "2", "--wait", "0")
    # The stop is recorded as a state; nothing is terminal while the tree lives.
    assert out["status"] == "ABORTING" and out["stopping"] is True and out["aborted"] is False
    # What an Airflow "clear" does: a new try at once. It gets the stopping job back.
    again = runner.ok("start", "--run-key", "ab", "--reuse-policy", "failed-only", "--", *command)
    assert again["existing"] and again["job_id"] == first["job_id"] and again["status"] == "ABORTING"
    # Resending the stop is harmless.
    resent = runner.ok("abort", "--run-key", "ab", "--grace-seconds", "2", "--wait", "0")
    assert resent["job_id"] == first["job_id"]
    retry = retry_while_active(runner, "ab", command, first)
    assert retry["attempt_no"] == 2
    stopped = runner.ok("status", "--job-id", first["job_id"])
    assert stopped["status"] == "ABORTED" and stopped["stop_too_late"] is False
    # One TERM for the one process that traps it, whatever the number of stop requests.
    assert terms.read_text().splitlines() == ["term"]
    payload.assert_no_overlap()
    runner.ok("abort", "--run-key", "ab", "--grace-seconds", "0.2")


def test_abort_waits_for_the_tree_and_reports_signals(runner, payload):
    command = payload.command('trap "" TERM; sleep 30')
    runner.ok("start", "--run-key", "abw", "--", *command)
    wait_until(lambda: payload.executions() == 1)
    out = runner.ok("abort", "--run-key", "abw", "--grace-seconds", "0.5")
    assert out["status"] == "ABORTED" and out["aborted"] is True
    assert out["sent_term_worker"] and out["sent_term_target"] and out["sent_kill_target"]
    assert proctree.marked(out["job_id"]) == []


def test_a_command_that_finished_first_keeps_its_outcome(runner, tmp_path):
    # The main command exits 0 at once; a TERM-ignoring leftover keeps the job active.
    job = runner.ok("start", "--run-key", "late", "--", "sh", "-c", '(trap "" TERM; sleep 3) & exit 0')
    time.sleep(0.3)
    out = runner.ok("abort", "--run-key", "late", "--grace-seconds", "0.5")
    assert out["status"] == "SUCCEEDED" and out["stop_too_late"] is True and out["aborted"] is False
    assert out["job_id"] == job["job_id"] and proctree.marked(job["job_id"]) == []


def test_a_process_of_another_user_cannot_be_stopped_and_says_so(tmp_path):
    """``abort``/``cancel`` ask ``lifecycle.may_stop`` before recording anything.

    Here the kernel's own permission check decides: the job's command process is a
    root-owned process (what a setuid program the job exec'd becomes) and the stop
    is attempted by the unprivileged user ``nobody``.
    """
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to act as a second user")
    nobody = pwd.getpwnam("nobody")
    root_proc = subprocess.Popen(["sleep", "60"])
    try:
        with open(f"/proc/{root_proc.pid}/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])
        code = (
            "import json, sys; from edge_runtime import lifecycle, process\n"
            "row = {'job_id': 'j1', 'boot_id': process.boot_id(), 'worker_pid': None, 'worker_start': None,"
            " 'target_pid': int(sys.argv[1]), 'target_start': int(sys.argv[2])}\n"
            "print(json.dumps(lifecycle.may_stop(row)))"
        )
        p = subprocess.run(
            ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
             sys.executable, "-I", "-c", code, str(root_proc.pid), str(start)],
            capture_output=True, text=True, cwd="/",
        )  # fmt: skip
        assert "belongs to another user" in p.stdout, p.stdout + p.stderr
        # The same check as root (who may signal anything) lets the stop proceed.
        from edge_runtime import lifecycle, process

        row = {"job_id": "j1", "boot_id": process.boot_id(), "worker_pid": None, "worker_start": None,
               "target_pid": root_proc.pid, "target_start": start}  # fmt: skip
        assert lifecycle.may_stop(row) is None
    finally:
        root_proc.kill()
        root_proc.wait()


# --------------------------------------------------- outcomes: durable, never guessed
def test_supervisor_sigkill_after_the_durable_record_keeps_the_real_outcome(runner, payload):
    env = dict(runner.env, ORCHESJOB_TEST_KILL_AT="supervisor:exited")
    command = payload.command("exit 7")
    runner.ok("start", "--run-key", "rec", "--", *command, env=env)
    done = wait_terminal_and_check_tree(runner, "rec")
    assert (done["status"], done["exit_code"]) == ("FAILED", 7)
    retry = runner.ok("start", "--run-key", "rec", "--reuse-policy", "failed-only", "--sync", "--", "true")
    assert retry["accepted"] and retry["status"] == "SUCCEEDED"


def test_lost_is_not_retried_by_failed_only_unless_asked(runner, payload):
    env = dict(runner.env, ORCHESJOB_TEST_KILL_AT="supervisor:main-exited")
    command = payload.command("exit 0")
    runner.ok("start", "--run-key", "lost", "--", *command, env=env)
    done = wait_terminal_and_check_tree(runner, "lost")
    assert done["status"] == "LOST" and done["error"]
    again = runner.ok("start", "--run-key", "lost", "--reuse-policy", "failed-only", "--", *command)
    assert again["existing"] and again["status"] == "LOST" and payload.executions() == 1
    forced = runner.ok(
        "start", "--run-key", "lost", "--reuse-policy", "failed-only", "--retry-lost", "--sync", "--", *command
    )
    assert forced["accepted"] and forced["status"] == "SUCCEEDED" and payload.executions() == 2


@pytest.mark.slow
def test_database_locked_for_35s_at_exit_delays_the_outcome_but_never_loses_it(runner, tmp_path):
    runner.ok("info")
    job = runner.ok("start", "--run-key", "locked", "--", "sh", "-c", "sleep 1; exit 5")
    db = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"), isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")  # the write lock, held past the runtime's 30 s busy timeout
    released = threading.Event()

    def release() -> None:
        time.sleep(35)
        db.execute("COMMIT")
        released.set()

    threading.Thread(target=release, daemon=True).start()
    time.sleep(3)
    # The command exited long ago; readers still see it active (the supervisor keeps trying).
    assert runner.ok("status", "--run-key", "locked")["status"] == "RUNNING"
    released.wait(60)
    done = wait_status(runner, "locked", timeout=20)
    assert (done["status"], done["exit_code"]) == ("FAILED", 5) and done["job_id"] == job["job_id"]
    db.close()


def test_a_clean_end_commits_the_outcome_at_once_and_writes_no_separate_record(runner, tmp_path):
    """The common end (nothing left of the tree, the write lock free): one commit makes the
    outcome durable; the record file, its fsyncs and its removal are skipped. Seen from the
    logs directory, which a record's create/rename/unlink would modify."""
    runner.ok("info")
    job = runner.ok("start", "--run-key", "clean-end", "--", "sh", "-c", "sleep 0.5; exit 3")
    logs = os.path.dirname(job["stdout_file"])
    before = os.stat(logs).st_mtime_ns
    done = wait_status(runner, "clean-end", timeout=10)
    assert (done["status"], done["exit_code"]) == ("FAILED", 3)
    assert os.stat(logs).st_mtime_ns == before, os.listdir(logs)


def test_a_supervisor_killed_while_the_database_is_locked_at_exit_keeps_the_real_outcome(runner, tmp_path):
    runner.ok("info")
    job = runner.ok("start", "--run-key", "lk", "--", "sh", "-c", "sleep 0.5; exit 6")
    record = os.path.join(os.path.dirname(job["stdout_file"]), job["job_id"] + ".outcome")
    db = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"), isolation_level=None)
    db.execute("BEGIN IMMEDIATE")  # the write lock is busy when the command exits
    try:
        # Not committable at once: the outcome goes to its own durable record first.
        assert wait_until(lambda: os.path.exists(record), timeout=10)
        os.kill(job["worker_pid"], signal.SIGKILL)
    finally:
        db.execute("COMMIT")
        db.close()
    done = wait_status(runner, "lk", timeout=10)
    assert (done["status"], done["exit_code"]) == ("FAILED", 6) and done["job_id"] == job["job_id"]


# ------------------------------------------------ nothing from the caller's directory
def test_a_module_planted_in_the_callers_directory_is_never_imported(runner, tmp_path):
    trap = tmp_path / "cwd"
    trap.mkdir()
    hit = tmp_path / "imported"
    for name in ("json", "signal", "sqlite3", "edge_runtime"):
        target = trap / (name + ".py") if name != "edge_runtime" else trap / "edge_runtime" / "__init__.py"
        target.parent.mkdir(exist_ok=True)
        target.write_text(f"open({str(hit)!r}, 'a').write({name!r} + '\\n')\n")
    for key, extra in (("planted-async", []), ("planted-sync", ["--sync"])):
        r = runner.run("orchesjob", "start", "--run-key", key, *extra, "--", "true", cwd=str(trap))
        assert r.code == 0, r.err
        assert wait_status(runner, key)["status"] == "SUCCEEDED"
    assert not hit.exists(), f"imported from the caller's directory: {hit.read_text()}"


def test_the_supervisor_keeps_nothing_the_caller_held(runner, tmp_path):
    """The supervisor is the CLI process forked (no second interpreter): it must not hold on to
    the caller's descriptors — e.g. a dispatcher's lock, or the caller's SSH channel."""
    import fcntl

    lock_path = tmp_path / "callers.lock"
    held = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # the caller's lock, on a descriptor the CLI inherits
    r = runner.run("orchesjob", "start", "--run-key", "fds", "--", "sleep", "30", pass_fds=(held,))
    os.close(held)
    assert r.code == 0, r.err
    job = r.json
    sup = job["worker_pid"]
    with open(f"/proc/{sup}/comm", "rb") as f:
        assert f.read().strip() == proctree.SUPERVISOR_COMM
    fds = {fd: os.readlink(f"/proc/{sup}/fd/{fd}") for fd in os.listdir(f"/proc/{sup}/fd")}
    assert str(lock_path) not in fds.values()
    assert all(fds[fd] == os.devnull for fd in ("0", "1", "2"))
    # With the CLI gone, nobody holds the caller's lock while the job runs on.
    probe = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
    assert runner.ok("status", "--run-key", "fds")["status"] == "RUNNING"
    runner.ok("abort", "--run-key", "fds")
    assert wait_status(runner, "fds")["status"] == "ABORTED"


# ------------------------------------------------------------------ secrets
def test_env_values_never_on_a_command_line(runner, tmp_path):
    secret = "s3cr3t-" + os.urandom(6).hex()
    out = tmp_path / "seen"
    expected = tmp_path / "expected"
    expected.write_text(secret)
    r = runner.run(
        "orchesjob",
        *("start", "--run-key", "env", "--env-file", "-", "--"),
        *("sh", "-c", f'[ "$API_TOKEN" = "$(cat {expected})" ] && echo ok > {out}; sleep 2'),
        input=json.dumps({"API_TOKEN": secret}),
    )
    assert r.code == 0, r.err
    assert secret not in r.out and "API_TOKEN" in r.out  # the key is reported, never the value
    wait_until(lambda: out.exists())
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    assert secret.encode() not in f.read(), f"secret on the command line of pid {name}"
            except OSError:
                pass
    done = wait_status(runner, "env")
    assert done["status"] == "SUCCEEDED" and secret not in str(done)


def test_no_zombie_keeps_a_job_running(runner):
    # The main command leaves a child that exits at once but is never waited for by its parent.
    job = runner.ok("start", "--run-key", "zombie", "--", "sh", "-c", "sleep 0.1 & exec sleep 1")
    done = wait_status(runner, "zombie", timeout=10)
    assert done["status"] == "SUCCEEDED" and done["job_id"] == job["job_id"]


def test_an_unlock_consumed_by_a_start_that_never_launched_is_granted_again(runner):
    runner.ok("start", "--run-key", "strict-key", "--strict", "--sync", "--", "true")
    runner.ok("unlock", "--run-key", "strict-key", "--reason", "re-run after fix")
    env = dict(runner.env, ORCHESJOB_TEST_KILL_AT="start:claimed")
    assert runner.oj("start", "--run-key", "strict-key", "--strict", "--", "true", env=env).code < 0
    assert wait_status(runner, "strict-key")["status"] == "NEVER_LAUNCHED"
    # The override was spent on a claim that ran nothing: the next start still gets it.
    again = runner.ok("start", "--run-key", "strict-key", "--strict", "--sync", "--", "true")
    assert again["accepted"] and again["status"] == "SUCCEEDED" and again["attempt_no"] == 3
    assert runner.ok("start", "--run-key", "strict-key", "--strict", "--", "true")["existing"]
