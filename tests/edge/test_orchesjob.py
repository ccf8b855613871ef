"""Black-box tests of every ``orchesjob`` command, through real processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import time

import pytest

from tests.edge.conftest import alive, wait_status


# ---------------------------------------------------------------- start/status
def test_async_start_returns_running_job_with_spec_fields(runner):
    job = runner.ok("start", "--run-key", "k1", "--", "sh", "-c", "echo out; echo err >&2; sleep 1")
    assert list(job)[:5] == ["accepted", "existing", "mode", "strict", "strict_override_used"]
    assert job["accepted"] is True and job["existing"] is False and job["mode"] == "async"
    assert job["status"] == "RUNNING"
    assert job["pid_kind"] == "target" and job["pid"] == job["target_pid"] and job["worker_pid"]
    assert job["attempt_no"] == 1 and job["rerun_of_job_id"] is None
    assert job["stdout_file"] == os.path.join(runner.home, "logs", job["job_id"] + ".stdout")
    for name in ("started_at", "updated_at"):
        assert isinstance(job[name], int) and job[name + "_iso"].startswith(time.strftime("%Y-"))
    assert job["finished_at"] is None and job["finished_at_iso"] is None
    done = wait_status(runner, "k1")
    assert done["status"] == "SUCCEEDED" and done["exit_code"] == 0 and done["finished_at"] >= done["started_at"]
    assert runner.oj("logs", "--run-key", "k1").out == "out\n"
    assert runner.oj("logs", "--run-key", "k1", "--stream", "stderr").out == "err\n"
    assert os.path.exists(os.path.join(runner.home, "orchesjob.db"))


def test_sync_start_waits_and_reports_failure(runner):
    job = runner.ok("start", "--run-key", "s", "--sync", "--", "sh", "-c", "sleep 0.3; exit 7")
    assert job["mode"] == "sync" and job["status"] == "FAILED" and job["exit_code"] == 7
    assert job["finished_at"] is not None


def test_start_without_separator_and_flag_like_args(runner):
    job = runner.ok("start", "--run-key", "nosep", "--sync", "echo", "-n", "--", "x")
    assert job["command"] == ["echo", "-n", "--", "x"]
    assert runner.oj("logs", "--run-key", "nosep").out == "-- x"


def test_idempotent_start_while_running_returns_same_job(runner):
    first = runner.ok("start", "--run-key", "idem", "--", "sleep", "2")
    again = runner.ok("start", "--run-key", "idem", "--", "sleep", "2")
    assert again["job_id"] == first["job_id"]
    assert again["accepted"] is False and again["existing"] is True
    assert len(runner.ok("status", "--run-key", "idem", "--all")) == 1
    runner.ok("abort", "--run-key", "idem", "--grace-seconds", "1")


def test_default_policy_restarts_after_terminal_with_attempt_numbers(runner):
    a = runner.ok("start", "--run-key", "r", "--sync", "--", "true")
    b = runner.ok("start", "--run-key", "r", "--sync", "--", "true")
    assert b["accepted"] and b["attempt_no"] == 2 and b["rerun_of_job_id"] == a["job_id"]
    hist = runner.ok("status", "--run-key", "r", "--all")
    assert [j["attempt_no"] for j in hist] == [2, 1]
    assert runner.ok("status", "--job-id", a["job_id"])["job_id"] == a["job_id"]


def test_strict_returns_existing_until_unlocked(runner):
    a = runner.ok("start", "--run-key", "st", "--strict", "--sync", "--", "true")
    b = runner.ok("start", "--run-key", "st", "--strict", "--sync", "--", "true")
    assert b["existing"] and b["job_id"] == a["job_id"] and b["strict"] is True
    un = runner.ok("unlock", "--run-key", "st", "--reason", "data fix", "--ttl", "30m")
    assert un["unlocked"] and un["reason"] == "data fix" and un["expires_at"] - un["allowed_at"] == 1800
    assert runner.ok("status", "--run-key", "st")["strict_override"]["reason"] == "data fix"
    c = runner.ok("start", "--run-key", "st", "--strict", "--sync", "--", "true")
    assert c["accepted"] and c["attempt_no"] == 2 and c["strict_override_used"] is True
    d = runner.ok("start", "--run-key", "st", "--strict", "--sync", "--", "true")
    assert d["existing"] and d["job_id"] == c["job_id"], "an unlock is consumed by one use"
    assert runner.ok("status", "--run-key", "st")["strict_override"] is None


def test_unlock_ttl_expiry_and_errors(runner):
    runner.ok("start", "--run-key", "ttl", "--strict", "--sync", "--", "true")
    runner.ok("unlock", "--run-key", "ttl", "--ttl", "1s")
    time.sleep(1.2)
    again = runner.ok("start", "--run-key", "ttl", "--strict", "--sync", "--", "true")
    assert again["existing"], "expired unlock must not allow a new execution"
    for ttl in ("0", "abc", "5x", "-3"):
        r = runner.oj("unlock", "--run-key", "ttl", "--ttl", ttl)
        assert r.code == 2 and "ttl" in r.error["error"]
    assert runner.oj("unlock", "--run-key", "missing").code == 3
    runner.ok("start", "--run-key", "busy", "--", "sleep", "2")
    r = runner.oj("unlock", "--run-key", "busy")
    assert r.code == 4 and r.error["error_type"] == "invalid_state"
    runner.ok("abort", "--run-key", "busy", "--grace-seconds", "1")


@pytest.mark.parametrize("prev_cmd,prev_status", [("exit 3", "FAILED"), ("true", "SUCCEEDED")])
def test_failed_only_policy(runner, prev_cmd, prev_status):
    a = runner.ok("start", "--run-key", "fo", "--sync", "--", "sh", "-c", prev_cmd)
    assert a["status"] == prev_status
    b = runner.ok("start", "--run-key", "fo", "--reuse-policy", "failed-only", "--sync", "--", "true")
    if prev_status == "SUCCEEDED":
        assert b["existing"] and b["job_id"] == a["job_id"], "a success is adopted, never re-run"
    else:
        assert b["accepted"] and b["attempt_no"] == 2 and b["status"] == "SUCCEEDED"


def test_failed_only_after_abort_starts_new_attempt(runner):
    runner.ok("start", "--run-key", "fa", "--", "sleep", "5")
    runner.ok("abort", "--run-key", "fa", "--grace-seconds", "1")
    b = runner.ok("start", "--run-key", "fa", "--reuse-policy", "failed-only", "--", "true")
    assert b["accepted"] and b["attempt_no"] == 2


def test_strict_conflicts_with_other_policy(runner):
    r = runner.oj("start", "--run-key", "x", "--strict", "--reuse-policy", "always", "--", "true")
    assert r.code == 2 and "conflicts" in r.error["error"]


def test_cwd_env_and_host_side_timeout(runner, tmp_path):
    job = runner.ok(
        "start", "--run-key", "ce", "--sync", "--cwd", str(tmp_path), "--env", "GREETING=hi there", "--env",
        "EMPTY=", "--", "sh", "-c", 'printf "%s|%s|%s" "$PWD" "$GREETING" "${EMPTY-unset}"',
    )  # fmt: skip
    assert job["status"] == "SUCCEEDED" and job["env_keys"] == ["EMPTY", "GREETING"]
    assert runner.oj("logs", "--run-key", "ce").out == f"{tmp_path}|hi there|"
    t0 = time.monotonic()
    # Nobody polls: the supervisor alone must enforce the limit, killing the whole group.
    job = runner.ok("start", "--run-key", "to", "--timeout", "1", "--", "sh", "-c", "sleep 30 & sleep 30")
    done = wait_status(runner, "to", timeout=15)
    assert done["status"] == "FAILED" and "timed out" in done["error"]
    assert done["exit_code"] == -signal.SIGTERM
    assert time.monotonic() - t0 < 12
    assert not alive(job["target_pid"])


def test_bad_cwd_and_env(runner):
    r = runner.oj("start", "--run-key", "x", "--cwd", "/no/such/dir", "--", "true")
    assert r.code == 2 and "cwd" in r.error["error"]
    r = runner.oj("start", "--run-key", "x", "--env", "NOEQUALS", "--", "true")
    assert r.code == 2 and "KEY=VALUE" in r.error["error"]
    r = runner.oj("start", "--run-key", "x", "--timeout", "soon", "--", "true")
    assert r.code == 2


def test_launch_failure_is_failed_with_reason(runner):
    job = runner.ok("start", "--run-key", "nf", "--sync", "--", "/no/such/program", "arg")
    assert job["status"] == "FAILED" and job["exit_code"] == 127
    assert "No such file" in job["error"]


def test_exit_code_of_signalled_command(runner):
    job = runner.ok("start", "--run-key", "sig", "--sync", "--", "sh", "-c", "kill -9 $$")
    assert job["status"] == "FAILED" and job["exit_code"] == -9


def test_result_exit_codes(runner):
    runner.ok("start", "--run-key", "ok", "--sync", "--", "true")
    r = runner.oj("result", "--run-key", "ok")
    assert r.code == 0 and r.json["status"] == "SUCCEEDED"
    runner.ok("start", "--run-key", "bad", "--sync", "--", "false")
    r = runner.oj("result", "--run-key", "bad")
    assert r.code == 1 and r.json["status"] == "FAILED" and r.json["exit_code"] == 1
    runner.ok("start", "--run-key", "slow", "--", "sleep", "3")
    r = runner.oj("result", "--run-key", "slow")
    assert r.code == 4 and r.error["status"] == "RUNNING"
    assert runner.oj("result", "--run-key", "nope").code == 3
    assert runner.oj("result", "--job-id", "nope").code == 3
    runner.ok("abort", "--run-key", "slow", "--grace-seconds", "1")


def test_status_running_and_batch(runner):
    a = runner.ok("start", "--run-key", "b1", "--", "sleep", "3")
    b = runner.ok("start", "--run-key", "b2", "--sync", "--", "true")
    running = runner.ok("status", "--running")
    assert [j["run_key"] for j in running] == ["b1"]
    many = runner.ok("status", "--run-key", "b1", "--run-key", "missing", "--job-id", b["job_id"])
    assert [m.get("run_key") for m in many] == ["b1", "missing", "b2"]
    assert many[0]["job_id"] == a["job_id"] and many[1]["error_type"] == "not_found"
    assert many[2]["status"] == "SUCCEEDED"
    runner.ok("abort", "--run-key", "b1", "--grace-seconds", "1")
    assert runner.ok("status", "--running") == []


def test_status_log_chunks_from_offsets(runner):
    # 3-byte UTF-8 characters, plus undecodable bytes on stderr.
    script = "printf 'aé€'; printf '\\377\\376x' >&2"
    runner.ok("start", "--run-key", "logs", "--sync", "--", "sh", "-c", script)
    whole = "aé€".encode()
    job = runner.ok("status", "--run-key", "logs", "--stdout-offset", "0", "--stderr-offset", "0")
    assert job["stdout_chunk"] == {
        "offset": 0, "next_offset": len(whole), "size": len(whole), "encoding": "utf-8", "data": "aé€"
    }  # fmt: skip
    assert job["stderr_chunk"]["encoding"] == "base64"
    assert base64.b64decode(job["stderr_chunk"]["data"]) == b"\xff\xfex"
    # A small window never splits a character: the chunk stops before it.
    job = runner.ok("status", "--run-key", "logs", "--stdout-offset", "0", "--max-bytes", "2")
    assert job["stdout_chunk"]["data"] == "a" and job["stdout_chunk"]["next_offset"] == 1
    got, offset = b"", 0
    while offset < len(whole):
        chunk = runner.ok("status", "--run-key", "logs", "--stdout-offset", str(offset), "--max-bytes", "4")
        chunk = chunk["stdout_chunk"]
        assert chunk["encoding"] == "utf-8"
        got += chunk["data"].encode()
        assert chunk["next_offset"] > offset
        offset = chunk["next_offset"]
    assert got == whole
    job = runner.ok("status", "--run-key", "logs", "--stdout-offset", str(len(whole)))
    assert job["stdout_chunk"]["data"] == "" and job["stdout_chunk"]["next_offset"] == len(whole)


def test_status_batch_serves_many_pollers_in_one_call(runner, tmp_path):
    done = runner.ok("start", "--run-key", "p1", "--sync", "--", "sh", "-c", "printf 'out1'; printf 'err1' >&2")
    slow = runner.ok("start", "--run-key", "p2", "--", "sh", "-c", "printf 'x'; sleep 3")
    requests = [
        {"run_key": "p1", "stdout_offset": 0, "stderr_offset": 3},
        {"job_id": slow["job_id"]},
        {"run_key": "missing", "stdout_offset": 0},
        {"run_key": "p1", "stdout_offset": -1},  # bad input fails its own entry only
        {"run_key": "p1", "stdout_offset": 2, "max_bytes": 1},
    ]
    out = runner.ok("status", "--batch", "-", input=json.dumps(requests))
    assert len(out) == len(requests)
    assert out[0]["job_id"] == done["job_id"] and out[0]["status"] == "SUCCEEDED"
    assert out[0]["stdout_chunk"]["data"] == "out1" and out[0]["stderr_chunk"]["data"] == "1"
    assert out[1]["job_id"] == slow["job_id"] and out[1]["status"] == "RUNNING" and "stdout_chunk" not in out[1]
    assert out[2] == {"run_key": "missing", "status": None, "error": "run_key not found: missing",
                      "error_type": "not_found"}  # fmt: skip
    assert out[3]["status"] is None and out[3]["error_type"] == "invalid_arguments"
    assert out[4]["stdout_chunk"] == {"offset": 2, "next_offset": 3, "size": 4, "encoding": "utf-8", "data": "t"}
    # Same answer from a file as from stdin.
    path = tmp_path / "requests.json"
    path.write_text(json.dumps(requests[:1]))
    assert runner.ok("status", "--batch", str(path))[0]["stdout_chunk"] == out[0]["stdout_chunk"]
    assert runner.ok("status", "--batch", "-", input="[]") == []
    runner.ok("abort", "--run-key", "p2", "--grace-seconds", "1")


@pytest.mark.parametrize(
    "text",
    ['{"run_key": "a"}', "not json", '["a"]', '[{"run_key": "a", "extra": 1}]', '[{"run_key": "a", "job_id": "b"}]',
     '[{}]', '[{"run_key": 5}]', '[{"run_key": "a", "stdout_offset": "0"}]', '[{"run_key": "a", "max_bytes": true}]'],
)  # fmt: skip
def test_status_batch_refuses_malformed_input(runner, text):
    r = runner.oj("status", "--batch", "-", input=text)
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments" and "--batch" in r.error["error"]
    assert r.out == ""


def test_status_batch_is_exclusive_and_reads_files(runner):
    assert runner.oj("status", "--batch", "-", "--run-key", "a", input="[]").code == 2
    assert runner.oj("status", "--batch", "-", "--running", input="[]").code == 2
    r = runner.oj("status", "--batch", "/nonexistent/requests.json")
    assert r.code == 2 and "cannot read" in r.error["error"]


def test_status_selector_errors(runner):
    assert runner.oj("status").code == 2
    assert runner.oj("status", "--run-key", "a", "--run-key", "b", "--stdout-offset", "0").code == 2
    assert runner.oj("status", "--all", "--job-id", "x").code == 2
    assert runner.oj("status", "--running", "--run-key", "x").code == 2
    assert runner.oj("status", "--run-key", "a", "--max-bytes", "0", "--stdout-offset", "0").code in (2, 3)
    r = runner.oj("status", "--run-key", "nope")
    assert r.code == 3 and r.error == {"error": "run_key not found: nope", "error_type": "not_found", "run_key": "nope"}
    assert runner.oj("status", "--run-key", "nope", "--all").code == 3


@pytest.mark.parametrize("job_id", ["../etc/passwd", "a/b", "..", "x\\y"])
def test_path_characters_in_job_ids_are_refused(runner, job_id):
    for cmd in (["status"], ["logs"], ["abort"], ["result"], ["clean"]):
        r = runner.oj(*cmd, "--job-id", job_id)
        assert r.code == 2 and r.error["error_type"] == "invalid_arguments", cmd


def test_run_keys_with_shell_and_unicode_characters(runner):
    key = "dag:task;$(rm -rf /)`x` 'q\" ✓\n*"
    job = runner.ok("start", "--run-key", key, "--sync", "--", "printf", "%s", key)
    assert job["run_key"] == key
    assert runner.oj("logs", "--run-key", key).out == key
    assert runner.oj("start", "--run-key", "", "--", "true").code == 2


# --------------------------------------------------------------------- abort
def test_abort_kills_whole_process_group_and_records_first(runner, tmp_path):
    marker = tmp_path / "child.pid"
    script = f"sh -c 'echo $$ > {marker}; trap \"\" TERM; sleep 60' & trap '' TERM; sleep 60"
    job = runner.ok("start", "--run-key", "ab", "--", "sh", "-c", script)
    deadline = time.monotonic() + 5
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(marker.read_text())
    t0 = time.monotonic()
    out = runner.ok("abort", "--run-key", "ab", "--reason", "manual intervention", "--grace-seconds", "0.5")
    assert out["status"] == "ABORTED" and out["aborted"] is True and out["abort_reason"] == "manual intervention"
    assert out["sent_term_target"] and out["sent_term_worker"]
    assert out["sent_kill_target"], "TERM was ignored, so KILL must have been needed"
    assert out["aborted_at"] is not None and time.monotonic() - t0 < 6
    assert not alive(job["target_pid"]) and not alive(grandchild)
    assert wait_status(runner, "ab")["status"] == "ABORTED"
    # ABORTED was recorded before the signals: strict sees the key as consumed.
    again = runner.ok("start", "--run-key", "ab", "--strict", "--", "true")
    assert again["existing"] and again["status"] == "ABORTED"


def test_abort_graceful_term_and_errors(runner):
    runner.ok("start", "--run-key", "g", "--", "sleep", "30")
    out = runner.ok("abort", "--run-key", "g", "--grace-seconds", "5")
    assert out["sent_term_target"] and not out["sent_kill_target"]
    # The supervisor still records the command's exit status.
    deadline = time.monotonic() + 5
    while runner.ok("status", "--run-key", "g")["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.ok("status", "--run-key", "g")["exit_code"] == -signal.SIGTERM
    again = runner.ok("abort", "--run-key", "g")  # already ended: success, nothing signalled
    assert again["status"] == "ABORTED" and again["already_ended"] is True and not again["sent_term_worker"]
    assert runner.oj("abort", "--run-key", "missing").code == 3
    assert runner.oj("abort", "--run-key", "g", "--grace-seconds", "soon").code == 2


def test_cancel_records_cancelled(runner):
    runner.ok("start", "--run-key", "c", "--", "sleep", "30")
    out = runner.ok("cancel", "--run-key", "c", "--grace-seconds", "2")
    assert out["status"] == "CANCELLED" and out["cancelled"] is True
    again = runner.ok("cancel", "--run-key", "c")  # an ended job: success, nothing signalled
    assert again["already_ended"] is True and again["status"] == "CANCELLED" and "already_finished" not in again
    b = runner.ok("start", "--run-key", "c", "--reuse-policy", "failed-only", "--sync", "--", "true")
    assert b["accepted"] and b["attempt_no"] == 2


# --------------------------------------------------------------------- rerun
def test_rerun(runner):
    a = runner.ok("start", "--run-key", "rr", "--strict", "--sync", "--", "sh", "-c", "echo run")
    b = runner.ok("rerun", "--run-key", "rr", "--sync", "--reason", "retry after disk error")
    assert b["rerun"] is True and b["attempt_no"] == 2 and b["rerun_of_job_id"] == a["job_id"]
    assert b["rerun_reason"] == "retry after disk error" and b["command"] == a["command"]
    c = runner.ok("rerun", "--job-id", a["job_id"], "--sync")
    assert c["attempt_no"] == 3 and c["rerun_of_job_id"] == a["job_id"]
    runner.ok("start", "--run-key", "rr2", "--", "sleep", "3")
    assert runner.oj("rerun", "--run-key", "rr2").code == 4
    assert runner.oj("rerun", "--run-key", "none").code == 3
    runner.ok("abort", "--run-key", "rr2", "--grace-seconds", "1")


# --------------------------------------------------------------------- clean
def _finished_at(runner, run_key, ts):
    db = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"))
    with db:
        db.execute("UPDATE jobs SET finished_at=? WHERE run_key=?", (ts, run_key))
    db.close()


def test_clean_selections(runner):
    ids = {}
    for key, ts in (("old", 1_700_000_000), ("mid", 1_750_000_000), ("new", 1_790_000_000)):
        ids[key] = runner.ok("start", "--run-key", key, "--sync", "--", "echo", key)["job_id"]
        _finished_at(runner, key, ts)
    runner.ok("start", "--run-key", "active", "--", "sleep", "5")
    dry = runner.ok("clean", "--before", "2024-01-01T00:00:00+00:00", "--dry-run")
    assert dry["dry_run"] is True and dry["deleted"] == 1 and [i["run_key"] for i in dry["items"]] == ["old"]
    assert dry["items"][0]["selected_at"] == 1_700_000_000
    assert runner.oj("status", "--run-key", "old").code == 0
    rng = runner.ok("clean", "--after", "1740000000", "--before", "2026-01-01", "--dry-run")
    assert [i["run_key"] for i in rng["items"]] == ["mid"]
    one = runner.ok("clean", "--job-id", ids["mid"])
    assert one["deleted"] == 1 and runner.oj("status", "--run-key", "mid").code == 3
    assert not os.path.exists(os.path.join(runner.home, "logs", ids["mid"] + ".stdout"))
    keyed = runner.ok("clean", "--run-key", "old", "--all")
    assert keyed["deleted"] == 1 and [i["job_id"] for i in keyed["items"]] == [ids["old"]]
    everything = runner.ok("clean", "--all")
    assert [i["run_key"] for i in everything["items"]] == ["new"]
    assert runner.ok("status", "--run-key", "active")["status"] == "RUNNING", "active jobs are never deleted"
    assert runner.oj("clean", "--job-id", runner.ok("status", "--run-key", "active")["job_id"]).code == 4
    runner.ok("abort", "--run-key", "active", "--grace-seconds", "1")


def test_clean_argument_errors(runner):
    for args in (
        [],
        ["--job-id", "x", "--all"],
        ["--job-id", "x", "--run-key", "k"],
        ["--all", "--before", "2026-01-01"],
        ["--before", "yesterday"],
        ["--after", "2026-13-45"],
    ):
        r = runner.oj("clean", *args)
        assert r.code == 2, args
        assert r.error["error_type"] == "invalid_arguments"
    assert runner.oj("clean", "--job-id", "unknown").code == 3


def test_cleaned_strict_key_stays_consumed_unless_forgotten(runner):
    a = runner.ok("start", "--run-key", "once", "--strict", "--sync", "--", "true")
    runner.ok("clean", "--run-key", "once", "--all")
    b = runner.ok("start", "--run-key", "once", "--strict", "--", "true")
    assert b["existing"] and b["purged"] and b["job_id"] == a["job_id"] and b["status"] == "SUCCEEDED"
    # failed-only also remembers the purged outcome
    c = runner.ok("start", "--run-key", "once", "--reuse-policy", "failed-only", "--", "true")
    assert c["existing"] and c["status"] == "SUCCEEDED"
    runner.ok("start", "--run-key", "f", "--strict", "--sync", "--", "true")
    runner.ok("clean", "--run-key", "f", "--all", "--forget-keys")
    d = runner.ok("start", "--run-key", "f", "--strict", "--sync", "--", "true")
    assert d["accepted"] and d["attempt_no"] == 1


def test_logs_errors(runner):
    assert runner.oj("logs", "--run-key", "missing").code == 3
    runner.ok("start", "--run-key", "l", "--sync", "--", "true")
    assert runner.oj("logs", "--run-key", "l", "--stream", "both").code == 2


# ------------------------------------------------------------- CLI contract
def test_version_info_and_help(runner):
    from edge_runtime import __version__

    r = runner.oj("--version")
    assert r.code == 0 and r.out.strip() == f"orchesjob {__version__}"
    info = runner.ok("info")
    assert info["orchesjob_home"] == runner.home and "reuse-policy" in info["capabilities"]
    for cmd in ("start", "status", "result", "logs", "clean", "abort", "cancel", "unlock", "rerun", "info"):
        r = runner.oj(cmd, "--help")
        assert r.code == 0 and "usage:" in r.out, cmd
    assert "failed-only" in runner.oj("start", "--help").out


def test_start_checks_the_callers_major_version_before_anything_and_describes_the_runtime(runner):
    from edge_runtime import CAPABILITIES, __version__

    other = str(int(__version__.split(".")[0]) + 1)
    r = runner.oj("start", f"--expect-major={other}", "--run-key", "m", "--", "true")
    assert r.code == 2
    assert r.error["error_type"] == "incompatible_runtime" and r.error["version"] == __version__
    assert not os.path.exists(runner.home)  # refused before the state home was even opened
    job = runner.ok("start", "--expect-major", __version__.split(".")[0], "--run-key", "m", "--sync", "--", "true")
    assert job["status"] == "SUCCEEDED"
    assert job["runtime"] == {"version": __version__, "capabilities": list(CAPABILITIES)}
    assert "start-compat-check" in job["runtime"]["capabilities"]
    assert job["runtime"]["capabilities"] == runner.ok("info")["capabilities"]
    assert "runtime" not in runner.ok("start", "--run-key", "m2", "--sync", "--", "true")  # only when asked


@pytest.mark.parametrize(
    "args",
    [["bogus"], [], ["start", "--run-key", "x", "--frobnicate", "--", "true"], ["start", "--", "true"],
     ["start", "--run-key", "x"], ["start", "--run-key", "x", "--start-timeout", "abc", "--", "true"],
     ["status", "--run-key", "x", "--", "extra"]],
)  # fmt: skip
def test_bad_arguments_give_one_json_error_and_exit_2(runner, args):
    r = runner.oj(*args)
    assert r.code == 2
    assert r.error["error_type"] == "invalid_arguments"
    assert "Traceback" not in r.err


def test_unusable_home_is_a_json_error(runner, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(runner.env, ORCHESJOB_HOME=str(blocker / "home"))
    r = runner.oj("status", "--run-key", "x", env=env)
    assert r.code == 1 and "cannot create state directory" in r.error["error"] and "Traceback" not in r.err


def test_default_home_falls_back_to_user_dir(runner, tmp_path):
    env = {k: v for k, v in runner.env.items() if k != "ORCHESJOB_HOME"}
    env["HOME"] = str(tmp_path / "user")
    env.pop("XDG_DATA_HOME", None)
    info = json.loads(runner.oj("info", env=env).out)
    expected = "/var/lib/orchesjob" if os.access("/var/lib", os.W_OK) else str(tmp_path / "user/.local/share/orchesjob")
    assert info["orchesjob_home"] == expected


def test_foreign_database_is_refused_not_modified(runner):
    os.makedirs(runner.home)
    path = os.path.join(runner.home, "orchesjob.db")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE jobs (job_id TEXT PRIMARY KEY, run_key TEXT)")
    db.commit()
    db.close()
    r = runner.oj("status", "--run-key", "x")
    assert r.code == 1 and "not created by this edge runtime" in r.error["error"]
    db = sqlite3.connect(path)
    assert [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["jobs"]
    db.close()


def test_resent_start_request_returns_the_first_copys_job(runner):
    # The first copy ran and failed; its reply was lost. The resend must not start attempt 2.
    a = runner.ok("start", "--run-key", "rq", "--reuse-policy", "failed-only", "--request-id", "req-1", "--sync",
                  "--", "false")  # fmt: skip
    b = runner.ok("start", "--run-key", "rq", "--reuse-policy", "failed-only", "--request-id", "req-1", "--", "false")
    assert a["status"] == "FAILED" and b["existing"] and b["job_id"] == a["job_id"]
    c = runner.ok("start", "--run-key", "rq", "--reuse-policy", "failed-only", "--request-id", "req-2", "--", "true")
    assert c["accepted"] and c["attempt_no"] == 2, "a new request is judged by the reuse policy"
    r = runner.oj("start", "--run-key", "other", "--request-id", "req-1", "--", "true")
    assert r.code == 2 and "already used" in r.error["error"]


def test_cleaning_only_the_newest_attempt_keeps_its_outcome(runner):
    runner.ok("start", "--run-key", "cn", "--sync", "--", "false")
    second = runner.ok("start", "--run-key", "cn", "--sync", "--", "true")
    runner.ok("clean", "--job-id", second["job_id"])
    again = runner.ok("start", "--run-key", "cn", "--reuse-policy", "failed-only", "--", "true")
    assert again["existing"] and again["purged"] and again["status"] == "SUCCEEDED", "a success is never re-run"


def test_unusable_inputs_are_usage_errors(runner):
    runner.ok("start", "--run-key", "u", "--sync", "--", "true")
    r = runner.oj("status", "--run-key", "u", "--stdout-offset", "99999999999999999999")
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments"
    r = runner.oj("status", "--run-key", b"\xff\xfe".decode("utf-8", "surrogateescape"))
    assert r.code == 2


def test_command_does_not_inherit_supervisor_fds(runner):
    runner.ok("start", "--run-key", "fd", "--sync", "--", "sh", "-c", "ls /proc/$$/fd")
    assert sorted(int(x) for x in runner.oj("logs", "--run-key", "fd").out.split()) == [0, 1, 2]
