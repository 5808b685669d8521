"""The self-backup: what genesis-dr itself needs to be rebuilt, sealed into the vault (see snapshot.py)."""

from core.selfbackup.snapshot import (
    DEFAULT_KEEP,
    PREFIX,
    STATE_FORMAT,
    STATE_VERSION,
    Snapshot,
    latest_snapshot_id,
    new_snapshot_id,
    open_snapshot,
    prune_snapshots,
    read_audit_head,
    read_record,
    snapshot_ids,
    trail_continues,
    write_snapshot,
)

__all__ = [
    "DEFAULT_KEEP",
    "PREFIX",
    "STATE_FORMAT",
    "STATE_VERSION",
    "Snapshot",
    "latest_snapshot_id",
    "new_snapshot_id",
    "open_snapshot",
    "prune_snapshots",
    "read_audit_head",
    "read_record",
    "snapshot_ids",
    "trail_continues",
    "write_snapshot",
]
