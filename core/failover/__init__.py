"""Failover between regions: topology, health scoring, target choice, probes and DNS switching.

Plain Python (never imports prefect): the monitor, failover and failback flows call into it.
"""

from __future__ import annotations

from core.errors import DRError


class StaleEpochError(DRError):
    """A monitor or failover acted on an old failover epoch: another run changed the active region first. Exit 24."""

    exit_code = 24
