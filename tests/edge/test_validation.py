"""Bad input writes nothing; one bad stored row never breaks reads of others; named errors, never "internal".

Every case runs the real console scripts against a real home.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from tests.conftest import IN_CI, require

RES = "orchesjob-reserver"
FLOW = "orchesjob-flow"
DBS = ("orchesjob.db", "reserver.sqlite3", "orchesjob-flow.sqlite3")


def snapshot(home: str) -> dict[str, str]:
    """A digest of every row of every table of the three databases (what a write would change)."""
    import sqlite3

    out = {}
    for name in DBS:
        path = os.path.join(home, name)
        if not os.path.exists(path):
            out[name] = "absent"
            continue
        db = sqlite3.connect(path)
        try:
            out[name] = hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
        finally:
            db.close()
    return out


@pytest.fixture
def primed(runner, tmp_path):
    """A home whose three databases exist and hold one finished job, reservation and flow run."""
    runner.ok("start", "--run-key", "done", "--sync", "--", "true")
    runner.ok("reserve", "--run-key", "res", "--", "true", tool=RES)
    flow_file = tmp_path / "f.yaml"
    flow_file.write_text('flow_id: f\nsteps:\n  - id: a\n    command: ["true"]\n')
    runner.ok("start", "--run-key", "fl", str(flow_file), tool=FLOW)
    return runner


def refused(runner, tool, *args, code=2, input=None):
    before = snapshot(runner.home)
    r = runner.run(tool, *args, input=input)
    assert r.code == code, (tool, args, r.code, r.out, r.err)
    error = r.error
    assert "internal error" not in error["error"] and error["error_type"] != "internal"
    assert snapshot(runner.home) == before, f"{tool} {args} changed a database"
    return error


def test_millisecond_epoch_not_before_is_refused_with_a_hint(primed):
    ms = str(int(time.time() * 1000))
    error = refused(primed, RES, "reserve", "--run-key", "ms", "--not-before", ms, "--", "true")
    assert "milliseconds" in error["error"] and "date +%s" in error["error"]
    assert primed.run(RES, "status", "--run-key", "ms").code == 4
    for option in ("--not-before", "--expires-at"):
        for value in ("0001-01-01T00:00:00+00:00", "9999-12-31T23:59:59-05:00", "-1", "1e5", " ", "tomorrow"):
            refused(primed, RES, "reserve", "--run-key", "x", f"{option}={value}", "--", "true")
    assert primed.ok("list", tool=RES)["reservations"][0]["run_key"] == "res"


def test_durations_bounded_before_any_write(primed):
    refused(primed, "orchesjob", "start", "--run-key", "t", "--timeout", "10000000d", "--", "true")
    assert primed.oj("status", "--run-key", "t").code == 3
    refused(primed, "orchesjob", "unlock", "--run-key", "done", "--ttl", "3000000d")
    for args in (
        ("start", "--run-key", "t", "--start-timeout", "inf", "--", "true"),
        ("start", "--run-key", "t", "--start-timeout", "1e400", "--", "true"),
        ("start", "--run-key", "t", "--timeout", "nan", "--", "true"),
        ("abort", "--run-key", "done", "--grace-seconds", "1e300"),
        ("clean", "--older-than", "99999999999d"),
        ("clean", "--before", "99999999999999"),
    ):
        refused(primed, "orchesjob", *args)
    refused(primed, RES, "run", "--once", "--poll-interval", "1e308")
    refused(primed, RES, "run", "--once", "--retention", "1e9d")
    refused(primed, FLOW, "--poll-interval", "inf", "status", "--run-key", "fl")


def test_bad_stored_rows_never_break_reads_of_other_keys(primed):
    primed.ok("start", "--run-key", "good", "--sync", "--", "true")
    primed.ok("unlock", "--run-key", "done", "--ttl", "1h")
    primed.ok("reserve", "--run-key", "res2", "--", "true", tool=RES)
    # What an older release let through: instants past year 9999 (and a value that is no number at all).
    import sqlite3

    jobs = sqlite3.connect(os.path.join(primed.home, "orchesjob.db"))
    jobs.execute("UPDATE run_keys SET unlock_expires_at = 1.7e15 WHERE run_key = 'done'")
    jobs.execute("UPDATE jobs SET finished_at = 1.8e14 WHERE run_key = 'done'")
    jobs.commit()
    jobs.close()
    res = sqlite3.connect(os.path.join(primed.home, "reserver.sqlite3"))
    res.execute("UPDATE reservations SET not_before = 1.7e12, expires_at = 1e300 WHERE run_key = 'res'")
    res.commit()
    res.close()

    bad = primed.ok("status", "--run-key", "done")
    assert bad["run_key"] == "done" and bad["finished_at_iso"] is None
    assert primed.ok("status", "--run-key", "good")["status"] == "SUCCEEDED"
    batch = primed.run(
        "orchesjob", "status", "--batch", "-", input=json.dumps([{"run_key": "done"}, {"run_key": "good"}])
    )
    assert batch.code == 0, batch.err
    assert [e["run_key"] for e in batch.json] == ["done", "good"]
    assert primed.ok("status", "--run-key", "done", "--run-key", "good")[1]["status"] == "SUCCEEDED"
    assert len(primed.ok("status", "--run-key", "done", "--all")) == 1

    listed = primed.ok("list", tool=RES)["reservations"]
    assert {r["run_key"] for r in listed} == {"res", "res2"}
    odd = primed.ok("status", "--run-key", "res", tool=RES)["reservation"]
    assert odd["not_before"] == 1.7e12 and odd["not_before_iso"] is None
    assert primed.ok("cancel", "--run-key", "res", tool=RES)["reservation"]["reservation_status"] == "CANCELLED"
    assert primed.ok("clean", "--run-key", "res", "--all", tool=RES)["deleted"] == 1
    assert primed.ok("clean", "--run-key", "done", "--all")["deleted"] == 1


def test_deeply_nested_documents_are_named_errors(primed, tmp_path):
    deep_json = "[" * 100_000 + "]" * 100_000
    deep_obj = '{"a":' * 100_000 + "1" + "}" * 100_000
    nested_flow = tmp_path / "deep.json"
    nested_flow.write_text('{"flow_id": "f", "steps": ' + deep_json + "}")
    refused(primed, FLOW, "start", "--run-key", "deep", str(nested_flow))
    refused(primed, FLOW, "start", "--run-key", "deep", "-", input=deep_obj)
    deep_yaml = tmp_path / "deep.yaml"
    deep_yaml.write_text("flow_id: f\nsteps: " + "[" * 50_000 + "]" * 50_000 + "\n")
    refused(primed, FLOW, "start", "--run-key", "deep", str(deep_yaml))
    refused(primed, FLOW, "graph", "--file", str(deep_yaml))
    refused(primed, "orchesjob", "status", "--batch", "-", input=deep_json)
    meta = tmp_path / "meta.json"
    meta.write_text(deep_obj)
    deep_arg = '{"a":' * 15_000 + "1" + "}" * 15_000  # one argv string is at most 128 KiB
    refused(primed, RES, "reserve", "--run-key", "m", "--metadata-json", deep_arg, "--", "true")
    refused(primed, "orchesjob", "start", "--run-key", "e", "--env-file", str(meta), "--", "true")


def test_huge_numbers_are_named_errors(primed):
    refused(primed, RES, "list", "--limit", "99999999999999999999999")
    refused(primed, RES, "list", "--limit", "-1")
    for args in (
        ("status", "--run-key", "done", "--stdout-offset", "99999999999999999999999"),
        ("status", "--run-key", "done", "--stdout-offset", "0", "--max-bytes", "99999999999999999999"),
        ("status", "--run-key", "done", "--stderr-offset", "-5"),
    ):
        refused(primed, "orchesjob", *args)
    batch = json.dumps([{"run_key": "done", "stdout_offset": 10**30, "max_bytes": 10**30}])
    r = primed.run("orchesjob", "status", "--batch", "-", input=batch)
    assert r.code in (0, 2) and "internal" not in r.out + r.err


@pytest.mark.parametrize("tool,args", [
    ("orchesjob", ("status", "--running")),
    ("orchesjob", ("info",)),
    ("orchesjob", ("start", "--run-key", "k", "--", "true")),
    (RES, ("list",)),
    (RES, ("reserve", "--run-key", "k", "--", "true")),
    (FLOW, ("status", "--run-key", "k")),
])  # fmt: skip
def test_corrupt_database_is_a_named_error(runner, tool, args):
    os.makedirs(runner.home, mode=0o700)
    for name in DBS:
        with open(os.path.join(runner.home, name), "wb") as f:
            f.write(b"this is not a database" * 100)
    r = runner.run(tool, *args)
    assert r.code == 1, (r.code, r.err)
    error = r.error
    assert error["error_type"] == "database_error" and "not a database" in error["error"]
    for name in DBS:
        with open(os.path.join(runner.home, name), "rb") as f:
            assert f.read() == b"this is not a database" * 100


def _immutable(paths, on: bool) -> bool:
    p = subprocess.run(["chattr", "+i" if on else "-i", *paths], capture_output=True)
    return p.returncode == 0


def test_read_only_database_is_a_named_error_and_reads_still_work(primed):
    paths = [os.path.join(primed.home, name) for name in DBS]
    require(os.geteuid() != 0 or _immutable(paths, True), "chattr +i (root cannot be denied writes otherwise)")
    if os.geteuid() != 0:
        for p in paths:
            os.chmod(p, 0o400)
    try:
        assert primed.ok("status", "--run-key", "done")["status"] == "SUCCEEDED"
        assert primed.ok("status", "--run-key", "res", tool=RES)["reservation"]["run_key"] == "res"
        for tool, args in (
            ("orchesjob", ("start", "--run-key", "new", "--", "true")),
            (RES, ("reserve", "--run-key", "new", "--", "true")),
            (RES, ("cancel", "--run-key", "res")),
            (FLOW, ("cancel", "--run-key", "fl")),
        ):
            r = primed.run(tool, *args)
            assert r.code in (0, 1), (tool, args, r.code, r.err)  # flow cancel of a finished run is a no-op
            if r.code == 1:
                assert r.error["error_type"] == "database_error" and "read-only" in r.error["error"]
    finally:
        if os.geteuid() == 0:
            _immutable(paths, False)
        else:
            for p in paths:
                os.chmod(p, 0o600)


def test_unusable_home_for_info_is_a_named_error(runner, tmp_path):
    home = tmp_path / "locked-home"
    home.mkdir(mode=0o700)
    if os.geteuid() == 0:
        require(_immutable([str(home)], True) or not IN_CI, "chattr +i")
    else:
        os.chmod(home, 0o500)
    try:
        env = dict(runner.env, ORCHESJOB_HOME=str(home))
        r = runner.run("orchesjob", "info", env=env)
        assert r.code == 1, (r.code, r.out, r.err)
        error = r.error
        assert error["error_type"] != "internal" and str(home) in error["error"]
        file_home = tmp_path / "a-file"
        file_home.write_text("")
        r = runner.run("orchesjob", "info", env=dict(runner.env, ORCHESJOB_HOME=str(file_home)))
        assert r.code == 1 and "cannot create state directory" in r.error["error"]
    finally:
        if os.geteuid() == 0:
            _immutable([str(home)], False)
        else:
            os.chmod(home, 0o700)


def test_flow_durations_are_bounded(primed, tmp_path):
    for field, value in (("timeout_sec", "99999999999999"), ("retry_delay_sec", "1e15"), ("retries", "10**9")):
        value = str(10**9) if value == "10**9" else value
        f = tmp_path / f"{field}.yaml"
        f.write_text(f'flow_id: b\nsteps:\n  - id: a\n    {field}: {value}\n    command: ["true"]\n')
        error = refused(primed, FLOW, "start", "--run-key", "b", str(f))
        assert error["error_type"] == "invalid_flow" and field in error["error"]
    inf = '{"flow_id": "b", "steps": [{"id": "a", "timeout_sec": 1e400, "command": ["true"]}]}'
    refused(primed, FLOW, "start", "--run-key", "b", "-", input=inf)
    assert primed.run(FLOW, "status", "--run-key", "b").code == 2


@pytest.mark.parametrize("tool,args", [
    ("orchesjob", ("start", "--run-key", "k", "--timeout", "10000000d", "--", "true")),
    ("orchesjob", ("unlock", "--run-key", "k", "--ttl", "3000000d")),
    ("orchesjob", ("clean", "--before", str(int(time.time() * 1000)))),
    ("orchesjob", ("status", "--batch", "-")),
    ("orchesjob", ("abort", "--run-key", "k", "--grace-seconds", "inf")),
    (RES, ("reserve", "--run-key", "k", "--not-before", str(int(time.time() * 1000)), "--", "true")),
    (RES, ("list", "--limit", "9" * 30)),
    (RES, ("clean", "--older-than", "soon")),
    (FLOW, ("start", "--run-key", "k", "-")),
    (FLOW, ("clean", "--older-than", "0s")),
])  # fmt: skip
def test_bad_input_on_a_fresh_home_creates_nothing(runner, tool, args):
    r = runner.run(tool, *args, input="[[[")
    assert r.code == 2, (r.code, r.err)
    assert r.error["error_type"] in ("invalid_arguments", "invalid_flow")
    assert not os.path.exists(runner.home), os.listdir(runner.home)
