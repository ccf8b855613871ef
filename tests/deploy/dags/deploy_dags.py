"""DAGs of the deployment tests. Every remote command is built by the test and passed in
``dag_run.conf``; each one appends a line to a counter file on the host per execution."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG

from airflow_provider_orchesjob.operators import (
    OrchesJobFlowOperator,
    OrchesJobReserveOperator,
    OrchesJobStartOperator,
    OrchesJobSweepOperator,
)

CONN_ID = "orchesjob_deploy"
FANOUT = 20
COMMON = {"start_date": datetime(2026, 1, 1), "schedule": None, "catchup": False}

# (a), (b): 20 deferred mapped tasks; command i gets its map index as $1 through the template.
with DAG(dag_id="deploy_fanout", max_active_tasks=2 * FANOUT, **COMMON):
    OrchesJobStartOperator.partial(task_id="job", ssh_conn_id=CONN_ID, poll_interval=2.0).expand(
        command=[f"{{{{ dag_run.conf['command'] }}}} {i}" for i in range(FANOUT)]
    )

# (c): a non-deferrable task whose worker is killed; the retry must reattach. One DAG per executor.
for executor in ("LocalExecutor", "CeleryExecutor"):
    with DAG(dag_id=f"deploy_worker_{executor[:-8].lower()}", **COMMON):
        OrchesJobStartOperator(
            task_id="job",
            ssh_conn_id=CONN_ID,
            command="{{ dag_run.conf['command'] }}",
            deferrable=False,
            poll_interval=1.0,
            retries=1,
            retry_delay=timedelta(seconds=1),
            executor=executor,
        )

# (c) variant for (e): the worker is killed after the job succeeded, before the task reports it.
with DAG(dag_id="deploy_worker_slow_poll", **COMMON):
    OrchesJobStartOperator(
        task_id="job",
        ssh_conn_id=CONN_ID,
        command="{{ dag_run.conf['command'] }}",
        deferrable=False,
        poll_interval=60.0,
        retries=1,
        retry_delay=timedelta(seconds=1),
    )

# (d), (e), (h): one deferred job, as plain as it gets.
with DAG(dag_id="deploy_job", **COMMON):
    OrchesJobStartOperator(
        task_id="job", ssh_conn_id=CONN_ID, command="{{ dag_run.conf['command'] }}", poll_interval=1.0
    )

# (h): several deferred jobs on one connection.
with DAG(dag_id="deploy_three", **COMMON):
    for i in range(3):
        OrchesJobStartOperator(
            task_id=f"job{i}", ssh_conn_id=CONN_ID, command=f"{{{{ dag_run.conf['command'] }}}} {i}", poll_interval=1.0
        )

# (g): Airflow's execution_timeout on a deferred task, and the operator's own trigger_timeout.
with DAG(dag_id="deploy_execution_timeout", **COMMON):
    OrchesJobStartOperator(
        task_id="job",
        ssh_conn_id=CONN_ID,
        command="{{ dag_run.conf['command'] }}",
        poll_interval=1.0,
        execution_timeout=timedelta(seconds=10),
        kill_grace=2,
    )
with DAG(dag_id="deploy_trigger_timeout", **COMMON):
    OrchesJobStartOperator(
        task_id="job",
        ssh_conn_id=CONN_ID,
        command="{{ dag_run.conf['command'] }}",
        poll_interval=1.0,
        trigger_timeout=10,
        kill_grace=2,
    )

# (f): a reservation due a little later, waited for in the triggerer; a two-step flow.
with DAG(dag_id="deploy_reservation", **COMMON):
    OrchesJobReserveOperator(
        task_id="reserve",
        ssh_conn_id=CONN_ID,
        command="{{ dag_run.conf['command'] }}",
        run_key="{{ dag_run.conf['run_key'] }}",
        not_before="{{ dag_run.conf['not_before'] }}",
        wait_for_completion=True,
        poll_interval=1.0,
    )
with DAG(dag_id="deploy_flow", **COMMON):
    OrchesJobFlowOperator(
        task_id="flow", ssh_conn_id=CONN_ID, poll_interval=1.0, flow_run_key="{{ dag_run.conf['run_key'] }}",
        flow={"flow_id": "deploy", "steps": [
            {"id": "A", "command": ["sh", "-c", "{{ dag_run.conf['step_a'] }}"]},
            {"id": "B", "when": "A", "command": ["sh", "-c", "{{ dag_run.conf['step_b'] }}"]},
        ]},
    )  # fmt: skip

# (d) sweep: what stops the job of a deferred task marked failed before any triggerer ran its trigger.
with DAG(dag_id="deploy_sweep", **COMMON):
    OrchesJobSweepOperator(task_id="sweep", ssh_conn_id=CONN_ID, kill_grace=2)
