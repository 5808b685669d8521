"""Telling the stack's notification channels how a run ended, without ever failing the run for it."""

from __future__ import annotations

from prefect import get_run_logger


def announce(stack: str, activity: str, passed: bool, *, title: str, summary: str, subject: str, details: dict) -> None:
    """Send the outcome to every channel of the stack that wants it; a failed delivery is logged and counted."""
    from tasks.notify import notify_outcome

    deliveries = notify_outcome(
        stack,
        activity=activity,
        outcome="success" if passed else "failure",
        title=title,
        summary=summary,
        subject=subject,
        details=details,
    )
    failed = [d for d in deliveries or [] if not d.get("ok")]
    if failed:
        get_run_logger().warning("%d of %d notifications were not delivered", len(failed), len(deliveries))
