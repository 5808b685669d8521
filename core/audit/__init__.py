"""The vault's tamper-evident audit trail: who did what, when, to which object (see ``core.audit.trail``).

Every backup, restore, validation, drill, failover, hold, release, deletion and erasure writes one entry through
``record``; ``core.audit.verify`` proves the chain complete and unaltered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.audit.trail import AUDIT_ACTIONS, AuditTrail, entry_hash
from core.audit.verify import AuditProblem, AuditReport, acknowledge, raise_alarm, unacknowledged_alarm, verify_trail

if TYPE_CHECKING:
    from core.stack import StackConfig


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
    "acknowledge",
    "entry_hash",
    "raise_alarm",
    "record",
    "trail_for",
    "unacknowledged_alarm",
    "verify_trail",
]
