"""An edge host that only a jump host can reach, for the jump host (ProxyJump) tests.

Two real sshd, arranged so that the inner one (the edge host) is not reachable directly:

* a private network namespace (``unshare --net``: nothing but its own loopback) holds the
  inner sshd, on 127.0.0.2 there. From the machine's network it does not exist: the
  machine's own 127.0.0.2 has nothing listening on that port, a direct connect is refused.
* the jump host's sshd takes connections on the machine's loopback, but serves each one
  from inside the private namespace (``sshd -i``, one process per connection, as inetd
  starts it). The ``direct-tcpip`` channel a ProxyJump client asks it for is therefore
  opened in there, where the inner sshd listens.

So the only way to the inner sshd is a tunnel through the jump host — what a firewall
does for a real bastion — with nothing but util-linux (unshare, nsenter) and iproute2 (ip)
as root; no firewall tooling (iptables is not installed everywhere).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from tests.sshd_harness import SSHServer, _run, find_sshd


def missing_parts() -> list[str]:
    """What this machine lacks for a private network (beyond tests.sshd_harness.missing_parts)."""
    return [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]


class PrivateNetwork:
    """A network namespace with only a loopback, kept alive by a holder process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        # unshare enters the new namespace before it execs sleep: wait for that moment.
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == ours:
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise RuntimeError("unshare --net did not create a network namespace")
            time.sleep(0.01)
        self.launcher = ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net"]
        _run([*self.launcher, "ip", "link", "set", "lo", "up"])

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(timeout=10)


@dataclass
class JumpServer(SSHServer):
    """An sshd whose connections arrive on this machine's loopback and are served in ``launcher``'s network."""

    listener: socket.socket | None = None
    children: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation directory
        config = os.path.join(self.workdir, "sshd_config")
        with open(config, "w") as f:
            f.write(self.config_text())
        self.listener = socket.create_server((self.host, self.port))
        threading.Thread(target=self._serve, args=(config,), daemon=True).start()

    def _serve(self, config: str) -> None:
        argv = [*self.launcher, find_sshd(), "-i", "-f", config, "-E", self.log_file]
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # stop() closed the listener
            with conn:  # the child has its own copy of the socket
                self.children.append(subprocess.Popen(argv, stdin=conn, stdout=conn, stderr=subprocess.DEVNULL))

    def sessions_alive(self) -> int:
        """Connections whose sshd process is still serving them."""
        return sum(child.poll() is None for child in self.children)

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for child in self.children:
            if child.poll() is None:
                child.terminate()
                child.wait(timeout=10)
        super().stop()
