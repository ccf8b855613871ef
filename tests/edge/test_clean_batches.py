"""`clean` at any size, the same way in the three CLIs: pages of CLEAN_BATCH rows read by keyset
(time, rowid) and re-read under the write lock, a streamed output, --summary.

The CLIs run as real processes against real SQLite files; large histories are copies of a real
row made in SQL (``clone_rows``). Memory is bounded by a hard limit on the CLI's data segment, not
by timing: a load on the machine cannot change the outcome.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime

import pytest

from edge_runtime.store import CLEAN_BATCH
from tests.conftest import cli_path
from tests.edge.conftest import wait_status, wait_until
from tests.edge.test_retention import OLD, clone_rows

RES = "orchesjob-reserver"
FLOW = "orchesjob-flow"
# Groups of 7 rows share a time: every page boundary falls inside a group at some point.
TIED = f"{OLD} + n / 7"


def seed(runner, tool: str, n: int, tmp_path, time_expr: str = TIED) -> str:
    """One recent terminal row made by the tool itself, then ``n`` old copies ('bulk-1' ...); the db name."""
    if tool == "orchesjob":
        runner.ok("start", "--run-key", "recent", "--sync", "--", "true")
        table, key, db = "jobs", "job_id", "orchesjob.db"
        overrides = {"job_id": "'bulk-' || n", "attempt_no": "1", "finished_at": time_expr, "request_id": "NULL",
                     "stdout_file": "'/nonexistent/' || n", "stderr_file": "'/nonexistent/' || n"}  # fmt: skip
    elif tool == RES:
        runner.ok("reserve", "--run-key", "recent", "--", "true", tool=RES)
        runner.ok("cancel", "--run-key", "recent", tool=RES)
        table, key, db = "reservations", "reservation_id", "reserver.sqlite3"
        overrides = {"reservation_id": "'r-' || n", "updated_at": time_expr, "created_at": time_expr}
    else:
        flow = tmp_path / "recent.yaml"
        flow.write_text('flow_id: d\nsteps:\n  - id: a\n    command: ["true"]\n')
        runner.ok("start", "--run-key", "recent", str(flow), tool=FLOW)
        table, key, db = "flow_runs", "run_key", "orchesjob-flow.sqlite3"
        overrides = {"finished_at": time_expr}
    clone_rows(os.path.join(runner.home, db), table, key, n, {**overrides, "run_key": "'bulk-' || n"})
    return db


LIST_KEY = {"orchesjob": "items", RES: "reservations", FLOW: "runs"}
TIME_KEY = {"orchesjob": "selected_at", RES: "updated_at", FLOW: "finished_at"}
TABLE = {"orchesjob": "jobs", RES: "reservations", FLOW: "flow_runs"}


def layout(tool: str, doc: dict) -> str:
    """The text ``emit`` (``emit_line`` for orchesjob-flow) prints for ``doc``."""
    if tool == FLOW:
        return json.dumps(doc, separators=(",", ":")) + "\n"
    return json.dumps(doc, indent=2) + "\n"


@pytest.mark.parametrize("tool", ["orchesjob", RES, FLOW])
@pytest.mark.parametrize("n", [CLEAN_BATCH, CLEAN_BATCH + 1])
def test_every_row_once_across_batch_boundaries(runner, tmp_path, tool, n):
    db = seed(runner, tool, n, tmp_path)
    bulk = sorted(f"bulk-{i}" for i in range(1, n + 1))
    dry = runner.run(tool, "clean", "--older-than", "30d", "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out == layout(tool, dry.json), "the streamed text is the tool's usual layout"
    assert dry.json["deleted"] == n and dry.json["dry_run"] is True
    assert sorted(i["run_key"] for i in dry.json[LIST_KEY[tool]]) == bulk
    assert runner.query(db, f"SELECT count(*) FROM {TABLE[tool]}") == [(n + 1,)], "a dry run deletes nothing"

    r = runner.run(tool, "clean", "--older-than", "30d")
    assert r.code == 0, r.err
    assert r.out == layout(tool, r.json)
    out = r.json
    items = out[LIST_KEY[tool]]
    assert out["deleted"] == n == len(items) and out["dry_run"] is False
    assert sorted(i["run_key"] for i in items) == bulk, "each row listed exactly once"
    times = [i[TIME_KEY[tool]] for i in items]
    assert times == sorted(times), "in the order of the selection"
    if tool != RES:
        assert out["errors"] == 0
    if tool != "orchesjob":
        assert out["matched"] == n
    assert runner.query(db, f"SELECT run_key FROM {TABLE[tool]}") == [("recent",)]


def test_terminal_rows_without_a_time_are_paged_too(runner, tmp_path):
    # The schema allows a NULL finished_at; --all selects such rows: first in the order, then the rest.
    seed(runner, "orchesjob", CLEAN_BATCH + 5, tmp_path, time_expr=f"CASE WHEN n <= {CLEAN_BATCH + 2} THEN NULL "
         f"ELSE {OLD} + n END")  # fmt: skip
    out = runner.ok("clean", "--all")
    assert out["deleted"] == CLEAN_BATCH + 6
    assert sorted(i["run_key"] for i in out["items"]) == sorted(["recent", *(f"bulk-{i}" for i in
                                                                             range(1, CLEAN_BATCH + 6))])  # fmt: skip
    assert runner.query("orchesjob.db", "SELECT count(*) FROM jobs") == [(0,)]


@pytest.mark.parametrize("tool", ["orchesjob", RES, FLOW])
def test_summary_prints_the_counts_and_the_selection_only(runner, tmp_path, tool):
    db = seed(runner, tool, 3, tmp_path)
    counts = {"orchesjob": {"deleted", "errors", "dry_run"}, RES: {"deleted", "dry_run", "matched"},
              FLOW: {"deleted", "errors", "dry_run", "matched"}}[tool]  # fmt: skip
    t = time.time()
    dry = runner.run(tool, "clean", "--older-than", "30d", "--dry-run", "--summary")
    assert dry.code == 0, dry.err
    assert dry.out == layout(tool, dry.json)
    assert set(dry.json) == counts | {"selection"}
    assert dry.json["deleted"] == 3 and dry.json["dry_run"] is True
    selection = dry.json["selection"]
    assert abs(selection["before"] - (t - 30 * 86400)) < 60
    assert datetime.fromisoformat(selection["before_iso"]).timestamp() == selection["before"]
    assert selection["after"] is None and selection["after_iso"] is None and selection["run_key"] is None
    assert runner.query(db, f"SELECT count(*) FROM {TABLE[tool]}") == [(4,)]

    out = runner.ok("clean", "--all", "--run-key", "bulk-2", "--summary", tool=tool)
    assert out["deleted"] == 1 and out["selection"]["run_key"] == "bulk-2" and out["selection"]["before"] is None
    out = runner.ok("clean", "--after", "2000-01-01", "--older-than", "30d", "--summary", tool=tool)
    assert out["deleted"] == 2 and out["dry_run"] is False
    assert out["selection"]["after"] == int(datetime(2000, 1, 1).timestamp())  # local time, as documented
    assert runner.query(db, f"SELECT run_key FROM {TABLE[tool]}") == [("recent",)]


def test_summary_of_one_job_names_it(runner):
    assert "clean-summary" in runner.ok("info")["capabilities"]
    job = runner.ok("start", "--run-key", "one", "--sync", "--", "true")
    out = runner.ok("clean", "--job-id", job["job_id"], "--summary")
    assert out == {"deleted": 1, "errors": 0, "dry_run": False, "selection": {
        "before": None, "before_iso": None, "after": None, "after_iso": None, "run_key": None,
        "job_id": job["job_id"]}}  # fmt: skip


@pytest.mark.parametrize("tool", ["orchesjob", RES, FLOW])
def test_clean_has_no_table_format(runner, tool):
    r = runner.run(tool, "clean", "--all", "--format", "table")
    assert r.code == 2 and "--format" in r.error["error"]
    assert "--summary" in runner.run(tool, "clean", "--help").out


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _stop_outside_the_write_lock(pid: int, db_path: str) -> None:
    """SIGSTOP ``pid`` at a moment it does not hold the write lock (else others could not write)."""
    probe = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        while True:
            os.kill(pid, signal.SIGSTOP)
            wait_until(lambda: _state(pid) == "T")
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:
                os.kill(pid, signal.SIGCONT)
                time.sleep(0.005)
    finally:
        probe.close()


def test_an_active_job_survives_and_one_ending_during_the_clean_goes_with_it(runner, tmp_path):
    ends, stays = tmp_path / "ends", tmp_path / "stays"
    for key, gate in (("ends", ends), ("stays", stays)):
        runner.ok("start", "--run-key", key, "--", "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done")
        wait_status(runner, key, statuses=("RUNNING",))
    db_path = os.path.join(runner.home, "orchesjob.db")
    n = 50 * CLEAN_BATCH
    clone_rows(db_path, "jobs", "job_id", n, {"job_id": "'bulk-' || n", "run_key": "'bulk-' || n",
               "attempt_no": "1", "status": "'SUCCEEDED'", "finished_at": TIED, "request_id": "NULL",
               "stdout_file": "'/nonexistent/' || n", "stderr_file": "'/nonexistent/' || n"})  # fmt: skip
    with sqlite3.connect(db_path) as db:  # RUNNING, with a finish time inside the window: still never deleted
        db.execute("UPDATE jobs SET finished_at = ? WHERE run_key = 'stays'", (OLD,))
    out_path = tmp_path / "clean.json"
    try:
        with open(out_path, "wb") as out:
            clean = runner.popen("orchesjob", "clean", "--before", str(time.time() + 3600), stdout=out)
        wait_until(lambda: runner.query("orchesjob.db", "SELECT count(*) FROM jobs")[0][0] < n)
        _stop_outside_the_write_lock(clean.pid, db_path)
        left = runner.query("orchesjob.db", "SELECT count(*) FROM jobs")[0][0]
        assert left > 2 * CLEAN_BATCH, "the clean was stopped half-way"
        ends.touch()  # the job ends while the clean is half-way: it is now in the window
        assert wait_status(runner, "ends")["status"] == "SUCCEEDED"
        os.kill(clean.pid, signal.SIGCONT)
        assert clean.wait(timeout=120) == 0
        assert runner.query("orchesjob.db", "SELECT run_key, status FROM jobs") == [("stays", "RUNNING")]
    finally:
        stays.touch()
    result = json.loads(out_path.read_text())
    keys = [i["run_key"] for i in result["items"]]
    assert result["deleted"] == len(keys) == n + 1 and len(set(keys)) == len(keys)
    assert "ends" in keys and "stays" not in keys


def test_concurrent_cleans_delete_and_report_each_row_once(runner, tmp_path):
    db = seed(runner, "orchesjob", 5 * CLEAN_BATCH, tmp_path)
    db_path = os.path.join(runner.home, db)
    lock = sqlite3.connect(db_path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # both read their first page, then wait for the write lock
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = []
    try:
        for path in outs:
            with open(path, "wb") as out:
                procs.append(runner.popen("orchesjob", "clean", "--older-than", "30d", stdout=out))
        time.sleep(2.0)  # both past their first (lock-free) page read; the busy timeout is 30 s
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    a, b = (json.loads(p.read_text()) for p in outs)
    keys_a, keys_b = ({i["run_key"] for i in d["items"]} for d in (a, b))
    assert not keys_a & keys_b, "a row deleted by one clean is not reported by the other"
    assert keys_a | keys_b == {f"bulk-{i}" for i in range(1, 5 * CLEAN_BATCH + 1)}
    assert a["deleted"] + b["deleted"] == 5 * CLEAN_BATCH
    assert (a["deleted"], b["deleted"]) == (len(keys_a), len(keys_b))


def test_an_interrupted_clean_still_prints_what_it_deleted(runner, tmp_path):
    n = 20 * CLEAN_BATCH
    db = seed(runner, "orchesjob", n, tmp_path)
    db_path = os.path.join(runner.home, db)
    out_path = tmp_path / "clean.json"
    with open(out_path, "wb") as out:
        clean = runner.popen("orchesjob", "clean", "--older-than", "30d", stdout=out, stderr=subprocess.PIPE)
    wait_until(lambda: runner.query(db, "SELECT count(*) FROM jobs")[0][0] <= n + 1 - CLEAN_BATCH)
    lock = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the clean waits at its next batch
    try:
        time.sleep(0.3)
        os.kill(clean.pid, signal.SIGINT)
        time.sleep(0.3)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert clean.wait(timeout=60) == 130
    assert json.loads(clean.stderr.read())["error_type"] == "interrupted"
    result = json.loads(out_path.read_text())  # a complete document
    left = {r[0] for r in runner.query(db, "SELECT run_key FROM jobs")}
    gone = {f"bulk-{i}" for i in range(1, n + 1)} - left
    assert 0 < result["deleted"] == len(gone) < n, "the count is exactly what is gone"
    listed = {i["run_key"] for i in result["items"]}
    assert listed <= gone and len(listed) > len(gone) - CLEAN_BATCH


def _data_limit(mib: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (mib << 20, mib << 20))

    return apply


def test_memory_stays_flat_at_200000_rows(runner, tmp_path):
    """Under a 48 MiB data-segment limit, where holding the selected rows is impossible (checked)."""
    n = 200_000
    db = seed(runner, "orchesjob", n, tmp_path, time_expr=f"{OLD} + n")
    db_path = os.path.join(runner.home, db)
    control = subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("
         "'SELECT job_id, run_key, status, finished_at, stdout_file, stderr_file FROM jobs').fetchall()", db_path],
        preexec_fn=_data_limit(48), capture_output=True, text=True,
    )  # fmt: skip
    assert control.returncode != 0 and "MemoryError" in control.stderr, "the limit is below the rows' size"
    for args in (["--dry-run"], []):
        out_path = tmp_path / "clean.json"
        with open(out_path, "wb") as out:
            p = subprocess.run(
                [cli_path("orchesjob"), "clean", "--older-than", "30d", *args],
                env=runner.env,
                stdout=out,
                stderr=subprocess.PIPE,
                preexec_fn=_data_limit(48),
                timeout=600,
            )
        assert p.returncode == 0, p.stderr
        with open(out_path, "rb") as f:
            f.seek(-100, os.SEEK_END)
            assert f'"deleted": {n},'.encode() in f.read()
    assert runner.query(db, "SELECT run_key FROM jobs") == [("recent",)]
