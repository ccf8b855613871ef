"""What the benches share: installing a checkout as pipx would, seeding history, timing, statistics, plots.

Imported by the scripts next to it (``python bench/bench_x.py`` puts ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_BIN = "/work/main/.venv-public/bin"


# ------------------------------------------------------------------ installing
def install(source: str, workdir: str, name: str) -> str:
    """A wheel of ``source`` installed into the venv ``workdir/name``, as ``pipx install`` would; its bin dir."""
    venv = os.path.join(workdir, name)
    wheels = os.path.join(workdir, name + "-wheels")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = os.path.join(venv, "bin", "pip")
    quiet = ["-q", "--disable-pip-version-check"]
    subprocess.run([pip, "wheel", *quiet, "--no-deps", "-w", wheels, source], check=True)
    wheel = next(f for f in os.listdir(wheels) if f.endswith(".whl"))
    subprocess.run([pip, "install", *quiet, os.path.join(wheels, wheel)], check=True)
    return os.path.join(venv, "bin")


def export_ref(ref: str, dest: str) -> str:
    """The tree of git ``ref`` of this checkout, extracted into ``dest``."""
    os.makedirs(dest)
    archive = subprocess.run(["git", "-C", ROOT, "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def interpreter_of(script: str) -> str:
    """The interpreter a console script runs under (its shebang)."""
    with open(script) as f:
        first = f.readline()
    return first[2:].strip() if first.startswith("#!") else sys.executable


def home_env(home: str, **extra: str) -> dict[str, str]:
    """The environment of a CLI call against its own state home (no inherited per-tool overrides)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHESJOB_RESERVER_HOME", "ORCHESJOB_FLOW_HOME")}
    env.pop("ORCHESJOB_BIN", None)
    env.update(ORCHESJOB_HOME=home, **extra)
    return env


# --------------------------------------------------------------------- timing
def timed(argv: Sequence[str], env: dict, *, stdin: bytes | None = None, timeout: float | None = None) -> float:
    """Wall time of one process, which must exit 0; ``TimeoutError`` after ``timeout`` (its group is killed)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = p.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise TimeoutError(f"{argv[:3]} over {timeout} s") from None
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{list(argv)} failed ({p.returncode}): {err.decode(errors='replace')[-500:]}")
    return elapsed


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session`` and everything in its group; reap it."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (the value at or below which ``p`` % of the samples are)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def budgeted_median(argv_of: Callable, env: dict, reps: int, budget: float) -> float | None:
    """Median wall time of up to ``reps`` calls (``argv_of(i)``) within ``budget`` seconds; None if none finished.

    Slow implementations (the public releases at large sizes) get a per-point time budget, so a
    curve shows only the points that finished.
    """
    deadline = time.monotonic() + budget
    samples = []
    for i in range(reps):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            samples.append(timed(argv_of(i), env, timeout=left))
        except TimeoutError:
            break
    return median(samples) if samples else None


# -------------------------------------------------------------------- history
def seed_one(orchesjob: str, home: str, run_key: str = "K") -> None:
    """One finished job, created by the CLI itself (so the database has the tool's own schema)."""
    subprocess.run([orchesjob, "start", "--run-key", run_key, "--sync", "--", "true"], env=home_env(home),
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def add_history_ours(home: str, rows: int, finished_at: float | None = None, prefix: str = "hist") -> None:
    """``rows`` finished jobs (and their run keys) inserted directly into this runtime's schema."""
    db = sqlite3.connect(os.path.join(home, "orchesjob.db"))
    t = time.time() - 86400 if finished_at is None else finished_at
    with db:
        db.executemany(
            "INSERT INTO run_keys (run_key, attempts, last_attempt_no, created_at, updated_at) VALUES (?, 1, 1, ?, ?)",
            ((f"{prefix}-{i}", t, t) for i in range(rows)),
        )
        db.executemany(
            "INSERT INTO jobs (job_id, run_key, attempt_no, status, command, mode, reuse_policy, boot_id, "
            "exit_code, stdout_file, stderr_file, started_at, finished_at, updated_at) "
            "VALUES (?, ?, 1, 'SUCCEEDED', '[\"true\"]', 'async', 'always', 'old-boot', 0, ?, ?, ?, ?, ?)",
            ((f"{prefix}-job-{i}", f"{prefix}-{i}", f"/nonexistent/{i}.out", f"/nonexistent/{i}.err", t, t, t)
             for i in range(rows)),
        )  # fmt: skip
    db.close()


def add_history_public(home: str, rows: int) -> None:
    """``rows`` finished jobs inserted directly into the public orchesjob 1.1.0 schema."""
    db = sqlite3.connect(os.path.join(home, "orchesjob.db"))
    t = int(time.time()) - 86400
    with db:
        db.executemany(
            "INSERT INTO jobs (job_id, run_key, command, status, exit_code, stdout_file, stderr_file, "
            "started_at, finished_at, updated_at, attempt_no, strict) "
            "VALUES (?, ?, '[\"true\"]', 'SUCCEEDED', 0, ?, ?, ?, ?, ?, 1, 0)",
            ((f"job-{i}", f"hist-{i}", f"/x/{i}.stdout", f"/x/{i}.stderr", t, t, t) for i in range(rows)),
        )
        db.executemany(
            "INSERT INTO run_keys (run_key, job_id, created_at) VALUES (?, ?, ?)",
            ((f"hist-{i}", f"job-{i}", t) for i in range(rows)),
        )
    db.close()


def clone_rows(db_path: str, table: str, template_where: str, rows: int, unique: dict[str, str]) -> None:
    """Insert ``rows`` copies of the one row ``template_where`` selects, ``unique`` columns set per copy.

    ``unique`` maps a column to a format string of ``i`` (e.g. ``{"run_key": "pending-{i}"}``): a
    schema we do not own (a public release's) is seeded without restating its columns.
    """
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row
    template = dict(db.execute(f"SELECT * FROM {table} WHERE {template_where}").fetchone())
    for auto in ("seq", "id"):
        if auto in template and auto not in unique and isinstance(template[auto], int):
            template.pop(auto)  # an INTEGER PRIMARY KEY: SQLite numbers the copies
    cols = list(template)
    sql = f"INSERT INTO {table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    with db:
        db.executemany(
            sql, ([fmt.format(i=i) if c in unique else template[c] for c, fmt in ((c, unique.get(c)) for c in cols)]
                  for i in range(rows)),
        )  # fmt: skip
    db.close()


# ------------------------------------------------------------------- plotting
def plot(path: str, title: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[float, float]]],
         *, logy: bool = True, note: str | None = None) -> None:  # fmt: skip
    """A log-x line plot of ``series`` (label -> points) into the PNG ``path`` (matplotlib: the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, points in series.items():
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
