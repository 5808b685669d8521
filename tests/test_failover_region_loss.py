"""A whole-region loss on throw-away pairs of this module (the session pairs keep their roles): every primary
of the "west" region is stopped at once, and the monitor still chooses the "east" region holding their replicas.

Its links to the lost upstreams fail (PostgreSQL WAL receiver gone, MariaDB IO thread, Redis master link), yet
with everything received replayed the region is healthy for its role, and the data-loss bound is the last lag
the tracker (kept in the vault between monitor runs) measured while the links were up. A tracker that only
saw the links down is refused for an unknown lag; one that saw a link down while its primary still answered
adds the time until the primary was lost. Before the active region counts as down, a lost link keeps counting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import NoHealthyRegionError
from core.failover.health import Tracker
from core.failover.monitor import assess, render_assessment
from core.failover.probes import probe_mysql, probe_postgres, probe_redis
from core.failover.run import plan_failover
from core.failover.state import StateStore
from core.failover.topology import FailoverConfig
from core.storage.local import LocalStore
from tests.fixtures_replication import (
    STANDBY_OPTIONS,
    MySQLPair,
    PgPair,
    RedisPair,
    started_mysql_pair,
    started_pg_pair,
    started_redis_pair,
    wait_until,
)

T0 = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
PROBE_TIMEOUT = 2.0


@dataclass
class Regions:
    pg: PgPair
    my: MySQLPair
    rd: RedisPair

    def config(self) -> FailoverConfig:
        def dump(cfg) -> dict:
            data = cfg.model_dump(exclude={"name"})
            data["password"] = cfg.password.get_secret_value()
            return data

        return FailoverConfig.model_validate(
            {
                "failures_before_down": 2,
                "max_data_loss_seconds": 30,
                "active_region": "west",
                "regions": [
                    {
                        "name": "west",
                        "priority": 1,
                        "postgres": dump(self.pg.primary.config()),
                        "mysql": dump(self.my.primary.config()),
                        "redis": dump(self.rd.primary.config()),
                    },
                    {
                        "name": "east",
                        "priority": 2,
                        "postgres": dump(self.pg.standby.config()),
                        "mysql": dump(self.my.replica.config()),
                        "redis": dump(self.rd.replica.config()),
                    },
                ],
            }
        )


def _link(checks, name: str):
    return next(c for c in checks if c.name == name)


@pytest.fixture(scope="module")
def regions() -> Iterator[Regions]:
    """A PostgreSQL primary + streaming standby, a MariaDB primary + GTID replica, a Redis primary + replica."""
    with (
        started_pg_pair(
            "gdr-pg-loss-", standby_options=STANDBY_OPTIONS + " -c wal_retrieve_retry_interval=200ms"
        ) as pg,
        started_mysql_pair((31, 32)) as my,
        started_redis_pair() as rd,
    ):
        yield Regions(pg, my, rd)


def test_the_standby_region_is_chosen_after_the_whole_primary_region_is_lost(regions: Regions, tmp_path):
    config = regions.config()
    states = StateStore(LocalStore(tmp_path / "vault"), config)  # the monitor's tracker lives in the vault
    late = Tracker(config.failures_before_down)  # a second monitor that also saw a link go down early

    def monitor_run(at: datetime):
        """One monitor run as the monitor flow makes it: tracker loaded from the vault, saved back."""
        tracker = states.load_tracker()
        assessment = assess(config, tracker, timeout=PROBE_TIMEOUT, at=at)
        states.save_tracker(tracker)
        return assessment

    healthy = monitor_run(T0)
    assess(config, late, timeout=PROBE_TIMEOUT, at=T0)
    assert (healthy.active_down, healthy.regions["east"].healthy, healthy.regions["east"].lag_note) == (False, True, "")
    known = states.load_tracker().last_lag["east"]
    assert known.at == T0 and known.lag_s is not None and known.lag_s <= 1.0, known

    # A replica cut off from a primary that answers is a fault of its own: the link keeps its weight.
    with regions.my.replica.connect() as conn, conn.cursor() as cur:
        cur.execute("STOP REPLICA IO_THREAD")
    cut = assess(config, late, timeout=PROBE_TIMEOUT, at=T0 + timedelta(seconds=60))
    east = cut.regions["east"]
    assert (cut.active_down, east.failed, _link(east.checks, "mysql.replication").weight) == (
        False,
        ["mysql.replication"],
        1.0,
    )

    # The whole west region dies.
    regions.pg.primary.stop()
    regions.my.primary.stop()
    regions.rd.primary.stop()
    standby, replica = regions.pg.standby.config(), regions.rd.replica.config()
    wait_until(lambda: not _link(probe_postgres(standby), "postgres.replication").ok, 15, "standby losing its stream")
    wait_until(lambda: not _link(probe_redis(replica), "redis.replication").ok, 15, "replica losing its link")
    links = [
        _link(probe_postgres(standby), "postgres.replication"),
        _link(probe_mysql(regions.my.replica.config()), "mysql.replication"),
        _link(probe_redis(replica), "redis.replication"),
    ]
    assert [(c.ok, c.upstream, c.replayed) for c in links] == [
        (False, "postgres", True),
        (False, "mysql", True),
        (False, "redis", True),
    ]

    lost_at = T0 + timedelta(seconds=120)
    first = monitor_run(lost_at)
    # Down only at the second failed run: until then the lost links count (and the region looks unhealthy).
    assert (first.active_down, first.choice, first.regions["east"].healthy) == (False, None, False)
    second = monitor_run(lost_at + timedelta(seconds=1))
    assert (second.active_down, second.regions["west"].score) == (True, 0.0)
    east = second.regions["east"]
    assert (east.healthy, east.score, east.failed) == (True, 1.0, [])
    assert {c.name: (c.ok, c.weight) for c in east.checks if c.upstream} == {
        "postgres.replication": (False, 0),
        "mysql.replication": (False, 0),
        "redis.replication": (False, 0),
    }
    # The data-loss bound: the lag measured at T0, while the links were up.
    assert second.choice is not None and second.choice.target == "east", second.choice
    assert second.choice.data_loss_s == east.lag_s == known.lag_s
    assert east.lag_note == f"{known.lag_s:g} s measured at 2026-12-06T04:00:00+00:00 while its link to west was up"
    assert second.choice.reasons["east"].startswith("chosen: priority 2, healthy (score 1.00), lag ")
    assert f"lag of east: {east.lag_note}" in render_assessment(second)
    plan = plan_failover(config, states.read(), second, reason="west lost")
    assert (plan.target, plan.forced, plan.data_loss_s) == ("east", False, known.lag_s)

    # The monitor that saw the MariaDB link down while west still answered: that minute may be lost.
    for at in (lost_at, lost_at + timedelta(seconds=1)):
        early = assess(config, late, timeout=PROBE_TIMEOUT, at=at)
    gap = (lost_at - T0).total_seconds()
    assert early.regions["east"].lag_s == round(late.last_lag["east"].lag_s + gap, 3) >= gap
    assert early.choice.target is None
    assert early.choice.reasons["east"].startswith(f"not chosen: lags {early.regions['east'].lag_s:g} s, over the 30 s")
    assert "was down before west was lost" in early.choice.reasons["east"]

    # A monitor that never saw the links up knows no lag: refused, unless forced (recorded as such).
    blind = Tracker(config.failures_before_down)
    for at in (lost_at, lost_at + timedelta(seconds=1)):
        unknown = assess(config, blind, timeout=PROBE_TIMEOUT, at=at)
    assert (unknown.active_down, unknown.regions["east"].healthy, unknown.regions["east"].lag_s) == (True, True, None)
    assert unknown.choice.reasons["east"] == (
        "not chosen: replication lag unknown (its link to west is down and no lag was measured while it was up)"
    )
    with pytest.raises(NoHealthyRegionError, match="replication lag unknown"):
        plan_failover(config, states.read(), unknown, reason="west lost")
    forced = plan_failover(config, states.read(), unknown, "east", force=True, reason="west lost")
    assert (forced.target, forced.forced, forced.data_loss_s) == ("east", True, None)
