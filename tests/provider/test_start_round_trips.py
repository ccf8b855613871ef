"""A start costs one command on the host: the start checks the runtime itself (``--expect-major``)
and replies with its capabilities, so no ``info`` round trip precedes it. A runtime that refuses
the new form (an older one) is asked ``info`` and sent the form it supports; nothing is started
twice on the way.

Runs on the local transport (the real edge CLIs as subprocesses); the transport records the
command lines it runs.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from airflow_provider_orchesjob.exceptions import (
    OrchesJobInvalidArguments,
    OrchesJobNotFound,
    OrchesJobRuntimeIncompatible,
)
from airflow_provider_orchesjob.hooks import orchesjob as hook_module
from airflow_provider_orchesjob.hooks.orchesjob import JOB_LABELS, START_CHECK, OrchesJobHook


class Recording:
    """Wraps a hook's transport: every command line it runs, in order."""

    def __init__(self, hook: OrchesJobHook) -> None:
        self.sent: list[list[str]] = []
        transport = hook.get_conn()
        real = transport.run

        def run(argv, stdin=None, timeout=None):
            self.sent.append(list(argv))
            return real(argv, stdin=stdin, timeout=timeout)

        transport.run = run

    def verbs(self) -> list[str]:
        return [argv[1] for argv in self.sent]


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = str(tmp_path / "home")
    monkeypatch.setenv("ORCHESJOB_HOME", path)
    return path


def attempts(hook: OrchesJobHook, run_key: str) -> int:
    try:
        return len(hook.run_cli(["orchesjob", "status", "--run-key", run_key, "--all"]))
    except OrchesJobNotFound:
        return 0


def test_a_start_is_one_command_and_teaches_the_hook_the_runtime(home):
    hook = OrchesJobHook(None)
    sent = Recording(hook)
    job = hook.start_job("one-trip", ["true"], labels={"airflow.dag_id": "d"})
    assert sent.verbs() == ["start"]
    assert sent.sent[0][2] == "--expect-major=" + hook_module.MAJOR  # first, as one word
    assert "runtime" not in job  # the runtime's description is the hook's, not the task's XCom
    assert job["accepted"] and job["labels"] == {"airflow.dag_id": "d"}
    # What the reply carried is what `info` would have said: later calls need no `info` either.
    assert hook._capabilities is not None and {START_CHECK, JOB_LABELS} <= hook._capabilities
    hook.job_status("one-trip")
    hook.start_job("one-trip-2", ["true"])
    assert sent.verbs() == ["start", "status", "start"]


def test_bad_input_on_a_current_runtime_is_its_own_error_and_starts_nothing(home):
    hook = OrchesJobHook(None)
    sent = Recording(hook)
    with pytest.raises(OrchesJobInvalidArguments, match="invalid key"):
        hook.start_job("bad-label", ["true"], labels={"no spaces allowed": "x"})
    # The refusal is told apart from an older runtime's by asking `info` once; nothing is resent.
    assert sent.verbs() == ["start", "info"]
    assert attempts(hook, "bad-label") == 0


def test_a_runtime_of_another_major_version_refuses_before_starting(home, monkeypatch):
    monkeypatch.setattr(hook_module, "MAJOR", "99")
    hook = OrchesJobHook(None)
    with pytest.raises(OrchesJobRuntimeIncompatible, match="expects major version 99"):
        hook.start_job("other-major", ["true"])
    monkeypatch.setattr(hook_module, "MAJOR", "0")
    assert attempts(OrchesJobHook(None), "other-major") == 0


OLDER_RUNTIME = r"""#!{python}
# Stands in for the runtime released before `start --expect-major`: it refuses the option as
# that release's argparse did (exit 2, nothing recorded) and does not advertise the capability.
import json, os, sys
real = {real!r}
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\n")
if args[:1] == ["start"] and any(a.startswith("--expect-major") for a in args):
    sys.stderr.write(json.dumps({{"error": "orchesjob: unrecognized arguments: " + args[1],
                                  "error_type": "invalid_arguments"}}) + "\n")
    sys.exit(2)
if args == ["info"]:
    import subprocess
    info = json.loads(subprocess.run([real, "info"], capture_output=True, check=True).stdout)
    info["capabilities"] = [c for c in info["capabilities"] if c != "start-compat-check"]
    print(json.dumps(info))
    sys.exit(0)
os.execv(real, [real, *args])
"""


def test_an_older_runtime_is_asked_info_and_sent_the_form_it_knows(home, tmp_path):
    real = os.path.join(os.path.dirname(sys.executable), "orchesjob")
    bin_dir = tmp_path / "older-bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    exe = bin_dir / "orchesjob"
    exe.write_text(OLDER_RUNTIME.format(python=sys.executable, real=real, log=str(log)))
    exe.chmod(0o755)

    hook = OrchesJobHook(None, bin_dir=str(bin_dir))
    job = hook.start_job("older", ["sh", "-c", "echo ran >> " + str(tmp_path / "ran")], labels={"k": "v"})
    assert job["accepted"] and "runtime" not in job
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[0] for c in calls] == ["start", "info", "start"]
    assert not any(a.startswith("--expect-major") for a in calls[2])
    assert "--label" in calls[2]  # the older runtime has job-labels: still sent
    assert START_CHECK not in hook.capabilities()
    assert attempts(hook, "older") == 1  # the refused first form recorded nothing: one attempt
    deadline = time.monotonic() + 30
    while hook.job_status("older")["status"] != "SUCCEEDED" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "ran").read_text() == "ran\n"  # run once
    hook.start_job("older-2", ["true"])  # the hook now knows: no refused form, no `info`
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[0] for c in calls[3:]] == ["status"] * (len(calls) - 4) + ["start"]
