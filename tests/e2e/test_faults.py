"""Fault tests: the exactly-once promise seen from Airflow, against the real host."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from types import SimpleNamespace

from airflow_provider_orchesjob.hooks import OrchesJobHook
from airflow_provider_orchesjob.triggers import OrchesJobTrigger

from .conftest import CONN_ID, load_dag


def task_log(capfd, caplog) -> str | None:
    """What the task logged, where this Airflow's ``dag.test()`` lets the test see it.

    None on Airflow 3.0-3.2, whose ``dag.test()`` sends the task's log elsewhere (and,
    at its debug level, prints every supervisor message, MaskSecret values included).
    """
    from airflow_provider_orchesjob.compat import AIRFLOW_V3, AIRFLOW_V3_3

    text = "".join(capfd.readouterr()) + caplog.text
    return None if AIRFLOW_V3 and not AIRFLOW_V3_3 else text


def run_job_dag(command: str, run_key: str):
    return load_dag("e2e_job").test(run_conf={"command": command, "run_key": run_key})


def host_lines(ssh_server, path: str) -> list[str]:
    r = ssh_server.ssh(f"cat {path} 2>/dev/null")
    return r.stdout.splitlines()


def test_retry_after_first_try_died_before_deferring_reattaches(e2e_conn, ssh_server, edge_home):
    counter = f"{edge_home}/executions"
    command = f"echo run >> {counter}; sleep 2; echo finished"
    run_key = f"reattach-{uuid.uuid4().hex[:8]}"
    # The first try got as far as starting the remote job, then its worker died.
    first = OrchesJobHook(CONN_ID).start_job(run_key, command)
    assert first["accepted"]
    dr = run_job_dag(command, run_key)  # the next try
    assert dr.state == "success"
    xcom = dr.get_task_instance("job").xcom_pull(task_ids="job")
    assert xcom["job_id"] == first["job_id"], "the retry reattached to the first try's job"
    assert host_lines(ssh_server, counter) == ["run"], "exactly one execution on the host"


def test_retry_after_success_adopts_result(e2e_conn, ssh_server, edge_home):
    counter = f"{edge_home}/adopt"
    command = f"echo run >> {counter}"
    run_key = f"adopt-{uuid.uuid4().hex[:8]}"
    assert OrchesJobHook(CONN_ID).start_job(run_key, command, sync=True)["status"] == "SUCCEEDED"
    assert run_job_dag(command, run_key).state == "success"
    assert host_lines(ssh_server, counter) == ["run"]


def test_ssh_drop_while_deferred_reconnects_and_succeeds(e2e_conn, ssh_server, edge_home):
    run_key = f"drop-{uuid.uuid4().hex[:8]}"
    before = ssh_server.connections()
    killed = []

    def drop_later():
        time.sleep(1.5)
        killed.append(ssh_server.kill_sessions())

    t = threading.Thread(target=drop_later)
    t.start()
    dr = run_job_dag("for i in 1 2 3 4; do echo tick $i; sleep 1; done", run_key)
    t.join()
    assert killed and killed[0] >= 1, "a live SSH session was killed server-side"
    assert dr.state == "success"
    assert ssh_server.connections() - before >= 2, "the trigger had to reconnect"


def test_failed_remote_job_fails_task_with_stderr_tail(e2e_conn, capfd, caplog):
    run_key = f"fail-{uuid.uuid4().hex[:8]}"
    dr = run_job_dag("echo working; echo 'boom: disk full' >&2; exit 3", run_key)
    assert dr.state == "failed"
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    assert "ended FAILED with exit code 3" in text
    assert "last lines of stderr" in text and "boom: disk full" in text


def test_killing_a_deferred_task_aborts_the_remote_job(e2e_conn, ssh_server, edge_home):
    hook = OrchesJobHook(CONN_ID)
    job = hook.start_job(f"kill-{uuid.uuid4().hex[:8]}", ["sleep", "60"])

    class MarkedFailed(OrchesJobTrigger):
        async def current_task_state(self):
            return "failed"  # what the API server answers after a user marked the task failed

    trigger = MarkedFailed(
        ssh_conn_id=CONN_ID, run_key=job["run_key"], job_id=job["job_id"], poll_interval=0.2, kill_grace=1
    )
    trigger.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)
    # What the triggerer does when a user marks the deferred task failed (Airflow 3.3):
    # cancel the trigger's run() and call on_kill().

    async def scenario():
        task = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(1.0)
        task.cancel()
        await trigger.on_kill()

    asyncio.run(scenario())
    final = hook.job_status(job_id=job["job_id"])
    for _ in range(50):  # the host finishes the stop on its own (the kill does not wait for it)
        if final["status"] != "ABORTING":
            break
        time.sleep(0.2)
        final = hook.job_status(job_id=job["job_id"])
    assert final["status"] == "ABORTED" and "killed by a user" in final["abort_reason"]


def test_concurrent_triggers_of_one_host_poll_with_one_command_per_tick(e2e_conn, ssh_server):
    hook = OrchesJobHook(CONN_ID)
    n, interval = 12, 0.5
    keys = [f"tick-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for i, key in enumerate(keys):
        hook.start_job(key, ["sh", "-c", f"echo line-{i}; sleep 2"])

    async def scenario():
        await hook.ajob_poll(keys[0])  # connect first: count only the triggers' commands
        before, t0 = ssh_server.sessions(), time.monotonic()
        triggers = [OrchesJobTrigger(ssh_conn_id=CONN_ID, run_key=k, poll_interval=interval) for k in keys]
        events = await asyncio.gather(*(t.run().__anext__() for t in triggers))
        elapsed = time.monotonic() - t0
        await asyncio.sleep(0.3)  # sshd logs sessions asynchronously
        return events, ssh_server.sessions() - before, elapsed

    events, sessions, elapsed = asyncio.run(scenario())
    assert [e.payload["job"]["status"] for e in events] == ["SUCCEEDED"] * n
    assert all(e.payload["job"]["run_key"] == k for e, k in zip(events, keys, strict=True))
    polls_per_trigger = elapsed / interval + 2  # the immediate first poll, then one per tick
    # Unbatched this would be n commands per tick; batched it is one (a tick may split in two
    # when a trigger's previous poll ended after the others had gone to sleep).
    assert sessions <= 2 * polls_per_trigger < n * polls_per_trigger / 3, (sessions, elapsed)


def test_trigger_serializes_all_state(e2e_conn):
    trigger = OrchesJobTrigger(ssh_conn_id=CONN_ID, run_key="k", job_id="j", stdout_offset=10, stderr_offset=3)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_orchesjob.triggers.orchesjob.OrchesJobTrigger"
    json.dumps(kwargs)  # plain JSON types only
    again = OrchesJobTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert kwargs["stdout_offset"] == 10 and kwargs["stderr_offset"] == 3


def test_flow_retry_repairs_without_rerunning_succeeded_steps(e2e_conn, ssh_server, edge_home):
    mark = f"{edge_home}/flowmark"
    dr = load_dag("e2e_flow_retry").test(run_conf={"mark": mark, "run_key": f"fr-{uuid.uuid4().hex[:8]}"})
    assert dr.state == "success"
    assert host_lines(ssh_server, mark + ".A") == ["A"], "the succeeded step ran once"
    assert host_lines(ssh_server, mark + ".B") == ["B", "B"], "the failed step ran again in the repair"


def test_reservation_retry_after_failed_dispatch_starts_next_attempt(e2e_conn, dispatcher, ssh_server, edge_home):
    mark = f"{edge_home}/resmark"
    run_key = f"rr-{uuid.uuid4().hex[:8]}"
    dr = load_dag("e2e_reservation_retry").test(run_conf={"mark": mark, "run_key": run_key})
    assert dr.state == "success"
    assert host_lines(ssh_server, mark) == ["run", "run"], "one dispatched run, one retry: never more"
    history = json.loads(ssh_server.ssh(f"ORCHESJOB_HOME={edge_home} ~/.local/bin/orchesjob status --run-key "
                                        f"{run_key} --all").stdout)  # fmt: skip
    assert [j["status"] for j in history] == ["SUCCEEDED", "FAILED"]


# A job that needs 2 s to exit after SIGTERM and records its starts and ends on the host.
def _slow_to_stop(mark: str) -> str:
    return (f"echo start >> {mark}; trap 'sleep 2; echo end-term >> {mark}; exit 1' TERM; "
            f"sleep 3 & wait; echo end >> {mark}")  # fmt: skip


def test_a_try_never_reattaches_to_a_job_being_stopped(e2e_conn, ssh_server, edge_home):
    mark, run_key = f"{edge_home}/stopping", f"stopping-{uuid.uuid4().hex[:8]}"
    hook = OrchesJobHook(CONN_ID)
    first = hook.start_job(run_key, _slow_to_stop(mark))
    time.sleep(0.5)
    assert hook.stop_job("abort", job_id=first["job_id"], grace=10, wait=0.2)["status"] == "ABORTING"
    dr = run_job_dag(_slow_to_stop(mark), run_key)  # the next try arrives while the stop is under way
    assert dr.state == "success"
    # The first attempt ended (its TERM trap ran) before the second started: never side by side.
    assert host_lines(ssh_server, mark) == ["start", "end-term", "start", "end"]
    assert dr.get_task_instance("job").xcom_pull(task_ids="job")["attempt_no"] == 2


def test_a_try_that_reattached_starts_the_next_attempt_after_an_earlier_try_s_kill(e2e_conn, ssh_server, edge_home):
    # The race of a cleared deferred task: the new try reattaches to the running job, then the old
    # try's trigger (on_kill) stops that job. The new try waits for the stop and runs attempt 2.
    from airflow_provider_orchesjob.utils.lifecycle import stop_reason

    mark, run_key = f"{edge_home}/reattached", f"reattached-{uuid.uuid4().hex[:8]}"
    hook = OrchesJobHook(CONN_ID)
    first = hook.start_job(run_key, _slow_to_stop(mark))

    def old_try_kills():
        time.sleep(1.5)
        OrchesJobHook(CONN_ID).stop_job("abort", job_id=first["job_id"], grace=10, wait=0.2,
                                        reason=stop_reason("task killed by a user while deferred", 0))  # fmt: skip

    t = threading.Thread(target=old_try_kills)
    t.start()
    dr = run_job_dag(_slow_to_stop(mark), run_key)
    t.join()
    assert dr.state == "success"
    assert host_lines(ssh_server, mark) == ["start", "end-term", "start", "end"]
    assert [j["status"] for j in json.loads(ssh_server.ssh(
        f"ORCHESJOB_HOME={edge_home} ~/.local/bin/orchesjob status --run-key {run_key} --all").stdout)
    ] == ["SUCCEEDED", "ABORTED"]  # fmt: skip


def test_execution_timeout_of_a_deferred_task_stops_the_remote_job(e2e_conn, ssh_server, edge_home, capfd, caplog):
    run_key = f"deadline-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    dr = load_dag("e2e_deadline").test(run_conf={"run_key": run_key})
    assert dr.state == "failed" and time.monotonic() - t0 < 40
    job = OrchesJobHook(CONN_ID).job_status(run_key)
    assert job["status"] == "ABORTED" and "deadline reached" in job["abort_reason"]
    logs = task_log(capfd, caplog)
    assert logs is None or f"remote job {job['job_id']} stopped (ABORTED)" in logs


def test_flow_polled_in_the_worker(e2e_conn):
    run_key = f"fw-{uuid.uuid4().hex[:8]}"
    dr = load_dag("e2e_flow_worker").test(run_conf={"run_key": run_key})
    assert dr.state == "success"
    flow = dr.get_task_instance("flow").xcom_pull(task_ids="flow")
    assert flow["status"] == "SUCCEEDED" and [s["status"] for s in flow["steps"]] == ["SUCCEEDED"] * 2


def _lost_job(ssh_server, run_key: str, command: str) -> dict:
    """A job whose supervisor was SIGKILLed while the command ran: the outcome is unknown (LOST)."""
    hook = OrchesJobHook(CONN_ID)
    job = hook.start_job(run_key, command)
    time.sleep(0.3)
    assert ssh_server.ssh(f"kill -9 {job['worker_pid']}").returncode == 0
    for _ in range(100):
        job = hook.job_status(job_id=job["job_id"])
        if job["status"] == "LOST":
            return job
        time.sleep(0.2)
    raise AssertionError(f"never LOST: {job}")


def test_a_lost_outcome_blocks_the_retry_with_a_clear_message(e2e_conn, ssh_server, edge_home, capfd, caplog):
    mark, run_key = f"{edge_home}/lost", f"lost-{uuid.uuid4().hex[:8]}"
    command = f"echo run >> {mark}; sleep 1"
    lost = _lost_job(ssh_server, run_key, command)
    assert run_job_dag(command, run_key).state == "failed"
    logs = task_log(capfd, caplog)
    assert logs is None or (f"remote job {lost['job_id']}" in logs and "retry_lost=True" in logs)
    assert host_lines(ssh_server, mark) == ["run"], "nothing ran again"
    # retry_lost=True: the operator asks for a new attempt after the LOST one.
    dr = load_dag("e2e_retry_lost").test(run_conf={"command": command, "run_key": run_key})
    assert dr.state == "success" and host_lines(ssh_server, mark) == ["run", "run"]


def test_on_success_found_rerun_runs_a_succeeded_run_key_again(e2e_conn, ssh_server, edge_home):
    mark, run_key = f"{edge_home}/rerun", f"rerun-{uuid.uuid4().hex[:8]}"
    command = f"echo run >> {mark}"
    assert OrchesJobHook(CONN_ID).start_job(run_key, command, sync=True)["status"] == "SUCCEEDED"
    dr = load_dag("e2e_rerun").test(run_conf={"command": command, "run_key": run_key})
    assert dr.state == "success" and host_lines(ssh_server, mark) == ["run", "run"]
    assert dr.get_task_instance("job").xcom_pull(task_ids="job")["attempt_no"] == 2


def test_an_env_secret_reaches_the_command_and_nothing_else(e2e_conn, ssh_server, edge_home, capfd, caplog):
    token, out = "tok-" + uuid.uuid4().hex, f"{edge_home}/token"
    dr = load_dag("e2e_env_secret").test(run_conf={"token": token, "out": out})
    assert dr.state == "success"
    assert ssh_server.ssh(f"cat {out}").stdout == token, "the value arrived"
    ti = dr.get_task_instance("job")
    assert token not in json.dumps(ti.xcom_pull(task_ids="job")), "not in XCom"
    logs = task_log(capfd, caplog)
    assert logs is None or (f"token of {len(token)} characters" in logs and token not in logs), "not in the task log"
    from airflow.models.renderedtifields import RenderedTaskInstanceFields

    rendered = json.dumps(RenderedTaskInstanceFields.get_templated_fields(ti), default=str)
    assert token not in rendered and "***" in rendered, "masked in the rendered fields"


def test_a_deferring_try_records_its_try_number(e2e_conn):
    # Read by a cancelled trigger to tell "my try still waits" from "a newer try waits" (Airflow 3).
    from airflow_provider_orchesjob.compat import AIRFLOW_V3, TRY_XCOM_KEY

    dr = run_job_dag("echo hi", f"try-{uuid.uuid4().hex[:8]}")
    assert dr.state == "success"
    ti = dr.get_task_instance("job")
    recorded = ti.xcom_pull(task_ids="job", key=TRY_XCOM_KEY)
    assert recorded == (ti.try_number if AIRFLOW_V3 else None)


def test_a_mapped_task_instance_s_state_is_found_by_its_own_key(e2e_conn):
    dr = load_dag("e2e_state_lookup").test()
    assert dr.state == "success"
    states = [dr.get_task_instance("own_state", map_index=i).xcom_pull(task_ids="own_state", map_indexes=i)
              for i in (0, 1)]  # fmt: skip
    # Found by its own key (never "none": a miss would count as a kill). Airflow 2.11's dag.test()
    # does not commit the running state, so the database still says scheduled there.
    from airflow_provider_orchesjob.compat import AIRFLOW_V3

    assert states == (["running", "running"] if AIRFLOW_V3 else ["scheduled", "scheduled"])
