"""One monitor run: probe every region, score it, apply hysteresis and, when the active region is down,
choose where to fail over to.

``assess`` does the I/O (probes, in parallel threads) and nothing else: it never promotes, fences or
switches DNS; the monitor flow decides what to do with the ``Assessment`` (page, or fail over).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.failover.choose import Choice, choose_target
from core.failover.health import Check, RegionHealth, RegionState, Tracker, score_region
from core.failover.probes import DEFAULT_TIMEOUT, probe_http, probe_mysql, probe_postgres, probe_redis
from core.failover.topology import FailoverConfig, RegionConfig

EVENT_DOWN = "genesis-dr.region.down"
EVENT_UP = "genesis-dr.region.up"
ENGINES = ("postgres", "mysql", "redis")


@dataclass(frozen=True)
class Assessment:
    """What one monitor run saw: each region's health and hysteresis state, and the choice when needed.

    ``all_down``: no region is healthy right now (the source documents' all_regions_unhealthy), even before
    hysteresis marks them down. ``choice`` is only made when the active region is down.
    """

    at: datetime
    active: str
    regions: dict[str, RegionHealth]
    states: dict[str, RegionState]
    active_down: bool
    all_down: bool
    choice: Choice | None
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "active": self.active,
            "regions": {name: h.to_dict() for name, h in self.regions.items()},
            "states": {name: asdict(s) for name, s in self.states.items()},
            "active_down": self.active_down,
            "all_down": self.all_down,
            "choice": self.choice.to_dict() if self.choice else None,
            "events": [dict(e) for e in self.events],
        }


def _probes(region: RegionConfig, timeout: float) -> list[Callable[[], list[Check]]]:
    """The region's probes, in a fixed order (databases, then health URLs) so check lists are stable."""
    probes: list[Callable[[], list[Check]]] = []
    if region.postgres is not None:
        probes.append(lambda cfg=region.postgres: probe_postgres(cfg, timeout))
    if region.mysql is not None:
        probes.append(lambda cfg=region.mysql: probe_mysql(cfg, timeout))
    if region.redis is not None:
        probes.append(lambda cfg=region.redis: probe_redis(cfg, timeout))
    for url in region.health_urls:
        probes.append(lambda url=url: probe_http(url, timeout))
    return probes


def _lost_kinds(active: RegionConfig, health: RegionHealth) -> set[str]:
    """The kinds of database the active region holds whose server did not answer (no passed check of its kind):
    the upstreams its replicas elsewhere lost."""
    answered = {c.name.split(".", 1)[0] for c in health.checks if c.ok}
    return {kind for kind in ENGINES if getattr(active, kind) is not None and kind not in answered}


def assess(
    config: FailoverConfig,
    tracker: Tracker,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    at: datetime | None = None,
    active: str | None = None,
) -> Assessment:
    """Probe every region, score it (region weights applied), observe it in ``tracker`` and, when the active
    region (``active``, default ``config.active_region``; the recorded state passes its own) is down, choose a
    target. Every probe runs in its own thread, so a run takes about one ``timeout`` however many servers hang.

    ``tracker`` also remembers each region's links to the active region (``Tracker.remember``): once the active
    region is down, a replica whose upstream there does not answer and which replayed all it received is scored
    without that link, with the data-loss bound the tracker keeps (see ``core.failover.health``).
    """
    active = active or config.active_region
    config.region(active)  # an unknown active region is a one-line ConfigError naming the known ones
    at = at or datetime.now(UTC)
    regions = config.by_priority()
    jobs = [(region, probe) for region in regions for probe in _probes(region, timeout)]
    checks: dict[str, list[Check]] = {region.name: [] for region in regions}
    if jobs:
        with ThreadPoolExecutor(max_workers=min(32, len(jobs)), thread_name_prefix="gdr-probe") as pool:
            futures = [(region.name, pool.submit(probe)) for region, probe in jobs]
            for name, future in futures:  # in submission order: the checks keep the probes' order
                checks[name].extend(future.result())  # probes never raise: failures are failed checks
    health = {r.name: score_region(r, checks[r.name], at=at) for r in regions}
    lost = _lost_kinds(config.region(active), health[active])
    for region in regions:
        if region.name != active:
            failed_links = [c.upstream for c in health[region.name].checks if c.upstream and not c.ok]
            tracker.remember(
                region.name, health[region.name], upstream=active, upstream_answers=not lost.intersection(failed_links)
            )
    # The active region is observed first: only once it counts as down do the other regions' links to it stop
    # counting against them (before that a lost link may be a replica's own problem).
    states: dict[str, RegionState] = {active: tracker.observe(active, health[active])}
    if states[active].down and lost:
        for region in regions:
            if region.name != active:
                health[region.name] = score_region(
                    region,
                    checks[region.name],
                    at=at,
                    upstream_lost=lost,
                    lost_lag=tracker.lag_bound(region.name, active, at),
                )
    events: list[dict[str, Any]] = []
    for region in regions:
        state = states.get(region.name) or tracker.observe(region.name, health[region.name])
        states[region.name] = state
        if state.changed:
            events.append(
                {
                    "event": EVENT_DOWN if state.down else EVENT_UP,
                    "region": region.name,
                    "score": health[region.name].score,
                }
            )
    states = {region.name: states[region.name] for region in regions}  # by priority, as the regions
    active_down = states[active].down
    return Assessment(
        at=at,
        active=active,
        regions=health,
        states=states,
        active_down=active_down,
        all_down=not any(h.healthy for h in health.values()),
        choice=choose_target(health, config, active) if active_down else None,
        events=events,
    )


def _lag(health: RegionHealth) -> str:
    if health.lag_s is None and health.lag_bytes is None:
        return "-"
    parts = []
    if health.lag_s is not None:
        parts.append(f"{health.lag_s:g}s")
    if health.lag_bytes is not None:
        parts.append(f"{health.lag_bytes}B")
    return "/".join(parts)


def render_assessment(a: Assessment) -> str:
    """The text of ``failover status``: the active region, then one line per region and the choice, if any."""
    lines = [f"active region: {a.active} ({'DOWN' if a.active_down else 'up'}) at {a.at.isoformat(timespec='seconds')}"]
    rows = [("region", "score", "status", "lag", "failures", "failed checks")]
    for name, health in a.regions.items():
        state = a.states[name]
        status = "down" if state.down else ("healthy" if health.healthy else "unhealthy")
        marker = " *" if name == a.active else ""
        rows.append(
            (
                name + marker,
                f"{health.score:.2f}",
                status,
                _lag(health),
                str(state.consecutive_failures),
                ", ".join(health.failed) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    lines.extend(f"lag of {name}: {h.lag_note}" for name, h in a.regions.items() if h.lag_note)
    if a.all_down:
        lines.append("no region is healthy")
    if a.choice is not None:
        target = a.choice.target or "none"
        loss = "" if a.choice.data_loss_s is None else f" (data loss up to {a.choice.data_loss_s:g} s)"
        lines.append(f"failover target: {target}{loss}")
        lines.extend(f"  {name}: {reason}" for name, reason in a.choice.reasons.items())
    return "\n".join(lines)
