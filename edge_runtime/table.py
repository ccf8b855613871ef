"""Tables for people: the ``--format table`` output of all three CLIs.

Columns are as wide as their widest cell: ids, run keys and exit codes are
never cut. Only a column given a cap (free text such as an error) is shortened,
with ``...``. Cells are plain ASCII off a terminal (a pipe, a log file, an SSH
command without a tty): a non-ASCII character there is escaped, so ``grep``
and ``cut`` see one byte per column position.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

# typing costs ~2 ms of start-up per poll; annotations are strings anyway.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


def is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def width(text: str) -> int:
    """Terminal cells ``text`` takes (East Asian wide characters take two)."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def cell(value: Any, ascii_only: bool) -> str:
    """One value as table text: ``-`` for none, one line, escaped to ASCII when asked."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    text = " ".join(text.split("\n"))
    if ascii_only and not text.isascii():
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text


def _fit(text: str, cap: int) -> str:
    if width(text) <= cap:
        return text
    out = ""
    for c in text:
        if width(out + c) > cap - 3:
            break
        out += c
    return out + "..."


def render(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    caps: Mapping[str, int] | None = None,
    ascii_only: bool | None = None,
) -> str:
    """Rows under a header line and a rule; ``caps`` limits the named free-text columns."""
    plain = (not is_tty()) if ascii_only is None else ascii_only
    caps = caps or {}
    body = [[cell(v, plain) for v in row] for row in rows]
    for row in body:
        for i, name in enumerate(headers):
            if name in caps:
                row[i] = _fit(row[i], caps[name])
    widths = [max([width(h)] + [width(r[i]) for r in body]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c + " " * (w - width(c)) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in body)
    return "\n".join(out) + "\n"


def render_fields(pairs: Sequence[tuple[str, Any]], *, ascii_only: bool | None = None) -> str:
    """One object as aligned ``name: value`` lines (the table of a single job or reservation)."""
    plain = (not is_tty()) if ascii_only is None else ascii_only
    label = max((len(name) for name, _ in pairs), default=0) + 1
    return "".join(f"{name + ':':<{label}} {cell(value, plain)}\n" for name, value in pairs)


def fmt_duration(seconds: float | None) -> str:
    """``HH:MM:SS`` (``-`` for none); beyond 99 hours ``NhMMmSSs``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h >= 100 else f"{h:02d}:{m:02d}:{sec:02d}"


def fmt_time(ts: float | None) -> str:
    """Local time to the second (``-`` for none)."""
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def elapsed(started: float | None, finished: float | None, now: float | None = None) -> str:
    """How long something ran (until ``finished``, or until now while it runs)."""
    if started is None:
        return "-"
    end = finished if finished is not None else (time.time() if now is None else now)
    return fmt_duration(end - started)
