"""``OrchesJobHook``: the edge CLIs as Python methods returning parsed JSON.

Command lines come from :mod:`.commands` (pure, quoted); bytes travel through a
transport from :mod:`.transport`; exit codes become the named exceptions of
:mod:`..exceptions`. Nothing else in the provider talks SSH.

Retries: a connection failure before the command was sent is always retried
(backoff with jitter, within a budget). After it may have reached the host, only
commands that are safe to resend are retried — which is every command keyed by
a run key under a reuse policy that returns the existing attempt — never e.g.
``rerun``, which creates a new execution each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from .. import __version__
from ..compat import BaseHook, run_sync
from ..exceptions import (
    OrchesJobCommandError,
    OrchesJobConnectionError,
    OrchesJobError,
    OrchesJobInvalidArguments,
    OrchesJobInvalidState,
    OrchesJobLockError,
    OrchesJobNotFound,
    OrchesJobProvisionError,
    OrchesJobRuntimeIncompatible,
    OrchesJobRuntimeMissing,
    OrchesJobRuntimeNotProvisioned,
)
from ..utils import connection_form
from ..utils.lifecycle import TERMINAL_JOB
from . import commands
from .provision import RuntimeArchive, archive_missing, check_installed
from .transport import (
    AsyncSSHTransport,
    CommandResult,
    EdgeSettings,
    LocalTransport,
    SSHConfig,
    SSHTransport,
    backoff_delays,
)

# Exit code -> exception, per tool (the three CLIs number their errors differently).
_EXIT_ERRORS: dict[str, dict[int, type[OrchesJobError]]] = {
    commands.ORCHESJOB: {2: OrchesJobInvalidArguments, 3: OrchesJobNotFound, 4: OrchesJobInvalidState,
                         5: OrchesJobLockError},
    commands.RESERVER: {2: OrchesJobInvalidArguments, 4: OrchesJobNotFound, 5: OrchesJobInvalidState,
                        6: OrchesJobInvalidState},
    commands.FLOW: {2: OrchesJobInvalidArguments, 3: OrchesJobNotFound, 4: OrchesJobInvalidState,
                    5: OrchesJobLockError},
}  # fmt: skip

_ERROR_TYPES: dict[str, type[OrchesJobError]] = {
    "not_found": OrchesJobNotFound,
    "invalid_state": OrchesJobInvalidState,
    "invalid_arguments": OrchesJobInvalidArguments,
    "lock_error": OrchesJobLockError,
    "incompatible_runtime": OrchesJobRuntimeIncompatible,
    "unsupported_python": OrchesJobRuntimeIncompatible,  # a provisioned host's interpreter is too old
}

# What this provider needs from the host's runtime (see `orchesjob info`).
REQUIRED_CAPABILITIES = (
    "reuse-policy", "result", "cancel", "status-log-chunks", "start-request-id", "status-batch-poll",
)  # fmt: skip
# Optional capabilities that switch features on (checked where they are used).
LIFECYCLE_V2 = "job-lifecycle-v2"  # ABORTING/CANCELLING, NEVER_LAUNCHED, LOST not retried, stop --wait
ENV_FILE = "env-file"  # start --env-file - (environment as JSON on stdin)
REARM = "reserve-rearm"  # orchesjob-reserver reserve --rearm
JOB_LABELS = "job-labels"  # orchesjob start --label, status --running --label
CANCEL_REASON = "reserve-cancel-reason"  # orchesjob-reserver cancel --reason
FLOW_LABELS = "flow-labels"  # orchesjob-flow start --label, list
START_CHECK = "start-compat-check"  # orchesjob start --expect-major: the start checks itself, replies capabilities
LOCAL = "local"
_STOPPED = {"abort": "ABORTED", "cancel": "CANCELLED"}
# Hosts (hook.target_key()) where the runtime answered at least once in this process:
# a "command not found" there later is a pipx upgrade in progress, so it is retried.
_RUNTIME_SEEN: set[tuple] = set()
STOP_WAIT_MARGIN = 10.0  # seconds a stop call waits beyond the grace period
MAJOR = __version__.split(".")[0]  # a runtime of another major version is refused
PROVISION_TIMEOUT = 300.0  # seconds for uploading and checking the runtime archive


@contextlib.contextmanager
def _upload_failures() -> Iterator[None]:
    """A connection lost while uploading the archive: only the upload may have reached the host, never
    the call it was made for, so resending that call is as safe as before, whatever kind of call it is."""
    try:
        yield
    except OrchesJobConnectionError as exc:
        if not exc.retryable:
            raise
        raise OrchesJobConnectionError(f"uploading the runtime archive failed: {exc}", sent=False) from exc


def _decode_error(stderr: bytes) -> dict:
    for line in reversed(stderr.decode("utf-8", "replace").strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return {}


def parse_json_stdout(stdout: bytes) -> Any:
    """The JSON document an edge CLI printed, ignoring noise a shell rc file printed before it.

    A login banner or an ``echo`` in ``~/.bashrc`` lands on stdout before the
    CLI's own output. The whole stdout is tried first; then every line that
    starts a JSON object or array, from the first on, with everything after it.
    Raises ``ValueError`` when no JSON document is found.
    """
    text = stdout.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        pass
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.lstrip()[:1] in ("{", "["):
            try:
                return json.loads(text[offset:])
            except ValueError:
                pass
        offset += len(line)
    raise ValueError("no JSON document in the output")


def check_result(argv: Sequence[str], result: CommandResult, host: str, ok_codes: Sequence[int] = (0,)) -> Any:
    """Parsed JSON stdout of a successful call, or the matching named exception."""
    tool = argv[0]
    stderr = result.stderr.decode("utf-8", "replace").strip()
    if archive_missing(result.exit_code, result.stderr):
        raise OrchesJobRuntimeNotProvisioned(
            f"the runtime archive is not on {host} yet: {stderr}", exit_code=result.exit_code, stderr=stderr
        )
    if result.exit_code == 127 and (not result.stdout) and ("not found" in stderr or "No such file" in stderr):
        raise OrchesJobRuntimeMissing(
            f"{tool} is not installed on {host} (or not on the SSH session's PATH): {stderr}. Install the edge "
            "runtime there with `pipx install airflow-provider-orchesjob`, or set the connection extra "
            "`orchesjob_bin_dir`.",
            exit_code=127,
            stderr=stderr,
        )
    if result.exit_code not in ok_codes:
        remote = _decode_error(result.stderr)
        # The error kind in the stderr JSON is the most precise; exit codes differ per tool.
        cls = _ERROR_TYPES.get(remote.get("error_type", "")) or _EXIT_ERRORS.get(tool, {}).get(
            result.exit_code, OrchesJobCommandError
        )
        what = remote.get("error") or stderr or "no error output"
        raise cls(
            f"{tool} {argv[1] if len(argv) > 1 else ''} on {host} failed (exit {result.exit_code}): {what}"
            + (f" | stderr: {stderr}" if stderr and remote else ""),
            exit_code=result.exit_code,
            stderr=stderr,
            remote_error=remote,
        )
    try:
        return parse_json_stdout(result.stdout)
    except ValueError:
        raise OrchesJobCommandError(
            f"{tool} on {host} printed no JSON (exit {result.exit_code}): {result.stdout[:500]!r}",
            exit_code=result.exit_code,
            stderr=stderr,
        ) from None


def reinstall_hint() -> str:
    return (
        f"install the provider's version there: `pipx install --force airflow-provider-orchesjob=={__version__}` "
        "(pip keeps an installed copy of the same version number, e.g. a development build: `pipx uninstall "
        "airflow-provider-orchesjob` first)"
    )


def _stop_wait(wait: float | None, grace: float, lifecycle_v2: bool) -> float | None:
    """``--wait`` for a stop: only runtimes with job-lifecycle-v2 know it (default: grace + margin)."""
    if not lifecycle_v2:
        return None
    return grace + STOP_WAIT_MARGIN if wait is None else wait


def _already_stopped(exc: OrchesJobError, status: str) -> tuple[str, bool]:
    """(job id, finished on its own) when ``exc`` says the job is already ``status`` or otherwise
    finished before the stop arrived; otherwise (e.g. another user's job: nothing was signalled)
    re-raise ``exc``."""
    remote = exc.remote_error
    if remote.get("job_id") and remote.get("status") == status:
        return remote["job_id"], False
    if remote.get("job_id") and remote.get("status") in TERMINAL_JOB:
        return remote["job_id"], True
    raise exc


class OrchesJobHook(BaseHook):
    """Run the orchesjob edge CLIs on a host over SSH (or locally).

    :param ssh_conn_id: an Airflow ``ssh`` connection. Standard extras apply
        (``key_file``, ``private_key``, ``host_key``, ``no_host_key_check``,
        ``conn_timeout``...); host keys are **verified by default** against
        ``~/.ssh/known_hosts``, the ``known_hosts`` extra (a path) or
        ``host_key``. Edge extras: ``orchesjob_home`` (ORCHESJOB_HOME on the
        host), ``orchesjob_bin_dir`` (where the CLIs are; default: PATH plus
        ``~/.local/bin``), ``max_sessions`` (concurrent sessions per shared
        connection, default 8), ``jump_hosts`` (hosts to tunnel through,
        outermost first: ``"user@jump1:22, jump2"`` or a list; see the README),
        ``provision_runtime`` (``true``: no ``pipx
        install`` on the host; the hook uploads the runtime archive itself, see
        :mod:`.provision`) with ``provision_python`` (its interpreter, default
        ``python3``).
    :param transport: ``"ssh"`` (default when a connection is given) or
        ``"local"`` (run the CLIs on this machine; the zero-setup mode).
    :param remote_host: override the connection's host (fan-out over hosts).
    :param connect_budget: seconds of backoff spent retrying connection failures.
    """

    conn_name_attr = "ssh_conn_id"
    default_conn_name = "ssh_default"
    # Its own type in the UI (SSH fields plus the edge extras); ``ssh`` connections work the same.
    conn_type = "orchesjob"
    hook_name = connection_form.HOOK_NAME

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden, relabelled and pre-filled connection form fields (Airflow 2.11 to 3.1; 3.2+ reads the
        provider info's ``ui-field-behaviour``, from the same table)."""
        return connection_form.ui_field_behaviour()

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The connection form's extra fields (Airflow 2.11 to 3.1; 3.2+ reads ``conn-fields``)."""
        return connection_form.form_widgets()

    def __init__(
        self,
        ssh_conn_id: str | None = default_conn_name,
        *,
        transport: str | None = None,
        remote_host: str | None = None,
        orchesjob_home: str | None = None,
        bin_dir: str | None = None,
        connect_budget: float = 60.0,
        namespace: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace
        self.ssh_conn_id = ssh_conn_id
        self.transport_kind = transport or (LOCAL if ssh_conn_id is None else "ssh")
        self.remote_host = remote_host
        self.orchesjob_home = orchesjob_home
        self.bin_dir = bin_dir
        self.connect_budget = connect_budget
        self._config: SSHConfig | None = None
        self._sync: Any = None
        self._async: Any = None
        self._checked: set[str] = set()
        self._capabilities: set[str] | None = None

    # ------------------------------------------------------------- plumbing
    def ssh_config(self) -> SSHConfig:
        if self._config is None:
            self._config = self.load_ssh_config()
        return self._config

    def load_ssh_config(self) -> SSHConfig:
        """The connection's SSH settings, read afresh (``ssh_config`` caches them)."""
        conn = self.get_connection(self.ssh_conn_id)
        cfg = SSHConfig.from_connection(conn, host=self.remote_host)
        if self.orchesjob_home:
            cfg.edge.orchesjob_home = self.orchesjob_home
        if self.bin_dir:
            cfg.edge.bin_dir = self.bin_dir
        return cfg

    async def areload_ssh_config(self) -> SSHConfig:
        """:meth:`load_ssh_config` from async code: a reconnect uses the connection as it is now
        (e.g. after its key was rotated while tasks were deferred)."""
        return await run_sync(self.load_ssh_config)

    def _local_edge(self) -> EdgeSettings:
        return EdgeSettings(orchesjob_home=self.orchesjob_home, bin_dir=self.bin_dir)

    def get_conn(self) -> Any:
        """The synchronous transport (created on first use)."""
        if self._sync is None:
            self._sync = (
                LocalTransport(self._local_edge()) if self.transport_kind == LOCAL else SSHTransport(self.ssh_config())
            )
        return self._sync

    def get_async_conn(self) -> Any:
        if self._async is None:
            self._async = (
                LocalTransport(self._local_edge())
                if self.transport_kind == LOCAL
                else AsyncSSHTransport(self.ssh_config(), reload_config=self.areload_ssh_config)
            )
        return self._async

    def target_key(self) -> tuple:
        """What makes two hooks run the same commands on the same host with the same state."""
        if self.transport_kind == LOCAL:
            edge = self._local_edge()
            return (LOCAL, edge.orchesjob_home, edge.bin_dir)
        cfg = self.ssh_config()
        edge = cfg.edge
        runtime = (edge.python, edge.runtime_archive().directory) if edge.provision else None
        return (self.transport_kind, cfg.conn_id, cfg.host, cfg.port, cfg.username,
                edge.orchesjob_home, edge.bin_dir, edge.extra_path, runtime)  # fmt: skip

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def run_cli(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        resend_safe: bool = True,
        ok_codes: Sequence[int] = (0,),
        timeout: float | None = 300,
        self_checking: bool = False,
    ) -> Any:
        """Run one edge CLI call and return its parsed JSON (retrying connection failures safely).

        Transient host-side errors (a database lock timeout, the runtime missing
        while ``pipx upgrade`` replaces it) are resent within the same budget:
        neither did anything on the host. The host's runtime is checked first
        (``info``, once per connection) unless the call checks it itself
        (``self_checking``: ``start --expect-major``).
        """
        transport = self.get_conn()
        if not self_checking:
            self._ensure_compatible(transport)
        delays = backoff_delays(budget=self.connect_budget)
        while True:
            try:
                result = self._run_provisioned(transport, argv, stdin, timeout)
                return self._checked_result(argv, result, transport.host_id, ok_codes)
            except OrchesJobConnectionError as exc:
                time.sleep(self._retry_delay(exc, argv, resend_safe, delays))
            except OrchesJobError as exc:
                time.sleep(self._transient_delay(exc, delays))

    async def arun_cli(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        resend_safe: bool = True,
        ok_codes: Sequence[int] = (0,),
        timeout: float | None = 300,
    ) -> Any:
        """Async twin of :meth:`run_cli` over the shared per-process connection."""
        transport = self.get_async_conn()
        delays = backoff_delays(budget=self.connect_budget)
        while True:
            try:
                result = await self._arun_provisioned(transport, argv, stdin, timeout)
                return self._checked_result(argv, result, transport.host_id, ok_codes)
            except OrchesJobConnectionError as exc:
                await asyncio.sleep(self._retry_delay(exc, argv, resend_safe, delays))
            except OrchesJobError as exc:
                await asyncio.sleep(self._transient_delay(exc, delays))

    def command_line(self, argv: Sequence[str]) -> str:
        """The shell command line that runs ``argv`` on this hook's host (SSH transports)."""
        return self.ssh_config().edge.command_line(argv)

    def host_label(self) -> str:
        """Where this hook's commands run, for logs: ``local``, or the host and its jump hosts."""
        return LOCAL if self.transport_kind == LOCAL else self.ssh_config().route_label

    async def arun_script(self, script: str, *, timeout: float | None = 300) -> CommandResult:
        """Run a read-only shell script (e.g. :func:`commands.batch_script`) in one session, resending it
        after connection failures within the budget. Its exit status and output are the caller's to judge."""
        transport = self.get_async_conn()
        delays = backoff_delays(budget=self.connect_budget)
        while True:
            try:
                return await transport.arun_line(script, timeout=timeout)
            except OrchesJobConnectionError as exc:
                await asyncio.sleep(self._retry_delay(exc, ["sh", "batch"], True, delays))

    def _checked_result(self, argv: Sequence[str], result: CommandResult, host: str, ok_codes: Sequence[int]) -> Any:
        out = check_result(argv, result, host, ok_codes)
        _RUNTIME_SEEN.add(self.target_key())
        return out

    def _transient_delay(self, exc: OrchesJobError, delays: Any) -> float:
        """How long to wait before resending after a transient host-side error — or re-raise ``exc``."""
        if not exc.transient:
            raise exc
        if isinstance(exc, OrchesJobRuntimeMissing) and self.target_key() not in _RUNTIME_SEEN:
            raise exc  # never seen here: not installed, not an upgrade in progress
        delay = next(delays, None)
        if delay is None:
            raise exc
        self.log.warning("%s; transient, retrying in %.1f s", exc, delay)
        return delay

    def _retry_delay(self, exc: OrchesJobConnectionError, argv: Sequence[str], resend_safe: bool, delays: Any) -> float:
        """How long to wait before resending ``argv`` after ``exc`` — or re-raise when that is unsafe or useless."""
        if not exc.retryable:
            raise exc
        if exc.sent and not resend_safe:
            raise OrchesJobConnectionError(
                f"{exc} — {argv[0]} {argv[1]} may have run on the host and is not safe to resend; "
                "check its status before retrying",
                sent=True,
            ) from exc
        delay = next(delays, None)
        if delay is None:
            raise exc
        self.log.warning("%s; retrying in %.1f s", exc, delay)
        return delay

    def _ensure_compatible(self, transport: Any) -> None:
        """Check the host's runtime once per connection: present, ours, capable enough."""
        if transport.host_id in self._checked:
            return
        argv = commands.runtime_info()
        delays = backoff_delays(budget=self.connect_budget)
        while True:
            try:
                result = self._run_provisioned(transport, argv, None, 60)
            except OrchesJobConnectionError as exc:
                if not exc.retryable:
                    raise
                return  # run_cli's own retry loop reports connection problems
            if result.exit_code == 127 and self.target_key() in _RUNTIME_SEEN:
                return  # an upgrade in progress: run_cli retries the call itself
            try:
                self._accept_info(transport.host_id, result)
                return
            except OrchesJobError as exc:
                # A lock timeout (e.g. another call creating the database of a
                # new home) is asked again; anything else is the answer.
                time.sleep(self._transient_delay(exc, delays))

    # ------------------------------------------------- provisioned runtime
    def _run_provisioned(
        self, transport: Any, argv: Sequence[str], stdin: bytes | None, timeout: float | None
    ) -> CommandResult:
        """``transport.run``; on a provisioned host that lacks the archive (nothing ran), upload it and run
        the call again, once: a second miss is reported by :func:`check_result`."""
        result = transport.run(argv, stdin=stdin, timeout=timeout)
        if archive_missing(result.exit_code, result.stderr):
            self._provision(transport)
            result = transport.run(argv, stdin=stdin, timeout=timeout)
        return result

    async def _arun_provisioned(
        self, transport: Any, argv: Sequence[str], stdin: bytes | None, timeout: float | None
    ) -> CommandResult:
        """Async twin of :meth:`_run_provisioned`."""
        result = await transport.arun(argv, stdin=stdin, timeout=timeout)
        if archive_missing(result.exit_code, result.stderr):
            await self.aprovision_runtime()
            result = await transport.arun(argv, stdin=stdin, timeout=timeout)
        return result

    def provision_runtime(self) -> dict:
        """Upload this provider's runtime archive to the host (connection extra ``provision_runtime``).

        Calls do this by themselves when they find the archive missing; it is safe
        to repeat and to run from many workers at once. Returns where the archive is.
        """
        return self._provision(self.get_conn())

    async def aprovision_runtime(self) -> dict:
        """Async twin of :meth:`provision_runtime` (a triggerer whose provider was upgraded while
        tasks were deferred finds the new archive missing on its first poll)."""
        transport = self.get_async_conn()
        line, archive = self._install_request()
        with _upload_failures():
            result = await transport.arun_line(line, stdin=archive.data, timeout=PROVISION_TIMEOUT)
        return self._installed(result, archive, transport.host_id)

    def _provision(self, transport: Any) -> dict:
        line, archive = self._install_request()
        with _upload_failures():
            result = transport.run_line(line, stdin=archive.data, timeout=PROVISION_TIMEOUT)
        return self._installed(result, archive, transport.host_id)

    def _install_request(self) -> tuple[str, RuntimeArchive]:
        edge = self.ssh_config().edge
        if self.transport_kind == LOCAL or not edge.provision:
            raise OrchesJobProvisionError(
                f"connection {self.ssh_conn_id!r} does not provision the runtime (extra provision_runtime)"
            )
        archive = edge.runtime_archive()
        return commands.install_runtime_script(archive.directory, archive.sha256, python=edge.python), archive

    def _installed(self, result: CommandResult, archive: RuntimeArchive, host_id: str) -> dict:
        check_installed(result.exit_code, result.stderr, archive, host_id)
        if result.stderr.strip():  # installed, with a warning (e.g. without the host's bytecode)
            self.log.warning("provisioning %s: %s", host_id, result.stderr.decode("utf-8", "replace").strip())
        self.log.info("runtime %s provisioned on %s (sha256 %s)", archive.version, host_id, archive.sha256)
        return {"host": host_id, "version": archive.version, "sha256": archive.sha256,
                "path": commands.runtime_path_display(archive.directory)}  # fmt: skip

    def _accept_info(self, host_id: str, result: CommandResult) -> dict:
        argv = commands.runtime_info()
        if result.exit_code == 2:
            raise OrchesJobRuntimeIncompatible(
                f"the orchesjob on {host_id} has no `info` command: it is not the edge runtime of "
                f"airflow-provider-orchesjob (e.g. the public orchesjob release). Install "
                f"airflow-provider-orchesjob=={__version__} there.",
                exit_code=2,
                stderr=result.stderr.decode("utf-8", "replace"),
            )
        info = check_result(argv, result, host_id)
        self._accept_runtime(host_id, info)
        return info

    def _accept_runtime(self, host_id: str, runtime: dict) -> None:
        """Record the host's runtime (``info``, or a start reply's ``runtime``) once it is found compatible."""
        missing = [c for c in REQUIRED_CAPABILITIES if c not in runtime.get("capabilities", [])]
        remote_major = str(runtime.get("version", "0")).split(".")[0]
        if missing or remote_major != MAJOR:
            raise OrchesJobRuntimeIncompatible(
                f"edge runtime {runtime.get('version')} on {host_id} is incompatible with provider "
                f"{__version__} (missing capabilities: {missing or 'none'}); " + reinstall_hint()
            )
        self._capabilities = set(runtime.get("capabilities", []))
        _RUNTIME_SEEN.add(self.target_key())
        self._checked.add(host_id)

    def capabilities(self) -> set[str]:
        """The capabilities the host's runtime advertises (``orchesjob info``; asked once per hook)."""
        if self._capabilities is None:
            self._ensure_compatible(self.get_conn())  # its `info` call records them
        if self._capabilities is None:
            self._capabilities = set(self.runtime_info().get("capabilities", []))
        return self._capabilities

    async def acapabilities(self) -> set[str]:
        """Async twin of :meth:`capabilities`."""
        if self._capabilities is None:
            info = await self.arun_cli(commands.runtime_info())
            self._capabilities = set(info.get("capabilities", []))
        return self._capabilities

    def if_capable(self, capability: str, value: Any) -> Any:
        """``value`` where the host's runtime has ``capability``, else None: for optional refinements
        (labels, reasons) that an older runtime would refuse and that nothing depends on."""
        return value if value and capability in self.capabilities() else None

    def require(self, capability: str, feature: str) -> None:
        """Fail clearly when the host's runtime lacks ``capability`` (needed for ``feature``)."""
        if capability not in self.capabilities():
            raise OrchesJobRuntimeIncompatible(
                f"{feature} needs an edge runtime with the {capability!r} capability, which the runtime on "
                f"{self._where()} does not advertise; " + reinstall_hint()
            )

    def _where(self) -> str:
        return self._config.host_id if self._config is not None else LOCAL

    def run_key_namespace(self) -> str | None:
        """The connection extra ``run_key_namespace`` (None for the local transport or when unset).

        Two Airflow deployments sharing one host user must set different namespaces,
        so their run keys differ and neither ever adopts the other's results.
        """
        if self.transport_kind == LOCAL:
            return self.namespace
        return self.namespace or self.ssh_config().run_key_namespace

    def runtime_info(self) -> dict:
        return self.run_cli(commands.runtime_info())

    # ------------------------------------------------------------------ jobs
    def start_job(
        self,
        run_key: str,
        command: str | Sequence[str],
        *,
        reuse_policy: str = "failed-only",
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        start_timeout: float | None = None,
        sync: bool = False,
        retry_lost: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> dict:
        """Start (or reattach to / adopt) the job of ``run_key``; see the reuse policies.

        ``env`` goes to the host as a JSON document on stdin (``--env-file -``),
        never on a command line; the runtime must advertise ``env-file``.
        ``retry_lost`` lets ``failed-only`` start a new attempt after a LOST one
        (outcome unknown; by default such a job is returned, not retried).
        ``labels`` (e.g. :func:`~airflow_provider_orchesjob.utils.labels.task_labels`)
        are left out on a runtime without ``job-labels``: they only help a sweep.
        """
        import uuid

        stdin = commands.env_document(env) if env else None
        # One request id per call: if the reply is lost and the request is resent, the
        # host returns the job the first copy created instead of judging the run key
        # again (which, e.g. after a quick failure, would start another attempt).
        request_id = str(uuid.uuid4())

        def argv_for(caps: set[str] | None) -> list[str]:
            # caps None: not known yet, so the newest form; a runtime that lacks any of it refuses
            # the whole call as invalid arguments before recording anything.
            def has(cap: str) -> bool:
                return caps is None or cap in caps

            if env and not has(ENV_FILE):
                self.require(ENV_FILE, "passing env without exposing it on the host's process list")
            return commands.job_start(
                run_key, command, reuse_policy=reuse_policy, cwd=cwd, env_file=stdin is not None,
                timeout=timeout, start_timeout=start_timeout, sync=sync, request_id=request_id,
                retry_lost=retry_lost and has(LIFECYCLE_V2),  # older runtimes retry LOST anyway
                labels=labels if has(JOB_LABELS) else None, expect_major=MAJOR if has(START_CHECK) else None,
            )  # fmt: skip

        call_timeout = None if sync else 300
        if self._capabilities is None:
            # One round trip: the start checks the runtime's major version itself and replies
            # with its capabilities. Only a runtime that refuses it is asked `info` (below).
            try:
                reply = self.run_cli(argv_for(None), stdin=stdin, timeout=call_timeout, self_checking=True)
            except OrchesJobInvalidArguments:
                if START_CHECK in self.capabilities():
                    raise  # a runtime that knows every option refused the input itself
            else:
                self._accept_runtime(self.get_conn().host_id, reply.pop("runtime", {}))
                return reply
        reply = self.run_cli(argv_for(self.capabilities()), stdin=stdin, timeout=call_timeout)
        reply.pop("runtime", None)  # known already
        return reply

    def running_jobs(self, labels: Mapping[str, str] | None = None) -> list[dict]:
        """Every active job on the host (``status --running``); with ``labels``, those carrying all of them."""
        if labels:
            self.require(JOB_LABELS, "selecting jobs by label")
        return self.run_cli(commands.jobs_running(labels))

    def list_reservations(self, status: str | None = None, limit: int = 1000) -> list[dict]:
        """The host's reservations, newest first (``orchesjob-reserver list``)."""
        return self.run_cli(commands.reservations_list(status, limit))["reservations"]

    def stderr_tail(self, run_key: str | None = None, job_id: str | None = None, *, nbytes: int = 4096) -> bytes:
        """The last ``nbytes`` of a job's stderr, read by offset (never the whole file)."""
        from ..triggers.orchesjob import chunk_bytes

        probe = self.job_status(run_key, job_id, stderr_offset=0, max_bytes=1).get("stderr_chunk") or {}
        size = int(probe.get("size") or 0)
        if size <= 1:
            return chunk_bytes(probe)[:size]
        job = self.job_status(run_key, job_id, stderr_offset=max(0, size - nbytes), max_bytes=nbytes)
        return chunk_bytes(job.get("stderr_chunk"))

    def job_status(
        self,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        stdout_offset: int | None = None,
        stderr_offset: int | None = None,
        max_bytes: int | None = None,
    ) -> dict:
        return self.run_cli(
            commands.job_status(
                run_key, job_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset, max_bytes=max_bytes
            )
        )

    async def ajob_status(
        self,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        stdout_offset: int | None = None,
        stderr_offset: int | None = None,
        max_bytes: int | None = None,
    ) -> dict:
        return await self.arun_cli(
            commands.job_status(
                run_key, job_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset, max_bytes=max_bytes
            )
        )

    async def ajob_poll(
        self,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        stdout_offset: int | None = None,
        stderr_offset: int | None = None,
        max_bytes: int | None = None,
    ) -> dict:
        """:meth:`ajob_status` for pollers: concurrent polls of this host share one remote command.

        See :mod:`.batching`. Raises the same named exceptions as :meth:`ajob_status`.
        """
        from .batching import status_batcher

        request = commands.status_request(
            run_key, job_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset, max_bytes=max_bytes
        )
        if self.transport_kind != LOCAL and self._config is None:
            await run_sync(self.ssh_config)  # connection lookup is synchronous: off the event loop
        entry = await status_batcher(self).poll(request)
        if entry.get("status") is None and entry.get("error_type"):
            cls = _ERROR_TYPES.get(entry["error_type"], OrchesJobCommandError)
            where = self._config.host_id if self._config is not None else LOCAL
            raise cls(f"orchesjob status on {where} failed: {entry.get('error')}", remote_error=entry)
        return entry

    def job_status_many(self, run_keys: Sequence[str] = (), job_ids: Sequence[str] = ()) -> list[dict]:
        out = self.run_cli(commands.job_status_many(run_keys, job_ids))
        return out if isinstance(out, list) else [out]

    def job_result(self, run_key: str | None = None, job_id: str | None = None) -> dict:
        """The finished job (exit 1 = finished unsuccessfully is a result, not an error)."""
        return self.run_cli(commands.job_result(run_key, job_id), ok_codes=(0, 1))

    # Stopping is idempotent here: a job already in the state asked for (an earlier copy of
    # this call whose reply was lost and that was resent, or a second user) is returned as
    # it is instead of failing with InvalidState. Any other finished state still raises.
    # With job-lifecycle-v2 the runtime records ABORTING/CANCELLING first and answers
    # after at most ``wait`` seconds: the reply may still say ABORTING (poll until it is
    # terminal), or carry ``stop_too_late: true`` when the job finished on its own first.
    # A job that had already finished before the call is returned with ``already_finished``.
    def stop_job(
        self,
        verb: str,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        reason: str | None = None,
        grace: float = 5,
        wait: float | None = None,
    ) -> dict:
        """``abort`` or ``cancel`` a job; an already ABORTED/CANCELLED job is returned."""
        wait = _stop_wait(wait, grace, LIFECYCLE_V2 in self.capabilities())
        argv = commands.job_stop(verb, run_key, job_id, reason=reason, grace=grace, wait=wait)
        try:
            return self.run_cli(argv, timeout=None if wait is None else wait + 60)
        except OrchesJobInvalidState as exc:
            job_id, finished = _already_stopped(exc, _STOPPED[verb])
            return {**self.job_status(job_id=job_id), **({"already_finished": True} if finished else {})}

    async def astop_job(
        self,
        verb: str,
        run_key: str | None = None,
        job_id: str | None = None,
        *,
        reason: str | None = None,
        grace: float = 5,
        wait: float | None = None,
    ) -> dict:
        """Async twin of :meth:`stop_job`."""
        wait = _stop_wait(wait, grace, LIFECYCLE_V2 in await self.acapabilities())
        argv = commands.job_stop(verb, run_key, job_id, reason=reason, grace=grace, wait=wait)
        try:
            return await self.arun_cli(argv, timeout=None if wait is None else wait + 60)
        except OrchesJobInvalidState as exc:
            job_id, finished = _already_stopped(exc, _STOPPED[verb])
            return {**await self.ajob_status(job_id=job_id), **({"already_finished": True} if finished else {})}

    def abort_job(
        self, run_key: str | None = None, job_id: str | None = None, *, reason: str | None = None, grace: float = 5
    ) -> dict:
        """Stop the job's whole process tree (TERM, grace, KILL), recorded as ABORTED; see :meth:`stop_job`."""
        return self.stop_job("abort", run_key, job_id, reason=reason, grace=grace)

    async def aabort_job(
        self, run_key: str | None = None, job_id: str | None = None, *, reason: str | None = None, grace: float = 5
    ) -> dict:
        return await self.astop_job("abort", run_key, job_id, reason=reason, grace=grace)

    def cancel_job(
        self, run_key: str | None = None, job_id: str | None = None, *, reason: str | None = None, grace: float = 5
    ) -> dict:
        """Like :meth:`abort_job`, recording CANCELLED."""
        return self.stop_job("cancel", run_key, job_id, reason=reason, grace=grace)

    def unlock_job(self, run_key: str, *, reason: str | None = None, ttl: str | None = None) -> dict:
        return self.run_cli(commands.job_unlock(run_key, reason=reason, ttl=ttl))

    def rerun_job(self, run_key: str | None = None, job_id: str | None = None, *, reason: str | None = None) -> dict:
        # Every rerun is a new execution: never resent after it may have arrived.
        return self.run_cli(commands.job_rerun(run_key, job_id, reason=reason), resend_safe=False)

    def job_logs(self, run_key: str | None = None, job_id: str | None = None, *, stream: str = "stdout") -> bytes:
        """Raw log bytes of a job's stdout or stderr."""
        argv = commands.job_logs(run_key, job_id, stream=stream)
        transport = self.get_conn()
        self._ensure_compatible(transport)
        result = self._run_provisioned(transport, argv, None, 300)
        if result.exit_code != 0:
            check_result(argv, result, transport.host_id)
        return result.stdout

    # ---------------------------------------------------------- reservations
    def reserve(
        self,
        run_key: str,
        command: str | Sequence[str],
        *,
        not_before: datetime | str | int | float | None = None,
        expires_at: datetime | str | int | float | None = None,
        metadata: Mapping | None = None,
        start_options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        rearm: bool = False,
    ) -> dict:
        """Store a reservation (idempotent per run key); the host dispatches it at/after ``not_before``.

        ``env`` travels on stdin (``--env-file -``) like :meth:`start_job`'s; the
        host stores it apart from the reservation and never prints it. ``rearm``
        replaces a reservation that ended without dispatching a job (CANCELLED,
        EXPIRED, DISPATCH_FAILED) — what a cleared task needs; pending or dispatched
        ones are returned untouched.
        """
        if rearm:
            self.require(REARM, "re-arming a reservation that ended without a job")
        stdin = None
        if env:
            self.require(ENV_FILE, "passing env without exposing it on the host's process list")
            stdin = commands.env_document(env)
        argv = commands.reserve(
            run_key, command, not_before=not_before, expires_at=expires_at, metadata=metadata,
            start_options=start_options, env_file=stdin is not None, rearm=rearm,
        )  # fmt: skip
        return self.run_cli(argv, stdin=stdin)

    def reservation_status(
        self, run_key: str | None = None, reservation_id: str | None = None, *, include_job: bool = False
    ) -> dict:
        return self.run_cli(commands.reservation_status(run_key, reservation_id, include_job=include_job))

    async def areservation_status(
        self, run_key: str | None = None, reservation_id: str | None = None, *, include_job: bool = False
    ) -> dict:
        return await self.arun_cli(commands.reservation_status(run_key, reservation_id, include_job=include_job))

    async def areservation_poll(self, run_key: str) -> dict:
        """:meth:`areservation_status` for pollers: the polls of one host in a tick share one SSH session."""
        return await self._apoll(commands.reservation_status(run_key))

    def reservation_result(self, run_key: str | None = None, reservation_id: str | None = None) -> dict:
        return self.run_cli(commands.reservation_result(run_key, reservation_id), ok_codes=(0, 1))

    def cancel_reservation(
        self, run_key: str | None = None, reservation_id: str | None = None, *, reason: str | None = None
    ) -> dict:
        """Cancel a pending reservation, or the job it dispatched; idempotent like :meth:`abort_job`.

        ``reason`` is recorded (``cancel_reason``, or the job's ``abort_reason``) where the runtime
        has cancel reasons, and left out where it has not."""
        reason = self.if_capable(CANCEL_REASON, reason)
        try:
            return self.run_cli(commands.reservation_cancel(run_key, reservation_id, reason=reason))
        except OrchesJobInvalidState as exc:
            remote = exc.remote_error
            if remote.get("reservation_status") == "CANCELLED":
                return {"cancelled": True, **self.reservation_status(run_key, reservation_id)}
            job_error = _decode_error(str(remote.get("orchesjob_error", "")).encode())
            if remote.get("job_id") and job_error.get("status") == "CANCELLED":
                return {**self.job_status(job_id=remote["job_id"]), "cancelled": True}
            raise

    # ------------------------------------------------------------------ flows
    def start_flow(
        self,
        run_key: str,
        definition: Mapping | str,
        *,
        detach: bool = True,
        labels: Mapping[str, str] | None = None,
    ) -> dict:
        """Start (or resume) a flow run; a dict/JSON/YAML definition is sent on stdin. ``labels`` are
        left out on a runtime without ``flow-labels`` (they only help a sweep)."""
        text = definition if isinstance(definition, str) else json.dumps(dict(definition))
        # Exit 1 = the run (already) ended FAILED/CANCELLED: still the flow JSON.
        argv = commands.flow_start(run_key, flow_file="-", detach=detach, labels=self.if_capable(FLOW_LABELS, labels))
        return self.run_cli(argv, stdin=text.encode(), ok_codes=(0, 1))

    def start_flow_file(
        self, run_key: str, path_on_host: str, *, detach: bool = True, labels: Mapping[str, str] | None = None
    ) -> dict:
        labels = self.if_capable(FLOW_LABELS, labels)
        argv = commands.flow_start(run_key, flow_file=path_on_host, detach=detach, labels=labels)
        return self.run_cli(argv, ok_codes=(0, 1))

    def active_flows(self, labels: Mapping[str, str] | None = None) -> list[dict]:
        """Every PENDING/RUNNING flow run on the host, with its labels (``orchesjob-flow list --active``)."""
        self.require(FLOW_LABELS, "listing flow runs")
        return self.run_cli(commands.flows_list(active=True, labels=labels))["runs"]

    def flow_status(self, run_key: str) -> dict:
        return self.run_cli(commands.flow_status(run_key))

    async def aflow_status(self, run_key: str) -> dict:
        return await self.arun_cli(commands.flow_status(run_key))

    async def aflow_poll(self, run_key: str) -> dict:
        """:meth:`aflow_status` for pollers: the polls of one host in a tick share one SSH session."""
        return await self._apoll(commands.flow_status(run_key))

    async def _apoll(self, argv: list[str]) -> Any:
        if self.transport_kind == LOCAL:
            return await self.arun_cli(argv)
        from .batching import command_batcher

        if self._config is None:
            await run_sync(self.ssh_config)
        delays = backoff_delays(budget=self.connect_budget)
        while True:
            try:
                return await command_batcher(self).call(argv)
            except OrchesJobConnectionError as exc:
                await asyncio.sleep(self._retry_delay(exc, argv, True, delays))
            except OrchesJobError as exc:
                await asyncio.sleep(self._transient_delay(exc, delays))

    def cancel_flow(self, run_key: str, *, grace: float | None = None) -> dict:
        return self.run_cli(commands.flow_cancel(run_key, grace=grace))

    async def acancel_flow(self, run_key: str, *, grace: float | None = None) -> dict:
        return await self.arun_cli(commands.flow_cancel(run_key, grace=grace))

    def repair_flow(self, run_key: str, *, detach: bool = True) -> dict:
        return self.run_cli(commands.flow_repair(run_key, detach=detach), ok_codes=(0, 1))
