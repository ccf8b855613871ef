"""How the reserver talks to the job runner (in-process or a foreign ``orchesjob``).

Two implementations behind one small interface (``JobClient``):

* ``InProcessJobClient`` calls ``edge_runtime.jobs.Jobs`` directly — the
  default: no interpreter start-up per dispatch, typed errors, and the job
  store is read with real (sub-second) timestamps.
* ``SubprocessJobClient`` runs a foreign ``orchesjob`` executable exactly as
  the reserver spec shows (``BIN start --run-key K <opts> -- CMD``,
  ``BIN status|result|cancel|abort --job-id ID``), so any release of
  orchesjob — e.g. the public 1.1.0 — can be used through ``ORCHESJOB_BIN``.

Every method returns plain dicts (the job JSON that ``orchesjob`` prints) and
raises the ``edge_runtime.errors`` classes, whichever implementation runs.
Everything is addressed by job id, because a reservation links one job.

(``edge_runtime.jobclient`` is the flow runner's client, addressed by run key;
the two can be merged once both settle.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .errors import InvalidState, LockError, NotFound, OrchesError, UsageError

# Exit codes of ``orchesjob`` and the error each one means.
_ERROR_BY_EXIT_CODE: dict[int, type[OrchesError]] = {2: UsageError, 3: NotFound, 4: InvalidState, 5: LockError}
# A foreign ``orchesjob start`` that hangs must not stall the dispatcher forever.
SUBPROCESS_TIMEOUT_S = 600.0
OWN_ENTRY_POINT = b"edge_runtime.cli.orchesjob"


def parse_start_options(options: Sequence[str]) -> dict[str, Any]:
    """``Jobs.start`` keyword arguments from ``orchesjob start`` options.

    Uses the very option definitions of the ``orchesjob`` CLI, so the reserver
    accepts exactly what ``orchesjob start`` accepts. ``--sync`` is refused: a
    dispatcher that waited for each job to finish would make every other
    reservation late. Raises ``UsageError`` for anything unknown.
    """
    from .cli.common import Parser
    from .cli.orchesjob import add_start_options, start_kwargs

    parser = Parser(prog="orchesjob start option", add_help=False)
    add_start_options(parser)
    args, extra = parser.parse_known_args(list(options))
    if extra:
        raise UsageError(f"unknown orchesjob start option(s): {' '.join(extra)}", options=list(options))
    if args.sync:
        raise UsageError("--sync is not allowed for reserved jobs: the dispatcher never waits for a job to finish")
    return start_kwargs(args)


def is_own_orchesjob(path: str) -> bool:
    """True if ``path`` is a console script of this package's ``orchesjob``."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return OWN_ENTRY_POINT in head


def resolve_bin(bin_: str | None) -> str | None:
    """The executable to run as a subprocess, or None to dispatch in-process."""
    if not bin_:
        return None
    import shutil

    found = shutil.which(bin_)
    if found is None:
        # The bare default name means "orchesjob", which we are; anything else
        # is kept so that dispatch fails with a clear "cannot run" error.
        return None if bin_ == "orchesjob" else bin_
    return None if is_own_orchesjob(found) else bin_


def default_bin() -> str | None:
    return os.environ.get("ORCHESJOB_BIN") or None


