"""A two-region topology of throw-away servers for the failover end-to-end tests and benchmark.

Region ``us-west-2`` (priority 1, active) holds the primaries, ``us-east-1`` (priority 2) their replicas:

* PostgreSQL: a primary with ``synchronous_commit=on`` and ``synchronous_standby_names='*'`` and a hot standby
  (``pg_basebackup -R``) streaming from it: a commit the primary acknowledged is flushed on the standby.
* MariaDB: a primary and a GTID replica with semi-synchronous replication (built into MariaDB since 10.3:
  ``rpl_semi_sync_master_enabled``, wait point ``AFTER_SYNC``): an acknowledged commit is in the replica's
  relay log. ``Topology.semi_sync`` says whether it is on (else the pair is asynchronous, and says why).
* Redis: a primary and a replica; the writer counts a write acknowledged only after ``WAIT 1`` confirmed it.
* A local HTTP health endpoint per region that can be switched off (503).
* moto (server mode): a Route53 hosted zone with ``app.<zone>`` CNAME -> ``db.us-west-2.<zone>``, each region's
  ``DnsConfig`` switching it to its own ``db.<region>.<zone>``; and, when asked, an RDS instance in us-west-2
  with a read replica in us-east-1.
* ``Topology.config``: the ``FailoverConfig`` describing all that (policy automatic, 1 s interval, down after
  2 failures); ``Topology.state_store()`` a ``LocalStore`` for the failover state.

The record's value names a region; ``Topology.resolve()`` maps it back to that region's servers, which is how
clients "follow DNS" here (every server listens on 127.0.0.1). ``AckWriter`` writes through that resolution
and records which writes were acknowledged, so a test or the benchmark can count lost ones.

Servers are built in parallel (about 10 s for a topology); ``kill()`` a region is SIGKILL for mariadbd and
redis-server, ``pg_ctl stop -m immediate`` for PostgreSQL, and the health endpoint answering 503.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pymysql
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.failover.dns import current_value
from core.failover.topology import FailoverConfig, RegionConfig
from tests.fixtures_mysql import DR_USER
from tests.fixtures_postgres import PITR_SERVER_OPTIONS, PostgresServer, _as_postgres, start_postgres_server
from tests.fixtures_replication import MariaDBNode, RedisNode, _redis_node, _start_mariadb, wait_until
from tests.servers import free_port, require_binary, shared_tmpdir

PRIMARY, STANDBY = "us-west-2", "us-east-1"
APP_USER = "app"  # MariaDB application account: no READ ONLY ADMIN, so a fence (read_only=ON) applies to it
APP_DB = "shop"
# Writes a standby must have before it counts as caught up: the replication status interval is 1 s.
_PG_COMMON = " -c wal_sender_timeout=5s -c wal_log_hints=on -c wal_receiver_status_interval=1s"
# The primary acknowledges a commit once its standby flushed it (synchronous_standby_names is set with
# ALTER SYSTEM once the standby streams: a command-line setting could not be reset by a fence or failback).
PG_PRIMARY_OPTIONS = PITR_SERVER_OPTIONS + _PG_COMMON + " -c synchronous_commit=on"
PG_STANDBY_OPTIONS = (
    PITR_SERVER_OPTIONS + _PG_COMMON + " -c synchronous_commit=on -c hot_standby=on -c hot_standby_feedback=on"
    " -c wal_retrieve_retry_interval=200ms"
)
SEMI_SYNC_TIMEOUT_MS = 30_000  # past this an unanswered commit falls back to asynchronous: longer than any test


def _keep() -> bool:
    return bool(os.environ.get("GENESIS_DR_KEEP_TEST_SERVERS"))


# ---------------------------------------------------------------- health endpoint


class HealthEndpoint:
    """GET /health answers 200 while ``up`` and 503 after ``down()`` (the application of a region)."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.healthy = True
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status = 200 if endpoint.healthy else 503
                body = f"{endpoint.region} {'ok' if status == 200 else 'down'}\n".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name=f"health-{region}")
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"

    def up(self) -> None:
        self.healthy = True

    def down(self) -> None:
        self.healthy = False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- servers


