"""failback: bring a stack back to its primary region after a failover, with no data loss."""

from __future__ import annotations

from prefect import flow

from core.errors import ConfigError
from flows.failover import show_then_run
from tasks.failover import execute_failback_task, plan_failback_task


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
    planned = plan_failback_task(stack, reason.strip(), expected_epoch)
    return show_then_run(stack, "failback", planned, dry_run, execute_failback_task)
