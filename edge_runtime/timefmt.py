"""Time parsing and formatting shared by the three CLIs.

Stored times are epoch seconds (float where sub-second precision matters).
Output carries both the epoch value and an ISO 8601 string in local time with
its offset, as the spec's examples show.

Bounds, checked here before anything is written: an instant lies between
1970-01-01 and 9999-12-30 UTC (what every local zone can format); a duration
is at most ``MAX_DURATION_S`` (100 years), so ``now + duration`` is an instant
too. An epoch of 12 or more digits is taken for milliseconds (``date +%s%3N``)
and refused with a hint. Formatting never fails: a stored value out of range
(written by an older release) prints its epoch with a null ISO string, so one
bad row cannot break a read of others.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from .errors import UsageError

_EPOCH_RE = re.compile(r"^[+-]?\d+(\.\d+)?$")
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

MAX_TS = 253402214399.0  # 9999-12-30T23:59:59Z: formattable in every zone
MAX_DURATION_S = 100 * 365 * 86400.0
# Seconds since the epoch have 10 digits until 2286; 12+ digits are milliseconds or finer.
_MILLIS_FROM = 1e11


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """ISO 8601 in the host's local zone, seconds precision, with offset."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError, TypeError):
        return None  # out of range (an old row): the epoch value still says what is stored


def iso_utc(ts: float) -> str:
    """ISO 8601 UTC (``2026-05-04T10:00:00+00:00``), for JSON Lines event timestamps."""
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError, TypeError):
        return str(ts)


def epoch_value(ts: float | None) -> float | int | None:
    """Epoch as int when whole (as the spec shows), else with its fraction (microseconds)."""
    if not _finite(ts):
        return None
    return int(ts) if ts == int(ts) else round(ts, 6)


def _finite(ts: object) -> bool:
    return isinstance(ts, (int, float)) and ts == ts and ts not in (float("inf"), float("-inf"))


def with_iso(out: dict, name: str, ts: float | None) -> None:
    """Set ``name`` (integer epoch seconds, as the spec shows) and ``name_iso``."""
    out[name] = int(ts) if _finite(ts) else None
    out[name + "_iso"] = iso(ts)


def check_instant(ts: float, option: str, text: str | None = None) -> float:
    """``ts`` if it lies in what the runtime stores and formats, else ``UsageError``."""
    if not _finite(ts) or ts < 0 or ts > MAX_TS:
        shown = text if text is not None else f"{ts!r}"
        raise UsageError(
            f"{option}: {shown} is out of range; times must lie between 1970-01-01 and 9999-12-30 (UTC)",
            value=shown,
        )
    return ts


def parse_datetime(text: str, option: str = "datetime") -> float:
    """Epoch seconds from epoch digits or ISO 8601 (naive = local time)."""
    s = text.strip()
    if not s:
        raise UsageError(f"{option}: empty datetime")
    if _EPOCH_RE.match(s):
        value = float(s)
        if abs(value) >= _MILLIS_FROM:
            digits = len(s.lstrip("+-").split(".")[0])
            unit = "milliseconds (e.g. `date +%s%3N`)" if digits <= 13 else "microseconds or nanoseconds"
            raise UsageError(
                f"{option}: {text!r} looks like {unit} since the epoch; give seconds "
                "(`date +%s`, fractions allowed) or ISO 8601 such as 2026-05-04T03:00:00+09:00",
                value=text,
            )
        return check_instant(value, option, text)
    candidate = s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s
    try:
        dt = datetime.fromisoformat(candidate)
    except ValueError:
        raise UsageError(
            f"Invalid {option}: {text!r} is not a datetime; use epoch seconds or ISO 8601 such as "
            "2026-05-04T03:00:00+09:00",
            value=text,
        ) from None
    try:
        if dt.tzinfo is None:
            dt = dt.astimezone()  # naive means host-local time, per the spec
        ts = dt.timestamp()
    except (OverflowError, ValueError, OSError):
        ts = float("nan")
    return check_instant(ts, option, text)


def parse_optional_datetime(text: str | None, option: str) -> float | None:
    """``parse_datetime`` for an option that may be left out (None or empty)."""
    return parse_datetime(text, option) if text else None


def parse_duration(text: str, option: str = "duration") -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``."""
    m = _DURATION_RE.match(text.strip().lower())
    if not m:
        raise UsageError(
            f"Invalid {option.lstrip('-')}: {text!r}; {option} takes seconds or a number with s, m, h or d",
            value=text,
        )
    value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if value <= 0:
        raise UsageError(f"{option.lstrip('-')} must be positive ({option} {text!r})", value=text)
    if value > MAX_DURATION_S:
        raise UsageError(f"{option}: duration {text!r} is too long; at most 100 years (36500d)", value=text)
    return value


def parse_age(text: str, option: str) -> float:
    """The instant ``now - duration`` for an age limit such as ``--older-than 30d``."""
    return now() - parse_duration(text, option)


def parse_seconds(text: str, option: str, *, allow_zero: bool = True) -> float:
    """A non-negative number of seconds for flags like --grace-seconds."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"argument {option}: invalid float value: {text!r} (expected a number of seconds)") from None
    if value != value or value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{option}: must be {'>= 0' if allow_zero else '> 0'}, got {text!r}")
    if value > MAX_DURATION_S:
        raise UsageError(f"{option}: {text!r} seconds is too long; at most {MAX_DURATION_S:.0f} (100 years)")
    return value


def parse_since(text: str, option: str) -> float:
    """A lower time bound: an age with a unit (``90s``, ``30m``, ``2h``, ``7d``: that long ago), or
    a datetime (epoch seconds or ISO 8601). A bare number is epoch seconds, never an age."""
    if text.strip()[-1:].lower() in ("s", "m", "h", "d"):
        return parse_age(text, option)
    return parse_datetime(text, option)