def _pg_running(server: PostgresServer) -> bool:
    return (server.datadir / "postmaster.pid").exists()


def _stop_pg(server: PostgresServer) -> None:
    if _pg_running(server):
        try:
            server.stop()
        except RuntimeError:
            pass  # already gone (killed): the pid file is stale


def _build_pg() -> tuple[PostgresServer, PostgresServer]:
    basebackup = require_binary("pg_basebackup", "/usr/lib/postgresql/15/bin/pg_basebackup")
    primary = start_postgres_server("gdr-fo-pg-west-", PG_PRIMARY_OPTIONS)
    standby = PostgresServer(
        port=free_port(),
        password=primary.password,
        root=shared_tmpdir("gdr-fo-pg-east-"),
        pg_ctl=primary.pg_ctl,
        options=PG_STANDBY_OPTIONS,
    )
    try:
        _as_postgres(
            basebackup,
            *("-h", str(primary.root), "-p", str(primary.port), "-U", "postgres", "-D", str(standby.datadir)),
            *("-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        )
        standby.start()
        _wait_pg_streaming(primary, standby)
        with primary.connect() as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE TABLE acks (id bigint PRIMARY KEY, region text NOT NULL)")
        wait_until(lambda: _pg_sync_state(primary) == "sync", 20, "postgres standby synchronous (sync_state = 'sync')")
    except BaseException:
        for server in (standby, primary):
            _stop_pg(server)
            shutil.rmtree(server.root, ignore_errors=True)
        raise
    return primary, standby


def _pg_sync_state(primary: PostgresServer) -> str | None:
    with primary.connect() as conn:
        row = conn.execute("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
    return row[0] if row else None


def _wait_pg_streaming(primary: PostgresServer, standby: PostgresServer, timeout: float = 30) -> None:
    with primary.connect() as conn:
        (written,) = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()

    def caught_up() -> bool:
        with standby.connect() as conn:
            status, caught = conn.execute(
                "SELECT status, pg_last_wal_replay_lsn() >= %s FROM pg_stat_wal_receiver", (written,)
            ).fetchone()
        return status == "streaming" and caught

    wait_until(caught_up, timeout, "postgres standby streaming")


def _semi_sync(primary: MariaDBNode, replica: MariaDBNode) -> tuple[bool, str]:
    """Turn semi-synchronous replication on (lossless AFTER_SYNC wait point); (on, how) — never raises for a
    server without it, which stays asynchronous."""
    try:
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL rpl_semi_sync_master_enabled = ON")
            cur.execute("SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'")
            cur.execute(f"SET GLOBAL rpl_semi_sync_master_timeout = {SEMI_SYNC_TIMEOUT_MS}")
        with replica.connect() as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL rpl_semi_sync_slave_enabled = ON")
            # The IO thread reads the setting when it connects.
            cur.execute("STOP REPLICA IO_THREAD")
            cur.execute("START REPLICA IO_THREAD")
    except pymysql.err.MySQLError as exc:
        return False, f"asynchronous: semi-sync unavailable in this MariaDB ({exc.args[-1]})"

    def clients() -> bool:
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'")
            return int(cur.fetchone()[1]) == 1

    try:
        wait_until(clients, 20, "mariadb semi-sync replica connected")
    except AssertionError as exc:
        return False, f"asynchronous: {exc}"
    return True, f"semi-synchronous (AFTER_SYNC, fallback to async after {SEMI_SYNC_TIMEOUT_MS} ms)"


def _build_mysql() -> tuple[MariaDBNode, MariaDBNode, bool, str]:
    password = f"pw-{secrets.token_hex(6)} #;'\"\\x"
    app_password = "app-" + secrets.token_hex(8)
    base = secrets.randbelow(10_000) * 10 + 100  # distinct server ids across topologies in one session
    primary = _start_mariadb(base + 1, password)
    replica = None
    try:
        replica = _start_mariadb(base + 2, password)
        primary.app_password = app_password  # type: ignore[attr-defined]
        replica.app_password = app_password  # type: ignore[attr-defined]
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {APP_DB}")
            cur.execute(f"CREATE TABLE {APP_DB}.acks (id bigint PRIMARY KEY, region varchar(20) NOT NULL)")
            # The application's account, replicated to the replica: it logs in to whichever is primary.
            for host in ("127.0.0.1", "localhost"):
                cur.execute(f"CREATE USER '{APP_USER}'@'{host}' IDENTIFIED BY %s", (app_password,))
                cur.execute(f"GRANT ALL ON {APP_DB}.* TO '{APP_USER}'@'{host}'")
        with replica.connect() as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL read_only = 1")
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
                "MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
                (primary.port, DR_USER, password),
            )
            cur.execute("START REPLICA")
        semi, how = _semi_sync(primary, replica)
        _wait_mysql_caught_up(primary, replica)
    except BaseException:
        for node in (replica, primary):
            if node is not None:
                node.stop()
                shutil.rmtree(node.root, ignore_errors=True)
        raise
    return primary, replica, semi, how


def _wait_mysql_caught_up(primary: MariaDBNode, replica: MariaDBNode, timeout: float = 30) -> None:
    with primary.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@gtid_binlog_pos")
        (want,) = cur.fetchone()

    def caught_up() -> bool:
        with replica.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW REPLICA STATUS")
            row = cur.fetchone()
            cur.execute("SELECT @@gtid_slave_pos AS applied")
            have = cur.fetchone()["applied"]
        return (
            bool(row)
            and row["Slave_IO_Running"] == "Yes"
            and row["Slave_SQL_Running"] == "Yes"
            and set(have.split(",")) >= set(filter(None, want.split(",")))
        )

    wait_until(caught_up, timeout, "mariadb replica catching up")


def _build_redis() -> tuple[RedisNode, RedisNode]:
    password = "pw-" + secrets.token_hex(8)
    primary = _redis_node(password)
    replica = None
    try:
        replica = _redis_node(password, f"replicaof 127.0.0.1 {primary.port}", f"masterauth {password}")

        def linked() -> bool:
            return replica.client().info("replication")["master_link_status"] == "up"

        wait_until(linked, 20, "redis replica linked")
    except BaseException:
        for node in (replica, primary):
            if node is not None:
                node.stop()
                shutil.rmtree(node.dir, ignore_errors=True)
        raise
    return primary, replica


def _kill_proc(proc) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a frozen one must be able to die too
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- regions and topology


@dataclass
class Region:
    """One region's servers: PostgreSQL, MariaDB, Redis and the application's health endpoint."""

    name: str
    priority: int
    pg: PostgresServer
    my: MariaDBNode
    rd: RedisNode
    health: HealthEndpoint
    dns_value: str

    def kill(self) -> None:
        """The region dies at once: no clean shutdown of any server, the application answers 503."""
        self.health.down()
        threads = [
            threading.Thread(target=_stop_pg, args=(self.pg,)),
            threading.Thread(target=_kill_proc, args=(self.my.proc,)),
            threading.Thread(target=_kill_proc, args=(self.rd.proc,)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def revive(self) -> None:
        """Start the region's servers again on their ports and data (as they were when killed)."""
        if not _pg_running(self.pg):
            self.pg.start()
        if self.my.proc is None or self.my.proc.poll() is not None:
            self.my.start()
        if self.rd.proc is None or self.rd.proc.poll() is not None:
            self.rd.start()
        self.health.up()

    # Application connections: what a client of the region uses (the MariaDB one is the unprivileged app).
    def pg_connect(self, timeout: float = 3) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.pg.port,
            user="postgres",
            password=self.pg.password,
            dbname="postgres",
            autocommit=True,
            connect_timeout=max(2, int(timeout)),
        )

    def my_connect(self, timeout: float = 3) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.my.port,
            user=APP_USER,
            password=self.my.app_password,  # type: ignore[attr-defined]
            database=APP_DB,
            autocommit=True,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
        )

    def rd_client(self, timeout: float = 3) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.rd.port,
            password=self.rd.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def close(self) -> None:
        self.health.close()
        _stop_pg(self.pg)
        for node in (self.my, self.rd):
            node.stop()
        if not _keep():
            for path in (self.pg.root, self.my.root, self.rd.dir):
                shutil.rmtree(path, ignore_errors=True)


def _dump(cfg) -> dict:
    """A source config as stack-file data (password in clear: FailoverConfig is built in memory only)."""
    data = cfg.model_dump(exclude={"name"})
    data["password"] = cfg.password.get_secret_value()
    return data


@dataclass
class Topology:
    regions: dict[str, Region]
    moto: str
    zone_id: str
    zone_name: str
    semi_sync: bool
    replication: dict[str, str]
    config: FailoverConfig
    state_dir: Path
    rds: dict[str, str] = field(default_factory=dict)
    built_s: float = 0.0

    @property
    def primary(self) -> Region:
        return self.regions[PRIMARY]

    @property
    def standby(self) -> Region:
        return self.regions[STANDBY]

    @property
    def record(self) -> str:
        return f"app.{self.zone_name}"

    def dns_value(self) -> str | None:
        """What the application record points at now (read from Route53)."""
        return current_value(self.config.region(PRIMARY).dns)

    def resolve(self) -> Region:
        """The region the application record points at: how a client "follows DNS" here."""
        value = self.dns_value()
        for region in self.regions.values():
            if region.dns_value == value:
                return region
        raise AssertionError(f"{self.record} points at {value!r}, no region's value")

    def state_store(self):
        """The failover state in a local store (as the stack's vault would hold it)."""
        from core.failover.state import StateStore  # H2's module: imported only by the tests that use it
        from core.storage.local import LocalStore

        return StateStore(LocalStore(self.state_dir), self.config)

    def stack_file(self, directory: Path, name: str) -> tuple[Path, dict[str, str]]:
        """A stack file (JSON is YAML) with a files source and this topology as its ``failover:`` section, the
        passwords as ``${VARIABLES}``; (its path, those variables for the command's environment)."""
        env: dict[str, str] = {}
        failover = self.config.model_dump(mode="json", exclude_none=True)
        for region, model in zip(failover["regions"], self.config.regions, strict=True):
            for kind in ("postgres", "mysql", "redis"):
                var = f"GDR_FO_{region['name'].replace('-', '_').upper()}_{kind.upper()}_PW"
                env[var] = getattr(model, kind).password.get_secret_value()
                region[kind]["password"] = f"${{{var}}}"
        (directory / "app").mkdir(exist_ok=True)
        document = {
            "stack": name,
            "vault": {"path": str(directory / f"vault-{name}")},
            "encryption": {"passphrase_from": "env:BACKUP_ENCRYPTION_PASSWORD"},
            "sources": [{"name": "app-files", "kind": "files", "root": str(directory / "app")}],
            "failover": failover,
        }
        path = directory / f"{name}.yaml"
        path.write_text(json.dumps(document, indent=1) + "\n")
        return path, env

    def close(self) -> None:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(Region.close, self.regions.values()))
        if not _keep():
            shutil.rmtree(self.state_dir, ignore_errors=True)


def _route53(moto: str):
    import boto3

    return boto3.client("route53", endpoint_url=moto, region_name="us-east-1")


def route53_zone(moto: str, first_value: str = "lb.us-west-2.example.com", prefix: str = "gdr-") -> tuple[str, str]:
    """A fresh Route53 zone '<prefix><hex>.test.' (its id and name) whose CNAME 'app.<zone>' points at
    ``first_value`` ('{zone}' in it is the zone's name; default: the us-west-2 load balancer)."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}.test."
    client = _route53(moto)
    zone_id = client.create_hosted_zone(Name=name, CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
    client.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": f"app.{name}",
                        "Type": "CNAME",
                        "TTL": 60,
                        "ResourceRecords": [{"Value": first_value.format(zone=name.rstrip("."))}],
                    },
                }
            ]
        },
    )
    return zone_id, name


def _make_rds(moto: str) -> dict[str, str]:
    """An RDS PostgreSQL instance in us-west-2 and its cross-region read replica in us-east-1 (moto)."""
    import boto3

    tag = uuid.uuid4().hex[:8]
    primary_id, replica_id = f"gdr-fo-{tag}-west", f"gdr-fo-{tag}-east"
    west = boto3.client("rds", endpoint_url=moto, region_name=PRIMARY)
    arn = west.create_db_instance(
        DBInstanceIdentifier=primary_id,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="app",
        MasterUserPassword="not-a-secret-moto",
    )["DBInstance"]["DBInstanceArn"]
    east = boto3.client("rds", endpoint_url=moto, region_name=STANDBY)
    east.create_db_instance_read_replica(
        DBInstanceIdentifier=replica_id, SourceDBInstanceIdentifier=arn, DBInstanceClass="db.t3.micro"
    )
    return {PRIMARY: primary_id, STANDBY: replica_id}


def build_topology(moto: str, *, rds: bool = False, policy: str = "automatic", interval: float = 1.0) -> Topology:
    """Two regions of real servers (built in parallel), the Route53 record and the FailoverConfig."""
    started = time.monotonic()
    health = {name: HealthEndpoint(name) for name in (PRIMARY, STANDBY)}
    built: dict[str, object] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="gdr-fo-build") as pool:
        futures = {
            kind: pool.submit(fn) for kind, fn in (("pg", _build_pg), ("my", _build_mysql), ("rd", _build_redis))
        }
        for kind, future in futures.items():
            try:
                built[kind] = future.result()
            except BaseException as exc:  # noqa: BLE001 - the others are torn down below, then re-raised
                errors.append(exc)
    if errors:
        for h in health.values():
            h.close()
        if "pg" in built:
            for server in built["pg"]:
                _stop_pg(server)
                shutil.rmtree(server.root, ignore_errors=True)
        for kind in ("my", "rd"):
            for node in built.get(kind, ())[:2]:
                node.stop()
                shutil.rmtree(getattr(node, "root", None) or node.dir, ignore_errors=True)
        raise errors[0]
    pg_w, pg_e = built["pg"]
    my_w, my_e, semi, how = built["my"]
    rd_w, rd_e = built["rd"]
    zone_id = zone_name = ""
    try:
        zone_id, zone_name = route53_zone(moto, "db." + PRIMARY + ".{zone}", prefix="gdr-fo-")
        zone_id = zone_id.rsplit("/", 1)[-1]  # the bare id, as an operator writes it in a stack file
        domain = zone_name.rstrip(".")
        regions = {
            PRIMARY: Region(PRIMARY, 1, pg_w, my_w, rd_w, health[PRIMARY], f"db.{PRIMARY}.{domain}"),
            STANDBY: Region(STANDBY, 2, pg_e, my_e, rd_e, health[STANDBY], f"db.{STANDBY}.{domain}"),
        }
        rds_ids = _make_rds(moto) if rds else {}
        config = FailoverConfig.model_validate(
            {
                "policy": policy,
                "max_data_loss_seconds": 5,
                "failures_before_down": 2,
                "check_interval_seconds": interval,
                "active_region": PRIMARY,
                "regions": [_region_data(r, zone_id, zone_name, moto, rds_ids.get(r.name)) for r in regions.values()],
            }
        )
    except BaseException:
        for h in health.values():
            h.close()
        for server in (pg_w, pg_e):
            _stop_pg(server)
            shutil.rmtree(server.root, ignore_errors=True)
        for node in (my_w, my_e, rd_w, rd_e):
            node.stop()
        raise
    replication = {
        "postgres": "synchronous (synchronous_standby_names='*', synchronous_commit=on)",
        "mysql": how,
        "redis": "asynchronous; the writer counts a write acknowledged after WAIT 1 (the replica has it)",
    }
    return Topology(
        regions=regions,
        moto=moto,
        zone_id=zone_id,
        zone_name=zone_name,
        semi_sync=semi,
        replication=replication,
        config=config,
        state_dir=shared_tmpdir("gdr-fo-state-"),
        rds=rds_ids,
        built_s=round(time.monotonic() - started, 2),
    )


def _region_data(region: Region, zone_id: str, zone_name: str, moto: str, rds_id: str | None) -> dict:
    data: dict = {
        "name": region.name,
        "priority": region.priority,
        "postgres": _dump(region.pg.config()),
        "mysql": _dump(region.my.config(database=APP_DB)),
        "redis": _dump(region.rd.config()),
        "health_urls": [region.health.url],
        "dns": {
            "provider": "route53",
            "zone": zone_id,
            "record_name": f"app.{zone_name}",
            "record_type": "CNAME",
            "value": region.dns_value,
            "ttl": 60,
            "endpoint_url": moto,
        },
    }
    fields = RegionConfig.model_fields
    if rds_id is not None:
        data["rds_instance_id"] = rds_id
        if "aws_endpoint_url" in fields:
            data.update(aws_region=region.name, aws_endpoint_url=moto)
    if "postgres_rebuild" not in fields:
        return data
    # Failback rebuilds the old primary's data directory as a standby (pg_rewind / pg_basebackup as postgres).
    data["postgres_rebuild"] = {
        "data_directory": str(region.pg.datadir),
        "bin_dir": str(Path(os.path.realpath(region.pg.pg_ctl)).parent),  # pg_rewind is beside the real pg_ctl
        "run_as": "postgres",
        "options": (
            f"-p {region.pg.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={region.pg.root}"
            f" -c fsync=off -c full_page_writes=off -c synchronous_commit=off {region.pg.options}"
        ),
    }
    return data


# ---------------------------------------------------------------- the monitor loop


class MonitorLoop:
    """The monitor as the deployment runs it, in a thread: ``assess`` every ``check_interval_seconds`` with one
    ``Tracker`` (so it has seen the regions healthy, and their lag, before anything fails), until the active
    region counts as down. ``down`` is set then; ``assessment`` is that run's, ``down_at`` when it ended."""

    def __init__(self, topology: Topology, *, probe_timeout: float = 1.0, active: str = PRIMARY) -> None:
        from core.failover.health import Tracker

        self.topology = topology
        self.probe_timeout = probe_timeout
        self.active = active
        self.tracker = Tracker(topology.config.failures_before_down)
        self.runs: list[tuple[float, bool]] = []  # (when it ended, active region down)
        self.assessment = None
        self.down_at: float | None = None
        self.down = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="gdr-fo-monitor")

    def _loop(self) -> None:
        from core.failover.monitor import assess

        interval = self.topology.config.check_interval_seconds
        while not self._stop.is_set():
            started = time.monotonic()
            assessment = assess(self.topology.config, self.tracker, timeout=self.probe_timeout, active=self.active)
            self.runs.append((time.monotonic(), assessment.active_down))
            if assessment.active_down:
                self.assessment, self.down_at = assessment, time.monotonic()
                self.down.set()
                return
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def start(self, runs: int = 2) -> MonitorLoop:
        """Start, and return once ``runs`` runs have seen the regions (the monitor was running before)."""
        self._thread.start()
        wait_until(lambda: len(self.runs) >= runs, 30, f"{runs} monitor runs")
        return self

    def wait_down(self, timeout: float = 60.0):
        """The assessment of the run that found the active region down."""
        if not self.down.wait(timeout):
            raise AssertionError(f"the monitor did not find {self.active} down within {timeout:g}s")
        return self.assessment

    def runs_since(self, since: float) -> int:
        return sum(1 for at, _ in self.runs if at >= since)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# ---------------------------------------------------------------- the writer

