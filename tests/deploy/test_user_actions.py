"""Issue 11 (d) and the user half of (e): what a user does through the REST API to deferred or finished tasks."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import datetime, timedelta, timezone

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


def test_d_marked_failed_before_any_triggerer_ran_its_trigger_the_sweep_stops_the_work(dep):
    # Both triggerers stalled: a job, a flow and a reservation task defer, their triggers are
    # never started, and the user marks the three tasks failed. Airflow deletes the triggers
    # unseen: no on_kill anywhere. The sweep (a scheduled DAG in production) finds the work by
    # its labels: it aborts the job, cancels the flow run (aborting its running step) and the
    # pending reservation.
    tok = token()
    counter, flow_a, flow_b = (dep.counter(f"d-sweep-{n}-{tok}") for n in ("job", "A", "B"))
    flow_key, res_key = f"deploy-sweep-flow-{tok}", f"deploy-sweep-res-{tok}"
    not_before = (datetime.now(timezone.utc) + timedelta(seconds=600)).isoformat()
    triggerers = [dep.components[n] for n in ("triggerer-1", "triggerer-2")]
    for comp in triggerers:
        comp.signal(signal.SIGSTOP)
    try:
        runs = {
            DAG: dep.trigger(DAG, {"command": once_then_quick(counter, tok)}),
            "deploy_flow": dep.trigger("deploy_flow", {"run_key": flow_key, "step_a": f"echo A >> {flow_a}; "
                                       f"sleep 300.{tok}", "step_b": f"echo B >> {flow_b}"}),
            "deploy_reservation": dep.trigger("deploy_reservation", {"command": "true", "run_key": res_key,
                                              "not_before": not_before}),
        }  # fmt: skip
        tasks = {DAG: "job", "deploy_flow": "flow", "deploy_reservation": "reserve"}
        for dag_id, run_id in runs.items():
            dep.wait_ti_state(dag_id, run_id, ("deferred",), 120, task_id=tasks[dag_id])
            assert not (dep.ti(dag_id, run_id, tasks[dag_id]).get("triggerer_job") or {}).get("hostname")
        wait_for("the remote job and flow step running", lambda: dep.host_lines(counter) == ["run"]
                 and dep.host_lines(flow_a) == ["A"], 60)  # fmt: skip
        key = run_key(DAG, "job", runs[DAG])
        t0 = time.monotonic()
        for dag_id, run_id in runs.items():
            dep.set_ti_state(dag_id, run_id, tasks[dag_id], "failed")
        time.sleep(5)
        assert dep.history(key)[0]["status"] == "RUNNING", "nothing in Airflow stops this job by itself"
        swept_at = time.monotonic()
        sweep_run = dep.trigger("deploy_sweep")
        assert dep.wait_run("deploy_sweep", sweep_run, 180)["state"] == "success"
        job, stop = wait_stopped(dep, key, tok, t0)
    finally:
        for comp in triggerers:
            comp.signal(signal.SIGCONT)
        dep.ssh_server.ssh(f"pkill -f {tok}")  # never leave the work behind
    sweep_took = time.monotonic() - swept_at
    flow = dep.orchesjob(f"orchesjob-flow status --no-resume --run-key {flow_key}")
    res = dep.orchesjob(f"orchesjob-reserver status --run-key {res_key}")["reservation"]
    dep.note("d: job, flow and reservation tasks marked failed before any triggerer ran their triggers; the sweep",
             "LocalExecutor", {"job": len(dep.host_lines(counter)), "A": len(dep.host_lines(flow_a)),
                               "B": len(dep.host_lines(flow_b))}, sweep_took)  # fmt: skip
    assert "stopped by the orchesjob sweep" in job["abort_reason"] and "is failed" in job["abort_reason"]
    assert [a["status"] for a in dep.history(key)] == ["ABORTED"] and dep.host_lines(counter) == ["run"]
    assert flow["status"] == "CANCELLED", flow
    assert {s["id"]: s["status"] for s in flow["steps"]} == {"A": "CANCELLED", "B": "CANCELLED"}
    assert dep.history(f"{flow_key}:A:1")[0]["status"] == "ABORTED" and dep.host_lines(flow_b) == []
    assert res["reservation_status"] == "CANCELLED" and "stopped by the orchesjob sweep" in res["cancel_reason"]
    print(f"job stopped {stop:.1f}s after the marks, {sweep_took:.1f}s after the sweep run was triggered")


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
