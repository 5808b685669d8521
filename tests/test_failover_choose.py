"""Golden tests of the failover topology, health scoring, hysteresis and target choice (all pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from core.errors import ConfigError, DRError
from core.failover import StaleEpochError
from core.failover.choose import Choice, State, choose_target
from core.failover.health import Check, LagBound, RegionHealth, Tracker, score_region
from core.failover.topology import DnsConfig, FailoverConfig, RegionConfig
from core.sources import FieldProblem

AT = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
PG = {"host": "10.0.0.5", "port": 5432}


def config(regions: list[tuple[str, int, bool]], active: str, max_loss: float = 5) -> FailoverConfig:
    """regions: (name, priority, holds replicated data)."""
    return FailoverConfig.model_validate(
        {
            "max_data_loss_seconds": max_loss,
            "active_region": active,
            "regions": [
                {"name": n, "priority": p, **({"postgres": PG} if data else {"health_urls": [f"http://{n}/"]})}
                for n, p, data in regions
            ],
        }
    )


def health(region: str, ok: bool = True, lag: float | None = 0.0) -> RegionHealth:
    checks = [Check("postgres.connect", ok, 0.004, "" if ok else "connection refused")]
    if lag is not None:
        checks.append(Check("postgres.lag", ok, 0.002, "", lag_s=lag, lag_bytes=int(lag * 1000)))
    return score_region(region, checks, at=AT)


def problem_loc(exc: ValidationError) -> tuple:
    err = exc.errors()[0]
    problem = (err.get("ctx") or {}).get("error")
    return tuple(err["loc"]) + (problem.loc if isinstance(problem, FieldProblem) else ())


# -- topology ---------------------------------------------------------------------------------------------
THREE = [("us-west-2", 1, True), ("us-east-1", 2, True), ("eu-west-1", 3, True)]


def test_region_databases_are_named_after_the_region():
    cfg = FailoverConfig.model_validate(
        {
            "active_region": "us-west-2",
            "regions": [
                {
                    "name": "us-west-2",
                    "priority": 1,
                    "postgres": PG,
                    "mysql": {"database": "app"},
                    "redis": {"port": 6380},
                    "weights": {"postgres.lag": 3},
                },
                {"name": "us-east-1", "priority": 2, "rds_instance_id": "app-replica-east"},
            ],
        }
    )
    west = cfg.region("us-west-2")
    assert (west.postgres.name, west.mysql.name, west.redis.name) == (
        "us-west-2-postgres",
        "us-west-2-mysql",
        "us-west-2-redis",
    )
    assert (west.postgres.host, west.redis.port, west.mysql.database) == ("10.0.0.5", 6380, "app")
    assert cfg.region("us-east-1").has_data is True
    assert (cfg.policy, cfg.max_data_loss_seconds, cfg.failures_before_down, cfg.check_interval_seconds) == (
        "manual",
        5,
        3,
        60,
    )
    assert [r.name for r in cfg.by_priority()] == ["us-west-2", "us-east-1"]
    with pytest.raises(ConfigError, match=r"unknown region 'ap-south-1'; .*us-west-2, us-east-1$"):
        cfg.region("ap-south-1")


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({"regions": [{"name": "a", "priority": 1}], "active_region": "a"}, ("regions",), "at least 2 regions"),
        (
            {"regions": [{"name": "a", "priority": 1}, {"name": "a", "priority": 2}], "active_region": "a"},
            ("regions", 1, "name"),
            "'a' is used twice (also by regions[0])",
        ),
        (
            {"regions": [{"name": "a", "priority": 1}, {"name": "b", "priority": 1}], "active_region": "a"},
            ("regions", 1, "priority"),
            "priority 1 is also that of regions[0]",
        ),
        (
            {"regions": [{"name": "a", "priority": 1}, {"name": "b", "priority": 2}], "active_region": "c"},
            ("active_region",),
            "'c' is not a region (regions: a, b)",
        ),
        (
            {"regions": [{"name": "A b", "priority": 1}, {"name": "b", "priority": 2}], "active_region": "b"},
            ("regions", 0, "name"),
            "lowercase letters",
        ),
        (
            {"regions": [{"name": "a", "priority": 0}, {"name": "b", "priority": 2}], "active_region": "b"},
            ("regions", 0, "priority"),
            "priority must be 1 or more",
        ),
        (
            {
                "regions": [{"name": "a", "priority": 1, "weights": {"x": -1}}, {"name": "b", "priority": 2}],
                "active_region": "b",
            },
            ("regions", 0, "weights", "x"),
            "weight must be 0 or more",
        ),
        (
            {
                "regions": [{"name": "a", "priority": 1, "health_urls": ["ftp://x"]}, {"name": "b", "priority": 2}],
                "active_region": "b",
            },
            ("regions", 0, "health_urls", 0),
            "not an http(s) URL",
        ),
        (
            {
                "regions": [{"name": "a", "priority": 1, "postgres": {"hots": "x"}}, {"name": "b", "priority": 2}],
                "active_region": "b",
            },
            ("regions", 0, "postgres", "hots"),
            "Extra inputs are not permitted",
        ),
        (
            {
                "regions": [{"name": "a", "priority": 1}, {"name": "b", "priority": 2}],
                "active_region": "a",
                "failures_before_down": 0,
            },
            ("failures_before_down",),
            "greater than or equal to 1",
        ),
    ],
)
def test_topology_validation_names_the_field(data, loc, message):
    with pytest.raises(ValidationError) as info:
        FailoverConfig.model_validate(data)
    assert problem_loc(info.value) == loc
    assert message in str(info.value)


def test_dns_config_takes_the_source_documents_environment(monkeypatch):
    monkeypatch.setenv("ROUTE53_HOSTED_ZONE_ID", "Z0123456789")
    monkeypatch.setenv("DNS_RECORD_NAME", "app.example.com.")
    dns = DnsConfig(provider="route53", value="east.lb.example.com")
    assert (dns.zone, dns.record_name, dns.record_type, dns.ttl) == ("Z0123456789", "app.example.com.", "CNAME", 60)
    own = DnsConfig(provider="route53", zone="ZOWN", record_name="db.example.com.", value="10.1.2.3", record_type="A")
    assert (own.zone, own.record_name, own.record_type) == ("ZOWN", "db.example.com.", "A")
    # Cloud DNS zones are managed-zone names: the Route53 variable must not leak into them.
    with pytest.raises(ValidationError) as info:
        DnsConfig(provider="clouddns", project="acme", value="lb.example.com.")
    assert problem_loc(info.value) == ("zone",)
    gcp = DnsConfig(provider="clouddns", zone="prod-zone", project="acme", value="lb.example.com.")
    assert (gcp.zone, gcp.project, gcp.record_name) == ("prod-zone", "acme", "app.example.com.")


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({"provider": "route53", "record_name": "a.", "value": "x"}, ("zone",), "set ROUTE53_HOSTED_ZONE_ID"),
        ({"provider": "route53", "zone": "Z", "value": "x"}, ("record_name",), "set DNS_RECORD_NAME"),
        ({"provider": "route53", "zone": "Z", "record_name": "a.", "value": " "}, ("value",), "points at"),
        (
            {"provider": "route53", "zone": "Z", "record_name": "a.", "value": "x", "project": "p"},
            ("project",),
            "route53 has no project",
        ),
        ({"provider": "azure", "zone": "Z", "record_name": "a.", "value": "x"}, ("provider",), "'route53' or"),
        (
            {"provider": "route53", "zone": "Z", "record_name": "a.", "value": "x", "record_type": "MX"},
            ("record_type",),
            "'A', 'AAAA' or 'CNAME'",
        ),
        (
            {"provider": "route53", "zone": "Z", "record_name": "a.", "value": "x", "ttl": -1},
            ("ttl",),
            "greater than or equal to 0",
        ),
        ({"provider": "route53", "zone": "Z", "record_name": "a.", "value": "x", "tll": 5}, ("tll",), "Extra"),
    ],
)
def test_dns_config_validation_names_the_field(monkeypatch, data, loc, message):
    monkeypatch.delenv("ROUTE53_HOSTED_ZONE_ID", raising=False)
    monkeypatch.delenv("DNS_RECORD_NAME", raising=False)
    with pytest.raises(ValidationError) as info:
        DnsConfig.model_validate(data)
    assert problem_loc(info.value) == loc
    assert message in str(info.value)


# -- scoring ----------------------------------------------------------------------------------------------
def test_score_is_the_weighted_share_of_passed_checks_with_region_overrides():
    checks = [
        Check("postgres.connect", True, 0.003, weight=3),
        Check("postgres.lag", True, 0.001, weight=2, lag_s=0.4, lag_bytes=512),
        Check("redis.ping", True, 0.001, lag_s=1.5, lag_bytes=100),
        Check("http:/health", False, None, "HTTP 503", weight=2),
        Check("mysql.gtid", False, None, "replica stopped", weight=0, lag_s=99.0),  # informational only
    ]
    h = score_region("us-east-1", checks, at=AT)
    assert (h.score, h.healthy, h.lag_s, h.lag_bytes, h.failed) == (0.75, True, 1.5, 512, ["http:/health"])
    region = RegionConfig(name="us-east-1", priority=2, weights={"http:/health": 6})
    h = score_region(region, checks, at=AT)
    assert (h.score, h.healthy) == (0.5, False)
    assert [c.weight for c in h.checks] == [3, 2, 1, 6, 0]
    assert RegionHealth.from_dict(h.to_dict()) == h


@pytest.mark.parametrize(
    ("oks", "score", "healthy"),
    [
        ((), 0.0, False),
        ((True,), 1.0, True),
        ((False,), 0.0, False),
        ((True, True, True, False), 0.75, True),
        ((True, True, False), 0.6667, False),
    ],
)
def test_score_thresholds(oks, score, healthy):
    h = score_region("r", [Check(f"c{i}", ok) for i, ok in enumerate(oks)], at=AT)
    assert (h.score, h.healthy, h.lag_s) == (score, healthy, None)


def test_only_weightless_checks_score_zero():
    h = score_region("r", [Check("info", True, weight=0)], at=AT)
    assert (h.score, h.healthy) == (0.0, False)


# -- hysteresis -------------------------------------------------------------------------------------------
def test_region_goes_down_after_n_consecutive_failures_and_up_after_one_success():
    tracker = Tracker(failures_before_down=3)
    bad, good = health("a", ok=False), health("a")
    seen = [tracker.observe("a", h) for h in (bad, bad, good, bad, bad, bad, bad, good, good)]
    assert [(s.consecutive_failures, s.down, s.changed) for s in seen] == [
        (1, False, False),
        (2, False, False),
        (0, False, False),  # a success resets the count: two blips never add up to three
        (1, False, False),
        (2, False, False),
        (3, True, True),
        (4, True, False),
        (0, False, True),
        (0, False, False),
    ]
    assert tracker.state("never-seen") == tracker.state("never-seen", changed=False)
    assert (tracker.state("never-seen").down, tracker.state("never-seen").consecutive_failures) == (False, 0)


def test_tracker_survives_between_monitor_runs():
    tracker = Tracker(failures_before_down=2)
    tracker.observe("a", health("a", ok=False))
    tracker.observe("b", health("b", ok=False))
    tracker.observe("b", health("b", ok=False))
    restored = Tracker.from_dict(tracker.to_dict())
    assert restored == tracker
    assert restored.observe("a", health("a", ok=False)) == restored.state("a", changed=True)
    assert restored.state("a").down is True
    assert restored.observe("b", health("b", ok=False)).changed is False
    # The stack's current threshold wins over the stored one.
    assert Tracker.from_dict(tracker.to_dict(), failures_before_down=5).failures_before_down == 5
    with pytest.raises(ValueError, match="1 or more"):
        Tracker(failures_before_down=0)


# -- target choice: golden table --------------------------------------------------------------------------
GOLDEN = [
    pytest.param(
        THREE,
        "us-west-2",
        {
            "us-west-2": health("us-west-2", ok=False),
            "us-east-1": health("us-east-1", lag=0.4),
            "eu-west-1": health("eu-west-1", lag=0.1),
        },
        False,
        Choice(
            "us-east-1",
            {
                "us-west-2": "the active region (the one being left)",
                "us-east-1": "chosen: priority 2, healthy (score 1.00), lag 0.4 s within 5 s",
                "eu-west-1": "qualifies, but priority 3 ranks below us-east-1 (priority 2)",
            },
            0.4,
        ),
        id="priority-wins-over-lower-lag",
    ),
    pytest.param(
        THREE,
        "us-west-2",
        {
            "us-west-2": health("us-west-2", ok=False),
            "us-east-1": health("us-east-1", lag=12.0),
            "eu-west-1": health("eu-west-1", lag=2.0),
        },
        False,
        Choice(
            "eu-west-1",
            {
                "us-west-2": "the active region (the one being left)",
                "us-east-1": "not chosen: lags 12 s, over the 5 s allowed data loss",
                "eu-west-1": "chosen: priority 3, healthy (score 1.00), lag 2 s within 5 s",
            },
            2.0,
        ),
        id="lagging-first-choice-skipped",
    ),
    pytest.param(
        THREE,
        "us-west-2",
        {"us-east-1": health("us-east-1", lag=5.0), "eu-west-1": health("eu-west-1", ok=False)},
        False,
        Choice(
            "us-east-1",
            {
                "us-west-2": "the active region (the one being left)",
                "us-east-1": "chosen: priority 2, healthy (score 1.00), lag 5 s within 5 s",
                "eu-west-1": "not chosen: unhealthy (score 0.00; failed: postgres.connect, postgres.lag)",
            },
            5.0,
        ),
        id="lag-exactly-at-limit-qualifies",
    ),
    pytest.param(
        THREE,
        "us-west-2",
        {"us-east-1": health("us-east-1", lag=30.0), "eu-west-1": health("eu-west-1", ok=False)},
        False,
        Choice(
            None,
            {
                "us-west-2": "the active region (the one being left)",
                "us-east-1": "not chosen: lags 30 s, over the 5 s allowed data loss",
                "eu-west-1": "not chosen: unhealthy (score 0.00; failed: postgres.connect, postgres.lag)",
            },
            None,
        ),
        id="none-qualifies-every-reason-says-why",
    ),
    pytest.param(
        THREE,
        "us-west-2",
        {"us-east-1": health("us-east-1", lag=30.0), "eu-west-1": health("eu-west-1", lag=1.0)},
        True,
        Choice(
            "us-east-1",
            {
                "us-west-2": "the active region (the one being left)",
                "us-east-1": "chosen by force: priority 2, healthy; lags 30 s, over the 5 s allowed data loss",
                "eu-west-1": "qualifies, but priority 3 ranks below us-east-1 (priority 2)",
            },
            30.0,
            forced=True,
        ),
        id="force-takes-best-healthy-over-lag-limit",
    ),
    pytest.param(
        THREE,
        "us-west-2",
        {"us-east-1": health("us-east-1", ok=False), "eu-west-1": health("eu-west-1", ok=False)},
        True,
        Choice(
            None,
            {
                "us-west-2": "the active region (the one being left)",
                "us-east-1": "not chosen: unhealthy (score 0.00; failed: postgres.connect, postgres.lag)",
                "eu-west-1": "not chosen: unhealthy (score 0.00; failed: postgres.connect, postgres.lag)",
            },
            None,
            forced=True,
        ),
        id="force-never-picks-unhealthy",
    ),
    pytest.param(
        THREE,
        "us-west-2",
        {"us-east-1": health("us-east-1", lag=None), "eu-west-1": health("eu-west-1", lag=0.0)},
        False,
        Choice(
            "eu-west-1",
            {
                "us-west-2": "the active region (the one being left)",
                "us-east-1": "not chosen: replication lag unknown (no passing check measured it)",
                "eu-west-1": "chosen: priority 3, healthy (score 1.00), lag 0 s within 5 s",
            },
            0.0,
        ),
        id="unknown-lag-is-not-within-limit",
    ),
    pytest.param(
        THREE,
        "us-west-2",
        {"eu-west-1": health("eu-west-1", lag=0.2)},
        False,
        Choice(
            "eu-west-1",
            {
                "us-west-2": "the active region (the one being left)",
                "us-east-1": "not chosen: no health measured",
                "eu-west-1": "chosen: priority 3, healthy (score 1.00), lag 0.2 s within 5 s",
            },
            0.2,
        ),
        id="unmeasured-region-skipped",
    ),
    pytest.param(
        THREE,
        "us-east-1",
        {"us-west-2": health("us-west-2", lag=0.0), "eu-west-1": health("eu-west-1", lag=0.0)},
        False,
        Choice(
            "us-west-2",
            {
                "us-west-2": "chosen: priority 1, healthy (score 1.00), lag 0 s within 5 s",
                "us-east-1": "the active region (the one being left)",
                "eu-west-1": "qualifies, but priority 3 ranks below us-west-2 (priority 1)",
            },
            0.0,
        ),
        id="failback-to-the-primary-region",
    ),
    pytest.param(
        [("primary", 1, True), ("app-only", 2, False)],
        "primary",
        {"app-only": health("app-only", lag=None)},
        False,
        Choice(
            "app-only",
            {
                "primary": "the active region (the one being left)",
                "app-only": "chosen: priority 2, healthy (score 1.00), no replicated data within 5 s",
            },
            None,
        ),
        id="region-without-data-needs-no-lag",
    ),
    pytest.param(
        [("b", 20, True), ("a", 10, True), ("c", 5, True)],
        "c",
        {"a": health("a", lag=0.5), "b": health("b", lag=0.1), "c": health("c")},
        False,
        Choice(
            "a",
            {
                "c": "the active region (the one being left)",
                "a": "chosen: priority 10, healthy (score 1.00), lag 0.5 s within 5 s",
                "b": "qualifies, but priority 20 ranks below a (priority 10)",
            },
            0.5,
        ),
        id="sparse-priorities-in-any-order",
    ),
]


@pytest.mark.parametrize(("regions", "active", "healths", "force", "expected"), GOLDEN)
def test_choose_target_golden(regions, active, healths, force, expected):
    choice = choose_target(healths, config(regions, regions[0][0]), active, force=force)
    assert choice == expected
    assert all("\n" not in reason for reason in choice.reasons.values())


def test_choose_target_zero_data_loss_policy():
    cfg = config(THREE, "us-west-2", max_loss=0)
    choice = choose_target(
        {"us-east-1": health("us-east-1", lag=0.01), "eu-west-1": health("eu-west-1", lag=0.0)}, cfg, "us-west-2"
    )
    assert (choice.target, choice.data_loss_s) == ("eu-west-1", 0.0)
    assert choice.reasons["us-east-1"] == "not chosen: lags 0.01 s, over the 0 s allowed data loss"


def test_choose_target_refuses_an_unknown_active_region():
    with pytest.raises(ConfigError, match=r"^unknown active region 'mars-1'; .*: us-west-2, us-east-1, eu-west-1$"):
        choose_target({}, config(THREE, "us-west-2"), "mars-1")


# -- state and fencing epoch ------------------------------------------------------------------------------
def test_state_moves_with_an_incremented_epoch_and_refuses_stale_ones():
    first = State("us-west-2", 0, AT, "initial")
    moved = first.next("us-east-1", "us-west-2 down 3 checks", at=AT)
    assert moved == State("us-east-1", 1, AT, "us-west-2 down 3 checks")
    assert State.from_dict(moved.to_dict()) == moved
    moved.check_epoch(1)
    with pytest.raises(StaleEpochError) as info:
        moved.check_epoch(0)
    assert str(info.value) == (
        "failover state is at epoch 1 (active region us-east-1), not 0: another monitor or failover changed it; "
        "re-read the state and decide again"
    )
    assert isinstance(info.value, DRError) and info.value.exit_code == 24
    assert first.epoch == 0  # states are values: moving never changes the old one


# -- a whole-region loss: links to a lost upstream, the last known lag ---------------------------------------
T0 = AT
T1 = datetime(2026, 12, 6, 1, 1, tzinfo=UTC)
T2 = datetime(2026, 12, 6, 1, 2, tzinfo=UTC)


def replica_checks(*, link_up: bool, replayed: bool | None = True, lag: float = 0.2) -> list[Check]:
    """A standby region's PostgreSQL and Redis replicas; ``link_up`` False: both lost their upstream."""
    return [
        Check("postgres.connect", True, 0.003),
        Check("postgres.role", True, detail="standby", weight=0),
        Check(
            "postgres.replication",
            link_up,
            detail="streams" if link_up else "does not stream from its primary",
            lag_s=lag if link_up else 0.0,
            lag_bytes=128 if link_up else 0,
            upstream="postgres",
            replayed=replayed,
        ),
        Check("redis.ping", True, 0.001),
        Check("redis.replication", link_up, lag_s=0.0 if link_up else 42.0, upstream="redis", replayed=True),
    ]


