"""The stack block composes the others; flows take only its name."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from pydantic import Field

from blocks.failover import load_failover
from blocks.keys import VaultKey
from blocks.notifications import NotificationChannels
from blocks.sources import SOURCE_BLOCKS
from blocks.vault import GcsVault, LocalVault, S3Vault, bind_credentials
from core.errors import ConfigError
from core.stack import EncryptionConfig, StackConfig


def source_slug(kind: str, document: str) -> str:
    """How the stack names a source block: Prefect's own '<block type slug>/<document name>'."""
    return f"{SOURCE_BLOCKS[kind].get_block_type_slug()}/{document}"


class DRStack(Block):
    """A disaster-recovery stack: its vault and keys (linked blocks) and its source blocks.

    Written by `genesis-dr apply FILE`; flows load it by name (default `default`).
    The vault and the keys are nested blocks: the UI links them, and they load with
    the stack in one request. Sources are named by their block slugs, which
    `prefect block inspect` takes as they are: Prefect links nested blocks only in
    top-level fields, and a list of nested blocks would be stored inside this
    document with its passwords, which the API shows only obfuscated for
    top-level paths, so each source stays its own block with its secrets.

    Example:
        ```python
        from blocks import DRStack
        config = DRStack.load("BLOCK_NAME").get_config()
        ```
    """

    _block_type_name = "DR Stack"

    vault: LocalVault | S3Vault | GcsVault = Field(
        description="The vault the stack's backups go to (a Local, S3 or GCS Vault block)."
    )
    key: VaultKey = Field(description="The keys that wrap each backup's data key (a Vault Key block).")
    sources: dict[str, str] = Field(
        description="Source name -> its block, as '<block type slug>/<block name>' (e.g. 'postgres-source/default-app-db')."
    )
    replicas: dict[str, str] = Field(
        default_factory=dict,
        description="Replica name -> its vault block, as '<block type slug>/<block name>' (e.g. "
        "'s3-vault/default-replica-us-east-1'); the replicate flow copies the vault to each.",
    )
    replication: dict = Field(
        default_factory=dict, description="Replication settings (max_lag_seconds: the lag that fails a run)."
    )
    objectives: dict = Field(default_factory=dict, description="RTO and RPO objectives (the stack's objectives).")
    validation: dict = Field(
        default_factory=dict, description="Validation settings (reverify_after_hours, smoke_queries per source)."
    )
    drill: dict = Field(default_factory=dict, description="Drill settings (targets per source, parallel, trend).")
    signing: dict = Field(
        default_factory=dict,
        description="Signing keys: where this host's and the admin's Ed25519 keys are read (references, never keys), "
        "the admin and trusted public keys.",
    )
    retention: dict = Field(
        default_factory=dict,
        description="Retention policies per source, data classes and erasure rules (the stack's retention section).",
    )
    operations: dict = Field(
        default_factory=dict,
        description="How the service runs the stack: concurrency, maintenance windows, peak hours, thresholds, "
        "work pools, CloudWatch (the stack's operations section).",
    )
    notifications: NotificationChannels | None = Field(
        None, description="Where outcomes are sent (a Notification Channels block, which holds their secrets)."
    )
    failover: dict = Field(
        default_factory=dict,
        description="Failover settings and regions (empty: no failover); each region's postgres, mysql and redis "
        "name their source block, as '<block type slug>/<stack>-region-<region>-<kind>'.",
    )

    def get_config(self) -> StackConfig:
        """Load every source block and assemble the core stack config."""
        by_slug = {cls.get_block_type_slug(): cls for cls in SOURCE_BLOCKS.values()}
        sources = []
        for name, ref in self.sources.items():
            slug, _, document = ref.partition("/")
            if slug not in by_slug or not document:
                raise ConfigError(
                    f"stack block: source {name!r} refers to {ref!r}, not a source block; re-run 'genesis-dr apply'"
                )
            try:
                sources.append(by_slug[slug].load(document).to_config())
            except (ValueError, ObjectNotFound):
                raise ConfigError(
                    f"stack block: source {name!r}: block {ref!r} is missing or invalid; re-run 'genesis-dr apply'"
                ) from None
        replicas = []
        for name, ref in self.replicas.items():
            slug, _, document = ref.partition("/")
            vault_cls = {c.get_block_type_slug(): c for c in (LocalVault, S3Vault, GcsVault)}.get(slug)
            try:
                if vault_cls is None or not document:
                    raise ValueError(ref)
                replicas.append({"name": name, "vault": vault_cls.load(document).to_config()})
            except (ValueError, ObjectNotFound):
                raise ConfigError(
                    f"stack block: replica {name!r}: vault block {ref!r} is missing or invalid; re-run 'genesis-dr apply'"
                ) from None
        extra = {"replicas": replicas, "replication": self.replication} if replicas or self.replication else {}
        # Stacks applied before these sections existed have none: the defaults apply.
        sections = {
            "objectives": self.objectives,
            "validation": self.validation,
            "drill": self.drill,
            "signing": self.signing,
            "retention": self.retention,
            "operations": self.operations,
        }
        extra |= {name: value for name, value in sections.items() if value}
        if self.notifications is not None:
            extra["notifications"] = self.notifications.to_config()
        if self.failover:  # stacks applied before failover existed have none
            extra["failover"] = load_failover(self.failover)
        config = StackConfig(
            stack=self._block_document_name or "default",
            vault=self.vault.to_config(),
            encryption={k: getattr(self.key, k) for k in EncryptionConfig.model_fields},  # references, never secrets
            sources=sources,
            **extra,
        )
        return bind_stack_credentials(config)


def bind_stack_credentials(config: StackConfig) -> StackConfig:
    """Resolve the credentials blocks the stack's vault and replicas name (core never loads blocks)."""
    config.vault = bind_credentials(config.vault)
    for replica in getattr(config, "replicas", None) or []:
        replica.vault = bind_credentials(replica.vault)
    return config
