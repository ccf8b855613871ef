"""Human views of a flow run: the status table, failed-step stderr tails, graphs.

Pure functions over the status payload (and the definition for graphs), so
they can be tested without a database.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from . import flow_expr
from .flow_definition import FlowDefinition

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
COLUMN_CAPS = (24, 14, 9, 12, 12, 48, 40)
HEADERS = ("Step", "Status", "Attempt", "Elapsed", "orchesjob", "Run key", "Error")
STDERR_TAIL_LINES = 5


def _width(text: str) -> int:
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _fit(text: str, cap: int) -> str:
    if _width(text) <= cap:
        return text
    out = ""
    for c in text:
        if _width(out + c) > cap - 1:
            break
        out += c
    return out + "…"


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def fmt_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h >= 100 else f"{h:02d}:{m:02d}:{sec:02d}"


def fmt_time(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _elapsed(started: float | None, finished: float | None, now: float) -> str:
    if started is None:
        return "-"
    return fmt_elapsed((finished if finished is not None else now) - started)


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
        f"Elapsed: {_elapsed(payload['started_at'], payload['finished_at'], now)}",
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
                f"{s['attempt_no']}/{s['max_retries']}",
                _elapsed(s["started_at"], s["finished_at"], now),
                job.get("status") or "-",
                s["run_key"],
                s.get("error") or "",
            )
        )
    widths = [
        min(cap, max([_width(h)] + [_width(r[i]) for r in rows]))
        for i, (h, cap) in enumerate(zip(HEADERS, COLUMN_CAPS, strict=True))
    ]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(_pad(_fit(c, w), w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines.append(line(HEADERS))
    lines.append(line(tuple("-" * w for w in widths)))
    lines.extend(line(r) for r in rows)
    if tails:
        for s in steps:
            if s["status"] == "FAILED" or (s["status"] in ("DELAYED", "PENDING") and s.get("error")):
                tail = stderr_tail(s)
                if tail:
                    lines.append("")
                    lines.append(f"stderr of {s['run_key']} (last {len(tail)} lines):")
                    lines.extend("  | " + t for t in tail)
    return "\n".join(lines) + "\n"


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
