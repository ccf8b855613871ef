"""A real OpenSSH server on loopback for integration tests and benchmarks.

* a dedicated unprivileged user (created if missing; needs root),
* an sshd on 127.0.0.1 at an ephemeral port with its own host key, key-only auth,
  VERBOSE logging to a file (so tests can count connections and sessions),
* a client key pair and a real known_hosts file,
* the edge runtime pipx-installed for that user from a wheel of this checkout
  (so it lands in ~/.local/bin, which non-interactive SSH does not put on PATH),
  or, with ``install_runtime=False``, a user with no runtime at all (its own name,
  :data:`BARE_USER`, so that it never shares a home with a pipx-installed one),
  as the hook's provisioning of agentless hosts expects.

Several servers (a fleet of "hosts", each its own user) share one wheel: build it
once with :func:`build_wheel` and pass it to each :meth:`SSHServer.create`.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_USER = os.environ.get("ORCHESJOB_TEST_SSH_USER", "orchesjob-it")
BARE_USER = TEST_USER + "-bare"  # never has a pipx install: the agentless-host tests


def find_sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if os.path.exists(p)), None)


def missing_parts(*, pipx: bool = True) -> list[str]:
    """What this machine lacks to run the harness (empty list = ready); ``pipx``: to install the runtime."""
    missing = []
    if find_sshd() is None:
        missing.append("openssh-server (sshd)")
    if shutil.which("ssh-keygen") is None:
        missing.append("ssh-keygen")
    if pipx and shutil.which("pipx") is None:
        missing.append("pipx")
    if os.geteuid() != 0:
        missing.append("root (to create the test user)")
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{argv} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return p


def _sbin(tool: str) -> str:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or tool


def ensure_user(name: str = TEST_USER) -> pwd.struct_passwd:
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run([_sbin("useradd"), "--create-home", "--shell", "/bin/sh", name])
    # "!" (locked) makes sshd refuse key logins without PAM; "*" = no password, not locked.
    _run([_sbin("usermod"), "-p", "*", name])
    return pwd.getpwnam(name)


def build_wheel(dest: str) -> str:
    os.makedirs(dest, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", dest, ROOT])
    wheels = sorted(f for f in os.listdir(dest) if f.endswith(".whl"))
    os.chmod(dest, 0o755)
    for f in wheels:
        os.chmod(os.path.join(dest, f), 0o644)
    return os.path.join(dest, wheels[-1])


def _user_env(user: pwd.struct_passwd) -> dict[str, str]:
    return {
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }


def as_user(user: pwd.struct_passwd, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return _run([_sbin("runuser"), "-u", user.pw_name, "--", *argv], env=_user_env(user), cwd="/", **kw)


DIST = "airflow-provider-orchesjob"
# What the tests leave in the dedicated user's home; removed at start so that a machine
# reused between runs starts from the same state as a fresh one.
STATE_DIRS = (
    ".orchesjob-tests",
    ".orchesjob-e2e",
    ".orchesjob-demo",
    ".local/share/orchesjob",
    ".local/share/orchesjob-flow",
    ".cache/orchesjob",  # runtime archives the hook provisioned
)


def reset_user_state(user: pwd.struct_passwd) -> None:
    # Jobs of an interrupted earlier run (supervisors are detached by design) would hold the files open.
    subprocess.run(["pkill", "-KILL", "-u", user.pw_name], capture_output=True)
    for rel in STATE_DIRS:
        shutil.rmtree(os.path.join(user.pw_dir, rel), ignore_errors=True)


def pipx_install(user: pwd.struct_passwd, wheel: str) -> None:
    """Install this checkout's wheel for ``user`` and prove the installed runtime is this code.

    ``pipx install --force`` keeps an installed copy whose version number equals the wheel's
    (pip calls it "already satisfied"), and a checkout does not bump its version per commit:
    on a machine reused between runs the tests would silently exercise an older runtime.
    So the old copy is removed first, and the result is checked against the checkout.
    """
    subprocess.run(
        [_sbin("runuser"), "-u", user.pw_name, "--", "pipx", "uninstall", DIST],
        env=_user_env(user), cwd="/", capture_output=True, timeout=120,
    )  # fmt: skip
    as_user(user, ["pipx", "install", wheel], timeout=600)
    verify_runtime(user)


def uninstall_runtime(user: pwd.struct_passwd) -> None:
    """Leave ``user`` without any edge runtime (a machine reused between runs may hold an old install)."""
    if shutil.which("pipx"):
        subprocess.run(
            [_sbin("runuser"), "-u", user.pw_name, "--", "pipx", "uninstall", DIST],
            env=_user_env(user), cwd="/", capture_output=True, timeout=120,
        )  # fmt: skip
    for tool in ("orchesjob", "orchesjob-reserver", "orchesjob-flow"):
        if os.path.lexists(path := os.path.join(user.pw_dir, ".local", "bin", tool)):
            raise RuntimeError(f"{path} is still there after pipx uninstall: {user.pw_name} is not a bare user")


def verify_runtime(user: pwd.struct_passwd) -> None:
    """Fail unless ``~/.local/bin/orchesjob`` of ``user`` reports this checkout's version and capabilities."""
    sys.path.insert(0, ROOT)
    try:
        import edge_runtime
    finally:
        sys.path.remove(ROOT)
    binary = os.path.join(user.pw_dir, ".local", "bin", "orchesjob")
    info = json.loads(as_user(user, [binary, "info"], timeout=60).stdout)
    want = {"version": edge_runtime.__version__, "capabilities": sorted(edge_runtime.CAPABILITIES)}
    got = {"version": info.get("version"), "capabilities": sorted(info.get("capabilities", []))}
    if got != want:
        raise RuntimeError(f"the runtime installed for {user.pw_name} is not this checkout's: {got} != {want}")


