"""Black-box tests of ``orchesjob-reserver`` through real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import cli_path
from tests.edge.conftest import wait_status

RES = "orchesjob-reserver"


def reserve(runner, key: str, *args: str, cmd: tuple[str, ...] = ("true",)) -> dict:
    return runner.ok("reserve", "--run-key", key, *args, "--", *cmd, tool=RES)


def run_once(runner, *args: str, **kw) -> list[dict]:
    r = runner.run(RES, "run", "--once", *args, **kw)
    assert r.code == 0, r.err
    return [json.loads(line) for line in r.out.splitlines() if line.strip()]


def res_status(runner, key: str) -> dict:
    return runner.ok("status", "--run-key", key, tool=RES)["reservation"]


def wait_job_done(runner, job_id: str, timeout: float = 30) -> dict:
    return wait_status(runner, job_id=job_id, timeout=timeout)


def start_daemon(runner, *args: str, env: dict | None = None) -> subprocess.Popen:
    return runner.popen(
        RES, "run", *args, env=env or runner.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_event(proc: subprocess.Popen, name: str, timeout: float = 20) -> dict:
    """Next event called ``name`` from a running dispatcher's stdout."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event["event"] == name:
                return event
    raise AssertionError(f"no {name} event within {timeout} s")


def stop_daemon(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


# --------------------------------------------------------------------- reserve
def test_reserve_creates_then_returns_existing(runner):
    first = reserve(runner, "k1", "--metadata-json", '{"dag_id": "d"}', "--orchesjob-start-option=--strict",
                    cmd=("echo", "hi"))  # fmt: skip
    assert first["created"] is True
    r = first["reservation"]
    assert r["run_key"] == "k1" and r["reservation_status"] == "RESERVED" and r["job_id"] is None
    assert r["command"] == ["echo", "hi"] and r["orchesjob_start_options"] == ["--strict"]
    assert r["metadata"] == {"dag_id": "d"}
    for name in ("not_before", "expires_at", "dispatched_at"):
        assert r[name] is None and r[name + "_iso"] is None
    assert isinstance(r["created_at"], int) and r["created_at_iso"]
    assert r["last_error"] is None
    again = reserve(runner, "k1", cmd=("something", "else"))
    assert again["created"] is False
    assert again["reservation"] == r
    assert os.path.exists(os.path.join(runner.home, "reserver.sqlite3"))


def test_reserve_times_epoch_iso_and_subsecond(runner):
    r = reserve(runner, "t", "--not-before", "2026-05-04T03:00:00+09:00", "--expires-at", "1777900000.25")
    r = r["reservation"]
    assert r["not_before"] == 1777831200 and r["not_before_iso"]
    assert r["expires_at"] == 1777900000.25
    assert r["metadata"] is None


def test_reserve_without_double_dash_and_options_before_subcommand(runner, tmp_path):
    db = str(tmp_path / "other.sqlite3")
    out = runner.ok("--db", db, "reserve", "--run-key", "nd", "echo", "x", tool=RES)
    assert out["reservation"]["command"] == ["echo", "x"]
    assert runner.ok("status", "--db", db, "--run-key", "nd", tool=RES)["reservation"]["run_key"] == "nd"


@pytest.mark.parametrize(
    "args",
    [
        ["--run-key", "x"],  # no command
        ["--run-key", "x", "--metadata-json", "[1, 2]", "--", "true"],
        ["--run-key", "x", "--metadata-json", "{bad", "--", "true"],
        ["--run-key", "x", "--not-before", "tomorrow-ish", "--", "true"],
        ["--run-key", "x", "--orchesjob-start-option=--bypass", "--", "true"],
        ["--run-key", "x", "--orchesjob-start-option=--sync", "--", "true"],
        ["--run-key", "x", "--orchesjob-start-option=--reuse-policy=sometimes", "--", "true"],
        ["--run-key", "", "--", "true"],
        ["--", "true"],  # no run key
    ],
)
def test_reserve_invalid_arguments_exit_2(runner, args):
    r = runner.run(RES, "reserve", *args)
    assert r.code == 2, r.err
    assert r.error["error_type"] == "invalid_arguments"
    assert runner.ok("list", tool=RES)["reservations"] == []


def test_concurrent_reserve_is_idempotent(runner):
    def one(i: int):
        return runner.run(RES, "reserve", "--run-key", "same", "--", "echo", str(i))

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(one, range(30)))
    assert all(r.code == 0 for r in results), [r.err for r in results if r.code]
    outs = [r.json for r in results]
    assert sum(o["created"] for o in outs) == 1
    assert len({o["reservation"]["reservation_id"] for o in outs}) == 1
    assert len(runner.ok("list", tool=RES)["reservations"]) == 1


