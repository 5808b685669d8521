"""The failover itself: a pure plan (what ``--dry-run`` prints and the approval form shows) and its executor.

``plan_failover`` decides the target and lists every step as data; ``execute_failover`` claims the fencing epoch
first (of two concurrent runs exactly one gets it; the other raises StaleEpochError having touched nothing) and
then runs exactly the printed steps, in order, recording each as one line:

  1. fence the region being left, per engine (a dead server is recorded and fenced when it returns);
  2. wait until the target's replicas replayed what they received;
  3. promote the target per engine, then its RDS read replica; the old Redis primary becomes its replica;
  4. prove the target takes writes;
  5. repoint the other regions' replicas at the target;
  6. switch the DNS record to the target;
  7. record the state (the new active region at the claimed epoch, nothing in progress).

A failed promotion or write proof stops the run: FailoverIncompleteError names each component's state and the
next step, and the state stays claimed ("in progress") so no other run acts on top of it until an operator
re-runs with --force (every step is idempotent). A failed DNS switch after the promotion completes the state
(the data moved), leaves the old primary fenced and raises DnsSwitchError.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from core.errors import (
    DnsSwitchError,
    FailoverIncompleteError,
    NoHealthyRegionError,
    StaleEpochError,
    TargetRefusedError,
)
from core.failover import promote as p
from core.failover.choose import State, choose_target
from core.failover.dns import switch_record
from core.failover.health import RegionHealth
from core.failover.monitor import Assessment
from core.failover.probes import probe_mysql, probe_postgres, probe_redis
from core.failover.rds import promote_rds
from core.failover.report import (
    COMPLETED,
    DNS_FAILED,
    FAILED,
    INCOMPLETE,
    OK,
    SKIPPED,
    UNREACHABLE,
    FailoverReport,
    StepResult,
)
from core.failover.state import StateStore, new_operation_id
from core.failover.topology import FailoverConfig, RegionConfig
from core.failover.topology import dns_session as resolve_dns_session
from core.failover.topology import rds_session as resolve_rds_session

ENGINES = ("postgres", "mysql", "redis")
# What a step's failure means for the run.
STOP = "stop"  # stop the run: FailoverIncompleteError
CONTINUE = "continue"  # record it and go on (repointing another region's replica)
UNLESS_UNREACHABLE = "stop unless unreachable"  # a fence: a dead server is recorded, a refusing one stops the run
DNS = "page; the state still moves"  # the switch: the data moved, so the state is recorded; DnsSwitchError

Notify = Callable[[dict[str, Any]], Any]
# An action of another kind of plan (failback's "rebuild"): it runs one planned step and never raises.
Action = Callable[["PlannedStep"], p.Step]


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: ``action`` on ``component`` in ``region``; ``peer`` is the other region it involves
    (the new primary's region for a repoint, the old primary's for a Redis wait)."""

    action: str  # fence, wait_replayed, promote, prove_writes, repoint, switch_dns, record_state
    component: str  # postgres, mysql, redis, rds, dns, state
    region: str
    detail: str
    on_failure: str
    peer: str | None = None

    @property
    def what(self) -> str:
        return f"{self.action} {self.component} in {self.region}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "component": self.component,
            "region": self.region,
            "detail": self.detail,
            "on_failure": self.on_failure,
            "peer": self.peer,
        }


