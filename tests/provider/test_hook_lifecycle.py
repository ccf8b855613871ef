"""The hook and triggers against the real sshd and the real runtime: secrets, stops, transient errors, kills.

Needs a runtime advertising ``env-file`` and ``job-lifecycle-v2``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

from airflow_provider_orchesjob.exceptions import OrchesJobRuntimeIncompatible
from airflow_provider_orchesjob.hooks import OrchesJobHook
from airflow_provider_orchesjob.hooks.orchesjob import ENV_FILE, LIFECYCLE_V2
from airflow_provider_orchesjob.triggers import OrchesJobTrigger
from airflow_provider_orchesjob.utils.lifecycle import stop_reason

from .conftest import set_connection

SECRET = "s3cr3t-" + uuid.uuid4().hex


@pytest.fixture
def hook(conn_id):
    hook = OrchesJobHook(conn_id)
    caps = hook.capabilities()
    if not {ENV_FILE, LIFECYCLE_V2} <= caps:
        pytest.skip(f"the runtime lacks {ENV_FILE} / {LIFECYCLE_V2}")
    return hook


def wait_for(hook, job_id, statuses, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        job = hook.job_status(job_id=job_id)
        if job["status"] in statuses or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def test_env_values_never_reach_a_command_line_or_any_json(hook, ssh_server):
    job = hook.start_job("secret", ["sh", "-c", 'echo "got ${TOKEN#s3cr3t-}"; sleep 3'], env={"TOKEN": SECRET})
    time.sleep(1)
    # Every process of the host, while the job runs: the value is in no argv.
    cmdlines = ssh_server.ssh("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout
    assert "sleep 3" in cmdlines and SECRET not in cmdlines
    assert SECRET not in json.dumps(job) and job.get("env_keys") == ["TOKEN"]
    final = wait_for(hook, job["job_id"], ("SUCCEEDED", "FAILED"))
    assert final["status"] == "SUCCEEDED" and SECRET not in json.dumps(final)
    assert hook.job_logs(job_id=job["job_id"]) == f"got {SECRET[len('s3cr3t-') :]}\n".encode()


def test_reservation_env_travels_on_stdin(hook):
    out = hook.reserve("res-secret", ["true"], not_before=time.time() + 3600, env={"TOKEN": SECRET})
    assert SECRET not in json.dumps(out)
    assert SECRET not in json.dumps(hook.reservation_status("res-secret"))
    hook.cancel_reservation("res-secret")


def test_env_needs_the_env_file_capability(hook):
    hook._capabilities = hook.capabilities() - {ENV_FILE}  # a host with an older runtime
    with pytest.raises(OrchesJobRuntimeIncompatible, match="env-file.*pipx install --force"):
        hook.start_job("old", ["true"], env={"A": "1"})


def test_a_stop_is_a_state_until_the_tree_is_gone(hook):
    # A job that takes 2 s to exit after TERM: the reply to a short --wait still says ABORTING.
    job = hook.start_job("trap", ["sh", "-c", "trap 'sleep 2; exit 0' TERM; sleep 60 & wait"])
    wait_for(hook, job["job_id"], ("RUNNING",))
    first = hook.stop_job("abort", job_id=job["job_id"], reason=stop_reason("test", 1), grace=10, wait=0.5)
    assert first["status"] == "ABORTING"
    again = hook.start_job("trap", ["true"])  # a start returns the stopping job, never a new attempt
    assert again["job_id"] == job["job_id"] and again["status"] == "ABORTING" and not again["accepted"]
    final = wait_for(hook, job["job_id"], ("ABORTED",))
    assert final["status"] == "ABORTED" and "[airflow try 1]" in final["abort_reason"]
    assert hook.abort_job(job_id=job["job_id"])["status"] == "ABORTED"  # resending is harmless


def test_a_stop_after_the_end_keeps_the_real_outcome(hook):
    job = hook.start_job("quick", ["true"], sync=True)
    stopped = hook.stop_job("abort", job_id=job["job_id"], grace=1)
    assert stopped["status"] == "SUCCEEDED" and stopped["already_finished"]


def test_stderr_tail_is_read_by_offset(hook):
    job = hook.start_job("noisy", ["python3", "-c", "import sys; sys.stderr.write('x' * 300000 + 'THE END')"],
                         sync=True)  # fmt: skip
    tail = hook.stderr_tail(job_id=job["job_id"], nbytes=100)
    assert len(tail) == 100 and tail.endswith(b"THE END")


def test_runtime_missing_during_an_upgrade_is_retried(hook, ssh_server):
    hook.job_status_many(run_keys=["none", "other"])  # the runtime was seen on this host
    assert ssh_server.ssh("mv ~/.local/bin/orchesjob ~/.local/bin/orchesjob.away").returncode == 0
    threading.Timer(2.0, lambda: ssh_server.ssh("mv ~/.local/bin/orchesjob.away ~/.local/bin/orchesjob")).start()
    try:
        t0 = time.monotonic()
        assert hook.job_status_many(run_keys=["none", "other"])[0]["error_type"] == "not_found"
        assert time.monotonic() - t0 >= 1.5
    finally:
        time.sleep(2.5)
        ssh_server.ssh("test -e ~/.local/bin/orchesjob || mv ~/.local/bin/orchesjob.away ~/.local/bin/orchesjob")


def test_shell_noise_before_the_json_is_ignored(hook, ssh_server):
    # sshd runs ~/.ssh/rc before every command; what it prints lands on the command's stdout.
    rc = "mkdir -p ~/.ssh && printf 'echo Welcome to edge1\\necho \"{ not json\"\\n' > ~/.ssh/rc"
    assert ssh_server.ssh(rc).returncode == 0
    try:
        job = hook.start_job("noise", ["true"], sync=True)
        assert job["status"] == "SUCCEEDED"

        async def poll():
            return await OrchesJobHook(hook.ssh_conn_id).ajob_poll("noise")

        assert asyncio.run(poll())["status"] == "SUCCEEDED"
    finally:
        ssh_server.ssh("rm -f ~/.ssh/rc")


def test_namespace_comes_from_the_connection(ssh_server):
    set_connection("oj_ns", ssh_server, run_key_namespace="staging")
    assert OrchesJobHook("oj_ns").run_key_namespace() == "staging"
    assert OrchesJobHook(None, namespace="x").run_key_namespace() == "x"


# ------------------------------------------------------------ trigger kills
class _TriggerSeeingState(OrchesJobTrigger):
    """The trigger with the task instance's state given by the test (no Airflow API server here)."""

    state_seen: object = None
    try_seen: int | None = None  # the task instance's current try (None: unknown)

    async def current_task_state(self):
        return self.state_seen

    async def current_task_try(self):
        return self.try_seen


