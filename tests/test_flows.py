"""The backup and restore flows through Prefect's test harness, against real servers.

One stack holds all four kinds of source; the backup flow takes them
concurrently, and each is restored through the restore flow into a fresh target
and compared with the original.
"""

from __future__ import annotations

import pytest

from core.errors import SourceUnavailableError
from core.repository.manifest import COMPLETED, FAILED
from tests.fixtures_mysql import seed_mysql, snapshot_mysql
from tests.fixtures_postgres import seed_postgres, snapshot_postgres
from tests.fixtures_redis import assert_same_redis, seed_redis, snapshot_redis
from tests.servers import free_port


def files_tree(root):
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "app.ini").write_text("[app]\nname = flows\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 100)
    (root / "conf" / "app.ini").chmod(0o640)
    return root


def tree_state(root):
    return {
        p.relative_to(root).as_posix(): (
            p.read_bytes() if p.is_file() else None,
            p.stat().st_mode,
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
    }


def test_backup_all_sources_concurrently_and_restore_each(make_stack, pg_server, mysql_server, redis_factory, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.backup import backup
    from flows.restore import restore

    pg_db = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(pg_db) as conn:
        seed_postgres(conn)
    my_db = mysql_server.create_database("flowsrc")
    with mysql_server.connect(my_db) as conn:
        seed_mysql(conn)
    redis_src, redis_dst = redis_factory(), redis_factory()
    seed_redis(redis_src.client())
    files = files_tree(tmp_path / "app")

    stack = make_stack(
        [
            pg_server.config("app-db", pg_db),
            mysql_server.config("app-mysql", my_db),
            redis_src.config("cache", "rdb"),
            redis_src.config("cache-logical", "logical"),
            __import__("core.sources", fromlist=["FilesSourceConfig"]).FilesSourceConfig(
                name="app-files", root=str(files)
            ),
        ]
    )
    results = backup(stack=stack.name)
    by_source = {r["source"]: r for r in results}
    assert sorted(by_source) == ["app-db", "app-files", "app-mysql", "cache", "cache-logical"]
    assert all(r["status"] == COMPLETED for r in results)
    assert by_source["app-mysql"]["position"]["binlog_file"]
    assert by_source["app-db"]["position"]

    # PostgreSQL into a fresh database on the same server.
    pg_target = pg_server.fresh_database_name()
    out = restore(
        source="app-db", stack=stack.name, backup_id=by_source["app-db"]["id"], target={"database": pg_target}
    )
    assert out["report"]["verified_checks"] > 0
    with pg_server.connect(pg_db) as a, pg_server.connect(pg_target) as b:
        assert snapshot_postgres(b) == snapshot_postgres(a)

    # MariaDB into a fresh database.
    my_target = mysql_server.fresh_database_name("flowdst")
    restore(
        source="app-mysql", stack=stack.name, backup_id=by_source["app-mysql"]["id"], target={"database": my_target}
    )
    with mysql_server.connect(my_db) as a, mysql_server.connect(my_target) as b:
        assert snapshot_mysql(b) == snapshot_mysql(a)

    # Redis (RDB via replication) into another server; then logical into a third.
    expected = snapshot_redis(redis_src.client)
    restore(source="cache", stack=stack.name, backup_id=by_source["cache"]["id"], target={"port": redis_dst.port})
    assert_same_redis(expected, snapshot_redis(redis_dst.client), ttl_slack=30)
    redis_logical_dst = redis_factory()
    restore(source="cache-logical", stack=stack.name, target={"port": redis_logical_dst.port})  # newest backup
    assert_same_redis(expected, snapshot_redis(redis_logical_dst.client), ttl_slack=30)

    # Files into another directory: bytes, modes and mtimes.
    target_dir = tmp_path / "restored"
    restore(
        source="app-files", stack=stack.name, backup_id=by_source["app-files"]["id"], target={"root": str(target_dir)}
    )
    assert tree_state(target_dir) == tree_state(files)

    async def flow_runs():
        async with get_client() as client:
            return [(r.name, r.state_type.value) for r in await client.read_flow_runs()]

    import asyncio

    runs = asyncio.run(flow_runs())
    assert sum(1 for _, state in runs if state == "COMPLETED") >= 6  # one backup run + five restores in run history


def test_one_source_down_others_still_backed_up_and_run_fails(make_stack, redis_factory, tmp_path):
    from core.sources import PostgresSourceConfig
    from flows.backup import backup

    good = redis_factory()
    good.client().set("k", "v")
    stack = make_stack(
        [good.config("cache"), PostgresSourceConfig(name="down-db", host="127.0.0.1", port=free_port(), database="x")]
    )
    with pytest.raises(SourceUnavailableError, match="down-db"):
        backup(stack=stack.name)
    manifests = {m.source: m for m in stack.vault().list_backups()}
    assert manifests["cache"].status == COMPLETED
    assert manifests["down-db"].status == FAILED and "down-db" in manifests["down-db"].error


def test_restore_dry_run_changes_nothing_and_refuses_non_empty_target(make_stack, redis_factory):
    from core.errors import TargetNotEmptyError
    from flows.restore import restore

    src, dst = redis_factory(), redis_factory()
    src.client().set("greeting", "hello")
    dst.client().set("precious", "keep me")
    stack = make_stack([src.config("cache", "logical")])
    from flows.backup import backup

    backup(stack=stack.name)
    out = restore(source="cache", stack=stack.name, target={"port": dst.port}, dry_run=True)
    assert out["dry_run"] and out["plan"]["refusal"] and out["plan"]["target_has_data"]
    with pytest.raises(TargetNotEmptyError, match="--force"):
        restore(source="cache", stack=stack.name, target={"port": dst.port})
    assert dst.client().get("precious") == b"keep me" and dst.client().get("greeting") is None

    out = restore(source="cache", stack=stack.name, target={"port": dst.port}, force=True)
    rollback = out["report"]["rollback_backup_id"]
    assert rollback and dst.client().get("greeting") == b"hello"
    # The rollback point holds what the target had before.
    rb = stack.vault().manifest(rollback)
    assert rb.labels["purpose"] == "rollback"


def test_restore_into_another_server_with_its_own_credentials(make_stack, redis_factory):
    from core.errors import ConfigError
    from flows.backup import backup
    from flows.restore import restore

    src, dr = redis_factory(password="src-Pw-1"), redis_factory(password="dr-Pw-2")
    src.client().mset({"invoice:1": "100.00", "invoice:2": "250.00"})
    stack = make_stack([src.config("cache", "rdb"), dr.config("dr-cache", "rdb")])
    backup(stack=stack.name, sources=["cache"])

    # Secrets never travel as flow parameters.
    with pytest.raises(ConfigError, match="secrets are not accepted"):
        restore(source="cache", stack=stack.name, target={"password": "dr-Pw-2"})

    out = restore(source="cache", stack=stack.name, target_source="dr-cache")
    assert out["report"]["target"].endswith(f":{dr.port}") or str(dr.port) in out["report"]["target"]
    assert dr.client().mget("invoice:1", "invoice:2") == [b"100.00", b"250.00"]
