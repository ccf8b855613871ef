"""The one place that knows where Airflow 2.11 and 3.x keep things.

Everything else in the provider imports Airflow names from here.
"""

from __future__ import annotations

from airflow import __version__ as AIRFLOW_VERSION
from airflow.exceptions import AirflowException

try:  # Airflow 3: the Task SDK
    from airflow.sdk import BaseHook, BaseOperator, BaseSensorOperator
except ImportError:  # Airflow 2.11
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
    from airflow.models import BaseOperator  # type: ignore[no-redef]
    from airflow.sensors.base import BaseSensorOperator  # type: ignore[no-redef]

from airflow.triggers.base import BaseTrigger, TriggerEvent


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


AIRFLOW_V3 = _version_tuple(AIRFLOW_VERSION) >= (3, 0)
# BaseTrigger.on_kill (called when a user kills a deferred task) exists from 3.3.
AIRFLOW_V3_3 = _version_tuple(AIRFLOW_VERSION) >= (3, 3)

__all__ = [
    "AIRFLOW_V3",
    "AIRFLOW_V3_3",
    "AIRFLOW_VERSION",
    "AirflowException",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "BaseTrigger",
    "TriggerEvent",
]