def _trigger(conn_id, job, state, current_try=None):
    trigger = _TriggerSeeingState(ssh_conn_id=conn_id, run_key=job["run_key"], job_id=job["job_id"],
                                  poll_interval=0.2, kill_grace=1, try_number=4)  # fmt: skip
    trigger.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=3, try_number=4)
    trigger.state_seen = state
    trigger.try_seen = current_try
    return trigger


def _cancel_then_kill(trigger):
    async def scenario():
        task = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(1.0)
        task.cancel()
        await trigger.on_kill()

    asyncio.run(scenario())


def test_a_trigger_that_moved_to_another_triggerer_stops_nothing(hook, conn_id):
    job = hook.start_job("moved", ["sleep", "30"])
    _cancel_then_kill(_trigger(conn_id, job, "deferred"))  # try unknown
    _cancel_then_kill(_trigger(conn_id, job, "deferred", current_try=4))  # still this trigger's try
    assert hook.job_status(job_id=job["job_id"])["status"] == "RUNNING"
    hook.abort_job(job_id=job["job_id"], grace=1)


def test_a_trigger_whose_state_cannot_be_read_stops_nothing(hook, conn_id):
    job = hook.start_job("unknown", ["sleep", "30"])
    trigger = _trigger(conn_id, job, None)

    async def broken():
        raise RuntimeError("API server unreachable")

    trigger.current_task_state = broken
    _cancel_then_kill(trigger)
    assert hook.job_status(job_id=job["job_id"])["status"] == "RUNNING"
    hook.abort_job(job_id=job["job_id"], grace=1)


def test_a_clear_whose_new_try_deferred_first_still_stops_the_job(hook, conn_id):
    # Cleared, and the new try (5) reattached and deferred before this trigger (try 4) was cancelled.
    job = hook.start_job("superseded", ["sleep", "30"])
    _cancel_then_kill(_trigger(conn_id, job, "deferred", current_try=5))
    final = wait_for(hook, job["job_id"], ("ABORTED",))
    assert final["status"] == "ABORTED" and "[airflow try 4]" in final["abort_reason"]


def test_a_user_kill_stops_the_job_naming_the_try(hook, conn_id):
    job = hook.start_job("killed", ["sleep", "30"])
    _cancel_then_kill(_trigger(conn_id, job, "failed"))
    final = wait_for(hook, job["job_id"], ("ABORTED",))
    assert final["status"] == "ABORTED" and "[airflow try 4]" in final["abort_reason"]


def test_a_user_kill_cancels_a_pending_reservation_naming_the_try(hook, conn_id):
    from airflow_provider_orchesjob.triggers import OrchesJobReservationTrigger

    hook.reserve("res-killed", ["true"], not_before=time.time() + 3600)

    class Seeing(OrchesJobReservationTrigger):
        async def current_task_state(self):
            return "failed"

    trigger = Seeing(ssh_conn_id=conn_id, reservation_run_key="res-killed", run_key="res-killed",
                     poll_interval=0.2, kill_grace=1, try_number=4)  # fmt: skip
    trigger.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=4)
    _cancel_then_kill(trigger)
    res = hook.reservation_status("res-killed")["reservation"]
    # The reason tells a later try (cleared by the user) that this cancel was the kill of try 4.
    assert res["reservation_status"] == "CANCELLED" and "[airflow try 4]" in res["cancel_reason"]


