"""The one place that knows where Airflow 2.11 and 3.x keep things.

Everything else in the provider imports Airflow names from here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from airflow import __version__ as AIRFLOW_VERSION
from airflow.exceptions import AirflowException

try:  # Airflow 3.3 moved it to the SDK (the old name warns)
    from airflow.sdk.exceptions import AirflowTaskTimeout
except ImportError:  # Airflow 2.11 - 3.2
    from airflow.exceptions import AirflowTaskTimeout  # type: ignore[no-redef]

try:  # Airflow 3: the Task SDK
    from airflow.sdk import BaseHook, BaseOperator, BaseSensorOperator
except ImportError:  # Airflow 2.11
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]
    from airflow.models import BaseOperator  # type: ignore[no-redef]
    from airflow.sensors.base import BaseSensorOperator  # type: ignore[no-redef]

from airflow.triggers.base import BaseTrigger, TriggerEvent

try:  # Airflow 3: the Task SDK's masker
    from airflow.sdk.log import mask_secret
except ImportError:  # Airflow 2.11
    from airflow.utils.log.secrets_masker import mask_secret  # type: ignore[no-redef]


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


AIRFLOW_V3 = _version_tuple(AIRFLOW_VERSION) >= (3, 0)
# BaseTrigger.on_kill (called when a user kills a deferred task) exists from 3.3.
AIRFLOW_V3_3 = _version_tuple(AIRFLOW_VERSION) >= (3, 3)


async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a synchronous function that may use Airflow's SDK (connections, task states) from async code.

    Airflow 3 triggers reach the API server through a comms channel bound to the
    triggerer's event loop. On 3.0.x its synchronous SDK calls bridge with
    ``async_to_sync``, which only finds that loop from a thread started by asgiref's
    ``sync_to_async`` (a plain ``asyncio.to_thread`` thread makes it run the request
    on a foreign loop). ``sync_to_async`` is also what 3.1+ support, so it is used on
    every 3.x; Airflow 2.11 talks to the database directly and uses a plain thread.
    """
    if AIRFLOW_V3:
        from asgiref.sync import sync_to_async

        call = sync_to_async(func)(*args, **kwargs)
    else:
        call = asyncio.to_thread(func, *args, **kwargs)
    # Shielded, in a task of its own: asgiref answers a cancellation that arrives while the
    # call runs with a CancelledError of its own, which drops the cancel's message. Airflow
    # 3.3's triggerer calls a trigger's on_kill only when the message says "user action", so
    # a mark-failed that arrived during a connection or state lookup stopped nothing. Now the
    # caller gets the original cancellation at once; the call finishes unobserved.
    task = asyncio.ensure_future(call)
    _SYNC_CALLS.add(task)
    task.add_done_callback(_forget_sync_call)
    return await asyncio.shield(task)


_SYNC_CALLS: set[asyncio.Future] = set()  # calls whose caller may have been cancelled: kept until done


def _forget_sync_call(task: asyncio.Future) -> None:
    _SYNC_CALLS.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned call's error is no "never retrieved" warning


def task_instance_state_sync(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> Any:
    """The current state of one task instance (None when it no longer exists).

    Airflow 3: the SDK's ``get_task_states``, whose answer keys a mapped task
    instance as ``<task_id>_<map_index>``; Airflow 2.11: the database.
    """
    from .utils.lifecycle import state_from_task_states

    map_index = -1 if map_index is None else map_index
    if AIRFLOW_V3:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = RuntimeTaskInstance.get_task_states(
            dag_id=dag_id, task_ids=[task_id], run_ids=[run_id], map_index=map_index
        )
        try:
            return state_from_task_states(states, run_id, task_id, map_index)
        except KeyError:
            return None

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(TaskInstance.state)
            .filter_by(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)
            .one_or_none()
        )
        return row[0] if row else None


def dag_run_state_sync(dag_id: str, run_id: str) -> Any:
    """The state of one DAG run (None when it does not exist): the SDK on Airflow 3, the database on 2.11."""
    if AIRFLOW_V3:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        return RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(DagRun.state).filter_by(dag_id=dag_id, run_id=run_id).one_or_none()
        return row[0] if row else None


# The XCom key under which a deferring try records its try number (Airflow 3), so that a
# cancelled trigger can tell "my try still waits" from "a newer try (after a clear) waits".
TRY_XCOM_KEY = "orchesjob_try"


# The XCom key under which a job trigger keeps the log offsets it has streamed up to, so that a
# trigger restarted on another triggerer (or after a triggerer crash) does not stream them again.
LOG_OFFSETS_XCOM_KEY = "orchesjob_log_offsets"


def task_xcom_get_sync(dag_id: str, task_id: str, run_id: str, map_index: int | None, key: str) -> Any:
    """One XCom value of a task instance (None if absent), from a worker or a triggerer, any version."""
    map_index = -1 if map_index is None else map_index
    if AIRFLOW_V3:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_one(key=key, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)
    from airflow.models.xcom import XCom as XCom2  # Airflow 2.11: the database

    return XCom2.get_one(key=key, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)


def task_xcom_set_sync(dag_id: str, task_id: str, run_id: str, map_index: int | None, key: str, value: Any) -> None:
    """Write one XCom value of a task instance (a triggerer may: Airflow 3 through its supervisor)."""
    map_index = -1 if map_index is None else map_index
    if AIRFLOW_V3:
        from airflow.sdk.execution_time.xcom import XCom

        XCom.set(key, value, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)
        return
    from airflow.models.xcom import XCom as XCom2

    XCom2.set(key=key, value=value, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)


def task_instance_try_sync(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> int | None:
    """The try number of the task instance's current try, when it can be known (None otherwise).

    Airflow 2.11: from the database. Airflow 3: the SDK has no task-instance read for
    triggers, so the operators record it before deferring (XCom ``orchesjob_try``; a
    new try starts with its task instance's XComs cleared).
    """
    map_index = -1 if map_index is None else map_index
    if AIRFLOW_V3:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_one(key=TRY_XCOM_KEY, dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)
        return int(value) if value is not None else None

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(TaskInstance.try_number)
            .filter_by(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index)
            .one_or_none()
        )
        return int(row[0]) if row and row[0] is not None else None


async def task_instance_try(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> int | None:
    """:func:`task_instance_try_sync` from async code."""
    return await run_sync(task_instance_try_sync, dag_id, task_id, run_id, map_index)


async def task_instance_state(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> Any:
    """:func:`task_instance_state_sync` from async code (a trigger), the way each Airflow version supports."""
    return await run_sync(task_instance_state_sync, dag_id, task_id, run_id, map_index)


__all__ = [
    "AIRFLOW_V3",
    "AIRFLOW_V3_3",
    "AIRFLOW_VERSION",
    "AirflowException",
    "AirflowTaskTimeout",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "BaseTrigger",
    "TriggerEvent",
    "mask_secret",
    "run_sync",
    "TRY_XCOM_KEY",
    "LOG_OFFSETS_XCOM_KEY",
    "task_xcom_get_sync",
    "task_xcom_set_sync",
    "dag_run_state_sync",
    "task_instance_state",
    "task_instance_state_sync",
    "task_instance_try",
    "task_instance_try_sync",
]
