"""Events for the outcomes the flows report: a backup run, a validation, a drill, a failover or failback,
and the monitor's pages.

Each event's ``subject`` is chosen so that the next run of the same thing has the same
PagerDuty dedup key: a scheduled full backup of every source is ``full``, a named selection
is ``full app-db,cache``; a validation is its level; a drill its tier; a failover or failback
the region it moves the stack to (the next completed run to that region resolves the page of
a stopped one); a monitor page the region it is about (the region back up resolves it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.notify.event import Event
from core.units import human_bytes

if TYPE_CHECKING:
    from core.failover.monitor import Assessment
    from core.failover.report import FailoverReport

_MAX_LINES = 10  # failure lines carried in an event; the run's artifact has them all
_LONG = 1000  # a failover's summary names each component's state and the next step: PagerDuty shows 1024


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
    """A backup run: ``results`` are the sources' summaries (a committed backup's, or a skipped incremental's with
    ``status: SKIPPED`` and its ``reason``), ``failures`` source -> error.

    A skipped incremental is neither committed nor failed: it has a line of its own (``app-db: skipped (the
    previous backup of app-db ... is still running)``) and the run is still a success."""
    scope = " ".join(p for p in (",".join(sorted(sources or [])), ",".join(sorted(kinds or []))) if p)
    subject = f"{backup_type} {scope}".strip()
    total = len(results) + len(failures)
    committed = [r for r in results if r.get("status") != "SKIPPED"]
    skipped = [f"{r['source']}: skipped ({_skip_reason(r)})" for r in results if r.get("status") == "SKIPPED"]
    stored = sum(r.get("stored_bytes") or 0 for r in committed)
    details: dict[str, Any] = {
        "backups": [f"{r['source']}: {r['id']}" for r in committed] or "none",
        "stored": human_bytes(stored),
    }
    if skipped:
        details["skipped"] = skipped[:_MAX_LINES]
    if failures:
        failed = [f"{name}: {_one_line(exc)}" for name, exc in list(failures.items())[:_MAX_LINES]]
        details = {"failed": failed} | details
        summary = f"{len(failures)} of {total} {backup_type} backups failed - {failed[0]}"
        title = f"Backup FAILED on stack {stack}"
    else:
        names = ", ".join(r["source"] for r in committed) or "no source"
        summary = f"{len(committed)} {backup_type} backups committed ({names}), {human_bytes(stored)} stored"
        if skipped:
            summary += f"; {skipped[0]}" + (f" (+{len(skipped) - 1} more skipped)" if len(skipped) > 1 else "")
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


def _skip_reason(result: Mapping[str, Any]) -> str:
    # The recorded reason starts with "skipped: " (the vault's history and the table say it that way).
    reason = str(result.get("reason") or "no reason recorded")
    return _one_line(reason.removeprefix("skipped: "), 200)


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


# ---------------------------------------------------------------- failover and failback

# A report's outcome (core.failover.report, core.failover.failback) as the event's outcome, severity and words.
# Anything else (incomplete, dns_failed: the databases moved, DNS did not) is a failure that pages.
_REPORT_OUTCOMES: dict[str, tuple[str, str, str]] = {
    "completed": ("success", "info", "completed"),
    "rolled_back": ("failure", "warning", "done"),  # "roll back of failback to X done": X was not reached
    "incomplete": ("failure", "critical", "STOPPED halfway"),
    "dns_failed": ("failure", "critical", "done but DNS NOT switched"),
}


def _report_summary(data: Mapping[str, Any]) -> str:
    operation, outcome = data.get("operation") or data.get("kind"), data.get("outcome")
    if outcome == "completed":
        text = f"{operation} completed in {data.get('seconds') or 0:g} s (epoch {data.get('epoch')})"
        if data.get("to_fence_when_back"):
            text += f"; unreachable, fenced when they return: {', '.join(data['to_fence_when_back'])}"
        return text
    steps = data.get("steps") or []
    stopped = next((s for s in steps if s.get("status") == "failed"), None)
    text = f"{operation}: {outcome}"
    if stopped is not None:
        text += f" at '{stopped['action']} {stopped['component']} in {stopped['region']}': {stopped['detail']}"
    if data.get("next_step"):
        text += f"; next: {data['next_step']}"
    return text


def _loss_text(data_loss: Mapping[str, Any]) -> str | None:
    planned = data_loss.get("planned") or {}
    parts = []
    if planned.get("lag_s") is not None:
        parts.append(f"{planned['lag_s']:g} s")
    if planned.get("lag_bytes") is not None:
        parts.append(f"{planned['lag_bytes']} bytes")
    return ", ".join(parts) or None


def failover_event(
    stack: str,
    report: FailoverReport | Mapping[str, Any],
    *,
    severity: str | None = None,
    summary: str | None = None,
    url: str | None = None,
) -> Event:
    """A failover or failback run (a ``core.failover.report.FailoverReport`` or its ``to_dict()``, e.g. the
    ``report`` of a FailoverIncompleteError) as an event of activity ``report.kind``.

    Completed: success, ``info`` (PagerDuty resolves the page a stopped run to the same region opened).
    Stopped halfway or DNS not switched: failure, ``critical`` (pages). A failback rolled back before any
    promotion: failure, ``warning``. ``severity``/``summary`` override (core's own words, e.g. the message of
    the error it raises).
    """
    data: Mapping[str, Any] = report if isinstance(report, Mapping) else report.to_dict()
    kind = data.get("kind") or "failover"
    outcome, default_severity, word = _REPORT_OUTCOMES.get(data.get("outcome") or "", ("failure", "critical", ""))
    word = word or str(data.get("outcome") or "ended").upper()
    # A rollback's report runs the other way (from the failback's target back to where the stack was): its
    # subject is still the failback's target, so the failback that later completes resolves its page.
    subject = data.get("source") if data.get("outcome") == "rolled_back" else data.get("target")
    operation = str(data.get("operation") or f"{kind} to {subject}")
    dns = data.get("dns") or {}
    components = data.get("components") or {}
    details: dict[str, Any] = {
        "from": data.get("source"),
        "to": data.get("target"),
        "epoch": data.get("epoch"),
        "reason": data.get("reason"),
        "seconds": data.get("seconds"),
        "forced": True if data.get("forced") else None,
        "data loss": _loss_text(data.get("data_loss") or {}),
        "dns": f"{dns.get('record')} -> {dns.get('value')}" if dns else None,
        "unreachable": list(data.get("to_fence_when_back") or []),
        "components": [f"{name}: {state}" for name, state in components.items() if name != "state"],
        "next": data.get("next_step"),
        "operation id": data.get("operation_id"),
    }
    return Event(
        activity=kind,
        outcome=outcome,  # type: ignore[arg-type] - from the table above
        stack=stack,
        title=_one_line(f"{operation[:1].upper()}{operation[1:]} {word} on stack {stack}", 150),
        summary=_one_line(summary or _report_summary(data), _LONG),
        subject=str(subject or "all"),
        details=_present(details),
        url=url,
        severity=severity or default_severity,  # type: ignore[arg-type] - checked by Event
    )


def event_from_dict(stack: str, data: Mapping[str, Any], *, url: str | None = None) -> Event:
    """core's event dict (``{activity, outcome, severity, title, summary, subject, details}``, what
    ``core.failover.run.execute_failover`` gives its ``notify`` callback) as an Event of ``stack``, its severity
    kept. An unknown activity, outcome or severity is a ValueError naming it."""
    return Event(
        activity=data["activity"],
        outcome=data["outcome"],
        stack=stack,
        title=_one_line(data["title"], 150),
        summary=_one_line(data["summary"], _LONG),
        subject=str(data.get("subject") or "all"),
        details=_present(dict(data.get("details") or {})),
        url=url or data.get("url"),
        severity=data.get("severity"),
    )


def _present(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if v is not None and v != "" and v != [] and v != {}}


# ---------------------------------------------------------------- the monitor's pages

# ``details["condition"]`` of a monitor event: what a webhook receiver or an SNS consumer can switch on.
REGION_DOWN, REGION_UP = "region_down", "region_up"
ALL_REGIONS_UNHEALTHY, NO_FAILOVER_TARGET, APPROVAL_NEEDED = (
    "all_regions_unhealthy",
    "no_failover_target",
    "approval_needed",
)


def region_line(a: Assessment, region: str) -> str:
    """``us-west-2: score 0.00, down (3 failed runs in a row), failed: postgres, http ...; lag 1.5 s``."""
    health, state = a.regions[region], a.states.get(region)
    if state is not None and state.down:
        status = f"down ({state.consecutive_failures} failed runs in a row)"
    else:
        status = "healthy" if health.healthy else "unhealthy"
    text = f"{region}: score {health.score:.2f}, {status}"
    if health.failed:
        text += f", failed: {', '.join(health.failed)}"
    lag = [f"{health.lag_s:g} s"] if health.lag_s is not None else []
    lag += [f"{health.lag_bytes} bytes"] if health.lag_bytes is not None else []
    if lag:
        text += f"; lag {', '.join(lag)}"
    return _one_line(text)


def _regions(a: Assessment) -> list[str]:
    return [region_line(a, name) for name in list(a.regions)[:_MAX_LINES]]


def _target(a: Assessment) -> str | None:
    return a.choice.target if a.choice is not None else None


def region_down_event(stack: str, a: Assessment, region: str, *, policy: str | None = None) -> Event:
    """A region the monitor now counts as down. The active one is ``critical`` (the stack is down until a
    failover); another one ``warning`` (a failover target lost while the stack still runs). ``details
    ["condition"]``: ``region_down``, or for the active region with nowhere to go ``all_regions_unhealthy`` /
    ``no_failover_target`` (with the reasons per region)."""
    active = region == a.active
    target = _target(a)
    condition = REGION_DOWN
    reasons: list[str] = []
    if not active:
        what = f"region {region} is down: no failover to it until it is back (active region {a.active} is up)"
    elif target is None:
        # The page of the run that sees the active region go down: it says there is nowhere to go (the
        # condition a receiver switches on), so no second page is needed for it.
        condition = ALL_REGIONS_UNHEALTHY if a.all_down else NO_FAILOVER_TARGET
        every = "every region is down (all_regions_unhealthy): " if a.all_down else ""
        what = f"{every}active region {region} is down and no region qualifies as a failover target"
        reasons = [f"{n}: {_one_line(r)}" for n, r in list((a.choice.reasons if a.choice else {}).items())]
    elif policy == "automatic":
        what = f"active region {region} is down: failing over to {target} (automatic policy)"
    elif policy == "manual":
        what = f"active region {region} is down: the failover to {target} waits for an operator's approval"
    else:
        what = f"active region {region} is down; failover target: {target}"
    details = {
        "condition": condition,
        "region": region_line(a, region),
        "active": a.active,
        "target": target if active else None,
        "policy": policy if active else None,
        "regions": _regions(a),
        "reasons": reasons[:_MAX_LINES],
    }
    return Event(
        activity="monitor",
        outcome="failure",
        stack=stack,
        title=f"{'Active region' if active else 'Region'} {region} DOWN on stack {stack}",
        summary=_one_line(f"stack {stack}: {what}", _LONG),
        subject=region,
        details=_present(details),
        severity="critical" if active else "warning",
    )


def region_up_event(stack: str, a: Assessment, region: str) -> Event:
    """A region healthy again: ``info``, a success (PagerDuty resolves the page its loss opened)."""
    health = a.regions[region]
    return Event(
        activity="monitor",
        outcome="success",
        stack=stack,
        title=f"Region {region} back up on stack {stack}",
        summary=f"stack {stack}: region {region} is healthy again (score {health.score:.2f})",
        subject=region,
        details={"condition": REGION_UP, "region": region_line(a, region), "active": a.active},
        severity="info",
    )


def region_change_events(stack: str, a: Assessment, *, policy: str | None = None) -> list[Event]:
    """One event per region that went down or came back in this run (``a.events``), in their order."""
    # Imported here: core.notify loads without the failover package (and its probes); an Assessment means
    # core.failover.monitor is loaded already.
    from core.failover.monitor import EVENT_DOWN

    return [
        region_down_event(stack, a, change["region"], policy=policy)
        if change["event"] == EVENT_DOWN
        else region_up_event(stack, a, change["region"])
        for change in a.events
    ]


def no_target_event(stack: str, a: Assessment) -> Event:
    """The active region is down and nowhere to go: every region down (``all_regions_unhealthy``) or none
    qualifying (lag beyond the allowed data loss, a priority excluded). ``critical``."""
    reasons = a.choice.reasons if a.choice is not None else {}
    condition = ALL_REGIONS_UNHEALTHY if a.all_down else NO_FAILOVER_TARGET
    what = "every region is down" if a.all_down else "no region qualifies as a failover target"
    why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
    summary = (
        f"stack {stack}: active region {a.active} is down and {what}" + (f" ({why})" if why else "") + "; restore "
        "a region's health, or 'genesis-dr failover run REGION \"REASON\" --force' if a region's lag is the only "
        "obstacle"
    )
    title = f"All regions unhealthy on stack {stack}" if a.all_down else f"No failover target for stack {stack}"
    return Event(
        activity="monitor",
        outcome="failure",
        stack=stack,
        title=title,
        summary=_one_line(summary, _LONG),
        subject=a.active,
        details=_present(
            {
                "condition": condition,
                "active": a.active,
                "regions": _regions(a),
                "reasons": [f"{n}: {_one_line(r)}" for n, r in list(reasons.items())[:_MAX_LINES]],
            }
        ),
        severity="critical",
    )


def approval_needed_event(
    stack: str, a: Assessment, *, epoch: int, plan_text: str | None = None, url: str | None = None
) -> Event:
    """The manual policy's page: the active region is down and the failover to ``a.choice.target`` waits for an
    operator (the paused monitor run's form). ``critical``; ``plan_text`` (the plan as printed) goes along."""
    target = _target(a)
    loss = a.choice.data_loss_s if a.choice is not None else None
    summary = (
        f"stack {stack}: active region {a.active} is down; approve the failover to {target} in the Prefect UI "
        f"(the paused monitor run) or decline it: nothing changes until then"
    )
    plan = [line for line in (plan_text or "").splitlines() if line.strip()]
    return Event(
        activity="monitor",
        outcome="failure",
        stack=stack,
        title=f"Failover of stack {stack} to {target} needs approval",
        summary=_one_line(summary, _LONG),
        subject=a.active,
        details=_present(
            {
                "condition": APPROVAL_NEEDED,
                "target": target,
                "epoch": epoch,
                "data loss": None if loss is None else f"up to {loss:g} s",
                "regions": _regions(a),
                "plan": [_one_line(line) for line in plan[: 2 * _MAX_LINES]],
            }
        ),
        url=url,
        severity="critical",
    )


def retention_event(stack: str, report: Mapping[str, Any] | None, error: BaseException | None = None) -> Event:
    """A retention sweep: what it deleted, archived and freed, or why it was refused (a policy that would delete
    every backup of a source, an unacknowledged audit alarm) or failed. Subject ``sweep``: the next sweep that
    passes resolves the page of a refused one."""
    data = dict(report or {})
    details: dict[str, Any] = {
        "deleted": len(data.get("deleted") or []),
        "archived": len(data.get("archived") or []),
        "certificates": len(data.get("certificates") or []),
        "freed": human_bytes(int(data.get("freed_bytes") or 0)),
    }
    for key in ("skipped_locked", "resumed"):
        if data.get(key):
            details[key] = list(data[key])[:_MAX_LINES]
    if data.get("refused"):
        details["refused"] = {k: _one_line(v) for k, v in dict(data["refused"]).items()}
    if data.get("audit_alarm"):
        details["audit_alarm"] = _one_line(data["audit_alarm"])
    ok = error is None
    if ok:
        summary = (
            f"deleted {details['deleted']} backup(s)/log range(s), archived {details['archived']}, freed "
            f"{details['freed']}"
        )
    else:
        summary = _one_line(error)
    return Event(
        activity="retention",
        outcome="success" if ok else "failure",
        stack=stack,
        title=f"Retention sweep {'done' if ok else 'REFUSED or FAILED'} on stack {stack}",
        summary=summary,
        subject="sweep",
        details=details,
        severity=None if ok else "error",
    )


def audit_event(stack: str, report: Mapping[str, Any] | None, error: BaseException | None = None) -> Event:
    """An audit-trail verification: a failure means an entry was edited, deleted, reordered or inserted (or the
    trail could not be read): it pages at ``critical``, since retention now refuses to delete."""
    data = dict(report or {})
    problems = [p.get("text", "") for p in (data.get("problems") or []) if isinstance(p, Mapping)]
    details: dict[str, Any] = {"entries": data.get("entries")}
    if problems:
        details["problems"] = [_one_line(p) for p in problems[:_MAX_LINES]]
    if data.get("pending_on_host"):
        details["pending_on_host"] = data["pending_on_host"]
    ok = error is None
    return Event(
        activity="audit",
        outcome="success" if ok else "failure",
        stack=stack,
        title=f"Audit trail {'verified' if ok else 'FAILED verification'} on stack {stack}",
        summary=f"{data.get('entries')} entries verified" if ok else _one_line(error),
        subject="trail",
        details=details,
        severity=None if ok else "critical",
    )
