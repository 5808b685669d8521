"""Telling the stack's notification channels how a run ended, and recording it in the vault's audit trail."""

from __future__ import annotations

from core.notify.event import Event
from tasks.audit import record_audit
from tasks.notify import notify_outcome
from tasks.run_stack import run_stack


def audit_details(event: Event) -> dict:
    """What the audit entry keeps of an event: its one-line summary, severity and short details (ids, counts,
    failure lines; events never carry secrets)."""
    details = {"title": event.title, "summary": event.summary}
    if event.severity:
        details["severity"] = event.severity
    return details | {"details": event.details}


def announce(stack: str, event: Event, *, record: bool = True) -> list[dict]:
    """Send ``event`` to every channel of ``stack`` that wants it, then record it in the audit trail.

    A failed delivery is logged and counted by the task (never raised: a receiver that is down must not turn a
    passed drill into a failed run). A stack without channels costs no notification task run (a backup every 5
    minutes would pay one for nothing); a stack that cannot be read is the task's to report.

    The audit entry is written always, channels or not. When it cannot be written it is queued on this host
    (``record_audit``): a backup, validation or drill run then fails (after the notification went out), a
    failover, failback or monitor run logs the error and its outcome stands. ``record=False``: the run's core
    already wrote its own entries (a retention sweep, an audit verification).
    """
    try:
        wanted = run_stack(stack).config.notifications.any_channel()
    except Exception:  # noqa: BLE001 - the task says why, as a failed delivery
        wanted = True
    deliveries = notify_outcome(stack, event) if wanted else []
    if record:
        record_audit(stack, event.activity, event.subject, audit_details(event), event.outcome)
    return deliveries
