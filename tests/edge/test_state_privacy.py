"""Private state (file and directory modes), one home per user, and isolated re-executed interpreters.

Every test runs the real console scripts. ``ORCHESJOB_TEST_SYSTEM_HOME`` stands in
for ``/var/lib/orchesjob`` so that no test touches the real one.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import IN_CI
from tests.edge.conftest import wait_until

NOBODY = 65534


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def all_modes(root) -> dict[str, int]:
    out = {}
    for directory, _dirs, files in os.walk(root):
        out[directory] = mode(directory)
        for name in files:
            full = os.path.join(directory, name)
            if not stat.S_ISFIFO(os.lstat(full).st_mode):
                out[full] = mode(full)
    return out


def default_env(runner, tmp_path, *, system=None, xdg=None):
    """The runner's environment without ORCHESJOB_HOME: the default resolution decides."""
    env = dict(runner.env)
    env.pop("ORCHESJOB_HOME", None)
    env["ORCHESJOB_TEST_SYSTEM_HOME"] = str(system or tmp_path / "var-lib-orchesjob")
    env["XDG_DATA_HOME"] = str(xdg or tmp_path / "xdg")
    return env


def test_every_file_0600_and_directory_0700_with_a_loose_umask(runner, tmp_path):
    flow_file = tmp_path / "f.yaml"
    flow_file.write_text('flow_id: f\nsteps:\n  - id: a\n    command: ["sh", "-c", "echo flow"]\n')
    umask = os.umask(0o002)  # what many distributions give interactive users
    try:
        runner.ok("start", "--run-key", "k", "--sync", "--", "sh", "-c", "echo out; echo err >&2")
        runner.ok("reserve", "--run-key", "r", "--", "true", tool="orchesjob-reserver")
        assert runner.run("orchesjob-reserver", "run", "--once").code == 0
        runner.ok("start", "--run-key", "fl", "-d", str(flow_file), tool="orchesjob-flow")
        wait_until(lambda: runner.ok("status", "--run-key", "fl", tool="orchesjob-flow")["status"] == "SUCCEEDED")
        # A command run by a job keeps the caller's umask: the runtime never changes it.
        job = runner.ok("start", "--run-key", "u", "--sync", "--", "sh", "-c", "umask")
    finally:
        os.umask(umask)
    with open(job["stdout_file"]) as f:
        assert f.read().strip() == "0002"
    modes = all_modes(runner.home)
    names = {os.path.basename(p) for p in modes}
    assert {"orchesjob.db", "reserver.sqlite3", "orchesjob-flow.sqlite3", "orchesjob-flow-fl.stdout.log"} <= names
    assert any(n.endswith(".stdout") for n in names)
    loose = {p: oct(m) for p, m in modes.items() if m != (0o700 if os.path.isdir(p) else 0o600)}
    assert not loose, loose


def test_wal_and_shm_files_are_private_while_open(runner, tmp_path):
    runner.ok("start", "--run-key", "k", "--sync", "--", "true")
    # A reader holding the database open keeps -wal/-shm in place.
    db = os.path.join(runner.home, "orchesjob.db")
    import sqlite3

    conn = sqlite3.connect(db)
    try:
        conn.execute("SELECT count(*) FROM jobs").fetchone()
        runner.ok("start", "--run-key", "k2", "--sync", "--", "true")
        for suffix in ("-wal", "-shm"):
            assert os.path.exists(db + suffix)
            assert mode(db + suffix) == 0o600
    finally:
        conn.close()


def test_own_loose_home_is_tightened_with_its_old_files(runner, tmp_path):
    home = runner.home
    os.makedirs(os.path.join(home, "logs"))
    os.chmod(home, 0o777)
    os.chmod(os.path.join(home, "logs"), 0o755)
    old_log = os.path.join(home, "logs", "old.stdout")
    with open(old_log, "w") as f:
        f.write("x")
    os.chmod(old_log, 0o644)
    runner.ok("status", "--running")
    assert mode(home) == 0o700
    assert mode(os.path.join(home, "logs")) == 0o700
    assert mode(old_log) == 0o600
    assert mode(os.path.join(home, "orchesjob.db")) == 0o600


def test_existing_loose_database_file_is_tightened(runner):
    runner.ok("status", "--running")
    db = os.path.join(runner.home, "orchesjob.db")
    os.chmod(db, 0o644)
    runner.ok("status", "--running")
    assert mode(db) == 0o600


@pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="needs root to make a directory owned by another user")
def test_foreign_world_writable_home_is_refused_and_nothing_written(runner, tmp_path):
    assert os.geteuid() == 0, "this test needs root (chown) in CI"
    home = runner.home
    os.makedirs(home)
    os.chown(home, NOBODY, NOBODY)
    os.chmod(home, 0o777)
    for tool, args in (
        ("orchesjob", ("start", "--run-key", "k", "--", "true")),
        ("orchesjob", ("info",)),
        ("orchesjob-reserver", ("reserve", "--run-key", "k", "--", "true")),
        ("orchesjob-flow", ("status", "--run-key", "k")),
    ):
        r = runner.run(tool, *args)
        assert r.code == 1, (tool, r.code, r.err)
        error = r.error
        assert error["error_type"] == "unsafe_home" and "writable by other users" in error["error"]
    assert os.listdir(home) == []
    assert mode(home) == 0o777


