"""How the reserver and the flow runner talk to the job layer.

In-process by default: ``edge_runtime.jobs.Jobs`` directly, no fork/exec per
call, and completion can be awaited on the supervisors' pidfds. A subprocess
only when ``--orchesjob-bin`` / ``ORCHESJOB_BIN`` names another executable (for
example the public ``orchesjob`` 1.1.0), using the CLI that release has:
``start --run-key K [--strict] [--start-timeout N] -- CMD``, ``status --run-key K``,
``abort --run-key K --reason R [--grace-seconds N]``.

Both clients return the job JSON object as a dict and raise ``errors.*``:
``NotFound`` for an unknown run key, ``OrchesError`` for anything else.
"""

# The reserver has its own job-id-addressed client (edge_runtime.reserver_client);
# this one is addressed by run key. The two can be merged once both settle.

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from .errors import InvalidState, NotFound, OrchesError

TERMINAL = ("SUCCEEDED", "FAILED", "LOST", "CANCELLED", "ABORTED")


class InProcessClient:
    """The job layer of this package, called directly."""

    in_process = True

    def __init__(self) -> None:
        self._jobs = None

    @property
    def jobs(self):  # noqa: ANN201 - lazy import keeps CLI start-up cheap
        if self._jobs is None:
            from .jobs import open_jobs

            self._jobs = open_jobs()
        return self._jobs

    def start(
        self,
        command: list[str],
        run_key: str,
        *,
        strict: bool = True,
        start_timeout: float | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        full_env = None
        if env:
            # The job layer stores extra variables; the command inherits the rest.
            full_env = dict(env)
        return self.jobs.start(
            list(command),
            run_key,
            reuse_policy="never" if strict else "always",
            start_timeout=10.0 if start_timeout is None else start_timeout,
            cwd=cwd,
            env=full_env,
            timeout=None,
        )

    def status(self, run_key: str) -> dict[str, Any]:
        return self.jobs.status(run_key=run_key)

    def abort(self, run_key: str, reason: str, grace: float | None = None) -> dict[str, Any]:
        return self.jobs.stop(run_key=run_key, status="ABORTED", reason=reason, grace=5.0 if grace is None else grace)

    def waitables(self, job_ids: list[str]) -> list[tuple[int, int, str]] | None:
        """Identities (pid, start, boot) of the live supervisors of ``job_ids``.

        The flow engine blocks on these (pidfds) so it wakes the moment a step
        finishes instead of sleeping a poll interval. None means some job has
        already finished (or is unknown): there is nothing to wait for.
        """
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        rows = self.jobs.store.all(
            f"SELECT status, worker_pid, worker_start, boot_id FROM jobs WHERE job_id IN ({marks})", job_ids
        )
        if len(rows) < len(set(job_ids)) or any(r["status"] not in ("STARTING", "RUNNING") for r in rows):
            return None
        return [(r["worker_pid"], r["worker_start"], r["boot_id"]) for r in rows if r["worker_pid"] is not None]

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None


class SubprocessClient:
    """A foreign ``orchesjob`` executable, driven through its CLI."""

    in_process = False

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def _call(self, verb: str, args: list[str], *, cwd: str | None = None, env: dict | None = None) -> dict[str, Any]:
        run_env = None
        if env:
            run_env = dict(os.environ)
            run_env.update(env)
        try:
            p = subprocess.run(
                [self.binary, verb, *args],
                capture_output=True,
                text=True,
                cwd=cwd,
                env=run_env,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise OrchesError(f"orchesjob {verb} failed: cannot run {self.binary}: {exc}") from None
        if p.returncode != 0:
            message = f"orchesjob {verb} failed: rc={p.returncode} stderr={p.stderr.strip()[-500:]}"
            if p.returncode == 3:
                raise NotFound(message)
            if p.returncode == 4:
                raise InvalidState(message)
            raise OrchesError(message)
        try:
            data = json.loads(p.stdout)
        except ValueError as exc:
            raise OrchesError(f"orchesjob {verb} returned invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise OrchesError(f"orchesjob {verb} returned non-object JSON")
        return data

    def start(
        self,
        command: list[str],
        run_key: str,
        *,
        strict: bool = True,
        start_timeout: float | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        args = ["--run-key", run_key]
        if strict:
            args.append("--strict")
        if start_timeout is not None:
            args += ["--start-timeout", f"{start_timeout:g}"]
        # The public release has no --cwd/--env: its command inherits ours.
        return self._call("start", [*args, "--", *command], cwd=cwd, env=env)

    def status(self, run_key: str) -> dict[str, Any]:
        return self._call("status", ["--run-key", run_key])

    def abort(self, run_key: str, reason: str, grace: float | None = None) -> dict[str, Any]:
        args = ["--run-key", run_key, "--reason", reason]
        if grace is not None:
            args += ["--grace-seconds", f"{grace:g}"]
        return self._call("abort", args)

    def waitables(self, job_ids: list[str]) -> list[tuple[int, int, str]] | None:
        return []

    def close(self) -> None:
        pass


def _own_orchesjob() -> str | None:
    """Path of this package's ``orchesjob`` console script, if installed beside us."""
    for base in (os.path.dirname(sys.executable), os.path.dirname(os.path.abspath(sys.argv[0] or ""))):
        candidate = os.path.join(base, "orchesjob")
        if os.path.exists(candidate):
            return os.path.realpath(candidate)
    return None


def make_client(binary: str | None) -> InProcessClient | SubprocessClient:
    """In-process unless ``binary`` resolves to an executable other than our own ``orchesjob``."""
    if not binary or binary == "orchesjob":
        return InProcessClient()
    resolved = shutil.which(binary) or binary
    if os.path.realpath(resolved) == _own_orchesjob():
        return InProcessClient()
    return SubprocessClient(binary)
