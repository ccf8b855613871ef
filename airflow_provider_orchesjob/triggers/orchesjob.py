"""Triggers: poll a remote job, reservation or flow from the triggerer.

Rules every trigger here follows:

* at most one remote command per poll (job status + the next log chunk in one
  ``orchesjob status`` call), over the hook's shared async SSH connection; job
  triggers polling the same host share that command (``hooks/batching.py``);
* connection failures are retried with backoff (the hook) and, past its budget,
  by the trigger itself until ``reconnect_budget`` is spent;
* all state needed to resume lives in the serialized kwargs and in the event
  payload (log offsets, last seen statuses), because Airflow may drop
  ``defer(kwargs=...)`` and may move a trigger to another triggerer;
* a user killing the deferred task (mark failed/success, clear) aborts the
  remote work when ``abort_on_kill`` is set: ``BaseTrigger.on_kill`` on Airflow
  3.3+, and on older versions the established fallback of catching the
  cancellation and checking that the task instance is no longer deferred.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from ..compat import AIRFLOW_V3, AIRFLOW_V3_3, BaseTrigger, TriggerEvent
from ..exceptions import OrchesJobConnectionError, OrchesJobError, OrchesJobNotFound
from ..hooks.batching import until_next_tick

ACTIVE_JOB = ("STARTING", "RUNNING")
PENDING_RESERVATION = ("RESERVED", "DISPATCHING")  # not dispatched yet, may still be
TAIL_BYTES = 4096
CATCH_UP_BYTES = 1 << 20
ABORT_TIMEOUT = 25.0  # below Airflow's default on_kill budget (30 s)


def chunk_bytes(chunk: dict | None) -> bytes:
    """The raw bytes of a status log chunk (utf-8 text or base64)."""
    if not chunk:
        return b""
    if chunk.get("encoding") == "base64":
        return base64.b64decode(chunk.get("data", ""))
    return str(chunk.get("data", "")).encode("utf-8")


def chunk_done(chunk: dict | None) -> bool:
    return not chunk or chunk["next_offset"] >= chunk.get("size", 0)


class _PollingTrigger(BaseTrigger):
    """Shared loop: poll, yield once when done, survive connection drops, abort on kill."""

    def __init__(
        self,
        *,
        ssh_conn_id: str | None,
        remote_host: str | None = None,
        orchesjob_home: str | None = None,
        bin_dir: str | None = None,
        transport: str | None = None,
        poll_interval: float = 5.0,
        abort_on_kill: bool = True,
        kill_grace: float = 5.0,
        deadline: float | None = None,
        reconnect_budget: float = 600.0,
    ) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.remote_host = remote_host
        self.orchesjob_home = orchesjob_home
        self.bin_dir = bin_dir
        self.transport = transport
        self.poll_interval = poll_interval
        self.abort_on_kill = abort_on_kill
        self.kill_grace = kill_grace
        self.deadline = deadline
        self.reconnect_budget = reconnect_budget
        self._hook: Any = None
        self._poll_now = False  # set by poll() when more data is waiting: skip the sleep

    def _common_kwargs(self) -> dict[str, Any]:
        return {
            "ssh_conn_id": self.ssh_conn_id,
            "remote_host": self.remote_host,
            "orchesjob_home": self.orchesjob_home,
            "bin_dir": self.bin_dir,
            "transport": self.transport,
            "poll_interval": self.poll_interval,
            "abort_on_kill": self.abort_on_kill,
            "kill_grace": self.kill_grace,
            "deadline": self.deadline,
            "reconnect_budget": self.reconnect_budget,
        }

    async def hook(self) -> Any:
        if self._hook is None:
            from ..hooks.orchesjob import OrchesJobHook

            hook = OrchesJobHook(
                self.ssh_conn_id,
                transport=self.transport,
                remote_host=self.remote_host,
                orchesjob_home=self.orchesjob_home,
                bin_dir=self.bin_dir,
            )
            if hook.transport_kind != "local":
                # Connection lookup is synchronous (DB or API server): keep it off the event loop.
                await asyncio.to_thread(hook.ssh_config)
            self._hook = hook
        return self._hook

    # Subclasses: one remote command; return an event payload when finished, else None.
    async def poll(self, hook: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    async def abort_remote(self, hook: Any, reason: str) -> None:
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async for event in self._loop():
                yield event
                return
        except asyncio.CancelledError:
            if self.abort_on_kill and not AIRFLOW_V3_3 and await self._task_was_killed():
                await self._abort_quietly("task killed by a user while deferred")
            raise

    async def _loop(self) -> AsyncIterator[TriggerEvent]:
        hook = await self.hook()
        failing_since: float | None = None
        while True:
            if self.deadline is not None and time.time() >= self.deadline:
                await self._abort_quietly("trigger timeout")
                yield TriggerEvent(self.timeout_payload())
                return
            try:
                payload = await self.poll(hook)
                failing_since = None
            except OrchesJobConnectionError as exc:
                if not exc.retryable:
                    yield TriggerEvent({"status": "error", "message": str(exc), **self.state()})
                    return
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.reconnect_budget:
                    yield TriggerEvent({"status": "error", "message": f"host unreachable: {exc}", **self.state()})
                    return
                self.log.warning("poll failed (%s); will reconnect", exc)
                payload = None
            except OrchesJobError as exc:
                yield TriggerEvent({"status": "error", "message": str(exc), **self.state()})
                return
            if payload is not None:
                yield TriggerEvent(payload)
                return
            # On the wall-clock grid of the interval: polls of many triggers then share one command.
            await asyncio.sleep(0 if self._poll_now else until_next_tick(self.poll_interval))

    def state(self) -> dict[str, Any]:
        """Resumable state included in every event."""
        return {}

    def timeout_payload(self) -> dict[str, Any]:
        return {"status": "timeout", "message": "trigger timeout reached; remote work aborted", **self.state()}

    async def on_kill(self) -> None:  # Airflow >= 3.3
        if self.abort_on_kill:
            await self._abort_quietly("task killed by a user while deferred")

    async def _abort_quietly(self, reason: str) -> None:
        # Bounded: Airflow gives on_kill limited time, and a dead host must not hang the triggerer.
        try:
            await asyncio.wait_for(self.abort_remote(await self.hook(), reason), ABORT_TIMEOUT)
        except (OrchesJobError, asyncio.TimeoutError) as exc:  # already finished, or host unreachable
            self.log.warning("could not stop remote work (%s): %s", reason, exc)

    async def _task_was_killed(self) -> bool:
        """Airflow < 3.3 fallback: cancelled, and the task instance is no longer deferred."""
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return False
        try:
            if AIRFLOW_V3:
                from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

                states = await asyncio.to_thread(
                    RuntimeTaskInstance.get_task_states,
                    dag_id=ti.dag_id,
                    task_ids=[ti.task_id],
                    run_ids=[ti.run_id],
                    map_index=ti.map_index,
                )
                state = states.get(ti.run_id, {}).get(ti.task_id)
            else:
                from airflow.models.taskinstance import TaskInstance
                from airflow.utils.session import create_session

                def _state() -> Any:
                    with create_session() as session:
                        row = (
                            session.query(TaskInstance.state)
                            .filter_by(dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=ti.map_index)
                            .one_or_none()
                        )
                        return row[0] if row else None

                state = await asyncio.to_thread(_state)
        except Exception as exc:  # noqa: BLE001 - never fail the triggerer over this check
            self.log.warning("cannot tell whether the task was killed: %s", exc)
            return False
        return str(state).lower().rsplit(".", 1)[-1] != "deferred"


class OrchesJobTrigger(_PollingTrigger):
    """Wait for a remote job to finish, streaming its stdout/stderr into the task log."""

    def __init__(
        self,
        *,
        run_key: str | None = None,
        job_id: str | None = None,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        stream_logs: bool = True,
        max_bytes: int = 65536,
        stderr_tail: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_key = run_key
        self.job_id = job_id
        self.stdout_offset = stdout_offset
        self.stderr_offset = stderr_offset
        self.stream_logs = stream_logs
        self.max_bytes = max_bytes
        self.stderr_tail = stderr_tail
        self._tail = base64.b64decode(stderr_tail) if stderr_tail else b""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **self._common_kwargs(),
                "run_key": self.run_key,
                "job_id": self.job_id,
                "stdout_offset": self.stdout_offset,
                "stderr_offset": self.stderr_offset,
                "stream_logs": self.stream_logs,
                "max_bytes": self.max_bytes,
                "stderr_tail": base64.b64encode(self._tail).decode(),
            },
        )

    def state(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "job_id": self.job_id,
            "stdout_offset": self.stdout_offset,
            "stderr_offset": self.stderr_offset,
            "stderr_tail": self._tail.decode("utf-8", "replace"),
        }

    def _consume(self, job: dict) -> None:
        for stream in ("stdout", "stderr"):
            chunk = job.get(f"{stream}_chunk")
            data = chunk_bytes(chunk)
            if chunk:
                setattr(self, f"{stream}_offset", chunk["next_offset"])
            if not data:
                continue
            if stream == "stderr":
                self._tail = (self._tail + data)[-TAIL_BYTES:]
            for line in data.decode("utf-8", "replace").splitlines():
                self.log.info("[remote %s] %s", stream, line)

    async def poll(self, hook: Any) -> dict[str, Any] | None:
        logs: dict[str, Any] = {}
        if self.stream_logs:
            logs = {
                "stdout_offset": self.stdout_offset,
                "stderr_offset": self.stderr_offset,
                "max_bytes": CATCH_UP_BYTES if self._poll_now else self.max_bytes,
            }
        try:
            job = await hook.ajob_poll(self.run_key if self.job_id is None else None, self.job_id, **logs)
        except OrchesJobNotFound:
            if self.job_id is None:
                return None  # a sensor may wait for a job that does not exist yet
            raise
        self.job_id = job["job_id"]
        self._consume(job)
        if job["status"] in ACTIVE_JOB:
            return None
        if not (chunk_done(job.get("stdout_chunk")) and chunk_done(job.get("stderr_chunk"))):
            self._poll_now = True  # finished with output left: fetch the rest at once, in bigger chunks
            return None
        job.pop("stdout_chunk", None)
        job.pop("stderr_chunk", None)
        return {"status": "done", "job": job, **self.state()}

    async def abort_remote(self, hook: Any, reason: str) -> None:
        await hook.aabort_job(self.run_key if self.job_id is None else None, self.job_id, reason=reason,
                              grace=self.kill_grace)  # fmt: skip


class OrchesJobReservationTrigger(OrchesJobTrigger):
    """Wait until a reservation is dispatched, then follow its job like :class:`OrchesJobTrigger`."""

    def __init__(self, *, reservation_run_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reservation_run_key = reservation_run_key

    def serialize(self) -> tuple[str, dict[str, Any]]:
        path, kwargs = super().serialize()
        return path, {**kwargs, "reservation_run_key": self.reservation_run_key}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "reservation_run_key": self.reservation_run_key}

    async def poll(self, hook: Any) -> dict[str, Any] | None:
        if self.job_id is not None:
            return await super().poll(hook)
        res = (await hook.areservation_status(self.reservation_run_key))["reservation"]
        status = res["reservation_status"]
        if status in PENDING_RESERVATION:
            return None
        if status == "DISPATCHED" and res.get("job_id"):
            self.job_id = res["job_id"]
            self.log.info("reservation dispatched as job %s", self.job_id)
            return await super().poll(hook)
        return {"status": "reservation_ended", "reservation": res, **self.state()}

    async def abort_remote(self, hook: Any, reason: str) -> None:
        if self.job_id is not None:
            await super().abort_remote(hook, reason)
        else:
            await asyncio.to_thread(hook.cancel_reservation, self.reservation_run_key)


class OrchesJobFlowTrigger(_PollingTrigger):
    """Wait for a remote flow run, logging each step transition."""

    def __init__(self, *, flow_run_key: str, step_statuses: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flow_run_key = flow_run_key
        self.step_statuses = dict(step_statuses or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {**self._common_kwargs(), "flow_run_key": self.flow_run_key, "step_statuses": self.step_statuses},
        )

    def state(self) -> dict[str, Any]:
        return {"flow_run_key": self.flow_run_key, "step_statuses": self.step_statuses}

    async def poll(self, hook: Any) -> dict[str, Any] | None:
        flow = await hook.aflow_status(self.flow_run_key)
        for step in flow.get("steps", []):
            previous = self.step_statuses.get(step["id"])
            if previous != step["status"]:
                self.log.info(
                    "step %s: %s -> %s (attempt %s, run key %s)",
                    step["id"], previous or "-", step["status"], step.get("attempt_no"), step.get("run_key"),
                )  # fmt: skip
                self.step_statuses[step["id"]] = step["status"]
        if flow["status"] in ("PENDING", "RUNNING"):
            return None
        return {"status": "done", "flow": flow, **self.state()}

    async def abort_remote(self, hook: Any, reason: str) -> None:
        await hook.acancel_flow(self.flow_run_key, grace=self.kill_grace)
