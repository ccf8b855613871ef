"""OrchesJobHook against a real sshd, a real unprivileged user and a pipx-installed runtime."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from airflow_provider_orchesjob.exceptions import (
    OrchesJobConnectionError,
    OrchesJobHostKeyError,
    OrchesJobInvalidArguments,
    OrchesJobInvalidState,
    OrchesJobNotFound,
    OrchesJobRuntimeMissing,
)
from airflow_provider_orchesjob.hooks import OrchesJobHook

from .conftest import set_connection, wait_terminal

NASTY = ["a;b", "$(touch /tmp/pwned)", "`id`", "it's", 'say "hi"', "two\nlines", "*", "ünïcödé ✓", "-n", "--", ""]


def test_runtime_found_without_path_and_info(conn_id, ssh_server):
    hook = OrchesJobHook(conn_id)
    info = hook.runtime_info()
    # Found in ~/.local/bin although a non-interactive SSH session does not have it on PATH.
    assert ssh_server.ssh("command -v orchesjob").returncode != 0
    assert info["orchesjob_home"].startswith(ssh_server.home)
    assert "reuse-policy" in info["capabilities"]


def test_job_methods_end_to_end(conn_id):
    hook = OrchesJobHook(conn_id)
    job = hook.start_job("h1", ["sh", "-c", "echo out; echo err >&2; sleep 0.5; exit 3"])
    assert job["accepted"] and job["status"] in ("STARTING", "RUNNING")
    again = hook.start_job("h1", ["sh", "-c", "echo never"])
    assert again["existing"] and again["job_id"] == job["job_id"]
    st = hook.job_status("h1", stdout_offset=0, stderr_offset=0)
    assert "stdout_chunk" in st and "stderr_chunk" in st
    final = wait_terminal(hook, "h1")
    assert final["status"] == "FAILED" and final["exit_code"] == 3
    res = hook.job_result("h1")  # exit 1 on the host = finished unsuccessfully, still a result
    assert res["status"] == "FAILED"
    assert hook.job_logs("h1") == b"out\n" and hook.job_logs(job_id=job["job_id"], stream="stderr") == b"err\n"
    many = hook.job_status_many(run_keys=["h1", "missing"])
    assert many[0]["job_id"] == job["job_id"] and many[1]["error_type"] == "not_found"
    # failed-only (the default): a failed attempt may be retried, a success is adopted.
    second = hook.start_job("h1", ["true"], sync=True)
    assert second["accepted"] and second["attempt_no"] == 2 and second["status"] == "SUCCEEDED"
    adopted = hook.start_job("h1", ["false"], sync=True)
    assert adopted["existing"] and adopted["job_id"] == second["job_id"]
    rerun = hook.rerun_job("h1", reason="by hand")
    assert rerun["rerun"] and rerun["attempt_no"] == 3
    wait_terminal(hook, "h1")
    unlocked = hook.unlock_job("h1", reason="fix", ttl="10m")
    assert unlocked["unlocked"] and unlocked["expires_at"] - unlocked["allowed_at"] == 600


def test_abort_and_cancel(conn_id):
    hook = OrchesJobHook(conn_id)
    hook.start_job("ab", ["sleep", "30"])
    out = hook.abort_job("ab", reason="test", grace=1)
    assert out["status"] == "ABORTED" and out["sent_term_target"]
    # Idempotent: a resend after a lost reply (or a second kill) gets the aborted job back.
    again = hook.abort_job("ab", reason="second")
    assert again["job_id"] == out["job_id"] and again["status"] == "ABORTED" and again["abort_reason"] == "test"
    assert asyncio.run(hook.aabort_job(job_id=out["job_id"]))["status"] == "ABORTED"
    hook.start_job("cn", ["sleep", "30"])
    assert hook.cancel_job("cn", grace=1)["status"] == "CANCELLED"
    assert hook.cancel_job("cn")["status"] == "CANCELLED"
    # A job that had ended otherwise is returned as it is, marked already_finished (like the
    # runtime's stop_too_late): its real outcome stands and nothing was signalled.
    other = hook.abort_job("cn")
    assert other["status"] == "CANCELLED" and other["already_finished"]
    hook.start_job("done", ["true"], sync=True)
    done = hook.cancel_job("done")
    assert done["status"] == "SUCCEEDED" and done["already_finished"]


def test_reservation_cancel_is_idempotent(conn_id, ssh_server):
    hook = OrchesJobHook(conn_id)
    hook.reserve("later", ["true"], not_before="2099-01-01T00:00:00Z")
    first = hook.cancel_reservation("later")
    assert first["cancelled"] and first["reservation"]["reservation_status"] == "CANCELLED"
    second = hook.cancel_reservation("later")
    assert second["cancelled"] and second["reservation"]["reservation_id"] == first["reservation"]["reservation_id"]
    # Dispatched: cancel goes to its job, and a second cancel returns that job.
    hook.reserve("now", ["sleep", "30"])
    home = hook.runtime_info()["orchesjob_home"]
    assert ssh_server.ssh(f"ORCHESJOB_HOME={home} ~/.local/bin/orchesjob-reserver run --once").returncode == 0
    job = hook.cancel_reservation("now")
    assert job["cancelled"] and job["status"] == "CANCELLED"
    again = hook.cancel_reservation("now")
    assert again["cancelled"] and again["job_id"] == job["job_id"] and again["status"] == "CANCELLED"


def test_errors_are_named_with_remote_json(conn_id):
    hook = OrchesJobHook(conn_id)
    with pytest.raises(OrchesJobNotFound) as err:
        hook.job_status("no-such-key")
    assert "run_key not found" in str(err.value) and err.value.remote_error["error_type"] == "not_found"
    with pytest.raises(OrchesJobInvalidArguments):
        hook.start_job("x", ["true"], cwd="/no/such/dir")
    hook.start_job("running", ["sleep", "5"])
    with pytest.raises(OrchesJobInvalidState):
        hook.job_result("running")
    hook.abort_job("running", grace=1)


@pytest.mark.parametrize("word", NASTY)
def test_arguments_arrive_byte_for_byte(conn_id, ssh_server, word):
    hook = OrchesJobHook(conn_id)
    key = f"q:{word}"
    job = hook.start_job(
        key, ["python3", "-c", "import json,os,sys; print(json.dumps([sys.argv[1:], os.environ['V'], os.getcwd()]))",
              word, f"<{word}>"],
        env={"V": word}, cwd="/tmp", sync=True,
    )  # fmt: skip
    assert job["run_key"] == key and job["status"] == "SUCCEEDED", job
    argv, env_value, cwd = json.loads(hook.job_logs(key))
    assert argv == [word, f"<{word}>"] and env_value == word and cwd == "/tmp"
    assert ssh_server.ssh("ls /tmp/pwned").returncode != 0, "injection must not execute"


def test_string_command_runs_under_sh(conn_id):
    hook = OrchesJobHook(conn_id)
    hook.start_job("shell", "echo $((6*7)) | tr 4 X", sync=True)
    assert hook.job_logs("shell") == b"X2\n"


def test_unknown_host_key_is_refused(ssh_server, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    set_connection("oj_unknown_host", ssh_server, known_hosts=str(empty))
    with pytest.raises(OrchesJobHostKeyError, match="refusing"):
        OrchesJobHook("oj_unknown_host").runtime_info()
    wrong = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    set_connection("oj_wrong_key", ssh_server, host_key=wrong, known_hosts=None)
    with pytest.raises(OrchesJobHostKeyError):
        OrchesJobHook("oj_wrong_key").runtime_info()

    async def async_refused():
        with pytest.raises(OrchesJobHostKeyError):
            await OrchesJobHook("oj_unknown_host").ajob_status("x")

    asyncio.run(async_refused())


def test_host_key_extra_is_accepted(ssh_server, tmp_path):
    set_connection("oj_host_key", ssh_server, host_key=ssh_server.host_key_line, known_hosts=None)
    assert OrchesJobHook("oj_host_key").runtime_info()["version"]


def test_remote_runtime_missing_is_a_clear_error(ssh_server):
    set_connection("oj_missing", ssh_server, orchesjob_bin_dir="/nonexistent/bin")
    with pytest.raises(OrchesJobRuntimeMissing, match="pipx install airflow-provider-orchesjob"):
        OrchesJobHook("oj_missing").runtime_info()


def test_connection_refused_is_retried_then_reported(ssh_server):
    set_connection("oj_closed", ssh_server)
    import os

    conn = json.loads(os.environ["AIRFLOW_CONN_OJ_CLOSED"])
    from tests.sshd_harness import free_port

    conn["port"] = free_port()  # nothing listens there
    os.environ["AIRFLOW_CONN_OJ_CLOSED"] = json.dumps(conn)
    hook = OrchesJobHook("oj_closed", connect_budget=1.0)
    t0 = time.monotonic()
    with pytest.raises(OrchesJobConnectionError):
        hook.job_status("x")
    assert time.monotonic() - t0 < 15


def test_async_polls_share_one_connection(conn_id, ssh_server):
    hook = OrchesJobHook(conn_id)
    hook.start_job("shared", ["sleep", "3"])

    async def poll_many(n):
        before = ssh_server.connections()
        hooks = [OrchesJobHook(conn_id) for _ in range(n)]  # like n triggers in one triggerer
        results = await asyncio.gather(*(h.ajob_status("shared", stdout_offset=0) for h in hooks))
        return results, ssh_server.connections() - before

    results, opened = asyncio.run(poll_many(30))
    assert all(r["status"] == "RUNNING" for r in results)
    assert opened == 1, "30 concurrent polls must share one SSH connection"
    hook.abort_job("shared", grace=1)


def test_async_polls_of_one_host_share_one_command(conn_id, ssh_server):
    hook = OrchesJobHook(conn_id)
    hook.start_job("batched", ["sh", "-c", "printf ready; sleep 3"])

    async def poll_many(n):
        hooks = [OrchesJobHook(conn_id) for _ in range(n)]  # like n triggers in one triggerer
        await hooks[0].ajob_poll("batched")  # connect first: count only the polls below
        for h in hooks:
            # Each trigger reads its Airflow connection once, at its first poll (on 2.11 from the
            # database, ~2 ms each): done here, so the polls counted are the steady state's.
            h.ssh_config()
        before = ssh_server.sessions()
        results = await asyncio.gather(*(h.ajob_poll("batched", stdout_offset=0) for h in hooks))
        await asyncio.sleep(0.3)  # sshd logs the session asynchronously
        return results, ssh_server.sessions() - before

    results, sessions = asyncio.run(poll_many(30))
    assert {r["status"] for r in results} == {"RUNNING"}
    assert all(r["stdout_chunk"]["data"] == "ready" for r in results)
    assert sessions == 1, "30 concurrent polls of one host must be one remote command"
    hook.abort_job("batched", grace=1)


def test_async_client_reconnects_after_connection_drop(conn_id, ssh_server):
    hook = OrchesJobHook(conn_id)
    hook.start_job("drop", ["sleep", "5"])

    async def scenario():
        poller = OrchesJobHook(conn_id)
        first = await poller.ajob_status("drop")
        before = ssh_server.connections()
        assert ssh_server.kill_sessions() >= 1  # the server side of our connection dies
        await asyncio.sleep(0.2)
        second = await poller.ajob_status("drop")
        return first, second, ssh_server.connections() - before

    first, second, reconnects = asyncio.run(scenario())
    assert first["job_id"] == second["job_id"] and second["status"] == "RUNNING"
    assert reconnects == 1
    hook.abort_job("drop", grace=1)


def test_sync_client_reconnects_after_connection_drop(conn_id, ssh_server):
    hook = OrchesJobHook(conn_id)
    hook.start_job("sdrop", ["sleep", "5"])
    ssh_server.kill_sessions()
    time.sleep(0.2)
    assert hook.job_status("sdrop")["status"] == "RUNNING"
    hook.abort_job("sdrop", grace=1)


def test_reservation_methods(conn_id):
    hook = OrchesJobHook(conn_id)
    res = hook.reserve("rv1", ["echo", "later"], not_before=time.time() + 3600, metadata={"dag_id": "d"})
    assert res["created"] and res["reservation"]["reservation_status"] == "RESERVED"
    assert hook.reserve("rv1", ["echo", "other"])["created"] is False
    st = hook.reservation_status("rv1")
    assert st["reservation"]["metadata"] == {"dag_id": "d"}
    with pytest.raises(OrchesJobInvalidState):
        hook.reservation_result("rv1")  # not dispatched yet
    cancelled = hook.cancel_reservation("rv1")
    assert json.dumps(cancelled).count("CANCELLED") >= 1
    with pytest.raises(OrchesJobNotFound):
        hook.reservation_status("nope")


def test_flow_methods_with_definition_on_stdin(conn_id):
    hook = OrchesJobHook(conn_id)
    flow = {
        "flow_id": "hook-flow",
        "steps": [
            {"id": "A", "command": ["sh", "-c", "echo A"]},
            {"id": "B", "when": "A", "command": ["sh", "-c", "exit 1"]},
            {"id": "C", "when": "!B", "command": ["true"]},
        ],
    }
    started = hook.start_flow("fl1", flow)
    assert started["run_key"] == "fl1" and started.get("detached") is True
    deadline = time.monotonic() + 30
    while (st := hook.flow_status("fl1"))["status"] in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert st["status"] == "FAILED"
    assert {s["id"]: s["status"] for s in st["steps"]} == {"A": "SUCCEEDED", "B": "FAILED", "C": "SUCCEEDED"}
    repaired = hook.repair_flow("fl1")
    assert repaired["run_key"] == "fl1"
    with pytest.raises(OrchesJobError_ := (OrchesJobNotFound, OrchesJobInvalidArguments)):  # noqa: F841
        hook.flow_status("no-such-flow")


def test_incompatible_remote_runtime_is_a_clear_error(ssh_server):
    import os
    import shutil

    from airflow_provider_orchesjob.exceptions import OrchesJobRuntimeIncompatible

    # An older/foreign runtime cannot be installed here, so stand one in on the host.
    fake = os.path.join(ssh_server.home, "fake-old-runtime")
    os.makedirs(fake, exist_ok=True)
    exe = os.path.join(fake, "orchesjob")

    def install(body: str) -> None:
        with open(exe, "w") as f:
            f.write("#!/bin/sh\n" + body + "\n")
        os.chmod(exe, 0o755)
        shutil.chown(exe, ssh_server.user)

    set_connection("oj_old", ssh_server, orchesjob_bin_dir=fake)
    install("""echo '{"version": "0.0.1", "capabilities": []}'""")
    with pytest.raises(OrchesJobRuntimeIncompatible, match="missing capabilities"):
        OrchesJobHook("oj_old").job_status("x")
    # The public orchesjob has no `info` command (argparse exit 2): refused with a clear message too.
    install("echo 'orchesjob: error: invalid choice' >&2; exit 2")
    with pytest.raises(OrchesJobRuntimeIncompatible, match="not the edge runtime"):
        OrchesJobHook("oj_old").job_status("x")
