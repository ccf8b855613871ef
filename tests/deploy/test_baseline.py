"""The deployment itself: a deferred job runs once through scheduler, worker and triggerer."""

from __future__ import annotations

import uuid

import pytest

from tests.deploy.deployment import DEPLOY_TIMEOUT

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(DEPLOY_TIMEOUT)]


def test_deferred_job_runs_once_through_the_deployment(dep):
    counter = dep.counter(f"baseline-{uuid.uuid4().hex[:6]}")
    run_id = dep.trigger("deploy_job", {"command": f"echo run >> {counter}; echo hello-from-host"})
    run = dep.wait_run("deploy_job", run_id, 180)
    assert run["state"] == "success"
    assert dep.host_lines(counter) == ["run"]
    ti = dep.ti("deploy_job", run_id, "job")
    log = dep.task_log("deploy_job", run_id, "job", ti["try_number"])
    assert "hello-from-host" in log, log[-3000:]
