"""``orchesjob-flow``: a daemonless local DAG runner (thin CLI over edge_runtime.flow_*)."""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import UsageError
from .common import Parser, add_clean_options, add_format_option, run_cli, seconds_type, show, write_text
from .common import emit_line as emit  # every command prints one line, as the public orchesjob-flow

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DESCRIPTION = """\
Daemonless local flow runner: runs a small dependency graph of commands, each
step through orchesjob, with the flow state in SQLite.

State: --db, else $ORCHESJOB_FLOW_HOME/orchesjob-flow.sqlite3, else
$ORCHESJOB_HOME/orchesjob-flow.sqlite3, else orchesjob-flow.sqlite3 in the state
home orchesjob uses (`orchesjob info` prints it; a user whose runs are still in
~/.local/share/orchesjob-flow/ keeps that until they are moved).
Exit codes: 0 success (start/watch: flow SUCCEEDED), 1 flow FAILED or CANCELLED,
2 invalid flow / arguments / state (JSON error on stderr), 130 interrupted.
Cancelling a run that has already ended succeeds (exit 0, "already_ended": true).
"""

EXAMPLE_FLOW = """\
# orchesjob-flow example: a sequential import with a failure notification.
# Run it with:  orchesjob-flow start --run-key demo-001 flow.yaml
flow_id: daily-import
steps:
  - id: download
    command: ["sh", "-c", "echo downloading; sleep 1"]

  - id: validate
    depends_on: ["download"]
    when: download
    retries: 1
    retry_delay_sec: 10
    command: ["sh", "-c", "echo validating"]

  - id: import
    depends_on: ["validate"]
    when: validate
    timeout_sec: 3600
    command: ["sh", "-c", "echo importing"]

  - id: notify_failed
    depends_on: ["download", "validate", "import"]
    when: !download || !validate || !import
    command: ["sh", "-c", "echo 'daily-import failed' >&2"]
"""

START_EPILOG = """\
A run is bound to the definition it was started with (a snapshot in the DB).
`start` with an existing --run-key resumes that snapshot; if FLOW_FILE differs
it is refused unless --replace-definition is given. FLOW_FILE may be - (stdin).
"""


