"""Retention, hold, erasure and audit tasks: one call into core each (core.retention, core.audit).

Core is imported inside each task: ``prefect deploy`` imports the flow modules to read their
parameters, and must not need more of the project than the flow's signature.
"""

from __future__ import annotations

import dataclasses
import getpass
import socket
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import DRError
from tasks.limits import exclusive
from tasks.policy import task_options
from tasks.run_stack import run_stack


def operator() -> str:
    """Who acts (``user@host``): recorded as a hold's creator; the audit entry records its own actor."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def replica_stores(config) -> list[tuple[str, Any]]:
    """(name, store) of every replica of the stack's vault: deletions, holds and audit checks reach them all."""
    return [(r.name, config.vault_named(r.name).store()) for r in config.replicas]


def hold_dict(hold) -> dict:
    """A hold as JSON-able data (its scope as the operator gave it, its state)."""
    data = {f.name: getattr(hold, f.name) for f in dataclasses.fields(hold) if f.name != "scope"}
    data["scope"] = hold.scope.model_dump(exclude_defaults=True)
    data["active"] = hold.active
    return data


def report_text(report: dict) -> str:
    """The lines of a run's report kept as data on its error (the report object itself is gone by then)."""
    lines = [f"deleted {len(report.get('deleted') or [])} item(s): {', '.join(report.get('deleted') or []) or 'none'}"]
    lines.append(f"archived {len(report.get('archived') or [])}: {', '.join(report.get('archived') or []) or 'none'}")
    if report.get("skipped_locked"):
        lines.append(f"left for later (object lock): {', '.join(report['skipped_locked'])}")
    lines += [f"REFUSED {source}: {why}" for source, why in sorted((report.get("refused") or {}).items())]
    if report.get("audit_alarm"):
        lines.append(f"NO DELETION: {report['audit_alarm']}")
    return "\n".join(lines)


def _attach(exc: DRError, report: Any) -> None:
    """Keep a refused or failed run's report on its error as data (the command prints it before the line)."""
    if report is not None and not isinstance(report, dict):
        report = report.to_dict() | {"text": report.text()}
    if isinstance(report, dict) and "text" not in report:
        report = report | {"text": report_text(report)}
    exc.report = report


def retention_limit(stack: str) -> str:
    """One retention run of a stack at a time, whichever started it (deployment, command, UI)."""
    return f"genesis-dr-retention-{stack}"


# Never cached: a retention sweep decides from the vault as it is now.
@task(name="run-retention", cache_policy=NO_CACHE, **task_options("backup"))
def run_retention_task(stack: str, dry_run: bool = False) -> dict:
    """Plan the stack's retention and (unless ``dry_run``) carry it out; returns the report (``text`` included).

    A refusal (a policy that would delete every backup of a source, an unacknowledged audit alarm) is a
    RetentionRefusedError (exit 30) carrying the report: the other sources were still handled.
    """
    from core.retention.run import run_retention

    config = run_stack(stack).config
    if dry_run:  # a plan only: writes nothing, so it needs no turn
        report = run_retention(config, dry_run=True, say=print)
    else:
        with exclusive(retention_limit(config.stack), f"retention of stack {config.stack}"):
            try:
                report = run_retention(config, dry_run=False, say=print)
            except DRError as exc:
                _attach(exc, getattr(exc, "report", None))
                raise
    return report.to_dict() | {"text": report.text()}


@task(name="create-hold", cache_policy=NO_CACHE, **task_options("plan"))
def create_hold_task(stack: str, name: str, reason: str, scope: str, contact: str, creator: str) -> dict:
    """Record a legal hold over what ``scope`` (JSON text) covers; HoldError (exit 29) if it is malformed or
    covers nothing in the vault."""
    from core.retention.catalog import read_catalog
    from core.retention.holds import HoldBook
    from core.retention.scope import parse_scope

    config = run_stack(stack).config
    parsed = parse_scope(scope)  # a malformed scope is refused before the vault is read
    vault = config.vault.open()
    hold = HoldBook(vault.store).create(
        name=name,
        reason=reason,
        scope=parsed,
        contact=contact,
        creator=creator,
        catalog=read_catalog(vault, config),
        signer=config.signing.host_key(),
    )
    return hold_dict(hold)


@task(name="release-hold", cache_policy=NO_CACHE, **task_options("plan"))
def release_hold_task(stack: str, hold_id: str, reason: str) -> dict:
    """Release a hold with the admin key (SigningKeyError, exit 33, where there is none); HoldError if the hold
    is unknown or already released."""
    from core.retention.holds import HoldBook

    config = run_stack(stack).config
    admin = config.signing.admin_key("hold release")
    hold = HoldBook(config.vault.open().store).release(
        hold_id, reason=reason, admin_key=admin, admins=config.signing.admin_public_keys
    )
    return hold_dict(hold)


@task(name="apply-object-holds", cache_policy=NO_CACHE, **task_options("plan"))
def apply_object_holds_task(stack: str) -> dict:
    """Object Lock legal holds (S3) / event-based holds (GCS) on every object an active hold covers, in the
    vault and its replicas; off where no active hold covers an object any more. Stores without object locks
    (a local vault) keep the holds as records only: retention reads them before deleting anything."""
    from core.retention.catalog import read_catalog
    from core.retention.holds import HoldBook, apply_object_holds

    config = run_stack(stack).config
    vault = config.vault.open()
    holds = HoldBook(vault.store).list(config.signing.admin_public_keys)  # released ones too: their locks lifted
    return apply_object_holds(vault, replica_stores(config), holds, read_catalog(vault, config))


@task(name="apply-erasure", cache_policy=NO_CACHE, **task_options("backup"))
def apply_erasure_task(stack: str, request_id: str, dry_run: bool = False) -> dict:
    """Apply a recorded GDPR erasure request (by id: the subject itself never reaches a parameter or a log)."""
    from core.retention.erasure import apply_erasure

    config = run_stack(stack).config
    return apply_erasure(config, request_id, dry_run=dry_run, say=print)


@task(name="verify-audit-trail", cache_policy=NO_CACHE, **task_options("plan"))
def verify_audit_task(stack: str) -> dict:
    """Verify the stack's audit trail (the primary's, checked against each replica's head); on a problem not
    yet acknowledged, raise the alarm in the vault (retention deletes nothing until an admin acknowledges it)
    and fail with AuditTrailError (exit 32) carrying the report."""
    from core.audit.verify import raise_alarm, verify_trail

    config = run_stack(stack).config
    store = config.vault.store()
    report = verify_trail(
        store,
        config.signing.trusted(),
        replicas=replica_stores(config),
        admins=config.signing.admin_public_keys,
        checkpoint_signer=config.signing.host_key(),  # a passing full check lets retention verify from here on
    )
    data = report.to_dict() | {"text": report.text()}
    if not report.ok:
        raise_alarm(store, report, config.signing.host_key())
        try:
            report.raise_if_failed()
        except DRError as exc:
            exc.report = data
            raise
    return data
