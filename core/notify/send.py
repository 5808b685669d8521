"""Send one event to every channel that wants it, at once, each bounded by the stack's timeout."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from core.notify import payloads
from core.notify.config import NotificationsConfig
from core.notify.event import Delivery, Event
from core.notify.transport import post_json, sns_publish

# A sender takes nothing and answers (ok, detail); "extra" senders come from the layer above
# (Prefect notification blocks) and get the subject and body of the event.
Sender = Callable[[], tuple[bool, str]]
ExtraSender = Callable[[str, str], None]


def _wants(channel: Any, event: Event) -> bool:
    return channel.wants(event.activity, event.outcome)


def sns_attributes(event: Event) -> dict[str, str]:
    """What an SNS subscription's filter policy can match on (a pager's queue: severity critical)."""
    attributes = {"activity": event.activity, "outcome": event.outcome, "stack": event.stack}
    if event.severity:
        attributes["severity"] = event.severity
    return attributes


def _senders(config: NotificationsConfig, event: Event, aws_session: Any) -> dict[str, Sender]:
    timeout = config.timeout_seconds
    out: dict[str, Sender] = {}
    if config.slack and _wants(config.slack, event):
        url = config.slack.webhook_url.get_secret_value()
        out["slack"] = lambda: post_json(url, payloads.slack_message(event), timeout)
    if config.pagerduty and _wants(config.pagerduty, event):
        pd = config.pagerduty
        body = payloads.pagerduty_event(event, pd.routing_key.get_secret_value(), pd.severity)
        out["pagerduty"] = lambda: post_json(pd.url, body, timeout)
    if config.sns and _wants(config.sns, event):
        sns = config.sns
        out["sns"] = lambda: sns_publish(
            sns.topic_arn,
            payloads.sns_subject(event),
            payloads.sns_message(event),
            sns_attributes(event),
            region=sns.region,
            endpoint_url=sns.endpoint_url,
            session=aws_session,
            timeout=timeout,
        )
    for hook in config.webhooks:
        if _wants(hook, event):
            out[f"webhook:{hook.name}"] = lambda url=hook.url.get_secret_value(): post_json(
                url, payloads.webhook_body(event), timeout
            )
    return out


def secrets_of(config: NotificationsConfig) -> list[str]:
    """Every secret value of the channels (the texts a delivery detail must never contain)."""
    values = [c.webhook_url for c in (config.slack,) if c] + [c.routing_key for c in (config.pagerduty,) if c]
    values += [hook.url for hook in config.webhooks]
    return [v.get_secret_value() for v in values if v.get_secret_value()]


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced: a library's error may quote the URL it was given."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return " ".join(text.split())


def notify(
    config: NotificationsConfig,
    event: Event,
    *,
    aws_session: Any = None,
    extra: dict[str, ExtraSender] | None = None,
) -> list[Delivery]:
    """Deliver ``event`` to every channel whose ``on`` and ``activities`` include it, concurrently.

    Never raises for a delivery: a receiver that is down, slower than ``timeout_seconds`` or
    answering an error gives ``Delivery(ok=False, detail=one line)``. ``aws_session``: a boto3
    Session for SNS (the stack's credentials block; default boto3's chain). ``extra``: more
    senders by channel name, called with (subject, body), e.g. Prefect notification blocks;
    one that raises is a failed delivery.
    """
    senders = _senders(config, event, aws_session)
    for name, send in (extra or {}).items():
        senders[name] = _plain(send, event)
    if not senders:
        return []
    secrets = secrets_of(config)
    timeout = config.timeout_seconds
    started = time.monotonic()
    results: dict[str, Delivery] = {}
    pool = ThreadPoolExecutor(max_workers=len(senders), thread_name_prefix="notify")
    try:
        # Each thread runs in a copy of the caller's context: a caller's settings (a Prefect API URL in a
        # context variable) reach the senders it gave.
        futures = {pool.submit(contextvars.copy_context().run, _timed, send): name for name, send in senders.items()}
        # Each sender is bounded by its own socket timeouts; this bounds the whole, a connect and a
        # read that each take almost the timeout included.
        done, _ = wait(futures, timeout=2 * timeout + 1)
        for future, name in futures.items():
            if future in done:
                ok, detail, seconds = future.result()
                results[name] = Delivery(name, ok, scrub(detail, secrets)[:300], round(seconds, 3))
            else:
                waited = time.monotonic() - started
                results[name] = Delivery(name, False, f"no answer within {timeout:g}s", round(waited, 3))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a stuck receiver must not hold up the run it reports
    return [results[name] for name in senders]


def _timed(send: Sender) -> tuple[bool, str, float]:
    start = time.monotonic()
    try:
        ok, detail = send()
    except Exception as exc:  # a sender's surprise is a failed delivery, never the caller's failure
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return ok, detail, time.monotonic() - start


def _plain(send: ExtraSender, event: Event) -> Sender:
    def run() -> tuple[bool, str]:
        try:
            send(event.headline(), event.body())
        except Exception as exc:
            # Only the kind of failure and an HTTP status: the message of a block's library may quote
            # its URL, whose secrets this layer does not know.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            return False, f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}"
        return True, "sent"

    return run
