#!/usr/bin/env python3
"""Benchmark: where the host CPU of one remote start goes, layer by layer, against the shell wrapper's.

Every call opens its own SSH connection (paramiko, key auth, verified host key), as each
worker task's ``execute()`` does, runs its command(s), reads the output and closes. The
host side (sshd, its sessions, the commands, and what they leave running) is one cgroup,
read before and after each call; nothing else on the machine is counted. Calls are
sequential (the CPU of one call, not contention) and the variants are interleaved call by
call, so that a noisy moment hits all of them. Medians per call.

Variants, each a layer of a start:

* ``ssh true``: a connection and one session running ``true`` — what any remote call costs;
* ``shell wrapper``: a connection with the two sessions of providers-ssh's start — an OS
  probe (``uname -s``) then a ``bash`` that detaches ``true`` with ``nohup`` and prints its
  pid (the shape of its wrapper, not its exact text);
* ``python -I -S -c pass``: the runtime's interpreter with nothing imported;
* ``python -I`` + ``json, sqlite3, argparse``: what any JSON-and-SQLite CLI imports;
* ``orchesjob start -- true``: a real start (one command, the capability check folded in),
  counted until its supervisor has recorded the outcome and exited.

    python bench/bench_start_floor.py [--calls 40] [--json PATH]

Needs root (creates the test user, a cgroup; starts sshd).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchssh import HostCPU, kill_user_processes, remove_dirs, setup_bench_process  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from edge_runtime import __version__  # noqa: E402

MAJOR = __version__.split(".")[0]  # as the hook sends it


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40, help="calls per variant (median reported)")
    ap.add_argument("--user", default="orchesjob-floor", help="dedicated test user on the host (created)")
    ap.add_argument("--json", help="also write the raw figures to this file")
    return ap.parse_args()


def variants(python: str, orchesjob: str) -> dict[str, list[str]]:
    """Name -> the commands one call runs, each in its own session of one connection."""
    return {
        "ssh true": ["true"],
        "shell wrapper (uname + nohup bash)": [
            "uname -s",
            "bash -c 'nohup true > /dev/null 2>&1 < /dev/null & echo $!'",
        ],
        "python -I -S -c pass": [f"{python} -I -S -c pass"],
        "python -I: import json, sqlite3, argparse": [f"{python} -I -c 'import json, sqlite3, argparse'"],
        "orchesjob start -- true": [f"{orchesjob} start --expect-major={MAJOR} --run-key floor-{{i}} -- true"],
    }


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("needs root (the harness creates a user and starts sshd)", file=sys.stderr)
        return 2
    airflow_home = setup_bench_process("bench-start-floor", args.user)
    import paramiko

    from tests.sshd_harness import SSHServer, missing_parts

    missing = missing_parts()
    if missing:
        print(f"missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="bench-start-floor-")
    host_cpu = HostCPU(f"bench-start-floor-{os.getpid()}")
    server = None
    try:
        server = SSHServer.create(workdir)
        host_cpu.add(server.process.pid)
        orchesjob = os.path.join(server.home, ".local", "bin", "orchesjob")  # the pipx install
        with open(orchesjob) as f:
            python = f.readline().strip().removeprefix("#!")
        cases = variants(python, orchesjob)

        def call(commands: list[str], i: int) -> float:
            before = host_cpu.seconds()
            client = paramiko.SSHClient()
            client.load_host_keys(server.known_hosts)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            client.connect(server.host, port=server.port, username=server.user, key_filename=server.key_file,
                           allow_agent=False, look_for_keys=False, timeout=10)  # fmt: skip
            try:
                for command in commands:
                    _, out, err = client.exec_command(command.format(i=i))
                    out.read()
                    if out.channel.recv_exit_status() != 0:
                        raise RuntimeError(f"{command}: {err.read().decode(errors='replace')}")
            finally:
                client.close()
            # What the call left running (a supervisor, a detached job) is part of its cost.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                names = subprocess.run(["pgrep", "-l", "-u", server.user], capture_output=True, text=True).stdout
                if all(line.split()[-1] == "sshd" for line in names.splitlines()):
                    break
                time.sleep(0.005)
            time.sleep(0.02)  # sshd's own post-session bookkeeping
            return (host_cpu.seconds() - before) * 1000

        for commands in cases.values():  # warm-up: page cache, bytecode, the state home
            call(commands, -1)
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for i in range(args.calls):
            for name, commands in cases.items():
                cpu[name].append(call(commands, i))
        rows = {name: statistics.median(values) for name, values in cpu.items()}
        base = rows["ssh true"]
        print(f"\nHost CPU per call (median of {args.calls}; sshd + sessions + commands + what they leave running)\n")
        print("| call | host CPU (ms) | above `ssh true` (ms) | / shell wrapper |")
        print("|---|---:|---:|---:|")
        wrapper = rows["shell wrapper (uname + nohup bash)"]
        for name, value in rows.items():
            print(f"| {name} | {value:.1f} | {value - base:.1f} | {value / wrapper:.2f}x |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"calls": args.calls, "python": python, "median_ms": rows, "all_ms": cpu}, f, indent=2)
    finally:
        if server is not None:
            server.stop()
            kill_user_processes(server.user)
        host_cpu.remove()
        remove_dirs(workdir, airflow_home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
