"""Seconds per stage of a recovery, measured where the work happens.

A drill reports its recovery time per stage (fetch, decrypt, load, replay, verify).
Fetching and decrypting run in reader threads, overlapped with the load, so those
two are *busy* time summed over threads; load, replay and verify are wall-clock
spans. ``StageClock`` is the one thread-safe accumulator all of them write to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

STAGES = ("sandbox", "fetch", "decrypt", "load", "replay", "verify")


class StageClock:
    """Seconds per stage, summed; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(stage, time.monotonic() - started)

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 3) for k, v in self._seconds.items()}
