"""Chains: a full, the backups on it, and the source's log; the pure planner of a restore to a time.

``plan_chain_restore`` is a pure function of the catalog (manifests and log piece
records) and the target's state: the plan it returns names the exact backups and
log pieces, in order, and the stop point; ``core.operations.restore_chain_plan``
executes those fields as they are (Litestream's restore plan is the model), and
``--dry-run`` prints the same plan. Nothing here reads the vault or a server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.engines import log_start, position_order, position_text
from core.errors import LogGapError, RecoveryTargetError
from core.repository.manifest import COMPLETED, Manifest

# A target this far after "now" is a typo, not clock skew between hosts.
FUTURE_SLACK_S = 5.0


def parse_iso(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ChainPlan:
    """What a restore of ``source`` to ``target_time`` does. The executable part is
    ``base_id``, ``layers``, ``pieces`` and ``stop_time``; ``steps`` says them in words."""

    source: str
    kind: str
    target_time: str
    base_id: str
    base_type: str
    base_time: str
    layers: list[str]
    pieces: list[int]
    stop_time: str | None
    recovery_time: str  # the instant the restore reaches (the target, or the newest covered point before it)
    data_loss_s: float  # target_time - recovery_time
    log_from: str | None
    log_to: str | None
    plain_bytes: int
    target: str
    target_has_data: bool
    force: bool
    restores_beside: bool = False
    steps: list[str] = field(default_factory=list)
    refusal: str | None = None
    note: str | None = None  # how the target time was read (no zone: UTC)

    @property
    def backup_id(self) -> str:
        return self.base_id

    def to_dict(self) -> dict:
        return asdict(self) | {"backup_id": self.base_id, "chain": [self.base_id, *self.layers]}


def _completed(manifests: list[Manifest], source: str) -> list[Manifest]:
    return sorted(
        (
            m
            for m in manifests
            if m.source == source and m.status == COMPLETED and m.labels.get("purpose") != "rollback"
        ),
        key=lambda m: m.ended_at,
    )


def effective_log(pieces: list[Any], kind: str) -> list[Any]:
    """The pieces a replay walks: each partial piece dropped once a later one with the same start
    supersedes it (in sequence order)."""
    out: list[Any] = []
    for piece in sorted(pieces, key=lambda p: p.seq):
        if out and out[-1].partial and position_order(kind, piece.start) == position_order(kind, out[-1].start):
            out[-1] = piece
            continue
        out.append(piece)
    return out


def log_gaps(pieces: list[Any], kind: str) -> list[tuple[Any, Any]]:
    """(piece before, piece after) for every break in the log's continuity."""
    return [
        (a, b)
        for a, b in zip(pieces, pieces[1:], strict=False)
        if position_order(kind, b.start) != position_order(kind, a.end)
    ]


def _gap_text(source: str, kind: str, before: Any, after: Any) -> str:
    return (
        f"{source}: the log has a gap from {position_text(kind, before.end)} ({before.last_time}) to "
        f"{position_text(kind, after.start)} ({after.first_time}) between pieces {before.seq} and {after.seq}"
    )


def _layers(completed: list[Manifest], full: Manifest, until: datetime) -> list[Manifest]:
    """Backups with data on ``full``'s chain to apply, in order: the newest one at or before ``until``
    and the backups it was taken on, back to the full (its parent links). A missing link is a gap in
    the chain, named: applying the layers around it would build a tree that never existed."""
    by_id = {m.id: m for m in completed}
    on_chain = [
        m for m in completed if m.chain == full.id and m.id != full.id and parse_iso(m.ended_at) <= until and m.streams
    ]
    if not on_chain:
        return []
    path, node = [], on_chain[-1]
    while node.id != full.id:
        path.append(node)
        parent = by_id.get(node.parent or "")
        if parent is None:
            raise LogGapError(
                f"{full.source}: the chain of {full.id} has a gap: {node.type} {node.id} was taken on {node.parent}, "
                f"which is not in the vault (deleted or damaged); restore to a time before {node.ended_at}"
            )
        node = parent
    return path[::-1]


