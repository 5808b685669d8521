"""Restore tasks."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from core import operations
from core.engines import engine_for
from core.plan import restore_target
from core.planning import plan_chain_from, plan_restore_from
from core.replication import open_vault
from core.stack import restore_sources
from core.times import read_operator_time
from tasks.limits import exclusive, restore_limit
from tasks.policy import task_options
from tasks.progress import Progress
from tasks.run_stack import run_stack
from tasks.runlog import progress


@task(name="plan-restore", cache_policy=NO_CACHE, **task_options("plan"))
def plan_restore_task(
    stack: str,
    source: str,
    backup_id: str | None,
    target_time: datetime | None,
    target: dict | None,
    target_source: str | None,
    force: bool,
    vault: str | None = None,
) -> dict:
    """Choose the backup and describe what a restore would do (reads only; ``--dry-run`` runs the same planner).
    ``vault``: the primary (None) or a replica of the stack, by name."""
    config = run_stack(stack).config  # resolved here once; the restore task of this run reuses it
    return plan_restore_from(
        config, config.vault_named(vault), source, backup_id, target_time, target, target_source, force
    ).to_dict()


# Retried only for a transient failure, which core raises only before the target was changed
# (errors after a destructive step carry what happened to the target and are final).
@task(
    name="restore-backup",
    task_run_name="restore-{backup_id}",
    cache_policy=NO_CACHE,
    **task_options("restore"),
)
def restore_backup_task(
    stack: str,
    source: str,
    backup_id: str,
    target: dict | None,
    target_source: str | None,
    force: bool,
    vault: str | None = None,
) -> dict:
    """Restore one backup into its target, verify it, return the report; each step goes to the run log."""
    opened = run_stack(stack)
    config = opened.config
    engine = engine_for(restore_target(config, source, target, target_source))
    with (
        exclusive(restore_limit(engine.target_key()), f"{source}: restore of {backup_id} into {engine.describe()}"),
        Progress(source, "restore", "restore of", subject=backup_id) as shown,
    ):
        report = operations.restore_backup(
            open_vault(config, vault),
            opened.keyring,
            backup_id,
            engine,
            force=force,
            progress=progress(source, backup_id),
            erasure_rules=config.retention.erasure,  # the stack's current rules win over those recorded
            on_bytes=shown.on_bytes,
        )
    return report.to_dict()


@task(name="select-restore-sources", cache_policy=NO_CACHE, **task_options("plan"))
def select_restore_sources(stack: str, mode: str | None, source: str | None) -> list[dict]:
    """The sources a point-in-time restore covers (``source``, or those of ``mode``), with their kinds."""
    config = run_stack(stack).config
    return [{"source": name, "kind": config.source(name).kind} for name in restore_sources(config, mode, source)]


@task(name="plan-chain-restore", task_run_name="plan-{source}", cache_policy=NO_CACHE, **task_options("plan"))
def plan_chain_task(
    stack: str,
    source: str,
    target_time: datetime | str,
    target: dict | None,
    target_source: str | None,
    force: bool,
    vault: str | None = None,
) -> dict:
    """The point-in-time plan of ``source`` to ``target_time`` (reads only; ``--dry-run`` runs the same planner)."""
    config = run_stack(stack).config
    when = read_operator_time(target_time)
    return plan_chain_from(
        config, config.vault_named(vault), source, when.when, target, target_source, force, note=when.plan_note()
    ).to_dict()


@task(
    name="restore-chain",
    task_run_name="restore-{source}-to-point-in-time",
    cache_policy=NO_CACHE,
    **task_options("restore"),
)
def restore_chain_task(
    stack: str,
    source: str,
    plan: dict,
    target: dict | None,
    target_source: str | None,
    force: bool,
    vault: str | None = None,
) -> dict:
    """Execute ``plan`` (exactly its backups and log pieces) into ``source``'s target, verify, return the report."""
    opened = run_stack(stack)
    config = opened.config
    engine = engine_for(restore_target(config, source, target, target_source))
    with (
        exclusive(
            restore_limit(engine.target_key()),
            f"{source}: restore to {plan['recovery_time']} from {plan['base_id']} into {engine.describe()}",
        ),
        Progress(source, "restore", "restore to", subject=f"{plan['recovery_time']} from {plan['base_id']}") as shown,
    ):
        report = operations.restore_chain_plan(
            open_vault(config, vault),
            opened.keyring,
            plan,
            engine,
            force=force,
            progress=progress(source, plan["base_id"]),
            erasure_rules=config.retention.erasure,
            on_bytes=shown.on_bytes,
        )
    return report.to_dict()
