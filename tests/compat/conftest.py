"""Compatibility with the public releases (the `public_bin` fixture lives in tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.edge.conftest import kill_processes_under


@pytest.fixture(autouse=True)
def _reap(tmp_path):
    """Kill what a test (public dispatcher, its jobs) left running, even when it failed."""
    yield
    kill_processes_under(str(tmp_path))
