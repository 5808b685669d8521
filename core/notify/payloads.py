"""The message each channel receives for an event: pure functions of the event (tested as values)."""

from __future__ import annotations

import json
from typing import Any

from core.notify.event import Event, _text

SCHEMA = "genesis-dr.notification/1"

# Slack's documented limits: header text 150, section text 3000, at most 10 fields of 2000 each.
_SLACK_HEADER, _SLACK_TEXT, _SLACK_FIELDS, _SLACK_FIELD = 150, 3000, 10, 2000
_PD_SUMMARY = 1024  # Events API v2: payload.summary is cut at 1024 characters
SNS_SUBJECT_MAX = 100  # SNS refuses longer subjects (and any line break or non-ASCII character)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mrkdwn(text: str) -> str:
    # Slack reads <...> as links and mentions; escaping keeps a failure line from pinging @channel.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# A failure's icon by its severity (none: the channel's default, shown as the alarm it always was).
_ICONS = {None: ":rotating_light:", "critical": ":rotating_light:", "error": ":rotating_light:", "warning": ":warning:"}


def _icon(event: Event) -> str:
    if event.ok:
        return ":white_check_mark:"
    return _ICONS.get(event.severity, ":information_source:")


def slack_message(event: Event) -> dict[str, Any]:
    """An incoming-webhook message: ``text`` (what notifications and old clients show) and ``blocks``."""
    icon = _icon(event)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(event.title, _SLACK_HEADER)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(f"{icon} {_mrkdwn(event.summary)}", _SLACK_TEXT)}},
    ]
    fields = [
        {"type": "mrkdwn", "text": _cut(f"*{_mrkdwn(str(key))}*\n{_mrkdwn(_text(value))}", _SLACK_FIELD)}
        for key, value in list(event.details.items())[:_SLACK_FIELDS]
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    severity = f" | {event.severity}" if event.severity else ""
    context = f"stack `{_mrkdwn(event.stack)}` | {event.activity} | {_mrkdwn(event.subject)}{severity} | {event.at}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    if event.url:
        blocks.append(
            {
                "type": "actions",
                "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Open run"}, "url": event.url}],
            }
        )
    return {"text": f"{event.headline()}: {event.summary}", "blocks": blocks}


def pagerduty_event(event: Event, routing_key: str, severity: str) -> dict[str, Any]:
    """Events API v2: a failure triggers (or updates) the incident of its dedup key; a success resolves it.

    ``severity`` is the channel's default, used for a failure that carries none; an event's own severity wins
    either way (a critical failover page is ``critical`` on a channel set to ``warning``, an info one ``info``).
    """
    if event.ok:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": event.dedup_key}
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": event.dedup_key,
        "client": "genesis-dr",
        "payload": {
            "summary": _cut(f"{event.headline()}: {event.summary}", _PD_SUMMARY),
            "source": f"genesis-dr/{event.stack}",
            "severity": event.severity or severity,
            "timestamp": event.at,
            "component": event.subject,
            "group": event.stack,
            "class": event.activity,
            "custom_details": event.details,
        },
    }
    if event.url:
        body["links"] = [{"href": event.url, "text": "Prefect run"}]
    return body


def webhook_body(event: Event) -> dict[str, Any]:
    """The generic webhook's JSON: every field of the event, with a schema tag receivers can switch on."""
    return {"schema": SCHEMA, **event.to_dict()}


def sns_subject(event: Event) -> str:
    """SNS subjects are ASCII, one line, at most 100 characters."""
    text = " ".join(event.headline().split())
    text = text.encode("ascii", "replace").decode("ascii")
    return _cut(text, SNS_SUBJECT_MAX)


def sns_message(event: Event) -> str:
    return json.dumps(webhook_body(event), sort_keys=True, default=str)