def test_rearm_replaces_a_reservation_that_never_dispatched_and_nothing_else(runner, tmp_path):
    marker = tmp_path / "ran"
    cmd = ("sh", "-c", f"echo ran >> {marker}")
    first = reserve(runner, "clear-me", cmd=cmd)["reservation"]
    runner.ok("cancel", "--run-key", "clear-me", tool=RES)  # what on_kill of the killed try does
    # A plain reserve returns the cancelled reservation, as the spec says ...
    assert reserve(runner, "clear-me", cmd=cmd)["reservation"]["reservation_status"] == "CANCELLED"

    # ... and 10 concurrent --rearm calls (the cleared try, resent) re-arm it once.
    def one(_: int):
        return runner.run(RES, "reserve", "--run-key", "clear-me", "--rearm", "--", *cmd)

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = [r.json for r in pool.map(one, range(10))]
    assert sum(r["rearmed"] for r in results) == 1 and not any(r["created"] for r in results)
    assert {r["reservation"]["reservation_id"] for r in results} == {first["reservation_id"]}
    assert res_status(runner, "clear-me")["reservation_status"] == "RESERVED"
    run_once(runner)
    job_id = res_status(runner, "clear-me")["job_id"]
    assert wait_job_done(runner, job_id)["status"] == "SUCCEEDED"
    # Dispatched: a later --rearm never touches it, and the command ran once.
    again = runner.ok("reserve", "--run-key", "clear-me", "--rearm", "--", *cmd, tool=RES)
    assert again["rearmed"] is False and again["reservation"]["reservation_status"] == "DISPATCHED"
    run_once(runner)
    assert marker.read_text() == "ran\n"


def test_home_priority(runner, tmp_path):
    rhome = str(tmp_path / "rhome")
    env = dict(runner.env, ORCHESJOB_RESERVER_HOME=rhome)
    runner.ok("reserve", "--run-key", "h", "--", "true", tool=RES, env=env)
    assert os.path.exists(os.path.join(rhome, "reserver.sqlite3"))
    assert not os.path.exists(os.path.join(runner.home, "reserver.sqlite3"))


# ------------------------------------------------------------- status/result
def test_status_result_not_found_and_not_dispatched(runner):
    r = runner.run(RES, "status", "--run-key", "missing")
    assert r.code == 4 and r.error["error_type"] == "not_found"
    r = runner.run(RES, "status", "--reservation-id", "nope")
    assert r.code == 4
    r = runner.run(RES, "status", "--run-key", "a", "--reservation-id", "b")
    assert r.code == 2
    r = runner.run(RES, "result", "--run-key", "missing")
    assert r.code == 4
    rid = reserve(runner, "nd", "--not-before", str(time.time() + 3600))["reservation"]["reservation_id"]
    r = runner.run(RES, "result", "--reservation-id", rid)
    assert r.code == 5 and r.error["error_type"] == "not_dispatched"
    st = runner.ok("status", "--reservation-id", rid, "--include-job", tool=RES)
    assert st["reservation"]["run_key"] == "nd" and st["job"] is None


def test_dispatch_status_include_job_and_result(runner):
    reserve(runner, "ok", cmd=("sh", "-c", "echo out"))
    reserve(runner, "bad", cmd=("sh", "-c", "exit 7"))
    events = run_once(runner)
    names = [e["event"] for e in events]
    assert names[0] == "reserver_started" and names[-1] == "reserver_stopped"
    assert names.count("orchesjob_start_call") == 2 and names.count("dispatch_succeeded") == 2
    call = next(e for e in events if e["event"] == "orchesjob_start_call")
    assert call["command"][1:4] == ["start", "--run-key", "ok"] and call["command"][-3:] == ["sh", "-c", "echo out"]
    assert all("ts" in e and e["ts"].endswith("+00:00") for e in events)
    st = runner.ok("status", "--run-key", "ok", "--include-job", tool=RES)
    assert st["reservation"]["reservation_status"] == "DISPATCHED"
    assert st["reservation"]["dispatched_at_iso"]
    assert st["job"]["job_id"] == st["reservation"]["job_id"] and st["job"]["run_key"] == "ok"
    wait_job_done(runner, st["job"]["job_id"])
    r = runner.run(RES, "result", "--run-key", "ok")
    assert r.code == 0 and r.json["status"] == "SUCCEEDED" and r.json["exit_code"] == 0
    bad = res_status(runner, "bad")
    wait_job_done(runner, bad["job_id"])
    r = runner.run(RES, "result", "--run-key", "bad")
    assert r.code == 1 and r.json["status"] == "FAILED" and r.json["exit_code"] == 7
    # A restart does not re-log history.
    again = run_once(runner)
    assert [e["event"] for e in again] == ["reserver_started", "reserver_stopped"]


