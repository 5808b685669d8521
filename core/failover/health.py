"""Health of a region: checks, a weighted score, and hysteresis before a region counts as down.

Probes (``core.failover.probes``) produce ``Check``s; ``score_region`` turns them into a ``RegionHealth``
without any I/O; ``Tracker`` remembers consecutive failures between monitor runs (``to_dict``/``from_dict``).

A whole-region loss (as Patroni's maximum_lag_on_failover): when the active region is down, a replica whose
upstream server there does not answer fails its link check ("postgres.replication", ...) only because its
primary is gone. If it has replayed everything it received it is healthy for its role: that link check
becomes informational (weight 0, detail kept), and its data-loss bound is the last lag the ``Tracker`` measured
while the link was up, plus, if the link was seen down while the upstream still answered, the time from that
measurement until the upstream was first seen lost. No lag ever measured: the lag stays unknown. While the
active region is up a lost link keeps its weight (a replica cut off from a live primary is a real problem).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from core.failover.topology import RegionConfig

# A region is healthy when at least this weighted share of its checks passes: one failed health URL
# among several databases must not trigger a failover, a dead primary (usually the heaviest checks) must.
HEALTHY_SCORE = 0.75
_INFORMATIONAL = "informational: its upstream is lost with the active region and it replayed all it received"


@dataclass(frozen=True)
class Check:
    """One probe result. ``weight`` is its share in the region's score (0: informational only);
    ``lag_s``/``lag_bytes`` are the replication lag it measured, if it measures one.

    A replica's link check names the kind of server it replicates from in ``upstream`` ("postgres", "mysql",
    "redis"; None for every other check) and says in ``replayed`` whether everything it received is applied
    (None: not known)."""

    name: str
    ok: bool
    latency_s: float | None = None
    detail: str = ""
    weight: float = 1.0
    lag_s: float | None = None
    lag_bytes: int | None = None
    upstream: str | None = None
    replayed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        return cls(**data)


@dataclass(frozen=True)
class RegionHealth:
    """A region's checks at one moment, their weighted score (0..1) and verdict, and its largest replication lag.

    ``lag_note`` says where the lag comes from when a link to the upstream is down (the last one measured
    while it was up, or why it is unknown); empty when every lag was measured now."""

    region: str
    checks: tuple[Check, ...]
    score: float
    healthy: bool
    lag_s: float | None
    at: datetime
    lag_bytes: int | None = None
    lag_note: str = ""

    @property
    def failed(self) -> list[str]:
        """Names of the failed checks that count (weight > 0)."""
        return [c.name for c in self.checks if not c.ok and c.weight > 0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "checks": [c.to_dict() for c in self.checks],
            "score": self.score,
            "healthy": self.healthy,
            "lag_s": self.lag_s,
            "lag_bytes": self.lag_bytes,
            "lag_note": self.lag_note,
            "at": self.at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionHealth:
        return cls(
            region=data["region"],
            checks=tuple(Check.from_dict(c) for c in data["checks"]),
            score=data["score"],
            healthy=data["healthy"],
            lag_s=data["lag_s"],
            lag_bytes=data.get("lag_bytes"),
            at=datetime.fromisoformat(data["at"]),
            lag_note=data.get("lag_note", ""),
        )


@dataclass(frozen=True)
class LagBound:
    """The data-loss bound of a replica whose link to its upstream is down (None: unknown) and how it was made."""

    lag_s: float | None
    lag_bytes: int | None
    note: str


def score_region(
    region: RegionConfig | str,
    checks: list[Check] | tuple[Check, ...],
    *,
    at: datetime | None = None,
    healthy_score: float = HEALTHY_SCORE,
    upstream_lost: Collection[str] = (),
    lost_lag: LagBound | None = None,
) -> RegionHealth:
    """Weighted share of passed checks, with the region's ``weights`` overriding the probes' weights.

    No checks (or only weight-0 ones) scores 0: a region we know nothing about is not healthy.
    The lag is the largest any passed check measured (a failed check's lag is not trustworthy); None when
    none measured one.

    ``upstream_lost``: the kinds of server ("postgres", ...) whose upstream is lost with the active region (only
    given while the active region is down). A failed link check to one of them whose replica ``replayed``
    everything becomes informational (weight 0), and the region's lag includes ``lost_lag`` (unknown without it).
    """
    weights = region.weights if isinstance(region, RegionConfig) else {}
    name = region.name if isinstance(region, RegionConfig) else region
    weighted = tuple(replace(c, weight=weights[c.name]) if c.name in weights else c for c in checks)
    relaxed = False
    if upstream_lost:
        adjusted = []
        for c in weighted:
            if not c.ok and c.upstream in upstream_lost and c.replayed is True:
                relaxed = True
                c = replace(c, weight=0, detail=f"{c.detail} ({_INFORMATIONAL})")
            adjusted.append(c)
        weighted = tuple(adjusted)
    total = sum(c.weight for c in weighted)
    passed = sum(c.weight for c in weighted if c.ok)
    score = round(passed / total, 4) if total > 0 else 0.0
    lags = [c.lag_s for c in weighted if c.ok and c.lag_s is not None]
    lag_bytes = [c.lag_bytes for c in weighted if c.ok and c.lag_bytes is not None]
    lag_s, lag_b, note = (max(lags) if lags else None), (max(lag_bytes) if lag_bytes else None), ""
    if relaxed:
        # A link that is down has no lag of its own: the bound from before it went down stands in for it, and
        # without one the region's lag is unknown whatever its other links measure.
        bound = lost_lag or LagBound(None, None, "lag unknown: its link to the upstream is down")
        lag_s = None if bound.lag_s is None else max([*lags, bound.lag_s])
        lag_b = None if bound.lag_bytes is None else max([*lag_bytes, bound.lag_bytes])
        note = bound.note
    return RegionHealth(
        region=name,
        checks=weighted,
        score=score,
        healthy=score >= healthy_score,
        lag_s=lag_s,
        lag_bytes=lag_b,
        at=at or datetime.now(UTC),
        lag_note=note,
    )


@dataclass(frozen=True)
class RegionState:
    """Where a region stands after an observation; ``changed`` says it just went down or came back up."""

    region: str
    consecutive_failures: int
    down: bool
    changed: bool


@dataclass(frozen=True)
class KnownLag:
    """A region's lag at the last observation where every link to its upstream was up."""

    lag_s: float | None
    lag_bytes: int | None
    at: datetime


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


@dataclass
class Tracker:
    """Hysteresis over health observations, and what the links to the upstream last measured.

    A region counts as down only after ``failures_before_down`` consecutive unhealthy observations (one blip
    must not move traffic), and up again after a single healthy one (a recovered region is usable at once;
    failing back is a separate, deliberate step). Regions never observed are up.

    ``remember`` keeps, per region, the lag at the last observation with every link up (``last_lag``), when its
    links were first seen down since (``link_down_at``) and when their upstream was first seen lost
    (``upstream_lost_at``): ``lag_bound`` makes the data-loss bound of a whole-region loss from them. All three
    are about the links to one active region (``link_upstream``): another active region starts them afresh.
    """

    failures_before_down: int
    failures: dict[str, int] = field(default_factory=dict)
    down: dict[str, bool] = field(default_factory=dict)
    last_lag: dict[str, KnownLag] = field(default_factory=dict)
    link_down_at: dict[str, datetime] = field(default_factory=dict)
    upstream_lost_at: dict[str, datetime] = field(default_factory=dict)
    link_upstream: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.failures_before_down < 1:
            raise ValueError(f"failures_before_down must be 1 or more, not {self.failures_before_down}")

    def observe(self, region: str, health: RegionHealth) -> RegionState:
        was_down = self.down.get(region, False)
        if health.healthy:
            self.failures[region] = 0
            self.down[region] = False
        else:
            self.failures[region] = self.failures.get(region, 0) + 1
            self.down[region] = was_down or self.failures[region] >= self.failures_before_down
        return self.state(region, changed=self.down[region] != was_down)

    def state(self, region: str, *, changed: bool = False) -> RegionState:
        return RegionState(region, self.failures.get(region, 0), self.down.get(region, False), changed)

    def remember(self, region: str, health: RegionHealth, *, upstream: str, upstream_answers: bool) -> None:
        """Note the state of ``region``'s links to its upstream, the active region ``upstream``;
        ``upstream_answers``: every upstream server of a failed link answered the monitor at this observation.
        A region without link checks is left alone."""
        links = [c for c in health.checks if c.upstream is not None]
        if not links:
            return
        if self.link_upstream.get(region) != upstream:
            # After a failover the lags measured against the old primary say nothing about the new one.
            for memory in (self.last_lag, self.link_down_at, self.upstream_lost_at):
                memory.pop(region, None)
            self.link_upstream[region] = upstream
        if all(c.ok for c in links):
            self.last_lag[region] = KnownLag(health.lag_s, health.lag_bytes, health.at)
            self.link_down_at.pop(region, None)
            self.upstream_lost_at.pop(region, None)
            return
        self.link_down_at.setdefault(region, health.at)
        if not upstream_answers:
            self.upstream_lost_at.setdefault(region, health.at)

    def lag_bound(self, region: str, upstream: str, at: datetime) -> LagBound:
        """The data loss of promoting ``region`` now that its links to ``upstream`` (the active region) are lost.

        The links went down with their upstream (first seen down at the observation that first saw the upstream
        lost): the last lag measured while they were up. They were down earlier, while the upstream still
        answered: that lag plus the time from its measurement until the upstream was first seen lost (what the
        upstream may have written meanwhile). Never measured: unknown.
        """
        known = self.last_lag.get(region) if self.link_upstream.get(region) == upstream else None
        if known is None or known.lag_s is None:
            return LagBound(
                None, None, f"lag unknown: its link to {upstream} is down and no lag was measured while it was up"
            )
        down_at = self.link_down_at.get(region, at)
        lost_at = self.upstream_lost_at.get(region, at)
        if lost_at <= down_at:
            return LagBound(
                known.lag_s,
                known.lag_bytes,
                f"{known.lag_s:g} s measured at {_iso(known.at)} while its link to {upstream} was up",
            )
        gap = max(0.0, (lost_at - known.at).total_seconds())
        return LagBound(
            round(known.lag_s + gap, 3),
            None,  # bytes written while the link was down are not known
            f"its link to {upstream} was down before {upstream} was lost: {known.lag_s:g} s measured at "
            f"{_iso(known.at)} plus {gap:g} s until {upstream} was first seen lost at {_iso(lost_at)}",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "failures_before_down": self.failures_before_down,
            "failures": dict(self.failures),
            "down": dict(self.down),
            "last_lag": {
                name: {"lag_s": k.lag_s, "lag_bytes": k.lag_bytes, "at": k.at.isoformat()}
                for name, k in self.last_lag.items()
            },
            "link_down_at": {name: at.isoformat() for name, at in self.link_down_at.items()},
            "upstream_lost_at": {name: at.isoformat() for name, at in self.upstream_lost_at.items()},
            "link_upstream": dict(self.link_upstream),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, failures_before_down: int | None = None) -> Tracker:
        """Restore a tracker; ``failures_before_down`` (the stack's current setting) overrides the stored one.
        Documents written before the link fields existed load with none remembered."""
        return cls(
            failures_before_down=failures_before_down or data["failures_before_down"],
            failures={k: int(v) for k, v in data.get("failures", {}).items()},
            down={k: bool(v) for k, v in data.get("down", {}).items()},
            last_lag={
                k: KnownLag(v.get("lag_s"), v.get("lag_bytes"), datetime.fromisoformat(v["at"]))
                for k, v in data.get("last_lag", {}).items()
            },
            link_down_at={k: datetime.fromisoformat(v) for k, v in data.get("link_down_at", {}).items()},
            upstream_lost_at={k: datetime.fromisoformat(v) for k, v in data.get("upstream_lost_at", {}).items()},
            link_upstream={k: str(v) for k, v in data.get("link_upstream", {}).items()},
        )
