"""The stack file's ``operations:`` section: how the service runs the stack's deployments.

* ``max_concurrent_backups``: backups of the whole stack running at once (the
  source documents' figure, 3); each source still runs one backup at a time.
* ``maintenance_windows`` and ``peak_hours``: heavy jobs (``heavy_jobs``) due
  inside one are deferred to its end, as a Scheduled run with the reason;
  incrementals and the capture are never deferred (they hold the RPO).
* ``thresholds``: the host's load, memory, disk I/O and the vault's free space
  above or below which heavy jobs wait, with the reason.
* ``slow_factor``: an operation taking more than this many times its recent
  median is flagged (the source documents' performance-degradation alert).
* ``work_pool``: the Prefect work pool the stack's deployments go to (sources
  may name another with their own ``work_pool``, to run next to their data).
* ``cloudwatch``: also publish the metrics to CloudWatch (``put_metric_data``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.sources import short
from core.tls import EndpointUrl

Job = Literal[
    "full",
    "differential",
    "incremental",
    "capture",
    "replicate",
    "validate",
    "drill",
    "retention",
    "self_backup",
    "audit_verify",
]
# Never deferred, whatever the stack says: they hold the RPO (and the log capture must never stop).
NEVER_DEFERRED: frozenset[str] = frozenset({"incremental", "capture"})
DEFAULT_HEAVY: tuple[str, ...] = ("full", "differential", "validate", "drill", "retention")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
_POOL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class WindowConfig(BaseModel):
    """A weekly time window: ``days`` (default every day) from ``start`` to ``end`` (HH:MM) in ``timezone``.

    A window whose end is before its start runs over midnight (22:00-02:00 on a
    Monday ends Tuesday 02:00).
    """

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Shown in the deferral reason, e.g. 'month-end close' or 'business hours'.")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(DAYS), description="Days the window starts on (default every day)."
    )
    start: str = Field(description="Start time HH:MM.")
    end: str = Field(description="End time HH:MM (before start: the window runs over midnight).")
    timezone: str = Field("UTC", description="IANA time zone of start and end, e.g. Europe/Berlin.")

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: str) -> str:
        if not _HHMM.fullmatch(value.strip()):
            raise ValueError(f"{short(value)} is not a time of day HH:MM (00:00 to 24:00)")
        return value.strip()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{short(value)} is not an IANA time zone (e.g. 'UTC', 'Europe/Berlin')") from None
        return value

    @model_validator(mode="after")
    def _length(self) -> WindowConfig:
        if self.start == self.end:
            raise ValueError(f"window {self.name!r} starts and ends at {self.start}: give it a length")
        return self


class ThresholdsConfig(BaseModel):
    """Host and vault readings that make heavy jobs wait (null turns one off).

    Load and disk I/O are off by default: their right level depends on the host (a
    database server at load 4 may be healthy), so the operator sets them; memory and
    the vault's free space are on (a backup into a full vault fails anyway).
    """

    model_config = ConfigDict(extra="forbid")
    max_load_per_cpu: float | None = Field(
        None, gt=0, description="1-minute load average per CPU above which heavy jobs wait (default off; e.g. 2.0)."
    )
    min_memory_available_percent: float | None = Field(
        10.0, ge=0, le=100, description="Available memory below this percent of the total makes heavy jobs wait."
    )
    max_disk_busy_percent: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Disk I/O utilisation (busiest disk, over a second) above which they wait (default off; e.g. 90).",
    )
    min_vault_free_percent: float | None = Field(
        5.0,
        ge=0,
        le=100,
        description="Free space (percent) in a local vault's file system below which they wait (default 5).",
    )
    recheck_seconds: int = Field(
        300, ge=10, le=86400, description="A job deferred by a threshold is scheduled again this much later."
    )
    max_defer_seconds: int = Field(
        6 * 3600,
        ge=60,
        description="A job deferred by thresholds for this long runs anyway (with a warning): a backup never "
        "waits forever on a busy host.",
    )


class CloudWatchConfig(BaseModel):
    """Publish the metrics to CloudWatch as well (``put_metric_data``)."""

    model_config = ConfigDict(extra="forbid")
    namespace: str = Field("GenesisDR", description="CloudWatch namespace of the metrics.")
    region: str | None = Field(None, description="AWS region (default: the credentials' or AWS_REGION).")
    endpoint_url: EndpointUrl = Field(None, description="Another endpoint (a test server).")
    credentials: str | None = Field(None, description="Name of a prefect-aws AwsCredentials block (default chain).")


class OperationsConfig(BaseModel):
    """How the service runs the stack: concurrency, windows, thresholds, pools and metrics (see the module)."""

    model_config = ConfigDict(extra="forbid")
    max_concurrent_backups: int = Field(
        3, ge=1, le=1000, description="Backups of the stack running at once (default 3; each source runs one)."
    )
    maintenance_windows: list[WindowConfig] = Field(
        default_factory=list, description="Blackout windows: heavy jobs due inside one wait for its end."
    )
    peak_hours: list[WindowConfig] = Field(
        default_factory=list, description="Business peak hours: heavy jobs due inside them wait for their end."
    )
    heavy_jobs: list[Job] = Field(
        default_factory=lambda: list(DEFAULT_HEAVY),
        description="Jobs that windows and thresholds defer (default full, differential, validate, drill, "
        "retention); incremental and capture are never deferred.",
    )
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig, description="See ThresholdsConfig.")
    slow_factor: float = Field(
        2.0, gt=1, description="An operation over this many times its recent median duration is flagged (default 2)."
    )
    work_pool: str = Field("genesis-dr", description="Prefect work pool of the stack's deployments.")
    cloudwatch: CloudWatchConfig | None = Field(None, description="Also publish metrics to CloudWatch.")

    @field_validator("heavy_jobs")
    @classmethod
    def _heavy(cls, value: list[str]) -> list[str]:
        rpo = sorted(NEVER_DEFERRED.intersection(value))
        if rpo:
            raise ValueError(
                f"{', '.join(rpo)} cannot be heavy jobs: they hold the RPO and are never deferred; remove them"
            )
        return list(dict.fromkeys(value))

    @field_validator("work_pool")
    @classmethod
    def _pool(cls, value: str) -> str:
        return check_pool_name(value)


def check_pool_name(value: str) -> str:
    if not _POOL.fullmatch(value):
        raise ValueError(f"work pool name {short(value)} must be letters, digits, '.', '_' and '-' (1 to 63)")
    return value
