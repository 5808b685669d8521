"""The failover topology of a stack: regions with a priority, their databases, health URLs and DNS record.

Validation names the field on error (``FieldProblem``), as for the rest of the stack file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import ConfigError
from core.sources import FieldProblem, MySQLSourceConfig, PostgresSourceConfig, RedisSourceConfig, short
from core.tls import EndpointUrl

_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
# An AWS region as boto3 names it: us-west-2, eu-central-1, us-gov-west-1, ap-southeast-3.
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
# A Prefect block document name (lowercase letters, digits, dashes), as `prefect block create` accepts it.
_BLOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
# An OS user name: what useradd accepts (portable subset), so it can go to sudo/runuser as one argument.
_OS_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

# The blocks layer installs how a credentials block name becomes a session (core never imports Prefect):
# resolver(provider, block_name) with provider "aws" (-> boto3 Session) or "gcp" (-> google Credentials).
_credentials_resolver: Callable[[str, str], Any] | None = None


def set_credentials_resolver(resolver: Callable[[str, str], Any] | None) -> None:
    """Install how a ``credentials`` / ``aws_credentials`` block name becomes a session (blocks/failover.py does)."""
    global _credentials_resolver
    _credentials_resolver = resolver


def _resolve(provider: str, name: str | None, where: str) -> Any:
    if name is None:
        return None  # the provider's default credential chain
    if _credentials_resolver is None:
        raise ConfigError(
            f"{where}: credentials block {name!r} cannot be read outside genesis-dr's flows; import blocks first "
            "(import blocks.failover) or drop it to use the default chain"
        )
    return _credentials_resolver(provider, name)


def dns_session(dns: DnsConfig) -> Any:
    """What ``core.failover.dns`` takes as ``session=``: a boto3 Session (route53) or google Credentials
    (clouddns) from the ``credentials`` block, or None for the provider's default chain."""
    provider = "aws" if dns.provider == "route53" else "gcp"
    return _resolve(provider, dns.credentials, f"dns {dns.record_name}")


def rds_session(region: RegionConfig) -> Any:
    """The boto3 Session for the region's RDS calls (its ``aws_credentials`` block), or None for the default
    chain; the client's region is ``region.aws_region`` and its endpoint ``region.aws_endpoint_url``."""
    return _resolve("aws", region.aws_credentials, f"region {region.name}")


class PgRebuildConfig(BaseModel):
    """How failback rebuilds this region's old PostgreSQL primary as a standby (pg_rewind or pg_basebackup).

    Used on the machine that holds the data directory; nothing here is a secret.
    """

    model_config = ConfigDict(extra="forbid")

    data_directory: str = Field(description="Absolute path of the old primary's data directory (PGDATA).")
    bin_dir: str | None = Field(
        None, description="Absolute directory of pg_ctl, pg_rewind and pg_basebackup (default: found on PATH)."
    )
    run_as: str | None = Field(
        None, description="OS user the PostgreSQL tools run as, e.g. 'postgres' (default: the current user)."
    )
    options: str = Field("", description="postgres -o options when the rebuilt standby is started again.")

    @model_validator(mode="after")
    def _check(self) -> PgRebuildConfig:
        # Relative paths would depend on the worker's working directory: refuse them rather than guess.
        for field in ("data_directory", "bin_dir"):
            path = getattr(self, field)
            if path is None:
                continue
            if not path.strip() or not os.path.isabs(path) or "\x00" in path:
                raise FieldProblem((field,), f"{short(path)} is not an absolute path; give the full path")
        if os.path.normpath(self.data_directory) == "/":
            raise FieldProblem(("data_directory",), "'/' cannot be a data directory; give the PGDATA directory")
        if self.run_as is not None and not _OS_USER.fullmatch(self.run_as):
            raise FieldProblem(
                ("run_as",), f"{short(self.run_as)} is not an OS user name (lowercase letters, digits, '_', '-')"
            )
        if "\n" in self.options or "\x00" in self.options:
            raise FieldProblem(("options",), "options must be one line (postgres -o '...')")
        return self


