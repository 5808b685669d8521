"""Flag an operation that took far longer than usual (the source documents' performance-degradation alert)."""

from __future__ import annotations

import statistics

# The recent past only: a stack that grew a year ago has a new normal.
LAST_RUNS = 20


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def slow_flag(previous: list[float], latest: float, factor: float = 2.0, min_samples: int = 3) -> str | None:
    """None, or why ``latest`` (seconds) is slow: more than ``factor`` x the median of the previous runs
    (oldest first; at most the last ``LAST_RUNS`` count), e.g. "took 812 s, 2.6x its median 310 s over the
    last 9 runs". Fewer than ``min_samples`` previous runs: no judgement."""
    recent = [float(v) for v in previous[-LAST_RUNS:] if v is not None and v >= 0]
    if len(recent) < max(1, min_samples):
        return None
    median = statistics.median(recent)
    if median <= 0 or latest <= factor * median:
        return None
    return (
        f"took {_seconds(latest)}, {latest / median:.1f}x its median {_seconds(median)} "
        f"over the last {len(recent)} runs"
    )
