"""Where each tool keeps its state.

One resolution serves all three CLIs. ``/var/lib/orchesjob`` is the documented
default, but a non-root user with a plain ``pipx install`` usually cannot write
there, so the default falls back to a per-user data directory instead of failing.
"""

from __future__ import annotations

import os

SYSTEM_HOME = "/var/lib/orchesjob"
JOBS_DB_NAME = "orchesjob.db"
RESERVER_DB_NAME = "reserver.sqlite3"
FLOW_DB_NAME = "orchesjob-flow.sqlite3"


def _user_data_dir(name: str) -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, name)


def _usable(path: str) -> bool:
    if os.path.isdir(path):
        return os.access(path, os.W_OK | os.X_OK)
    parent = os.path.dirname(path)
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


def default_home() -> str:
    """``/var/lib/orchesjob`` when this user can use it, else ``~/.local/share/orchesjob``."""
    return SYSTEM_HOME if _usable(SYSTEM_HOME) else _user_data_dir("orchesjob")


def jobs_home() -> str:
    return os.environ.get("ORCHESJOB_HOME") or default_home()


def reserver_home() -> str:
    return os.environ.get("ORCHESJOB_RESERVER_HOME") or os.environ.get("ORCHESJOB_HOME") or default_home()


def flow_home() -> str:
    return os.environ.get("ORCHESJOB_FLOW_HOME") or os.environ.get("ORCHESJOB_HOME") or _user_data_dir("orchesjob-flow")


def jobs_db_path(home: str | None = None) -> str:
    return os.path.join(home or jobs_home(), JOBS_DB_NAME)


def reserver_db_path() -> str:
    return os.path.join(reserver_home(), RESERVER_DB_NAME)


def flow_db_path() -> str:
    return os.path.join(flow_home(), FLOW_DB_NAME)


def logs_dir(home: str) -> str:
    """The log directory of a tool whose state lives in ``home``."""
    return os.path.join(home, "logs")


def log_files(directory: str, stem: str, suffix: str = "") -> tuple[str, str]:
    """(stdout, stderr) log paths ``<directory>/<stem>.stdout<suffix>`` / ``.stderr<suffix>``."""
    return (os.path.join(directory, f"{stem}.stdout{suffix}"), os.path.join(directory, f"{stem}.stderr{suffix}"))


def describe() -> dict:
    """Resolved locations, for ``orchesjob info`` and ``--help`` epilogs."""
    return {
        "orchesjob_home": jobs_home(),
        "orchesjob_db": jobs_db_path(),
        "reserver_db": reserver_db_path(),
        "flow_db": flow_db_path(),
        "env": {
            k: os.environ[k]
            for k in ("ORCHESJOB_HOME", "ORCHESJOB_RESERVER_HOME", "ORCHESJOB_FLOW_HOME", "ORCHESJOB_BIN")
            if k in os.environ
        },
    }
