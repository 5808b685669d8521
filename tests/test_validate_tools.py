"""The engines' own tools on a backup's plaintext, streamed from the vault (integrity level).

What an operator relies on: a good backup of every kind passes every tool check;
a backup whose content is damaged (its envelope intact: the damage happened before
it was sealed, so every digest matches) fails the tool check with one line naming
the tool and the stream; a missing tool binary is a failed check naming the
package to install. Real servers take the backups; damaged ones are written
through the vault's own BackupWriter, exactly where the engine would write them.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

from core.crypto.keys import Keyring
from core.engines.base import BackupResult
from core.engines.bucket.engine import BucketEngine
from core.engines.files.engine import FilesEngine
from core.engines.mysql.engine import MySQLEngine
from core.engines.postgres.engine import PostgresEngine
from core.engines.redis.engine import RedisEngine
from core.operations import backup_source
from core.repository.manifest import COMPLETED
from core.repository.vault import Vault
from core.sources import BucketSourceConfig, FilesSourceConfig
from core.storage.local import LocalStore
from core.validation.results import CheckResult
from core.validation.tools import verify_streams
from tests.fixtures_mysql import seed_mysql
from tests.fixtures_postgres import seed_postgres
from tests.fixtures_redis import seed_redis


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(passphrase="pw")


def check(vault: Vault, keyring: Keyring, backup_id: str) -> list[CheckResult]:
    reader = vault.open_backup(backup_id, keyring)
    try:
        return verify_streams(reader)
    finally:
        reader.close()


def streams_of(vault: Vault, keyring: Keyring, backup_id: str) -> dict[str, bytes]:
    reader = vault.open_backup(backup_id, keyring)
    try:
        return {name: b"".join(reader.iter_stream(name)) for name in reader.stream_names()}
    finally:
        reader.close()


def forge(vault: Vault, keyring: Keyring, like: str, streams: dict[str, bytes]) -> str:
    """A backup of the same source as ``like`` whose streams are ``streams``, written and sealed by
    the vault's BackupWriter: its envelope (chunk MACs, digests, manifest) is valid, its content not."""
    original = vault.manifest(like)
    reader = vault.open_backup(like, keyring)
    result = reader.result
    reader.close()
    writer = vault.begin_backup(
        source=original.source,
        kind=original.kind,
        backup_type=original.type,
        target=original.target,
        keyring=keyring,
    )
    for name, data in streams.items():
        writer.write_stream(name, io.BytesIO(data))
    return writer.commit(BackupResult(position=result.position, checks=result.checks)).id


def passed(results: list[CheckResult]) -> None:
    assert results, "no tool check ran"
    bad = [r.line() for r in results if not r.passed or not r.checked]
    assert not bad, bad


def one_failure(results: list[CheckResult]) -> CheckResult:
    failed = [r for r in results if r.failed]
    assert len(failed) == 1, [r.line() for r in results]
    line = failed[0].line()
    assert "\n" not in line and failed[0].critical
    return failed[0]


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_logical(pg_server, tmp_path_factory, keyring):
    db = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(db) as conn:
        seed_postgres(conn)
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp("pgv") / "vault"), create=True)
    manifest = backup_source(vault, keyring, PostgresEngine(pg_server.config("pg", db, backup_method="logical")))
    assert manifest.status == COMPLETED
    return vault, manifest.id


def test_postgres_logical_dump_passes_pg_restore(pg_logical, keyring):
    vault, backup_id = pg_logical
    results = check(vault, keyring, backup_id)
    passed(results)
    by_stream = {r.detail.split(":")[0]: r for r in results if r.name == "pg_restore"}
    assert "schema.pgdump" in by_stream and "data-0.pgdump" in by_stream
    assert "TOC entries, every data block read by pg_restore" in by_stream["data-0.pgdump"].detail
    assert all(r.source == "pg" and r.backup_id == backup_id for r in results)


