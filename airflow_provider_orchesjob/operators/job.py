"""``OrchesJobStartOperator``: run one command on a host exactly once per task instance."""

from __future__ import annotations

import time
from collections.abc import Container, Mapping, Sequence
from typing import Any

from ..compat import AirflowException, AirflowTaskTimeout, mask_secret
from ..triggers.orchesjob import OrchesJobTrigger, chunk_bytes, chunk_done
from ..utils.lifecycle import (
    ACTIVE_JOB,
    ON_SUCCESS_FOUND,
    STOPPING,
    TERMINAL_FAILURES,
    is_user_clear,
    stop_reason,
    stopped_by_earlier_try,
    success_decision,
    timeout_message,
)
from .base import OrchesJobBaseOperator, tail

MAX_START_ROUNDS = 5  # start -> wait for a stop -> start ...: bounded
STOP_WAIT_LIMIT = 600.0  # seconds a try waits for a job that is being stopped


class OrchesJobStartOperator(OrchesJobBaseOperator):
    """Start a command on the host through ``orchesjob`` and wait for it.

    Retry semantics are decided atomically on the host (reuse policy
    ``failed-only``): if a previous try's job is still running, this try
    reattaches to it; if it SUCCEEDED, see ``on_success_found``; after
    FAILED/ABORTED/CANCELLED (or NEVER_LAUNCHED) a new attempt starts. A job that
    is being stopped (ABORTING/CANCELLING) is never reattached to: the try waits
    until the stop is complete, then starts the next attempt. After LOST (the
    outcome is unknown) nothing starts unless ``retry_lost`` is set.

    :param command: a list is the argv as-is; a string runs under ``/bin/sh -c``.
    :param env: extra environment variables for the command. They reach the host as a
        JSON document on the SSH session's stdin (the runtime's ``--env-file -``), never on a
        command line, and are masked in task logs; only their names appear in job JSON.
    :param cwd: working directory on the host.
    :param timeout: host-side runtime limit in seconds (enforced by the host even if Airflow is gone).
    :param run_key: templated; default: derived from (dag_id, task_id, run_id, map_index) so that
        every try of the task instance addresses the same remote job.
    :param skip_on_exit_code: exit code(s) that mark the task skipped instead of failed.
    :param reuse_policy: ``failed-only`` (default), ``never`` (strict) or ``always``.
    :param on_success_found: what a try does when the run key's job already SUCCEEDED
        (``failed-only`` only): ``auto`` (default) runs the command again when a user cleared
        the task and adopts the success on an automatic retry; ``adopt``/``rerun`` always do
        that. The rule: see ``utils/lifecycle.is_user_clear`` and the README.
    :param retry_lost: start a new attempt after a LOST one (its outcome is unknown: it may
        have completed). Default False: the task fails and says so.
    :return: the final job JSON (pushed to XCom).
    """

    template_fields: Sequence[str] = (*OrchesJobBaseOperator.template_fields, "command", "env", "cwd", "run_key")
    template_fields_renderers = {"command": "bash", "env": "json"}

    def __init__(
        self,
        *,
        command: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        run_key: str | None = None,
        skip_on_exit_code: int | Container[int] | None = None,
        reuse_policy: str = "failed-only",
        on_success_found: str = "auto",
        retry_lost: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_success_found not in ON_SUCCESS_FOUND:
            raise ValueError(f"on_success_found must be one of {ON_SUCCESS_FOUND}, got {on_success_found!r}")
        self.command = command
        if not isinstance(command, str):
            # An argv list is shown as the list it is, not as shell text.
            self.template_fields_renderers = {**type(self).template_fields_renderers, "command": "json"}
        self.env = env
        self.cwd = cwd
        self.timeout = timeout
        self.run_key = run_key
        self.skip_on_exit_code = (
            [skip_on_exit_code] if isinstance(skip_on_exit_code, int) else list(skip_on_exit_code or [])
        )
        self.reuse_policy = reuse_policy
        self.on_success_found = on_success_found
        self.retry_lost = retry_lost
        self._job_id: str | None = None
        self._labels: dict[str, str] | None = None

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # Register the env values with the secret masker as soon as they are known: the
        # rendered fields (shown in the UI) are stored right after rendering, before execute.
        super().render_template_fields(context, jinja_env)
        self.mask_env()

    def mask_env(self) -> None:
        for value in (self.env or {}).values() if isinstance(self.env, Mapping) else ():
            mask_secret(str(value))

    def execute(self, context: Any) -> Any:
        self.remember_task_instance(context)
        self.mask_env()
        self.run_key = self.task_run_key(context, self.run_key)
        self._labels = self.work_labels(context)
        self.log_recorded_job(context)
        return self.run_and_wait(context, self.start(context, first=True))

    def run_and_wait(self, context: Any, job: dict[str, Any]) -> Any:
        """Follow ``job`` (deferred or in the worker) to its end."""
        self._job_id = job["job_id"]
        self.log_attached(self.run_key, job_id=job["job_id"])
        self.record_job(context, job)
        if job["status"] not in ACTIVE_JOB:
            return self.conclude(context, job, self._stderr_tail(job))
        if self.deferrable:
            trigger = OrchesJobTrigger(run_key=self.run_key, job_id=job["job_id"], **self.trigger_kwargs(context))
            self.defer_to(context, trigger)
        return self._poll_in_worker(context, job["job_id"])

    # ------------------------------------------------------------ starting
    def _start_call(self, reuse_policy: str) -> dict[str, Any]:
        return self.hook.start_job(
            self.run_key, self.command, reuse_policy=reuse_policy, cwd=self.cwd, env=self.env,
            timeout=self.timeout, retry_lost=self.retry_lost, labels=self._labels,
        )  # fmt: skip

    def start(self, context: Any, first: bool = False) -> dict[str, Any]:
        """Start, reattach to or adopt the run key's job, applying the rules of the class docstring.

        ``first``: the start of this try's ``execute``. A job still running then belongs to an
        earlier try; when a user ended that try (cleared the task) and no ``on_kill`` stopped
        the job, this try stops it itself and starts the next attempt after the stop.
        """
        ti = context["ti"]
        try_number = getattr(ti, "try_number", None)
        user_clear = is_user_clear(try_number, getattr(ti, "max_tries", None), self.retries)
        stop_earlier = first and user_clear and self.abort_on_kill
        job = self._start_call(self.reuse_policy)
        for _ in range(MAX_START_ROUNDS):
            status = job["status"]
            if stop_earlier and status in ACTIVE_JOB and status not in STOPPING and not job.get("accepted"):
                stop_earlier = False
                job = self._stop_earlier_try_job(job, try_number)
                if job.get("status") not in STOPPING:
                    job = self._start_call(self.reuse_policy)
                continue
            if status in STOPPING:
                self.log.warning(
                    "attempt %s of run key %s (job %s) is being stopped (%s%s): waiting until nothing of it is "
                    "left, then starting the next attempt", job.get("attempt_no"), self.run_key, job["job_id"],
                    status, f", reason: {job['abort_reason']}" if job.get("abort_reason") else "",
                )  # fmt: skip
                self._wait_stopped(job["job_id"])
                job = self._start_call(self.reuse_policy)
                continue
            if status == "SUCCEEDED" and not job.get("accepted") and self.reuse_policy == "failed-only":
                decision = success_decision(self.on_success_found, user_clear=user_clear)
                if decision == "rerun":
                    self.log.warning(
                        "run key %s already SUCCEEDED (job %s, attempt %s); this try %s: RUNNING THE COMMAND AGAIN "
                        "as a new attempt (on_success_found=%r)", self.run_key, job["job_id"], job.get("attempt_no"),
                        "exists because a user cleared the task" if user_clear else "was asked to",
                        self.on_success_found,
                    )  # fmt: skip
                    job = self._start_call("always")
                    continue
                self.log.warning(
                    "ADOPTING the earlier success of run key %s: job %s (attempt %s) SUCCEEDED with exit code %s; "
                    "nothing runs now (automatic retry; on_success_found=%r — clear the task, or set "
                    "on_success_found='rerun', to run it again)", self.run_key, job["job_id"], job.get("attempt_no"),
                    job.get("exit_code"), self.on_success_found,
                )  # fmt: skip
            elif status == "LOST" and not job.get("accepted"):
                why = job.get("error") or "supervisor and process tree gone, no recorded exit status"
                raise AirflowException(
                    f"remote job {job['job_id']} (run key {self.run_key}, attempt {job.get('attempt_no')}) is LOST: "
                    f"its outcome is unknown ({why}), so this retry does not start it again — it may have "
                    f"completed. Check the host (`orchesjob status --job-id {job['job_id']}`, `orchesjob logs "
                    f"--job-id {job['job_id']}`); set retry_lost=True on the operator to start a new attempt after "
                    "a LOST one."
                )
            elif job.get("accepted"):
                self.log.info("started remote job %s (run key %s, attempt %s)", job["job_id"], self.run_key,
                              job.get("attempt_no"))  # fmt: skip
            elif status in ACTIVE_JOB:
                self.log.info("reattached to running job %s (attempt %s): nothing new started", job["job_id"],
                              job.get("attempt_no"))  # fmt: skip
            else:
                self.log.info("run key %s already %s (job %s): that result stands (reuse policy %s)", self.run_key,
                              status, job["job_id"], self.reuse_policy)  # fmt: skip
            return job
        raise AirflowException(f"run key {self.run_key}: no attempt could be started after {MAX_START_ROUNDS} rounds")

    def _stop_earlier_try_job(self, job: dict[str, Any], try_number: int) -> dict[str, Any]:
        """Stop the job an earlier try followed, on behalf of that try (a user ended it: no reattaching)."""
        earlier = try_number - 1
        self.log.warning(
            "job %s (attempt %s) of run key %s is still %s, but the earlier try that followed it was ended by a "
            "user (this try, %s, exists because the task was cleared) and nothing stopped the job yet: stopping "
            "it, then starting the next attempt", job["job_id"], job.get("attempt_no"), self.run_key, job["status"],
            try_number,
        )  # fmt: skip
        reason = stop_reason(f"an earlier try was ended by a user; stopped by try {try_number}", earlier)
        stopped = self.hook.abort_job(job_id=job["job_id"], reason=reason, grace=self.kill_grace)
        return {**job, **{k: v for k, v in stopped.items() if not k.endswith("_chunk")}}

    def _wait_stopped(self, job_id: str) -> dict[str, Any]:
        """Poll a job that is being stopped until its stop is complete."""
        deadline = time.monotonic() + STOP_WAIT_LIMIT
        while True:
            job = self.hook.job_status(job_id=job_id)
            if job["status"] not in STOPPING:
                self.log.info("job %s is now %s", job_id, job["status"])
                return job
            if time.monotonic() > deadline:
                raise AirflowException(
                    f"job {job_id} is still {job['status']} after {STOP_WAIT_LIMIT:.0f} s: its processes did not "
                    "exit; not starting another attempt next to them"
                )
            time.sleep(min(self.poll_interval, 2.0))

    # ------------------------------------------------------------- waiting
    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        self.remember_task_instance(context)
        self.run_key = event.get("run_key") or self.task_run_key(context, self.run_key)
        self.log_attached(self.run_key, job_id=event.get("job_id") or (event.get("job") or {}).get("job_id"))
        self.raise_for_event(event)
        return self.conclude(context, event["job"], event.get("stderr_tail", ""))

    def _poll_in_worker(self, context: Any, job_id: str) -> Any:
        """Non-deferrable mode: the same one-call-per-poll loop as the trigger, in the worker."""
        offsets = {"stdout": 0, "stderr": 0}
        stderr_tail = b""
        try:
            while True:
                job = self.hook.job_status(job_id=job_id, stdout_offset=offsets["stdout"],
                                           stderr_offset=offsets["stderr"])  # fmt: skip
                more = False
                for stream in ("stdout", "stderr"):
                    chunk = job.pop(f"{stream}_chunk", None)
                    data = chunk_bytes(chunk)
                    if chunk:
                        offsets[stream] = chunk["next_offset"]
                    more = more or not chunk_done(chunk)
                    if stream == "stderr":
                        stderr_tail = (stderr_tail + data)[-4096:]
                    for line in data.decode("utf-8", "replace").splitlines():
                        self.log.info("[remote %s] %s", stream, line)
                if more:
                    continue  # output is waiting: read it before sleeping or finishing
                if job["status"] not in ACTIVE_JOB:
                    return self.conclude(context, job, stderr_tail.decode("utf-8", "replace"))
                time.sleep(self.poll_interval)
        except AirflowTaskTimeout as exc:
            # execution_timeout fired in the worker: stop the job and say whether that worked.
            raise AirflowTaskTimeout(self._stop_for_timeout(job_id, str(exc) or "execution_timeout")) from exc

    def _stop_for_timeout(self, job_id: str, what: str) -> str:
        try:
            stop = self.hook.abort_job(job_id=job_id, reason=stop_reason("deadline reached", self._try()),
                                       grace=self.kill_grace)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - reported in the message, never hidden
            return timeout_message(what, None, str(exc))
        return timeout_message(what, stop, None)

    def _try(self) -> int | None:
        return getattr(self, "_try_number", None)

    def _stderr_tail(self, job: dict) -> str:
        if job.get("status") in TERMINAL_FAILURES and job.get("job_id"):
            try:
                return self.hook.stderr_tail(job_id=job["job_id"]).decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - logs may have been cleaned; the status still decides
                return ""
        return ""

    def conclude(self, context: Any, job: dict, stderr_tail: str) -> Any:
        """The end of this try: the job's outcome — or, when a user's kill of an earlier try stopped the job
        this try had reattached to, the next attempt."""
        if stopped_by_earlier_try(job, self._try()):
            self.log.warning(
                "job %s was %s because a user killed an earlier try (%s): starting the next attempt",
                job.get("job_id"), job.get("status"), job.get("abort_reason"),
            )  # fmt: skip
            return self.run_and_wait(context, self.start(context))
        return self.finish(job, stderr_tail)

    def finish(self, job: dict, stderr_tail: str) -> Any:
        status, code = job.get("status"), job.get("exit_code")
        if status == "SUCCEEDED":
            return job
        if status == "FAILED" and code in self.skip_on_exit_code:
            from airflow.exceptions import AirflowSkipException

            raise AirflowSkipException(f"remote job {job.get('job_id')} exited {code}: skipping")
        raise AirflowException(
            f"remote job {job.get('job_id')} (run key {job.get('run_key')}) ended {status} with exit code {code}"
            + (f": {job['error']}" if job.get("error") else "")
            + (f"\n--- last lines of stderr ---\n{tail(stderr_tail)}" if stderr_tail.strip() else "")
        )

    def on_kill(self) -> None:
        """Non-deferrable mode: stop the remote job too — when a person killed the task (not a worker shutdown)."""
        if self.abort_on_kill and self._job_id and self.killed_by_user():
            try:
                reason = stop_reason("Airflow task killed by a user", self._try())
                self.hook.abort_job(job_id=self._job_id, reason=reason, grace=self.kill_grace)
            except Exception as exc:  # noqa: BLE001 - already finished, or unreachable
                self.log.warning("could not abort remote job %s: %s", self._job_id, exc)
