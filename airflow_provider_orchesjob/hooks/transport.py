"""Transports: the one narrow interface through which the hook reaches a host.

``run(argv, stdin=None, timeout=None) -> CommandResult`` (``arun`` for async).
Three implementations:

* :class:`LocalTransport` — a subprocess on this machine (same-host deployments,
  the zero-setup demo);
* :class:`SSHTransport` — paramiko, configured by the providers-ssh ``SSHHook``,
  with stdin support;
* :class:`AsyncSSHTransport` — asyncssh for triggers: one connection per
  (connection id, host) shared by every trigger of a triggerer process,
  reconnecting with backoff and jitter up to a budget.

Transport failures raise :class:`OrchesJobConnectionError` with ``sent`` telling
whether the command may have reached the host.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import select
import shutil
import subprocess
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..exceptions import OrchesJobAuthenticationError, OrchesJobConnectionError, OrchesJobHostKeyError
from . import commands

if TYPE_CHECKING:
    from .provision import RuntimeArchive


class CommandResult(NamedTuple):
    exit_code: int
    stdout: bytes
    stderr: bytes


def backoff_delays(base: float = 0.5, cap: float = 10.0, budget: float = 60.0) -> Iterator[float]:
    """Exponential backoff with full jitter, until the summed delays reach ``budget``."""
    spent, attempt = 0.0, 0
    while spent < budget:
        delay = min(budget - spent, random.uniform(0, min(cap, base * 2**attempt)))
        spent += delay
        attempt += 1
        yield delay


@dataclass
class EdgeSettings:
    """Where the edge CLIs live on the host and which state they use.

    With ``provision`` (connection extra ``provision_runtime``) the CLIs run from
    the runtime archive the hook uploads itself (see :mod:`.provision`), with the
    interpreter ``python`` (extra ``provision_python``); ``bin_dir`` and
    ``extra_path`` are then unused.
    """

    orchesjob_home: str | None = None
    bin_dir: str | None = None
    extra_path: str = commands.DEFAULT_EXTRA_PATH
    provision: bool = False
    python: str = "python3"
    archive: RuntimeArchive | None = None  # None: this provider's own (provision.build_archive())

    @property
    def env(self) -> dict[str, str]:
        return {"ORCHESJOB_HOME": self.orchesjob_home} if self.orchesjob_home else {}

    def runtime_archive(self) -> RuntimeArchive:
        """The archive a provisioned host runs (built on first use, once per process)."""
        if self.archive is None:
            from .provision import build_archive

            self.archive = build_archive()
        return self.archive

    def command_line(self, argv: Sequence[str]) -> str:
        if self.provision:
            directory = self.runtime_archive().directory
            return commands.provisioned_command_line(argv, directory=directory, python=self.python, env=self.env)
        return commands.remote_command_line(argv, env=self.env, bin_dir=self.bin_dir, extra_path=self.extra_path)


@dataclass
class SSHConfig:
    """Everything needed to open an SSH connection, parsed from an Airflow ``ssh`` connection."""

    conn_id: str
    host: str
    port: int = 22
    username: str | None = None
    password: str | None = None
    key_file: str | None = None
    private_key: str | None = None  # key text (extra ``private_key``)
    passphrase: str | None = None
    host_key: str | None = None  # "ssh-ed25519 AAAA..." (extra ``host_key``)
    known_hosts: str | None = None  # path (extra ``known_hosts``)
    no_host_key_check: bool = False
    conn_timeout: float = 10.0
    keepalive_interval: int = 30
    max_sessions: int = 8
    run_key_namespace: str | None = None  # extra ``run_key_namespace``: keeps two Airflows' run keys apart
    edge: EdgeSettings = field(default_factory=EdgeSettings)

    @property
    def host_id(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @classmethod
    def from_connection(cls, conn: Any, *, host: str | None = None) -> SSHConfig:
        """Build from an Airflow Connection (standard ``ssh`` extras plus the edge extras)."""
        extra = conn.extra_dejson or {}

        def flag(name: str) -> bool:
            return str(extra.get(name, "false")).lower() == "true"

        return cls(
            conn_id=conn.conn_id,
            host=host or conn.host,
            port=int(conn.port or 22),
            username=conn.login or None,
            password=conn.password or None,
            key_file=extra.get("key_file"),
            private_key=extra.get("private_key"),
            passphrase=extra.get("private_key_passphrase"),
            host_key=extra.get("host_key"),
            known_hosts=extra.get("known_hosts"),
            # Verified by default, whatever the providers-ssh version defaults to.
            no_host_key_check=flag("no_host_key_check"),
            conn_timeout=float(extra.get("conn_timeout", extra.get("timeout", 10))),
            keepalive_interval=int(extra.get("keepalive_interval", 30)),
            max_sessions=int(extra.get("max_sessions", 8)),
            run_key_namespace=extra.get("run_key_namespace") or None,
            edge=EdgeSettings(
                orchesjob_home=extra.get("orchesjob_home"),
                bin_dir=extra.get("orchesjob_bin_dir"),
                extra_path=extra.get("orchesjob_extra_path", commands.DEFAULT_EXTRA_PATH),
                provision=flag("provision_runtime"),
                python=extra.get("provision_python") or "python3",
            ),
        )


# ---------------------------------------------------------------------- local
class LocalTransport:
    """Runs the edge CLIs as subprocesses on this machine."""

    def __init__(self, edge: EdgeSettings | None = None) -> None:
        self.edge = edge or EdgeSettings()
        self.host_id = "localhost"

    def _argv(self, argv: Sequence[str]) -> list[str]:
        program = argv[0]
        if self.edge.bin_dir:
            program = os.path.join(self.edge.bin_dir, program)
        elif shutil.which(program) is None:
            # The provider package ships the edge runtime too: use this environment's copy.
            sibling = os.path.join(os.path.dirname(sys.executable), program)
            if os.path.exists(sibling):
                program = sibling
        return [program, *argv[1:]]

    def run(self, argv: Sequence[str], stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        env = dict(os.environ, **self.edge.env)
        try:
            p = subprocess.run(self._argv(argv), input=stdin, capture_output=True, env=env, timeout=timeout)
        except FileNotFoundError:
            return CommandResult(127, b"", f"{argv[0]}: not found".encode())
        except subprocess.TimeoutExpired as exc:
            raise OrchesJobConnectionError(f"{argv[0]} timed out after {timeout} s", sent=True) from exc
        return CommandResult(p.returncode, p.stdout, p.stderr)

    async def arun(
        self, argv: Sequence[str], stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        env = dict(os.environ, **self.edge.env)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        except FileNotFoundError:
            return CommandResult(127, b"", f"{argv[0]}: not found".encode())
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise OrchesJobConnectionError(f"{argv[0]} timed out after {timeout} s", sent=True) from None
        return CommandResult(proc.returncode or 0, out, err)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ sync SSH
def _paramiko_host_key(config: SSHConfig) -> Any:
    """The expected host key from ``host_key`` or a ``known_hosts`` file, or None."""
    import paramiko

    if config.host_key:
        parts = config.host_key.split()
        if len(parts) < 2:
            raise OrchesJobHostKeyError(f"host_key extra must be '<type> <base64>', got {config.host_key!r}")
        return paramiko.PKey.from_type_string(parts[0], __import__("base64").b64decode(parts[1]))
    if config.known_hosts:
        keys = paramiko.HostKeys(os.path.expanduser(config.known_hosts)).lookup(config.host_id)
        if not keys:
            raise OrchesJobHostKeyError(
                f"host {config.host_id} is not in known_hosts file {config.known_hosts}; refusing to connect "
                f"(add it with: ssh-keyscan -p {config.port} {config.host} >> {config.known_hosts})"
            )
        return next(iter(keys.values()))
    return None


class SSHTransport:
    """paramiko over the providers-ssh ``SSHHook``, with stdin and strict host keys."""

    def __init__(self, config: SSHConfig) -> None:
        self.config = config
        self.host_id = config.host_id
        self._client: Any = None

    def _connect(self) -> Any:
        import paramiko
        from airflow.providers.ssh.hooks.ssh import SSHHook

        cfg = self.config
        # Only constructor arguments every supported providers-ssh (>= 4.0.0) has; the
        # host-key settings are set as attributes afterwards, which every version reads
        # in get_conn(). Before 7.0 the SSHHook *default* is no_host_key_check=True and
        # there is no constructor argument for it: we always set it from our config
        # (False unless the connection says otherwise), so checks are never off by default.
        hook = SSHHook(ssh_conn_id=cfg.conn_id, remote_host=cfg.host, port=cfg.port, conn_timeout=int(cfg.conn_timeout))
        hook.no_host_key_check = cfg.no_host_key_check
        hook.allow_host_key_change = False
        if not cfg.no_host_key_check:
            expected = _paramiko_host_key(cfg)
            if expected is not None:
                hook.host_key = expected
        hook.conn_retry_attempts = 1  # we retry ourselves, with jitter and a budget (read from 6.0 on)
        try:
            return hook.get_conn()
        except paramiko.AuthenticationException as exc:
            raise OrchesJobAuthenticationError(f"SSH authentication to {cfg.host_id} failed: {exc}") from exc
        except paramiko.BadHostKeyException as exc:
            raise OrchesJobHostKeyError(f"host key of {cfg.host_id} does not match: {exc}") from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc) or "known_hosts" in str(exc):
                raise OrchesJobHostKeyError(
                    f"unknown host key for {cfg.host_id}; refusing to connect. Add it to known_hosts "
                    "(or the connection's host_key / known_hosts extra)"
                ) from exc
            raise OrchesJobConnectionError(f"SSH connection to {cfg.host_id} failed: {exc}") from exc
        except (OSError, EOFError) as exc:
            raise OrchesJobConnectionError(f"SSH connection to {cfg.host_id} failed: {exc}") from exc

    def _transport(self) -> Any:
        if self._client is not None:
            t = self._client.get_transport()
            if t is not None and t.is_active():
                return t
            self.close()
        self._client = self._connect()
        return self._client.get_transport()

    def run(self, argv: Sequence[str], stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        return self.run_line(self.config.edge.command_line(argv), stdin=stdin, timeout=timeout)

    def run_line(self, line: str, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        """Run one shell command line (built by :mod:`.commands`) in a new session."""
        import paramiko

        transport = self._transport()
        try:
            chan = transport.open_session(timeout=self.config.conn_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise OrchesJobConnectionError(f"cannot open SSH session on {self.host_id}: {exc}") from exc
        # From here the host may run the command even if we never hear back.
        sent = True
        try:
            chan.exec_command(line)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            return self._collect(chan, timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise OrchesJobConnectionError(f"SSH session to {self.host_id} lost: {exc}", sent=sent) from exc
        finally:
            chan.close()

    def _collect(self, chan: Any, timeout: float | None) -> CommandResult:
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if chan.closed and not chan.exit_status_ready():
                raise OSError("channel closed without an exit status")
            if deadline is not None and time.monotonic() > deadline:
                raise OSError(f"no exit status within {timeout} s")
            select.select([chan], [], [], 0.05)
        # Drain what arrived together with the exit status.
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        status = chan.recv_exit_status()
        if status == -1:  # paramiko's "closed without an exit status": the connection went away
            raise OSError("SSH channel closed without an exit status")
        return CommandResult(status, bytes(out), bytes(err))

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a dead client
                pass
            self._client = None


# ----------------------------------------------------------------- async SSH
class _SharedConnection:
    """One asyncssh connection, reconnected on demand, shared by all users of a key."""

    def __init__(self, config: SSHConfig) -> None:
        # asyncssh logs every channel at INFO: one line per poll per trigger is noise.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self.config = config
        # Set by the transports that use this connection: reads the Airflow connection
        # again, so a reconnect picks up rotated credentials.
        self.reload_config: Callable[[], Awaitable[SSHConfig]] | None = None
        self.conn: Any = None
        self.lock = asyncio.Lock()
        self.sessions = asyncio.Semaphore(max(1, config.max_sessions))
        self.connects = 0  # how many times a connection was opened (observable in tests)

    def _known_hosts(self) -> Any:
        import asyncssh

        cfg = self.config
        if cfg.no_host_key_check:
            return None
        if cfg.host_key:
            return asyncssh.import_known_hosts(f"{cfg.host_id} {cfg.host_key}\n")
        if cfg.known_hosts:
            return os.path.expanduser(cfg.known_hosts)
        return ()  # asyncssh default: ~/.ssh/known_hosts

    async def get(self) -> Any:
        async with self.lock:
            if self.conn is not None and not self.conn.is_closed():
                return self.conn
            import asyncssh

            if self.connects and self.reload_config is not None:
                try:
                    self.config = await self.reload_config()
                except Exception as exc:  # noqa: BLE001 - reconnect with what we have
                    logging.getLogger(__name__).warning("could not re-read the connection (%s)", exc)
            cfg = self.config
            kwargs: dict[str, Any] = {
                "host": cfg.host,
                "port": cfg.port,
                "username": cfg.username,
                "connect_timeout": cfg.conn_timeout,
                "keepalive_interval": cfg.keepalive_interval,
                "agent_path": None,
            }
            kh = self._known_hosts()
            if kh != ():
                kwargs["known_hosts"] = kh
            if cfg.private_key:
                kwargs["client_keys"] = [asyncssh.import_private_key(cfg.private_key, cfg.passphrase)]
            elif cfg.key_file:
                kwargs["client_keys"] = [os.path.expanduser(cfg.key_file)]
                if cfg.passphrase:
                    kwargs["passphrase"] = cfg.passphrase
            if cfg.password:
                kwargs["password"] = cfg.password
            try:
                self.conn = await asyncssh.connect(**kwargs)
            except asyncssh.HostKeyNotVerifiable as exc:
                raise OrchesJobHostKeyError(
                    f"unknown or mismatched host key for {cfg.host_id}; refusing to connect: {exc}"
                ) from exc
            except asyncssh.PermissionDenied as exc:
                raise OrchesJobAuthenticationError(f"SSH authentication to {cfg.host_id} failed: {exc}") from exc
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                raise OrchesJobConnectionError(f"SSH connection to {cfg.host_id} failed: {exc}") from exc
            self.connects += 1
            return self.conn

    async def drop(self, conn: Any) -> None:
        async with self.lock:
            if self.conn is conn and conn is not None:
                conn.abort()
                self.conn = None


# Per event loop (one per triggerer process): every trigger polling the same host
# shares one connection. Keyed by the loop object itself, weakly, so a finished loop
# takes its connections with it and a new loop never inherits a stale entry.
_POOL: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, _SharedConnection]] = (
    weakref.WeakKeyDictionary()
)


def shared_connection(config: SSHConfig) -> _SharedConnection:
    per_loop = _POOL.setdefault(asyncio.get_running_loop(), {})
    key = (config.conn_id, config.host, config.port, config.username)
    shared = per_loop.get(key)
    if shared is None:
        shared = per_loop[key] = _SharedConnection(config)
    return shared


class AsyncSSHTransport:
    """asyncssh transport over the per-process shared connection."""

    def __init__(self, config: SSHConfig, reload_config: Callable[[], Awaitable[SSHConfig]] | None = None) -> None:
        self.config = config
        self.host_id = config.host_id
        self.reload_config = reload_config

    async def arun(
        self, argv: Sequence[str], stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        return await self.arun_line(self.config.edge.command_line(argv), stdin=stdin, timeout=timeout)

    async def arun_line(self, line: str, stdin: bytes | None = None, timeout: float | None = None) -> CommandResult:
        """Run one shell command line (built by :mod:`.commands`) in a session of the shared connection."""
        import asyncssh

        shared = shared_connection(self.config)
        if shared.reload_config is None:
            shared.reload_config = self.reload_config
        conn = await shared.get()
        async with shared.sessions:
            try:
                # run() feeds ``input`` (if any) and then EOF, like the sync path.
                result = await asyncio.wait_for(conn.run(line, input=stdin, check=False, encoding=None), timeout)
            except asyncssh.ChannelOpenError as exc:
                await shared.drop(conn)
                raise OrchesJobConnectionError(f"cannot open SSH session on {self.host_id}: {exc}") from exc
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                await shared.drop(conn)
                raise OrchesJobConnectionError(f"SSH session to {self.host_id} lost: {exc}", sent=True) from exc
        if result.exit_status is None:
            await shared.drop(conn)
            raise OrchesJobConnectionError(f"SSH session to {self.host_id} ended without exit status", sent=True)
        return CommandResult(result.exit_status, result.stdout or b"", result.stderr or b"")