def test_postgres_dump_cut_short_fails_pg_restore_naming_the_stream(pg_logical, keyring):
    vault, backup_id = pg_logical
    streams = streams_of(vault, keyring, backup_id)
    data = streams["data-0.pgdump"]
    streams["data-0.pgdump"] = data[: len(data) - 200]  # the last table's rows and the archive's end are gone
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, streams)))
    assert bad.name == "pg_restore"
    assert bad.detail.startswith("data-0.pgdump: pg_restore exited 1: pg_restore: error:"), bad.detail
    assert bad.remedy


def test_postgres_dump_with_a_damaged_toc_fails_pg_restore(pg_logical, keyring):
    vault, backup_id = pg_logical
    streams = streams_of(vault, keyring, backup_id)
    schema = bytearray(streams["schema.pgdump"])
    schema[0:5] = b"XXXXX"  # the archive's magic
    streams["schema.pgdump"] = bytes(schema)
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, streams)))
    assert bad.detail.startswith("schema.pgdump: pg_restore exited 1:"), bad.detail


@pytest.fixture(scope="module")
def pg_physical(pg_pitr_server, tmp_path_factory, keyring):
    slot = "gdr_verify_tools"
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp("pgp") / "vault"), create=True)
    config = pg_pitr_server.config("pg-cluster", "postgres", backup_method="physical", slot=slot)
    try:
        manifest = backup_source(vault, keyring, PostgresEngine(config))
    finally:
        with pg_pitr_server.connect() as conn:  # the slot would hold WAL for the session's other tests
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
    assert manifest.status == COMPLETED and [s.name for s in manifest.streams] == ["base.tar"]
    return vault, manifest.id


def test_postgres_physical_base_matches_its_backup_manifest(pg_physical, keyring):
    vault, backup_id = pg_physical
    results = check(vault, keyring, backup_id)
    passed(results)
    (result,) = results
    assert result.name == "backup_manifest (pg_verifybackup checks)"
    assert "files match the backup manifest (size and checksum)" in result.detail
    assert "WAL segments of its range present" in result.detail


def _tar_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def test_postgres_physical_base_with_a_changed_file_fails_the_manifest_check(pg_physical, keyring):
    vault, backup_id = pg_physical
    members = _tar_members(streams_of(vault, keyring, backup_id)["base.tar"])
    changed = []
    for info, data in members:
        if info.name == "PG_VERSION":
            data = b"14\n"  # same size, other content: only the checksum tells
        changed.append((info, data))
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, {"base.tar": _tar(changed)})))
    assert bad.name == "backup_manifest (pg_verifybackup checks)"
    assert bad.detail.startswith("base.tar: PG_VERSION: CRC-32C "), bad.detail
    assert bad.detail.endswith("does not match the backup manifest's " + bad.detail.rsplit(" ", 1)[1])


def test_postgres_physical_base_without_its_wal_fails_the_manifest_check(pg_physical, keyring):
    vault, backup_id = pg_physical
    members = _tar_members(streams_of(vault, keyring, backup_id)["base.tar"])
    kept = [(i, d) for i, d in members if not (i.name.startswith("pg_wal/0") and i.isreg())]  # the segments
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, {"base.tar": _tar(kept)})))
    assert "WAL segment" in bad.detail and bad.detail.endswith("of the backup's range is missing"), bad.detail


# -- MariaDB / MySQL -------------------------------------------------------------------------


def _mysql_backup(server, tmp_path_factory, keyring, split: bool):
    db = server.create_database()
    with server.connect(db) as conn:
        seed_mysql(conn)
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp("my") / "vault"), create=True)
    if split:  # every table in streams of its own, several parts each
        os.environ["GENESIS_DR_MYSQL_SPLIT_MIN_BYTES"] = "1"
        os.environ["GENESIS_DR_MYSQL_PART_BYTES"] = "2000"
    try:
        manifest = backup_source(vault, keyring, MySQLEngine(server.config("app-db", db)))
    finally:
        os.environ.pop("GENESIS_DR_MYSQL_SPLIT_MIN_BYTES", None)
        os.environ.pop("GENESIS_DR_MYSQL_PART_BYTES", None)
    assert manifest.status == COMPLETED
    return vault, manifest.id


