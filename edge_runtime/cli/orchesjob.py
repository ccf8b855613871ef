"""``orchesjob``: the idempotent one-shot job runner (thin CLI over edge_runtime.jobs)."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import UsageError
from ..schema import ACTIVE_JOB_STATUSES
from ..timefmt import parse_duration, parse_seconds
from .common import (
    Deferred,
    Parser,
    add_clean_options,
    add_format_option,
    clean_window,
    emit,
    emit_clean,
    merge_env,
    parse_labels,
    read_json_input,
    run_cli,
    show,
)

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DESCRIPTION = """\
Idempotent one-shot job runner. Every command prints JSON on stdout (status, list
and stats print a table with --format table); errors are one JSON object on
stderr. Exit codes: 0 success, 1 general error (for `result`: the job finished
unsuccessfully), 2 invalid arguments, 3 job/run key not found, 4 invalid or
inconsistent state (for `result`: not finished yet), 5 lock error. Stopping a
job that has already ended succeeds (exit 0, "already_ended": true).

State lives in $ORCHESJOB_HOME (orchesjob.db, logs/), shared with orchesjob-reserver
and orchesjob-flow; without it, /var/lib/orchesjob when this user may write there,
else ~/.local/share/orchesjob. `orchesjob info` prints the resolved paths.
ORCHESJOB_SYSTEMD_SCOPE=1 runs each started job in its own systemd scope
orchesjob-<job id>.scope (refused when no user manager is reachable); =auto only
where one is.

