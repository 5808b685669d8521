"""Backup tasks."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core import operations
from core.engines import engine_for
from tasks.limits import backup_limit, exclusive
from tasks.policy import task_options
from tasks.run_stack import run_stack


@task(name="select-sources", cache_policy=NO_CACHE, **task_options("plan"))
def select_sources(stack: str, sources: list[str] | None) -> list[str]:
    """The source names to back up (all of the stack's by default)."""
    config = run_stack(stack).config  # resolved here once; the backup tasks of this run reuse it
    if not sources:
        return [s.name for s in config.sources]
    return [config.source(name).name for name in sources]  # ConfigError names an unknown one


# Never cached: a DR action must run every time it is asked for, and read the live state.
# Retried only when the source failed transiently (each attempt leaves its own FAILED record).
@task(
    name="backup-source",
    task_run_name="backup-{source}-{backup_type}",
    cache_policy=NO_CACHE,
    **task_options("backup"),
)
def backup_source(stack: str, source: str, backup_type: str = "full") -> dict:
    """Dump one source into the vault; returns the manifest summary (ids, sizes, position)."""
    opened = run_stack(stack)
    config = opened.config
    with exclusive(backup_limit(config.stack, source), f"backup of {source}"):
        vault = config.vault.open(create=True)
        manifest = operations.backup_source(
            vault,
            opened.keyring,
            engine_for(config.source(source)),
            backup_type,
            compression=config.vault.compression,
        )
    summary = manifest.summary() | {"vault": vault.describe()}
    get_run_logger().info(
        "%s: %s backup %s committed, %d bytes -> %d stored",
        source,
        backup_type,
        manifest.id,
        manifest.plain_bytes,
        manifest.stored_bytes,
    )
    return summary