@pytest.fixture(scope="module")
def mysql_single(mysql_server, tmp_path_factory, keyring):
    return _mysql_backup(mysql_server, tmp_path_factory, keyring, split=False)


@pytest.fixture(scope="module")
def mysql_split(mysql_server, tmp_path_factory, keyring):
    return _mysql_backup(mysql_server, tmp_path_factory, keyring, split=True)


def test_mysql_dump_parses_completely(mysql_single, keyring):
    vault, backup_id = mysql_single
    results = check(vault, keyring, backup_id)
    passed(results)
    dump = next(r for r in results if r.detail.startswith("dump.sql:"))
    assert dump.name == "SQL parse"
    assert dump.detail.endswith("statements, every quote and comment closed, ends with the dump's completion line")
    assert {r.name for r in results} == {"SQL parse", "grants.json parse"}


def test_mysql_per_table_layout_parses_and_names_every_table(mysql_split, keyring):
    vault, backup_id = mysql_split
    results = check(vault, keyring, backup_id)
    passed(results)
    layout = next(r for r in results if r.name == "per-table layout")
    tables = len(vault.open_backup(backup_id, keyring).result.checks["tables"])
    assert layout.detail.endswith(f"every one of the {tables} tables present"), layout.detail
    data = [n for n in vault.open_backup(backup_id, keyring).stream_names() if n.startswith("data-")]
    assert len([r for r in results if r.name == "SQL parse"]) == len(data) + 2


def test_mysql_dump_cut_mid_statement_fails_the_parse(mysql_single, keyring):
    vault, backup_id = mysql_single
    streams = streams_of(vault, keyring, backup_id)
    dump = streams["dump.sql"]
    insert = dump.index(b"\nINSERT INTO ")
    streams["dump.sql"] = dump[: insert + 40]  # inside the first INSERT's values
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, streams)))
    assert bad.name == "SQL parse"
    assert bad.detail.startswith("dump.sql: the ")
    assert "never closes (truncated?)" in bad.detail or "has no closing ; (truncated?)" in bad.detail


def test_mysql_dump_without_its_completion_line_fails_the_parse(mysql_single, keyring):
    vault, backup_id = mysql_single
    streams = streams_of(vault, keyring, backup_id)
    dump = streams["dump.sql"]
    streams["dump.sql"] = dump[: dump.rindex(b"\n-- Dump completed") + 1]  # whole statements, the tool's end missing
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, streams)))
    assert bad.detail == "dump.sql: no '-- Dump completed' line at its end: the dump tool did not finish"


def test_mysql_layout_missing_a_table_fails(mysql_split, keyring):
    vault, backup_id = mysql_split
    streams = streams_of(vault, keyring, backup_id)
    layout = json.loads(streams["layout.json"])
    dropped_table = sorted(set(layout["tables"].values()))[0]
    layout["tables"] = {s: t for s, t in layout["tables"].items() if t != dropped_table}
    streams = {n: d for n, d in streams.items() if n in layout["tables"] or not n.startswith("data-")}
    streams["layout.json"] = json.dumps(layout).encode()
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, streams)))
    assert bad.name == "per-table layout"
    assert bad.detail.startswith(f"layout.json: table {dropped_table} has no data stream"), bad.detail


# -- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_backups(redis_session, tmp_path_factory, keyring):
    server = redis_session("validate-tools")
    server.client().flushall()
    seed_redis(server.client())
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp("redis") / "vault"), create=True)
    ids = {}
    for mode in ("rdb", "logical"):
        manifest = backup_source(vault, keyring, RedisEngine(server.config(f"cache-{mode}", mode)))
        assert manifest.status == COMPLETED
        ids[mode] = manifest.id
    return vault, ids


def test_redis_rdb_passes_redis_check_rdb(redis_backups, keyring):
    vault, ids = redis_backups
    results = check(vault, keyring, ids["rdb"])
    passed(results)
    (result,) = results
    assert result.name == "redis-check-rdb"
    keys = sum(info["keys"] for info in redis_session_keyspace(vault, keyring, ids["rdb"]))
    assert result.detail == f"dump.rdb: RDB looks OK ({keys} keys read, checksum checked)"
    assert not [p for p in Path(tempfile.gettempdir()).glob("gdr-check-rdb-*")], "the plaintext copy was left behind"


