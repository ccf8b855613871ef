"""Issue 11 (g): execution_timeout and the operator's own timeout stop the remote job, and say truthfully
whether the stop succeeded."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import pytest

from tests.deploy.deployment import DEPLOY_TIMEOUT, job_tree_alive, run_key, token, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(DEPLOY_TIMEOUT)]

TIMEOUT = 10  # execution_timeout / trigger_timeout of the two DAGs
STOP_WITHIN = 30
# How a task log may say that the stop did NOT happen (any of these; the provider picks the words).
STOP_FAILED_WORDS = ("could not stop", "could not abort", "not stopped", "may still be running", "still running",
                     "failed to stop", "stop failed", "not confirmed", "unconfirmed")  # fmt: skip


def started_at(ti: dict) -> float:
    return datetime.fromisoformat(ti["start_date"].replace("Z", "+00:00")).timestamp()


def run_until_timeout(dep, dag_id: str, tok: str, counter: str) -> tuple[str, str, float]:
    run_id = dep.trigger(dag_id, {"command": f"echo run >> {counter}; sleep 300.{tok}"})
    ti = dep.wait_ti_state(dag_id, run_id, ("deferred",), 120)[0]
    wait_for("the remote job running", lambda: dep.host_pids(tok), 60)
    return run_id, run_key(dag_id, "job", run_id), started_at(ti) + TIMEOUT


def wait_stopped_and_failed(dep, dag_id: str, run_id: str, key: str, tok: str, deadline: float) -> float:
    """Seconds after the timeout until the host job is ABORTED with its tree gone and the task has failed."""

    def done() -> bool:
        job = dep.history(key)[0]
        stopped = job["status"] == "ABORTED" and not job_tree_alive(job) and not dep.host_pids(tok)
        return stopped and dep.ti(dag_id, run_id, "job")["state"] == "failed"

    limit = max(deadline - time.time(), 0) + STOP_WITHIN + 30
    try:
        wait_for(f"{dag_id}: remote job stopped and task failed after the timeout", done, limit, 0.5)
    finally:
        dep.ssh_server.ssh(f"pkill -f {tok}")  # never leave the job behind
    return time.time() - deadline


def test_g_execution_timeout_of_a_deferred_task_stops_the_remote_job(dep):
    dag_id, tok = "deploy_execution_timeout", token()
    counter = dep.counter(f"g-exec-{tok}")
    run_id, key, deadline = run_until_timeout(dep, dag_id, tok, counter)
    after = wait_stopped_and_failed(dep, dag_id, run_id, key, tok, deadline)
    log = dep.task_log(dag_id, run_id, "job", dep.ti(dag_id, run_id, "job")["try_number"]).lower()
    dep.note("g: execution_timeout (deferred)", "LocalExecutor", len(dep.host_lines(counter)), after)
    assert after <= STOP_WITHIN
    assert dep.host_lines(counter) == ["run"]
    assert "abort" in log or "stopped" in log, log[-3000:]
    assert not any(w in log for w in STOP_FAILED_WORDS), log[-3000:]


def test_g_trigger_timeout_stops_the_remote_job_and_says_so(dep):
    dag_id, tok = "deploy_trigger_timeout", token()
    counter = dep.counter(f"g-trig-{tok}")
    run_id, key, deadline = run_until_timeout(dep, dag_id, tok, counter)
    after = wait_stopped_and_failed(dep, dag_id, run_id, key, tok, deadline)
    log = dep.task_log(dag_id, run_id, "job", dep.ti(dag_id, run_id, "job")["try_number"]).lower()
    dep.note("g: operator trigger_timeout, host reachable", "LocalExecutor", len(dep.host_lines(counter)), after)
    assert after <= STOP_WITHIN
    assert dep.host_lines(counter) == ["run"]
    assert "abort" in log or "stopped" in log, log[-3000:]
    assert not any(w in log for w in STOP_FAILED_WORDS), log[-3000:]


def test_g_trigger_timeout_with_the_host_unreachable_says_the_stop_failed(dep):
    dag_id, tok = "deploy_trigger_timeout", token()
    counter = dep.counter(f"g-unreach-{tok}")
    run_id, key, deadline = run_until_timeout(dep, dag_id, tok, counter)
    sshd = dep.ssh_server.process.pid
    # Just before the deadline the host stops answering (its sshd is frozen) and live sessions drop:
    # reconnects time out (a retryable error), so the trigger reaches its deadline and tries to stop the job.
    time.sleep(max(deadline - 3 - time.time(), 0))
    try:
        os.kill(sshd, signal.SIGSTOP)
        dep.ssh_server.kill_sessions()
        # Bounded: the stop attempt may wait for a connection, but the timeout must still end the task.
        ti = wait_for("the task failed after the timeout", lambda: (t := dep.ti(dag_id, run_id, "job"))["state"]
                      == "failed" and t, deadline + STOP_WITHIN + 60 - time.time(), 1.0)  # fmt: skip
    finally:
        os.kill(sshd, signal.SIGCONT)
    try:
        job = dep.history(key)[0]
        log = dep.task_log(dag_id, run_id, "job", ti["try_number"]).lower()
    finally:
        dep.ssh_server.ssh(f"pkill -f {tok}")
    dep.note("g: operator trigger_timeout, host unreachable at the deadline", "LocalExecutor",
             len(dep.host_lines(counter)), None)  # fmt: skip
    assert job["status"] == "RUNNING", "the stop could not reach the host: the job was still running"
    assert "remote work aborted" not in log, "the task log claims a stop that did not happen"
    assert any(w in log for w in STOP_FAILED_WORDS), f"the log says the stop failed: {log[-3000:]}"
