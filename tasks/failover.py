"""Failover tasks: one call into core.failover each (assess, plan, execute), on the stack the run resolved once.

None of them is retried: a failover step that failed halfway must be looked at (its report says what state
each component is in), never run again blindly; a monitor that failed is simply run again by its schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import ConfigError
from core.failover.choose import State
from core.failover.health import Tracker
from core.failover.monitor import Assessment, assess
from core.failover.state import StateStore
from core.failover.topology import FailoverConfig
from core.stack import StackConfig
from tasks.run_stack import run_stack


def no_failover(stack: str) -> ConfigError:
    return ConfigError(
        f"stack '{stack}' has no 'failover:' section; add one (regions, policy, DNS: see examples/failover.yaml) "
        "and run 'genesis-dr apply' again"
    )


@dataclass(frozen=True)
class Opened:
    """A stack with failover, and its state store (in the stack's vault)."""

    config: StackConfig
    failover: FailoverConfig
    states: StateStore


def open_failover(config: StackConfig) -> Opened:
    """The failover part of ``config`` (ConfigError with the remedy when the stack has none)."""
    if config.failover is None:
        raise no_failover(config.stack)
    return Opened(config, config.failover, StateStore(config.vault.store(), config.failover))


def look(opened: Opened, *, record: bool) -> tuple[State, Assessment]:
    """Read the state and assess every region from its active region.

    ``record``: the monitor's own look; its tracker (consecutive failures) is loaded and saved back. Any other
    look (status, planning) works on a copy, so it never moves the monitor towards a failover.
    """
    state = opened.states.read()
    tracker = opened.states.load_tracker()
    if not record:
        tracker = Tracker.from_dict(tracker.to_dict())
    assessment = assess(opened.failover, tracker, active=state.active_region)
    if record:
        opened.states.save_tracker(tracker)
    return state, assessment


@task(name="failover-check-regions", cache_policy=NO_CACHE)
def check_regions(stack: str) -> dict[str, Any] | None:
    """The monitor's look: state + assessment (tracker saved); None for a stack without failover."""
    config = run_stack(stack).config
    if config.failover is None:
        return None
    state, assessment = look(open_failover(config), record=True)
    return {
        "state": state,
        "assessment": assessment,
        "policy": config.failover.policy,
        "interval": config.failover.check_interval_seconds,
    }


@task(name="failover-read-state", cache_policy=NO_CACHE)
def read_state(stack: str) -> State:
    """The failover state as the vault holds it now."""
    return open_failover(run_stack(stack).config).states.read()


@task(name="failover-refence", cache_policy=NO_CACHE)
def refence_returned(stack: str, state: State) -> list[dict]:
    """Fence again the databases of a region that was left at an earlier epoch and came back (core decides)."""
    from core.failover.run import refence_if_returned

    opened = open_failover(run_stack(stack).config)
    return [step.to_dict() for step in refence_if_returned(opened.failover, state)]


def _check_expected(state: State, expected_epoch: int | None) -> None:
    if expected_epoch is not None:
        state.check_epoch(expected_epoch)


@task(name="failover-plan", cache_policy=NO_CACHE)
def plan_failover_task(
    stack: str, target: str | None, reason: str, force: bool, expected_epoch: int | None
) -> dict[str, Any]:
    """The failover plan (pure in core) from the state and a fresh look at every region."""
    from core.failover.run import plan_failover

    opened = open_failover(run_stack(stack).config)
    state, assessment = look(opened, record=False)
    _check_expected(state, expected_epoch)
    plan = plan_failover(opened.failover, state, assessment, target, force=force, reason=reason)
    return {"state": state, "assessment": assessment, "plan": plan}


def _execute(stack: str, execute, plan: Any) -> dict[str, Any]:
    """Run ``execute`` on ``plan``; the report and the events core asked to notify (the flow sends them: a task
    must not fail for a receiver). A stopped run's error carries the events too (``events``)."""
    opened = open_failover(run_stack(stack).config)
    events: list[dict[str, Any]] = []
    try:
        report = execute(opened.failover, plan, opened.states, notify=events.append)
    except Exception as exc:
        exc.events = events  # type: ignore[attr-defined] - kept by DRError.__reduce__ across the task boundary
        raise
    return {"report": report, "events": events}


@task(name="failover-execute", cache_policy=NO_CACHE)
def execute_failover_task(stack: str, plan: Any) -> dict[str, Any]:
    """Run the plan exactly as printed (the epoch is claimed first); the report (also kept in the vault)."""
    from core.failover.run import execute_failover

    return _execute(stack, execute_failover, plan)


@task(name="failback-plan", cache_policy=NO_CACHE)
def plan_failback_task(stack: str, reason: str, expected_epoch: int | None) -> dict[str, Any]:
    """The failback plan (pure in core) from the state and a fresh look at every region."""
    from core.failover.failback import plan_failback

    opened = open_failover(run_stack(stack).config)
    state, assessment = look(opened, record=False)
    _check_expected(state, expected_epoch)
    plan = plan_failback(opened.failover, state, assessment, reason)
    return {"state": state, "assessment": assessment, "plan": plan}


@task(name="failback-execute", cache_policy=NO_CACHE)
def execute_failback_task(stack: str, plan: Any) -> dict[str, Any]:
    """Rebuild the primary region as a replica, then switch back to it with no data loss; the report."""
    from core.failover.failback import execute_failback

    return _execute(stack, execute_failback, plan)
