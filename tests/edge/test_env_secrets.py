"""Environment values stay secret: given without a command line, never printed, only their keys.

Real processes: the CLIs, the supervisor, the dispatcher and the commands.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import cli_path
from tests.edge.conftest import wait_until

SECRET = "s3cr3t-value-7f1c"
RES = "orchesjob-reserver"


def cmdlines_with(needle: str) -> list[str]:
    """Command lines of every process on the host that contain ``needle``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def echo_secret_then_wait(gate) -> list[str]:
    return ["sh", "-c", f'echo "got:$TOKEN:$PLAIN"; while [ ! -e {gate} ]; do sleep 0.05; done']


@pytest.mark.parametrize("form", ["json", "lines"])
def test_start_env_file_from_stdin_reaches_the_job_and_no_command_line(runner, tmp_path, form):
    gate = tmp_path / "gate"
    doc = json.dumps({"TOKEN": SECRET}) if form == "json" else f"# a comment\n\nTOKEN={SECRET}\n"
    r = runner.run(
        "orchesjob",
        "start",
        "--run-key",
        "k",
        "--env-file",
        "-",
        "--env",
        "PLAIN=plain",
        "--",
        *echo_secret_then_wait(gate),
        input=doc,
    )
    assert r.code == 0, r.err
    assert SECRET not in r.out and SECRET not in r.err
    job = r.json
    assert job["env_keys"] == ["PLAIN", "TOKEN"]
    wait_until(lambda: os.path.exists(job["stdout_file"]) and os.path.getsize(job["stdout_file"]) > 0)
    # The job runs now: no process on the host shows the value on its command line.
    assert cmdlines_with(SECRET) == []
    for args in (("status", "--run-key", "k"), ("status", "--running"), ("status", "--run-key", "k", "--all")):
        out = runner.oj(*args).out
        assert "TOKEN" in out and SECRET not in out
    gate.touch()
    done = wait_until(lambda: (j := runner.ok("status", "--run-key", "k"))["status"] == "SUCCEEDED" and j)
    with open(done["stdout_file"]) as f:
        assert f.read().strip() == f"got:{SECRET}:plain"
    assert SECRET not in runner.oj("result", "--run-key", "k").out


def test_env_file_path_and_env_override(runner, tmp_path):
    env_file = tmp_path / "job.env"
    env_file.write_text(f"TOKEN={SECRET}\nPLAIN=from-file\n")
    job = runner.ok("start", "--run-key", "k", "--sync", "--env-file", str(env_file), "--env", "PLAIN=wins", "--",
                    "sh", "-c", 'echo "$TOKEN $PLAIN"')  # fmt: skip
    with open(job["stdout_file"]) as f:
        assert f.read().strip() == f"{SECRET} wins"


@pytest.mark.parametrize(
    "content",
    ['{"A": 1}', "[1, 2]", "not a pair", '{"A": "x"', "=novalue", "\xff"],
)
def test_bad_env_file_is_refused_without_echoing_values_and_writes_nothing(runner, tmp_path, content):
    env_file = tmp_path / "bad.env"
    env_file.write_bytes(content.encode("latin-1"))
    r = runner.oj("start", "--run-key", "k", "--env-file", str(env_file), "--", "true")
    assert r.code == 2, (r.code, r.err)
    assert r.error["error_type"] == "invalid_arguments"
    assert "novalue" not in r.err and "not a pair" not in r.err
    assert runner.oj("status", "--run-key", "k").code == 3
    missing = runner.oj("start", "--run-key", "k", "--env-file", str(tmp_path / "nope"), "--", "true")
    assert missing.code == 2 and missing.error["error_type"] == "invalid_arguments"


def test_env_error_messages_never_echo_values(runner):
    r = runner.oj("start", "--run-key", "k", "--env", f"=x{SECRET}", "--", "true")
    assert r.code == 2 and SECRET not in r.err


