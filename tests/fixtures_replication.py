"""Throw-away replicated pairs for the failover tests: a primary and its replica of each kind.

``pg_replica_pair``: a PostgreSQL primary (WAL settings of ``PITR_SERVER_OPTIONS``) and a hot
standby made with ``pg_basebackup -R`` that streams from it over the primary's unix socket (trust
auth there, so no password ends up in the standby's conninfo).
``mysql_replica_pair``: a MariaDB primary and a replica following it by GTID
(``MASTER_USE_GTID=slave_pos``).
``redis_replica_pair``: a redis-server and a replica (``replicaof``), both password-protected.

All are session-scoped. Each member can be stopped and started again (a test that stops one
must start it again, e.g. in ``finally``), so tests see a real dead server and the real
reconnection of its partner.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pymysql
import pytest
import redis
from pydantic import SecretStr

from core.sources import RedisSourceConfig
from tests.fixtures_mysql import DR_USER, MySQLServer
from tests.fixtures_postgres import PITR_SERVER_OPTIONS, PostgresServer, _as_postgres, start_postgres_server
from tests.servers import free_port, require_binary, shared_tmpdir, wait_for_port


def _keep() -> bool:
    return bool(os.environ.get("GENESIS_DR_KEEP_TEST_SERVERS"))


def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` (exceptions count as false) until it holds; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - a server still starting raises; keep polling
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class PgPair:
    primary: PostgresServer
    standby: PostgresServer

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Until the standby streams from the primary and has replayed all the primary has written."""
        with self.primary.connect() as conn:
            (written,) = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()

        def caught_up() -> bool:
            # Not receive = replay: after a restart the receive position starts at a segment's
            # beginning, behind the replay position, until the (maybe idle) primary writes again.
            with self.standby.connect() as conn:
                status, caught = conn.execute(
                    "SELECT status, pg_last_wal_replay_lsn() >= %s FROM pg_stat_wal_receiver", (written,)
                ).fetchone()
            return status == "streaming" and caught

        wait_until(caught_up, timeout, "postgres standby streaming")


# The standby's settings: quick replay-progress reports, so lag reads are fresh.
STANDBY_OPTIONS = "-c hot_standby=on -c wal_receiver_status_interval=1s"


