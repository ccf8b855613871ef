"""``orchesjob-reserver``: reserve a job now, dispatch it on this host later.

Thin CLI over ``edge_runtime.reservations`` (state), ``edge_runtime.dispatcher``
(the ``run`` loop) and ``edge_runtime.jobclient`` (how jobs are started).
Imports beyond argparse/json happen inside ``main`` so that a remote poll
(one process per call) starts fast.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import OrchesError, UsageError
from .common import (
    Parser,
    add_clean_options,
    add_format_option,
    clean_window,
    emit,
    emit_clean,
    run_cli,
    seconds_type,
    show,
    split_command,
)

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_LIST_LIMIT = 1_000_000
STATUSES = ("RESERVED", "DISPATCHING", "DISPATCHED", "CANCELLED", "EXPIRED", "DISPATCH_FAILED")

# The reserver's exit-code table (spec): 4 not found, 5 not dispatched,
# 6 cannot cancel. A second dispatcher on the same database also exits 5.
EXIT_CODES = {
    "invalid_arguments": 2,
    "not_found": 4,
    "not_dispatched": 5,
    "lock_error": 5,
    "cannot_cancel": 6,
    "invalid_state": 1,
}

DESCRIPTION = """\
Reserve a job now (from Airflow, cron, CI, SSH ...) and let this host dispatch
it to orchesjob at or after --not-before, even when nobody is connected then.

Every command prints JSON on stdout (status and list print a table with
--format table); errors are one JSON object on stderr.
`result` and `cancel` of a dispatched reservation print what orchesjob prints.
Exit codes: 0 success, 1 general error, 2 invalid arguments, 4 reservation not
found, 5 not dispatched yet (no job_id) / another dispatcher holds the
database, 6 cannot cancel in the current state (cancelling what has already
ended is success: "already_ended": true). `result` passes on the exit
code of `orchesjob result` (0 succeeded, 1 failed, 3 job gone, 4 not finished).

Database: --db, else $ORCHESJOB_RESERVER_HOME/reserver.sqlite3, else
$ORCHESJOB_HOME/reserver.sqlite3, else /var/lib/orchesjob (or
~/.local/share/orchesjob when /var/lib/orchesjob is not writable).
Jobs are started in-process through this package's orchesjob library; if
--orchesjob-bin / $ORCHESJOB_BIN names another orchesjob executable, it is run
as `BIN start --run-key KEY <options> -- COMMAND` instead.
"""

RESERVE_EPILOG = """\
DATETIME is epoch seconds (fractions allowed) or ISO 8601; no offset = local time.
Pass start options with `=`, e.g. --orchesjob-start-option=--strict
--orchesjob-start-option=--timeout=2h. They are checked now against orchesjob
start (unknown ones and --sync are refused, exit 2) unless a foreign
--orchesjob-bin is given, which then judges them at dispatch.
examples:
  orchesjob-reserver reserve --run-key nightly-backup-2026-05-04 \\
      --not-before 2026-05-04T02:00:00+09:00 -- /usr/local/bin/backup.sh
  orchesjob-reserver reserve --run-key import-2026-05-04 --expires-at 2026-05-04T06:00:00+09:00 \\
      --metadata-json '{"dag_id": "daily_import"}' --orchesjob-start-option=--strict -- ./import.sh
"""

RUN_EPILOG = """\
Runs in the foreground (for systemd, supervisor, a container) and prints JSON
Lines events. Only one dispatcher per database: a second one exits 5 at once.
SIGTERM/SIGINT finish the dispatch in flight, log reserver_stopped, exit 0.
--once dispatches everything due and exits (for a cron job / systemd timer).
"""

SERVICE_EPILOG = """\
install writes ~/.config/systemd/user/orchesjob-reserver.service: ExecStart is this
install's orchesjob-reserver run (--db if given), ORCHESJOB_HOME the state home
resolved now, ORCHESJOB_SYSTEMD_SCOPE=1 (each job in its own scope, so that
KillMode=mixed stops the dispatcher and never a job). If your systemd user manager
is reachable it runs systemctl --user daemon-reload and enable --now; otherwise
it prints those steps (next_steps). It reports lingering: without it (loginctl
enable-linger USER, as root) your user manager, and the dispatcher, run only
while you are logged in. status says whether the written unit is still the one
install would write now (current). Nothing secret is ever put in the unit.
examples:
  orchesjob-reserver service install
  orchesjob-reserver service status
  orchesjob-reserver service install --system --print | sudo tee /etc/systemd/system/orchesjob-reserver.service
  orchesjob-reserver service uninstall
