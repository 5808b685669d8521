"""Redis point-in-time recovery through the replication stream, against real servers.

What an operator relies on: with capture running, a Redis restore reaches any second
after a full backup (exactly the keys and values of that moment, in every database,
transactions whole); a capture that has no full to start from takes one through its
own replication link and loses no write made while it does; a missing log piece is
named, not skipped.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.chains import plan_chain_restore
from core.crypto.keys import Keyring
from core.engines.redis.engine import RedisEngine
from core.engines.redis.stream import Framer, Spool
from core.errors import LogGapError
from core.operations import backup_source, restore_chain_plan
from core.repository.vault import Vault
from core.storage.local import LocalStore
from tests import capturing as capturing_module
from tests.fixtures_redis import RedisServer, assert_same_redis, snapshot_redis

SOURCE = "cache"


@pytest.fixture(autouse=True)
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GENESIS_DR_SPOOL_DIR", str(tmp_path / "spool"))
    return tmp_path / "spool"


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(passphrase="pw")


def _fresh(server: RedisServer) -> RedisServer:
    server.client().flushall()
    return server


class Capturing(capturing_module.Capturing):
    def wait_shipped(self, server: RedisServer, timeout: float = 15.0) -> None:
        """Until the vault's log holds everything the source has written so far."""
        wanted = int(server.client().info("replication")["master_repl_offset"])
        self.wait_until(
            lambda pieces: bool(pieces) and int(pieces[-1].end["offset"]) >= wanted, f"up to offset {wanted}", timeout
        )


@pytest.fixture
def capturing(vault: Vault, keyring: Keyring) -> Iterator[Callable[[RedisEngine], Capturing]]:
    yield from capturing_module.capturing_factory(vault, keyring, Capturing)


def _restore_to(vault: Vault, keyring: Keyring, target: RedisServer, when: datetime):
    target.client().flushall()
    engine = RedisEngine(target.config(SOURCE))
    plan = plan_chain_restore(
        vault.list_backups(SOURCE),
        vault.log_pieces(SOURCE),
        SOURCE,
        "redis",
        when,
        datetime.now(UTC),
        target=engine.describe(),
        target_has_data=False,
        force=False,
    )
    return plan, restore_chain_plan(vault, keyring, plan.to_dict(), engine)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_restore_reaches_each_moment_between_writes_after_the_full(redis_session, vault, keyring, capturing):
    source = _fresh(redis_session("source"))
    target = redis_session("target")
    c, db3 = source.client(), source.client(3)
    c.set("before:plain", "kept")
    c.set("before:changed", "old")
    c.set("before:deleted", "x")
    db3.hset("before:db3", mapping={"a": 1})
    backup_source(vault, keyring, RedisEngine(source.config(SOURCE)))
    capture = capturing(RedisEngine(source.config(SOURCE, rpo_seconds=1)))

    # Batch 1: new keys in two databases, a change, a delete, a key with a TTL.
    time.sleep(0.3)
    c.set("b1:str", "one")
    db3.rpush("b1:list", "a", "b", "c")
    c.set("before:changed", "new")
    c.delete("before:deleted")
    c.set("b1:ttl", "soon", ex=3600)
    state1 = snapshot_redis(source.client)
    t1 = datetime.now(UTC)
    time.sleep(1.2)
    # Batch 2: a transaction, an increment, a set in db 3.
    pipe = c.pipeline(transaction=True)
    pipe.hset("b2:hash", mapping={"f": "v", "n": 2})
    pipe.incrby("b2:counter", 41)
    pipe.incr("b2:counter")
    pipe.execute()
    db3.sadd("b2:set", "x", "y")
    db3.delete("before:db3")
    state2 = snapshot_redis(source.client)
    t2 = datetime.now(UTC)
    time.sleep(1.2)
    # Batch 3: must not appear in either restore.
    c.set("b3:str", "three")
    c.set("before:plain", "overwritten")
    db3.flushdb()
    capture.wait_shipped(source)
    capture.finish()

    for state, at in ((state1, t1), (state2, t2)):
        when = at + timedelta(seconds=0.6)
        _, report = _restore_to(vault, keyring, target, when)

        # The stream carries absolute expiry times: a TTL is shorter by the seconds since its batch.
        assert_same_redis(state, snapshot_redis(target.client), ttl_slack=30)
        point = report.recovery_point
        # The last command applied was received in its batch, before the target time.
        assert at - timedelta(seconds=1) < _parse(point["time"]) <= when
        assert point["proof"].startswith("receive time over the replication link of the last applied command")
        assert report.unproven  # checks of the full cannot prove a point after it
    assert target.client().info("replication")["role"] == "master"

    # A piece missing from the vault: a restore past it names the gap instead of skipping it.
    pieces = vault.log_pieces(SOURCE)
    middle = next(p for p in pieces if _parse(p.first_time) > t1 and _parse(p.last_time) < t2 + timedelta(seconds=1))
    vault.store.delete(f"logs/{SOURCE}/{middle.seq:012d}.json")
    with pytest.raises(LogGapError, match=rf"gap from repl offset {middle.start['offset']} "):
        _restore_to(vault, keyring, target, datetime.now(UTC))


