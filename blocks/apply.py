"""Turn a stack file into blocks (idempotent: saving again overwrites)."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from blocks.failover import save_failover
from blocks.keys import VaultKey
from blocks.notifications import NotificationChannels, has_channels
from blocks.sources import SOURCE_BLOCKS
from blocks.stack import DRStack, source_slug
from blocks.vault import vault_block
from core.errors import ConfigError
from core.stack import StackConfig


def apply_stack(config: StackConfig) -> list[str]:
    """Save every block of ``config``; returns the block slugs written."""
    written: list[str] = []
    refs: dict[str, str] = {}
    for src in config.sources:
        doc = f"{config.stack}-{src.name}"
        SOURCE_BLOCKS[src.kind].model_validate(src.model_dump()).save(doc, overwrite=True)
        refs[src.name] = source_slug(src.kind, doc)
        written.append(refs[src.name])
    vault = vault_block(config.vault)
    vault.save(config.stack, overwrite=True)
    replicas: dict[str, str] = {}
    for replica in getattr(config, "replicas", None) or []:
        doc = f"{config.stack}-replica-{replica.name}"
        block = vault_block(replica.vault)
        block.save(doc, overwrite=True)
        replicas[replica.name] = f"{block.get_block_type_slug()}/{doc}"
        written.append(replicas[replica.name])
    replication = config.replication.model_dump() if getattr(config, "replication", None) is not None else {}
    key = VaultKey.model_validate(config.encryption.model_dump())
    key.save(config.stack, overwrite=True)
    notifications = None
    if has_channels(config.notifications):  # its secrets live in this block, never in the stack's document
        notifications = NotificationChannels.from_config(config.notifications)
        notifications.save(config.stack, overwrite=True)
        written.append(f"notification-channels/{config.stack}")
    sections = {
        name: getattr(config, name).model_dump(mode="json")
        for name in ("objectives", "validation", "drill", "signing", "retention", "operations")
    }
    failover: dict = {}
    if getattr(config, "failover", None) is not None:  # region passwords go to their own source blocks
        failover, region_blocks = save_failover(config.stack, config.failover)
        written += region_blocks
    # Saved blocks nest as references: the stack's document links to them (and loads them in one request).
    DRStack(
        sources=refs,
        vault=vault,
        key=key,
        replicas=replicas,
        replication=replication,
        notifications=notifications,
        failover=failover,
        **sections,
    ).save(config.stack, overwrite=True)
    written += [
        f"{vault.get_block_type_slug()}/{config.stack}",
        f"vault-key/{config.stack}",
        f"dr-stack/{config.stack}",
    ]
    return written


def load_stack(name: str) -> StackConfig:
    """The stack saved under ``name`` (ConfigError with the remedy if absent)."""
    try:
        block: Block = DRStack.load(name)
    except ValidationError:
        raise ConfigError(
            f"stack {name!r} was registered by another version of genesis-dr; run 'genesis-dr apply <stack file>' again"
        ) from None
    except (ValueError, ObjectNotFound):
        raise ConfigError(f"no stack named {name!r} is registered; run 'genesis-dr apply <stack file>' first") from None
    return block.get_config()
