"""The same job on several hosts with dynamic task mapping: one run key per (task instance, map index)."""

from __future__ import annotations

from datetime import datetime

from airflow import DAG

from airflow_provider_orchesjob.operators import OrchesJobStartOperator

try:
    from _settings import COMMON, HOSTS
except ImportError:
    from example_dags._settings import COMMON, HOSTS

with DAG(
    dag_id="example_orchesjob_fanout",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["orchesjob", "example"],
) as dag:
    OrchesJobStartOperator.partial(
        task_id="rotate_logs",
        command=["sh", "-c", "echo rotating logs on $(hostname)"],
        **COMMON,
    ).expand(remote_host=HOSTS)