@pytest.mark.parametrize("transfer", ["diskless", "disk"])
def test_capture_without_a_full_takes_one_through_its_own_link_and_loses_no_write(
    redis_session, vault, keyring, capturing, transfer
):
    settings = {"repl_diskless_sync": "no"} if transfer == "disk" else {}
    source = _fresh(redis_session("source", **settings))
    target = redis_session("target")
    c = source.client()
    c.mset({f"pre:{i}": i for i in range(2000)})
    # Writes go on while the capture takes its full and picks up the stream after the snapshot.
    written: list[int] = []
    done = threading.Event()

    def writer() -> None:
        w = source.client()
        i = 0
        while not done.is_set():
            w.set(f"live:{i}", i)
            written.append(i)
            i += 1
            time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        capture = capturing(RedisEngine(source.config(SOURCE, rpo_seconds=1)))
        deadline = time.monotonic() + 20
        while not vault.log_pieces(SOURCE) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        done.set()
        thread.join()
    capture.wait_shipped(source)
    capture.finish()
    expected = snapshot_redis(source.client)

    (full,) = vault.list_backups(SOURCE)
    assert full.position["transfer"] == transfer
    pieces = vault.log_pieces(SOURCE)
    # The stream starts exactly at the snapshot the capture's full took.
    assert pieces[0].start == {"replid": full.position["replid"], "offset": full.position["offset"]}
    assert any(p.info.extra["commands"] for p in pieces)
    time.sleep(1.1)  # the target time is now, after the full's end (whole seconds)
    _, report = _restore_to(vault, keyring, target, datetime.now(UTC))

    assert len(written) > 100
    assert_same_redis(expected, snapshot_redis(target.client))
    assert report.recovery_point["position"]["offset"] == pieces[-1].end["offset"]


_CHILD = """
import sys, threading
from core.crypto.keys import Keyring
from core.engines.redis.engine import RedisEngine
from core.engines.redis.stream import Framer, Spool
from core.operations import capture_source
from core.repository.vault import Vault
from core.sources import RedisSourceConfig
from core.storage.local import LocalStore

vault = Vault.open(LocalStore(sys.argv[1]))
config = RedisSourceConfig(name=sys.argv[2], host="127.0.0.1", port=int(sys.argv[3]), rpo_seconds=600)
capture_source(vault, Keyring(passphrase="pw"), RedisEngine(config), threading.Event())
"""


def test_a_killed_capture_ships_its_spool_and_a_dropped_link_resumes_without_a_gap(
    redis_session, vault, keyring, capturing, spool, tmp_path
):
    source = _fresh(redis_session("source"))
    target = redis_session("target")
    c = source.client()
    c.set("before", 0)
    backup_source(vault, keyring, RedisEngine(source.config(SOURCE)))
    # A capture whose RPO is far away holds what it received in its spool only; then it is killed.
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "vault"), SOURCE, str(source.port)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 20
        while not source.client().info("replication").get("connected_slaves") and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(20):
            c.set(f"spooled:{i}", i)
        wanted = int(c.info("replication")["master_repl_offset"])
        while time.monotonic() < deadline:
            found = Spool(spool / SOURCE).recover()
            if found and found[0]["offset"] + sum(len(d) for _, d in found[2]) >= wanted:
                break
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    killed_at = datetime.now(UTC)
    assert vault.log_pieces(SOURCE) == []

    capture = capturing(RedisEngine(source.config(SOURCE, rpo_seconds=1)))
    c.set("after-restart", 1)
    capture.wait_shipped(source)
    # The primary drops the link (as on a network fault): the capture continues after its last byte.
    c.client_kill_filter(_type="replica")
    c.set("after-drop", 2)
    capture.wait_shipped(source)
    capture.finish()
    expected = snapshot_redis(source.client)

    first = vault.log_pieces(SOURCE)[0]
    # Shipped from the spool: its commands carry the times the killed capture received them.
    assert _parse(first.last_time) < killed_at
    assert first.info.extra["commands"] == 20
    assert any("reconnecting" in m for m in capture.messages)
    time.sleep(1.1)
    _restore_to(vault, keyring, target, datetime.now(UTC))
    assert_same_redis(expected, snapshot_redis(target.client))


