"""Pure decisions about a remote job's life as seen from Airflow.

Nothing here talks to a host or to Airflow's database: every rule the
operators and triggers apply is a function of plain values, unit-tested on its
own (``tests/provider/test_lifecycle.py``).

* job statuses of the edge runtime (``job-lifecycle-v2``): which are active,
  which mean "a stop was requested and is in progress", which are final;
* :func:`is_user_kill` — was a cancelled trigger (or a killed task) stopped by a
  person, judging by the task instance's state? Only then is the remote job
  stopped;
* :func:`abandoned` — has the task instance ended without the work it waited
  for (what the sweep stops)?
* :func:`success_decision` — does a try that finds the run key SUCCEEDED adopt
  that result (an automatic retry) or run the command again (a user cleared
  the task)?
* :func:`stop_reason` / :func:`stop_requested_by_try` — the try that asked for a
  stop is written into the stop's reason, so a later try can tell "an earlier
  try of mine was stopped by a user" from "someone stopped my job";
* :func:`trigger_deadline` — ``execution_timeout`` and the operator's own
  ``trigger_timeout`` as one absolute deadline for the trigger.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

# Statuses of a job on the host.
STOPPING = ("ABORTING", "CANCELLING")  # a stop was requested; the tree is being stopped
ACTIVE_JOB = ("STARTING", "RUNNING", *STOPPING)  # a start returns the job instead of a new attempt
TERMINAL_JOB = ("SUCCEEDED", "FAILED", "ABORTED", "CANCELLED", "LOST", "NEVER_LAUNCHED")
TERMINAL_FAILURES = ("FAILED", "LOST", "ABORTED", "CANCELLED", "NEVER_LAUNCHED")
STOPPED = ("ABORTED", "CANCELLED")

# What the operators do when a try finds the run key's job already SUCCEEDED.
ON_SUCCESS_FOUND = ("auto", "adopt", "rerun")

# Task-instance states after which nobody will follow the remote job any more
# because a person acted: marked failed/success/skipped, cleared (state None,
# then scheduled/queued/running for the new try) or restarting.
_USER_ACTION_STATES = frozenset(
    {"none", "removed", "failed", "success", "skipped", "upstream_failed", "scheduled", "queued", "running",
     "restarting", "up_for_reschedule"}
)  # fmt: skip
# States that prove the try still waits on its trigger (the trigger only moved to
# another triggerer, or the triggerer shuts down), or that the try ended on its own.
_NOT_USER_ACTION_STATES = frozenset({"deferred", "up_for_retry"})


def trigger_superseded(state: Any, trigger_try: int | None, current_try: int | None) -> bool:
    """A deferred task instance whose current try is newer than the trigger's: a user cleared the
    task and the new try deferred before this trigger was cancelled. Unknown tries prove nothing."""
    if normalize_state(state) != "deferred" or trigger_try is None or current_try is None:
        return False
    return current_try > trigger_try


def normalize_state(state: Any) -> str:
    """A task-instance state as a lower-case name: ``TaskInstanceState.DEFERRED`` -> ``deferred``, None -> ``none``."""
    if state is None:
        return "none"
    value = getattr(state, "value", state)
    return str(value).lower().rsplit(".", 1)[-1]


def task_state_key(task_id: str, map_index: int | None) -> str:
    """The key of one task instance in Airflow's ``get_task_states`` answer.

    Unmapped task instances are keyed by ``task_id``; mapped ones by
    ``<task_id>_<map_index>`` (Execution API ``/task-instances/states``).
    """
    if map_index is None or map_index < 0:
        return task_id
    return f"{task_id}_{map_index}"


def state_from_task_states(task_states: dict[str, Any], run_id: str, task_id: str, map_index: int | None) -> Any:
    """The state of one task instance in a ``{run_id: {key: state}}`` answer; ``KeyError`` if absent."""
    return task_states[run_id][task_state_key(task_id, map_index)]


def is_user_kill(state: Any, *, waiting_in: str = "trigger") -> bool:
    """Whether a task instance in ``state`` was stopped by a person (so its remote work must stop too).

    ``deferred`` means the try still waits on its trigger: the trigger was
    cancelled because it moved to another triggerer (Airflow 3.3 reports that
    with the same "user action" marker as a real kill) or because its triggerer
    shuts down. ``up_for_retry`` means the try failed on its own (an error event
    from another triggerer). Anything else is a person's action: marked
    failed/success/skipped, or cleared. An unknown state is not proof of a kill.

    In the worker (``waiting_in="worker"``, non-deferrable tasks) ``running``
    means the try itself is still running: the worker is shutting down, which
    is no reason to stop the job (the retry reattaches to it).
    """
    name = normalize_state(state)
    if name in _NOT_USER_ACTION_STATES:
        return False
    if waiting_in == "worker" and name == "running":
        return False
    return name in _USER_ACTION_STATES


# States in which a task instance has ended and no try of it will follow its work again.
_ENDED_STATES = frozenset({"failed", "upstream_failed", "skipped", "removed", "success"})


_FINISHED_RUN_STATES = frozenset({"failed", "success"})


def abandoned(state: Any, run_state: Any = None) -> bool:
    """Whether work a task instance waited for is abandoned: no try of it will follow the work again.

    For the sweep: a deferred task marked failed before any triggerer ran its trigger
    gets no ``on_kill``. That is so when the task instance has ended (marked
    failed/success/skipped, failed for good, removed), or when its DAG run has
    finished (``run_state`` failed/success) while the task instance has not: the
    scheduler starts no try in a finished run (Airflow can fail a run while a
    user's clear of one of its tasks runs, leaving the task cleared for good).
    Otherwise (cleared, retrying, queued, running, deferred ... in a live run) a
    try follows the work, or will, and decides itself. Unknown states prove nothing.
    """
    if normalize_state(state) in _ENDED_STATES:
        return True
    return run_state is not None and normalize_state(run_state) in _FINISHED_RUN_STATES


def is_user_clear(try_number: int | None, max_tries: int | None, retries: int | None) -> bool:
    """Whether this try exists because a user cleared the task instance (not an automatic retry).

    Airflow gives a task instance ``max_tries = retries`` when it is created, and
    ``clear_task_instances`` resets it to ``try_number + retries`` (the try number
    of the try that was cleared). The next try then has ``try_number + 1``, so
    ``max_tries - try_number == retries - 1`` holds exactly for the first try of
    a round, while an automatic retry (``max_tries`` unchanged, try number up)
    has less. The first try of all (``try_number == 1``) is no clear: a success
    found then was made outside this task instance's tries (a run key given
    explicitly and shared, or started by hand) and is adopted. With
    ``retries=0`` every later try comes from a clear. Unknown values count as a
    retry (the safe side: adopt, never run twice).

    Limitation: a task cleared while it *runs* (non-deferrable) goes through
    RESTARTING, where Airflow keeps ``max_tries``; its next try looks like a
    retry. Its job was stopped by ``on_kill`` then, so that try starts a new
    attempt anyway unless the job had already succeeded.
    """
    if try_number is None or max_tries is None or retries is None or try_number < 2:
        return False
    return retries == 0 or max_tries - try_number >= retries - 1


def success_decision(policy: str, *, user_clear: bool) -> str:
    """``"adopt"`` or ``"rerun"`` for a try that finds the run key's job SUCCEEDED.

    ``auto`` (default): a try that exists because a user cleared the task
    (:func:`is_user_clear`) runs the command again; an automatic retry adopts
    the success. ``adopt``/``rerun`` force one behaviour.
    """
    if policy not in ON_SUCCESS_FOUND:
        raise ValueError(f"on_success_found must be one of {ON_SUCCESS_FOUND}, got {policy!r}")
    if policy == "auto":
        return "rerun" if user_clear else "adopt"
    return policy


_TRY_MARK = re.compile(r"\[airflow try (\d+)\]")


def stop_reason(why: str, try_number: int | None) -> str:
    """The reason given to ``abort``/``cancel``, naming the try that asked for the stop."""
    return f"{why} [airflow try {try_number}]" if try_number is not None else why


def stop_requested_by_try(job: dict[str, Any]) -> int | None:
    """The try number written into a stopped job's reason by :func:`stop_reason`, if any."""
    for field in ("abort_reason", "cancel_reason", "stop_reason"):
        match = _TRY_MARK.search(str(job.get(field) or ""))
        if match:
            return int(match.group(1))
    return None


