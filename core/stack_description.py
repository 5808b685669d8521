"""The local, secret-free description of an applied stack.

``genesis-dr apply`` saves the stack's blocks (the source of truth for flows)
and also this description, ``<state dir>/stacks/<name>.json`` (mode 0600 in a
0700 directory; see ``core.targets.state_dir``). Read-only commands (``list``,
``restore --dry-run``, ``stacks``) answer from it in well under a second,
without Prefect: no import, no API, no server.

It holds the stack's configuration with every secret value removed; which
fields *had* a secret is recorded, so a command that needs one (a dry run that
must log in to its target) knows to ask the blocks for it. It is per host and
reflects the last ``apply`` run on this host.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from core.crypto.signing import SigningConfig
from core.errors import ConfigError
from core.failover.topology import FailoverConfig
from core.repository.manifest import now_iso
from core.scheduling.config import OperationsConfig
from core.stack import (
    SOURCE_MODELS,
    ReplicaConfig,
    ReplicationConfig,
    SchedulesConfig,
    StackConfig,
    VaultConfig,
    vault_named,
)
from core.targets import state_dir
from core.validation.config import DrillConfig, ObjectivesConfig

FORMAT = 1


def stacks_dir() -> Path:
    return Path(state_dir()) / "stacks"


def _strip_secrets(node: Any, path: str, found: list[str]) -> Any:
    """``node`` with every SecretStr replaced by None; the paths of the non-empty ones go to ``found``."""
    if isinstance(node, SecretStr):
        if node.get_secret_value():
            found.append(path)
        return None
    if isinstance(node, dict):
        return {k: _strip_secrets(v, f"{path}.{k}" if path else str(k), found) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_strip_secrets(v, f"{path}[{i}]", found) for i, v in enumerate(node)]
    return node


@dataclass
class StackDescription:
    """What read-only commands know of a stack without Prefect: no secret values."""

    stack: str
    vault: VaultConfig
    sources: list[Any]
    secret_fields: dict[str, list[str]]  # source name -> its fields that hold a secret (values not kept)
    encryption: dict[str, Any] = field(default_factory=dict)  # the public part (keys, where secrets live)
    applied_at: str = ""
    applied_to: str = ""  # the Prefect API the blocks were saved to
    path: str = ""
    # the vault's replicas, so 'list --vault' and dry runs read one without Prefect
    replicas: list[ReplicaConfig] = field(default_factory=list)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    # what 'drill status' compares its trend with (no secrets: drill targets hold none, see DrillConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    drill: DrillConfig = field(default_factory=DrillConfig)
    # the failover topology (policy, active region, regions by priority, what each holds, DNS record), its
    # database passwords removed: 'failover status' names regions without Prefect; probes ask the blocks
    failover: FailoverConfig | None = None
    failover_secret_fields: list[str] = field(default_factory=list)  # e.g. regions[0].postgres.password
    # for 'status' and 'metrics' without Prefect: intervals, CloudWatch, the admin keys that release holds
    # (None in descriptions written before these existed: those commands then read less, or the blocks)
    schedules: SchedulesConfig | None = None
    operations: OperationsConfig | None = None
    signing: SigningConfig | None = None

    def vault_named(self, name: str | None) -> VaultConfig:
        """The primary vault (``name`` None or 'primary') or a replica's (ConfigError listing the names)."""
        return vault_named(self.stack, self.vault, self.replicas, name)

    def source(self, name: str) -> Any:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(f"stack '{self.stack}' has no source {name!r} (known: {known}); check --source")

    def needs_secret(self, name: str) -> bool:
        """Whether connecting to source ``name`` needs a secret this description does not hold."""
        return bool(self.secret_fields.get(name))


def failover_lines(failover: FailoverConfig) -> list[str]:
    """The failover part in words, one line per region by priority (what it holds, its DNS record); no secret.

    The active region shown is the stack file's initial one: the recorded state (the vault) may have moved it.
    """
    lines = [
        f"failover: policy {failover.policy}, initial active region {failover.active_region}, max data loss "
        f"{failover.max_data_loss_seconds:g} s, down after {failover.failures_before_down} failed checks every "
        f"{failover.check_interval_seconds:g} s"
    ]
    for region in failover.by_priority():
        held = [
            f"{kind} {db.host}:{db.port}" for kind in ("postgres", "mysql", "redis") if (db := getattr(region, kind))
        ]
        if region.rds_instance_id:
            held.append(f"rds {region.rds_instance_id} ({region.aws_region})")
        if region.health_urls:
            held.append(f"{len(region.health_urls)} health URL(s)")
        dns = region.dns
        record = f"; dns {dns.record_name} {dns.record_type} -> {dns.value} ({dns.provider} {dns.zone})" if dns else ""
        lines.append(f"  {region.priority}. {region.name}: {', '.join(held) or 'nothing probed'}{record}")
    return lines


