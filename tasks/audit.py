"""Writing a run's audit entry into the stack's vault (core.audit)."""

from __future__ import annotations

from prefect import get_run_logger

from core.audit import entry_hash, must_record, pending_count, record
from core.errors import AuditTrailError, DRError
from tasks.run_stack import run_stack


# A plain call inside the flow run, not a task run: every run of every flow writes one entry, and a task run
# of its own (API round trips to create it and move it through its states) cost more than the append itself.
def record_audit(stack: str, action: str, subject: str, details: dict, outcome: str = "success") -> dict:
    """Append one signed entry to the stack's audit trail; ``{"seq", "hash"}`` of it.

    When the entry cannot be written it is queued on this host (appended, marked late, by the next run that
    can write). A backup, validation, drill, retention, hold or erase run then fails: its vault was just written,
    so something is really wrong. A restore, failover, failback or monitor run logs an ERROR naming the queue and
    goes on (``{"seq": None, "pending": N}``): a recovery never fails because its log could not be written.
    """
    config = None
    try:
        config = run_stack(stack).config
        entry = record(config, action, subject, details, outcome=outcome)
    except DRError as exc:
        error = AuditTrailError(f"the audit entry of {action} {subject} ({outcome}) was not written: {exc}")
    except Exception as exc:  # another library's message might quote a value it was given: its type only
        error = AuditTrailError(
            f"the audit entry of {action} {subject} ({outcome}) was not written: {type(exc).__name__}; check the "
            "vault store and signing.key_from"
        )
    else:
        get_run_logger().info("audit entry %d: %s %s %s", entry["seq"], action, subject, outcome)
        return {"seq": entry["seq"], "hash": entry_hash(entry)}
    if must_record(action):
        raise error
    try:
        pending = pending_count(config) if config is not None else None
    except Exception:  # noqa: BLE001 - the count is for the log line only
        pending = None
    get_run_logger().error(
        "%s; the %s itself stands (a recovery never fails because its audit entry could not be written); %s",
        error,
        action,
        f"{pending} entries pending on this host" if pending is not None else "entries pending on this host",
    )
    return {"seq": None, "hash": None, "pending": pending}