def test_result_while_running_is_orchesjob_not_finished(runner):
    reserve(runner, "slow", cmd=("sleep", "30"))
    run_once(runner)
    r = runner.run(RES, "result", "--run-key", "slow")
    assert r.code == 4 and r.error["error_type"] == "invalid_state"
    runner.ok("cancel", "--run-key", "slow", tool=RES)


def test_future_not_before_is_not_dispatched_early(runner):
    reserve(runner, "later", "--not-before", str(time.time() + 3600))
    events = run_once(runner)
    assert "orchesjob_start_call" not in [e["event"] for e in events]
    assert res_status(runner, "later")["reservation_status"] == "RESERVED"


def test_expiry_before_dispatch(runner):
    now = time.time()
    reserve(runner, "exp", "--not-before", str(now + 3600), "--expires-at", str(now - 1))
    reserve(runner, "exp2", "--expires-at", str(now + 3600))  # not expired: dispatched
    events = run_once(runner)
    expired = [e for e in events if e["event"] == "reservation_expired"]
    assert [e["run_key"] for e in expired] == ["exp"]
    assert expired[0]["reservation_status"] == "EXPIRED"
    r = res_status(runner, "exp")
    assert r["reservation_status"] == "EXPIRED" and r["job_id"] is None and r["last_error"]
    assert res_status(runner, "exp2")["reservation_status"] == "DISPATCHED"
    # no job was ever started for the expired key
    assert runner.oj("status", "--run-key", "exp").code == 3


def test_due_reservations_dispatch_in_due_order_whether_timed_or_immediate(runner):
    now = time.time()
    reserve(runner, "b", "--not-before", str(now - 10))
    reserve(runner, "immediate")  # no not_before: due since its creation, i.e. after a, b and c
    reserve(runner, "a", "--not-before", str(now - 20))
    reserve(runner, "c", "--not-before", str(now - 5))
    reserve(runner, "later", "--not-before", str(now + 3600))
    reserve(runner, "gone", "--not-before", str(now - 30), "--expires-at", str(now - 1))
    started = [e["run_key"] for e in run_once(runner) if e["event"] == "dispatch_succeeded"]
    assert started == ["a", "b", "c", "immediate"]


def test_a_dispatcher_pass_reads_pending_reservations_through_indexes_only(runner):
    """What a pass costs must not grow with the number of pending reservations: no statement of
    it may scan the table or sort the pending rows (100,000 pending cost ~50 ms a pass before)."""
    import sqlite3

    from edge_runtime.reservations import Reservations

    now = time.time()
    for i, extra in enumerate((["--not-before", str(now + 3600)], ["--expires-at", str(now + 60)], [])):
        reserve(runner, f"r{i}", *extra)
    res = Reservations(os.path.join(runner.home, "reserver.sqlite3"))
    statements: list[str] = []
    res.store.conn.set_trace_callback(statements.append)
    res.expire_due(now)
    res.next_due(now)
    res.next_wakeup(now)
    res.store.conn.set_trace_callback(None)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) >= 4
    plans = {}
    for sql in reads:
        plans[sql] = " | ".join(r[3] for r in res.store.conn.execute("EXPLAIN QUERY PLAN " + sql))
    res.close()
    for sql, plan in plans.items():
        assert "SCAN reservations" not in plan and "TEMP B-TREE" not in plan, (sql, plan)
    assert all(isinstance(p, str) and "reservations" in p for p in plans.values()), sqlite3.sqlite_version


