"""What is reported (an ``Event``) and how each delivery of it went (a ``Delivery``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

# What a run was: the scheduled work (backup, validation, drill) and the region moves (failover, failback) with
# the monitor's pages (a region down or back, no failover target, an approval waiting).
Activity = Literal["backup", "validation", "drill", "failover", "failback", "monitor", "retention", "audit"]
ACTIVITIES: tuple[str, ...] = get_args(Activity)
Outcome = Literal["success", "failure"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)
# PagerDuty Events v2's severities, most urgent first; an event that carries one is sent at it whatever the
# channel's default (a failover that stopped halfway pages even where backups only warn).
Severity = Literal["critical", "error", "warning", "info"]
SEVERITIES: tuple[str, ...] = get_args(Severity)


@dataclass
class Event:
    """The outcome of one backup, validation, drill, failover or failback run, or a monitor's page, as every
    channel shows it.

    ``subject`` is what the outcome is about (a source name, a drill tier, "all sources"):
    with the stack and the activity it makes the PagerDuty dedup key, so the next run of the
    same thing finds the incident the last one opened. ``details`` are short values (ids,
    counts, seconds, failure lines); never a secret. ``severity``: how urgent (None: the
    channel's default for a failure - backups, validations and drills carry none; failover,
    failback and monitor events always carry one, ``critical`` pages).
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
    severity: Severity | None = None

    def __post_init__(self) -> None:
        # An event nobody can route (a misspelt activity, which every channel's filter drops) is a bug of its
        # builder, not a delivery to count: said at once, naming the field.
        for name, value, allowed in (
            ("activity", self.activity, ACTIVITIES),
            ("outcome", self.outcome, OUTCOMES),
            ("severity", self.severity, (None, *SEVERITIES)),
        ):
            if value not in allowed:
                raise ValueError(f"notification event: {name} {value!r} is not one of {', '.join(map(str, allowed))}")

    @property
    def dedup_key(self) -> str:
        """One key per stack, activity and subject: a repeated failure updates the open incident instead of
        paging again, and the next success resolves it."""
        return f"genesis-dr/{self.stack}/{self.activity}/{self.subject}"

    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    def headline(self) -> str:
        """``[genesis-dr] prod: backup FAILED - app-db``: what a subject line or a pager shows (a monitor page:
        ``monitor ALERT - us-west-2``, its all-clear ``monitor recovered``)."""
        if self.activity == "monitor":
            word = "recovered" if self.ok else "ALERT"
        else:
            word = "succeeded" if self.ok else "FAILED"
        return f"[genesis-dr] {self.stack}: {self.activity} {word} - {self.subject}"

    def body(self) -> str:
        """Plain text for channels without structure (Prefect notification blocks, e-mail)."""
        lines = [self.title, self.summary]
        if self.severity:
            lines.append(f"severity: {self.severity}")
        lines += [f"{key}: {_text(value)}" for key, value in self.details.items()]
        if self.url:
            lines.append(self.url)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self) | {"dedup_key": self.dedup_key}
        if data["severity"] is None:  # the documents of backups, validations and drills stay as they were
            del data["severity"]
        return data


def _text(value: Any) -> str:
    if isinstance(value, dict):  # a failover's components: "postgres: promote ok in us-east-1; redis: ..."
        return "; ".join(f"{k}: {v}" for k, v in value.items())
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
