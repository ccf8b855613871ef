"""The matrix scenario's DAG: deferred jobs on the real sshd and on the local transport.

Parsed by the Airflow processes of tests/matrix/test_triggerer.py, which set the environment
variables read here. Per transport: ``*_ok`` finishes on its own (the triggerer's event resumes
the task on a worker), ``*_kill`` runs until the test marks the deferred task failed.
"""

from __future__ import annotations

import os
from datetime import datetime

from airflow import DAG

from airflow_provider_orchesjob.operators import OrchesJobStartOperator

CONN_ID = os.environ.get("ORCHESJOB_MATRIX_SSH_CONN", "orchesjob_matrix")
LOCAL_HOME = os.environ.get("ORCHESJOB_MATRIX_LOCAL_HOME")
# Long enough that the scheduler has processed the deferring try's exit before the trigger fires:
# Airflow 3.0.6 fails a task whose stale "success" event from deferring arrives after the resumed
# try was queued (seen with a 4 s job: "finished with state success, but the task instance's state
# attribute is queued"), an Airflow race, not the provider's.
OK_COMMAND = "echo matrix-start; sleep 12; echo matrix-done"
KILL_COMMAND = "echo matrix-start; sleep 600"

with DAG(dag_id="orchesjob_matrix", start_date=datetime(2026, 1, 1), schedule=None, catchup=False) as dag:
    for transport, edge in (
        ("ssh", {"ssh_conn_id": CONN_ID}),
        ("local", {"ssh_conn_id": None, "orchesjob_home": LOCAL_HOME}),
    ):
        for kind, command in (("ok", OK_COMMAND), ("kill", KILL_COMMAND)):
            OrchesJobStartOperator(
                task_id=f"{transport}_{kind}", command=command, poll_interval=1.0, kill_grace=1.0, **edge
            )

# Triggered by its own test: a mapped task on the real sshd. One map index is marked failed
# (only its job stops); then the triggerer is restarted, which cancels the other's trigger
# without any user action: that job must keep running and the task succeed on the new triggerer.
with DAG(dag_id="orchesjob_matrix_mapped", start_date=datetime(2026, 1, 1), schedule=None, catchup=False) as mapped_dag:
    OrchesJobStartOperator.partial(task_id="mapped", ssh_conn_id=CONN_ID, poll_interval=1.0, kill_grace=1.0).expand(
        command=[f"echo map-{i}; sleep 45; echo map-{i}-done" for i in range(2)]
    )
