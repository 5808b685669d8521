"""Fixtures: throw-away ``redis-server`` instances, seed data and snapshots.

``redis_factory(password=None, **settings)`` starts a server on a free port
under a temp dir (no persistence; the password goes in a 0600 config file,
never on the command line) and returns a ``RedisServer``; every server is
stopped when the test ends. ``seed_redis`` writes one key of every type and
encoding the engine must handle; ``snapshot_redis`` reads everything back for
comparison with ``assert_same_redis``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from core.sources import RedisSourceConfig
from tests.servers import free_port, require_binary, shared_tmpdir, wait_for_port

# Seeded, and searched for in vault files to prove nothing is stored in clear.
CANARY = b"genesis-dr-canary-c0ffee-plaintext-must-not-leak"


class RedisServer:
    """One running ``redis-server``."""

    def __init__(self, port: int, password: str | None, directory: Path, proc: subprocess.Popen) -> None:
        self.port = port
        self.password = password
        self.dir = directory
        self.proc = proc

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, db=db)

    def config(self, name: str = "cache", mode: str = "rdb", **overrides: Any) -> RedisSourceConfig:
        fields: dict[str, Any] = {"name": name, "host": "127.0.0.1", "port": self.port, "mode": mode}
        if self.password:
            fields["password"] = SecretStr(self.password)
        fields.update(overrides)
        return RedisSourceConfig(**fields)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_redis(password: str | None = None, *, tls: bool = False, **settings: str) -> RedisServer:
    """Start a redis-server; ``settings`` become config lines (``_`` -> ``-``). ``tls``: the free port is
    the ``tls-port`` and there is no plain one (``port 0``); the certificates come in ``settings``."""
    binary = require_binary("redis-server")
    directory = shared_tmpdir("gdr-redis-tls-" if tls else "gdr-redis-")
    port = free_port()
    lines = [
        *(["port 0", f"tls-port {port}"] if tls else [f"port {port}"]),
        "bind 127.0.0.1",
        "save ''",
        "appendonly no",
        f"dir {directory}",
        # Diskless syncs wait 5 s for more replicas by default; tests need not.
        "repl-diskless-sync-delay 0",
        "loglevel warning",
        f"logfile {directory / 'redis.log'}",
    ]
    if password:
        lines.append(f"requirepass {password}")
    lines += [f"{name.replace('_', '-')} {value}" for name, value in settings.items()]
    conf = directory / "redis.conf"
    conf.write_text("\n".join(lines) + "\n")
    os.chmod(conf, 0o600)
    proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc, timeout=20)
    except RuntimeError as exc:
        proc.kill()
        _, err = proc.communicate()  # config errors go to stderr, before the log file opens
        log = directory / "redis.log"
        tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
        raise RuntimeError(f"{exc}: {err.decode(errors='replace').strip()[-500:]} {tail}") from None
    return RedisServer(port, password, directory, proc)


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def factory(password: str | None = None, **settings: str) -> RedisServer:
        server = start_redis(password, **settings)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_session() -> Iterator[Callable[..., RedisServer]]:
    """Servers shared by the whole session: ``redis_session(role, **settings)`` starts one per role
    and configuration on first use; a test flushes what it uses."""
    servers: dict[tuple, RedisServer] = {}

    def get(role: str, **settings: str) -> RedisServer:
        key = (role, *sorted(settings.items()))
        if key not in servers:
            servers[key] = start_redis(**settings)
        return servers[key]

    yield get
    for server in servers.values():
        server.stop()


def _client_for(client: redis.Redis, db: int) -> redis.Redis:
    kwargs = client.connection_pool.connection_kwargs
    wanted = ("host", "port", "username", "password")
    return redis.Redis(db=db, **{k: kwargs[k] for k in wanted if k in kwargs})


def seed_redis(client: redis.Redis) -> None:
    """Write every type and encoding (small/packed and large/hashtable) to db 0 and db 3."""
    c = client
    c.set("str:plain", "hello world")
    c.set("str:canary", CANARY)
    c.set(b"str:binary:\x00\xff", bytes(range(256)) * 8)
    c.set("str:int", 12345)
    c.set("str:negint", -9_000_000_000)
    c.set("str:compressible", b"abcdefgh" * 200_000)  # LZF-compressed in the RDB
    c.set("str:random", os.urandom(300_000))  # incompressible, streamed in pieces
    c.rpush("list:small", "a", "b", 1, 2, -300, "c")
    c.rpush("list:large", *[f"item-{i}" if i % 3 else i for i in range(3000)])
    c.rpush("list:bigelems", b"x" * 20_000, b"y" * 70_000, "tail")
    c.sadd("set:strings", "red", "green", "blue")
    c.sadd("set:intset", 1, 2, 3, -5, 70000, 5_000_000_000)
    c.sadd("set:large", *[f"member-{i}" for i in range(600)])
    c.sadd("set:large_ints", *range(600))  # over set-max-intset-entries: hashtable
    c.zadd("zset:small", {"one": 1, "half": 0.5, "neg": -2.25, "big": 1e300})
    c.zadd("zset:inf", {"low": float("-inf"), "high": float("inf"), "mid": 3})
    c.zadd("zset:large", {f"m{i}": i * 1.5 for i in range(300)})
    c.hset("hash:small", mapping={"name": "ada", "age": 36, "neg": -1})
    c.hset("hash:large", mapping={f"field-{i}": f"value-{i}" * 3 for i in range(600)})
    c.hset("hash:bigvalue", mapping={"blob": b"z" * 5000, "n": 1})
    for i in range(250):
        fields = {"n": i, "kind": "tick"} if i % 4 else {"n": i, "kind": "tock", "extra": f"e{i}"}
        c.xadd("stream:events", fields, id=f"{1000 + i}-{i % 3}")
    c.xdel("stream:events", "1005-2", "1010-1")
    c.xgroup_create("stream:events", "workers", id="0")
    c.xreadgroup("workers", "alice", {"stream:events": ">"}, count=5)
    c.xgroup_create("stream:events", "auditors", id="$")
    _seed_real_stack(c)
    c.set("ttl:session", "token-abc", ex=3600)
    c.hset("ttl:hash", mapping={"a": 1})
    c.expire("ttl:hash", 7200)
    db3 = _client_for(c, 3)
    db3.set("db3:greeting", "hallo")
    db3.rpush("db3:list", *range(10))
    db3.set("db3:ttl", "soon", ex=1800)


LARGE_VALUE = random.Random(77).randbytes(5 << 20)  # several MB, incompressible


def _seed_real_stack(c: redis.Redis) -> None:
    """What production Redis holds besides the basic types: job streams with
    consumer groups (pending entries, redeliveries, acks, idle consumers),
    hashtable-encoded sets (non-integer and binary members past 512), binary
    key names of every type, and values of several MB."""
    for i in range(40):
        c.xadd("stream:jobs", {"job": i, "payload": b"\x00\xfe" * (i % 5)}, id=f"2000-{i}")
    c.xgroup_create("stream:jobs", "billing", id="0")
    c.xgroup_create("stream:jobs", "mailer", id="2000-9")  # last-delivered id in the middle
    c.xgroup_createconsumer("stream:jobs", "mailer", "idle-worker")  # a consumer holding nothing
    c.xreadgroup("billing", "w1", {"stream:jobs": ">"}, count=10)
    c.xreadgroup("billing", "w2", {"stream:jobs": ">"}, count=7)
    c.xack("stream:jobs", "billing", "2000-1", "2000-3", "2000-12")
    # Redelivered twice to another consumer: delivery counts of 3.
    for _ in range(2):
        c.xclaim("stream:jobs", "billing", "w2", 0, ["2000-4", "2000-5"])
    c.xreadgroup("mailer", "m1", {"stream:jobs": ">"}, count=4)
    c.xadd("stream:capped", {"v": 1}, maxlen=5)  # a stream with only an empty group
    c.xgroup_create("stream:capped", "nobody", id="$")
    c.sadd("set:binary_members", *[bytes([i % 256, 0xFF, i // 256]) + b"-m" for i in range(700)])
    c.sadd("set:mixed", *range(300), *[f"name-{i}" for i in range(300)])
    c.set(b"bin:\xff\xfe\x80key", b"value")
    c.rpush(b"bin:list:\xc3\x28", b"\x00", b"\xff" * 3)
    c.hset(b"bin:hash:\x00", mapping={b"\xff\x00field": b"\x80", "utf8": "Grüße 🎉"})
    c.zadd(b"bin:zset:\xed\xa0\x80", {b"\xff": 1.5, b"\x00\x00": -3})
    c.set("big:string", LARGE_VALUE)
    c.rpush("big:list", b"head", LARGE_VALUE[: 3 << 20], b"tail")
    c.hset("big:hash", mapping={"small": "x", "large": LARGE_VALUE[: 2 << 20]})
    c.set(b"big:ttl:\xff", LARGE_VALUE[: 1 << 20], ex=5400)
    c.function_load(FUNCTION_LIBRARY, replace=True)


FUNCTION_LIBRARY = (
    "#!lua name=jobs\n"
    "redis.register_function('next_job', function(keys, args) return redis.call('LINDEX', keys[1], 0) end)"
)


def function_codes(client: redis.Redis) -> list[bytes]:
    """Code of every function library on the server (they are server-wide, not per database)."""
    return sorted(
        lib[b"library_code"] if isinstance(lib, dict) else lib[-1] for lib in client.function_list(withcode=True)
    )


def _stream_value(c: redis.Redis, key: bytes) -> Any:
    """Entries, length and every group with its last-delivered id, its pending entries
    (id, consumer, delivery count) and its consumers with their pending counts."""
    groups = []
    for g in c.xinfo_groups(key):
        pending = c.xpending_range(key, g["name"], min="-", max="+", count=100_000)
        consumers = sorted((x["name"], x["pending"]) for x in c.xinfo_consumers(key, g["name"]))
        groups.append(
            (
                g["name"],
                g["last-delivered-id"],
                g["pending"],
                [(p["message_id"], p["consumer"], p["times_delivered"]) for p in pending],
                consumers,
            )
        )
    return (c.xrange(key), sorted(groups), c.xlen(key))


def snapshot_redis(client_factory: Callable[[int], redis.Redis]) -> dict[int, dict[bytes, dict[str, Any]]]:
    """Every key of every database: type, logical value and TTL (seconds, None if none)."""
    out: dict[int, dict[bytes, dict[str, Any]]] = {}
    dbs = [int(name[2:]) for name in client_factory(0).info("keyspace") if name.startswith("db")]
    for db in sorted(dbs):
        c = client_factory(db)
        keys: dict[bytes, dict[str, Any]] = {}
        for key in c.scan_iter(count=1000):
            kind = c.type(key).decode()
            if kind == "string":
                value: Any = c.get(key)
            elif kind == "list":
                value = c.lrange(key, 0, -1)
            elif kind == "set":
                value = c.smembers(key)
            elif kind == "zset":
                value = c.zrange(key, 0, -1, withscores=True)
            elif kind == "hash":
                value = c.hgetall(key)
            elif kind == "stream":
                value = _stream_value(c, key)
            else:
                raise AssertionError(f"unexpected type {kind}")
            pttl = c.pttl(key)
            keys[key] = {"type": kind, "value": value, "ttl": None if pttl < 0 else pttl / 1000}
        out[db] = keys
    return out


def assert_same_redis(expected: dict, actual: dict, ttl_slack: float = 3.0) -> None:
    """Equal databases, keys, types and values; TTLs within ``ttl_slack`` seconds."""
    assert sorted(actual) == sorted(expected), "databases differ"
    for db, keys in expected.items():
        assert sorted(actual[db]) == sorted(keys), f"keys of db {db} differ"
        for key, want in keys.items():
            got = actual[db][key]
            assert got["type"] == want["type"], f"type of {key!r} differs"
            assert got["value"] == want["value"], f"value of {key!r} differs"
            if want["ttl"] is None:
                assert got["ttl"] is None, f"{key!r} gained a TTL"
            else:
                assert got["ttl"] is not None and abs(got["ttl"] - want["ttl"]) <= ttl_slack, f"TTL of {key!r} differs"