def _remove(path: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def started_pg_pair(
    prefix: str,
    *,
    primary_options: str = PITR_SERVER_OPTIONS,
    standby_options: str = STANDBY_OPTIONS,
    standby_prefix: str | None = None,
    keep: bool = False,
) -> Iterator[PgPair]:
    """A PostgreSQL primary and a hot standby of it (``pg_basebackup -R``), streaming; both are stopped and
    (unless ``keep``) removed on exit. ``standby_prefix`` defaults to ``prefix + "stby-"``."""
    basebackup = require_binary("pg_basebackup", "/usr/lib/postgresql/15/bin/pg_basebackup")
    primary = start_postgres_server(prefix, primary_options)
    standby = PostgresServer(
        port=free_port(),
        password=primary.password,  # a copy of the primary: same roles, same password
        root=shared_tmpdir(standby_prefix or prefix + "stby-"),
        pg_ctl=primary.pg_ctl,
        options=standby_options,
    )
    try:
        _as_postgres(
            basebackup,
            *("-h", str(primary.root), "-p", str(primary.port), "-U", "postgres", "-D", str(standby.datadir)),
            *("-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        )
        standby.start()
        pair = PgPair(primary, standby)
        pair.wait_streaming()
        yield pair
    finally:
        for server in (standby, primary):
            try:
                if (server.datadir / "postmaster.pid").exists():
                    server.stop()
            finally:
                _remove(server.root, keep)


@pytest.fixture(scope="session")
def pg_replica_pair() -> Iterator[PgPair]:
    """A PostgreSQL primary and a streaming hot standby of it."""
    with started_pg_pair(
        "gdr-pg-prim-",
        primary_options=PITR_SERVER_OPTIONS + " -c wal_sender_timeout=5s",
        # Quick reconnection after the primary restarts (the default retry interval is 5 s).
        standby_options=STANDBY_OPTIONS + " -c hot_standby_feedback=on -c wal_retrieve_retry_interval=200ms",
        standby_prefix="gdr-pg-stby-",
        keep=_keep(),
    ) as pair:
        yield pair


# ---------------------------------------------------------------- MariaDB


class MariaDBNode(MySQLServer):
    """A mariadbd that can be stopped and started again on the same port and data."""

    def __init__(self, root: Path, port: int, password: str, server_id: int) -> None:
        super().__init__(root, port, password)
        self.server_id = server_id
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        r = self.root
        return [
            require_binary("mariadbd", "/usr/sbin/mariadbd", "mysqld", "/usr/sbin/mysqld"),
            "--no-defaults",
            f"--datadir={r / 'data'}",
            f"--socket={self.socket}",
            f"--tmpdir={r}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--log-bin={r / 'binlog'}",
            f"--server-id={self.server_id}",
            "--log-slave-updates",  # a replica that is promoted must have the history in its own binlog
            "--user=root",
            f"--pid-file={r / 'mysqld.pid'}",
            f"--log-error={r / 'error.log'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            # The replica retries a lost primary every second (the default is 60).
            "--master-retry-count=100000",
        ]

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, self.proc, timeout=60)
        except RuntimeError:
            log = (self.root / "error.log").read_text(errors="replace")[-2000:]
            self.proc.kill()
            raise RuntimeError(f"mariadbd did not start:\n{log}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start_mariadb(server_id: int, password: str) -> MariaDBNode:
    install = require_binary("mariadb-install-db", "mysql_install_db")
    root = shared_tmpdir(f"gdr-maria-{server_id}-")
    subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={root / 'data'}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    node = MariaDBNode(root, free_port(), password, server_id)
    node.start()
    admin = pymysql.connect(unix_socket=node.socket, user="root", autocommit=True)
    with admin, admin.cursor() as cur:
        # Accounts are made without binary logging: the replica gets the same ones from its own
        # bootstrap, and replicating them would collide with those.
        cur.execute("SET sql_log_bin = 0")
        for host in ("127.0.0.1", "localhost"):
            cur.execute(f"CREATE USER '{DR_USER}'@'{host}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{DR_USER}'@'{host}' WITH GRANT OPTION")
    return node


@dataclass
class MySQLPair:
    primary: MariaDBNode
    replica: MariaDBNode

    def password_free(self, checks) -> bool:
        """True if no check's detail shows the pair's password."""
        return all(self.primary.password not in c.detail for c in checks)

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Until the replica runs both threads and has applied every GTID the primary wrote."""
        with self.primary.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            (want,) = cur.fetchone()

        def caught_up() -> bool:
            with self.replica.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SHOW REPLICA STATUS")
                row = cur.fetchone()
                cur.execute("SELECT @@gtid_slave_pos AS applied")
                have = cur.fetchone()["applied"]
            return (
                bool(row)
                and row["Slave_IO_Running"] == "Yes"
                and row["Slave_SQL_Running"] == "Yes"
                and (set(have.split(",")) >= set(filter(None, want.split(","))))
            )

        try:
            wait_until(caught_up, timeout, "mariadb replica catching up")
        except AssertionError:
            with self.replica.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SHOW REPLICA STATUS")
                row = cur.fetchone() or {}
                cur.execute("SELECT @@gtid_slave_pos AS applied")
                row.update(cur.fetchone())
            keys = (
                "Slave_IO_Running",
                "Slave_SQL_Running",
                "Gtid_IO_Pos",
                "applied",
                "Last_IO_Error",
                "Last_SQL_Error",
            )
            raise AssertionError(
                f"mariadb replica did not catch up with {want}: {[row.get(k) for k in keys]}"
            ) from None


def mysql_password() -> str:
    """A fresh password with characters that need quoting (none may break a connection string)."""
    return f"pw-{secrets.token_hex(6)} #;'\"\\x"


@contextmanager
def started_mysql_pair(ids: tuple[int, int], password: str | None = None, *, keep: bool = False) -> Iterator[MySQLPair]:
    """A MariaDB primary (server id ``ids[0]``) and a read-only replica (``ids[1]``) following it by GTID, caught
    up; both are stopped and (unless ``keep``) removed on exit."""
    password = password or mysql_password()
    primary = _start_mariadb(ids[0], password)
    replica = None
    try:
        replica = _start_mariadb(ids[1], password)
        with replica.connect() as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL read_only = 1")
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
                "MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
                (primary.port, DR_USER, password),
            )
            cur.execute("START REPLICA")
        pair = MySQLPair(primary, replica)
        pair.wait_caught_up()
        yield pair
    finally:
        for node in (replica, primary):
            if node is not None:
                node.stop()
                _remove(node.root, keep)


@pytest.fixture(scope="session")
def mysql_replica_pair() -> Iterator[MySQLPair]:
    """A MariaDB primary (server id 11) and a read-only replica (12) following it by GTID."""
    with started_mysql_pair((11, 12), keep=_keep()) as pair:
        yield pair


# ---------------------------------------------------------------- Redis


class RedisNode:
    """A redis-server from a config file of its own; stop() and start() keep port and config."""

    def __init__(self, directory: Path, port: int, password: str) -> None:
        self.dir, self.port, self.password = directory, port, password
        self.proc: subprocess.Popen | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def config(self, name: str = "cache") -> RedisSourceConfig:
        return RedisSourceConfig(name=name, host="127.0.0.1", port=self.port, password=SecretStr(self.password))

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [require_binary("redis-server"), str(self.dir / "redis.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc, timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen one must be able to exit
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def _redis_node(password: str, *extra: str) -> RedisNode:
    directory = shared_tmpdir("gdr-redis-repl-")
    port = free_port()
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "save ''",
        "appendonly no",
        f"dir {directory}",
        "repl-diskless-sync-delay 0",
        "repl-ping-replica-period 1",
        "repl-timeout 5",
        "loglevel warning",
        f"logfile {directory / 'redis.log'}",
        f"requirepass {password}",
        *extra,
    ]
    conf = directory / "redis.conf"
    conf.write_text("\n".join(lines) + "\n")
    os.chmod(conf, 0o600)  # it holds the password
    node = RedisNode(directory, port, password)
    node.start()
    return node


@dataclass
class RedisPair:
    primary: RedisNode
    replica: RedisNode

    def wait_linked(self, timeout: float = 20.0) -> None:
        """Until the replica's link is up and its offset equals the primary's."""

        def linked() -> bool:
            info = self.replica.client().info("replication")
            primary = self.primary.client().info("replication")
            want = primary["master_repl_offset"]
            # The primary's view too: its replica offsets come from acknowledgements (one a second).
            acked = [v["offset"] for k, v in primary.items() if k.startswith("slave") and isinstance(v, dict)]
            return info["master_link_status"] == "up" and info["slave_repl_offset"] == want and acked == [want]

        wait_until(linked, timeout, "redis replica in sync")


@contextmanager
def started_redis_pair(password: str | None = None, *, keep: bool = False) -> Iterator[RedisPair]:
    """A redis-server and a replica of it (same password on both), in sync; both are stopped and (unless
    ``keep``) removed on exit."""
    password = password or "pw-" + secrets.token_hex(8)
    primary = _redis_node(password)
    replica = None
    try:
        replica = _redis_node(password, f"replicaof 127.0.0.1 {primary.port}", f"masterauth {password}")
        pair = RedisPair(primary, replica)
        pair.wait_linked()
        yield pair
    finally:
        for node in (replica, primary):
            if node is not None:
                node.stop()
                _remove(node.dir, keep)


@pytest.fixture(scope="session")
def redis_replica_pair() -> Iterator[RedisPair]:
    """A redis-server and a replica of it (same password on both)."""
    with started_redis_pair(keep=_keep()) as pair:
        yield pair
