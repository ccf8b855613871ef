"""The public orchesjob-reserver 0.1.2 and orchesjob-flow 0.1.0.dev0, unchanged,
driving this checkout's ``orchesjob`` through ORCHESJOB_BIN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from tests.conftest import cli_path


def _env(tmp_path):
    env = dict(os.environ, ORCHESJOB_HOME=str(tmp_path / "home"), ORCHESJOB_BIN=cli_path("orchesjob"))
    env.pop("ORCHESJOB_RESERVER_HOME", None)
    env.pop("ORCHESJOB_FLOW_HOME", None)
    return env


def _ours(env, *args):
    p = subprocess.run([cli_path("orchesjob"), *args], capture_output=True, text=True, env=env)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None


def test_public_reserver_dispatches_through_our_orchesjob(public_bin, tmp_path):
    env = _env(tmp_path)
    reserver = os.path.join(public_bin, "orchesjob-reserver")
    db = str(tmp_path / "reserver.sqlite3")
    out = subprocess.run(
        [reserver, "reserve", "--db", db, "--run-key", "pub-res", "--orchesjob-start-option=--strict",
         "--", "sh", "-c", "echo dispatched"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["created"] is True
    run = subprocess.Popen(
        [reserver, "run", "--db", db, "--poll-interval", "0.2"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = json.loads(subprocess.run([reserver, "status", "--db", db, "--run-key", "pub-res"],
                                           capture_output=True, text=True, env=env).stdout)  # fmt: skip
            if st["reservation"]["reservation_status"] == "DISPATCHED":
                break
            time.sleep(0.2)
    finally:
        run.send_signal(signal.SIGTERM)
        events = [json.loads(line) for line in run.communicate(timeout=30)[0].splitlines() if line.strip()]
    assert st["reservation"]["reservation_status"] == "DISPATCHED", events
    job_id = st["reservation"]["job_id"]
    assert [e["event"] for e in events if e["event"] == "dispatch_succeeded"] == ["dispatch_succeeded"]
    code, job = _ours(env, "status", "--run-key", "pub-res")
    assert code == 0 and job["job_id"] == job_id and job["strict"] is True
    deadline = time.monotonic() + 10
    while job["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
        job = _ours(env, "status", "--run-key", "pub-res")[1]
    inc = subprocess.run([reserver, "status", "--db", db, "--run-key", "pub-res", "--include-job"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert inc.returncode == 0 and json.loads(inc.stdout)["job"]["job_id"] == job_id
    res = subprocess.run([reserver, "result", "--db", db, "--run-key", "pub-res"], capture_output=True, text=True,
                         env=env)  # fmt: skip
    assert res.returncode == 0 and json.loads(res.stdout)["status"] == "SUCCEEDED"


def test_public_reserver_cancel_proxies_to_our_cancel(public_bin, tmp_path):
    env = _env(tmp_path)
    reserver = os.path.join(public_bin, "orchesjob-reserver")
    db = str(tmp_path / "reserver.sqlite3")
    subprocess.run([reserver, "reserve", "--db", db, "--run-key", "pub-c", "--", "sleep", "30"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    run = subprocess.Popen([reserver, "run", "--db", db, "--poll-interval", "0.2"], stdout=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        while _ours(env, "status", "--run-key", "pub-c")[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # let the dispatcher record DISPATCHED
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
    c = subprocess.run([reserver, "cancel", "--db", db, "--run-key", "pub-c"], capture_output=True, text=True, env=env)
    assert c.returncode == 0, c.stderr
    assert json.loads(c.stdout)["status"] == "CANCELLED"
    assert _ours(env, "status", "--run-key", "pub-c")[1]["status"] == "CANCELLED"


FLOW = """\
flow_id: compat
steps:
  - id: A
    command: ["sh", "-c", "echo A"]
  - id: B
    when: A
    command: ["sh", "-c", "exit 4"]
  - id: C
    when: "!B"
    command: ["sh", "-c", "echo C"]
  - id: D
    when: B
    command: ["sh", "-c", "echo D"]
"""


def test_public_flow_runs_steps_through_our_orchesjob(public_bin, tmp_path):
    env = _env(tmp_path)
    flow_file = tmp_path / "flow.yaml"
    flow_file.write_text(FLOW)
    flow = os.path.join(public_bin, "orchesjob-flow")
    p = subprocess.run(
        [flow, "--db", str(tmp_path / "flow.sqlite3"), "--poll-interval", "0.1", "start", "--run-key", "fr",
         str(flow_file)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    result = json.loads(p.stdout)
    steps = {s["id"]: s["status"] for s in result["steps"]}
    assert steps == {"A": "SUCCEEDED", "B": "FAILED", "C": "SUCCEEDED", "D": "SKIPPED"}, p.stderr
    assert result["status"] == "FAILED" and p.returncode == 1
    code, job = _ours(env, "status", "--run-key", "fr:B:1")
    assert code == 0 and job["status"] == "FAILED" and job["exit_code"] == 4 and job["strict"] is True
    assert _ours(env, "status", "--run-key", "fr:C:1")[1]["status"] == "SUCCEEDED"
