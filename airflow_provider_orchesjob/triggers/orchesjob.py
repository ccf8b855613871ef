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
* a user killing the deferred task (mark failed/success, clear) stops the
  remote work when ``abort_on_kill`` is set — and only then: a cancelled trigger
  first reads the task instance's state (mapped task instances by their own key)
  and stops nothing while the task is still deferred (the trigger moved to
  another triggerer, or its triggerer shuts down) or when the state cannot be
  read. ``BaseTrigger.on_kill`` on Airflow 3.3+ (which calls it for triggers that
  moved as well), the cancellation itself on older versions;
* the stop names the try that asked for it (``utils/lifecycle.stop_reason``), so
  the next try can tell an earlier try's stop from a stop of its own job;
* ``deadline`` (from ``execution_timeout`` and ``trigger_timeout``) is enforced
  here, because Airflow 3.3 does not time out a deferred task: the remote work is
  stopped and the event says truthfully whether that worked.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from ..compat import (
    AIRFLOW_V3_3,
    LOG_OFFSETS_XCOM_KEY,
    BaseTrigger,
    TriggerEvent,
    run_sync,
    task_instance_state,
    task_instance_try,
    task_xcom_get_sync,
    task_xcom_set_sync,
)
from ..exceptions import OrchesJobConnectionError, OrchesJobError, OrchesJobNotFound
from ..hooks.batching import tick_phase, until_next_tick
from ..utils.lifecycle import (
    ACTIVE_JOB,
    is_user_kill,
    normalize_state,
    stop_reason,
    timeout_message,
    trigger_superseded,
)

__all__ = ["ACTIVE_JOB", "PENDING_RESERVATION", "OrchesJobTrigger", "OrchesJobReservationTrigger",
           "OrchesJobFlowTrigger", "chunk_bytes", "chunk_done"]  # fmt: skip

PENDING_RESERVATION = ("RESERVED", "DISPATCHING")  # not dispatched yet, may still be
TAIL_BYTES = 4096
CATCH_UP_BYTES = 1 << 20
ABORT_TIMEOUT = 25.0  # below Airflow's default on_kill budget (30 s)
KILL_STOP_WAIT = 3.0  # a kill asks for the stop and returns: the host finishes it on its own


# Stops under way in tasks of their own, referenced here until they end (see outlive_cancellation).
_STOPS: set[asyncio.Task] = set()


async def outlive_cancellation(coro: Any) -> Any:
    """Await ``coro`` in a task of its own that a cancellation of the caller does not stop.

    Airflow 3.3's triggerer sends its "user action" cancel to a trigger again on every
    loop (about once a second) until the trigger has ended, also while ``on_kill`` runs:
    a state lookup and stop awaited directly were cut off in about 1 run of 4, before the
    stop reached the host. The caller is still cancelled at once; the stop goes on, bounded
    by its own timeouts (``ABORT_TIMEOUT``), while the triggerer runs.
    """
    task = asyncio.ensure_future(coro)
    _STOPS.add(task)
    task.add_done_callback(_STOPS.discard)
    return await asyncio.shield(task)


DEADLINE_POLL_SLACK = 2.0  # a poll in flight at the deadline may finish this much later
UNREACHABLE_STOP_TIMEOUT = 8.0  # the stop attempt after a deadline reached with the host not answering


class _DeadlineDuringPoll(Exception):
    """The deadline passed while a poll still waited for the host."""


def chunk_bytes(chunk: dict | None) -> bytes:
    """The raw bytes of a status log chunk (utf-8 text or base64)."""
    if not chunk:
        return b""
    if chunk.get("encoding") == "base64":
        return base64.b64decode(chunk.get("data", ""))
    return str(chunk.get("data", "")).encode("utf-8")


def chunk_done(chunk: dict | None) -> bool:
    return not chunk or chunk["next_offset"] >= chunk.get("size", 0)


FLOW_ACTIVE = ("PENDING", "RUNNING")


