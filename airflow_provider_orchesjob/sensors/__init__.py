from airflow_provider_orchesjob.sensors.orchesjob import (
    OrchesJobFlowSensor,
    OrchesJobReservationSensor,
    OrchesJobSensor,
)

__all__ = ["OrchesJobFlowSensor", "OrchesJobReservationSensor", "OrchesJobSensor"]
