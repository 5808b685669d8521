"""Where notifications go (``notifications:`` in the stack file). Secrets are ``SecretStr``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from core.notify.event import ACTIVITIES, Activity, Outcome, Severity
from core.tls import EndpointUrl

__all__ = ["ACTIVITIES", "NotificationsConfig", "PagerDutyConfig", "SlackConfig", "SnsConfig", "WebhookConfig"]

ACTIVITIES_HELP = (
    "Which activities go to this channel: backup, validation, drill, failover, failback, monitor (the monitor's "
    "pages: a region down or back, no failover target, an approval waiting), retention (a sweep that deleted, or "
    "was refused), audit (a trail that failed verification). Default: all of them. A list is a "
    "filter: a channel that lists activities gets no others, new ones included."
)


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: list[Outcome] = Field(
        default_factory=lambda: ["success", "failure"], description="Which outcomes go to this channel."
    )
    activities: list[Activity] = Field(default_factory=lambda: list(ACTIVITIES), description=ACTIVITIES_HELP)

    def wants(self, activity: str, outcome: str) -> bool:
        """Whether an event of ``activity`` with ``outcome`` goes to this channel."""
        return outcome in self.on and activity in self.activities


class SlackConfig(_Channel):
    webhook_url: SecretStr = Field(description="Slack incoming webhook URL (secret).")


class PagerDutyConfig(_Channel):
    routing_key: SecretStr = Field(description="PagerDuty Events API v2 integration (routing) key (secret).")
    url: str = Field("https://events.pagerduty.com/v2/enqueue", description="Events API v2 endpoint.")
    severity: Severity = Field(
        "critical",
        description="Severity of a failure that carries none (backups, validations, drills); an event's own "
        "severity wins (a failover that stopped or a region down is critical whatever this says).",
    )
    on: list[Outcome] = Field(
        default_factory=lambda: ["success", "failure"],
        description="failure triggers (one incident per dedup key); success resolves the open one.",
    )


class SnsConfig(_Channel):
    topic_arn: str = Field(description="The SNS topic to publish to.")
    region: str | None = Field(None, description="The topic's region (default: from the ARN).")
    endpoint_url: EndpointUrl = Field(None, description="Another endpoint (a test server).")
    credentials: str | None = Field(None, description="Name of a prefect-aws AwsCredentials block (default chain).")


class WebhookConfig(_Channel):
    name: str = Field("webhook", description="Shown in delivery reports.")
    url: SecretStr = Field(description="Receives a JSON POST of every event (secret: URLs often carry tokens).")


class NotificationsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slack: SlackConfig | None = None
    pagerduty: PagerDutyConfig | None = None
    sns: SnsConfig | None = None
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    prefect_blocks: list[str] = Field(
        default_factory=list,
        description="Names of Prefect notification blocks (SlackWebhook, MicrosoftTeamsWebhook, ...) that also get "
        "every event, as a subject and a body.",
    )
    timeout_seconds: float = Field(5, gt=0, le=60, description="Per delivery; a slower receiver is counted as failed.")

    def any_channel(self) -> bool:
        """Whether anything is configured to receive events at all."""
        return bool(self.slack or self.pagerduty or self.sns or self.webhooks or self.prefect_blocks)

    def channels_for(self, activity: str, outcome: str = "failure") -> list[str]:
        """The channels an event of ``activity`` and ``outcome`` goes to, by delivery name; Prefect notification
        blocks get every event. ``channels_for("failover") == []`` on a stack with channels: a failover could
        not page anyone (worth a warning where the stack is applied)."""
        named = [("slack", self.slack), ("pagerduty", self.pagerduty), ("sns", self.sns)]
        named += [(f"webhook:{hook.name}", hook) for hook in self.webhooks]
        out = [name for name, channel in named if channel is not None and channel.wants(activity, outcome)]
        return out + [f"prefect:{name}" for name in self.prefect_blocks]
