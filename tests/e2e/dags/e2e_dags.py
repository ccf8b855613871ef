"""The DAG folder of the end-to-end tests: the shipped examples plus a configurable job DAG."""

from __future__ import annotations

import os
import sys
from datetime import datetime

from airflow import DAG

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "example_dags")
sys.path.insert(0, os.path.abspath(EXAMPLES))

from example_orchesjob_fanout import dag as fanout_dag  # noqa: E402,F401
from example_orchesjob_flow import dag as flow_dag  # noqa: E402,F401
from example_orchesjob_job import dag as job_dag  # noqa: E402,F401
from example_orchesjob_reservation import dag as reservation_dag  # noqa: E402,F401
from example_orchesjob_sensor import dag as sensor_dag  # noqa: E402,F401
from example_orchesjob_sweep import dag as sweep_dag  # noqa: E402,F401

from airflow_provider_orchesjob.operators import OrchesJobStartOperator  # noqa: E402

# Run-time knobs come from dag_run.conf, so each fault test shapes its own run.
with DAG(dag_id="e2e_job", start_date=datetime(2026, 1, 1), schedule=None, catchup=False) as e2e_job_dag:
    OrchesJobStartOperator(
        task_id="job",
        command="{{ dag_run.conf['command'] }}",
        run_key="{{ dag_run.conf['run_key'] }}",
        ssh_conn_id=os.environ.get("ORCHESJOB_EXAMPLE_SSH_CONN_ID") or None,
        poll_interval=0.5,
    )

from airflow_provider_orchesjob.operators import OrchesJobFlowOperator, OrchesJobReserveOperator  # noqa: E402
from airflow_provider_orchesjob.sensors import (  # noqa: E402
    OrchesJobFlowSensor,
    OrchesJobReservationSensor,
    OrchesJobSensor,
)

_CONN = os.environ.get("ORCHESJOB_EXAMPLE_SSH_CONN_ID") or None

# Non-deferrable: the worker polls, streaming logs the same way.
with DAG(dag_id="e2e_worker_poll", start_date=datetime(2026, 1, 1), schedule=None) as e2e_worker_poll:
    OrchesJobStartOperator(
        task_id="job", command="for i in 1 2 3; do echo line $i; done; echo oops >&2", ssh_conn_id=_CONN,
        deferrable=False, poll_interval=0.3,
    )  # fmt: skip

# Non-deferrable reservation with wait_for_completion: the worker waits for the dispatch, then the job.
with DAG(dag_id="e2e_reserve_worker_wait", start_date=datetime(2026, 1, 1), schedule=None) as e2e_reserve_worker_wait:
    OrchesJobReserveOperator(
        task_id="reserve", command=["sh", "-c", "echo dispatched-and-done"], run_key="e2e-rw-{{ run_id }}",
        not_before="{{ (dag_run.start_date + macros.timedelta(seconds=2)).isoformat() }}",
        ssh_conn_id=_CONN, wait_for_completion=True, deferrable=False, poll_interval=0.3,
    )  # fmt: skip

# A flow whose step fails: the task fails listing the step and its stderr tail.
with DAG(dag_id="e2e_flow_fails", start_date=datetime(2026, 1, 1), schedule=None) as e2e_flow_fails:
    OrchesJobFlowOperator(
        task_id="flow",
        flow={"flow_id": "fails", "steps": [
            {"id": "A", "command": ["sh", "-c", "echo fine"]},
            {"id": "B", "when": "A", "command": ["sh", "-c", "echo 'step B exploded' >&2; exit 5"]},
        ]},
        ssh_conn_id=_CONN, poll_interval=0.3,
    )  # fmt: skip

# Sensors in deferrable mode, each on work another task created.
with DAG(dag_id="e2e_sensors", start_date=datetime(2026, 1, 1), schedule=None) as e2e_sensors:
    reserve = OrchesJobReserveOperator(
        task_id="reserve", command=["sh", "-c", "sleep 1; echo reserved"], run_key="e2e-res-{{ run_id }}",
        ssh_conn_id=_CONN,
    )  # fmt: skip
    flow = OrchesJobFlowOperator(
        task_id="flow", flow={"flow_id": "f", "steps": [{"id": "A", "command": ["true"]}]},
        flow_run_key="e2e-flow-{{ run_id }}", ssh_conn_id=_CONN, poll_interval=0.3,
    )  # fmt: skip
    reserve >> OrchesJobReservationSensor(
        task_id="wait_reservation", run_key="e2e-res-{{ run_id }}", ssh_conn_id=_CONN, deferrable=True,
        poke_interval=0.5,
    )  # fmt: skip
    reserve >> OrchesJobSensor(
        task_id="wait_job", run_key="e2e-res-{{ run_id }}", ssh_conn_id=_CONN, deferrable=True, poke_interval=0.5,
    )  # fmt: skip
    flow >> OrchesJobFlowSensor(
        task_id="wait_flow", flow_run_key="e2e-flow-{{ run_id }}", ssh_conn_id=_CONN, deferrable=True,
        poke_interval=0.5,
    )  # fmt: skip