def build_parser() -> Parser:
    parser = Parser(prog="orchesjob-flow", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"orchesjob-flow {__version__}")
    parser.add_argument("--db", metavar="PATH", help="SQLite database for flow state")
    parser.add_argument(
        "--orchesjob-bin",
        metavar="PATH",
        default=os.environ.get("ORCHESJOB_BIN"),
        help="orchesjob executable; default $ORCHESJOB_BIN, else the built-in job layer (in-process)",
    )
    parser.add_argument(
        "--poll-interval",
        metavar="SECONDS",
        type=seconds_type("--poll-interval", allow_zero=False),
        default=5.0,
        help="longest sleep of the flow loop (default 5.0); step completion wakes it at once",
    )
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    p = sub.add_parser("start", help="start or resume a flow run", epilog=START_EPILOG)
    p.add_argument("--run-key", metavar="KEY", required=True, help="flow run key (required)")
    p.add_argument("-d", "--detach", action="store_true", help="advance in a background process and return")
    p.add_argument(
        "--replace-definition",
        action="store_true",
        help="switch an existing, unfinished run to FLOW_FILE (steps keep their state by id)",
    )
    p.add_argument(
        "--label",
        metavar="KEY=VALUE",
        action="append",
        help="who started the run (repeatable; not for secrets); kept from the run's creation, shown in "
        "`status` and selectable with `list --label`",
    )
    p.add_argument(
        "--format",
        choices=("json", "table"),
        help="foreground only: table prints a line per step transition as it happens and the status table at "
        "the end; json prints the final state as one JSON line. Default: table on a terminal, else json",
    )
    p.add_argument("flow_file", metavar="FLOW_FILE", help="YAML or JSON flow definition, or - for stdin")

    p = sub.add_parser("list", help="list flow runs, newest first")
    p.add_argument("--active", action="store_true", help="only PENDING/RUNNING runs (all of them)")
    p.add_argument(
        "--label", metavar="KEY=VALUE", action="append", help="only runs carrying this label (repeatable: all of them)"
    )
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N runs without --active (default 100)")
    add_format_option(p)

    p = sub.add_parser(
        "status",
        help="print the flow run state",
        description="Print the flow run state. If the run is RUNNING and the advancer that held it died "
        "(SIGKILL, OOM killer), a new detached advancer is started and `advancer_resumed` says so: whoever "
        "polls keeps the run going. A run that nobody was advancing (driven by `tick`) is left alone.",
    )
    p.add_argument("--run-key", metavar="KEY", required=True)
    p.add_argument("--format", choices=("json", "table"), default="json")
    p.add_argument("--no-resume", action="store_true", help="only report; never start an advancer for an orphaned run")

    p = sub.add_parser("watch", help="redisplay the state until the run finishes")
    p.add_argument("--run-key", metavar="KEY", required=True)
    p.add_argument("--interval", type=seconds_type("--interval", allow_zero=False), default=2.0, metavar="SECONDS")
    p.add_argument("--mode", choices=("screen", "append"), default="screen")
    p.add_argument("--no-clear", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--advance",
        action="store_true",
        help="also advance the run (takes the advancer lease when no live advancer holds it)",
    )

    p = sub.add_parser(
        "cancel",
        help="cancel a run and abort its running steps",
        description="Cancel the run and its unfinished steps, then abort the steps' running jobs. A run that "
        'has already ended is printed as it is: exit 0, "cancelled": false, "already_ended": true.',
    )
    p.add_argument("--run-key", metavar="KEY", required=True)
    p.add_argument("--grace-seconds", type=seconds_type("--grace-seconds"), default=None, metavar="SECONDS")

    p = sub.add_parser(
        "repair",
        help="re-run a FAILED/CANCELLED run's failed, cancelled and skipped steps (keeps succeeded ones)",
    )
    p.add_argument("--run-key", metavar="KEY", required=True)
    p.add_argument("-d", "--detach", action="store_true", help="advance in a background process and return")
    p.add_argument("--downstream", action="store_true", help="also re-run succeeded steps that depend on a re-run step")
    p.add_argument("--replace-definition", action="store_true", help="repair with FLOW_FILE instead of the snapshot")
    p.add_argument("flow_file", metavar="FLOW_FILE", nargs="?", help="new definition (with --replace-definition)")

    p = sub.add_parser("graph", help="print the flow as Mermaid or Graphviz DOT, coloured by step status")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run-key", metavar="KEY", help="a flow run (coloured by its current state)")
    g.add_argument("--file", metavar="FLOW_FILE", help="a flow file (no run state), or - for stdin")
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")

    p = sub.add_parser(
        "clean",
        help="delete finished flow runs (and their detached logs)",
        usage="orchesjob-flow clean (--before DATETIME | --older-than DURATION | --after DATETIME | --all | "
        "--run-key KEY) [--run-key KEY] [--dry-run] [--summary]",
        description="Delete SUCCEEDED, FAILED and CANCELLED flow runs by finish time, with their step state "
        "and the detached advancer's logs; unfinished runs are never deleted. Rows are read and deleted in "
        "batches of 200, one short transaction each, `runs` is printed as they go; for a retention timer, "
        "--summary prints only the counts. The steps' jobs are orchesjob's: clean them with `orchesjob clean`.",
    )
    add_clean_options(
        p,
        before="runs finished before this time",
        after="runs finished at or after this time",
        all_="every finished run",
        job_id=None,
        run_key="only this flow run",
    )

    sub.add_parser("example", help="print an example flow (YAML)")

    # Hidden: one engine pass (tests, recovery), and the detached child's loop.
    p = sub.add_parser("tick")
    p.add_argument("--run-key", metavar="KEY", required=True)
    p = sub.add_parser("advance")
    p.add_argument("--run-key", metavar="KEY", required=True)
    _hide(sub, ("tick", "advance"))
    return parser


