"""One remote job, exactly once per task instance, with its output streamed into the task log."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG

from airflow_provider_orchesjob.operators import OrchesJobStartOperator

try:
    from _settings import COMMON
except ImportError:  # imported as a package (tests)
    from example_dags._settings import COMMON

with DAG(
    dag_id="example_orchesjob_job",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["orchesjob", "example"],
) as dag:
    OrchesJobStartOperator(
        task_id="nightly_import",
        # A string runs under /bin/sh -c; a list is passed as argv.
        # The run's date, also for Airflow 3 runs without a logical date (triggered from the API/UI).
        command="echo importing {{ (dag_run.logical_date or dag_run.run_after) | ds }}; "
        "for i in 1 2 3; do echo batch $i; sleep 0.2; done; echo done",
        env={"IMPORT_MODE": "full"},  # sent on stdin, never on a command line; masked in the task log
        timeout=600,  # host-side limit, enforced on the host even if Airflow is gone
        retries=2,  # retries reattach / adopt / start a new attempt, never a duplicate
        retry_delay=timedelta(seconds=30),
        **COMMON,
    )