"""


def _common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # On subcommands the defaults are suppressed so that values given before
    # the subcommand survive (argparse copies sub-namespace values over them).
    default = None if top else argparse.SUPPRESS
    p.add_argument("--db", metavar="PATH", default=default, help="reservation database (SQLite) path")
    p.add_argument(
        "--orchesjob-bin",
        metavar="PATH",
        default=default,
        help="orchesjob executable (default: $ORCHESJOB_BIN, else this package's orchesjob in-process)",
    )
    p.add_argument(
        "--orchesjob-start-option",
        metavar="OPTION",
        action="append",
        default=[] if top else argparse.SUPPRESS,
        help="option passed to orchesjob start before -- (repeatable; use --orchesjob-start-option=--strict)",
    )


def _selector(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run-key", metavar="KEY", help="look up by run key")
    g.add_argument("--reservation-id", metavar="ID", help="look up by reservation id")


def build_parser() -> Parser:
    parser = Parser(prog="orchesjob-reserver", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"orchesjob-reserver {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser(
        "reserve",
        help="store a reservation (idempotent per run key)",
        usage="orchesjob-reserver reserve --run-key KEY [options] [--] COMMAND [ARGS...]",
        epilog=RESERVE_EPILOG,
    )
    _common(p)
    p.add_argument("--run-key", metavar="KEY", required=True, help="idempotency key (required)")
    p.add_argument("--not-before", metavar="DATETIME", help="do not dispatch before this time")
    p.add_argument("--expires-at", metavar="DATETIME", help="expire if not dispatched by this time")
    p.add_argument("--metadata-json", metavar="JSON", help="JSON object stored with the reservation")
    p.add_argument(
        "--env", metavar="KEY=VALUE", action="append", help="extra environment variable of the job (repeatable)"
    )
    p.add_argument(
        "--env-file",
        metavar="PATH",
        help="extra environment of the job from a file, or - for stdin: a JSON object of strings, or KEY=VALUE "
        "lines (--env of the same key wins). Stored with the reservation, given to the job at dispatch; "
        "values are never printed or logged, only their keys (env_keys)",
    )
    p.add_argument(
        "--rearm",
        action="store_true",
        help="if the run key's reservation ended without ever dispatching a job (CANCELLED, EXPIRED, "
        "DISPATCH_FAILED), store this request in its place as RESERVED again (rearmed: true); a reservation "
        "that is pending or dispatched is returned as it is",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    p = sub.add_parser("run", help="run the foreground dispatcher", epilog=RUN_EPILOG)
    _common(p)
    p.add_argument("--poll-interval", metavar="SECONDS", default="2.0", help="safety-net poll interval (default: 2.0)")
    p.add_argument(
        "--error-sleep", metavar="SECONDS", default="5.0", help="pause after an unexpected error (default: 5.0)"
    )
    p.add_argument("--once", action="store_true", help="dispatch everything due, then exit")
    p.add_argument(
        "--retention",
        metavar="DURATION",
        help="also delete terminal reservations last updated more than DURATION ago (e.g. 30d): at start-up "
        "and then hourly, in short transactions (off by default)",
    )

    p = sub.add_parser(
        "service",
        help="install/uninstall/status of the dispatcher as a systemd user service",
        usage="orchesjob-reserver service {install [--no-start] [--print] [--system --print] | uninstall | status}",
        epilog=SERVICE_EPILOG,
    )
    _common(p)
    p.add_argument("action", choices=("install", "uninstall", "status"), help="what to do")
    p.add_argument("--print", action="store_true", help="install: print the unit text only, write nothing")
    p.add_argument(
        "--system",
        action="store_true",
        help="install --print: the unit for the system manager (User= this user), for root to install",
    )
    p.add_argument("--no-start", action="store_true", help="install: enable it, but do not start it now")

    p = sub.add_parser("status", help="reservation status (--include-job adds the job's status)")
    _common(p)
    _selector(p)
    p.add_argument("--include-job", action="store_true", help="also include orchesjob status of the job")
    add_format_option(p)

    p = sub.add_parser("result", help="orchesjob result of the reservation's job")
    _common(p)
    _selector(p)

    p = sub.add_parser(
        "cancel",
        help="cancel a pending reservation, or cancel the job of a dispatched one through orchesjob",
        description="Cancel a pending (RESERVED, EXPIRED, DISPATCH_FAILED) reservation, or the job of a "
        "dispatched one through `orchesjob cancel`. Cancelling what has already ended (a CANCELLED "
        "reservation, a dispatched one whose job ended) succeeds and changes nothing: exit 0, "
        '"already_ended": true. A DISPATCHING reservation cannot be cancelled yet (exit 6).',
    )
    _common(p)
    _selector(p)
    p.add_argument(
        "--reason",
        metavar="TEXT",
        help="why (shown as cancel_reason; for a dispatched reservation, the job's abort_reason)",
    )

    p = sub.add_parser("list", help="list reservations, newest first")
    _common(p)
    p.add_argument("--status", choices=STATUSES, help="only this reservation status")
    p.add_argument("--limit", metavar="N", type=int, default=50, help="maximum number of records (default: 50)")
    add_format_option(p)

    p = sub.add_parser(
        "clean",
        help="delete terminal reservations",
        usage="orchesjob-reserver clean (--before DATETIME | --older-than DURATION | --after DATETIME | --all | "
        "--job-id ID | --reservation-id ID) [--run-key KEY] [--dry-run] [--summary]",
        description="Delete terminal reservations (DISPATCHED, CANCELLED, EXPIRED, DISPATCH_FAILED) by "
        "updated_at; RESERVED and DISPATCHING are never deleted. Jobs are not touched (use orchesjob clean). "
        "Rows are read and deleted in batches of 200, `reservations` is printed as they go; for a retention "
        "timer, --summary prints only the counts.",
    )
    _common(p)
    add_clean_options(
        p,
        before="updated before this time",
        after="updated at or after this time",
        all_="all terminal reservations (optionally of --run-key)",
        job_id="the reservation linked to this job",
        run_key="restrict to this run key",
    )
    p.add_argument("--reservation-id", metavar="ID", help="one reservation")
    return parser


def main(argv: list[str]) -> int:
    own, command = split_command(argv)
    args = build_parser().parse_args(own)
    if args.cmd == "reserve" and args.command:
        command = args.command + command  # `--` is optional, as for orchesjob start
    elif args.cmd != "reserve" and command:
        raise UsageError(f"orchesjob-reserver {args.cmd}: unexpected arguments after --: {' '.join(command)}")

    from ..reservations import Reservations

    def client() -> Any:
        # Only reserve/run/status --include-job/result/cancel need one.
        from ..jobclient import open_job_client

        return open_job_client(args.orchesjob_bin)

    options = list(args.orchesjob_start_option or [])
    cmd = args.cmd
    # Every value is validated before the database is opened: bad input writes nothing.
    if cmd == "reserve":
        from ..reservations import parse_metadata
        from ..timefmt import parse_optional_datetime
        from .common import merge_env

        if not command:
            raise UsageError("reserve requires command after --, e.g. reserve --run-key K -- CMD ARGS")
        from ..store import validate_run_key

        validate_run_key(args.run_key)
        not_before = parse_optional_datetime(args.not_before, "--not-before")
        expires_at = parse_optional_datetime(args.expires_at, "--expires-at")
        metadata = parse_metadata(args.metadata_json)
        env = merge_env(args.env, args.env_file)
        # Refuse options that orchesjob start would refuse now, not at dispatch.
        client().check_options(options)
        emit(
            Reservations(args.db).reserve(
                args.run_key,
                command,
                not_before=not_before,
                expires_at=expires_at,
                metadata=metadata,
                start_options=options,
                env=env,
                rearm=args.rearm,
            )
        )
        return 0

    if cmd == "run":
        from ..dispatcher import Dispatcher
        from ..timefmt import parse_duration

        poll = seconds_type("--poll-interval", allow_zero=False)(args.poll_interval)
        error_sleep = seconds_type("--error-sleep", allow_zero=False)(args.error_sleep)
        retention = parse_duration(args.retention, "--retention") if args.retention is not None else None
        job_client = client()
        job_client.check_options(options)
        return Dispatcher(
            Reservations(args.db),
            job_client,
            poll_interval=poll,
            error_sleep=error_sleep,
            start_options=options,
            retention=retention,
        ).run(once=args.once)

    if cmd == "service":
        return _service(args)

    if cmd == "list":
        if not 0 <= args.limit <= MAX_LIST_LIMIT:
            raise UsageError(f"--limit must be between 0 and {MAX_LIST_LIMIT}", value=args.limit)
        from ..reservations import reservations_table

        found = {"reservations": Reservations(args.db).list(args.status, args.limit)}
        show(found, args.format, lambda o: reservations_table(o["reservations"]))
        return 0

    if cmd == "clean":
        window = clean_window(args)
        cleaning = Reservations(args.db).clean(
            **window,
            all_=args.all,
            job_id=args.job_id,
            reservation_id=args.reservation_id,
            run_key=args.run_key,
            dry_run=args.dry_run,
        )
        emit_clean(cleaning, args.summary)
        return 0

    res = Reservations(args.db)
    row = res.get(args.run_key, args.reservation_id)
    if cmd == "status":
        from ..reservations import reservation_json

        out: dict[str, Any] = {"reservation": reservation_json(row)}
        if args.include_job:
            out["job"] = _job_status(client(), row) if row["job_id"] else None
        from ..reservations import reservation_fields

        show(out, args.format, reservation_fields)
        return 0
    if cmd == "result":
        if row["job_id"] is None:
            from ..reservations import NotDispatched

            raise NotDispatched(
                f"Reservation has not been dispatched yet; job_id is not available (status {row['status']})",
                reservation_id=row["reservation_id"],
                run_key=row["run_key"],
                reservation_status=row["status"],
            )
        return _proxy(client().proxy("result", row["job_id"]))
    if cmd == "cancel":
        if row["job_id"] is None:
            cancelled = res.cancel_pending(row, args.reason)
            if cancelled is not None:
                emit(cancelled)
                return 0
            row = res.get(reservation_id=row["reservation_id"])  # dispatched meanwhile
        return _cancel_job(client(), row, args.reason)
    raise UsageError(f"unknown command {cmd}")


def _service(args: argparse.Namespace) -> int:
    from ..systemd import Service

    if (args.print or args.system or args.no_start) and args.action != "install":
        raise UsageError(f"--print, --system and --no-start go with install, not {args.action}")
    if args.system and not args.print:
        raise UsageError(
            "the system unit is installed by root: orchesjob-reserver service install --system --print | "
            "sudo tee /etc/systemd/system/orchesjob-reserver.service, then sudo systemctl daemon-reload && "
            "sudo systemctl enable --now orchesjob-reserver"
        )
    service = Service(args.db)
    if args.print:
        from .common import write_text

        write_text(service.text(system=args.system))
        return 0
    if args.action == "install":
        emit(service.install(start=not args.no_start))
    elif args.action == "uninstall":
        emit(service.uninstall())
    else:
        emit(service.status())
    return 0


def _job_status(client: Any, row: Any) -> Any:
    try:
        return client.status(job_id=row["job_id"])
    except OrchesError as exc:
        # A job-level "not found" must not read as "reservation not found" (4).
        raise OrchesError(
            f"orchesjob status failed for job {row['job_id']}: {exc.message}",
            reservation_id=row["reservation_id"],
            job_id=row["job_id"],
        ) from None


def _proxy(reply: tuple[int, bytes, bytes]) -> int:
    code, out, err = reply
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    return code


def _cancel_job(client: Any, row: Any, reason: str | None) -> int:
    code, out, err = client.proxy("cancel", row["job_id"], reason)
    if code == 4:
        # orchesjob: the job is not active any more. In the reserver's table
        # that is "cannot cancel in the current state" (6), not "not found" (4).
        from ..reservations import CannotCancel

        detail = err.decode(errors="replace").strip()
        raise CannotCancel(
            f"cannot cancel: job {row['job_id']} of reservation {row['reservation_id']} is not active",
            reservation_id=row["reservation_id"],
            run_key=row["run_key"],
            reservation_status=row["status"],
            job_id=row["job_id"],
            orchesjob_error=detail,
        )
    return _proxy((code, out, err))


def entry() -> None:
    run_cli(main, EXIT_CODES)


if __name__ == "__main__":
    entry()