def _hide(sub: Any, names: tuple[str, ...]) -> None:
    """Drop hidden subcommands from the help listing (argparse has no built-in way)."""
    sub._choices_actions = [a for a in sub._choices_actions if a.dest not in names]
    sub.metavar = "{" + ",".join(a.dest for a in sub._choices_actions) + "}"


def db_path(args: argparse.Namespace) -> str:
    from ..home import flow_db_path

    return os.path.abspath(args.db) if args.db else flow_db_path()


def safe_key(run_key: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key).strip("_") or "flow"


def _table(payload: dict[str, Any]) -> str:
    # flow_display imports the definition and expression modules: only for a person's table,
    # never on the JSON `status` a remote poll makes.
    from ..flow_display import render_table

    return render_table(payload)


def _runs_table(runs: dict[str, Any]) -> str:
    from ..flow_display import runs_table

    return runs_table(runs["runs"])


def _exit_for(status: str) -> int:
    return 0 if status == "SUCCEEDED" else 1


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "example":
        write_text(EXAMPLE_FLOW)
        return 0
    if args.cmd == "graph" and args.file:
        from ..flow_definition import load
        from ..flow_display import dot, mermaid

        defn, _ = load(args.file)
        write_text((mermaid if args.format == "mermaid" else dot)(defn))
        return 0

    from ..flow_store import FlowStore

    # Validated before the database is opened: bad input writes nothing.
    window = args.defn = None
    if args.cmd == "clean":
        from .common import clean_window, emit_clean

        window = clean_window(args)
    elif args.cmd in ("start", "repair") and args.flow_file:
        from ..flow_definition import load

        args.defn = load(args.flow_file)[0]
    if args.cmd in ("start", "list"):
        from .common import parse_labels

        args.labels = parse_labels(args.label)
    if args.cmd == "start" and args.detach and args.format is not None:
        raise UsageError("--format is for a foreground start (a detached one prints its JSON reply)")
    if args.cmd == "list" and not 1 <= args.limit <= 100000:
        raise UsageError("--limit must be between 1 and 100000")
    flows = FlowStore(db_path(args), check_dir=not args.db)
    if window is not None:
        try:
            cleaning = flows.clean(**window, all_=args.all, run_key=args.run_key, dry_run=args.dry_run)
            emit_clean(cleaning, args.summary, one_line=True)
        finally:
            flows.close()
        return 0
    if args.cmd == "list":
        try:
            runs = {"runs": flows.list_runs(active=args.active, labels=args.labels, limit=args.limit)}
            show(runs, args.format, _runs_table, emit)
        finally:
            flows.close()
        return 0
    client = None
    try:
        if args.cmd not in ("status", "graph"):  # read-only commands never touch a job
            from ..jobclient import open_job_client

            client = open_job_client(args.orchesjob_bin)
        return _dispatch(args, flows, client)
    finally:
        if client is not None:
            client.close()
        flows.close()


