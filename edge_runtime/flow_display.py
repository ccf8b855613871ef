"""Human views of a flow run: the status table, failed-step stderr tails, graphs.

Pure functions over the status payload (and the definition for graphs), so
they can be tested without a database.
"""

from __future__ import annotations

import time
from typing import Any

from . import flow_expr
from .flow_definition import FlowDefinition
from .table import elapsed, fmt_time, render

MARKS = {
    "PENDING": ".",
    "DELAYED": "~",
    "RUNNING": ">",
    "SUCCEEDED": "OK",
    "FAILED": "NG",
    "SKIPPED": "--",
    "CANCELLED": "!!",
}
# Fill / stroke colours per status, shared by Mermaid and DOT.
COLOURS = {
    "PENDING": ("#f5f5f5", "#9e9e9e"),
    "DELAYED": ("#fff3cd", "#c69500"),
    "RUNNING": ("#cfe2ff", "#0d6efd"),
    "SUCCEEDED": ("#d1e7dd", "#198754"),
    "FAILED": ("#f8d7da", "#dc3545"),
    "SKIPPED": ("#e9ecef", "#6c757d"),
    "CANCELLED": ("#ffe5d0", "#fd7e14"),
}
HEADERS = ("Step", "Status", "Attempt", "Elapsed", "Job", "Exit", "Run key", "Error")
# Only free text is shortened; ids, run keys and exit codes are shown whole.
CAPS = {"Error": 60}
STDERR_TAIL_LINES = 5


