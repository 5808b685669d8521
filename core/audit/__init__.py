"""The vault's tamper-evident audit trail: who did what, when, to which object (see ``core.audit.trail``).

Every backup, restore, validation, drill, failover, hold, release, deletion and erasure writes one entry through
``record``; ``core.audit.verify`` proves the chain complete and unaltered. An entry the vault cannot take is queued
on this host (``core.audit.pending``) and appended, marked late, by the next run that can write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.audit.pending import PendingQueue
from core.audit.trail import AUDIT_ACTIONS, AuditTrail, entry_hash
from core.audit.verify import (
    AuditProblem,
    AuditReport,
    acknowledge,
    raise_alarm,
    read_checkpoint,
    unacknowledged_alarm,
    verify_recent,
    verify_trail,
    write_checkpoint,
)

if TYPE_CHECKING:
    from core.stack import StackConfig


# Runs that recover or watch: their outcome stands when their entry cannot be written (it is queued and an error
# logged), since a recovery must never fail because its log could not be written - the vault holding the trail is
# often the very thing that is lost or read-only then. Every other run (backup, validation, drill, retention, hold,
# erase, ...) just wrote to that vault, so an entry it cannot write means something is really wrong: it fails.
RECOVERY_ACTIONS = ("restore", "failover", "failback", "monitor")


def must_record(action: str) -> bool:
    """Whether a run of ``action`` fails when its audit entry cannot be written (see RECOVERY_ACTIONS)."""
    return action.split(".")[0] not in RECOVERY_ACTIONS


def pending_count(config: StackConfig) -> int:
    """Entries of the stack's trail queued on this host, not yet in the vault."""
    return PendingQueue(config.vault.store()).count()


def trail_for(config: StackConfig) -> AuditTrail:
    """The trail in the stack's primary vault store, signed with this host's key (``signing.key_from``).

    The store, not the opened vault: a run that fails before the vault exists (a first backup that never got
    that far) is recorded too.
    """
    return AuditTrail(config.vault.store(), config.signing.host_key())


def record(config: StackConfig, action: str, subject: str, details: dict, *, outcome: str = "success") -> dict:
    """Append one entry to the stack's trail; the entry as stored. Errors propagate: a run whose audit entry
    could not be written must not end as if it had been."""
    return trail_for(config).append(action, subject, details, outcome=outcome)


__all__ = [
    "AUDIT_ACTIONS",
    "AuditProblem",
    "AuditReport",
    "AuditTrail",
    "PendingQueue",
    "RECOVERY_ACTIONS",
    "acknowledge",
    "entry_hash",
    "must_record",
    "pending_count",
    "read_checkpoint",
    "raise_alarm",
    "record",
    "trail_for",
    "unacknowledged_alarm",
    "verify_recent",
    "verify_trail",
    "write_checkpoint",
]
