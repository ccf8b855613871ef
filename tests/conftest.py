"""Fixtures shared by every test layer."""

from __future__ import annotations

import atexit
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
# tests/matrix runs only from scripts/test_matrix.sh (its own venvs and Airflow deployments).
if not os.environ.get("ORCHESJOB_MATRIX"):
    collect_ignore.append("matrix")

# Airflow must never touch the developer's ~/airflow: give the test session its own home,
# removed when the session ends (one was left in /tmp per session: hundreds on a CI machine).
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="orchesjob-airflow-home-")
    atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], True)
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


@pytest.fixture(scope="session")
def bare_ssh_server():
    """A real sshd on loopback for a user with no edge runtime installed (agentless hosts)."""
    from tests.sshd_harness import BARE_USER, SSHServer, missing_parts

    missing = missing_parts(pipx=False)
    require(not missing, ", ".join(missing))
    workdir = tempfile.mkdtemp(prefix="orchesjob-sshd-bare-")
    server = SSHServer.create(workdir, install_runtime=False, user=BARE_USER, bare=True)
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


PUBLIC_VENV = os.environ.get(
    "ORCHESJOB_PUBLIC_VENV", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-public")
)
PUBLIC_RELEASES = ("orchesjob==1.1.0", "orchesjob-reserver==0.1.2", "orchesjob-flow==0.1.0.dev0")


@pytest.fixture(scope="session")
def public_bin() -> str:
    """bin/ of a venv holding the public releases (installed from the package index on first use)."""
    import subprocess

    bindir = os.path.join(PUBLIC_VENV, "bin")
    if not all(os.path.exists(os.path.join(bindir, r.split("==")[0])) for r in PUBLIC_RELEASES):
        try:
            subprocess.run([sys.executable, "-m", "venv", PUBLIC_VENV], check=True, capture_output=True)
            # They declare Python >= 3.12 but run on 3.10+.
            subprocess.run(
                [os.path.join(bindir, "pip"), "install", "-q", "--disable-pip-version-check",
                 "--ignore-requires-python", "--pre", *PUBLIC_RELEASES],
                check=True, capture_output=True, timeout=600,
            )  # fmt: skip
        except (subprocess.SubprocessError, OSError) as exc:
            require(False, f"public releases {PUBLIC_RELEASES} could not be installed: {exc}")
    return bindir
