"""Which region to fail over to, and the failover state (active region + fencing epoch).

``choose_target`` is pure so its decisions can be pinned by golden tests: the highest-priority (lowest
number) healthy region other than the active one whose replication lag is within the allowed data loss.
Every region gets a one-line reason, so "none chosen" always says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.errors import ConfigError
from core.failover import StaleEpochError
from core.failover.health import RegionHealth
from core.failover.topology import FailoverConfig
from core.sources import short


@dataclass(frozen=True)
class Choice:
    """The chosen region (None: none qualifies), a reason per region, and the data loss of going there."""

    target: str | None
    reasons: dict[str, str]
    data_loss_s: float | None
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "reasons": dict(self.reasons),
            "data_loss_s": self.data_loss_s,
            "forced": self.forced,
        }


def _seconds(value: float) -> str:
    return f"{value:g} s"


def choose_target(
    regions_health: dict[str, RegionHealth], config: FailoverConfig, active: str, *, force: bool = False
) -> Choice:
    """The region to fail over to from ``active``.

    Qualifies: not the active region, measured and healthy, and (if it holds replicated data) a known lag
    within ``config.max_data_loss_seconds``. After a whole-region loss a replica's health and lag are those of
    its role (``RegionHealth.lag_note``: the last lag measured while its link was up, see core.failover.health);
    a lag never measured stays unknown. ``force`` drops the lag condition (an unknown lag included) but
    never the health one: promoting into an unhealthy region helps nobody.
    """
    if active not in {r.name for r in config.regions}:
        known = ", ".join(r.name for r in config.regions)
        raise ConfigError(f"unknown active region {short(active)}; the stack's regions are: {known}")
    limit = config.max_data_loss_seconds
    reasons: dict[str, str] = {}
    candidates: list[tuple[str, float | None, bool]] = []  # (region, lag, within the limit), by priority
    for region in config.by_priority():
        name = region.name
        health = regions_health.get(name)
        if name == active:
            reasons[name] = "the active region (the one being left)"
            continue
        if health is None:
            reasons[name] = "not chosen: no health measured"
            continue
        if not health.healthy:
            failed = ", ".join(health.failed) or "no checks"
            reasons[name] = f"not chosen: unhealthy (score {health.score:.2f}; failed: {failed})"
            continue
        lag = health.lag_s
        if region.has_data and lag is None:
            candidates.append((name, None, False))
            why = health.lag_note.removeprefix("lag unknown: ") or "no passing check measured it"
            reasons[name] = f"not chosen: replication lag unknown ({why})"
        elif lag is not None and lag > limit:
            candidates.append((name, lag, False))
            reasons[name] = f"not chosen: lags {_seconds(lag)}, over the {_seconds(limit)} allowed data loss"
            if health.lag_note:
                reasons[name] += f" (the lag: {health.lag_note})"
        else:
            candidates.append((name, lag, True))
    pool = candidates if force else [c for c in candidates if c[2]]
    target = pool[0] if pool else None
    for name, lag, within in candidates:
        priority = config.region(name).priority
        if target is not None and name == target[0]:
            if not within:
                why = reasons[name].removeprefix("not chosen: ")
                reasons[name] = f"chosen by force: priority {priority}, healthy; {why}"
                continue
            lag_text = "no replicated data" if lag is None else f"lag {_seconds(lag)}"
            score = regions_health[name].score
            reasons[name] = (
                f"chosen: priority {priority}, healthy (score {score:.2f}), {lag_text} within {_seconds(limit)}"
            )
            if lag is not None and regions_health[name].lag_note:
                # A whole-region loss: the lag is the bound from before the link went down; say how it was made.
                reasons[name] += f" (the lag: {regions_health[name].lag_note})"
        elif within and target is not None:
            best = config.region(target[0])
            reasons[name] = f"qualifies, but priority {priority} ranks below {best.name} (priority {best.priority})"
    return Choice(
        target=target[0] if target else None, reasons=reasons, data_loss_s=target[1] if target else None, forced=force
    )


@dataclass(frozen=True)
class State:
    """The active region and its fencing epoch. Every change of the active region increments the epoch; a
    monitor or failover that read an older epoch refuses to act (two writable primaries must never exist).

    ``in_progress`` names the operation that claimed this epoch and has not completed yet ("failover to
    us-east-1"): a second operation must not start on top of it. ``outcome`` is how the last one ended.
    ``previous`` is the region that was active before this epoch (the one a failover left).
    """

    active_region: str
    epoch: int
    changed_at: datetime
    reason: str
    in_progress: str | None = None
    outcome: str | None = None
    previous: str | None = None

    def next(self, new_active: str, reason: str, *, at: datetime | None = None) -> State:
        """The state after moving to ``new_active`` (epoch + 1)."""
        return State(new_active, self.epoch + 1, at or datetime.now(UTC), reason)

    def check_epoch(self, expected: int) -> None:
        """Refuse to act on a state read at another epoch."""
        if expected != self.epoch:
            raise StaleEpochError(
                f"failover state is at epoch {self.epoch} (active region {self.active_region}), not {expected}: "
                "another monitor or failover changed it; re-read the state and decide again"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "active_region": self.active_region,
            "epoch": self.epoch,
            "changed_at": self.changed_at.isoformat(),
            "reason": self.reason,
            "in_progress": self.in_progress,
            "outcome": self.outcome,
            "previous": self.previous,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        # Documents written before in_progress/outcome/previous existed still load (all None).
        return cls(
            data["active_region"],
            int(data["epoch"]),
            datetime.fromisoformat(data["changed_at"]),
            data["reason"],
            in_progress=data.get("in_progress"),
            outcome=data.get("outcome"),
            previous=data.get("previous"),
        )
