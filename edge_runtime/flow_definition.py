"""Flow definitions: loading (YAML/JSON, file or stdin), validation, snapshots.

A validated definition is turned into a canonical JSON document (the
*snapshot*). The snapshot is what a flow run stores and executes, so a flow
file edited after ``start`` never changes a run in flight; comparing canonical
forms tells whether a resumed ``start`` brought a different definition.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from . import flow_expr
from .errors import UsageError

STEP_FIELDS = {
    "id",
    "command",
    "when",
    "depends_on",
    "retries",
    "retry_delay_sec",
    "retry_backoff",
    "retry_max_delay_sec",
    "retry_jitter",
    "timeout_sec",
    "strict",
    "start_timeout_sec",
    "env",
    "cwd",
}
FLOW_FIELDS = {"flow_id", "steps", "description"}
BACKOFFS = ("fixed", "exponential")
# Keywords of the public release's condition model, kept so old flow files load.
LEGACY_WHEN = ("always", "all_success", "all_succeeded", "any_failed")


class FlowValidationError(UsageError):
    """The flow definition is not usable (exit code 2)."""

    kind = "invalid_flow"


@dataclass
class Step:
    id: str
    command: list[str]
    when: str | None = None
    depends_on: list[str] = field(default_factory=list)
    retries: int = 0
    retry_delay_sec: float = 0
    retry_backoff: str = "fixed"
    retry_max_delay_sec: float | None = None
    retry_jitter: bool = True
    timeout_sec: float | None = None
    strict: bool = True
    start_timeout_sec: float | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    # Derived, not part of the snapshot:
    condition: flow_expr.Node = ("const", True)
    waits: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "command": list(self.command)}
        for name in ("when", "timeout_sec", "start_timeout_sec", "env", "cwd", "retry_max_delay_sec"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        out["retries"] = self.retries
        out["retry_delay_sec"] = self.retry_delay_sec
        if self.retry_backoff != "fixed":
            out["retry_backoff"] = self.retry_backoff
            out["retry_jitter"] = self.retry_jitter
        out["strict"] = self.strict
        return out


@dataclass
class FlowDefinition:
    flow_id: str
    steps: list[Step]
    description: str | None = None

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flow_id": self.flow_id}
        if self.description:
            out["description"] = self.description
        out["steps"] = [s.to_json() for s in self.steps]
        return out

    def canonical(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def dependents(self) -> dict[str, list[str]]:
        """step id -> ids of steps that wait on it."""
        out: dict[str, list[str]] = {s.id: [] for s in self.steps}
        for s in self.steps:
            for dep in s.waits:
                out[dep].append(s.id)
        return out


# --------------------------------------------------------------------- loading
# An unquoted `when:` value that YAML would misread: `!A` is a tag, `!A || B`
# or `A && B` hit the block-scalar/anchor indicators, and `! A` is a
# non-specific tag that silently drops the negation. Such values are quoted
# before YAML sees them. Only simple `when: <value>` mapping lines are touched;
# quoted, flow-collection and block-scalar values are left alone.
_WHEN_LINE_RE = re.compile(r"^(?P<head>\s*(?:-\s+)?when\s*:[ \t]+)(?P<value>[^\s\"'\[{|>#].*?)\s*$")
_NEEDS_QUOTES_RE = re.compile(r"[!&|*]")


def quote_when_values(text: str) -> str:
    """Return ``text`` with unquoted ``when:`` expressions turned into double-quoted YAML strings."""
    lines = text.split("\n")
    changed = False
    for i, line in enumerate(lines):
        if "when" not in line:
            continue
        m = _WHEN_LINE_RE.match(line)
        if m is None:
            continue
        value = m.group("value")
        # A YAML comment starts at " #"; `#` never occurs in an expression.
        hash_at = value.find(" #")
        comment = ""
        if hash_at >= 0:
            value, comment = value[:hash_at].rstrip(), " " + value[hash_at:].lstrip()
        if not _NEEDS_QUOTES_RE.search(value) or value.startswith("!!"):
            continue
        lines[i] = m.group("head") + json.dumps(value) + comment
        changed = True
    return "\n".join(lines) if changed else text


def read_source(path: str) -> tuple[str, str]:
    """(text, display name) of a flow file; ``-`` reads standard input."""
    if path == "-":
        try:
            return sys.stdin.read(), "<stdin>"
        except UnicodeDecodeError as exc:
            raise FlowValidationError(f"flow definition on stdin is not UTF-8: {exc}") from None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except FileNotFoundError:
        raise FlowValidationError(f"flow file not found: {path}", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowValidationError(f"cannot read flow file {path}: {exc}", path=path) from None


def parse_text(text: str, name: str = "<flow>") -> Any:
    """YAML or JSON text to plain data. ``.json`` files are JSON; anything else is YAML
    (a superset of JSON), after quoting unquoted ``when:`` expressions."""
    if name.endswith(".json") or (name == "<stdin>" and text.lstrip().startswith("{")):
        try:
            return json.loads(text)
        except RecursionError:
            raise FlowValidationError(f"invalid JSON in {name}: nested too deeply") from None
        except json.JSONDecodeError as exc:
            raise FlowValidationError(
                f"invalid JSON in {name}: {exc.msg} at line {exc.lineno} column {exc.colno}",
                line=exc.lineno,
                column=exc.colno,
            ) from None
    import yaml  # lazy: only flow loading needs it

    try:
        return yaml.safe_load(quote_when_values(text))
    except RecursionError:
        raise FlowValidationError(f"invalid YAML in {name}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        details = {"line": mark.line + 1, "column": mark.column + 1} if mark is not None else {}
        raise FlowValidationError(f"invalid YAML in {name}{where}: {problem}", **details) from None


def load(path: str, base_dir: str | None = None) -> tuple[FlowDefinition, str]:
    """Load and validate a flow file (or ``-``); returns (definition, source text).

    Relative step ``cwd`` values are resolved against the flow file's directory
    (the current directory for stdin) so the snapshot is location-independent.
    """
    text, name = read_source(path)
    data = parse_text(text, name)
    if base_dir is None:
        base_dir = os.getcwd() if path == "-" else os.path.dirname(os.path.abspath(path))
    return validate(data, base_dir=base_dir), text


# ------------------------------------------------------------------ validation
MAX_SECONDS = 100 * 365 * 86400.0  # = timefmt.MAX_DURATION_S (not imported: flow loading stays lean)
MAX_RETRIES = 10_000


def _number(step_id: str, name: str, value: Any, *, minimum: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise FlowValidationError(f"step {step_id}: {name} must be a number, got {value!r}")
    if integer and int(value) != value:
        raise FlowValidationError(f"step {step_id}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise FlowValidationError(f"step.{name} must be >= {minimum:g}: {step_id} (got {value!r})")
    # Bounded like every duration of the runtime (see timefmt): a delay or timeout
    # past year 9999 could never be stored, formatted or waited for.
    maximum = MAX_RETRIES if integer else MAX_SECONDS
    if value > maximum:
        raise FlowValidationError(f"step {step_id}: {name} must be <= {maximum:g}, got {value!r}")
    return int(value) if integer else value


def _step(raw: Any, index: int, base_dir: str | None) -> Step:
    if not isinstance(raw, dict):
        raise FlowValidationError(f"each step must be an object: steps[{index}] is a {type(raw).__name__}")
    sid = raw.get("id")
    if not isinstance(sid, str) or not sid:
        raise FlowValidationError(f"steps[{index}]: id is required and must be a non-empty string")
    if not flow_expr.IDENT_RE.fullmatch(sid):
        raise FlowValidationError(
            f"steps[{index}]: invalid step id {sid!r}; "
            "use letters, digits, '_', '-', '.' and start with a letter or '_'"
        )
    unknown = sorted(set(raw) - STEP_FIELDS)
    if unknown:
        raise FlowValidationError(f"step {sid}: unknown field(s): {', '.join(unknown)}", step=sid)
    cmd = raw.get("command")
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
        raise FlowValidationError(f"step.command must be a non-empty string list: {sid}", step=sid)
    if any("\x00" in c for c in cmd):
        raise FlowValidationError(f"step {sid}: command must not contain NUL bytes", step=sid)
    step = Step(id=sid, command=list(cmd))
    when = raw.get("when")
    if when is not None:
        if isinstance(when, bool):
            # `when: true` is a natural way to say "always".
            when = "always" if when else None
            if when is None:
                raise FlowValidationError(f"step {sid}: when: false would never run; remove the step instead")
        if not isinstance(when, str):
            raise FlowValidationError(f"step.when must be a string: {sid} (a condition expression)", step=sid)
        step.when = when
    deps = raw.get("depends_on", [])
    if isinstance(deps, str):
        deps = [deps]
    if not isinstance(deps, list) or not all(isinstance(d, str) and d for d in deps):
        raise FlowValidationError(f"step.depends_on must be a string list: {sid} (step ids)", step=sid)
    step.depends_on = list(dict.fromkeys(deps))
    if "retries" in raw:
        step.retries = int(_number(sid, "retries", raw["retries"], minimum=0, integer=True))
    if "retry_delay_sec" in raw:
        step.retry_delay_sec = _number(sid, "retry_delay_sec", raw["retry_delay_sec"], minimum=0)
    if "retry_backoff" in raw:
        if raw["retry_backoff"] not in BACKOFFS:
            raise FlowValidationError(f"step {sid}: retry_backoff must be one of {', '.join(BACKOFFS)}", step=sid)
        step.retry_backoff = raw["retry_backoff"]
    if "retry_max_delay_sec" in raw:
        step.retry_max_delay_sec = _number(sid, "retry_max_delay_sec", raw["retry_max_delay_sec"], minimum=0)
    if "retry_jitter" in raw:
        if not isinstance(raw["retry_jitter"], bool):
            raise FlowValidationError(f"step {sid}: retry_jitter must be true or false", step=sid)
        step.retry_jitter = raw["retry_jitter"]
    for name in ("timeout_sec", "start_timeout_sec"):
        if raw.get(name) is not None:
            value = _number(sid, name, raw[name], minimum=0)
            if value <= 0:
                raise FlowValidationError(f"step {sid}: {name} must be > 0", step=sid)
            setattr(step, name, value)
    if "strict" in raw:
        if not isinstance(raw["strict"], bool):
            raise FlowValidationError(f"step.strict must be boolean: {sid} (true or false)", step=sid)
        step.strict = raw["strict"]
    env = raw.get("env")
    if env is not None:
        if not isinstance(env, dict):
            raise FlowValidationError(f"step {sid}: env must be a mapping of names to strings", step=sid)
        clean: dict[str, str] = {}
        for k, v in env.items():
            if not isinstance(k, str) or not k or "=" in k or "\x00" in k:
                raise FlowValidationError(f"step {sid}: invalid env name {k!r}", step=sid)
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise FlowValidationError(f"step {sid}: env {k} must be a string or number", step=sid)
            clean[k] = str(v)
        step.env = clean or None
    cwd = raw.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd:
            raise FlowValidationError(f"step {sid}: cwd must be a non-empty string", step=sid)
        expanded = os.path.expanduser(cwd)
        if base_dir is not None and not os.path.isabs(expanded):
            expanded = os.path.normpath(os.path.join(base_dir, expanded))
        step.cwd = expanded
    return step


def _condition(step: Step, ids: set[str]) -> None:
    """Fill ``condition`` and ``waits`` (depends_on ∪ ids referenced by when)."""
    when = step.when
    if when is not None and when.strip() in LEGACY_WHEN and when.strip() not in ids:
        keyword = when.strip()
        deps = step.depends_on
        if keyword == "always" or not deps:
            step.condition = ("const", True)
        elif keyword == "any_failed":
            node: flow_expr.Node = ("not", ("id", deps[0]))
            for d in deps[1:]:
                node = ("or", node, ("not", ("id", d)))
            step.condition = node
        else:
            node = ("id", deps[0])
            for d in deps[1:]:
                node = ("and", node, ("id", d))
            step.condition = node
    elif when is not None:
        try:
            step.condition = flow_expr.parse(when)
        except UsageError as exc:
            raise FlowValidationError(
                f"invalid when for {step.id}: {exc.message}", step=step.id, **exc.details
            ) from None
    elif step.depends_on:
        # No `when`: depends_on is a success chain (compatibility with the spec).
        node = ("id", step.depends_on[0])
        for d in step.depends_on[1:]:
            node = ("and", node, ("id", d))
        step.condition = node
    waits = list(step.depends_on)
    for ref in flow_expr.references(step.condition):
        if ref not in waits:
            waits.append(ref)
    step.waits = waits


def find_cycle(steps: list[Step]) -> list[str] | None:
    """A dependency cycle as a closed path (``[A, C, B, A]``), or None."""
    graph = {s.id: s.waits for s in steps}
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for s in steps:
        if s.id not in state:
            found = visit(s.id)
            if found:
                return found
    return None


def validate(data: Any, base_dir: str | None = None) -> FlowDefinition:
    """Plain data (from YAML/JSON or a stored snapshot) to a validated ``FlowDefinition``."""
    if not isinstance(data, dict):
        raise FlowValidationError("flow definition must be an object (a mapping with flow_id and steps)")
    flow_id = data.get("flow_id")
    if not isinstance(flow_id, str) or not flow_id.strip():
        raise FlowValidationError("flow_id is required and must be a non-empty string")
    unknown = sorted(set(data) - FLOW_FIELDS)
    if unknown:
        raise FlowValidationError(f"unknown flow field(s): {', '.join(unknown)}")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise FlowValidationError("steps must be a non-empty list")
    steps = [_step(raw, i, base_dir) for i, raw in enumerate(raw_steps)]
    seen: set[str] = set()
    for s in steps:
        if s.id in seen:
            raise FlowValidationError(f"duplicate step id: {s.id}", step=s.id)
        seen.add(s.id)
    for s in steps:
        _condition(s, seen)
        for ref in s.waits:
            if ref not in seen:
                how = "depends on" if ref in s.depends_on else "when references"
                raise FlowValidationError(f"step {s.id} {how} unknown step: {ref}", step=s.id, unknown=ref)
            if ref == s.id:
                raise FlowValidationError(f"dependency cycle detected: {s.id} -> {s.id}", cycle=[s.id, s.id])
    cycle = find_cycle(steps)
    if cycle:
        raise FlowValidationError(f"dependency cycle detected: {' -> '.join(cycle)}", cycle=cycle)
    description = data.get("description")
    return FlowDefinition(
        flow_id=flow_id, steps=steps, description=description if isinstance(description, str) else None
    )


def from_snapshot(canonical: str) -> FlowDefinition:
    """Rebuild the definition a run stored (already validated and resolved)."""
    return validate(json.loads(canonical))