def redis_session_keyspace(vault, keyring, backup_id):
    """Keys per database as the backup's sealed checks recorded them (with and without a TTL)."""
    databases = vault.open_backup(backup_id, keyring).result.checks["databases"]
    return [{"keys": d["keys"] + d.get("volatile_keys", 0)} for d in databases.values()]


def test_redis_rdb_cut_short_fails_redis_check_rdb(redis_backups, keyring):
    vault, ids = redis_backups
    streams = streams_of(vault, keyring, ids["rdb"])
    streams["dump.rdb"] = streams["dump.rdb"][:-30]
    bad = one_failure(check(vault, keyring, forge(vault, keyring, ids["rdb"], streams)))
    assert bad.name == "redis-check-rdb"
    assert bad.detail.startswith("dump.rdb: redis-check-rdb exited 1: [offset "), bad.detail
    assert not [p for p in Path(tempfile.gettempdir()).glob("gdr-check-rdb-*")]


def test_redis_check_rdb_missing_is_a_failed_check_naming_its_package(redis_backups, keyring, monkeypatch, tmp_path):
    vault, ids = redis_backups
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without redis-tools
    bad = one_failure(check(vault, keyring, ids["rdb"]))
    assert bad.name == "redis-check-rdb"
    assert bad.detail.startswith("dump.rdb: redis-check-rdb is not installed")
    assert bad.remedy == "install redis-check-rdb (Debian package redis-tools)"


def test_redis_logical_stream_parses(redis_backups, keyring):
    vault, ids = redis_backups
    results = check(vault, keyring, ids["logical"])
    passed(results)
    keys = next(r for r in results if r.name == "keys.bin parse")
    records = sum(info["keys"] for info in redis_session_keyspace(vault, keyring, ids["logical"]))
    assert keys.detail == f"keys.bin: {records} key records, the trailer's count matches"


def test_redis_logical_stream_with_a_wrong_trailer_fails_the_parse(redis_backups, keyring):
    vault, ids = redis_backups
    streams = streams_of(vault, keyring, ids["logical"])
    keys = streams["keys.bin"]
    streams["keys.bin"] = keys[:-8] + (int.from_bytes(keys[-8:], "big") + 1).to_bytes(8, "big")
    bad = one_failure(check(vault, keyring, forge(vault, keyring, ids["logical"], streams)))
    assert bad.name == "keys.bin parse"
    assert bad.detail.startswith("keys.bin: redis logical backup stream holds "), bad.detail
    assert bad.detail.endswith(f"keys, its trailer says {int.from_bytes(keys[-8:], 'big') + 1}")


# -- files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files_backup(tmp_path_factory, keyring):
    root = tmp_path_factory.mktemp("files-root")
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_bytes(b"alpha\n" * 1000)
    (root / "docs" / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(300_000))
    (root / "link").symlink_to("docs/a.txt")
    os.link(root / "big.bin", root / "hard.bin")
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp("files") / "vault"), create=True)
    manifest = backup_source(vault, keyring, FilesEngine(FilesSourceConfig(name="app-files", root=str(root))))
    assert manifest.status == COMPLETED
    return vault, manifest.id


def test_files_tar_lists_completely_and_matches_its_index(files_backup, keyring):
    vault, backup_id = files_backup
    results = check(vault, keyring, backup_id)
    passed(results)
    listing, index = results
    assert listing.name == "tar listing"
    assert listing.detail.startswith("files.tar: ") and listing.detail.endswith(
        "every header valid, end-of-archive blocks present"
    )
    assert index.name == "tree index" and index.detail.endswith("the 2 files stored here match the archive")


