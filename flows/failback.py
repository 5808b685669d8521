"""failback: bring a stack back to its primary region after a failover, with no data loss."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from core.errors import ConfigError, DRError
from flows.failover import finish, render_report
from tasks.failover import execute_failback_task, plan_failback_task

KEY = "failback-report"


@flow(name="failback", log_prints=True)
def failback(
    stack: str = "default",
    reason: str = "",
    dry_run: bool = False,
    expected_epoch: int | None = None,
) -> dict:
    """Return the stack to its primary region (the highest-priority one) for ``reason``.

    The old primary's databases are first rebuilt as replicas of the current primary and caught up; then a
    planned switchover with zero data loss: fence the current primary, wait until the primary region replayed
    everything, promote it, prove it takes writes, repoint the other regions, switch DNS back, record the
    state. Refused when the stack is already in its primary region or that region is unhealthy (apart from
    being a replica). ``dry_run`` shows the plan and changes nothing. ``expected_epoch``: refuse (exit 24) if the
    state moved since the caller read it. Report, artifact, notification and state variable as for failover.
    """
    if not reason.strip():
        raise ConfigError("failback: give the reason (it is recorded with the new epoch and in the report)")
    logger = get_run_logger()
    planned = plan_failback_task(stack, reason.strip(), expected_epoch)
    plan, state = planned["plan"], planned["state"]
    text = plan.render()
    create_markdown_artifact(f"```\n{text}\n```", key="failback-plan", description=f"Failback plan of {stack}")
    logger.info("plan:\n%s", text)
    out: dict[str, Any] = {
        "stack": stack,
        "dry_run": dry_run,
        "plan": plan.to_dict(),
        "plan_text": text,
        "state": state.to_dict(),
    }
    if dry_run:
        logger.info("dry run: nothing was changed")
        return out
    try:
        done = execute_failback_task(stack, plan)
    except DRError as exc:
        exc.report = finish(stack, "failback", getattr(exc, "report", None), getattr(exc, "events", []), KEY)
        raise
    out["report"] = finish(stack, "failback", done["report"], done["events"], KEY)
    out["report_text"] = render_report(done["report"])
    return out