ENGINES = ("postgres", "mysql", "redis")


@dataclass(frozen=True)
class Write:
    """One write a server accepted: id, when (monotonic), the region that took it, and whether it was
    acknowledged as replicated (PostgreSQL and MariaDB: the commit returned, which synchronous / semi-sync
    replication makes wait for the standby; Redis: ``WAIT 1`` confirmed a replica has it)."""

    n: int
    at: float
    region: str
    acked: bool


class AckWriter:
    """Writes ids 1, 2, 3... to each engine of the region DNS points at (re-resolved after every failure),
    one thread per engine, and records every write a server accepted."""

    def __init__(self, topology: Topology, pause: float = 0.01) -> None:
        self.topology = topology
        self.pause = pause
        self.writes: dict[str, list[Write]] = {kind: [] for kind in ENGINES}
        self.errors: dict[str, int] = dict.fromkeys(ENGINES, 0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, args=(kind, fn), daemon=True, name=f"writer-{kind}")
            for kind, fn in (("postgres", self._pg), ("mysql", self._my), ("redis", self._rd))
        ]

    def start(self) -> AckWriter:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> AckWriter:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        return self

    def __enter__(self) -> AckWriter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def acked(self, region: str) -> dict[str, list[Write]]:
        """The acknowledged writes the region took, per engine."""
        with self._lock:
            return {k: [w for w in ws if w.acked and w.region == region] for k, ws in self.writes.items()}

    def first_on(self, region: str, after: float = 0.0) -> dict[str, float | None]:
        """Per engine, when the region first accepted a write after ``after`` (None: not yet)."""
        with self._lock:
            return {
                k: next((w.at for w in ws if w.region == region and w.at >= after), None)
                for k, ws in self.writes.items()
            }

    def wait_writes_on(self, region: str, after: float = 0.0, timeout: float = 30.0) -> dict[str, float]:
        """Until every engine of ``region`` accepted a write after ``after``; when each did."""
        wait_until(lambda: all(self.first_on(region, after).values()), timeout, f"writes accepted on {region}")
        return self.first_on(region, after)  # type: ignore[return-value]

    def _record(self, kind: str, n: int, region: str, acked: bool) -> None:
        with self._lock:
            self.writes[kind].append(Write(n, time.monotonic(), region, acked))

    def _loop(self, kind: str, writer: Callable[[Region, Iterator[int]], None]) -> None:
        counter = iter(range(1, 10**9))
        while not self._stop.is_set():
            try:
                writer(self.topology.resolve(), counter)
            except Exception:  # noqa: BLE001 - a dead or fenced server: resolve DNS again and retry
                with self._lock:
                    self.errors[kind] += 1
                self._stop.wait(0.1)

    def _pg(self, region: Region, counter: Iterator[int]) -> None:
        with region.pg_connect() as conn:
            while not self._stop.is_set():
                n = next(counter)
                conn.execute("INSERT INTO acks VALUES (%s, %s)", (n, region.name))
                self._record("postgres", n, region.name, True)
                self._stop.wait(self.pause)

    def _my(self, region: Region, counter: Iterator[int]) -> None:
        conn = region.my_connect()
        with conn, conn.cursor() as cur:
            while not self._stop.is_set():
                n = next(counter)
                cur.execute("INSERT INTO acks VALUES (%s, %s)", (n, region.name))
                self._record("mysql", n, region.name, True)
                self._stop.wait(self.pause)

    def _rd(self, region: Region, counter: Iterator[int]) -> None:
        client = region.rd_client()
        try:
            # A primary without replicas (a promoted one) takes writes no replica can acknowledge: WAIT would
            # only block, so they count as accepted, not acknowledged.
            replicated = int(client.info("replication").get("connected_slaves", 0)) > 0
            while not self._stop.is_set():
                n = next(counter)
                client.set(f"ack:{n}", region.name)
                acked = replicated and client.execute_command("WAIT", 1, 1000) >= 1
                self._record("redis", n, region.name, acked)
                self._stop.wait(self.pause)
        finally:
            client.close()