def describe(config: StackConfig, applied_to: str) -> dict:
    """The secret-free JSON document of ``config``."""
    secrets: dict[str, list[str]] = {}
    sources = []
    for src in config.sources:
        found: list[str] = []
        sources.append(_strip_secrets(src.model_dump(), "", found))
        if found:
            secrets[src.name] = found
    encryption_secrets: list[str] = []
    encryption = _strip_secrets(config.encryption.model_dump(), "", encryption_secrets)
    failover_secrets: list[str] = []
    failover = config.failover and _strip_secrets(config.failover.model_dump(), "", failover_secrets)
    return {
        "format": FORMAT,
        "stack": config.stack,
        "vault": config.vault.model_dump(),
        "replicas": [r.model_dump() for r in config.replicas],
        "replication": config.replication.model_dump(),
        "objectives": config.objectives.model_dump(mode="json"),
        "drill": config.drill.model_dump(mode="json"),
        "encryption": {k: v for k, v in encryption.items() if v is not None and k not in encryption_secrets},
        "encryption_secrets": encryption_secrets,
        "sources": sources,
        "secret_fields": secrets,
        "failover": failover,
        "failover_secret_fields": failover_secrets,
        "schedules": config.schedules.model_dump(),
        "operations": config.operations.model_dump(mode="json"),
        "signing": config.signing.model_dump(mode="json"),  # references and public keys only
        "applied_at": now_iso(),
        "applied_to": applied_to,
    }


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def save(config: StackConfig, applied_to: str) -> Path:
    """Write the description of ``config`` (atomically: temp file, fsync, rename); returns its path."""
    directory = stacks_dir()
    _private_dir(directory.parent)
    _private_dir(directory)
    data = json.dumps(describe(config, applied_to), indent=2, sort_keys=True).encode()
    target = directory / f"{config.stack}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{config.stack}.", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _parse(data: dict, path: Path) -> StackDescription:
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}")
    sources = []
    for src in data["sources"]:
        sources.append(SOURCE_MODELS[src["kind"]].model_validate(src))
    return StackDescription(
        stack=data["stack"],
        vault=VaultConfig.model_validate(data["vault"]),
        sources=sources,
        secret_fields=dict(data.get("secret_fields") or {}),
        encryption=dict(data.get("encryption") or {}),
        applied_at=data.get("applied_at", ""),
        applied_to=data.get("applied_to", ""),
        path=str(path),
        replicas=[ReplicaConfig.model_validate(r) for r in data.get("replicas") or []],
        replication=ReplicationConfig.model_validate(data.get("replication") or {}),
        objectives=ObjectivesConfig.model_validate(data.get("objectives") or {}),
        drill=DrillConfig.model_validate(data.get("drill") or {}),
        failover=FailoverConfig.model_validate(data["failover"]) if data.get("failover") else None,
        failover_secret_fields=list(data.get("failover_secret_fields") or []),
        schedules=SchedulesConfig.model_validate(data["schedules"]) if "schedules" in data else None,
        operations=OperationsConfig.model_validate(data["operations"]) if "operations" in data else None,
        signing=SigningConfig.model_validate(data["signing"]) if "signing" in data else None,
    )


def load(name: str) -> StackDescription | None:
    """The description of stack ``name``, or None if there is none (or it cannot be read: ask the blocks)."""
    if "/" in name or name.startswith("."):
        return None
    path = stacks_dir() / f"{name}.json"
    try:
        return _parse(json.loads(path.read_bytes()), path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ValidationError):
        return None  # written by another version, or damaged: the blocks are the source of truth


def all_descriptions() -> tuple[list[StackDescription], list[str]]:
    """Every description on this host, and the files that could not be read."""
    found, unreadable = [], []
    directory = stacks_dir()
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            found.append(_parse(json.loads(path.read_bytes()), path))
        except (OSError, ValueError, KeyError, TypeError, ValidationError):
            unreadable.append(str(path))
    return found, unreadable
