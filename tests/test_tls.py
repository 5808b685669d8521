"""TLS to every source: backup and restore round trips over verified TLS to PostgreSQL, MariaDB and
Redis servers that accept TLS only, and the one-line TLSError (exit 36) for a wrong CA, a wrong name
and a server without TLS. One server of each kind for the module (tests/fixtures_tls.py)."""

from __future__ import annotations

import time
import uuid

import boto3
import pytest
import requests
from pydantic import SecretStr

from core import tls
from core.crypto.keys import Keyring
from core.engines.mysql import position as mysql_position
from core.engines.mysql.engine import MySQLEngine
from core.engines.postgres.engine import PostgresEngine
from core.engines.postgres.position import lsn_int
from core.engines.redis.engine import RedisEngine
from core.errors import ConfigError, KeyServiceError, TLSError
from core.operations import backup_source, restore_backup
from core.repository.manifest import COMPLETED
from core.repository.vault import Vault
from core.stack import StackConfig, cross_region_replicas
from core.storage.config import VaultConfig
from core.storage.local import LocalStore
from core.tls import TLSConfig
from core.validation.restore_check import check_restore
from tests.capturing import Capturing
from tests.fixtures_gcs import GCS_PROJECT
from tests.fixtures_postgres import fresh_data_dir, stop_cluster
from tests.fixtures_sandbox import assert_no_sandbox_left
from tests.fixtures_tls import OTHER_NAME
from tests.servers import free_port


@pytest.fixture(scope="module")
def vault(tmp_path_factory) -> Vault:
    return Vault.open(LocalStore(tmp_path_factory.mktemp("tls-vault") / "vault"), create=True)


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(passphrase="tls-test-passphrase")


def _tls(pki, **fields) -> TLSConfig:
    return TLSConfig(**{"ca_file": str(pki.ca), **fields})


def _assert_tls_error(excinfo, name: str, port: int, *words: str) -> str:
    message = str(excinfo.value)
    assert excinfo.value.exit_code == 36
    assert "\n" not in message
    assert f"'{name}'" in message
    for word in words:
        assert word in message, message
    assert "BEGIN" not in message and "PRIVATE" not in message
    return message


# ---------------------------------------------------------------------------------------- PostgreSQL


def test_postgres_logical_round_trip_over_verified_tls(pg_tls_server, tls_pki, vault, keyring):
    server = pg_tls_server
    source_db = server.create_database(server.fresh_database_name())
    with server.connect(source_db) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric(12,2))")
        conn.execute("INSERT INTO accounts SELECT g, 'owner-' || g, g * 1.25 FROM generate_series(1, 500) g")
        rows = conn.execute("SELECT * FROM accounts ORDER BY id").fetchall()
    engine = PostgresEngine(server.config("pg-tls", source_db, tls=_tls(tls_pki), backup_method="logical"))
    with engine._connect() as conn:  # the engine's own session is encrypted
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)

    manifest = backup_source(vault, keyring, engine)
    assert manifest.status == COMPLETED

    target_db = server.fresh_database_name()
    target = PostgresEngine(server.config("pg-tls", target_db, tls=_tls(tls_pki)))
    restore_backup(vault, keyring, manifest.id, target)
    with server.connect(target_db) as conn:
        assert conn.execute("SELECT * FROM accounts ORDER BY id").fetchall() == rows


def test_postgres_physical_backup_over_tls_restores_into_a_new_cluster(pg_tls_server, tls_pki, vault, keyring):
    # pg_basebackup takes its TLS settings from the environment and the conninfo: hostssl only lets it in over TLS.
    server = pg_tls_server
    database = server.create_database(server.fresh_database_name())
    with server.connect(database) as conn:
        conn.execute("CREATE TABLE kept (id int, note text)")
        conn.execute("INSERT INTO kept SELECT g, 'n' || g FROM generate_series(1, 50) g")
    config = server.config("pg-tls-phys", database, tls=_tls(tls_pki), backup_method="physical")
    manifest = backup_source(vault, keyring, PostgresEngine(config))
    assert manifest.position["physical"]

    # The new cluster is started on this host by the restore and reached over loopback: without TLS (a copy
    # of the source's data directory need not carry its certificate).
    data_dir = fresh_data_dir()
    target = PostgresEngine(config.model_copy(update={"data_dir": str(data_dir), "port": free_port()}))
    try:
        restore_backup(vault, keyring, manifest.id, target)
        with target._connect() as conn:
            assert conn.execute("SELECT count(*), max(note) FROM kept").fetchone() == (50, "n9")
    finally:
        stop_cluster(data_dir)


