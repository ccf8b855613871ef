"""Jump hosts (ProxyJump) on both SSH paths, against two real sshd (see tests/jump_harness.py).

The edge host's sshd lives in a private network namespace: only the jump host's sshd can
open a connection to it. Every test that reaches the edge host therefore went through the
jump host, with host keys checked at both hops.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid

import pytest

from airflow_provider_orchesjob.exceptions import (
    OrchesJobAuthenticationError,
    OrchesJobConnectionError,
    OrchesJobHostKeyError,
)
from airflow_provider_orchesjob.hooks import OrchesJobHook
from airflow_provider_orchesjob.triggers import OrchesJobTrigger
from tests.conftest import require
from tests.jump_harness import JumpServer, PrivateNetwork, missing_parts
from tests.sshd_harness import TEST_USER, SSHServer

from .conftest import set_connection

WRONG_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


class Bastion:
    """The edge host (``inner``) behind ``jump``, and a known_hosts file that knows both."""

    def __init__(self, inner: SSHServer, jump: JumpServer, known_hosts: str) -> None:
        self.inner, self.jump, self.known_hosts = inner, jump, known_hosts

    @property
    def hop(self) -> str:
        return f"{self.jump.user}@{self.jump.host}:{self.jump.port}"

    def hop_object(self, **own) -> dict:
        """The jump host as a JSON object, with settings of its own."""
        return {"host": self.jump.host, "port": self.jump.port, "username": self.jump.user, **own}

    def connection(self, conn_id: str, **extra) -> str:
        """A connection to the edge host through the jump host (``extra`` overrides), with a fresh state home."""
        home = os.path.join(self.inner.home, ".orchesjob-tests", uuid.uuid4().hex)
        extra = {"jump_hosts": self.hop, "known_hosts": self.known_hosts, "orchesjob_home": home, **extra}
        return set_connection(conn_id, self.inner, **extra)


@pytest.fixture(scope="module")
def bastion(ssh_server):
    """The session's sshd installed the runtime for the test user; the edge host here is the same user."""
    require(not missing_parts(), ", ".join(missing_parts()))
    network = PrivateNetwork()
    workdir = tempfile.mkdtemp(prefix="orchesjob-jump-")
    os.chmod(workdir, 0o755)  # sshd reads authorized_keys as the test users
    inner = jump = None
    try:
        inner = SSHServer.create(os.path.join(workdir, "inner"), install_runtime=False, host="127.0.0.2",
                                 launcher=network.launcher)  # fmt: skip
        jump = JumpServer.create(os.path.join(workdir, "jump"), install_runtime=False, user=f"{TEST_USER}2",
                                 launcher=network.launcher)  # fmt: skip
        # The jump host also accepts the edge host's client key: a hop inherits the connection's key.
        with open(inner.key_file + ".pub") as src, open(os.path.join(jump.workdir, "authorized_keys"), "a") as dst:
            dst.write(src.read())
        known_hosts = os.path.join(workdir, "known_hosts")
        with open(known_hosts, "w") as f:
            for server in (inner, jump):
                with open(server.known_hosts) as part:
                    f.write(part.read())
        yield Bastion(inner, jump, known_hosts)
    finally:
        for server in (jump, inner):
            if server is not None:
                server.stop()
        network.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_edge_host_is_reachable_only_through_the_jump_host(bastion):
    with pytest.raises(OSError):
        socket.create_connection((bastion.inner.host, bastion.inner.port), timeout=5).close()
    direct = bastion.connection("oj_direct", jump_hosts="")
    with pytest.raises(OrchesJobConnectionError, match=r"127\.0\.0\.2"):
        OrchesJobHook(direct, connect_budget=0.5).runtime_info()
    # ... and through it, the same host answers (as the edge user, with the runtime).
    via = bastion.connection("oj_via")
    assert OrchesJobHook(via).runtime_info()["orchesjob_home"].startswith(bastion.inner.home)


def test_a_job_starts_and_is_followed_through_the_jump_host_on_both_paths(bastion):
    conn_id = bastion.connection("oj_jump_job")
    before = bastion.jump.connections()
    hook = OrchesJobHook(conn_id)  # paramiko, as a worker runs it
    job = hook.start_job("through-jump", ["sh", "-c", "echo via-jump; sleep 1"])
    assert job["accepted"] and hook.job_status("through-jump")["job_id"] == job["job_id"]

    async def trigger_path():
        # The triggerer's side: asyncssh over the shared connection, the real trigger loop.
        status = await OrchesJobHook(conn_id).ajob_status("through-jump")
        trigger = OrchesJobTrigger(ssh_conn_id=conn_id, run_key="through-jump", job_id=job["job_id"],
                                   poll_interval=0.2)  # fmt: skip
        return status, (await trigger.run().__anext__()).payload

    status, event = asyncio.run(trigger_path())
    assert status["job_id"] == job["job_id"] and status["status"] in ("STARTING", "RUNNING", "SUCCEEDED")
    assert event["status"] == "done" and event["job"]["status"] == "SUCCEEDED", event
    assert hook.job_logs("through-jump") == b"via-jump\n"
    hook.close()
    # One tunnel for the worker's hook, one for the triggerer's shared connection.
    assert bastion.jump.connections() - before == 2


