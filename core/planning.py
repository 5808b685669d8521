"""Plan a restore from what is there: the vault's catalog and the target's state.

The one function both the restore flow (its ``plan-restore`` task) and
``genesis-dr restore --dry-run`` call, so the plan a dry run prints is the plan
a restore executes. It only reads: the vault's manifests, and the target
(reachable? holding data?).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.chains import ChainPlan, check_reaches, parse_iso, plan_chain_restore
from core.engines import engine_for
from core.plan import RestorePlan, choose_backup, plan_restore, restore_target
from core.stack import VaultConfig
from core.targets import unfinished_restores


def plan_restore_from(
    config: Any,
    vault_config: VaultConfig,
    source: str,
    backup_id: str | None,
    target_time: datetime | None,
    target: dict | None,
    target_source: str | None,
    force: bool,
) -> RestorePlan | ChainPlan:
    """The restore plan of ``source``'s backup into its target (for a backup on a base, the
    plan of its chain up to it).

    ``config`` is anything with ``source(name)`` returning a source config: the
    stack (flows) or its local description (dry runs; the target's secrets
    filled in when it needs them).
    """
    target_config = restore_target(config, source, target, target_source)
    engine = engine_for(target_config)
    engine.ping_target()
    vault = vault_config.open()
    manifests = vault.list_backups(source)
    if backup_id and all(m.id != backup_id for m in manifests):
        vault.manifest(backup_id)  # a damaged backup says why (exit 5), not merely "not found"
    on_base = next((m for m in manifests if m.id == backup_id and m.type != "full" and m.status == "COMPLETED"), None)
    if on_base is not None:  # a differential or incremental: its chain, up to its own end
        plan = plan_chain_from(config, vault_config, source, parse_iso(on_base.ended_at), target, target_source, force)
        check_reaches(plan, on_base)
        return plan
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
        # The engine's path for this backup (how it is loaded and proved), said on the load step.
        method=engine.restore_method(choose_backup(manifests, source, backup_id, target_time).position),
    )
    engine.preflight(choose_backup(manifests, source, backup_id, target_time).position)
    return plan


def plan_chain_from(
    config: Any,
    vault_config: VaultConfig,
    source: str,
    target_time: datetime,
    target: dict | None,
    target_source: str | None,
    force: bool,
    *,
    note: str | None = None,
    now: datetime | None = None,
) -> ChainPlan:
    """The point-in-time restore plan of ``source`` to ``target_time`` into its target: reads the
    catalog and the log index (never a chunk) and the target's state, then plans (pure)."""
    target_config = restore_target(config, source, target, target_source)
    engine = engine_for(target_config)
    engine.ping_target()
    vault = vault_config.open()
    manifests = vault.list_backups(source)
    pieces = vault.log_pieces(source) if engine.captures_log else []
    plan = plan_chain_restore(
        manifests,
        pieces,
        source,
        engine.kind,
        target_time,
        now or datetime.now(UTC),
        target=engine.describe(),
        target_has_data=engine.has_data(),
        force=force,
        restores_beside=engine.restores_beside(),
        note=note,
    )
    engine.preflight(next(m.position for m in manifests if m.id == plan.base_id))
    return plan
