"""Transports: the one narrow interface through which the hook reaches a host.

``run(argv, stdin=None, timeout=None) -> CommandResult`` (``arun`` for async).
Three implementations:

* :class:`LocalTransport` — a subprocess on this machine (same-host deployments,
  the zero-setup demo);
* :class:`SSHTransport` — paramiko, configured by the providers-ssh ``SSHHook``,
  with stdin support;
* :class:`AsyncSSHTransport` — asyncssh for triggers: one connection per
  (connection id, host, jump hosts) shared by every trigger of a triggerer
  process, reconnecting with backoff and jitter up to a budget.

Both SSH transports reach the host through the connection's jump hosts, if any
(OpenSSH's ``ProxyJump``): each hop is a full SSH connection, its host key
verified, tunnelled through the previous one.

Transport failures raise :class:`OrchesJobConnectionError` with ``sent`` telling
whether the command may have reached the host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
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


# Keys a jump host given as a JSON object may set; the rest is inherited from the connection.
JUMP_HOST_KEYS = ("host", "port", "username", "login", "key_file", "known_hosts", "host_key")


def parse_hop(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (an IPv6 address in brackets: ``user@[::1]:2222``) -> (user, host, port)."""
    user, _, hostport = spec.strip().rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"jump host {spec!r}: expected [address]:port")
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        host, port = hostport, ""
    if not host:
        raise ValueError(f"jump host {spec!r} has no host name")
    if port and not port.isdigit():
        raise ValueError(f"jump host {spec!r}: the port must be a number")
    return user or None, host, int(port) if port else None


def jump_host_entries(value: Any) -> list[dict[str, Any]]:
    """The ``jump_hosts`` extra as a list of per-hop dicts, outermost first.

    Accepted: a list of ``[user@]host[:port]`` strings and/or objects (keys in
    :data:`JUMP_HOST_KEYS`), that list as JSON text, or the strings separated by
    commas or whitespace (what the connection form's text field holds).
    """
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [s for s in re.split(r"[,\s]+", text) if s]
    if not isinstance(value, list):
        raise ValueError(f"jump_hosts must be a list or a comma-separated string, got {type(value).__name__}")
    entries = []
    for item in value:
        if isinstance(item, str):
            user, host, port = parse_hop(item)
            entries.append({"host": host, "port": port, "username": user})
        elif isinstance(item, dict):
            unknown = sorted(set(item) - set(JUMP_HOST_KEYS))
            if unknown or not item.get("host"):
                raise ValueError(
                    f"jump host {item!r}: needs 'host'; allowed keys are {', '.join(JUMP_HOST_KEYS)}"
                    + (f" (unknown: {', '.join(unknown)})" if unknown else "")
                )
            own = {key: value for key, value in item.items() if key != "login"}
            entries.append({**own, "port": item.get("port"), "username": item.get("username") or item.get("login")})
        else:
            raise ValueError(f"jump host {item!r}: expected 'user@host:port' or an object")
    return entries


