"""The declarative stack: sources, vault and encryption, read from YAML.

``${VAR}`` and ``${VAR:-default}`` in the YAML are replaced from the
environment, so the source documents' variables (DB_HOST, DB_PASSWORD,
BACKUP_ROOT_DIR, BACKUP_ENCRYPTION_PASSWORD, ...) drive the stack file. Unknown
or misspelt fields are refused with the field's path and a suggestion.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.crypto.keys import Keyring
from core.crypto.kms import KmsKeyConfig
from core.crypto.secretref import DEFAULT_PASSPHRASE_FROM, check_ref
from core.crypto.signing import SigningConfig
from core.errors import ConfigError
from core.failover.topology import DnsConfig, FailoverConfig, PgRebuildConfig, RegionConfig
from core.notify.config import NotificationsConfig
from core.retention.config import RetentionConfig
from core.scheduling.config import OperationsConfig
from core.sources import (
    BucketSourceConfig,
    FieldProblem,
    FilesSourceConfig,
    MySQLSourceConfig,
    PostgresSourceConfig,
    RedisSourceConfig,
    SourceConfig,
    short,
)
from core.storage.config import VaultConfig
from core.validation.config import DrillConfig, ObjectivesConfig, ValidationConfig

SOURCE_MODELS = {
    "postgres": PostgresSourceConfig,
    "mysql": MySQLSourceConfig,
    "redis": RedisSourceConfig,
    "files": FilesSourceConfig,
    "bucket": BucketSourceConfig,
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")


# Literal secrets are refused: the stack is stored in Prefect, and the vault's key must not be.
LITERAL_SECRETS = {"passphrase": "passphrase_from", "x25519_private_key": "x25519_private_key_from"}


def check_replicas(vault: VaultConfig, replicas: list[ReplicaConfig]) -> None:
    """Replica names follow the source-name rule, are unique and not 'primary'; no replica is the primary
    vault itself or another replica's store (FieldProblem names the field)."""
    first: dict[str, int] = {}
    where: dict[str, str] = {vault.location(): "the stack's vault"}
    for i, replica in enumerate(replicas):
        if not _NAME.fullmatch(replica.name) or replica.name == PRIMARY:
            raise FieldProblem(
                ("replicas", i, "name"),
                f"replica name {short(replica.name)} must be 1 to 48 lowercase letters, digits and dashes, and not "
                f"'{PRIMARY}' (the stack's own vault)",
            )
        if replica.name in first:
            raise FieldProblem(
                ("replicas", i, "name"),
                f"replica name {replica.name!r} is used twice (also by replicas[{first[replica.name]}]); rename one",
            )
        first[replica.name] = i
        location = replica.vault.location()
        if location in where:
            raise FieldProblem(
                ("replicas", i, "vault"), f"{location} is already {where[location]}; a replica needs a store of its own"
            )
        where[location] = f"replica {replica.name!r}"


def vault_named(stack: str, vault: VaultConfig, replicas: list[ReplicaConfig], name: str | None) -> VaultConfig:
    if name in (None, PRIMARY):
        return vault
    for replica in replicas:
        if replica.name == name:
            return replica.vault
    known = ", ".join([PRIMARY, *(r.name for r in replicas)])
    raise ConfigError(f"stack '{stack}' has no vault {short(name)} (known: {known}); check --vault")


def literal_secret_error(literal: str) -> str:
    example = "env:BACKUP_ENCRYPTION_PASSWORD" if literal == "passphrase" else "file:/etc/genesis-dr/x25519.key"
    return (
        f"a literal {literal} would be stored in Prefect's database; name where it is read instead, e.g. "
        f"{LITERAL_SECRETS[literal]}: {example} (or env:NAME, file:/path with mode 0600, prompt)"
    )


