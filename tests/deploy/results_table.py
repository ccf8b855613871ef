"""Print the ORCHESJOB_DEPLOY_RESULTS lines of one or more runs as docs/DEPLOYMENT_TESTS.md's results table.

python -m tests.deploy.results_table /tmp/results.jsonl [...]
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    print("| scenario | Airflow | executor | executions on the host | time to stop (s) | result | test (s) |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                executions = r["executions_on_host"]
                if isinstance(executions, dict):
                    values = set(executions.values())
                    executions = f"{len(executions)} tasks × {values.pop()}" if len(values) == 1 else executions
                stop = "—" if r["time_to_stop_s"] is None else r["time_to_stop_s"]
                print(f"| {r['scenario']} | {r['airflow']} | {r['executor']} | {executions} | {stop} | {r['result']} "
                      f"| {r['test_duration_s']} |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
