"""Time parsing and formatting shared by the three CLIs.

Stored times are epoch seconds (float where sub-second precision matters).
Output carries both the epoch value and an ISO 8601 string in local time with
its offset, as the spec's examples show.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from .errors import UsageError

_EPOCH_RE = re.compile(r"^[+-]?\d+(\.\d+)?$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """ISO 8601 in the host's local zone, seconds precision, with offset."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def iso_utc(ts: float) -> str:
    """ISO 8601 UTC (``2026-05-04T10:00:00+00:00``), for JSON Lines event timestamps."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def epoch_value(ts: float | None) -> float | int | None:
    """Epoch as int when whole (as the spec shows), else with its fraction (microseconds)."""
    if ts is None:
        return None
    return int(ts) if ts == int(ts) else round(ts, 6)


def with_iso(out: dict, name: str, ts: float | None) -> None:
    """Set ``name`` (integer epoch seconds, as the spec shows) and ``name_iso``."""
    out[name] = None if ts is None else int(ts)
    out[name + "_iso"] = iso(ts)


def parse_datetime(text: str, option: str = "datetime") -> float:
    """Epoch seconds from epoch digits or ISO 8601 (naive = local time)."""
    s = text.strip()
    if not s:
        raise UsageError(f"{option}: empty datetime")
    if _EPOCH_RE.match(s):
        return float(s)
    candidate = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
    try:
        dt = datetime.fromisoformat(candidate)
    except ValueError:
        raise UsageError(
            f"{option}: invalid datetime {text!r}; use epoch seconds or ISO 8601 such as 2026-05-04T03:00:00+09:00",
            value=text,
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # naive means host-local time, per the spec
    return dt.timestamp()


def parse_optional_datetime(text: str | None, option: str) -> float | None:
    """``parse_datetime`` for an option that may be left out (None or empty)."""
    return parse_datetime(text, option) if text else None


def parse_duration(text: str, option: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``."""
    m = _DURATION_RE.match(text.strip().lower())
    if not m:
        raise UsageError(
            f"{option}: invalid duration {text!r}; use seconds or a number with s, m, h or d",
            value=text,
        )
    value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if value <= 0:
        raise UsageError(f"{option}: duration must be positive", value=text)
    return value


def parse_seconds(text: str, option: str, *, allow_zero: bool = True) -> float:
    """A non-negative number of seconds for flags like --grace-seconds."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option}: expected a number of seconds, got {text!r}") from None
    if value != value or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{option}: must be {'>= 0' if allow_zero else '> 0'}, got {text!r}")
    return value
