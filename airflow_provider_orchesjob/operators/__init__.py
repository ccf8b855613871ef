from airflow_provider_orchesjob.operators.flow import OrchesJobFlowOperator
from airflow_provider_orchesjob.operators.job import OrchesJobStartOperator
from airflow_provider_orchesjob.operators.reservation import OrchesJobReserveOperator
from airflow_provider_orchesjob.operators.sweep import OrchesJobSweepOperator

__all__ = ["OrchesJobFlowOperator", "OrchesJobReserveOperator", "OrchesJobStartOperator", "OrchesJobSweepOperator"]
