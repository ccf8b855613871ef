"""Pure unit tests: command lines, quoting and run keys (no host needed)."""

from __future__ import annotations

import json
import shlex
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_orchesjob.hooks import commands
from airflow_provider_orchesjob.utils.run_key import MAX_LEN, run_key_for

NASTY = ["a;b", "$(touch /tmp/x)", "`id`", "it's", 'say "hi"', "line1\nline2", "*.py", "ünïcödé ✓", "-n", "--", ""]


def test_job_start_argv():
    argv = commands.job_start("k", ["echo", "hi"], cwd="/srv", env_file=True, timeout=90, start_timeout=5)
    assert argv == [
        "orchesjob", "start", "--run-key", "k", "--reuse-policy", "failed-only", "--start-timeout", "5",
        "--cwd", "/srv", "--env-file", "-", "--timeout", "90", "--", "echo", "hi",
    ]  # fmt: skip
    assert commands.job_start("k", "echo $HOME")[-3:] == ["/bin/sh", "-c", "echo $HOME"]
    assert "--retry-lost" in commands.job_start("k", ["true"], retry_lost=True)
    assert "--retry-lost" not in commands.job_start("k", ["true"])


def test_labels_are_options_before_the_command():
    argv = commands.job_start("k", ["echo", "--label"], labels={"airflow.run_id": "manual__x:1 +00:00", "a": "b"})
    assert argv[argv.index("--") :] == ["--", "echo", "--label"]
    assert argv[argv.index("--") - 4 : argv.index("--")] == ["--label", "airflow.run_id=manual__x:1 +00:00",
                                                             "--label", "a=b"]  # fmt: skip
    assert commands.jobs_running({"airflow.namespace": "prod"}) == [
        "orchesjob", "status", "--running", "--label", "airflow.namespace=prod"]  # fmt: skip
    assert commands.reservations_list("RESERVED", 10) == ["orchesjob-reserver", "list", "--status", "RESERVED",
                                                          "--limit", "10"]  # fmt: skip
    with pytest.raises(ValueError):
        commands.job_start("k", ["true"], labels={"a": "b\x00"})


def test_env_travels_as_a_json_document_never_in_argv():
    env = {"TOKEN": "s3cr3t; $(id) 'q' \"d\"\nline ✓", "B": "x y"}
    argv = commands.job_start("k", ["true"], env_file=True)
    assert not any("s3cr3t" in a for a in argv)
    line = commands.remote_command_line(argv)
    assert "s3cr3t" not in line and "--env-file -" in line
    assert json.loads(commands.env_document(env)) == env
    assert commands.env_document(None) == b"{}"


@pytest.mark.parametrize("bad", [{"A=B": "1"}, {"": "1"}, {"1A": "x"}, {"A": "nul\x00"}])
def test_env_document_rejects_bad_names_and_values(bad):
    with pytest.raises(ValueError):
        commands.env_document(bad)


def test_stop_argv():
    argv = commands.job_stop("abort", job_id="j", grace=5)
    assert argv == ["orchesjob", "abort", "--job-id", "j", "--grace-seconds", "5"]
    argv = commands.job_stop("cancel", "k", reason="why [airflow try 2]", grace=1.5, wait=11.5)
    assert argv == ["orchesjob", "cancel", "--run-key", "k", "--grace-seconds", "1.5", "--wait", "11.5",
                    "--reason", "why [airflow try 2]"]  # fmt: skip
    with pytest.raises(ValueError):
        commands.job_stop("kill", "k")


@pytest.mark.parametrize("bad", [dict(command=[]), dict(command=""), dict(run_key="a\x00b")])
def test_job_start_rejects_bad_input(bad):
    kwargs = {"run_key": "k", "command": ["true"], **bad}
    with pytest.raises(ValueError):
        commands.job_start(kwargs.pop("run_key"), kwargs.pop("command"), **kwargs)


def test_selectors_need_exactly_one():
    with pytest.raises(ValueError):
        commands.job_status()
    with pytest.raises(ValueError):
        commands.job_status("k", "id")
    assert commands.reservation_status(reservation_id="r") == ["orchesjob-reserver", "status", "--reservation-id", "r"]


