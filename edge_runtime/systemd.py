"""systemd: the reservation dispatcher as a service, and each job in a transient scope.

**The dispatcher as a service.** ``orchesjob-reserver service install`` writes a
*user* unit (``~/.config/systemd/user/orchesjob-reserver.service``) whose
``ExecStart`` is this install's own ``orchesjob-reserver run``, with the state
home resolved now, and enables it when the user's systemd manager is reachable.
The unit uses ``KillMode=mixed``: a stop sends SIGTERM to the dispatcher alone,
which finishes the dispatch in flight and exits 0, then SIGKILL to whatever is
left in its cgroup. That is only safe because nothing else is there: the unit
sets ``ORCHESJOB_SYSTEMD_SCOPE=1``, so every job the dispatcher starts (its
supervisor and whole process tree) lives in its own scope, outside the unit. The
old advice, ``KillMode=process``, left the jobs inside the unit's cgroup, which
systemd discourages (processes outliving their stopped service).

**A scope per job** (``ORCHESJOB_SYSTEMD_SCOPE``: ``1`` required, ``auto`` where a
user manager is reachable, unset/``0`` off). The supervisor is exec'd through
``systemd-run --user --scope --unit=orchesjob-<job id>``, which moves it into
the new scope before it runs a line of Python, so the command it forks and
everything that forks from that are in the scope's cgroup — a process cannot
leave a cgroup the way it can leave a process group. The supervisor itself is
in the scope on purpose: it must outlive the tree to record the outcome, and it
must not be in the cgroup of whoever started it (the dispatcher's unit, an SSH
session that ``KillUserProcesses=yes`` would end). Stopping stays the
supervisor's job (TERM, grace, KILL of the tree, outcome recorded): stopping the
scope unit would kill the supervisor before it records anything. The scope ends
by itself once empty (``--collect``).

Nothing here runs on the poll path: ``orchesjob start`` imports this module
only to look at the setting, and the service commands are rare.
"""

from __future__ import annotations

import os

from .errors import OrchesError, UsageError

SERVICE = "orchesjob-reserver.service"
SCOPE_ENV = "ORCHESJOB_SYSTEMD_SCOPE"
_ON = ("1", "yes", "true", "on", "required")
_OFF = ("", "0", "no", "false", "off")

# typing costs ~2 ms of start-up per call; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


class SystemdUnavailable(OrchesError):
    """A systemd feature was asked for and no manager can provide it."""

    kind = "systemd_unavailable"


# ----------------------------------------------------------------- the user manager
def user_manager_socket(env: Mapping[str, str] | None = None) -> str | None:
    """The private socket of this user's systemd manager, if one is running (what systemctl/systemd-run use)."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if not runtime:
        return None
    path = os.path.join(runtime, "systemd", "private")
    try:
        import stat

        return path if stat.S_ISSOCK(os.stat(path).st_mode) else None
    except OSError:
        return None


def linger(user: str) -> bool | None:
    """Whether ``user`` has lingering on (its manager runs without a login); None if unknown."""
    if os.path.isdir("/var/lib/systemd/linger"):
        return os.path.exists(os.path.join("/var/lib/systemd/linger", user))
    code, out, _ = _run(["loginctl", "show-user", user, "--property=Linger", "--value"])
    return {"yes": True, "no": False}.get(out.strip()) if code == 0 else None


def _run(argv: Sequence[str]) -> tuple[int, str, str]:
    import subprocess

    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


# ----------------------------------------------------------------- a scope per job
def scope_setting(env: Mapping[str, str] | None = None) -> str:
    """``required``, ``auto`` or ``off``, from ``ORCHESJOB_SYSTEMD_SCOPE``."""
    value = (os.environ if env is None else env).get(SCOPE_ENV, "").strip().lower()
    if value in _OFF:
        return "off"
    if value == "auto":
        return "auto"
    if value in _ON:
        return "required"
    raise UsageError(f"{SCOPE_ENV}={value!r}: use 1 (required), auto or 0 (off)", variable=SCOPE_ENV)


def job_scope(env: Mapping[str, str] | None = None) -> str | None:
    """The ``systemd-run`` to run the next job's supervisor through, or None for no scope.

    Called before a job is claimed: a scope that was asked for and cannot be had
    fails the start here, before anything is recorded; ``auto`` falls back to no
    scope. Never a silent unscoped run of a job that required one.
    """
    env = os.environ if env is None else env
    setting = scope_setting(env)
    if setting == "off":
        return None
    import shutil

    systemd_run = shutil.which("systemd-run", path=env.get("PATH"))
    socket = user_manager_socket(env)
    if systemd_run and socket:
        return systemd_run
    if setting == "auto":
        return None
    missing = "systemd-run is not installed" if not systemd_run else "no systemd user manager is reachable"
    raise SystemdUnavailable(
        f"{SCOPE_ENV}=1 asks for a systemd scope per job, but {missing} "
        f"(looked for $XDG_RUNTIME_DIR/systemd/private); nothing was started. A user manager runs while the "
        f"user is logged in through PAM (ssh) or always with lingering (loginctl enable-linger); "
        f"{SCOPE_ENV}=auto runs jobs without a scope where there is none",
        variable=SCOPE_ENV,
    )


def scope_argv(systemd_run: str, job_id: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside the transient scope ``orchesjob-<job id>.scope`` of the user manager.

    ``--scope`` execs ``argv`` in the calling process once the scope holds it (same
    pid, so the job's recorded identities are unchanged); ``--collect`` lets the
    unit go even if the job failed; ``--quiet`` keeps systemd-run's notice out of
    the job's output.
    """
    return [
        systemd_run,
        "--user",
        "--scope",
        "--quiet",
        "--collect",
        f"--unit=orchesjob-{job_id}",
        f"--description=orchesjob job {job_id}",
        "--",
        *argv,
    ]