def plan_chain_restore(
    manifests: list[Manifest],
    pieces: list[Any],
    source: str,
    kind: str,
    target_time: datetime,
    now: datetime,
    *,
    target: str,
    target_has_data: bool,
    force: bool,
    restores_beside: bool = False,
    note: str | None = None,
) -> ChainPlan:
    """The restore of ``source`` to ``target_time``: the newest full at or before it, the backups on
    it (data layers), and the contiguous log pieces from the full's position through the target.

    Raises RecoveryTargetError for a target in the future or before the oldest recoverable point,
    LogGapError for a gap in the log between the full and the target (naming the range). A target
    after the newest captured point is reached as closely as the vault allows: the plan's
    ``data_loss_s`` says by how much it falls short.
    """
    if target_time.tzinfo is None:
        target_time = target_time.replace(tzinfo=UTC)
    if (target_time - now).total_seconds() > FUTURE_SLACK_S:
        raise RecoveryTargetError(
            f"{source}: target time {iso(target_time)} is in the future (now {iso(now)}); give a time at or before now"
        )
    completed = _completed(manifests, source)
    fulls = [m for m in completed if m.type == "full" and parse_iso(m.ended_at) <= target_time]
    if not fulls:
        oldest = next((m for m in completed if m.type == "full"), None)
        when = f"the oldest full ended {oldest.ended_at}" if oldest else "the vault holds no full backup of it"
        raise RecoveryTargetError(
            f"{source}: target time {iso(target_time)} is before the oldest recoverable point ({when}); choose a later "
            "time, or see 'genesis-dr list --chains'"
        )
    full = fulls[-1]
    layers = _layers(completed, full, target_time)
    reached = layers[-1] if layers else full
    start = log_start(kind, full.position)
    chosen: list[Any] = []
    recovery = parse_iso(reached.ended_at)
    if start is not None:
        log = effective_log([p for p in pieces if p.source == source], kind)
        begin = next(
            (
                i
                for i, p in enumerate(log)
                if position_order(kind, p.start) <= position_order(kind, start) < position_order(kind, p.end)
                or position_order(kind, p.start) == position_order(kind, start)
            ),
            None,
        )
        if begin is None and any(position_order(kind, p.start) > position_order(kind, start) for p in log):
            first = next(p for p in log if position_order(kind, p.start) > position_order(kind, start))
            raise LogGapError(
                f"{source}: the log has a gap from {position_text(kind, start)} (full backup {full.id}) to "
                f"{position_text(kind, first.start)} (piece {first.seq}); restore to {full.ended_at} or earlier, "
                "or take a new full backup"
            )
        quiet = False  # the next piece starts after the target: the log holds nothing in between
        if begin is not None:
            for i in range(begin, len(log)):
                piece = log[i]
                if i > begin and position_order(kind, piece.start) != position_order(kind, log[i - 1].end):
                    if parse_iso(log[i - 1].last_time) < target_time:
                        raise LogGapError(
                            _gap_text(source, kind, log[i - 1], piece)
                            + f"; restore to {log[i - 1].last_time} or earlier, or to a backup after the gap"
                        )
                    break
                if parse_iso(piece.first_time) > target_time and chosen:
                    quiet = True
                    break
                chosen.append(piece)
                if parse_iso(piece.last_time) >= target_time:
                    break
            if chosen:
                reached = target_time if quiet else parse_iso(chosen[-1].last_time)
                recovery = max(recovery, min(target_time, reached))
    recovery = min(recovery, target_time)
    loss = max(0.0, (target_time - recovery).total_seconds())
    plan = ChainPlan(
        source=source,
        kind=kind,
        target_time=iso(target_time),
        base_id=full.id,
        base_type=full.type,
        base_time=full.ended_at,
        layers=[m.id for m in layers],
        pieces=[p.seq for p in chosen],
        # Exact to the microsecond, as commit times are: a target just after a commit must include it.
        stop_time=target_time.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if chosen
        else None,
        recovery_time=iso(recovery),
        data_loss_s=round(loss, 3),
        log_from=position_text(kind, chosen[0].start) if chosen else None,
        log_to=position_text(kind, chosen[-1].end) if chosen else None,
        plain_bytes=full.plain_bytes + sum(m.plain_bytes for m in layers) + sum(p.stream.plain_bytes for p in chosen),
        target=target,
        target_has_data=target_has_data,
        force=force,
        restores_beside=restores_beside,
        note=note,
    )
    plan.steps = _steps(plan, full, layers, chosen, start is not None)
    if target_has_data and not force:
        plan.refusal = (
            f"target {target} already holds data; pass --force to restore over it (a rollback backup is taken first)"
        )
    return plan


def check_reaches(plan: ChainPlan, backup: Manifest) -> None:
    """A plan made to restore ``backup`` (a differential or incremental, by its id) must go through
    it: its full is the plan's base, and a backup with data is one of the plan's layers. Otherwise
    the chain is broken (its full or a layer was deleted) and the restore would land elsewhere."""
    full = backup.chain or backup.id
    if plan.base_id != full:
        raise RecoveryTargetError(
            f"backup {backup.id} is a {backup.type} on full backup {full}, which is not in the vault (deleted or "
            "damaged): its chain cannot be restored; restore another backup (see 'genesis-dr list --chains')"
        )
    if backup.streams and backup.id not in plan.layers:
        raise RecoveryTargetError(
            f"backup {backup.id} cannot be reached from its full {full}: a backup it builds on is missing from the "
            "vault; restore another backup (see 'genesis-dr list --chains')"
        )


