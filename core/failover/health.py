"""Health of a region: checks, a weighted score, and hysteresis before a region counts as down.

Probes (``core.failover.probes``) produce ``Check``s; ``score_region`` turns them into a ``RegionHealth``
without any I/O; ``Tracker`` remembers consecutive failures between monitor runs (``to_dict``/``from_dict``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from core.failover.topology import RegionConfig

# A region is healthy when at least this weighted share of its checks passes: one failed health URL
# among several databases must not trigger a failover, a dead primary (usually the heaviest checks) must.
HEALTHY_SCORE = 0.75


@dataclass(frozen=True)
class Check:
    """One probe result. ``weight`` is its share in the region's score (0: informational only);
    ``lag_s``/``lag_bytes`` are the replication lag it measured, if it measures one."""

    name: str
    ok: bool
    latency_s: float | None = None
    detail: str = ""
    weight: float = 1.0
    lag_s: float | None = None
    lag_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        return cls(**data)


@dataclass(frozen=True)
class RegionHealth:
    """A region's checks at one moment, their weighted score (0..1) and verdict, and its largest replication lag."""

    region: str
    checks: tuple[Check, ...]
    score: float
    healthy: bool
    lag_s: float | None
    at: datetime
    lag_bytes: int | None = None

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
        )


def score_region(
    region: RegionConfig | str,
    checks: list[Check] | tuple[Check, ...],
    *,
    at: datetime | None = None,
    healthy_score: float = HEALTHY_SCORE,
) -> RegionHealth:
    """Weighted share of passed checks, with the region's ``weights`` overriding the probes' weights.

    No checks (or only weight-0 ones) scores 0: a region we know nothing about is not healthy.
    The lag is the largest any passed check measured (a failed check's lag is not trustworthy); None when
    none measured one.
    """
    weights = region.weights if isinstance(region, RegionConfig) else {}
    name = region.name if isinstance(region, RegionConfig) else region
    weighted = tuple(replace(c, weight=weights[c.name]) if c.name in weights else c for c in checks)
    total = sum(c.weight for c in weighted)
    passed = sum(c.weight for c in weighted if c.ok)
    score = round(passed / total, 4) if total > 0 else 0.0
    lags = [c.lag_s for c in weighted if c.ok and c.lag_s is not None]
    lag_bytes = [c.lag_bytes for c in weighted if c.ok and c.lag_bytes is not None]
    return RegionHealth(
        region=name,
        checks=weighted,
        score=score,
        healthy=score >= healthy_score,
        lag_s=max(lags) if lags else None,
        lag_bytes=max(lag_bytes) if lag_bytes else None,
        at=at or datetime.now(UTC),
    )


@dataclass(frozen=True)
class RegionState:
    """Where a region stands after an observation; ``changed`` says it just went down or came back up."""

    region: str
    consecutive_failures: int
    down: bool
    changed: bool


@dataclass
class Tracker:
    """Hysteresis over health observations.

    A region counts as down only after ``failures_before_down`` consecutive unhealthy observations (one blip
    must not move traffic), and up again after a single healthy one (a recovered region is usable at once;
    failing back is a separate, deliberate step). Regions never observed are up.
    """

    failures_before_down: int
    failures: dict[str, int] = field(default_factory=dict)
    down: dict[str, bool] = field(default_factory=dict)

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "failures_before_down": self.failures_before_down,
            "failures": dict(self.failures),
            "down": dict(self.down),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, failures_before_down: int | None = None) -> Tracker:
        """Restore a tracker; ``failures_before_down`` (the stack's current setting) overrides the stored one."""
        return cls(
            failures_before_down=failures_before_down or data["failures_before_down"],
            failures={k: int(v) for k, v in data.get("failures", {}).items()},
            down={k: bool(v) for k, v in data.get("down", {}).items()},
        )
