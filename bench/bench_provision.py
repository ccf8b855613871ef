"""Benchmark: a CLI call run from the provisioned runtime archive vs from a pipx-style install.

An agentless host (connection extra ``provision_runtime``) runs every call as
``python3 -I orchesjob.pyz orchesjob ...``: the modules load from a zip, and
zipimport never caches bytecode, which is why the install script adds the host
interpreter's. This times, interleaved round by round on this machine (no SSH:
the host's share of a call):

* ``status --run-key K`` of a finished job, of a running one, and
  ``start --sync`` — from a venv holding a wheel of this checkout (what ``pipx
  install`` makes; the reference), from the archive as the install script
  leaves it, and from the uploaded archive alone (sources only), all run by the
  same interpreter;
* building the archive on the worker (once per process) and installing it with
  the same install script the hook sends, through a local ``/bin/sh``.

Figures are medians over ``--rounds``; ratios are against the pipx-style
install measured in the same run.

    python bench/bench_provision.py --rounds 40
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_startup import install, timed  # noqa: E402 - a sibling script, not a package

CALLS = ("status", "status (running job)", "start --sync")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    from airflow_provider_orchesjob.hooks import commands, provision

    work = tempfile.mkdtemp(prefix="orchesjob-bench-provision-")
    pipx_bin = install(ROOT, work, "pipx")
    python = os.path.join(os.path.dirname(pipx_bin), "python")

    t0 = time.perf_counter()
    archive = provision.build_archive.__wrapped__()
    build_ms = (time.perf_counter() - t0) * 1000
    host_home = os.path.join(work, "host-home")
    os.makedirs(host_home)
    script = commands.install_runtime_script(archive.directory, archive.sha256, python=python)
    t0 = time.perf_counter()
    subprocess.run(["/bin/sh", "-c", script], input=archive.data, env={"HOME": host_home, "PATH": os.environ["PATH"]},
                   check=True)  # fmt: skip
    install_ms = (time.perf_counter() - t0) * 1000
    pyz = os.path.join(host_home, commands.RUNTIME_CACHE, archive.directory, commands.ARCHIVE)
    sources_only = os.path.join(work, "sources-only.pyz")
    with open(sources_only, "wb") as f:
        f.write(archive.data)

    tools = {"pipx": [pipx_bin], "archive": [python, "-I", pyz, "orchesjob"],
             "sources only": [python, "-I", sources_only, "orchesjob"]}  # fmt: skip
    envs = {name: dict(os.environ, ORCHESJOB_HOME=os.path.join(work, "home-" + name)) for name in tools}
    for name, argv in tools.items():
        subprocess.run([*argv, "start", "--run-key", "k", "--sync", "--", "true"], env=envs[name], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([*argv, "start", "--run-key", "r", "--", "sleep", "3600"], env=envs[name], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    samples: dict[str, list[float]] = {}
    try:
        for i in range(args.rounds):
            for name, argv in tools.items():
                env = envs[name]
                samples.setdefault(f"{name}: status", []).append(timed([*argv, "status", "--run-key", "k"], env))
                samples.setdefault(f"{name}: status (running job)", []).append(
                    timed([*argv, "status", "--run-key", "r"], env)
                )
                samples.setdefault(f"{name}: start --sync", []).append(
                    timed([*argv, "start", "--run-key", f"s{i}", "--sync", "--", "true"], env)
                )
    finally:
        for name, argv in tools.items():
            subprocess.run([*argv, "abort", "--run-key", "r", "--grace-seconds", "1"], env=envs[name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    rows = []
    for call in CALLS:
        pipx = med[f"pipx: {call}"]
        rows.append({"call": call, "pipx_ms": round(pipx, 1), "archive_ms": round(med[f"archive: {call}"], 1),
                     "ratio": round(med[f"archive: {call}"] / pipx, 2),
                     "sources_only_ms": round(med[f"sources only: {call}"], 1),
                     "sources_only_ratio": round(med[f"sources only: {call}"] / pipx, 2)})  # fmt: skip
    out = {"rounds": args.rounds, "archive_bytes": len(archive.data), "build_ms": round(build_ms, 1),
           "install_ms": round(install_ms, 1), "rows": rows}  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"archive {out['archive_bytes']} bytes; built in {out['build_ms']} ms, installed (sh, sha256 check, "
          f"bytecode) in {out['install_ms']} ms")  # fmt: skip
    print(f"medians over {args.rounds} interleaved rounds; ratios vs pipx")
    print(f"{'call':<24}{'pipx ms':>10}{'archive ms':>12}{'ratio':>7}{'sources only ms':>17}{'ratio':>7}")
    for r in rows:
        print(f"{r['call']:<24}{r['pipx_ms']:>10}{r['archive_ms']:>12}{r['ratio']:>7}"
              f"{r['sources_only_ms']:>17}{r['sources_only_ratio']:>7}")  # fmt: skip


if __name__ == "__main__":
    main()
