"""SSHConfig from a connection: the jump_hosts extra, inheritance per hop, values as the UI form stores them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from airflow_provider_orchesjob.hooks.transport import SSHConfig, jump_host_entries, parse_hop, shared_connection


def connection(**extra) -> SimpleNamespace:
    """The attributes SSHConfig reads from an Airflow Connection."""
    return SimpleNamespace(conn_id="edge", host="edge.internal", port=2200, login="etl", password=None,
                           extra_dejson=extra)  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("jump", (None, "jump", None)),
        ("ops@jump:2222", ("ops", "jump", 2222)),
        ("ops@[fd00::1]:2222", ("ops", "fd00::1", 2222)),
        ("[fd00::1]", (None, "fd00::1", None)),
        ("fd00::1", (None, "fd00::1", None)),  # more than one colon: an address without port
        ("a@b@jump", ("a@b", "jump", None)),
    ],
)
def test_a_hop_is_user_host_port(spec, parsed):
    assert parse_hop(spec) == parsed


@pytest.mark.parametrize("spec", ["", "ops@", "jump:ssh", "[fd00::1]x"])
def test_a_malformed_hop_is_refused(spec):
    with pytest.raises(ValueError, match="jump host"):
        parse_hop(spec)


def test_jump_hosts_as_text_json_text_or_list_mean_the_same():
    want = [{"host": "j1", "port": 2222, "username": "ops"}, {"host": "j2", "port": None, "username": None}]
    assert jump_host_entries("ops@j1:2222, j2") == want
    assert jump_host_entries("ops@j1:2222 j2") == want
    assert jump_host_entries('["ops@j1:2222", "j2"]') == want
    assert jump_host_entries(["ops@j1:2222", {"host": "j2"}]) == want
    assert jump_host_entries(None) == jump_host_entries("") == jump_host_entries([]) == []


def test_a_hop_object_with_an_unknown_key_is_refused():
    with pytest.raises(ValueError, match="unknown: hostkey"):
        jump_host_entries([{"host": "j1", "hostkey": "ssh-ed25519 AAAA"}])
    with pytest.raises(ValueError, match="needs 'host'"):
        jump_host_entries([{"port": 22}])
    with pytest.raises(ValueError, match="must be a list"):
        jump_host_entries({"host": "j1"})


def test_hops_inherit_the_connection_but_never_its_host_key():
    cfg = SSHConfig.from_connection(
        connection(
            key_file="/k/edge", private_key="KEYTEXT", known_hosts="/kh", host_key="ssh-ed25519 EDGE",
            conn_timeout=7, no_host_key_check="false",
            jump_hosts=["j1", {"host": "j2", "port": 2022, "login": "ops", "key_file": "/k/j2",
                               "host_key": "ssh-ed25519 J2", "known_hosts": "/kh2"}],
        )
    )  # fmt: skip
    j1, j2 = cfg.jump_hosts
    assert (j1.host, j1.port, j1.username, j1.key_file, j1.private_key) == ("j1", 22, "etl", "/k/edge", "KEYTEXT")
    assert j1.host_key is None and j1.known_hosts == "/kh" and j1.conn_timeout == 7
    # A hop with its own key file is offered that key only, not the connection's key text.
    assert (j2.port, j2.username, j2.key_file, j2.private_key) == (2022, "ops", "/k/j2", None)
    assert (j2.host_key, j2.known_hosts) == ("ssh-ed25519 J2", "/kh2")
    assert [h.host for h in cfg.hops] == ["j1", "j2", "edge.internal"] and cfg.host_key == "ssh-ed25519 EDGE"
    assert j1.label == "jump host etl@j1" and j2.label == "jump host ops@[j2]:2022"
    assert cfg.label == "[edge.internal]:2200" and cfg.route == (("j1", 22, "etl"), ("j2", 2022, "ops"))


def test_empty_form_fields_mean_unset_and_old_json_extras_keep_their_meaning():
    # What the connection form stores for fields left empty.
    form = SSHConfig.from_connection(connection(key_file="", host_key="", known_hosts=None, orchesjob_home="",
                                                orchesjob_bin_dir=" ", jump_hosts="", max_sessions=None))  # fmt: skip
    assert (form.key_file, form.host_key, form.known_hosts, form.jump_hosts, form.max_sessions) == (
        None, None, None, [], 8)  # fmt: skip
    assert form.edge.orchesjob_home is None and form.edge.bin_dir is None
    old = SSHConfig.from_connection(connection(key_file="/k", max_sessions="3", timeout="5", orchesjob_home="/h"))
    assert (old.key_file, old.max_sessions, old.conn_timeout, old.edge.orchesjob_home) == ("/k", 3, 5.0, "/h")
    # The form's integer field stores a number.
    assert SSHConfig.from_connection(connection(max_sessions=4)).max_sessions == 4


def test_the_shared_async_connection_is_per_route():
    direct = SSHConfig.from_connection(connection())
    via_j1 = SSHConfig.from_connection(connection(jump_hosts="j1"))
    via_j1_again = SSHConfig.from_connection(connection(jump_hosts="j1:22"))

    async def pooled():
        return shared_connection(direct), shared_connection(via_j1), shared_connection(via_j1_again)

    a, b, c = asyncio.run(pooled())
    assert a is not b and b is c
