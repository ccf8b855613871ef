"""Issue 11 (a), (b): triggerers that die or stall while 20 tasks are deferred."""

from __future__ import annotations

import collections
import re
import signal
import time
import uuid

import pytest

from tests.deploy.deployment import DEPLOY_TIMEOUT, TRIGGERER_HEALTH_CHECK_THRESHOLD, run_key, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(DEPLOY_TIMEOUT)]

DAG = "deploy_fanout"
FANOUT = 20
POLL_INTERVAL = 2.0  # deploy_fanout's poll_interval
LINES_PER_SECOND = 1


def fanout_command(counter: str, seconds: int) -> str:
    # The DAG appends the map index: "<command> <i>". One line per execution, then one output line a second.
    return (
        f'run() {{ echo "$1" >> {counter}; n=0; while [ $n -lt {seconds} ]; do n=$((n+1)); '
        f'echo "out-$1-$n"; sleep 1; done; }}; run'
    )


def deferred_with_triggerer(dep, run_id: str) -> dict[int, str]:
    """map_index -> hostname of the triggerer running its trigger, once all 20 tasks are deferred and assigned."""

    def assigned() -> dict[int, str] | None:
        tis = dep.task_instances(DAG, run_id)
        if len(tis) < FANOUT or any(t["state"] != "deferred" for t in tis):
            return None
        owners = {t["map_index"]: (t.get("triggerer_job") or {}).get("hostname") for t in tis}
        return owners if all(h and h.startswith("triggerer-") for h in owners.values()) else None

    return wait_for("20 deferred tasks, each trigger held by a triggerer", assigned, 150, 1.0)


def executions(dep, counter: str) -> collections.Counter:
    return collections.Counter(dep.host_lines(counter))


def host_attempts(dep, run_id: str) -> dict[int, list[dict]]:
    return {i: dep.history(run_key(DAG, "job", run_id, i)) for i in range(FANOUT)}


@pytest.fixture(scope="module")
def scenario_a(deployment):
    """Run (a) once; the tests below assert on what it left (executions, host records, task logs)."""
    dep = deployment
    dep.check_alive()
    counter = dep.counter(f"a-{uuid.uuid4().hex[:6]}")
    seconds = 40
    run_id = dep.trigger(DAG, {"command": fanout_command(counter, seconds)})
    owners = deferred_with_triggerer(dep, run_id)
    # The triggerer holding the most triggers dies (SIGKILL, its trigger-runner subprocess too).
    victim = collections.Counter(owners.values()).most_common(1)[0][0]
    held = sorted(i for i, h in owners.items() if h == victim)
    wait_for("all 20 jobs started on the host", lambda: len(executions(dep, counter)) == FANOUT, 60)
    time.sleep(4)  # let a few polls' worth of output reach the task logs first (the job prints one line a second)
    comp = dep.components[victim]
    comp.kill()
    down_at = time.monotonic()
    wait_for(f"{victim} job no longer alive", lambda: victim not in {j["hostname"] for j in
                                                                      dep.alive_jobs("TriggererJob")}, 60)  # fmt: skip
    comp.start()  # restarted, as a supervisor (systemd, k8s) would
    wait_for(f"{victim} back", lambda: victim in {j["hostname"] for j in dep.alive_jobs("TriggererJob")}, 120)
    print(f"triggerer {victim} held {len(held)} triggers; back after {time.monotonic() - down_at:.0f}s")
    run = dep.wait_run(DAG, run_id, 240)
    tis = dep.task_instances(DAG, run_id)
    logs = {}
    for i in held:
        ti = next(t for t in tis if t["map_index"] == i)
        logs[i] = dep.task_log(DAG, run_id, "job", ti["try_number"], map_index=i)
    return {"run": run, "run_id": run_id, "tis": tis, "counts": executions(dep, counter), "held": held,
            "seconds": seconds, "logs": logs, "attempts": host_attempts(dep, run_id)}  # fmt: skip


