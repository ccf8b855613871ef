"""Every few minutes, stop the remote work of task instances that ended without it.

A deferred task marked failed before any triggerer ran its trigger gets no
``on_kill``; neither does a task whose last try failed while its host was
unreachable. The sweep finds their jobs on the host by their labels and stops
them (and cancels their pending reservations). One sweep task per host.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG

from airflow_provider_orchesjob.operators import OrchesJobSweepOperator

try:
    from _settings import SSH_CONN_ID
except ImportError:  # imported as a package (tests)
    from example_dags._settings import SSH_CONN_ID

with DAG(
    dag_id="example_orchesjob_sweep",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(minutes=5),
    catchup=False,
    max_active_runs=1,
    tags=["orchesjob", "example", "maintenance"],
) as dag:
    OrchesJobSweepOperator(task_id="sweep", ssh_conn_id=SSH_CONN_ID, kill_grace=10)