@dataclass
class SSHServer:
    workdir: str
    user: str
    home: str
    port: int
    key_file: str
    known_hosts: str
    host_key_line: str  # "ssh-ed25519 AAAA..."
    log_file: str
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"
    # Prefix of the commands that must run in the server's network (sshd itself, ``ssh()``),
    # e.g. ``nsenter --net=...`` for a server only reachable through a jump host.
    launcher: list[str] = field(default_factory=list)

    # sshd's own defaults (MaxStartups 10:30:100, MaxSessions 10) when False: what a real host has.
    raised_limits: bool = True

    @classmethod
    def create(
        cls,
        workdir: str,
        *,
        install_runtime: bool = True,
        user: str = TEST_USER,
        host: str = "127.0.0.1",
        launcher: list[str] | None = None,
        bare: bool = False,
        wheel: str | None = None,
        raised_limits: bool = True,
    ) -> SSHServer:
        """Keys, known_hosts and a started sshd for ``user`` on ``host``.

        ``install_runtime``: reset the user's state and install this checkout's runtime for it
        (False: the user needs none, or another server of the same user installed it).
        ``bare``: a user with no runtime at all (e.g. :data:`BARE_USER`): its state is reset and
        any install of the runtime removed. ``wheel``: a wheel from :func:`build_wheel` (readable
        by ``user``) to install instead of building one; ``raised_limits``: see the attribute.
        """
        os.makedirs(workdir, exist_ok=True)
        os.chmod(workdir, 0o755)
        account = ensure_user(user)
        if install_runtime or bare:
            reset_user_state(account)
        if bare:
            uninstall_runtime(account)
        for name in ("host_ed25519", "client_ed25519"):
            path = os.path.join(workdir, name)
            if not os.path.exists(path):
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path, "-C", name])
        auth = os.path.join(workdir, "authorized_keys")
        shutil.copy(os.path.join(workdir, "client_ed25519.pub"), auth)
        os.chmod(auth, 0o644)
        with open(os.path.join(workdir, "host_ed25519.pub")) as f:
            host_key_line = " ".join(f.read().split()[:2])
        port = free_port()
        known_hosts = os.path.join(workdir, "known_hosts")
        with open(known_hosts, "w") as f:
            # Two names for the same host, so fan-out tests can address "two" hosts.
            names = [host, "localhost"] if host == "127.0.0.1" else [host]
            f.writelines(f"[{name}]:{port} {host_key_line}\n" for name in names)
        server = cls(
            workdir=workdir,
            user=account.pw_name,
            home=account.pw_dir,
            port=port,
            key_file=os.path.join(workdir, "client_ed25519"),
            known_hosts=known_hosts,
            host_key_line=host_key_line,
            log_file=os.path.join(workdir, "sshd.log"),
            host=host,
            launcher=list(launcher or []),
            raised_limits=raised_limits,
        )
        if install_runtime and wheel is not None:
            pipx_install(account, wheel)
        elif install_runtime:
            # Outside the (root-only) pytest tmp dir: the test user must read the wheel.
            wheels = tempfile.mkdtemp(prefix="orchesjob-wheel-")
            try:
                pipx_install(account, build_wheel(wheels))
            finally:
                shutil.rmtree(wheels, ignore_errors=True)
        server.start()
        return server

    def config_text(self) -> str:
        return "\n".join(
            [
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {self.workdir}/host_ed25519",
                f"PidFile {self.workdir}/sshd.pid",
                f"AuthorizedKeysFile {self.workdir}/authorized_keys",
                f"AllowUsers {self.user}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # The key files live under /tmp (world-writable): relax the path check only.
                "StrictModes no",
                "LogLevel VERBOSE",
                *(["MaxStartups 200:30:400", "MaxSessions 64"] if self.raised_limits else []),
                "ClientAliveInterval 0",
                "",
            ]
        )

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
        config = os.path.join(self.workdir, "sshd_config")
        with open(config, "w") as f:
            f.write(self.config_text())
        self.process = subprocess.Popen(
            [*self.launcher, find_sshd(), "-D", "-f", config, "-E", self.log_file],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.process.stderr.read().decode()} {self.log()}")
            if self.listening():
                return
            time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def listening(self) -> bool:
        if self.launcher:  # not reachable from here: sshd's own log line tells
            return f"Server listening on {self.host} port {self.port}" in self.log()
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        # Leftover jobs of the test user (supervisors are detached by design).
        subprocess.run(["pkill", "-KILL", "-u", self.user], capture_output=True)

    def log(self) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def connections(self) -> int:
        """Connections authenticated so far (one 'Accepted publickey' line each)."""
        return self.count(r"Accepted publickey for ")

    def sessions(self) -> int:
        """Command sessions started so far."""
        return self.count(r"Starting session: command ")

    def kill_sessions(self) -> int:
        """SIGKILL the per-connection sshd processes: every open connection drops."""
        out = subprocess.run(["pgrep", "-f", f"sshd: {self.user}"], capture_output=True, text=True).stdout.split()
        for pid in out:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(out)

    def connection_extra(self, **overrides) -> dict:
        extra = {"key_file": self.key_file, "known_hosts": self.known_hosts, "conn_timeout": 10}
        extra.update(overrides)
        return extra

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        """Run a command over the real ssh client (for checks on the host side)."""
        return subprocess.run(
            [*self.launcher, "ssh", "-p", str(self.port), "-i", self.key_file,
             "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
             f"{self.user}@{self.host}", command],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
