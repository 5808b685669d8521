"""Where notifications go (``notifications:`` in the stack file). Secrets are ``SecretStr``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

ACTIVITIES = ("backup", "validation", "drill")
Outcome = Literal["success", "failure"]


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: list[Outcome] = Field(
        default_factory=lambda: ["success", "failure"], description="Which outcomes go to this channel."
    )
    activities: list[Literal["backup", "validation", "drill"]] = Field(
        default_factory=lambda: list(ACTIVITIES), description="Which activities go to this channel."
    )


class SlackConfig(_Channel):
    webhook_url: SecretStr = Field(description="Slack incoming webhook URL (secret).")


class PagerDutyConfig(_Channel):
    routing_key: SecretStr = Field(description="PagerDuty Events API v2 integration (routing) key (secret).")
    url: str = Field("https://events.pagerduty.com/v2/enqueue", description="Events API v2 endpoint.")
    severity: Literal["critical", "error", "warning", "info"] = "critical"
    on: list[Outcome] = Field(
        default_factory=lambda: ["success", "failure"],
        description="failure triggers (one incident per dedup key); success resolves the open one.",
    )


class SnsConfig(_Channel):
    topic_arn: str = Field(description="The SNS topic to publish to.")
    region: str | None = Field(None, description="The topic's region (default: from the ARN).")
    endpoint_url: str | None = Field(None, description="Another endpoint (a test server).")
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
