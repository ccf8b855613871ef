"""Issue 11 (h): rotating the connection's key while tasks are deferred; the next reconnect uses the new key."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import pytest

from tests.deploy.deployment import DEPLOY_TIMEOUT, wait_for

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(DEPLOY_TIMEOUT)]

DAG = "deploy_three"


def fingerprint(pub: str) -> str:
    return subprocess.run(["ssh-keygen", "-lf", pub], capture_output=True, text=True, check=True).stdout.split()[1]


def test_h_rotating_the_connection_key_while_deferred(dep):
    server = dep.ssh_server
    counter = dep.counter(f"h-{uuid.uuid4().hex[:6]}")
    run_id = dep.trigger(DAG, {"command": f'run() {{ echo "$1" >> {counter}; echo "polled-$1"; sleep 25; }}; run'})
    dep.wait_ti_state(DAG, run_id, ("deferred",), 120, count=3)
    wait_for("the three remote jobs running", lambda: len(dep.host_lines(counter)) == 3, 60)

    def polling() -> bool:  # every trigger is connected with the old key and has streamed output
        return all(f"polled-{i}" in dep.task_log(DAG, run_id, f"job{i}", 1) for i in range(3))

    wait_for("the three triggers polling the host", polling, 60, 1.0)

    new_key = os.path.join(server.workdir, f"rotated_{uuid.uuid4().hex[:6]}")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", new_key, "-C", "rotated"], check=True)
    old_fp, new_fp = fingerprint(server.key_file + ".pub"), fingerprint(new_key + ".pub")
    auth = os.path.join(server.workdir, "authorized_keys")
    saved = auth + ".before-rotation"
    shutil.copy(auth, saved)
    log_mark = len(server.log())
    try:
        # The operator's rotation: authorize the new key, switch the connection, revoke the old key.
        with open(auth, "a") as f, open(new_key + ".pub") as pub:
            f.write(pub.read())
        dep.patch_connection(dep.connection_json(key_file=new_key))
        stored = dep.get("/api/v2/connections/orchesjob_deploy").json()
        assert new_key in (stored.get("extra") or ""), f"the connection now names the new key: {stored}"
        shutil.copy(new_key + ".pub", auth)
        server.kill_sessions()  # live connections drop: the triggers must reconnect
        run = wait_for("the run finished", lambda: (r := dep.dag_run(DAG, run_id))["state"] in ("success", "failed")
                       and r, 150, 1.0)  # fmt: skip
        after = server.log()[log_mark:]
    finally:
        # Back to the old key, with the new one still authorized: a process that kept either credential
        # (see the assertions) must not break the scenarios that run after this one.
        with open(auth, "w") as f, open(saved) as old, open(new_key + ".pub") as pub:
            f.write(old.read() + pub.read())
        dep.patch_connection(dep.connection_json())
    accepted = re.findall(r"Accepted publickey for \S+ from .* (SHA256:\S+)", after)
    lines = dep.host_lines(counter)
    dep.note("h: connection key rotated while deferred", "LocalExecutor", len(lines))
    assert run["state"] == "success", [(t["task_id"], t["state"]) for t in dep.task_instances(DAG, run_id)]
    assert sorted(lines) == ["0", "1", "2"], "one execution each"
    assert new_fp in accepted, f"the reconnect used the new key: {accepted}"
    assert old_fp not in accepted, "nobody logged in with the revoked key"
