"""Provider tests run against a real sshd on loopback (see tests/sshd_harness.py)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import pytest

from tests.conftest import require
from tests.sshd_harness import SSHServer, missing_parts

CONN_ID = "orchesjob_it"


@pytest.fixture(scope="session")
def ssh_server():
    missing = missing_parts()
    require(not missing, ", ".join(missing))
    # Not under pytest's tmp dir (mode 0700): sshd reads authorized_keys as the test user.
    workdir = tempfile.mkdtemp(prefix="orchesjob-sshd-")
    server = SSHServer.create(workdir)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def set_connection(conn_id: str, server: SSHServer, **extra) -> str:
    """Register an Airflow ``ssh`` connection through an AIRFLOW_CONN_* variable."""
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(
        {
            "conn_type": "ssh",
            "host": server.host,
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