# A flow whose step fails on the first try only: the Airflow retry repairs the flow run.
with DAG(dag_id="e2e_flow_retry", start_date=datetime(2026, 1, 1), schedule=None) as e2e_flow_retry:
    OrchesJobFlowOperator(
        task_id="flow",
        flow={"flow_id": "retry", "steps": [
            {"id": "A", "command": ["sh", "-c", "echo A >> \"$MARK.A\""],
             "env": {"MARK": "{{ dag_run.conf['mark'] }}"}},
            {"id": "B", "when": "A", "env": {"MARK": "{{ dag_run.conf['mark'] }}"}, "command": [
                "sh", "-c", "echo B >> \"$MARK.B\"; [ $(wc -l < \"$MARK.B\") -ge 2 ]"]},
        ]},
        flow_run_key="{{ dag_run.conf['run_key'] }}", ssh_conn_id=_CONN, poll_interval=0.3, retries=1,
        retry_delay=0,
    )  # fmt: skip

# A reserved job that fails the first time: the Airflow retry starts attempt 2 at once.
with DAG(dag_id="e2e_reservation_retry", start_date=datetime(2026, 1, 1), schedule=None) as e2e_reservation_retry:
    OrchesJobReserveOperator(
        task_id="reserve",
        command=["sh", "-c", 'echo run >> "$MARK"; [ $(wc -l < "$MARK") -ge 2 ]'],
        env={"MARK": "{{ dag_run.conf['mark'] }}"},
        run_key="{{ dag_run.conf['run_key'] }}", wait_for_completion=True, ssh_conn_id=_CONN, poll_interval=0.3,
        retries=1, retry_delay=0,
    )  # fmt: skip

# The task's execution_timeout while it is deferred: the trigger's own deadline stops the job.
with DAG(dag_id="e2e_deadline", start_date=datetime(2026, 1, 1), schedule=None) as e2e_deadline:
    from datetime import timedelta

    OrchesJobStartOperator(
        task_id="job", command="sleep 60", run_key="{{ dag_run.conf['run_key'] }}", ssh_conn_id=_CONN,
        poll_interval=0.5, execution_timeout=timedelta(seconds=4), kill_grace=1,
    )  # fmt: skip

# A flow polled from the worker (deferrable=False).
with DAG(dag_id="e2e_flow_worker", start_date=datetime(2026, 1, 1), schedule=None) as e2e_flow_worker:
    OrchesJobFlowOperator(
        task_id="flow",
        flow={"flow_id": "worker", "steps": [
            {"id": "A", "command": ["sh", "-c", "echo A; sleep 0.5"]},
            {"id": "B", "when": "A", "command": ["sh", "-c", "echo B"]},
        ]},
        flow_run_key="{{ dag_run.conf['run_key'] }}", ssh_conn_id=_CONN, poll_interval=0.3, deferrable=False,
    )  # fmt: skip

# The reuse rules the operators expose, each on a run key the test prepares.
for _dag_id, _options in (("e2e_retry_lost", {"retry_lost": True}), ("e2e_rerun", {"on_success_found": "rerun"})):
    with DAG(dag_id=_dag_id, start_date=datetime(2026, 1, 1), schedule=None) as _policy_dag:
        OrchesJobStartOperator(
            task_id="job", command="{{ dag_run.conf['command'] }}", run_key="{{ dag_run.conf['run_key'] }}",
            ssh_conn_id=_CONN, poll_interval=0.5, **_options,
        )  # fmt: skip
    globals()[_dag_id] = _policy_dag

# A secret in env: it reaches the command, and nothing else.
with DAG(dag_id="e2e_env_secret", start_date=datetime(2026, 1, 1), schedule=None) as e2e_env_secret:
    OrchesJobStartOperator(
        task_id="job", command='printf %s "$TOKEN" > "$OUT"; echo "token of $(printf %s "$TOKEN" | wc -c) characters"',
        env={"TOKEN": "{{ dag_run.conf['token'] }}", "OUT": "{{ dag_run.conf['out'] }}"},
        ssh_conn_id=_CONN, poll_interval=0.5,
    )  # fmt: skip

# How a kill check reads a mapped task instance's own state, through the real Airflow API.
with DAG(dag_id="e2e_state_lookup", start_date=datetime(2026, 1, 1), schedule=None) as e2e_state_lookup:
    try:
        from airflow.sdk import task
    except ImportError:  # Airflow 2.11
        from airflow.decorators import task

    @task
    def own_state(n: int, ti=None) -> str:
        import asyncio

        from airflow_provider_orchesjob.compat import (
            TRY_XCOM_KEY,
            task_instance_state,
            task_instance_state_sync,
            task_instance_try,
        )
        from airflow_provider_orchesjob.utils.lifecycle import normalize_state

        key = (ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        ti.xcom_push(key=TRY_XCOM_KEY, value=ti.try_number)  # what a deferring try records

        async def from_async():  # the way a trigger asks (run_sync)
            return normalize_state(await task_instance_state(*key)), await task_instance_try(*key)

        state, try_number = asyncio.run(from_async())
        assert state == normalize_state(task_instance_state_sync(*key)), state
        assert try_number == ti.try_number, (try_number, ti.try_number)
        return state

    own_state.expand(n=[0, 1])
