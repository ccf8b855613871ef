"""Packaging as a user meets it: sdist + wheel build, a pipx install on a host without Airflow,
the provider registered in Airflow, and the zero-setup demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from tests.conftest import BIN_DIR, require

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIS = ("orchesjob", "orchesjob-reserver", "orchesjob-flow")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), ROOT],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    files = sorted(os.listdir(out))
    return {f.rsplit(".", 2)[-1] if f.endswith(".tar.gz") else "whl": os.path.join(out, f) for f in files}


def test_sdist_and_wheel_contain_both_packages(dist):
    wheel = zipfile.ZipFile(dist["whl"]).namelist()
    for module in (
        "edge_runtime/cli/orchesjob.py",
        "edge_runtime/jobs.py",
        "airflow_provider_orchesjob/hooks/orchesjob.py",
    ):
        assert module in wheel
    assert not any(n.startswith(("tests/", "example_dags/")) for n in wheel)
    entry = [n for n in wheel if n.endswith("entry_points.txt")][0]
    text = zipfile.ZipFile(dist["whl"]).read(entry).decode()
    assert "orchesjob-reserver = edge_runtime.cli.reserver:entry" in text and "apache_airflow_provider" in text
    names = tarfile.open(dist["gz"]).getnames()
    assert any(n.endswith("/pyproject.toml") for n in names) and any(n.endswith("/README.md") for n in names)


def test_pipx_install_of_the_wheel_gives_the_clis_without_airflow(dist, tmp_path):
    require(shutil.which("pipx") is not None, "pipx")
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"),
               PIPX_MAN_DIR=str(tmp_path / "man"))  # fmt: skip
    p = subprocess.run(["pipx", "install", dist["whl"]], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    for cli in CLIS:
        exe = str(tmp_path / "bin" / cli)
        version = subprocess.run([exe, "--version"], capture_output=True, text=True)
        assert version.returncode == 0 and re.fullmatch(rf"{cli} \d+\.\d+\.\d+\S*\n", version.stdout)
        assert subprocess.run([exe, "--help"], capture_output=True, text=True).returncode == 0
    python = str(tmp_path / "pipx" / "venvs" / "airflow-provider-orchesjob" / "bin" / "python")
    assert subprocess.run([python, "-c", "import airflow"], capture_output=True).returncode != 0, "no Airflow on hosts"
    home = tmp_path / "state"
    job = subprocess.run([str(tmp_path / "bin" / "orchesjob"), "start", "--run-key", "pkg", "--sync", "--", "true"],
                         capture_output=True, text=True, env=dict(env, ORCHESJOB_HOME=str(home)))  # fmt: skip
    assert job.returncode == 0 and '"status": "SUCCEEDED"' in job.stdout


def test_airflow_lists_the_provider_and_its_connection_type():
    airflow = os.path.join(BIN_DIR, "airflow")
    providers = subprocess.run([airflow, "providers", "list"], capture_output=True, text=True, timeout=300)
    assert "airflow-provider-orchesjob" in providers.stdout, providers.stderr[-2000:]
    hooks = subprocess.run([airflow, "providers", "hooks"], capture_output=True, text=True, timeout=300)
    assert re.search(r"orchesjob\s*\|\s*airflow_provider_orchesjob\.hooks\.orchesjob\.OrchesJobHook", hooks.stdout)


def _subcommands(cli: str) -> list[str]:
    out = subprocess.run([os.path.join(BIN_DIR, cli), "--help"], capture_output=True, text=True).stdout
    match = re.search(r"\{([a-z,-]+)\}", out)
    if match:
        return match.group(1).split(",")
    # "COMMAND" metavar: the subcommands are listed one per line, indented, under it.
    section = out.split("positional arguments:", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"^ {4}([a-z][a-z-]*)(?:\s|$)", section, re.M)
    assert names, out
    return names


@pytest.mark.parametrize("cli", CLIS)
def test_every_subcommand_has_help_and_is_in_the_readme(cli):
    readme = open(os.path.join(ROOT, "README.md")).read()
    for sub in _subcommands(cli):
        p = subprocess.run([os.path.join(BIN_DIR, cli), sub, "--help"], capture_output=True, text=True)
        assert p.returncode == 0 and "usage:" in p.stdout, (cli, sub)
        assert f"{cli} {sub}" in readme, f"README does not show `{cli} {sub}`"


def test_zero_setup_demo_runs_every_example(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ORCHESJOB"))}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "demo.py")], capture_output=True, text=True,
                       env=env, timeout=900)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count(" success in ") == 5
    assert "summary" in p.stdout and "SUCCEEDED" in p.stdout and "remote job logs:" in p.stdout
    # The closing hints show what the demo ran: each prints something, the status a job it ran.
    hints = [line.strip() for line in p.stdout.splitlines() if line.startswith("  ORCHESJOB_HOME=")]
    assert len(hints) == 4, p.stdout[-3000:]
    for hint in hints:
        shown = subprocess.run(["sh", "-c", hint], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and shown.stdout.strip() not in ("", "[]", "{}"), (hint, shown)
        if " status --run-key " in hint:
            assert json.loads(shown.stdout)["status"] == "SUCCEEDED"
    work = p.stdout.rsplit("remove it with: rm -rf ", 1)[1].split()[0]
    shutil.rmtree(work)


def test_demo_variant_against_a_real_ssh_host(ssh_server):
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ORCHESJOB"))}
    extra = ssh_server.connection_extra(orchesjob_home=f"{ssh_server.home}/.orchesjob-demo")
    env["AIRFLOW_CONN_DEMO_EDGE"] = json.dumps(
        {"conn_type": "orchesjob", "host": ssh_server.host, "port": ssh_server.port, "login": ssh_server.user,
         "extra": extra}
    )  # fmt: skip
    env["ORCHESJOB_EXAMPLE_HOSTS"] = "127.0.0.1,localhost"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--ssh-conn-id", "demo_edge"],
                       capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count(" success in ") == 5
    assert "on the SSH host" in p.stdout
