"""Where each tool keeps its state, and keeping that state private.

One resolution serves all three CLIs. ``/var/lib/orchesjob`` is the documented
default, but a non-root user with a plain ``pipx install`` usually cannot write
there, so the default falls back to a per-user data directory instead of failing.

One home per user, always the same: once one of the two default candidates
holds a database of this user, every later call resolves to it, even if the
other one becomes writable meanwhile (an administrator creating
``/var/lib/orchesjob`` must not split a user's jobs over two databases). Two
candidates that both hold this user's databases are an error, never a guess.
``$ORCHESJOB_HOME`` always wins.

Privacy: state directories are created 0700 and database files 0600 (before
SQLite opens them; SQLite gives ``-wal``/``-shm`` the mode of the database
file). An existing home that other users could write to is tightened to 0700
when this user owns it, and refused otherwise (a sticky one like /tmp too).
The process umask is never changed: job commands inherit the caller's.
"""

from __future__ import annotations

import os

from .errors import OrchesError

SYSTEM_HOME = "/var/lib/orchesjob"
JOBS_DB_NAME = "orchesjob.db"
RESERVER_DB_NAME = "reserver.sqlite3"
FLOW_DB_NAME = "orchesjob-flow.sqlite3"
# The databases whose presence marks a directory as this user's home.
HOME_DB_NAMES = (JOBS_DB_NAME, RESERVER_DB_NAME, FLOW_DB_NAME)
# Where orchesjob-flow kept its state before it shared the home of the other two tools.
LEGACY_FLOW_DIR_NAME = "orchesjob-flow"


class UnsafeHome(OrchesError):
    """The state directory is writable by other users and cannot be tightened."""

    kind = "unsafe_home"


class AmbiguousHome(OrchesError):
    """Two default homes both hold this user's databases."""

    kind = "ambiguous_home"


def system_home() -> str:
    # ORCHESJOB_TEST_SYSTEM_HOME: tests only (they must not touch the real /var/lib).
    return os.environ.get("ORCHESJOB_TEST_SYSTEM_HOME") or SYSTEM_HOME


def _user_data_dir(name: str) -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, name)


def _usable(path: str) -> bool:
    if os.path.isdir(path):
        return os.access(path, os.W_OK | os.X_OK)
    parent = os.path.dirname(path)
    return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)


def _owns(path: str) -> bool:
    try:
        return os.stat(path).st_uid == os.geteuid()
    except OSError:
        return False


def _holds_own_database(home: str) -> bool:
    """True if ``home`` has one of our database files owned by this user."""
    return any(_owns(os.path.join(home, name)) for name in HOME_DB_NAMES)


def default_home() -> str:
    """The home that already holds this user's databases; else ``/var/lib/orchesjob``
    when this user can use it, else ``~/.local/share/orchesjob``."""
    system, user = system_home(), _user_data_dir("orchesjob")
    if os.path.realpath(system) == os.path.realpath(user):
        return system
    holding = [home for home in (system, user) if _holds_own_database(home)]
    if len(holding) == 2:
        raise AmbiguousHome(
            f"two orchesjob homes hold this user's databases: {system} and {user}; refusing to guess "
            "which one is current. Keep one (move or remove the other's orchesjob.db/reserver.sqlite3/"
            "orchesjob-flow.sqlite3 and logs/), or set ORCHESJOB_HOME to the one to use",
            homes=holding,
        )
    if holding:
        return holding[0]
    return system if _usable(system) else user


def jobs_home() -> str:
    return os.environ.get("ORCHESJOB_HOME") or default_home()


def reserver_home() -> str:
    return os.environ.get("ORCHESJOB_RESERVER_HOME") or os.environ.get("ORCHESJOB_HOME") or default_home()


def flow_home() -> str:
    """The home of the other two tools, unless this user's flow runs still live in the
    pre-shared-home directory ``~/.local/share/orchesjob-flow`` (then that one, so that no
    run is left behind; move its ``orchesjob-flow.sqlite3`` and ``logs/`` over to switch)."""
    explicit = os.environ.get("ORCHESJOB_FLOW_HOME") or os.environ.get("ORCHESJOB_HOME")
    if explicit:
        return explicit
    home = default_home()
    legacy = _user_data_dir(LEGACY_FLOW_DIR_NAME)
    if not _owns(os.path.join(home, FLOW_DB_NAME)) and _owns(os.path.join(legacy, FLOW_DB_NAME)):
        return legacy
    return home


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


# ---------------------------------------------------------------- privacy
def private_dir(path: str, *, check: bool = True) -> None:
    """Make sure ``path`` is a directory other users cannot write to.

    Created 0700 when missing. An existing one (``check``) that is group- or
    world-writable is tightened to 0700 (with its ``logs/`` and the files in
    both) when this user owns it and it is not a shared sticky directory such
    as ``/tmp``; otherwise ``UnsafeHome``. A directory others may only read is
    left as it is (what is in it is 0600). ``check=False`` (a directory the
    caller named with ``--db``) only creates.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise OrchesError(f"cannot create state directory {path}: {exc.strerror}", path=path) from None
    if not check or not st.st_mode & 0o022:
        return
    mode = f"{st.st_mode & 0o7777:o}"
    if st.st_uid != os.geteuid() or st.st_mode & 0o1000:
        why = "is a shared (sticky) directory" if st.st_mode & 0o1000 else f"is owned by uid {st.st_uid}"
        raise UnsafeHome(
            f"state directory {path} is writable by other users (mode {mode}) and {why}, so it cannot be made "
            "private; refusing to keep jobs there. Use a directory of your own (set ORCHESJOB_HOME), or have "
            "its owner run `chmod 0700` on it",
            path=path,
            mode=mode,
        )
    try:
        os.chmod(path, 0o700)
        _tighten_tree(path)
    except OSError as exc:
        raise UnsafeHome(f"cannot make state directory {path} private: {exc.strerror}", path=path) from None


def _tighten_tree(path: str) -> None:
    """One-time migration of a home made by an older release: files 0600, directories 0700."""
    import stat

    uid = os.geteuid()
    for name in os.listdir(path):
        full = os.path.join(path, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if st.st_uid != uid:
            continue
        if stat.S_ISDIR(st.st_mode):
            if st.st_mode & 0o077:
                os.chmod(full, 0o700)
            if name == "logs":
                _tighten_tree(full)
        elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            os.chmod(full, 0o600)


def private_file(path: str) -> None:
    """Create ``path`` 0600 if missing (before SQLite does it with 0644 & umask); tighten an own loose one."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return  # read-only or foreign file: SQLite reports what it can and cannot do
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
            for suffix in ("-wal", "-shm"):
                try:
                    os.chmod(path + suffix, 0o600)
                except OSError:
                    pass
    finally:
        os.close(fd)


def open_private_log(path: str) -> int:
    """An append-only descriptor of a log file, created 0600."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


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