@dataclass
class SSHConfig:
    """Everything needed to open an SSH connection, parsed from an Airflow ``ssh`` connection.

    ``jump_hosts`` are the hops to the host, outermost first, each an ``SSHConfig``
    of its own (with ``jump_hosts`` empty and ``role`` "jump host").
    """

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
    jump_hosts: list[SSHConfig] = field(default_factory=list)
    role: str = "host"

    @property
    def host_id(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.username}@{self.host_id}" if self.username else self.host_id

    @property
    def label(self) -> str:
        """How errors name this hop: the host id, or "jump host user@host" for a hop on the way."""
        return self.host_id if self.role == "host" else f"{self.role} {self.address}"

    @property
    def route_label(self) -> str:
        """The host and the jump hosts on the way to it, for logs: ``edge1 via ops@bastion``."""
        via = ", ".join(hop.address for hop in self.jump_hosts)
        return f"{self.host_id} via {via}" if via else self.host_id

    @property
    def route(self) -> tuple[tuple[str, int, str | None], ...]:
        """The jump hosts as (host, port, user): part of what identifies a shared connection."""
        return tuple((hop.host, hop.port, hop.username) for hop in self.jump_hosts)

    @property
    def hops(self) -> list[SSHConfig]:
        """Every SSH connection to open, outermost first: the jump hosts, then the host."""
        return [*self.jump_hosts, self]

    def jump_host(self, entry: dict[str, Any]) -> SSHConfig:
        """A hop from one :func:`jump_host_entries` entry: its own user, port, key file and host key
        where given, the rest inherited from this (the target's) config. The target's ``host_key``
        is never inherited (it is another host's key); its ``known_hosts`` file is."""
        own_key = entry.get("key_file")
        return SSHConfig(
            conn_id=self.conn_id,
            host=entry["host"],
            port=int(entry.get("port") or 22),
            username=entry.get("username") or self.username,
            password=self.password,
            key_file=own_key or self.key_file,
            # A hop with its own key file does not also offer the connection's key text.
            private_key=None if own_key else self.private_key,
            passphrase=self.passphrase,
            host_key=entry.get("host_key"),
            known_hosts=entry.get("known_hosts") or self.known_hosts,
            no_host_key_check=self.no_host_key_check,
            conn_timeout=self.conn_timeout,
            keepalive_interval=self.keepalive_interval,
            role="jump host",
        )

    @classmethod
    def from_connection(cls, conn: Any, *, host: str | None = None) -> SSHConfig:
        """Build from an Airflow Connection (standard ``ssh`` extras plus the edge extras).

        Empty values count as unset: the connection form stores its empty fields that way.
        """
        extra = conn.extra_dejson or {}

        def flag(name: str) -> bool:
            return str(extra.get(name, "false")).lower() == "true"

        def text(name: str) -> str | None:
            value = extra.get(name)
            return None if value is None else (str(value).strip() or None)

        def number(name: str, default: float) -> float:
            value = extra.get(name)
            return float(value) if value not in (None, "") else default

        cfg = cls(
            conn_id=conn.conn_id,
            host=host or conn.host,
            port=int(conn.port or 22),
            username=conn.login or None,
            password=conn.password or None,
            key_file=text("key_file"),
            private_key=text("private_key"),
            passphrase=extra.get("private_key_passphrase") or None,
            host_key=text("host_key"),
            known_hosts=text("known_hosts"),
            # Verified by default, whatever the providers-ssh version defaults to.
            no_host_key_check=flag("no_host_key_check"),
            conn_timeout=number("conn_timeout", number("timeout", 10)),
            keepalive_interval=int(number("keepalive_interval", 30)),
            max_sessions=int(number("max_sessions", 8)),
            run_key_namespace=text("run_key_namespace"),
            edge=EdgeSettings(
                orchesjob_home=text("orchesjob_home"),
                bin_dir=text("orchesjob_bin_dir"),
                extra_path=extra.get("orchesjob_extra_path", commands.DEFAULT_EXTRA_PATH),
                provision=flag("provision_runtime"),
                python=extra.get("provision_python") or "python3",
            ),
        )
        cfg.jump_hosts = [cfg.jump_host(entry) for entry in jump_host_entries(extra.get("jump_hosts"))]
        return cfg


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
                f"{config.label} is not in known_hosts file {config.known_hosts}; refusing to connect "
                f"(add it with: ssh-keyscan -p {config.port} {config.host} >> {config.known_hosts})"
            )
        return next(iter(keys.values()))
    return None


