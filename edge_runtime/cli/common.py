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

    from ..store import Cleaning


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

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # `--opt=--` reaches argparse as the value "--", which it drops, leaving a list where a
        # string is expected: refuse it like a missing value.
        if action.nargs is None and arg_strings == ["--"] and action.option_strings:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument, got '--'")
        return super()._get_values(action, arg_strings)


class Deferred:
    """A store opened at its first method *call*: after that call's arguments are evaluated
    (and validated), so a call with bad input never creates or migrates a database."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._target: Any = None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._target is None:
                self._target = self._opener()
            return getattr(self._target, name)(*args, **kwargs)

        return call


def emit(obj: Any) -> None:
    """Print one JSON document on stdout, indented (the layout of orchesjob and orchesjob-reserver).

    ASCII-only (non-ASCII as \\u escapes): valid whatever the locale of a
    non-interactive SSH session, and safe for undecodable bytes in argv.
    """
    data = json.dumps(obj, indent=2) + "\n"
    sys.stdout.buffer.write(data.encode("ascii"))
    sys.stdout.flush()


def emit_line(obj: Any) -> None:
    """``emit`` as one compact line: the layout every orchesjob-flow command prints, as the public release."""
    data = json.dumps(obj, separators=(",", ":")) + "\n"
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


def _untranslated_argparse() -> None:
    # argparse asks gettext for a catalogue for each of its own strings (~30 while
    # a CLI builds its parser); each lookup normalises the locale and stats four
    # catalogue paths that do not exist, ~1.5 ms of every call's start-up. The
    # runtime ships no catalogues and answers in JSON, so the English text is used
    # as it is, for the CLI process only (library users of the package keep gettext).
    argparse._ = str
    argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural


def run_cli(main: Callable[[list[str]], int], exit_codes: Mapping[str, int] | None = None) -> NoReturn:
    """Run ``main(argv)`` and turn every failure into one JSON object on stderr.

    ``exit_codes`` maps an error kind to this tool's exit code where it differs
    from the default of ``OrchesError`` subclasses.
    """
    _untranslated_argparse()
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


def add_clean_options(
    p: argparse.ArgumentParser, *, before: str, after: str, all_: str, job_id: str | None, run_key: str
) -> None:
    """The options ``clean`` has in every CLI (help texts per tool; ``job_id=None``: no --job-id)."""
    p.add_argument("--before", metavar="DATETIME", help=before)
    p.add_argument("--after", metavar="DATETIME", help=after)
    p.add_argument("--all", action="store_true", help=all_)
    if job_id is not None:
        p.add_argument("--job-id", metavar="ID", help=job_id)
    p.add_argument("--run-key", metavar="KEY", help=run_key)
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="age limit for retention: same as --before (now - DURATION); DURATION is seconds or 30s/10m/2h/30d",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show what would be deleted (`deleted` is the count it would delete)"
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="print only the counts and the selection used (`selection`: before/after, epoch and ISO, and the "
        "run key), not one entry per deleted row: the output of a retention timer stays a few lines at any size",
    )


def clean_window(args: argparse.Namespace) -> dict[str, float | None]:
    """``before``/``after`` keyword arguments of a ``clean`` from --before/--after/--older-than."""
    from ..timefmt import parse_age, parse_optional_datetime

    before = parse_optional_datetime(args.before, "--before")
    if args.older_than is not None:
        if before is not None:
            raise UsageError("--older-than and --before cannot be combined (--older-than is a --before)")
        before = parse_age(args.older_than, "--older-than")
    return {"before": before, "after": parse_optional_datetime(args.after, "--after")}


# What json.dumps(document, indent=2) / separators=(",", ":") (`emit`, `emit_line`) print around
# and between the items of a list that is the document's first key.
_INDENTED = {"open": '{\n  "%s": [', "close": "\n  ]", "empty": "]", "field": ',\n  "%s": %s', "end": "\n}\n"}
_ONE_LINE = {"open": '{"%s":[', "close": "]", "empty": "]", "field": ',"%s":%s', "end": "}\n"}


def emit_clean(cleaning: Cleaning, summary: bool, *, one_line: bool = False) -> None:
    """Print ``cleaning`` as it runs, holding no more than one batch of it, in ``emit``'s
    layout (``emit_line``'s with ``one_line``).

    The list of deleted rows is written batch by batch and the counts after it
    (key order does not matter to a JSON parser). If the clean fails part-way,
    the document is still completed with the counts so far before the error goes
    to stderr: a caller can always tell how much is gone.
    """
    if summary:
        try:
            cleaning.run()
        finally:
            (emit_line if one_line else emit)({**cleaning.counts(), "selection": cleaning.selection})
        return
    layout = _ONE_LINE if one_line else _INDENTED
    out = sys.stdout.buffer
    out.write((layout["open"] % cleaning.list_key).encode("ascii"))
    written = False
    try:
        for rows in cleaning.batches():
            if not rows:
                continue  # all taken by a concurrent clean
            # One dumps per batch (not per row: an encoder per call costs more than the row's text),
            # its brackets cut off; indented, its items moved one level in.
            items = [cleaning.describe(row) for row in rows]
            if one_line:
                text = json.dumps(items, separators=(",", ":"))[1:-1]
            else:
                text = json.dumps(items, indent=2)[1:-2].replace("\n", "\n  ")
            out.write(("," * written + text).encode("ascii"))
            written = True
    finally:
        tail = layout["close"] if written else layout["empty"]
        tail += "".join(layout["field"] % (name, json.dumps(value)) for name, value in cleaning.counts().items())
        out.write((tail + layout["end"]).encode("ascii"))
        out.flush()


def write_text(text: str) -> None:
    """Print non-JSON output (tables, graphs, examples) asked for explicitly."""
    sys.stdout.write(text)
    sys.stdout.flush()


def add_format_option(p: argparse.ArgumentParser) -> None:
    """``--format json|table`` of the listing and status commands of the three CLIs."""
    p.add_argument(
        "--format", choices=("json", "table"), default="json", help="json (default, for scripts) or table (for people)"
    )


def show(obj: Any, fmt: str, table: Callable[[Any], str], printer: Callable[[Any], None] = emit) -> None:
    """Print ``obj`` with ``printer`` (the tool's JSON layout), or as ``table(obj)`` for --format table."""
    if fmt == "table":
        write_text(table(obj))
    else:
        printer(obj)


def parse_env_pairs(pairs: Sequence[str] | None) -> dict[str, str] | None:
    """``KEY=VALUE`` strings (from repeatable --env) to a dict.

    Errors name the key, never the value (a value may be a secret).
    """
    if not pairs:
        return None
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or "\x00" in pair:
            shown = key if sep else "(no '=')"
            raise UsageError(f"--env expects KEY=VALUE without NUL bytes; got key {shown!r}")
        env[key] = value
    return env


def parse_labels(pairs: Sequence[str] | None) -> dict[str, str] | None:
    """``KEY=VALUE`` strings (from repeatable --label) to a validated dict; None when none are given."""
    from ..store import validate_labels

    labels: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--label expects KEY=VALUE; got {pair[:80]!r}")
        labels[key] = value
    return validate_labels(labels)


MAX_ENV_FILE_BYTES = 1 << 20


def read_env_file(path: str, option: str = "--env-file") -> dict[str, str]:
    """Extra environment variables from a file, or stdin for ``-``, kept off every command line.

    Either a JSON object of string to string, or ``KEY=VALUE`` lines (blank lines
    and lines starting with ``#`` are skipped; the value is everything after the
    first ``=``, taken as is). Errors name keys and line numbers, never values.
    """
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_ENV_FILE_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_ENV_FILE_BYTES:
        raise UsageError(f"{option}: larger than {MAX_ENV_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option}: not valid UTF-8") from None
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise UsageError(f"{option}: not a valid JSON object") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise UsageError(f"{option}: the JSON document must be an object of strings to strings")
        env = value
    else:
        env = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, val = line.partition("=")
            if not sep:
                raise UsageError(f"{option}: line {number} is not KEY=VALUE")
            env[key.strip()] = val
    for key, val in env.items():
        if not key or "=" in key or "\x00" in key or "\x00" in val:
            raise UsageError(f"{option}: invalid variable {key!r} (empty, '=' or NUL in the name, or NUL in the value)")
    return env


def merge_env(pairs: Sequence[str] | None, env_file: str | None) -> dict[str, str] | None:
    """--env-file first, then --env (an --env of the same key wins); None when neither is given."""
    env = read_env_file(env_file) if env_file is not None else {}
    env.update(parse_env_pairs(pairs) or {})
    return env or None


def read_json_input(path: str, option: str) -> Any:
    """JSON from a file named by ``option``, or from stdin for ``-``."""
    try:
        if path == "-":
            text = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                text = f.read()
        return json.loads(text)
    except RecursionError:
        raise UsageError(f"{option}: JSON nested too deeply") from None
    except OSError as exc:
        raise UsageError(f"{option}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # also invalid UTF-8
        raise UsageError(f"{option}: not valid JSON: {exc}") from None