def test_a_lost_links_weight_is_dropped_only_for_a_lost_upstream_and_a_complete_replay():
    bound = LagBound(0.2, 128, "0.2 s measured at 2026-12-06T01:00:00+00:00 while its link to west was up")
    # Without a lost upstream (the active region is up): two failed links of six weights, unhealthy.
    plain = score_region("east", replica_checks(link_up=False), at=T1)
    assert (plain.score, plain.healthy, plain.lag_s, plain.failed) == (
        0.5,
        False,
        None,
        ["postgres.replication", "redis.replication"],
    )
    # The active region down and both upstreams lost: healthy for its role, the bound stands in for the lag.
    lost = score_region(
        "east", replica_checks(link_up=False), at=T1, upstream_lost={"postgres", "redis"}, lost_lag=bound
    )
    assert (lost.score, lost.healthy, lost.lag_s, lost.lag_bytes, lost.failed, lost.lag_note) == (
        1.0,
        True,
        0.2,
        128,
        [],
        bound.note,
    )
    relaxed = {c.name: (c.ok, c.weight) for c in lost.checks if c.upstream}
    assert relaxed == {"postgres.replication": (False, 0), "redis.replication": (False, 0)}
    assert all(c.detail.endswith("replayed all it received)") for c in lost.checks if c.upstream and c.detail)
    assert RegionHealth.from_dict(lost.to_dict()) == lost
    # Only the lost kind: a Redis replica cut off from a Redis primary that answers is still a fault.
    pg_only = score_region("east", replica_checks(link_up=False), at=T1, upstream_lost={"postgres"}, lost_lag=bound)
    assert (pg_only.score, pg_only.healthy, pg_only.failed) == (0.6667, False, ["redis.replication"])
    # WAL received but not replayed yet (or not known): the link keeps its weight until the replay completes.
    for replayed in (False, None):
        pending = replica_checks(link_up=False, replayed=replayed)
        h = score_region("east", pending, at=T1, upstream_lost={"postgres", "redis"}, lost_lag=bound)
        assert (h.score, h.healthy, h.failed, h.lag_note) == (0.6667, False, ["postgres.replication"], bound.note)
    # No bound: unknown, whatever the other links measure.
    unknown = score_region("east", replica_checks(link_up=False), at=T1, upstream_lost={"postgres", "redis"})
    assert (unknown.healthy, unknown.lag_s, unknown.lag_bytes) == (True, None, None)
    assert unknown.lag_note == "lag unknown: its link to the upstream is down"
    # Links up: nothing changes, whatever is said lost.
    up = score_region("east", replica_checks(link_up=True), at=T0, upstream_lost={"postgres", "redis"}, lost_lag=bound)
    assert up == score_region("east", replica_checks(link_up=True), at=T0)


