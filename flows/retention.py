"""retention: expire, archive and securely delete a stack's backups by its policy, with a report."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from core.errors import DRError
from core.notify.reports import retention_event
from flows.notifying import announce
from tasks.retention import run_retention_task
from tasks.scheduling import defer_if_needed


def publish_report(stack: str, report: dict | None, dry_run: bool) -> None:
    """The run's report (what was kept and why, deleted, archived, held, refused) as an artifact and in the log."""
    if not report:
        return
    text = report.get("text", "")
    what = "Retention plan (dry run)" if dry_run else "Retention report"
    create_markdown_artifact(
        f"```\n{text}\n```", key="retention-plan" if dry_run else "retention-report", description=f"{what} of {stack}"
    )
    get_run_logger().info("%s:\n%s", what.lower(), text)


@flow(name="retention", log_prints=True)
def retention(stack: str = "default", dry_run: bool = False) -> dict:
    """Apply the stack's retention policy to its vault (and replicas), as the plan decides for every backup and
    log range, with the reason for each:

    1. finish any deletion a killed run left marked (``retention/deleting/``), with its certificate;
    2. put Object Lock legal holds on every object a legal hold covers (S3, GCS), lift released ones;
    3. move backups past ``archive_after`` to their colder class or archive vault (still listed, restorable);
    4. delete what the policy expires: crypto-shred every wrapped data key (every replica), then the objects
       (overwritten first on a local vault); one signed certificate and one audit entry per deletion.

    Never deleted: anything under a legal hold, anything a kept backup or the point-in-time window depends on,
    the newest valid backup of a source, anything younger than its data classes' compliance minimum.
    ``dry_run`` plans only and writes nothing. The run ends Failed with exit 30 when a source's policy would
    delete all its backups (that source is left alone, the others proceed) or an audit alarm is
    unacknowledged (nothing deleted until 'genesis-dr audit acknowledge').
    """
    # From a deployment, inside a maintenance window or on a busy host the run ends Scheduled for later.
    deferred = defer_if_needed(stack, "retention")
    if deferred is not None:
        return deferred
    try:
        report = run_retention_task(stack, dry_run)
    except Exception as exc:
        publish_report(stack, getattr(exc, "report", None) if isinstance(exc, DRError) else None, dry_run)
        # The sweep's own audit entries are written by core (retention.run, retention.delete): notify only.
        announce(stack, retention_event(stack, getattr(exc, "report", None), exc), record=False)
        raise
    publish_report(stack, report, dry_run)
    if not dry_run:  # a plan changes nothing: no one needs telling
        announce(stack, retention_event(stack, report), record=False)
    return report