def attempt_text(step: dict[str, Any]) -> str:
    """``n`` for a step without retries, ``n/m`` (m = 1 + retries) for one with them; ``-`` before its first."""
    if not step["attempt_no"]:
        return "-"
    if not step["max_retries"]:
        return str(step["attempt_no"])
    return f"{step['attempt_no']}/{step['max_retries'] + 1}"


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = 0 if total == 0 else round(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def stderr_tail(step: dict[str, Any], lines: int = STDERR_TAIL_LINES) -> list[str]:
    """Last lines of a step's stderr log (from its orchesjob payload), if readable."""
    job = step.get("orchesjob_status") or {}
    path = job.get("stderr_file")
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").rstrip("\n")
    return text.split("\n")[-lines:] if text else []


def render_table(payload: dict[str, Any], now: float | None = None, tails: bool = True) -> str:
    now = time.time() if now is None else now
    steps = payload["steps"]
    done = sum(1 for s in steps if s["status"] in ("SUCCEEDED", "SKIPPED"))
    running = sum(1 for s in steps if s["status"] == "RUNNING")
    failed = sum(1 for s in steps if s["status"] == "FAILED")
    status = payload["status"]
    lines = [
        f"Flow: {payload['flow_id']}  Run: {payload['run_key']}",
        f"Status: {MARKS.get(status, '?')} {status}  Steps: {done}/{len(steps)} done, {running} running, "
        f"{failed} failed  {progress_bar(done, len(steps))}",
        f"Started: {fmt_time(payload['started_at'])}  Finished: {fmt_time(payload['finished_at'])}  "
        f"Elapsed: {elapsed(payload['started_at'], payload['finished_at'], now)}",
    ]
    if payload.get("error"):
        lines.append(f"Error: {payload['error']}")
    lines.append("")
    rows = []
    for s in steps:
        job = s.get("orchesjob_status") or {}
        rows.append(
            (
                s["id"],
                f"{MARKS.get(s['status'], '?')} {s['status']}",
                attempt_text(s),
                elapsed(s["started_at"], s["finished_at"], now),
                job.get("status"),
                job.get("exit_code"),
                s["run_key"],
                s.get("error"),
            )
        )
    text = "\n".join(lines) + "\n" + render(HEADERS, rows, caps=CAPS)
    if tails:
        for s in steps:
            if s["status"] == "FAILED" or (s["status"] in ("DELAYED", "PENDING") and s.get("error")):
                tail = stderr_tail(s)
                if tail:
                    text += f"\nstderr of {s['run_key']} (last {len(tail)} lines):\n"
                    text += "".join(f"  | {t}\n" for t in tail)
    return text


def runs_table(runs: list[dict[str, Any]], now: float | None = None) -> str:
    """Flow runs one per row (`list --format table`)."""
    now = time.time() if now is None else now
    rows = [
        (r["run_key"], r["flow_id"], f"{MARKS.get(r['status'], '?')} {r['status']}", fmt_time(r["started_at"]),
         elapsed(r["started_at"], r["finished_at"], now), ",".join(f"{k}={v}" for k, v in r["labels"].items()))
        for r in runs
    ]  # fmt: skip
    return render(("Run key", "Flow", "Status", "Started", "Elapsed", "Labels"), rows, caps={"Labels": 60})


# ---------------------------------------------------------------------- graphs
def _edges(defn: FlowDefinition) -> list[tuple[str, str, str]]:
    """(from, to, kind): kind is 'pos' (needs success), 'neg' (needs non-success), 'mixed' or 'wait'."""
    out = []
    for s in defn.steps:
        pol = flow_expr.polarity(s.condition)
        for dep in s.waits:
            out.append((dep, s.id, pol.get(dep, "wait")))
    return out


def _statuses(defn: FlowDefinition, payload: dict[str, Any] | None) -> dict[str, str]:
    if payload is None:
        return {s.id: "PENDING" for s in defn.steps}
    return {s["id"]: s["status"] for s in payload["steps"]}


def mermaid(defn: FlowDefinition, payload: dict[str, Any] | None = None) -> str:
    statuses = _statuses(defn, payload)
    node = {s.id: f"s{i}" for i, s in enumerate(defn.steps)}
    title = defn.flow_id if payload is None else f"{defn.flow_id} / {payload['run_key']}: {payload['status']}"
    lines = ["---", f"title: {title}", "---", "flowchart TD"]
    for s in defn.steps:
        st = statuses.get(s.id, "PENDING")
        label = f"{s.id}<br/>{MARKS.get(st, '?')} {st}".replace('"', "#quot;")
        lines.append(f'    {node[s.id]}["{label}"]')
    styles = {"pos": "-->", "neg": "-.->", "mixed": "-->", "wait": "-.-o"}
    labels = {"pos": "ok", "neg": "not ok", "mixed": "ok / not ok", "wait": "wait"}
    for a, b, kind in _edges(defn):
        lines.append(f"    {node[a]} {styles[kind]}|{labels[kind]}| {node[b]}")
    for st, (fill, stroke) in COLOURS.items():
        lines.append(f"    classDef {st.lower()} fill:{fill},stroke:{stroke},color:#000")
    for st in COLOURS:
        members = [node[s.id] for s in defn.steps if statuses.get(s.id) == st]
        if members:
            lines.append(f"    class {','.join(members)} {st.lower()}")
    return "\n".join(lines) + "\n"


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot(defn: FlowDefinition, payload: dict[str, Any] | None = None) -> str:
    statuses = _statuses(defn, payload)
    title = defn.flow_id if payload is None else f"{defn.flow_id} / {payload['run_key']}: {payload['status']}"
    lines = [
        f"digraph {_dot_id(defn.flow_id)} {{",
        f"  label={_dot_id(title)};",
        "  labelloc=t;",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for s in defn.steps:
        st = statuses.get(s.id, "PENDING")
        fill, stroke = COLOURS.get(st, ("#ffffff", "#000000"))
        lines.append(
            f'  {_dot_id(s.id)} [label={_dot_id(s.id)[:-1]}\\n{st}", fillcolor={_dot_id(fill)}, '
            f"color={_dot_id(stroke)}];"
        )
    attrs = {
        "pos": 'label="ok", color="#198754"',
        "neg": 'label="not ok", color="#dc3545", style=dashed',
        "mixed": 'label="ok / not ok"',
        "wait": 'label="wait", style=dotted, arrowhead=odot',
    }
    for a, b, kind in _edges(defn):
        lines.append(f"  {_dot_id(a)} -> {_dot_id(b)} [{attrs[kind]}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------- progress
class Progress:
    """Step transitions of a run as lines, for a foreground ``start`` on a terminal.

    ``lines(payload)`` returns one line per step whose status changed since the
    previous call (the first call reports every step that has left PENDING), then
    one line when the run itself ends.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, int]] = {}
        self._run_status: str | None = None

    def lines(self, payload: dict[str, Any], now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        out = []
        for s in payload["steps"]:
            # A retry can pass RUNNING -> PENDING -> RUNNING between two calls: the attempt tells.
            before, attempt = self._seen.get(s["id"], ("PENDING", 0))
            if (s["status"], s["attempt_no"]) == (before, attempt):
                continue
            self._seen[s["id"]] = (s["status"], s["attempt_no"])
            job = s.get("orchesjob_status") or {}
            detail = f"attempt {attempt_text(s)}, job {s['run_key']}"
            if s["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                code = job.get("exit_code")
                detail += f", exit {'-' if code is None else code}, {elapsed(s['started_at'], s['finished_at'], now)}"
            if s.get("error") and s["status"] != "SUCCEEDED":
                detail += f": {s['error']}"
            out.append(f"{clock}  {s['id']}  {before} -> {s['status']}  ({detail})")
        if payload["status"] != self._run_status and payload["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            p = payload["progress"]
            took = elapsed(payload["started_at"], payload["finished_at"], now)
            out.append(
                f"{clock}  flow {payload['run_key']} {payload['status']}: "
                f"{p['done']}/{p['total']} steps done, {p['failed']} failed, {took}"
            )
        self._run_status = payload["status"]
        return out