def test_a_triggerer_sigkilled_with_20_deferred_tasks_all_succeed_once(dep, scenario_a):
    run, tis, counts = scenario_a["run"], scenario_a["tis"], scenario_a["counts"]
    dep.note("a: triggerer SIGKILL + restart, 20 deferred", "LocalExecutor", dict(sorted(counts.items())))
    assert run["state"] == "success", [(t["map_index"], t["state"]) for t in tis]
    assert sorted(t["state"] for t in tis) == ["success"] * FANOUT
    assert counts == collections.Counter({str(i): 1 for i in range(FANOUT)}), "one execution per task on the host"
    for i, attempts in scenario_a["attempts"].items():
        assert [a["status"] for a in attempts] == ["SUCCEEDED"], (i, attempts)


def test_a_task_log_repeats_at_most_one_poll_after_the_triggerer_restart(dep, scenario_a):
    # The task logs show the remote output, repeating at most one poll's worth after the triggerer change.
    seconds, allowed = scenario_a["seconds"], int(POLL_INTERVAL * LINES_PER_SECOND) + 1
    dep.note("a: task log after triggerer restart", "LocalExecutor", None)
    for i, log in scenario_a["logs"].items():
        seen = collections.Counter(int(n) for n in re.findall(rf"out-{i}-(\d+)\b", log))
        missing = [n for n in range(1, seconds + 1) if n not in seen]
        repeated = sum(c - 1 for c in seen.values())
        assert not missing, f"task {i}: remote output lines missing from the log: {missing}"
        assert repeated <= allowed, f"task {i}: {repeated} output lines repeated (allowed {allowed}): {dict(seen)}"


def test_b_stalled_triggerer_resumes_without_aborting_adopted_jobs(dep):
    counter = dep.counter(f"b-{uuid.uuid4().hex[:6]}")
    seconds = 45
    run_id = dep.trigger(DAG, {"command": fanout_command(counter, seconds)})
    owners = deferred_with_triggerer(dep, run_id)
    victim = collections.Counter(owners.values()).most_common(1)[0][0]
    other = "triggerer-2" if victim == "triggerer-1" else "triggerer-1"
    wait_for("all 20 jobs started on the host", lambda: len(executions(dep, counter)) == FANOUT, 60)
    comp = dep.components[victim]
    comp.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # Past the health-check threshold the other triggerer adopts every trigger.
        def adopted() -> bool:
            tis = dep.task_instances(DAG, run_id)
            return all((t.get("triggerer_job") or {}).get("hostname") == other for t in tis if t["state"] == "deferred")

        wait_for(f"{other} adopted the triggers of the stalled {victim}", adopted,
                 TRIGGERER_HEALTH_CHECK_THRESHOLD + 60, 1.0)  # fmt: skip
        time.sleep(2)  # the adopter has polled at least once
    finally:
        comp.signal(signal.SIGCONT)
    stalled_for = time.monotonic() - stopped_at

    run = dep.wait_run(DAG, run_id, 240)
    tis = dep.task_instances(DAG, run_id)
    counts = executions(dep, counter)
    statuses = {i: [a["status"] for a in attempts] for i, attempts in host_attempts(dep, run_id).items()}
    dep.note("b: triggerer SIGSTOP past threshold, SIGCONT", "LocalExecutor", dict(sorted(counts.items())))
    print(f"{victim} stalled for {stalled_for:.0f}s")
    aborted = {i: s for i, s in statuses.items() if "ABORTED" in s}
    assert not aborted, f"remote jobs aborted although nobody killed their tasks: {aborted}"
    assert run["state"] == "success", [(t["map_index"], t["state"]) for t in tis]
    assert counts == collections.Counter({str(i): 1 for i in range(FANOUT)})
    assert all(s == ["SUCCEEDED"] for s in statuses.values()), statuses
