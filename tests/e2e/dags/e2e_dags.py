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