def test_a_capture_the_primary_cannot_continue_takes_a_full_through_its_link_and_loses_no_write(
    redis_session, vault, keyring, capturing
):
    source = _fresh(redis_session("small-backlog", repl_backlog_size="16kb"))
    target = redis_session("target")
    c = source.client()
    c.set("before", 0)
    backup_source(vault, keyring, RedisEngine(source.config(SOURCE)))
    capture = capturing(RedisEngine(source.config(SOURCE, rpo_seconds=1)))
    c.set("first", 1)
    capture.wait_shipped(source)
    capture.finish()
    # While no capture runs, more is written than the primary's backlog holds.
    for i in range(100):
        c.set(f"unseen:{i}", "x" * 400)
    written: list[int] = []
    done = threading.Event()

    def writer() -> None:
        w = source.client()
        while not done.is_set():
            w.set(f"live:{len(written)}", 1)
            written.append(1)
            time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        capture = capturing(RedisEngine(source.config(SOURCE, rpo_seconds=1)))
        deadline = time.monotonic() + 20
        while len(vault.log_pieces(SOURCE)) < 2 and capture.error is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        done.set()
        thread.join()
    capture.wait_shipped(source)
    capture.finish()
    expected = snapshot_redis(source.client)

    assert any("cannot continue the stream after offset" in m for m in capture.messages)
    first_full, new_full = sorted(vault.list_backups(SOURCE), key=lambda m: m.ended_at)
    after = [p for p in vault.log_pieces(SOURCE) if p.start["offset"] >= new_full.position["offset"]]
    # The stream goes on from the new full's own snapshot: no byte between them is missing.
    assert after[0].start == {"replid": new_full.position["replid"], "offset": new_full.position["offset"]}
    time.sleep(1.1)
    _restore_to(vault, keyring, target, datetime.now(UTC))
    assert len(written) > 100
    assert_same_redis(expected, snapshot_redis(target.client))


def test_stream_records_end_only_between_whole_commands_and_transactions():
    """However TCP splits the stream, a record (what a restore applies or not as one) holds whole
    commands and whole MULTI/EXEC blocks, and the selected database and GETACK are seen."""
    from core.engines.redis.pipe import command

    stream = b"".join(
        [
            command("SELECT", 3),
            command("SET", "a", "1"),
            command("MULTI"),
            command("SET", "b", b"x\r\n" * 5),
            command("INCR", "c"),
            command("EXEC"),
            command("PING"),
            command("REPLCONF", "GETACK", "*"),
            command("SELECT", 0),
            command("DEL", "a"),
        ]
    )
    framer = Framer()
    records = [framer.feed(stream[i : i + 1]) for i in range(len(stream))]
    records = [r for r in records if r]

    transaction = command("MULTI") + command("SET", "b", b"x\r\n" * 5) + command("INCR", "c") + command("EXEC")
    assert records == [
        command("SELECT", 3),
        command("SET", "a", "1"),
        transaction,  # one record: a restore applies all of it or none
        command("PING"),
        command("REPLCONF", "GETACK", "*"),
        command("SELECT", 0),
        command("DEL", "a"),
    ]
    assert framer.db == 0 and framer.getack
    assert framer.commands == 6  # SET, MULTI, SET, INCR, EXEC, DEL


def test_a_full_taken_while_the_capture_runs_is_the_base_of_later_restores(redis_session, vault, keyring, capturing):
    source = _fresh(redis_session("source"))
    target = redis_session("target")
    c = source.client()
    c.set("before", 0)
    backup_source(vault, keyring, RedisEngine(source.config(SOURCE)))
    # Pieces of up to 2 s: the next full's snapshot falls inside one, between two of its records.
    capture = capturing(RedisEngine(source.config(SOURCE, rpo_seconds=4)))
    time.sleep(0.3)
    c.set("in-the-full", 1)
    source.client(2).set("db2:in-the-full", 1)
    second = backup_source(vault, keyring, RedisEngine(source.config(SOURCE)))
    c.set("after-the-full", 2)
    c.set("in-the-full", "changed")
    capture.wait_shipped(source)
    capture.finish()
    expected = snapshot_redis(source.client)

    time.sleep(1.1)
    plan, report = _restore_to(vault, keyring, target, datetime.now(UTC))
    assert plan.base_id == second.id
    first = next(p for p in vault.log_pieces(SOURCE) if p.seq == plan.pieces[0])
    assert first.start["offset"] < second.position["offset"] < first.end["offset"]
    assert_same_redis(expected, snapshot_redis(target.client))
    assert "2 commands replayed after the snapshot" in report.recovery_point["proof"]