@dataclass(frozen=True)
class FailoverPlan:
    """A failover decided but not run: from ``leaving`` (the active region first) to ``target`` at ``epoch``."""

    operation: str
    source: str
    leaving: tuple[str, ...]
    target: str
    epoch: int
    reason: str
    forced: bool
    reasons: dict[str, str]
    steps: tuple[PlannedStep, ...]
    data_loss_s: float | None = None
    data_loss_bytes: int | None = None
    notes: tuple[str, ...] = field(default=())
    kind: str = "failover"

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "kind": self.kind,
            "source": self.source,
            "leaving": list(self.leaving),
            "target": self.target,
            "epoch": self.epoch,
            "reason": self.reason,
            "forced": self.forced,
            "reasons": dict(self.reasons),
            "steps": [s.to_dict() for s in self.steps],
            "data_loss_s": self.data_loss_s,
            "data_loss_bytes": self.data_loss_bytes,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailoverPlan:
        data = dict(data)
        data["leaving"] = tuple(data["leaving"])
        data["steps"] = tuple(PlannedStep(**s) for s in data["steps"])
        data["notes"] = tuple(data.get("notes", ()))
        return cls(**data)

    def render(self) -> str:
        """The plan as text: what --dry-run prints and the manual approval shows."""
        lines = [
            f"{self.operation}: from {', '.join(self.leaving)} (epoch {self.epoch} -> {self.epoch + 1})"
            + (" FORCED" if self.forced else ""),
            f"reason: {self.reason}",
            f"expected data loss: {_loss_text(self.data_loss_s, self.data_loss_bytes)}",
            "regions:",
        ]
        lines += [f"  {name}: {why}" for name, why in self.reasons.items()]
        lines += [f"note: {n}" for n in self.notes]
        lines.append("steps:")
        width = len(str(len(self.steps)))
        for n, s in enumerate(self.steps, 1):
            lines.append(f"  {n:>{width}}. {s.what}: {s.detail} [on failure: {s.on_failure}]")
        return "\n".join(lines)


def _loss_text(lag_s: float | None, lag_bytes: int | None) -> str:
    parts = []
    if lag_s is not None:
        parts.append(f"up to {lag_s:g} s")
    if lag_bytes is not None:
        parts.append(f"{lag_bytes} bytes")
    return ", ".join(parts) if parts else "unknown (no lag measured)"


# ---------------------------------------------------------------- planning (pure)


def _where(cfg: Any) -> str:
    socket_path = getattr(cfg, "socket", None)
    return f"'{cfg.name}' at {socket_path or f'{cfg.host}:{cfg.port}'}"


def _region_steps(config: FailoverConfig, leaving: list[str], target: str, forced: bool) -> list[PlannedStep]:
    t = config.region(target)
    old = [config.region(name) for name in leaving]
    others = [r for r in config.by_priority() if r.name != target and r.name not in leaving]
    steps: list[PlannedStep] = []
    fence_what = {
        "postgres": "refuse writes (default_transaction_read_only=on), end client sessions",
        "mysql": "refuse writes (read_only=ON)",
        "redis": "pause writes (CLIENT PAUSE WRITE) until it becomes a replica of the new primary",
    }
    for region in old:
        for kind in ENGINES:
            cfg = getattr(region, kind)
            if cfg is not None:
                steps.append(
                    PlannedStep(
                        "fence",
                        kind,
                        region.name,
                        f"{_where(cfg)}: {fence_what[kind]}; if unreachable, recorded and fenced when it returns",
                        UNLESS_UNREACHABLE,
                    )
                )
    first_old = old[0] if old else None
    for kind in ENGINES:
        cfg = getattr(t, kind)
        if cfg is None:
            continue
        peer = first_old.name if kind == "redis" and first_old is not None and first_old.redis is not None else None
        what = "until it replayed all it received" + (
            f" (and reached the offset of {first_old.name}'s primary while it answers)" if peer else ""
        )
        steps.append(
            PlannedStep("wait_replayed", kind, target, f"{_where(cfg)}: {what}", CONTINUE if forced else STOP, peer)
        )
    promote_what = {
        "postgres": "pg_promote(), remove an earlier fence",
        "mysql": "STOP REPLICA, RESET REPLICA ALL, read_only=OFF",
        "redis": "REPLICAOF NO ONE",
    }
    for kind in ENGINES:
        cfg = getattr(t, kind)
        if cfg is not None:
            steps.append(PlannedStep("promote", kind, target, f"{_where(cfg)}: {promote_what[kind]}", STOP))
    if t.redis is not None:
        for region in old:
            if region.redis is not None:
                steps.append(
                    PlannedStep(
                        "fence",
                        "redis",
                        region.name,
                        f"{_where(region.redis)}: becomes a replica of {_where(t.redis)} (refuses writes for good)",
                        UNLESS_UNREACHABLE,
                        target,
                    )
                )
    if t.rds_instance_id is not None:
        steps.append(
            PlannedStep(
                "promote",
                "rds",
                target,
                f"'{t.rds_instance_id}' in {t.aws_region or t.name}: PromoteReadReplica, wait until available",
                STOP,
            )
        )
    for kind in ENGINES:
        cfg = getattr(t, kind)
        if cfg is not None:
            steps.append(
                PlannedStep(
                    "prove_writes", kind, target, f"{_where(cfg)}: write a probe, read it back, remove it", STOP
                )
            )
    for region in others:
        for kind in ENGINES:
            cfg, new = getattr(region, kind), getattr(t, kind)
            if cfg is not None and new is not None:
                steps.append(
                    PlannedStep(
                        "repoint", kind, region.name, f"{_where(cfg)}: replicate from {_where(new)}", CONTINUE, target
                    )
                )
    if t.dns is not None:
        steps.append(
            PlannedStep(
                "switch_dns",
                "dns",
                target,
                f"{t.dns.provider} {t.dns.record_name} {t.dns.record_type} -> {t.dns.value} (TTL {t.dns.ttl})",
                DNS,
            )
        )
    return steps


