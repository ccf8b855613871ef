"""The storage layer under concurrency: many processes opening one new database at once."""

from __future__ import annotations

import multiprocessing
import os
import traceback

import pytest

from edge_runtime import schema, store

MIGRATIONS = {"jobs": schema.JOBS_MIGRATIONS, "reserver": schema.RESERVER_MIGRATIONS}


def _open_and_read(path: str, which: str, barrier, failures) -> None:
    barrier.wait()  # every process opens the new file in the same instant
    try:
        db = store.Store(path, MIGRATIONS[which])
        db.one("SELECT count(*) FROM sqlite_master")
        db.close()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        failures.put(traceback.format_exc())


@pytest.mark.parametrize("which", sorted(MIGRATIONS))
def test_processes_opening_one_new_database_at_once_all_succeed(tmp_path, which):
    # The first opener creates the schema and switches the file to WAL. SQLite
    # answers that switch with "locked" at once, not after its busy timeout,
    # while another opener holds a read lock, and a reader could see the tables
    # but not yet the version. Neither may surface: an Airflow hook's first
    # `info` once failed this way against a status poll on a new home.
    ctx = multiprocessing.get_context("fork")
    failures = ctx.Queue()
    for round_ in range(40):
        path = os.path.join(tmp_path, f"h{round_}", "state.db")
        barrier = ctx.Barrier(3)
        procs = [ctx.Process(target=_open_and_read, args=(path, which, barrier, failures)) for _ in range(3)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
        assert failures.empty(), f"round {round_}: {failures.get()}"
