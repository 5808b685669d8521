"""monitor: look at every region of a stack once (the deployment runs it every minute) and act on a down one.

Each run probes every region, counts consecutive failures (the tracker kept in the vault), emits a Prefect
event per region (its score and lag, as a metric) and one when a region goes down or comes back, and keeps
a table artifact. When the active region is down: the automatic policy fails over at once; the manual
policy pages and pauses for an operator's approval (the plan in the form) before it does.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from core.errors import DRError, NoHealthyRegionError, StaleEpochError
from core.failover.choose import State
from core.failover.monitor import EVENT_DOWN, Assessment
from core.notify.reports import approval_needed_event, no_target_event, region_change_events
from flows.failover import failover, publish_state, variable_name
from flows.notifying import announce
from tasks.failover import check_regions, plan_failover_task, read_state, refence_returned
from tasks.policy import seconds_from_env

EVENT_HEALTH = "genesis-dr.region.health"
# How long a paused monitor waits for the operator (then it ends, and the next run asks again) and how often it
# looks for the answer.
APPROVAL_TIMEOUT = int(seconds_from_env("GENESIS_DR_APPROVAL_TIMEOUT", 3600, minimum=1))
APPROVAL_POLL = seconds_from_env("GENESIS_DR_APPROVAL_POLL", 5, minimum=0.1)
# How long an automatic failover run started from the monitor's deployment is waited for.
FAILOVER_WAIT = seconds_from_env("GENESIS_DR_FAILOVER_WAIT", 1800, minimum=1)
FAILOVER_DEPLOYMENT = "failover/failover"


class FailoverApproval(RunInput):
    """The form the Prefect UI shows on a monitor paused for a failover (the plan is in its description)."""

    approve: bool = Field(
        default=False,
        description="Fail over as the plan says. Leave unticked and resume to decline: nothing is changed "
        "(the next monitor run asks again while the region stays down).",
    )
    reason: str = Field(default="", description="Recorded with the new epoch and in the failover report.")


def _resource(stack: str, region: str) -> dict[str, str]:
    return {
        "prefect.resource.id": f"genesis-dr.region.{stack}.{region}",
        "prefect.resource.name": region,
        "genesis-dr.stack": stack,
    }


def emit_region_events(stack: str, a: Assessment) -> list[str]:
    """One health event per region (score, lag, verdict: the metric), one per region that went down/up."""
    emitted: list[str] = []
    for name, health in a.regions.items():
        state = a.states[name]
        payload = {
            "score": health.score,
            "healthy": health.healthy,
            "down": state.down,
            "consecutive_failures": state.consecutive_failures,
            "lag_s": health.lag_s,
            "lag_bytes": health.lag_bytes,
            "failed": health.failed,
            "active": name == a.active,
        }
        emit_event(EVENT_HEALTH, resource=_resource(stack, name), payload=payload)
        emitted.append(f"{EVENT_HEALTH}:{name}")
    for change in a.events:
        payload = {"score": change["score"], "active": change["region"] == a.active}
        emit_event(change["event"], resource=_resource(stack, change["region"]), payload=payload)
        emitted.append(f"{change['event']}:{change['region']}")
    return emitted


def _table(state: State, a: Assessment) -> list[dict[str, Any]]:
    rows = []
    for name, health in a.regions.items():
        down = a.states[name].down
        rows.append(
            {
                "region": name,
                "active": "yes" if name == a.active else "",
                "score": f"{health.score:.2f}",
                "status": "down" if down else ("healthy" if health.healthy else "unhealthy"),
                "lag_s": "-" if health.lag_s is None else f"{health.lag_s:g}",
                "lag_bytes": "-" if health.lag_bytes is None else str(health.lag_bytes),
                "failures": a.states[name].consecutive_failures,
                "failed checks": ", ".join(health.failed) or "-",
                "epoch": state.epoch,
            }
        )
    return rows


def _run_url() -> str | None:
    try:
        from prefect.runtime import flow_run

        return flow_run.ui_url
    except Exception:  # noqa: BLE001 - no UI URL configured: the page goes without a link
        return None


def _from_deployment() -> bool:
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def _deployed(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def _pending_approval(stack: str) -> str | None:
    """The name of another monitor run of ``stack`` paused for a failover decision, if any."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    context = FlowRunContext.get()
    me = context.flow_run.id if context and context.flow_run else None
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["monitor"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
        )
    for run in runs:
        if run.id != me and (run.parameters or {}).get("stack", "default") == stack:
            return run.name
    return None