def test_postgres_sslmode_alone_keeps_libpqs_own_root_certificate(pg_tls_server, tls_pki, vault, keyring, monkeypatch):
    # A stack written before tls: existed (sslmode: verify-full, the CA in PGSSLROOTCERT or ~/.postgresql/root.crt)
    # is verified against that CA, by the engine's sessions and by pg_dump, not against the system store.
    monkeypatch.setenv("PGSSLROOTCERT", str(tls_pki.ca))
    database = pg_tls_server.create_database(pg_tls_server.fresh_database_name())
    config = pg_tls_server.config("pg-legacy", database, sslmode="verify-full", backup_method="logical")
    assert tls.libpq_params(None, "127.0.0.1", "verify-full") == {"sslmode": "verify-full"}
    assert backup_source(vault, keyring, PostgresEngine(config)).status == COMPLETED
    monkeypatch.delenv("PGSSLROOTCERT")
    monkeypatch.setenv("HOME", str(tls_pki.ca.parent / "no-home"))  # no ~/.postgresql/root.crt either
    with pytest.raises(TLSError, match="is not signed by the system CA store"):
        PostgresEngine(config).ping()


def test_postgres_tls_failures_are_one_line_tls_errors(pg_tls_server, tls_pki):
    server = pg_tls_server
    where = f"127.0.0.1:{server.port}"

    with pytest.raises(TLSError) as excinfo:
        PostgresEngine(server.config("pg-wrong-ca", tls=TLSConfig(ca_file=str(tls_pki.wrong_ca)))).ping()
    _assert_tls_error(excinfo, "pg-wrong-ca", server.port, where, str(tls_pki.wrong_ca), "set tls.ca_file")

    with pytest.raises(TLSError) as excinfo:
        PostgresEngine(server.config("pg-wrong-name", tls=_tls(tls_pki, server_name=OTHER_NAME))).ping()
    _assert_tls_error(excinfo, "pg-wrong-name", server.port, f"does not name {OTHER_NAME}", "tls.server_name")

    # verify-ca checks the chain, not the name: the same connection is accepted.
    PostgresEngine(server.config("pg-ca", tls=_tls(tls_pki, mode="verify-ca", server_name=OTHER_NAME))).ping()
    # A name the certificate carries, while connecting by address (libpq: host=name, hostaddr=address).
    PostgresEngine(server.config("pg-named", tls=_tls(tls_pki, server_name="localhost"))).ping()
    # The older sslmode string alone: verify-full against the system store, which does not hold the test CA.
    with pytest.raises(TLSError) as excinfo:
        PostgresEngine(server.config("pg-sslmode", sslmode="verify-full")).ping()
    _assert_tls_error(excinfo, "pg-sslmode", server.port, "the system CA store")


# ---------------------------------------------------------------------------------------- MariaDB


def test_mysql_round_trip_over_verified_tls(mysql_tls_server, tls_pki, vault, keyring):
    server = mysql_tls_server
    source_db = server.create_database("tls")
    with server.connect(source_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(40), qty INT)")
        cur.executemany("INSERT INTO orders VALUES (%s, %s, %s)", [(i, f"item-{i}", i % 7) for i in range(1, 301)])
        cur.execute("SELECT * FROM orders ORDER BY id")
        rows = cur.fetchall()
    engine = MySQLEngine(server.config("my-tls", source_db, tls=_tls(tls_pki)))
    with engine._session(None, "reading the cipher") as (_, cur):
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1].startswith("TLSv1")

    manifest = backup_source(vault, keyring, engine)
    assert manifest.status == COMPLETED

    target_db = server.fresh_database_name("tlsr")
    restore_backup(vault, keyring, manifest.id, MySQLEngine(server.config("my-tls", target_db, tls=_tls(tls_pki))))
    with server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM orders ORDER BY id")
        assert cur.fetchall() == rows


