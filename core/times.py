"""Times an operator types (``--target-time``): one parser, one error, always UTC.

Accepted: ISO 8601 (``2026-12-01T14:30:00Z``, ``2026-12-01 14:30+01:00``,
``2026-12-01``), where a time without a zone is UTC (servers and the vault keep
UTC; a local zone would shift a restore by hours without a word); ``now``; and
times relative to now, ``-90m``, ``-2h``, ``2 hours ago``, ``3d ago`` (units
s, m, h, d, w; ``m`` is minutes). Anything else is a ConfigError that names
the option and shows an example.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from core.errors import ConfigError
from core.sources import short

_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_RELATIVE = re.compile(r"-\s*(\d{1,9})\s*([a-z]+)|(\d{1,9})\s*([a-z]+)\s+ago", re.IGNORECASE | re.ASCII)
EXAMPLES = "e.g. 2026-12-01T14:30:00Z, '2026-12-01 14:30' (no zone means UTC), '2h ago' or -90m"


def parse_operator_time(value: str, option: str = "--target-time", now: datetime | None = None) -> datetime:
    """``value`` as an aware UTC datetime, or a one-line ConfigError naming ``option``.

    Args:
        value: what the operator typed.
        option: the option or field named in the error.
        now: the reference for relative times (default: the current time).
    """
    text = value.strip()
    now = now or datetime.now(UTC)
    if text.lower() == "now":
        return now
    relative = _RELATIVE.fullmatch(text)
    if relative:
        amount, unit = (relative.group(1), relative.group(2)) if relative.group(1) else relative.group(3, 4)
        seconds = _UNITS.get(unit.lower())
        if seconds is None:
            raise ConfigError(
                f"{option} {short(value)}: unknown unit {unit!r}; use s, m (minutes), h, d or w, {EXAMPLES}"
            )
        try:
            return now - timedelta(seconds=int(amount) * seconds)
        except OverflowError:
            raise ConfigError(f"{option} {short(value)}: too far in the past; {EXAMPLES}") from None
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ConfigError(f"{option} {short(value)}: not a time; use ISO 8601 or a relative time, {EXAMPLES}") from None