examples (a host owner's terminal):
  orchesjob list --status FAILED --since 24h --format table
  orchesjob status --running --format table
  orchesjob logs --run-key nightly-backup --follow
  orchesjob stats --hours 6 --format table
"""

START_EPILOG = """\
reuse policies (what start does when the run key already has a FINISHED attempt;
an active attempt -- STARTING, RUNNING, or being stopped: ABORTING/CANCELLING --
is always returned, never duplicated; after NEVER_LAUNCHED, whose command provably
never ran, every policy starts a new attempt):
  always       start a new attempt (default)
  failed-only  return a SUCCEEDED attempt; start a new attempt after FAILED,
               ABORTED or CANCELLED (what Airflow retries use). LOST (outcome
               unknown: the command may have completed) is returned as well,
               unless --retry-lost is given
  never        one execution per run key, ever (same as --strict); `unlock`
               grants a one-time exception
examples:
  orchesjob start --run-key nightly-backup -- /usr/local/bin/backup.sh
  orchesjob start --run-key import-2026-05-02 --reuse-policy failed-only \\
      --cwd /srv/app --env MODE=full --timeout 2h -- ./import.sh --date 2026-05-02
"""


def _exit_code_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--exit-code",
        action="store_true",
        help=f"{what} exit with the job's outcome instead of 0: its own exit code (a signal N: 128+N), "
        "124 if LOST (outcome unknown), 125 if ABORTED, CANCELLED or NEVER_LAUNCHED",
    )


def _selector(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--run-key", metavar="KEY", help="select the newest job of this run key")
    g.add_argument("--job-id", metavar="ID", help="select one job by id")


def add_start_options(p: argparse.ArgumentParser) -> None:
    """The options of ``start`` besides --run-key and the command.

    Shared with ``orchesjob-reserver``, which validates a reservation's
    ``--orchesjob-start-option`` values with exactly these definitions.
    """
    p.add_argument("--sync", action="store_true", help="block until the job finishes")
    p.add_argument("--strict", action="store_true", help="one execution per run key, ever (= --reuse-policy never)")
    p.add_argument(
        "--reuse-policy",
        choices=("always", "failed-only", "never"),
        help="what to do when the run key already finished (see below)",
    )
    p.add_argument(
        "--start-timeout", metavar="SECS", default="10", help="seconds async start waits for target_pid (default: 10)"
    )
    p.add_argument(
        "--retry-lost",
        action="store_true",
        help="with failed-only: start a new attempt after LOST too (accept that the lost one may have completed)",
    )
    p.add_argument("--cwd", metavar="DIR", help="working directory of the command")
    p.add_argument("--env", metavar="KEY=VALUE", action="append", help="extra environment variable (repeatable)")
    p.add_argument(
        "--env-file",
        metavar="PATH",
        help="extra environment variables from a file, or - for stdin: a JSON object of strings, or KEY=VALUE "
        "lines; keeps values off the command line (--env of the same key wins). Values are never printed",
    )
    p.add_argument(
        "--label",
        metavar="KEY=VALUE",
        action="append",
        help="a label naming who started the job, shown in its JSON and selectable with "
        "`status --running --label` (repeatable; not for secrets)",
    )
    p.add_argument(
        "--timeout",
        metavar="DURATION",
        help="host-side runtime limit (seconds or 30s/10m/2h/1d); when exceeded the supervisor "
        "TERMs the command's whole process tree, then KILLs it 5 s later, even if nobody is polling",
    )


def start_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``Jobs.start`` from parsed start options (not ``sync``)."""
    policy = args.reuse_policy or ("never" if args.strict else "always")
    if args.strict and policy != "never":
        raise UsageError("--strict conflicts with --reuse-policy " + policy)
    return {
        "reuse_policy": policy,
        "retry_lost": args.retry_lost,
        "start_timeout": parse_seconds(args.start_timeout, "--start-timeout"),
        "cwd": args.cwd,
        "env": merge_env(args.env, args.env_file),
        "labels": parse_labels(args.label),
        "timeout": parse_duration(args.timeout, "--timeout") if args.timeout else None,
    }


def build_parser() -> Parser:
    parser = Parser(prog="orchesjob", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"orchesjob {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser(
        "start",
        help="start a job, or return the attempt the run key already has",
        usage="orchesjob start --run-key KEY [options] -- COMMAND [ARGS...]",
        epilog=START_EPILOG,
    )
    p.add_argument("--run-key", metavar="KEY", required=True, help="idempotency key (required)")
    add_start_options(p)
    p.add_argument(
        "--request-id",
        metavar="ID",
        help="id of this start request: resending it (e.g. after a lost SSH reply) returns the job the first "
        "copy created instead of applying the reuse policy again",
    )
    p.add_argument(
        "--expect-major",
        metavar="N",
        help="refuse (exit 2, error_type incompatible_runtime, nothing started) unless this runtime's major "
        "version is N; the reply then also carries the runtime's version and capabilities, so a remote "
        "caller needs no separate `info` call (put it first: older runtimes refuse it as unknown)",
    )
    _exit_code_option(p, "with --sync:")
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    p = sub.add_parser(
        "list",
        help="list jobs, newest first, by status, run key prefix and start time",
        description='Jobs newest first (in the order they were created) as {"jobs": [...]}, each the object '
        "`status` prints. Filters combine (all must hold).",
    )
    p.add_argument(
        "--status",
        metavar="STATUS",
        action="append",
        help="only jobs in this status (repeatable: any of them), e.g. RUNNING, FAILED, LOST",
    )
    p.add_argument("--run-key-prefix", metavar="PREFIX", help="only run keys starting with PREFIX")
    p.add_argument(
        "--since",
        metavar="DURATION|TIME",
        help="only jobs started since then: an age with a unit (30m, 24h, 7d) or a time (epoch seconds, ISO 8601)",
    )
    p.add_argument(
        "--label", metavar="KEY=VALUE", action="append", help="only jobs carrying this label (repeatable: all of them)"
    )
    p.add_argument("--limit", metavar="N", type=int, default=100, help="at most N jobs (default: 100)")
    add_format_option(p)

    p = sub.add_parser(
        "stats",
        help="operations summary: running, oldest, stuck, failures by run key, LOST, log disk use, reservations",
        description="Read-only summary of this state home: jobs by status, running now and the oldest, stuck "
        "jobs (supervisor gone; a stop still not done after its grace + 10 s; STARTING for over 60 s), "
        "failures (FAILED, LOST) in the last --hours by run key, LOST jobs, disk used by logs/, and, when "
        "their databases are in the same home, pending reservations (how late the due ones are) and "
        "active flow runs. Nothing is settled or signalled.",
    )
    p.add_argument(
        "--hours", metavar="N", type=float, default=24.0, help="window for failures and LOST jobs (default: 24)"
    )
    add_format_option(p)

    p = sub.add_parser(
        "status",
        help="status of a job, a run key's history, several jobs, or all running jobs",
        description="Without --all: the newest job as one JSON object. With several --run-key/--job-id: "
        "a JSON array, one entry per selector. --stdout-offset/--stderr-offset add the next chunk of "
        "the log from that byte offset (one job only), so a poller needs one call per poll. --batch serves "
        "many pollers in one call: it reads a JSON array of "
        '{"run_key" or "job_id", "stdout_offset", "stderr_offset", "max_bytes"} objects and prints one '
        "entry per object, in order (a missing job is an entry with status null and error_type, not a "
        "failure of the call).",
    )
    p.add_argument("--run-key", metavar="KEY", action="append", help="look up by run key (repeatable)")
    p.add_argument("--job-id", metavar="ID", action="append", help="look up by job id (repeatable)")
    p.add_argument("--running", action="store_true", help="list all active jobs (STARTING, RUNNING, being stopped)")
    p.add_argument(
        "--label",
        metavar="KEY=VALUE",
        action="append",
        help="with --running: only jobs carrying this label (repeatable: all of them)",
    )
    p.add_argument("--all", action="store_true", help="every attempt of the run key, newest first")
    p.add_argument("--stdout-offset", metavar="BYTES", type=int, help="include stdout from this byte offset")
    p.add_argument("--stderr-offset", metavar="BYTES", type=int, help="include stderr from this byte offset")
    p.add_argument(
        "--max-bytes", metavar="N", type=int, default=65536, help="maximum bytes per log chunk (default: 65536)"
    )
    p.add_argument("--batch", metavar="FILE", help="JSON array of lookups with log offsets ('-' = stdin)")
    add_format_option(p)

    p = sub.add_parser(
        "result",
        help="the finished job's JSON; exit 0 succeeded, 1 failed, 3 not found, 4 not finished",
    )
    _selector(p)

    p = sub.add_parser("logs", help="print the stdout or stderr of a job (--follow: as it runs)")
    _selector(p)
    p.add_argument("--stream", choices=("stdout", "stderr"), default="stdout", help="which stream (default: stdout)")
    p.add_argument(
        "--follow",
        action="store_true",
        help="keep printing what the job writes until it has ended (a log not written yet is waited for), then exit 0",
    )
    _exit_code_option(p, "with --follow:")

    p = sub.add_parser(
        "clean",
        help="delete terminal jobs and their logs",
        usage="orchesjob clean (--before DATETIME | --older-than DURATION | --after DATETIME | --all | "
        "--job-id ID) [--run-key KEY] [--dry-run] [--forget-keys] [--summary]",
        description="Delete terminal jobs (by finish time) with their log files; active jobs are never "
        "deleted. DATETIME is epoch seconds or ISO 8601 (no offset = local time). A cleaned run key "
        "stays consumed for --strict/failed-only starts unless --forget-keys is given. Rows are read and "
        "deleted in batches of 200, one short write transaction each, and `items` is printed as they go: "
        "memory stays flat at any number of jobs. For retention, run `clean --older-than 30d --summary` "
        "from a timer (docs/orchesjob.md): only the counts are printed.",
    )
    add_clean_options(
        p,
        before="terminal jobs finished before this time",
        after="terminal jobs finished at or after this time",
        all_="all terminal jobs",
        job_id="one specific terminal job",
        run_key="restrict to this run key",
    )
    p.add_argument(
        "--forget-keys",
        action="store_true",
        help="also forget the run keys whose jobs were all deleted (their next start is a first start)",
    )

    for name, verb, stopping in (("abort", "ABORTED", "ABORTING"), ("cancel", "CANCELLED", "CANCELLING")):
        p = sub.add_parser(
            name,
            help=f"stop an active job's whole process tree; {verb} once nothing of it is alive",
            description=f"Record {stopping} (still active: a start of the run key returns this job), have "
            "the supervisor send one SIGTERM to every process of the job's tree, SIGKILL what is left after "
            f"the grace period, and record {verb} only when nothing of the tree is alive. Waits up to --wait "
            f"seconds for that; if the reply still says {stopping}, poll `status` (or resend: harmless). "
            "If the command finished on its own first, its real outcome is kept and stop_too_late is true. "
            "A job that had already ended is reported as it is, exit 0, with already_ended true (and "
            f"already_finished true unless it is {verb}). "
            "A job whose processes belong to another user is refused (exit 4), nothing recorded.",
        )
        _selector(p)
        p.add_argument("--reason", metavar="TEXT", help="reason stored in the job record")
        p.add_argument(
            "--grace-seconds", metavar="SECS", default="5", help="seconds between SIGTERM and SIGKILL (default: 5)"
        )
        p.add_argument(
            "--wait",
            metavar="SECS",
            help="how long to wait for the stop to complete (default: grace + 10)",
        )

    p = sub.add_parser("unlock", help="allow one more execution of a finished strict run key")
    p.add_argument("--run-key", metavar="KEY", required=True, help="run key to unlock (required)")
    p.add_argument("--reason", metavar="TEXT", help="reason for the override")
    p.add_argument("--ttl", metavar="DURATION", help="override expiry: seconds or 30s/10m/2h/1d")

    p = sub.add_parser("rerun", help="start a new execution of a finished job, regardless of strict mode")
    _selector(p)
    p.add_argument("--sync", action="store_true", help="block until the new job finishes")
    _exit_code_option(p, "with --sync:")
    p.add_argument("--reason", metavar="TEXT", help="rerun reason stored in the job record")
    p.add_argument("--start-timeout", metavar="SECS", default="10", help="seconds async rerun waits (default: 10)")

    sub.add_parser("info", help="version, capabilities and the resolved state paths")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)

    from ..jobs import open_jobs

    # Opened at the first call, after its arguments are validated: bad input writes nothing.
    jobs = Deferred(open_jobs)
    cmd = args.cmd
    if cmd == "start":
        # `--` is optional (spec): the first word that is not an option starts the command.
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise UsageError(
                "orchesjob start: command is required (provide it after --), e.g. start --run-key K -- CMD ARGS"
            )
        _need_sync(args)
        if args.expect_major is not None:
            from .. import check_caller_major

            check_caller_major(args.expect_major)
        job = jobs.start(command, args.run_key, sync=args.sync, request_id=args.request_id, **start_kwargs(args))
        if args.exit_code and job["status"] in ACTIVE_JOB_STATUSES:
            # An active attempt of the run key was returned (not started, so not waited for): wait for
            # its outcome too, since that is what the caller's exit code is to say.
            job.update(jobs.wait(job["job_id"]))
        if args.expect_major is not None:
            from .. import runtime_summary

            job["runtime"] = runtime_summary()
        emit(job)
        return _outcome(job, args.exit_code)
    elif cmd == "status":
        return _status(jobs, args)
    elif cmd == "list":
        return _list(jobs, args)
    elif cmd == "stats":
        if not 0 < args.hours <= 24 * 366:
            raise UsageError("--hours must be > 0 and at most 8784 (a year)")
        from ..stats import render_stats

        show(jobs.stats(args.hours), args.format, render_stats)
    elif cmd == "result":
        job = jobs.result(args.run_key, args.job_id)
        emit(job)
        return 0 if job["status"] == "SUCCEEDED" else 1
    elif cmd == "logs":
        if args.exit_code and not args.follow:
            raise UsageError("--exit-code needs --follow (the outcome is known once the job has ended)")
        if args.follow:
            from ..follow import follow

            return _outcome(follow(jobs, args.stream, args.run_key, args.job_id, sys.stdout.buffer), args.exit_code)
        path = jobs.log_path(args.stream, args.run_key, args.job_id)
        _copy_file(path)
    elif cmd == "clean":
        cleaning = jobs.clean(
            **clean_window(args),
            all_=args.all,
            job_id=args.job_id,
            run_key=args.run_key,
            dry_run=args.dry_run,
            forget_keys=args.forget_keys,
        )
        emit_clean(cleaning, args.summary)
    elif cmd in ("abort", "cancel"):
        emit(
            jobs.stop(
                args.run_key,
                args.job_id,
                status="ABORTED" if cmd == "abort" else "CANCELLED",
                reason=args.reason,
                grace=parse_seconds(args.grace_seconds, "--grace-seconds"),
                wait=parse_seconds(args.wait, "--wait") if args.wait is not None else None,
            )
        )
    elif cmd == "unlock":
        ttl = parse_duration(args.ttl, "--ttl") if args.ttl is not None else None  # "" is refused, not "no ttl"
        emit(jobs.unlock(args.run_key, args.reason, ttl))
    elif cmd == "rerun":
        _need_sync(args)
        job = jobs.rerun(
            args.run_key,
            args.job_id,
            sync=args.sync,
            reason=args.reason,
            start_timeout=parse_seconds(args.start_timeout, "--start-timeout"),
        )
        emit(job)
        return _outcome(job, args.exit_code)
    elif cmd == "info":
        emit(jobs.info())
    return 0