def _health(assessment_or_health: Assessment | Mapping[str, RegionHealth]) -> Mapping[str, RegionHealth]:
    if isinstance(assessment_or_health, Assessment):
        return assessment_or_health.regions
    return assessment_or_health


def plan_failover(
    config: FailoverConfig,
    state: State,
    assessment_or_health: Assessment | Mapping[str, RegionHealth],
    target: str | None = None,
    *,
    force: bool = False,
    reason: str,
) -> FailoverPlan:
    """The failover from the state's active region to ``target`` (None: the best qualifying region), as data.

    A named target that does not qualify (unhealthy, lag unknown or beyond ``max_data_loss_seconds``) is refused
    with TargetRefusedError unless ``force`` (recorded in the plan); with no target named and none qualifying,
    NoHealthyRegionError lists every region's reason. An operation in progress is refused (StaleEpochError)
    unless ``force`` takes it over: re-running the failover it started repeats each (idempotent) step.
    """
    health = _health(assessment_or_health)
    rerun = bool(state.in_progress) and target == state.active_region and state.previous is not None
    if state.in_progress and not force:
        raise StaleEpochError(
            f"failover state epoch {state.epoch}: '{state.in_progress}' is in progress since "
            f"{state.changed_at.isoformat(timespec='seconds')}; wait for it, or if that run died take it over "
            "with --force"
        )
    source = (state.previous if rerun else None) or state.active_region
    if target is not None:
        config.region(target)  # unknown: a ConfigError naming the known regions
        if target == source:
            raise TargetRefusedError(
                f"failover target {target} is the active region already (epoch {state.epoch}); name another region"
            )
    choice = choose_target(dict(health), config, source, force=force and target is None)
    reasons = dict(choice.reasons)
    forced = False
    notes: list[str] = []
    if target is None:
        if choice.target is None:
            why = "; ".join(f"{name}: {text.removeprefix('not chosen: ')}" for name, text in reasons.items())
            raise NoHealthyRegionError(
                f"no region qualifies to fail over to from {source}: {why}; restore a region's health, or name a "
                "target with --force to accept its lag"
            )
        target = choice.target
        forced = choice.forced and not reasons[target].startswith("chosen:")
    else:
        verdict = reasons.get(target, "not chosen: no health measured")
        if not (verdict.startswith("chosen") or verdict.startswith("qualifies")):
            why = verdict.removeprefix("not chosen: ")
            if not force:
                raise TargetRefusedError(
                    f"failover target {target} refused: {why}; choose another region, or pass --force to fail over "
                    "anyway (the report records it)"
                )
            forced = True
            reasons[target] = f"chosen by force: {why}"
        else:
            reasons[target] = f"chosen by name: {verdict.removeprefix('chosen: ')}"
        if choice.target is not None and choice.target != target:
            first = reasons[choice.target].removeprefix("chosen: ")
            reasons[choice.target] = f"not named: {first} (the first choice by priority)"
    leaving = [source]
    if state.in_progress and not rerun:
        # Taking over a run that was moving elsewhere: its target may be half promoted; fence it too.
        leaving = [state.active_region] + ([state.previous] if state.previous not in (None, target) else [])
        notes.append(f"takes over '{state.in_progress}' left in progress at epoch {state.epoch}")
    elif rerun:
        notes.append(f"re-runs '{state.in_progress}' left in progress at epoch {state.epoch}; done steps are no-ops")
    leaving = list(dict.fromkeys(leaving))
    # --force accepts data loss: a replica that cannot prove it replayed everything does not stop the run
    # (the printed plan says so per step), also when the target qualified or a stopped run is re-run.
    steps = _region_steps(config, leaving, target, forced or force)
    steps.append(
        PlannedStep(
            "record_state",
            "state",
            target,
            f"{target} active at epoch {state.epoch + 1}, nothing in progress (in the vault)",
            STOP,
        )
    )
    target_health = health.get(target)
    if config.region(target).rds_instance_id is not None:
        notes.append("RDS has no write fence: the old RDS primary keeps taking writes from clients that still reach it")
    return FailoverPlan(
        operation=f"failover to {target}",
        source=source,
        leaving=tuple(leaving),
        target=target,
        epoch=state.epoch,
        reason=reason,
        forced=forced or bool(state.in_progress),
        reasons=reasons,
        steps=tuple(steps),
        data_loss_s=target_health.lag_s if target_health else None,
        data_loss_bytes=target_health.lag_bytes if target_health else None,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------- execution


def _reachable(cfg: Any, timeout: float = 2.0) -> bool:
    """Whether the server accepts a connection at all: a fence that failed on a dead server is not a refusal."""
    path = getattr(cfg, "socket", None)
    try:
        if path:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(path)
        else:
            with socket.create_connection((cfg.host, cfg.port), timeout=timeout):
                pass
    except OSError:
        return False
    return True


@dataclass
class _Run:
    config: FailoverConfig
    dns_session: Any
    rds_session: Any
    wait_timeout: float
    fence_timeout: float
    redis_pause_s: float
    actions: Mapping[str, Action] = field(default_factory=dict)
    unreachable: set[tuple[str, str]] = field(default_factory=set)

    def step(self, planned: PlannedStep) -> p.Step:
        if planned.action in self.actions:
            return self.actions[planned.action](planned)
        region = self.config.region(planned.region)
        peer = self.config.region(planned.peer) if planned.peer else None
        kind, action = planned.component, planned.action
        cfg = getattr(region, kind, None) if kind in ENGINES else None
        if action == "fence":
            if kind == "postgres":
                return p.fence_postgres(cfg, self.fence_timeout)
            if kind == "mysql":
                return p.fence_mysql(cfg, self.fence_timeout)
            return p.fence_redis(cfg, peer.redis if peer else None, pause_s=self.redis_pause_s)
        if action == "wait_replayed":
            if kind == "postgres":
                return p.wait_replayed_postgres(cfg, self.wait_timeout)
            if kind == "mysql":
                return p.wait_replayed_mysql(cfg, self.wait_timeout)
            # The old primary's offset is the goal only while it answers; a dead one has nothing more to give.
            alive = peer is not None and (peer.name, "redis") not in self.unreachable
            return p.wait_replayed_redis(cfg, self.wait_timeout, primary=peer.redis if alive else None)
        if action == "promote":
            if kind == "rds":
                return promote_rds(region, session=self.rds_session)
            return {"postgres": p.promote_postgres, "mysql": p.promote_mysql, "redis": p.promote_redis}[kind](cfg)
        if action == "prove_writes":
            return {"postgres": p.prove_writes_postgres, "mysql": p.prove_writes_mysql, "redis": p.prove_writes_redis}[
                kind
            ](cfg)
        if action == "repoint":
            new = getattr(peer, kind)
            return {"postgres": p.repoint_postgres, "mysql": p.repoint_mysql, "redis": p.repoint_redis}[kind](cfg, new)
        raise ValueError(f"unknown plan step {planned.what}")

    def dns(self, planned: PlannedStep) -> tuple[StepResult, dict | None, DnsSwitchError | None]:
        dns = self.config.region(planned.region).dns
        started = time.monotonic()
        try:
            change = switch_record(dns, session=self.dns_session)
        except DnsSwitchError as exc:
            took = round(time.monotonic() - started, 3)
            return _result(planned, FAILED, str(exc), took), None, exc
        detail = f"{change.record} -> {change.value}" + (
            f" (was {change.previous})" if change.changed else " (already pointed there)"
        )
        return _result(planned, OK, detail, change.seconds), change.to_dict(), None


def _result(planned: PlannedStep, status: str, detail: str, seconds: float = 0.0) -> StepResult:
    return StepResult(planned.action, planned.component, planned.region, status, detail, seconds)


def _measure(region: RegionConfig, timeout: float) -> list[dict[str, Any]]:
    """The target's replication checks right before its promotion: the data loss as the servers saw it."""
    out = []
    for kind, probe in (("postgres", probe_postgres), ("mysql", probe_mysql), ("redis", probe_redis)):
        cfg = getattr(region, kind)
        if cfg is None:
            continue
        for check in probe(cfg, timeout):
            if check.name.endswith(".replication") or check.lag_s is not None or check.lag_bytes is not None:
                out.append(
                    {
                        "check": check.name,
                        "ok": check.ok,
                        "lag_s": check.lag_s,
                        "lag_bytes": check.lag_bytes,
                        "detail": check.detail,
                    }
                )
    return out


def _event(report: FailoverReport, severity: str, summary: str) -> dict[str, Any]:
    """A notification in core.notify's Event shape (activity 'failover'); ``severity`` critical pages."""
    ok = report.outcome == COMPLETED
    return {
        "activity": report.kind,
        "outcome": "success" if ok else "failure",
        "severity": severity,
        "title": f"{report.operation}: {report.outcome}",
        "summary": summary,
        # A rolled-back failback's report targets the region it went back to; its page is filed under the
        # failback's own target (the report's source), so the failback that later completes resolves it.
        "subject": report.source if report.outcome == "rolled_back" else report.target,
        "details": {
            "from": report.source,
            "epoch": report.epoch,
            "reason": report.reason,
            "seconds": report.seconds,
            "forced": report.forced,
            "next": report.next_step,
            "components": report.component_states(),
        },
    }


def execute_failover(
    config: FailoverConfig,
    plan: FailoverPlan,
    state_store: StateStore,
    *,
    dns_session: Any = None,
    rds_session: Any = None,
    notify: Notify | None = None,
    wait_timeout: float = 30.0,
    fence_timeout: float = 10.0,
    redis_pause_s: float = 120.0,
    take_over: bool | None = None,
    actions: Mapping[str, Action] | None = None,
) -> FailoverReport:
    """Run ``plan``: claim its epoch first, then each step as printed; store the report; complete the state.

    ``dns_session`` / ``rds_session``: the target region's credentials; None resolves its ``dns.credentials`` /
    ``aws_credentials`` block (the default chain when it names none) before anything is claimed.
    ``notify`` (the flow's callback; it must not raise, as core.notify.notify never does) gets one event dict
    at the end: severity 'critical' (page) when the run stopped or DNS was not switched. ``take_over`` (default:
    the plan's force) lets the claim take over an operation left in progress. ``actions``: runners for actions
    of other plans (a failback's rebuild), by action name. Raises StaleEpochError (the epoch moved: nothing was
    touched), FailoverIncompleteError (``report`` set) or DnsSwitchError.
    """
    started = time.monotonic()
    target = config.region(plan.target)
    # Credentials first: a block that cannot be read is a ConfigError before any server is touched.
    if dns_session is None and target.dns is not None:
        dns_session = resolve_dns_session(target.dns)
    if rds_session is None and target.rds_instance_id is not None:
        rds_session = resolve_rds_session(target)
    claimed = state_store.claim(
        plan.epoch, plan.target, plan.reason, plan.operation, force=plan.forced if take_over is None else take_over
    )
    report = FailoverReport(
        operation_id=new_operation_id(),
        operation=plan.operation,
        kind=plan.kind,
        source=plan.source,
        target=plan.target,
        epoch=claimed.epoch,
        reason=claimed.reason,
        forced=plan.forced,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        data_loss={"planned": {"lag_s": plan.data_loss_s, "lag_bytes": plan.data_loss_bytes}},
        plan=plan.to_dict(),
    )
    run = _Run(config, dns_session, rds_session, wait_timeout, fence_timeout, redis_pause_s, dict(actions or {}))
    stopped: StepResult | None = None
    dns_error: DnsSwitchError | None = None
    for planned in plan.steps:
        if planned.action == "record_state":
            continue
        if stopped is not None:
            report.steps.append(_result(planned, SKIPPED, "not run: an earlier step stopped the failover"))
            continue
        if planned.action == "switch_dns":
            result, report.dns, dns_error = run.dns(planned)
            report.steps.append(result)
            continue
        if planned.action == "promote" and "at_promotion" not in report.data_loss:
            report.data_loss["at_promotion"] = _measure(config.region(plan.target), min(wait_timeout, 5.0))
        step = run.step(planned)
        status = OK if step.ok else FAILED
        if not step.ok and planned.on_failure == UNLESS_UNREACHABLE:
            cfg = getattr(config.region(planned.region), planned.component)
            if not _reachable(cfg):
                status = UNREACHABLE
                run.unreachable.add((planned.region, planned.component))
                label = f"{planned.component} in {planned.region}"
                if label not in report.to_fence_when_back:
                    report.to_fence_when_back.append(label)
        result = _result(planned, status, step.detail, step.seconds)
        report.steps.append(result)
        if status == FAILED and planned.on_failure in (STOP, UNLESS_UNREACHABLE):
            stopped = result
    record = next(s for s in plan.steps if s.action == "record_state")
    if stopped is not None:
        report.outcome = INCOMPLETE
        report.next_step = (
            f"fix {stopped.component} in {stopped.region}, then run the {plan.kind} to {plan.target} again with "
            "--force: it takes this run over and repeats each step (done ones are no-ops)"
        )
        report.steps.append(
            _result(record, SKIPPED, f"left at epoch {claimed.epoch} with '{claimed.in_progress}' in progress")
        )
        _finish_incomplete(report, stopped, state_store, notify, started)
    try:
        outcome = (
            COMPLETED if dns_error is None else f"{DNS_FAILED}: databases promoted in {plan.target}, DNS not switched"
        )
        state_store.complete(claimed, outcome)
        report.steps.append(_result(record, OK, f"{plan.target} active at epoch {claimed.epoch}"))
    except StaleEpochError as exc:
        report.steps.append(_result(record, FAILED, str(exc)))
        report.outcome = INCOMPLETE
        report.next_step = "another run took the state over: read the state and its latest report before acting"
        _finish(report, state_store, started)
        raise
    if dns_error is not None:
        report.outcome = DNS_FAILED
        dns = config.region(plan.target).dns
        report.next_step = (
            f"point {dns.record_name} {dns.record_type} at {dns.value} by hand; the old primary stays fenced"
        )
        _finish(report, state_store, started)
        message = (
            f"{plan.operation}: databases promoted and the state moved to {plan.target} (epoch {claimed.epoch}), "
            f"but the DNS switch failed: {dns_error}; the old primary stays fenced; point the record at "
            f"{plan.target} by hand"
        )
        if notify is not None:
            notify(_event(report, "critical", message))
        raise DnsSwitchError(message)
    report.outcome = COMPLETED
    _finish(report, state_store, started)
    if notify is not None:
        summary = f"{plan.operation} completed in {report.seconds:g} s (epoch {claimed.epoch})"
        if report.to_fence_when_back:
            summary += f"; unreachable, fenced when they return: {', '.join(report.to_fence_when_back)}"
        notify(_event(report, "info", summary))
    return report


def _finish(report: FailoverReport, state_store: StateStore, started: float) -> None:
    report.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    report.seconds = round(time.monotonic() - started, 3)
    state_store.put_report(report.to_dict())


def _finish_incomplete(
    report: FailoverReport, stopped: StepResult, state_store: StateStore, notify: Notify | None, started: float
) -> NoReturn:
    _finish(report, state_store, started)
    states = "; ".join(f"{c}: {s}" for c, s in report.component_states().items() if c != "state")
    message = (
        f"{report.operation} stopped at '{stopped.what}': {stopped.detail}; {states}; the state stays at epoch "
        f"{report.epoch} in progress; next: {report.next_step}"
    )
    if notify is not None:
        notify(_event(report, "critical", message))
    raise FailoverIncompleteError(message, report=report.to_dict())


# ---------------------------------------------------------------- a returning old primary


def _writable(kind: str, cfg: Any, timeout: float) -> bool | None:
    """True if the server is a primary taking writes, False if not, None if it does not answer."""
    try:
        if kind == "postgres":
            with p._pg_connect(cfg, timeout) as conn:
                standby, ro = conn.execute(
                    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')"
                ).fetchone()
            return not standby and ro != "on"
        if kind == "mysql":
            with p._my_connect(cfg, timeout) as conn, conn.cursor() as cur:
                cur.execute("SHOW REPLICA STATUS")
                replica = cur.fetchone() is not None
                cur.execute("SELECT @@read_only AS ro")
                ro = bool(cur.fetchone()["ro"])
            return not replica and not ro
        client = p._rd_client(cfg, timeout)
        try:
            return client.info("replication")["role"] == "master"
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - a server still down is expected here: the next monitor run looks again
        return None


def refence_if_returned(config: FailoverConfig, state: State, *, timeout: float = 5.0) -> list[p.Step]:
    """Fence every server outside the active region that is back as a writable primary (an old primary that
    was unreachable when the failover fenced its region). The monitor calls it each run; a Redis one becomes a
    replica of the active region's Redis. Returns the fences it ran (none when nothing came back).

    Nothing is done while an operation is in progress: it fences what it leaves itself, and a failback still
    catching up must not have the current primary fenced under it."""
    if state.in_progress:
        return []
    active = config.region(state.active_region)
    steps: list[p.Step] = []
    for region in config.by_priority():
        if region.name == active.name:
            continue
        for kind in ENGINES:
            cfg = getattr(region, kind)
            if cfg is None or not _writable(kind, cfg, timeout):
                continue
            if kind == "postgres":
                steps.append(p.fence_postgres(cfg, timeout))
            elif kind == "mysql":
                steps.append(p.fence_mysql(cfg, timeout))
            else:
                steps.append(p.fence_redis(cfg, active.redis))
    return steps
