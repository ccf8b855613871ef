"""The deployment fixture: one real Airflow deployment (tests/deploy/deployment.py) for the whole session."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import pytest

from tests.conftest import require

MODULE_ORDER = [
    "test_baseline",
    "test_triggerer_faults",
    "test_worker_faults",
    "test_user_actions",
    "test_reservation_flow",
    "test_timeouts",
    "test_key_rotation",
]


def pytest_collection_modifyitems(config, items):
    # Run the deployment scenarios (marked ``deploy`` in their modules) last: the deployment then never
    # competes with the other tests for CPU, and it is torn down (session teardown) right after them.
    # Key rotation goes last: it changes the connection that every other scenario uses.
    deploy = [i for i in items if "tests/deploy/" in str(i.fspath).replace(os.sep, "/")]
    deploy.sort(key=lambda i: MODULE_ORDER.index(i.module.__name__.rsplit(".", 1)[-1]))
    ids = {id(i) for i in deploy}
    items[:] = [i for i in items if id(i) not in ids] + deploy


@pytest.fixture(scope="session")
def deployment(ssh_server):
    """Postgres, Redis, scheduler, dag-processor, api-server, 2 triggerers, 2 Celery workers; the sshd as host."""
    from tests.deploy.deployment import Deployment, missing_parts

    missing = missing_parts()
    require(not missing, ", ".join(missing))
    workdir = tempfile.mkdtemp(prefix="orchesjob-deploy-")
    dep = Deployment(workdir=workdir, ssh_server=ssh_server)
    t0 = time.monotonic()
    try:
        dep.start()
    except BaseException:
        print(dep.diagnostics(), file=sys.stderr)
        dep.stop()
        raise
    dep.timings["start total"] = time.monotonic() - t0
    print(f"\ndeployment up in {dep.timings['start total']:.0f}s: {dep.timings} (logs: {workdir})", file=sys.stderr)
    try:
        yield dep
    finally:
        dep.stop()
        if os.environ.get("ORCHESJOB_DEPLOY_KEEP_LOGS"):
            print(f"deployment logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def dep(deployment, request):
    """The deployment, checked alive before each scenario; its process logs are printed when a scenario fails."""
    from tests.deploy.deployment import record

    deployment.check_alive()
    deployment.notes = []
    t0 = time.monotonic()
    yield deployment
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(deployment.diagnostics(), file=sys.stderr)
    outcome = "error" if rep is None else rep.outcome
    if rep is not None and hasattr(rep, "wasxfail"):
        outcome = "xpass" if rep.passed else "xfail"
    if not deployment.notes:  # failed before measuring: still one row, named after the test
        deployment.note(request.node.name, "-", None)
    for note in deployment.notes:
        record(**note, result=outcome, duration=time.monotonic() - t0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
