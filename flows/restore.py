"""restore: plan, refuse or take a rollback point, restore, verify."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from core import cancel
from core.errors import TargetNotEmptyError
from core.operations import render_report
from core.plan import render_plan
from tasks.restore import plan_restore_task, restore_backup_task


@flow(name="restore", log_prints=True)
def restore(
    source: str,
    stack: str = "default",
    backup_id: str | None = None,
    target_time: datetime | None = None,
    target: dict[str, str | int] | None = None,
    target_source: str | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> dict:
    """Restore a backup of ``source`` (by id, or the newest at/before ``target_time``).

    ``target`` overrides non-secret connection fields (e.g. ``{"database": "app_copy"}``);
    ``target_source`` restores into another source of the stack. A target holding
    data is refused unless ``force``, which takes a rollback backup first.
    """
    plan = plan_restore_task(stack, source, backup_id, target_time, target, target_source, force)
    create_markdown_artifact(f"```\n{render_plan(plan)}\n```", key="restore-plan", description="What this restore does")
    if dry_run:
        return {"plan": plan, "dry_run": True}
    if plan["refusal"]:
        raise TargetNotEmptyError(
            f"restore target {plan['target']} already holds data; choose an empty target, or pass --force (a rollback backup of the target is taken first)"
        )
    with cancel.stop_on_signals(print):  # an interrupted restore stops before its swap (see core.cancel)
        report = restore_backup_task(stack, source, plan["backup_id"], target, target_source, force)
    create_markdown_artifact(
        f"```\n{render_report(report)}\n```",
        key="restore-report",
        description="Restore outcome, verification, and every object not restored exactly as backed up",
    )
    return {"plan": plan, "report": report, "dry_run": False}
