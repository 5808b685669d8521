"""The backup and restore flows through Prefect's test harness, against real servers.

One stack holds all four kinds of source; the backup flow takes them
concurrently, and each is restored through the restore flow into a fresh target
and compared with the original.
"""

from __future__ import annotations

import re

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

    round_trip_all_sources(make_stack, pg_server, mysql_server, redis_factory, tmp_path)

    async def flow_runs():
        async with get_client() as client:
            return [(r.name, r.state_type.value) for r in await client.read_flow_runs()]

    import asyncio

    runs = asyncio.run(flow_runs())
    assert sum(1 for _, state in runs if state == "COMPLETED") >= 6  # one backup run + five restores in run history


def round_trip_all_sources(make_stack, pg_server, mysql_server, redis_factory, tmp_path, vault: dict | None = None):
    """Back up one stack of every kind through the backup flow, restore each through the restore flow
    into a fresh target and compare with the original (the foundation's round trip; ``vault`` puts the
    stack's vault on S3 or GCS). Returns the stack."""
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
        ],
        vault=vault,
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
    return stack


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


# --- run history as the Prefect API shows it -------------------------------------------------


def run_logs(flow_run_id) -> list[str]:
    """Every log message of a flow run (its tasks' included), as the UI reads them from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs travel to the API in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, sort=LogSort.TIMESTAMP_ASC
        )
    return [log.message for log in logs]


def task_runs(flow_run_id) -> dict[str, int]:
    """Task run name -> how many times it ran (1 = no retry)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.run_count for run in runs}


def backups_of(stack) -> list:
    from core.repository.vault import VaultMissingError

    try:
        return stack.vault().list_backups()
    except VaultMissingError:  # created by the first backup
        return []


def start_redis_on(port: int, directory):
    """A redis-server on a port chosen beforehand (the source's address exists before its server)."""
    import subprocess

    from tests.servers import require_binary

    conf = directory / "redis.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsave ''\nappendonly no\ndir {directory}\nloglevel warning\n")
    return subprocess.Popen([require_binary("redis-server"), str(conf)], stdout=subprocess.DEVNULL)


def test_source_that_comes_up_late_is_backed_up_after_retries(make_stack, tmp_path):
    """Connection refused is transient: the task retries with backoff until the server is up."""
    import threading
    import time

    import redis as redis_py

    from core.sources import RedisSourceConfig
    from flows.backup import backup
    from tests.servers import wait_for_port

    port = free_port()
    stack = make_stack([RedisSourceConfig(name="late", host="127.0.0.1", port=port, mode="logical")])
    servers = []

    def start_after_first_failure() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the first attempt has failed once its FAILED record exists
            try:
                if stack.vault().list_backups():
                    break
            except Exception:  # the vault is created by the first attempt
                pass
            time.sleep(0.1)
        time.sleep(1)
        servers.append(start_redis_on(port, tmp_path))
        wait_for_port(port, servers[0], timeout=20)
        redis_py.Redis(port=port).set("order:1", "paid")

    starter = threading.Thread(target=start_after_first_failure)
    starter.start()
    try:
        state = backup(stack=stack.name, return_state=True)
    finally:
        starter.join()
        for proc in servers:
            proc.terminate()
            proc.wait()
    assert state.is_completed(), state.message
    attempts = task_runs(state.state_details.flow_run_id)["backup-late-full"]
    assert attempts >= 2
    # Every attempt left its record: the failed ones FAILED, the last one committed.
    statuses = sorted(m.status for m in stack.vault().list_backups("late"))
    assert statuses == sorted([FAILED] * (attempts - 1) + [COMPLETED])
    logs = run_logs(state.state_details.flow_run_id)
    assert any("connection refused" in m and "Retry 1/" in m for m in logs)


def test_wrong_password_fails_at_once_without_retry(make_stack, redis_factory):
    from pydantic import SecretStr

    from flows.backup import backup

    server = redis_factory(password="right-Pw-1")
    stack = make_stack([server.config("cache", "logical", password=SecretStr("wrong-Pw-2"))])
    state = backup(stack=stack.name, return_state=True)
    assert state.is_failed()
    with pytest.raises(SourceUnavailableError, match="login refused"):
        state.result()
    assert task_runs(state.state_details.flow_run_id)["backup-cache-full"] == 1  # one attempt, no retry
    assert [m.status for m in stack.vault().list_backups("cache")] == [FAILED]
    logs = run_logs(state.state_details.flow_run_id)
    assert any("login refused" in m and "not retried" in m for m in logs)
    assert not any("Retry" in m for m in logs)


