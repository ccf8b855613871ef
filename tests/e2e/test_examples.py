"""Every example DAG imports cleanly and runs end to end against the real host."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from tests.conftest import BIN_DIR

from .conftest import load_dag

EXAMPLES_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "example_dags")


def host_status(ssh_server, edge_home, *args):
    r = ssh_server.ssh(f"ORCHESJOB_HOME={edge_home} ~/.local/bin/orchesjob status " + " ".join(args))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_example_dags_import_without_errors(airflow_db):
    from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=os.path.abspath(EXAMPLES_DIR))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) >= {
        "example_orchesjob_job", "example_orchesjob_reservation", "example_orchesjob_flow",
        "example_orchesjob_fanout", "example_orchesjob_sensor", "example_orchesjob_sweep",
    }  # fmt: skip


def test_job_example(e2e_conn, ssh_server, edge_home):
    dr = load_dag("example_orchesjob_job").test()
    assert dr.state == "success"
    running = host_status(ssh_server, edge_home, "--running")
    assert running == []
    ti = dr.get_task_instance("nightly_import")
    key = f"af:example_orchesjob_job:nightly_import:{dr.run_id}"
    history = host_status(ssh_server, edge_home, "--run-key", f"'{key}'", "--all")
    assert [j["status"] for j in history] == ["SUCCEEDED"], "exactly one execution on the host"
    assert ti.state == "success"


def test_flow_example(e2e_conn, ssh_server, edge_home):
    dr = load_dag("example_orchesjob_flow").test()
    assert dr.state == "success"


def test_fanout_example(e2e_conn, monkeypatch):
    monkeypatch.setenv("ORCHESJOB_EXAMPLE_HOSTS", "127.0.0.1,localhost")
    dr = load_dag("example_orchesjob_fanout").test()
    assert dr.state == "success"
    assert sorted(ti.map_index for ti in dr.get_task_instances()) == [0, 1]


def test_sensor_example(e2e_conn):
    dr = load_dag("example_orchesjob_sensor").test()
    assert dr.state == "success"


def test_reservation_example(e2e_conn, dispatcher, ssh_server, edge_home):
    dr = load_dag("example_orchesjob_reservation").test()
    assert dr.state == "success"


def test_local_transport_needs_no_ssh(airflow_db, monkeypatch, tmp_path):
    monkeypatch.delenv("ORCHESJOB_EXAMPLE_SSH_CONN_ID", raising=False)
    monkeypatch.setenv("ORCHESJOB_HOME", str(tmp_path / "local-home"))
    monkeypatch.setenv("PATH", BIN_DIR + os.pathsep + os.environ["PATH"])
    dr = load_dag("example_orchesjob_job").test()
    assert dr.state == "success"


def test_non_deferrable_mode_polls_in_the_worker(e2e_conn, capfd, caplog):
    dr = load_dag("e2e_worker_poll").test()
    assert dr.state == "success"
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    assert "[remote stdout] line 3" in text and "[remote stderr] oops" in text


def test_reservation_waits_in_the_worker_when_not_deferrable(e2e_conn, dispatcher, capfd, caplog):
    dr = load_dag("e2e_reserve_worker_wait").test()
    assert dr.state == "success"
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    assert "reservation dispatched as job" in text and "[remote stdout] dispatched-and-done" in text
    ti = dr.get_task_instances()[0]
    assert ti.state == "success"


def test_failing_flow_lists_failed_steps_with_stderr(e2e_conn, capfd, caplog):
    dr = load_dag("e2e_flow_fails").test()
    assert dr.state == "failed"
    out = capfd.readouterr()
    text = out.out + out.err + caplog.text
    assert "step B FAILED" in text and "step B exploded" in text


def test_sensors_in_deferrable_mode(e2e_conn, dispatcher):
    dr = load_dag("e2e_sensors").test()
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert dr.state == "success", states


def test_sweep_example_stops_the_job_of_a_failed_task_instance_only(e2e_conn, ssh_server, edge_home):
    from airflow_provider_orchesjob.hooks import OrchesJobHook
    from airflow_provider_orchesjob.utils.labels import task_labels

    # A real failed task instance, and a real succeeded one, in Airflow's database.
    failed_run = load_dag("e2e_flow_fails").test()
    ok_run = load_dag("example_orchesjob_job").test()
    assert (failed_run.state, ok_run.state) == ("failed", "success")
    hook = OrchesJobHook(e2e_conn)
    # Jobs that these task instances would have followed, still running on the host.
    for key, dr, task_id, followed in (("orphan", failed_run, "flow", True), ("fire", failed_run, "flow", False),
                                       ("waited", ok_run, "nightly_import", True)):  # fmt: skip
        ti = dr.get_task_instance(task_id)
        hook.start_job(key, ["sleep", "120"], labels=task_labels(ti, namespace=None, followed=followed))
    # No such task instance: in a failed run (no try will ever come), and in no run at all.
    unscheduled = SimpleNamespace(dag_id="e2e_flow_fails", task_id="ghost", run_id=failed_run.run_id)
    unknown = SimpleNamespace(dag_id="e2e_flow_fails", task_id="flow", run_id="no-such-run")
    hook.start_job("unscheduled", ["sleep", "120"], labels=task_labels(unscheduled, namespace=None, followed=True))
    hook.start_job("unknown", ["sleep", "120"], labels=task_labels(unknown, namespace=None, followed=True))
    dr = load_dag("example_orchesjob_sweep").test()
    assert dr.state == "success"
    keys = ("orphan", "fire", "waited", "unscheduled", "unknown")
    states = {j["run_key"]: j["status"] for j in (hook.job_status(k) for k in keys)}
    # The states of each task instance and DAG run were read from Airflow itself (the Task SDK on 3.x).
    assert states == {"orphan": "ABORTED", "fire": "RUNNING", "waited": "ABORTED", "unscheduled": "ABORTED",
                      "unknown": "RUNNING"}  # fmt: skip
    hook.abort_job("unknown", grace=1)
    assert "stopped by the orchesjob sweep" in hook.job_status("orphan")["abort_reason"]
    hook.abort_job("fire", grace=1)