def test_mysql_tls_failures_are_one_line_tls_errors(mysql_tls_server, tls_pki):
    server = mysql_tls_server
    where = f"127.0.0.1:{server.port}"
    with pytest.raises(TLSError) as excinfo:
        MySQLEngine(server.config("my-wrong-ca", "mysql", tls=TLSConfig(ca_file=str(tls_pki.wrong_ca)))).ping()
    _assert_tls_error(excinfo, "my-wrong-ca", server.port, where, str(tls_pki.wrong_ca), "set tls.ca_file")

    with pytest.raises(TLSError) as excinfo:
        MySQLEngine(server.config("my-wrong-name", "mysql", tls=_tls(tls_pki, server_name=OTHER_NAME))).ping()
    _assert_tls_error(excinfo, "my-wrong-name", server.port, f"does not name {OTHER_NAME}")

    MySQLEngine(server.config("my-ca", "mysql", tls=_tls(tls_pki, mode="verify-ca", server_name=OTHER_NAME))).ping()
    MySQLEngine(server.config("my-named", "mysql", tls=_tls(tls_pki, server_name="localhost"))).ping()


# ---------------------------------------------------------------------------------------- Redis


def _seed(client) -> dict[bytes, bytes]:
    client.flushall()
    for i in range(200):
        client.set(f"k:{i}", f"value-{i}")
    client.hset("h", mapping={"a": "1", "b": "2"})
    return {k: client.dump(k) for k in client.keys()}


@pytest.mark.parametrize("mode", ["rdb", "logical"])
def test_redis_round_trip_over_verified_tls(redis_tls_server, tls_pki, vault, keyring, mode):
    # rdb: the snapshot comes over our own replication link (PSYNC on a TLS socket); logical: pipelined DUMPs.
    server = redis_tls_server
    client = server.client()
    before = _seed(client)
    config = server.config("cache-tls", mode, tls=_tls(tls_pki))
    manifest = backup_source(vault, keyring, RedisEngine(config))
    assert manifest.status == COMPLETED

    client.flushall()
    restore_backup(vault, keyring, manifest.id, RedisEngine(config))
    assert {k: client.dump(k) for k in client.keys()} == before

    if mode == "rdb":
        # The target fetches an rdb restore from our short-lived master, which has no certificate to offer.
        client.flushall()
        client.config_set("tls-replication", "yes")
        try:
            with pytest.raises(ConfigError, match=r"tls-replication yes.*mode 'logical'"):
                restore_backup(vault, keyring, manifest.id, RedisEngine(config))
        finally:
            client.config_set("tls-replication", "no")


def test_redis_tls_failures_are_one_line_tls_errors(redis_tls_server, tls_pki, vault, keyring):
    server = redis_tls_server
    where = f"127.0.0.1:{server.port}"
    for mode in ("rdb", "logical"):
        with pytest.raises(TLSError) as excinfo:
            RedisEngine(server.config("rd-wrong-ca", mode, tls=TLSConfig(ca_file=str(tls_pki.wrong_ca)))).ping()
        _assert_tls_error(excinfo, "rd-wrong-ca", server.port, where, "set tls.ca_file")

    # The replication link (a raw socket of ours) checks the same way.
    engine = RedisEngine(server.config("rd-wrong-name", "rdb", tls=_tls(tls_pki, server_name=OTHER_NAME)))
    with pytest.raises(TLSError) as excinfo:
        engine.replica_sync()
    _assert_tls_error(excinfo, "rd-wrong-name", server.port, f"does not name {OTHER_NAME}")

    RedisEngine(server.config("rd-ca", tls=_tls(tls_pki, mode="verify-ca", server_name=OTHER_NAME))).ping()
    named = RedisEngine(server.config("rd-named", "rdb", tls=_tls(tls_pki, server_name="localhost")))
    named.ping()
    named.replica_sync().close()


