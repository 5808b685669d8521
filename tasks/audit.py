"""Writing a run's audit entry into the stack's vault (core.audit)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.audit import entry_hash, record
from core.errors import AuditTrailError, DRError
from tasks.run_stack import run_stack


@task(name="record-audit", task_run_name="audit-{action}-{outcome}", cache_policy=NO_CACHE)
def record_audit(stack: str, action: str, subject: str, details: dict, outcome: str = "success") -> dict:
    """Append one signed entry to the stack's audit trail; ``{"seq", "hash"}`` of it.

    Raises when the entry cannot be written: a run must not end as if it had been recorded.
    """
    try:
        entry = record(run_stack(stack).config, action, subject, details, outcome=outcome)
    except DRError as exc:
        raise AuditTrailError(f"the audit entry of {action} {subject} ({outcome}) was not written: {exc}") from None
    except Exception as exc:  # another library's message might quote a value it was given: its type only
        raise AuditTrailError(
            f"the audit entry of {action} {subject} ({outcome}) was not written: {type(exc).__name__}; check the "
            "vault store and signing.key_from"
        ) from None
    get_run_logger().info("audit entry %d: %s %s %s", entry["seq"], action, subject, outcome)
    return {"seq": entry["seq"], "hash": entry_hash(entry)}
