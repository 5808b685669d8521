"""Failover between regions: topology, health scoring, target choice, probes and DNS switching.

Plain Python (never imports prefect): the monitor, failover and failback flows call into it.
"""

from __future__ import annotations

from core.errors import StaleEpochError

__all__ = ["StaleEpochError"]
