"""restore: plan, (approve,) refuse or take a rollback point, restore, verify."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled
from pydantic import Field

from core import cancel
from core.errors import TargetNotEmptyError
from core.operations import render_report
from core.plan import render_plan
from tasks.policy import seconds_from_env
from tasks.restore import plan_restore_task, restore_backup_task

# How long a paused restore waits for an operator's decision before the run fails (nothing changed).
APPROVAL_TIMEOUT = int(seconds_from_env("GENESIS_DR_APPROVAL_TIMEOUT", 3600, minimum=1))


class RestoreApproval(RunInput):
    """The form the Prefect UI shows on a paused restore."""

    approve: bool = Field(
        default=False,
        description="Restore over the target's data (a rollback backup of it is taken first). "
        "Leave unticked and resume to abort: nothing is changed.",
    )


def _from_deployment() -> bool:
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def _approved(plan: dict, approval: str) -> bool:
    """Pause for an operator's decision in the Prefect UI unless this run needs none."""
    if approval == "skip" or (approval == "auto" and not _from_deployment()):
        return True  # the CLI's own --force is the operator's explicit confirmation
    logger = get_run_logger()
    logger.warning(
        "restore over %s, which holds data: paused for approval (Resume in the Prefect UI, approve ticked; "
        "or leave it unticked to abort); it fails unresumed after %ss",
        plan["target"],
        APPROVAL_TIMEOUT,
    )
    form = RestoreApproval.with_initial_data(
        description=(
            "### Restore over a target that holds data\n\n"
            f"```\n{render_plan(plan)}\n```\n\n"
            "Tick **approve** to restore (a rollback backup of the target is taken first and named in the report); "
            "leave it unticked to abort with nothing changed."
        ),
        approve=False,
    )
    decision = pause_flow_run(wait_for_input=form, timeout=APPROVAL_TIMEOUT, poll_interval=5, key="restore-approval")
    logger.info("restore over %s %s by the operator", plan["target"], "approved" if decision.approve else "declined")
    return decision.approve


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
    approval: Literal["auto", "required", "skip"] = "auto",
):
    """Restore a backup of ``source`` (by id, or the newest at/before ``target_time``).

    ``target`` overrides non-secret connection fields (e.g. ``{"database": "app_copy"}``);
    ``target_source`` restores into another source of the stack. A target holding
    data is refused unless ``force``, which takes a rollback backup first. A forced
    restore over data pauses for approval in the Prefect UI when ``approval`` is
    ``required``, or ``auto`` and the run was started from a deployment (the UI's run
    form, a schedule, ``prefect deployment run``); ``skip`` never pauses (configure it
    on a deployment meant to run unattended). Declined, the run ends Cancelled with
    nothing changed.
    """
    logger = get_run_logger()
    plan = plan_restore_task(stack, source, backup_id, target_time, target, target_source, force)
    create_markdown_artifact(f"```\n{render_plan(plan)}\n```", key="restore-plan", description="What this restore does")
    for line in render_plan(plan).splitlines():
        logger.info("plan: %s", line.strip())
    if dry_run:
        logger.info("dry run: nothing was changed")
        return {"plan": plan, "dry_run": True}
    if plan["refusal"]:
        raise TargetNotEmptyError(
            f"restore target {plan['target']} already holds data; choose an empty target, or pass --force (a rollback backup of the target is taken first)"
        )
    if plan["target_has_data"] and not _approved(plan, approval):
        return Cancelled(message=f"restore over {plan['target']} was not approved; nothing was changed")
    with cancel.stop_on_signals(print):  # an interrupted restore stops before its swap (see core.cancel)
        report = restore_backup_task(stack, source, plan["backup_id"], target, target_source, force)
    for line in render_report(report).splitlines():
        logger.info("%s", line)
    create_markdown_artifact(
        f"```\n{render_report(report)}\n```",
        key="restore-report",
        description="Restore outcome, verification, and every object not restored exactly as backed up",
    )
    return {"plan": plan, "report": report, "dry_run": False}
