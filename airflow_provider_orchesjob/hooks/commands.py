"""Pure functions that build edge-CLI argv lists and the remote shell command line.

Nothing here talks to a host, so every quoting rule is unit-tested on its own.
An argv list is the exact argument vector the edge CLI must receive; the SSH
transports turn it into one POSIX shell command line with
:func:`remote_command_line`, which quotes every element, so run keys, commands,
env values and paths containing ``;``, ``$()``, backquotes, quotes, newlines,
globs or non-ASCII arrive on the host byte for byte.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

ORCHESJOB = "orchesjob"
RESERVER = "orchesjob-reserver"
FLOW = "orchesjob-flow"
TOOLS = (ORCHESJOB, RESERVER, FLOW)

# A plain `pipx install` puts the CLIs in ~/.local/bin, which a non-interactive
# SSH session usually does not have on PATH.
DEFAULT_EXTRA_PATH = "$HOME/.local/bin"


def number(value: float) -> str:
    """A number for the command line: ``90`` or ``1.5``, never ``1e+06``."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _check_text(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL bytes: {value!r}")
    return value


def shell_argv(command: str | Sequence[str]) -> list[str]:
    """A user command as argv: a list is used as-is; a string runs under ``/bin/sh -c``."""
    if isinstance(command, str):
        if not command.strip():
            raise ValueError("command must not be empty")
        return ["/bin/sh", "-c", command]
    argv = [str(a) for a in command]
    if not argv:
        raise ValueError("command must not be empty")
    return argv


