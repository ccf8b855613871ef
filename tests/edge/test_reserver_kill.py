"""Exactly-once dispatch: SIGKILL the dispatcher anywhere, restart, never a second start."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from edge_runtime.dispatcher import KILL_POINTS
from tests.edge.conftest import wait_status

RES = "orchesjob-reserver"


def _marker_command(path: str) -> tuple[str, ...]:
    # Appends one line per execution: the file counts how often the command ran.
    return ("sh", "-c", f'echo ran >> "{path}"')


def _runs(path: str) -> int:
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def _check_exactly_once(runner, key: str, marker: str) -> None:
    r = runner.run(RES, "run", "--once")
    assert r.code == 0, r.err
    reservation = runner.ok("status", "--run-key", key, tool=RES)["reservation"]
    jobs = runner.ok("status", "--all", "--run-key", key)
    assert len(jobs) == 1, f"{key}: expected one job, got {len(jobs)}"
    assert reservation["reservation_status"] == "DISPATCHED", reservation
    assert reservation["job_id"] == jobs[0]["job_id"]
    job = wait_status(runner, job_id=jobs[0]["job_id"], timeout=30)
    if job["status"] == "LOST":
        # Killed after the job row was committed but before a supervisor took
        # it: the command never ran, and can never run later.
        assert _runs(marker) == 0
    else:
        assert job["status"] == "SUCCEEDED", job
        assert _runs(marker) == 1


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_each_point_never_starts_twice(runner, point):
    key = "kill-" + point.replace(":", "-")
    marker = os.path.join(runner.home, key + ".marker")
    os.makedirs(runner.home, exist_ok=True)
    runner.ok("reserve", "--run-key", key, "--", *_marker_command(marker), tool=RES)
    env = dict(runner.env, ORCHESJOB_TEST_KILL_AT=point)
    r = runner.run(RES, "run", "--once", env=env)
    assert r.code == -signal.SIGKILL, f"kill point {point} not reached: {r.code} {r.err}"
    _check_exactly_once(runner, key, marker)


@pytest.mark.slow
def test_random_sigkills_never_start_twice(runner):
    rng = random.Random(1234)
    os.makedirs(runner.home, exist_ok=True)
    for i in range(8):
        key = f"rand-{i}"
        marker = os.path.join(runner.home, key + ".marker")
        runner.ok("reserve", "--run-key", key, "--", *_marker_command(marker), tool=RES)
        proc = runner.popen(RES, "run", "--poll-interval", "0.05", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Python start-up takes ~0.1 s; the dispatch itself another ~0.1 s.
        time.sleep(rng.uniform(0.05, 0.35))
        proc.kill()
        proc.wait(timeout=30)
        _check_exactly_once(runner, key, marker)
