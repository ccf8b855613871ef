"""Issue 11 (f): a reservation task killed and cleared is re-armed and dispatched once; a flow whose advancer
process is SIGKILLed on the host still completes."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from tests.deploy.deployment import DEPLOY_TIMEOUT, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(DEPLOY_TIMEOUT)]


@pytest.fixture
def dispatcher(dep):
    """The host's reservation dispatcher (what systemd runs there), started and stopped by pid."""
    log = f"{dep.edge_home}/dispatcher.log"
    r = dep.ssh_server.ssh(
        f"ORCHESJOB_HOME={dep.edge_home} nohup setsid ~/.local/bin/orchesjob-reserver run --poll-interval 1 "
        f"> {log} 2>&1 < /dev/null & echo $!"
    )
    pid = int(r.stdout.split()[-1])
    yield pid
    dep.ssh_server.ssh(f"kill {pid}; cat {log}")


def reservation(dep, key: str) -> dict:
    r = dep.ssh_server.ssh(f"ORCHESJOB_HOME={dep.edge_home} ~/.local/bin/orchesjob-reserver status --run-key '{key}'")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["reservation"]


@pytest.mark.parametrize("clear_when", ["after-cancel", "at-once"])
def test_f_reservation_task_killed_and_cleared_is_rearmed_and_dispatched_once(dep, dispatcher, clear_when):
    dag_id, tok = "deploy_reservation", uuid.uuid4().hex[:8]
    counter = dep.counter(f"f-res-{tok}")
    key = f"deploy-res-{tok}"
    not_before = (datetime.now(timezone.utc) + timedelta(seconds=25)).isoformat()
    run_id = dep.trigger(dag_id, {"command": f"echo run >> {counter}", "run_key": key, "not_before": not_before})
    dep.wait_trigger_held(dag_id, run_id, "reserve")
    assert reservation(dep, key)["reservation_status"] == "RESERVED"
    dep.set_ti_state(dag_id, run_id, "reserve", "failed")  # the user kills the waiting task
    if clear_when == "after-cancel":  # the user clears once the kill has taken effect on the host
        wait_for("the kill cancelled the reservation",
                 lambda: reservation(dep, key)["reservation_status"] == "CANCELLED", 30)  # fmt: skip
    after_kill = reservation(dep, key)["reservation_status"]
    dep.clear(dag_id, run_id, ["reserve"])
    run = dep.wait_run(dag_id, run_id, 150)
    if run["state"] == "failed" and clear_when == "at-once":
        # Airflow 3.3 (1 run in 4 at 21:25 UTC): marked failed and cleared within ~0.3 s, the
        # scheduler failed the DAG run while the clear ran, so the cleared task never gets a try and
        # nothing cancels the reservation. The sweep's rule: no try starts in a finished run.
        sweep_run = dep.trigger("deploy_sweep")
        assert dep.wait_run("deploy_sweep", sweep_run, 120)["state"] == "success"
        res = reservation(dep, key)
        dep.note(
            f"f: reservation task killed, cleared at once; Airflow failed the run (reservation "
            f"{res['reservation_status']} after the sweep)",
            "LocalExecutor",
            len(dep.host_lines(counter)),
        )
        if res["reservation_status"] == "CANCELLED":  # the sweep came before the dispatch: nothing ran
            assert "stopped by the orchesjob sweep" in res["cancel_reason"]
            time.sleep(max(0.0, datetime.fromisoformat(not_before).timestamp() - time.time()) + 3)
            assert dep.host_lines(counter) == [], "a cancelled reservation never dispatches"
        else:  # dispatched (and done: `echo`) before the sweep ran
            assert dep.host_lines(counter) == ["run"]
        return
    lines = dep.host_lines(counter)
    dep.note(f"f: reservation task killed, cleared {clear_when} (reservation {after_kill} at the clear)",
             "LocalExecutor", len(lines))  # fmt: skip
    assert run["state"] == "success", (dep.ti(dag_id, run_id, "reserve"), reservation(dep, key))
    assert lines == ["run"], "dispatched exactly once"


def test_f_flow_whose_advancer_is_sigkilled_still_completes(dep):
    dag_id, token = "deploy_flow", uuid.uuid4().hex[:8]
    ca, cb = dep.counter(f"f-flow-A-{token}"), dep.counter(f"f-flow-B-{token}")
    key = f"deploy-flow-{token}"
    run_id = dep.trigger(dag_id, {"run_key": key, "step_a": f"echo A >> {ca}; sleep 6", "step_b": f"echo B >> {cb}"})
    wait_for("step A running on the host", lambda: dep.host_lines(ca) == ["A"], 120)

    def advancers() -> list[int]:
        # Not the supervisors of its steps' jobs: forked from the advancer, they show its command
        # line, but their process name is their own (orchesjob-sv).
        return [p for p in dep.host_pids("orchesjob-flow") if key in _cmdline(p) and _comm(p) != "orchesjob-sv"]

    pids = wait_for(f"the advancer process of flow run {key} on the host", advancers, 20, 0.2)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    run = dep.wait_run(dag_id, run_id, 120)
    dep.note("f: flow advancer SIGKILL", "LocalExecutor", {"A": len(dep.host_lines(ca)), "B": len(dep.host_lines(cb))})
    print(f"killed advancer(s) {pids}; run ended {time.monotonic() - killed_at:.0f}s later")
    assert run["state"] == "success", dep.ti(dag_id, run_id, "flow")
    assert dep.host_lines(ca) == ["A"] and dep.host_lines(cb) == ["B"], "each step ran once"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
