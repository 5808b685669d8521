"""RTO and RPO measured by a drill, held against the stack's objectives: pure functions.

RTO is the wall time from the declared disaster to the last source verified; RPO is how much a
source lost (disaster time minus the newest point it was recovered to). A figure over its objective
is a failed critical check: the drill fails, with the figure, the objective and what to do.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.chains import parse_iso
from core.drills.record import seconds_text
from core.validation.results import CheckResult, not_checked


def rpo_seconds(disaster_time: datetime, recovery_point: str | None) -> float | None:
    """Seconds of writes lost: ``disaster_time - recovery_point`` (0 when recovered to the disaster
    itself); None when nothing was recovered."""
    if not recovery_point:
        return None
    if disaster_time.tzinfo is None:
        disaster_time = disaster_time.replace(tzinfo=UTC)
    return round(max(0.0, (disaster_time - parse_iso(recovery_point)).total_seconds()), 3)


def check_rto(rto_s: float, objective_s: float, *, vault: str = "primary", unrecovered: int = 0) -> CheckResult:
    """The whole stack's recovery time against ``objectives.rto_seconds``.

    ``unrecovered``: sources whose restore failed; their failure is its own check, and this one says
    the figure does not cover them (a stack with a source down is not recovered, whatever the time).
    """
    name = "RTO" if vault == "primary" else f"RTO from vault {vault}"
    short = f"; {unrecovered} source(s) were not recovered, see their restore checks" if unrecovered else ""
    if rto_s <= objective_s:
        return CheckResult(
            name=name,
            passed=True,
            detail=f"whole-stack recovery took {seconds_text(rto_s)}, within the objective of "
            f"{seconds_text(objective_s)}{short}",
            seconds=rto_s,
        )
    return CheckResult(
        name=name,
        passed=False,
        detail=f"whole-stack recovery took {seconds_text(rto_s)}, over the objective of {seconds_text(objective_s)} "
        f"by {seconds_text(rto_s - objective_s)}{short}",
        remedy="speed up the slowest stage in the drill's table (fetch, load, replay...) or raise drill.parallel; "
        "if the objective itself is wrong, change objectives.rto_seconds",
        seconds=rto_s,
    )


def check_rpo(source: str, rpo_s: float | None, objective_s: float, *, vault: str = "primary") -> CheckResult:
    """One source's data loss against ``objectives.rpo_for(source)``; not checked when nothing was
    recovered (the restore's own failed check says why)."""
    name = "RPO" if vault == "primary" else f"RPO from vault {vault}"
    if rpo_s is None:
        result = not_checked(name, "nothing was recovered, so no recovery point was measured", source=source)
        return result
    if rpo_s <= objective_s:
        return CheckResult(
            name=name,
            passed=True,
            detail=f"recovered to a point {seconds_text(rpo_s)} before the disaster, within the objective of "
            f"{seconds_text(objective_s)}",
            source=source,
        )
    return CheckResult(
        name=name,
        passed=False,
        detail=f"recovered to a point {seconds_text(rpo_s)} before the disaster, over the objective of "
        f"{seconds_text(objective_s)} by {seconds_text(rpo_s - objective_s)}",
        remedy="back it up more often, or run its continuous capture ('genesis-dr capture') where the kind has one; "
        f"if the objective itself is wrong, change objectives.sources.{source}.rpo_seconds",
        source=source,
    )
