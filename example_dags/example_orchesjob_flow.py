"""A small DAG of steps run on one host by orchesjob-flow, defined in a YAML file next to this DAG."""

from __future__ import annotations

import os
from datetime import datetime

from airflow import DAG

from airflow_provider_orchesjob.operators import OrchesJobFlowOperator

try:
    from _settings import COMMON
except ImportError:
    from example_dags._settings import COMMON

with DAG(
    dag_id="example_orchesjob_flow",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    tags=["orchesjob", "example"],
    template_searchpath=[os.path.dirname(os.path.abspath(__file__))],
) as dag:
    # The file is read by Airflow's template loading and sent to the host over stdin.
    OrchesJobFlowOperator(task_id="import_flow", flow="example_flow.yaml", **COMMON)
