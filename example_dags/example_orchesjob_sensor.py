"""Wait for a job that something else started: here a plain Python task fires it and returns its run key."""

from __future__ import annotations

from datetime import datetime

from airflow import DAG

from airflow_provider_orchesjob.hooks import OrchesJobHook
from airflow_provider_orchesjob.sensors import OrchesJobSensor

try:
    from airflow.sdk import task
except ImportError:  # Airflow 2
    from airflow.decorators import task

try:
    from _settings import SSH_CONN_ID
except ImportError:
    from example_dags._settings import SSH_CONN_ID


@task
def start_elsewhere(run_id: str | None = None) -> str:
    """Fire and forget (think: a job another system starts on the host)."""
    job = OrchesJobHook(SSH_CONN_ID).start_job(f"example-sensor:{run_id}", ["sh", "-c", "sleep 2; echo produced"])
    return job["run_key"]


with DAG(
    dag_id="example_orchesjob_sensor",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["orchesjob", "example"],
) as dag:
    run_key = start_elsewhere()
    OrchesJobSensor(
        task_id="wait_for_job",
        run_key=run_key,
        ssh_conn_id=SSH_CONN_ID,
        poke_interval=1,
        timeout=300,
    )
