"""The host's readings that make heavy jobs wait: load, memory, disk I/O, the local vault's free space.

Read from /proc and statvfs (Linux); a reading that cannot be taken is None and is not judged.
No Prefect here: the scheduling task and the status command both read them.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Disk busy time is a rate: sampled over this long when no earlier sample of this process is recent enough.
SAMPLE_SECONDS = 0.5
# An earlier sample older than this says nothing about now.
_SAMPLE_MAX_AGE = 120.0
_last_sample: tuple[float, dict[str, int]] | None = None
_sample_lock = threading.Lock()


@dataclass(frozen=True)
class Readings:
    """One look at the host. Percentages are 0-100; None: not readable here (or no local vault)."""

    load_per_cpu: float | None = None
    memory_available_percent: float | None = None
    disk_busy_percent: float | None = None
    busiest_disk: str | None = None
    vault_free_percent: float | None = None


def load_per_cpu(proc: Path = Path("/proc")) -> float | None:
    try:
        one_minute = float((proc / "loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return one_minute / (os.cpu_count() or 1)


def memory_available_percent(proc: Path = Path("/proc")) -> float | None:
    fields: dict[str, int] = {}
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                fields[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not fields.get("MemTotal") or "MemAvailable" not in fields:
        return None
    return 100.0 * fields["MemAvailable"] / fields["MemTotal"]


def _busy_ms(proc: Path) -> dict[str, int]:
    """Milliseconds each whole disk spent doing I/O since boot (/proc/diskstats field 13)."""
    busy: dict[str, int] = {}
    try:
        lines = (proc / "diskstats").read_text().splitlines()
    except OSError:
        return busy
    for line in lines:
        parts = line.split()
        if len(parts) < 13:
            continue
        name = parts[2]
        # Whole disks only (a partition's time is in its disk's); loop and RAM devices are no disks.
        if name.startswith(("loop", "ram", "zram")) or not Path("/sys/block", name).exists():
            continue
        try:
            busy[name] = int(parts[12])
        except ValueError:
            continue
    return busy


def disk_busy_percent(proc: Path = Path("/proc")) -> tuple[float | None, str | None]:
    """(busy percent, name) of the busiest disk: between this call and the previous one of this process if
    that was recent, otherwise over ``SAMPLE_SECONDS``."""
    global _last_sample
    with _sample_lock:
        now = time.monotonic()
        previous = _last_sample
        if previous is None or not 0.2 <= now - previous[0] <= _SAMPLE_MAX_AGE:
            previous = (now, _busy_ms(proc))
            time.sleep(SAMPLE_SECONDS)
            now = time.monotonic()
        current = _busy_ms(proc)
        _last_sample = (now, current)
    elapsed_ms = (now - previous[0]) * 1000.0
    rates = {
        name: min(100.0, 100.0 * (ms - previous[1][name]) / elapsed_ms)
        for name, ms in current.items()
        if name in previous[1] and ms >= previous[1][name]
    }
    if not rates or elapsed_ms <= 0:
        return None, None
    name = max(rates, key=lambda n: rates[n])
    return rates[name], name


def free_percent(path: str) -> float | None:
    """Free space (for unprivileged users) of the file system holding ``path`` (or its nearest existing parent:
    a vault is created on its first backup)."""
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        stats = os.statvfs(where)
    except OSError:
        return None
    if not stats.f_blocks:
        return None
    return 100.0 * stats.f_bavail / stats.f_blocks


def host_readings(vault_path: str | None, *, disks: bool = True) -> Readings:
    """Read the host now; ``vault_path``: a local vault's directory (None for a cloud vault); ``disks`` off: no
    disk I/O sample (it may take ``SAMPLE_SECONDS``)."""
    busy, disk = disk_busy_percent() if disks else (None, None)
    return Readings(
        load_per_cpu=load_per_cpu(),
        memory_available_percent=memory_available_percent(),
        disk_busy_percent=busy,
        busiest_disk=disk,
        vault_free_percent=free_percent(vault_path) if vault_path else None,
    )
