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


def _check_exactly_once(runner, key: str, marker: str, *, dispatch: bool = True) -> None:
    if dispatch:
        r = runner.run(RES, "run", "--once")
        assert r.code == 0, r.err
    reservation = runner.ok("status", "--run-key", key, tool=RES)["reservation"]
    jobs = runner.ok("status", "--all", "--run-key", key)
    # A dispatch killed between the job's claim and its supervisor leaves a NEVER_LAUNCHED
    # job: provably nothing ran, and recovery dispatches the reservation again.
    launched = [j for j in jobs if j["status"] != "NEVER_LAUNCHED"]
    assert len(launched) == 1, f"{key}: expected one launched job, got {jobs}"
    assert reservation["reservation_status"] == "DISPATCHED", reservation
    assert reservation["job_id"] == launched[0]["job_id"]
    job = wait_status(runner, job_id=launched[0]["job_id"], timeout=30)
    assert job["status"] == "SUCCEEDED", job
    assert _runs(marker) == 1, f"{key}: ran {_runs(marker)} times"


@pytest.mark.slow
# The job layer's own points, hit inside the dispatcher's in-process start: "start:claimed" is
# the window where the job row exists but no supervisor ever will (the job NEVER_LAUNCHED).
@pytest.mark.parametrize("point", [*KILL_POINTS, "start:claimed", "start:spawned"])
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
def test_dispatcher_sigkill_campaign_loses_and_duplicates_nothing(runner):
    """40 reservations, a dispatcher SIGKILLed at random instants until all are dispatched."""
    rng = random.Random(1234)
    os.makedirs(runner.home, exist_ok=True)
    keys = [f"rand-{i}" for i in range(40)]
    markers = {k: os.path.join(runner.home, k + ".marker") for k in keys}
    for k in keys:
        runner.ok("reserve", "--run-key", k, "--", *_marker_command(markers[k]), tool=RES)
    kills = 0
    for _ in range(200):
        pending = [
            r for st in ("RESERVED", "DISPATCHING") for r in runner.ok("list", "--status", st, tool=RES)["reservations"]
        ]
        if not pending:
            break
        proc = runner.popen(RES, "run", "--poll-interval", "0.05", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Python start-up takes ~0.1 s; one dispatch another few ms to ~0.1 s.
        time.sleep(rng.uniform(0.05, 0.3))
        proc.kill()
        proc.wait(timeout=30)
        kills += 1
    assert kills >= 3, "the campaign must actually interrupt dispatchers"
    r = runner.run(RES, "run", "--once")  # recovers whatever the last kill left DISPATCHING
    assert r.code == 0, r.err
    for k in keys:
        _check_exactly_once(runner, k, markers[k], dispatch=False)
