"""What the orchesjob operators share: connection settings, the hook, trigger kwargs, failure messages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..compat import AirflowException, BaseOperator
from ..hooks.orchesjob import OrchesJobHook

TERMINAL_FAILURES = ("FAILED", "LOST", "ABORTED", "CANCELLED")


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
    :param trigger_timeout: seconds after which a deferred wait gives up and aborts the remote work.
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

    def trigger_kwargs(self) -> dict[str, Any]:
        return {
            **self.edge_kwargs(),
            "poll_interval": self.poll_interval,
            "abort_on_kill": self.abort_on_kill,
            "kill_grace": self.kill_grace,
            "deadline": time.time() + self.trigger_timeout if self.trigger_timeout else None,
        }

    @staticmethod
    def raise_for_event(event: dict[str, Any]) -> None:
        if event.get("status") == "timeout":
            raise AirflowException(event.get("message", "trigger timeout"))
        if event.get("status") == "error":
            raise AirflowException(f"waiting for the remote work failed: {event.get('message')}")
