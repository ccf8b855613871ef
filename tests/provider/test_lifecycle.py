"""Pure unit tests of the provider's lifecycle rules (no host, no Airflow database)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from airflow_provider_orchesjob.hooks.batching import DEFAULT_CHUNK_BYTES, request_cost, split_batches
from airflow_provider_orchesjob.hooks.orchesjob import parse_json_stdout
from airflow_provider_orchesjob.utils.labels import label_options, labels_from_options, task_instance_of, task_labels
from airflow_provider_orchesjob.utils.lifecycle import (
    ACTIVE_JOB,
    TERMINAL_JOB,
    abandoned,
    is_user_clear,
    is_user_kill,
    normalize_state,
    state_from_task_states,
    stop_reason,
    stop_requested_by_try,
    stopped_by_earlier_try,
    success_decision,
    task_state_key,
    timeout_message,
    trigger_deadline,
    trigger_superseded,
)
from airflow_provider_orchesjob.utils.run_key import run_key_for


# ------------------------------------------------------------------ statuses
def test_stopping_is_active_and_never_launched_is_terminal():
    assert {"ABORTING", "CANCELLING", "STARTING", "RUNNING"} == set(ACTIVE_JOB)
    assert {"NEVER_LAUNCHED", "LOST", "ABORTED", "CANCELLED"} <= set(TERMINAL_JOB)
    assert not set(ACTIVE_JOB) & set(TERMINAL_JOB)


# ----------------------------------------------------- was it a user's kill?
class _State:  # an enum-like state (TaskInstanceState / TerminalTIState)
    def __init__(self, value):
        self.value = value


@pytest.mark.parametrize(
    "state, killed",
    [
        ("deferred", False),  # moved to another triggerer, or the triggerer shuts down
        (_State("deferred"), False),
        ("TaskInstanceState.DEFERRED", False),
        ("up_for_retry", False),  # failed on its own (an error event from another triggerer)
        ("failed", True),  # marked failed
        ("success", True),  # marked success
        ("skipped", True),
        (None, True),  # cleared (or the task instance is gone)
        ("scheduled", True),  # cleared, the new try is on its way
        ("queued", True),
        ("running", True),
        ("restarting", True),
        ("something_new", False),  # unknown is not proof
    ],
)
def test_user_kill_decision_in_the_triggerer(state, killed):
    assert is_user_kill(state) is killed


def test_user_kill_decision_in_the_worker():
    # The try itself still runs: the worker shuts down; the retry will reattach.
    assert is_user_kill("running", waiting_in="worker") is False
    assert is_user_kill("restarting", waiting_in="worker") is True  # cleared while running
    assert is_user_kill("failed", waiting_in="worker") is True


def test_a_newer_deferred_try_supersedes_the_trigger():
    assert trigger_superseded("deferred", 2, 3)  # cleared; the new try deferred before the old trigger ended
    assert not trigger_superseded("deferred", 3, 3)  # the same try: the trigger moved
    assert not trigger_superseded("deferred", 3, None)  # unknown proves nothing
    assert not trigger_superseded("deferred", None, 3)
    assert not trigger_superseded("running", 2, 3)  # not deferred: is_user_kill decides


def test_mapped_task_instances_are_looked_up_by_their_own_key():
    answer = {"run1": {"t": "deferred", "t_0": "failed", "t_1": "deferred"}}
    assert task_state_key("t", -1) == task_state_key("t", None) == "t"
    assert task_state_key("t", 0) == "t_0"
    assert state_from_task_states(answer, "run1", "t", 0) == "failed"
    assert state_from_task_states(answer, "run1", "t", 1) == "deferred"
    assert state_from_task_states(answer, "run1", "t", -1) == "deferred"
    with pytest.raises(KeyError):
        state_from_task_states(answer, "run1", "t", 7)


def test_normalize_state():
    assert normalize_state(None) == "none"
    assert normalize_state("DEFERRED") == "deferred"
    assert normalize_state(_State("success")) == "success"


# ------------------------------------------------- a user's clear or a retry?
@pytest.mark.parametrize(
    "try_number, max_tries, retries, clear",
    [
        (1, 2, 2, False),  # the first try: a success found then was made elsewhere -> adopt
        (2, 2, 2, False),  # automatic retry 1 of 2
        (3, 2, 2, False),  # automatic retry 2 of 2
        (2, 3, 2, True),  # cleared after try 1: max_tries = 1 + 2
        (4, 5, 2, True),  # cleared after try 3 (which was the last retry)
        (5, 5, 2, False),  # ... and its automatic retry
        (2, 1, 0, True),  # no retries: cleared after try 1 (max_tries = 1 + 0)
        (2, 0, 0, True),
        (None, 3, 2, False),  # unknown: never run twice
    ],
)
def test_user_clear_rule(try_number, max_tries, retries, clear):
    assert is_user_clear(try_number, max_tries, retries) is clear


def test_success_decision():
    assert success_decision("auto", user_clear=True) == "rerun"
    assert success_decision("auto", user_clear=False) == "adopt"
    assert success_decision("adopt", user_clear=True) == "adopt"
    assert success_decision("rerun", user_clear=False) == "rerun"
    with pytest.raises(ValueError):
        success_decision("sometimes", user_clear=True)


# ------------------------------------------------------- who asked for a stop
def test_stop_reason_names_the_try():
    reason = stop_reason("task killed by a user while deferred", 3)
    assert stop_requested_by_try({"abort_reason": reason}) == 3
    assert stop_reason("x", None) == "x"
    assert stop_requested_by_try({"abort_reason": "manual"}) is None
    assert stop_requested_by_try({}) is None


def test_only_a_stop_by_an_earlier_try_starts_the_next_attempt():
    by_try_1 = {"status": "ABORTED", "abort_reason": stop_reason("killed", 1)}
    assert stopped_by_earlier_try(by_try_1, 2)
    assert not stopped_by_earlier_try(by_try_1, 1)  # my own try's stop: its outcome stands
    assert not stopped_by_earlier_try({"status": "ABORTED", "abort_reason": "by hand"}, 2)
    assert not stopped_by_earlier_try({"status": "FAILED", "abort_reason": stop_reason("killed", 1)}, 2)
    assert not stopped_by_earlier_try(by_try_1, None)


# -------------------------------------------------------------------- deadline
def test_deadline_from_execution_timeout_and_trigger_timeout():
    started = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = started.timestamp() + 100
    assert trigger_deadline(now=now) is None
    # execution_timeout counts from the start of the try: 60 s left of 160.
    assert trigger_deadline(now=now, try_started=started, execution_timeout=timedelta(seconds=160)) == now + 60
    # trigger_timeout counts from now; the earlier one wins.
    assert trigger_deadline(now=now, try_started=started, execution_timeout=160, trigger_timeout=30) == now + 30
    assert trigger_deadline(now=now, trigger_timeout=30) == now + 30
    # Already past: returned as is (the trigger stops the work at once).
    assert trigger_deadline(now=now, try_started=started, execution_timeout=10) == now - 90
    # Start unknown: counted from now.
    assert trigger_deadline(now=now, execution_timeout=timedelta(minutes=1)) == now + 60


def test_timeout_message_is_truthful():
    what = "timeout"
    assert "could NOT be stopped" in timeout_message(what, None, "exit 4: not your job")
    assert "no remote job" in timeout_message(what, None, None)
    msg = timeout_message(what, {"job_id": "j", "status": "ABORTED"}, None)
    assert "stopped (ABORTED)" in msg
    msg = timeout_message(what, {"job_id": "j", "status": "ABORTING"}, None)
    assert "still ABORTING" in msg and "stopped (" not in msg
    msg = timeout_message(what, {"job_id": "j", "status": "SUCCEEDED", "too_late": True}, None)
    assert "already finished SUCCEEDED" in msg
    msg = timeout_message(what, {"job_id": "j", "status": "FAILED", "stop_too_late": True}, None)
    assert "already finished FAILED" in msg
    for stop, error in [(None, "boom"), ({"status": "ABORTING"}, None), ({"status": "FAILED", "too_late": True}, None)]:
        assert "aborted" not in timeout_message(what, stop, error).lower()


# ------------------------------------------------------------- byte bounds
def test_batches_are_bounded_in_entries_and_bytes():
    small = {"run_key": "a"}
    logs = {"run_key": "b", "stdout_offset": 0, "stderr_offset": 0, "max_bytes": 1 << 20}
    assert request_cost(small) < 4096
    assert request_cost({"run_key": "c", "stdout_offset": 0}) >= DEFAULT_CHUNK_BYTES
    assert request_cost(logs) >= 2 << 20
    groups = split_batches([logs] * 5, max_bytes=(4 << 20) + 8192)
    assert [len(g) for g in groups] == [2, 2, 1]
    assert all(sum(request_cost(r) for r in g) <= (4 << 20) + 8192 for g in groups)
    assert [len(g) for g in split_batches([small] * 450, max_entries=200)] == [200, 200, 50]
    huge = {"run_key": "h", "stdout_offset": 0, "max_bytes": 64 << 20}
    assert split_batches([huge, small], max_bytes=1 << 20) == [[huge], [small]]
    assert split_batches([]) == []


# ------------------------------------------------------ shell rc noise on stdout
def test_json_after_shell_rc_noise_is_found():
    assert parse_json_stdout(b'{"a": 1}') == {"a": 1}
    assert parse_json_stdout(b'Welcome to edge1!\nlast login: today\n{"a": [1,\n 2]}\n') == {"a": [1, 2]}
    assert parse_json_stdout(b"motd {not json\n[1, 2]\n") == [1, 2]
    with pytest.raises(ValueError):
        parse_json_stdout(b"only noise\n")


# ---------------------------------------------------------------- namespaces
def test_namespace_keeps_two_airflows_apart():
    plain = run_key_for("etl", "load", "r")
    staging = run_key_for("etl", "load", "r", namespace="staging")
    prod = run_key_for("etl", "load", "r", namespace="prod")
    assert staging == "af@staging:etl:load:r" and len({plain, staging, prod}) == 3
    # A key without namespace can never look like one with it (its first part is exactly "af").
    assert run_key_for("staging", "etl", "load", 0) != run_key_for("etl", "load", "0", namespace="staging")
    odd = run_key_for("etl", "load", "r", namespace="a b")
    assert odd != run_key_for("etl", "load", "r", namespace="a_b") and "~" in odd


# ------------------------------------------------------------- sweep rules
@pytest.mark.parametrize(
    "state, ended",
    [("failed", True), ("success", True), ("skipped", True), ("upstream_failed", True), ("removed", True),
     ("deferred", False), ("running", False), ("queued", False), ("scheduled", False), ("up_for_retry", False),
     ("up_for_reschedule", False), ("restarting", False), (None, False)],
)  # fmt: skip
def test_work_is_abandoned_only_once_its_task_instance_has_ended(state, ended):
    assert abandoned(state) is ended
    assert abandoned(state, "running") is ended and abandoned(state, "queued") is ended
    # In a finished DAG run no try starts any more, whatever the task instance's own state.
    assert abandoned(state, "failed") and abandoned(state, "success")


def test_labels_name_the_task_instance_and_read_back_only_in_their_namespace():
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="manual__2026-01-01T00:00:00+00:00", map_index=4,
                         try_number=2)  # fmt: skip
    labels = task_labels(ti, namespace="prod", followed=True)
    assert labels["airflow.try_number"] == "2" and labels["airflow.namespace"] == "prod"
    assert task_instance_of(labels, "prod") == ("d", "t", "manual__2026-01-01T00:00:00+00:00", 4)
    assert task_instance_of(labels, None) is None and task_instance_of(labels, "staging") is None
    assert task_instance_of(task_labels(ti, namespace=None, followed=True), "prod") is None
    assert task_instance_of(task_labels(ti, namespace=None, followed=False), None) is None
    assert task_instance_of({"airflow.followed": "true", "airflow.dag_id": "d"}, None) is None
    assert labels_from_options(["--timeout", "5", *label_options(labels)]) == labels
    unmapped = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=None)
    assert task_labels(unmapped, namespace=None, followed=False)["airflow.map_index"] == "-1"