def test_a_hop_of_its_own_key_file_and_host_key(bastion):
    hop = bastion.hop_object(key_file=bastion.jump.key_file, host_key=bastion.jump.host_key_line)
    conn_id = bastion.connection("oj_jump_own", jump_hosts=[hop], known_hosts=bastion.inner.known_hosts)
    assert OrchesJobHook(conn_id).start_job("own-hop", ["true"], sync=True)["status"] == "SUCCEEDED"
    assert asyncio.run(OrchesJobHook(conn_id).ajob_status("own-hop"))["status"] == "SUCCEEDED"


def test_a_wrong_host_key_at_the_jump_host_is_refused_on_both_paths(bastion):
    hop = bastion.hop_object(host_key=WRONG_KEY)
    conn_id = bastion.connection("oj_jump_wrong_key", jump_hosts=[hop])
    before = bastion.inner.connections()
    with pytest.raises(OrchesJobHostKeyError, match=f"jump host {bastion.jump.user}@"):
        OrchesJobHook(conn_id).runtime_info()

    async def async_refused():
        with pytest.raises(OrchesJobHostKeyError, match=f"jump host {bastion.jump.user}@"):
            await OrchesJobHook(conn_id).ajob_status("x")

    asyncio.run(async_refused())
    # An unknown jump host (a known_hosts file without it) is refused the same way.
    unknown = bastion.connection("oj_jump_unknown", known_hosts=bastion.inner.known_hosts)
    with pytest.raises(OrchesJobHostKeyError, match="jump host"):
        OrchesJobHook(unknown).runtime_info()
    assert bastion.inner.connections() == before, "nothing may reach the edge host past a refused hop"


def test_the_edge_host_key_is_checked_behind_the_jump_host(bastion):
    hop = bastion.hop_object(known_hosts=bastion.known_hosts)
    conn_id = bastion.connection("oj_jump_inner_key", host_key=WRONG_KEY, known_hosts=None, jump_hosts=[hop])
    with pytest.raises(OrchesJobHostKeyError) as err:
        OrchesJobHook(conn_id).runtime_info()
    assert "jump host" not in str(err.value) and "127.0.0.2" in str(err.value)

    async def async_refused():
        with pytest.raises(OrchesJobHostKeyError, match=r"127\.0\.0\.2"):
            await OrchesJobHook(conn_id).ajob_status("x")

    asyncio.run(async_refused())


def test_failures_name_the_hop_and_were_never_sent(bastion):
    wrong_user = bastion.connection("oj_jump_auth", jump_hosts=f"nobody-here@{bastion.jump.host}:{bastion.jump.port}")
    with pytest.raises(OrchesJobAuthenticationError, match="jump host nobody-here@"):
        OrchesJobHook(wrong_user).runtime_info()
    # The jump host is fine, the host behind it is not there: a connection failure, retried
    # within the budget, never "sent" (nothing reached a host that could run it).
    conn_id = bastion.connection("oj_jump_nothing_behind")
    os.environ["AIRFLOW_CONN_OJ_JUMP_NOTHING_BEHIND"] = os.environ["AIRFLOW_CONN_OJ_JUMP_NOTHING_BEHIND"].replace(
        f'"port": {bastion.inner.port}', f'"port": {bastion.inner.port + 1}'
    )
    for run in (lambda h: h.job_status("x"), lambda h: asyncio.run(h.ajob_status("x"))):
        with pytest.raises(
            OrchesJobConnectionError, match=f"jump host .* could not reach .*{bastion.inner.port + 1}"
        ) as err:
            run(OrchesJobHook(conn_id, connect_budget=0.5))
        assert not err.value.sent


def test_closing_the_hook_closes_every_hop(bastion):
    hook = OrchesJobHook(bastion.connection("oj_jump_close"))
    spawned = len(bastion.jump.children)
    hook.runtime_info()
    ours = bastion.jump.children[spawned:]
    assert len(ours) == 1 and ours[0].poll() is None
    hook.close()
    ours[0].wait(timeout=10)  # the jump host's sshd ends when its client closes the connection


def test_the_shared_async_connection_reconnects_through_the_jump_host(bastion):
    conn_id = bastion.connection("oj_jump_reconnect")
    OrchesJobHook(conn_id).start_job("reconnect", ["sleep", "5"])

    async def scenario():
        poller = OrchesJobHook(conn_id)
        first = await poller.ajob_status("reconnect")
        before = bastion.jump.connections()
        assert bastion.inner.kill_sessions() >= 1  # the edge host's side of the tunnelled connection dies
        await asyncio.sleep(0.2)
        second = await poller.ajob_status("reconnect")
        return first, second, bastion.jump.connections() - before

    first, second, reconnects = asyncio.run(scenario())
    assert first["job_id"] == second["job_id"] and second["status"] == "RUNNING"
    assert reconnects == 1, "the reconnect opens the whole route again"
    OrchesJobHook(conn_id).abort_job("reconnect", grace=1)