def _steps(plan: ChainPlan, full: Manifest, layers: list[Manifest], pieces: list[Any], has_log: bool) -> list[str]:
    steps = [f"open full backup {full.id} ({full.kind}, ended {full.ended_at}): unwrap key, check manifest MAC"]
    if plan.target_has_data:
        steps.append(f"take a rollback backup of {plan.target} (full, label purpose=rollback)")
    steps.append("lock the target and mark it 'restore in progress' (the vault is only read)")
    where = "a new sibling of the target" if plan.restores_beside and plan.target_has_data else plan.target
    steps.append(f"load {full.id} into {where}")
    for m in layers:
        steps.append(f"apply {m.type} {m.id} (ended {m.ended_at})")
    if pieces:
        steps.append(
            f"replay log pieces {pieces[0].seq}..{pieces[-1].seq} ({len(pieces)} pieces, {plan.log_from} -> "
            f"{plan.log_to}), every chunk authenticated, stopping at {plan.stop_time} (inclusive)"
        )
    elif has_log:
        steps.append(f"no log after {full.id} reaches the target: the restore stops at the backup itself")
    if plan.data_loss_s:
        steps.append(
            f"recovery point {plan.recovery_time}: {plan.data_loss_s:.1f}s before the target (the newest point the "
            "vault holds)"
        )
    else:
        steps.append(f"recovery point {plan.recovery_time} (the target)")
    steps.append(
        "verify: the checks of the last backup applied when no log is replayed past it; otherwise the recovery point "
        "as the engine proves it"
    )
    if plan.restores_beside and plan.target_has_data:
        steps.append(f"swap the verified sibling into place as {plan.target}")
    steps.append("clear the mark; report the recovery point and every object not restored exactly")
    return steps


def render_chain_plan(plan: dict) -> str:
    lines = [
        f"Point-in-time restore plan for {plan['source']} ({plan['kind']})",
        f"  target time: {plan['target_time']}{' (' + plan['note'] + ')' if plan.get('note') else ''}",
        f"  base: {plan['base_id']} ({plan['base_type']}, ended {plan['base_time']})",
        f"  recovery point: {plan['recovery_time']} (data loss against the target: {plan['data_loss_s']:.1f}s)",
        f"  target: {plan['target']}{' (holds data)' if plan['target_has_data'] else ''}",
    ]
    lines += [f"  {i}. {step}" for i, step in enumerate(plan["steps"], 1)]
    if plan.get("refusal"):
        lines.append(f"  REFUSED: {plan['refusal']}")
    return "\n".join(lines)


def list_chains(manifests: list[Manifest], pieces_by_source: dict[str, list[Any]], kinds: dict[str, str]) -> list[dict]:
    """Each source's chains, oldest first: the full, the backups on it, and the log coverage after
    it with every gap named (pure: the caller reads the catalog)."""
    out = []
    for source in sorted({m.source for m in manifests} | set(pieces_by_source)):
        completed = _completed(manifests, source)
        kind = kinds.get(source) or next((m.kind for m in completed), "files")
        log = effective_log(pieces_by_source.get(source, []), kind)
        gaps = [
            {
                "from": position_text(kind, a.end),
                "to": position_text(kind, b.start),
                "from_time": a.last_time,
                "to_time": b.first_time,
            }
            for a, b in log_gaps(log, kind)
        ]
        chains = []
        for full in (m for m in completed if m.type == "full"):
            members = [m for m in completed if m.chain == full.id and m.id != full.id]
            start = log_start(kind, full.position)
            covered = None
            if start is not None:
                after = [p for p in log if position_order(kind, p.end) > position_order(kind, start)]
                if after:
                    covered = {"from": full.ended_at, "to": after[-1].last_time, "pieces": len(after)}
            chains.append(
                {
                    "full": full.summary(),
                    "members": [m.summary() for m in members],
                    "log": covered,
                }
            )
        out.append(
            {
                "source": source,
                "kind": kind,
                "chains": chains,
                "log_pieces": len(log),
                "log_bytes": sum(p.stream.stored_bytes for p in log),
                "log_from": log[0].first_time if log else None,
                "log_to": log[-1].last_time if log else None,
                "gaps": gaps,
            }
        )
    return out


def render_chains(chains: list[dict]) -> str:
    lines: list[str] = []
    for entry in chains:
        lines.append(f"{entry['source']} ({entry['kind']})")
        if entry["log_pieces"]:
            lines.append(
                f"  log: {entry['log_pieces']} pieces, {entry['log_from']} -> {entry['log_to']}"
                f" ({entry['log_bytes']} bytes stored)"
            )
        for gap in entry["gaps"]:
            lines.append(f"  GAP in the log: {gap['from']} ({gap['from_time']}) -> {gap['to']} ({gap['to_time']})")
        for chain in entry["chains"]:
            full = chain["full"]
            lines.append(f"  {full['id']} full {full['ended_at']} {full['position_text']}")
            for m in chain["members"]:
                lines.append(f"    -> {m['id']} {m['type']} {m['ended_at']} {m['position_text']}")
            if chain["log"]:
                log = chain["log"]
                lines.append(f"    log covers {log['from']} -> {log['to']} ({log['pieces']} pieces)")
        if not entry["chains"]:
            lines.append("  no completed full backup")
    return "\n".join(lines) if lines else "no backups"
