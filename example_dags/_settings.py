"""Where the example DAGs send their jobs.

ORCHESJOB_EXAMPLE_SSH_CONN_ID names an Airflow ``ssh`` connection to an edge host;
unset (the zero-setup demo) the edge CLIs run on the Airflow machine itself.
ORCHESJOB_EXAMPLE_HOSTS is a comma-separated host list for the fan-out example.
"""

from __future__ import annotations

import os

SSH_CONN_ID = os.environ.get("ORCHESJOB_EXAMPLE_SSH_CONN_ID") or None
HOSTS = [h for h in os.environ.get("ORCHESJOB_EXAMPLE_HOSTS", "127.0.0.1").split(",") if h]
POLL = float(os.environ.get("ORCHESJOB_EXAMPLE_POLL_INTERVAL", "1"))
# Everything the examples share: keep the DAG files about what they show.
COMMON = {"ssh_conn_id": SSH_CONN_ID, "poll_interval": POLL}
