"""The sweep against the real CLIs on this machine (local transport): what it stops and what it leaves.

The task instance states come from a dictionary (no Airflow API server here);
the jobs, reservations, labels and stops are real.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from airflow_provider_orchesjob.compat import AirflowException
from airflow_provider_orchesjob.hooks import OrchesJobHook
from airflow_provider_orchesjob.operators import (
    OrchesJobFlowOperator,
    OrchesJobReserveOperator,
    OrchesJobStartOperator,
    OrchesJobSweepOperator,
)
from airflow_provider_orchesjob.utils.labels import label_options, task_labels
from tests.conftest import BIN_DIR


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", BIN_DIR + os.pathsep + os.environ["PATH"])
    return str(tmp_path / "edge")


def ti(task_id, map_index=-1, try_number=1):
    return SimpleNamespace(dag_id="d", task_id=task_id, run_id="manual__2026-11-29T10:00:00+00:00",
                           map_index=map_index, try_number=try_number)  # fmt: skip


class _Sweep(OrchesJobSweepOperator):
    states: dict = {}
    run_states: dict = {}  # by task id; default: the DAG run is still running

    def task_state(self, ref):
        state = self.states[ref[1], ref[3]]
        if isinstance(state, Exception):
            raise state
        return state

    def run_state(self, dag_id, run_id):
        state = self.run_states.get(self._asking, "running")
        if isinstance(state, Exception):
            raise state
        return state

    def _judge(self, kind, run_key, work_id, labels, namespace):
        self._asking = labels.get("airflow.task_id")
        return super()._judge(kind, run_key, work_id, labels, namespace)


def sweep(home, states, run_states=None, **kw):
    op = _Sweep(task_id="sweep", ssh_conn_id=None, orchesjob_home=home, kill_grace=1, **kw)
    op.states, op.run_states = states, run_states or {}
    return {(e["kind"], e["run_key"]): e for e in op.execute({})}


def start(hook, key, labels=None):
    return hook.start_job(key, ["sleep", "60"], labels=labels)


def test_the_sweep_stops_only_followed_work_whose_task_instance_ended(home):
    hook = OrchesJobHook(None, orchesjob_home=home)
    marked_failed = start(hook, "k-failed", task_labels(ti("failed"), namespace=None, followed=True))
    start(hook, "k-mapped", task_labels(ti("mapped", map_index=3), namespace=None, followed=True))
    start(hook, "k-deferred", task_labels(ti("deferred"), namespace=None, followed=True))
    start(hook, "k-cleared", task_labels(ti("cleared"), namespace=None, followed=True))
    start(hook, "k-lost-clear", task_labels(ti("lostclear"), namespace=None, followed=True))
    start(hook, "k-gone", task_labels(ti("gone"), namespace=None, followed=True))
    start(hook, "k-fire", task_labels(ti("fire"), namespace=None, followed=False))
    start(hook, "k-other-ns", task_labels(ti("failed"), namespace="staging", followed=True))
    start(hook, "k-unreadable", task_labels(ti("unreadable"), namespace=None, followed=True))
    start(hook, "k-plain")
    hook.reserve(
        "r-failed",
        ["true"],
        not_before=time.time() + 3600,
        start_options=label_options(task_labels(ti("rfailed"), namespace=None, followed=True)),
    )
    hook.reserve(
        "r-waiting",
        ["true"],
        not_before=time.time() + 3600,
        start_options=label_options(task_labels(ti("rwaiting"), namespace=None, followed=True)),
    )
    # fmt: skip
    states = {("failed", -1): "failed", ("mapped", 3): "success", ("deferred", -1): "deferred",
              ("cleared", -1): None, ("fire", -1): "failed", ("unreadable", -1): RuntimeError("api down"),
              ("rfailed", -1): "failed", ("rwaiting", -1): "deferred", ("lostclear", -1): None,
              ("gone", -1): None}  # fmt: skip
    # Airflow failed the run while a user's clear of "lostclear" ran: no try will ever come.
    runs = {"lostclear": "failed", "cleared": "queued", "gone": RuntimeError("DagRun not found")}

    dry = sweep(home, states, runs, dry_run=True)
    assert {k for k, e in dry.items() if e["action"] == "would stop"} == {
        ("job", "k-failed"), ("job", "k-mapped"), ("job", "k-lost-clear"), ("reservation", "r-failed")}  # fmt: skip
    assert all(j["status"] == "RUNNING" for j in hook.running_jobs()), "a dry run stops nothing"

    report = sweep(home, states, runs)
    assert report[("job", "k-failed")]["action"] == "stopped"
    assert report[("job", "k-failed")]["task_instance"] == "d.failed of manual__2026-11-29T10:00:00+00:00"
    assert report[("job", "k-mapped")]["task_instance"].startswith("d.mapped[3] of")
    assert report[("job", "k-deferred")]["action"] == "left"
    assert report[("job", "k-cleared")]["action"] == "left" and report[("job", "k-cleared")]["state"] == "none"
    assert report[("job", "k-unreadable")]["action"].startswith("left (state unreadable")
    assert report[("job", "k-gone")]["action"].startswith("left (DAG run state unreadable")
    assert report[("job", "k-lost-clear")]["action"] == "stopped"
    assert report[("job", "k-lost-clear")]["state"] == "none, in a failed DAG run"
    # Fire-and-forget, another namespace's and unlabelled work is not the sweep's to judge.
    assert not {("job", "k-fire"), ("job", "k-other-ns"), ("job", "k-plain")} & report.keys()
    assert report[("reservation", "r-failed")]["action"] == "stopped"
    assert report[("reservation", "r-waiting")]["action"] == "left"

    stopped = hook.job_status(job_id=marked_failed["job_id"])
    assert stopped["status"] == "ABORTED" and "stopped by the orchesjob sweep" in stopped["abort_reason"]
    assert "[airflow try 1]" in stopped["abort_reason"]
    assert hook.job_status("k-mapped")["status"] == "ABORTED"
    running = {j["run_key"] for j in hook.running_jobs()}
    assert running == {"k-deferred", "k-cleared", "k-fire", "k-other-ns", "k-unreadable", "k-plain", "k-gone"}
    cancelled = hook.reservation_status("r-failed")["reservation"]
    assert cancelled["reservation_status"] == "CANCELLED" and "orchesjob sweep" in cancelled["cancel_reason"]
    assert hook.reservation_status("r-waiting")["reservation"]["reservation_status"] == "RESERVED"
    # A second sweep finds nothing more to stop.
    assert not [e for e in sweep(home, states, runs).values() if e["action"] == "stopped"]
    for key in running:
        hook.abort_job(key, grace=1)


def test_a_sweep_in_a_namespace_judges_only_that_namespace(home):
    hook = OrchesJobHook(None, orchesjob_home=home)
    start(hook, "prod", task_labels(ti("t"), namespace="prod", followed=True))
    start(hook, "none", task_labels(ti("t"), namespace=None, followed=True))
    op = _Sweep(task_id="sweep", ssh_conn_id=None, orchesjob_home=home, kill_grace=1)
    op.states = {("t", -1): "failed"}
    op.hook.run_key_namespace = lambda: "prod"
    report = op.execute({})
    assert [(e["run_key"], e["action"]) for e in report] == [("prod", "stopped")]
    assert hook.job_status("none")["status"] == "RUNNING"
    hook.abort_job("none", grace=1)


def test_a_job_that_finished_before_the_sweep_stopped_it_keeps_its_outcome(home):
    hook = OrchesJobHook(None, orchesjob_home=home)
    job = hook.start_job("quick", ["sleep", "1"], labels=task_labels(ti("t"), namespace=None, followed=True))
    op = _Sweep(task_id="sweep", ssh_conn_id=None, orchesjob_home=home, kill_grace=1)
    op.states = {("t", -1): "success"}
    listed = op.hook.running_jobs()
    time.sleep(2)  # the job ends between the listing and the stop
    op.hook.running_jobs = lambda labels=None: listed
    report = op.execute({})
    assert report[0]["action"] == "stopped" and "finished on its own" in report[0]["now"]
    assert hook.job_status(job_id=job["job_id"])["status"] == "SUCCEEDED"


def test_a_stop_that_fails_fails_the_sweep_task(home):
    hook = OrchesJobHook(None, orchesjob_home=home)
    start(hook, "k", task_labels(ti("t"), namespace=None, followed=True))
    op = _Sweep(task_id="sweep", ssh_conn_id=None, orchesjob_home=home, kill_grace=1)
    op.states = {("t", -1): "failed"}

    def refuse(*_a, **_k):
        from airflow_provider_orchesjob.exceptions import OrchesJobInvalidState

        raise OrchesJobInvalidState("another user's process", exit_code=4, stderr="")

    op.hook.abort_job = refuse
    with pytest.raises(AirflowException, match="could not stop 1"):
        op.execute({})
    hook.abort_job("k", grace=1)


def test_the_start_and_reserve_operators_label_their_work(home):
    hook = OrchesJobHook(None, orchesjob_home=home)
    context = {"ti": ti("res")}
    waiting = OrchesJobReserveOperator(task_id="res", ssh_conn_id=None, orchesjob_home=home, command=["true"],
                                       not_before="2099-01-01T00:00:00Z", run_key="res")  # fmt: skip
    res = waiting.execute(context)
    assert {"--label=airflow.try_number=1", "--label=airflow.followed=false", "--label=airflow.task_id=res"} <= set(
        res["orchesjob_start_options"]
    )
    hook.cancel_reservation("res")
    op = OrchesJobStartOperator(task_id="job", ssh_conn_id=None, orchesjob_home=home, command=["true"],
                                deferrable=False, poll_interval=0.1)  # fmt: skip
    job = op.execute({"ti": ti("job", map_index=2)})
    assert job["status"] == "SUCCEEDED"
    kept = OrchesJobStartOperator(task_id="kept", ssh_conn_id=None, orchesjob_home=home, command=["true"],
                                  deferrable=False, poll_interval=0.1, abort_on_kill=False)  # fmt: skip
    # abort_on_kill=False: the task never stops its work, and neither does a sweep.
    assert kept.execute({"ti": ti("kept")})["labels"]["airflow.followed"] == "false"
    assert job["labels"] == {"airflow.dag_id": "d", "airflow.task_id": "job", "airflow.map_index": "2",
                             "airflow.run_id": "manual__2026-11-29T10:00:00+00:00", "airflow.try_number": "1",
                             "airflow.followed": "true"}  # fmt: skip


def test_the_sweep_cancels_the_flow_run_of_an_ended_task_instance(home):
    hook = OrchesJobHook(None, orchesjob_home=home)
    flow = {"flow_id": "f", "steps": [{"id": "A", "command": ["sleep", "60"]},
                                      {"id": "B", "when": "A", "command": ["true"]}]}  # fmt: skip
    hook.start_flow("flow-failed", flow, labels=task_labels(ti("fl"), namespace=None, followed=True))
    hook.start_flow("flow-deferred", flow, labels=task_labels(ti("fd"), namespace=None, followed=True))
    report = sweep(home, {("fl", -1): "failed", ("fd", -1): "deferred"})
    assert report[("flow", "flow-failed")]["action"] == "stopped"
    assert report[("flow", "flow-deferred")]["action"] == "left"
    assert hook.flow_status("flow-failed")["status"] == "CANCELLED"
    assert hook.flow_status("flow-deferred")["status"] in ("PENDING", "RUNNING")
    # The flow's own step jobs carry no labels: judged as the flow, never one by one.
    assert not [k for k in report if k[0] == "job"]
    hook.cancel_flow("flow-deferred", grace=1)


def test_the_flow_operator_labels_its_run(home):
    op = OrchesJobFlowOperator(
        task_id="fl",
        ssh_conn_id=None,
        orchesjob_home=home,
        deferrable=False,
        poll_interval=0.1,
        flow={"flow_id": "f", "steps": [{"id": "A", "command": ["true"]}]},
    )
    flow = op.execute({"ti": ti("fl")})
    assert flow["status"] == "SUCCEEDED" and flow["labels"]["airflow.task_id"] == "fl"
