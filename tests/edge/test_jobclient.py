"""The in-process job client: exact recovery of a start by its request id; overlapping starts."""

from __future__ import annotations

import functools
import time

import pytest

from edge_runtime.errors import InvalidState, UsageError
from edge_runtime.jobclient import open_job_client
from edge_runtime.jobs import LAUNCH_WINDOW, overlap_starts


def test_recovery_finds_the_dispatched_job_by_request_id_whatever_the_clock(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESJOB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ORCHESJOB_BIN", raising=False)
    client = open_job_client(None)
    assert client.in_process
    job = client.start(["true"], "rk", [], request_id="reservation:r1")
    # A claim time "after" the job (as if the clock stepped back between claim and start):
    future = time.time() + 3600
    assert client.find_started_since("rk", future) is None, "the time-based lookup is fooled"
    found = client.find_started_since("rk", future, request_id="reservation:r1")
    assert found is not None and found["job_id"] == job["job_id"]
    assert client.find_started_since("rk", 0, request_id="reservation:other") is None
    again = client.start(["true"], "rk", [], request_id="reservation:r1")
    assert again["job_id"] == job["job_id"] and again["existing"], "a resent dispatch returns the same job"


def test_start_many_overlaps_launches_and_returns_each_reply_or_error_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESJOB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ORCHESJOB_BIN", raising=False)
    client = open_job_client(None)
    gate = tmp_path / "gate"
    # Every command waits for the gate, which opens only after the last start returned:
    # all 20 are RUNNING at once, so their launches did not wait for one another's end.
    wait = ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.02; done"]
    starts = [{"command": wait, "run_key": f"fan-{i}"} for i in range(20)]
    starts.insert(7, {"command": wait, "run_key": "bad key\x00"})  # refused: its error stands in its place
    starts.insert(9, {"command": wait, "run_key": "fan-3"})  # the same key again: the first job comes back
    replies = client.start_many(iter(starts))
    assert len(replies) == 22
    assert isinstance(replies[7], UsageError)
    assert replies[9]["job_id"] == replies[3]["job_id"] and replies[9]["existing"]
    jobs = [r for i, r in enumerate(replies) if i not in (7, 9)]
    assert [j["run_key"] for j in jobs] == [f"fan-{i}" for i in range(20)]
    assert all(j["status"] == "RUNNING" for j in jobs), [j["status"] for j in jobs]
    gate.touch()
    for j in jobs:
        assert client.jobs.wait(j["job_id"], timeout=30)["status"] == "SUCCEEDED"


def test_overlap_starts_keeps_a_window_consumes_lazily_and_awaits_what_it_spawned():
    events: list[str] = []

    def begin(i: int):
        if i == 5:
            raise InvalidState("refused")
        events.append(f"begin {i}")
        unfinished = sum(1 for e in events if e.startswith("begin")) - sum(1 for e in events if e.startswith("end"))
        assert unfinished <= LAUNCH_WINDOW

        def finish():
            events.append(f"end {i}")
            return {"i": i}

        return finish

    n = LAUNCH_WINDOW + 5
    out = overlap_starts(functools.partial(begin, i) for i in range(n))
    assert [o if isinstance(o, InvalidState) else o["i"] for o in out][:5] == [0, 1, 2, 3, 4]
    assert isinstance(out[5], InvalidState) and [o["i"] for o in out[6:]] == list(range(6, n))
    # The first launch is awaited only once the window is full, not before the next begins.
    assert events.index("end 0") > events.index(f"begin {LAUNCH_WINDOW}")

    # A caller's generator that fails half-way: what was spawned is still awaited.
    events.clear()

    def failing():
        yield functools.partial(begin, 0)
        yield functools.partial(begin, 1)
        raise RuntimeError("caller broke")

    with pytest.raises(RuntimeError):
        overlap_starts(failing())
    assert events == ["begin 0", "begin 1", "end 0", "end 1"]
