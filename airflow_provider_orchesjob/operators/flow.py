"""``OrchesJobFlowOperator``: run an orchesjob-flow DAG of steps on one host, detached."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..compat import AirflowException, AirflowTaskTimeout
from ..triggers.orchesjob import FLOW_ACTIVE, OrchesJobFlowTrigger, log_step_transitions
from .base import OrchesJobBaseOperator, tail


class OrchesJobFlowOperator(OrchesJobBaseOperator):
    """Start a flow run on the host under a retry-safe flow run key and wait for it.

    Give exactly one of:

    :param flow: the flow as a dict, or the name of a ``.yaml``/``.yml``/``.json`` file next to
        the DAG (read through Airflow's template loading), or YAML/JSON text. Sent over stdin.
    :param flow_path_on_host: a flow file that already lives on the host.
    :param flow_run_key: templated; default derived from the task instance (a retry resumes
        the same flow run: succeeded steps are not re-run).
    :param repair_on_retry: when the flow run already ended FAILED/CANCELLED (a retry, or a
        cleared task), ``repair`` it — re-run its failed, cancelled and skipped steps — instead
        of failing again at once.
    :return: the final flow JSON (XCom).
    """

    # Not flow_path_on_host: template_ext would make Airflow load that host path on the worker.
    template_fields: Sequence[str] = (*OrchesJobBaseOperator.template_fields, "flow", "flow_run_key")
    template_ext: Sequence[str] = (".yaml", ".yml", ".json")
    template_fields_renderers = {"flow": "yaml"}

    def __init__(
        self,
        *,
        flow: Mapping[str, Any] | str | None = None,
        flow_path_on_host: str | None = None,
        flow_run_key: str | None = None,
        repair_on_retry: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.repair_on_retry = repair_on_retry
        if (flow is None) == (flow_path_on_host is None):
            raise ValueError("give exactly one of flow or flow_path_on_host")
        self.flow = flow
        if isinstance(flow, Mapping):
            self.template_fields_renderers = {"flow": "json"}  # a dict is shown as data, YAML text as YAML
        self.flow_path_on_host = flow_path_on_host
        self.flow_run_key = flow_run_key

    def execute(self, context: Any) -> Any:
        self.remember_task_instance(context)
        run_key = self.task_run_key(context, self.flow_run_key)
        self.flow_run_key = run_key
        labels = self.work_labels(context)
        if self.flow_path_on_host:
            started = self.hook.start_flow_file(run_key, self.flow_path_on_host, labels=labels)
        else:
            definition = self.flow if isinstance(self.flow, str) else json.dumps(self.flow)
            started = self.hook.start_flow(run_key, definition, labels=labels)
        self.log.info("flow %s run %s: %s (%d steps)", started.get("flow_id"), run_key, started.get("status"),
                      len(started.get("steps", [])))  # fmt: skip
        self.log_attached(run_key, flow_id=started.get("flow_id"))
        if started.get("status") in ("FAILED", "CANCELLED") and self.repair_on_retry:
            # A retry (or a cleared task) of a flow that already ended badly: re-run its
            # failed, cancelled and skipped steps; succeeded steps are kept, never re-run.
            started = self.hook.repair_flow(run_key)
            self.log.info("repairing flow run %s: %s", run_key, started.get("status"))
        if started.get("status") in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return self.finish(started)
        if self.deferrable:
            self.defer_to(context, OrchesJobFlowTrigger(flow_run_key=run_key, **self.trigger_kwargs(context)))
        return self._poll_in_worker(run_key)

    def _poll_in_worker(self, run_key: str) -> Any:
        """Non-deferrable mode: poll the flow run from the worker, logging step transitions like the trigger."""
        steps: dict[str, str] = {}
        try:
            while True:
                flow = self.hook.flow_status(run_key)
                log_step_transitions(self.log, steps, flow)
                if flow["status"] not in FLOW_ACTIVE:
                    return self.finish(flow)
                time.sleep(self.poll_interval)
        except AirflowTaskTimeout as exc:
            try:
                out = self.hook.cancel_flow(run_key, grace=self.kill_grace)
                message = f"{exc or 'execution_timeout'}: flow run {run_key} cancelled ({out.get('status')})"
            except Exception as stop_exc:  # noqa: BLE001 - reported, never hidden
                message = f"{exc or 'execution_timeout'}: flow run {run_key} could NOT be cancelled ({stop_exc})"
            raise AirflowTaskTimeout(message) from exc

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        flow = event.get("flow") or {}
        self.log_attached(event.get("flow_run_key") or flow.get("run_key"), flow_id=flow.get("flow_id"))
        self.raise_for_event(event)
        return self.finish(event["flow"])

    def finish(self, flow: dict[str, Any]) -> Any:
        if flow["status"] == "SUCCEEDED":
            return flow
        failed = [s for s in flow.get("steps", []) if s["status"] in ("FAILED", "CANCELLED")]
        lines = [f"flow {flow.get('flow_id')} run {flow.get('run_key')} ended {flow['status']}"]
        for step in failed:
            lines.append(
                f"- step {step['id']} {step['status']} (attempt {step.get('attempt_no')}): {step.get('error')}"
            )
            try:
                err = self.hook.stderr_tail(run_key=step["run_key"]).decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - the step may never have started
                err = ""
            if err.strip():
                lines.append("  " + tail(err).replace("\n", "\n  "))
        raise AirflowException("\n".join(lines))

    def on_kill(self) -> None:
        if self.abort_on_kill and self.flow_run_key and self.killed_by_user():
            try:
                self.hook.cancel_flow(self.flow_run_key, grace=self.kill_grace)
            except Exception as exc:  # noqa: BLE001
                self.log.warning("could not cancel flow %s: %s", self.flow_run_key, exc)