def test_dispatch_failed(runner):
    reserve(runner, "nocwd", "--orchesjob-start-option=--cwd=/nonexistent/dir")
    events = run_once(runner)
    failed = [e for e in events if e["event"] == "dispatch_failed"]
    assert len(failed) == 1 and "/nonexistent/dir" in failed[0]["error"]
    r = res_status(runner, "nocwd")
    assert r["reservation_status"] == "DISPATCH_FAILED" and "/nonexistent/dir" in r["last_error"]
    # terminal: not retried
    assert "orchesjob_start_call" not in [e["event"] for e in run_once(runner)]


def test_global_start_options_apply(runner):
    reserve(runner, "strictly")
    run_once(runner, "--orchesjob-start-option=--strict")
    job = runner.ok("status", "--run-key", "strictly")
    assert job["reuse_policy"] == "never"
    r = runner.run(RES, "run", "--once", "--orchesjob-start-option=--bogus")
    assert r.code == 2


# ---------------------------------------------------------------------- cancel
def test_cancel_in_each_state(runner):
    future = str(time.time() + 3600)
    # RESERVED -> CANCELLED; again -> success that changes nothing (already_ended)
    reserve(runner, "c-res", "--not-before", future)
    out = runner.ok("cancel", "--run-key", "c-res", tool=RES)
    assert out["cancelled"] is True and out["reservation"]["reservation_status"] == "CANCELLED"
    assert out["already_ended"] is False
    again = runner.ok("cancel", "--run-key", "c-res", tool=RES)
    assert again["cancelled"] is True and again["already_ended"] is True
    assert again["reservation"]["reservation_status"] == "CANCELLED"
    # the dispatcher never starts a cancelled reservation
    reserve(runner, "c-now")
    runner.ok("cancel", "--run-key", "c-now", tool=RES)
    # EXPIRED and DISPATCH_FAILED -> CANCELLED
    reserve(runner, "c-exp", "--expires-at", str(time.time() - 1))
    reserve(runner, "c-fail", "--orchesjob-start-option=--cwd=/nonexistent")
    # DISPATCHED with a running job -> the job is cancelled through orchesjob
    reserve(runner, "c-run", cmd=("sleep", "60"))
    reserve(runner, "c-done", cmd=("true",))
    events = run_once(runner)
    assert {e["run_key"] for e in events if e["event"] == "orchesjob_start_call"} == {"c-fail", "c-run", "c-done"}
    assert res_status(runner, "c-exp")["reservation_status"] == "EXPIRED"
    assert res_status(runner, "c-fail")["reservation_status"] == "DISPATCH_FAILED"
    for key in ("c-exp", "c-fail"):
        out = runner.ok("cancel", "--run-key", key, tool=RES)
        assert out["reservation"]["reservation_status"] == "CANCELLED"
    out = runner.ok("cancel", "--run-key", "c-run", tool=RES)
    assert out["cancelled"] is True and out["status"] == "CANCELLED"
    assert res_status(runner, "c-run")["reservation_status"] == "DISPATCHED"
    assert runner.ok("status", "--run-key", "c-run")["status"] == "CANCELLED"
    # DISPATCHED whose job already finished -> orchesjob's reply: the job as it is, already_ended
    job_id = res_status(runner, "c-done")["job_id"]
    wait_job_done(runner, job_id)
    out = runner.ok("cancel", "--run-key", "c-done", tool=RES)
    assert out["job_id"] == job_id and out["already_ended"] is True and out["status"] == "SUCCEEDED"
    r = runner.run(RES, "cancel", "--run-key", "missing")
    assert r.code == 4


@pytest.mark.parametrize("client", ["in-process", "orchesjob-bin"])
def test_cancel_reason_is_recorded_shown_and_cleared_by_a_rearm(runner, client):
    via = [] if client == "in-process" else [f"--orchesjob-bin={cli_path('orchesjob')}"]
    reserve(runner, "why", "--not-before", str(time.time() + 3600))
    out = runner.ok(*via, "cancel", "--run-key", "why", "--reason", "killed [airflow try 2]", tool=RES)
    assert out["reservation"]["cancel_reason"] == "killed [airflow try 2]"
    assert res_status(runner, "why")["cancel_reason"] == "killed [airflow try 2]"
    again = runner.ok("reserve", "--run-key", "why", "--rearm", "--", "true", tool=RES)
    assert again["rearmed"] and again["reservation"]["cancel_reason"] is None
    # Without --reason: recorded as no reason (a person on the host, say).
    runner.ok("cancel", "--run-key", "why", tool=RES)
    assert res_status(runner, "why")["cancel_reason"] is None
    # A dispatched reservation: the reason becomes its job's abort_reason.
    reserve(runner, "why-run", cmd=("sleep", "60"))
    run_once(runner)
    out = runner.ok(*via, "cancel", "--run-key", "why-run", "--reason", "stop it", tool=RES)
    assert out["status"] == "CANCELLED" and out["abort_reason"] == "stop it"
    assert "reserve-cancel-reason" in runner.ok("info")["capabilities"]


