"""Weekly time windows (maintenance windows, peak hours): is a moment inside one, and until when.

Pure: no clock, no I/O. Every comparison is made in UTC, because two aware datetimes of the same
zone compare by wall-clock time in Python and would get the repeated hour of a DST change wrong.
A window's wall-clock times are taken in its own zone on the day it starts: on the day the clocks
go forward a start inside the skipped hour (02:30 Europe/Berlin) is read with the offset before the
change (it begins at 03:30 CEST); on the day they go back the earlier of the two 02:30s is meant.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from core.scheduling.config import DAYS, WindowConfig

# Windows that chain into one another (every day 00:00-24:00, say) are followed this far and no further.
MAX_CHAIN = timedelta(days=8)


def _clock(text: str) -> tuple[time, int]:
    """``HH:MM`` as a time of day and a day offset (24:00 is midnight of the next day)."""
    if text == "24:00":
        return time(0, 0), 1
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes)), 0


def _occurrence(window: WindowConfig, day: date) -> tuple[datetime, datetime] | None:
    """The window's occurrence that starts on ``day`` (local), as UTC (start, end); None if it does not start then."""
    if DAYS[day.weekday()] not in window.days:
        return None
    zone = ZoneInfo(window.timezone)
    start_time, start_shift = _clock(window.start)
    end_time, end_shift = _clock(window.end)
    start_day = day + timedelta(days=start_shift)
    end_day = day + timedelta(days=end_shift)
    if (end_shift, end_time) <= (start_shift, start_time):
        end_day += timedelta(days=1)  # over midnight: 22:00-02:00 ends the next day
    start = datetime.combine(start_day, start_time, tzinfo=zone).astimezone(UTC)
    end = datetime.combine(end_day, end_time, tzinfo=zone).astimezone(UTC)
    return start, end


def _occurrences(window: WindowConfig, around: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Occurrences that may contain ``around``: those starting on its local day or the day before."""
    local_day = around.astimezone(ZoneInfo(window.timezone)).date()
    for day in (local_day - timedelta(days=1), local_day):
        found = _occurrence(window, day)
        if found is not None:
            yield found


def active_window(windows: Iterable[WindowConfig], now: datetime) -> tuple[WindowConfig, datetime] | None:
    """The window that contains ``now`` (aware) and when the blackout ends, in UTC; None outside every window.

    A window ends at its end; windows that overlap or touch it (another window, or the next day's
    occurrence of the same one) extend the end to theirs, so a deferral never lands inside a window.
    Of several windows containing ``now`` the one ending latest is returned.
    """
    if now.tzinfo is None:
        raise ValueError("active_window needs an aware datetime (a moment, not a wall-clock time)")
    windows = list(windows)
    now = now.astimezone(UTC)
    containing = [(end, window) for window in windows for start, end in _occurrences(window, now) if start <= now < end]
    if not containing:
        return None
    end, window = max(containing, key=lambda found: found[0])
    limit = now + MAX_CHAIN
    while end < limit:
        later = [e for w in windows for s, e in _occurrences(w, end) if s <= end < e]
        if not later:
            break
        end = min(max(later), limit)
    return window, end


def local_text(when: datetime, zone: str) -> str:
    """How a window's end is named in a reason: ``Sun 2026-03-29 06:00 Europe/Berlin``."""
    local = when.astimezone(ZoneInfo(zone))
    return f"{local:%a %Y-%m-%d %H:%M} {zone}"
