"""Restore tasks."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.apply import load_stack
from core import operations
from core.engines import engine_for
from core.plan import plan_restore, restore_target
from core.targets import unfinished_restores


@task(name="plan-restore", cache_policy=NO_CACHE)
def plan_restore_task(
    stack: str,
    source: str,
    backup_id: str | None,
    target_time: datetime | None,
    target: dict | None,
    target_source: str | None,
    force: bool,
) -> dict:
    """Choose the backup and describe what a restore would do (reads only)."""
    config = load_stack(stack)
    target_config = restore_target(config, source, target, target_source)
    engine = engine_for(target_config)
    engine.ping_target()
    vault = config.vault.open()
    manifests = vault.list_backups(source)
    if backup_id and all(m.id != backup_id for m in manifests):
        vault.manifest(backup_id)  # a damaged backup says why (exit 5), not merely "not found"
    interrupted = next((m.describe() for m in unfinished_restores() if m.target == engine.target_key()), None)
    plan = plan_restore(
        manifests,
        source,
        backup_id,
        target_time,
        engine.describe(),
        engine.has_data(),
        force,
        restores_beside=engine.restores_beside(),
        interrupted=interrupted,
    )
    return plan.to_dict()


@task(name="restore-backup", task_run_name="restore-{backup_id}", cache_policy=NO_CACHE)
def restore_backup_task(
    stack: str, source: str, backup_id: str, target: dict | None, target_source: str | None, force: bool
) -> dict:
    """Restore one backup into its target, verify it, return the report."""
    config = load_stack(stack)
    engine = engine_for(restore_target(config, source, target, target_source))
    report = operations.restore_backup(config.vault.open(), config.keyring(), backup_id, engine, force=force)
    return report.to_dict()