class _Tunnel:
    """The socket a hop's connection runs over: a channel from jump host ``hop`` to ``next_hop``'s
    SSH port (what ``ssh -J`` opens), a fresh one for each connection attempt.

    providers-ssh before 6.0 makes three attempts whatever we ask, all over the one ``sock``
    it was given; a channel paramiko has closed cannot carry another. paramiko's Transport
    sets the timeout of its socket first thing, so a new channel is opened there when the
    last one is closed — and never behind a connection's back later.
    """

    def __init__(self, client: Any, hop: SSHConfig, next_hop: SSHConfig) -> None:
        self._client, self._hop, self._next_hop = client, hop, next_hop
        self._channel = self._open()

    def _open(self) -> Any:
        import paramiko

        hop, next_hop = self._hop, self._next_hop
        try:
            return self._client.get_transport().open_channel(
                "direct-tcpip", (next_hop.host, next_hop.port), ("127.0.0.1", 0), timeout=hop.conn_timeout
            )
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as exc:
            raise OrchesJobConnectionError(f"{hop.label} could not reach {next_hop.label}: {exc}") from exc

    def settimeout(self, timeout: float | None) -> None:
        if self._channel.closed:
            self._channel = self._open()
        self._channel.settimeout(timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class SSHTransport:
    """paramiko over the providers-ssh ``SSHHook``, with stdin, strict host keys and jump hosts."""

    def __init__(self, config: SSHConfig) -> None:
        self.config = config
        self.host_id = config.host_id
        self._client: Any = None
        self._jump_clients: list[Any] = []  # the hops' clients, closed with the host's

    def _connect(self) -> Any:
        """Connect hop by hop: each jump host's connection carries the next one's socket."""
        client, previous = None, None
        for hop in self.config.hops:
            sock = None
            if client is not None:
                self._jump_clients.append(client)
                sock = _Tunnel(client, previous, hop)
            client, previous = self._connect_hop(hop, sock), hop
        return client

    def _connect_hop(self, cfg: SSHConfig, sock: Any) -> Any:
        import paramiko
        from airflow.providers.ssh.hooks.ssh import SSHHook

        # Only constructor arguments every supported providers-ssh (>= 4.0.0) has; the
        # host-key settings are set as attributes afterwards, which every version reads
        # in get_conn(). Before 7.0 the SSHHook *default* is no_host_key_check=True and
        # there is no constructor argument for it: we always set it from our config
        # (False unless the connection says otherwise), so checks are never off by default.
        # A jump host is built from the same Airflow connection (so it inherits its password,
        # key text and options), with its own address, user and host key.
        hook = SSHHook(
            ssh_conn_id=cfg.conn_id, remote_host=cfg.host, port=cfg.port, username=cfg.username,
            conn_timeout=int(cfg.conn_timeout),
        )  # fmt: skip
        if cfg.role != "host" and cfg.key_file and cfg.private_key is None:
            # The hop has its own key file: the connection's key text is not offered to it.
            hook.key_file, hook.pkey = cfg.key_file, None
        hook.no_host_key_check = cfg.no_host_key_check
        hook.allow_host_key_change = False
        hook.host_key = None if cfg.no_host_key_check else _paramiko_host_key(cfg)
        hook.conn_retry_attempts = 1  # we retry ourselves, with jitter and a budget (read from 6.0 on)
        if sock is not None:
            hook.host_proxy = sock  # get_conn() connects over ``sock=host_proxy``
        try:
            return hook.get_conn()
        except paramiko.AuthenticationException as exc:
            raise OrchesJobAuthenticationError(f"SSH authentication to {cfg.label} failed: {exc}") from exc
        except paramiko.BadHostKeyException as exc:
            raise OrchesJobHostKeyError(f"host key of {cfg.label} does not match: {exc}") from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc) or "known_hosts" in str(exc):
                raise OrchesJobHostKeyError(
                    f"unknown host key for {cfg.label}; refusing to connect. Add it to known_hosts "
                    "(or the connection's host_key / known_hosts extra)"
                ) from exc
            raise OrchesJobConnectionError(f"SSH connection to {cfg.label} failed: {exc}") from exc
        except (OSError, EOFError) as exc:
            raise OrchesJobConnectionError(f"SSH connection to {cfg.label} failed: {exc}") from exc

    def _transport(self) -> Any:
        if self._client is not None:
            t = self._client.get_transport()
            if t is not None and t.is_active():
                return t
            self.close()
        try:
            self._client = self._connect()
        except BaseException:
            self.close()  # the jump hosts connected before the failing hop
            raise
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
        # The host first: its connection runs inside the jump hosts' tunnels.
        for client in [self._client, *reversed(self._jump_clients)]:
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing a dead client
                    pass
        self._client = None
        self._jump_clients = []


# ----------------------------------------------------------------- async SSH
def ssh_config_fallbacks(host: str, path: str = "~/.ssh/config") -> dict[str, str]:
    """What the Airflow user's ``~/.ssh/config`` gives a connection to ``host``, on both SSH paths.

    Exactly what providers-ssh's ``SSHHook`` (the workers' path) takes from it:
    the ``ProxyCommand`` and the first ``IdentityFile`` (used only when the
    connection names no key). The triggerer's asyncssh would otherwise apply the
    whole file (``HostName`` aliases, ``User``, ...), so a connection would reach
    another host, as another user, deferred than on a worker. Host, port, user and
    host keys come from the Airflow connection alone.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return {}
    import paramiko

    info = paramiko.SSHConfig.from_path(path).lookup(host)
    out = {}
    if info.get("proxycommand"):
        out["proxy_command"] = info["proxycommand"]
    if info.get("identityfile"):
        out["identity_file"] = info["identityfile"][0]
    return out


def _asyncssh_known_hosts(cfg: SSHConfig) -> Any:
    """asyncssh's ``known_hosts`` for one hop: None (no check), imported keys, a path, or () for its default."""
    import asyncssh

    if cfg.no_host_key_check:
        return None
    if cfg.host_key:
        return asyncssh.import_known_hosts(f"{cfg.host_id} {cfg.host_key}\n")
    if cfg.known_hosts:
        return os.path.expanduser(cfg.known_hosts)
    return ()  # asyncssh default: ~/.ssh/known_hosts


