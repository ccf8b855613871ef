"""Labels that tie a remote job to the Airflow task instance that follows it.

The provider labels every job it starts (runtime capability ``job-labels``) and
every job a reservation will dispatch (as ``--label`` start options), so that a
sweep (:class:`~airflow_provider_orchesjob.operators.sweep.OrchesJobSweepOperator`)
can find the work whose task instance ended without it. Labels are plain,
non-secret strings shown in the host's JSON:

``airflow.dag_id``, ``airflow.task_id``, ``airflow.run_id``, ``airflow.map_index``
    the task instance (the run key may be hashed; these are exact);
``airflow.try_number``
    the try that started the job;
``airflow.namespace``
    the connection's run key namespace, when it has one: a sweep only ever
    touches the jobs of its own namespace;
``airflow.followed``
    ``true`` when the task waits for the job to finish (a start or flow operator,
    a reservation with ``wait_for_completion``) and stops it when killed
    (``abort_on_kill``); ``false`` for fire-and-forget work, or work the task
    never stops, which no sweep stops either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PREFIX = "airflow."
NAMESPACE = "airflow.namespace"
_LABEL_OPTION = "--label="


def task_labels(ti: Any, *, namespace: str | None, followed: bool) -> dict[str, str]:
    """The labels of work started by the task instance ``ti``."""
    labels = {
        "airflow.dag_id": str(ti.dag_id),
        "airflow.task_id": str(ti.task_id),
        "airflow.run_id": str(ti.run_id),
        "airflow.map_index": str(getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1),
        "airflow.followed": "true" if followed else "false",
    }
    try_number = getattr(ti, "try_number", None)
    if try_number is not None:
        labels["airflow.try_number"] = str(try_number)
    if namespace:
        labels[NAMESPACE] = namespace
    return labels


def label_options(labels: Mapping[str, str]) -> list[str]:
    """``labels`` as ``orchesjob start`` options (for a reservation's start options)."""
    return [f"{_LABEL_OPTION}{key}={value}" for key, value in labels.items()]


def labels_from_options(options: Sequence[str]) -> dict[str, str]:
    """The labels among a reservation's start options (the ``--label=K=V`` form :func:`label_options` writes)."""
    labels = {}
    for option in options:
        if option.startswith(_LABEL_OPTION):
            key, _, value = option[len(_LABEL_OPTION) :].partition("=")
            labels[key] = value
    return labels


def task_instance_of(labels: Mapping[str, str], namespace: str | None) -> tuple[str, str, str, int] | None:
    """``(dag_id, task_id, run_id, map_index)`` of followed work in ``namespace``; None for anything else
    (no Airflow labels, fire-and-forget, another deployment's namespace, or labels it cannot read)."""
    if labels.get("airflow.followed") != "true" or labels.get(NAMESPACE) != (namespace or None):
        return None
    try:
        return (labels["airflow.dag_id"], labels["airflow.task_id"], labels["airflow.run_id"],
                int(labels.get("airflow.map_index", "-1")))  # fmt: skip
    except (KeyError, ValueError):
        return None
