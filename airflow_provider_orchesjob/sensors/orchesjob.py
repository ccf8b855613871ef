"""Sensors that wait for a job, a reservation or a flow run on a host (poke, reschedule or deferrable)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..compat import AirflowException, BaseSensorOperator
from ..exceptions import OrchesJobNotFound
from ..operators.base import EdgeConnectionMixin
from ..triggers.orchesjob import OrchesJobFlowTrigger, OrchesJobReservationTrigger, OrchesJobTrigger


class _OrchesJobSensorBase(EdgeConnectionMixin, BaseSensorOperator):
    template_fields: Sequence[str] = ("remote_host", "orchesjob_home")

    def __init__(
        self,
        *,
        ssh_conn_id: str | None = "ssh_default",
        remote_host: str | None = None,
        orchesjob_home: str | None = None,
        transport: str | None = None,
        deferrable: bool = False,
        success_states: Sequence[str] = ("SUCCEEDED",),
        failure_states: Sequence[str] = ("FAILED", "LOST", "ABORTED", "CANCELLED", "NEVER_LAUNCHED"),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ssh_conn_id = ssh_conn_id
        self.remote_host = remote_host
        self.orchesjob_home = orchesjob_home
        self.transport = transport
        self.deferrable = deferrable
        self.success_states = list(success_states)
        self.failure_states = list(failure_states)

    def trigger_kwargs(self) -> dict[str, Any]:
        # A sensor watches work it does not own: never abort it.
        return {**self.edge_kwargs(), "poll_interval": self.poke_interval, "abort_on_kill": False, "deadline": None}

    def decide(self, status: str, obj: dict, what: str) -> bool:
        if status in self.success_states:
            return True
        if status in self.failure_states:
            raise AirflowException(f"{what} reached {status}: {obj.get('error') or obj.get('exit_code')}")
        return False

    def execute(self, context: Any) -> Any:
        if self.deferrable:
            self.defer(trigger=self.make_trigger(), method_name="execute_complete", timeout=self.timeout_delta())
        return super().execute(context)

    def timeout_delta(self) -> Any:
        from datetime import timedelta

        return timedelta(seconds=self.timeout) if self.timeout else None

    def make_trigger(self) -> Any:
        raise NotImplementedError

    def complete(self, event: dict[str, Any], key: str, what: str) -> Any:
        """Deferrable mode: judge the trigger's final object like poke() would."""
        if event.get("status") != "done":
            raise AirflowException(f"waiting for {what} failed: {event.get('message')}")
        obj = event[key]
        if not self.decide(obj["status"], obj, what):
            raise AirflowException(f"{what} ended {obj['status']}, not one of {self.success_states}")
        return obj


class OrchesJobSensor(_OrchesJobSensorBase):
    """Wait until a job (by run key or job id) reaches a terminal state; XCom = the job JSON."""

    template_fields: Sequence[str] = (*_OrchesJobSensorBase.template_fields, "run_key", "job_id")

    def __init__(self, *, run_key: str | None = None, job_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if (run_key is None) == (job_id is None):
            raise ValueError("give exactly one of run_key or job_id")
        self.run_key = run_key
        self.job_id = job_id

    def poke(self, context: Any) -> bool:
        try:
            job = self.hook.job_status(self.run_key, self.job_id)
        except OrchesJobNotFound:
            self.log.info("no job yet for %s", self.run_key or self.job_id)
            return False
        self.log.info("job %s (attempt %s): %s", job["job_id"], job["attempt_no"], job["status"])
        done = self.decide(job["status"], job, f"job {job['job_id']}")
        if done:
            context["ti"].xcom_push(key="return_value", value=job)
        return done

    def make_trigger(self) -> Any:
        return OrchesJobTrigger(run_key=self.run_key, job_id=self.job_id, stream_logs=False, **self.trigger_kwargs())

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        return self.complete(event, "job", f"job {self.run_key or self.job_id}")


class OrchesJobReservationSensor(_OrchesJobSensorBase):
    """Wait until a reservation's job finishes (or the reservation expires/is cancelled)."""

    template_fields: Sequence[str] = (*_OrchesJobSensorBase.template_fields, "run_key")

    def __init__(self, *, run_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_key = run_key

    def poke(self, context: Any) -> bool:
        out = self.hook.reservation_status(self.run_key, include_job=True)
        res = out["reservation"]
        status = res["reservation_status"]
        if status in ("EXPIRED", "CANCELLED", "DISPATCH_FAILED"):
            raise AirflowException(f"reservation {self.run_key} ended {status}: {res.get('last_error')}")
        job = out.get("job")
        if status != "DISPATCHED" or not job:
            self.log.info("reservation %s: %s", self.run_key, status)
            return False
        return self.decide(job["status"], job, f"job {job['job_id']} of reservation {self.run_key}")

    def make_trigger(self) -> Any:
        return OrchesJobReservationTrigger(reservation_run_key=self.run_key, run_key=self.run_key, stream_logs=False,
                                           **self.trigger_kwargs())  # fmt: skip

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if event.get("status") == "reservation_ended":
            res = event["reservation"]
            raise AirflowException(f"reservation {self.run_key} ended {res['reservation_status']}")
        return self.complete(event, "job", f"the job of reservation {self.run_key}")


class OrchesJobFlowSensor(_OrchesJobSensorBase):
    """Wait until a flow run on the host is SUCCEEDED (fails on FAILED/CANCELLED)."""

    template_fields: Sequence[str] = (*_OrchesJobSensorBase.template_fields, "flow_run_key")

    def __init__(self, *, flow_run_key: str, **kwargs: Any) -> None:
        kwargs.setdefault("failure_states", ("FAILED", "CANCELLED"))
        super().__init__(**kwargs)
        self.flow_run_key = flow_run_key

    def poke(self, context: Any) -> bool:
        try:
            flow = self.hook.flow_status(self.flow_run_key)
        except OrchesJobNotFound:
            return False
        return self.decide(flow["status"], flow, f"flow run {self.flow_run_key}")

    def make_trigger(self) -> Any:
        return OrchesJobFlowTrigger(flow_run_key=self.flow_run_key, **self.trigger_kwargs())

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        return self.complete(event, "flow", f"flow run {self.flow_run_key}")
