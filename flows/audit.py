"""audit-verify: prove the stack's audit trail complete and unaltered, and raise the alarm when it is not."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from core.errors import DRError
from core.notify.reports import audit_event
from flows.notifying import announce
from tasks.retention import verify_audit_task
from tasks.scheduling import defer_if_needed


def publish(stack: str, report: dict | None) -> None:
    if not report:
        return
    text = report.get("text", "")
    create_markdown_artifact(f"```\n{text}\n```", key="audit-verify", description=f"Audit trail of {stack}")
    get_run_logger().info("audit trail:\n%s", text)


@flow(name="audit-verify", log_prints=True)
def audit_verify(stack: str = "default") -> dict:
    """Verify the audit trail of the stack's vault: every entry's signature, the hash chain from the first
    entry to the head, and the head against each replica's copy, so an edited, deleted, reordered or inserted
    entry is found and named.

    A problem not yet acknowledged writes an alarm into the vault (``audit/alarm.json``): every retention run
    refuses to delete until an admin acknowledges it ('genesis-dr audit acknowledge'). The run then ends
    Failed with exit 32.
    """
    # Listed in operations.heavy_jobs (not by default), it waits out maintenance windows and busy hosts.
    deferred = defer_if_needed(stack, "audit_verify")
    if deferred is not None:
        return deferred
    try:
        report = verify_audit_task(stack)
    except Exception as exc:
        report = getattr(exc, "report", None) if isinstance(exc, DRError) else None
        publish(stack, report)
        # A failed verification already wrote its alarm (and an audit.alarm entry): page, record nothing more.
        announce(stack, audit_event(stack, report, exc), record=False)
        raise
    publish(stack, report)
    announce(stack, audit_event(stack, report), record=False)
    return report