def test_time_arguments():
    aware = datetime(2026, 5, 4, 3, 0, tzinfo=timezone(timedelta(hours=9)))
    assert commands.time_arg(aware) == "2026-05-04T03:00:00+09:00"
    assert commands.time_arg(1777831200) == "1777831200"
    assert commands.time_arg("2026-05-04T03:00:00Z") == "2026-05-04T03:00:00Z"
    with pytest.raises(ValueError, match="naive"):
        commands.time_arg(datetime(2026, 5, 4))


def test_reserve_argv_carries_metadata_and_options():
    argv = commands.reserve("r", ["x"], not_before=5, metadata={"dag_id": "d"}, start_options=["--strict"])
    assert argv[:6] == ["orchesjob-reserver", "reserve", "--run-key", "r", "--not-before", "5"]
    assert '{"dag_id": "d"}' in argv and "--orchesjob-start-option=--strict" in argv
    argv = commands.reserve("r", ["x"], env_file=True, rearm=True)
    assert argv[argv.index("--env-file") + 1] == "-" and argv.index("--env-file") < argv.index("--")
    assert argv.index("--rearm") < argv.index("--") and "--rearm" not in commands.reserve("r", ["x"])


@pytest.mark.parametrize("word", NASTY)
def test_remote_command_line_round_trips_through_a_real_shell(word):
    argv = ["printf", "%s\\0", word, f"x{word}y"]
    line = commands.remote_command_line(argv, env={"ORCHESJOB_HOME": "/h o/$(x)"})
    out = subprocess.run(["/bin/sh", "-c", line.replace("exec ", "", 1)], capture_output=True)
    assert out.stdout.split(b"\0")[:-1] == [word.encode(), f"x{word}y".encode()]


def test_remote_command_line_path_and_bin_dir():
    line = commands.remote_command_line(["orchesjob", "info"])
    assert line == 'PATH="$HOME/.local/bin:$PATH"; export PATH; exec orchesjob info'
    line = commands.remote_command_line(["orchesjob", "info"], bin_dir="/opt/edge bin/", env={"ORCHESJOB_HOME": "/x"})
    assert line == "export ORCHESJOB_HOME=/x; exec '/opt/edge bin/orchesjob' info"
    assert shlex.split(line)[-2:] == ["/opt/edge bin/orchesjob", "info"]
    with pytest.raises(ValueError):
        commands.remote_command_line(["orchesjob"], env={"BAD-NAME": "x"})


def test_run_key_plain_and_stable():
    key = run_key_for("etl", "load", "scheduled__2026-05-02T00:00:00+00:00")
    assert key == "af:etl:load:scheduled__2026-05-02T00:00:00+00:00"
    assert run_key_for("etl", "load", "r", 3) == "af:etl:load:r:3"
    assert run_key_for("etl", "load", "r", None) == run_key_for("etl", "load", "r", -1) == "af:etl:load:r"


def test_run_key_unsafe_characters_are_hashed_without_collisions():
    a = run_key_for("d", "t x", "r")
    b = run_key_for("d", "t_x", "r")
    assert a != b and a.startswith("af:d:t_x:r~") and b == "af:d:t_x:r"
    assert all(c.isalnum() or c in "._:+@=-~" for c in run_key_for("d;$(x)", "t\n", "r é"))


def test_run_key_is_bounded():
    long_a = run_key_for("d" * 300, "t", "r")
    long_b = run_key_for("d" * 299 + "e", "t", "r")
    assert len(long_a) == MAX_LEN and long_a != long_b


class _DroppingTransport:
    """Loses the connection after the command may have reached the host (cannot be staged with a real sshd)."""

    host_id = "h"

    def __init__(self, sent: bool, results: list) -> None:
        self.calls: list = []
        self.sent = sent
        self.results = results

    def run(self, argv, stdin=None, timeout=None):
        from airflow_provider_orchesjob.exceptions import OrchesJobConnectionError
        from airflow_provider_orchesjob.hooks.transport import CommandResult

        self.calls.append(list(argv))
        if self.results:
            return CommandResult(*self.results.pop(0))
        raise OrchesJobConnectionError("connection reset", sent=self.sent)