def _dispatch(args: argparse.Namespace, flows: Any, client: Any) -> int:
    from ..flow_engine import run_flow

    cmd = args.cmd
    if cmd == "start":
        defn = args.defn
        source = "<stdin>" if args.flow_file == "-" else os.path.abspath(args.flow_file)
        state = flows.create_or_resume(defn, args.run_key, source, replace=args.replace_definition,
                                       labels=args.labels)  # fmt: skip
        return _run_or_detach(args, flows, client, state)
    if cmd == "repair":
        defn = source = None
        if args.flow_file:
            defn = args.defn
            source = "<stdin>" if args.flow_file == "-" else os.path.abspath(args.flow_file)
        elif args.replace_definition:
            raise UsageError("--replace-definition needs FLOW_FILE")
        reset = flows.repair(
            args.run_key, downstream=args.downstream, defn=defn, source_name=source, replace=args.replace_definition
        )
        return _run_or_detach(args, flows, client, "repaired", extra={"repaired_steps": reset})
    if cmd == "status":
        resumed = None if args.no_resume else _resume_orphaned_run(args, flows)
        payload = flows.payload(args.run_key)
        if resumed is not None:
            payload["advancer_resumed"] = resumed
        show(payload, args.format, _table, emit)
        return 0
    if cmd == "watch":
        return _watch(args, flows, client)
    if cmd == "cancel":
        emit(flows.cancel(args.run_key, client, args.grace_seconds))
        return 0
    if cmd == "graph":
        from ..flow_display import dot, mermaid

        payload = flows.payload(args.run_key)
        defn = flows.definition(flows.run_row(args.run_key))
        write_text((mermaid if args.format == "mermaid" else dot)(defn, payload))
        return 0
    if cmd == "tick":
        from ..flow_engine import FLOW_TERMINAL, Advancer

        flows.run_row(args.run_key)
        advanced = flows.acquire(args.run_key, "tick")
        if advanced:
            try:
                Advancer(flows, args.run_key, client, args.poll_interval).advance_once()
            finally:
                flows.release(args.run_key)
        payload = flows.payload(args.run_key)
        payload["advanced"] = advanced
        emit(payload)
        return 1 if payload["status"] in FLOW_TERMINAL and payload["status"] != "SUCCEEDED" else 0
    if cmd == "advance":
        status = run_flow(flows, args.run_key, client, args.poll_interval, role="detached")
        emit(flows.payload(args.run_key))
        return _exit_for(status)
    raise UsageError(f"unknown command {cmd}")


def _run_or_detach(
    args: argparse.Namespace, flows: Any, client: Any, state: str, extra: dict[str, Any] | None = None
) -> int:
    from ..flow_display import render_table
    from ..flow_engine import FLOW_TERMINAL, run_flow
    from ..table import is_tty

    run = flows.run_row(args.run_key)
    fmt = getattr(args, "format", None) or ("table" if not args.detach and is_tty() else "json")
    if run["status"] in FLOW_TERMINAL:
        # Resuming a finished run changes nothing; report it (use `repair` to re-run).
        payload = flows.payload(args.run_key)
        payload["resumed"] = state
        show(payload, fmt, render_table, emit)
        return _exit_for(run["status"])
    if not args.detach:
        progress = None
        if fmt == "table":
            from ..flow_display import Progress

            lines = Progress()

            def progress() -> None:
                write_text("".join(f"{line}\n" for line in lines.lines(flows.payload(args.run_key))))

        status = run_flow(flows, args.run_key, client, args.poll_interval, role="start", progress=progress)
        payload = flows.payload(args.run_key)
        payload.update(extra or {})
        show(payload, fmt, lambda p: "\n" + render_table(p), emit)
        return _exit_for(status)
    flows.mark_running(args.run_key)
    holder = flows.holder(args.run_key)
    from ..home import log_files, logs_dir

    directory = logs_dir(os.path.dirname(flows.path))
    stdout_log, stderr_log = log_files(directory, f"orchesjob-flow-{safe_key(args.run_key)}", ".log")
    if holder is not None:
        pid = holder[0]  # a live advancer already drives this run: do not start another
    else:
        pid = _spawn_child(args, flows.path, stdout_log, stderr_log)
    payload = flows.payload(args.run_key)
    payload.update(extra or {})
    payload.update(
        {
            "detached": True,
            "pid": pid,
            "stdout_log": stdout_log,
            "stderr_log": stderr_log,
            "already_advancing": holder is not None,
        }
    )
    emit(payload)
    return 0