def test_tls_to_a_server_without_tls_is_refused(tls_pki, pg_server, redis_session):
    with pytest.raises(TLSError) as excinfo:
        PostgresEngine(pg_server.config("pg-plain", tls=_tls(tls_pki))).ping()
    _assert_tls_error(excinfo, "pg-plain", pg_server.port, "offers no TLS", "remove tls:")

    # A plain Redis never answers a ClientHello: the handshake gives up after the connect timeout, not retried.
    plain = redis_session("plain")
    client = tls.redis_client(_tls(tls_pki), "rd-plain", host="127.0.0.1", port=plain.port, socket_connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(TLSError) as excinfo:
        client.ping()
    assert time.monotonic() - started < 3
    assert str(excinfo.value) == (
        f"redis 'rd-plain': server at 127.0.0.1:{plain.port} offers no TLS: enable ssl on the server or remove tls:"
    )


def test_a_missing_ca_file_names_the_source_and_the_field(mysql_tls_server, redis_tls_server, pg_tls_server):
    missing = TLSConfig(ca_file="/nonexistent/ca.pem")
    engines = [
        PostgresEngine(pg_tls_server.config("pg-missing", tls=missing)),
        MySQLEngine(mysql_tls_server.config("my-missing", "mysql", tls=missing)),
        RedisEngine(redis_tls_server.config("rd-missing", tls=missing)),
    ]
    for engine in engines:
        with pytest.raises(TLSError) as excinfo:
            engine.ping()
        assert f"'{engine.config.name}'" in str(excinfo.value)
        assert "tls.ca_file /nonexistent/ca.pem: no such file" in str(excinfo.value)


# ---------------------------------------------------------------------------------------- log capture


@pytest.fixture
def capture_vault(tmp_path, monkeypatch) -> Vault:
    monkeypatch.setenv("GENESIS_DR_SPOOL_DIR", str(tmp_path / "spool"))
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


def test_redis_replication_stream_capture_over_tls(redis_tls_server, tls_pki, capture_vault, keyring):
    client = redis_tls_server.client()
    client.flushall()
    config = redis_tls_server.config("cache-capture", tls=_tls(tls_pki), rpo_seconds=1)
    backup_source(capture_vault, keyring, RedisEngine(config))
    capture = Capturing(capture_vault, keyring, RedisEngine(config))
    try:
        for i in range(50):
            client.set(f"after:{i}", i)
        wanted = int(client.info("replication")["master_repl_offset"])
        capture.wait_until(lambda p: bool(p) and int(p[-1].end["offset"]) >= wanted, f"up to offset {wanted}")
    finally:
        capture.finish()


def test_postgres_wal_capture_over_tls(pg_tls_server, tls_pki, capture_vault, keyring):
    # pg_receivewal through the replication slot: hostssl lets it in only over TLS.
    server = pg_tls_server
    config = server.config("pg-capture", tls=_tls(tls_pki), backup_method="physical", slot="gdr_tls", rpo_seconds=1)
    backup_source(capture_vault, keyring, PostgresEngine(config))
    capture = Capturing(capture_vault, keyring, PostgresEngine(config))
    try:
        with server.connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS captured (id int)")
            conn.execute("INSERT INTO captured SELECT generate_series(1, 100)")
            (wanted,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        capture.wait_until(
            lambda p: bool(p) and lsn_int(p[-1].end["lsn"]) >= lsn_int(wanted), f"up to {wanted}", timeout=30
        )
    finally:
        capture.finish()


def test_mysql_binlog_capture_over_tls(mysql_tls_server, tls_pki, capture_vault, keyring):
    server = mysql_tls_server
    database = server.create_database("cap")
    config = server.config("my-capture", database, tls=_tls(tls_pki), rpo_seconds=1)
    backup_source(capture_vault, keyring, MySQLEngine(config))
    capture = Capturing(capture_vault, keyring, MySQLEngine(config))
    try:
        with server.connect(database) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
            cur.executemany("INSERT INTO t VALUES (%s)", [(i,) for i in range(50)])
            cur.execute("SHOW MASTER STATUS")
            file, pos = cur.fetchone()[:2]
        wanted = mysql_position.order({"binlog_file": file, "binlog_pos": pos})
        capture.wait_until(lambda p: bool(p) and mysql_position.order(p[-1].end) >= wanted, f"up to {file}:{pos}")
    finally:
        capture.finish()


# ---------------------------------------------------------------------------------------- restore-level validation


def _check_stack(tmp_path, source, **extra) -> StackConfig:
    return StackConfig(
        stack="tls-check",
        vault={"path": str(tmp_path / "unused-vault")},
        encryption={"passphrase_from": "env:GDR_UNUSED_PASSPHRASE"},
        sources=[source.model_dump()],
        **extra,
    )


def test_restore_level_check_reaches_a_tls_drill_target_over_tls(
    mysql_tls_server, tls_pki, vault, keyring, sandbox_root, tmp_path, monkeypatch
):
    # The drill target inherits the source's tls: the restore and the smoke queries reach it with it. The user
    # logs in only with a client certificate (REQUIRE X509), so a smoke session without the source's tls (an
    # opportunistic, unverified TLS session, as pymysql opens by default) is refused.
    monkeypatch.setenv("GENESIS_DR_SPOOL_DIR", str(tmp_path / "spool"))
    server = mysql_tls_server
    database = server.create_database("vld")
    user, password = f"x509_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY)")
        cur.executemany("INSERT INTO orders VALUES (%s)", [(i,) for i in range(1, 41)])
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s REQUIRE X509", (password,))
        cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'127.0.0.1'")
    try:
        with_cert = _tls(tls_pki, cert_file=str(tls_pki.other_cert), key_file=str(tls_pki.other_key))
        config = server.config("my-vld", database, user=user, password=SecretStr(password), tls=with_cert)
        manifest = backup_source(vault, keyring, MySQLEngine(config))
        target_db = server.fresh_database_name("drill")
        stack = _check_stack(
            tmp_path,
            config,
            drill={"targets": {"my-vld": {"database": target_db}}},
            validation={"smoke_queries": {"my-vld": [{"query": "SELECT count(*) FROM orders", "expect": "40"}]}},
        )
        recovery = check_restore(stack, vault, keyring, "my-vld")
    finally:
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER '{user}'@'127.0.0.1'")
    assert recovery.passed, [r.line() for r in recovery.results]
    assert [(r.name, r.status) for r in recovery.results] == [
        ("restore", "passed"),
        ("data checks", "passed"),
        ("smoke: SELECT count(*) FROM orders", "passed"),
    ]
    assert (recovery.backup_id, recovery.target) == (manifest.id, f"mysql 127.0.0.1:{server.port}/{target_db}")
    assert_no_sandbox_left(sandbox_root)


def test_restore_level_check_of_a_tls_source_in_a_sandbox(
    redis_tls_server, tls_pki, vault, keyring, sandbox_root, tmp_path, monkeypatch
):
    # The source is read over TLS; the sandbox is a plain throw-away server on loopback.
    monkeypatch.setenv("GENESIS_DR_SPOOL_DIR", str(tmp_path / "spool"))
    before = _seed(redis_tls_server.client())
    config = redis_tls_server.config("cache-vld", "logical", tls=_tls(tls_pki))
    backup_source(vault, keyring, RedisEngine(config))
    stack = _check_stack(
        tmp_path, config, validation={"smoke_queries": {"cache-vld": [{"query": "DBSIZE", "expect": str(len(before))}]}}
    )
    recovery = check_restore(stack, vault, keyring, "cache-vld")
    assert recovery.passed, [r.line() for r in recovery.results]
    assert [(r.name, r.status) for r in recovery.results] == [
        ("restore", "passed"),
        ("data checks", "passed"),
        ("smoke: DBSIZE", "passed"),
    ]
    assert recovery.target.startswith("sandbox redis-server on 127.0.0.1:")
    assert_no_sandbox_left(sandbox_root)


# ---------------------------------------------------------------------------------------- object storage


def test_s3_vault_over_https_with_a_private_ca(moto_https, tls_pki, redis_tls_server, keyring):
    bucket = f"gdr-tls-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_https, verify=str(tls_pki.ca)).create_bucket(
        Bucket=bucket
    )
    settings = {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": moto_https}
    vault = VaultConfig(**settings, ca_file=str(tls_pki.ca)).open(create=True)
    client = redis_tls_server.client()
    before = _seed(client)
    config = redis_tls_server.config("cache-s3", tls=_tls(tls_pki))
    manifest = backup_source(vault, keyring, RedisEngine(config))
    client.flushall()
    restore_backup(vault, keyring, manifest.id, RedisEngine(config))
    assert {k: client.dump(k) for k in client.keys()} == before

    # The same endpoint checked against another CA (and against the system store): refused at once, one line.
    for ca_file, named in ((str(tls_pki.wrong_ca), str(tls_pki.wrong_ca)), (None, "the system CA store")):
        with pytest.raises(TLSError) as excinfo:
            VaultConfig(**settings, ca_file=ca_file).open()
        assert str(excinfo.value) == (
            f"vault s3://{bucket}: the certificate of {moto_https.removeprefix('https://')} is not signed by "
            f"{named}: set ca_file to the CA that signed it"
        )
        assert excinfo.value.exit_code == 36


def test_a_vault_ca_file_and_source_tls_survive_apply_and_load(make_stack, moto_https, tls_pki, redis_tls_server):
    from blocks.apply import load_stack

    bucket = f"gdr-tls-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_https, verify=str(tls_pki.ca)).create_bucket(
        Bucket=bucket
    )
    vault = {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": moto_https}
    source = redis_tls_server.config("cache-blocks", "logical", tls=_tls(tls_pki, server_name="localhost"))
    stack = make_stack([source], vault=vault | {"ca_file": str(tls_pki.ca)})
    loaded = load_stack(stack.name)
    assert (loaded.vault.endpoint_url, loaded.vault.ca_file) == (moto_https, str(tls_pki.ca))
    assert loaded.source("cache-blocks").tls == source.tls
    # The reloaded vault is reached over HTTPS checked against the CA (the system store refuses the endpoint).
    assert loaded.vault.open(create=True).store.exists("config.json")


def test_cross_region_replicas_keep_the_vault_ca_file():
    vault = {"type": "s3", "bucket": "dr", "endpoint_url": "https://s3.internal", "ca_file": "/etc/dr/ca.pem"}
    data = cross_region_replicas({"vault": vault}, "dr.yaml", env={"BACKUP_CROSS_REGIONS": "eu-west-1"})
    assert data["replicas"] == [
        {
            "name": "eu-west-1",
            "vault": {
                "type": "s3",
                "endpoint_url": "https://s3.internal",
                "ca_file": "/etc/dr/ca.pem",
                "bucket": "dr-eu-west-1",
                "region": "eu-west-1",
            },
        }
    ]


def test_a_credentials_block_endpoint_obeys_the_https_rule(prefect_api):
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks.vault import bind_credentials

    name = f"plain-{uuid.uuid4().hex[:8]}"
    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_client_parameters=AwsClientParameters(endpoint_url="http://minio.internal:9000"),
    ).save(name)
    with pytest.raises(ConfigError) as excinfo:
        bind_credentials(VaultConfig(type="s3", bucket="dr", region="us-east-1", credentials=name))
    assert str(excinfo.value).startswith(
        f"vault s3://dr (us-east-1): endpoint_url of credentials block '{name}' (aws_client_parameters): "
        "http://minio.internal:9000 is plain http to another host"
    )


