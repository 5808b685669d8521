"""A restore never leaves a target or a vault worse off, against real servers and a real vault.

The vault is only read (a read-only mount restores); the target is what is
locked; nothing is destroyed before the backup is proven readable; a restore that
fails after changing a target puts the rollback point back by itself and says
so; a killed restore leaves a mark that the next restore and `list` report; an
interrupted backup commits nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import targets
from core.audit import AuditTrail, PendingQueue
from core.crypto.keys import Keyring
from core.engines import engine_for
from core.errors import IntegrityError, LockedError
from core.operations import backup_source, restore_backup
from core.repository.manifest import FAILED
from core.repository.vault import Vault
from core.sources import FilesSourceConfig
from core.storage.local import LocalStore
from tests.fixtures_mysql import seed_mysql, snapshot_mysql
from tests.fixtures_redis import snapshot_redis
from tests.test_cli import REPO, one_line_error, write_stack


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(passphrase="restore-safety")


def files_source(root: Path, name: str = "app-files") -> FilesSourceConfig:
    return FilesSourceConfig(name=name, root=str(root))


def snap(server, database: str) -> dict:
    with server.connect(database) as conn:
        return snapshot_mysql(conn)


def make_tree(root: Path, files: int = 3) -> Path:
    (root / "conf").mkdir(parents=True)
    for i in range(files):
        (root / "conf" / f"f{i}.txt").write_text(f"content {i}\n" * 50)
    return root


def flip_byte(vault_root: Path, backup_id: str) -> None:
    chunk = sorted((vault_root / "backups" / backup_id / "streams").rglob("0000000*"))[0]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    chunk.write_bytes(bytes(raw))


@pytest.fixture
def read_only_mount(tmp_path: Path):
    """A read-only bind mount of a directory: the vault a read-only replica or a full disk gives."""
    mounts: list[Path] = []

    def mount(source: Path) -> Path:
        target = tmp_path / f"ro-{len(mounts)}"
        target.mkdir()
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
        mounts.append(target)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        return target

    yield mount
    for m in reversed(mounts):
        subprocess.run(["umount", str(m)], check=False)


def test_restore_only_reads_the_vault(tmp_path, vault, keyring, read_only_mount):
    src = make_tree(tmp_path / "src")
    backup_id = backup_source(vault, keyring, engine_for(files_source(src))).id
    ro = Vault.open(LocalStore(read_only_mount(tmp_path / "vault")))
    with pytest.raises(OSError):
        (Path(ro.store.root) / "probe").write_text("x")  # the mount really is read-only

    out = tmp_path / "restored"
    report = restore_backup(ro, keyring, backup_id, engine_for(files_source(out)))
    assert report.verified_checks > 0
    assert (out / "conf" / "f1.txt").read_text() == (src / "conf" / "f1.txt").read_text()


def test_restores_lock_the_target_not_the_source(tmp_path, vault, keyring):
    src = make_tree(tmp_path / "src")
    backup_id = backup_source(vault, keyring, engine_for(files_source(src))).id
    busy = engine_for(files_source(tmp_path / "busy"))
    other = engine_for(files_source(tmp_path / "other", name="other-files"))

    with targets.guard(busy.target_key(), "another restore into the same directory"):
        # Another restore into the same target (even of another source) waits its turn...
        with pytest.raises(LockedError, match="another restore into the same directory"):
            restore_backup(vault, keyring, backup_id, busy)
        # ...while the same backup restores into another target at once.
        restore_backup(vault, keyring, backup_id, engine_for(files_source(tmp_path / "free")))
        restore_backup(vault, keyring, backup_id, other)
    assert not (tmp_path / "busy").exists() or not any((tmp_path / "busy").iterdir())
    restore_backup(vault, keyring, backup_id, busy)
    assert (tmp_path / "busy" / "conf" / "f0.txt").exists()


def test_forced_restore_of_a_corrupt_backup_leaves_the_target_untouched(tmp_path, vault, keyring, mysql_server):
    src_db = mysql_server.create_database("corruptsrc")
    with mysql_server.connect(src_db) as conn:
        seed_mysql(conn)
    backup_id = backup_source(vault, keyring, engine_for(mysql_server.config("app-mysql", src_db))).id
    flip_byte(tmp_path / "vault", backup_id)

    live_db = mysql_server.create_database("live")
    with mysql_server.connect(live_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, total INT)")
        cur.execute("INSERT INTO orders VALUES (1, 10), (2, 20)")
    before = snap(mysql_server, live_db)
    target = engine_for(mysql_server.config("app-mysql", live_db))

    with pytest.raises(IntegrityError, match=backup_id):
        restore_backup(vault, keyring, backup_id, target, force=True)
    assert snap(mysql_server, live_db) == before
    # Refused before any destructive step: no rollback backup was needed, none was taken.
    assert [m.id for m in vault.list_backups("app-mysql")] == [backup_id]


def test_failed_in_place_restore_puts_the_rollback_point_back(tmp_path, vault, keyring, redis_factory):
    big = redis_factory()
    client = big.client()
    payload = os.urandom(64 << 10)
    for i in range(200):  # ~13 MB
        client.set(f"blob:{i}".encode(), payload)
    backup_id = backup_source(vault, keyring, engine_for(big.config("cache", "logical"))).id

    small = redis_factory()
    c = small.client()
    c.set(b"live:key", b"live value")
    c.hset(b"live:hash", mapping={b"a": b"1", b"b": b"2"})
    before = snapshot_redis(lambda db: small.client(db))
    used = int(c.info("memory")["used_memory"])
    c.config_set("maxmemory", str(used + (4 << 20)))  # room for its own data, not for the backup's 13 MB
    c.config_set("maxmemory-policy", "noeviction")

    target = engine_for(small.config("cache", "logical"))
    with pytest.raises(Exception) as failure:
        restore_backup(vault, keyring, backup_id, target, force=True)
    rollbacks = [m for m in vault.list_backups("cache") if m.labels.get("purpose") == "rollback"]
    assert len(rollbacks) == 1
    message = str(failure.value)
    assert f"put back to rollback backup {rollbacks[0].id}" in message, message
    assert snapshot_redis(lambda db: small.client(db)) == before
    assert targets.unfinished_restores() == [] or all(
        m.target != target.target_key() for m in targets.unfinished_restores()
    )


@pytest.fixture
def cli_env(prefect_api):
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return env | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "BACKUP_ENCRYPTION_PASSWORD": "cli-test-passphrase-Zq9",
        "PYTHONPATH": str(REPO),
    }


def run_cli(env: dict, cwd: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == expect, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    return proc


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_backup_commits_nothing_and_says_so(tmp_path, cli_env, signum):
    files = tmp_path / "big"
    files.mkdir()
    for i in range(6):
        (files / f"blob{i}.bin").write_bytes(os.urandom(48 << 20))
    name = f"sig{signum}"
    stack = write_stack(tmp_path, name, files)
    run_cli(cli_env, tmp_path, "apply", str(stack))
    env = cli_env | {"GENESIS_DR_CHUNK_SIZE": str(1 << 20)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "backup", "full", "--stack", name],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    backups = tmp_path / f"vault-{name}" / "backups"
    wait_for(lambda: any(backups.glob("*/streams/*/00000002")), "the backup's first chunks")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert "COMPLETED" not in out

    listed = json.loads(run_cli(cli_env, tmp_path, "list", "--stack", name, "--json").stdout)
    assert [b["status"] for b in listed] == [FAILED]
    assert "interrupted" in listed[0]["error"]
    assert not list((backups / listed[0]["id"]).glob("streams/*/*")), "an interrupted backup keeps no chunks"


def test_killed_restore_is_marked_reported_and_replaced(tmp_path, cli_env, mysql_server):
    src_db = mysql_server.create_database("killsrc")
    with mysql_server.connect(src_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE bulk (id INT PRIMARY KEY, pad LONGBLOB)")
        for i in range(40):
            cur.execute("INSERT INTO bulk VALUES (%s, %s)", (i, os.urandom(1 << 20)))
    dst_db = mysql_server.fresh_database_name("killdst")
    cfg = mysql_server.config("app-mysql", src_db)
    stack = tmp_path / "kill.yaml"
    stack.write_text(
        f"""
