"""The zero-setup demo: every example DAG, end to end, on real Airflow, with nothing configured.

Creates a temporary Airflow home and ORCHESJOB_HOME, starts the host-side
reservation dispatcher, runs each example DAG with ``dag.test()`` and prints a
short summary. By default the edge CLIs run on this machine (local transport);
``--ssh-conn-id ID`` runs the same DAGs against a real SSH host: define the
connection as an AIRFLOW_CONN_<ID> environment variable (the demo uses its own
temporary Airflow home) and have the runtime installed there for that user.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "example_dags")
DAGS = [
    "example_orchesjob_job",
    "example_orchesjob_reservation",
    "example_orchesjob_flow",
    "example_orchesjob_fanout",
    "example_orchesjob_sensor",
]


# The cron/timer way of running the dispatcher (`orchesjob-reserver run --once` every
# second), driven over SSH for the demo; a real host runs `orchesjob-reserver run` under systemd.
REMOTE_DISPATCHER = r"""
import sys, time
from airflow_provider_orchesjob.hooks import OrchesJobHook
transport = OrchesJobHook(sys.argv[1]).get_conn()
while True:
    try:
        print(transport.run(["orchesjob-reserver", "run", "--once"], timeout=60).stdout.decode(), flush=True)
    except Exception as exc:
        print(f"dispatcher: {exc}", flush=True)
    time.sleep(1)
"""


CHILD = r"""
import json, sys, importlib
sys.path.insert(0, sys.argv[3])
dag = importlib.import_module(sys.argv[1]).dag
dr = dag.test()
tasks = []
for ti in sorted(dr.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
    value = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index) if ti.state == "success" else None
    tasks.append({"task_id": ti.task_id, "map_index": ti.map_index, "state": str(ti.state), "xcom": value})
json.dump({"dag_id": dag.dag_id, "state": str(dr.state), "run_id": dr.run_id, "tasks": tasks}, open(sys.argv[2], "w"),
          default=str)
"""


def describe(value) -> str:
    if isinstance(value, dict) and "job_id" in value:
        v = value
        return f"job {v['job_id']} attempt {v.get('attempt_no')} {v.get('status')} exit {v.get('exit_code')}"
    if isinstance(value, dict) and "reservation_id" in value:
        return f"reservation {value['reservation_id']} {value.get('reservation_status')}"
    if isinstance(value, dict) and "steps" in value:
        steps = ", ".join(f"{s['id']}={s['status']}" for s in value["steps"])
        return f"flow {value.get('flow_id')} {value.get('status')}: {steps}"
    return "" if value is None else str(value)[:80]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ssh-conn-id", help="run against this Airflow ssh connection instead of locally")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="orchesjob-demo-")
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    bin_dir = os.path.dirname(sys.executable)
    env = dict(
        os.environ,
        AIRFLOW_HOME=os.path.join(work, "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=EXAMPLES,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        ORCHESJOB_HOME=os.path.join(work, "edge"),
        ORCHESJOB_EXAMPLE_POLL_INTERVAL="0.5",
        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
    )
    if args.ssh_conn_id:
        env["ORCHESJOB_EXAMPLE_SSH_CONN_ID"] = args.ssh_conn_id
    print(f"demo directory: {work}")
    print("preparing Airflow (metadata DB) ...", flush=True)
    with open(os.path.join(logs, "airflow-db-migrate.log"), "w") as log:
        subprocess.run([os.path.join(bin_dir, "airflow"), "db", "migrate"], env=env, stdout=log, stderr=log,
                       check=True)  # fmt: skip
    # What systemd would run on an edge host: dispatches reservations when due.
    if args.ssh_conn_id:
        argv = [sys.executable, "-c", REMOTE_DISPATCHER, args.ssh_conn_id]
    else:
        argv = [os.path.join(bin_dir, "orchesjob-reserver"), "run", "--poll-interval", "1"]
    dispatcher = subprocess.Popen(
        argv, env=env, stdout=open(os.path.join(logs, "reserver-dispatcher.log"), "w"), stderr=subprocess.STDOUT
    )
    results, failed = [], 0
    try:
        for dag_id in DAGS:
            t0 = time.monotonic()
            print(f"running {dag_id} ...", end=" ", flush=True)
            summary = os.path.join(work, f"{dag_id}.json")
            with open(os.path.join(logs, f"{dag_id}.log"), "w") as log:
                p = subprocess.run([sys.executable, "-c", CHILD, dag_id, summary, EXAMPLES], env=env, stdout=log,
                                   stderr=log)  # fmt: skip
            result = json.load(open(summary)) if p.returncode == 0 and os.path.exists(summary) else None
            state = result["state"] if result else f"crashed (exit {p.returncode})"
            failed += state != "success"
            print(f"{state} in {time.monotonic() - t0:.1f} s", flush=True)
            results.append((dag_id, result))
    finally:
        dispatcher.terminate()
        dispatcher.wait(timeout=30)

    print("\nsummary")
    for dag_id, result in results:
        print(f"  {dag_id}: {result['state'] if result else 'see log'}")
        for t in (result or {}).get("tasks", []):
            name = t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else "")
            print(f"    {name:22} {t['state']:8} {describe(t['xcom'])}")
    where = "on the SSH host's ORCHESJOB_HOME" if args.ssh_conn_id else env["ORCHESJOB_HOME"] + "/logs"
    print(f"\nremote job logs: {where}\nAirflow task logs: {logs}/<dag_id>.log")
    if not args.ssh_conn_id:
        print_hints(results, env["ORCHESJOB_HOME"], bin_dir)
    print(f"\nthe demo keeps everything in {work}; remove it with: rm -rf {shlex.quote(work)}")
    return 1 if failed else 0


def print_hints(results: list, home: str, bin_dir: str) -> None:
    """Commands to look at what the demo left on the (local) edge, each naming something it ran."""
    jobs = [
        (dag_id, t["task_id"], t["xcom"])
        for dag_id, result in results
        for t in (result or {}).get("tasks", [])
        if isinstance(t["xcom"], dict) and "run_key" in t["xcom"] and "job_id" in t["xcom"]
    ]
    prefix = f"ORCHESJOB_HOME={shlex.quote(home)} {shlex.quote(bin_dir)}/"
    print(f"\nthe jobs the demo ran (ORCHESJOB_HOME={home}):")
    for dag_id, task_id, job in jobs:
        print(f"  {dag_id}.{task_id}: run key {job['run_key']} -> {job.get('status')}")
    print("look at them (each command prints what the demo left):")
    if jobs:
        key = shlex.quote(jobs[0][2]["run_key"])
        print(f"  {prefix}orchesjob status --run-key {key}")
        print(f"  {prefix}orchesjob logs --run-key {key} --stream stdout")
    print(f"  {prefix}orchesjob-reserver list")
    print(f"  {prefix}orchesjob-flow list")


if __name__ == "__main__":
    sys.exit(main())
