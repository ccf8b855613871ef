"""Fuzzing the three CLIs' arguments through real processes (deterministic seed, about a minute).

For every call:
* the exit code is one of the tool's documented codes;
* no "internal error", ever;
* a failure prints one JSON object on stderr (or, for `result` of a failed job and
  a flow that ended FAILED, the document on stdout and nothing on stderr);
* a call that fails with an error leaves all three databases exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import cli_path

SEED = int(os.environ.get("ORCHESJOB_FUZZ_SEED", "20261129"))
BUDGET_S = float(os.environ.get("ORCHESJOB_FUZZ_SECONDS", "55"))
MAX_CALLS = 1500
# Another build's console scripts (e.g. an older release) to check that the fuzzer finds what it should.
BIN_DIR = os.environ.get("ORCHESJOB_FUZZ_BIN_DIR")
EXIT_CODES = {
    "orchesjob": {0, 1, 2, 3, 4, 5},
    "orchesjob-reserver": {0, 1, 2, 3, 4, 5, 6},  # 3: `result` passes on orchesjob's "job gone"
    "orchesjob-flow": {0, 1, 2},
}
DBS = ("orchesjob.db", "reserver.sqlite3", "orchesjob-flow.sqlite3")
ACTIVE_SQL = {
    "orchesjob.db": "SELECT count(*) FROM jobs WHERE status IN ('STARTING','RUNNING','ABORTING','CANCELLING')",
    "reserver.sqlite3": "SELECT count(*) FROM reservations WHERE status = 'DISPATCHING'",
    "orchesjob-flow.sqlite3": "SELECT (SELECT count(*) FROM flow_advancers) + "
    "(SELECT count(*) FROM flow_runs WHERE status IN ('PENDING','RUNNING'))",
}


def weird_values(now: int) -> list[str]:
    return [
        "", " ", "0", "-1", "1", "0.5", "-0", "1e308", "1e-320", "inf", "-inf", "nan", "NaN", "0x10", "1_000",
        "99999999999999999999999", str(now * 1000), str(now * 1000_000), str(now), str(now + 3600), "253402300800",
        "2026-05-04T03:00:00+09:00", "2026-05-04", "0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00",
        "2026-13-45", "10000000d", "30d", "2h", "90s", "5m", "1.5h", "-5s", "1e9d", "d", "x" * 3000,
        "\u00e9\u6f22\U0001f600", "\x7f", "--", "-", "--all", "{}", "[]", "null", '{"a": 1}', '[{"run_key": "done"}]',
        '{"a":' * 400 + "1" + "}" * 400, "a=b", "=", "K=V", "../../etc/passwd", "/dev/null", "%s%n",
        "done", "res", "fl", "never-seen-key",
    ]  # fmt: skip


def flag_pool() -> dict[str, dict[str, list[str]]]:
    """Per tool: subcommand -> the options it knows (and some it does not)."""
    start = ["--run-key", "--sync", "--strict", "--reuse-policy", "--start-timeout", "--cwd", "--env", "--env-file",
             "--timeout", "--request-id", "--retry-lost"]  # fmt: skip
    sel = ["--run-key", "--job-id"]
    clean = ["--before", "--after", "--all", "--job-id", "--run-key", "--dry-run", "--older-than", "--summary"]
    return {
        "orchesjob": {
            "start": start,
            "status": [*sel, "--running", "--all", "--stdout-offset", "--stderr-offset", "--max-bytes", "--batch"],
            "result": sel,
            "logs": [*sel, "--stream"],
            "clean": [*clean, "--forget-keys"],
            "abort": [*sel, "--reason", "--grace-seconds", "--wait"],
            "cancel": [*sel, "--reason", "--grace-seconds", "--wait"],
            "unlock": ["--run-key", "--reason", "--ttl"],
            "rerun": [*sel, "--sync", "--reason", "--start-timeout"],
            "info": [],
            "bogus": [],
        },
        "orchesjob-reserver": {
            "reserve": [
                "--run-key",
                "--not-before",
                "--expires-at",
                "--metadata-json",
                "--env",
                "--env-file",
                "--orchesjob-start-option",
                "--db",
            ],  # fmt: skip
            "run": ["--once", "--poll-interval", "--error-sleep", "--retention", "--orchesjob-start-option"],
            "status": ["--run-key", "--reservation-id", "--include-job"],
            "result": ["--run-key", "--reservation-id"],
            "cancel": ["--run-key", "--reservation-id"],
            "list": ["--status", "--limit"],
            "clean": [*clean, "--reservation-id"],
        },
        "orchesjob-flow": {
            "start": ["--run-key", "--replace-definition", "FLOW"],
            "status": ["--run-key", "--format"],
            "watch": ["--run-key", "--interval", "--mode"],
            "cancel": ["--run-key", "--grace-seconds"],
            "repair": ["--run-key", "--downstream", "--replace-definition", "FLOW"],
            "graph": ["--run-key", "--file", "--format"],
            "clean": ["--before", "--after", "--older-than", "--all", "--run-key", "--dry-run", "--summary"],
            "tick": ["--run-key"],
            "example": [],
        },
    }


BOOLEAN = {"--sync", "--strict", "--running", "--all", "--dry-run", "--summary", "--forget-keys", "--once",
           "--include-job", "--replace-definition", "--downstream", "--retry-lost"}  # fmt: skip


def flow_files(tmp_path) -> list[str]:
    files = {
        "ok.yaml": 'flow_id: f\nsteps:\n  - id: a\n    command: ["true"]\n',
        "fail.yaml": 'flow_id: g\nsteps:\n  - id: a\n    command: ["false"]\n',
        "bad.yaml": "flow_id: [\n",
        "cycle.yaml": 'flow_id: c\nsteps:\n  - id: a\n    depends_on: [b]\n    command: ["true"]\n'
        '  - id: b\n    depends_on: [a]\n    command: ["true"]\n',
        "deep.json": '{"flow_id": "d", "steps": ' + "[" * 50_000 + "]" * 50_000 + "}",
        "huge-timeout.yaml": 'flow_id: h\nsteps:\n  - id: a\n    timeout_sec: 1e400\n    command: ["true"]\n',
        "ms.yaml": "flow_id: m\nsteps:\n  - id: a\n    retry_delay_sec: 99999999999999\n    retries: 1\n"
        '    command: ["true"]\n',
        "bin.yaml": "\xff\xfe\x00",
    }
    paths = []
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1") if name == "bin.yaml" else text.encode())
        paths.append(str(path))
    return [*paths, str(tmp_path / "missing.yaml"), "-"]


def templates(files: list[str]) -> list[tuple[str, list[str]]]:
    """Valid calls; the fuzzer replaces one of their values (or drops or repeats one argument)."""
    ok, fail = files[0], files[1]
    return [
        ("orchesjob", ["start", "--run-key", "fz", "--sync", "--timeout", "1h", "--env", "A=1", "--", "true"]),
        (
            "orchesjob",
            ["start", "--run-key", "fz", "--reuse-policy", "failed-only", "--start-timeout", "5", "--", "true"],
        ),  # fmt: skip
        ("orchesjob", ["status", "--run-key", "done", "--stdout-offset", "0", "--max-bytes", "10"]),
        ("orchesjob", ["status", "--batch", "-"]),
        ("orchesjob", ["status", "--run-key", "done", "--all"]),
        ("orchesjob", ["result", "--run-key", "failed"]),
        ("orchesjob", ["logs", "--run-key", "done", "--stream", "stderr"]),
        ("orchesjob", ["unlock", "--run-key", "done", "--ttl", "1h", "--reason", "r"]),
        ("orchesjob", ["clean", "--before", "2001-01-01", "--dry-run"]),
        ("orchesjob", ["clean", "--older-than", "3650d", "--run-key", "done"]),
        ("orchesjob", ["abort", "--run-key", "done", "--grace-seconds", "1"]),
        ("orchesjob", ["rerun", "--run-key", "failed", "--start-timeout", "5", "--reason", "r"]),
        (
            "orchesjob-reserver",
            [
                "reserve",
                "--run-key",
                "fr",
                "--not-before",
                "2001-01-01T00:00:00Z",
                "--expires-at",
                "2999-01-01",
                "--metadata-json",
                '{"a": 1}',
                "--",
                "true",
            ],
        ),  # fmt: skip
        (
            "orchesjob-reserver",
            ["reserve", "--run-key", "fr", "--orchesjob-start-option=--timeout=1h", "--env-file", "-", "--", "true"],
        ),  # fmt: skip
        ("orchesjob-reserver", ["run", "--once", "--poll-interval", "1", "--retention", "3650d"]),
        ("orchesjob-reserver", ["status", "--run-key", "res", "--include-job"]),
        ("orchesjob-reserver", ["list", "--status", "RESERVED", "--limit", "5"]),
        ("orchesjob-reserver", ["cancel", "--run-key", "res"]),
        ("orchesjob-reserver", ["result", "--run-key", "res"]),
        ("orchesjob-reserver", ["clean", "--before", "2001-01-01", "--dry-run"]),
        ("orchesjob-flow", ["start", "--run-key", "ff", ok]),
        ("orchesjob-flow", ["start", "--run-key", "ff", "--replace-definition", fail]),
        ("orchesjob-flow", ["--poll-interval", "1", "status", "--run-key", "fl", "--format", "table"]),
        ("orchesjob-flow", ["watch", "--run-key", "fl", "--interval", "1", "--mode", "append"]),
        ("orchesjob-flow", ["repair", "--run-key", "fl"]),
        ("orchesjob-flow", ["graph", "--file", ok, "--format", "dot"]),
        ("orchesjob-flow", ["cancel", "--run-key", "fl", "--grace-seconds", "1"]),
        ("orchesjob-flow", ["clean", "--older-than", "3650d", "--dry-run"]),
    ]


TIME_FLAGS = {"--not-before", "--expires-at", "--before", "--after"}
DURATION_FLAGS = {"--timeout", "--ttl", "--older-than", "--retention"}
SECONDS_FLAGS = {"--start-timeout", "--grace-seconds", "--poll-interval", "--error-sleep", "--interval", "--wait"}
INT_FLAGS = {"--limit", "--max-bytes", "--stdout-offset", "--stderr-offset"}


def typed_values(now: int) -> dict[str, list[str]]:
    numbers = ["0", "-1", "1e308", "inf", "nan", "99999999999999999999999", "1e-320", "0x10", " 5", "5 ", "1_0"]
    return {
        "time": [str(now * 1000), str(now * 1000 + 999), str(now * 1_000_000), "253402300800", "-1", "1e5",
                 "0001-01-01T00:00:00", "9999-12-31T23:59:59-14:00", "2026-02-30", "99999999999", *numbers],
        "duration": ["10000000d", "3000000d", "1e9d", "36501d", "0", "0s", "-5s", "1.5e3h", "9" * 400, *numbers],
        "seconds": ["1e308", "inf", "nan", "-0", "1e18", "3153600001", *numbers],
        "int": ["9" * 30, "-1", "0", str(2**62), str(2**63), str(2**64), "1e3", *numbers],
    }  # fmt: skip


def mutate(rng: random.Random, values: list[str], typed, tool: str, args: list[str]) -> tuple[str, list[str]]:
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    value_positions = [i for i in range(1, end) if args[i - 1].startswith("--") and not args[i].startswith("--")]
    if value_positions and rng.random() < 0.8:
        i = rng.choice(value_positions)
        flag = args[i - 1]
        kind = ("time" if flag in TIME_FLAGS else "duration" if flag in DURATION_FLAGS
                else "seconds" if flag in SECONDS_FLAGS else "int" if flag in INT_FLAGS else None)  # fmt: skip
        args[i] = rng.choice(typed[kind] if kind and rng.random() < 0.8 else values)
        return tool, args
    if end == 0:
        return tool, args
    i = rng.randrange(end)
    roll = rng.random()
    if roll < 0.6:
        args[i] = rng.choice(values)
    elif roll < 0.8:
        del args[i]
    else:
        args.insert(i, args[i])
    return tool, args


def make_call(rng: random.Random, values: list[str], pool, files: list[str], tmp_path) -> tuple[str, list[str], str]:
    stdin = rng.choice(["", "not json", "[]", '[{"run_key": "done"}]', "[" * 20_000, '{"K": "v"}', "K=V\n"])
    if rng.random() < 0.6:
        tool, args = mutate(rng, values + files, typed_values(int(time.time())), *rng.choice(templates(files)))
        if tool == "orchesjob-reserver" and "run" in args and "--once" not in args:
            args.append("--once")  # a foreground daemon would never return
        return tool, args, stdin
    tool = rng.choice(list(pool))
    sub = rng.choice(list(pool[tool]))
    flags = list(pool[tool][sub])
    args: list[str] = [] if rng.random() < 0.05 else [sub]
    chosen = rng.sample(flags, k=min(len(flags), rng.randint(0, 4)))
    # Usually give the required selector a plausible value.
    if "--run-key" in flags and "--run-key" not in chosen and rng.random() < 0.7:
        chosen.append("--run-key")
    for flag in chosen:
        if flag == "FLOW":
            args.append(rng.choice(files))
        elif flag in BOOLEAN:
            args.append(flag)
        elif flag == "--run-key" and rng.random() < 0.6:
            args += [flag, rng.choice(["done", "res", "fl", "fz-" + str(rng.randint(0, 20)), "failed"])]
        elif flag in ("--env-file", "--batch", "--file") and rng.random() < 0.5:
            args += [flag, rng.choice(["-", *files])]
        elif flag == "--db":
            args += [flag, rng.choice([str(tmp_path / "home" / "reserver.sqlite3"), "/dev/null", "/proc/x/db"])]
        else:
            value = rng.choice(values)
            args += [f"{flag}={value}"] if rng.random() < 0.3 else [flag, value]
    if rng.random() < 0.1:
        args.insert(rng.randint(0, len(args)), rng.choice(values))
    if tool == "orchesjob-reserver" and sub == "run" and "--once" not in args:
        args.append("--once")  # a foreground daemon would never return
    if tool == "orchesjob-flow" and sub == "watch":
        args += ["--mode", "append"]
    if (tool, sub) in (("orchesjob", "start"), ("orchesjob-reserver", "reserve")) and rng.random() < 0.9:
        args += ["--", rng.choice(["true", "false", "/nonexistent/cmd"])]
    return tool, args, stdin


def snapshot(home: str) -> dict[str, str]:
    out = {}
    for name in DBS:
        path = os.path.join(home, name)
        if not os.path.exists(path):
            out[name] = "absent"
            continue
        db = sqlite3.connect(path, timeout=30)
        try:
            out[name] = hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
        finally:
            db.close()
    return out


def quiesce(home: str, timeout: float = 30.0) -> None:
    """Wait until no job, dispatch or flow advancer is active (their background writes would race a snapshot)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = 0
        for name, sql in ACTIVE_SQL.items():
            path = os.path.join(home, name)
            if os.path.exists(path):
                db = sqlite3.connect(path, timeout=30)
                try:
                    busy += db.execute(sql).fetchone()[0]
                except sqlite3.OperationalError:
                    pass  # not migrated yet
                finally:
                    db.close()
        if not busy:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still active after {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def fuzz_home(runner, tmp_path):
    runner.ok("start", "--run-key", "done", "--sync", "--", "true")
    runner.ok("start", "--run-key", "failed", "--sync", "--", "false")
    runner.ok("reserve", "--run-key", "res", "--", "true", tool="orchesjob-reserver")
    flow = tmp_path / "seed.yaml"
    flow.write_text('flow_id: s\nsteps:\n  - id: a\n    command: ["true"]\n')
    runner.ok("start", "--run-key", "fl", str(flow), tool="orchesjob-flow")
    quiesce(runner.home)
    return runner


def test_fuzz_all_three_clis(fuzz_home, tmp_path):
    runner = fuzz_home
    rng = random.Random(SEED)
    values = weird_values(int(time.time()))
    pool = flag_pool()
    files = flow_files(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    deadline = time.monotonic() + BUDGET_S
    calls = failures_checked = 0
    problems: list[str] = []
    while time.monotonic() < deadline and calls < MAX_CALLS and len(problems) < 10:
        tool, args, stdin = make_call(rng, values, pool, files, tmp_path)
        quiesce(runner.home)
        before = snapshot(runner.home)
        try:
            p = subprocess.run(
                [os.path.join(BIN_DIR, tool) if BIN_DIR else cli_path(tool), *args],
                input=stdin.encode(),
                capture_output=True,
                env=runner.env,
                cwd=str(cwd),
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            problems.append(f"{tool} {args!r}: hung")
            continue
        calls += 1
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        where = f"{tool} {args!r} (stdin {stdin[:40]!r}) -> {p.returncode}\nstdout={out[:300]}\nstderr={err[:500]}"
        if p.returncode not in EXIT_CODES[tool]:
            problems.append("exit code not in the spec's set: " + where)
        if "internal error" in err or '"internal"' in err:
            problems.append("internal error: " + where)
        if p.returncode == 0:
            continue
        if not err.strip():
            # A document on stdout: `result` of a failed job, a flow run that ended FAILED.
            try:
                json.loads(out)
            except ValueError:
                problems.append("failure without a JSON error or document: " + where)
            continue
        lines = [line for line in err.splitlines() if line.strip()]
        try:
            error = json.loads(lines[-1])
            assert len(lines) == 1 and isinstance(error, dict) and "error" in error and "error_type" in error
        except (ValueError, AssertionError):
            problems.append("stderr is not one JSON error object: " + where)
            continue
        failures_checked += 1
        if snapshot(runner.home) != before:
            problems.append("a failing call changed a database: " + where)
    print(f"fuzz: seed {SEED}, {calls} calls, {failures_checked} failing calls checked for writes")
    assert not problems, "\n\n".join(problems)
    assert calls >= 50, f"only {calls} calls in {BUDGET_S} s"
    assert failures_checked >= 20, failures_checked