class JobClient:
    """The operations the reserver needs from the job runner."""

    in_process = True
    bin = "orchesjob"

    def start_argv(self, run_key: str, command: Sequence[str], options: Sequence[str]) -> list[str]:
        """The ``orchesjob start`` command line this dispatch stands for (for logs)."""
        return [self.bin, "start", "--run-key", run_key, *options, "--", *command]

    def check_options(self, options: Sequence[str]) -> None:
        """Raise ``UsageError`` if ``options`` cannot be passed to ``start``."""

    def start(self, command: Sequence[str], run_key: str, options: Sequence[str] = ()) -> dict[str, Any]:
        """Start (or get back) the job of ``run_key``; the returned dict has ``job_id``."""
        raise NotImplementedError

    def status(self, job_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def result(self, job_id: str) -> dict[str, Any]:
        """The finished job (any terminal status); ``InvalidState`` while it runs."""
        raise NotImplementedError

    def cancel(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def abort(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def find_started_since(self, run_key: str, since: float) -> dict[str, Any] | None:
        """The first job of ``run_key`` created at or after ``since``, if any.

        This is how a dispatcher that lost track of a start (crash, timeout,
        error after the claim) finds the job instead of starting a second one.
        """
        raise NotImplementedError

    def proxy(self, verb: str, job_id: str) -> tuple[int, bytes, bytes]:
        """(exit code, stdout, stderr) as ``orchesjob <verb> --job-id ID`` gives them."""
        try:
            if verb == "result":
                job = self.result(job_id)
                code = 0 if job.get("status") == "SUCCEEDED" else 1
            elif verb == "status":
                job, code = self.status(job_id), 0
            elif verb == "cancel":
                job, code = self.cancel(job_id), 0
            elif verb == "abort":
                job, code = self.abort(job_id), 0
            else:
                raise UsageError(f"unsupported orchesjob verb {verb!r}")
        except OrchesError as exc:
            return exc.exit_code, b"", (json.dumps(exc.to_json()) + "\n").encode("ascii")
        return code, (json.dumps(job, indent=2) + "\n").encode("ascii"), b""

    def close(self) -> None:
        pass


class InProcessJobClient(JobClient):
    """Calls ``edge_runtime.jobs.Jobs`` in this process (opened on first use)."""

    def __init__(self, home: str | None = None) -> None:
        self.home = home
        self._jobs = None

    @property
    def jobs(self):  # -> Jobs; imported lazily to keep CLI start-up short
        if self._jobs is None:
            from .jobs import open_jobs

            self._jobs = open_jobs(self.home)
        return self._jobs

    def check_options(self, options: Sequence[str]) -> None:
        parse_start_options(options)

    def start(self, command: Sequence[str], run_key: str, options: Sequence[str] = ()) -> dict[str, Any]:
        kwargs = parse_start_options(options)
        return self.jobs.start(list(command), run_key, **kwargs)

    def status(self, job_id: str) -> dict[str, Any]:
        return self.jobs.status(job_id=job_id)

    def result(self, job_id: str) -> dict[str, Any]:
        return self.jobs.result(job_id=job_id)

    def cancel(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.jobs.stop(job_id=job_id, status="CANCELLED", reason=reason)

    def abort(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.jobs.stop(job_id=job_id, status="ABORTED", reason=reason)

    def find_started_since(self, run_key: str, since: float) -> dict[str, Any] | None:
        # The job row is committed before its supervisor exists, with a
        # started_at taken after the caller recorded ``since``.
        row = self.jobs.store.one(
            "SELECT job_id FROM jobs WHERE run_key = ? AND started_at >= ? ORDER BY attempt_no LIMIT 1",
            (run_key, since),
        )
        return None if row is None else self.jobs.status(job_id=row["job_id"])

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None


class SubprocessJobClient(JobClient):
    """Runs a foreign ``orchesjob`` executable, one process per call."""

    in_process = False

    def __init__(self, bin_: str) -> None:
        self.bin = bin_

    def _run(self, args: Sequence[str]) -> Any:
        # Imported here: only a foreign binary needs them (start-up time).
        import shlex
        import subprocess

        argv = [self.bin, *args]
        try:
            # Own session: a SIGTERM/SIGINT aimed at the dispatcher's process
            # group must not interrupt a start that is half done.
            return subprocess.run(
                argv,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=SUBPROCESS_TIMEOUT_S,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise OrchesError(f"orchesjob timed out after {SUBPROCESS_TIMEOUT_S:g} s: {shlex.join(argv)}") from None
        except OSError as exc:
            raise OrchesError(f"cannot run orchesjob: {shlex.join(argv)}: {exc}", orchesjob_bin=self.bin) from None

    def _json(self, args: Sequence[str], ok_codes: Sequence[int] = (0,)) -> Any:
        p = self._run(args)
        out = p.stdout.decode(errors="replace").strip()
        if p.returncode not in ok_codes:
            message = p.stderr.decode(errors="replace").strip()
            try:
                message = json.loads(message.splitlines()[-1])["error"]  # our orchesjob: one JSON line
            except (ValueError, IndexError, KeyError, TypeError):
                pass
            cls = _ERROR_BY_EXIT_CODE.get(p.returncode, OrchesError)
            import shlex

            raise cls(
                f"orchesjob command failed: {shlex.join([self.bin, *args])}\n"
                f"exit_code={p.returncode}\nstderr={message}",
                orchesjob_exit_code=p.returncode,
            )
        try:
            return json.loads(out)
        except ValueError:
            raise OrchesError(f"orchesjob returned non-JSON output: {out[:500]}") from None

    def start(self, command: Sequence[str], run_key: str, options: Sequence[str] = ()) -> dict[str, Any]:
        job = self._json(["start", "--run-key", run_key, *options, "--", *command])
        if not isinstance(job, dict) or not isinstance(job.get("job_id"), str) or not job["job_id"]:
            raise OrchesError("orchesjob start output does not contain job_id")
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        return self._json(["status", "--job-id", job_id])

    def result(self, job_id: str) -> dict[str, Any]:
        # Exit 1 with a job object means "finished unsuccessfully", not an error.
        return self._json(["result", "--job-id", job_id], ok_codes=(0, 1))

    def cancel(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self._json(["cancel", "--job-id", job_id, *(["--reason", reason] if reason else [])])

    def abort(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self._json(["abort", "--job-id", job_id, *(["--reason", reason] if reason else [])])

    def find_started_since(self, run_key: str, since: float) -> dict[str, Any] | None:
        try:
            jobs = self._json(["status", "--all", "--run-key", run_key])
        except NotFound:
            return None
        if isinstance(jobs, dict):
            jobs = [jobs]
        # Foreign releases report whole seconds: compare at that precision.
        floor = int(since // 1)
        found = [
            j
            for j in jobs
            if isinstance(j, dict) and isinstance(j.get("started_at"), (int, float)) and j["started_at"] >= floor
        ]
        found.sort(key=lambda j: (j.get("attempt_no") or 0, j["started_at"]))
        return found[0] if found else None

    def proxy(self, verb: str, job_id: str) -> tuple[int, bytes, bytes]:
        p = self._run([verb, "--job-id", job_id])
        return p.returncode, p.stdout, p.stderr


def open_job_client(bin_: str | None = None, home: str | None = None) -> JobClient:
    """The client for ``bin_`` (``--orchesjob-bin`` / ``ORCHESJOB_BIN``; None = in-process)."""
    foreign = resolve_bin(bin_)
    if foreign is None:
        return InProcessJobClient(home)
    return SubprocessJobClient(foreign)
