"""failover: move a stack's databases, RDS and DNS to another region, as planned, with a report."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from core.errors import ConfigError, DRError
from core.failover.choose import State
from core.notify.reports import event_from_dict
from flows.notifying import announce
from tasks.failover import execute_failover_task, plan_failover_task, read_state


def variable_name(stack: str) -> str:
    """The Prefect variable that mirrors the stack's failover state (the vault holds the authoritative copy)."""
    return f"genesis-dr-failover-{stack}"


def publish_state(stack: str, state: State) -> None:
    """Mirror ``state`` into the stack's Prefect variable, so the UI and automations see the active region."""
    from prefect.variables import Variable

    Variable.set(variable_name(stack), state.to_dict(), overwrite=True)


def as_dict(report: Any) -> dict[str, Any] | None:
    if report is None or isinstance(report, dict):
        return report
    return report.to_dict()


def render_report(report: Any) -> str:
    """The report as markdown (core renders it), whether the report object or its dict (a stopped run's error)."""
    from core.failover.report import FailoverReport

    if report is None:
        return "no report: the run stopped before it claimed the epoch (nothing was changed)"
    if isinstance(report, dict):
        report = FailoverReport.from_dict(report)
    return report.render()


def finish(stack: str, what: str, report: Any, events: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """After an execution (done or stopped): the report artifact, the state variable, the notifications core
    asked for (a stopped run or a failed DNS switch pages)."""
    if report is not None:
        create_markdown_artifact(render_report(report), key=key, description=f"{what} report of {stack}")
    try:
        publish_state(stack, read_state(stack))
    except Exception as exc:  # noqa: BLE001 - the vault holds the state; the variable is only its mirror
        get_run_logger().warning("failover state variable of %s not updated: %s", stack, type(exc).__name__)
    for event in events:
        announce(stack, event_from_dict(stack, event))
    return as_dict(report)


def show_then_run(stack: str, what: str, planned: dict[str, Any], dry_run: bool, execute) -> dict:
    """The flow's part after planning, shared by failover and failback (``what``): show the plan (artifact, log),
    then unless ``dry_run`` run it with ``execute`` and finish (report artifact, state variable, notifications),
    also when it stops with an error."""
    logger = get_run_logger()
    plan, state = planned["plan"], planned["state"]
    text = plan.render()
    create_markdown_artifact(
        f"```\n{text}\n```", key=f"{what}-plan", description=f"{what.capitalize()} plan of {stack}"
    )
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
    key = f"{what}-report"
    try:
        done = execute(stack, plan)
    except DRError as exc:
        exc.report = finish(stack, what, getattr(exc, "report", None), getattr(exc, "events", []), key)
        raise
    out["report"] = finish(stack, what, done["report"], done["events"], key)
    out["report_text"] = render_report(done["report"])
    return out


@flow(name="failover", log_prints=True)
def failover(
    stack: str = "default",
    target: str | None = None,
    reason: str = "",
    dry_run: bool = False,
    force: bool = False,
    expected_epoch: int | None = None,
) -> dict:
    """Fail the stack over to ``target`` (default: the highest-priority healthy region within the allowed data
    loss), for ``reason`` (recorded with the new epoch and in the report).

    The plan is made from a fresh look at every region: fence the old primary's databases (when reachable),
    wait for the target to replay what it received, promote its databases (and RDS), prove they take writes,
    repoint the other regions' replicas, switch DNS, record the new state. ``dry_run`` shows the plan and
    changes nothing; otherwise the plan runs exactly as shown. ``force`` takes a target that lags beyond
    ``max_data_loss_seconds`` (never an unhealthy one) or an operation left in progress by a dead run.
    ``expected_epoch``: refuse (StaleEpochError, exit 24) if the state moved since the caller read it.
    The report is kept in the vault (failover/reports/), shown as an artifact and notified; the Prefect
    variable ``genesis-dr-failover-<stack>`` mirrors the state.
    """
    if not reason.strip():
        raise ConfigError("failover: give the reason (it is recorded with the new epoch and in the report)")
    planned = plan_failover_task(stack, target, reason.strip(), force, expected_epoch)
    return show_then_run(stack, "failover", planned, dry_run, execute_failover_task)
