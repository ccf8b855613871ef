"""Airflow 2.11: the provider imports, registers, and runs an example DAG end to end against the real sshd.

Collected only when Airflow 2 is installed (see ``collect_ignore`` in tests/conftest.py); run by
scripts/test_airflow2.sh in its own venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.e2e.conftest import load_dag

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "example_dags")
PROVIDER = "airflow-provider-orchesjob"


def test_airflow_is_2_11():
    import airflow

    assert airflow.__version__.startswith("2.11."), airflow.__version__
    from airflow_provider_orchesjob import compat

    assert not compat.AIRFLOW_V3 and not compat.AIRFLOW_V3_3


def test_public_classes_import():
    from airflow.hooks.base import BaseHook
    from airflow.models import BaseOperator
    from airflow.sensors.base import BaseSensorOperator
    from airflow.triggers.base import BaseTrigger

    from airflow_provider_orchesjob.hooks import OrchesJobHook
    from airflow_provider_orchesjob.operators import (
        OrchesJobFlowOperator,
        OrchesJobReserveOperator,
        OrchesJobStartOperator,
    )
    from airflow_provider_orchesjob.sensors import OrchesJobFlowSensor, OrchesJobReservationSensor, OrchesJobSensor
    from airflow_provider_orchesjob.triggers import (
        OrchesJobFlowTrigger,
        OrchesJobReservationTrigger,
        OrchesJobTrigger,
    )

    assert issubclass(OrchesJobHook, BaseHook)
    for op in (OrchesJobStartOperator, OrchesJobReserveOperator, OrchesJobFlowOperator):
        assert issubclass(op, BaseOperator), op
    for sensor in (OrchesJobSensor, OrchesJobReservationSensor, OrchesJobFlowSensor):
        assert issubclass(sensor, BaseSensorOperator), sensor
    for trigger_cls in (OrchesJobTrigger, OrchesJobReservationTrigger, OrchesJobFlowTrigger):
        assert issubclass(trigger_cls, BaseTrigger), trigger_cls
    # Triggers must survive the serialize/re-create round trip the triggerer does.
    trigger = OrchesJobTrigger(ssh_conn_id="x", run_key="k", job_id="j", poll_interval=0.5)
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    assert name == "OrchesJobTrigger" and module.startswith("airflow_provider_orchesjob.")
    assert OrchesJobTrigger(**kwargs).serialize() == (path, kwargs)


def test_provider_is_registered(airflow_db):
    from airflow.providers_manager import ProvidersManager

    providers = ProvidersManager().providers
    assert PROVIDER in providers
    assert providers[PROVIDER].data["name"] == "OrchesJob"

    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    # AIRFLOW__CORE__UNIT_TEST_MODE picks the LocalExecutor, which Airflow 2's CLI rejects on SQLite
    # (it logs the error to stdout, in the middle of the JSON).
    env = {**os.environ, "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor"}
    p = subprocess.run(
        [airflow, "providers", "list", "--output", "json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("[")))
    listed = {row["package_name"]: row for row in rows}
    assert PROVIDER in listed, sorted(listed)


def test_example_dags_import_without_errors(airflow_db):
    from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=os.path.abspath(EXAMPLES_DIR), include_examples=False)
    assert bag.import_errors == {}
    assert set(bag.dag_ids) >= {
        "example_orchesjob_job", "example_orchesjob_reservation", "example_orchesjob_flow",
        "example_orchesjob_fanout", "example_orchesjob_sensor", "example_orchesjob_sweep",
    }  # fmt: skip


def test_job_example_end_to_end(e2e_conn, ssh_server, edge_home):
    """dag.test() defers, the trigger polls the real host, and the job ran exactly once there."""
    dr = load_dag("example_orchesjob_job").test()
    assert dr.state == "success"
    ti = dr.get_task_instance("nightly_import")
    assert ti.state == "success"

    def host_status(*args: str):
        r = ssh_server.ssh(f"ORCHESJOB_HOME={edge_home} ~/.local/bin/orchesjob status " + " ".join(args))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert host_status("--running") == []
    key = f"af:example_orchesjob_job:nightly_import:{dr.run_id}"
    history = host_status("--run-key", f"'{key}'", "--all")
    assert [j["status"] for j in history] == ["SUCCEEDED"], "exactly one execution on the host"
    assert history[0]["attempt_no"] == 1
    # The operator's return value (the final job JSON) reached XCom.
    assert ti.xcom_pull(task_ids="nightly_import")["job_id"] == history[0]["job_id"]


def test_sweep_reads_task_instance_states_from_the_database(e2e_conn, ssh_server, edge_home):
    from types import SimpleNamespace

    from airflow_provider_orchesjob.hooks import OrchesJobHook
    from airflow_provider_orchesjob.utils.labels import task_labels

    done = load_dag("example_orchesjob_job").test()
    assert done.state == "success"
    hook = OrchesJobHook(e2e_conn)
    ended = done.get_task_instance("nightly_import")  # success: a waited job still running was abandoned
    missing = SimpleNamespace(dag_id="example_orchesjob_job", task_id="nightly_import", run_id="no-such-run")
    hook.start_job("ended", ["sleep", "120"], labels=task_labels(ended, namespace=None, followed=True))
    hook.start_job("missing", ["sleep", "120"], labels=task_labels(missing, namespace=None, followed=True))
    ghost = SimpleNamespace(dag_id="example_orchesjob_job", task_id="ghost", run_id=done.run_id)  # finished run
    hook.start_job("ghost", ["sleep", "120"], labels=task_labels(ghost, namespace=None, followed=True))
    assert load_dag("example_orchesjob_sweep").test().state == "success"
    assert hook.job_status("ended")["status"] == "ABORTED"
    assert hook.job_status("ghost")["status"] == "ABORTED", "no try starts in a finished DAG run"
    assert hook.job_status("missing")["status"] == "RUNNING", "a task instance that does not exist proves nothing"
    hook.abort_job("missing", grace=1)