def test_aws_api_clients_refuse_an_unverified_endpoint_in_one_line(moto_https, tls_pki, tmp_path, monkeypatch):
    """KMS, SNS, CloudWatch, Route53, RDS and bucket sources: https checked against the system store (or
    AWS_CA_BUNDLE, botocore's own setting), plain http only to this machine; each refusal one line."""
    from pydantic import ValidationError

    from core.crypto.kms import AwsKms, KmsKeyConfig
    from core.engines.bucket.clients import client_for
    from core.errors import DnsSwitchError
    from core.failover.dns import switch_record
    from core.failover.rds import rds_status
    from core.failover.topology import DnsConfig, RegionConfig
    from core.notify.transport import sns_publish
    from core.observe.cloudwatch import publish_cloudwatch
    from core.observe.snapshot import build_snapshot
    from core.scheduling.config import CloudWatchConfig
    from core.sources import BucketSourceConfig

    host = moto_https.removeprefix("https://")
    unsigned = (
        f"the certificate of {host} is not signed by the system CA store: set AWS_CA_BUNDLE to the CA that signed it"
    )
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)

    kms = AwsKms(moto_https)
    with pytest.raises(TLSError) as excinfo:
        kms.check_state("alias/dr", "us-east-1")
    assert (str(excinfo.value), excinfo.value.exit_code) == (f"KMS key alias/dr (us-east-1): {unsigned}", 36)
    assert kms.retried == 0  # a refused certificate is not retried
    with pytest.raises(ValidationError, match="plain http to another host"):
        KmsKeyConfig(key_id="alias/dr", region="us-east-1", endpoint_url="http://kms.internal")

    arn = "arn:aws:sns:us-east-1:123456789012:dr"
    sent = sns_publish(arn, "s", "m", {}, region=None, endpoint_url=moto_https, session=None, timeout=5)
    assert sent == (False, f"{host}: {unsigned}")
    sent = sns_publish(arn, "s", "m", {}, region=None, endpoint_url="http://sns.internal", session=None, timeout=5)
    assert sent[0] is False and sent[1].startswith("sns endpoint_url: http://sns.internal is plain http")

    stack = StackConfig(
        stack="cw",
        vault={"path": str(tmp_path / "vault")},
        sources=[{"kind": "files", "name": "f", "root": str(tmp_path)}],
    )
    with pytest.raises(TLSError) as excinfo:
        publish_cloudwatch(build_snapshot(stack), CloudWatchConfig(region="us-east-1", endpoint_url=moto_https))
    assert str(excinfo.value) == f"operations.cloudwatch of stack cw: {unsigned}"
    with pytest.raises(ConfigError, match=r"^operations.cloudwatch.endpoint_url: http://cw.internal is plain http"):
        publish_cloudwatch(
            build_snapshot(stack),
            # a copy skips validation: the check where it is used still refuses it (load refuses it first)
            CloudWatchConfig(region="us-east-1").model_copy(update={"endpoint_url": "http://cw.internal"}),
        )

    dns = DnsConfig(
        provider="route53", zone="Z1", record_name="app.example.com.", value="a.example.com", endpoint_url=moto_https
    )
    with pytest.raises(DnsSwitchError) as excinfo:
        switch_record(dns)
    assert str(excinfo.value).endswith(f": {unsigned}") and "\n" not in str(excinfo.value)

    region = RegionConfig(name="us-east-1", priority=1, rds_instance_id="db1", aws_endpoint_url=moto_https)
    assert rds_status(region).detail == f"rds 'db1' in us-east-1: HTTPS: {unsigned}"
    plain = region.model_copy(update={"aws_endpoint_url": "http://rds.internal"})
    assert rds_status(plain).detail.startswith(
        "rds 'db1' in us-east-1: aws_endpoint_url of region us-east-1: http://rds.internal is plain http"
    )

    with pytest.raises(ConfigError, match=r"^bucket 'b': endpoint_url: http://s3.internal is plain http"):
        plain_bucket = BucketSourceConfig(name="b", bucket="b").model_copy(
            update={"endpoint_url": "http://s3.internal"}
        )
        client_for(plain_bucket, "bucket 'b'")

    # botocore's own setting for a private CA: named when it is the wrong one, and the right one is trusted.
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls_pki.wrong_ca))
    with pytest.raises(TLSError, match=f"is not signed by {tls_pki.wrong_ca}: set AWS_CA_BUNDLE to the CA"):
        AwsKms(moto_https).check_state("alias/dr", "us-east-1")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls_pki.ca))
    with pytest.raises(KeyServiceError, match="does not exist in us-east-1"):
        AwsKms(moto_https).check_state("alias/dr", "us-east-1")