def test_home_sticks_to_the_one_holding_the_database(runner, tmp_path):
    env = default_env(runner, tmp_path)
    system, user = env["ORCHESJOB_TEST_SYSTEM_HOME"], os.path.join(env["XDG_DATA_HOME"], "orchesjob")
    # /var/lib/orchesjob does not exist and cannot be created (no parent): the per-user home is used.
    os.makedirs(env["XDG_DATA_HOME"])
    env["ORCHESJOB_TEST_SYSTEM_HOME"] = system = str(tmp_path / "missing-parent" / "orchesjob")
    first = runner.ok("start", "--run-key", "k", "--sync", "--", "true", env=env)
    assert first["stdout_file"].startswith(user + os.sep)
    assert runner.ok("info", env=env)["orchesjob_home"] == user
    # Now /var/lib/orchesjob becomes writable: later calls still resolve to the per-user home.
    os.makedirs(system, mode=0o700)
    info = runner.ok("info", env=env)
    assert info["orchesjob_home"] == user and info["orchesjob_db"] == os.path.join(user, "orchesjob.db")
    again = runner.ok("status", "--run-key", "k", env=env)
    assert again["job_id"] == first["job_id"]
    reservation = runner.ok("reserve", "--run-key", "r", "--", "true", env=env, tool="orchesjob-reserver")
    assert reservation["created"] is True
    assert os.path.exists(os.path.join(user, "reserver.sqlite3"))
    assert os.listdir(system) == []


def test_fresh_user_gets_the_writable_system_home_and_keeps_it(runner, tmp_path):
    env = default_env(runner, tmp_path)
    system = env["ORCHESJOB_TEST_SYSTEM_HOME"]
    os.makedirs(system, mode=0o700)
    runner.ok("start", "--run-key", "k", "--sync", "--", "true", env=env)
    assert os.path.exists(os.path.join(system, "orchesjob.db"))
    assert runner.ok("info", env=env)["orchesjob_home"] == system


def test_two_homes_holding_databases_is_an_error_not_a_split(runner, tmp_path):
    env = default_env(runner, tmp_path)
    system, user = env["ORCHESJOB_TEST_SYSTEM_HOME"], os.path.join(env["XDG_DATA_HOME"], "orchesjob")
    for home in (system, user):
        runner.ok("start", "--run-key", "k", "--sync", "--", "true", env=dict(env, ORCHESJOB_HOME=home))
    before = {h: sorted(os.listdir(h)) for h in (system, user)}
    for tool, args in (
        ("orchesjob", ("status", "--run-key", "k")),
        ("orchesjob", ("start", "--run-key", "k2", "--", "true")),
        ("orchesjob", ("info",)),
        ("orchesjob-reserver", ("list",)),
    ):
        r = runner.run(tool, *args, env=env)
        assert r.code == 1, (tool, r.code, r.out, r.err)
        error = r.error
        assert error["error_type"] == "ambiguous_home"
        assert system in error["error"] and user in error["error"] and "ORCHESJOB_HOME" in error["error"]
    assert {h: sorted(os.listdir(h)) for h in (system, user)} == before
    # An explicit ORCHESJOB_HOME always wins.
    assert runner.ok("status", "--run-key", "k", env=dict(env, ORCHESJOB_HOME=user))["status"] == "SUCCEEDED"


def test_detached_flow_advancer_never_imports_from_the_callers_directory(runner, tmp_path):
    cwd = tmp_path / "caller"
    cwd.mkdir()
    marker = tmp_path / "planted-module-ran"
    for name in ("json.py", "sqlite3.py", "argparse.py", "yaml.py"):
        (cwd / name).write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")
    (cwd / "flow.yaml").write_text('flow_id: f\nsteps:\n  - id: a\n    command: ["sh", "-c", "echo ok"]\n')
    r = runner.run("orchesjob-flow", "start", "-d", "--run-key", "iso", "flow.yaml", cwd=str(cwd))
    assert r.code == 0, r.err
    started = r.json
    assert started["detached"] is True
    done = wait_until(
        lambda: (p := runner.ok("status", "--run-key", "iso", tool="orchesjob-flow"))["status"] == "SUCCEEDED" and p
    )
    assert done["steps"][0]["status"] == "SUCCEEDED"
    assert not marker.exists(), marker.read_text()
    with open(started["stderr_log"]) as f:
        assert "Traceback" not in f.read()


def test_advancer_command_line_is_isolated():
    # The same rule seen from the outside: how the advancer is started.
    code = "from edge_runtime.cli.flow import advancer_argv; import json; print(json.dumps(advancer_argv('x')))"
    argv = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert argv[1] == "-I" and argv[-1] == "x" and "-m" not in argv


def test_sticky_shared_directory_is_refused_never_tightened(runner):
    # What ORCHESJOB_HOME=/tmp would be: chmod-ing it to 0700 would break the host.
    home = runner.home
    os.makedirs(home)
    os.chmod(home, 0o1777)
    r = runner.oj("status", "--running")
    assert r.code == 1 and r.error["error_type"] == "unsafe_home" and "sticky" in r.error["error"]
    assert mode(home) == 0o1777 and os.listdir(home) == []


def test_home_others_may_only_read_is_left_as_it_is(runner):
    home = runner.home
    os.makedirs(home)
    os.chmod(home, 0o755)
    runner.ok("start", "--run-key", "k", "--sync", "--", "true")
    assert mode(home) == 0o755
    assert mode(os.path.join(home, "orchesjob.db")) == 0o600 and mode(os.path.join(home, "logs")) == 0o700
