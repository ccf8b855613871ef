"""Bounded housekeeping: `clean` deletes in short transactions; age-based retention on every CLI.

The CLIs run as real processes; large histories are made by copying a real row
in SQL (starting 20 000 real jobs would take minutes).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

from tests.edge.conftest import wait_until

RES = "orchesjob-reserver"
FLOW = "orchesjob-flow"
BATCH = 200
OLD = 1_000_000_000.0  # 2001: older than any --older-than below


def clone_rows(db_path: str, table: str, key: str, count: int, overrides: dict[str, str]) -> None:
    """Insert ``count`` copies of the first row of ``table``, with SQL expressions of ``n`` for some columns."""
    db = sqlite3.connect(db_path)
    try:
        cols = [c[1] for c in db.execute(f"PRAGMA table_info({table})")]
        if "seq" in cols:
            cols.remove("seq")
        exprs = [overrides.get(c, c) for c in cols]
        first = db.execute(f"SELECT {key} FROM {table} LIMIT 1").fetchone()[0]
        db.execute(
            f"WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?) "
            f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(exprs)} FROM {table}, seq "
            f"WHERE {table}.{key} = ?",
            (count, first),
        )
        db.commit()
    finally:
        db.close()


def watch_count(db_path: str, sql: str, stop: threading.Event, seen: list[int]) -> None:
    db = sqlite3.connect(db_path, timeout=30)
    try:
        while not stop.is_set():
            value = db.execute(sql).fetchone()[0]
            if not seen or seen[-1] != value:
                seen.append(value)
    finally:
        db.close()


def run_observed(runner, db_name: str, sql: str, *args: str, tool: str = "orchesjob") -> tuple[dict, list[int]]:
    """Run a clean while another connection watches ``sql``; returns (output, the values it saw)."""
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_count, args=(os.path.join(runner.home, db_name), sql, stop, seen))
    watcher.start()
    try:
        wait_until(lambda: seen)
        out = runner.ok(*args, tool=tool, timeout=300)
    finally:
        stop.set()
        watcher.join()
    return out, seen


def test_jobs_clean_deletes_in_short_batches_and_keeps_recent(runner):
    runner.ok("start", "--run-key", "recent", "--sync", "--", "true")
    n = 6000
    clone_rows(
        os.path.join(runner.home, "orchesjob.db"),
        "jobs",
        "job_id",
        n,
        {
            "job_id": "'bulk-' || n",
            "run_key": "'bulk-' || n",
            "attempt_no": "1",
            "finished_at": f"{OLD} + n",
            "request_id": "NULL",
        },
    )
    dry = runner.ok("clean", "--older-than", "30d", "--dry-run")
    assert dry["dry_run"] is True and dry["deleted"] == n and len(dry["items"]) == n
    assert runner.query("orchesjob.db", "SELECT count(*) FROM jobs")[0][0] == n + 1

    out, seen = run_observed(runner, "orchesjob.db", "SELECT count(*) FROM jobs", "clean", "--older-than", "30d")
    assert out["deleted"] == n and out["errors"] == 0
    assert runner.query("orchesjob.db", "SELECT run_key FROM jobs") == [("recent",)]
    # Another connection saw the history shrink batch by batch, never by more than one batch at a time.
    assert seen[0] == n + 1 and seen[-1] == 1
    assert len(seen) > 2, f"no intermediate state seen: {seen}"
    assert all((n + 1 - v) % BATCH == 0 or v == 1 for v in seen), seen
    # The recent job's run key is untouched.
    assert runner.query("orchesjob.db", "SELECT run_key FROM run_keys") == [("recent",)]


def test_writer_is_not_stalled_by_a_large_clean(runner):
    runner.ok("start", "--run-key", "seed", "--sync", "--", "true")
    n = 6000
    clone_rows(
        os.path.join(runner.home, "orchesjob.db"),
        "jobs",
        "job_id",
        n,
        {"job_id": "'w-' || n", "run_key": "'w-' || n", "attempt_no": "1", "finished_at": f"{OLD} + n",
         "request_id": "NULL"},
    )  # fmt: skip
    waits: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        db = sqlite3.connect(os.path.join(runner.home, "orchesjob.db"), timeout=60, isolation_level=None)
        try:
            while not stop.is_set():
                t = time.monotonic()
                db.execute("BEGIN IMMEDIATE")
                waits.append(time.monotonic() - t)
                db.execute("UPDATE run_keys SET updated_at = updated_at WHERE run_key = 'seed'")
                db.execute("COMMIT")
                time.sleep(0.005)
        finally:
            db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        out = runner.ok("clean", "--all", timeout=300)
    finally:
        stop.set()
        thread.join()
    assert out["deleted"] == n + 1
    assert len(waits) > 5 and max(waits) < 5.0, max(waits)


def test_reservations_clean_batches_and_older_than(runner):
    runner.ok("reserve", "--run-key", "keep-pending", "--", "true", tool=RES)
    runner.ok("reserve", "--run-key", "recent", "--", "true", tool=RES)
    runner.ok("cancel", "--run-key", "recent", tool=RES)
    n = 3000
    clone_rows(
        os.path.join(runner.home, "reserver.sqlite3"),
        "reservations",
        "reservation_id",
        n,
        {
            "reservation_id": "'r-' || n",
            "run_key": "'r-' || n",
            "status": "'CANCELLED'",
            "updated_at": f"{OLD} + n",
            "created_at": f"{OLD} + n",
        },
    )
    dry = runner.ok("clean", "--older-than", "30d", "--dry-run", tool=RES)
    assert dry["deleted"] == n and dry["matched"] == n
    sql = "SELECT count(*) FROM reservations"
    out, seen = run_observed(runner, "reserver.sqlite3", sql, "clean", "--older-than", "30d", tool=RES)
    assert out["deleted"] == n
    assert sorted(r[0] for r in runner.query("reserver.sqlite3", "SELECT run_key FROM reservations")) == [
        "keep-pending",
        "recent",
    ]
    assert len(seen) > 2 and all((n + 2 - v) % BATCH == 0 for v in seen), seen
    bad = runner.run(RES, "clean", "--older-than", "30d", "--before", "2026-01-01")
    assert bad.code == 2


def test_dispatcher_retention_deletes_aged_reservations(runner):
    runner.ok("reserve", "--run-key", "old", "--", "true", tool=RES)
    runner.ok("cancel", "--run-key", "old", tool=RES)
    runner.ok("reserve", "--run-key", "fresh", "--", "true", tool=RES)
    runner.ok("cancel", "--run-key", "fresh", tool=RES)
    db = sqlite3.connect(os.path.join(runner.home, "reserver.sqlite3"))
    db.execute("UPDATE reservations SET updated_at = ? WHERE run_key = 'old'", (OLD,))
    db.commit()
    db.close()
    r = runner.run(RES, "run", "--once", "--retention", "30d")
    assert r.code == 0, r.err
    events = [json.loads(line) for line in r.out.splitlines()]
    cleaned = [e for e in events if e["event"] == "retention_cleaned"]
    assert len(cleaned) == 1 and cleaned[0]["deleted"] == 1
    assert runner.run(RES, "status", "--run-key", "old").code == 4
    assert runner.ok("status", "--run-key", "fresh", tool=RES)["reservation"]["reservation_status"] == "CANCELLED"
    # Off by default: nothing is deleted without --retention.
    plain = runner.run(RES, "run", "--once")
    assert "retention_cleaned" not in plain.out


def test_flow_clean_deletes_finished_runs_and_their_logs(runner, tmp_path):
    done = tmp_path / "done.yaml"
    done.write_text('flow_id: d\nsteps:\n  - id: a\n    command: ["true"]\n')
    gate = tmp_path / "gate"
    waiting = tmp_path / "wait.yaml"
    waiting.write_text(
        f'flow_id: w\nsteps:\n  - id: a\n    command: ["sh", "-c", "while [ ! -e {gate} ]; do sleep 0.05; done"]\n'
    )
    finished = runner.ok("start", "-d", "--run-key", "finished", str(done), tool=FLOW)
    wait_until(lambda: runner.ok("status", "--run-key", "finished", tool=FLOW)["status"] == "SUCCEEDED")
    runner.ok("start", "-d", "--run-key", "running", str(waiting), tool=FLOW)
    flow_db = os.path.join(runner.home, "orchesjob-flow.sqlite3")
    db = sqlite3.connect(flow_db)
    db.execute("UPDATE flow_runs SET finished_at = ? WHERE run_key = 'finished'", (OLD,))
    db.commit()
    db.close()

    dry = runner.ok("clean", "--older-than", "30d", "--dry-run", tool=FLOW)
    assert dry["deleted"] == 1 and [r["run_key"] for r in dry["runs"]] == ["finished"]
    assert os.path.exists(finished["stdout_log"])
    out = runner.ok("clean", "--all", tool=FLOW)
    assert out["deleted"] == 1 and out["errors"] == 0
    assert runner.run(FLOW, "status", "--run-key", "finished").code == 2
    assert not os.path.exists(finished["stdout_log"]) and not os.path.exists(finished["stderr_log"])
    assert runner.query("orchesjob-flow.sqlite3", "SELECT count(*) FROM flow_steps WHERE run_key='finished'") == [(0,)]
    # An unfinished run is never deleted.
    assert runner.ok("status", "--run-key", "running", tool=FLOW)["status"] == "RUNNING"
    gate.touch()
    wait_until(lambda: runner.ok("status", "--run-key", "running", tool=FLOW)["status"] == "SUCCEEDED")
    assert runner.ok("clean", "--run-key", "running", tool=FLOW)["deleted"] == 1
    for bad in (
        [],
        ["--all", "--before", "2026-01-01"],
        ["--older-than", "soon"],
        ["--older-than", "1d", "--before", "1"],
    ):
        assert runner.run(FLOW, "clean", *bad).code == 2, bad


def test_older_than_on_every_clean_help():
    import subprocess

    from tests.conftest import cli_path

    for tool in ("orchesjob", RES, FLOW):
        text = subprocess.run([cli_path(tool), "clean", "--help"], capture_output=True, text=True).stdout
        assert "--older-than" in text, tool


def test_clean_removes_a_leftover_outcome_record_with_the_logs(runner):
    job = runner.ok("start", "--run-key", "k", "--sync", "--", "sh", "-c", "echo out")
    logs = os.path.dirname(job["stdout_file"])
    record = os.path.join(logs, job["job_id"] + ".outcome")
    with open(record, "w") as f:
        f.write("{}")  # what a supervisor killed after its database write may leave
    other = runner.ok("start", "--run-key", "other", "--sync", "--", "true")
    assert runner.ok("clean", "--run-key", "k", "--all")["deleted"] == 1
    assert not any(name.startswith(job["job_id"]) for name in os.listdir(logs))
    assert os.path.exists(other["stdout_file"])