def describe(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """For ``orchesjob info``: the scope setting and whether a user manager is reachable."""
    env = os.environ if env is None else env
    try:
        setting = scope_setting(env)
    except UsageError as exc:
        setting = f"invalid: {exc.message}"
    return {"scope": setting, "user_manager": user_manager_socket(env) is not None}


# ----------------------------------------------------------------- the dispatcher's unit
def _quoted(word: str, *, exec_line: bool) -> str:
    """One word as systemd reads it back: ``%`` is a specifier, ``$`` expands in Exec lines."""
    word = word.replace("%", "%%")
    if exec_line:
        word = word.replace("$", "$$")
    if word and not any(c in word for c in " \t\n\"'\\;"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def unit_text(
    *,
    executable: str,
    environment: Mapping[str, str],
    db: str | None = None,
    system_user: str | None = None,
    uid: int | None = None,
) -> str:
    """The unit of the dispatcher: a user unit, or with ``system_user``/``uid`` a system unit running as that user.

    ``environment`` holds state paths only; no secret ever belongs in a unit file
    (any local user can read it through ``systemctl show``).
    """
    exec_start = [executable, *(["--db", db] if db else []), "run"]
    env = {**environment, SCOPE_ENV: "1"}
    lines = [
        f"# Written by `orchesjob-reserver service install{' --system --print' if system_user else ''}`;",
        f"# change it with `systemctl{'' if system_user else ' --user'} edit orchesjob-reserver` (a drop-in "
        "survives a re-install).",
        "[Unit]",
        "Description=orchesjob-reserver: dispatch reserved jobs on this host",
    ]
    if system_user:
        # The jobs' scopes live in the user's own manager: start it with this unit (no lingering needed).
        lines += [f"Wants=user@{uid}.service", f"After=user@{uid}.service network-online.target"]
    lines += ["", "[Service]", "Type=exec"]
    if system_user:
        lines += [f"User={system_user}", f"Environment={_quoted(f'XDG_RUNTIME_DIR=/run/user/{uid}', exec_line=False)}"]
    lines += [f"Environment={_quoted(f'{k}={v}', exec_line=False)}" for k, v in sorted(env.items())]
    lines += [
        "ExecStart=" + " ".join(_quoted(word, exec_line=True) for word in exec_start),
        "# SIGTERM to the dispatcher only (it finishes the dispatch in flight, exits 0), then SIGKILL to the",
        f"# rest of this cgroup. Jobs are not in it: {SCOPE_ENV}=1 runs each in its own orchesjob-<id>.scope.",
        "KillMode=mixed",
        "TimeoutStopSec=60",
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if system_user else 'default.target'}",
    ]
    return "\n".join(lines) + "\n"


def reserver_executable() -> str:
    """This install's ``orchesjob-reserver`` (next to its interpreter: a pipx venv's own bin)."""
    import sys

    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "orchesjob-reserver")
    if os.access(beside, os.X_OK):
        return beside
    import shutil

    found = shutil.which("orchesjob-reserver")
    if found is None:
        raise SystemdUnavailable("cannot find this install's orchesjob-reserver executable")
    return os.path.abspath(found)