class DnsConfig(BaseModel):
    """The DNS record that sends clients to a region: switched to ``value`` when that region becomes active."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["route53", "clouddns"] = Field(description="DNS service: route53 or clouddns.")
    zone: str = Field(
        "",
        description="route53: the hosted zone id (default env ROUTE53_HOSTED_ZONE_ID); clouddns: the managed "
        "zone name.",
    )
    project: str | None = Field(None, description="clouddns: the Google Cloud project of the managed zone.")
    record_name: str = Field(
        "", description="Fully qualified record name, e.g. 'app.example.com.' (default env DNS_RECORD_NAME)."
    )
    record_type: Literal["A", "AAAA", "CNAME"] = Field("CNAME", description="Record type: A, AAAA or CNAME.")
    value: str = Field(description="What the record points at when this region is active.")
    ttl: int = Field(60, ge=0, le=2**31 - 1, description="Record TTL in seconds.")
    endpoint_url: EndpointUrl = Field(None, description="Another API endpoint: a test server or emulator.")
    credentials: str | None = Field(
        None,
        description="route53: name of a prefect-aws AwsCredentials block; clouddns: of a prefect-gcp "
        "GcpCredentials block (default: the provider's default credential chain).",
    )

    @model_validator(mode="before")
    @classmethod
    def _env_defaults(cls, data: Any) -> Any:
        # The source documents configure the record through these variables; the stack file may override them.
        if isinstance(data, dict):
            data = dict(data)
            if not data.get("zone") and data.get("provider", "route53") == "route53":
                data["zone"] = os.environ.get("ROUTE53_HOSTED_ZONE_ID", "")
            if not data.get("record_name"):
                data["record_name"] = os.environ.get("DNS_RECORD_NAME", "")
        return data

    @model_validator(mode="after")
    def _complete(self) -> DnsConfig:
        if not self.zone.strip():
            remedy = "or set ROUTE53_HOSTED_ZONE_ID" if self.provider == "route53" else "(the managed zone name)"
            raise FieldProblem(("zone",), f"give the {self.provider} zone {remedy}")
        if not self.record_name.strip():
            raise FieldProblem(
                ("record_name",), "give the record name, e.g. 'app.example.com.', or set DNS_RECORD_NAME"
            )
        if not self.value.strip():
            raise FieldProblem(("value",), "give what the record points at when this region is active")
        if self.provider == "route53" and self.project:
            raise FieldProblem(("project",), "route53 has no project; remove it (it is for clouddns)")
        return self


class RegionConfig(BaseModel):
    """One region: its databases (primary or replica), managed databases, application health URLs, DNS record."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Region name, e.g. 'us-west-2' (lowercase letters, digits and dashes).")
    priority: int = Field(description="Failover preference: 1 is the first choice; the lower number wins.")
    postgres: PostgresSourceConfig | None = Field(
        None, description="The region's PostgreSQL primary or standby (a postgres source without 'name')."
    )
    mysql: MySQLSourceConfig | None = Field(
        None, description="The region's MariaDB/MySQL primary or replica (a mysql source without 'name')."
    )
    redis: RedisSourceConfig | None = Field(
        None, description="The region's Redis primary or replica (a redis source without 'name')."
    )
    rds_instance_id: str | None = Field(None, description="The region's RDS instance (or read replica) id.")
    aws_region: str | None = Field(
        None, description="AWS region of the RDS instance, e.g. 'us-east-1' (default: the region's name)."
    )
    aws_endpoint_url: EndpointUrl = Field(None, description="Another AWS API endpoint: a test server or emulator.")
    aws_credentials: str | None = Field(
        None,
        description="Name of a prefect-aws AwsCredentials block for RDS (default: the AWS default credential chain).",
    )
    postgres_rebuild: PgRebuildConfig | None = Field(
        None,
        description="How failback rebuilds this region's PostgreSQL as a standby of the new primary (data_directory, "
        "bin_dir, run_as, options).",
    )
    health_urls: list[str] = Field(default_factory=list, description="Application health endpoints (2xx = ok).")
    dns: DnsConfig | None = Field(None, description="The record switched to this region when it becomes active.")
    weights: dict[str, float] = Field(
        default_factory=dict, description="Check name -> weight, overriding the probe's weight in the score."
    )

    @model_validator(mode="before")
    @classmethod
    def _name_databases(cls, data: Any) -> Any:
        # Databases are named after their region so engines, logs and records can tell the copies apart.
        if isinstance(data, dict):
            data = dict(data)
            for kind in ("postgres", "mysql", "redis"):
                if isinstance(data.get(kind), dict):
                    db = dict(data[kind])
                    db.setdefault("name", f"{data.get('name')}-{kind}")
                    db.setdefault("kind", kind)
                    data[kind] = db
        return data

    @model_validator(mode="after")
    def _check(self) -> RegionConfig:
        if not _REGION.fullmatch(self.name):
            raise FieldProblem(
                ("name",), f"region name {short(self.name)} must be 1 to 48 lowercase letters, digits and dashes"
            )
        if self.priority < 1:
            raise FieldProblem(("priority",), f"priority must be 1 or more (1 = first choice), not {self.priority}")
        for check, weight in self.weights.items():
            if not weight >= 0:
                raise FieldProblem(("weights", check), f"weight must be 0 or more, not {short(weight)}")
        for i, url in enumerate(self.health_urls):
            if not url.startswith(("http://", "https://")):
                raise FieldProblem(("health_urls", i), f"{short(url)} is not an http(s) URL")
        self._check_aws()
        if self.postgres_rebuild is not None and self.postgres is None:
            raise FieldProblem(
                ("postgres_rebuild",), "the region has no 'postgres' to rebuild; add it or remove postgres_rebuild"
            )
        return self

    def _check_aws(self) -> None:
        if self.aws_region is None:
            # The region's name when it is an AWS region; RDS needs one, so a region named otherwise must say which.
            if _AWS_REGION.fullmatch(self.name):
                self.aws_region = self.name
            elif self.rds_instance_id is not None:
                raise FieldProblem(
                    ("aws_region",),
                    f"region {self.name!r} is not an AWS region name; give the RDS instance's aws_region",
                )
        elif not _AWS_REGION.fullmatch(self.aws_region):
            raise FieldProblem(("aws_region",), f"{short(self.aws_region)} is not an AWS region, e.g. 'us-east-1'")
        if self.aws_credentials is not None and not _BLOCK_NAME.fullmatch(self.aws_credentials):
            raise FieldProblem(
                ("aws_credentials",),
                f"{short(self.aws_credentials)} is not a block name (lowercase letters, digits, dashes); name the "
                "AwsCredentials block",
            )

    @property
    def has_data(self) -> bool:
        """Whether the region holds replicated data (so a replication lag must be known to fail over to it)."""
        return any((self.postgres, self.mysql, self.redis, self.rds_instance_id))


