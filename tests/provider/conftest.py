"""Provider tests run against a real sshd on loopback (see tests/sshd_harness.py)."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from tests.sshd_harness import SSHServer

CONN_ID = "orchesjob_it"


def wait_terminal(hook, run_key: str, timeout: float = 60) -> dict:
    """The job of ``run_key`` once it is no longer STARTING or RUNNING (or as it is after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        job = hook.job_status(run_key)
        if job["status"] not in ("STARTING", "RUNNING") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def set_connection(conn_id: str, server: SSHServer, host: str | None = None, **extra) -> str:
    """Register an Airflow ``ssh`` connection through an AIRFLOW_CONN_* variable (to ``host``, default the server's)."""
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {
            "conn_type": "ssh",
            "host": host or server.host,
            "port": server.port,
            "login": server.user,
            "extra": server.connection_extra(**extra),
        }
    )
    return conn_id


@pytest.fixture
def conn_id(ssh_server):
    """A connection whose ORCHESJOB_HOME on the host is fresh for each test."""
    home = os.path.join(ssh_server.home, ".orchesjob-tests", uuid.uuid4().hex)
    return set_connection(CONN_ID, ssh_server, orchesjob_home=home)
