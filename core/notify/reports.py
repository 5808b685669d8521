"""Events for the outcomes the flows report: a backup run, a validation, a drill.

Each event's ``subject`` is chosen so that the next run of the same thing has the same
PagerDuty dedup key: a scheduled full backup of every source is ``full``, a named selection
is ``full app-db,cache``; a validation is its level; a drill its tier.
"""

from __future__ import annotations

from typing import Any

from core.notify.event import Event
from core.units import human_bytes

_MAX_LINES = 10  # failure lines carried in an event; the run's artifact has them all


def _one_line(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def backup_event(
    stack: str,
    backup_type: str,
    results: list[dict],
    failures: dict[str, Any],
    *,
    sources: list[str] | None = None,
    kinds: list[str] | None = None,
    url: str | None = None,
) -> Event:
    """A backup run: ``results`` are the committed backups' summaries, ``failures`` source -> error."""
    scope = " ".join(p for p in (",".join(sorted(sources or [])), ",".join(sorted(kinds or []))) if p)
    subject = f"{backup_type} {scope}".strip()
    total = len(results) + len(failures)
    stored = sum(r.get("stored_bytes") or 0 for r in results)
    details: dict[str, Any] = {
        "backups": [f"{r['source']}: {r['id']}" for r in results] or "none",
        "stored": human_bytes(stored),
    }
    if failures:
        failed = [f"{name}: {_one_line(exc)}" for name, exc in list(failures.items())[:_MAX_LINES]]
        details = {"failed": failed} | details
        summary = f"{len(failures)} of {total} {backup_type} backups failed - {failed[0]}"
        title = f"Backup FAILED on stack {stack}"
    else:
        names = ", ".join(r["source"] for r in results) or "no source"
        summary = f"{len(results)} {backup_type} backups committed ({names}), {human_bytes(stored)} stored"
        title = f"Backup succeeded on stack {stack}"
    return Event(
        activity="backup",
        outcome="failure" if failures else "success",
        stack=stack,
        title=title,
        summary=_one_line(summary),
        subject=subject,
        details=details,
        url=url,
    )


def validation_event(record: Any, *, url: str | None = None) -> Event:
    """A validation run (a ``core.validation.results.ValidationRecord``): failed critical checks fail it."""
    failed = record.failures(critical_only=True)
    counts = record.counts()
    details: dict[str, Any] = {
        "validation": record.id,
        "level": record.level,
        "vault": record.vault,
        "backups": len(record.backups),
        "checks": f"{counts['passed']} passed, {counts['failed']} failed, {counts['not_checked']} not checked",
    }
    if failed:
        details = {"failed": [_one_line(r.line()) for r in failed[:_MAX_LINES]]} | details
    if not record.decryption_checked:
        details["decryption"] = "not checked (no private key)"
    return Event(
        activity="validation",
        outcome="success" if record.passed else "failure",
        stack=record.stack,
        title=f"Validation ({record.level}) {'passed' if record.passed else 'FAILED'} on stack {record.stack}",
        summary=_one_line(record.summary_line() + (f" - {failed[0].line()}" if failed else "")),
        subject=f"{record.level} {record.vault}" if record.vault not in ("", "primary") else record.level,
        details=details,
        url=url,
    )


def drill_event(record: Any, *, url: str | None = None) -> Event:
    """A drill run (a DrillRecord: id, tier, stack, passed, rto_s, rto_objective_s, sources, results)."""
    failed = [r for r in getattr(record, "results", []) if r.failed and r.critical]
    details: dict[str, Any] = {"drill": record.id, "tier": record.tier}
    rto = getattr(record, "rto_s", None)
    if rto is not None:
        objective = getattr(record, "rto_objective_s", None)
        details["rto"] = f"{rto:.1f}s" + (f" (objective {objective:g}s)" if objective is not None else "")
    rpo = {name: s.get("rpo_s") for name, s in (getattr(record, "sources", None) or {}).items()}
    if any(v is not None for v in rpo.values()):
        details["rpo"] = [f"{name}: {v:.1f}s" for name, v in rpo.items() if v is not None]
    if failed:
        details = {"failed": [_one_line(r.line()) for r in failed[:_MAX_LINES]]} | details
    word = "passed" if record.passed else "FAILED"
    summary = f"{record.tier} drill {record.id} {word}"
    if rto is not None:
        summary += f": RTO {rto:.1f}s"
    if failed:
        summary += f" - {failed[0].line()}"
    return Event(
        activity="drill",
        outcome="success" if record.passed else "failure",
        stack=record.stack,
        title=f"{record.tier.capitalize()} drill {word} on stack {record.stack}",
        summary=_one_line(summary),
        subject=record.tier,
        details=details,
        url=url,
    )
