"""Unit tests of flow loading and validation."""

from __future__ import annotations

import json

import pytest

from edge_runtime.flow_definition import FlowValidationError, load, parse_text, quote_when_values, validate


def flow(*steps, flow_id="f"):
    return {"flow_id": flow_id, "steps": list(steps)}


def s(sid, **kw):
    return {"id": sid, "command": ["true"], **kw}


def test_minimal_and_defaults():
    d = validate(flow(s("A"), s("B", depends_on=["A"])))
    a, b = d.steps
    assert (a.retries, a.retry_delay_sec, a.strict, a.timeout_sec, a.start_timeout_sec) == (0, 0, True, None, None)
    assert a.condition == ("const", True) and a.waits == []
    # depends_on without when = success chain
    assert b.condition == ("id", "A") and b.waits == ["A"]


def test_depends_on_is_wait_only_with_when():
    d = validate(flow(s("cleanup"), s("C"), s("F"), s("D", depends_on=["cleanup"], when="C || F")))
    step = d.step("D")
    assert step.waits == ["cleanup", "C", "F"]
    assert "cleanup" not in json.dumps(step.condition)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"steps": [s("A")]}, "flow_id is required"),
        (flow(), "steps must be a non-empty list"),
        (flow(s("A"), s("A")), "duplicate step id: A"),
        (flow(s("A", when="B")), "step A when references unknown step: B"),
        (flow(s("A", depends_on=["Z"])), "step A depends on unknown step: Z"),
        (flow(s("A", when="A")), "dependency cycle detected: A -> A"),
        (flow({"id": "A", "command": []}), "step.command must be a non-empty string list: A"),
        (flow({"id": "A", "command": "echo hi"}), "step.command must be a non-empty string list: A"),
        (flow(s("A", retries=-1)), "retries must be >= 0"),
        (flow(s("A", retries=1.5)), "retries must be an integer"),
        (flow(s("A", timeout_sec=0)), "timeout_sec must be > 0"),
        (flow(s("A", strict="yes")), "step.strict must be boolean: A"),
        (flow(s("A", retry_backoff="linear")), "retry_backoff must be one of"),
        (flow(s("A", depend_on=["B"])), "unknown field(s): depend_on"),
        (flow(s("A", env={"X": [1]})), "env X must be a string"),
        (flow(s("A", when="(")), "invalid when for A"),
        (flow(s("bad id")), "invalid step id"),
    ],
)
def test_validation_errors(data, fragment):
    with pytest.raises(FlowValidationError) as info:
        validate(data)
    assert fragment in info.value.message
    assert info.value.exit_code == 2


def test_cycle_path_in_error():
    data = flow(s("A", when="C"), s("B", when="A"), s("C", when="B"))
    with pytest.raises(FlowValidationError) as info:
        validate(data)
    assert info.value.message == "dependency cycle detected: A -> C -> B -> A"
    assert info.value.details["cycle"] == ["A", "C", "B", "A"]


def test_cycle_through_depends_on():
    with pytest.raises(FlowValidationError, match="B -> C -> B"):
        validate(flow(s("A"), s("B", depends_on=["A", "C"]), s("C", when="B")))


def test_legacy_keywords():
    d = validate(
        flow(s("A"), s("B"), s("C", depends_on=["A", "B"], when="any_failed"), s("D", depends_on=["A"], when="always"))
    )
    assert d.step("C").condition == ("or", ("not", ("id", "A")), ("not", ("id", "B")))
    assert d.step("D").condition == ("const", True) and d.step("D").waits == ["A"]


UNQUOTED = """\
flow_id: f
steps:
  - id: A
    command: ["true"]
  - id: B
    command: ["true"]
  - id: N1
    when: !A
    command: ["true"]
  - id: N2
    when: !A || !B   # any failed
    command: ["true"]
  - id: N3
    when: !A && B
    command: ["true"]
  - id: N4
    when: ! A
    command: ["true"]
  - id: N5
    when: !(A || B)
    command: ["true"]
  - when: A && B
    id: N6
    command: ["true"]
  - id: Q
    when: '!A'
    command: ["true"]
"""


def test_unquoted_when_values_survive_yaml():
    d = validate(parse_text(UNQUOTED, "f.yaml"))
    assert d.step("N1").when == "!A"
    assert d.step("N2").when == "!A || !B"
    assert d.step("N3").condition == ("and", ("not", ("id", "A")), ("id", "B"))
    # `! A` is a YAML non-specific tag that would silently yield "A"; it must stay negated.
    assert d.step("N4").condition == ("not", ("id", "A"))
    assert d.step("N5").condition == ("not", ("or", ("id", "A"), ("id", "B")))
    assert d.step("N6").condition == ("and", ("id", "A"), ("id", "B"))
    assert d.step("Q").when == "!A"


def test_quote_when_values_leaves_other_lines_alone():
    text = 'x: !A\n  command: ["echo", "when: !x"]\n  when: A\n'
    assert quote_when_values(text) == text


def test_yaml_and_json_syntax_errors_are_validation_errors():
    with pytest.raises(FlowValidationError, match=r"invalid YAML in f.yaml at line 3"):
        parse_text("flow_id: f\nsteps: [\n", "f.yaml")
    with pytest.raises(FlowValidationError, match=r"invalid JSON in f.json"):
        parse_text("{", "f.json")


def test_load_file_json_and_relative_cwd(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "flow.json"
    p.write_text(json.dumps(flow(s("A", cwd="sub", env={"N": 1}))))
    d, _ = load(str(p))
    assert d.step("A").cwd == str(tmp_path / "sub")
    assert d.step("A").env == {"N": "1"}
    with pytest.raises(FlowValidationError, match="flow file not found"):
        load(str(tmp_path / "missing.yaml"))


def test_snapshot_is_canonical():
    a = validate(flow(s("A", retries=1), s("B", when="A")))
    b = validate(json.loads(a.canonical()))
    assert a.canonical() == b.canonical() and a.sha256() == b.sha256()
    c = validate(flow(s("A", retries=2), s("B", when="A")))
    assert c.sha256() != a.sha256()


def test_exponential_backoff_delays():
    from edge_runtime.flow_engine import retry_delay

    d = validate(
        flow(
            s("A", retries=5, retry_delay_sec=1, retry_backoff="exponential", retry_max_delay_sec=5, retry_jitter=False)
        )
    )
    step = d.step("A")
    assert [retry_delay(step, n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    jittered = validate(flow(s("A", retry_delay_sec=2, retry_backoff="exponential"))).step("A")
    for n in range(1, 5):
        v = retry_delay(jittered, n)
        assert 2 ** (n - 1) <= v <= 2**n
