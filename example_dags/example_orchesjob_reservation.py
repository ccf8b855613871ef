"""Reserve a job for a future time: the host dispatches it on its own, then Airflow collects the result."""

from __future__ import annotations

from datetime import datetime

from airflow import DAG

from airflow_provider_orchesjob.operators import OrchesJobReserveOperator

try:
    from _settings import COMMON
except ImportError:
    from example_dags._settings import COMMON

with DAG(
    dag_id="example_orchesjob_reservation",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["orchesjob", "example"],
) as dag:
    OrchesJobReserveOperator(
        task_id="reserve_backup",
        command=["sh", "-c", "echo backup started at $(date +%T)"],
        # Any templated time works: ISO 8601, epoch seconds or an aware datetime.
        not_before="{{ macros.datetime.now(macros.dateutil.tz.UTC).timestamp() + 3 }}",
        expires_at="{{ macros.datetime.now(macros.dateutil.tz.UTC).timestamp() + 3600 }}",
        wait_for_completion=True,
        **COMMON,
    )
