"""The monitor's assessment against the real replicated pairs: a "primary" region holding the primaries and
a "standby" region holding their replicas; hysteresis before a region counts as down, the choice of the
standby with its lag, and every region down (with probes of hung servers running in parallel)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.failover.health import Tracker
from core.failover.monitor import EVENT_DOWN, EVENT_UP, assess, render_assessment
from core.failover.probes import probe_postgres
from core.failover.topology import FailoverConfig
from tests.fixtures_replication import MySQLPair, PgPair, RedisPair, wait_until
from tests.servers import free_port

AT = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)


def pair_config(pg: PgPair, my: MySQLPair, rd: RedisPair, failures_before_down: int = 3) -> FailoverConfig:
    def dump(cfg) -> dict:
        data = cfg.model_dump(exclude={"name"})
        data["password"] = cfg.password.get_secret_value()
        return data

    return FailoverConfig.model_validate(
        {
            "failures_before_down": failures_before_down,
            "active_region": "primary",
            "regions": [
                {
                    "name": "primary",
                    "priority": 1,
                    "postgres": dump(pg.primary.config()),
                    "mysql": dump(my.primary.config()),
                    "redis": dump(rd.primary.config()),
                    # The PostgreSQL primary carries the application: without it the region is down.
                    "weights": {"postgres.connect": 3},
                },
                {
                    "name": "standby",
                    "priority": 2,
                    "postgres": dump(pg.standby.config()),
                    "mysql": dump(my.replica.config()),
                    "redis": dump(rd.replica.config()),
                },
            ],
        }
    )


def in_sync(pg: PgPair, my: MySQLPair, rd: RedisPair) -> None:
    pg.wait_streaming()
    my.wait_caught_up()
    rd.wait_linked()


def test_healthy_pairs_nothing_down_no_choice(pg_replica_pair, mysql_replica_pair, redis_replica_pair):
    in_sync(pg_replica_pair, mysql_replica_pair, redis_replica_pair)
    config = pair_config(pg_replica_pair, mysql_replica_pair, redis_replica_pair)
    tracker = Tracker(config.failures_before_down)
    a = assess(config, tracker, at=AT)

    assert (a.active, a.active_down, a.all_down, a.choice, a.events) == ("primary", False, False, None, [])
    assert {n: (h.score, h.healthy) for n, h in a.regions.items()} == {
        "primary": (1.0, True),
        "standby": (1.0, True),
    }
    assert {n: (s.consecutive_failures, s.down) for n, s in a.states.items()} == {
        "primary": (0, False),
        "standby": (0, False),
    }
    # Checks of the three databases in probe order; roles tell the regions apart.
    roles = {n: [c.detail for c in h.checks if c.name.endswith(".role")] for n, h in a.regions.items()}
    assert roles == {"primary": ["primary"] * 3, "standby": ["standby"] * 3}
    assert a.regions["standby"].lag_s == 0.0
    assert a.to_dict()["regions"]["standby"]["healthy"] is True
    assert a.to_dict()["at"] == AT.isoformat()

    text = render_assessment(a)
    assert text.splitlines()[0] == f"active region: primary (up) at {AT.isoformat(timespec='seconds')}"
    assert "primary *" in text and "healthy" in text and "failover target" not in text
    assert mysql_replica_pair.primary.password not in text + str(a.to_dict())
    assert redis_replica_pair.primary.password not in text + str(a.to_dict())


def test_stopped_primary_down_after_hysteresis_then_standby_chosen(
    pg_replica_pair, mysql_replica_pair, redis_replica_pair
):
    pg = pg_replica_pair
    in_sync(pg, mysql_replica_pair, redis_replica_pair)
    config = pair_config(pg, mysql_replica_pair, redis_replica_pair, failures_before_down=3)
    tracker = Tracker(config.failures_before_down)
    assert not assess(config, tracker, timeout=2).active_down
    pg.primary.stop()
    started = False
    try:
        # The standby's WAL receiver notices the lost primary within moments; the looks start after it did.
        wait_until(lambda: not _streams(pg), 15, "the standby noticing its lost primary")
        seen = [assess(config, tracker, timeout=2) for _ in range(3)]
        # Unhealthy from the first look (score 3/6: the weighted PostgreSQL primary is gone), down only at the third.
        assert [(a.regions["primary"].healthy, a.regions["primary"].score) for a in seen] == [(False, 0.5)] * 3
        assert [a.states["primary"].consecutive_failures for a in seen] == [1, 2, 3]
        assert [a.active_down for a in seen] == [False, False, True]
        assert [a.choice is None for a in seen] == [True, True, False]
        assert [a.events for a in seen] == [[], [], [{"event": EVENT_DOWN, "region": "primary", "score": 0.5}]]
        assert [a.all_down for a in seen] == [False] * 3

        last = seen[-1]
        assert "postgres.connect" in last.regions["primary"].failed
        standby = last.regions["standby"]
        assert standby.healthy and not last.states["standby"].down
        assert last.choice.target == "standby"
        # Unhealthy-looking before the primary counted as down (a lost stream may be the standby's own fault)...
        assert [a.regions["standby"].failed for a in seen[:2]] == [["postgres.replication"]] * 2
        # ...then its lost stream is informational: its upstream is gone and it replayed everything it received.
        stream = next(c for c in standby.checks if c.name == "postgres.replication")
        assert (stream.ok, stream.weight, stream.replayed, standby.score, standby.failed) == (False, 0, True, 1.0, [])
        # MariaDB and Redis replicas are caught up; the PostgreSQL standby's lag is the one measured while it
        # streamed (the first look, at the same time as the primary's last healthy one).
        assert last.choice.data_loss_s == standby.lag_s == 0.0
        assert (
            standby.lag_note.startswith("0 s measured at ") and "while its link to primary was up" in standby.lag_note
        )
        assert last.choice.reasons["standby"].startswith("chosen: priority 2, healthy")

        text = render_assessment(last)
        assert text.splitlines()[0].startswith("active region: primary (DOWN)")
        assert "failover target: standby (data loss up to 0 s)" in text
        assert f"lag of standby: {standby.lag_note}" in text.splitlines()
        row = next(line for line in text.splitlines() if line.startswith("primary *"))
        score, state, lag, failures = row.split()[2:6]
        assert (score, state, failures) == ("0.50", "down", "3"), row
        # The Redis primary's view of its replica: a few bytes behind for a moment under load (a PING it
        # just sent), never a lag in seconds.
        assert lag.endswith("B") and int(lag[:-1]) < 1024, row
        assert "postgres.connect" in row

        pg.primary.start()
        started = True
        back = assess(config, tracker, timeout=2)
        assert (back.active_down, back.choice, back.states["primary"].consecutive_failures) == (False, None, 0)
        assert back.events == [{"event": EVENT_UP, "region": "primary", "score": 1.0}]
    finally:
        if not started:
            pg.primary.start()
    pg.wait_streaming()


def _streams(pg: PgPair) -> bool:
    return next(c for c in probe_postgres(pg.standby.config()) if c.name == "postgres.replication").ok


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_503() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_every_region_down_no_choice_with_reasons_and_parallel_probes():
    with http_503() as url, silent_listener() as hung_a, silent_listener() as hung_b:
        config = FailoverConfig.model_validate(
            {
                "failures_before_down": 1,
                "active_region": "west",
                "regions": [
                    {
                        "name": "west",
                        "priority": 1,
                        "postgres": {"host": "127.0.0.1", "port": free_port(), "user": "postgres"},
                        "redis": {"host": "127.0.0.1", "port": hung_a},
                    },
                    {
                        "name": "east",
                        "priority": 2,
                        "redis": {"host": "127.0.0.1", "port": hung_b},
                        "health_urls": [url],
                    },
                ],
            }
        )
        tracker = Tracker(config.failures_before_down)
        started = time.monotonic()
        a = assess(config, tracker, timeout=2)
        took = time.monotonic() - started

    # Two hung Redis servers of 2 s each: run one after the other they would take 4 s; in parallel about 2 s
    # (the margin is wide enough for a loaded machine).
    assert took < 3.5, f"assess took {took:.2f}s"
    assert (a.active, a.active_down, a.all_down) == ("west", True, True)
    assert {n: (h.score, a.states[n].down) for n, h in a.regions.items()} == {"west": (0.0, True), "east": (0.0, True)}
    assert a.events == [
        {"event": EVENT_DOWN, "region": "west", "score": 0.0},
        {"event": EVENT_DOWN, "region": "east", "score": 0.0},
    ]
    assert a.choice is not None and a.choice.target is None and a.choice.data_loss_s is None
    assert a.choice.reasons == {
        "west": "the active region (the one being left)",
        "east": f"not chosen: unhealthy (score 0.00; failed: redis.ping, http {url})",
    }
    assert a.to_dict()["choice"]["target"] is None
    text = render_assessment(a)
    assert "no region is healthy" in text and "failover target: none" in text