def test_a_reserver_database_of_the_previous_schema_gains_cancel_reasons(runner):
    from edge_runtime import schema, store

    os.makedirs(runner.home, mode=0o700)
    store.Store(os.path.join(runner.home, "reserver.sqlite3"), schema.RESERVER_MIGRATIONS[:2]).close()
    reserve(runner, "old", "--not-before", str(time.time() + 3600))
    out = runner.ok("cancel", "--run-key", "old", "--reason", "r", tool=RES)
    assert out["reservation"]["cancel_reason"] == "r"
    assert runner.query("reserver.sqlite3", "PRAGMA user_version") == [(len(schema.RESERVER_MIGRATIONS),)]


def test_cancel_dispatching_is_refused(runner):
    reserve(runner, "c-ing")
    env = dict(runner.env, ORCHESJOB_TEST_KILL_AT="reserver:claimed")
    r = runner.run(RES, "run", "--once", env=env)
    assert r.code == -signal.SIGKILL
    assert res_status(runner, "c-ing")["reservation_status"] == "DISPATCHING"
    r = runner.run(RES, "cancel", "--run-key", "c-ing")
    assert r.code == 6
    assert runner.run(RES, "clean", "--all").json["matched"] == 0  # never deleted


# ------------------------------------------------------------------ list/clean
def test_list_status_filter_and_limit(runner):
    for i in range(5):
        reserve(runner, f"l{i}", "--not-before", str(time.time() + 3600))
    runner.ok("cancel", "--run-key", "l1", tool=RES)
    out = runner.ok("list", tool=RES)["reservations"]
    assert [r["run_key"] for r in out] == ["l4", "l3", "l2", "l1", "l0"]
    assert [r["run_key"] for r in runner.ok("list", "--limit", "2", tool=RES)["reservations"]] == ["l4", "l3"]
    cancelled = runner.ok("list", "--status", "CANCELLED", tool=RES)["reservations"]
    assert [r["run_key"] for r in cancelled] == ["l1"]
    assert runner.run(RES, "list", "--status", "BOGUS").code == 2


def test_clean_selections(runner):
    future = str(time.time() + 3600)
    for key in ("a", "b", "c", "d"):
        reserve(runner, key, "--not-before", future)
        if key != "d":
            runner.ok("cancel", "--run-key", key, tool=RES)
    reserve(runner, "disp")
    run_once(runner)
    job_id = res_status(runner, "disp")["job_id"]

    for bad in ([], ["--run-key", "a"], ["--job-id", "x", "--all"], ["--reservation-id", "x", "--run-key", "a"],
                ["--job-id", "x", "--reservation-id", "y"], ["--before", "notadate"]):  # fmt: skip
        assert runner.run(RES, "clean", *bad).code == 2, bad

    dry = runner.ok("clean", "--all", "--dry-run", tool=RES)
    assert dry["dry_run"] is True and dry["deleted"] == 4 and dry["matched"] == 4
    assert {r["run_key"] for r in dry["reservations"]} == {"a", "b", "c", "disp"}  # d is RESERVED

    out = runner.ok("clean", "--run-key", "a", "--all", tool=RES)
    assert out["deleted"] == 1 and out["reservations"][0]["run_key"] == "a"
    rid_b = res_status(runner, "b")["reservation_id"]
    out = runner.ok("clean", "--reservation-id", rid_b, tool=RES)
    assert out["deleted"] == 1
    out = runner.ok("clean", "--job-id", job_id, tool=RES)
    assert out["deleted"] == 1 and out["reservations"][0]["run_key"] == "disp"
    assert runner.ok("clean", "--before", "2000-01-01", tool=RES)["matched"] == 0
    assert runner.ok("clean", "--after", str(time.time() + 60), tool=RES)["matched"] == 0
    out = runner.ok("clean", "--after", "2000-01-01", "--before", str(time.time() + 60), tool=RES)
    assert out["deleted"] == 1 and out["reservations"][0]["run_key"] == "c"
    # the RESERVED one survives everything
    assert [r["run_key"] for r in runner.ok("list", tool=RES)["reservations"]] == ["d"]
    rid_d = res_status(runner, "d")["reservation_id"]
    assert runner.ok("clean", "--reservation-id", rid_d, tool=RES)["matched"] == 0
    # the job itself is untouched
    assert runner.ok("status", "--job-id", job_id)["job_id"] == job_id


