"""What is reported (an ``Event``) and how each delivery of it went (a ``Delivery``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Activity = Literal["backup", "validation", "drill"]
Outcome = Literal["success", "failure"]


@dataclass
class Event:
    """The outcome of one backup, validation or drill run, as every channel shows it.

    ``subject`` is what the outcome is about (a source name, a drill tier, "all sources"):
    with the stack and the activity it makes the PagerDuty dedup key, so the next run of the
    same thing finds the incident the last one opened. ``details`` are short values (ids,
    counts, seconds, failure lines); never a secret.
    """

    activity: Activity
    outcome: Outcome
    stack: str
    title: str
    summary: str  # one line
    subject: str = "all"
    details: dict[str, Any] = field(default_factory=dict)
    url: str | None = None
    at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def dedup_key(self) -> str:
        """One key per stack, activity and subject: a repeated failure updates the open incident instead of
        paging again, and the next success resolves it."""
        return f"genesis-dr/{self.stack}/{self.activity}/{self.subject}"

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    def headline(self) -> str:
        """``[genesis-dr] prod: backup FAILED - app-db``: what a subject line or a pager shows."""
        word = "succeeded" if self.ok else "FAILED"
        return f"[genesis-dr] {self.stack}: {self.activity} {word} - {self.subject}"

    def body(self) -> str:
        """Plain text for channels without structure (Prefect notification blocks, e-mail)."""
        lines = [self.title, self.summary]
        lines += [f"{key}: {_text(value)}" for key, value in self.details.items()]
        if self.url:
            lines.append(self.url)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"dedup_key": self.dedup_key}


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    return str(value)


@dataclass
class Delivery:
    """One channel's delivery of one event. ``detail`` names the channel's endpoint host at most, never a
    webhook URL or a routing key."""

    channel: str  # "slack", "pagerduty", "sns", "webhook:<name>", "prefect:<block>"
    ok: bool
    detail: str  # one line: "HTTP 200", "connection refused by 127.0.0.1:4711", "no answer within 5s"
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.channel}: {'delivered' if self.ok else 'NOT delivered'} ({self.detail}, {self.seconds:.2f}s)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
