"""Redis engine against real redis-server instances and a real vault.

What an operator relies on: an rdb or logical backup restores every database,
type, value and TTL into a fresh server; the snapshot is taken over the
network in both transfer formats; bad logins and dead servers give one clear
line without the password; a restore never silently overwrites data; the
recorded checks catch a wrong restore; nothing readable lands in the vault.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import time
import tracemalloc
from pathlib import Path

import pytest

from core.crypto.keys import Keyring
from core.engines import engine_for
from core.engines.redis.engine import RedisEngine
from core.engines.redis.rdb import ByteReader, walk_rdb
from core.errors import EngineError, IntegrityError, SourceUnavailableError, TargetNotEmptyError, VerificationError
from core.operations import backup_source, count_checks, restore_backup, verify_target
from core.repository.manifest import COMPLETED
from core.repository.vault import Vault
from core.storage.local import LocalStore
from tests.fixtures_redis import (
    CANARY,
    FUNCTION_LIBRARY,
    assert_same_redis,
    function_codes,
    seed_redis,
    snapshot_redis,
    start_redis,
)
from tests.servers import free_port

PASSWORD = "s3cret-redis-pw-9d1"


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(passphrase="pw")


class _MemorySink:
    """Collects streams in memory; only for failure paths where nothing is written."""

    def __init__(self) -> None:
        self.streams: dict[str, io.BytesIO] = {}

    @contextlib.contextmanager
    def open_stream(self, name: str):
        self.streams[name] = io.BytesIO()
        yield self.streams[name]

    def write_stream(self, name: str, data) -> int:
        raise NotImplementedError


def _round_trip(vault, keyring, source, target, mode: str, **engine_kwargs):
    manifest = backup_source(vault, keyring, RedisEngine(source.config("cache", mode), **engine_kwargs))
    assert manifest.status == COMPLETED
    report = restore_backup(vault, keyring, manifest.id, RedisEngine(target.config("cache", mode)))
    return manifest, report


def test_rdb_round_trip_restores_every_database_type_value_and_ttl(redis_factory, vault, keyring):
    source, target = redis_factory(), redis_factory()
    seed_redis(source.client())
    before = snapshot_redis(source.client)

    manifest, report = _round_trip(vault, keyring, source, target, "rdb")

    assert_same_redis(before, snapshot_redis(target.client))
    assert report.verified_checks >= 8
    position = vault.open_backup(manifest.id, keyring).result.position
    assert re.fullmatch(r"[0-9a-f]{40}", position["replid"])
    assert isinstance(position["offset"], int)
    assert position["redis_version"].startswith("7.")
    assert position["rdb_version"] == 10
    assert position["transfer"] == "diskless"
    assert position["rdb_bytes"] == manifest.plain_bytes
    # The target is a master again, not a replica of the short-lived restore master.
    assert target.client().info("replication")["role"] == "master"
    assert target.client().set("writable", 1)


@pytest.mark.parametrize(
    ("settings", "announce_eof", "transfer"),
    [
        ({"repl_diskless_sync": "no"}, True, "disk"),
        ({}, False, "disk"),
        # The master waits before forking and sends newline keepalives meanwhile.
        ({"repl_diskless_sync_delay": "2"}, True, "diskless"),
    ],
    ids=["master-saves-to-disk", "replica-without-eof-capability", "keepalives-before-the-snapshot"],
)
def test_rdb_backup_of_password_protected_source_in_each_transfer_format(
    redis_factory, vault, keyring, settings, announce_eof, transfer
):
    source = redis_factory(password=PASSWORD, **settings)
    target = redis_factory(password="other-target-pw")
    seed_redis(source.client())
    before = snapshot_redis(source.client)

    manifest, _ = _round_trip(vault, keyring, source, target, "rdb", announce_eof=announce_eof)

    assert vault.open_backup(manifest.id, keyring).result.position["transfer"] == transfer
    # An RDB carries absolute expiry times: compare both servers now, so slow machines don't skew TTLs.
    assert_same_redis(snapshot_redis(source.client), snapshot_redis(target.client))
    assert_same_redis(before, snapshot_redis(source.client), ttl_slack=60)  # the source is untouched


def test_backup_as_an_acl_user(redis_factory, vault, keyring):
    source, target = redis_factory(password=PASSWORD), redis_factory()
    source.client().acl_setuser("dr-backup", enabled=True, passwords=["+dr-user-pw"], keys=["*"], commands=["+@all"])
    seed_redis(source.client())
    before = snapshot_redis(source.client)
    config = source.config("cache", "rdb", username="dr-backup", password="dr-user-pw")

    manifest = backup_source(vault, keyring, RedisEngine(config))
    restore_backup(vault, keyring, manifest.id, RedisEngine(target.config("cache")))

    # An RDB carries absolute expiry times: compare both servers now, so a busy machine doesn't skew TTLs.
    assert_same_redis(snapshot_redis(source.client), snapshot_redis(target.client))
    assert_same_redis(before, snapshot_redis(source.client), ttl_slack=60)


def test_logical_round_trip_restores_every_database_type_value_and_ttl(redis_factory, vault, keyring):
    source, target = redis_factory(password=PASSWORD), redis_factory()
    seed_redis(source.client())
    before = snapshot_redis(source.client)

    manifest, report = _round_trip(vault, keyring, source, target, "logical")

    # Expiry times are absolute: both servers agree on TTLs at the same moment.
    assert_same_redis(snapshot_redis(source.client), snapshot_redis(target.client))
    assert_same_redis(before, snapshot_redis(target.client), ttl_slack=60)
    result = vault.open_backup(manifest.id, keyring).result
    assert result.position["databases"] == [0, 3]
    assert result.checks["databases"]["db3"]["keys"] == 2
    assert result.checks["databases"]["db3"]["volatile_keys"] == 1


def test_rdb_and_logical_checks_agree_on_the_same_data(redis_factory, vault, keyring):
    # The rdb checks come from walking the RDB stream, the logical ones from
    # decoding DUMP payloads: two decoders, one answer.
    source = redis_factory()
    seed_redis(source.client())
    rdb = backup_source(vault, keyring, RedisEngine(source.config("cache", "rdb")))
    logical = backup_source(vault, keyring, RedisEngine(source.config("cache", "logical")))
    rdb_checks = vault.open_backup(rdb.id, keyring).result.checks
    logical_checks = vault.open_backup(logical.id, keyring).result.checks
    assert rdb_checks["databases"] == logical_checks["databases"]
    assert rdb_checks["functions"] == logical_checks["functions"] and list(rdb_checks["functions"]) == ["jobs"]
    assert rdb_checks["databases"]["db0"]["keys"] == 32


def test_logical_backup_of_one_database_restores_into_another(redis_factory, vault, keyring):
    source, target = redis_factory(), redis_factory()
    seed_redis(source.client())
    target.client(0).set("unrelated", "stays")
    manifest = backup_source(vault, keyring, RedisEngine(source.config("cache", "logical", db=3)))

    restore_backup(vault, keyring, manifest.id, RedisEngine(target.config("cache", "logical", db=5)))

    assert sorted(target.client(5).keys()) == [b"db3:greeting", b"db3:list", b"db3:ttl"]
    assert target.client(5).lrange("db3:list", 0, -1) == [str(i).encode() for i in range(10)]
    assert target.client(0).get("unrelated") == b"stays"


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_source_down_is_source_unavailable(vault, keyring, mode):
    from core.sources import RedisSourceConfig

    engine = engine_for(RedisSourceConfig(name="cache", port=free_port(), mode=mode))
    with pytest.raises(SourceUnavailableError, match=r"redis 'cache' at 127\.0\.0\.1:\d+: connection refused"):
        backup_source(vault, keyring, engine)
    with pytest.raises(SourceUnavailableError, match="connection refused"):
        engine.backup(_MemorySink())  # the raw replication socket, not only ping()


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_wrong_or_missing_password_is_source_unavailable_without_the_password(redis_factory, vault, keyring, mode):
    server = redis_factory(password=PASSWORD)
    wrong = "wrong-pw-7c4e1"
    for config in (server.config("cache", mode, password=wrong), server.config("cache", mode, password=None)):
        engine = RedisEngine(config)
        for attempt in (engine.ping, functools.partial(engine.backup, _MemorySink())):
            with pytest.raises(SourceUnavailableError) as err:
                attempt()
            message = str(err.value)
            assert "login refused" in message
            assert "\n" not in message
            assert wrong not in message and PASSWORD not in message


def test_non_empty_target_is_refused_without_force_and_left_unchanged(redis_factory, vault, keyring):
    source, target = redis_factory(), redis_factory()
    seed_redis(source.client())
    target.client(2).set("precious", "data")
    before = snapshot_redis(target.client)
    manifest = backup_source(vault, keyring, RedisEngine(source.config("cache")))

    for mode in ("rdb", "logical"):
        with pytest.raises(TargetNotEmptyError):
            restore_backup(vault, keyring, manifest.id, RedisEngine(target.config("cache", mode)))

    assert snapshot_redis(target.client) == before


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_forced_restore_replaces_the_target_data(redis_factory, vault, keyring, mode):
    source, target = redis_factory(), redis_factory()
    seed_redis(source.client())
    target.client(0).set("str:plain", "stale")
    target.client(0).set("leftover", "gone after restore")
    manifest = backup_source(vault, keyring, RedisEngine(source.config("cache", mode)))

    report = restore_backup(vault, keyring, manifest.id, RedisEngine(target.config("cache", mode)), force=True)

    assert report.rollback_backup_id is not None
    assert_same_redis(snapshot_redis(source.client), snapshot_redis(target.client))


def test_rdb_restore_into_a_server_with_too_few_databases_is_refused_before_touching_it(redis_factory, vault, keyring):
    source, target = redis_factory(), redis_factory(databases="2")
    seed_redis(source.client())  # uses db 3
    manifest = backup_source(vault, keyring, RedisEngine(source.config("cache")))

    with pytest.raises(EngineError, match="has only 2 databases"):
        restore_backup(vault, keyring, manifest.id, RedisEngine(target.config("cache")))

    assert target.client().ping()
    assert target.client().info("replication")["role"] == "master"


def test_verification_catches_a_target_that_differs(redis_factory, vault, keyring):
    source, target = redis_factory(), redis_factory()
    seed_redis(source.client())
    manifest, _ = _round_trip(vault, keyring, source, target, "rdb")
    checks = vault.open_backup(manifest.id, keyring).result.checks
    engine = RedisEngine(target.config("cache"))

    target.client().hset("hash:large", "field-7", "tampered")
    with pytest.raises(VerificationError, match=r"databases\.db0\.digest"):
        verify_target(engine, checks, manifest.id)
    target.client().hset("hash:large", "field-7", "value-7" * 3)
    verify_target(engine, checks, manifest.id)
    target.client(3).delete("db3:ttl")
    with pytest.raises(VerificationError, match=r"databases\.db3\.volatile_keys"):
        verify_target(engine, checks, manifest.id)


def test_keys_that_expire_before_the_restore_do_not_fail_verification(redis_factory, vault, keyring):
    source, target = redis_factory(), redis_factory()
    source.client().set("kept", "forever")
    source.client().set("short-lived", "x", px=1500)
    manifest = backup_source(vault, keyring, RedisEngine(source.config("cache")))
    time.sleep(1.7)

    restore_backup(vault, keyring, manifest.id, RedisEngine(target.config("cache")))

    assert target.client().get("kept") == b"forever"
    assert target.client().get("short-lived") is None


def test_vault_files_hold_no_plaintext(redis_factory, tmp_path, keyring):
    source = redis_factory()
    seed_redis(source.client())
    vault = Vault.open(LocalStore(tmp_path / "plain-check"), create=True)
    for mode in ("rdb", "logical"):
        backup_source(vault, keyring, RedisEngine(source.config("cache", mode)))
    files = [p for p in (tmp_path / "plain-check").rglob("*") if p.is_file()]
    assert len(files) > 4
    for path in files:
        data = path.read_bytes()
        assert CANARY not in data, path
        assert b"hash:large" not in data, path


@pytest.mark.parametrize(("mode", "limit_mib"), [("rdb", 6), ("logical", 16)])
def test_backup_memory_stays_flat(redis_factory, vault, keyring, monkeypatch, mode, limit_mib):
    # Small vault chunks, so what is measured is the engine, not the vault's buffers.
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(256 << 10))
    source = redis_factory()
    client = source.client()
    for i in range(32):
        client.set(f"big:{i}", os.urandom(1 << 20))  # incompressible
    client.set("big:lzf", bytes(range(256)) * 8192)  # 2 MiB, LZF-compressed in the RDB
    from core.engines.redis.walker import Walker

    walker_peaks = []
    answer = Walker.result

    def result_and_peak(self):  # the walker child's high-water mark, read while it is still alive
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        walker_peaks.append(int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) << 10)
        return answer(self)

    monkeypatch.setattr(Walker, "result", result_and_peak)
    tracemalloc.start()
    try:
        backup_source(vault, keyring, RedisEngine(source.config("cache", mode)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 34 MiB went through; memory holds about one value (rdb) or one DUMP batch (logical).
    assert peak < limit_mib << 20, peak
    # The walker child (an interpreter of about 15 MiB) holds a window of 2 MiB and about one value
    # at a time (26-33 MiB measured); one holding the data would need 15 + 34 MiB.
    assert len(walker_peaks) == 1 and walker_peaks[0] < 44 << 20, walker_peaks


def test_unknown_rdb_object_type_is_a_clear_error():
    data = b"REDIS0010" + bytes([0xFE, 0x00, 99, 0x01]) + b"k"
    chunks = iter([data])
    with pytest.raises(EngineError, match="RDB object type 99 is not understood"):
        walk_rdb(ByteReader(lambda: next(chunks, b"")), lambda *a: None)


def test_logical_restore_does_not_revive_keys_that_expired_since_the_backup(redis_factory, vault, keyring):
    source, target = redis_factory(), redis_factory()
    source.client().set("session:short", "gone soon", px=1500)
    source.client().set("session:long", "still here", ex=3600)
    source.client().set("config", "forever")
    manifest = backup_source(vault, keyring, RedisEngine(source.config("cache", "logical")))
    time.sleep(2)  # past the short session's expiry on the source

    restore_backup(vault, keyring, manifest.id, RedisEngine(target.config("cache", "logical")))

    client = target.client()
    assert client.get("session:short") is None
    assert client.get("session:long") == b"still here" and 3500 < client.ttl("session:long") <= 3600
    assert client.get("config") == b"forever" and client.ttl("config") == -1


# --- fidelity: real-stack data, what the checks cover, what a restore reports ----


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, keyring):
    """One seeded source, backed up once in each mode into one vault, shared by the tests below."""
    source = start_redis()
    try:
        seed_redis(source.client())
        vault = Vault.open(LocalStore(tmp_path_factory.mktemp("vault")), create=True)
        backups = {
            mode: backup_source(vault, keyring, RedisEngine(source.config("cache", mode))).id
            for mode in ("rdb", "logical")
        }
        yield {"source": source, "vault": vault, "backups": backups}
    finally:
        source.stop()


def _restore_with_engine(vault, keyring, backup_id, engine):
    """engine.restore as the orchestration calls it; returns (notes, recorded checks)."""
    reader = vault.open_backup(backup_id, keyring)
    try:
        return engine.restore(reader, reader.result), reader.result.checks
    finally:
        reader.close()


def test_seeded_data_has_the_encodings_real_stacks_have(seeded):
    client = seeded["source"].client()
    for key in ("set:large", "set:binary_members", "set:mixed", "set:large_ints"):
        assert client.object("encoding", key) == b"hashtable", key
    assert client.object("encoding", "set:intset") == b"intset"
    assert {g["name"] for g in client.xinfo_groups("stream:jobs")} == {b"billing", b"mailer"}
    pending = client.xpending_range("stream:jobs", "billing", min="-", max="+", count=100)
    assert {p["times_delivered"] for p in pending} == {1, 3}
    assert client.strlen("big:string") == 5 << 20


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_seeded_round_trip_is_exact_and_says_so(seeded, keyring, redis_factory, mode):
    target = redis_factory()
    engine = RedisEngine(target.config("cache", mode))
    backup_id = seeded["backups"][mode]

    notes, checks = _restore_with_engine(seeded["vault"], keyring, backup_id, engine)

    assert notes == []
    assert checks["algorithm"] == "redis-checks/3"
    assert verify_target(engine, checks, backup_id) == count_checks(checks)
    # Every type (streams with their groups too) came back encoded as in the backup: the cheap proof held.
    assert engine.verified_by == "its own snapshot over replication (every value encoded as in the backup)"
    assert_same_redis(snapshot_redis(seeded["source"].client), snapshot_redis(target.client))
    assert function_codes(target.client()) == function_codes(seeded["source"].client()) == [FUNCTION_LIBRARY.encode()]
    assert target.client().fcall("next_job", 1, "list:small") == b"a"

    target.client().function_load("#!lua name=others\nredis.register_function('f', function() return 1 end)")
    verify_target(engine, checks, backup_id)  # a library that is not the backup's is not compared
    target.client().function_delete("jobs")  # a restore that lost the backup's functions
    with pytest.raises(VerificationError, match=r"functions\.jobs: missing after restore"):
        verify_target(engine, checks, backup_id)


@pytest.mark.parametrize(
    "change",
    [
        ("xclaim", "stream:jobs", "billing", "w1", 0, ["2000-4"]),  # one more delivery, another owner
        ("xack", "stream:jobs", "billing", "2000-0"),
        ("xgroup_setid", "stream:jobs", "mailer", "2000-20"),
        ("xgroup_delconsumer", "stream:jobs", "mailer", "idle-worker"),
        ("xgroup_destroy", "stream:capped", "nobody"),
        ("srem", "set:binary_members", b"\x05\xff\x00-m"),
        ("setrange", "big:string", 4 << 20, b"!"),
    ],
    ids=lambda c: c[0],
)
def test_checks_catch_lost_stream_group_state_and_changed_values(seeded, keyring, redis_factory, change):
    target = redis_factory()
    engine = RedisEngine(target.config("cache", "logical"))
    backup_id = seeded["backups"]["logical"]
    _, checks = _restore_with_engine(seeded["vault"], keyring, backup_id, engine)
    verify_target(engine, checks, backup_id)

    command, *args = change
    getattr(target.client(), command)(*args)

    with pytest.raises(VerificationError, match=r"databases\.db0\.digest"):
        verify_target(engine, checks, backup_id)


def test_checks_recorded_by_older_versions_are_still_computed(seeded):
    engine = RedisEngine(seeded["source"].config("cache", "logical"))
    legacy = engine.collect_checks({"databases": {"db0": {}, "db3": {}}, "first_expiry_ms": None})
    assert "algorithm" not in legacy
    current = engine.collect_checks({"algorithm": "redis-checks/2", "databases": {"db0": {}, "db3": {}}})
    # Only the streams' pending entries differ between the two: db3 (no streams) digests the same.
    assert legacy["databases"]["db3"] == current["databases"]["db3"]
    assert legacy["databases"]["db0"]["digest"] != current["databases"]["db0"]["digest"]
    assert engine.collect_checks(legacy) == legacy


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_keys_that_expired_before_the_restore_are_noted(redis_factory, vault, keyring, mode):
    source, target = redis_factory(), redis_factory()
    source.client().set("kept", "forever")
    source.client().set("session:long", "x", ex=3600)
    source.client().set("session:short", "x", px=1200)
    source.client(2).set(b"cart:\xff\x01", "x", px=1200)
    manifest = backup_source(vault, keyring, RedisEngine(source.config("cache", mode)))
    time.sleep(1.5)
    engine = RedisEngine(target.config("cache", mode))

    notes, checks = _restore_with_engine(vault, keyring, manifest.id, engine)

    verify_target(engine, checks, manifest.id)
    when = r"it expired at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00, before the restore"
    assert len(notes) == 2
    assert re.fullmatch(rf"key session:short \(db 0\) not restored: {when}", notes[0])
    assert re.fullmatch(rf"key b'cart:\\xff\\x01' \(db 2\) not restored: {when}", notes[1])
    assert target.client().get("session:long") == b"x" and target.client().get("kept") == b"forever"
    assert target.client().get("session:short") is None


def _flip_a_byte(vault_dir: Path, backup_id: str, stream: str, which: str) -> None:
    chunks = sorted((vault_dir / "backups" / backup_id / "streams" / stream).iterdir())
    assert len(chunks) > 5
    victim = chunks[len(chunks) // 2] if which == "middle" else chunks[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["middle", "last"])
@pytest.mark.parametrize("load", ["disabled", "swapdb"])
def test_corrupt_rdb_backup_leaves_the_target_as_it_was(
    seeded, redis_factory, tmp_path, keyring, monkeypatch, which, load
):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(256 << 10))
    vault_dir = tmp_path / "v"
    vault = Vault.open(LocalStore(vault_dir), create=True)
    manifest = backup_source(vault, keyring, RedisEngine(seeded["source"].config("cache", "rdb")))
    _flip_a_byte(vault_dir, manifest.id, "dump.rdb", which)
    target = redis_factory(repl_diskless_load=load)
    target.client(0).set("precious", "data")
    target.client(5).rpush("queue", *range(100))
    before = snapshot_redis(target.client)
    engine = RedisEngine(target.config("cache", "rdb"))

    started = time.monotonic()
    with pytest.raises(IntegrityError) as err:
        _restore_with_engine(vault, keyring, manifest.id, engine)

    # A target loading from the socket (swapdb) must not hold the failure up until its repl-timeout.
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert "\n" not in message and manifest.id in message
    assert message.endswith(f"the target {engine.describe()} was not changed")
    time.sleep(0.5)  # a replica that had received everything would be loading by now
    assert snapshot_redis(target.client) == before
    assert target.client().info("replication")["role"] == "master"


def test_logical_restore_that_fails_mid_stream_says_the_target_was_changed(
    seeded, redis_factory, tmp_path, keyring, monkeypatch
):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(256 << 10))
    vault_dir = tmp_path / "v"
    vault = Vault.open(LocalStore(vault_dir), create=True)
    manifest = backup_source(vault, keyring, RedisEngine(seeded["source"].config("cache", "logical")))
    _flip_a_byte(vault_dir, manifest.id, "keys.bin", "middle")
    target = redis_factory()
    target.client().set("precious", "data")
    engine = RedisEngine(target.config("cache", "logical"))

    with pytest.raises(IntegrityError) as err:
        _restore_with_engine(vault, keyring, manifest.id, engine)

    assert str(err.value).endswith(f"the target {engine.describe()} was left partially restored")


def test_functions_the_target_refuses_are_noted_and_the_keys_restored(seeded, keyring, redis_factory):
    target = redis_factory(password=PASSWORD)
    target.client().acl_setuser(
        "restorer", enabled=True, passwords=["+restorer-pw"], keys=["*"], commands=["+@all", "-function"]
    )
    engine = RedisEngine(target.config("cache", "logical", username="restorer", password="restorer-pw"))

    notes, _ = _restore_with_engine(seeded["vault"], keyring, seeded["backups"]["logical"], engine)

    assert len(notes) == 1 and notes[0].startswith(
        "function libraries not restored: the target refused FUNCTION RESTORE"
    )
    assert target.client().get("str:plain") == b"hello world" and function_codes(target.client()) == []


# --- redis-checks/3: the walker, its two paths and the ways a target is verified ----


def _rdb_checks(pieces, window: int | None = None, monkeypatch=None) -> dict:
    from core.engines.redis import rdb_scan
    from core.engines.redis.checks import KeyspaceChecks

    if window is not None:
        monkeypatch.setattr(rdb_scan, "WINDOW", window)
    checks = KeyspaceChecks(int(time.time() * 1000), rdb_scan.ALGORITHM)
    chunks = iter(pieces)
    scanner = rdb_scan.RdbScanner(checks)
    scanner.run(lambda: next(chunks, b""))
    return checks.to_dict()


def test_window_parser_and_streaming_path_digest_every_key_alike(seeded, keyring, monkeypatch):
    # The window parser handles the common encodings inline; big values and rare
    # encodings take the streaming path. A window of 16 bytes sends nearly every
    # key down the streaming path: both must give the same checks.
    from core.engines.redis import rdb_scan

    reader = seeded["vault"].open_backup(seeded["backups"]["rdb"], keyring)
    try:
        pieces = list(reader.iter_stream("dump.rdb"))
        recorded = reader.result.checks
    finally:
        reader.close()
    assert _rdb_checks(pieces)["databases"] == recorded["databases"]
    assert _rdb_checks(pieces, 16, monkeypatch)["databases"] == recorded["databases"]
    # And per key: a DUMP payload through each path.
    client = seeded["source"].client()
    for key in client.scan_iter(count=1000):
        body = client.dump(key)[:-10]
        try:
            fast = rdb_scan._object(body, 1, body[0])[:2]
        except rdb_scan._Slow:
            continue  # streams: the streaming path only
        chunks = iter([body])
        slow = ByteReader(lambda chunks=chunks: next(chunks, b""))
        assert rdb_scan.read_object3(slow, slow.byte()) == fast, key


def test_large_collections_switch_to_summed_row_digests_the_same_way_on_both_paths(monkeypatch):
    from core.engines.redis import rdb_scan

    monkeypatch.setattr(rdb_scan, "SORTED_ROWS", 4)
    members = [b"m%d" % i for i in range(9)]
    whole = rdb_scan.set_part(list(members))
    bag = rdb_scan.Bag("set")
    for m in reversed(members):  # another order, one row at a time
        bag.add([(m,)])
    assert whole.startswith(b"U") and bag.part() == whole
    assert rdb_scan.set_part(members[:4]).startswith(b"S")


@pytest.mark.parametrize("limit", [1 << 20, 30])
def test_packed_values_digest_like_the_row_builders_below_and_above_the_byte_limit(monkeypatch, limit):
    # set_part/hash_part/packed_zset_part take shortcuts for the usual small value (one join as the
    # size test, members sorted alone); both sides of the byte limit must match the Bag's forms.
    from core.engines.redis import rdb_scan

    monkeypatch.setattr(rdb_scan, "SORTED_BYTES", limit)
    members = [b"member-%d" % i for i in (5, 3, 9, 1)]
    scores = [b"2.5", b"-1", b"7", b"0.125"]

    def bag(kind, rows):
        builder = rdb_scan.Bag(kind)
        for row in reversed(rows):
            builder.add([row])
        return builder.part()

    expected_form = b"S" if limit > 100 else b"U"
    whole = rdb_scan.set_part(list(members))
    assert whole[:1] == expected_form and whole == bag("set", [(m,) for m in members])
    flat = [x for pair in zip(members, scores, strict=True) for x in pair]
    whole = rdb_scan.hash_part(list(flat))
    assert whole[:1] == expected_form and whole == bag("hash", list(zip(members, scores, strict=True)))
    whole = rdb_scan.packed_zset_part(list(flat))
    assert whole[:1] == expected_form and whole == bag(
        "zset", [(m, float(s)) for m, s in zip(members, scores, strict=True)]
    )


def test_rdb_restore_is_verified_by_the_targets_own_snapshot(seeded, keyring, redis_factory):
    target = redis_factory()
    engine = RedisEngine(target.config("cache", "rdb"))
    backup_id = seeded["backups"]["rdb"]
    _, checks = _restore_with_engine(seeded["vault"], keyring, backup_id, engine)

    # Right after the load every value is encoded as in the backup stream: the cheap comparison proves it.
    assert verify_target(engine, checks, backup_id) == count_checks(checks)
    assert engine.verified_by == "its own snapshot over replication (every value encoded as in the backup)"
    target.client().zadd("zset:large", {"m7": 99})  # changed after the load
    with pytest.raises(VerificationError, match=r"databases\.db0\.digest"):
        verify_target(engine, checks, backup_id)
    assert engine.verified_by == "its own snapshot over replication"  # decoded, and found different
    target.client().zadd("zset:large", {"m7": 10.5})  # back as it was
    verify_target(engine, checks, backup_id)
    # The same data in another encoding (a hash grown past listpack limits and shrunk again) still verifies.
    target.client().hset("hash:small", "wide", "w" * 100)
    target.client().hdel("hash:small", "wide")
    assert target.client().object("encoding", "hash:small") == b"hashtable"
    verify_target(engine, checks, backup_id)
    assert engine.verified_by == "its own snapshot over replication"


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_a_target_refusing_sync_is_verified_by_scan_and_dump(seeded, keyring, redis_factory, mode):
    target = redis_factory(password=PASSWORD)
    target.client().acl_setuser(
        "no-sync",
        enabled=True,
        passwords=["+no-sync-pw"],
        keys=["*"],
        commands=["+@all", "-sync", "-psync", "-replconf"],
    )
    backup_id = seeded["backups"][mode]
    if mode == "rdb":  # loading an RDB needs REPLICAOF: restore as the admin, verify as the user
        _restore_with_engine(seeded["vault"], keyring, backup_id, RedisEngine(target.config("cache", mode)))
    engine = RedisEngine(target.config("cache", mode, username="no-sync", password="no-sync-pw"))
    if mode == "logical":
        _restore_with_engine(seeded["vault"], keyring, backup_id, engine)
    checks = seeded["vault"].open_backup(backup_id, keyring).result.checks

    assert verify_target(engine, checks, backup_id) == count_checks(checks)
    assert engine.verified_by.startswith("SCAN/DUMP")
    target.client().hset("hash:large", "field-7", "tampered")
    with pytest.raises(VerificationError, match=r"databases\.db0\.digest"):
        verify_target(engine, checks, backup_id)


def test_backups_with_redis_checks_2_still_verify(seeded, keyring, redis_factory):
    # Checks as genesis-dr recorded them before redis-checks/3: the old walker over the same RDB.
    from core.engines.redis.checks import KeyspaceChecks

    reader = seeded["vault"].open_backup(seeded["backups"]["rdb"], keyring)
    try:
        pieces = iter(list(reader.iter_stream("dump.rdb")))
    finally:
        reader.close()
    old = KeyspaceChecks(int(time.time() * 1000), "redis-checks/2")
    walk_rdb(ByteReader(lambda: next(pieces, b"")), old.add, on_function=old.add_function)
    checks = old.to_dict()
    assert checks["algorithm"] == "redis-checks/2"
    target = redis_factory()
    engine = RedisEngine(target.config("cache", "rdb"))
    _restore_with_engine(seeded["vault"], keyring, seeded["backups"]["rdb"], engine)

    assert verify_target(engine, checks, "old") == count_checks(checks)
    target.client().lpush("list:large", "extra")
    with pytest.raises(VerificationError, match=r"databases\.db0\.digest"):
        verify_target(engine, checks, "old")


def test_walker_reports_a_truncated_rdb_as_corrupt(seeded, keyring):
    from core.engines.redis.walker import Walker

    reader = seeded["vault"].open_backup(seeded["backups"]["rdb"], keyring)
    try:
        data = b"".join(reader.iter_stream("dump.rdb"))
    finally:
        reader.close()
    with Walker("rdb", "redis 'cache'", int(time.time() * 1000)) as walker:
        walker.write(data[: len(data) // 2])
        with pytest.raises(EngineError, match=r"^redis 'cache': redis RDB data is corrupt \(data ends early\)"):
            walker.result()


def test_the_plan_says_how_each_kind_of_backup_is_loaded_and_verified(seeded, redis_factory):
    from core.planning import plan_restore_from
    from core.stack import VaultConfig

    target = redis_factory()
    vault_config = VaultConfig(path=str(seeded["vault"].store.root))

    class Stack:  # what plan_restore_from needs of a stack: the sources by name
        @staticmethod
        def source(name: str):
            return target.config(name, "rdb")

    for mode, says in (("rdb", "(REPLICAOF)"), ("logical", "RESTORE per key in pipelined batches")):
        plan = plan_restore_from(Stack(), vault_config, "cache", seeded["backups"][mode], None, None, None, False)
        [load] = [step for step in plan.steps if step.startswith("stream ")]
        assert says in load and "verified by walking the target's own snapshot over replication" in load


def test_the_encoding_shortcut_proves_only_the_backup_that_was_loaded(seeded, keyring, redis_factory, vault):
    # A target loaded from backup A, asked to prove backup B (one more key): it must not pass
    # because its encodings match the stream it loaded.
    target = redis_factory()
    engine = RedisEngine(target.config("cache", "rdb"))
    _restore_with_engine(seeded["vault"], keyring, seeded["backups"]["rdb"], engine)
    other = redis_factory()
    seed_redis(other.client())
    other.client().set("only-in-b", "x")
    manifest = backup_source(vault, keyring, RedisEngine(other.config("cache", "rdb")))
    checks_b = vault.open_backup(manifest.id, keyring).result.checks

    with pytest.raises(VerificationError, match=r"databases\.db0\.(digest|keys)"):
        verify_target(engine, checks_b, manifest.id)
    assert engine.verified_by == "its own snapshot over replication"


def test_the_walkers_record_parser_reads_what_iter_records_reads_in_any_piece_size(seeded, keyring):
    from core.engines.redis.logical import iter_records, scan_records, write_header, write_record, write_trailer

    reader = seeded["vault"].open_backup(seeded["backups"]["logical"], keyring)
    try:
        data = b"".join(reader.iter_stream("keys.bin"))
    finally:
        reader.close()
    expected = [(r.db, r.key, r.expire_at_ms, r.payload) for r in iter_records(io.BytesIO(data))]
    small = io.BytesIO()
    write_header(small)
    few = [r for r in expected if len(r[3]) < 1000][:40]
    for record in few:
        write_record(small, *record)
    write_trailer(small, len(few))
    for stream, records, sizes in ((small.getvalue(), few, (1, 7, 100)), (data, expected, (65536, len(data)))):
        for size in sizes:
            pieces = iter([stream[i : i + size] for i in range(0, len(stream), size)])
            assert list(scan_records(lambda pieces=pieces: next(pieces, b""))) == records, size
    for bad, message in (
        (data[:-3], "truncated"),
        (data[:-8] + (len(expected) + 1).to_bytes(8, "big"), "trailer says"),
        (data + b"x", "after its trailer"),
    ):
        pieces = iter([bad])
        with pytest.raises(IntegrityError, match=message):
            list(scan_records(lambda pieces=pieces: next(pieces, b"")))
