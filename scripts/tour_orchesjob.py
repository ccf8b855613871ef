"""A two-minute tour of the `orchesjob` CLI (the edge job runner), with nothing configured.

Everything happens in a temporary ORCHESJOB_HOME through the real ``orchesjob``
command, exactly as an Airflow task would drive it over SSH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

BIN = os.path.join(os.path.dirname(sys.executable), "orchesjob")


def oj(*args: str) -> dict:
    p = subprocess.run([BIN, *args], capture_output=True, text=True, env=ENV)
    if p.returncode not in (0, 1):
        raise SystemExit(f"orchesjob {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return json.loads(p.stdout)


def say(text: str) -> None:
    print(f"\n== {text}")


home = tempfile.mkdtemp(prefix="orchesjob-demo-")
ENV = dict(os.environ, ORCHESJOB_HOME=home)

say(f"state directory: {home}")
job = oj("start", "--run-key", "demo:nightly-import", "--", "sh", "-c",
         "for i in 1 2 3; do echo step $i; sleep 0.4; done")  # fmt: skip
print(f"started job {job['job_id']} (attempt {job['attempt_no']}, status {job['status']})")

say("a retry of the same start (e.g. after an SSH drop) returns the same job, no second copy")
again = oj("start", "--run-key", "demo:nightly-import", "--", "sh", "-c", "echo never runs")
print(f"job {again['job_id']} existing={again['existing']} accepted={again['accepted']}")

say("polling: one call returns the status and the next chunk of the log")
offset = 0
while True:
    st = oj("status", "--run-key", "demo:nightly-import", "--stdout-offset", str(offset))
    chunk = st["stdout_chunk"]
    for line in chunk["data"].splitlines():
        print(f"  remote stdout: {line}")
    offset = chunk["next_offset"]
    if st["status"] not in ("STARTING", "RUNNING"):
        break
    time.sleep(0.2)
print(f"finished: {st['status']} exit_code={st['exit_code']}")

say("Airflow retries use --reuse-policy failed-only: a SUCCEEDED attempt is adopted, not re-run")
retry = oj("start", "--run-key", "demo:nightly-import", "--reuse-policy", "failed-only", "--", "true")
print(f"job {retry['job_id']} existing={retry['existing']} status={retry['status']}")

say("a failed attempt may be retried: a new attempt under the same run key")
oj("start", "--run-key", "demo:flaky", "--sync", "--", "sh", "-c", "echo boom >&2; exit 3")
second = oj("start", "--run-key", "demo:flaky", "--reuse-policy", "failed-only", "--sync", "--", "true")
print(f"attempt {second['attempt_no']} -> {second['status']}")

say("abort stops the whole process group (SIGTERM, grace, SIGKILL)")
oj("start", "--run-key", "demo:long", "--", "sh", "-c", "sleep 60 & sleep 60")
ab = oj("abort", "--run-key", "demo:long", "--reason", "demo", "--grace-seconds", "1")
print(f"status={ab['status']} sent_term_target={ab['sent_term_target']}")

say("summary")
for key in ("demo:nightly-import", "demo:flaky", "demo:long"):
    for j in oj("status", "--run-key", key, "--all"):
        print(f"  {key:22} attempt {j['attempt_no']}  {j['status']:9}  job {j['job_id']}")
print(f"\nlogs are in {home}/logs; try: ORCHESJOB_HOME={home} {BIN} logs --run-key demo:flaky --stream stderr")
