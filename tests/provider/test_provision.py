"""The runtime archive of agentless hosts, without a host: its build, and the shell lines that
install and run it, executed by a real /bin/sh and python3 in a temporary $HOME."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import stat
import subprocess
import sys
import zipfile

import pytest

import edge_runtime
from airflow_provider_orchesjob.exceptions import (
    OrchesJobProvisionError,
    OrchesJobRuntimeIncompatible,
    OrchesJobRuntimeNotProvisioned,
)
from airflow_provider_orchesjob.hooks import commands, provision
from airflow_provider_orchesjob.hooks.orchesjob import check_result
from airflow_provider_orchesjob.hooks.transport import CommandResult, EdgeSettings, SSHConfig

PYTHON = sys.executable


def build(version=None):
    """A fresh build (not the per-process cached one)."""
    return provision.build_archive.__wrapped__(version)


def sh(line: str, home: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {"HOME": home, "PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    return subprocess.run(["/bin/sh", "-c", line], input=stdin, capture_output=True, env=env, timeout=120)


def installed(home: str, archive: provision.RuntimeArchive) -> str:
    return os.path.join(home, commands.RUNTIME_CACHE, archive.directory, commands.ARCHIVE)


def assert_same_archive_with_bytecode(path: str, archive: provision.RuntimeArchive, magic: bytes) -> None:
    """``path`` holds exactly the entries of ``archive`` (the verified upload), plus a pyc for the
    interpreter with ``magic`` beside each module."""
    sent = zipfile.ZipFile(io.BytesIO(archive.data))
    with zipfile.ZipFile(path) as got:
        names = set(got.namelist())
        modules = {n[:-3] + ".pyc" for n in sent.namelist() if n.endswith(".py") and n != "__main__.py"}
        assert names == set(sent.namelist()) | modules
        for name in sent.namelist():
            assert got.read(name) == sent.read(name), name
        for name in modules:
            assert got.read(name)[:4] == magic, name


def test_build_is_deterministic_and_named_by_its_hash():
    first, second = build(), build()
    assert first.data == second.data
    assert first.sha256 == hashlib.sha256(first.data).hexdigest()
    assert first.version == edge_runtime.__version__
    assert first.directory == f"{edge_runtime.__version__}-{first.sha256[:16]}"
    assert provision.build_archive() is provision.build_archive()  # built once per process

    names = zipfile.ZipFile(io.BytesIO(first.data)).namelist()
    assert names == sorted(names)
    assert {"__main__.py", "edge_runtime/__main__.py", "edge_runtime/cli/orchesjob.py", "yaml/__init__.py"} <= set(
        names
    )
    assert "LICENSES/PyYAML.txt" in names
    # Sources only: no compiled extension (PyYAML's _yaml) and no bytecode of this worker's Python.
    assert all(n.endswith(".py") or n.startswith("LICENSES/") for n in names)
    for info in zipfile.ZipFile(io.BytesIO(first.data)).infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0) and info.compress_type == zipfile.ZIP_STORED


def test_another_version_is_another_archive_and_directory(tmp_path):
    base, other = build(), build("0.1.0.post7")
    assert other.sha256 != base.sha256 and other.directory.startswith("0.1.0.post7-")
    path = tmp_path / "o.pyz"
    path.write_bytes(other.data)
    env = {"ORCHESJOB_HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"]}
    info = subprocess.run([PYTHON, "-I", str(path), "orchesjob", "info"], capture_output=True, env=env, check=True)
    assert json.loads(info.stdout)["version"] == "0.1.0.post7"
    with pytest.raises(ValueError):
        build("../x")


def test_archive_runs_each_cli_and_its_own_pure_python_yaml(tmp_path):
    path = tmp_path / "o.pyz"
    path.write_bytes(build().data)
    env = {"ORCHESJOB_HOME": str(tmp_path / "home"), "PATH": os.environ["PATH"]}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-I", str(path), *args], capture_output=True, env=env, timeout=60)

    job = json.loads(run("orchesjob", "start", "--run-key", "k", "--sync", "--", "sh", "-c", "echo hi").stdout)
    assert job["status"] == "SUCCEEDED"
    assert json.loads(run("orchesjob-reserver", "list").stdout) is not None
    flow = tmp_path / "f.yaml"
    flow.write_text('flow_id: f\nsteps:\n  - id: a\n    command: ["true"]\n')
    assert json.loads(run("orchesjob-flow", "start", "--run-key", "f", str(flow)).stdout)["status"] == "SUCCEEDED"
    assert "orchesjob-reserver" in run("--help").stdout.decode()
    bad = run("nonsense")
    assert bad.returncode == 2 and json.loads(bad.stderr)["error_type"] == "invalid_arguments"
    # PyYAML comes from the archive, without its C extension.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import yaml; "
        "print(yaml.__file__.startswith(sys.argv[1]), yaml.__with_libyaml__, yaml.safe_load('a: [1, 2]'))"
    )
    out = subprocess.run([PYTHON, "-I", "-c", probe, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "{'a':", "[1,", "2]}"]


def test_too_old_interpreter_is_a_clear_error():
    code = "import sys, edge_runtime.__main__ as m; m.MIN_PYTHON = (99, 0); sys.argv = ['x', 'orchesjob']; m.main()"
    p = subprocess.run([PYTHON, "-c", code], capture_output=True)
    assert p.returncode == 98
    error = json.loads(p.stderr)
    assert error["error_type"] == "unsupported_python" and "99.0" in error["error"]
    with pytest.raises(OrchesJobRuntimeIncompatible):
        check_result(["orchesjob", "info"], CommandResult(p.returncode, b"", p.stderr), "h")


def test_missing_archive_exits_before_running_anything(tmp_path):
    archive = build()
    line = commands.provisioned_command_line(
        ["orchesjob", "start", "--run-key", "k", "--", "touch", str(tmp_path / "ran")],
        directory=archive.directory,
        python=PYTHON,
        env={"ORCHESJOB_HOME": str(tmp_path / "h o")},
    )
    p = sh(line, str(tmp_path))
    assert p.returncode == commands.RUNTIME_MISSING_EXIT and p.stdout == b""
    assert provision.archive_missing(p.returncode, p.stderr)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "h o").exists()
    with pytest.raises(OrchesJobRuntimeNotProvisioned):
        check_result(["orchesjob", "info"], CommandResult(p.returncode, p.stdout, p.stderr), "h")
    # The same exit status without the marker is whatever the CLI said, not a missing archive.
    assert not provision.archive_missing(commands.RUNTIME_MISSING_EXIT, b"something else")


@pytest.mark.parametrize("word", ["a;b", "$(touch /tmp/x)", "`id`", "it's", "two\nlines", "ünïcödé", "--", ""])
def test_install_then_run_through_a_real_shell(tmp_path, word):
    archive = build()
    script = commands.install_runtime_script(archive.directory, archive.sha256, python=PYTHON)
    p = sh(script, str(tmp_path), stdin=archive.data)
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    provision.check_installed(p.returncode, p.stderr, archive, "h")
    path = installed(str(tmp_path), archive)
    assert_same_archive_with_bytecode(path, archive, importlib.util.MAGIC_NUMBER)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    for directory in (
        os.path.dirname(path),
        os.path.dirname(os.path.dirname(path)),
        str(tmp_path / ".cache/orchesjob"),
    ):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert os.listdir(os.path.dirname(path)) == [commands.ARCHIVE]  # no temporary file left

    env = {"ORCHESJOB_HOME": str(tmp_path / "state")}
    run_key = f"k{word}"
    line = commands.provisioned_command_line(
        ["orchesjob", "start", "--run-key", run_key, "--sync", "--", "printf", "%s", word],
        directory=archive.directory,
        python=PYTHON,
        env=env,
    )
    p = sh(line, str(tmp_path))
    assert p.returncode == 0, p.stderr
    job = json.loads(p.stdout)
    assert job["run_key"] == run_key and job["status"] == "SUCCEEDED"
    with open(job["stdout_file"], encoding="utf-8") as f:
        assert f.read() == word


def test_install_never_replaces_an_installed_archive(tmp_path):
    """A second install of the same archive (a concurrent first contact) leaves the file in place untouched:
    a running process reads modules from it by offset."""
    archive = build()
    script = commands.install_runtime_script(archive.directory, archive.sha256, python=PYTHON)
    assert sh(script, str(tmp_path), stdin=archive.data).returncode == 0
    path = installed(str(tmp_path), archive)
    before = os.stat(path)
    p = sh(script, str(tmp_path), stdin=archive.data)
    assert p.returncode == 0, p.stderr
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert os.listdir(os.path.dirname(path)) == [commands.ARCHIVE]


def test_bytecode_step_failing_installs_the_sources_alone(tmp_path):
    """An interpreter that cannot add bytecode (here: one the runtime deems too old) still gets the verified
    archive, with a warning; its calls then report the interpreter clearly."""
    archive = build()
    fake = tmp_path / "python-too-old"
    fake.write_text(f'#!/bin/sh\ncase "$3" in bytecode) echo old >&2; exit 98;; esac\nexec {PYTHON} "$@"\n')
    fake.chmod(0o755)
    script = commands.install_runtime_script(archive.directory, archive.sha256, python=str(fake))
    p = sh(script, str(tmp_path), stdin=archive.data)
    assert p.returncode == 0 and b"no bytecode added" in p.stderr
    with open(installed(str(tmp_path), archive), "rb") as f:
        assert f.read() == archive.data


def test_tampered_upload_is_refused_and_removed(tmp_path):
    archive = build()
    tampered = dataclasses.replace(archive, data=archive.data[:-1] + bytes([archive.data[-1] ^ 1]))
    script = commands.install_runtime_script(tampered.directory, tampered.sha256, python=PYTHON)
    p = sh(script, str(tmp_path), stdin=tampered.data)
    assert p.returncode == commands.RUNTIME_HASH_MISMATCH_EXIT
    with pytest.raises(OrchesJobProvisionError, match="does not have sha256"):
        provision.check_installed(p.returncode, p.stderr, tampered, "h")
    assert os.listdir(os.path.dirname(installed(str(tmp_path), archive))) == []


def test_missing_interpreter_is_named():
    archive = build()
    with pytest.raises(OrchesJobRuntimeIncompatible, match="provision_python"):
        provision.check_installed(127, b"sh: 1: python9: not found", archive, "h")
    with pytest.raises(ValueError):
        commands.install_runtime_script(archive.directory, "not-a-hash")
    with pytest.raises(ValueError):
        commands.provisioned_command_line(["orchesjob", "info"], directory="../../etc")


def test_connection_extras_switch_the_command_line():
    class Conn:
        conn_id, host, port, login, password = "c", "h", 22, "u", None
        extra_dejson = {"provision_runtime": True, "provision_python": "/opt/py 3/bin/python3"}

    cfg = SSHConfig.from_connection(Conn())
    assert cfg.edge.provision and cfg.edge.python == "/opt/py 3/bin/python3"
    line = cfg.edge.command_line(["orchesjob", "info"])
    assert line.endswith(
        f"exec '/opt/py 3/bin/python3' -I \"$HOME\"/{commands.RUNTIME_CACHE}/"
        f"{provision.build_archive().directory}/orchesjob.pyz orchesjob info"
    )
    assert "PATH=" not in line
    assert not EdgeSettings().provision and "exec orchesjob info" in EdgeSettings().command_line(["orchesjob", "info"])


def test_a_connection_lost_during_the_upload_leaves_the_call_resendable():
    from airflow_provider_orchesjob.exceptions import OrchesJobConnectionError, OrchesJobHostKeyError
    from airflow_provider_orchesjob.hooks.orchesjob import _upload_failures

    with pytest.raises(OrchesJobConnectionError) as caught:
        with _upload_failures():
            raise OrchesJobConnectionError("session lost", sent=True)
    assert caught.value.sent is False and caught.value.retryable
    with pytest.raises(OrchesJobHostKeyError):  # never made retryable
        with _upload_failures():
            raise OrchesJobHostKeyError("changed host key")
