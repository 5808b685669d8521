"""Telling the stack's notification channels how a run ended, without ever failing the run for it."""

from __future__ import annotations

from core.notify.event import Event
from tasks.notify import notify_outcome
from tasks.run_stack import run_stack


def announce(stack: str, event: Event) -> list[dict]:
    """Send ``event`` to every channel of ``stack`` that wants it; a failed delivery is logged and counted
    by the task (never raised: a receiver that is down must not turn a passed drill into a failed run).

    A stack without channels costs no task run (a backup every 5 minutes would pay one for nothing); a
    stack that cannot be read is the task's to report.
    """
    try:
        wanted = run_stack(stack).config.notifications.any_channel()
    except Exception:  # noqa: BLE001 - the task says why, as a failed delivery
        wanted = True
    return notify_outcome(stack, event) if wanted else []