def test_plain_http_endpoints_only_on_this_machine():
    for url in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000", "https://s3.example.com"):
        assert VaultConfig(type="s3", bucket="b", endpoint_url=url).endpoint_url == url
    with pytest.raises(ValueError, match=r"plain http to another host.*use https://"):
        VaultConfig(type="s3", bucket="b", endpoint_url="http://minio.internal:9000")
    with pytest.raises(ValueError, match="not an http"):
        VaultConfig(type="gcs", bucket="b", endpoint_url="ftp://x")
    # the failover's AWS and DNS APIs (a stack's failover: regions)
    from core.failover.topology import DnsConfig, RegionConfig

    with pytest.raises(ValueError, match=r"aws_endpoint_url\n.*http://rds.internal is plain http to another host"):
        RegionConfig(name="us-east-1", priority=1, rds_instance_id="db1", aws_endpoint_url="http://rds.internal")
    with pytest.raises(ValueError, match=r"endpoint_url\n.*http://dns.internal is plain http to another host"):
        DnsConfig(
            provider="route53", zone="Z1", record_name="a.example.com.", value="b", endpoint_url="http://dns.internal"
        )
    assert RegionConfig(name="us-east-1", priority=1, aws_endpoint_url="http://127.0.0.1:5000").aws_endpoint_url


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ('sources:\n  - {name: b, kind: bucket, bucket: bk, endpoint_url: "%s"}', "sources[0] (b).endpoint_url"),
        (
            'notifications:\n  sns: {topic_arn: "arn:aws:sns:us-east-1:123456789012:dr", endpoint_url: "%s"}',
            "notifications.sns.endpoint_url",
        ),
        ('operations:\n  cloudwatch: {endpoint_url: "%s"}', "operations.cloudwatch.endpoint_url"),
        (
            'encryption:\n  kms_keys: [{key_id: "alias/dr", region: us-east-1, endpoint_url: "%s"}]',
            "encryption.kms_keys[0].endpoint_url",
        ),
    ],
)
def test_a_plain_http_endpoint_to_another_host_is_refused_when_the_stack_loads(tmp_path, section, field):
    """Every cloud API endpoint of a stack file: refused by `apply`, before anything runs, naming the field."""
    from core.stack import load_stack_file

    base = "stack: ep\nvault: {path: ./v}\n"
    if not section.startswith("encryption"):
        base += 'encryption: {passphrase_from: "env:X"}\n'
    if not section.startswith("sources"):
        base += "sources:\n  - {name: f, kind: files, root: /srv}\n"
    for url, refused in (("http://api.internal", True), ("http://127.0.0.1:4566", False), ("https://x.example", False)):
        path = tmp_path / "stack.yaml"
        path.write_text(base + section % url + "\n")
        if not refused:
            load_stack_file(str(path))
            continue
        with pytest.raises(ConfigError) as excinfo:
            load_stack_file(str(path))
        message = str(excinfo.value)
        assert f"field '{field}': {url} is plain http to another host" in message and "\n" not in message, message


