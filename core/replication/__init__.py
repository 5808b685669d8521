"""Replicas of a vault: verified, resumable copies on another region or provider (see replica.py)."""

from core.replication.readonly import ReadOnlyStore
from core.replication.replica import (
    DEFAULT_MAX_LAG_SECONDS,
    LEASE_PREFIX,
    ReplicaReport,
    open_primary,
    open_replica,
    open_vault,
    replicate,
)

__all__ = [
    "DEFAULT_MAX_LAG_SECONDS",
    "LEASE_PREFIX",
    "ReadOnlyStore",
    "ReplicaReport",
    "open_primary",
    "open_replica",
    "open_vault",
    "replicate",
]