def _hook_with(transport):
    from airflow_provider_orchesjob.hooks import OrchesJobHook

    hook = OrchesJobHook(None, connect_budget=0.05)
    hook._sync = transport
    hook._checked.add(transport.host_id)
    return hook


def test_non_idempotent_command_is_never_resent_after_it_may_have_arrived():
    from airflow_provider_orchesjob.exceptions import OrchesJobConnectionError

    transport = _DroppingTransport(sent=True, results=[])
    with pytest.raises(OrchesJobConnectionError, match="not safe to resend"):
        _hook_with(transport).rerun_job("k")
    assert len(transport.calls) == 1


def test_start_is_resent_as_the_same_request():
    from edge_runtime import runtime_summary

    # What a current runtime answers (`--expect-major`: the reply describes the runtime).
    job = json.dumps({"job_id": "j1", "existing": True, "runtime": runtime_summary()}).encode()
    transport = _DroppingTransport(sent=True, results=[])
    transport.results = []
    hook = _hook_with(transport)
    # First attempt drops after sending; the resend (safe under failed-only) answers.
    original = transport.run

    def run(argv, stdin=None, timeout=None):
        if transport.calls:
            transport.results.append((0, job, b""))
        return original(argv, stdin, timeout)

    transport.run = run
    assert hook.start_job("k", ["x"], reuse_policy="always")["job_id"] == "j1"
    # The resend is the same request (same --request-id), so the host returns the first copy's job
    # whatever the reuse policy (see tests/edge/test_orchesjob.py::test_resent_start_request_...).
    assert len(transport.calls) == 2 and transport.calls[0] == transport.calls[1]
    assert "--request-id" in transport.calls[0]


def test_status_request_is_one_lookup_with_integer_offsets():
    assert commands.status_request("k") == {"run_key": "k"}
    assert commands.status_request(job_id="j", stdout_offset=3, stderr_offset=0, max_bytes=10.0) == {
        "job_id": "j", "stdout_offset": 3, "stderr_offset": 0, "max_bytes": 10
    }  # fmt: skip
    assert commands.job_status_batch() == ["orchesjob", "status", "--batch", "-"]
    with pytest.raises(ValueError):
        commands.status_request("k", "j")
    with pytest.raises(ValueError):
        commands.status_request()


def test_batch_script_frames_each_command_through_a_real_shell():
    marker = "OJB" + "0123456789abcdef"
    lines = [
        commands.remote_command_line(["printf", "%s", "no newline"], extra_path=""),
        "echo out; echo err >&2; exit 3",
        # A command that prints something looking like a frame of another marker, and reads stdin.
        "echo 'OJBfake 0 0'; cat",
    ]
    script = commands.batch_script(lines, marker)
    p = subprocess.run(["/bin/sh", "-c", script], input=b"must not be read", capture_output=True, timeout=30)
    parts = commands.split_batch_output(p.stdout, p.stderr, marker, 3)
    assert parts == [(0, b"no newline", b""), (3, b"out\n", b"err\n"), (0, b"OJBfake 0 0\n", b"")]


def test_batch_output_cut_short_reports_the_missing_commands():
    marker = "OJBabcdefabcdef"
    script = commands.batch_script(["echo one", "echo two", "echo three"], marker)
    p = subprocess.run(["/bin/sh", "-c", script], capture_output=True, timeout=30)
    cut = p.stdout[: p.stdout.index(b"two")]  # the session ended while the second command ran
    parts = commands.split_batch_output(cut, p.stderr, marker, 3)
    assert parts[0] == (0, b"one\n", b"") and parts[1] is None and parts[2] is None


def test_batch_script_needs_a_safe_marker():
    with pytest.raises(ValueError):
        commands.batch_script(["true"], "short")
    with pytest.raises(ValueError):
        commands.batch_script(["true"], "has space in it")
