"""The retention executor: the only part of genesis-dr that deletes, and only what a plan says.

A run (``run_retention``), in this order:

1. the audit trail: an unacknowledged alarm, or a fresh verification (from the last verified
   checkpoint on, ``verify_recent``; it moves the checkpoint when it passes) that fails (which
   raises the alarm), stops every deletion of this run (holds and archives still happen);
2. deletions a killed run left marked (``retention/deleting/``) are finished first;
3. the catalog, the holds and the plan (``plan_retention``: pure, so ``--dry-run`` is exact);
4. provider locks made to match the holds (S3 Object Lock legal holds, GCS event-based holds);
5. archives, then deletions: each backup or log range crypto-shredded, destroyed in the
   primary and every replica, and certified (``core.retention.shred``); an object lock
   stops that one only;
6. an audit entry ``retention.run`` with the counts; then RetentionRefusedError (exit 30)
   when the audit alarm stopped deletions or the policy would have deleted every backup of
   a source (those sources kept everything, the others were processed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from core.audit.trail import AuditTrail
from core.audit.verify import raise_alarm, unacknowledged_alarm, verify_recent
from core.errors import ObjectLockedError, RetentionRefusedError
from core.repository.vault import Vault
from core.retention.archive import archive_backup
from core.retention.catalog import Catalog, read_catalog
from core.retention.holds import HoldBook, apply_object_holds
from core.retention.planner import Decision, RetentionPlan, plan_retention
from core.retention.shred import PRIMARY, Say, delete_backup, delete_log_range, resume_deletions
from core.storage.base import Store


@dataclass
class RetentionReport:
    """What one run planned and did (``to_dict`` is what the flow and ``--json`` print)."""

    plan: RetentionPlan
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    held_objects: dict = field(default_factory=dict)
    skipped_locked: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    audit_alarm: str | None = None

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "dry_run": self.dry_run,
            "deleted": self.deleted,
            "archived": self.archived,
            "certificates": self.certificates,
            "held_objects": self.held_objects,
            "skipped_locked": self.skipped_locked,
            "refused": self.refused,
            "resumed": self.resumed,
            "freed_bytes": self.freed_bytes,
            "audit_alarm": self.audit_alarm,
        }

    def text(self) -> str:
        lines = [self.plan.text(), ""]
        if self.dry_run:
            deletions, archives = self.plan.deletions(), self.plan.archives()
            lines.append(
                f"dry run: nothing was changed; a run would delete {len(deletions)} and archive {len(archives)} "
                f"item(s), freeing {sum(d.stored_bytes for d in deletions)} bytes"
            )
        else:
            if self.resumed:
                lines.append(f"finished {len(self.resumed)} deletion(s) a killed run left: {', '.join(self.resumed)}")
            lines.append(
                f"deleted {len(self.deleted)} item(s), {self.freed_bytes} bytes freed"
                + (f": {', '.join(self.deleted)}" if self.deleted else "")
            )
            lines.append(f"archived {len(self.archived)}" + (f": {', '.join(self.archived)}" if self.archived else ""))
            if self.certificates:
                lines.append(f"certificates: {', '.join(self.certificates)}")
            if self.skipped_locked:
                lines.append(
                    f"left for later (object lock): {', '.join(self.skipped_locked)}; they are deleted by the first "
                    "run after their locks are lifted"
                )
        for source, why in sorted(self.refused.items()):
            lines.append(f"REFUSED {source}: {why}")
        if self.audit_alarm:
            lines.append(f"NO DELETION: {self.audit_alarm}")
        return "\n".join(lines)


def _replicas(config) -> list[tuple[str, Store]]:
    """Every replica's store, writable: deletion and crypto-shredding reach every copy."""
    return [(replica.name, replica.vault.store()) for replica in config.replicas]


def _plan(vault: Vault, config, now: datetime) -> tuple[Catalog, list, RetentionPlan]:
    catalog = read_catalog(vault, config)
    holds = HoldBook.for_stack(vault.store, config.signing).list(config.signing.admin_public_keys)
    plan = plan_retention(catalog, config.retention, [h for h in holds if h.active], now)
    return catalog, holds, plan


def _audit_alarm(vault: Vault, config, replicas: list[tuple[str, Store]], signer) -> str | None:
    """Why deletions must stop (an unacknowledged alarm, or a verification failing now, which raises the
    alarm when ``signer`` is given; a dry run only reports it), or None."""
    admins = config.signing.admin_public_keys
    alarm = unacknowledged_alarm(vault.store, admins)
    if alarm is None:
        # From the last verified checkpoint on (every entry name is still listed): a long trail must not make every
        # run re-read it all; the daily audit verify reads everything. A checkpoint counts only when this host's key
        # (or a key the stack trusts) signed it; a dry run (no key loaded) trusts the stack's listed keys only.
        trusted = config.signing.trusted()
        accept = sorted(set(trusted.values()) | ({signer.public_b64} if signer is not None else set()))
        report = verify_recent(
            vault.store, trusted, accept=accept, replicas=replicas, admins=admins, checkpoint_signer=signer
        )
        if report.ok:
            return None
        if signer is not None:
            raise_alarm(vault.store, report, signer)
        first = report.problems[0].text if report.problems else "verification failed"
        return f"the audit trail failed verification just now ({first})"
    problems = alarm.get("problems") or []
    first = problems[0].get("text") if problems and isinstance(problems[0], dict) else "see audit/alarm.json"
    return f"the audit trail has an unacknowledged alarm raised {alarm.get('at', 'earlier')} ({first})"


def _authority(config, decision: Decision) -> str:
    return f"retention policy of stack '{config.stack}' for source '{decision.source}'"


def _log_range(decision: Decision) -> list[int]:
    first, last = decision.seqs if decision.seqs else (0, -1)
    return list(range(first, last + 1))


