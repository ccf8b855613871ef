"""``OrchesJobSweepOperator``: stop the remote work whose task instance ended without it.

A deferred task that a user marks failed (or success, or skipped) before any
triggerer has started its trigger never gets an ``on_kill``: Airflow deletes the
trigger unseen, and the remote job would run on with nobody following it. The
same holds for a task whose try failed for good while its host was unreachable.
The sweep closes that window from the host's side: every job, reservation and
flow run the provider starts is labelled with its task instance (``utils/labels``);
the sweep lists the host's active jobs, pending reservations and active flow runs,
asks Airflow for the state of each one's task instance (and of its DAG run), and
stops the work of those that ended (``utils.lifecycle.abandoned``): jobs are
aborted, reservations and flow runs cancelled. It never guesses: an unknown or missing task
instance, another namespace's work, and fire-and-forget work are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..compat import AirflowException, dag_run_state_sync, task_instance_state_sync
from ..exceptions import OrchesJobError
from ..hooks.orchesjob import FLOW_LABELS
from ..utils.labels import NAMESPACE, labels_from_options, task_instance_of
from ..utils.lifecycle import abandoned, normalize_state, stop_reason
from .base import OrchesJobBaseOperator

SWEEP_REASON = "task instance {ti} is {state}: nobody follows this work any more; stopped by the orchesjob sweep"


def _ti_name(ref: tuple[str, str, str, int]) -> str:
    dag_id, task_id, run_id, map_index = ref
    return f"{dag_id}.{task_id}{f'[{map_index}]' if map_index >= 0 else ''} of {run_id}"


class OrchesJobSweepOperator(OrchesJobBaseOperator):
    """Stop the host's jobs, cancel its pending reservations and flow runs, whose task instance has ended.

    Schedule it every few minutes per host (see ``example_dags/example_orchesjob_sweep.py``).
    Only work started by this provider with labels (runtime capabilities ``job-labels``,
    ``flow-labels``) and followed by its task (a start or flow operator; a reservation
    with ``wait_for_completion``) is considered, in the connection's run key namespace.

    :param dry_run: report what would be stopped, stop nothing.
    :param kill_grace: seconds between TERM and KILL for each stopped job.
    :param fail_on_error: fail the task when some work could not be stopped (default True).
    :return: one entry per piece of work looked at: ``kind`` (job/reservation/flow), ``run_key``,
        ``id``, ``task_instance``, ``state`` and ``action`` (``stopped``, ``would stop``,
        ``left`` or ``error: ...``).
    """

    template_fields: Sequence[str] = OrchesJobBaseOperator.template_fields

    def __init__(self, *, dry_run: bool = False, fail_on_error: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("deferrable", False)
        super().__init__(**kwargs)
        self.dry_run = dry_run
        self.fail_on_error = fail_on_error

    def task_state(self, ref: tuple[str, str, str, int]) -> Any:
        """The state of the task instance ``ref`` now (None: it does not exist)."""
        return task_instance_state_sync(*ref)

    def run_state(self, dag_id: str, run_id: str) -> Any:
        """The state of the DAG run now (None: it does not exist)."""
        return dag_run_state_sync(dag_id, run_id)

    def execute(self, context: Any) -> list[dict[str, Any]]:
        namespace = self.hook.run_key_namespace()
        selector = {NAMESPACE: namespace} if namespace else None
        jobs = self.hook.running_jobs(selector)
        pending = self.hook.list_reservations("RESERVED")
        flows = self.hook.active_flows(selector) if FLOW_LABELS in self.hook.capabilities() else []
        report = [self._judge("job", job["run_key"], job["job_id"], job.get("labels") or {}, namespace)
                  for job in jobs]  # fmt: skip
        report += [
            self._judge("reservation", res["run_key"], res["reservation_id"],
                        labels_from_options(res.get("orchesjob_start_options") or []), namespace)
            for res in pending
        ]  # fmt: skip
        report += [self._judge("flow", run["run_key"], run["run_key"], run.get("labels") or {}, namespace)
                   for run in flows]  # fmt: skip
        report = [entry for entry in report if entry is not None]
        stopped = [e for e in report if e["action"] in ("stopped", "would stop")]
        errors = [e for e in report if e["action"].startswith("error")]
        self.log.info("sweep of %s: %d active job(s), %d pending reservation(s), %d active flow run(s) looked at; "
                      "%d %s, %d error(s)", self.hook.host_label(), len(jobs), len(pending), len(flows), len(stopped),
                      "would be stopped (dry run)" if self.dry_run else "stopped", len(errors))  # fmt: skip
        if errors and self.fail_on_error:
            raise AirflowException(f"the sweep could not stop {len(errors)} piece(s) of work: {errors}")
        return report

    def _judge(self, kind: str, run_key: str, work_id: str, labels: dict, namespace: str | None) -> dict | None:
        ref = task_instance_of(labels, namespace)
        if ref is None:
            return None  # not ours to judge: unlabelled, fire-and-forget or another namespace
        entry = {"kind": kind, "run_key": run_key, "id": work_id, "task_instance": _ti_name(ref)}
        try:
            state = self.task_state(ref)
        except Exception as exc:  # noqa: BLE001 - an unknown state proves nothing: leave the work
            return {**entry, "state": "unknown", "action": f"left (state unreadable: {exc})"}
        entry["state"] = normalize_state(state)
        run_state = None
        if not abandoned(state):  # unfinished (or cleared, or gone): does its DAG run still go on?
            try:
                run_state = self.run_state(ref[0], ref[2])
            except Exception as exc:  # noqa: BLE001 - e.g. the run was deleted: proves nothing
                return {**entry, "action": f"left (DAG run state unreadable: {exc})"}
        if not abandoned(state, run_state):
            return {**entry, "action": "left"}
        if run_state is not None:
            entry["state"] += f", in a {normalize_state(run_state)} DAG run"
        if self.dry_run:
            self.log.warning("would stop %s %s (run key %s): task instance %s is %s", kind, work_id, run_key,
                             entry["task_instance"], entry["state"])  # fmt: skip
            return {**entry, "action": "would stop"}
        reason = stop_reason(SWEEP_REASON.format(ti=entry["task_instance"], state=entry["state"]),
                             int(labels.get("airflow.try_number", "0") or 0) or None)  # fmt: skip
        try:
            if kind == "job":
                out = self.hook.abort_job(job_id=work_id, reason=reason, grace=self.kill_grace)
                late = out.get("already_finished") or out.get("stop_too_late")
                outcome = f"{out.get('status')}{' (it had finished on its own)' if late else ''}"
            elif kind == "reservation":
                out = self.hook.cancel_reservation(reservation_id=work_id, reason=reason)
                outcome = (out.get("reservation") or out).get("reservation_status") or out.get("status")
            else:  # a flow run: cancelled as a whole (its running steps' jobs are aborted)
                outcome = self.hook.cancel_flow(work_id, grace=self.kill_grace).get("status")
        except OrchesJobError as exc:
            self.log.error("could not stop %s %s (run key %s): %s", kind, work_id, run_key, exc)
            return {**entry, "action": f"error: {exc}"}
        self.log.warning("STOPPED %s %s (run key %s): task instance %s is %s and nothing followed the work; "
                         "now %s", kind, work_id, run_key, entry["task_instance"], entry["state"],
                         outcome)  # fmt: skip
        return {**entry, "action": "stopped", "now": outcome}