def test_restore_run_logs_each_step_and_expected_errors_in_one_line(make_stack, redis_factory):
    """What the UI shows of a restore: every step with sizes and times; an expected failure as one line."""
    from flows.backup import backup
    from flows.restore import restore

    src, dst = redis_factory(), redis_factory()
    src.client().mset({"invoice:1": "100.00", "invoice:2": "250.00"})
    dst.client().set("precious", "keep me")
    stack = make_stack([src.config("cache", "logical")])
    backup_id = backup(stack=stack.name)[0]["id"]

    # Expected failures: a refused restore (raised by the flow) and a refused parameter (raised by a task).
    for kwargs, expected in (
        ({"target": {"port": dst.port}}, "already holds data"),
        ({"target": {"password": "x"}}, "secrets are not accepted"),
    ):
        state = restore(source="cache", stack=stack.name, backup_id=backup_id, return_state=True, **kwargs)
        assert state.is_failed()
        logs = run_logs(state.state_details.flow_run_id)
        assert not [m for m in logs if "Traceback" in m], logs
        errors = [m for m in logs if expected in m]
        assert errors and all("\n" not in m for m in errors), logs
    assert dst.client().get("precious") == b"keep me"

    state = restore(
        source="cache", stack=stack.name, backup_id=backup_id, target={"port": dst.port}, force=True, return_state=True
    )
    assert state.is_completed(), state.message
    rollback = state.result()["report"]["rollback_backup_id"]
    logs = "\n".join(run_logs(state.state_details.flow_run_id))
    assert "cache: plan: Restore plan for cache" in logs  # every line names the source (and the backup)
    assert re.search(rf"^cache: restored {backup_id} into .* in [\d.]+s", logs, re.M), logs
    assert f"cache: {backup_id}: rollback point: " in logs
    assert f"opened backup {backup_id} of cache" in logs
    assert re.search(r"target .*: holds data", logs), logs
    assert "read and authenticated every object" in logs
    assert f"rollback point: backup {rollback}" in logs
    assert re.search(r"stream \S+ loaded: [\d.]+ (B|KiB|MiB) in [\d.]+s, SHA-256 matched", logs), logs
    assert re.search(r"verified \d+ checks recorded at backup time against .* in [\d.]+s", logs), logs
    assert re.search(rf"restore of {backup_id} into .* done in [\d.]+s", logs), logs
    assert dst.client().get("invoice:1") == b"100.00"


def test_backups_of_one_source_wait_for_each_other(make_stack, redis_factory):
    """A global concurrency limit per source holds every run, the CLI's in-process ones included."""
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from flows.backup import backup
    from tasks.limits import backup_limit, ensure_limit

    server = redis_factory()
    server.client().set("k", "v")
    stack = make_stack([server.config("cache", "logical")])
    name = backup_limit(stack.name, "cache")
    ensure_limit(name)
    outcome: dict = {}
    second = threading.Thread(target=lambda: outcome.update(state=backup(stack=stack.name, return_state=True)))
    with concurrency(name, occupy=1, strict=True):  # the first run of this source, still going
        second.start()
        time.sleep(10)
        assert second.is_alive() and backups_of(stack) == []
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
        assert (limit.limit, limit.active_slots) == (1, 1)
    second.join(timeout=120)
    assert outcome["state"].is_completed(), outcome["state"].message
    assert [m.status for m in backups_of(stack)] == [COMPLETED]


def test_a_run_resolves_its_stack_once_and_the_next_run_again(make_stack, tmp_path):
    """Every task of one run shares one resolution of the stack (one keyring too); the next run reads the blocks
    again, so an 'apply' between runs takes effect."""
    from prefect import flow, task

    from core.sources import FilesSourceConfig
    from tasks.run_stack import run_stack

    stack = make_stack([FilesSourceConfig(name="app", root=str(files_tree(tmp_path / "app")))])

    @task
    def resolved(name: str) -> tuple[int, int, tuple[str, ...]]:
        opened = run_stack(name)
        return id(opened), id(opened.keyring), tuple(s.name for s in opened.config.sources)

    @flow
    def twice(name: str) -> list:
        return [resolved.submit(name).result() for _ in range(3)]

    first = twice(stack.name)
    assert len(set(first)) == 1 and first[0][2] == ("app",)
    second = twice(stack.name)
    assert len(set(second)) == 1 and second[0][:2] != first[0][:2]


def test_sources_of_one_run_take_their_slots_without_waiting(make_stack, tmp_path):
    """Four sources ask for their concurrency slots at the same moment. On the harness's SQLite server such
    requests meet and get 503 ("database is locked"), after which Prefect's own client waits about 2 s; ours ask
    again at once, so no source waits for a slot nobody holds."""
    from core.sources import FilesSourceConfig
    from flows.backup import backup

    stack = make_stack(
        [FilesSourceConfig(name=f"app{i}", root=str(files_tree(tmp_path / f"app{i}"))) for i in range(4)],
        # Room for all four in the stack-wide limit: only the slot requests themselves are measured here.
        operations={"max_concurrent_backups": 4},
    )
    for _ in range(2):  # the first run creates the four limits, the second finds them
        state = backup(stack=stack.name, return_state=True)
        assert state.is_completed(), state.message
        waits = [
            float(m.group(1))
            for line in run_logs(state.state_details.flow_run_id)
            if (m := re.search(r"holding concurrency limit genesis-dr-backup-\S+ \(waited ([\d.]+)s\)", line))
        ]
        assert len(waits) == 4 and max(waits) < 1.5, waits
    assert sorted(m.status for m in backups_of(stack)) == [COMPLETED] * 8
