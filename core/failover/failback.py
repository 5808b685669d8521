"""Failback: back to the primary region (priority 1) after a failover, as a planned switchover with zero data loss.

``plan_failback`` is pure: the steps as data, in a ``FailoverPlan`` of kind "failback" (the same plan, report and
step machinery as ``core.failover.run``; ``--dry-run`` prints ``plan.render()``). ``execute_failback`` claims the
fencing epoch first, then runs exactly those steps:

  1. rebuild the primary region's old primaries as replicas of the active region, caught up (pg_rewind or
     pg_basebackup, MariaDB GTID repoint or re-seed, Redis REPLICAOF: ``core.failover.rebuild``);
  2. fence the active region (it stops taking writes);
  3. wait until the primary region has everything the active region committed before the fence;
  4. promote the primary region (and its RDS read replica); the active region's Redis becomes its replica;
  5. prove the primary region takes writes;
  6. repoint the other regions' replicas at it, and rebuild the region left as its replica;
  7. switch the DNS record back; 8. record the state.

A failure before any promotion rolls back: the fences this run set are lifted and the state moves back to the
active region (a new epoch), then FailoverIncompleteError says what failed and what to fix. A failure after a
promotion stops like a failover does (the state stays claimed; the failback again with ``force`` finishes it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from core.errors import FailoverIncompleteError, StaleEpochError, TargetRefusedError
from core.failover import promote as p
from core.failover import rebuild as rb
from core.failover.choose import State
from core.failover.health import RegionHealth
from core.failover.monitor import Assessment
from core.failover.report import FAILED, OK, FailoverReport, StepResult
from core.failover.run import (
    CONTINUE,
    DNS,
    ENGINES,
    STOP,
    Action,
    FailoverPlan,
    Notify,
    PlannedStep,
    _event,
    _finish,
    _health,
    _where,
    execute_failover,
    plan_failover,
)
from core.failover.state import StateStore, new_operation_id
from core.failover.topology import FailoverConfig, RegionConfig

KIND = "failback"
ROLLED_BACK = "rolled_back"
# A failback plan is a failover plan of kind "failback" (its own actions: rebuild, catch_up).
FailbackPlan = FailoverPlan


# ---------------------------------------------------------------- planning (pure)


# Checks a region fails because of its role, not its health: after a failover the primary region's databases
# are fenced primaries (read-only) or replicas that do not stream yet; the failback's rebuild repairs both.
_ROLE_CHECKS = (".replication", ".read_only")


def _blocking(health: RegionHealth) -> list[str]:
    """The failed checks that stop a failback: every one but those of the role (``_ROLE_CHECKS``)."""
    return [
        f"{c.name} ({c.detail})" if c.detail else c.name
        for c in health.checks
        if not c.ok and c.weight > 0 and not c.name.endswith(_ROLE_CHECKS)
    ]


def _rebuild_how(kind: str, region: RegionConfig) -> str:
    if kind == "postgres":
        if region.postgres_rebuild is None:
            return "must be a standby already (the region has no postgres_rebuild)"
        return f"pg_rewind, else pg_basebackup, of {region.postgres_rebuild.data_directory}"
    return {"mysql": "GTID repoint, or a re-seed from a dump if it diverged", "redis": "REPLICAOF"}[kind]


def _steps(config: FailoverConfig, home: RegionConfig, active: RegionConfig) -> list[PlannedStep]:
    both = [k for k in ENGINES if getattr(home, k) is not None and getattr(active, k) is not None]
    others = [r for r in config.by_priority() if r.name not in (home.name, active.name)]
    steps: list[PlannedStep] = []
    for kind in both:
        cfg, src = getattr(home, kind), getattr(active, kind)
        steps.append(
            PlannedStep(
                "rebuild", kind, home.name,
                f"{_where(cfg)}: becomes a replica of {_where(src)} ({_rebuild_how(kind, home)}), caught up",
                STOP, active.name,
            )
        )  # fmt: skip
    fence_what = {
        "postgres": "refuse writes (default_transaction_read_only=on), end client sessions",
        "mysql": "refuse writes (read_only=ON)",
        "redis": "pause writes until it becomes a replica",
    }
    for kind in both:
        cfg = getattr(active, kind)
        steps.append(PlannedStep("fence", kind, active.name, f"{_where(cfg)}: {fence_what[kind]}", STOP))
    for kind in both:
        cfg, src = getattr(home, kind), getattr(active, kind)
        what = f"{_where(cfg)}: until it has everything {_where(src)} committed before the fence (zero data loss)"
        steps.append(PlannedStep("catch_up", kind, home.name, what, STOP, active.name))
    promote_what = {
        "postgres": "pg_promote(), remove the fence left by the failover",
        "mysql": "STOP REPLICA, RESET REPLICA ALL, read_only=OFF",
        "redis": "REPLICAOF NO ONE",
    }
    for kind in ENGINES:
        cfg = getattr(home, kind)
        if cfg is not None:
            steps.append(PlannedStep("promote", kind, home.name, f"{_where(cfg)}: {promote_what[kind]}", STOP))
    if home.rds_instance_id is not None:
        where = f"'{home.rds_instance_id}' in {home.aws_region or home.name}"
        steps.append(
            PlannedStep("promote", "rds", home.name, f"{where}: PromoteReadReplica, wait until available", STOP)
        )
    if "redis" in both:
        # Right after the promotion: the paused Redis must not take writes again when its pause ends.
        what = f"{_where(active.redis)}: becomes a replica of {_where(home.redis)} (refuses writes for good)"
        steps.append(PlannedStep("rebuild", "redis", active.name, what, CONTINUE, home.name))
    for kind in ENGINES:
        cfg = getattr(home, kind)
        if cfg is not None:
            what = f"{_where(cfg)}: write a probe, read it back, remove it"
            steps.append(PlannedStep("prove_writes", kind, home.name, what, STOP))
    for region in others:
        for kind in ENGINES:
            cfg, new = getattr(region, kind), getattr(home, kind)
            if cfg is not None and new is not None:
                what = f"{_where(cfg)}: replicate from {_where(new)}"
                steps.append(PlannedStep("repoint", kind, region.name, what, CONTINUE, home.name))
    for kind in (k for k in both if k != "redis"):
        cfg, new = getattr(active, kind), getattr(home, kind)
        what = f"{_where(cfg)}: becomes a replica of {_where(new)} ({_rebuild_how(kind, active)}); stays fenced if not"
        steps.append(PlannedStep("rebuild", kind, active.name, what, CONTINUE, home.name))
    if home.dns is not None:
        d = home.dns
        what = f"{d.provider} {d.record_name} {d.record_type} -> {d.value} (TTL {d.ttl})"
        steps.append(PlannedStep("switch_dns", "dns", home.name, what, DNS))
    return steps


def plan_failback(
    config: FailoverConfig,
    state: State,
    health: Assessment | Mapping[str, RegionHealth],
    reason: str,
    *,
    force: bool = False,
) -> FailoverPlan:
    """The failback from the state's active region to the primary region (priority 1), as data.

    Refused (TargetRefusedError) when the primary region is active already, when it or the active region has a
    failed check other than replication (both take part in a planned switchover; with the active region down
    this is a failover: ``failover run``), or when no health of either was measured. An operation in progress
    is refused (StaleEpochError) unless ``force``: a failback left in progress (its run died or stopped after a
    promotion) is then finished by run.py's re-run of the failover to the primary region (a plan of kind
    "failover": fence the region left, promote, prove, repoint, DNS; the region left stays fenced).
    """
    home = config.by_priority()[0]
    regions = _health(health)
    if state.in_progress:
        if not force or not (state.in_progress.startswith(KIND) and state.active_region == home.name):
            raise StaleEpochError(
                f"failover state epoch {state.epoch}: '{state.in_progress}' is in progress since "
                f"{state.changed_at.isoformat(timespec='seconds')}; wait for it, or if that run died run the "
                f"{state.in_progress.split(' ')[0]} again with --force"
            )
        plan = plan_failover(config, state, regions, home.name, force=True, reason=reason)
        left = f"{plan.source} stays fenced: run the failback's rebuild of it by hand (pg_rewind) or fail over again"
        return dataclasses.replace(plan, notes=(*plan.notes, f"finishes '{state.in_progress}'; {left}"))
    if state.active_region == home.name:
        raise TargetRefusedError(
            f"failback refused: the primary region {home.name} is active already (epoch {state.epoch}); "
            "nothing to fail back"
        )
    active = config.region(state.active_region)
    for region, role in ((home, "primary region"), (active, "active region")):
        measured = regions.get(region.name)
        if measured is None:
            raise TargetRefusedError(
                f"failback to {home.name} refused: no health measured for the {role} {region.name}; run "
                f"'genesis-dr failover health {region.name}' and try again"
            )
        blocking = _blocking(measured)
        if blocking:
            remedy = (
                "restore it, then fail back"
                if region is home
                else f"a failback needs it to hand over; if it is down, fail over instead ('failover run {home.name}')"
            )
            raise TargetRefusedError(
                f"failback to {home.name} refused: the {role} {region.name} is unhealthy "
                f"({'; '.join(blocking)}); {remedy}"
            )
    steps = _steps(config, home, active)
    steps.append(
        PlannedStep(
            "record_state", "state", home.name, f"{home.name} active at epoch {state.epoch + 1}, nothing in progress",
            STOP,
        )
    )  # fmt: skip
    reasons = {home.name: f"the primary region (priority {home.priority}): the failback target"}
    reasons[active.name] = "the active region (the one being left): fenced, then rebuilt as a replica"
    for region in config.by_priority():
        reasons.setdefault(region.name, f"replicas repointed at {home.name}")
    notes = [
        f"planned switchover: {active.name} is fenced and {home.name} catches up with everything it committed "
        "before anything is promoted (zero data loss); a failure before the promotion lifts the fence again"
    ]
    if home.rds_instance_id is not None:
        notes.append(
            f"RDS: '{home.rds_instance_id}' must be a read replica of {active.name}'s instance (AWS cannot turn the "
            "old primary back into one: create it before failing back)"
        )
    if active.postgres is not None and home.postgres is not None and active.postgres_rebuild is None:
        notes.append(f"{active.name} has no postgres_rebuild: its PostgreSQL stays a fenced primary after the failback")
    return FailoverPlan(
        operation=f"{KIND} to {home.name}",
        source=active.name,
        leaving=(active.name,),
        target=home.name,
        epoch=state.epoch,
        reason=reason,
        forced=False,
        reasons=reasons,
        steps=tuple(steps),
        data_loss_s=0.0,
        data_loss_bytes=0,
        notes=tuple(notes),
        kind=KIND,
    )


# ---------------------------------------------------------------- execution


def _actions(config: FailoverConfig, wait_timeout: float, rebuild_timeout: float) -> dict[str, Action]:
    """The failback's own actions for run.py's executor: rebuild (``core.failover.rebuild``) and catch_up."""

    def engines(planned: PlannedStep) -> tuple[RegionConfig, Any, Any]:
        region, peer = config.region(planned.region), config.region(planned.peer)
        return region, getattr(region, planned.component), getattr(peer, planned.component)

    def rebuild(planned: PlannedStep) -> p.Step:
        region, cfg, primary = engines(planned)
        if planned.component == "postgres":
            return rb.rebuild_postgres(cfg, primary, region.postgres_rebuild, timeout=rebuild_timeout)
        if planned.component == "mysql":
            return rb.rebuild_mysql(cfg, primary, timeout=rebuild_timeout)
        return rb.rebuild_redis(cfg, primary, timeout=rebuild_timeout)

    def catch_up(planned: PlannedStep) -> p.Step:
        _, cfg, primary = engines(planned)
        if planned.component == "postgres":
            return rb.catch_up_postgres(cfg, primary, wait_timeout)
        if planned.component == "mysql":
            return rb.catch_up_mysql(cfg, primary, wait_timeout)
        return p.wait_replayed_redis(cfg, wait_timeout, primary=primary)

    return {"rebuild": rebuild, "catch_up": catch_up}


def _unfence(config: FailoverConfig, region: str, kind: str) -> p.Step:
    """Lift a fence the failback set on the active region (a rollback): its promote step does exactly that."""
    cfg = getattr(config.region(region), kind)
    return {"postgres": p.promote_postgres, "mysql": p.promote_mysql, "redis": p.promote_redis}[kind](cfg)


def _roll_back(
    config: FailoverConfig, plan: FailoverPlan, failed: FailoverReport, state_store: StateStore, notify: Notify | None
) -> FailoverIncompleteError:
    """Nothing was promoted: lift the fences the run set, move the state back to the region it left (a new
    epoch), store the rollback's own report; the error to raise."""
    started = time.monotonic()
    stopped = next(s for s in failed.steps if s.status == FAILED)
    report = FailoverReport(
        operation_id=new_operation_id(),
        operation=f"roll back of {plan.operation}",
        kind=KIND,
        source=plan.target,
        target=plan.source,
        epoch=failed.epoch,
        reason=f"{plan.operation} stopped before any promotion at '{stopped.what}'",
        forced=False,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        steps=list(failed.steps),
    )
    fenced = [s for s in failed.steps if s.action == "fence" and s.status == OK and s.region == plan.source]
    for fence in fenced:
        step = _unfence(config, fence.region, fence.component)
        report.steps.append(
            StepResult("unfence", fence.component, fence.region, OK if step.ok else FAILED, step.detail, step.seconds)
        )
    stuck = [s for s in report.steps if s.action == "unfence" and s.status == FAILED]
    try:
        back = state_store.claim(failed.epoch, plan.source, report.reason, report.operation, force=True)
        state_store.complete(back, ROLLED_BACK)
        report.epoch = back.epoch
        state_text = f"{plan.source} active again at epoch {back.epoch}"
        report.steps.append(StepResult("record_state", "state", plan.source, OK, state_text))
    except StaleEpochError as exc:
        state_text = f"the state was not moved back ({exc})"
        report.steps.append(StepResult("record_state", "state", plan.source, FAILED, str(exc)))
    report.outcome = ROLLED_BACK
    fix = f"fix {stopped.component} in {stopped.region} ({stopped.detail}), then run the failback again"
    report.next_step = (
        f"lift the fence of {', '.join(f'{s.component} in {s.region}' for s in stuck)} by hand; {fix}" if stuck else fix
    )
    _finish(report, state_store, started)
    message = (
        f"{plan.operation} stopped before any promotion at '{stopped.what}': "
        f"{'fences lifted' if not stuck else 'some fences NOT lifted'}, {state_text}; next: {report.next_step}"
    )
    if notify is not None:
        notify(_event(report, "critical" if stuck else "warning", message))
    return FailoverIncompleteError(message, report=report.to_dict())


