"""Kills, deadlines and restarts of triggers, and what a new try does with an earlier try's work.

No host here: the hook and Airflow's stores are replaced by small fakes, so each rule is tested on its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest

from airflow_provider_orchesjob.exceptions import OrchesJobConnectionError
from airflow_provider_orchesjob.operators import OrchesJobStartOperator
from airflow_provider_orchesjob.operators.reservation import REARM_WINDOW, cancelled_by_earlier_try
from airflow_provider_orchesjob.triggers import OrchesJobTrigger
from airflow_provider_orchesjob.triggers import orchesjob as trigger_module

TI = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=2)


class _FakeTrigger(OrchesJobTrigger):
    """A job trigger whose hook, task state and stop are given by the test."""

    def __init__(self, **kwargs):
        super().__init__(ssh_conn_id=None, run_key="k", job_id="j1", poll_interval=0.05, try_number=2, **kwargs)
        self.task_instance = TI
        self.stops: list[str] = []
        self.stop_delay = 0.0
        self.polls: list[dict] = []

    async def hook(self):
        return self

    async def current_task_state(self):
        return "failed"

    async def current_task_try(self):
        return 2

    async def abort_remote(self, hook, reason, wait=None):
        await asyncio.sleep(self.stop_delay)
        self.stops.append(reason)
        return {"status": "ABORTED", "job_id": self.job_id}


def test_a_kill_stop_survives_the_triggerer_cancelling_on_kill_again():
    # Airflow 3.3 re-sends the user-action cancel about once a second, also while on_kill runs.
    trigger = _FakeTrigger()
    trigger.stop_delay = 0.5

    async def scenario():
        kill = asyncio.ensure_future(trigger.on_kill())
        await asyncio.sleep(0.1)
        kill.cancel()
        with pytest.raises(asyncio.CancelledError):
            await kill
        await asyncio.sleep(1.0)

    asyncio.run(scenario())
    assert len(trigger.stops) == 1 and "[airflow try 2]" in trigger.stops[0]


def test_the_deadline_cuts_a_reconnect_loop_short_and_says_the_host_was_unreachable():
    class Unreachable(_FakeTrigger):
        async def poll(self, hook):
            await asyncio.sleep(3600)  # the hook retrying its connection

        async def abort_remote(self, hook, reason, wait=None):
            raise OrchesJobConnectionError("SSH connection to h failed: timed out")

    trigger = Unreachable(deadline=time.time() + 0.5)
    started = time.monotonic()

    async def first_event():
        return await trigger.run().__anext__()

    event = asyncio.run(first_event()).payload
    assert time.monotonic() - started < 0.5 + trigger_module.DEADLINE_POLL_SLACK + 2
    assert event["status"] == "timeout"
    assert "could not reach the host to stop the job" in event["message"]
    assert "could NOT be stopped" in event["message"]


def test_a_restarted_trigger_resumes_the_log_where_the_last_one_saved_it(monkeypatch):
    store: dict = {}
    monkeypatch.setattr(trigger_module, "task_xcom_get_sync", lambda *ref: store.get(ref))
    monkeypatch.setattr(trigger_module, "task_xcom_set_sync", lambda *args: store.__setitem__(args[:-1], args[-1]))

    class Polling(_FakeTrigger):
        async def ajob_poll(self, run_key, job_id, stdout_offset=0, stderr_offset=0, max_bytes=0):
            self.polls.append({"stdout_offset": stdout_offset})
            data = f"line {stdout_offset // 7}\n"
            chunk = {"data": data, "next_offset": stdout_offset + len(data), "size": 10_000}
            return {"job_id": "j1", "status": "RUNNING", "stdout_chunk": chunk, "stderr_chunk": None}

    first = Polling()
    for _ in range(3):
        assert asyncio.run(first.poll(first)) is None
    assert first.stdout_offset == 21
    # The triggerer died; the trigger is rebuilt from the kwargs of the deferral (offset 0).
    second = Polling()
    asyncio.run(second.poll(second))
    assert second.polls == [{"stdout_offset": 21}]
    # Another try's saved progress (or another job's) is ignored.
    third = Polling()
    third.try_number = 3
    asyncio.run(third.poll(third))
    assert third.polls == [{"stdout_offset": 0}]


def test_without_cancel_reasons_a_reservation_cancelled_within_the_window_counts_as_the_earlier_try_s():
    now = time.time()
    cancelled = {"reservation_status": "CANCELLED", "job_id": None, "updated_at": int(now)}  # an older runtime
    assert cancelled_by_earlier_try(cancelled, now + REARM_WINDOW, 2)
    assert not cancelled_by_earlier_try(cancelled, None, 2)  # not a user's clear
    assert not cancelled_by_earlier_try({**cancelled, "updated_at": int(now) + 100}, now + 1, 2)
    assert not cancelled_by_earlier_try({**cancelled, "job_id": "j"}, now + REARM_WINDOW, 2)
    assert not cancelled_by_earlier_try({**cancelled, "reservation_status": "EXPIRED"}, now + REARM_WINDOW, 2)


def test_with_cancel_reasons_the_reason_tells_whose_cancel_it_was_whenever_it_came():
    now = time.time()
    late = {"reservation_status": "CANCELLED", "job_id": None, "updated_at": int(now) + 3600}
    by_try_1 = {**late, "cancel_reason": "task killed by a user [airflow try 1]"}
    assert cancelled_by_earlier_try(by_try_1, now + REARM_WINDOW, 2)  # an hour late: still the earlier try's
    assert not cancelled_by_earlier_try(by_try_1, now + REARM_WINDOW, 1)  # this very try's own kill
    assert not cancelled_by_earlier_try(by_try_1, None, 2)  # an automatic retry never re-arms
    # A person on the host (with or without a reason), or the sweep of an ended task: never re-armed.
    assert not cancelled_by_earlier_try({**late, "cancel_reason": None, "updated_at": int(now)}, now + 60, 2)
    assert not cancelled_by_earlier_try({**late, "cancel_reason": "maintenance"}, now + REARM_WINDOW, 2)


class _FakeHook:
    def __init__(self, answers):
        self.answers = list(answers)
        self.aborts: list[dict] = []

    def start_job(self, run_key, command, **kwargs):
        return self.answers.pop(0)

    def abort_job(self, job_id=None, reason=None, grace=5):
        self.aborts.append({"job_id": job_id, "reason": reason})
        return {"job_id": job_id, "status": "ABORTED", "abort_reason": reason}


def _op(hook, retries=0):
    op = OrchesJobStartOperator(task_id="t", command=["true"], ssh_conn_id=None, retries=retries)
    op._hook = hook
    op.run_key = "k"
    return op


def test_a_cleared_try_stops_the_earlier_try_s_job_instead_of_reattaching():
    running = {"job_id": "j1", "status": "RUNNING", "attempt_no": 1}
    fresh = {"job_id": "j2", "status": "RUNNING", "attempt_no": 2, "accepted": True}
    hook = _FakeHook([running, fresh])
    ti = SimpleNamespace(try_number=2, max_tries=1)  # cleared after try 1, retries=0
    job = _op(hook).start({"ti": ti}, first=True)
    assert job["job_id"] == "j2"
    assert len(hook.aborts) == 1 and "[airflow try 1]" in hook.aborts[0]["reason"]


def test_an_automatic_retry_still_reattaches():
    running = {"job_id": "j1", "status": "RUNNING", "attempt_no": 1}
    hook = _FakeHook([running])
    ti = SimpleNamespace(try_number=2, max_tries=3)  # retries=3: try 2 is an automatic retry
    job = _op(hook, retries=3).start({"ti": ti}, first=True)
    assert job["job_id"] == "j1" and not hook.aborts


class _Store:
    def __init__(self):
        self.values: dict = {}

    def get(self, key, default=None):
        return self.values.get(key, default)

    def set(self, key, value, **kwargs):
        self.values[key] = value


def test_the_task_state_store_records_the_job_and_the_next_try_logs_it(caplog):
    store, op = _Store(), _op(_FakeHook([]))
    context = {"ti": SimpleNamespace(try_number=1), "task_state_store": store}
    assert op.log_recorded_job(context) is None
    op.record_job(context, {"job_id": "j1", "run_key": "k", "attempt_no": 1})
    assert store.values["orchesjob_job"] == {"run_key": "k", "job_id": "j1", "attempt": 1, "try": 1}
    assert op.log_recorded_job({**context, "ti": SimpleNamespace(try_number=2)})["job_id"] == "j1"


def test_without_a_task_state_store_nothing_is_recorded():
    op = _op(_FakeHook([]))
    op.record_job({"ti": SimpleNamespace(try_number=1)}, {"job_id": "j1"})  # Airflow < 3.3: no error
    assert op.log_recorded_job({}) is None


def test_a_cancellation_during_a_sync_call_keeps_its_message():
    # Airflow 3.3 calls on_kill only for a cancel whose message says "user action"; asgiref's
    # sync_to_async replaced it with a bare CancelledError when it arrived during the call.
    from airflow_provider_orchesjob.compat import run_sync

    async def scenario():
        call = asyncio.ensure_future(run_sync(time.sleep, 0.5))
        await asyncio.sleep(0.1)
        call.cancel("__airflow_user_action__")
        try:
            await call
        except asyncio.CancelledError as exc:
            return exc.args
        return None

    assert asyncio.run(scenario()) == ("__airflow_user_action__",)


class _ReplayTransport:
    """Answers each call with the next of ``answers`` (exit code, stdout, stderr) and records the argv."""

    host_id = "edge-fake"

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def run(self, argv, stdin=None, timeout=None):
        from airflow_provider_orchesjob.hooks.transport import CommandResult

        self.calls.append(list(argv))
        code, out, err = self.answers.pop(0)
        return CommandResult(code, json.dumps(out).encode() if out is not None else b"", err.encode())


def test_a_locked_database_during_the_first_info_is_asked_again_not_fatal(monkeypatch):
    from airflow_provider_orchesjob import __version__
    from airflow_provider_orchesjob.hooks import OrchesJobHook
    from airflow_provider_orchesjob.hooks.orchesjob import REQUIRED_CAPABILITIES

    locked = json.dumps({"error": "database is locked: /h/orchesjob.db", "error_type": "lock_error"})
    info = {"version": __version__, "capabilities": list(REQUIRED_CAPABILITIES)}
    transport = _ReplayTransport((5, None, locked), (0, info, ""), (0, {"status": "RUNNING"}, ""))
    hook = OrchesJobHook(None, connect_budget=5)
    monkeypatch.setattr(hook, "get_conn", lambda: transport)
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    # A new home: another call was creating its database when `info` asked.
    assert hook.run_cli(["orchesjob", "status", "--run-key", "k"]) == {"status": "RUNNING"}
    assert [c[:2] for c in transport.calls] == [["orchesjob", "info"], ["orchesjob", "info"], ["orchesjob", "status"]]


def test_an_incompatible_runtime_is_not_asked_again(monkeypatch):
    from airflow_provider_orchesjob.exceptions import OrchesJobRuntimeIncompatible
    from airflow_provider_orchesjob.hooks import OrchesJobHook

    transport = _ReplayTransport((0, {"version": "0.0.1", "capabilities": []}, ""))
    hook = OrchesJobHook(None, connect_budget=5)
    monkeypatch.setattr(hook, "get_conn", lambda: transport)
    with pytest.raises(OrchesJobRuntimeIncompatible):
        hook.run_cli(["orchesjob", "status", "--run-key", "k"])
    assert len(transport.calls) == 1
