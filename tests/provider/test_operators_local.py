"""Operator paths that need no SSH: the local transport and the real CLIs on this machine."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest

from airflow_provider_orchesjob.compat import AIRFLOW_V3, AirflowException
from airflow_provider_orchesjob.hooks import OrchesJobHook
from airflow_provider_orchesjob.operators import OrchesJobReserveOperator
from tests.conftest import BIN_DIR


@pytest.fixture
def local_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", BIN_DIR + os.pathsep + os.environ["PATH"])
    return str(tmp_path / "edge")


def context():
    return {"ti": SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)}


class _ReserveSeeingState(OrchesJobReserveOperator):
    """The operator with the task instance's state given by the test (no Airflow API server here)."""

    state_seen = "failed"  # a user marked the task failed

    def current_task_state(self):
        return self.state_seen


@pytest.mark.skipif(not AIRFLOW_V3, reason="Airflow 2's ExecutorSafeguard refuses execute() from a test thread")
def test_killing_a_worker_waiting_for_a_reservation_cancels_it(local_env):
    op = _ReserveSeeingState(
        task_id="reserve", ssh_conn_id=None, orchesjob_home=local_env, command=["true"], run_key="far-future",
        not_before="2099-01-01T00:00:00Z", wait_for_completion=True, deferrable=False, poll_interval=0.1,
    )  # fmt: skip
    outcome: list[BaseException] = []

    def run():
        try:
            op.execute(context())
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test checks
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    hook = OrchesJobHook(None, orchesjob_home=local_env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until the reservation exists and the worker polls it
        try:
            hook.reservation_status("far-future")
            break
        except Exception:  # noqa: BLE001 - not reserved yet
            time.sleep(0.05)
    assert not outcome, f"execute() ended before it was killed: {outcome}"
    op.on_kill()
    worker.join(20)
    assert not worker.is_alive()
    res = hook.reservation_status("far-future")["reservation"]
    assert res["reservation_status"] == "CANCELLED" and res["job_id"] is None
    assert res["cancel_reason"] == "task killed by a user"  # a kill, told apart from a person on the host
    # The waiting execute() ends with the reservation's fate instead of polling forever.
    assert len(outcome) == 1 and isinstance(outcome[0], AirflowException)
    assert "ended CANCELLED without a job" in str(outcome[0])


def test_a_worker_shutting_down_leaves_the_reservation(local_env):
    op = _ReserveSeeingState(
        task_id="reserve", ssh_conn_id=None, orchesjob_home=local_env, command=["true"], run_key="kept",
        not_before="2099-01-01T00:00:00Z", wait_for_completion=False, poll_interval=0.1,
    )  # fmt: skip
    op.execute(context())
    op.wait_for_completion = True  # as if it were waiting
    op.state_seen = "running"  # the try itself still runs: the worker is stopping, not a person
    op.on_kill()
    hook = OrchesJobHook(None, orchesjob_home=local_env)
    assert hook.reservation_status("kept")["reservation"]["reservation_status"] == "RESERVED"


def _try_context(try_number, max_tries):
    return {"ti": SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=try_number,
                                  max_tries=max_tries)}  # fmt: skip


def test_a_cleared_task_rearms_its_cancelled_reservation_a_retry_does_not(local_env):
    def operator(retries):
        return OrchesJobReserveOperator(
            task_id="reserve", ssh_conn_id=None, orchesjob_home=local_env, command=["true"], run_key="rearm",
            not_before="2099-01-01T00:00:00Z", retries=retries,
        )  # fmt: skip

    hook = OrchesJobHook(None, orchesjob_home=local_env)
    assert operator(1).execute(_try_context(1, 1))["reservation_status"] == "RESERVED"
    hook.cancel_reservation("rearm")  # the try was killed
    # An automatic retry (try 2 of retries=1, max_tries unchanged) keeps the reservation's fate.
    assert operator(1).execute(_try_context(2, 1))["reservation_status"] == "CANCELLED"
    # A user's clear (max_tries reset to try_number + retries) re-arms it.
    res = operator(1).execute(_try_context(3, 3))
    assert res["reservation_status"] == "RESERVED"
    assert hook.reservation_status("rearm")["reservation"]["reservation_status"] == "RESERVED"
    hook.cancel_reservation("rearm")