def _fail_over(stack: str, target: str, reason: str, epoch: int, via: str) -> dict[str, Any]:
    """Run the failover: its deployment when this monitor runs from one (its own run, limits and logs), else
    in this process as a subflow (a monitor started by hand or in a test)."""
    # dry_run given: the deployment's own default is a dry run (a run started from the UI only shows its plan).
    parameters = {"stack": stack, "target": target, "reason": reason, "expected_epoch": epoch, "dry_run": False}
    if via == "deployment" or (via == "auto" and _from_deployment() and _deployed(FAILOVER_DEPLOYMENT)):
        from prefect.deployments import run_deployment

        # Polled every second (the default is 5): the failover's end is the monitor's news.
        run = run_deployment(
            FAILOVER_DEPLOYMENT, parameters=parameters, timeout=FAILOVER_WAIT, poll_interval=1, as_subflow=True
        )
        if run.state is None or not run.state.is_completed():
            state = run.state.name if run.state else "not started"
            message = run.state.message if run.state and run.state.message else "see its logs and report"
            raise DRError(
                f"the failover run {run.name} ({FAILOVER_DEPLOYMENT}) is {state}: {message}; "
                f"'genesis-dr failover status --stack {stack}' shows where the stack stands"
            )
        return {"flow_run": run.name, "state": run.state.name}
    return failover(**parameters)


def _ask(stack: str, a: Assessment, plan_text: str, reason: str, epoch: int) -> FailoverApproval | None:
    """Page, then pause for an operator's decision; None when no answer came in time."""
    from prefect.exceptions import FlowPauseTimeout

    target = a.choice.target
    announce(stack, approval_needed_event(stack, a, epoch=epoch, plan_text=plan_text, url=_run_url()))
    get_run_logger().warning(
        "active region %s is down: paused for approval of the failover to %s (Resume in the Prefect UI with approve "
        "ticked, or leave it unticked to decline); unanswered after %ss nothing changes",
        a.active,
        target,
        APPROVAL_TIMEOUT,
    )
    form = FailoverApproval.with_initial_data(
        description=(
            f"### Fail stack {stack} over to {target}?\n\n"
            f"```\n{plan_text}\n```\n\n"
            f"Tick **approve** to fail over exactly as planned (at epoch {epoch}: if the state moved meanwhile it is "
            "refused); leave it unticked to decline."
        ),
        approve=False,
        reason=reason,
    )
    try:
        return pause_flow_run(
            wait_for_input=form, timeout=APPROVAL_TIMEOUT, poll_interval=APPROVAL_POLL, key="failover-approval"
        )
    except FlowPauseTimeout:
        return None


@flow(name="monitor", log_prints=True)
def monitor(
    stack: str = "default",
    failover_via: Literal["auto", "deployment", "subflow"] = "auto",
    window_seconds: float = 0,
) -> dict:
    """Look at every region of ``stack`` and act when its active region is down.

    ``window_seconds``: keep looking every ``check_interval_seconds`` of the stack for this long (the
    deployment runs every minute with a window of 45 s, so an interval of 15 s looks 4 times a run and
    a region is down after ``failures_before_down`` looks, not minutes); 0 looks once. The run ends at the
    first look that acts. The result is that of the last look, with ``looks`` counted.
    """
    started = time.monotonic()
    looks = 0
    while True:
        looked = time.monotonic()
        out = _look(stack, failover_via)
        looks += 1
        interval = out.pop("interval", None)
        if out["action"] != "none" or not out["configured"] or interval is None:
            break
        # The next look starts one interval after this one started, and only inside the window.
        if (looked - started) + interval > window_seconds:
            break
        time.sleep(max(0.0, interval - (time.monotonic() - looked)))
    out["looks"] = looks
    return out