# The detached advancer's entry: isolated mode (-I: no current directory, no
# PYTHONPATH, no user site on sys.path), started in "/", so that nothing in the
# caller's directory (a planted json.py ...) can be imported. This package's
# own location is appended last, for checkouts not installed in site-packages.
_ADVANCER_CODE = "import sys; sys.path.append({root!r}); from edge_runtime.cli.flow import entry; entry()"


def advancer_argv(*args: str) -> list[str]:
    """The command line of a detached ``orchesjob-flow`` with ``args``."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return [sys.executable, "-I", "-c", _ADVANCER_CODE.format(root=root), *args]


def _spawn_child(args: argparse.Namespace, db: str, stdout_log: str, stderr_log: str) -> int:
    import subprocess

    from ..home import open_private_log, private_dir

    private_dir(os.path.dirname(stdout_log))
    argv = advancer_argv("--db", db, "--poll-interval", repr(args.poll_interval))
    if args.orchesjob_bin:
        # The child runs in "/": a relative path must keep naming the same file.
        bin_ = args.orchesjob_bin
        argv += ["--orchesjob-bin", os.path.abspath(bin_) if os.sep in bin_ else bin_]
    argv += ["advance", "--run-key", args.run_key]
    out, err = open_private_log(stdout_log), open_private_log(stderr_log)
    try:
        # Own session: survives the caller's terminal/SSH channel closing.
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd="/", start_new_session=True, close_fds=True
        )
    finally:
        os.close(out)
        os.close(err)
    return child.pid


def _resume_orphaned_run(args: argparse.Namespace, flows: Any) -> dict[str, Any] | None:
    """Whoever polls a RUNNING run whose advancer died (SIGKILL, OOM, reboot) starts a new one.

    Only a lease left by a dead holder counts: a run advanced from outside with
    ``tick`` holds no lease between ticks and is left alone. The lease is taken
    here first, inside one write transaction, so concurrent pollers start one
    advancer, not one each, and handed to the detached advancer at once. Costs
    one row read and one /proc read on the common path (a live advancer).
    """
    if flows.run_row(args.run_key)["status"] != "RUNNING":
        return None
    previous = flows.advancer(args.run_key)
    if previous is None or previous["alive"]:
        return None
    if not flows.acquire(args.run_key, "status-resume"):
        return None  # another poller won the race
    from ..home import log_files, logs_dir

    stdout_log, stderr_log = log_files(
        logs_dir(os.path.dirname(flows.path)), f"orchesjob-flow-{safe_key(args.run_key)}", ".log"
    )
    pid = _spawn_child(args, flows.path, stdout_log, stderr_log)
    # The child finds the lease already its own: no moment in which the run looks orphaned again.
    if not flows.hand_over(args.run_key, pid, "detached"):
        flows.release(args.run_key)
    return {"pid": pid, "previous_pid": previous["pid"], "stdout_log": stdout_log}


def _watch(args: argparse.Namespace, flows: Any, client: Any) -> int:
    import time

    from ..flow_display import render_table
    from ..flow_engine import FLOW_TERMINAL, Advancer

    append = args.mode == "append" or args.no_clear
    advancer = None
    try:
        while True:
            if args.advance and advancer is None and flows.acquire(args.run_key, "watch"):
                advancer = Advancer(flows, args.run_key, client, min(args.poll_interval, args.interval))
            if advancer is not None:
                advancer.advance_once()
            payload = flows.payload(args.run_key)
            text = render_table(payload)
            write_text(text + "\n" if append else "\x1b[2J\x1b[H" + text)
            if payload["status"] in FLOW_TERMINAL:
                return _exit_for(payload["status"])
            if advancer is not None:
                # Wake on step completion, but redraw at least every --interval.
                advancer.poll_interval = args.interval
                advancer.wait_for_progress()
            else:
                time.sleep(args.interval)
    finally:
        if advancer is not None:
            flows.release(args.run_key)


def entry() -> None:
    run_cli(main, exit_codes={"not_found": 2, "invalid_state": 2, "lock_error": 2, "invalid_flow": 2})


if __name__ == "__main__":
    entry()
