"""How the reserver and the flow runner talk to the job layer.

One interface (``JobClient``), two implementations, one factory:

* ``InProcessJobClient`` calls ``edge_runtime.jobs.Jobs`` directly — the
  default: no interpreter start-up per call, typed errors, sub-second
  timestamps, and completion can be awaited on the supervisors' pidfds.
* ``SubprocessJobClient`` runs a foreign ``orchesjob`` executable (for example
  the public 1.1.0), one process per call, with the CLI every release has::

      BIN start --run-key K <opts> -- CMD
      BIN status --run-key K | --job-id ID
      BIN result --job-id ID
      BIN cancel --job-id ID [--reason R]
      BIN abort --run-key K | --job-id ID [--reason R] [--grace-seconds N]

* ``open_job_client(bin_)`` picks in-process when ``bin_`` (``--orchesjob-bin``,
  else ``$ORCHESJOB_BIN``) is unset or resolves to this package's own
  ``orchesjob``, and the subprocess client otherwise.

Jobs are addressed by run key (the flow runner) or job id (the reserver, whose
reservation links one job). Every method returns the job JSON that
``orchesjob`` prints, as plain dicts, and raises the ``edge_runtime.errors``
classes (``NotFound``, ``InvalidState``, ... ``OrchesError``) whichever
implementation runs.
"""

from __future__ import annotations

import json
import os

from .errors import InvalidState, LockError, NotFound, OrchesError, UsageError

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any

# Exit codes of ``orchesjob`` and the error each one means.
_ERROR_BY_EXIT_CODE: dict[int, type[OrchesError]] = {2: UsageError, 3: NotFound, 4: InvalidState, 5: LockError}
# A foreign ``orchesjob`` call that hangs must not stall the dispatcher or a flow forever.
SUBPROCESS_TIMEOUT_S = 600.0
OWN_ENTRY_POINT = b"edge_runtime.cli.orchesjob"

_START_PARSER = None


def start_options(*, strict: bool = False, start_timeout: float | None = None) -> list[str]:
    """``orchesjob start`` options for a strict start and/or a start timeout."""
    options = ["--strict"] if strict else []
    if start_timeout is not None:
        options += ["--start-timeout", f"{start_timeout:g}"]
    return options


def parse_start_options(options: Sequence[str]) -> dict[str, Any]:
    """``Jobs.start`` keyword arguments from ``orchesjob start`` options.

    Uses the very option definitions of the ``orchesjob`` CLI, so callers accept
    exactly what ``orchesjob start`` accepts. ``--sync`` is refused: a
    dispatcher that waited for each job to finish would make every other
    reservation late. Raises ``UsageError`` for anything unknown.
    """
    global _START_PARSER
    from .cli.orchesjob import add_start_options, start_kwargs

    if _START_PARSER is None:
        from .cli.common import Parser

        _START_PARSER = Parser(prog="orchesjob start option", add_help=False)
        add_start_options(_START_PARSER)
    args, extra = _START_PARSER.parse_known_args(list(options))
    if extra:
        raise UsageError(f"unknown orchesjob start option(s): {' '.join(extra)}", options=list(options))
    if args.sync:
        raise UsageError("--sync is not allowed for reserved jobs: the dispatcher never waits for a job to finish")
    if args.env_file is not None:
        raise UsageError(
            "--env-file is not a start option of a reservation (it would be read at dispatch); "
            "give it to `orchesjob-reserver reserve --env-file` instead"
        )
    return start_kwargs(args)