def _need_sync(args: argparse.Namespace) -> None:
    if args.exit_code and not args.sync:
        raise UsageError("--exit-code needs --sync (an async start returns before the job has an outcome)")


def _outcome(job: dict[str, Any], exit_code: bool) -> int:
    """0, or with --exit-code the job's outcome as an exit code (jobview.exit_status)."""
    if not exit_code:
        return 0
    from ..jobview import exit_status

    return exit_status(job)


def _list(jobs, args) -> int:
    from ..store import validate_run_key
    from ..timefmt import parse_since

    since = parse_since(args.since, "--since") if args.since is not None else None
    if args.run_key_prefix is not None:
        validate_run_key(args.run_key_prefix)
    found = jobs.list_jobs(
        statuses=args.status or (),
        run_key_prefix=args.run_key_prefix,
        since=since,
        labels=parse_labels(args.label),
        limit=args.limit,
    )
    from ..jobview import jobs_table

    show({"jobs": found}, args.format, lambda o: jobs_table(o["jobs"]))
    return 0


def _status(jobs, args) -> int:
    keys, ids = args.run_key or [], args.job_id or []
    chunks = args.stdout_offset is not None or args.stderr_offset is not None
    if args.format == "table" and (args.batch is not None or chunks):
        raise UsageError("--format table cannot be combined with --batch or log offsets (they are for pollers)")
    if args.batch is not None:
        if keys or ids or args.running or args.all or chunks:
            raise UsageError("--batch cannot be combined with other selectors or offsets")
        from ..jobview import parse_poll_requests

        emit(jobs.poll_many(parse_poll_requests(read_json_input(args.batch, "--batch"))))
        return 0
    if args.label and not args.running:
        raise UsageError("--label selects among --running jobs only")
    from ..jobview import job_fields, jobs_table

    if args.running:
        if keys or ids or args.all or chunks:
            raise UsageError("--running cannot be combined with other selectors")
        show(jobs.running(parse_labels(args.label)), args.format, jobs_table)
        return 0
    if not keys and not ids:
        raise UsageError("orchesjob status: one of the arguments --run-key --job-id --running is required")
    if args.all:
        if len(keys) != 1 or ids or chunks:
            raise UsageError("status --all requires --run-key: exactly one, and no other selector")
        show(jobs.history(keys[0]), args.format, jobs_table)
        return 0
    if len(keys) + len(ids) > 1:
        if chunks:
            raise UsageError("--stdout-offset/--stderr-offset need a single --run-key or --job-id")
        show(jobs.status_many(keys, ids), args.format, jobs_table)
        return 0
    job = jobs.status(keys[0] if keys else None, ids[0] if ids else None)
    if chunks:
        from ..jobview import add_log_chunks

        add_log_chunks(job, args.stdout_offset, args.stderr_offset, args.max_bytes)
    show(job, args.format, job_fields)
    return 0


def _copy_file(path: str) -> None:
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 16):
                sys.stdout.buffer.write(block)
    except FileNotFoundError:
        pass  # nothing written yet, or cleaned
    sys.stdout.flush()


def entry() -> None:
    run_cli(main)


if __name__ == "__main__":
    entry()
