"""The sshd harness as bench/bench_fleet.py uses it: several hosts, one wheel, sshd's own limits."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from tests.conftest import require
from tests.sshd_harness import TEST_USER, SSHServer, build_wheel, find_sshd, missing_parts


def effective_config(server: SSHServer) -> dict[str, str]:
    """What sshd itself makes of the server's config (``sshd -T``), lower-case keys."""
    config = os.path.join(server.workdir, "sshd_config")
    out = subprocess.run([find_sshd(), "-T", "-f", config], capture_output=True, text=True, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_two_sshds_share_one_wheel_and_the_second_keeps_sshd_defaults():
    missing = missing_parts()
    require(not missing, ", ".join(missing))
    workdir = tempfile.mkdtemp(prefix="orchesjob-fleet-harness-")
    os.chmod(workdir, 0o755)
    servers: list[SSHServer] = []
    try:
        wheel = build_wheel(os.path.join(workdir, "wheel"))
        servers.append(SSHServer.create(os.path.join(workdir, "a"), user=TEST_USER, wheel=wheel))
        # The same user (the only one a test may claim); the fleet bench gives each host its own.
        servers.append(SSHServer.create(os.path.join(workdir, "b"), user=TEST_USER, wheel=wheel,
                                        raised_limits=False))  # fmt: skip
        raised, defaults = (effective_config(s) for s in servers)
        assert (raised["maxstartups"], raised["maxsessions"]) == ("200:30:400", "64")
        assert (defaults["maxstartups"], defaults["maxsessions"]) == ("10:30:100", "10")
        for server in servers:  # each reachable over its own sshd, the runtime installed from the one wheel
            p = server.ssh("~/.local/bin/orchesjob info >/dev/null && id -un")
            assert (p.returncode, p.stdout.strip()) == (0, server.user)
        assert servers[0].port != servers[1].port
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
