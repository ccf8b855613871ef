"""End-to-end: the example DAGs with ``dag.test()`` on real Airflow against the real sshd."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.provider.conftest import set_connection

E2E_DAGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dags")
CONN_ID = "orchesjob_e2e"


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated metadata DB in the session's AIRFLOW_HOME, with the e2e DAG folder."""
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = E2E_DAGS
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    p = subprocess.run([airflow, "db", "migrate"], capture_output=True, text=True, env=os.environ, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return os.environ["AIRFLOW_HOME"]


@pytest.fixture
def edge_home(ssh_server):
    return os.path.join(ssh_server.home, ".orchesjob-e2e", uuid.uuid4().hex)


@pytest.fixture
def e2e_conn(ssh_server, airflow_db, edge_home, monkeypatch):
    set_connection(CONN_ID, ssh_server, orchesjob_home=edge_home)
    monkeypatch.setenv("ORCHESJOB_EXAMPLE_SSH_CONN_ID", CONN_ID)
    monkeypatch.setenv("ORCHESJOB_EXAMPLE_POLL_INTERVAL", "0.5")
    return CONN_ID


@pytest.fixture
def dispatcher(ssh_server, edge_home):
    """The host's reservation dispatcher (as systemd would run it), for the reservation example."""
    start = (
        f"mkdir -p {edge_home} && ORCHESJOB_HOME={edge_home} nohup setsid ~/.local/bin/orchesjob-reserver run "
        f"--poll-interval 1 > {edge_home}/dispatcher.log 2>&1 < /dev/null &"
    )
    assert ssh_server.ssh(start).returncode == 0
    yield
    ssh_server.ssh(f"pkill -f 'orchesjob-reserver run' ; cat {edge_home}/dispatcher.log")


def load_dag(dag_id: str):
    """The DAG object from the e2e DAG folder (fresh import, so env changes apply)."""
    import importlib

    sys.path.insert(0, E2E_DAGS)
    for name in [m for m in sys.modules if m.startswith(("e2e_dags", "example_orchesjob", "_settings"))]:
        del sys.modules[name]
    module = importlib.import_module("e2e_dags")
    return {d.dag_id: d for d in vars(module).values() if hasattr(d, "dag_id") and hasattr(d, "test")}[dag_id]