def execute_failback(
    config: FailoverConfig,
    plan: FailoverPlan,
    state_store: StateStore,
    *,
    dns_session: Any = None,
    rds_session: Any = None,
    notify: Notify | None = None,
    wait_timeout: float = 60.0,
    fence_timeout: float = 10.0,
    redis_pause_s: float = 120.0,
    rebuild_timeout: float = rb.PG_TIMEOUT,
) -> FailoverReport:
    """Run the failback ``plan`` with run.py's executor (epoch claimed first, the printed steps in order, the
    report in the vault, the state completed) plus the failback's own actions (rebuild, catch_up).

    Raises StaleEpochError (the epoch moved: nothing touched), FailoverIncompleteError (``report`` set: rolled back
    when it stopped before any promotion, else stopped halfway as a failover does) or DnsSwitchError (databases
    back, state recorded, DNS not switched)."""
    if plan.kind != KIND:
        # plan_failback(force=True) finishing a failback left in progress: run.py's re-run, as planned.
        return execute_failover(
            config, plan, state_store, dns_session=dns_session, rds_session=rds_session, notify=notify,
            wait_timeout=wait_timeout, fence_timeout=fence_timeout, redis_pause_s=redis_pause_s,
        )  # fmt: skip
    try:
        return execute_failover(
            config,
            plan,
            state_store,
            dns_session=dns_session,
            rds_session=rds_session,
            notify=notify,
            wait_timeout=wait_timeout,
            fence_timeout=fence_timeout,
            redis_pause_s=redis_pause_s,
            take_over=False,
            actions=_actions(config, wait_timeout, rebuild_timeout),
        )
    except FailoverIncompleteError as exc:
        failed = FailoverReport.from_dict(exc.report) if exc.report else None
        if failed is None or any(s.action == "promote" and s.status == OK for s in failed.steps):
            raise
        raise _roll_back(config, plan, failed, state_store, notify) from None
