"""A real Airflow deployment on loopback for the deployment tests (tests/deploy).

What runs, each as its own process started by pid, logging to a file under the work dir:

* PostgreSQL (Debian's package): a throwaway cluster made by ``initdb`` as an
  unprivileged OS user, ``postgres`` itself on a free loopback port;
* Redis (Debian's ``redis-server``) on a free loopback port, no persistence;
* Airflow (the dev venv's): ``airflow db migrate``, then ``scheduler``,
  ``dag-processor``, ``api-server`` and two ``triggerer`` processes, and two
  ``airflow celery worker`` processes. The executor setting is
  ``LocalExecutor,CeleryExecutor``: tasks run on the LocalExecutor unless their
  DAG sets ``executor="CeleryExecutor"``, so one deployment serves both variants.

The edge host is the real sshd of ``tests/sshd_harness.py``. The SSH connection
lives in the metadata DB (so rotating its key is a REST call, as in production).
Every Airflow process gets ``ORCHESJOB_DEPLOY_PROCESS=<name>`` and a
``hostname_callable`` that returns it: task instances and triggerer jobs then say
which process ran them.

Everything is bounded in time and torn down by pid (process group + descendants).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
DAGS = os.path.join(HERE, "dags")
SUPPORT = os.path.join(HERE, "support")
BIN_DIR = os.path.dirname(sys.executable)
AIRFLOW = os.path.join(BIN_DIR, "airflow")
CONN_ID = "orchesjob_deploy"
# The DAGs of dags/deploy_dags.py; the deployment is ready once all are parsed.
DAG_IDS = (
    "deploy_fanout", "deploy_worker_local", "deploy_worker_celery", "deploy_worker_slow_poll", "deploy_job",
    "deploy_three", "deploy_execution_timeout", "deploy_trigger_timeout", "deploy_reservation", "deploy_flow",
    "deploy_sweep",
)  # fmt: skip
ADMIN = ("admin", "deploy-tests-admin")
# The OS user owning the throwaway Postgres cluster (initdb refuses root); Debian's package creates it.
PG_OS_USER = os.environ.get("ORCHESJOB_DEPLOY_PG_USER", "postgres")
TRIGGERER_HEALTH_CHECK_THRESHOLD = 15  # seconds; Airflow's default is 30
TI_HEARTBEAT_TIMEOUT = 20  # seconds; Airflow's default is 300
DEPLOY_TIMEOUT = 900  # pytest-timeout of each scenario, including the session fixture's start (~30 s here)


class DeploymentDied(RuntimeError):
    """A process of the deployment exited: waiting longer cannot help."""


def wait_for(what: str, condition: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except DeploymentDied:
            raise
        except Exception as exc:  # noqa: BLE001 - the condition may fail until the part is up
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last_exc}" if last_exc else "")
            )
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(tool: str) -> str | None:
    for d in sorted(os.listdir("/usr/lib/postgresql"), reverse=True) if os.path.isdir("/usr/lib/postgresql") else []:
        path = os.path.join("/usr/lib/postgresql", d, "bin", tool)
        if os.path.exists(path):
            return path
    return shutil.which(tool)


def missing_parts() -> list[str]:
    """What this machine lacks to run a deployment (empty = ready)."""
    missing = []
    if pg_bin("initdb") is None or pg_bin("postgres") is None:
        missing.append("postgresql (initdb, postgres)")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if not os.path.exists(AIRFLOW):
        missing.append("airflow in the dev venv")
    for module, what in (
        ("psycopg2", "psycopg2-binary"),
        ("asyncpg", "asyncpg"),
        ("airflow.providers.celery", "apache-airflow-providers-celery"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{what} (pip install -e '.[deploy]')")
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        missing.append(f"OS user {PG_OS_USER!r} for the Postgres cluster")
    if os.geteuid() != 0:
        missing.append("root (to run Postgres as an unprivileged user)")
    return missing


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = children_map(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def signal_tree(pid: int, sig: int) -> list[int]:
    """Send ``sig`` to ``pid``, its process group (it is a session leader) and every descendant."""
    pids = [pid, *descendants(pid)]
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    return pids


@dataclass
class Component:
    """One long-running process of the deployment, started in its own session."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: str
    user: str | None = None
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts + 1} at {time.strftime('%H:%M:%S')}: {self.argv}\n".encode())
            log.flush()
            kw: dict[str, Any] = {}
            if self.user:
                u = pwd.getpwnam(self.user)
                kw = {"user": u.pw_uid, "group": u.pw_gid, "extra_groups": []}
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=os.path.dirname(self.log_path), **kw,
            )  # fmt: skip
        self.starts += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> list[int]:
        """``sig`` to the whole process tree (e.g. SIGKILL, SIGSTOP, SIGCONT)."""
        return signal_tree(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole tree and reap it (a crash, not a shutdown)."""
        pids = self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        wait_for(f"{self.name} tree gone", lambda: not any(alive(p) for p in pids), 30, 0.1)

    def stop(self, grace: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            pids = [self.pid, *descendants(self.pid)]
            signal_tree(self.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            for p in [self.pid, *pids]:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


@dataclass
class Deployment:
    workdir: str
    ssh_server: Any  # tests.sshd_harness.SSHServer
    edge_home: str = ""
    pg_port: int = 0
    redis_port: int = 0
    api_port: int = 0
    components: dict[str, Component] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    _token: str | None = None
    notes: list[dict] = field(default_factory=list)  # measurements of the current scenario (conftest records them)
    _session: requests.Session = field(default_factory=requests.Session)

    # ------------------------------------------------------------------ setup
    def start(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.edge_home = os.path.join(self.ssh_server.home, ".orchesjob-deploy", uuid.uuid4().hex[:12])
        assert self.ssh_server.ssh(f"mkdir -p {self.edge_home}/counts").returncode == 0
        self.pg_port, self.redis_port, self.api_port = free_port(), free_port(), free_port()
        self.airflow_home = os.path.join(self.workdir, "airflow-home")
        os.makedirs(self.airflow_home, exist_ok=True)
        self.env = self._airflow_env()
        t0 = time.monotonic()
        self._start_postgres()
        self._start_redis()
        self.timings["postgres+redis"] = time.monotonic() - t0
        t0 = time.monotonic()
        self.airflow(["db", "migrate"], timeout=600)
        self.timings["db migrate"] = time.monotonic() - t0
        t0 = time.monotonic()
        self._add_connection()
        for name, argv in self._airflow_components():
            comp = Component(name, argv, {**self.env, "ORCHESJOB_DEPLOY_PROCESS": name}, self._log(name))
            self.components[name] = comp
            comp.start()
        self.wait_ready()
        self.timings["airflow processes ready"] = time.monotonic() - t0

    def _log(self, name: str) -> str:
        return os.path.join(self.workdir, f"{name}.log")

    def _start_postgres(self) -> None:
        pgdir = os.path.join(self.workdir, "pg")
        os.makedirs(pgdir)
        u = pwd.getpwnam(PG_OS_USER)
        os.chown(pgdir, u.pw_uid, u.pw_gid)
        data = os.path.join(pgdir, "data")
        p = subprocess.run(
            ["runuser", "-u", PG_OS_USER, "--", pg_bin("initdb"), "-D", data, "-U", "airflow", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True, timeout=120, cwd="/",
        )  # fmt: skip
        if p.returncode != 0:
            raise RuntimeError(f"initdb failed: {p.stdout[-2000:]} {p.stderr[-2000:]}")
        pg = Component(
            "postgres",
            [pg_bin("postgres"), "-D", data, "-p", str(self.pg_port), "-k", pgdir, "-c", "listen_addresses=127.0.0.1",
             "-c", "max_connections=300", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "shared_buffers=128MB"],
            {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, os.path.join(pgdir, "postgres.log"), user=PG_OS_USER,
        )  # fmt: skip
        self.components["postgres"] = pg
        pg.start()
        wait_for("postgres accepting connections", lambda: self._pg_ready(pg), 60, 0.2)
        self.psql("CREATE DATABASE airflow")

    def _pg_ready(self, pg: Component) -> bool:
        if not pg.running():
            raise DeploymentDied(f"postgres exited: {pg.log()[-3000:]}")
        return self.psql("SELECT 1", db="postgres", check=False).returncode == 0

    def psql(self, sql: str, db: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "airflow", "-d", db, "-Atc", sql],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if check and p.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {p.stderr}")
        return p

    def _start_redis(self) -> None:
        rdir = os.path.join(self.workdir, "redis")
        os.makedirs(rdir)
        redis = Component(
            "redis",
            [shutil.which("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", rdir,
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"],
            {"PATH": "/usr/bin:/bin"}, self._log("redis"),
        )  # fmt: skip
        self.components["redis"] = redis
        redis.start()

        def ping() -> bool:
            if not redis.running():
                raise DeploymentDied(f"redis exited: {redis.log()[-3000:]}")
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")

        wait_for("redis answering PING", ping, 30, 0.1)

    def _airflow_env(self) -> dict[str, str]:
        pw_file = os.path.join(self.workdir, "simple_auth_manager_passwords.json")
        with open(pw_file, "w") as f:
            json.dump({ADMIN[0]: ADMIN[1]}, f)
        db = f"postgresql+psycopg2://airflow@127.0.0.1:{self.pg_port}/airflow"
        api = f"http://127.0.0.1:{self.api_port}"
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "CI")}
        return {
            **keep,
            "PATH": f"{BIN_DIR}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": self.workdir,
            "PYTHONPATH": SUPPORT,
            "AIRFLOW_HOME": self.airflow_home,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": DAGS,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW__CORE__PARALLELISM": "64",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "orchesjob_deploy_support.hostname",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN[0]}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": pw_file,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__API__BASE_URL": api,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TI_HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_CHECK_THRESHOLD),
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow@127.0.0.1:{self.pg_port}/airflow",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }

    def _airflow_components(self) -> list[tuple[str, list[str]]]:
        return [
            ("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)]),
            ("scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"]),
            ("dag-processor", [AIRFLOW, "dag-processor"]),
            ("triggerer-1", [AIRFLOW, "triggerer", "--skip-serve-logs"]),
            ("triggerer-2", [AIRFLOW, "triggerer", "--skip-serve-logs"]),
            ("celery-worker-1", [AIRFLOW, "celery", "worker", "--skip-serve-logs", "-H", "celery-worker-1"]),
            ("celery-worker-2", [AIRFLOW, "celery", "worker", "--skip-serve-logs", "-H", "celery-worker-2"]),
        ]

    def airflow(self, args: list[str], timeout: float = 120) -> str:
        p = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                           cwd=self.workdir)  # fmt: skip
        if p.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed: {p.stdout[-2000:]}\n{p.stderr[-4000:]}")
        return p.stdout

    def _add_connection(self) -> None:
        s = self.ssh_server
        self.airflow(["connections", "add", CONN_ID, "--conn-json", json.dumps(self.connection_json())])
        assert s.port

    def connection_json(self, key_file: str | None = None) -> dict[str, Any]:
        s = self.ssh_server
        extra = s.connection_extra(orchesjob_home=self.edge_home)
        if key_file:
            extra["key_file"] = key_file
        return {"conn_type": "ssh", "host": s.host, "port": s.port, "login": s.user, "extra": json.dumps(extra)}

    def check_alive(self) -> None:
        dead = [f"{c.name} (exit {c.proc.returncode}):\n{c.log()[-2500:]}" for c in self.components.values()
                if not c.running()]  # fmt: skip
        if dead:
            raise DeploymentDied("deployment process died: " + "\n".join(dead))

    def wait_ready(self, timeout: float = 300) -> None:
        def ready() -> bool:
            self.check_alive()
            self.token(refresh=True)
            names = {j["hostname"] for j in self.alive_jobs("TriggererJob")}
            if not {"triggerer-1", "triggerer-2"} <= names:
                return False
            if not {j["hostname"] for j in self.alive_jobs("SchedulerJob")}:
                return False
            for dag_id in self.expected_dags():
                if self.get(f"/api/v2/dags/{dag_id}", check=False).status_code != 200:
                    return False
            return self.celery_workers_ready()

        wait_for("Airflow deployment ready (api-server, scheduler, 2 triggerers, DAGs, 2 celery workers)", ready,
                 timeout, 1.0)  # fmt: skip

    def celery_workers_ready(self) -> bool:
        logs = [self.components[n].log() for n in ("celery-worker-1", "celery-worker-2")]
        return all(" ready." in text for text in logs)

    @staticmethod
    def expected_dags() -> tuple[str, ...]:
        return DAG_IDS

    # ---------------------------------------------------------------- teardown
    def stop(self) -> None:
        order = ["celery-worker-1", "celery-worker-2", "triggerer-1", "triggerer-2", "scheduler", "dag-processor",
                 "api-server", "redis", "postgres"]  # fmt: skip
        for name in order + [n for n in self.components if n not in order]:
            comp = self.components.get(name)
            if comp is not None:
                try:
                    comp.stop()
                except Exception as exc:  # noqa: BLE001 - keep stopping the others
                    print(f"deployment: stopping {name} failed: {exc}", file=sys.stderr)
        self.ssh_server.ssh(f"pkill -f {self.edge_home} ; rm -rf {self.edge_home}")

    # ------------------------------------------------------------------ REST
    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def token(self, refresh: bool = False) -> str:
        if self._token is None or refresh:
            r = self._session.post(f"{self.api}/auth/token", json={"username": ADMIN[0], "password": ADMIN[1]},
                                   timeout=30)  # fmt: skip
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, check: bool = True, **kw) -> requests.Response:
        extra_headers = kw.pop("headers", {})
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.token()}", **extra_headers}
            r = self._session.request(method, f"{self.api}{path}", timeout=60, headers=headers, **kw)
            if r.status_code == 401 and attempt == 1:
                self.token(refresh=True)
                continue
            break
        if check and r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:2000]}")
        return r

    def get(self, path: str, check: bool = True, **kw) -> requests.Response:
        return self.request("GET", path, check=check, **kw)

    def alive_jobs(self, job_type: str) -> list[dict]:
        jobs = self.get("/api/v2/jobs", params={"job_type": job_type, "is_alive": "true", "limit": 100}).json()
        return jobs["jobs"]

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        run_id = f"deploy__{dag_id}__{uuid.uuid4().hex[:8]}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        return run_id

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        r = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 200})
        return r.json()["task_instances"]

    def ti(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        if map_index >= 0:
            path += f"/{map_index}"
        return self.get(path).json()

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict:
        def done() -> dict | None:
            self.check_alive()
            run = self.dag_run(dag_id, run_id)
            return run if run["state"] in ("success", "failed") else None

        return wait_for(f"DAG run {dag_id}/{run_id} finished", done, timeout, 1.0)

    def wait_ti_state(self, dag_id: str, run_id: str, states: tuple[str, ...], timeout: float, count: int = 1,
                      task_id: str | None = None) -> list[dict]:  # fmt: skip
        def reached() -> list[dict] | None:
            self.check_alive()
            tis = [t for t in self.task_instances(dag_id, run_id) if task_id is None or t["task_id"] == task_id]
            hits = [t for t in tis if t["state"] in states]
            return hits if len(hits) >= count else None

        return wait_for(f"{count} task(s) of {dag_id}/{run_id} in {states}", reached, timeout, 0.5)

    def wait_trigger_held(self, dag_id: str, run_id: str, task_id: str, timeout: float = 120) -> dict:
        """Wait until the task is deferred and a triggerer runs its trigger (a kill before that has nobody to
        run ``on_kill``)."""

        def held() -> dict | None:
            self.check_alive()
            ti = self.ti(dag_id, run_id, task_id)
            return ti if ti["state"] == "deferred" and (ti.get("triggerer_job") or {}).get("hostname") else None

        ti = wait_for(f"{dag_id}/{run_id}/{task_id} deferred and held by a triggerer", held, timeout, 0.5)
        time.sleep(1.5)  # the triggerer starts the trigger's run() within its loop tick (1 s)
        return ti

    def set_ti_state(self, dag_id: str, run_id: str, task_id: str, state: str, map_index: int = -1) -> None:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        if map_index >= 0:
            path += f"/{map_index}"
        self.request("PATCH", path, json={"new_state": state})

    def clear(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        body = {"dry_run": False, "dag_run_id": run_id, "task_ids": task_ids, "only_failed": False,
                "reset_dag_runs": True, "include_upstream": False, "include_downstream": False}  # fmt: skip
        self.request("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", json=body)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        params: dict[str, Any] = {"full_content": "true"}
        if map_index >= 0:
            params["map_index"] = map_index
        r = self.get(path, params=params, headers={"Accept": "application/json"})
        content = r.json().get("content")
        if isinstance(content, str):
            return content
        lines = []
        for item in content or []:
            if isinstance(item, dict):
                lines.append(str(item.get("event", "")))
            else:
                lines.append(str(item))
        return "\n".join(lines)

    def patch_connection(self, conn: dict[str, Any]) -> None:
        body = {"connection_id": CONN_ID, **conn}
        self.request("PATCH", f"/api/v2/connections/{CONN_ID}", json=body)

    # ------------------------------------------------------------- host side
    def counter(self, name: str) -> str:
        """A file on the host that a DAG's remote command appends one line to per execution."""
        return f"{self.edge_home}/counts/{name}"

    def host_lines(self, path: str) -> list[str]:
        return self.ssh_server.ssh(f"cat {path} 2>/dev/null").stdout.splitlines()

    def orchesjob(self, args: str) -> Any:
        r = self.ssh_server.ssh(f"ORCHESJOB_HOME={self.edge_home} ~/.local/bin/{args}")
        if r.returncode != 0:
            raise RuntimeError(f"{args}: {r.returncode} {r.stdout} {r.stderr}")
        return json.loads(r.stdout)

    def history(self, run_key: str) -> list[dict]:
        """Every attempt the host recorded for a run key (oldest first)."""
        jobs = self.orchesjob(f"orchesjob status --run-key '{run_key}' --all")
        return sorted(jobs if isinstance(jobs, list) else [jobs], key=lambda j: j.get("attempt_no", 0))

    def host_pids(self, pattern: str) -> list[int]:
        out = subprocess.run(["pgrep", "-u", self.ssh_server.user, "-f", pattern], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def note(self, scenario: str, executor: str, executions: Any, time_to_stop: float | None = None) -> None:
        self.notes.append({"scenario": scenario, "executor": executor, "executions": executions,
                           "time_to_stop": time_to_stop})  # fmt: skip

    def diagnostics(self) -> str:
        parts = []
        for c in self.components.values():
            parts.append(f"----- {c.name} (pid {c.proc.pid if c.proc else '-'}, log {c.log_path}) -----")
            parts.append(c.log()[-3000:])
        return "\n".join(parts)


# ------------------------------------------------------------------ scenario helpers
def run_key(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> str:
    """The provider's run key of a task instance (a pure function of its identity)."""
    from airflow_provider_orchesjob.utils.run_key import run_key_for

    return run_key_for(dag_id, task_id, run_id, map_index)


def token() -> str:
    """A unique number: ``sleep 300.<token>`` is a valid sleep whose process can be found by its token."""
    return str(uuid.uuid4().int % 10**9).rjust(9, "1")


def job_tree_alive(job: dict) -> list[int]:
    """Pids of a host job's recorded supervisor and command that are still alive (same machine as the sshd)."""
    return [p for p in {job.get("worker_pid"), job.get("target_pid"), job.get("pid")} if p and alive(int(p))]


def record(scenario: str, executor: str, executions: Any, time_to_stop: float | None, result: str,
           duration: float) -> None:  # fmt: skip
    """One row of docs/DEPLOYMENT_TESTS.md's results table (to ORCHESJOB_DEPLOY_RESULTS, and stderr)."""
    from importlib import metadata

    row = {
        "scenario": scenario,
        "airflow": metadata.version("apache-airflow"),
        "executor": executor,
        "executions_on_host": executions,
        "time_to_stop_s": None if time_to_stop is None else round(time_to_stop, 1),
        "result": result,
        "test_duration_s": round(duration),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"\nDEPLOY-RESULT {json.dumps(row)}", file=sys.stderr)
    path = os.environ.get("ORCHESJOB_DEPLOY_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