class FailoverConfig(BaseModel):
    """Failover policy and the regions to fail over between."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["manual", "automatic"] = Field(
        "manual",
        description="When the active region is down: manual pages and waits for approval; automatic fails over.",
    )
    max_data_loss_seconds: float = Field(
        5, ge=0, description="Largest replication lag (seconds) a target may have without --force."
    )
    failures_before_down: int = Field(
        3, ge=1, description="Consecutive unhealthy checks before a region counts as down."
    )
    check_interval_seconds: float = Field(60, gt=0, description="Seconds between two health checks of the monitor.")
    regions: list[RegionConfig] = Field(description="The regions, at least two.")
    active_region: str = Field(description="The region active initially (later the recorded state decides).")

    @model_validator(mode="after")
    def _regions(self) -> FailoverConfig:
        if len(self.regions) < 2:
            raise FieldProblem(("regions",), f"list at least 2 regions to fail over between, not {len(self.regions)}")
        names: dict[str, int] = {}
        priorities: dict[int, int] = {}
        for i, region in enumerate(self.regions):
            if region.name in names:
                raise FieldProblem(
                    ("regions", i, "name"),
                    f"region name {region.name!r} is used twice (also by regions[{names[region.name]}]); rename one",
                )
            names[region.name] = i
            if region.priority in priorities:
                raise FieldProblem(
                    ("regions", i, "priority"),
                    f"priority {region.priority} is also that of regions[{priorities[region.priority]}]; "
                    "give each region its own",
                )
            priorities[region.priority] = i
        if self.active_region not in names:
            raise FieldProblem(
                ("active_region",), f"{short(self.active_region)} is not a region (regions: {', '.join(names)})"
            )
        return self

    def region(self, name: str) -> RegionConfig:
        """The region called ``name``; an unknown name is a one-line ConfigError listing the known ones."""
        for region in self.regions:
            if region.name == name:
                return region
        known = ", ".join(r.name for r in self.regions)
        raise ConfigError(f"unknown region {short(name)}; choose one of the stack's regions: {known}")

    def by_priority(self) -> list[RegionConfig]:
        return sorted(self.regions, key=lambda r: r.priority)
