"""Issue 11 (c), and the automatic-retry half of (e): the worker running a non-deferrable task dies (SIGKILL)."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from tests.deploy.deployment import DEPLOY_TIMEOUT, TI_HEARTBEAT_TIMEOUT, alive, run_key, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(DEPLOY_TIMEOUT)]


def running_ti(dep, dag_id: str, run_id: str) -> dict:
    def up() -> dict | None:
        ti = dep.ti(dag_id, run_id, "job")
        return ti if ti["state"] == "running" and ti.get("pid") and ti.get("hostname") else None

    return wait_for(f"{dag_id}/{run_id} running in a worker", up, 120, 0.5)


def kill_worker(dep, ti: dict) -> str:
    """SIGKILL the worker process running ``ti``; return what was killed."""
    host = ti["hostname"]
    if host.startswith("celery-worker-"):
        # The whole Celery worker dies (main process, pool, task supervisor and task), like its machine would.
        comp = dep.components[host]
        comp.kill()
        comp.start()  # and comes back; the retry may land on either worker
        wait_for(f"{host} ready again", lambda: comp.log().count(" ready.") >= comp.starts, 120)
        return host
    # LocalExecutor: the task process and its supervisor (the executor's worker process).
    pid = int(ti["pid"])
    with open(f"/proc/{pid}/stat") as f:
        supervisor = int(f.read().rsplit(")", 1)[1].split()[1])
    assert supervisor not in {c.pid for c in dep.components.values()}, "the supervisor is a worker, not a component"
    for p in (supervisor, pid):
        os.kill(p, signal.SIGKILL)
    wait_for("task process and supervisor gone", lambda: not alive(pid) and not alive(supervisor), 30, 0.1)
    return f"LocalExecutor worker pid {supervisor} (task pid {pid})"


@pytest.mark.parametrize("executor", ["local", "celery"])
def test_c_worker_sigkilled_retry_reattaches_one_execution(dep, executor):
    dag_id = f"deploy_worker_{executor}"
    counter = dep.counter(f"c-{executor}-{uuid.uuid4().hex[:6]}")
    # Long enough that the retry (after the heartbeat timeout) finds the job still running.
    seconds = TI_HEARTBEAT_TIMEOUT + 25
    run_id = dep.trigger(dag_id, {"command": f"echo run >> {counter}; sleep {seconds}; echo finished"})
    ti = running_ti(dep, dag_id, run_id)
    wait_for("the remote job started", lambda: dep.host_lines(counter) == ["run"], 60)
    killed = kill_worker(dep, ti)
    killed_at = time.monotonic()
    run = dep.wait_run(dag_id, run_id, 240)
    ti = dep.ti(dag_id, run_id, "job")
    lines = dep.host_lines(counter)
    attempts = dep.history(run_key(dag_id, "job", run_id))
    executor_name = "CeleryExecutor" if executor == "celery" else "LocalExecutor"
    dep.note(f"c: worker SIGKILL, non-deferrable ({killed} -> retry on {ti['hostname']})", executor_name, len(lines))
    print(f"killed {killed}; run finished {time.monotonic() - killed_at:.0f}s later; try 2 on {ti['hostname']}")
    assert run["state"] == "success", ti
    assert ti["try_number"] == 2, "the first try died with its worker; the retry finished the task"
    assert lines == ["run"], "exactly one execution on the host"
    assert [a["status"] for a in attempts] == ["SUCCEEDED"], attempts
    log = dep.task_log(dag_id, run_id, "job", 2)
    assert "reattached" in log, log[-3000:]
    assert "finished" in log, "the retry streamed the job's output"


def test_e_automatic_retry_of_a_task_whose_job_succeeded_adopts_it(dep):
    """The worker dies after the remote job succeeded, before the task reported it: the retry adopts, loudly."""
    dag_id = "deploy_worker_slow_poll"  # polls every 60 s: the job ends while the worker sleeps
    counter = dep.counter(f"e-retry-{uuid.uuid4().hex[:6]}")
    run_id = dep.trigger(dag_id, {"command": f"sleep 2; echo run >> {counter}"})
    ti = running_ti(dep, dag_id, run_id)
    key = run_key(dag_id, "job", run_id)
    wait_for("the remote job succeeded", lambda: [a["status"] for a in dep.history(key)] == ["SUCCEEDED"], 60)
    assert dep.ti(dag_id, run_id, "job")["state"] == "running", "the first try has not noticed yet"
    kill_worker(dep, ti)
    run = dep.wait_run(dag_id, run_id, 180)
    ti = dep.ti(dag_id, run_id, "job")
    lines = dep.host_lines(counter)
    dep.note("e: automatic retry after the job succeeded adopts it", "LocalExecutor", len(lines))
    assert run["state"] == "success", ti
    assert ti["try_number"] == 2
    assert lines == ["run"], "the retry adopted the success instead of running the job again"
    assert len(dep.history(key)) == 1
    log = dep.task_log(dag_id, run_id, "job", 2)
    assert "adopt" in log.lower(), f"the adoption is logged: {log[-3000:]}"
