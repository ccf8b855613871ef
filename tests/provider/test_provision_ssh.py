"""Agentless hosts against a real sshd: a user with no runtime installed, whom the hook provisions itself."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import stat
import threading
import uuid

import pytest

from airflow_provider_orchesjob.exceptions import (
    OrchesJobNotFound,
    OrchesJobProvisionError,
    OrchesJobRuntimeIncompatible,
)
from airflow_provider_orchesjob.hooks import OrchesJobHook, commands, provision

from .conftest import set_connection, wait_terminal
from .test_provision import assert_same_archive_with_bytecode

CONN_ID = "orchesjob_bare"


@pytest.fixture
def bare_conn(bare_ssh_server):
    """A provisioning connection to the bare user, with a fresh state home and an empty archive cache."""
    shutil.rmtree(os.path.join(bare_ssh_server.home, ".cache", "orchesjob"), ignore_errors=True)
    home = os.path.join(bare_ssh_server.home, ".orchesjob-tests", uuid.uuid4().hex)
    return set_connection(CONN_ID, bare_ssh_server, orchesjob_home=home, provision_runtime=True)


def hook_for(conn_id: str, archive: provision.RuntimeArchive | None = None) -> OrchesJobHook:
    """A hook whose host runs ``archive`` (default: this provider's own) — another archive stands for
    another provider version on another worker."""
    hook = OrchesJobHook(conn_id)
    if archive is not None:
        hook.ssh_config().edge.archive = archive
    return hook


def archive_dir(server, archive: provision.RuntimeArchive) -> str:
    return os.path.join(server.home, commands.RUNTIME_CACHE, archive.directory)


def assert_installed(server, archive: provision.RuntimeArchive) -> None:
    """Exactly one file in the archive's directory: the archive, intact (plus the host python's bytecode),
    private and read-only."""
    directory = archive_dir(server, archive)
    assert os.listdir(directory) == [commands.ARCHIVE]
    path = os.path.join(directory, commands.ARCHIVE)
    magic = server.ssh("python3 -c 'import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())'").stdout
    assert_same_archive_with_bytecode(path, archive, bytes.fromhex(magic.strip()))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert os.stat(path).st_uid == os.stat(server.home).st_uid


def supervisor_argv(hook: OrchesJobHook, job_id: str) -> list[str]:
    """The command line of the process supervising ``job_id`` on the (loopback) host: the
    ``start`` process it was forked from, so the archive that started the job."""
    pid = hook.job_status(job_id=job_id)["worker_pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode(errors="replace").split("\0")


def test_first_contact_provisions_then_jobs_run_from_the_archive(bare_conn, bare_ssh_server):
    server = bare_ssh_server
    # Nothing of the runtime on this host: no pipx install, no CLI on any path.
    assert server.ssh("command -v orchesjob || ls ~/.local/bin/orchesjob").returncode != 0
    assert not os.path.exists(os.path.join(server.home, commands.RUNTIME_CACHE))

    hook = hook_for(bare_conn)
    archive = provision.build_archive()
    sessions = server.sessions()
    job = hook.start_job("p1", ["sh", "-c", "echo from-the-archive; sleep 1"])
    assert job["accepted"]
    # The start (archive missing: nothing ran), the upload, the start again: no round trip beyond those.
    assert server.sessions() - sessions == 3
    assert_installed(server, archive)
    argv = supervisor_argv(hook, job["job_id"])
    assert argv[1:5] == ["-I", os.path.join(archive_dir(server, archive), commands.ARCHIVE), "orchesjob", "start"]

    final = wait_terminal(hook, "p1")
    assert final["status"] == "SUCCEEDED" and final["exit_code"] == 0
    assert hook.job_logs("p1") == b"from-the-archive\n"
    assert hook.runtime_info()["version"] == archive.version

    # A second hook (another task) finds the archive in place: no upload.
    sessions = server.sessions()
    assert hook_for(bare_conn).job_status("p1")["status"] == "SUCCEEDED"
    assert server.sessions() - sessions == 2  # info + status
    assert hook.provision_runtime()["sha256"] == archive.sha256  # explicit and repeatable
    assert_installed(server, archive)


def test_new_version_is_provisioned_beside_a_running_job_of_the_old(bare_conn, bare_ssh_server):
    server = bare_ssh_server
    old = provision.build_archive()
    new = provision.build_archive(f"{old.version}.post1")
    old_hook = hook_for(bare_conn)
    job = old_hook.start_job("upgrade", ["sh", "-c", "sleep 3; echo old-job-done"])
    old_path = os.path.join(archive_dir(server, old), commands.ARCHIVE)
    assert supervisor_argv(old_hook, job["job_id"])[2] == old_path

    new_hook = hook_for(bare_conn, new)
    assert new_hook.runtime_info()["version"] == new.version
    assert sorted(os.listdir(os.path.join(server.home, commands.RUNTIME_CACHE))) == sorted(
        [old.directory, new.directory]
    )
    assert_installed(server, old)
    assert_installed(server, new)
    # The old job runs on, supervised from the old archive, and is seen through the new one.
    assert new_hook.job_status("upgrade")["status"] == "RUNNING"
    assert supervisor_argv(new_hook, job["job_id"])[2] == old_path
    second = new_hook.start_job("upgraded", ["sleep", "1"])
    assert supervisor_argv(new_hook, second["job_id"])[2] == os.path.join(archive_dir(server, new), commands.ARCHIVE)

    final = wait_terminal(new_hook, "upgrade")
    assert final["status"] == "SUCCEEDED" and final["exit_code"] == 0
    assert new_hook.job_logs("upgrade") == b"old-job-done\n"
    assert wait_terminal(new_hook, "upgraded")["status"] == "SUCCEEDED"
    assert_installed(server, old)


def test_tampered_upload_is_refused_and_never_run(bare_conn, bare_ssh_server):
    server = bare_ssh_server
    good = provision.build_archive()
    tampered = dataclasses.replace(good, data=good.data.replace(b"def main", b"def mian", 1))
    assert tampered.data != good.data
    hook = hook_for(bare_conn, tampered)
    with pytest.raises(OrchesJobProvisionError, match="does not have sha256"):
        hook.provision_runtime()
    with pytest.raises(OrchesJobProvisionError, match="does not have sha256"):
        hook.start_job("never", ["touch", os.path.join(server.home, "tampered-ran")])
    assert os.listdir(archive_dir(server, good)) == []  # neither the bad bytes nor a temporary file
    assert not os.path.exists(os.path.join(server.home, "tampered-ran"))

    # The genuine archive then installs into the same directory and works.
    assert hook_for(bare_conn).start_job("after", ["true"], sync=True)["status"] == "SUCCEEDED"
    assert_installed(server, good)


def test_concurrent_first_contacts_leave_one_good_archive(bare_conn, bare_ssh_server):
    server = bare_ssh_server
    archive = provision.build_archive(f"{provision.build_archive().version}.post2")
    hooks = [hook_for(bare_conn, archive) for _ in range(8)]
    barrier = threading.Barrier(len(hooks))
    results: list = [None] * len(hooks)

    def first_contact(i: int) -> None:
        barrier.wait()
        try:
            results[i] = hooks[i].start_job(f"c{i}", ["true"], sync=True)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=first_contact, args=(i,)) for i in range(len(hooks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [r["status"] if isinstance(r, dict) else r for r in results] == ["SUCCEEDED"] * len(hooks)
    assert_installed(server, archive)


def test_triggerer_provisions_from_async_polls(bare_conn, bare_ssh_server):
    """A triggerer upgraded while tasks are deferred: its first polls find its archive missing."""
    server = bare_ssh_server
    old_hook = hook_for(bare_conn)
    job = old_hook.start_job("deferred", ["sleep", "1"])
    status_archive = provision.build_archive(f"{provision.build_archive().version}.post3")
    poll_archive = provision.build_archive(f"{provision.build_archive().version}.post4")

    async def polls() -> tuple[dict, list]:
        status = await hook_for(bare_conn, status_archive).ajob_status("deferred")
        # Flow polls share a session through the command batcher; each sees the archive missing once.
        pollers = [hook_for(bare_conn, poll_archive) for _ in range(3)]
        flows = await asyncio.gather(*(h.aflow_poll("no-such-flow") for h in pollers), return_exceptions=True)
        return status, flows

    status, flows = asyncio.run(polls())
    assert status["job_id"] == job["job_id"]
    assert all(isinstance(f, OrchesJobNotFound) for f in flows), flows
    assert_installed(server, status_archive)
    assert_installed(server, poll_archive)
    assert wait_terminal(old_hook, "deferred")["status"] == "SUCCEEDED"


def test_a_missing_interpreter_is_named(bare_ssh_server):
    server = bare_ssh_server
    shutil.rmtree(os.path.join(server.home, ".cache", "orchesjob"), ignore_errors=True)
    conn_id = set_connection("orchesjob_bare_nopy", server, provision_runtime=True,
                             provision_python="/nonexistent/python3")  # fmt: skip
    with pytest.raises(OrchesJobRuntimeIncompatible, match="provision_python"):
        OrchesJobHook(conn_id).runtime_info()
    assert os.listdir(archive_dir(server, provision.build_archive())) == []  # nothing half-installed
