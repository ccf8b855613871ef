"""What the UI and the task log show of an orchesjob task: rendered fields, and the "attached to" header line.

Local transport (the real CLIs on this machine): no SSH needed to see what a task logs.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import pytest

from airflow_provider_orchesjob.operators import (
    OrchesJobFlowOperator,
    OrchesJobReserveOperator,
    OrchesJobStartOperator,
)
from tests.conftest import BIN_DIR

ATTACHED = re.compile(r"orchesjob: attached to host (\S+), run key (\S+), (\w+ id [^\s,]+(?:, \w+ id [^\s,]+)*)")


@pytest.fixture
def local_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", BIN_DIR + os.pathsep + os.environ["PATH"])
    return str(tmp_path / "edge")


def context():
    return {"ti": SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1, try_number=1, max_tries=0)}


def attached_lines(capfd, caplog) -> list[tuple[str, ...]]:
    text = "".join(capfd.readouterr()) + caplog.text
    return sorted(set(ATTACHED.findall(text)))


def serialized_renderers(*operators) -> dict[str, dict[str, str]]:
    """template_fields_renderers as the UI reads them: from the serialized DAG."""
    from airflow.serialization import serialized_objects

    try:
        from airflow.sdk import DAG
    except ImportError:  # Airflow 2
        from airflow import DAG
    serializer = getattr(serialized_objects, "DagSerialization", None) or serialized_objects.SerializedDAG
    with DAG("renderers", schedule=None) as dag:
        for op in operators:
            dag.add_task(op)
    return {t.task_id: dict(t.template_fields_renderers) for t in serializer.from_dict(serializer.to_dict(dag)).tasks}


def test_templated_fields_render_as_what_they_are():
    renderers = serialized_renderers(
        OrchesJobStartOperator(task_id="shell", command="./import.sh {{ ds }}", env={"A": "1"}),
        OrchesJobStartOperator(task_id="argv", command=["./import.sh", "--date", "{{ ds }}"]),
        OrchesJobReserveOperator(task_id="reserve", command="true", metadata={"k": "v"}),
        OrchesJobFlowOperator(task_id="flow_yaml", flow="steps:\n  - id: A\n    command: [true]\n"),
        OrchesJobFlowOperator(task_id="flow_dict", flow={"steps": [{"id": "A", "command": ["true"]}]}),
    )
    assert renderers["shell"] == {"command": "bash", "env": "json"}
    assert renderers["argv"] == {"command": "json", "env": "json"}
    assert renderers["reserve"] == {"command": "bash", "env": "json", "metadata": "json"}
    assert renderers["flow_yaml"] == {"flow": "yaml"} and renderers["flow_dict"] == {"flow": "json"}


def test_a_job_task_names_host_run_key_and_job_at_start_and_on_resume(local_home, capfd, caplog):
    op = OrchesJobStartOperator(task_id="t", ssh_conn_id=None, orchesjob_home=local_home, command=["true"],
                                run_key="header-job", deferrable=False, poll_interval=0.1)  # fmt: skip
    job = op.execute(context())
    assert attached_lines(capfd, caplog) == [("local", "header-job", f"job id {job['job_id']}")]
    # Resuming from the trigger (a new operator object, as on another worker).
    again = OrchesJobStartOperator(task_id="t", ssh_conn_id=None, orchesjob_home=local_home, command=["true"],
                                   run_key="header-job")  # fmt: skip
    event = {"status": "done", "run_key": "header-job", "job_id": job["job_id"], "job": job}
    assert again.execute_complete(context(), event)["job_id"] == job["job_id"]
    assert attached_lines(capfd, caplog) == [("local", "header-job", f"job id {job['job_id']}")]


def test_a_reservation_task_names_its_reservation(local_home, capfd, caplog):
    op = OrchesJobReserveOperator(task_id="t", ssh_conn_id=None, orchesjob_home=local_home, command=["true"],
                                  run_key="header-res", not_before="2099-01-01T00:00:00Z")  # fmt: skip
    res = op.execute(context())
    assert attached_lines(capfd, caplog) == [("local", "header-res", f"reservation id {res['reservation_id']}")]


def test_a_flow_task_names_its_flow(local_home, capfd, caplog):
    flow = {"flow_id": "header-flow", "steps": [{"id": "A", "command": ["true"]}]}
    op = OrchesJobFlowOperator(task_id="t", ssh_conn_id=None, orchesjob_home=local_home, flow=flow,
                               flow_run_key="header-flow-run", deferrable=False, poll_interval=0.1)  # fmt: skip
    assert op.execute(context())["status"] == "SUCCEEDED"
    assert attached_lines(capfd, caplog) == [("local", "header-flow-run", "flow id header-flow")]


def test_the_host_in_the_header_names_the_jump_hosts():
    from airflow_provider_orchesjob.hooks import OrchesJobHook
    from airflow_provider_orchesjob.hooks.transport import SSHConfig

    hook = OrchesJobHook("edge")
    hook._config = SSHConfig.from_connection(
        SimpleNamespace(conn_id="edge", host="edge1", port=22, login="etl", password=None,
                        extra_dejson={"jump_hosts": "ops@bastion:2222, inner-jump"})
    )  # fmt: skip
    assert hook.host_label() == "edge1 via ops@[bastion]:2222, etl@inner-jump"


def test_a_connection_unreadable_on_resume_does_not_fail_a_finished_job(capfd, caplog):
    op = OrchesJobStartOperator(task_id="t", ssh_conn_id="orchesjob_no_such_connection", command=["true"])
    job = {"job_id": "j-1", "run_key": "k-1", "status": "SUCCEEDED", "exit_code": 0}
    assert op.execute_complete(context(), {"status": "done", "run_key": "k-1", "job_id": "j-1", "job": job}) == job
    text = "".join(capfd.readouterr()) + caplog.text
    assert "orchesjob: attached to host ? (connection orchesjob_no_such_connection unreadable" in text
    assert "run key k-1, job id j-1" in text
