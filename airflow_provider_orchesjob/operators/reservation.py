"""``OrchesJobReserveOperator``: reserve a job now; the host dispatches it at/after ``not_before``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ..compat import AirflowException
from ..hooks.commands import number
from ..hooks.orchesjob import JOB_LABELS, REARM
from ..triggers.orchesjob import PENDING_RESERVATION, OrchesJobReservationTrigger
from ..utils.labels import label_options
from ..utils.lifecycle import STOPPING, TERMINAL_FAILURES, is_user_clear, stop_reason, stop_requested_by_try
from .job import OrchesJobStartOperator


class OrchesJobReserveOperator(OrchesJobStartOperator):
    """Store a reservation on the host (idempotent per run key) and optionally wait for its job.

    The host's ``orchesjob-reserver run`` dispatcher starts the job at or after
    ``not_before`` even if Airflow cannot reach the host at that moment.

    :param not_before: templated; datetime (timezone-aware), ISO 8601 string or epoch seconds.
    :param expires_at: templated; the reservation expires if not dispatched by then.
    :param metadata: stored with the reservation; defaults to the dag/task/run ids.
    :param start_options: extra ``orchesjob start`` options for the dispatch (e.g. ``["--timeout", "2h"]``).
    :param wait_for_completion: wait until the dispatched job finishes (deferred, or polling in
        the worker with ``deferrable=False``), then behave like :class:`OrchesJobStartOperator`
        (logs, XCom = final job JSON, failure with stderr tail).
    :return: the reservation JSON, or the final job JSON when waiting.
    """

    template_fields: Sequence[str] = (*OrchesJobStartOperator.template_fields, "not_before", "expires_at", "metadata")
    template_fields_renderers = {**OrchesJobStartOperator.template_fields_renderers, "metadata": "json"}

    def __init__(
        self,
        *,
        not_before: datetime | str | int | float | None = None,
        expires_at: datetime | str | int | float | None = None,
        metadata: Mapping[str, Any] | None = None,
        start_options: Sequence[str] = (),
        wait_for_completion: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.not_before = not_before
        self.expires_at = expires_at
        self.metadata = metadata
        self.start_options = list(start_options)
        self.wait_for_completion = wait_for_completion

    def _start_options(self) -> list[str]:
        options = ["--reuse-policy", self.reuse_policy, *self.start_options]
        if self.cwd:
            options += ["--cwd", self.cwd]
        if self.timeout:
            options += ["--timeout", number(self.timeout)]
        # The dispatched job carries the labels too.
        options += label_options(self.hook.if_capable(JOB_LABELS, self._labels) or {})
        return options

    def execute(self, context: Any) -> Any:
        self.remember_task_instance(context)
        self.mask_env()
        run_key = self.task_run_key(context, self.run_key)
        self.run_key = run_key
        self._labels = self.work_labels(context, followed=self.wait_for_completion)
        ti = context["ti"]
        metadata = self.metadata or {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
                                     "map_index": getattr(ti, "map_index", -1)}  # fmt: skip
        # A user's clear of a task whose reservation was cancelled (its try was killed) or
        # expired re-arms it; an automatic retry keeps the reservation's fate.
        user_clear = is_user_clear(getattr(ti, "try_number", None), getattr(ti, "max_tries", None), self.retries)
        rearm = user_clear and REARM in self.hook.capabilities()
        out = self.hook.reserve(
            run_key, self.command, not_before=self.not_before, expires_at=self.expires_at, metadata=metadata,
            start_options=self._start_options(), env=self.env, rearm=rearm,
        )  # fmt: skip
        res = out["reservation"]
        if out.get("rearmed"):
            self.log.warning("reservation %s had ended without a job; a user cleared the task: RE-ARMED it "
                             "(%s, not before %s)", res["reservation_id"], res["reservation_status"],
                             res.get("not_before_iso") or "now")  # fmt: skip
        self.log.info(
            "%s reservation %s (run key %s): %s, not before %s",
            "created" if out["created"] else "found existing", res["reservation_id"], run_key,
            res["reservation_status"], res.get("not_before_iso") or "now",
        )  # fmt: skip
        self.log_attached(run_key, reservation_id=res["reservation_id"], job_id=res.get("job_id"))
        if not self.wait_for_completion:
            return res
        job_id = res.get("job_id")
        if job_id and self.hook.job_status(job_id=job_id)["status"] in (*TERMINAL_FAILURES, *STOPPING):
            # A retry after the dispatched job failed (or is being stopped): like the start
            # operator, start the next attempt under the same run key once nothing of the
            # previous one is left (the reuse policy still adopts a success, refuses after LOST).
            job = self.start(context)
            self.log.info("dispatched job %s had not succeeded: now job %s (attempt %s, %s)", job_id,
                          job["job_id"], job.get("attempt_no"), job["status"])  # fmt: skip
            job_id = job["job_id"]
            self.log_attached(run_key, job_id=job_id)
        # The killed earlier try may still be cancelling the reservation: a cancel seen up to
        # REARM_WINDOW from now came from it, and this try re-arms once more (never twice).
        rearm_before = time.time() + REARM_WINDOW if rearm and not self._late_rearmed else None
        if self.deferrable:
            trigger = OrchesJobReservationTrigger(
                reservation_run_key=run_key, run_key=run_key, job_id=job_id, rearm_before=rearm_before,
                **self.trigger_kwargs(context),
            )  # fmt: skip
            self.defer_to(context, trigger)
        return self._wait_in_worker(context, run_key, job_id, rearm_before)

    _late_rearmed = False

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("status") == "reservation_ended":
            if cancelled_by_earlier_try(event["reservation"], event.get("rearm_before"), _try_of(context)):
                return self._rearm_late(context, event["reservation"])
            raise _ended_without_job(event["reservation"])
        return super().execute_complete(context, event)

    def _rearm_late(self, context: Any, res: dict[str, Any]) -> Any:
        self.log.warning(
            "reservation %s was CANCELLED (at %s) while this try waited on it: the kill of the earlier try that "
            "a user cleared was still cancelling it. Re-arming it once more", res.get("reservation_id"),
            res.get("updated_at_iso") or res.get("updated_at"),
        )  # fmt: skip
        self._late_rearmed = True
        return self.execute(context)

    def _wait_in_worker(self, context: Any, run_key: str, job_id: str | None, rearm_before: float | None = None) -> Any:
        """Non-deferrable mode: what the reservation trigger does, polling from the worker."""
        while job_id is None:
            res = self.hook.reservation_status(run_key)["reservation"]
            if res["reservation_status"] == "DISPATCHED" and res.get("job_id"):
                job_id = res["job_id"]
                self.log.info("reservation dispatched as job %s", job_id)
                self.log_attached(run_key, job_id=job_id)
            elif res["reservation_status"] in PENDING_RESERVATION:
                time.sleep(self.poll_interval)
            elif cancelled_by_earlier_try(res, rearm_before, _try_of(context)):
                return self._rearm_late(context, res)
            else:
                raise _ended_without_job(res)
        self._job_id = job_id
        return self._poll_in_worker(context, job_id)

    def on_kill(self) -> None:
        """Non-deferrable mode: cancel the reservation, or (once dispatched) abort its job."""
        if self.abort_on_kill and self.wait_for_completion and self._job_id is None and self.run_key:
            if not self.killed_by_user():
                return
            try:
                self.hook.cancel_reservation(self.run_key, reason=stop_reason("task killed by a user",
                                                                              self._try_number))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - already ended, or unreachable
                self.log.warning("could not cancel reservation %s: %s", self.run_key, exc)
            return
        super().on_kill()


REARM_WINDOW = 60.0  # seconds: Airflow's on_kill budget (30 s) with room to spare


def _try_of(context: Any) -> int | None:
    return getattr(context["ti"], "try_number", None)


def cancelled_by_earlier_try(res: dict[str, Any], rearm_before: float | None, try_number: int | None) -> bool:
    """A reservation CANCELLED without a job by the kill of an earlier try, seen by a try that a
    user's clear started (only such a try sets ``rearm_before``): that try re-arms it.

    The cancel's reason names the try that asked for it (``cancel --reason``, runtime capability
    ``reserve-cancel-reason``): an earlier try's mark proves it; no mark (a person on the host, the
    sweep of a task that had ended) proves the opposite. A runtime without cancel reasons records no
    origin: there the time tells, and a cancel up to ``rearm_before`` is taken for the kill.
    """
    if rearm_before is None or res.get("reservation_status") != "CANCELLED" or res.get("job_id"):
        return False
    if "cancel_reason" in res:
        asked = stop_requested_by_try({"cancel_reason": res["cancel_reason"]})
        return asked is not None and try_number is not None and asked < try_number
    cancelled_at = res.get("updated_at")
    return isinstance(cancelled_at, (int, float)) and cancelled_at <= rearm_before


def _ended_without_job(res: dict[str, Any]) -> AirflowException:
    return AirflowException(
        f"reservation {res['reservation_id']} ended {res['reservation_status']} without a job"
        + (f": {res['last_error']}" if res.get("last_error") else "")
    )
