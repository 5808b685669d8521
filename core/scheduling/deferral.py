"""Should a heavy job wait, and until when: maintenance windows, peak hours, then the host's readings.

Pure: the caller passes the clock and the readings. Order and limits:

1. a job in ``NEVER_DEFERRED`` (incremental, capture: they hold the RPO) or not in the stack's
   ``heavy_jobs`` never waits;
2. inside a maintenance window, then inside peak hours: it waits for the window's end (windows that
   touch or overlap chain into one), however long that is - a blackout is the operator's promise;
3. a reading past its threshold: it waits ``recheck_seconds`` and is checked again, but never longer
   than ``max_defer_seconds`` after it was first deferred by a threshold; after that it runs anyway and
   the caller warns (``breaches`` names what is still over). The threshold clock starts at the first
   threshold deferral, not at a window's: after a long window a busy host still gets its grace period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from core.scheduling.config import NEVER_DEFERRED, OperationsConfig, ThresholdsConfig
from core.scheduling.readings import Readings
from core.scheduling.windows import active_window, local_text

# Prefixes of the Scheduled state's message: how a later attempt of the run finds its first threshold deferral.
WINDOW_PREFIX = "Deferred (window): "
THRESHOLD_PREFIX = "Deferred (busy host): "


@dataclass(frozen=True)
class Deferral:
    """Run the job at ``until`` (UTC) instead of now, because of ``reason``."""

    until: datetime
    reason: str
    cause: Literal["window", "threshold"] = "window"

    @property
    def message(self) -> str:
        """The Scheduled state's message (the UI shows it beside the run)."""
        return (WINDOW_PREFIX if self.cause == "window" else THRESHOLD_PREFIX) + self.reason


def is_heavy(job: str, operations: OperationsConfig) -> bool:
    return job not in NEVER_DEFERRED and job in operations.heavy_jobs


def _number(value: float) -> str:
    return f"{value:.1f}"


def breaches(thresholds: ThresholdsConfig, readings: Readings) -> list[str]:
    """Each reading past its threshold, in one phrase: ``load 3.4 per CPU is over 2.0``."""
    found = []
    t, r = thresholds, readings
    if t.max_load_per_cpu is not None and r.load_per_cpu is not None and r.load_per_cpu > t.max_load_per_cpu:
        found.append(f"load {_number(r.load_per_cpu)} per CPU is over {_number(t.max_load_per_cpu)}")
    if (
        t.min_memory_available_percent is not None
        and r.memory_available_percent is not None
        and r.memory_available_percent < t.min_memory_available_percent
    ):
        found.append(
            f"available memory {_number(r.memory_available_percent)}% is under "
            f"{_number(t.min_memory_available_percent)}%"
        )
    if (
        t.max_disk_busy_percent is not None
        and r.disk_busy_percent is not None
        and r.disk_busy_percent > t.max_disk_busy_percent
    ):
        disk = f"disk {r.busiest_disk}" if r.busiest_disk else "disk"
        found.append(f"{disk} busy {_number(r.disk_busy_percent)}% is over {_number(t.max_disk_busy_percent)}%")
    if (
        t.min_vault_free_percent is not None
        and r.vault_free_percent is not None
        and r.vault_free_percent < t.min_vault_free_percent
    ):
        found.append(f"vault free space {_number(r.vault_free_percent)}% is under {_number(t.min_vault_free_percent)}%")
    return found


def decide(
    job: str,
    operations: OperationsConfig,
    now: datetime,
    readings: Readings | None,
    deferred_since: datetime | None,
) -> Deferral | None:
    """When ``job`` due at ``now`` must wait: a Deferral (until, reason), else None (run now).

    ``readings``: the host now (None: not read, thresholds not judged); ``deferred_since``: when this run
    was first deferred by a threshold (None if never).
    """
    if not is_heavy(job, operations):
        return None
    now = now.astimezone(UTC)
    for kind, windows in (
        ("maintenance window", operations.maintenance_windows),
        ("peak hours", operations.peak_hours),
    ):
        found = active_window(windows, now)
        if found is not None:
            window, end = found
            return Deferral(
                until=end,
                reason=f"{job} waits for the end of {kind} '{window.name}' at {local_text(end, window.timezone)}",
            )
    if readings is None:
        return None
    over = breaches(operations.thresholds, readings)
    if not over:
        return None
    thresholds = operations.thresholds
    until = now + timedelta(seconds=thresholds.recheck_seconds)
    if deferred_since is not None:
        give_up = deferred_since.astimezone(UTC) + timedelta(seconds=thresholds.max_defer_seconds)
        if now >= give_up:
            return None  # waited long enough: run anyway (the caller warns with the breaches)
        until = min(until, give_up)
    return Deferral(
        until=until,
        reason=f"{job} waits: {'; '.join(over)}; checked again at {until:%Y-%m-%d %H:%M:%S} UTC",
        cause="threshold",
    )