def stored_ids(region: Region) -> dict[str, set[int]]:
    """Every write id the region's servers hold, per engine."""
    with region.pg_connect() as conn:
        pg = {n for (n,) in conn.execute("SELECT id FROM acks")}
    conn = region.my.connect(APP_DB)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM acks")
        my = {n for (n,) in cur.fetchall()}
    client = region.rd_client()
    try:
        rd = {int(k.split(b":", 1)[1]) for k in client.scan_iter(match="ack:*", count=1000)}
    finally:
        client.close()
    return {"postgres": pg, "mysql": my, "redis": rd}


def lost_writes(writer: AckWriter, source: str, holder: Region) -> dict[str, list[int]]:
    """Writes ``source`` acknowledged that ``holder`` (the new primary) does not have, per engine."""
    held = stored_ids(holder)
    return {kind: sorted({w.n for w in ws} - held[kind]) for kind, ws in writer.acked(source).items()}


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def failover_topology_factory(moto_endpoint) -> Iterator[Callable[..., Topology]]:
    """Factory: a fresh two-region topology (``build_topology`` arguments); all are torn down at the end."""
    made: list[Topology] = []

    def make(**kwargs) -> Topology:
        topology = build_topology(moto_endpoint, **kwargs)
        made.append(topology)
        return topology

    yield make
    for topology in made:
        topology.close()