def test_the_deadline_stops_the_job_and_says_so(hook, conn_id):
    job = hook.start_job("deadline", ["sleep", "30"])
    trigger = OrchesJobTrigger(ssh_conn_id=conn_id, run_key=job["run_key"], job_id=job["job_id"], poll_interval=0.2,
                               kill_grace=1, deadline=time.time() + 1.5)  # fmt: skip

    async def first_event():
        return await trigger.run().__anext__()

    event = asyncio.run(first_event()).payload
    assert event["status"] == "timeout" and event["stop"]["status"] == "ABORTED", event
    assert f"remote job {job['job_id']} stopped (ABORTED)" in event["message"]
    assert hook.job_status(job_id=job["job_id"])["status"] == "ABORTED"


def test_the_deadline_reports_a_stop_that_failed(hook, conn_id, ssh_server):
    job = hook.start_job("deadline-unreachable", ["sleep", "30"])
    set_connection("oj_gone", ssh_server, orchesjob_bin_dir="/nonexistent/bin")
    trigger = OrchesJobTrigger(ssh_conn_id="oj_gone", job_id=job["job_id"], poll_interval=0.2, deadline=time.time())

    async def first_event():
        return await trigger.run().__anext__()

    event = asyncio.run(first_event()).payload
    assert event["status"] == "timeout" and event["stop"] is None and event["stop_error"]
    assert "could NOT be stopped" in event["message"] and "aborted" not in event["message"].lower()
    hook.abort_job(job_id=job["job_id"], grace=1)


def test_reservation_and_flow_polls_of_one_host_share_one_session(hook, conn_id, ssh_server):
    from airflow_provider_orchesjob.hooks.batching import command_batcher

    far = time.time() + 3600
    keys = [f"pending-{i}" for i in range(6)]
    for key in keys:
        hook.reserve(key, ["true"], not_before=far)
    hook.start_flow("flow-polled", {"flow_id": "f", "steps": [{"id": "A", "command": ["true"]}]})

    async def scenario():
        first = OrchesJobHook(conn_id)
        await first.areservation_poll(keys[0])  # connect first: count only the polls' sessions
        before = ssh_server.sessions()
        hooks = [OrchesJobHook(conn_id) for _ in range(9)]
        polls = [h.areservation_poll(k) for h, k in zip(hooks, keys + keys[:1], strict=False)]
        polls += [hooks[7].aflow_poll("flow-polled"), hooks[8].areservation_poll("missing")]
        results = await asyncio.gather(*polls, return_exceptions=True)
        await asyncio.sleep(0.3)  # sshd logs sessions asynchronously
        return results, ssh_server.sessions() - before, command_batcher(first)

    results, sessions, batcher = asyncio.run(scenario())
    assert [r["reservation"]["reservation_status"] for r in results[:7]] == ["RESERVED"] * 7
    assert results[7]["run_key"] == "flow-polled"
    assert "not found" in str(results[8]).lower() or "NotFound" in type(results[8]).__name__
    assert sessions == 1, "nine polls, one SSH session"
    assert batcher.commands_run == 1 + 8  # the first poll, then 9 polls: the two identical ones ran once
    for key in keys:
        hook.cancel_reservation(key)


@pytest.mark.slow
def test_a_database_lock_timeout_is_retried(hook, ssh_server):
    home = hook.runtime_info()["orchesjob_home"]
    db = f"{home}/orchesjob.db"
    # Another process holds the write lock for longer than the runtime's 30 s busy timeout.
    holder = (f"nohup python3 -c \"import sqlite3,time; c=sqlite3.connect('{db}', isolation_level=None); "
              f"c.execute('BEGIN IMMEDIATE'); time.sleep(34)\" > /dev/null 2>&1 &")  # fmt: skip
    assert ssh_server.ssh(holder).returncode == 0
    time.sleep(1)
    t0 = time.monotonic()
    job = hook.start_job("after-lock", ["true"], sync=True)  # exit 5 once, then resent
    assert job["status"] == "SUCCEEDED" and time.monotonic() - t0 > 30


def test_a_reconnect_uses_the_rotated_key(conn_id, ssh_server, tmp_path):
    import os
    import shutil
    import subprocess

    new_key = str(tmp_path / "rotated_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", new_key], check=True)
    os.chmod(tmp_path, 0o755)
    auth = os.path.join(ssh_server.workdir, "authorized_keys")
    saved = auth + ".saved"
    shutil.copy(auth, saved)
    home = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])["extra"]["orchesjob_home"]

    async def two_polls():
        hook = OrchesJobHook(conn_id)
        before = await hook.arun_cli(["orchesjob", "info"])
        # The operator's rotation: the connection names the new key, the old one is revoked,
        # live connections drop.
        set_connection(conn_id, ssh_server, orchesjob_home=home, key_file=new_key)
        shutil.copy(new_key + ".pub", auth)
        ssh_server.kill_sessions()
        after = await OrchesJobHook(conn_id).arun_cli(["orchesjob", "info"])
        return before, after

    try:
        before, after = asyncio.run(two_polls())
    finally:
        shutil.copy(saved, auth)
    assert before["orchesjob_home"] == after["orchesjob_home"] == home
