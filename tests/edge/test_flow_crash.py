"""Crash-resume and single-advancer tests of ``orchesjob-flow``.

The loop that advances a flow is SIGKILLed at named points (deterministic) and
at random instants (detached child); resuming with ``start`` must finish the run
without running any step twice. Each step appends its id to a marker file when
its command actually executes, so "ran exactly once" is checked on the host.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.edge.conftest import pid_gone, wait_until
from tests.edge.test_flow_cli import flow, status, steps_by_id, write_flow


def marker_flow(tmp_path, sleep="0.05"):
    """A-B-C chain, a parallel P1-P2 branch, and J joining both (6 steps)."""
    m = tmp_path / "markers"

    def cmd(sid):
        return ["sh", "-c", f"echo {sid} >> {m}; sleep {sleep}"]

    steps = [
        {"id": "A", "command": cmd("A")},
        {"id": "B", "when": "A", "command": cmd("B")},
        {"id": "C", "when": "B", "command": cmd("C")},
        {"id": "P1", "command": cmd("P1")},
        {"id": "P2", "when": "P1", "command": cmd("P2")},
        {"id": "J", "when": "C && P2", "command": cmd("J")},
    ]
    return write_flow(tmp_path, steps), m


def assert_each_ran_once(markers, ids=("A", "B", "C", "P1", "P2", "J")):
    ran = markers.read_text().split()
    assert sorted(ran) == sorted(ids), ran


def advancer_rows(runner):
    if not os.path.exists(os.path.join(runner.home, "orchesjob-flow.sqlite3")):
        return []
    try:
        return runner.query("orchesjob-flow.sqlite3", "SELECT run_key, pid, role FROM flow_advancers")
    except sqlite3.OperationalError:
        return []  # not migrated yet


@pytest.mark.parametrize("point", ["intent", "started", "recorded"])
@pytest.mark.parametrize("nth", [1, 3])
def test_kill_at_named_points_then_resume(runner, tmp_path, point, nth):
    path, markers = marker_flow(tmp_path)
    env = dict(runner.env, ORCHESJOB_FLOW_TEST_KILL_AT=f"{point}:{nth}")
    r = flow(runner, "start", "--run-key", "k", path, env=env)
    assert r.code == -signal.SIGKILL, r.err
    again = flow(runner, "start", "--run-key", "k", path)
    assert again.code == 0, again.err
    p = again.json
    assert p["status"] == "SUCCEEDED"
    # No step needed a second attempt: the resumed loop found each job by its run key.
    assert [s["attempt_no"] for s in p["steps"]] == [1] * 6
    assert_each_ran_once(markers)
    for s in p["steps"]:
        assert runner.ok("status", "--run-key", s["run_key"])["attempt_no"] == 1


@pytest.mark.parametrize("point", ["intent:6", "started:3", "recorded:2"])
def test_kill_in_a_fan_out_whose_launches_overlap_then_resume(runner, tmp_path, point):
    # 12 steps ready at once are launched together: at each point some are claimed and
    # spawned but not yet recorded by the flow. The resumed loop finds each by its key.
    markers = tmp_path / "markers"
    ids = [f"F{i}" for i in range(12)]
    path = write_flow(tmp_path, [{"id": i, "command": ["sh", "-c", f"echo {i} >> {markers}"]} for i in ids])
    env = dict(runner.env, ORCHESJOB_FLOW_TEST_KILL_AT=point)
    r = flow(runner, "start", "--run-key", "fan", path, env=env)
    assert r.code == -signal.SIGKILL, r.err
    again = flow(runner, "start", "--run-key", "fan", path)
    assert again.code == 0, again.err
    assert again.json["status"] == "SUCCEEDED"
    assert [s["attempt_no"] for s in again.json["steps"]] == [1] * 12
    assert_each_ran_once(markers, ids)


def test_random_sigkill_of_detached_loop_resumes_exactly(runner, tmp_path):
    rng = random.Random(4)
    for i in range(8):
        sub = tmp_path / f"r{i}"
        sub.mkdir()
        path, markers = marker_flow(sub, sleep="0.1")
        key = f"rk{i}"
        d = flow(runner, "start", "-d", "--run-key", key, path)
        assert d.code == 0, d.err
        time.sleep(rng.uniform(0.0, 0.6))
        try:
            os.kill(d.json["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass  # already finished
        again = flow(runner, "start", "--run-key", key, path)
        assert again.code == 0, again.err
        assert again.json["status"] == "SUCCEEDED"
        assert_each_ran_once(markers)
        for s in again.json["steps"]:
            if s["attempt_no"] == 1:
                continue
            # Only one way to a second attempt here: the kill fell between the job's claim and
            # its supervisor's launch, so attempt 1 provably never ran (and was not counted).
            assert s["attempt_no"] == 2, s
            first = runner.ok("status", "--run-key", f"{key}:{s['id']}:1")
            assert first["status"] == "LOST" and first["worker_pid"] is None, first


def test_two_loops_never_both_advance(runner, tmp_path):
    gate = tmp_path / "gate"
    markers = tmp_path / "markers"
    steps = [
        {"id": "A", "command": ["sh", "-c", f"echo A >> {markers}; while [ ! -e {gate} ]; do sleep 0.05; done"]},
        {"id": "B", "when": "A", "command": ["sh", "-c", f"echo B >> {markers}"]},
        {"id": "C", "when": "A", "command": ["sh", "-c", f"echo C >> {markers}"]},
    ]
    path = write_flow(tmp_path, steps)
    first = runner.popen("orchesjob-flow", "start", "--run-key", "dup", path, stdout=subprocess.PIPE, text=True)
    wait_until(lambda: advancer_rows(runner))
    others = [
        runner.popen("orchesjob-flow", "start", "--run-key", "dup", path, stdout=subprocess.PIPE, text=True),
        runner.popen(
            "orchesjob-flow",
            *("watch", "--run-key", "dup", "--advance", "--mode", "append", "--interval", "0.1"),
            stdout=subprocess.PIPE,
            text=True,
        ),
    ]
    time.sleep(0.5)
    rows = advancer_rows(runner)
    assert rows == [("dup", first.pid, "start")]  # one lease, held by the first loop
    # The holder dies mid-run: one of the followers takes over and finishes.
    first.kill()
    first.wait()
    wait_until(lambda: (r := advancer_rows(runner)) and r[0][1] != first.pid)
    gate.write_text("")
    outs = [p.communicate(timeout=30)[0] for p in others]
    assert [p.returncode for p in others] == [0, 0]
    assert json.loads(outs[0])["status"] == "SUCCEEDED"
    assert sorted(markers.read_text().split()) == ["A", "B", "C"]
    assert advancer_rows(runner) == []
    p = status(runner, "dup")
    assert all(s["attempt_no"] == 1 for s in p["steps"])


def test_detached_start_twice_spawns_one_advancer(runner, tmp_path):
    gate = tmp_path / "gate"
    steps = [{"id": "A", "command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"]}]
    path = write_flow(tmp_path, steps)
    d1 = flow(runner, "start", "-d", "--run-key", "dd", path).json
    wait_until(lambda: advancer_rows(runner))
    d2 = flow(runner, "start", "-d", "--run-key", "dd", path).json
    assert d2["already_advancing"] is True and d2["pid"] == d1["pid"]
    gate.write_text("")
    wait_until(lambda: status(runner, "dd")["status"] == "SUCCEEDED")
    wait_until(lambda: pid_gone(d1["pid"]))
    assert steps_by_id(status(runner, "dd"))["A"]["attempt_no"] == 1


def test_a_cancel_during_a_fan_out_launch_stops_the_launches_not_yet_made(tmp_path, monkeypatch):
    """Ready steps are launched together, but each is recorded RUNNING only just before its
    own start, while the flow runs: a cancel landing mid-way leaves the rest unlaunched."""
    from edge_runtime.flow_definition import load
    from edge_runtime.flow_engine import run_flow
    from edge_runtime.flow_store import FlowStore
    from edge_runtime.jobclient import InProcessJobClient

    monkeypatch.setenv("ORCHESJOB_HOME", str(tmp_path / "home"))
    markers = tmp_path / "markers"
    ids = [f"F{i}" for i in range(10)]
    path = write_flow(tmp_path, [{"id": i, "command": ["sh", "-c", f"echo {i} >> {markers}; sleep 30"]} for i in ids])
    db = str(tmp_path / "flows.sqlite3")
    flows, other = FlowStore(db, check_dir=False), FlowStore(db, check_dir=False)
    defn, source = load(path)
    flows.create_or_resume(defn, "fan", source)

    class CancelsAtTheFourthStart(InProcessJobClient):
        def start_many(self, starts):
            def watched():
                for n, kwargs in enumerate(starts):
                    if n == 3:  # the 4th step is recorded RUNNING, its job not yet created
                        other.cancel("fan", self, grace=1)
                    yield kwargs

            return super().start_many(watched())

    client = CancelsAtTheFourthStart()
    assert run_flow(flows, "fan", client, 0.2) == "CANCELLED"
    made = [s for s in ids if client.jobs._latest(f"fan:{s}:1") is not None]
    assert made == ids[:4], "no step after the cancel was launched"
    for s in made:  # and none of them is left running
        assert client.jobs.wait(client.jobs.status(f"fan:{s}:1")["job_id"], timeout=30)["status"] == "ABORTED"
    ran = markers.read_text().split() if markers.exists() else []
    assert set(ran) <= set(ids[:4]), ran
    client.close()
    flows.close()
    other.close()
