"""The matrix scenario: a small real Airflow deployment of this venv's version, started by pid.

SQLite metadata DB, a scheduler (SequentialExecutor on 2.x, LocalExecutor on 3.x), on 3.x an
api-server serving the execution API only, and a real ``airflow triggerer`` process. The DAG
(tests/matrix/dags) is serialized with ``airflow dags reserialize`` instead of running a DAG
processor. The connection to the real sshd is stored in the metadata DB with ``airflow
connections add``, as users keep theirs (not an AIRFLOW_CONN_* variable, which would bypass the
triggerer's connection lookup through the Task SDK on 3.x).

Only collected when ORCHESJOB_MATRIX=1 (scripts/test_matrix.sh; see tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata

import pytest

from tests.sshd_harness import free_port

DAG_ID = "orchesjob_matrix"
CONN_ID = "orchesjob_matrix"
DAGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dags")
BIN = os.path.dirname(sys.executable)
AIRFLOW_VERSION = metadata.version("apache-airflow")
AIRFLOW_MAJOR = int(AIRFLOW_VERSION.split(".")[0])
NOTES: list[str] = []  # timings, shown at the end of the run (docs/AIRFLOW_VERSIONS.md quotes them)


def note(text: str) -> None:
    NOTES.append(f"Airflow {AIRFLOW_VERSION}: {text}")


def pytest_terminal_summary(terminalreporter):
    if NOTES:
        terminalreporter.section("matrix timings")
        for line in NOTES:
            terminalreporter.write_line(line)


@dataclass
class Deployment:
    home: str
    env: dict[str, str]
    db: str
    local_home: str
    edge_home: str  # ORCHESJOB_HOME of the sshd user for the ssh tasks
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    run_id: str = ""

    def airflow(self, *args: str, timeout: float = 300) -> str:
        p = subprocess.run(
            [os.path.join(BIN, "airflow"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert p.returncode == 0, f"airflow {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        return p.stdout

    def start(self, name: str, *args: str) -> None:
        log = os.path.join(self.home, f"{name}.log")
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                [os.path.join(BIN, "airflow"), *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.logs[name] = log

    def log(self, name: str) -> str:
        with open(self.logs[name], errors="replace") as f:
            return f.read()

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            assert p.poll() is None, f"{name} exited ({p.returncode}):\n{self.log(name)[-4000:]}"

    def stop(self) -> None:
        # Each process leads its own session: its group holds what it forked (executor workers,
        # uvicorn, the triggerer's runner), and nothing else.
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def query(self, sql: str, *params) -> list[tuple]:
        con = sqlite3.connect(self.db, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def ti(self, task_id: str, *, dag_id: str = DAG_ID, run_id: str | None = None, map_index: int = -1) -> dict:
        rows = self.query(
            "SELECT state, try_number, next_method FROM task_instance "
            "WHERE dag_id=? AND task_id=? AND run_id=? AND map_index=?",
            dag_id, task_id, run_id or self.run_id, map_index,
        )  # fmt: skip
        if not rows:
            return {"state": None}
        state, try_number, next_method = rows[0]
        return {"state": state, "try_number": try_number, "next_method": next_method}

    def mark_failed(self, task_id: str, *, dag_id: str = DAG_ID, run_id: str | None = None, map_index: int = -1):
        """The state change the UI's / REST API's "mark failed" makes to a task instance."""
        con = sqlite3.connect(self.db, timeout=30)
        try:
            with con:
                con.execute(
                    "UPDATE task_instance SET state='failed', end_date=CURRENT_TIMESTAMP "
                    "WHERE dag_id=? AND task_id=? AND run_id=? AND map_index=?",
                    (dag_id, task_id, run_id or self.run_id, map_index),
                )
        finally:
            con.close()

    def trigger(self, dag_id: str) -> str:
        run_id = "matrix-" + uuid.uuid4().hex[:8]
        self.airflow("dags", "trigger", dag_id, "--run-id", run_id)
        return run_id

    def restart(self, name: str, *args: str, timeout: float = 20) -> str:
        """Stop a process the way a service manager does (SIGTERM to its group, SIGKILL after
        ``timeout``), start it again; says how it went."""
        p = self.procs[name]
        down = time.monotonic()
        os.killpg(p.pid, signal.SIGTERM)
        how = "stopped on SIGTERM"
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            how = f"still running {timeout:.0f}s after SIGTERM, SIGKILLed"
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        with open(self.logs[name], "a") as f:
            f.write(f"\n===== restarted (exit {p.returncode}) =====\n")
        log = self.logs[name]
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                [os.path.join(BIN, "airflow"), *args], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        return f"{how}, restarted after {time.monotonic() - down:.1f}s"

    def task_log(self, task_id: str, run_id: str | None = None) -> str:
        """Every task log file of the task in this run (or ``run_id``; all tries), concatenated."""
        texts = []
        for root, _dirs, files in os.walk(os.path.join(self.home, "logs")):
            if f"task_id={task_id}" in root and (run_id or self.run_id) in root:
                for f in sorted(files):
                    with open(os.path.join(root, f), errors="replace") as fh:
                        texts.append(fh.read())
        return "\n".join(texts)


def wait_for(what: str, predicate, timeout: float, deployment: Deployment | None = None, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if deployment is not None:
            deployment.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def deployment(ssh_server):
    """The deployment, with one run of the matrix DAG triggered."""
    started = time.monotonic()
    base = tempfile.mkdtemp(prefix="orchesjob-matrix-")
    home = os.path.join(base, "airflow")
    os.makedirs(home)
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST"))}
    env.update(
        PATH=BIN + os.pathsep + env.get("PATH", "/usr/bin:/bin"),
        AIRFLOW_HOME=home,
        AIRFLOW__CORE__DAGS_FOLDER=DAGS,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__EXECUTOR="SequentialExecutor" if AIRFLOW_MAJOR == 2 else "LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="8",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
        # 2.x parses the DAG folder in the scheduler: once is enough (the DAG was serialized already).
        AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="600",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        AIRFLOW__API__PORT=str(api_port),
        # Log servers on free ports: other Airflow deployments may run on this machine.
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
        ORCHESJOB_MATRIX_SSH_CONN=CONN_ID,
        ORCHESJOB_MATRIX_LOCAL_HOME=os.path.join(base, "edge-local"),
    )
    secret_key = "AIRFLOW__WEBSERVER__SECRET_KEY" if AIRFLOW_MAJOR == 2 else "AIRFLOW__API__SECRET_KEY"
    env[secret_key] = secrets.token_urlsafe(32)
    d = Deployment(
        home=home,
        env=env,
        db=os.path.join(home, "airflow.db"),
        local_home=os.path.join(base, "edge-local"),
        edge_home=os.path.join(ssh_server.home, ".orchesjob-tests", "matrix-" + uuid.uuid4().hex),
    )
    try:
        d.airflow("db", "migrate", timeout=600)
        conn = {
            "conn_type": "ssh",
            "host": ssh_server.host,
            "port": ssh_server.port,
            "login": ssh_server.user,
            "extra": ssh_server.connection_extra(orchesjob_home=d.edge_home),
        }
        d.airflow("connections", "add", CONN_ID, "--conn-json", json.dumps(conn))
        d.airflow("dags", "reserialize")
        if AIRFLOW_MAJOR >= 3:
            d.start("api-server", "api-server", "--apps", "execution", "--port", str(api_port), "--workers", "1",
                    "--host", "127.0.0.1")  # fmt: skip
        d.start("triggerer", "triggerer")
        d.start("scheduler", "scheduler")
        d.run_id = d.trigger(DAG_ID)
        note(f"deployment up (migrate, connection, serialize, processes, trigger) in {time.monotonic() - started:.0f}s")
        yield d
    finally:
        d.stop()
        note(f"deployment lifetime {time.monotonic() - started:.0f}s; logs in {home}")
