"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from importlib import metadata

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _airflow_major() -> str | None:
    """Major version of the installed Airflow, read without importing it (that would read the config too early)."""
    try:
        return metadata.version("apache-airflow").split(".")[0]
    except metadata.PackageNotFoundError:
        return None


# tests/airflow2 runs only in its own Airflow 2.11 venv (scripts/test_airflow2.sh); every other
# directory needs the Airflow 3 dev venv and is not given to pytest by that script.
collect_ignore = [] if _airflow_major() == "2" else ["airflow2"]

# Airflow must never touch the developer's ~/airflow: give the test session its own home.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="orchesjob-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault(
    "AIRFLOW__CORE__DAGS_FOLDER", os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e", "dags")
)
BIN_DIR = os.path.dirname(sys.executable)


def require(condition: bool, what: str) -> None:
    """Skip locally when a real part is missing; in CI a missing part is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required part missing in CI: {what}")
    pytest.skip(f"missing: {what}")


def cli_path(name: str) -> str:
    """Path of an installed console script of this checkout (orchesjob, ...)."""
    path = os.path.join(BIN_DIR, name)
    if not os.path.exists(path):
        path = shutil.which(name) or path
    return path


@pytest.fixture(scope="session")
def ssh_server():
    """A real sshd on loopback with a pipx-installed runtime for a dedicated user (tests/sshd_harness.py)."""
    from tests.sshd_harness import SSHServer, missing_parts

    missing = missing_parts()
    require(not missing, ", ".join(missing))
    # Not under pytest's tmp dir (mode 0700): sshd reads authorized_keys as the test user.
    workdir = tempfile.mkdtemp(prefix="orchesjob-sshd-")
    server = SSHServer.create(workdir)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)