def run_retention(config, *, dry_run: bool = False, now: datetime | None = None, say: Say = print) -> RetentionReport:
    """Apply the stack's retention policy (see the module doc). RetentionRefusedError (exit 30, with
    ``report`` attached as a dict) when deletions were refused; the rest of the run happened."""
    now = now or datetime.now(UTC)
    vault = config.vault.open()
    if dry_run:
        _catalog, _holds, plan = _plan(vault, config, now)
        alarm = _audit_alarm(vault, config, _replicas(config), None)
        return RetentionReport(plan=plan, dry_run=True, refused=dict(plan.refused), audit_alarm=alarm)

    signer = config.signing.host_key()
    passes = config.retention.overwrite_passes
    replicas = _replicas(config)
    alarm = _audit_alarm(vault, config, replicas, signer)
    locked: list[str] = []
    resumed = []
    if alarm is None:
        resumed = resume_deletions(vault, replicas, signer=signer, passes=passes, say=say, locked=locked)
    catalog, holds, plan = _plan(vault, config, now)
    report = RetentionReport(plan=plan, dry_run=False, refused=dict(plan.refused), audit_alarm=alarm)
    report.resumed = [c.subject for c in resumed]
    report.certificates = [c.id for c in resumed]
    report.skipped_locked = list(locked)
    report.held_objects = apply_object_holds(vault, [(PRIMARY, vault.store), *replicas], holds, catalog)

    for decision in plan.archives():
        archive_backup(vault, decision.item, decision.archive_to or "", replicas=dict(replicas), say=say, signer=signer)
        report.archived.append(decision.item)

    if alarm is None:
        _delete(vault, replicas, config, plan, report, signer=signer, passes=passes, say=say)
    else:
        say(f"NO DELETION: {alarm}")

    refusing = bool(alarm or plan.refused)
    AuditTrail(vault.store, signer).append(
        "retention.run",
        config.stack,
        {
            "deleted": len(report.deleted),
            "archived": len(report.archived),
            "resumed": len(report.resumed),
            "skipped_locked": len(report.skipped_locked),
            "freed_bytes": report.freed_bytes,
            "refused": sorted(plan.refused),
            "audit_alarm": bool(alarm),
            "certificates": report.certificates[:50],
        },
        outcome="refused" if refusing else "success",
    )
    if alarm:
        error = RetentionRefusedError(
            f"retention of stack '{config.stack}' deleted nothing: {alarm}; investigate with 'genesis-dr audit "
            "verify', then acknowledge with 'genesis-dr audit acknowledge \"REASON\"' (admin key)"
        )
        error.report = report.to_dict()
        raise error
    if plan.refused:
        named = "; ".join(f"{source}: {why}" for source, why in sorted(plan.refused.items()))
        error = RetentionRefusedError(
            f"retention of stack '{config.stack}' refused to delete anything of {', '.join(sorted(plan.refused))} "
            f"({named}); the other sources were processed - fix retention.sources.<source> so it keeps a backup"
        )
        error.report = report.to_dict()
        raise error
    return report


def _delete(vault, replicas, config, plan: RetentionPlan, report: RetentionReport, *, signer, passes, say) -> None:
    deletions = plan.deletions()
    # The session keys whose every piece goes are shredded with the source's last deleted range.
    last_range = {d.source: d.item for d in deletions if d.kind == "log"}
    for decision in deletions:
        reason = "; ".join(decision.reasons) or "expired by the retention policy"
        try:
            if decision.kind == "log":
                keys = (
                    plan.log_keys_to_shred.get(decision.source, [])
                    if last_range[decision.source] == decision.item
                    else []
                )
                delete, args = delete_log_range, (decision.source, _log_range(decision), keys)
            else:
                delete, args = delete_backup, (decision.item,)
            cert = delete(
                vault,
                replicas,
                *args,
                reason=reason,
                authority=_authority(config, decision),
                signer=signer,
                passes=passes,
                say=say,
            )
        except ObjectLockedError as exc:
            say(f"{decision.item}: left for later: {exc}")
            report.skipped_locked.append(decision.item)
            continue
        report.deleted.append(decision.item)
        report.certificates.append(cert.id)
        report.freed_bytes += decision.stored_bytes


def _hold_summary(hold) -> dict:
    return {
        "id": hold.id,
        "name": hold.name,
        "reason": hold.reason,
        "contact": hold.contact,
        "creator": hold.creator,
        "created_at": hold.created_at,
        "active": hold.active,
        "scope": hold.scope.model_dump(exclude_defaults=True),
    }


def retention_status(config, *, now: datetime | None = None) -> dict:
    """What ``genesis-dr retention status`` shows: the plan (per source what is kept and why, what expires
    when), the holds, the bytes per storage tier, deletions in progress and pending erasures. Reads only."""
    now = now or datetime.now(UTC)
    vault = config.vault.open()
    catalog, holds, plan = _plan(vault, config, now)
    tiers: Counter[str] = Counter()
    for item in catalog.backups:
        tier = f"vault:{item.archived_to}" if item.archived_to else (item.storage_class or "STANDARD")
        tiers[tier] += item.stored_bytes
    tiers["log (STANDARD)"] += sum(piece.stored_bytes for piece in catalog.pieces)
    from core.retention.erasure import pending  # the erasure module builds on this one's shredding

    pending_erasures = pending(vault.store)
    return {
        "stack": config.stack,
        "now": now.isoformat().replace("+00:00", "Z"),
        "plan": plan.to_dict(),
        "text": plan.text(),
        "holds": [_hold_summary(h) for h in holds if h.active],
        "storage": dict(sorted(tiers.items())),
        "deleting": sorted(vault.deleting_ids()),
        "pending_erasures": pending_erasures,
    }
