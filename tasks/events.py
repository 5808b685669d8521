"""Prefect events of our own, for automations (deployments/automations.py) and deployment triggers."""

from __future__ import annotations

import logging

BACKUP_COMPLETED = "genesis-dr.backup.completed"


def _logger():
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow or task run (MissingContextError): the warning must not raise either
        return logging.getLogger("genesis_dr.events")


def emit_backup_completed(stack: str, source: str, backup_type: str, backup_id: str) -> None:
    """Announce a committed backup: ``genesis-dr.backup.completed`` on resource ``genesis-dr.source.<stack>.<source>``
    (the proactive "backup overdue" automation counts these). Never raises: the backup is already committed, and
    a lost event at worst pages about a backup that exists; the failure is logged as a warning."""
    try:
        from prefect.events import emit_event

        emit_event(
            event=BACKUP_COMPLETED,
            resource={
                "prefect.resource.id": f"genesis-dr.source.{stack}.{source}",
                "prefect.resource.name": source,
                "genesis-dr.stack": stack,
                "genesis-dr.backup-type": backup_type,
                "genesis-dr.backup-id": backup_id,
            },
            related=[
                {"prefect.resource.id": f"genesis-dr.stack.{stack}", "prefect.resource.role": "stack"},
            ],
        )
    except Exception as exc:  # an event must never fail a committed backup
        _logger().warning(
            "could not emit %s for %s backup %.80s of %s: %s: %.300s",
            BACKUP_COMPLETED,
            backup_type,
            backup_id,
            source,
            type(exc).__name__,
            exc,
        )
