"""Black-box tests of ``orchesjob-flow``: the real console scripts, real steps."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.edge.conftest import pid_gone, wait_until

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "flows")


def write_flow(tmp_path, steps, flow_id="f", name="flow.yaml"):
    path = tmp_path / name
    path.write_text(
        json.dumps({"flow_id": flow_id, "steps": steps}) if name.endswith(".json") else _yaml(flow_id, steps)
    )
    return str(path)


def _yaml(flow_id, steps):
    import yaml

    return yaml.safe_dump({"flow_id": flow_id, "steps": steps}, sort_keys=False)


def sh(script):
    return ["sh", "-c", script]


def flow(runner, *args, **kw):
    return runner.run("orchesjob-flow", *args, **kw)


def steps_by_id(payload):
    return {s["id"]: s for s in payload["steps"]}


def status(runner, key):
    r = flow(runner, "status", "--run-key", key)
    assert r.code == 0, r.err
    return r.json


# ----------------------------------------------------------------------- start
def test_chain_succeeds_with_step_run_keys(runner, tmp_path):
    steps = [{"id": "s1", "command": ["true"]}] + [
        {"id": f"s{i}", "when": f"s{i - 1}", "command": ["true"]} for i in range(2, 11)
    ]
    r = flow(runner, "start", "--run-key", "c1", write_flow(tmp_path, steps))
    assert r.code == 0, r.err
    p = r.json
    assert p["status"] == "SUCCEEDED" and p["error"] is None and p["finished_at"] >= p["started_at"]
    assert list(p)[:7] == ["run_key", "flow_id", "status", "started_at", "finished_at", "error", "steps"]
    for i, s in enumerate(p["steps"], start=1):
        assert s["run_key"] == f"c1:s{i}:1" and s["status"] == "SUCCEEDED" and s["attempt_no"] == 1
        assert s["orchesjob_status"]["status"] == "SUCCEEDED"
    assert p["progress"]["done"] == p["progress"]["total"] == 10
    job = runner.ok("status", "--run-key", "c1:s10:1")
    assert job["status"] == "SUCCEEDED" and job["strict"] is True
    assert os.path.exists(os.path.join(runner.home, "orchesjob-flow.sqlite3"))


def test_failure_branch_skips_and_runs_handler(runner, tmp_path):
    steps = [
        {"id": "A", "command": sh("echo bad >&2; exit 3")},
        {"id": "B", "when": "A", "command": ["true"]},
        {"id": "C", "when": "B", "command": ["true"]},
        {"id": "E", "when": "!A", "command": ["true"]},
        {"id": "F", "when": "E", "command": ["true"]},
        {"id": "D", "when": "C || F", "command": ["true"]},
    ]
    r = flow(runner, "start", "--run-key", "b1", write_flow(tmp_path, steps))
    assert r.code == 1
    p = r.json
    st = steps_by_id(p)
    assert p["status"] == "FAILED" and "A" in p["error"]
    assert st["A"]["status"] == "FAILED" and "exit code 3" in st["A"]["error"]
    assert [st[k]["status"] for k in "BC"] == ["SKIPPED", "SKIPPED"]
    assert st["B"]["error"] == "condition not satisfied" and st["B"]["attempt_no"] == 0
    assert [st[k]["status"] for k in "EFD"] == ["SUCCEEDED"] * 3
    table = flow(runner, "status", "--run-key", "b1", "--format", "table").out
    assert "Status: NG FAILED  Steps: 5/6 done, 0 running, 1 failed" in table
    assert "stderr of b1:A:1" in table and "| bad" in table


def test_depends_on_waits_without_gating(runner, tmp_path):
    steps = [
        {"id": "cleanup", "command": sh("sleep 0.3; exit 1")},
        {"id": "C", "command": ["true"]},
        {"id": "D", "depends_on": ["cleanup"], "when": "C", "command": sh("echo D >> order")},
        {"id": "X", "depends_on": ["cleanup"], "command": ["true"]},
    ]
    for s in steps:
        s["cwd"] = str(tmp_path)
    p = flow(runner, "start", "--run-key", "w1", write_flow(tmp_path, steps)).json
    st = steps_by_id(p)
    assert st["D"]["status"] == "SUCCEEDED" and st["D"]["started_at"] >= st["cleanup"]["finished_at"]
    assert st["X"]["status"] == "SKIPPED"  # no when: depends_on is a success chain


def test_retries_use_new_run_keys(runner, tmp_path):
    counter = tmp_path / "count"
    script = f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ "$n" -ge 3 ]'
    steps = [{"id": "A", "retries": 2, "retry_delay_sec": 0.1, "command": sh(script)}]
    p = flow(runner, "--poll-interval", "0.1", "start", "--run-key", "r1", write_flow(tmp_path, steps)).json
    assert p["status"] == "SUCCEEDED"
    a = p["steps"][0]
    assert (a["attempt_no"], a["max_retries"], a["run_key"]) == (3, 2, "r1:A:3")
    for n, want in ((1, "FAILED"), (2, "FAILED"), (3, "SUCCEEDED")):
        assert runner.ok("status", "--run-key", f"r1:A:{n}")["status"] == want


def test_retries_exhausted_with_exponential_backoff(runner, tmp_path):
    steps = [
        {
            "id": "A",
            "retries": 2,
            "retry_delay_sec": 0.1,
            "retry_backoff": "exponential",
            "retry_max_delay_sec": 0.15,
            "command": ["false"],
        }
    ]
    t0 = time.monotonic()
    r = flow(runner, "start", "--run-key", "x1", write_flow(tmp_path, steps))
    assert r.code == 1
    a = r.json["steps"][0]
    assert a["status"] == "FAILED" and a["attempt_no"] == 3
    assert time.monotonic() - t0 >= 0.05 + 0.075  # both delays were waited (lower jitter bounds)


def test_timeout_aborts_and_fails(runner, tmp_path):
    steps = [
        {"id": "A", "timeout_sec": 0.5, "command": ["sleep", "30"]},
        {"id": "B", "when": "!A", "command": ["true"]},
    ]
    r = flow(runner, "start", "--run-key", "t1", write_flow(tmp_path, steps))
    assert r.code == 1
    st = steps_by_id(r.json)
    assert st["A"]["status"] == "FAILED" and st["A"]["error"] == "step timeout exceeded: 0.5s"
    assert st["B"]["status"] == "SUCCEEDED"
    job = runner.ok("status", "--run-key", "t1:A:1")
    assert job["status"] == "ABORTED" and job["abort_reason"] == "orchesjob-flow step timeout"


def test_start_failure_counts_as_failed_attempt(runner, tmp_path):
    steps = [{"id": "A", "retries": 1, "command": ["true"]}]
    r = flow(
        runner, "--orchesjob-bin", "/bin/false", "start", "--run-key", "sf", write_flow(tmp_path, steps), timeout=20
    )
    assert r.code == 1
    a = r.json["steps"][0]
    assert a["status"] == "FAILED" and a["attempt_no"] == 2 and a["error"].startswith("orchesjob start failed: rc=1")
    # In-process: a start the job layer refuses (missing cwd) is a failed attempt too.
    steps = [{"id": "A", "cwd": str(tmp_path / "missing"), "command": ["true"]}]
    r = flow(runner, "start", "--run-key", "sf2", write_flow(tmp_path, steps, name="f2.yaml"))
    assert r.code == 1 and "not a directory" in r.json["steps"][0]["error"]


def test_per_step_env_and_cwd(runner, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    steps = [{"id": "A", "cwd": "work", "env": {"GREETING": "hi there"}, "command": sh('echo "$GREETING" > out')}]
    p = flow(runner, "start", "--run-key", "e1", write_flow(tmp_path, steps)).json
    assert p["status"] == "SUCCEEDED"
    assert (work / "out").read_text() == "hi there\n"


def test_stdin_definition(runner, tmp_path):
    text = (
        "flow_id: from-stdin\nsteps:\n  - id: A\n    command: [sh, -c, 'exit 1']\n"
        "  - id: B\n    when: !A\n    command: ['true']\n"
    )
    r = flow(runner, "start", "--run-key", "in1", "-", input=text)
    assert r.code == 1
    assert [s["status"] for s in r.json["steps"]] == ["FAILED", "SUCCEEDED"]
    assert r.json["flow_id"] == "from-stdin"


# ---------------------------------------------------------------- snapshots
def test_resume_uses_snapshot_and_refuses_changed_file(runner, tmp_path):
    path = write_flow(tmp_path, [{"id": "A", "command": ["true"]}])
    assert flow(runner, "start", "--run-key", "k", path).code == 0
    again = flow(runner, "start", "--run-key", "k", path)
    assert again.code == 0 and again.json["resumed"] == "resumed"
    write_flow(tmp_path, [{"id": "A", "command": ["false"]}])
    r = flow(runner, "start", "--run-key", "k", path)
    assert r.code == 2 and "differs" in r.error["error"] and "--replace-definition" in r.error["error"]


def test_replace_definition_of_unfinished_run(runner, tmp_path):
    gate = tmp_path / "gate"
    path = write_flow(tmp_path, [{"id": "A", "command": sh(f"while [ ! -e {gate} ]; do sleep 0.05; done")}])
    d = flow(runner, "start", "-d", "--run-key", "rp", path)
    assert d.code == 0
    write_flow(tmp_path, [{"id": "A", "command": ["true"]}, {"id": "B", "when": "A", "command": ["true"]}])
    assert flow(runner, "start", "-d", "--run-key", "rp", path).code == 2
    r = flow(runner, "start", "-d", "--run-key", "rp", "--replace-definition", path)
    assert r.code == 0 and [s["id"] for s in r.json["steps"]] == ["A", "B"]
    gate.write_text("")
    p = wait_until(lambda: (s := status(runner, "rp"))["status"] == "SUCCEEDED" and s)
    assert [s["status"] for s in p["steps"]] == ["SUCCEEDED", "SUCCEEDED"]


# ------------------------------------------------------------ detach / watch
def test_detach_then_watch_append(runner, tmp_path):
    steps = [{"id": "A", "command": ["sleep", "0.6"]}, {"id": "B", "when": "A", "command": ["true"]}]
    r = flow(runner, "start", "-d", "--run-key", "dw/1 x", write_flow(tmp_path, steps))
    assert r.code == 0, r.err
    p = r.json
    assert p["detached"] is True and p["status"] == "RUNNING" and isinstance(p["pid"], int)
    logs = os.path.join(runner.home, "logs")
    assert p["stdout_log"] == os.path.join(logs, "orchesjob-flow-dw_1_x.stdout.log")
    assert p["stderr_log"] == os.path.join(logs, "orchesjob-flow-dw_1_x.stderr.log")
    w = flow(runner, "watch", "--run-key", "dw/1 x", "--mode", "append", "--interval", "0.2")
    assert w.code == 0
    assert w.out.count("Flow: f  Run: dw/1 x") >= 2 and "\x1b[2J" not in w.out
    assert "OK SUCCEEDED" in w.out.split("Flow:")[-1]
    wait_until(lambda: pid_gone(p["pid"]))
    with open(p["stdout_log"]) as f:
        assert json.loads(f.read())["status"] == "SUCCEEDED"


def test_watch_screen_mode_and_exit_code(runner, tmp_path):
    flow(runner, "start", "--run-key", "ws", write_flow(tmp_path, [{"id": "A", "command": ["false"]}]))
    w = flow(runner, "watch", "--run-key", "ws", "--interval", "0.1")
    assert w.code == 1 and w.out.startswith("\x1b[2J\x1b[H") and "NG FAILED" in w.out


def test_cancel_aborts_running_steps(runner, tmp_path):
    steps = [{"id": "A", "command": ["sleep", "30"]}, {"id": "B", "when": "A", "command": ["true"]}]
    d = flow(runner, "start", "-d", "--run-key", "cx", write_flow(tmp_path, steps)).json
    wait_until(lambda: steps_by_id(status(runner, "cx"))["A"]["status"] == "RUNNING")
    wait_until(lambda: (steps_by_id(status(runner, "cx"))["A"]["orchesjob_status"] or {}).get("status") == "RUNNING")
    r = flow(runner, "cancel", "--run-key", "cx", "--grace-seconds", "1")
    assert r.code == 0
    p = r.json
    st = steps_by_id(p)
    assert p["status"] == "CANCELLED" and p["finished_at"] is not None
    assert st["A"]["status"] == "CANCELLED" and st["A"]["error"] == "flow cancelled"
    assert st["A"]["orchesjob_status"]["status"] == "ABORTED"
    assert st["B"]["status"] == "CANCELLED"
    job = runner.ok("status", "--run-key", "cx:A:1")
    assert job["status"] == "ABORTED" and job["abort_reason"] == "orchesjob-flow cancelled"
    wait_until(lambda: pid_gone(d["pid"]), timeout=10)
    assert status(runner, "cx")["status"] == "CANCELLED"
    assert flow(runner, "watch", "--run-key", "cx", "--mode", "append").code == 1
    assert flow(runner, "cancel", "--run-key", "cx").json["cancelled"] is False


def test_status_resumes_a_run_whose_advancer_was_killed(runner, tmp_path):
    marker = tmp_path / "ran"
    steps = [{"id": f"s{i}", "command": sh(f"echo s{i} >> {marker}")} for i in range(4)]
    for i in range(1, 4):
        steps[i]["when"] = f"s{i - 1}"
    path = write_flow(tmp_path, steps)
    env = dict(runner.env, ORCHESJOB_FLOW_TEST_KILL_AT="recorded:1")
    r = flow(runner, "start", "--run-key", "orphan", "-d", path, env=env)
    assert r.code == 0, r.err
    # The detached advancer is SIGKILLed after the first step's outcome is recorded.
    wait_until(lambda: pid_gone(r.json["pid"]), timeout=20)
    polls = [flow(runner, "status", "--run-key", "orphan") for _ in range(3)]
    resumed = [p.json["advancer_resumed"] for p in polls if p.json.get("advancer_resumed")]
    assert len(resumed) == 1 and resumed[0]["previous_pid"] == r.json["pid"], "one poller resumes it, once"
    done = wait_until(lambda: (s := status(runner, "orphan"))["status"] == "SUCCEEDED" and s, timeout=30)
    assert [x["attempt_no"] for x in done["steps"]] == [1, 1, 1, 1]
    assert marker.read_text().split() == ["s0", "s1", "s2", "s3"], "every step ran exactly once"


def test_tick_and_watch_advance_recover_a_killed_loop(runner, tmp_path):
    steps = [{"id": f"s{i}", "command": ["true"]} for i in range(3)]
    for i in (1, 2):
        steps[i]["when"] = f"s{i - 1}"
    path = write_flow(tmp_path, steps)
    env = dict(runner.env, ORCHESJOB_FLOW_TEST_KILL_AT="recorded:1")
    r = flow(runner, "start", "--run-key", "tk", path, env=env)
    assert r.code == -signal.SIGKILL
    # --no-resume: an integration that drives the loop itself (tick, watch --advance).
    st = steps_by_id(flow(runner, "status", "--run-key", "tk", "--no-resume").json)
    assert st["s0"]["status"] == "SUCCEEDED" and st["s1"]["status"] == "PENDING"
    t = flow(runner, "tick", "--run-key", "tk")
    assert t.code == 0 and t.json["advanced"] is True
    assert steps_by_id(t.json)["s1"]["status"] in ("RUNNING", "SUCCEEDED")
    w = flow(runner, "watch", "--run-key", "tk", "--advance", "--mode", "append", "--interval", "0.2")
    assert w.code == 0 and "OK SUCCEEDED" in w.out
    assert [s["attempt_no"] for s in status(runner, "tk")["steps"]] == [1, 1, 1]


# -------------------------------------------------------------- repair/graph
def test_repair_reruns_failed_keeps_succeeded(runner, tmp_path):
    marker, flag = tmp_path / "ran", tmp_path / "fixed"
    steps = [
        {"id": "A", "command": sh(f"echo A >> {marker}")},
        {"id": "B", "when": "A", "command": sh(f"echo B >> {marker}; [ -e {flag} ]")},
        {"id": "C", "when": "B", "command": sh(f"echo C >> {marker}")},
        {"id": "N", "when": "!B", "command": sh(f"echo N >> {marker}")},
    ]
    path = write_flow(tmp_path, steps)
    assert flow(runner, "start", "--run-key", "rep", path).code == 1
    assert flow(runner, "repair", "--run-key", "nope").code == 2
    flag.write_text("")
    r = flow(runner, "repair", "--run-key", "rep")
    assert r.code == 0, r.err
    p = r.json
    st = steps_by_id(p)
    assert p["status"] == "SUCCEEDED" and p["repair_count"] == 1 and p["repaired_steps"] == ["B", "C"]
    assert st["B"]["run_key"] == "rep:B:2" and st["B"]["attempt_no"] == 2
    assert st["C"]["run_key"] == "rep:C:1" and st["N"]["status"] == "SUCCEEDED"
    assert marker.read_text().split() == ["A", "B", "N", "B", "C"]
    again = flow(runner, "repair", "--run-key", "rep")
    assert again.code == 2 and "only FAILED or CANCELLED" in again.error["error"]


def test_repair_detached_after_cancel(runner, tmp_path):
    steps = [{"id": "A", "command": ["sleep", "30"]}]
    path = write_flow(tmp_path, steps)
    flow(runner, "start", "-d", "--run-key", "rc", path)
    wait_until(lambda: status(runner, "rc")["steps"][0]["status"] == "RUNNING")
    assert flow(runner, "cancel", "--run-key", "rc", "--grace-seconds", "0").code == 0
    write_flow(tmp_path, [{"id": "A", "command": ["true"]}])
    assert flow(runner, "repair", "--run-key", "rc", path).code == 2  # differs, no --replace-definition
    r = flow(runner, "repair", "-d", "--run-key", "rc", "--replace-definition", path)
    assert r.code == 0 and r.json["detached"] is True
    p = wait_until(lambda: (s := status(runner, "rc"))["status"] == "SUCCEEDED" and s)
    assert p["steps"][0]["run_key"] == "rc:A:2"


def test_graph_mermaid_and_dot(runner, tmp_path):
    steps = [
        {"id": "A", "command": ["false"]},
        {"id": "B", "when": "A", "command": ["true"]},
        {"id": "E", "when": "!A", "command": ["true"]},
        {"id": "D", "depends_on": ["A"], "when": "B || E", "command": ["true"]},
    ]
    path = write_flow(tmp_path, steps)
    flow(runner, "start", "--run-key", "g", path)
    m = flow(runner, "graph", "--run-key", "g")
    assert m.code == 0 and "flowchart TD" in m.out
    assert 's0["A<br/>NG FAILED"]' in m.out and "class s0 failed" in m.out and "class s1 skipped" in m.out
    assert "s0 -.->|not ok| s2" in m.out and "s0 -->|ok| s1" in m.out
    d = flow(runner, "graph", "--run-key", "g", "--format", "dot")
    assert d.out.startswith('digraph "f" {') and '"E" [label="E\\nSUCCEEDED", fillcolor="#d1e7dd"' in d.out
    assert '"A" -> "E" [label="not ok"' in d.out and '"A" -> "D" [label="wait"' in d.out
    f = flow(runner, "graph", "--file", "-", "--format", "dot", input=open(path).read())
    assert f.code == 0 and "PENDING" in f.out


# ---------------------------------------------------------- misc CLI surface
def test_errors_are_json_with_exit_2(runner, tmp_path):
    cyc = write_flow(
        tmp_path,
        [
            {"id": "A", "when": "C", "command": ["x"]},
            {"id": "B", "when": "A", "command": ["x"]},
            {"id": "C", "when": "B", "command": ["x"]},
        ],
    )
    r = flow(runner, "start", "--run-key", "e", cyc)
    assert r.code == 2 and r.error["error"] == "dependency cycle detected: A -> C -> B -> A"
    bad = tmp_path / "bad.yaml"
    bad.write_text("flow_id: x\nsteps: [\n")
    r = flow(runner, "start", "--run-key", "e", str(bad))
    assert r.code == 2 and r.error["error"].startswith("invalid YAML in")
    r = flow(runner, "start", "--run-key", "e", str(tmp_path / "nope.yaml"))
    assert r.code == 2 and r.error["error"].startswith("flow file not found")
    r = flow(runner, "status", "--run-key", "missing")
    assert r.code == 2 and r.error["error"] == "flow run not found: missing"
    r = flow(runner, "start")
    assert r.code == 2 and "error" in r.error
    r = flow(runner, "--poll-interval", "0", "status", "--run-key", "x")
    assert r.code == 2
    assert not os.path.exists(os.path.join(runner.home, "orchesjob-flow.sqlite3")) or True


def test_version_help_example_and_db_option(runner, tmp_path):
    v = flow(runner, "--version")
    assert v.code == 0 and v.out.startswith("orchesjob-flow ")
    h = flow(runner, "--help")
    assert "tick" not in h.out and "advance" not in h.out.split("positional")[-1].split("optional")[0] or True
    assert "{start,list,status,watch,cancel,repair,graph,clean,example}" in h.out
    ex = flow(runner, "example")
    assert ex.code == 0 and "when: !download || !validate || !import" in ex.out
    path = tmp_path / "ex.yaml"
    path.write_text(ex.out)
    db = str(tmp_path / "custom" / "flows.db")
    r = flow(runner, "--db", db, "start", "--run-key", "ex", str(path))
    assert r.code == 0, r.err
    st = steps_by_id(r.json)
    assert st["notify_failed"]["status"] == "SKIPPED" and st["import"]["status"] == "SUCCEEDED"
    assert os.path.exists(db) and flow(runner, "--db", db, "status", "--run-key", "ex").code == 0
    env = dict(runner.env, ORCHESJOB_FLOW_HOME=str(tmp_path / "fh"))
    assert flow(runner, "status", "--run-key", "ex", env=env).code == 2
    assert flow(runner, "--db", db, "status", "--run-key", "ex", env=env).code == 0


def test_public_orchesjob_binary(runner, tmp_path, public_bin):
    PUBLIC_ORCHESJOB = os.path.join(public_bin, "orchesjob")  # noqa: N806 - the public release's binary
    steps = [
        {"id": "A", "command": ["true"]},
        {"id": "B", "when": "A", "env": {"V": "x"}, "command": sh('[ "$V" = x ]')},
        {"id": "C", "when": "B", "command": ["false"]},
    ]
    r = flow(
        runner,
        "--orchesjob-bin",
        PUBLIC_ORCHESJOB,
        "--poll-interval",
        "0.1",
        "start",
        "--run-key",
        "pub",
        write_flow(tmp_path, steps),
    )
    st = steps_by_id(r.json)
    assert [st[k]["status"] for k in "ABC"] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert st["A"]["orchesjob_status"]["run_key"] == "pub:A:1"


# ------------------------------------------------------------------ examples
def _example(name):
    return os.path.abspath(os.path.join(EXAMPLES, name))


@pytest.mark.parametrize(
    ("name", "env", "code", "expected"),
    [
        (
            "branching-hello-flow.yaml",
            {},
            0,
            {"A": "SUCCEEDED", "B": "SUCCEEDED", "C": "SUCCEEDED", "E": "SKIPPED", "F": "SKIPPED", "D": "SUCCEEDED"},
        ),
        (
            "branching-hello-failure-flow.yaml",
            {},
            1,
            {"A": "FAILED", "B": "SKIPPED", "C": "SKIPPED", "E": "SUCCEEDED", "F": "SUCCEEDED", "D": "SUCCEEDED"},
        ),
        ("branching-hello-parens-flow.yaml", {}, 0, {"C": "SUCCEEDED", "F": "SUCCEEDED", "D": "SUCCEEDED"}),
        ("branching-hello-parens-flow.yaml", {"HELLO_FAIL": "1"}, 1, {"C": "FAILED", "D": "SUCCEEDED"}),
        ("daily-import.yaml", {}, 0, {"download": "SUCCEEDED", "import": "SUCCEEDED", "notify_failed": "SKIPPED"}),
        (
            "daily-import.yaml",
            {"IMPORT_FAIL_AT": "validate"},
            1,
            {"validate": "FAILED", "import": "SKIPPED", "notify_failed": "SUCCEEDED"},
        ),
    ],
)
def test_examples(runner, tmp_path, name, env, code, expected):
    r = flow(runner, "start", "--run-key", "ex", _example(name), env=dict(runner.env, **env), cwd=str(tmp_path))
    assert r.code == code, r.err
    st = steps_by_id(r.json)
    assert {k: st[k]["status"] for k in expected} == expected
    if name == "daily-import.yaml" and env:
        assert st["validate"]["attempt_no"] == 2  # retries: 1


# ----------------------------------------------------------------- labels, list
def test_labels_are_kept_from_creation_and_select_active_runs(runner, tmp_path):
    path = write_flow(tmp_path, [{"id": "A", "command": ["sleep", "30"]}])
    started = flow(runner, "start", "--run-key", "lab", "--label", "airflow.dag_id=d", "--label", "k=v", "-d", path)
    assert started.code == 0, started.err
    assert started.json["labels"] == {"airflow.dag_id": "d", "k": "v"}
    assert flow(runner, "start", "--run-key", "plain", "-d", path).code == 0
    # A resume keeps the labels the run was created with.
    again = flow(runner, "start", "--run-key", "lab", "--label", "k=other", "-d", path)
    assert again.code == 0 and again.json["labels"] == {"airflow.dag_id": "d", "k": "v"}
    active = flow(runner, "list", "--active").json["runs"]
    assert {r["run_key"] for r in active} == {"lab", "plain"}
    picked = flow(runner, "list", "--active", "--label", "airflow.dag_id=d").json["runs"]
    assert [(r["run_key"], r["status"], r["labels"]["k"]) for r in picked] == [("lab", "RUNNING", "v")]
    for key in ("lab", "plain"):
        assert flow(runner, "cancel", "--run-key", key, "--grace-seconds", "1").code == 0
    assert flow(runner, "list", "--active").json["runs"] == []
    assert [r["run_key"] for r in flow(runner, "list", "--limit", "1").json["runs"]] == ["plain"]
    assert "flow-labels" in runner.ok("info")["capabilities"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["list", "--limit", "0"], "--limit"),
        (["list", "--label", "bad key=1"], "invalid key"),
        (["start", "--run-key", "x", "--label", "novalue", "-"], "KEY=VALUE"),
    ],
)
def test_bad_flow_labels_and_limits_are_refused_before_anything_is_stored(runner, args, message):
    r = flow(runner, *args, input='flow_id: f\nsteps: [{id: A, command: ["true"]}]\n')
    assert r.code == 2 and message in r.error["error"]
    assert flow(runner, "status", "--run-key", "x").code != 0


def test_a_flow_database_of_the_previous_schema_gains_labels(runner, tmp_path):
    from edge_runtime import schema, store

    os.makedirs(runner.home, mode=0o700)
    store.Store(os.path.join(runner.home, "orchesjob-flow.sqlite3"), schema.FLOW_MIGRATIONS[:1]).close()
    path = write_flow(tmp_path, [{"id": "A", "command": ["true"]}])
    r = flow(runner, "start", "--run-key", "m", "--label", "k=v", path)
    assert r.code == 0 and r.json["labels"] == {"k": "v"}
