"""The Airflow user's ``~/.ssh/config`` means the same on both SSH paths.

The workers' path (providers-ssh ``SSHHook``, paramiko) takes only the ``ProxyCommand``
and ``IdentityFile`` from it; the triggerer's asyncssh used to apply the whole file,
so a ``HostName`` alias reached another host deferred than on a worker. Both now take
exactly those two (``transport.ssh_config_fallbacks``). Against the real sshd.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from airflow_provider_orchesjob.exceptions import OrchesJobConnectionError
from airflow_provider_orchesjob.hooks import OrchesJobHook
from airflow_provider_orchesjob.hooks.transport import ssh_config_fallbacks

from .conftest import set_connection

# A ProxyCommand: relays its stdin/stdout to HOST:PORT, and notes each use in MARKS.
RELAY = """
import os, select, socket, sys
host, port, marks = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(marks, "a") as f:
    f.write("used\\n")
s = socket.create_connection((host, port))
fds = [0, s.fileno()]
while True:
    for fd in select.select(fds, [], [])[0]:
        data = os.read(fd, 65536) if fd == 0 else s.recv(65536)
        if not data:
            sys.exit(0)
        if fd == 0:
            s.sendall(data)
        else:
            os.write(1, data)
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    (tmp_path / ".ssh").mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_only_proxy_command_and_identity_file_are_taken(home):
    (home / ".ssh" / "config").write_text(
        "Host alias\n  HostName 10.9.9.9\n  User someone\n  Port 2222\n"
        "  ProxyCommand nc %h %p\n  IdentityFile ~/.ssh/id_alias\n"
    )
    expected = {"proxy_command": "nc 10.9.9.9 2222", "identity_file": f"{home}/.ssh/id_alias"}
    assert ssh_config_fallbacks("alias") == expected
    assert ssh_config_fallbacks("elsewhere") == {}
    (home / ".ssh" / "config").unlink()
    assert ssh_config_fallbacks("alias") == {}


def test_a_proxy_command_is_used_by_workers_and_triggerer_alike(home, ssh_server):
    relay = home / "relay.py"
    relay.write_text(RELAY)
    marks = home / "marks"
    (home / ".ssh" / "config").write_text(
        f"Host {ssh_server.host}\n  ProxyCommand {sys.executable} {relay} %h {ssh_server.port} {marks}\n"
    )
    conn_id = set_connection("oj_proxy_cmd", ssh_server)

    worker = OrchesJobHook(conn_id, connect_budget=5)
    assert worker.runtime_info()["version"]
    worker.close()
    assert marks.read_text().count("used") == 1  # the paramiko path went through the ProxyCommand

    triggerer = OrchesJobHook(conn_id, connect_budget=5)
    info = asyncio.run(triggerer.arun_cli(["orchesjob", "info"]))
    assert info["version"]
    assert marks.read_text().count("used") == 2  # and so did asyncssh


def test_a_host_alias_is_not_applied_on_either_path(home, ssh_server):
    # `alias` would reach the real sshd if its HostName were applied: neither path applies it.
    (home / ".ssh" / "config").write_text(f"Host oj-alias-{os.getpid()}\n  HostName {ssh_server.host}\n")
    conn_id = set_connection("oj_alias", ssh_server, host=f"oj-alias-{os.getpid()}")
    with pytest.raises(OrchesJobConnectionError):
        OrchesJobHook(conn_id, connect_budget=0).runtime_info()
    with pytest.raises(OrchesJobConnectionError):
        asyncio.run(OrchesJobHook(conn_id, connect_budget=0).arun_cli(["orchesjob", "info"]))