def split_env_options(options: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the options without ``--env``, the variables those ``--env`` gave).

    Reservations keep environment values apart from their start options, so
    that options can be printed and logged: values are never shown, only keys.
    """
    from .cli.common import parse_env_pairs

    rest: list[str] = []
    pairs: list[str] = []
    items = iter(options)
    for option in items:
        if option == "--env":
            value = next(items, None)
            if value is None:
                raise UsageError("--env expects KEY=VALUE")
            pairs.append(value)
        elif option.startswith("--env="):
            pairs.append(option[len("--env=") :])
        else:
            rest.append(option)
    return rest, parse_env_pairs(pairs) or {}


def _selector(run_key: str | None, job_id: str | None) -> list[str]:
    if (run_key is None) == (job_id is None):
        raise UsageError("select a job by exactly one of run_key or job_id")
    return ["--job-id", job_id] if job_id is not None else ["--run-key", run_key]  # type: ignore[list-item]


class JobClient:
    """The operations the reserver and the flow runner need from the job runner."""

    in_process = True
    bin = "orchesjob"

    def start_argv(self, run_key: str, command: Sequence[str], options: Sequence[str]) -> list[str]:
        """The ``orchesjob start`` command line this start stands for (for logs)."""
        return [self.bin, "start", "--run-key", run_key, *options, "--", *command]

    def check_options(self, options: Sequence[str]) -> None:
        """Raise ``UsageError`` if ``options`` cannot be passed to ``start``."""

    def start(
        self,
        command: Sequence[str],
        run_key: str,
        options: Sequence[str] = (),
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Start (or get back) the job of ``run_key``; the returned dict has ``job_id``.

        ``options`` are ``orchesjob start`` options; ``cwd``/``env`` are where and
        with which extra variables the command runs. ``request_id`` (in-process
        only; a foreign binary may not know ``--request-id``) makes the start
        findable exactly by :meth:`find_started_since` after a crash.
        """
        raise NotImplementedError

    def start_many(self, starts: Iterable[dict[str, Any]]) -> list[dict[str, Any] | OrchesError]:
        """Several :meth:`start` calls (each a dict of its arguments); each one's job or its error, in order.

        ``starts`` is consumed lazily, one start at a time. The in-process client
        overlaps the launches (``jobs.overlap_starts``); a foreign binary is called once
        per start, one after the other.
        """
        out: list[dict[str, Any] | OrchesError] = []
        for kwargs in starts:
            try:
                out.append(self.start(**kwargs))
            except OrchesError as exc:
                out.append(exc)
        return out

    def status(self, run_key: str | None = None, job_id: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def result(self, job_id: str) -> dict[str, Any]:
        """The finished job (any terminal status); ``InvalidState`` while it runs."""
        raise NotImplementedError

    def cancel(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def abort(
        self,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        reason: str | None = None,
        grace: float | None = None,
    ) -> dict[str, Any]:
        raise NotImplementedError

    def find_started_since(self, run_key: str, since: float, request_id: str | None = None) -> dict[str, Any] | None:
        """The first job of ``run_key`` created at or after ``since``, if any.

        This is how a dispatcher that lost track of a start (crash, timeout,
        error after the claim) finds the job instead of starting a second one.
        """
        raise NotImplementedError

    def waitables(self, job_ids: Sequence[str]) -> list[tuple[int, int, str]] | None:
        """Identities (pid, start, boot) of processes whose exit means a job finished.

        ``[]`` when there is nothing to wait on (the caller polls); None when a
        job has already finished or is unknown (nothing to wait for).
        """
        return []

    def proxy(self, verb: str, job_id: str, reason: str | None = None) -> tuple[int, bytes, bytes]:
        """(exit code, stdout, stderr) as ``orchesjob <verb> --job-id ID [--reason R]`` gives them."""
        try:
            if verb == "result":
                job = self.result(job_id)
                code = 0 if job.get("status") == "SUCCEEDED" else 1
            elif verb == "status":
                job, code = self.status(job_id=job_id), 0
            elif verb == "cancel":
                job, code = self.cancel(job_id, reason), 0
            elif verb == "abort":
                job, code = self.abort(job_id=job_id, reason=reason), 0
            else:
                raise UsageError(f"unsupported orchesjob verb {verb!r}")
        except OrchesError as exc:
            return exc.exit_code, b"", (json.dumps(exc.to_json()) + "\n").encode("ascii")
        return code, (json.dumps(job, indent=2) + "\n").encode("ascii"), b""

    def close(self) -> None:
        pass


def _start_request(
    command: Sequence[str],
    run_key: str,
    options: Sequence[str] = (),
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """``Jobs.start`` arguments for a :meth:`JobClient.start` call."""
    kwargs = parse_start_options(options)
    if cwd is not None:
        kwargs["cwd"] = cwd
    if env:
        # The job layer stores the extra variables; the command inherits the rest.
        kwargs["env"] = {**(kwargs["env"] or {}), **env}
    return {"command": list(command), "run_key": run_key, "request_id": request_id, **kwargs}


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

    def start(
        self,
        command: Sequence[str],
        run_key: str,
        options: Sequence[str] = (),
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        return self.jobs.start(**_start_request(command, run_key, options, cwd, env, request_id))

    def start_many(self, starts: Iterable[dict[str, Any]]) -> list[dict[str, Any] | OrchesError]:
        import functools

        from .jobs import overlap_starts

        def begin(kwargs: dict[str, Any]) -> Callable[[], dict[str, Any]]:
            return self.jobs.begin_start(**_start_request(**kwargs))

        return overlap_starts(functools.partial(begin, kwargs) for kwargs in starts)

    def status(self, run_key: str | None = None, job_id: str | None = None) -> dict[str, Any]:
        _selector(run_key, job_id)
        return self.jobs.status(run_key=run_key, job_id=job_id)

    def result(self, job_id: str) -> dict[str, Any]:
        return self.jobs.result(job_id=job_id)

    def cancel(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.jobs.stop(job_id=job_id, status="CANCELLED", reason=reason)

    def abort(
        self,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        reason: str | None = None,
        grace: float | None = None,
    ) -> dict[str, Any]:
        _selector(run_key, job_id)
        return self.jobs.stop(run_key, job_id, status="ABORTED", reason=reason, grace=5.0 if grace is None else grace)

    def find_started_since(self, run_key: str, since: float, request_id: str | None = None) -> dict[str, Any] | None:
        if request_id is not None:
            # Exact: the job this very request created (or none), whatever the clocks did.
            return self.jobs.by_request(request_id)
        return self.jobs.first_started_since(run_key, since)

    def waitables(self, job_ids: Sequence[str]) -> list[tuple[int, int, str]] | None:
        return self.jobs.supervisors(job_ids)

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.close()
            self._jobs = None


class SubprocessJobClient(JobClient):
    """Runs a foreign ``orchesjob`` executable, one process per call."""

    in_process = False

    def __init__(self, bin_: str) -> None:
        self.bin = bin_

    def _run(self, args: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None) -> Any:
        # Imported here: only a foreign binary needs them (start-up time).
        import shlex
        import subprocess

        argv = [self.bin, *args]
        run_env = dict(os.environ, **env) if env else None
        try:
            # Own session: a SIGTERM/SIGINT aimed at the caller's process group
            # must not interrupt a start that is half done.
            return subprocess.run(
                argv,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=run_env,
                timeout=SUBPROCESS_TIMEOUT_S,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise OrchesError(
                f"orchesjob {args[0]} failed: timed out after {SUBPROCESS_TIMEOUT_S:g} s: {shlex.join(argv)}"
            ) from None
        except OSError as exc:
            raise OrchesError(
                f"orchesjob {args[0]} failed: cannot run {shlex.join(argv)}: {exc}", orchesjob_bin=self.bin
            ) from None

    def _json(
        self,
        args: Sequence[str],
        ok_codes: Sequence[int] = (0,),
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Any:
        verb = args[0]
        p = self._run(args, cwd=cwd, env=env)
        out = p.stdout.decode(errors="replace").strip()
        if p.returncode not in ok_codes:
            import shlex

            message = p.stderr.decode(errors="replace").strip()
            try:
                message = json.loads(message.splitlines()[-1])["error"]  # our orchesjob: one JSON line
            except (ValueError, IndexError, KeyError, TypeError):
                message = message[-2000:]
            cls = _ERROR_BY_EXIT_CODE.get(p.returncode, OrchesError)
            raise cls(
                f"orchesjob {verb} failed: rc={p.returncode} stderr={message}\n"
                f"command: {shlex.join([self.bin, *args])}",
                orchesjob_exit_code=p.returncode,
            )
        try:
            return json.loads(out)
        except ValueError:
            raise OrchesError(f"orchesjob {verb} returned non-JSON output: {out[:500]}") from None

    def _job(self, args: Sequence[str], ok_codes: Sequence[int] = (0,), **kw: Any) -> dict[str, Any]:
        job = self._json(args, ok_codes, **kw)
        if not isinstance(job, dict):
            raise OrchesError(f"orchesjob {args[0]} returned non-object JSON")
        return job

    def start(
        self,
        command: Sequence[str],
        run_key: str,
        options: Sequence[str] = (),
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        # Releases without --cwd/--env: the command inherits our cwd and environment.
        job = self._job(["start", "--run-key", run_key, *options, "--", *command], cwd=cwd, env=env)
        if not isinstance(job.get("job_id"), str) or not job["job_id"]:
            raise OrchesError("orchesjob start output does not contain job_id")
        return job

    def status(self, run_key: str | None = None, job_id: str | None = None) -> dict[str, Any]:
        return self._job(["status", *_selector(run_key, job_id)])

    def result(self, job_id: str) -> dict[str, Any]:
        # Exit 1 with a job object means "finished unsuccessfully", not an error.
        return self._job(["result", "--job-id", job_id], ok_codes=(0, 1))

    def cancel(self, job_id: str, reason: str | None = None) -> dict[str, Any]:
        return self._job(["cancel", "--job-id", job_id, *(["--reason", reason] if reason else [])])

    def abort(
        self,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        reason: str | None = None,
        grace: float | None = None,
    ) -> dict[str, Any]:
        args = ["abort", *_selector(run_key, job_id), *(["--reason", reason] if reason else [])]
        if grace is not None:
            args += ["--grace-seconds", f"{grace:g}"]
        return self._job(args)

    def find_started_since(self, run_key: str, since: float, request_id: str | None = None) -> dict[str, Any] | None:
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

    def proxy(self, verb: str, job_id: str, reason: str | None = None) -> tuple[int, bytes, bytes]:
        p = self._run([verb, "--job-id", job_id, *(["--reason", reason] if reason else [])])
        return p.returncode, p.stdout, p.stderr


def is_own_orchesjob(path: str) -> bool:
    """True if ``path`` is a console script of this package's ``orchesjob``."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return OWN_ENTRY_POINT in head


def resolve_bin(bin_: str | None) -> str | None:
    """The foreign executable to run as a subprocess, or None to call the job layer in-process."""
    if not bin_:
        return None
    import shutil

    found = shutil.which(bin_)
    if found is None:
        # The bare default name means "orchesjob", which we are; anything else
        # is kept so that calls fail with a clear "cannot run" error.
        return None if bin_ == "orchesjob" else bin_
    return None if is_own_orchesjob(found) else bin_


def open_job_client(bin_: str | None = None, home: str | None = None) -> JobClient:
    """The client for ``bin_`` (``--orchesjob-bin``, else ``$ORCHESJOB_BIN``; unset = in-process)."""
    foreign = resolve_bin(bin_ or os.environ.get("ORCHESJOB_BIN"))
    if foreign is None:
        return InProcessJobClient(home)
    return SubprocessJobClient(foreign)
