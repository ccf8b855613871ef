"""Job labels: who started a job (e.g. an Airflow task instance), kept with it and selectable."""

from __future__ import annotations

import os

import pytest

from edge_runtime import schema, store

RES = "orchesjob-reserver"
AIRFLOW = {"airflow.dag_id": "d", "airflow.task_id": "t", "airflow.run_id": "manual__2026-11-29T10:00:00+00:00"}


def labels_args(labels: dict[str, str]) -> list[str]:
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]


def test_labels_are_kept_shown_and_select_among_active_jobs(runner):
    first = runner.ok("start", "--run-key", "a", *labels_args(AIRFLOW), "--", "sleep", "30")
    assert first["labels"] == AIRFLOW
    runner.ok("start", "--run-key", "b", "--label", "airflow.dag_id=other", "--", "sleep", "30")
    runner.ok("start", "--run-key", "c", "--", "sleep", "30")
    assert runner.ok("status", "--run-key", "c")["labels"] == {}
    assert [j["run_key"] for j in runner.ok("status", "--running")] == ["a", "b", "c"]
    # Every label given must match, with its exact value.
    picked = runner.ok("status", "--running", "--label", "airflow.dag_id=d", "--label", "airflow.task_id=t")
    assert [j["run_key"] for j in picked] == ["a"]
    assert runner.ok("status", "--running", "--label", "airflow.dag_id=d", "--label", "airflow.task_id=x") == []
    for key in ("a", "b", "c"):
        runner.ok("abort", "--run-key", key, "--grace-seconds", "1", "--wait", "10")
    # A finished job keeps its labels; a rerun inherits them.
    assert runner.ok("status", "--run-key", "a")["labels"] == AIRFLOW
    assert runner.ok("rerun", "--run-key", "a", "--sync")["labels"] == AIRFLOW


@pytest.mark.parametrize(
    "label, message",
    [
        ("novalue", "expects KEY=VALUE"),
        ("=v", "invalid key"),
        ("bad key=v", "invalid key"),
        (".hidden=v", "invalid key"),
        ("k" * 64 + "=v", "invalid key"),
        ("k=" + "v" * 1025, "at most 1024"),
    ],
)
def test_bad_labels_are_refused_before_anything_is_stored(runner, label, message):
    r = runner.oj("start", "--run-key", "bad", "--label", label, "--", "true")
    assert r.code == 2 and message in r.error["error"]
    assert runner.oj("status", "--run-key", "bad").code == 3


def test_too_many_labels_are_refused(runner):
    r = runner.oj("start", "--run-key", "many", *labels_args({f"k{i}": "v" for i in range(33)}), "--", "true")
    assert r.code == 2 and "at most 32" in r.error["error"]


def test_label_filter_needs_running(runner):
    r = runner.oj("status", "--run-key", "x", "--label", "a=b")
    assert r.code == 2 and "--running" in r.error["error"]


def test_a_reservation_labels_the_job_it_dispatches(runner):
    runner.ok("reserve", "--run-key", "r", "--not-before", "2000-01-01T00:00:00Z",
              "--orchesjob-start-option=--label=airflow.dag_id=d", "--", "true", tool=RES)  # fmt: skip
    assert runner.run(RES, "run", "--once").code == 0  # prints one event per line
    job = runner.ok("status", "--run-key", "r", "--include-job", tool=RES)["job"]
    assert job["labels"] == {"airflow.dag_id": "d"}


def test_a_database_of_the_previous_schema_gains_labels_and_keeps_its_jobs(runner):
    os.makedirs(runner.home, mode=0o700)
    path = os.path.join(runner.home, "orchesjob.db")
    old = store.Store(path, schema.JOBS_MIGRATIONS[:3])
    old.close()
    runner.ok("start", "--run-key", "before", "--sync", "--", "true")  # migrates, then runs
    assert runner.query("orchesjob.db", "PRAGMA user_version") == [(len(schema.JOBS_MIGRATIONS),)]
    job = runner.ok("start", "--run-key", "after", "--label", "k=v", "--sync", "--", "true")
    assert job["labels"] == {"k": "v"} and runner.ok("status", "--run-key", "before")["labels"] == {}


def test_capability_is_advertised(runner):
    assert "job-labels" in runner.ok("info")["capabilities"]