# ------------------------------------------------------------------ dispatcher
def test_daemon_wakes_for_new_reservation_and_stops_on_sigterm(runner):
    proc = start_daemon(runner, "--poll-interval", "60")
    try:
        read_event(proc, "reserver_started")
        reserve(runner, "wake", cmd=("true",))
        accepted = read_event(proc, "reservation_accepted")
        assert accepted["run_key"] == "wake"
        # with a 60 s poll interval only the wake-up can make this prompt
        done = read_event(proc, "dispatch_succeeded", timeout=20)
        assert done["run_key"] == "wake"
        # sub-second not_before: not started before it
        nb = time.time() + 1.3
        out = tmp = os.path.join(runner.home, "started")
        reserve(runner, "subsec", "--not-before", repr(nb), cmd=("sh", "-c", f'date +%s.%N > "{out}"'))
        read_event(proc, "dispatch_succeeded", timeout=20)
        job = wait_job_done(runner, res_status(runner, "subsec")["job_id"])
        assert job["status"] == "SUCCEEDED"
        with open(tmp) as f:
            assert float(f.read()) >= nb
        # one dispatcher per database
        r = runner.run(RES, "run")
        assert r.code == 5 and r.error["error_type"] == "lock_error"
        assert "another dispatcher" in r.error["error"]
    finally:
        code, out, err = stop_daemon(proc)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["event"] == "reserver_stopped"


def test_run_validates_intervals(runner):
    assert runner.run(RES, "run", "--poll-interval", "0").code == 2
    assert runner.run(RES, "run", "--error-sleep", "x").code == 2


# ------------------------------------------------------------- public orchesjob
def test_public_orchesjob_as_foreign_bin(runner, tmp_path, public_bin):
    PUBLIC_ORCHESJOB = os.path.join(public_bin, "orchesjob")  # noqa: N806 - the public release's binary
    env = dict(runner.env, ORCHESJOB_HOME=str(tmp_path / "pubhome"), ORCHESJOB_RESERVER_HOME=runner.home)
    env["ORCHESJOB_BIN"] = PUBLIC_ORCHESJOB
    runner.ok("reserve", "--run-key", "pub", "--orchesjob-start-option=--strict", "--", "sleep", "30",
              tool=RES, env=env)  # fmt: skip
    # unknown options are left to the foreign binary: it refuses at dispatch
    runner.ok("reserve", "--run-key", "pub-bypass", "--orchesjob-start-option=--bypass", "--", "true",
              tool=RES, env=env)  # fmt: skip
    r = runner.run(RES, "run", "--once", env=env)
    assert r.code == 0, r.err
    events = [json.loads(line) for line in r.out.splitlines()]
    started = next(e for e in events if e["event"] == "reserver_started")
    assert started["dispatch"] == "subprocess" and started["orchesjob_bin"] == PUBLIC_ORCHESJOB
    call = next(e for e in events if e["event"] == "orchesjob_start_call" and e["run_key"] == "pub")
    assert call["command"] == [PUBLIC_ORCHESJOB, "start", "--run-key", "pub", "--strict", "--", "sleep", "30"]
    st = runner.ok("status", "--run-key", "pub", "--include-job", tool=RES, env=env)
    assert st["reservation"]["reservation_status"] == "DISPATCHED"
    assert st["job"]["job_id"] == st["reservation"]["job_id"] and st["job"]["status"] == "RUNNING"
    failed = res_status_env(runner, "pub-bypass", env)
    assert failed["reservation_status"] == "DISPATCH_FAILED" and "--bypass" in failed["last_error"]
    # 1.1.0 has no `result`/`cancel`: its usage error is passed through
    r = runner.run(RES, "result", "--run-key", "pub", env=env)
    assert r.code == 2
    subprocess.run([PUBLIC_ORCHESJOB, "abort", "--run-key", "pub"], env=env, capture_output=True, timeout=60)


def res_status_env(runner, key: str, env: dict) -> dict:
    return runner.ok("status", "--run-key", key, tool=RES, env=env)["reservation"]
