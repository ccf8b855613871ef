"""A host owner's terminal: `orchesjob list/stats/logs --follow`, `--format table`, `--sync --exit-code`,
one stop rule for the three CLIs. Real console scripts, real jobs, real SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from datetime import datetime

import pytest

from tests.conftest import cli_path
from tests.edge.conftest import alive, wait_status, wait_until

RES = "orchesjob-reserver"
FLOW = "orchesjob-flow"


def started(runner, key: str, *cmd: str) -> dict:
    runner.ok("start", "--run-key", key, "--", *cmd)
    return wait_status(runner, key, statuses=("RUNNING",))


def sync(runner, key: str, *cmd: str) -> dict:
    return runner.ok("start", "--run-key", key, "--sync", "--", *cmd)


# ------------------------------------------------------------------------ list
def test_list_filters_and_orders_newest_first(runner):
    sync(runner, "nightly-a", "true")
    sync(runner, "nightly-b", "sh", "-c", "exit 3")
    sync(runner, "other", "sh", "-c", "exit 4")
    runner.ok("start", "--run-key", "nightly-c", "--label", "team=ops", "--", "sleep", "30")
    keys = [j["run_key"] for j in runner.ok("list")["jobs"]]
    assert keys == ["nightly-c", "other", "nightly-b", "nightly-a"]
    failed = runner.ok("list", "--status", "FAILED")["jobs"]
    assert [j["run_key"] for j in failed] == ["other", "nightly-b"]
    either = runner.ok("list", "--status", "FAILED", "--status", "SUCCEEDED", "--run-key-prefix", "nightly-")
    assert [j["run_key"] for j in either["jobs"]] == ["nightly-b", "nightly-a"]
    assert [j["run_key"] for j in runner.ok("list", "--run-key-prefix", "night", "--limit", "2")["jobs"]] == [
        "nightly-c",
        "nightly-b",
    ]
    assert [j["run_key"] for j in runner.ok("list", "--label", "team=ops")["jobs"]] == ["nightly-c"]
    # Each entry is the object `status` prints.
    assert runner.ok("list", "--run-key-prefix", "other")["jobs"][0] == {
        k: v for k, v in runner.ok("status", "--run-key", "other").items() if k != "strict_override"
    }


def test_list_walks_page_by_page_past_non_matching_jobs(runner):
    first = sync(runner, "keep-0", "true")
    # 1200 more finished jobs, copied in SQL (a start each would take minutes); every 100th is a "keep-".
    conn = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"))
    cols = [r[1] for r in conn.execute("PRAGMA table_info(jobs)")]
    picks = ", ".join("?" if c in ("job_id", "run_key") else c for c in cols)
    for i in range(1, 1201):
        key = f"keep-{i}" if i % 100 == 0 else f"skip-{i}"
        conn.execute(
            f"INSERT INTO jobs ({', '.join(cols)}) SELECT {picks} FROM jobs WHERE job_id = ?",
            (f"copy-{i}", key, first["job_id"]),
        )
    conn.execute("""UPDATE jobs SET labels='{"keep": "yes"}' WHERE run_key LIKE 'keep-%'""")
    conn.commit()
    conn.close()
    expected = [f"keep-{i}" for i in range(1200, -1, -100)]
    kept = [j["run_key"] for j in runner.ok("list", "--run-key-prefix", "keep-", "--limit", "1000")["jobs"]]
    assert kept == expected
    # Labels are matched after the read: the walk goes on through pages that hold no match.
    labelled = runner.ok("list", "--label", "keep=yes", "--limit", "1000")["jobs"]
    assert [j["run_key"] for j in labelled] == expected
    assert [j["run_key"] for j in runner.ok("list", "--label", "keep=yes", "--limit", "2")["jobs"]] == expected[:2]
    assert len(runner.ok("list", "--limit", "1000")["jobs"]) == 1000
    assert [j["job_id"] for j in runner.ok("list", "--limit", "2000")["jobs"]][-2:] == ["copy-1", first["job_id"]]


def test_list_since_takes_an_age_or_a_time(runner):
    sync(runner, "old", "true")
    time.sleep(1.1)
    cut = time.time()
    sync(runner, "new", "true")
    assert [j["run_key"] for j in runner.ok("list", "--since", "1h")["jobs"]] == ["new", "old"]
    assert [j["run_key"] for j in runner.ok("list", "--since", f"{cut:.3f}")["jobs"]] == ["new"]
    # naive ISO = local time; the whole second of `cut` is after "old" started (1.1 s before it)
    iso = datetime.fromtimestamp(int(cut)).isoformat()
    assert [j["run_key"] for j in runner.ok("list", "--since", iso)["jobs"]] == ["new"]
    later = datetime.fromtimestamp(cut + 3600).isoformat()
    assert runner.ok("list", "--since", later)["jobs"] == []


def test_list_table_shows_ids_and_exit_codes_whole(runner):
    key = "k-" + "x" * 90
    job = sync(runner, key, "sh", "-c", "exit 201")
    r = runner.oj("list", "--format", "table")
    assert r.code == 0
    header, rule, row = r.out.splitlines()
    assert header.split()[:4] == ["Job", "id", "Run", "key"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert job["job_id"] in row and key in row and " 201 " in row and "FAILED" in row
    assert r.out.isascii()


@pytest.mark.parametrize(
    "args",
    [
        ("--status", "DONE"),
        ("--since", "yesterday"),
        ("--since", "5x"),
        ("--limit", "0"),
        ("--run-key-prefix", ""),
        ("--format", "yaml"),
        ("--label", "novalue"),
    ],
)
def test_list_bad_input_is_a_json_usage_error(runner, args):
    r = runner.oj("list", *args)
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments" and r.out == ""


# ---------------------------------------------------------------- status table
def test_status_table_of_one_job_and_of_several(runner):
    job = sync(runner, "one", "sh", "-c", "echo hi; exit 5")
    started(runner, "two", "sleep", "30")
    r = runner.oj("status", "--run-key", "one", "--format", "table")
    assert r.code == 0
    fields = dict(line.split(":", 1) for line in r.out.splitlines())
    assert fields["Job id"].strip() == job["job_id"] and fields["Exit code"].strip() == "5"
    assert fields["Command"].strip() == "sh -c 'echo hi; exit 5'"
    running = runner.oj("status", "--running", "--format", "table").out.splitlines()
    assert len(running) == 3 and "two" in running[2] and "RUNNING" in running[2]
    many = runner.oj("status", "--run-key", "one", "--run-key", "gone", "--format", "table").out
    assert "NOT FOUND" in many and job["job_id"] in many
    history = runner.oj("status", "--run-key", "one", "--all", "--format", "table").out.splitlines()
    assert len(history) == 3
    r = runner.oj("status", "--run-key", "one", "--stdout-offset", "0", "--format", "table")
    assert r.code == 2 and "--format table" in r.error["error"]


# ------------------------------------------------------------- --exit-code
@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 3", 3), ("exit 255", 255), ("kill -9 $$", 128 + 9)])
def test_sync_exit_code_passes_the_jobs_outcome_on(runner, script, code):
    r = runner.oj("start", "--run-key", "x", "--sync", "--exit-code", "--", "sh", "-c", script)
    assert r.code == code and r.json["status"] == ("SUCCEEDED" if code == 0 else "FAILED")
    # Without the opt-in, a sync start that ran the job exits 0 whatever its outcome (compatibility).
    assert runner.oj("start", "--run-key", "y", "--sync", "--", "sh", "-c", script).code == 0


def test_sync_exit_code_of_a_stopped_job_is_125_and_needs_sync(runner, tmp_path):
    proc = runner.popen(
        "orchesjob", "start", "--run-key", "s", "--sync", "--exit-code", "--", "sleep", "30", stdout=subprocess.PIPE
    )
    wait_until(lambda: runner.oj("status", "--run-key", "s").code == 0)  # claimed by the background start
    wait_status(runner, "s", statuses=("RUNNING",))
    runner.ok("abort", "--run-key", "s", "--grace-seconds", "1")
    assert proc.wait(timeout=30) == 125
    r = runner.oj("start", "--run-key", "t", "--exit-code", "--", "true")
    assert r.code == 2 and "--sync" in r.error["error"]


def test_rerun_sync_exit_code(runner):
    sync(runner, "r", "sh", "-c", "exit 6")
    assert runner.oj("rerun", "--run-key", "r", "--sync", "--exit-code").code == 6
    assert runner.oj("rerun", "--run-key", "r", "--sync").code == 0


def test_sync_exit_code_waits_for_an_active_attempt_it_returns(runner, tmp_path):
    gate = tmp_path / "gate"
    started(runner, "w", "sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.05; done; exit 9')
    proc = runner.popen(
        "orchesjob", "start", "--run-key", "w", "--sync", "--exit-code", "--", "true", stdout=subprocess.PIPE
    )
    time.sleep(0.5)
    assert proc.poll() is None  # the existing RUNNING attempt was returned: waiting for its outcome
    gate.write_text("")
    assert proc.wait(timeout=30) == 9


# ------------------------------------------------------------ logs --follow
def test_logs_follow_streams_until_the_job_ends(runner, tmp_path):
    gate = tmp_path / "gate"
    script = f'echo first; while [ ! -e "{gate}" ]; do sleep 0.05; done; echo second; exit 4'
    started(runner, "f", "sh", "-c", script)
    proc = runner.popen("orchesjob", "logs", "--run-key", "f", "--follow", "--exit-code", stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"first\n"  # printed while the job still runs
    assert runner.ok("status", "--run-key", "f")["status"] == "RUNNING"
    gate.write_text("")
    assert proc.stdout.read() == b"second\n"
    assert proc.wait(timeout=30) == 4


def test_logs_follow_reads_on_after_a_copytruncate(runner, tmp_path):
    gate = tmp_path / "gate"
    script = f'echo aaaaaaaaaa; while [ ! -e "{gate}" ]; do sleep 0.05; done; echo after'
    job = started(runner, "ct", "sh", "-c", script)
    proc = runner.popen("orchesjob", "logs", "--job-id", job["job_id"], "--follow", stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"aaaaaaaaaa\n"
    os.truncate(job["stdout_file"], 0)
    time.sleep(0.5)  # the follower sees the file shrink below what it has read
    gate.write_text("")
    assert proc.stdout.read() == b"after\n"
    assert proc.wait(timeout=30) == 0


def test_logs_follow_of_an_ended_job_prints_it_and_exits(runner):
    sync(runner, "done", "sh", "-c", "echo out; echo err >&2; exit 2")
    r = runner.oj("logs", "--run-key", "done", "--follow", "--stream", "stderr", "--exit-code")
    assert (r.code, r.out) == (2, "err\n")
    assert runner.oj("logs", "--run-key", "done", "--follow").code == 0
    assert runner.oj("logs", "--run-key", "missing", "--follow").code == 3
    r = runner.oj("logs", "--run-key", "done", "--exit-code")
    assert r.code == 2 and "--follow" in r.error["error"]


# ----------------------------------------------------------------------- stats
def test_stats_answers_the_operations_questions(runner):
    sync(runner, "ok", "true")
    sync(runner, "bad", "sh", "-c", "exit 3")
    runner.ok("start", "--run-key", "bad", "--sync", "--", "sh", "-c", "echo something; exit 4")
    long = started(runner, "long", "sleep", "30")
    orphan = started(runner, "orphan", "sleep", "30")
    os.kill(orphan["worker_pid"], signal.SIGKILL)  # its supervisor dies, the command runs on
    wait_until(lambda: not alive(orphan["worker_pid"]))
    runner.ok("reserve", "--run-key", "late", "--not-before", str(time.time() - 120), "--", "true", tool=RES)
    runner.ok("reserve", "--run-key", "later", "--not-before", str(time.time() + 3600), "--", "true", tool=RES)
    stats = runner.ok("stats", "--hours", "1")
    assert stats["hours"] == 1
    assert stats["jobs_by_status"]["SUCCEEDED"] == 1 and stats["jobs_by_status"]["FAILED"] == 2
    assert stats["running_now"] == 2 and stats["starting_now"] == 0
    assert stats["oldest_running"]["job_id"] == long["job_id"] and stats["oldest_running"]["age_seconds"] >= 0
    assert [(j["job_id"], j["reason"]) for j in stats["stuck"]] == [(orphan["job_id"], "supervisor_gone")]
    (failing,) = stats["failures_by_run_key"]
    assert (failing["run_key"], failing["failures"]) == ("bad", 2)
    last = failing["last"]
    assert (last["job_id"], last["status"], last["exit_code"]) == (
        runner.ok("status", "--run-key", "bad")["job_id"],
        "FAILED",
        4,
    )
    assert stats["logs"]["files"] >= 10 and stats["logs"]["bytes"] > 0
    res = stats["reservations"]
    assert res["pending"] == 2 and res["due_not_dispatched"] == 1 and res["most_late"]["run_key"] == "late"
    assert 110 < res["max_lateness_seconds"] < 600
    assert stats["flow_runs"] is None  # no flow database in this home: none is created
    assert not os.path.exists(os.path.join(runner.home, "orchesjob-flow.sqlite3"))
    # Read-only: the orphan is reported, not settled.
    assert runner.query("orchesjob.db", "SELECT status FROM jobs WHERE job_id=?", (orphan["job_id"],)) == [("RUNNING",)]
    table = runner.oj("stats", "--format", "table").out
    assert "Stuck:" in table and "supervisor_gone" in table and "Failures by run key" in table
    assert "most late" in table


def test_stats_reports_an_overdue_stop(runner):
    job = started(runner, "stubborn", "sleep", "30")
    # A stop recorded an hour ago that never completed (what a killed `abort` leaves, before anyone signals).
    conn = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"))
    conn.execute(
        "UPDATE jobs SET status='ABORTING', stop_requested_at=?, stop_grace=1 WHERE job_id=?",
        (time.time() - 3600, job["job_id"]),
    )
    conn.commit()
    conn.close()
    stats = runner.ok("stats")
    assert [(j["job_id"], j["reason"]) for j in stats["stuck"]] == [(job["job_id"], "stop_overdue")]
    assert runner.query("orchesjob.db", "SELECT status FROM jobs") == [("ABORTING",)]


@pytest.mark.parametrize("hours", ["0", "-1", "abc", "9999"])
def test_stats_bad_hours(runner, hours):
    r = runner.oj("stats", "--hours", hours)
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments"


# ---------------------------------------------------------------- stop rule
def test_stopping_an_ended_job_succeeds_and_changes_nothing(runner):
    job = sync(runner, "fin", "sh", "-c", "exit 1")
    for verb in ("abort", "cancel"):
        out = runner.ok(verb, "--run-key", "fin")
        assert out["already_ended"] is True and out["already_finished"] is True
        assert out["status"] == "FAILED" and out["exit_code"] == 1 and out["job_id"] == job["job_id"]
        assert out["sent_term_target"] is False and out["stop_requested_at"] is None
    started(runner, "live", "sleep", "30")
    first = runner.ok("abort", "--run-key", "live", "--grace-seconds", "1")
    assert first["already_ended"] is False and first["status"] == "ABORTED"
    second = runner.ok("abort", "--run-key", "live")
    assert second["already_ended"] is True and "already_finished" not in second and second["aborted"] is True
    assert runner.oj("cancel", "--run-key", "unknown").code == 3


def test_flow_cancel_twice_and_unknown(runner, tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("flow_id: f\nsteps:\n  - id: a\n    command: [sleep, '30']\n")
    assert runner.run(FLOW, "start", "--run-key", "fc", "--detach", str(path)).code == 0
    first = runner.ok("cancel", "--run-key", "fc", "--grace-seconds", "1", tool=FLOW)
    assert first["cancelled"] is True and first["already_ended"] is False
    again = runner.ok("cancel", "--run-key", "fc", tool=FLOW)
    assert again["cancelled"] is False and again["already_ended"] is True and again["status"] == "CANCELLED"
    r = runner.run(FLOW, "cancel", "--run-key", "nope")
    assert r.code == 2 and r.error["error_type"] == "not_found"


# --------------------------------------------------------------- reserver views
def test_reserver_list_and_status_tables(runner):
    r = runner.ok("reserve", "--run-key", "due", "--not-before", str(time.time() - 90), "--", "true", tool=RES)
    rid = r["reservation"]["reservation_id"]
    out = runner.run(RES, "list", "--format", "table").out.splitlines()
    assert out[0].split()[:3] == ["Reservation", "id", "Run"] and rid in out[2] and "RESERVED" in out[2]
    late = out[2].split()[5]  # id, key, status, date, time, Late
    assert late.startswith("00:01:") or late.startswith("00:02:"), out[2]
    fields = runner.run(RES, "status", "--run-key", "due", "--format", "table").out
    assert f"Reservation id: {rid}" in fields and "Status:         RESERVED" in fields
    assert runner.run(RES, "list", "--format", "xml").code == 2


# ------------------------------------------------------------------------ info
def test_info_lists_the_new_capabilities(runner):
    caps = runner.ok("info")["capabilities"]
    for cap in ("job-list", "format-table", "logs-follow", "stats", "sync-exit-code", "stop-ended-ok"):
        assert cap in caps


def test_help_names_the_new_commands():
    out = subprocess.run([cli_path("orchesjob"), "--help"], capture_output=True, text=True).stdout
    for word in ("list", "stats", "--format table", "logs --run-key nightly-backup --follow"):
        assert word in out


# ------------------------------------------------------------------------ flow
RETRY_FLOW = """\
flow_id: demo
steps:
  - id: first
    command: ["sh", "-c", "echo one"]
  - id: flaky
    depends_on: [first]
    retries: 1
    command: ["sh", "-c", "exit 77"]
