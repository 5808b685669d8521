"""Maintenance windows, peak hours, thresholds and the slow flag: pure functions, golden cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.scheduling.config import OperationsConfig, WindowConfig
from core.scheduling.deferral import THRESHOLD_PREFIX, WINDOW_PREFIX, Deferral, breaches, decide
from core.scheduling.readings import Readings, free_percent, host_readings
from core.scheduling.slow import slow_flag
from core.scheduling.windows import active_window


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


NIGHTLY = WindowConfig(name="nightly", start="01:00", end="05:00", timezone="Europe/Berlin")
FRIDAY_NIGHT = WindowConfig(name="friday night", days=["fri"], start="22:00", end="02:00")
OFFICE = WindowConfig(
    name="business hours",
    days=["mon", "tue", "wed", "thu", "fri"],
    start="09:00",
    end="17:00",
    timezone="Europe/Berlin",
)
SKIPPED_HOUR = WindowConfig(name="skipped hour", start="02:30", end="04:00", timezone="Europe/Berlin")
EVENING = WindowConfig(name="evening", start="20:00", end="24:00")

# (windows, now) -> (window name, end in UTC) or None
GOLDEN = [
    # A winter night in Berlin (CET, UTC+1): 01:00-05:00 local is 00:00-04:00 UTC.
    ([NIGHTLY], utc(2026, 1, 14, 0, 0), ("nightly", utc(2026, 1, 14, 4, 0))),
    ([NIGHTLY], utc(2026, 1, 13, 23, 59), None),
    ([NIGHTLY], utc(2026, 1, 14, 4, 0), None),  # the end is not inside
    # Clocks go forward on 2026-03-29 at 02:00 CET: the window is 3 hours long, ending 05:00 CEST = 03:00 UTC.
    ([NIGHTLY], utc(2026, 3, 29, 0, 30), ("nightly", utc(2026, 3, 29, 3, 0))),
    ([NIGHTLY], utc(2026, 3, 29, 3, 0), None),
    # Clocks go back on 2026-10-25 at 03:00 CEST: 5 hours long, from 01:00 CEST (23:00 UTC) to 05:00 CET (04:00 UTC).
    ([NIGHTLY], utc(2026, 10, 24, 23, 0), ("nightly", utc(2026, 10, 25, 4, 0))),
    ([NIGHTLY], utc(2026, 10, 25, 3, 59), ("nightly", utc(2026, 10, 25, 4, 0))),
    ([NIGHTLY], utc(2026, 10, 24, 22, 59), None),
    # A start inside the skipped hour (02:30 on 2026-03-29) is read with the old offset: 03:30 CEST = 01:30 UTC.
    ([SKIPPED_HOUR], utc(2026, 3, 29, 1, 15), None),
    ([SKIPPED_HOUR], utc(2026, 3, 29, 1, 45), ("skipped hour", utc(2026, 3, 29, 2, 0))),
    # Over midnight, Fridays only (2026-12-04 is a Friday): Saturday 01:00 is inside Friday's window.
    ([FRIDAY_NIGHT], utc(2026, 12, 4, 23, 0), ("friday night", utc(2026, 12, 5, 2, 0))),
    ([FRIDAY_NIGHT], utc(2026, 12, 5, 1, 0), ("friday night", utc(2026, 12, 5, 2, 0))),
    ([FRIDAY_NIGHT], utc(2026, 12, 5, 23, 0), None),  # Saturday night: not a Friday
    ([FRIDAY_NIGHT], utc(2026, 12, 4, 21, 59), None),
    # Day lists: business hours on weekdays only (2026-12-05 is a Saturday); Berlin is UTC+1 in December.
    ([OFFICE], utc(2026, 12, 7, 9, 0), ("business hours", utc(2026, 12, 7, 16, 0))),
    ([OFFICE], utc(2026, 12, 5, 9, 0), None),
    # 24:00 ends at midnight.
    ([EVENING], utc(2026, 12, 5, 23, 59), ("evening", utc(2026, 12, 6, 0, 0))),
]


@pytest.mark.parametrize(("windows", "now", "expected"), GOLDEN)
def test_active_window_golden(windows, now, expected):
    found = active_window(windows, now)
    assert (None if found is None else (found[0].name, found[1])) == expected


def test_windows_that_touch_or_overlap_chain_to_the_latest_end():
    first = WindowConfig(name="backup freeze", start="01:00", end="03:00")
    overlapping = WindowConfig(name="patching", start="02:30", end="04:00")
    touching = WindowConfig(name="reindex", start="04:00", end="05:00")
    apart = WindowConfig(name="later", start="05:01", end="06:00")
    window, end = active_window([first, overlapping, touching, apart], utc(2026, 12, 6, 1, 30))
    assert (window.name, end) == ("backup freeze", utc(2026, 12, 6, 5, 0))
    # The same window on consecutive days chains too (Friday 22:00 to Saturday 02:00, Saturday 22:00 ...).
    weekend = WindowConfig(name="weekend", days=["sat", "sun"], start="00:00", end="24:00")
    assert active_window([weekend], utc(2026, 12, 5, 10, 0))[1] == utc(2026, 12, 7, 0, 0)
    # A window that never ends is followed for 8 days only.
    always = WindowConfig(name="always", start="00:00", end="24:00")
    assert active_window([always], utc(2026, 12, 6, 10, 0))[1] == utc(2026, 12, 14, 10, 0)


def test_active_window_needs_a_moment():
    with pytest.raises(ValueError, match="aware datetime"):
        active_window([NIGHTLY], datetime(2026, 1, 1))


QUIET = Readings(load_per_cpu=0.2, memory_available_percent=60.0, disk_busy_percent=5.0, vault_free_percent=50.0)
BUSY = Readings(
    load_per_cpu=3.4, memory_available_percent=7.5, disk_busy_percent=95.0, busiest_disk="vda", vault_free_percent=4.0
)


def ops(**fields) -> OperationsConfig:
    return OperationsConfig(**fields)


def test_decide_defers_heavy_jobs_to_the_end_of_a_maintenance_window():
    operations = ops(maintenance_windows=[NIGHTLY], peak_hours=[OFFICE])
    deferral = decide("full", operations, utc(2026, 3, 29, 0, 30), QUIET, None)
    assert deferral == Deferral(
        until=utc(2026, 3, 29, 3, 0),
        reason="full waits for the end of maintenance window 'nightly' at Sun 2026-03-29 05:00 Europe/Berlin",
    )
    assert deferral.message == WINDOW_PREFIX + deferral.reason
    # Peak hours, on a Monday in December.
    deferral = decide("validate", operations, utc(2026, 12, 7, 10, 0), QUIET, None)
    assert (deferral.until, deferral.reason) == (
        utc(2026, 12, 7, 16, 0),
        "validate waits for the end of peak hours 'business hours' at Mon 2026-12-07 17:00 Europe/Berlin",
    )


def test_decide_never_defers_incrementals_or_light_jobs():
    operations = ops(maintenance_windows=[NIGHTLY])
    inside = utc(2026, 1, 14, 2, 0)
    assert decide("incremental", operations, inside, BUSY, None) is None
    assert decide("capture", operations, inside, BUSY, None) is None
    assert decide("replicate", operations, inside, BUSY, None) is None  # not a heavy job by default
    assert decide("full", ops(maintenance_windows=[NIGHTLY], heavy_jobs=["drill"]), inside, BUSY, None) is None
    assert decide("full", operations, utc(2026, 1, 14, 12, 0), QUIET, None) is None


def test_decide_defers_on_thresholds_with_every_reading_named():
    now = utc(2026, 12, 6, 12, 0)
    every = {"max_load_per_cpu": 2.0, "max_disk_busy_percent": 90.0, "min_vault_free_percent": 10.0}
    deferral = decide("full", ops(thresholds=every), now, BUSY, None)
    assert deferral.cause == "threshold" and deferral.until == now + timedelta(seconds=300)
    assert deferral.reason == (
        "full waits: load 3.4 per CPU is over 2.0; available memory 7.5% is under 10.0%; "
        "disk vda busy 95.0% is over 90.0%; vault free space 4.0% is under 10.0%; checked again at "
        "2026-12-06 12:05:00 UTC"
    )
    assert deferral.message.startswith(THRESHOLD_PREFIX)
    # The defaults judge memory and the vault's free space only (load and disk I/O depend on the host).
    assert breaches(ops().thresholds, BUSY) == [
        "available memory 7.5% is under 10.0%",
        "vault free space 4.0% is under 5.0%",
    ]
    # A threshold turned off (null) is not judged; an unreadable reading (None) neither.
    off = ops(
        thresholds={"max_load_per_cpu": None, "min_memory_available_percent": None, "max_disk_busy_percent": None}
    )
    assert breaches(off.thresholds, BUSY) == ["vault free space 4.0% is under 5.0%"]
    assert breaches(ops().thresholds, Readings()) == []
    assert decide("full", ops(), now, None, None) is None


def test_decide_gives_up_waiting_after_max_defer_seconds():
    operations = ops(thresholds={"recheck_seconds": 600, "max_defer_seconds": 3600})
    first = utc(2026, 12, 6, 12, 0)
    # Never past the cap: 55 minutes in, the recheck lands at the cap.
    assert decide("drill", operations, first + timedelta(minutes=55), BUSY, first).until == utc(2026, 12, 6, 13, 0)
    assert decide("drill", operations, first + timedelta(hours=1), BUSY, first) is None
    # A window still defers, whatever the threshold clock says: a blackout is the operator's promise.
    windowed = ops(maintenance_windows=[EVENING], thresholds={"max_defer_seconds": 3600})
    assert decide("drill", windowed, utc(2026, 12, 6, 21, 0), BUSY, first).until == utc(2026, 12, 7, 0, 0)


SLOW = [
    ([300.0, 310.0, 320.0] * 3, 812.0, "took 812 s, 2.6x its median 310 s over the last 9 runs"),
    ([300.0, 310.0, 320.0], 620.0, None),  # exactly 2x is not over it
    ([300.0, 310.0], 5000.0, None),  # too few runs to judge
    ([1.0] * 30 + [100.0] * 20, 150.0, None),  # only the last 20 count
    ([2.0, 2.5, 3.0], 7.9, "took 7.9 s, 3.2x its median 2.5 s over the last 3 runs"),
]


@pytest.mark.parametrize(("previous", "latest", "expected"), SLOW)
def test_slow_flag_golden(previous, latest, expected):
    assert slow_flag(previous, latest) == expected


def test_slow_flag_factor_and_samples():
    assert slow_flag([10.0] * 5, 16.0, factor=1.5) == "took 16 s, 1.6x its median 10 s over the last 5 runs"
    assert slow_flag([10.0], 100.0, min_samples=1) == "took 100 s, 10.0x its median 10 s over the last 1 runs"


def test_host_readings_from_this_host(tmp_path):
    readings = host_readings(str(tmp_path / "not-yet" / "vault"))
    assert 0 <= readings.load_per_cpu < 1000
    assert 0 < readings.memory_available_percent <= 100
    assert 0 <= readings.disk_busy_percent <= 100 and readings.busiest_disk  # this host has a disk (vda)
    assert host_readings(None, disks=False).disk_busy_percent is None  # not sampled when no threshold needs it
    # The vault does not exist yet: its nearest existing parent's file system answers.
    assert readings.vault_free_percent == pytest.approx(free_percent(str(tmp_path)), abs=1.0)
    assert host_readings(None).vault_free_percent is None
