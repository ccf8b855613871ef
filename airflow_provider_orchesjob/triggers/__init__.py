from airflow_provider_orchesjob.triggers.orchesjob import (
    OrchesJobFlowTrigger,
    OrchesJobReservationTrigger,
    OrchesJobTrigger,
)

__all__ = ["OrchesJobFlowTrigger", "OrchesJobReservationTrigger", "OrchesJobTrigger"]