stack: kill
vault: {{path: ./vault-kill}}
encryption: {{passphrase_from: "env:BACKUP_ENCRYPTION_PASSWORD"}}
sources:
  - name: app-mysql
    kind: mysql
    host: 127.0.0.1
    port: {cfg.port}
    user: {cfg.user}
    password: "${{MYSQL_TEST_PASSWORD}}"
    database: {src_db}
"""
    )
    env = cli_env | {"MYSQL_TEST_PASSWORD": mysql_server.password}
    run_cli(env, tmp_path, "apply", str(stack))
    run_cli(env, tmp_path, "backup", "full", "--stack", "kill")
    backup_id = json.loads(run_cli(env, tmp_path, "list", "--stack", "kill", "--json").stdout)[0]["id"]

    marks = Path(os.environ["GENESIS_DR_STATE_DIR"]) / "marks"
    before = set(marks.glob("*.json")) if marks.exists() else set()
    restore = [sys.executable, "-m", "cli.main", "restore", "--stack", "kill", "--source", "app-mysql"]
    proc = subprocess.Popen(
        [*restore, "--backup-id", backup_id, "--target", f"database={dst_db}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def loading() -> bool:
        # Halfway means: marked, the target dropped and recreated, its rows still loading. A
        # fixed sleep raced a fast restore (it finished, cleared its mark, and nothing was left
        # to report), so the kill waits for the target's table and the restore must still run.
        assert proc.poll() is None, "the restore ended before it could be killed halfway"
        if not (marks.exists() and set(marks.glob("*.json")) - before):
            return False
        with mysql_server.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'bulk'",
                (dst_db,),
            )
            return cur.fetchone()[0] > 0

    wait_for(loading, "the restore to start loading the target")
    proc.kill()  # kill -9 halfway: no cleanup runs
    proc.wait()

    listed = [line for line in run_cli(env, tmp_path, "list", "--stack", "kill").stderr.splitlines() if dst_db in line]
    assert len(listed) == 1 and "never finished verification" in listed[0] and backup_id in listed[0], listed

    again = run_cli(
        env,
        tmp_path,
        "restore",
        "--stack",
        "kill",
        "--source",
        "app-mysql",
        "--backup-id",
        backup_id,
        "--target",
        f"database={dst_db}",
        "--force",
    ).stdout
    assert "found and replaced an interrupted restore" in again, again
    assert snap(mysql_server, dst_db) == snap(mysql_server, src_db)
    assert dst_db not in run_cli(env, tmp_path, "list", "--stack", "kill").stderr


def test_forced_restore_over_a_read_only_vault_refuses_before_changing_anything(tmp_path, cli_env, read_only_mount):
    files = make_tree(tmp_path / "app")
    stack = write_stack(tmp_path, "rw", files)
    run_cli(cli_env, tmp_path, "apply", str(stack))
    run_cli(cli_env, tmp_path, "backup", "full", "--stack", "rw")
    ro = read_only_mount(tmp_path / "vault-rw")
    ro_stack = tmp_path / "ro.yaml"
    ro_stack.write_text(stack.read_text().replace("stack: rw", "stack: ro").replace("./vault-rw", str(ro)))
    run_cli(cli_env, tmp_path, "apply", str(ro_stack))
    backup_id = json.loads(run_cli(cli_env, tmp_path, "list", "--stack", "ro", "--json").stdout)[0]["id"]

    restore = ("restore", "--stack", "ro", "--source", "app-files", "--backup-id", backup_id)
    fresh = tmp_path / "fresh"
    done = run_cli(cli_env, tmp_path, *restore, "--target", f"root={fresh}")
    assert "verified" in done.stdout and (fresh / "conf" / "f0.txt").exists()
    # The restore stands; its audit entry could not be written into the read-only vault: queued on this host.
    queue = PendingQueue(LocalStore(ro))
    assert queue.count() == 1
    assert "queued on this host" in done.stdout + done.stderr
    assert "1 entries pending on this host" in done.stdout + done.stderr

    busy = make_tree(tmp_path / "busy", files=1)
    (busy / "conf" / "mine.txt").write_text("keep me")
    proc = run_cli(cli_env, tmp_path, *restore, "--target", f"root={busy}", "--force", expect=3)
    assert "rollback" in one_line_error(proc)
    assert (busy / "conf" / "mine.txt").read_text() == "keep me"
    assert queue.count() == 2

    # The vault becomes writable again: the next audited run appends both, marked late, before its own entry.
    subprocess.run(["mount", "-o", "remount,rw,bind", str(ro)], check=True)
    run_cli(cli_env, tmp_path, "backup", "full", "--stack", "ro")
    entries = AuditTrail(LocalStore(tmp_path / "vault-rw")).entries()
    assert [(e["action"], e["outcome"], e.get("late", False)) for e in entries] == [
        ("backup", "success", False),
        ("restore", "success", True),
        ("restore", "failure", True),
        ("backup", "success", False),
    ]
    assert entries[1]["details"]["restored"]["app-files"]["backup_id"] == backup_id
    assert "Read-only file system" in entries[1]["queued_because"]
    assert entries[1]["at"] == entries[1]["queued_at"] < entries[2]["at"] < entries[3]["at"]
    assert queue.count() == 0


def test_flows_list_every_skip_and_mirror_a_forced_restore(make_stack, tmp_path):
    """Through the flows: a skip the stack allows is in the backup's record, the run's artifact and
    the restore report; a forced restore leaves the tree equal to the backup (a mirror)."""
    import socket as socketlib

    from prefect.client.orchestration import get_client

    from core.operations import render_report
    from flows.backup import backup
    from flows.restore import restore

    app = make_tree(tmp_path / "app")
    sock = socketlib.socket(socketlib.AF_UNIX)
    sock.bind(str(app / "conf" / "live.sock"))
    try:
        strict = make_stack([files_source(app)])
        with pytest.raises(Exception, match="live.sock"):
            backup(stack=strict.name)  # nothing is left out silently
        lenient = make_stack([files_source(app).model_copy(update={"skip_unarchivable": True})])
        [result] = backup(stack=lenient.name)
    finally:
        sock.close()
    assert result["status"] == "COMPLETED"
    assert len(result["skipped"]) == 1 and "live.sock" in result["skipped"][0]

    async def artifact(key: str) -> str:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        return max(found, key=lambda a: a.created).data

    import asyncio

    assert "live.sock" in asyncio.run(artifact("backup-summary"))

    target = tmp_path / "target"
    (target / "conf").mkdir(parents=True)
    (target / "conf" / "f0.txt").write_text("stale")
    (target / "conf" / "extra.txt").write_text("not in the backup")
    (target / "old").mkdir()
    out = restore(source="app-files", stack=lenient.name, target={"root": str(target)}, force=True)
    report = out["report"]
    assert report["rollback_backup_id"]
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "conf",
        "conf/f0.txt",
        "conf/f1.txt",
        "conf/f2.txt",
    ]
    assert (target / "conf" / "f0.txt").read_text() == (app / "conf" / "f0.txt").read_text()
    text = render_report(report)
    assert "NOT IN THE BACKUP" in text and "live.sock" in text
    assert "live.sock" in asyncio.run(artifact("restore-report"))


def test_forced_staged_restore_of_a_corrupt_backup_changes_nothing_and_leaves_no_mark(tmp_path, vault, keyring):
    src = make_tree(tmp_path / "src", files=40)
    backup_id = backup_source(vault, keyring, engine_for(files_source(src))).id
    flip_byte(tmp_path / "vault", backup_id)
    live = make_tree(tmp_path / "live", files=1)
    (live / "conf" / "mine.txt").write_text("keep me")
    before = sorted(p.relative_to(live).as_posix() for p in live.rglob("*"))
    target = engine_for(files_source(live))

    with pytest.raises(IntegrityError, match="the target was not changed"):
        restore_backup(vault, keyring, backup_id, target, force=True)
    assert sorted(p.relative_to(live).as_posix() for p in live.rglob("*")) == before
    assert (live / "conf" / "mine.txt").read_text() == "keep me"
    assert not [p for p in live.parent.iterdir() if ".gdr-restore-" in p.name], "the staged copy is removed"
    assert all(m.target != target.target_key() for m in targets.unfinished_restores())