def test_redis_client_certificate_when_the_server_asks_for_one(redis_tls_server, tls_pki):
    server = redis_tls_server
    admin = server.client()
    admin.config_set("tls-auth-clients", "yes")
    # TLS 1.2 checks the client certificate inside the handshake (TLS 1.3 after it: the refusal may then reach
    # the client as a plain EOF, which may also be a dropped link, so it is reported as such, with a hint).
    admin.config_set("tls-protocols", "TLSv1.2")
    try:
        with_cert = _tls(tls_pki, cert_file=str(tls_pki.other_cert), key_file=str(tls_pki.other_key))
        RedisEngine(server.config("rd-client", tls=with_cert)).ping()
        with pytest.raises(TLSError) as excinfo:
            RedisEngine(server.config("rd-anonymous", tls=_tls(tls_pki))).ping()
        _assert_tls_error(excinfo, "rd-anonymous", server.port, "refused our client certificate", "tls.cert_file")
    finally:
        admin.config_set("tls-auth-clients", "no")
        admin.config_set("tls-protocols", "TLSv1.2 TLSv1.3")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # libpq (psycopg and the tools)
        (
            'connection to server at "10.0.0.5", port 5432 failed: server does not support SSL, but SSL was required',
            "no-tls",
        ),
        ("SSL error: certificate verify failed", "not-signed"),
        ('server certificate for "db1" does not match host name "db2"', "wrong-name"),
        ('root certificate file "/etc/x.pem" does not exist', "file"),
        # a session the server dropped mid-query: transient, not a TLS refusal
        ("SSL error: unexpected eof while reading", None),
        ("server closed the connection unexpectedly", None),
        # pymysql, the MariaDB tools
        ('(2026, "SSL is required but the server doesn\'t support it")', "no-tls"),
        ("ERROR 2026 (HY000): TLS/SSL error: self-signed certificate in certificate chain", "not-signed"),
        # Python's ssl (redis-py, our raw sockets)
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch", "wrong-name"),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired", "expired"),
        ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required", "client-refused"),
        ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)", "no-tls"),
        ("password authentication failed for user", None),
    ],
)
def test_tls_failures_are_told_apart(text, problem):
    assert tls.tls_problem(text) == problem


def test_gcs_vault_over_https_with_a_private_ca(gcs_https, tls_pki, keyring):
    bucket = f"gdr-tls-{uuid.uuid4().hex[:10]}"
    created = requests.post(
        f"{gcs_https}/storage/v1/b", params={"project": GCS_PROJECT}, json={"name": bucket}, verify=str(tls_pki.ca)
    )
    assert created.status_code == 200, created.text
    settings = {"type": "gcs", "bucket": bucket, "endpoint_url": gcs_https}
    store = VaultConfig(**settings, ca_file=str(tls_pki.ca)).store()
    store.put("probe/object", b"over https")
    assert store.get("probe/object") == b"over https"

    with pytest.raises(TLSError) as excinfo:
        VaultConfig(**settings, ca_file=str(tls_pki.wrong_ca)).store().get("probe/object")
    assert str(excinfo.value) == (
        f"vault gcs://{bucket}: the certificate of {gcs_https.removeprefix('https://')} is not signed by "
        f"{tls_pki.wrong_ca}: set ca_file to the CA that signed it"
    )