class EncryptionConfig(BaseModel):
    """Which keys wrap each backup's data key, and WHERE the secret ones are read (never their values)."""

    model_config = ConfigDict(extra="forbid")
    passphrase_from: str | None = Field(
        None,
        description=(
            "Where the passphrase is read when it is used: env:NAME, file:/path (mode 0600 or 0400, owned by the "
            "user) or prompt. Default env:BACKUP_ENCRYPTION_PASSWORD, unless only public keys are given."
        ),
    )
    x25519_public_keys: list[str] = Field(
        default_factory=list, description="X25519 public keys (base64) that can open the backups written."
    )
    x25519_private_key_from: str | None = Field(
        None,
        description="Where restores read the X25519 private key: env:NAME, file:/path or prompt; unset on backup hosts.",
    )
    # KMS: ids only; the credentials are a block name or boto3's chain.
    kms_keys: list[KmsKeyConfig] = Field(
        default_factory=list,
        description="AWS KMS keys that wrap each backup's data key: {type: aws, key_id: ARN|alias/NAME|id, region, "
        "endpoint_url, credentials: AwsCredentials block name}. The first generates the data key.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for literal in LITERAL_SECRETS:
                if data.get(literal) is not None:
                    raise ValueError(f"encryption.{literal}: {literal_secret_error(literal)}")
        return data

    @field_validator("passphrase_from", "x25519_private_key_from")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        return None if value is None else check_ref(value)

    @model_validator(mode="after")
    def _default_passphrase(self) -> EncryptionConfig:
        # The source documents' BACKUP_ENCRYPTION_PASSWORD, unless the stack names public (or KMS) keys only.
        if self.passphrase_from is None and not self.x25519_public_keys and not self.kms_keys:
            self.passphrase_from = DEFAULT_PASSPHRASE_FROM
        return self

    def keyring(self, stack: str | None = None) -> Keyring:
        """Keys by reference: the passphrase and private key are read only when a backup or restore uses them."""
        return Keyring(
            public_keys=list(self.x25519_public_keys),
            passphrase_from=self.passphrase_from,
            private_key_from=self.x25519_private_key_from,
            stack=stack,
            kms_keys=list(self.kms_keys),
        )


# A cron field: numbers, names (jan, mon), ranges, lists and steps; five of them make an expression.
_CRON_FIELD = re.compile(r"^[0-9a-z*?/,\-LW#]+$", re.IGNORECASE)
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class SchedulesConfig(BaseModel):
    """When the deployments run this stack (cron, in UTC; ``off`` pauses one).

    The defaults are the source documents' cadence. ``genesis-dr apply`` writes them
    to the stack's deployments (and ``prefect deploy`` reads them back), so a stack
    changes its cadence without editing prefect.yaml.
    """

    model_config = ConfigDict(extra="forbid")
    full: str = Field("0 */6 * * *", description="Full backup of every source (default every 6 hours).")
    differential: str = Field(
        "0 * * * *", description="Differential backup of every source that takes one (default hourly)."
    )
    incremental: str = Field(
        "*/5 * * * *", description="Incremental backup of every source that takes one (default every 5 minutes)."
    )
    redis: str = Field("*/15 * * * *", description="Full backup of the Redis sources (default every 15 minutes).")
    capture: str = Field(
        "*/5 * * * *",
        description="How often the capture deployment is (re)started if it is not running (default every 5 minutes; "
        "a live capture is never doubled).",
    )
    replicate: str = Field(
        "*/5 * * * *",
        description="Replication of the vault to its replicas (default every 5 minutes, and after every completed "
        "backup by the deployment's trigger).",
    )

    validate_integrity: str = Field(
        "0 2 * * *", description="Integrity validation of the newest backups (default daily at 02:00)."
    )
    validate_restore: str = Field(
        "0 3 * * 0", description="Restore-level validation into sandboxes (default weekly, Sunday 03:00)."
    )
    drill_daily: str = Field("30 2 * * *", description="The daily drill (default 02:30).")
    drill_weekly: str = Field("0 4 * * 0", description="The weekly drill (default Sunday 04:00).")
    drill_monthly: str = Field("0 5 1 * *", description="The monthly whole-stack drill (default the 1st, 05:00).")
    monitor: str = Field(
        "* * * * *",
        description="The failover health monitor (default every minute; it does nothing for a stack without "
        "'failover:').",
    )
    retention: str = Field(
        "0 3 * * *",
        description="The retention sweep: expire, archive and securely delete by the policy (default daily 03:00).",
    )
    audit_verify: str = Field(
        "45 3 * * *", description="Verification of the audit trail (default daily 03:45, after the retention sweep)."
    )
    self_backup: str = Field(
        "15 4 * * *",
        description="Backup of genesis-dr itself (blocks, deployments, schedules, automations, variables, audit head) "
        "into the vault, for 'genesis-dr bootstrap --from-vault' (default daily 04:15).",
    )
    drill_full: str = Field("off", description="The full drill (default off: on demand).")
    # On-demand deployments: off by default; a schedule turns, e.g., a dry-run failover into a daily readiness check.
    restore: str = Field("off", description="The restore deployment (a dry run unless told otherwise; default off).")
    failover: str = Field("off", description="The failover deployment (a dry run unless told otherwise; default off).")
    failback: str = Field("off", description="The failback deployment (a dry run unless told otherwise; default off).")
    hold: str = Field("off", description="The hold deployment (default off: on demand).")
    erase: str = Field("off", description="The erase deployment (a dry run unless told otherwise; default off).")

    @field_validator(
        "full",
        "differential",
        "incremental",
        "redis",
        "capture",
        "replicate",
        "validate_integrity",
        "validate_restore",
        "drill_daily",
        "drill_weekly",
        "drill_monthly",
        "monitor",
        "retention",
        "audit_verify",
        "self_backup",
        "drill_full",
        "restore",
        "failover",
        "failback",
        "hold",
        "erase",
    )
    @classmethod
    def _cron(cls, value: str) -> str:
        text = " ".join(value.split())
        if text.lower() == "off" or text.lower() in _CRON_MACROS:
            return text.lower()
        fields = text.split(" ")
        if len(fields) != 5 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
            raise ValueError(
                f"{short(value)} is not a cron expression (five fields, UTC, e.g. '*/5 * * * *') nor 'off'"
            )
        return text

    def deployment_schedules(self) -> dict[str, dict[str, Any]]:
        """Deployment name -> its schedule as prefect.yaml writes one (``cron``, ``timezone``, ``active``)."""
        out = {}
        for name in type(self).model_fields:
            cron = getattr(self, name)
            default = type(self).model_fields[name].default
            off = cron == "off"
            # An inactive schedule still needs a valid expression: the default one (or a yearly one), paused.
            placeholder = default if default != "off" else "0 0 1 1 *"
            out[name] = {"cron": placeholder if off else cron, "timezone": "UTC", "active": not off}
        return out


PRIMARY = "primary"  # how --vault names the stack's own vault


class ReplicaConfig(BaseModel):
    """A copy of the vault on another store (another region or provider), kept by the replicate flow."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Replica name (1 to 48 lowercase letters, digits and dashes), e.g. us-east-1.")
    vault: VaultConfig = Field(description="Where the copy lives: {type: s3|gcs|local, ...} as the stack's vault.")


class ReplicationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_lag_seconds: float = Field(
        600,
        gt=0,
        description="A replicate run fails when a replica lacks a backup or log piece committed longer ago than "
        "this (default 600: the source documents' 10 minutes).",
    )


def cross_region_replicas(data: Any, where: str, env: dict[str, str] | None = None) -> Any:
    """The source documents' BACKUP_CROSS_REGIONS (a comma list of regions): one S3 replica of the S3 vault
    per region, named after it, bucket ``<vault bucket>-<region>`` (same prefix, storage class, endpoint and
    credentials), unless ``replicas:`` names that region already."""
    raw = (os.environ if env is None else env).get("BACKUP_CROSS_REGIONS", "")
    regions = [r.strip() for r in raw.split(",") if r.strip()]
    if not regions or not isinstance(data, dict):
        return data
    vault = data.get("vault")
    if not isinstance(vault, dict) or vault.get("type") != "s3" or not vault.get("bucket"):
        raise ConfigError(
            f"{where}: BACKUP_CROSS_REGIONS={short(raw)} asks for copies in other S3 regions, but the stack's vault "
            "is not an S3 vault with a bucket; unset it, or list the copies under 'replicas:'"
        )
    replicas = list(data.get("replicas") or [])
    named = {r.get("name") for r in replicas if isinstance(r, dict)}
    kept = ("type", "prefix", "storage_class", "endpoint_url", "ca_file", "credentials", "compression")
    for region in regions:
        if region not in named:
            copy = {k: vault[k] for k in kept if k in vault}
            replicas.append(
                {"name": region, "vault": copy | {"bucket": f"{vault['bucket']}-{region}", "region": region}}
            )
    return data | {"replicas": replicas}


class StackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stack: str = "default"
    vault: VaultConfig
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)  # default: env:BACKUP_ENCRYPTION_PASSWORD
    sources: list[SourceConfig] = Field(min_length=1)
    schedules: SchedulesConfig = Field(
        default_factory=SchedulesConfig, description="When the deployments run (cron, UTC); see SchedulesConfig."
    )
    replicas: list[ReplicaConfig] = Field(
        default_factory=list, description="Copies of the vault kept by the replicate flow; see ReplicaConfig."
    )
    replication: ReplicationConfig = Field(default_factory=ReplicationConfig, description="See ReplicationConfig.")
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig, description="RTO and RPO objectives.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="See ValidationConfig.")
    drill: DrillConfig = Field(default_factory=DrillConfig, description="See DrillConfig.")
    notifications: NotificationsConfig = Field(
        default_factory=NotificationsConfig, description="Where backup, validation and drill outcomes are sent."
    )
    failover: FailoverConfig | None = Field(
        None, description="Regions to fail over between and the policy (none: no failover; the monitor does nothing)."
    )
    signing: SigningConfig = Field(
        default_factory=SigningConfig,
        description="Ed25519 keys that sign audit entries and certificates, and the admin keys (see SigningConfig).",
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,
        description="How long backups are kept: per-source policies over the kind defaults, data classes and their "
        "compliance minimums/maximums, erasure rules (see RetentionConfig).",
    )
    operations: OperationsConfig = Field(
        default_factory=OperationsConfig,
        description="How the service runs the stack: concurrency, maintenance windows, peak hours, resource "
        "thresholds, work pools, CloudWatch (see OperationsConfig).",
    )

    @model_validator(mode="after")
    def _names(self) -> StackConfig:
        # FieldProblem names the field: a plain ValueError here would be reported against the whole stack.
        if not _NAME.fullmatch(self.stack):
            raise FieldProblem(
                ("stack",), f"stack name {short(self.stack)} must be 1 to 48 lowercase letters, digits and dashes"
            )
        first: dict[str, int] = {}
        for i, src in enumerate(self.sources):
            if not _NAME.fullmatch(src.name):
                raise FieldProblem(
                    ("sources", i, "name"),
                    f"source name {short(src.name)} must be 1 to 48 lowercase letters, digits and dashes",
                )
            if src.name in first:
                raise FieldProblem(
                    ("sources", i, "name"),
                    f"source name {src.name!r} is used twice (also by sources[{first[src.name]}]); rename one",
                )
            first[src.name] = i
        # Settings keyed by source name must name one of the stack's sources (a typo would silently do nothing).
        for loc, names in (
            (("objectives", "sources"), self.objectives.sources),
            (("validation", "smoke_queries"), self.validation.smoke_queries),
            (("drill", "targets"), self.drill.targets),
            (("retention", "sources"), self.retention.sources),
            (("retention", "erasure"), self.retention.erasure),
        ):
            for name in names:
                if name not in first:
                    close = difflib.get_close_matches(name, list(first), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f" (sources: {', '.join(first)})"
                    raise FieldProblem((*loc, name), f"{short(name)} is not a source of this stack{hint}")
        return self

    @model_validator(mode="after")
    def _data_classes(self) -> StackConfig:
        known = self.retention.classes()
        for i, src in enumerate(self.sources):
            for j, name in enumerate(src.data_classes):
                if name not in known:
                    close = difflib.get_close_matches(name, list(known), n=1)
                    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
                    raise FieldProblem(
                        ("sources", i, "data_classes", j),
                        f"data class {short(name)} is not defined ({hint}); define it under retention.data_classes",
                    )
            try:
                self.retention.check_classes(src.name, src.data_classes)
            except ConfigError as exc:
                raise FieldProblem(("sources", i, "data_classes"), str(exc)) from None
        return self

    def source(self, name: str) -> Any:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(f"stack '{self.stack}' has no source {name!r} (known: {known}); check --source")

    def keyring(self) -> Keyring:
        return self.encryption.keyring(self.stack)

    @model_validator(mode="after")
    def _replica_names(self) -> StackConfig:
        check_replicas(self.vault, self.replicas)
        return self

    def vault_named(self, name: str | None) -> VaultConfig:
        """The primary vault (``name`` None or 'primary') or a replica's (ConfigError listing the names)."""
        return vault_named(self.stack, self.vault, self.replicas, name)

    def warnings(self) -> list[str]:
        """What is valid but probably not meant, one line each with the remedy (``genesis-dr apply`` prints them).

        A stack that fails over but whose channels receive no failover or monitor event could not page anyone
        when its active region is lost (channels listing activities from before failover keep them as filters).
        """
        if self.failover is None:
            return []
        deaf = [a for a in ("monitor", "failover") if not self.notifications.channels_for(a)]
        if not deaf:
            return []
        return [
            f"stack '{self.stack}' fails over, but no notification channel receives {' or '.join(deaf)} events, so a "
            "lost region pages nobody; add a channel under notifications:, or 'failover, failback, monitor' to a "
            "channel's activities"
        ]


# What each restore mode covers (the source documents' four modes), by source kind.
RESTORE_MODES: dict[str, tuple[str, ...]] = {
    "full": ("postgres", "mysql", "redis", "files", "bucket"),
    "database_only": ("postgres", "mysql"),
    "redis_only": ("redis",),
    "artifacts_only": ("files", "bucket"),
}


def restore_sources(config: Any, mode: str | None, source: str | None) -> list[str]:
    """The sources a point-in-time restore covers: ``source`` alone, or every source of ``mode``'s kinds.

    ``config``: anything with ``sources`` and ``source(name)`` (the stack or its local description).
    A whole-stack restore is never implied: without ``source``, ``mode`` must be given.
    """
    if mode is not None and mode not in RESTORE_MODES:
        raise ConfigError(f"--mode {short(mode)}: not a restore mode; use one of {', '.join(RESTORE_MODES)}")
    if source is not None:
        chosen = config.source(source)  # ConfigError names an unknown one
        if mode is not None and chosen.kind not in RESTORE_MODES[mode]:
            raise ConfigError(
                f"--source {source} is a {chosen.kind} source, which --mode {mode} does not restore "
                f"({mode} covers {', '.join(RESTORE_MODES[mode])}); drop --mode or pick another source"
            )
        return [chosen.name]
    if mode is None:
        raise ConfigError(
            "restore: name the source (--source NAME) or the sources' mode (--mode full|database_only|"
            "redis_only|artifacts_only)"
        )
    names = [s.name for s in config.sources if s.kind in RESTORE_MODES[mode]]
    if not names:
        kinds = ", ".join(sorted({s.kind for s in config.sources}))
        raise ConfigError(
            f"--mode {mode}: stack '{config.stack}' has no {'/'.join(RESTORE_MODES[mode])} source (its kinds: "
            f"{kinds}); pick another mode"
        )
    return names


def split_targets(overrides: dict[str, Any] | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """``--target`` settings per source: ``KEY=VALUE`` applies to the one source restored, ``SOURCE.KEY=VALUE``
    to that source of a multi-source restore (e.g. ``app-db.port=5433``)."""
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in (overrides or {}).items():
        name, dot, field = key.rpartition(".")
        if not dot:
            if len(names) != 1:
                raise ConfigError(
                    f"--target {key}=...: this restore covers {len(names)} sources ({', '.join(names)}); say which "
                    f"one, e.g. --target {names[0]}.{key}=VALUE"
                )
            out[names[0]][key] = value
        elif name not in out:
            raise ConfigError(
                f"--target {key}=...: {short(name)} is not a source of this restore ({', '.join(names)}); check the "
                "name before the dot"
            )
        else:
            out[name][field] = value
    return out


def check_distinct_targets(plans: dict[str, dict]) -> None:
    """Refuse a restore of several sources into one target (each plan's ``target``): the second would
    overwrite the first, or be refused after it ran."""
    seen: dict[str, str] = {}
    for name, plan in plans.items():
        if plan["target"] in seen:
            raise ConfigError(
                f"sources {seen[plan['target']]} and {name} would both be restored into {plan['target']}; give each "
                f"its own target, e.g. --target {name}.KEY=VALUE"
            )
        seen[plan["target"]] = name


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, where: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: environment variable {name} is not set; export it or give a default as ${{{name}:-value}}"
        )

    return _VAR.sub(sub, text)


def _printable(value: Any) -> str:
    """A key or name as typed when it is short and plain, else its cut repr (errors stay one line)."""
    text = str(value)
    return text if len(text) <= 60 and text.isprintable() and "'" not in text else short(value)


# (position in the error's path, field) -> the model below it, for the "did you mean" of an unknown field.
_FAILOVER_MODELS: dict[tuple[int, Any], type[BaseModel]] = {
    (0, "failover"): FailoverConfig,
    (1, "regions"): RegionConfig,
    **{(3, kind): SOURCE_MODELS[kind] for kind in ("postgres", "mysql", "redis")},
    (3, "dns"): DnsConfig,
    (3, "postgres_rebuild"): PgRebuildConfig,
}


def _field_error(exc: ValidationError, data: dict, where: str) -> ConfigError:
    # A misspelt field shows as "unknown" and "missing"; the unknown one carries the better hint.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = list(err["loc"])
    problem = (err.get("ctx") or {}).get("error")
    if isinstance(problem, FieldProblem):
        loc += problem.loc
    # Discriminated unions put the kind tag in the path; drop it and name the source instead.
    label, parent = [], data
    model: type[BaseModel] | None = StackConfig
    for i, part in enumerate(loc):
        if isinstance(part, int):
            label[-1] = f"{label[-1]}[{part}]"
            item = parent[part] if isinstance(parent, list) and part < len(parent) else {}
            if isinstance(item, dict) and "name" in item:
                label[-1] += f" ({_printable(item['name'])})"
            parent = item
            if loc[0] == "sources" and i == 1:
                kind = item.get("kind") if isinstance(item, dict) else None
                model = SOURCE_MODELS.get(kind) if isinstance(kind, str) else None
            continue
        if i > 0 and loc[0] == "sources" and part in SOURCE_MODELS and i == 2:
            continue
        label.append(_printable(part))
        if isinstance(parent, dict):
            parent = parent.get(part, {})
        if loc[0] in ("vault", "encryption", "schedules", "replication") and i == 0:
            model = {
                "vault": VaultConfig,
                "encryption": EncryptionConfig,
                "schedules": SchedulesConfig,
                "replication": ReplicationConfig,
            }[part]
        if loc[0] == "failover":  # failover.regions[i].postgres.<field>: the model of the innermost part
            model = _FAILOVER_MODELS.get((i, part), model)
        if loc[0] == "replicas" and i == 2:  # replicas[i].<field>
            model = VaultConfig if part == "vault" else ReplicaConfig
    field = ".".join(label) or "stack"
    if err["type"] == "extra_forbidden":
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1])[:100], known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(known)}"
        return ConfigError(f"{where}: unknown field '{field}'; {hint}")
    if err["type"] == "missing":
        return ConfigError(f"{where}: missing required field '{field}'; add it to the stack file")
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return ConfigError(f"{where}: '{field}' needs 'kind' as one of {', '.join(SOURCE_MODELS)}")
    msg = err["msg"].removeprefix("Value error, ")
    return ConfigError(f"{where}: field '{field}': {msg}")


