"""The public releases, installed into their own venv, to prove compatibility."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import require
from tests.edge.conftest import kill_processes_under

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PUBLIC_VENV = os.environ.get("ORCHESJOB_PUBLIC_VENV", os.path.join(ROOT, ".venv-public"))
PUBLIC = ("orchesjob-reserver==0.1.2", "orchesjob-flow==0.1.0.dev0")


@pytest.fixture(scope="session")
def public_bin() -> str:
    """bin/ of a venv holding the public reserver and flow releases (installed on first use)."""
    bindir = os.path.join(PUBLIC_VENV, "bin")
    if not all(os.path.exists(os.path.join(bindir, n)) for n in ("orchesjob-reserver", "orchesjob-flow")):
        try:
            subprocess.run([sys.executable, "-m", "venv", PUBLIC_VENV], check=True, capture_output=True)
            # They declare Python >= 3.12 but run on 3.10+.
            subprocess.run(
                [os.path.join(bindir, "pip"), "install", "-q", "--disable-pip-version-check",
                 "--ignore-requires-python", "--pre", *PUBLIC],
                check=True, capture_output=True, timeout=600,
            )  # fmt: skip
        except (subprocess.SubprocessError, OSError) as exc:
            require(False, f"public releases {PUBLIC} could not be installed: {exc}")
    return bindir


@pytest.fixture(autouse=True)
def _reap(tmp_path):
    """Kill what a test (public dispatcher, its jobs) left running, even when it failed."""
    yield
    kill_processes_under(str(tmp_path))