def _look(stack: str, failover_via: str) -> dict:
    """Check every region of ``stack`` once and act when its active region is down.

    Nothing to do for a stack without ``failover:``. Active region down (``failures_before_down`` runs in a
    row): policy ``automatic`` fails over to the chosen region; ``manual`` pages and pauses for approval (a
    form with the plan; declined or unanswered: nothing changes, the next run asks again). Every region down:
    page, and the run fails (NoHealthyRegionError, exit 26). The state moved while this run looked: no action,
    StaleEpochError (exit 24). ``failover_via``: ``auto`` runs the failover deployment when this monitor runs
    from a deployment and that one exists, else a subflow.
    """
    logger = get_run_logger()
    seen = check_regions(stack)
    if seen is None:
        logger.info("stack %s has no 'failover:' section: nothing to monitor", stack)
        return {"stack": stack, "configured": False, "action": "none"}
    state: State = seen["state"]
    a: Assessment = seen["assessment"]
    out: dict[str, Any] = {
        "stack": stack,
        "configured": True,
        "state": state.to_dict(),
        "assessment": a.to_dict(),
        "events": emit_region_events(stack, a),
        "action": "none",
        "interval": seen["interval"],
    }
    create_table_artifact(_table(state, a), key="failover-monitor", description=f"Regions of {stack}")
    _mirror(stack, state)
    out["refenced"] = refence_returned(stack, state)
    _tell_changes(stack, a, seen["policy"])
    if not a.active_down:
        logger.info("active region %s is up (epoch %d)", a.active, state.epoch)
        return out
    if a.choice is None or a.choice.target is None:
        raise _no_target(stack, a)
    if read_state(stack).epoch != state.epoch:
        raise StaleEpochError(
            f"stack {stack}: the failover state moved while this monitor looked (it read epoch {state.epoch}); "
            "no action: the next run decides on the new state"
        )
    target = a.choice.target
    reason = f"monitor: region {a.active} down ({', '.join(a.regions[a.active].failed) or 'unhealthy'})"
    if seen["policy"] == "automatic":
        logger.warning("active region %s is down: failing over to %s (automatic policy)", a.active, target)
        out["action"] = "failover"
        out["failover"] = _fail_over(stack, target, reason, state.epoch, failover_via)
        return out
    pending = _pending_approval(stack)
    if pending is not None:
        logger.warning("active region %s is down; a failover approval is already waiting in run %s", a.active, pending)
        out["action"] = "approval pending"
        return out
    out["plan_text"] = plan_failover_task(stack, target, reason, False, state.epoch)["plan"].render()
    decision = _ask(stack, a, out["plan_text"], reason, state.epoch)
    if decision is None or not decision.approve:
        out["action"] = "declined" if decision is not None else "unanswered"
        _record_decision(stack, out["plan_text"], f"failover to {target} {out['action']}: nothing was changed")
        return out
    why = decision.reason.strip() or reason
    _record_decision(stack, out["plan_text"], f"failover to {target} approved: {why}")
    out["action"] = "failover"
    out["failover"] = _fail_over(stack, target, f"approved: {why}", state.epoch, failover_via)
    return out


def _tell_changes(stack: str, a: Assessment, policy: str) -> None:
    """Log and notify each region that went down (the active one pages) or came back (resolves that page)."""
    logger = get_run_logger()
    for change in a.events:
        word = "DOWN" if change["event"] == EVENT_DOWN else "back up"
        logger.warning("region %s is %s (score %.2f)", change["region"], word, change["score"])
    for event in region_change_events(stack, a, policy=policy):
        announce(stack, event)


def _no_target(stack: str, a: Assessment) -> NoHealthyRegionError:
    """The active region is down and nowhere qualifies. Paged when it comes about, not every minute after: the
    active region's own down event says so when it is this run's news; another region lost now gets its page."""
    event = no_target_event(stack, a)
    news = {c["region"] for c in a.events if c["event"] == EVENT_DOWN}
    if news and a.active not in news:
        announce(stack, event)
    return NoHealthyRegionError(event.summary)


def _record_decision(stack: str, plan_text: str, decision: str) -> None:
    get_run_logger().warning("%s", decision)
    create_markdown_artifact(
        f"**{decision}**\n\n```\n{plan_text}\n```", key="failover-decision", description=f"Failover decision, {stack}"
    )


def _mirror(stack: str, state: State) -> None:
    """Keep the state variable in step with the vault (first run, or a change made elsewhere)."""
    from prefect.variables import Variable

    try:
        if Variable.get(variable_name(stack), default=None) != state.to_dict():
            publish_state(stack, state)
    except Exception as exc:  # noqa: BLE001 - the vault holds the state; the variable is only its mirror
        get_run_logger().warning("failover state variable of %s not updated: %s", stack, type(exc).__name__)
