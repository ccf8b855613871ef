"""The in-process job client: exact recovery of a start by its request id."""

from __future__ import annotations

import time

from edge_runtime.jobclient import open_job_client


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
