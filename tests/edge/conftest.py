"""Black-box helpers: run the real console scripts as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import cli_path


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error(self) -> dict:
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON error line on stderr, got: {self.err!r}"
        return json.loads(lines[0])


class Runner:
    """Runs ``orchesjob`` / ``orchesjob-reserver`` / ``orchesjob-flow`` against one temp home."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.env = dict(os.environ, ORCHESJOB_HOME=home)
        for var in ("ORCHESJOB_RESERVER_HOME", "ORCHESJOB_FLOW_HOME", "ORCHESJOB_BIN"):
            self.env.pop(var, None)

    def run(self, tool: str, *args: str, timeout: float = 60, input: str | None = None, **kw: Any) -> Result:
        p = subprocess.run(
            [cli_path(tool), *args],
            capture_output=True,
            text=True,
            env=kw.pop("env", self.env),
            timeout=timeout,
            input=input,
            **kw,
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def oj(self, *args: str, **kw: Any) -> Result:
        return self.run("orchesjob", *args, **kw)

    def ok(self, *args: str, tool: str = "orchesjob", **kw: Any) -> Any:
        r = self.run(tool, *args, **kw)
        assert r.code == 0, f"{tool} {args} -> {r.code}\nstdout={r.out}\nstderr={r.err}"
        return r.json


@pytest.fixture
def runner(tmp_path) -> Runner:
    return Runner(str(tmp_path / "home"))
