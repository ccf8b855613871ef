"""What the orchesjob operators share: connection settings, the hook, trigger kwargs, failure messages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from ..compat import AIRFLOW_V3, TRY_XCOM_KEY, AirflowException, BaseOperator, task_instance_state_sync
from ..hooks.orchesjob import OrchesJobHook
from ..utils.labels import task_labels
from ..utils.lifecycle import TERMINAL_FAILURES, is_user_kill, normalize_state, trigger_deadline
from ..utils.run_key import run_key_from_context

__all__ = ["TERMINAL_FAILURES", "EdgeConnectionMixin", "OrchesJobBaseOperator", "tail"]

STATE_LOOKUP_TIMEOUT = 10.0  # seconds on_kill waits to learn whether a person killed the task
# Airflow's own trigger timeout, past the trigger's deadline: only if the trigger could not act
# (e.g. no triggerer running); the trigger's deadline stops the remote work and reports first.
DEADLINE_BACKSTOP = 120.0


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


class EdgeConnectionMixin:
    """How a task reaches the edge CLIs; shared by the operators and the sensors."""

    ssh_conn_id: str | None
    remote_host: str | None
    orchesjob_home: str | None
    transport: str | None
    _hook: OrchesJobHook | None = None

    def edge_kwargs(self) -> dict[str, Any]:
        return {
            "ssh_conn_id": self.ssh_conn_id,
            "remote_host": self.remote_host,
            "orchesjob_home": self.orchesjob_home,
            "transport": self.transport,
        }

    @property
    def hook(self) -> OrchesJobHook:
        # One hook (one SSH connection) per task run, reused by every call and poke.
        if self._hook is None:
            kwargs = self.edge_kwargs()
            self._hook = OrchesJobHook(kwargs.pop("ssh_conn_id"), **kwargs)
        return self._hook


class OrchesJobBaseOperator(EdgeConnectionMixin, BaseOperator):
    """Connection and polling settings common to every orchesjob operator.

    :param ssh_conn_id: Airflow ``ssh`` connection to the host; ``None`` runs the
        edge CLIs on the worker itself (local transport).
    :param remote_host: override the connection's host (e.g. for fan-out with ``expand``).
    :param orchesjob_home: ORCHESJOB_HOME on the host (default: the connection extra, then the host's default).
    :param deferrable: wait in the triggerer (default) instead of occupying a worker slot.
    :param poll_interval: seconds between status polls.
    :param abort_on_kill: stop the remote work when the task is killed, marked failed/success or cleared.
    :param trigger_timeout: seconds after which a deferred wait gives up and stops the remote work.
        ``execution_timeout`` does the same, counted from the start of the try (Airflow 3.3 does
        not time out a deferred task by itself); the earlier of the two applies. The task then
        fails with a message that says whether the remote work was really stopped.
    """

    template_fields: Sequence[str] = ("remote_host", "orchesjob_home")
    ui_color = "#d7ecf9"

    def __init__(
        self,
        *,
        ssh_conn_id: str | None = "ssh_default",
        remote_host: str | None = None,
        orchesjob_home: str | None = None,
        transport: str | None = None,
        deferrable: bool = True,
        poll_interval: float = 5.0,
        abort_on_kill: bool = True,
        kill_grace: float = 5.0,
        trigger_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ssh_conn_id = ssh_conn_id
        self.remote_host = remote_host
        self.orchesjob_home = orchesjob_home
        self.transport = transport
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.abort_on_kill = abort_on_kill
        self.kill_grace = kill_grace
        self.trigger_timeout = trigger_timeout

    def trigger_kwargs(self, context: Any = None) -> dict[str, Any]:
        ti = context["ti"] if context else None
        return {
            **self.edge_kwargs(),
            "poll_interval": self.poll_interval,
            "abort_on_kill": self.abort_on_kill,
            "kill_grace": self.kill_grace,
            "deadline": trigger_deadline(
                now=time.time(),
                try_started=getattr(ti, "start_date", None),
                execution_timeout=self.execution_timeout,
                trigger_timeout=self.trigger_timeout,
            ),
            "try_number": getattr(ti, "try_number", None),
        }

    def defer_to(self, context: Any, trigger: Any) -> None:
        """Defer to ``trigger`` (resuming in ``execute_complete``), with Airflow's trigger timeout as a
        backstop behind the trigger's own deadline."""
        self.record_try(context)
        timeout = None
        if getattr(trigger, "deadline", None) is not None:
            timeout = timedelta(seconds=max(0.0, trigger.deadline - time.time()) + DEADLINE_BACKSTOP)
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timeout)

    def record_try(self, context: Any) -> None:
        """Airflow 3, before deferring: note this try's number where a cancelled trigger can read it."""
        if not AIRFLOW_V3:
            return  # Airflow 2.11 triggers read the try number from the database
        ti = context["ti"]
        try:
            ti.xcom_push(key=TRY_XCOM_KEY, value=getattr(ti, "try_number", None))
        except Exception as exc:  # noqa: BLE001 - only a refinement of the kill check
            self.log.warning("could not record the try number: %s", exc)

    def log_attached(self, run_key: str | None, **ids: Any) -> None:
        """The task log's header line when a try starts or resumes: which remote work it follows, where.

        ``ids``: ``job_id``, ``reservation_id``, ``flow_id`` (those that are None are left out).
        """
        named = "".join(f", {key.replace('_', ' ')} {value}" for key, value in ids.items() if value is not None)
        try:
            where = self.hook.host_label()
        except Exception as exc:  # noqa: BLE001 - a log line never fails the task (e.g. on resume)
            where = f"{self.remote_host or '?'} (connection {self.ssh_conn_id} unreadable: {exc})"
        self.log.info("orchesjob: attached to host %s, run key %s%s", where, run_key, named)

    # Airflow 3.3's task state store: an extra record of the remote job, nothing decides on it
    # (the deterministic run key is what finds the job again, with no window between start and
    # record). Versions without it (no ``task_state_store`` in the context) skip both.
    STATE_STORE_KEY = "orchesjob_job"

    def log_recorded_job(self, context: Any) -> Any:
        """Log what an earlier try recorded in the task state store (Airflow 3.3+); return it."""
        store = context.get("task_state_store") if hasattr(context, "get") else None
        if store is None:
            return None
        try:
            earlier = store.get(self.STATE_STORE_KEY)
        except Exception as exc:  # noqa: BLE001 - an extra record only
            self.log.warning("cannot read the task state store: %s", exc)
            return None
        if earlier:
            self.log.info("task state store: an earlier try recorded remote job %s (run key %s, attempt %s, try %s)",
                          earlier.get("job_id"), earlier.get("run_key"), earlier.get("attempt"),
                          earlier.get("try"))  # fmt: skip
        return earlier

    def record_job(self, context: Any, job: dict[str, Any]) -> None:
        """Record {run_key, job_id, attempt} in the task state store (Airflow 3.3+; its UI tab shows it)."""
        store = context.get("task_state_store") if hasattr(context, "get") else None
        if store is None or not job.get("job_id"):
            return
        value = {"run_key": job.get("run_key") or getattr(self, "run_key", None), "job_id": job["job_id"],
                 "attempt": job.get("attempt_no"), "try": getattr(context.get("ti"), "try_number", None)}  # fmt: skip
        try:
            store.set(self.STATE_STORE_KEY, value)
        except Exception as exc:  # noqa: BLE001 - an extra record only
            self.log.warning("cannot write the task state store: %s", exc)

    def task_run_key(self, context: Any, explicit: str | None = None) -> str:
        """``explicit`` (a templated parameter), else the task instance's key in the connection's namespace."""
        return explicit or run_key_from_context(context, namespace=self.hook.run_key_namespace())

    def work_labels(self, context: Any, *, followed: bool = True) -> dict[str, str]:
        """Labels naming this task instance on the work it starts (see ``utils/labels``).

        With ``abort_on_kill=False`` the work is not the task's to stop: it is labelled as not
        followed, so that no sweep stops it either.
        """
        followed = followed and self.abort_on_kill
        return task_labels(context["ti"], namespace=self.hook.run_key_namespace(), followed=followed)

    def remember_task_instance(self, context: Any) -> None:
        """Keep what ``on_kill`` needs to look up this task instance's state (it gets no context)."""
        ti = context["ti"]
        self._ti_ref = (ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))
        self._try_number = getattr(ti, "try_number", None)

    def current_task_state(self) -> Any:
        """This task instance's state now (None: it no longer exists); raises when it cannot be read."""
        return task_instance_state_sync(*self._ti_ref)

    def killed_by_user(self) -> bool:
        """In ``on_kill`` (non-deferrable): whether a person stopped this task (not a worker shutting down)."""
        ref = getattr(self, "_ti_ref", None)
        if ref is None:
            return False
        # on_kill runs in a signal handler; the SDK's channel to the supervisor may be held by
        # the interrupted code on this very thread. Ask from another thread, bounded in time.
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            state = pool.submit(self.current_task_state).result(timeout=STATE_LOOKUP_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - an unknown state is no proof of a kill
            self.log.warning("cannot read the task's state (%r): leaving the remote work running", exc)
            return False
        finally:
            pool.shutdown(wait=False)  # never wait for a lookup that hangs
        killed = is_user_kill(state, waiting_in="worker")
        verdict = "a user's action, stopping the remote work" if killed else "leaving the remote work running"
        self.log.info("task killed while %s: %s", normalize_state(state), verdict)
        return killed

    @staticmethod
    def raise_for_event(event: dict[str, Any]) -> None:
        if event.get("status") == "timeout":
            raise AirflowException(event.get("message", "deadline reached"))
        if event.get("status") == "error":
            raise AirflowException(f"waiting for the remote work failed: {event.get('message')}")
