"""Report an outcome to the stack's notification channels, without ever failing the run that reports."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from prefect import get_run_logger, task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE

from blocks.notifications import sns_session
from core.errors import DRError
from core.notify import Event, notify
from tasks.run_stack import run_stack


def _send_block(block: Any, subject: str, body: str) -> None:
    with block.raise_on_failure():  # an Apprise block otherwise only logs a failed send
        result = block.notify(body, subject)
        if inspect.isawaitable(result):  # a notification block with only an async notify
            asyncio.run(result)


def _prefect_senders(names: list[str]) -> dict[str, Any]:
    """Prefect notification blocks by name (``slack-webhook/ops``); a block that cannot be loaded is a failed
    delivery, not a failed run."""
    senders: dict[str, Any] = {}
    for name in names:
        try:
            block = Block.load(name)
        except Exception as exc:  # a missing or invalid block is reported with the deliveries
            error = (
                f"{type(exc).__name__}: block {name!r} cannot be loaded; create it or fix notifications.prefect_blocks"
            )

            def fail(subject: str, body: str, error: str = error) -> None:
                raise LookupError(error)

            senders[f"prefect:{name}"] = fail
            continue
        senders[f"prefect:{name}"] = lambda subject, body, block=block: _send_block(block, subject, body)
    return senders


def _run_url() -> str | None:
    try:
        from prefect.runtime import flow_run

        return flow_run.ui_url
    except Exception:  # no UI URL configured, or outside a run: the event goes without a link
        return None


@task(name="notify-outcome", task_run_name="notify-{event.activity}-{event.outcome}", cache_policy=NO_CACHE)
def notify_outcome(stack: str, event: Event) -> list[dict]:
    """Send ``event`` to every channel of ``stack`` that wants it; returns the deliveries as dicts.

    Never raises: a receiver that is down, slow or failing - or a stack whose channels cannot be
    read - is logged as a warning and counted, and the run goes on to its own outcome.
    """
    logger = get_run_logger()
    try:
        config, session = sns_session(run_stack(stack).config.notifications)
        if event.url is None:
            event.url = _run_url()
        deliveries = notify(config, event, aws_session=session, extra=_prefect_senders(config.prefect_blocks))
    except Exception as exc:  # reporting must not change the outcome it reports
        # Our errors name the object and the remedy; another's message might quote a value it was given.
        why = str(exc) if isinstance(exc, DRError) else type(exc).__name__
        logger.warning("notifications of %s %s not sent: %s", event.activity, event.outcome, why)
        return [{"channel": "all", "ok": False, "detail": why[:300], "seconds": 0.0}]
    for d in deliveries:
        if d.ok:
            logger.info("notification %s", d.line())
        else:
            logger.warning("notification %s", d.line())
    if deliveries:
        failed = sum(1 for d in deliveries if not d.ok)
        logger.info(
            "notifications of %s %s: %d delivered, %d failed",
            event.activity,
            event.outcome,
            len(deliveries) - failed,
            failed,
        )
    return [d.to_dict() for d in deliveries]
