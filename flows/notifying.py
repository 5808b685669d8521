"""Telling the stack's notification channels how a run ended, without ever failing the run for it."""

from __future__ import annotations

from core.notify.event import Event
from tasks.notify import notify_outcome


def announce(stack: str, event: Event) -> list[dict]:
    """Send ``event`` to every channel of ``stack`` that wants it; a failed delivery is logged and counted
    by the task (never raised: a receiver that is down must not turn a passed drill into a failed run)."""
    return notify_outcome(stack, event)