def state_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The state homes the service must use: the ones this very command resolves now."""
    from .home import jobs_home

    env = os.environ if env is None else env
    out = {"ORCHESJOB_HOME": os.path.abspath(jobs_home())}
    for name in ("ORCHESJOB_RESERVER_HOME", "ORCHESJOB_BIN"):
        if env.get(name):
            out[name] = os.path.abspath(env[name])
    return out


def user_unit_path(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "systemd", "user", SERVICE)


class Service:
    """``orchesjob-reserver service install|uninstall|status`` for the user's own manager."""

    def __init__(self, db: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.db = os.path.abspath(db) if db else None
        self.path = user_unit_path(self.env)
        import getpass

        self.user = getpass.getuser()

    def text(self, *, system: bool = False) -> str:
        kwargs: dict[str, Any] = {"system_user": self.user, "uid": os.getuid()} if system else {}
        return unit_text(
            executable=reserver_executable(), environment=state_environment(self.env), db=self.db, **kwargs
        )

    def _systemctl(self, *args: str) -> None:
        code, out, err = _run(["systemctl", "--user", *args])
        if code != 0:
            raise OrchesError(
                f"systemctl --user {' '.join(args)} failed (exit {code}): {(err or out).strip()}",
                unit_path=self.path,
            )

    def _linger_report(self, out: dict[str, Any]) -> None:
        out["linger"] = linger(self.user)
        if out["linger"] is not True:
            out.setdefault("next_steps", []).append(
                f"loginctl enable-linger {self.user}   # as root (or with polkit): without lingering your "
                "systemd user manager, and the dispatcher with it, runs only while you are logged in"
            )

    def install(self, *, start: bool = True) -> dict[str, Any]:
        text = self.text()
        try:
            with open(self.path, encoding="utf-8") as f:
                changed = f.read() != text
        except FileNotFoundError:
            changed = True
        if changed:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        out: dict[str, Any] = {"unit": SERVICE, "unit_path": self.path, "changed": changed}
        reachable = user_manager_socket(self.env) is not None
        out["user_manager"] = reachable
        if reachable:
            self._systemctl("daemon-reload")
            if changed:
                self._systemctl("try-restart", SERVICE)  # a dispatcher running the old unit: the new one now
            self._systemctl("enable", *(["--now"] if start else []), SERVICE)
            out["enabled"], out["started"] = True, start
        else:
            out["enabled"] = out["started"] = False
            out["next_steps"] = [
                "systemctl --user daemon-reload",
                f"systemctl --user enable --now {SERVICE}",
                f"(run them where your user manager is reachable: a PAM login such as ssh sets XDG_RUNTIME_DIR; "
                f"this process sees {self.env.get('XDG_RUNTIME_DIR') or 'no XDG_RUNTIME_DIR'})",
            ]
        self._linger_report(out)
        return out

    def uninstall(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": SERVICE, "unit_path": self.path}
        reachable = user_manager_socket(self.env) is not None
        if reachable and os.path.exists(self.path):
            self._systemctl("disable", "--now", SERVICE)
        try:
            os.unlink(self.path)
            out["removed"] = True
        except FileNotFoundError:
            out["removed"] = False
        if reachable:
            self._systemctl("daemon-reload")
        out["user_manager"] = reachable
        if not reachable and out["removed"]:
            out["next_steps"] = [f"systemctl --user stop {SERVICE}; systemctl --user daemon-reload"]
        return out

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": SERVICE, "unit_path": self.path}
        try:
            with open(self.path, encoding="utf-8") as f:
                installed = f.read()
        except FileNotFoundError:
            installed = None
        out["installed"] = installed is not None
        # A unit written by another install (pipx moved, other state home) names the wrong program.
        out["current"] = installed == self.text() if installed is not None else None
        reachable = user_manager_socket(self.env) is not None
        out["user_manager"] = reachable
        if reachable:
            for prop in ("is-enabled", "is-active"):
                code, text, _ = _run(["systemctl", "--user", prop, SERVICE])
                out[prop.replace("is-", "")] = text.strip() or f"unknown (exit {code})"
        self._linger_report(out)
        return out