def log_step_transitions(log: Any, step_statuses: dict[str, str], flow: dict[str, Any]) -> None:
    """Log each step whose status changed since ``step_statuses`` (updated in place)."""
    for step in flow.get("steps", []):
        previous = step_statuses.get(step["id"])
        if previous != step["status"]:
            log.info("step %s: %s -> %s (attempt %s, run key %s)", step["id"], previous or "-", step["status"],
                     step.get("attempt_no"), step.get("run_key"))  # fmt: skip
            step_statuses[step["id"]] = step["status"]


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
        try_number: int | None = None,
    ) -> None:
        super().__init__()
        self.try_number = try_number
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
            "try_number": self.try_number,
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
                await run_sync(hook.ssh_config)
            self._hook = hook
        return self._hook

    # Subclasses: one remote command; return an event payload when finished, else None.
    async def poll(self, hook: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    async def abort_remote(self, hook: Any, reason: str, wait: float | None = None) -> dict[str, Any] | None:
        """Stop the remote work; return what the host answered (None: there was nothing to stop)."""
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async for event in self._loop():
                yield event
                return
        except asyncio.CancelledError:
            # Before 3.3 there is no on_kill: a user's kill, a move to another triggerer and
            # a triggerer shutdown all arrive here; the task's state tells them apart.
            if self.abort_on_kill and not AIRFLOW_V3_3:
                await outlive_cancellation(self._stop_if_user_kill())
            raise

    async def _loop(self) -> AsyncIterator[TriggerEvent]:
        hook = await self.hook()
        # What names the host and its edge settings, as the trigger was given it: triggers
        # that share a batch share these, so they wake together in any triggerer process.
        host = (self.transport, self.ssh_conn_id, self.remote_host, self.orchesjob_home, self.bin_dir)
        phase = tick_phase(host, self.poll_interval)
        failing_since: float | None = None
        while True:
            if self.deadline is not None and time.time() >= self.deadline:
                yield TriggerEvent(await self._deadline_event())
                return
            try:
                payload = await self._poll_until_deadline(hook)
                failing_since = None
            except _DeadlineDuringPoll as exc:
                # The host did not answer before the deadline (the hook was still reconnecting):
                # one short stop attempt, then fail at once, saying the stop could not be made.
                yield TriggerEvent(await self._deadline_event(unreachable=str(exc)))
                return
            except OrchesJobError as exc:
                retryable = exc.retryable if isinstance(exc, OrchesJobConnectionError) else exc.transient
                if not retryable:
                    yield TriggerEvent({"status": "error", "message": str(exc), **self.state()})
                    return
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.reconnect_budget:
                    yield TriggerEvent({"status": "error", "message": f"host unreachable: {exc}", **self.state()})
                    return
                self.log.warning("poll failed (%s); will retry", exc)
                payload = None
            if payload is not None:
                yield TriggerEvent(payload)
                return
            # On the host's wall-clock grid of the interval: its triggers' polls then share one command.
            sleep = 0 if self._poll_now else until_next_tick(self.poll_interval, phase=phase)
            if self.deadline is not None:
                sleep = max(0.0, min(sleep, self.deadline - time.time()))
            await asyncio.sleep(sleep)

    async def _poll_until_deadline(self, hook: Any) -> dict[str, Any] | None:
        """One poll, cut off at the deadline: the hook's reconnect loop must not outlive it."""
        if self.deadline is None:
            return await self.poll(hook)
        limit = max(self.deadline - time.time(), 0.0) + DEADLINE_POLL_SLACK
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the poll
        # ends, and a user's kill must always reach the triggerer's on_kill path.
        task = asyncio.ensure_future(self.poll(hook))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            done, _ = await asyncio.wait({task}, timeout=limit)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            raise _DeadlineDuringPoll(f"no answer from the host within {limit:.0f} s before the deadline")
        return task.result()

    def state(self) -> dict[str, Any]:
        """Resumable state included in every event."""
        return {}

    async def _deadline_event(self, unreachable: str | None = None) -> dict[str, Any]:
        """Stop the remote work because the deadline passed; say truthfully what happened.

        ``unreachable``: the last poll got no answer before the deadline. The stop is then tried
        once, for a few seconds only, and the event says the host could not be reached.
        """
        if not self.abort_on_kill:
            message = "timeout: the deadline passed while deferred; remote work left running (abort_on_kill=False)"
            return {"status": "timeout", "message": message, "stop": None, "stop_error": None, **self.state()}
        why = "deadline reached (execution_timeout / trigger_timeout)"
        if unreachable is not None:
            stop, error = await self._stop_quietly(why, 0, limit=UNREACHABLE_STOP_TIMEOUT)
            if error is not None:
                error = f"could not reach the host to stop the job ({unreachable}; stop: {error})"
        else:
            stop, error = await self._stop_quietly(why, self.kill_grace + 10)
        what = "timeout: the task's deadline passed while it was deferred"
        if stop is not None:
            stop = {k: v for k, v in stop.items() if not k.endswith("_chunk")}
        return {"status": "timeout", "message": timeout_message(what, stop, error), "stop": stop,
                "stop_error": error, **self.state()}  # fmt: skip

    async def on_kill(self) -> None:  # Airflow >= 3.3
        # 3.3 also calls on_kill for a trigger that moved to another triggerer (a stalled
        # one resumed): the task instance's state decides whether a person acted.
        if self.abort_on_kill:
            await outlive_cancellation(self._stop_if_user_kill())

    async def _stop_if_user_kill(self) -> None:
        if await self._confirm_user_kill():
            await self._stop_quietly("task killed by a user while deferred", KILL_STOP_WAIT)

    async def _stop_quietly(
        self, why: str, wait: float, limit: float = ABORT_TIMEOUT
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(host answer, None) or (None, error text). Bounded: a dead host must not hang the triggerer."""
        try:
            stopped = await asyncio.wait_for(
                self.abort_remote(await self.hook(), stop_reason(why, self.try_number), wait), limit
            )
            self.log.warning("stop of remote work (%s): %s", why, (stopped or {}).get("status", "nothing to stop"))
            return stopped, None
        except (OrchesJobError, asyncio.TimeoutError) as exc:  # host unreachable, or refused (another user's job)
            message = str(exc) or type(exc).__name__
            self.log.error("could not stop remote work (%s): %s", why, message)
            return None, message

    async def current_task_state(self) -> Any:
        """The task instance's state now (None: it no longer exists); raises when it cannot be read."""
        ti = self.task_instance
        return await task_instance_state(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))

    async def current_task_try(self) -> int | None:
        """The task instance's current try number, when it can be known (see ``compat.task_instance_try``)."""
        ti = self.task_instance
        return await task_instance_try(ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1))

    async def _confirm_user_kill(self) -> bool:
        """Whether the task instance's state shows a person's action (never guessed: unknown means no)."""
        ti = getattr(self, "task_instance", None)
        if ti is None:
            self.log.warning("cancelled without a task instance: not stopping the remote work")
            return False
        try:
            state = await self.current_task_state()
        except Exception as exc:  # noqa: BLE001 - never fail the triggerer over this check
            self.log.warning("cannot read the task's state (%s): not stopping the remote work", exc)
            return False
        killed = is_user_kill(state)
        if not killed and normalize_state(state) == "deferred":
            my_try = self.try_number if self.try_number is not None else getattr(ti, "try_number", None)
            try:
                current = await self.current_task_try()
            except Exception as exc:  # noqa: BLE001 - an unknown try proves nothing
                self.log.warning("cannot read the task's current try (%s)", exc)
                current = None
            killed = trigger_superseded(state, my_try, current)
            if killed:
                state = f"deferred in a newer try ({current}, this trigger's: {my_try})"
        self.log.info(
            "trigger cancelled; task %s.%s[%s] of %s is %s: %s",
            ti.dag_id, ti.task_id, getattr(ti, "map_index", -1), ti.run_id, normalize_state(state),
            "a user's action, stopping the remote work" if killed else "not a user's action, the remote work goes on",
        )  # fmt: skip
        return killed


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
        self._progress_loaded = False  # the saved log offsets were read (once per trigger instance)
        self._progress_saved: tuple | None = None  # what was saved last
        self._progress_broken = False  # saving failed once: stop trying (only a refinement)

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

    # Log progress. The kwargs hold the offsets of the moment of deferral; a trigger restarted
    # after a triggerer crash would stream everything since then again. So the trigger saves
    # its offsets (XCom ``orchesjob_log_offsets`` of the task instance) after each poll that
    # logged something, and a new trigger instance resumes from them: at most one poll's output
    # is logged twice (the one logged but not yet saved when the triggerer died).
    def _ti_ref(self) -> tuple | None:
        ti = getattr(self, "task_instance", None)
        if ti is None or not self.stream_logs:
            return None
        return ti.dag_id, ti.task_id, ti.run_id, getattr(ti, "map_index", -1)

    async def _load_progress(self) -> None:
        self._progress_loaded = True
        ref = self._ti_ref()
        if ref is None or self.job_id is None:
            return
        try:
            saved = await run_sync(task_xcom_get_sync, *ref, LOG_OFFSETS_XCOM_KEY)
        except Exception as exc:  # noqa: BLE001 - only a refinement: stream from the kwargs' offsets
            self.log.warning("cannot read the saved log offsets (%s): streaming from the deferral's", exc)
            return
        if not isinstance(saved, dict) or saved.get("job_id") != self.job_id or saved.get("try") != self.try_number:
            return
        out, err = int(saved.get("stdout_offset") or 0), int(saved.get("stderr_offset") or 0)
        if (
            out >= self.stdout_offset
            and err >= self.stderr_offset
            and (out, err)
            != (
                self.stdout_offset,
                self.stderr_offset,
            )
        ):
            self.log.info("resuming the remote log of job %s at stdout %d / stderr %d bytes (already logged by "
                          "an earlier instance of this trigger)", self.job_id, out, err)  # fmt: skip
            self.stdout_offset, self.stderr_offset = out, err
            if saved.get("stderr_tail"):
                self._tail = base64.b64decode(saved["stderr_tail"])
        self._progress_saved = (self.job_id, self.stdout_offset, self.stderr_offset)

    async def _save_progress(self) -> None:
        ref = self._ti_ref()
        current = (self.job_id, self.stdout_offset, self.stderr_offset)
        if ref is None or self._progress_broken or current == self._progress_saved:
            return
        value = {"job_id": self.job_id, "try": self.try_number, "stdout_offset": self.stdout_offset,
                 "stderr_offset": self.stderr_offset, "stderr_tail": base64.b64encode(self._tail).decode()}  # fmt: skip
        try:
            await run_sync(task_xcom_set_sync, *ref, LOG_OFFSETS_XCOM_KEY, value)
            self._progress_saved = current
        except Exception as exc:  # noqa: BLE001 - only a refinement
            self._progress_broken = True
            self.log.warning("cannot save the log offsets (%s): a restarted trigger may log output twice", exc)

    async def poll(self, hook: Any) -> dict[str, Any] | None:
        if not self._progress_loaded:
            await self._load_progress()
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
            await self._save_progress()
            return None
        if not (chunk_done(job.get("stdout_chunk")) and chunk_done(job.get("stderr_chunk"))):
            self._poll_now = True  # finished with output left: fetch the rest at once, in bigger chunks
            await self._save_progress()
            return None
        job.pop("stdout_chunk", None)
        job.pop("stderr_chunk", None)
        return {"status": "done", "job": job, **self.state()}

    async def abort_remote(self, hook: Any, reason: str, wait: float | None = None) -> dict[str, Any] | None:
        if self.job_id is None and self.run_key is None:
            return None
        return await hook.astop_job("abort", self.run_key if self.job_id is None else None, self.job_id,
                                    reason=reason, grace=self.kill_grace, wait=wait)  # fmt: skip