def observed(tracker: Tracker, at: datetime, *, link_up: bool, upstream_answers: bool, lag: float = 0.2) -> None:
    tracker.remember(
        "east",
        score_region("east", replica_checks(link_up=link_up, lag=lag), at=at),
        upstream="west",
        upstream_answers=upstream_answers,
    )


BOUNDS = [
    pytest.param(
        [],
        LagBound(None, None, "lag unknown: its link to west is down and no lag was measured while it was up"),
        id="never-measured-is-unknown",
    ),
    pytest.param(
        [(T0, True, True), (T1, False, False)],
        LagBound(0.2, 128, "0.2 s measured at 2026-12-06T01:00:00+00:00 while its link to west was up"),
        id="link-lost-with-its-upstream",
    ),
    pytest.param(
        [(T0, True, True), (T1, False, True), (T2, False, False)],
        LagBound(
            120.2,
            None,
            "its link to west was down before west was lost: 0.2 s measured at 2026-12-06T01:00:00+00:00 plus "
            "120 s until west was first seen lost at 2026-12-06T01:02:00+00:00",
        ),
        id="link-down-before-its-upstream-adds-the-time-since",
    ),
    pytest.param(
        [(T0, True, True), (T1, False, True), (T1, True, True), (T2, False, False)],
        LagBound(0.2, 128, "0.2 s measured at 2026-12-06T01:01:00+00:00 while its link to west was up"),
        id="a-link-back-up-starts-afresh",
    ),
    pytest.param(
        [(T0, True, True), (T1, False, False), (T2, False, False)],
        LagBound(0.2, 128, "0.2 s measured at 2026-12-06T01:00:00+00:00 while its link to west was up"),
        id="later-monitor-runs-keep-the-first-loss",
    ),
]