def parse_stack(data: Any, where: str) -> StackConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a stack file is a mapping with vault, encryption, sources (and schedules)")
    encryption = data.get("encryption")
    for literal in LITERAL_SECRETS:
        if isinstance(encryption, dict) and encryption.get(literal) is not None:
            raise ConfigError(f"{where}: field 'encryption.{literal}': {literal_secret_error(literal)}")
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc, data, where) from None


def _interpolate_values(node: Any, where: str, env: dict[str, str] | None) -> Any:
    """Replace ${VAR} in string values only (never in comments or keys)."""
    if isinstance(node, dict):
        return {k: _interpolate_values(v, f"{where}.{_printable(k)}", env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_values(v, f"{where}[{i}]", env) for i, v in enumerate(node)]
    if isinstance(node, str):
        value = interpolate(node, where, env)
        if "\x00" in value:
            raise ConfigError(f"{where}: contains a NUL character; remove it")
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ConfigError(
                f"{where}: contains an unpaired surrogate (a \\uD800-\\uDFFF escape); remove it"
            ) from None
        return value
    return node


MAX_STACK_FILE_BYTES = 1 << 20  # a stack file is a few KB; a bigger file is the wrong file
_MAX_DEPTH = 32  # a stack file needs four levels; PyYAML composes recursively


class _Refused(yaml.YAMLError):
    """YAML that a stack file never needs, refused while the document is composed."""

    def __init__(self, problem: str, mark: Any, remedy: str) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark, self.remedy = problem, mark, remedy


class _StackLoader(yaml.SafeLoader):
    """SafeLoader without anchors, aliases or duplicate keys, whose work stays linear in the file's size.

    Aliases let a few hundred bytes stand for gigabytes once the tree is walked
    (interpolation, validation): the "billion laughs". A stack file has no use
    for them, so the first anchor or alias is refused before anything expands.
    Duplicate keys are refused too (YAML says they are an error; PyYAML keeps
    the last one silently). Timestamps stay strings, and numbers that cannot be
    read are syntax errors, not ValueErrors.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _Refused(
                f"YAML anchors and aliases ({sign}{_printable(event.anchor)}) are not allowed in a stack file",
                event.start_mark,
                "write the value out in full",
            )
        if len(self._path) >= _MAX_DEPTH:
            raise _Refused(f"nested deeper than {_MAX_DEPTH} levels", event.start_mark, "a stack file needs a few")
        if isinstance(index, yaml.ScalarNode):
            self._path.append(f".{_printable(index.value)}")
        else:
            self._path.append(f"[{index}]" if isinstance(index, int) else ".?" if index is not None else "")
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 - PyYAML's name
        # The scanner looks up to 1024 characters ahead for each open bracket: refuse before that turns quadratic.
        if self.flow_level >= _MAX_DEPTH:
            raise _Refused(f"nested deeper than {_MAX_DEPTH} levels", self.get_mark(), "a stack file needs a few")
        super().fetch_flow_collection_start(TokenClass)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], Any] = {}
        for key, _value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if (key.tag, key.value) in first:
                field = "".join([*self._path, f".{_printable(key.value)}"]).lstrip(".")
                line = first[(key.tag, key.value)].start_mark.line + 1
                raise _Refused(f"duplicate key '{field}' (first at line {line})", key.start_mark, "keep only one")
            first[(key.tag, key.value)] = key
        return node

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the number {short(node.value, 40)}", node.start_mark
            ) from None


_StackLoader.add_constructor("tag:yaml.org,2002:int", _StackLoader.construct_yaml_int)
_StackLoader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_scalar)


def _one_line(text: Any, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_stack_yaml(path: Path) -> Any:
    """The YAML document of a stack file, or a one-line ConfigError: too big, not UTF-8, not plain YAML."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STACK_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"stack file {path}: {exc.strerror or exc}; check the path") from None
    if len(raw) > MAX_STACK_FILE_BYTES:
        raise ConfigError(
            f"stack file {path}: larger than {MAX_STACK_FILE_BYTES >> 20} MiB; a stack file is a few KB of YAML, "
            "check the path"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"stack file {path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); a stack file is YAML "
            "text, save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_StackLoader)  # a SafeLoader subclass
    except _Refused as exc:
        line = exc.problem_mark.line + 1
        raise ConfigError(f"stack file {path}: line {line}: {exc.problem}; {exc.remedy}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            f"stack file {path}: line {line}: control character U+{exc.character:04X} is not allowed in YAML; "
            "a stack file is text"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        why = f" ({_one_line(problem)})" if problem else ""
        raise ConfigError(f"stack file {path}: not valid YAML{at}{why}; fix the syntax") from None
    except (ValueError, OverflowError, RecursionError) as exc:  # a constructor's surprise: still one line, exit 2
        raise ConfigError(f"stack file {path}: cannot be read as YAML ({_one_line(exc)}); fix the file") from None


def load_stack_file(path: str | Path, env: dict[str, str] | None = None) -> StackConfig:
    path = Path(path)
    data = read_stack_yaml(path)
    if isinstance(data, dict):
        data = {k: _interpolate_values(v, f"{path}: {_printable(k)}", env) for k, v in data.items()}
    # Relative vault/files paths (and file: secret references) are relative to the stack file, not the cwd.
    base = path.resolve().parent
    if isinstance(data, dict) and isinstance(data.get("encryption"), dict):
        for ref in LITERAL_SECRETS.values():
            value = data["encryption"].get(ref)
            if isinstance(value, str) and value.startswith("file:") and not os.path.isabs(value[5:]):
                data["encryption"][ref] = f"file:{(base / value[5:]).resolve()}"
    data = cross_region_replicas(data, str(path), env)
    stack = parse_stack(data, str(path))
    if stack.vault.type == "local" and not os.path.isabs(stack.vault.path):
        stack.vault.path = str((base / stack.vault.path).resolve())
    for replica in stack.replicas:  # relative to the stack file too
        if replica.vault.type == "local" and not os.path.isabs(replica.vault.path):
            replica.vault.path = str((base / replica.vault.path).resolve())
    for src in stack.sources:
        if isinstance(src, FilesSourceConfig) and not os.path.isabs(src.root):
            src.root = str((base / src.root).resolve())
    return stack