def time_arg(value: datetime | str | int | float | None) -> str | None:
    """A time for --not-before/--expires-at: datetime (must be aware), ISO 8601 or epoch."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone so the host cannot misread it")
        return value.isoformat()
    if isinstance(value, (int, float)):
        return number(value)
    return str(value)


# ------------------------------------------------------------------ orchesjob
def job_start(
    run_key: str,
    command: str | Sequence[str],
    *,
    reuse_policy: str = "failed-only",
    cwd: str | None = None,
    env_file: bool = False,
    timeout: float | None = None,
    start_timeout: float | None = None,
    sync: bool = False,
    request_id: str | None = None,
    retry_lost: bool = False,
    labels: Mapping[str, str] | None = None,
    expect_major: str | None = None,
) -> list[str]:
    """``orchesjob start``. Environment values never go on the command line: with ``env_file`` the
    runtime reads them from stdin (``--env-file -``, the document of :func:`env_document`).
    ``labels`` (runtime capability ``job-labels``) are not secret: they are shown in job JSON.
    ``expect_major`` (capability ``start-compat-check``) comes first, as one word: every older
    runtime, and the public release, refuses it before parsing anything else."""
    argv = [ORCHESJOB, "start"]
    if expect_major is not None:
        argv.append(f"--expect-major={_check_text(expect_major, 'major version')}")
    argv += ["--run-key", _check_text(run_key, "run key"), "--reuse-policy", reuse_policy]
    if request_id:
        argv += ["--request-id", request_id]
    if retry_lost:
        argv.append("--retry-lost")
    if sync:
        argv.append("--sync")
    if start_timeout is not None:
        argv += ["--start-timeout", number(start_timeout)]
    if cwd:
        argv += ["--cwd", _check_text(cwd, "cwd")]
    if env_file:
        argv += ["--env-file", "-"]
    if timeout is not None:
        argv += ["--timeout", number(timeout)]
    argv += _label_args(labels)
    return argv + ["--", *(_check_text(a, "command") for a in shell_argv(command))]


def _label_args(labels: Mapping[str, str] | None) -> list[str]:
    return [a for k, v in (labels or {}).items() for a in ("--label", _check_text(f"{k}={v}", "label"))]


def jobs_running(labels: Mapping[str, str] | None = None) -> list[str]:
    """``orchesjob status --running``: every active job, with ``labels`` only those carrying all of them."""
    return [ORCHESJOB, "status", "--running", *_label_args(labels)]


def reservations_list(status: str | None = None, limit: int = 1000) -> list[str]:
    """``orchesjob-reserver list``, newest first."""
    return [RESERVER, "list", *(["--status", status] if status else []), "--limit", str(int(limit))]


def env_document(env: Mapping[str, str] | None) -> bytes:
    """The stdin of ``start --env-file -``: a JSON object of string names to string values."""
    out: dict[str, str] = {}
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"invalid environment variable name: {key!r}")
        out[key] = _check_text(str(value), f"env {key}")
    return json.dumps(out, ensure_ascii=False).encode("utf-8")


def _selector(run_key: str | None, job_id: str | None, id_flag: str = "--job-id") -> list[str]:
    if (run_key is None) == (job_id is None):
        raise ValueError("give exactly one of run_key or an id")
    return ["--run-key", run_key] if run_key is not None else [id_flag, job_id]  # type: ignore[list-item]


def job_status(
    run_key: str | None = None,
    job_id: str | None = None,
    *,
    stdout_offset: int | None = None,
    stderr_offset: int | None = None,
    max_bytes: int | None = None,
) -> list[str]:
    argv = [ORCHESJOB, "status", *_selector(run_key, job_id)]
    if stdout_offset is not None:
        argv += ["--stdout-offset", str(int(stdout_offset))]
    if stderr_offset is not None:
        argv += ["--stderr-offset", str(int(stderr_offset))]
    if max_bytes is not None:
        argv += ["--max-bytes", str(int(max_bytes))]
    return argv


def job_status_batch() -> list[str]:
    """``orchesjob status --batch -``: the lookups (see :func:`status_request`) go as a JSON array on stdin."""
    return [ORCHESJOB, "status", "--batch", "-"]


def status_request(
    run_key: str | None = None,
    job_id: str | None = None,
    *,
    stdout_offset: int | None = None,
    stderr_offset: int | None = None,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    """One entry of a ``status --batch`` array: a lookup and, optionally, the log offsets to read from."""
    kind, value = _selector(run_key, job_id)
    request: dict[str, Any] = {kind.lstrip("-").replace("-", "_"): value}
    for name, number_ in (("stdout_offset", stdout_offset), ("stderr_offset", stderr_offset), ("max_bytes", max_bytes)):
        if number_ is not None:
            request[name] = int(number_)
    return request


def job_status_many(run_keys: Sequence[str] = (), job_ids: Sequence[str] = ()) -> list[str]:
    argv = [ORCHESJOB, "status"]
    for key in run_keys:
        argv += ["--run-key", key]
    for job_id in job_ids:
        argv += ["--job-id", job_id]
    if len(argv) < 4:
        raise ValueError("give at least one run key or job id")
    return argv


def job_result(run_key: str | None = None, job_id: str | None = None) -> list[str]:
    return [ORCHESJOB, "result", *_selector(run_key, job_id)]


def job_stop(
    verb: str,
    run_key: str | None = None,
    job_id: str | None = None,
    *,
    reason: str | None = None,
    grace: float = 5,
    wait: float | None = None,
) -> list[str]:
    """``orchesjob abort|cancel``; ``wait`` (runtimes with ``job-lifecycle-v2``) bounds how long the call
    waits for the tree to be gone before it answers with the current state."""
    if verb not in ("abort", "cancel"):
        raise ValueError(verb)
    argv = [ORCHESJOB, verb, *_selector(run_key, job_id), "--grace-seconds", number(grace)]
    if wait is not None:
        argv += ["--wait", number(wait)]
    return argv + (["--reason", _check_text(reason, "reason")] if reason else [])


def job_unlock(run_key: str, *, reason: str | None = None, ttl: str | None = None) -> list[str]:
    argv = [ORCHESJOB, "unlock", "--run-key", run_key]
    return argv + (["--reason", reason] if reason else []) + (["--ttl", ttl] if ttl else [])


def job_rerun(run_key: str | None = None, job_id: str | None = None, *, reason: str | None = None) -> list[str]:
    return [ORCHESJOB, "rerun", *_selector(run_key, job_id)] + (["--reason", reason] if reason else [])


def job_logs(run_key: str | None = None, job_id: str | None = None, *, stream: str = "stdout") -> list[str]:
    return [ORCHESJOB, "logs", *_selector(run_key, job_id), "--stream", stream]


def runtime_info() -> list[str]:
    return [ORCHESJOB, "info"]


# ----------------------------------------------------------------- reserver
def reserve(
    run_key: str,
    command: str | Sequence[str],
    *,
    not_before: datetime | str | int | float | None = None,
    expires_at: datetime | str | int | float | None = None,
    metadata: Mapping | None = None,
    start_options: Sequence[str] = (),
    env_file: bool = False,
    rearm: bool = False,
) -> list[str]:
    """``orchesjob-reserver reserve``; with ``env_file`` the job's environment is read from stdin
    (``--env-file -``, the document of :func:`env_document`), stored apart and never printed;
    ``rearm`` replaces a reservation that ended without dispatching a job (runtime capability
    ``reserve-rearm``)."""
    argv = [RESERVER, "reserve", "--run-key", _check_text(run_key, "run key")]
    if (nb := time_arg(not_before)) is not None:
        argv += ["--not-before", nb]
    if (ea := time_arg(expires_at)) is not None:
        argv += ["--expires-at", ea]
    if metadata is not None:
        argv += ["--metadata-json", json.dumps(dict(metadata), sort_keys=True, default=str)]
    if env_file:
        argv += ["--env-file", "-"]
    if rearm:
        argv.append("--rearm")
    for option in start_options:
        argv.append(f"--orchesjob-start-option={option}")
    return argv + ["--", *(_check_text(a, "command") for a in shell_argv(command))]


def reservation_status(
    run_key: str | None = None, reservation_id: str | None = None, *, include_job: bool = False
) -> list[str]:
    argv = [RESERVER, "status", *_selector(run_key, reservation_id, "--reservation-id")]
    return argv + (["--include-job"] if include_job else [])


def reservation_result(run_key: str | None = None, reservation_id: str | None = None) -> list[str]:
    return [RESERVER, "result", *_selector(run_key, reservation_id, "--reservation-id")]


def reservation_cancel(
    run_key: str | None = None, reservation_id: str | None = None, *, reason: str | None = None
) -> list[str]:
    """``orchesjob-reserver cancel``; ``reason`` needs the runtime capability ``reserve-cancel-reason``."""
    argv = [RESERVER, "cancel", *_selector(run_key, reservation_id, "--reservation-id")]
    return argv + (["--reason", _check_text(reason, "reason")] if reason else [])


# --------------------------------------------------------------------- flow
def flow_start(
    run_key: str, *, flow_file: str = "-", detach: bool = True, labels: Mapping[str, str] | None = None
) -> list[str]:
    """Start a flow; with ``flow_file='-'`` the definition is read from stdin. ``labels`` need the
    runtime capability ``flow-labels``."""
    argv = [FLOW, "start", "--run-key", _check_text(run_key, "run key"), *_label_args(labels)]
    return argv + (["-d"] if detach else []) + [flow_file]


def flows_list(*, active: bool = True, labels: Mapping[str, str] | None = None) -> list[str]:
    """``orchesjob-flow list``: with ``active``, every PENDING/RUNNING run."""
    return [FLOW, "list", *(["--active"] if active else []), *_label_args(labels)]


def flow_status(run_key: str) -> list[str]:
    return [FLOW, "status", "--run-key", run_key]


def flow_cancel(run_key: str, *, grace: float | None = None) -> list[str]:
    return [FLOW, "cancel", "--run-key", run_key] + (["--grace-seconds", number(grace)] if grace is not None else [])


def flow_repair(run_key: str, *, detach: bool = True) -> list[str]:
    return [FLOW, "repair", "--run-key", run_key] + (["-d"] if detach else [])


# ------------------------------------------------------------- shell quoting
def remote_command_line(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    bin_dir: str | None = None,
    extra_path: str = DEFAULT_EXTRA_PATH,
) -> str:
    """One POSIX shell command line that execs ``argv`` on the host.

    ``env`` (e.g. ORCHESJOB_HOME) is exported first; ``bin_dir`` makes argv[0]
    an absolute path, otherwise ``extra_path`` (unquoted on purpose, so
    ``$HOME`` expands on the host) is prepended to PATH.
    """
    parts = _exports(env)
    program = argv[0]
    if bin_dir:
        program = bin_dir.rstrip("/") + "/" + program
    elif extra_path:
        parts.append(f'PATH="{extra_path}:$PATH"; export PATH;')
    words = [shlex.quote(_check_text(program, "program"))]
    words += [shlex.quote(_check_text(str(a), "argument")) for a in argv[1:]]
    return " ".join(parts + ["exec", *words])


def _exports(env: Mapping[str, str] | None) -> list[str]:
    parts = []
    for key, value in (env or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"invalid environment variable name: {key!r}")
        parts.append(f"export {key}={shlex.quote(_check_text(value, key))};")
    return parts


# ------------------------------------------- a provisioned runtime (agentless hosts)
ARCHIVE = "orchesjob.pyz"
RUNTIME_CACHE = ".cache/orchesjob/runtime"  # under the host user's $HOME
# Exit statuses no edge CLI uses (theirs are 0-6), so they cannot be mistaken for a CLI's.
RUNTIME_MISSING_EXIT = 97  # the call found no archive and ran nothing
RUNTIME_HASH_MISMATCH_EXIT = 96  # an upload's sha256 is not the one sent with it
RUNTIME_MISSING_MESSAGE = "orchesjob: runtime archive not provisioned"
_ARCHIVE_DIR = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _runtime_dir(directory: str) -> str:
    """The archive directory as a shell word: ``$HOME`` expands on the host, the rest is plain."""
    if not _ARCHIVE_DIR.fullmatch(directory):
        raise ValueError(f"invalid runtime directory name: {directory!r}")
    return f'"$HOME"/{RUNTIME_CACHE}/{directory}'


def runtime_path_display(directory: str) -> str:
    """Where the archive of ``directory`` lives on the host, for messages."""
    return f"~/{RUNTIME_CACHE}/{directory}/{ARCHIVE}"


def provisioned_command_line(
    argv: Sequence[str], *, directory: str, python: str = "python3", env: Mapping[str, str] | None = None
) -> str:
    """Like :func:`remote_command_line`, but runs ``argv`` from the runtime archive in ``directory``:
    ``python -I <archive> <cli> <arguments>``. Without the archive the line prints
    :data:`RUNTIME_MISSING_MESSAGE` and exits :data:`RUNTIME_MISSING_EXIT` before anything runs, so the
    caller can upload it and resend the call without another round trip in the common case.
    """
    archive = f"{_runtime_dir(directory)}/{ARCHIVE}"
    missing = f"{{ echo {shlex.quote(RUNTIME_MISSING_MESSAGE)} >&2; exit {RUNTIME_MISSING_EXIT}; }}"
    words = [shlex.quote(_check_text(python, "python")), "-I", archive]
    words += [shlex.quote(_check_text(str(a), "argument")) for a in argv]
    return " ".join([*_exports(env), f"[ -f {archive} ] || {missing};", "exec", *words])


def install_runtime_script(directory: str, sha256: str, *, python: str = "python3") -> str:
    """A shell script that installs the archive arriving on its stdin as ``directory``'s archive.

    It writes a temporary file beside the final name (umask 077: directories 0700),
    lets ``python`` check its sha256 (exit :data:`RUNTIME_HASH_MISMATCH_EXIT` and the
    file removed when it differs; 127 when there is no such interpreter), has the
    verified archive add the host's bytecode to itself (``edge_runtime/bytecode.py``;
    without it calls still work, only slower, and a warning is printed), makes it
    read-only and links it into place. A link is atomic and never replaces an
    existing file, so concurrent installs of the same archive leave the first
    complete file untouched (a running process keeps reading the one it opened) and
    a call never sees a partial one. It always reads its whole stdin first.
    """
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"invalid sha256: {sha256!r}")
    target = _runtime_dir(directory)
    python_word = shlex.quote(_check_text(python, "python"))
    verify = (
        "import hashlib,sys;"
        "sys.exit(0 if hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest()==sys.argv[2] "
        f"else {RUNTIME_HASH_MISMATCH_EXIT})"
    )
    return "\n".join(
        [
            "umask 077",
            f"d={target}",
            'tmp="$d/.' + ARCHIVE + '.$$.tmp"',
            # Whatever happens below, the temporary file does not outlive the script.
            'trap \'rm -f "$tmp" "$tmp.b"\' EXIT',
            "trap 'exit 1' HUP INT TERM",
            # A failure before the upload is read still reads it, so the sender is not cut off mid-write.
            'mkdir -p "$d" || { cat >/dev/null; exit 1; }',
            f'chmod 700 "$HOME"/{RUNTIME_CACHE.rsplit("/", 1)[0]} "$HOME"/{RUNTIME_CACHE} "$d" '
            "|| { cat >/dev/null; exit 1; }",
            'cat > "$tmp" || exit 1',
            f'{python_word} -I -c {shlex.quote(verify)} "$tmp" {sha256} || exit',
            f'if {python_word} -I "$tmp" bytecode "$tmp" "$tmp.b" "$d"/{ARCHIVE}; then mv -f "$tmp.b" "$tmp"; '
            "else echo 'orchesjob: no bytecode added: every call compiles the runtime' >&2; fi",
            'chmod 400 "$tmp" || exit 1',
            # ln fails on an existing archive (kept); mv only where the file system has no hard links.
            f'ln "$tmp" "$d"/{ARCHIVE} 2>/dev/null || [ -f "$d"/{ARCHIVE} ] || mv "$tmp" "$d"/{ARCHIVE}',
            "",
        ]
    )


# ------------------------------------------------------- several commands, one session
_MARKER = re.compile(r"[A-Za-z0-9_]{12,64}")


def batch_script(lines: Sequence[str], marker: str) -> str:
    """One POSIX shell script that runs command lines one after another in one SSH session.

    Each line (from :func:`remote_command_line`) runs in its own subshell with
    stdin from /dev/null; after line ``i`` the script prints ``\\n<marker> i <exit
    status>\\n`` on stdout and ``\\n<marker> i\\n`` on stderr, so
    :func:`split_batch_output` can hand every command its own output and exit
    status. ``marker`` is a fresh random word per script, so no command's output
    can forge a frame.
    """
    if not _MARKER.fullmatch(marker):
        raise ValueError(f"marker must be 12-64 letters, digits or _: {marker!r}")
    parts = []
    for i, line in enumerate(lines):
        parts.append(
            f"( {_check_text(line, 'command line')} ) </dev/null; "
            f"printf '\\n%s %d %d\\n' {marker} {i} $?; printf '\\n%s %d\\n' {marker} {i} >&2"
        )
    return "\n".join(parts) + "\n"


def split_batch_output(stdout: bytes, stderr: bytes, marker: str, count: int) -> list[tuple[int, bytes, bytes] | None]:
    """Per command of a :func:`batch_script`: ``(exit status, stdout, stderr)``, or None when its frame is
    missing (the session ended before that command finished)."""
    out: list[tuple[int, bytes, bytes] | None] = []
    frame_out = re.compile(rb"\n" + marker.encode() + rb" (\d+) (\d+)\n")
    frame_err = re.compile(rb"\n" + marker.encode() + rb" (\d+)\n")
    outs = _frames(stdout, frame_out)
    errs = _frames(stderr, frame_err)
    for i in range(count):
        if i not in outs:
            out.append(None)
            continue
        code, data = outs[i]
        out.append((code, data, errs.get(i, (0, b""))[1]))
    return out


def _frames(data: bytes, frame: re.Pattern) -> dict[int, tuple[int, bytes]]:
    found: dict[int, tuple[int, bytes]] = {}
    start = 0
    for match in frame.finditer(data):
        index = int(match.group(1))
        code = int(match.group(2)) if match.re.groups > 1 else 0
        found[index] = (code, data[start : match.start()])
        start = match.end()
    return found