def test_reservation_env_reaches_the_job_and_is_printed_as_keys_only(runner, tmp_path):
    env_file = tmp_path / "r.env"
    env_file.write_text(json.dumps({"TOKEN": SECRET}))
    r = runner.run(
        RES,
        "reserve",
        "--run-key",
        "r",
        "--env-file",
        str(env_file),
        f"--orchesjob-start-option=--env=PLAIN={SECRET}-opt",
        "--orchesjob-start-option=--timeout=1h",
        "--",
        "sh",
        "-c",
        'echo "$TOKEN|$PLAIN|$GLOBAL"',
    )
    assert r.code == 0, r.err
    out = r.json["reservation"]
    assert SECRET not in r.out
    assert out["env_keys"] == ["PLAIN", "TOKEN"]
    assert out["orchesjob_start_options"] == ["--timeout=1h"]
    for args in (("status", "--run-key", "r"), ("list",)):
        text = runner.run(RES, *args).out
        assert "TOKEN" in text and SECRET not in text
    # The dispatcher: a global --env option goes to the job too, never to its log.
    d = runner.run(RES, "run", "--once", f"--orchesjob-start-option=--env=GLOBAL={SECRET}-global")
    assert d.code == 0, d.err
    assert SECRET not in d.out and SECRET not in d.err
    events = [json.loads(line) for line in d.out.splitlines()]
    started = next(e for e in events if e["event"] == "reserver_started")
    assert started["env_keys"] == ["GLOBAL"] and started["orchesjob_start_options"] == []
    call = next(e for e in events if e["event"] == "orchesjob_start_call")
    assert call["env_keys"] == ["GLOBAL", "PLAIN", "TOKEN"]
    job_id = runner.ok("status", "--run-key", "r", tool=RES)["reservation"]["job_id"]
    job = wait_until(lambda: (j := runner.ok("status", "--job-id", job_id))["status"] == "SUCCEEDED" and j)
    with open(job["stdout_file"]) as f:
        assert f.read().strip() == f"{SECRET}|{SECRET}-opt|{SECRET}-global"
    assert SECRET not in runner.run(RES, "status", "--run-key", "r", "--include-job").out
    assert SECRET not in runner.run(RES, "clean", "--all", "--dry-run").out


def test_reserve_env_file_from_stdin(runner):
    r = runner.run(RES, "reserve", "--run-key", "r", "--env-file", "-", "--", "true", input=f"TOKEN={SECRET}\n")
    assert r.code == 0, r.err
    assert r.json["reservation"]["env_keys"] == ["TOKEN"] and SECRET not in r.out
    stored = runner.query("reserver.sqlite3", "SELECT env, start_options FROM reservations")
    assert json.loads(stored[0][0]) == {"TOKEN": SECRET} and json.loads(stored[0][1]) == []


def test_env_file_is_not_a_reservation_start_option(runner, tmp_path):
    r = runner.run(RES, "reserve", "--run-key", "r", f"--orchesjob-start-option=--env-file={tmp_path}/x", "--", "true")
    assert r.code == 2 and "reserve --env-file" in r.error["error"]
    assert runner.run(RES, "status", "--run-key", "r").code == 4


def test_capability_is_advertised(runner):
    assert "env-file" in runner.ok("info")["capabilities"]


def test_help_documents_env_file():
    for tool, args in (("orchesjob", ["start", "--help"]), (RES, ["reserve", "--help"])):
        text = subprocess.run([cli_path(tool), *args], capture_output=True, text=True).stdout
        assert "--env-file" in text and "stdin" in text


def test_reservation_stored_by_an_older_release_shows_keys_only_and_dispatches_its_env(runner):
    # Earlier versions kept `--env=K=V` inside the start options (and printed them).
    runner.ok("reserve", "--run-key", "old", "--", "sh", "-c", 'echo "$TOKEN"', tool=RES)
    import sqlite3

    db = sqlite3.connect(os.path.join(runner.home, "reserver.sqlite3"))
    db.execute(
        "UPDATE reservations SET start_options = ?, env = NULL WHERE run_key = 'old'",
        (json.dumps([f"--env=TOKEN={SECRET}", "--timeout=1h"]),),
    )
    db.commit()
    db.close()
    shown = runner.run(RES, "status", "--run-key", "old")
    assert shown.code == 0 and SECRET not in shown.out
    assert shown.json["reservation"]["env_keys"] == ["TOKEN"]
    assert shown.json["reservation"]["orchesjob_start_options"] == ["--timeout=1h"]
    d = runner.run(RES, "run", "--once")
    assert d.code == 0 and SECRET not in d.out + d.err
    job_id = runner.ok("status", "--run-key", "old", tool=RES)["reservation"]["job_id"]
    job = wait_until(lambda: (j := runner.ok("status", "--job-id", job_id))["status"] == "SUCCEEDED" and j)
    with open(job["stdout_file"]) as f:
        assert f.read().strip() == SECRET
