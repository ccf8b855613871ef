"""scripts/clean.sh removes what the demo and the test suite leave behind, and only that."""

from __future__ import annotations

import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _clean(checkout: str, tmp: str, *args: str) -> subprocess.CompletedProcess:
    # No test user is touched here: the sshd harness of a concurrent run may be using it.
    env = dict(os.environ, TMPDIR=tmp, ORCHESJOB_CLEAN_USERS="orchesjob-no-such-user")
    script = os.path.join(checkout, "scripts", "clean.sh")
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=env, timeout=120)


def _leftovers(tmp) -> None:
    for name in ("orchesjob-demo-abc", "orchesjob-sshd-x", "orchesjob-airflow-home-1", "orchesjob-deploy-y"):
        (tmp / name).mkdir(parents=True)
        (tmp / name / "data").write_bytes(b"x" * 4096)
    (tmp / "someone-elses").mkdir()


def test_dry_run_lists_and_removes_nothing(tmp_path):
    tmp = tmp_path / "tmp"
    _leftovers(tmp)
    before = sorted(os.listdir(tmp))
    p = _clean(ROOT, str(tmp))
    assert p.returncode == 0, p.stderr
    assert "clean: would remove .venv (" in p.stdout  # this checkout's dev venv
    assert f"clean: would remove 1 x {tmp}/orchesjob-demo-* (" in p.stdout
    assert f"clean: would remove 1 x {tmp}/orchesjob-deploy-* (" in p.stdout
    assert "someone-elses" not in p.stdout
    assert "run with --yes to remove" in p.stdout
    assert sorted(os.listdir(tmp)) == before and os.path.isdir(os.path.join(ROOT, ".venv"))


def test_yes_removes_exactly_the_leftovers(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "scripts", "clean.sh"), checkout / "scripts")
    (checkout / ".venv-af211" / "bin").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("kept\n")
    tmp = tmp_path / "tmp"
    _leftovers(tmp)
    p = _clean(str(checkout), str(tmp), "--yes")
    assert p.returncode == 0, p.stderr
    assert "clean: removed .venv-af211 (" in p.stdout
    assert sorted(os.listdir(tmp)) == ["someone-elses"]
    assert sorted(os.listdir(checkout)) == ["pyproject.toml", "scripts"]


def test_unknown_argument_is_refused(tmp_path):
    p = _clean(ROOT, str(tmp_path), "--force")
    assert p.returncode == 2 and "usage:" in p.stderr