"""


def run_on_a_terminal(argv: list[str], env: dict) -> tuple[int, str]:
    """Run ``argv`` with its stdout on a pseudo-terminal; (exit code, what it printed)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdout=follower, stderr=subprocess.PIPE, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=60), b"".join(chunks).decode().replace("\r\n", "\n")


def test_foreground_flow_start_on_a_terminal_prints_transitions_then_the_table(runner, tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(RETRY_FLOW)
    code, out = run_on_a_terminal(
        [cli_path(FLOW), "--poll-interval", "0.2", "start", "--run-key", "tty", str(path)], runner.env
    )
    assert code == 1
    lines = out.splitlines()
    assert any(line.endswith("first  PENDING -> RUNNING  (attempt 1, job tty:first:1)") for line in lines)
    assert any("first  RUNNING -> SUCCEEDED  (attempt 1, job tty:first:1, exit 0," in line for line in lines)
    assert any("flaky  " in line and "-> FAILED  (attempt 2/2, job tty:flaky:2, exit 77," in line for line in lines)
    assert any("flow tty FAILED: 1/2 steps done, 1 failed" in line for line in lines)
    assert "{" not in out  # no JSON for a person at a terminal
    header = next(line for line in lines if line.startswith("Step "))
    assert header.split() == ["Step", "Status", "Attempt", "Elapsed", "Job", "Exit", "Run", "key", "Error"]
    rows = {line.split()[0]: line for line in lines[lines.index(header) + 2 :] if line.strip()}
    assert rows["first"].split()[3] == "1"  # no "1/0": a step without retries has one attempt
    assert rows["flaky"].split()[3] == "2/2" and " 77 " in rows["flaky"]


def test_foreground_flow_start_off_a_terminal_keeps_one_json_line(runner, tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(RETRY_FLOW)
    r = runner.run(FLOW, "--poll-interval", "0.2", "start", "--run-key", "pipe", str(path))
    assert r.code == 1 and len(r.out.splitlines()) == 1 and r.json["status"] == "FAILED"
    # --format table asks for the person's view explicitly, on a pipe too
    r = runner.run(FLOW, "start", "--run-key", "pipe", "--format", "table", str(path))
    assert r.code == 1 and r.out.startswith("Flow: demo  Run: pipe") and r.out.isascii()
    r = runner.run(FLOW, "start", "--run-key", "d", "--detach", "--format", "table", str(path))
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments"


def test_flow_list_table(runner, tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(RETRY_FLOW)
    runner.run(FLOW, "--poll-interval", "0.2", "start", "--run-key", "lt", "--label", "who=me", str(path))
    out = runner.run(FLOW, "list", "--format", "table").out.splitlines()
    assert out[0].split() == ["Run", "key", "Flow", "Status", "Started", "Elapsed", "Labels"]
    assert out[2].split()[:4] == ["lt", "demo", "NG", "FAILED"] and out[2].endswith("who=me")
    assert runner.run(FLOW, "list", "--format", "csv").code == 2


# ------------------------------------------------------------------ state home
def _user_env(runner, tmp_path) -> dict:
    env = {k: v for k, v in runner.env.items() if k not in ("ORCHESJOB_HOME", "XDG_DATA_HOME")}
    env["HOME"] = str(tmp_path / "user")
    env["ORCHESJOB_TEST_SYSTEM_HOME"] = str(tmp_path / "no-such-dir" / "orchesjob")  # not usable
    return env


def test_the_three_tools_share_one_state_home(runner, tmp_path):
    env = _user_env(runner, tmp_path)
    home = str(tmp_path / "user" / ".local" / "share" / "orchesjob")
    info = runner.ok("info", env=env)
    assert info["orchesjob_home"] == home
    assert os.path.dirname(info["reserver_db"]) == home and os.path.dirname(info["flow_db"]) == home
    path = tmp_path / "flow.yaml"
    path.write_text("flow_id: h\nsteps:\n  - id: a\n    command: ['true']\n")
    assert runner.run(FLOW, "start", "--run-key", "h", str(path), env=env).code == 0
    assert os.path.exists(os.path.join(home, "orchesjob-flow.sqlite3"))
    assert not os.path.exists(tmp_path / "user" / ".local" / "share" / "orchesjob-flow")
    # ... so `stats` sees the flow runs (and the step's job) of the same home
    stats = runner.ok("stats", env=env)
    assert stats["flow_runs"]["by_status"] == {"SUCCEEDED": 1} and stats["flow_runs"]["active"] == 0
    assert stats["jobs_by_status"]["SUCCEEDED"] == 1


def test_flow_runs_in_the_old_flow_directory_are_not_left_behind(runner, tmp_path):
    env = _user_env(runner, tmp_path)
    legacy = tmp_path / "user" / ".local" / "share" / "orchesjob-flow"
    path = tmp_path / "flow.yaml"
    path.write_text("flow_id: h\nsteps:\n  - id: a\n    command: ['true']\n")
    old = dict(env, ORCHESJOB_FLOW_HOME=str(legacy))  # where an older release kept flow state
    assert runner.run(FLOW, "start", "--run-key", "old-run", str(path), env=old).code == 0
    assert runner.ok("info", env=env)["flow_db"] == str(legacy / "orchesjob-flow.sqlite3")
    assert runner.run(FLOW, "status", "--run-key", "old-run", env=env).code == 0