async def _asyncssh_connect(cfg: SSHConfig, tunnel: Any = None, previous: SSHConfig | None = None) -> Any:
    """One hop's asyncssh connection (through ``tunnel``, the connection to ``previous``, if any)."""
    import asyncssh

    kwargs: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "username": cfg.username,
        "connect_timeout": cfg.conn_timeout,
        "keepalive_interval": cfg.keepalive_interval,
        "agent_path": None,
        "config": None,  # only what the workers' path takes from ~/.ssh/config (ssh_config_fallbacks)
    }
    fallbacks = ssh_config_fallbacks(cfg.host)
    if tunnel is not None:
        kwargs["tunnel"] = tunnel
    elif "proxy_command" in fallbacks:
        kwargs["proxy_command"] = fallbacks["proxy_command"]
    kh = _asyncssh_known_hosts(cfg)
    if kh != ():
        kwargs["known_hosts"] = kh
    key_file = cfg.key_file or (None if cfg.private_key else fallbacks.get("identity_file"))
    if cfg.private_key:
        kwargs["client_keys"] = [asyncssh.import_private_key(cfg.private_key, cfg.passphrase)]
    elif key_file:
        kwargs["client_keys"] = [os.path.expanduser(key_file)]
        if cfg.passphrase:
            kwargs["passphrase"] = cfg.passphrase
    if cfg.password:
        kwargs["password"] = cfg.password
    try:
        return await asyncssh.connect(**kwargs)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise OrchesJobHostKeyError(
            f"unknown or mismatched host key for {cfg.label}; refusing to connect: {exc}"
        ) from exc
    except asyncssh.PermissionDenied as exc:
        raise OrchesJobAuthenticationError(f"SSH authentication to {cfg.label} failed: {exc}") from exc
    except asyncssh.ChannelOpenError as exc:
        # The previous hop could not open the tunnel (host unreachable from there, forwarding refused).
        raise OrchesJobConnectionError(
            f"{previous.label if previous else 'the jump host'} could not reach {cfg.label}: {exc}"
        ) from exc
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        raise OrchesJobConnectionError(f"SSH connection to {cfg.label} failed: {exc}") from exc


class _SharedConnection:
    """One asyncssh connection (and its jump hosts'), reconnected on demand, shared by all users of a key."""

    def __init__(self, config: SSHConfig) -> None:
        # asyncssh logs every channel at INFO: one line per poll per trigger is noise.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self.config = config
        # Set by the transports that use this connection: reads the Airflow connection
        # again, so a reconnect picks up rotated credentials.
        self.reload_config: Callable[[], Awaitable[SSHConfig]] | None = None
        self.conn: Any = None
        self.jumps: list[Any] = []  # the jump hosts' connections under ``conn``
        self.lock = asyncio.Lock()
        self.sessions = asyncio.Semaphore(max(1, config.max_sessions))
        self.connects = 0  # how many times a connection was opened (observable in tests)

    async def get(self) -> Any:
        async with self.lock:
            if self.conn is not None and not self.conn.is_closed():
                return self.conn
            self._close_jumps()  # a dead host connection's tunnels are of no further use
            if self.connects and self.reload_config is not None:
                try:
                    self.config = await self.reload_config()
                except Exception as exc:  # noqa: BLE001 - reconnect with what we have
                    logging.getLogger(__name__).warning("could not re-read the connection (%s)", exc)
            conn, previous = None, None
            try:
                for hop in self.config.hops:
                    if conn is not None:
                        self.jumps.append(conn)
                    conn, previous = await _asyncssh_connect(hop, conn, previous), hop
            except BaseException:
                self._close_jumps()
                raise
            self.conn = conn
            self.connects += 1
            return self.conn

    def _close_jumps(self) -> None:
        for jump in reversed(self.jumps):
            jump.abort()
        self.jumps = []

    async def drop(self, conn: Any) -> None:
        async with self.lock:
            if self.conn is conn and conn is not None:
                conn.abort()
                self.conn = None
                self._close_jumps()


# Per event loop (one per triggerer process): every trigger polling the same host
# shares one connection. Keyed by the loop object itself, weakly, so a finished loop
# takes its connections with it and a new loop never inherits a stale entry.
_POOL: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, _SharedConnection]] = (
    weakref.WeakKeyDictionary()
)


def shared_connection(config: SSHConfig) -> _SharedConnection:
    per_loop = _POOL.setdefault(asyncio.get_running_loop(), {})
    key = (config.conn_id, config.host, config.port, config.username, config.route)
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