@pytest.mark.parametrize(("observations", "expected"), BOUNDS)
def test_lag_bound_golden(observations, expected):
    tracker = Tracker(2)
    for at, link_up, answers in observations:
        observed(tracker, at, link_up=link_up, upstream_answers=answers)
    assert tracker.lag_bound("east", "west", T2) == expected
    # Between monitor runs the tracker lives in the vault: the bound survives its round trip.
    restored = Tracker.from_dict(tracker.to_dict())
    assert restored == tracker and restored.lag_bound("east", "west", T2) == expected


def test_a_tracker_stored_before_the_link_memory_still_loads():
    old = {"failures_before_down": 3, "failures": {"west": 2}, "down": {"west": False}}
    tracker = Tracker.from_dict(old)
    assert (tracker.last_lag, tracker.link_down_at, tracker.upstream_lost_at) == ({}, {}, {})
    assert tracker.to_dict()["last_lag"] == {} and tracker.failures == {"west": 2}
    # A region without link checks (a primary, an application-only region) leaves no memory behind.
    tracker.remember("west", health("west"), upstream="east", upstream_answers=True)
    assert tracker.to_dict() == {**old, "last_lag": {}, "link_down_at": {}, "upstream_lost_at": {}, "link_upstream": {}}


def test_link_memory_is_about_one_upstream():
    """After a failover to east, north's lags measured against west say nothing about its links to east."""
    tracker = Tracker(2)
    tracker.remember(
        "north", score_region("north", replica_checks(link_up=True), at=T0), upstream="west", upstream_answers=True
    )
    tracker.remember(
        "north", score_region("north", replica_checks(link_up=False), at=T1), upstream="west", upstream_answers=False
    )
    assert tracker.lag_bound("north", "west", T1).lag_s == 0.2
    assert tracker.lag_bound("north", "east", T1).lag_s is None  # not measured against east
    # Its links to east never came up: losing east too leaves its lag unknown (not west's old measurement).
    tracker.remember(
        "north", score_region("north", replica_checks(link_up=False), at=T2), upstream="east", upstream_answers=False
    )
    assert (tracker.last_lag, tracker.link_upstream) == ({}, {"north": "east"})
    assert tracker.lag_bound("north", "east", T2) == LagBound(
        None, None, "lag unknown: its link to east is down and no lag was measured while it was up"
    )