def stopped_by_earlier_try(job: dict[str, Any], try_number: int | None) -> bool:
    """A job ABORTED/CANCELLED because a user killed an *earlier* try: the current try starts the next attempt."""
    if job.get("status") not in STOPPED or try_number is None:
        return False
    asked = stop_requested_by_try(job)
    return asked is not None and asked < try_number


def trigger_deadline(
    *,
    now: float,
    try_started: datetime | None = None,
    execution_timeout: timedelta | float | None = None,
    trigger_timeout: float | None = None,
) -> float | None:
    """The epoch second at which a deferred wait gives up (None: never).

    ``execution_timeout`` counts from the start of the try (``try_started``; the
    time of deferral when unknown); ``trigger_timeout`` counts from now. The
    earlier of the two wins. A deadline already past is returned as is: the
    trigger then stops the remote work at its first check.
    """
    candidates = []
    if execution_timeout is not None:
        seconds = execution_timeout.total_seconds() if isinstance(execution_timeout, timedelta) else execution_timeout
        start = try_started.timestamp() if try_started is not None else now
        candidates.append(start + float(seconds))
    if trigger_timeout:
        candidates.append(now + float(trigger_timeout))
    return min(candidates) if candidates else None


def timeout_message(what: str, stop: dict[str, Any] | None, error: str | None) -> str:
    """What a deadline did, truthfully: stopped, still stopping, finished before the stop, or could not stop."""
    if error is not None:
        return f"{what}: the remote job could NOT be stopped ({error}); it may still be running on the host"
    if stop is None:
        return f"{what}: there was no remote job to stop"
    status = stop.get("status")
    job = stop.get("job_id") or stop.get("run_key") or "?"
    if stop.get("stop_too_late") or stop.get("too_late") or stop.get("already_finished"):
        return f"{what}: remote job {job} had already finished {status} before the stop arrived"
    if status in STOPPED:
        return f"{what}: remote job {job} stopped ({status})"
    if status in STOPPING:
        return f"{what}: stop of remote job {job} requested, still {status} (processes may still be exiting)"
    return f"{what}: remote job {job} is {status} after the stop request"
