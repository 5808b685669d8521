"""Pure planners: which backup to restore, into what, and the steps.

A plan is computed before anything changes; ``--dry-run`` prints it and stops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from core.errors import BackupNotFoundError, ConfigError
from core.repository.manifest import COMPLETED, Manifest
from core.stack import StackConfig

SECRET_FIELDS = {"password"}


def restore_target(config: StackConfig, source: str, overrides: dict[str, Any] | None, target_source: str | None):
    """The config to restore ``source``'s backup into.

    ``target_source`` names another source of the stack (its connection and
    secrets are used); ``overrides`` change non-secret fields (database, host,
    port, root, ...). Secrets are never accepted as overrides: they would end up
    in flow parameters and run history.
    """
    base = config.source(target_source or source)
    origin = config.source(source)
    if base.kind != origin.kind:
        raise ConfigError(
            f"--target-source {target_source!r} is a {base.kind} source but {source!r} is {origin.kind}; pick a {origin.kind} source"
        )
    overrides = dict(overrides or {})
    for key in overrides:
        if key in SECRET_FIELDS:
            raise ConfigError(
                f"--target {key}=...: secrets are not accepted on the command line or as flow parameters; add the target "
                "as a source in the stack file and use --target-source"
            )
        if key not in type(base).model_fields or key in ("name", "kind"):
            fields = ", ".join(f for f in type(base).model_fields if f not in ("name", "kind", *SECRET_FIELDS))
            raise ConfigError(f"--target {key}=...: not a {base.kind} setting; use one of: {fields}")
    data = base.model_dump() | overrides  # keeps the target's own name: its rollback backups list under it
    try:
        return type(base).model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"--target {first['loc'][0]}=...: {first['msg']}; fix the value") from None


@dataclass
class RestorePlan:
    source: str
    backup_id: str
    backup_type: str
    backup_time: str
    plain_bytes: int
    target: str
    target_has_data: bool
    force: bool
    chain: list[str]
    steps: list[str] = field(default_factory=list)
    refusal: str | None = None
    method: str | None = None  # the engine's way of loading and proving this backup, if it has a choice

    def to_dict(self) -> dict:
        return asdict(self)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def choose_backup(
    manifests: list[Manifest], source: str, backup_id: str | None, target_time: datetime | None
) -> Manifest:
    """The backup a restore uses: the given id, or the newest completed full one at or before ``target_time``."""
    if backup_id:
        for m in manifests:
            if m.id == backup_id:
                if m.source != source:
                    raise BackupNotFoundError(
                        f"backup {backup_id} belongs to source {m.source!r}, not {source!r}; check --source"
                    )
                if m.status != COMPLETED:
                    raise BackupNotFoundError(
                        f"backup {backup_id} is {m.status} ({m.error}); choose a completed backup from 'genesis-dr list'"
                    )
                return m
        raise BackupNotFoundError(
            f"backup {backup_id} not found for source {source!r}; see 'genesis-dr list --source {source}'"
        )
    when = target_time or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    candidates = [
        m
        for m in manifests
        if m.source == source
        and m.status == COMPLETED
        and m.type == "full"
        and m.labels.get("purpose") != "rollback"
        and _parse_time(m.ended_at) <= when
    ]
    if not candidates:
        raise BackupNotFoundError(
            f"no completed backup of {source!r} at or before {when.isoformat()}; see 'genesis-dr list --source {source}'"
        )
    return max(candidates, key=lambda m: m.ended_at)


def plan_restore(
    manifests: list[Manifest],
    source: str,
    backup_id: str | None,
    target_time: datetime | None,
    target: str,
    target_has_data: bool,
    force: bool,
    restores_beside: bool = False,
    interrupted: str | None = None,
    method: str | None = None,
) -> RestorePlan:
    chosen = choose_backup(manifests, source, backup_id, target_time)
    plan = RestorePlan(
        source=source,
        backup_id=chosen.id,
        backup_type=chosen.type,
        backup_time=chosen.ended_at,
        plain_bytes=chosen.plain_bytes,
        target=target,
        target_has_data=target_has_data,
        force=force,
        chain=[chosen.id],
        method=method,
    )
    plan.steps.append(
        f"open {chosen.id} ({chosen.kind} {chosen.type}, {chosen.ended_at}): unwrap key, check manifest MAC"
    )
    if interrupted:
        plan.steps.append(f"note the interrupted restore found on the target ({interrupted}); remove its staged copy")
    if target_has_data and not force:
        plan.refusal = (
            f"target {target} already holds data; pass --force to restore over it (a rollback backup is taken first)"
        )
        return plan
    if target_has_data and not restores_beside:
        plan.steps.append(f"read and authenticate every object of {chosen.id} before changing the target")
    if target_has_data:
        plan.steps.append(f"take a rollback backup of {target} (full, label purpose=rollback)")
    plan.steps.append("lock the target and mark it 'restore in progress' (the vault is only read)")
    how = f"; {method}" if method else ""
    if restores_beside:
        plan.steps.append(
            f"stream {chosen.plain_bytes} bytes from the vault into a new sibling of {target}, every chunk authenticated{how}"
        )
        plan.steps.append("verify the sibling against the checks recorded at backup time")
        plan.steps.append(f"swap the verified sibling into place as {target}; the target is unchanged until then")
    else:
        plan.steps.append(
            f"stream {chosen.plain_bytes} bytes from the vault into {target}, every chunk authenticated{how}"
        )
        plan.steps.append("verify the target against the checks recorded at backup time")
        if target_has_data:
            plan.steps.append("if anything fails after the target changed, restore the rollback backup automatically")
    plan.steps.append("clear the mark; report every object not restored exactly as it was")
    return plan


def render_plan(plan: dict) -> str:
    """The plan as text (markdown-friendly) for --dry-run and the run's artifact."""
    if "pieces" in plan:  # a chain's plan (core.chains)
        from core.chains import render_chain_plan

        return render_chain_plan(plan)
    lines = [
        f"Restore plan for {plan['source']}",
        f"  backup: {plan['backup_id']} ({plan['backup_type']}, {plan['backup_time']}, {plan['plain_bytes']} bytes)",
        f"  target: {plan['target']}{' (holds data)' if plan['target_has_data'] else ''}",
    ]
    lines += [f"  {i}. {step}" for i, step in enumerate(plan["steps"], 1)]
    if plan["refusal"]:
        lines.append(f"  REFUSED: {plan['refusal']}")
    return "\n".join(lines)
