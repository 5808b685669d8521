"""Where a stack's outcomes are sent: the ``notifications:`` section of the stack file as a block.

The stack block nests it (one request loads both). Its secrets - the Slack webhook URL,
the PagerDuty routing key, the generic webhooks' URLs - are secret fields, which the API
shows obfuscated unless asked for secrets: SecretStr fields inside the Slack and PagerDuty
settings, and the webhooks' URLs in one SecretDict by webhook name (Prefect obfuscates
secrets inside mappings, not inside lists, so the list keeps the webhooks' other settings).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from prefect.types import SecretDict
from pydantic import BaseModel, ConfigDict, Field

from core.errors import ConfigError
from core.notify.config import ACTIVITIES_HELP, NotificationsConfig, PagerDutyConfig, SlackConfig, SnsConfig
from core.notify.event import ACTIVITIES, Activity


class WebhookSettings(BaseModel):
    """A generic webhook's settings other than its URL (kept in ``webhook_urls`` by name)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The webhook's name (its key in webhook_urls).")
    on: list[Literal["success", "failure"]] = Field(
        default_factory=lambda: ["success", "failure"], description="Which outcomes go to this webhook."
    )
    activities: list[Activity] = Field(default_factory=lambda: list(ACTIVITIES), description=ACTIVITIES_HELP)


class NotificationChannels(Block):
    """Where a stack's outcomes go (backups, validations, drills, failovers, failbacks and the monitor's pages):
    Slack, PagerDuty, AWS SNS, webhooks and Prefect notification blocks. Written by `genesis-dr apply FILE` from
    the stack's `notifications:` section.

    Example:
        ```python
        from blocks import NotificationChannels
        config = NotificationChannels.load("BLOCK_NAME").to_config()
        ```
    """

    _block_type_name = "Notification Channels"

    slack: SlackConfig | None = Field(None, description="Slack incoming webhook (its URL is a secret field).")
    pagerduty: PagerDutyConfig | None = Field(
        None, description="PagerDuty Events API v2 (its routing key is a secret field)."
    )
    sns: SnsConfig | None = Field(
        None, description="AWS SNS topic; credentials names an AwsCredentials block (default: boto3's chain)."
    )
    webhooks: list[WebhookSettings] = Field(
        default_factory=list, description="Generic JSON webhooks: name, outcomes and activities of each."
    )
    webhook_urls: SecretDict = Field(
        default_factory=lambda: SecretDict({}), description="Webhook name -> its URL (secret: URLs carry tokens)."
    )
    prefect_blocks: list[str] = Field(
        default_factory=list,
        description="Prefect notification blocks that also get every event, as 'block-type-slug/name'.",
    )
    timeout_seconds: float = Field(5, description="Per delivery; a slower receiver is counted as failed.")

    @classmethod
    def from_config(cls, config: NotificationsConfig) -> NotificationChannels:
        """The block holding ``config`` (secrets in its secret fields)."""
        return cls(
            slack=config.slack,
            pagerduty=config.pagerduty,
            sns=config.sns,
            webhooks=[WebhookSettings(name=h.name, on=h.on, activities=h.activities) for h in config.webhooks],
            webhook_urls=SecretDict({h.name: h.url.get_secret_value() for h in config.webhooks}),
            prefect_blocks=list(config.prefect_blocks),
            timeout_seconds=config.timeout_seconds,
        )

    def to_config(self) -> NotificationsConfig:
        """The core notifications config (SNS credentials not yet resolved: see ``sns_session``)."""
        urls = self.webhook_urls.get_secret_value()
        missing = [h.name for h in self.webhooks if h.name not in urls]
        if missing:
            raise ConfigError(
                f"notification channels: webhook {missing[0]!r} has no URL in webhook_urls; re-run 'genesis-dr apply'"
            )
        return NotificationsConfig(
            slack=self.slack,
            pagerduty=self.pagerduty,
            sns=self.sns,
            webhooks=[h.model_dump() | {"url": urls[h.name]} for h in self.webhooks],
            prefect_blocks=list(self.prefect_blocks),
            timeout_seconds=self.timeout_seconds,
        )


def has_channels(config: NotificationsConfig) -> bool:
    return config.any_channel()


def sns_session(config: NotificationsConfig) -> tuple[NotificationsConfig, Any]:
    """``config`` and the boto3 Session for its SNS topic: that of the AwsCredentials block ``sns.credentials``
    names (whose endpoint is used when the topic names none), or None for boto3's default chain."""
    sns = config.sns
    if sns is None or not sns.credentials:
        return config, None
    from prefect_aws import AwsCredentials

    try:
        creds = AwsCredentials.load(sns.credentials)
    except (ValueError, ObjectNotFound):
        raise ConfigError(
            f"notifications.sns: no AwsCredentials block named {sns.credentials!r}; create it (prefect block create "
            "aws-credentials) or drop credentials to use boto3's default chain"
        ) from None
    params = getattr(creds, "aws_client_parameters", None)
    endpoint = getattr(params, "endpoint_url", None)
    if not sns.endpoint_url and endpoint:
        config = config.model_copy(update={"sns": sns.model_copy(update={"endpoint_url": endpoint})})
    return config, creds.get_boto3_session()