def test_choose_target_says_where_a_last_known_lag_comes_from():
    cfg = config([("west", 1, True), ("east", 2, True), ("north", 3, True)], "west", max_loss=30)
    tracker = Tracker(2)
    observed(tracker, T0, link_up=True, upstream_answers=True)
    observed(tracker, T1, link_up=False, upstream_answers=False)
    lost = {"postgres", "redis"}

    def standby(name: str, bound: LagBound) -> RegionHealth:
        return score_region(name, replica_checks(link_up=False), at=T1, upstream_lost=lost, lost_lag=bound)

    healths = {
        "west": health("west", ok=False),
        "east": standby("east", tracker.lag_bound("east", "west", T1)),
        "north": standby("north", tracker.lag_bound("north", "west", T1)),  # never measured
    }
    choice = choose_target(healths, cfg, "west")
    assert choice == Choice(
        "east",
        {
            "west": "the active region (the one being left)",
            "east": "chosen: priority 2, healthy (score 1.00), lag 0.2 s within 30 s (the lag: 0.2 s measured at "
            "2026-12-06T01:00:00+00:00 while its link to west was up)",
            "north": "not chosen: replication lag unknown (its link to west is down and no lag was measured while "
            "it was up)",
        },
        0.2,
    )
    # The link was down two minutes before west was lost: beyond the 30 s allowed, refused unless forced.
    late = Tracker(2)
    for at, up, answers in [(T0, True, True), (T1, False, True), (T2, False, False)]:
        observed(late, at, link_up=up, upstream_answers=answers)
    healths["east"] = standby("east", late.lag_bound("east", "west", T2))
    refused = choose_target(healths, cfg, "west")
    assert refused.target is None
    assert refused.reasons["east"].startswith("not chosen: lags 120.2 s, over the 30 s allowed data loss (the lag: ")
    forced = choose_target(healths, cfg, "west", force=True)
    assert (forced.target, forced.data_loss_s, forced.forced) == ("east", 120.2, True)