def test_files_tar_cut_between_members_fails_the_listing(files_backup, keyring):
    vault, backup_id = files_backup
    streams = streams_of(vault, keyring, backup_id)
    data = streams["files.tar"]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # the last member complete, its end marker gone
    streams["files.tar"] = data[:end]
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, streams)))
    assert bad.name == "tar listing"
    assert bad.detail.startswith("files.tar: no end-of-archive blocks after member ")
    assert bad.detail.endswith(": the archive is cut short")


def test_files_tar_with_a_damaged_header_fails_the_listing(files_backup, keyring):
    vault, backup_id = files_backup
    streams = streams_of(vault, keyring, backup_id)
    data = bytearray(streams["files.tar"])
    with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
        second = tar.getmembers()[1]
    data[second.offset + 130] ^= 0x01  # a digit of its size field
    streams["files.tar"] = bytes(data)
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, streams)))
    assert bad.detail.startswith("files.tar: not a valid tar after 1 members: bad header checksum"), bad.detail


# -- buckets -------------------------------------------------------------------------------------


@pytest.fixture
def bucket_backup(moto_endpoint, new_bucket, vault, keyring):
    from tests.fixtures_cloud import s3_client

    bucket = new_bucket("us-east-1")
    client = s3_client(moto_endpoint, "us-east-1")
    bodies = {"app/a.txt": b"alpha" * 100, "app/b/c.bin": os.urandom(5000), "app/empty": b"", "app/d": b"d"}
    for key, body in bodies.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    config = BucketSourceConfig(
        name="uploads", provider="s3", bucket=bucket, prefix="app/", endpoint_url=moto_endpoint, region="us-east-1"
    )
    manifest = backup_source(vault, keyring, BucketEngine(config))
    assert manifest.status == COMPLETED
    return vault, manifest.id


def test_bucket_index_tiles_its_data_and_every_object_hash_matches(bucket_backup, keyring):
    vault, backup_id = bucket_backup
    results = check(vault, keyring, backup_id)
    passed(results)
    assert results[0].detail == "index.jsonl: 4 objects, 3 stored in this backup, 0 deletions"
    data = [r for r in results if r.name == "object data"]
    assert sum(int(r.detail.split(": ")[1].split()[0]) for r in data) == 3


def test_bucket_object_changed_before_sealing_fails_its_hash(bucket_backup, keyring):
    vault, backup_id = bucket_backup
    streams = streams_of(vault, keyring, backup_id)
    name = next(n for n, d in streams.items() if n.startswith("data-") and b"alpha" in d)
    streams[name] = streams[name].replace(b"alpha", b"alpho", 1)
    bad = one_failure(check(vault, keyring, forge(vault, keyring, backup_id, streams)))
    assert bad.name == "object data"
    assert bad.detail.startswith(f"{name}: object 'a.txt' (bytes ")
    assert bad.detail.endswith(") does not have the SHA-256 the index records")


# -- what the vault refuses is reported as the vault's, and kinds without tools ------------------


def test_a_chunk_that_fails_authentication_is_reported_as_unreadable_not_as_the_tool(tmp_path, keyring):
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    writer = vault.begin_backup(source="cache", kind="redis", backup_type="full", target="redis x", keyring=keyring)
    writer.write_stream("keys.bin", io.BytesIO(b"GDR-REDIS-KEYS\x00\x01E" + bytes(8)))
    backup_id = writer.commit(BackupResult(checks={})).id
    (chunk,) = (tmp_path / "vault" / "backups" / backup_id / "streams" / "keys.bin").iterdir()
    raw = bytearray(chunk.read_bytes())
    raw[-5] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    bad = one_failure(check(vault, keyring, backup_id))
    assert bad.name == "keys.bin parse"
    assert bad.detail.startswith("keys.bin: cannot be read from the vault: "), bad.detail


def test_a_kind_without_tool_checks_is_not_checked(tmp_path, keyring):
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    writer = vault.begin_backup(source="odd", kind="elsewhere", backup_type="full", target="x", keyring=keyring)
    writer.write_stream("blob", io.BytesIO(b"x"))
    backup_id = writer.commit(BackupResult(checks={})).id
    (result,) = check(vault, keyring, backup_id)
    assert not result.checked and result.detail == "no tool checks for elsewhere backups"
