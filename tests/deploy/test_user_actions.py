"""Issue 11 (d) and the user half of (e): what a user does through the REST API to deferred or finished tasks."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.deploy.deployment import DEPLOY_TIMEOUT, job_tree_alive, run_key, token, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(DEPLOY_TIMEOUT)]

DAG = "deploy_job"
STOP_WITHIN = 30  # seconds, issue 11


def once_then_quick(counter: str, tok: str) -> str:
    """First execution runs ~5 min (until stopped); any later one ends at once."""
    return f'echo run >> {counter}; [ "$(wc -l < {counter})" -ge 2 ] || sleep 300.{tok}'


def wait_stopped(dep, key: str, tok: str, since: float, timeout: float = 90) -> tuple[dict, float]:
    """Wait until the host job of ``key`` is ABORTED with no process of its tree left; seconds since ``since``."""

    def stopped() -> dict | None:
        job = dep.history(key)[0]
        if job["status"] == "ABORTED" and not job_tree_alive(job) and not dep.host_pids(tok):
            return job
        return None

    job = wait_for(f"remote job {key} stopped (ABORTED, tree gone)", stopped, timeout, 0.25)
    return job, time.monotonic() - since


def deferred_job(dep, counter: str, tok: str) -> tuple[str, str]:
    run_id = dep.trigger(DAG, {"command": once_then_quick(counter, tok)})
    dep.wait_trigger_held(DAG, run_id, "job")
    wait_for("the remote job running", lambda: dep.host_lines(counter) == ["run"] and dep.host_pids(tok), 60)
    return run_id, run_key(DAG, "job", run_id)


def test_d_marking_a_deferred_task_failed_stops_the_remote_job(dep):
    tok = token()
    counter = dep.counter(f"d-failed-{tok}")
    run_id, key = deferred_job(dep, counter, tok)
    t0 = time.monotonic()
    dep.set_ti_state(DAG, run_id, "job", "failed")
    _, stop = wait_stopped(dep, key, tok, t0)
    dep.note("d: mark failed (deferred)", "LocalExecutor", len(dep.host_lines(counter)), stop)
    assert stop <= STOP_WITHIN, f"marked failed: remote job stopped after {stop:.1f}s"
    assert dep.dag_run(DAG, run_id)["state"] == "failed"
    assert dep.host_lines(counter) == ["run"]
    assert [a["status"] for a in dep.history(key)] == ["ABORTED"]


def test_d_clearing_a_deferred_task_stops_the_job_before_the_new_try_starts(dep):
    tok = token()
    counter = dep.counter(f"d-cleared-{tok}")
    run_id, key = deferred_job(dep, counter, tok)
    t0 = time.monotonic()
    dep.clear(DAG, run_id, ["job"])
    try:
        _, stop = wait_stopped(dep, key, tok, t0, timeout=STOP_WITHIN + 30)
    except BaseException:
        dep.ssh_server.ssh(f"pkill -f {tok}")  # never leave the job behind
        raise
    run = dep.wait_run(DAG, run_id, 180)
    attempts = dep.history(key)
    dep.note("d: clear (deferred)", "LocalExecutor", len(dep.host_lines(counter)), stop)
    assert stop <= STOP_WITHIN, f"cleared: remote job stopped after {stop:.1f}s"
    assert run["state"] == "success", dep.ti(DAG, run_id, "job")
    assert [a["status"] for a in attempts] == ["ABORTED", "SUCCEEDED"], attempts
    first, second = attempts
    assert second["started_at"] >= (first.get("finished_at") or first.get("aborted_at")), (
        "the new try started its attempt only after the old one was stopped"
    )
    assert dep.host_lines(counter) == ["run", "run"]
    # Airflow 3.3's task state store: the first try recorded its job, the new try logs what it found there.
    log = dep.task_log(DAG, run_id, "job", dep.ti(DAG, run_id, "job")["try_number"])
    assert f"task state store: an earlier try recorded remote job {first['job_id']}" in log, log[-3000:]


def test_e_user_clearing_a_succeeded_task_runs_it_again(dep):
    counter = dep.counter(f"e-clear-{uuid.uuid4().hex[:6]}")
    run_id = dep.trigger(DAG, {"command": f"echo run >> {counter}"})
    assert dep.wait_run(DAG, run_id, 120)["state"] == "success"
    assert dep.host_lines(counter) == ["run"]
    dep.clear(DAG, run_id, ["job"])

    def second_try_done() -> dict | None:
        ti = dep.ti(DAG, run_id, "job")
        return ti if ti["try_number"] >= 2 and ti["state"] in ("success", "failed") else None

    ti = wait_for("the cleared task's new try finished", second_try_done, 120, 1.0)
    lines = dep.host_lines(counter)
    dep.note("e: user clears a succeeded task", "LocalExecutor", len(lines))
    assert ti["state"] == "success"
    assert lines == ["run", "run"], "a user's clear runs the job again (a new attempt)"
    assert [a["status"] for a in dep.history(run_key(DAG, "job", run_id))] == ["SUCCEEDED", "SUCCEEDED"]