class OrchesJobReservationTrigger(OrchesJobTrigger):
    """Wait until a reservation is dispatched, then follow its job like :class:`OrchesJobTrigger`."""

    def __init__(self, *, reservation_run_key: str, rearm_before: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reservation_run_key = reservation_run_key
        # Set by a try that exists because a user cleared the task: a reservation cancelled up to
        # this epoch second was cancelled by the earlier try's kill (see the operator).
        self.rearm_before = rearm_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        path, kwargs = super().serialize()
        return path, {**kwargs, "reservation_run_key": self.reservation_run_key, "rearm_before": self.rearm_before}

    def state(self) -> dict[str, Any]:
        return {**super().state(), "reservation_run_key": self.reservation_run_key, "rearm_before": self.rearm_before}

    async def poll(self, hook: Any) -> dict[str, Any] | None:
        if self.job_id is not None:
            return await super().poll(hook)
        res = (await hook.areservation_poll(self.reservation_run_key))["reservation"]
        status = res["reservation_status"]
        if status in PENDING_RESERVATION:
            return None
        if status == "DISPATCHED" and res.get("job_id"):
            self.job_id = res["job_id"]
            self.log.info("reservation dispatched as job %s", self.job_id)
            return await super().poll(hook)
        return {"status": "reservation_ended", "reservation": res, **self.state()}

    async def abort_remote(self, hook: Any, reason: str, wait: float | None = None) -> dict[str, Any] | None:
        if self.job_id is not None:
            return await super().abort_remote(hook, reason, wait)
        out = await run_sync(hook.cancel_reservation, self.reservation_run_key, reason=reason)
        res = out.get("reservation") or {}
        # A reservation cancelled before its dispatch: nothing ever ran.
        return {"status": out.get("status") or "CANCELLED", "run_key": self.reservation_run_key,
                "reservation_status": res.get("reservation_status")}  # fmt: skip


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
        flow = await hook.aflow_poll(self.flow_run_key)
        log_step_transitions(self.log, self.step_statuses, flow)
        if flow["status"] in FLOW_ACTIVE:
            return None
        return {"status": "done", "flow": flow, **self.state()}

    async def abort_remote(self, hook: Any, reason: str, wait: float | None = None) -> dict[str, Any] | None:
        return await hook.acancel_flow(self.flow_run_key, grace=self.kill_grace)
