"""systemd: the dispatcher's unit, ``orchesjob-reserver service``, and a scope per job.

No systemd manager runs here. What is real: the unit text and ``systemd-analyze
verify`` reading it back (system and user manager rules), the CLIs as processes,
the files they write, the refusal of a job whose scope cannot be had. Where a
running manager would answer (``systemctl --user``, ``systemd-run --user
--scope``), a recording stand-in on PATH answers and the tests check what the
runtime asked of it; a real user manager's side is documented in
docs/reserver.md, not tested here.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess

import pytest

from edge_runtime import systemd
from tests.edge.conftest import wait_status

RES = "orchesjob-reserver"


def _analyze() -> str | None:
    found = shutil.which("systemd-analyze")
    if found is None and os.environ.get("CI") == "true":
        pytest.fail("systemd-analyze is missing (apt-get install systemd): CI must verify the unit files")
    return found


def _verify(tmp_path, text: str, *, user: bool) -> subprocess.CompletedProcess:
    analyze = _analyze()
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "orchesjob-reserver.service"
    unit.write_text(text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))  # --user needs one, even with no manager running
    argv = [analyze, "verify", *(["--user"] if user else []), str(unit)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def _exe(tmp_path, name: str) -> str:
    path = tmp_path / "bin dir" / name  # a space: ExecStart must quote it
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


# ----------------------------------------------------------------- the unit text
def test_user_unit_text(tmp_path):
    exe = _exe(tmp_path, "orchesjob-reserver")
    text = systemd.unit_text(executable=exe, environment={"ORCHESJOB_HOME": "/srv/oj 100%"})
    lines = text.splitlines()
    service = lines[lines.index("[Service]") + 1 : lines.index("[Install]")]
    assert [line for line in service if line and not line.startswith("#")] == [
        "Type=exec",
        'Environment="ORCHESJOB_HOME=/srv/oj 100%%"',
        "Environment=ORCHESJOB_SYSTEMD_SCOPE=1",
        f'ExecStart="{exe}" run',
        "KillMode=mixed",
        "TimeoutStopSec=60",
        "Restart=on-failure",
        "RestartSec=5",
    ]
    assert lines[-1] == "WantedBy=default.target"
    assert "User=" not in text and "KillMode=process" not in text


def test_system_unit_text_runs_as_the_user_with_its_manager(tmp_path):
    exe = _exe(tmp_path, "orchesjob-reserver")
    text = systemd.unit_text(
        executable=exe, environment={"ORCHESJOB_HOME": "/var/lib/orchesjob"}, db="/d/$x.db", system_user="etl", uid=1234
    )
    assert "User=etl\n" in text
    assert "Wants=user@1234.service\n" in text
    assert "Environment=XDG_RUNTIME_DIR=/run/user/1234\n" in text
    assert f'ExecStart="{exe}" --db /d/$$x.db run\n' in text  # $ would be expanded by systemd
    assert text.endswith("WantedBy=multi-user.target\n")


@pytest.mark.parametrize("user", [True, False], ids=["user", "system"])
def test_systemd_analyze_accepts_the_units(tmp_path, user):
    exe = _exe(tmp_path, "orchesjob-reserver")
    kwargs = {} if user else {"system_user": "root", "uid": 0}
    text = systemd.unit_text(executable=exe, environment={"ORCHESJOB_HOME": "/srv/a b"}, db="/srv/a b/r.db", **kwargs)
    done = _verify(tmp_path, text, user=user)
    assert done.returncode == 0, done.stderr
    # verify reports a bad setting as a warning and still exits 0: no line may name our file.
    assert "orchesjob-reserver.service" not in done.stderr, done.stderr


def test_systemd_analyze_would_catch_a_bad_line(tmp_path):
    # The check above can fail: a mistyped setting is reported.
    exe = _exe(tmp_path, "orchesjob-reserver")
    text = systemd.unit_text(executable=exe, environment={}).replace("KillMode=mixed", "KillMode=mixd")
    done = _verify(tmp_path, text, user=False)
    assert "orchesjob-reserver.service" in done.stderr


# ----------------------------------------------------------------- orchesjob-reserver service
def _fake_manager(tmp_path) -> tuple[dict, str]:
    """A runtime dir with a listening socket where the user manager's would be, and a systemctl
    stand-in that records its arguments (one call per line)."""
    runtime = tmp_path / "rt"
    (runtime / "systemd").mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(runtime / "systemd" / "private"))
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("systemctl", "systemd-run"):
        stub = bin_dir / name
        # systemd-run --scope ... -- ARGV: records, then runs ARGV in this very process, as --scope does.
        body = 'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"' if name == "systemd-run" else "exit 0"
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\n{body}\n')
        stub.chmod(0o755)
    env = {"XDG_RUNTIME_DIR": str(runtime), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, str(calls)


def _env(runner, tmp_path, **extra) -> dict:
    env = dict(runner.env, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop(systemd.SCOPE_ENV, None)
    return {**env, **extra}


def test_service_install_without_a_manager_writes_the_unit_and_says_what_to_do(runner, tmp_path):
    env = _env(runner, tmp_path)
    printed = runner.run(RES, "service", "install", "--print", env=env)
    assert printed.code == 0, printed.err
    assert not (tmp_path / "cfg").exists()  # --print writes nothing
    assert f"Environment=ORCHESJOB_HOME={runner.home}\n" in printed.out
    assert "ExecStart=" in printed.out and "/orchesjob-reserver run\n" in printed.out

    out = runner.ok("service", "install", tool=RES, env=env)
    path = tmp_path / "cfg" / "systemd" / "user" / "orchesjob-reserver.service"
    assert out["unit_path"] == str(path) and out["changed"] is True
    assert path.read_text() == printed.out
    assert (out["user_manager"], out["enabled"], out["started"]) == (False, False, False)
    assert "systemctl --user enable --now orchesjob-reserver.service" in out["next_steps"]
    assert oct(stat.S_IMODE(path.stat().st_mode)) in ("0o644", "0o664", "0o600")

    again = runner.ok("service", "install", tool=RES, env=env)
    assert again["changed"] is False

    status = runner.ok("service", "status", tool=RES, env=env)
    assert (status["installed"], status["current"]) == (True, True)
    # Another state home now: the written unit is no longer what install would write.
    moved = runner.ok("service", "status", tool=RES, env=dict(env, ORCHESJOB_HOME=str(tmp_path / "other")))
    assert moved["current"] is False

    gone = runner.ok("service", "uninstall", tool=RES, env=env)
    assert gone["removed"] is True and not path.exists()
    assert runner.ok("service", "status", tool=RES, env=env)["installed"] is False


def test_service_install_with_a_manager_enables_and_starts_it(runner, tmp_path):
    manager, calls = _fake_manager(tmp_path)
    env = _env(runner, tmp_path, **manager)
    out = runner.ok("service", "install", tool=RES, env=env)
    assert (out["user_manager"], out["enabled"], out["started"]) == (True, True, True)
    with open(calls) as f:
        assert f.read().splitlines() == [
            "systemctl --user daemon-reload",
            "systemctl --user try-restart orchesjob-reserver.service",
            "systemctl --user enable --now orchesjob-reserver.service",
        ]
    os.unlink(calls)
    again = runner.ok("service", "install", "--no-start", tool=RES, env=env)  # unchanged: no restart
    assert (again["changed"], again["started"]) == (False, False)
    with open(calls) as f:
        assert f.read().splitlines() == [
            "systemctl --user daemon-reload",
            "systemctl --user enable orchesjob-reserver.service",
        ]
    os.unlink(calls)
    runner.ok("service", "uninstall", tool=RES, env=env)
    with open(calls) as f:
        assert f.read().splitlines() == [
            "systemctl --user disable --now orchesjob-reserver.service",
            "systemctl --user daemon-reload",
        ]


def test_a_failing_systemctl_is_a_json_error(runner, tmp_path):
    manager, calls = _fake_manager(tmp_path)
    (tmp_path / "fakebin" / "systemctl").write_text('#!/bin/sh\necho "Failed to connect to bus" >&2\nexit 1\n')
    r = runner.run(RES, "service", "install", env=_env(runner, tmp_path, **manager))
    assert r.code == 1
    assert r.error["error"] == "systemctl --user daemon-reload failed (exit 1): Failed to connect to bus"
    assert (tmp_path / "cfg" / "systemd" / "user" / "orchesjob-reserver.service").exists()


def test_service_usage_errors_are_json(runner, tmp_path):
    env = _env(runner, tmp_path)
    r = runner.run(RES, "service", "install", "--system", env=env)
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments"
    assert "sudo tee /etc/systemd/system/orchesjob-reserver.service" in r.error["error"]
    r = runner.run(RES, "service", "status", "--print", env=env)
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments"
    r = runner.run(RES, "service", "restart", env=env)
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments"


# ----------------------------------------------------------------- a scope per job
def test_scope_argv():
    assert systemd.scope_argv("/usr/bin/systemd-run", "j1", ["python", "-I"]) == [
        "/usr/bin/systemd-run",
        "--user",
        "--scope",
        "--quiet",
        "--collect",
        "--unit=orchesjob-j1",
        "--description=orchesjob job j1",
        "--",
        "python",
        "-I",
    ]


def test_required_scope_without_a_manager_fails_before_the_claim(runner, tmp_path):
    env = _env(runner, tmp_path, ORCHESJOB_SYSTEMD_SCOPE="1")
    marker = tmp_path / "ran"
    r = runner.oj("start", "--run-key", "k", "--", "touch", str(marker), env=env)
    assert r.code == 1, r.err
    assert r.error["error_type"] == "systemd_unavailable"
    assert "nothing was started" in r.error["error"]
    assert runner.oj("status", "--run-key", "k").code == 3  # no job row: nothing was claimed
    assert not marker.exists()


def test_auto_scope_without_a_manager_runs_unscoped(runner, tmp_path):
    env = _env(runner, tmp_path, ORCHESJOB_SYSTEMD_SCOPE="auto")
    runner.ok("start", "--run-key", "k", "--", "true", env=env)
    assert wait_status(runner, "k")["status"] == "SUCCEEDED"
    assert runner.ok("info", env=env)["systemd"] == {"scope": "auto", "user_manager": False}


def test_bad_scope_setting_is_a_usage_error(runner, tmp_path):
    r = runner.oj("start", "--run-key", "k", "--", "true", env=_env(runner, tmp_path, ORCHESJOB_SYSTEMD_SCOPE="maybe"))
    assert r.code == 2 and r.error["error_type"] == "invalid_arguments"


def test_scoped_job_runs_its_supervisor_through_systemd_run(runner, tmp_path):
    manager, calls = _fake_manager(tmp_path)
    env = _env(runner, tmp_path, ORCHESJOB_SYSTEMD_SCOPE="1", **manager)
    job = runner.ok("start", "--run-key", "k", "--", "sh", "-c", "echo scoped", env=env)
    done = wait_status(runner, "k")
    assert done["status"] == "SUCCEEDED"
    with open(calls) as f:
        (call,) = f.read().splitlines()
    assert call.startswith(
        f"systemd-run --user --scope --quiet --collect --unit=orchesjob-{job['job_id']} "
        f"--description=orchesjob job {job['job_id']} -- "
    )
    assert f"-I -m edge_runtime supervisor {runner.home}/orchesjob.db {job['job_id']} " in call


def test_scope_that_cannot_be_made_never_runs_the_job(runner, tmp_path):
    manager, calls = _fake_manager(tmp_path)
    failing = tmp_path / "fakebin" / "systemd-run"
    failing.write_text(
        f'#!/bin/sh\necho "systemd-run $*" >> "{calls}"\necho "Failed to start transient scope" >&2\nexit 1\n'
    )
    env = _env(runner, tmp_path, ORCHESJOB_SYSTEMD_SCOPE="1", **manager)
    marker = tmp_path / "ran"
    runner.run("orchesjob", "start", "--run-key", "k", "--", "touch", str(marker), env=env)
    job = wait_status(runner, "k")
    assert job["status"] == "NEVER_LAUNCHED"
    assert os.path.exists(calls) and not marker.exists()
