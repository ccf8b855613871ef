"""``OrchesJobStartOperator``: run one command on a host exactly once per task instance."""

from __future__ import annotations

import time
from collections.abc import Container, Mapping, Sequence
from typing import Any

from ..compat import AirflowException
from ..triggers.orchesjob import ACTIVE_JOB, OrchesJobTrigger, chunk_bytes, chunk_done
from ..utils.run_key import run_key_from_context
from .base import TERMINAL_FAILURES, OrchesJobBaseOperator, tail


class OrchesJobStartOperator(OrchesJobBaseOperator):
    """Start a command on the host through ``orchesjob`` and wait for it.

    Retry semantics are decided atomically on the host (reuse policy
    ``failed-only``): if a previous try's job is still running, this try
    reattaches to it; if it SUCCEEDED, its result is adopted and nothing runs;
    after FAILED/LOST/ABORTED/CANCELLED a new attempt starts.

    :param command: a list is the argv as-is; a string runs under ``/bin/sh -c``.
    :param env: extra environment variables for the command.
    :param cwd: working directory on the host.
    :param timeout: host-side runtime limit in seconds (enforced by the host even if Airflow is gone).
    :param run_key: templated; default: derived from (dag_id, task_id, run_id, map_index) so that
        every try of the task instance addresses the same remote job.
    :param skip_on_exit_code: exit code(s) that mark the task skipped instead of failed.
    :param reuse_policy: ``failed-only`` (default), ``never`` (strict) or ``always``.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.command = command
        self.env = env
        self.cwd = cwd
        self.timeout = timeout
        self.run_key = run_key
        self.skip_on_exit_code = (
            [skip_on_exit_code] if isinstance(skip_on_exit_code, int) else list(skip_on_exit_code or [])
        )
        self.reuse_policy = reuse_policy
        self._job_id: str | None = None

    def execute(self, context: Any) -> Any:
        run_key = self.run_key or run_key_from_context(context)
        self.run_key = run_key
        job = self.hook.start_job(
            run_key, self.command, reuse_policy=self.reuse_policy, cwd=self.cwd, env=self.env, timeout=self.timeout
        )
        self._job_id = job["job_id"]
        if job["accepted"]:
            self.log.info("started remote job %s (run key %s, attempt %s)", job["job_id"], run_key, job["attempt_no"])
        elif job["status"] in ACTIVE_JOB:
            self.log.info("reattached to running job %s (attempt %s): nothing new started", job["job_id"],
                          job["attempt_no"])  # fmt: skip
        else:
            self.log.info("run key %s already %s (job %s): adopting that result, nothing runs", run_key,
                          job["status"], job["job_id"])  # fmt: skip
        if job["status"] not in ACTIVE_JOB:
            return self.finish(job, self._fetch_stderr_tail(job))
        if self.deferrable:
            self.defer(
                trigger=OrchesJobTrigger(run_key=run_key, job_id=job["job_id"], **self.trigger_kwargs()),
                method_name="execute_complete",
            )
        return self._poll_in_worker(run_key, job["job_id"])

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        self.raise_for_event(event)
        return self.finish(event["job"], event.get("stderr_tail", ""))

    def _poll_in_worker(self, run_key: str, job_id: str) -> Any:
        """Non-deferrable mode: the same one-call-per-poll loop as the trigger, in the worker."""
        offsets = {"stdout": 0, "stderr": 0}
        stderr_tail = b""
        while True:
            job = self.hook.job_status(job_id=job_id, stdout_offset=offsets["stdout"], stderr_offset=offsets["stderr"])
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
                return self.finish(job, stderr_tail.decode("utf-8", "replace"))
            time.sleep(self.poll_interval)

    def _fetch_stderr_tail(self, job: dict) -> str:
        if job.get("status") in TERMINAL_FAILURES and job.get("job_id"):
            try:
                return self.hook.job_logs(job_id=job["job_id"], stream="stderr")[-4096:].decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - logs may have been cleaned; the status still decides
                return ""
        return ""

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
        """Non-deferrable mode: the worker is killing this task, so stop the remote job too."""
        if self.abort_on_kill and self._job_id:
            try:
                self.hook.abort_job(job_id=self._job_id, reason="Airflow task killed", grace=self.kill_grace)
            except Exception as exc:  # noqa: BLE001 - already finished, or unreachable
                self.log.warning("could not abort remote job %s: %s", self._job_id, exc)
