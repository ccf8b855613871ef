"""What the three CLIs share: argument parsing that fails as JSON, output, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import OrchesError, UsageError

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, NoReturn


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` without importing shutil (and bz2, lzma ...)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, minus the shutil import it makes on every ``add_argument``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) < 4 and kwargs.get("width") is None:
            kwargs["width"] = _terminal_columns() - 2  # what argparse computes
        super().__init__(*args, **kwargs)


class Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as ``UsageError`` (JSON on stderr, exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def emit(obj: Any) -> None:
    """Print one JSON document on stdout.

    ASCII-only (non-ASCII as \\u escapes): valid whatever the locale of a
    non-interactive SSH session, and safe for undecodable bytes in argv.
    """
    data = json.dumps(obj, indent=2) + "\n"
    sys.stdout.buffer.write(data.encode("ascii"))
    sys.stdout.flush()


def emit_error(obj: Mapping[str, Any]) -> None:
    data = json.dumps(obj) + "\n"
    sys.stderr.buffer.write(data.encode("ascii"))
    sys.stderr.flush()


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split at the first ``--``: (own options, command). The command may be empty."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def run_cli(main: Callable[[list[str]], int], exit_codes: Mapping[str, int] | None = None) -> NoReturn:
    """Run ``main(argv)`` and turn every failure into one JSON object on stderr.

    ``exit_codes`` maps an error kind to this tool's exit code where it differs
    from the default of ``OrchesError`` subclasses.
    """
    try:
        code = main(sys.argv[1:])
    except OrchesError as exc:
        emit_error(exc.to_json())
        code = (exit_codes or {}).get(exc.kind, exc.exit_code)
    except KeyboardInterrupt:
        emit_error({"error": "interrupted", "error_type": "interrupted"})
        code = 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); nothing useful left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user
        if os.environ.get("ORCHESJOB_DEBUG"):
            raise
        named = _named(exc)
        if named is None:
            emit_error({"error": f"internal error: {type(exc).__name__}: {exc}", "error_type": "internal"})
            code = 1
        else:
            emit_error(named.to_json())
            code = (exit_codes or {}).get(named.kind, named.exit_code)
    sys.exit(code)


def _named(exc: BaseException) -> OrchesError | None:
    """The named error for a failure the tools do not raise themselves (database, memory, depth)."""
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.Error):
        from ..store import database_error

        return database_error(exc)
    if isinstance(exc, RecursionError):
        return UsageError("input nested too deeply")
    if isinstance(exc, MemoryError):
        return OrchesError("out of memory: the input or a requested size is too large", error_kind="memory")
    if isinstance(exc, (OSError)) and exc.errno is not None:
        return OrchesError(f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc), errno=exc.errno)
    return None


def seconds_type(option: str, *, allow_zero: bool = True) -> Callable[[str], float]:
    """An argparse ``type`` for a number of seconds (``> 0`` unless ``allow_zero``)."""

    def parse(text: str) -> float:
        from ..timefmt import parse_seconds

        return parse_seconds(text, option, allow_zero=allow_zero)

    return parse


def add_clean_options(p: argparse.ArgumentParser, *, before: str, after: str, all_: str, job_id: str) -> None:
    """The selection options ``clean`` has in every CLI (help texts per tool)."""
    p.add_argument("--before", metavar="DATETIME", help=before)
    p.add_argument("--after", metavar="DATETIME", help=after)
    p.add_argument("--all", action="store_true", help=all_)
    p.add_argument("--job-id", metavar="ID", help=job_id)
    p.add_argument("--run-key", metavar="KEY", help="restrict to this run key")
    p.add_argument("--dry-run", action="store_true", help="show what would be deleted")


def clean_window(args: argparse.Namespace) -> dict[str, float | None]:
    """``before``/``after`` keyword arguments of a ``clean`` from --before/--after."""
    from ..timefmt import parse_optional_datetime

    return {
        "before": parse_optional_datetime(args.before, "--before"),
        "after": parse_optional_datetime(args.after, "--after"),
    }


def write_text(text: str) -> None:
    """Print non-JSON output (tables, graphs, examples) asked for explicitly."""
    sys.stdout.write(text)
    sys.stdout.flush()


def parse_env_pairs(pairs: Sequence[str] | None) -> dict[str, str] | None:
    """``KEY=VALUE`` strings (from repeatable --env) to a dict."""
    if not pairs:
        return None
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or "\x00" in pair:
            raise UsageError(f"--env expects KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def read_json_input(path: str, option: str) -> Any:
    """JSON from a file named by ``option``, or from stdin for ``-``."""
    try:
        if path == "-":
            text = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                text = f.read()
        return json.loads(text)
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # also invalid UTF-8
        raise UsageError(f"{option}: not valid JSON: {exc}") from None
