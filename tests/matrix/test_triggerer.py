"""A real triggerer process runs the provider's triggers, on this venv's Airflow version.

Per transport (the real sshd, and the local CLIs): a deferred task whose job finishes is
resumed on a worker and succeeds with one execution on the host; a deferred task marked failed
while its job runs gets its remote job stopped by the trigger's cancellation path — on 3.3+
``BaseTrigger.on_kill``, on 3.0-3.2 the fallback through ``RuntimeTaskInstance.get_task_states``,
on 2.x the fallback through the metadata DB.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from airflow_provider_orchesjob.utils.run_key import run_key_for
from tests.matrix.conftest import AIRFLOW_VERSION, BIN, DAG_ID, Deployment, note, wait_for

TRANSPORTS = ["ssh", "local"]
ACTIVE = ("STARTING", "RUNNING", "ABORTING", "CANCELLING")  # the host's active statuses
STOP_WITHIN = 45  # seconds from "mark failed" to the remote job ABORTED (includes the triggerer's reload)


def host_jobs(
    d: Deployment, ssh_server, transport: str, task_id: str, *, dag_id=DAG_ID, run_id=None, map_index=-1
) -> list[dict]:
    """Every attempt recorded on the host for the task instance's run key, newest first."""
    key = run_key_for(dag_id, task_id, run_id or d.run_id, map_index)
    if transport == "ssh":
        r = ssh_server.ssh(f"ORCHESJOB_HOME={d.edge_home} ~/.local/bin/orchesjob status --run-key '{key}' --all")
    else:
        r = subprocess.run(
            [os.path.join(BIN, "orchesjob"), "status", "--run-key", key, "--all"],
            env={**os.environ, "ORCHESJOB_HOME": d.local_home}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    if r.returncode != 0:
        return []  # nothing recorded yet (unknown home or run key)
    return json.loads(r.stdout)


def ran_in_triggerer(d: Deployment, task_id: str, *, dag_id=DAG_ID, run_id=None, map_index=-1) -> bool:
    """The triggerer ran the task's trigger: it names the trigger by its task instance in its own
    log (2.x) or in the task log (3.x)."""
    name = f"{dag_id}/{run_id or d.run_id}/{task_id}/{map_index}/1 (ID "
    return name in d.log("triggerer") or name in d.task_log(task_id, run_id)


def wait_deferred(d: Deployment, task_id: str, timeout: float = 180) -> None:
    """Wait until the task deferred (it may have finished since)."""

    def deferred_or_done():
        state = d.ti(task_id)["state"]
        return state if state in ("deferred", "success", "failed", "up_for_retry") else None

    state = wait_for(f"{task_id} deferred", deferred_or_done, timeout, d)
    if state != "deferred" and not ran_in_triggerer(d, task_id):
        pytest.fail(f"{task_id} never deferred: {d.ti(task_id)}\n--- task log ---\n{d.task_log(task_id)[-6000:]}")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_deferred_task_is_resumed_after_the_triggerer_sees_the_job_finish(deployment, ssh_server, transport):
    d, task_id = deployment, f"{transport}_ok"
    wait_deferred(d, task_id)
    finished = ("success", "failed")
    state = wait_for(f"{task_id} finished", lambda: (s := d.ti(task_id)["state"]) in finished and s, 120, d)
    assert state == "success", f"{d.ti(task_id)}\n--- task log ---\n{d.task_log(task_id)[-6000:]}"
    jobs = host_jobs(d, ssh_server, transport, task_id)
    assert [j["status"] for j in jobs] == ["SUCCEEDED"], "exactly one execution on the host"
    assert ran_in_triggerer(d, task_id), d.log("triggerer")[-4000:]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_marking_a_deferred_task_failed_stops_its_remote_job(deployment, ssh_server, transport):
    d, task_id = deployment, f"{transport}_kill"
    wait_deferred(d, task_id)
    wait_for(
        f"{task_id}'s job running",
        lambda: [j["status"] for j in host_jobs(d, ssh_server, transport, task_id)] == ["RUNNING"], 60, d,
    )  # fmt: skip
    time.sleep(2)  # a few polls by the trigger
    d.mark_failed(task_id)
    marked = time.monotonic()

    def stopped():
        jobs = host_jobs(d, ssh_server, transport, task_id)
        return jobs if jobs and jobs[0]["status"] not in ACTIVE else None

    try:
        jobs = wait_for(f"{task_id}'s remote job stopped", stopped, STOP_WITHIN, d)
    except AssertionError:
        pytest.fail(
            f"Airflow {AIRFLOW_VERSION}: the remote job still runs {STOP_WITHIN}s after the deferred task was "
            f"marked failed: {host_jobs(d, ssh_server, transport, task_id)}\n--- triggerer log ---\n"
            + d.log("triggerer")[-6000:]
        )
    note(f"{task_id}: remote job {jobs[0]['status']} {time.monotonic() - marked:.1f}s after mark-failed")
    assert [j["status"] for j in jobs] == ["ABORTED"], jobs
    assert d.ti(task_id)["state"] == "failed"


def test_triggerer_restart_stops_only_the_mapped_job_a_user_killed(deployment, ssh_server):
    """A cancelled trigger is not a kill: the 3.0-3.2 fallback must look the state up under the
    mapped task instance's key, and a triggerer stopping (as a service manager stops it) must
    leave the other jobs running for the next triggerer to pick up."""
    d, dag_id, task_id = deployment, "orchesjob_matrix_mapped", "mapped"
    run_id = d.trigger(dag_id)
    where = {"dag_id": dag_id, "run_id": run_id}

    def jobs(i: int) -> list[str]:
        return [j["status"] for j in host_jobs(d, ssh_server, "ssh", task_id, map_index=i, **where)]

    for i in (0, 1):
        wait_for(f"map index {i} deferred", lambda i=i: d.ti(task_id, map_index=i, **where)["state"] == "deferred",
                 180, d)  # fmt: skip
        wait_for(f"map index {i}'s job running", lambda i=i: jobs(i) == ["RUNNING"], 60, d)
        # A mark before the triggerer has started the trigger reaches no trigger at all (the task
        # instance is no longer deferred when the triggerer loads triggers): such work is the
        # sweep's (tests/deploy, d-sweep), not on_kill's.
        wait_for(
            f"map index {i}'s trigger running",
            lambda i=i: ran_in_triggerer(d, task_id, dag_id=dag_id, run_id=run_id, map_index=i),
            60,
            d,
        )
    time.sleep(1.5)  # a poll by each trigger
    d.mark_failed(task_id, map_index=0, **where)
    wait_for("map index 0's job stopped", lambda: jobs(0) and jobs(0)[0] not in ACTIVE, STOP_WITHIN, d)
    assert jobs(0) == ["ABORTED"]
    assert jobs(1) == ["RUNNING"], "stopping the job of map index 0 touched map index 1's"

    note(f"mapped: triggerer {d.restart('triggerer', 'triggerer')}")
    # (It may have finished meanwhile: the old triggerer can take a while to stop.)
    assert jobs(1) in (["RUNNING"], ["SUCCEEDED"]), f"the triggerer's stop stopped a job nobody killed: {jobs(1)}"
    finished = ("success", "failed")
    state = wait_for(
        "map index 1 finished", lambda: (s := d.ti(task_id, map_index=1, **where)["state"]) in finished and s, 150, d
    )
    assert state == "success", d.ti(task_id, map_index=1, **where)
    assert jobs(1) == ["SUCCEEDED"], "exactly one execution, never stopped"
