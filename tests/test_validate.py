"""Validation at the quick and integrity levels against real vaults (core.validation.runner).

Files backups (the cheapest real source) carry most vault-level faults: a deleted chunk, a
flipped byte, a manifest whose recorded digest was edited, no private key, the RPO, the
reverification interval. A real PostgreSQL server with WAL capture gives the log ranges: a
missing log piece, and log pieces shared by two backups read once by ``--all``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.crypto.keys import Keyring, generate_x25519_keypair
from core.engines import engine_for
from core.errors import BackupNotFoundError, SourceUnavailableError
from core.history import History
from core.operations import backup_source
from core.sources import FilesSourceConfig
from core.stack import StackConfig
from core.storage.config import VaultConfig
from core.validation.integrity import IntegrityRun, SharedReader
from core.validation.results import ValidationRecord
from core.validation.runner import select_backups, validate
from tests.fixtures_postgres import PostgresServer

PASSPHRASE = "validate-test-passphrase"


def stack_config(vault_path: Path, sources: list, **extra) -> StackConfig:
    return StackConfig(vault=VaultConfig(type="local", path=str(vault_path)), sources=sources, **extra)


def data_objects(vault_path: Path) -> list[Path]:
    """Every chunk object in a local vault: backups' streams and log pieces."""
    return [
        p
        for p in vault_path.rglob("*")
        if p.is_file() and ("streams" in p.parts or (vault_path / "logdata") in p.parents)
    ]


def n_chunks(manifest) -> int:
    return sum(len(s.chunks) for s in manifest.streams)


def big_stream(manifest) -> str:
    return max(manifest.streams, key=lambda s: len(s.chunks)).name


def checks(record: ValidationRecord, name: str, backup_id: str | None = None) -> list:
    return [r for r in record.results if r.name == name and (backup_id is None or r.backup_id == backup_id)]


def only(record: ValidationRecord, name: str, backup_id: str | None = None):
    found = checks(record, name, backup_id)
    assert len(found) == 1, [r.line() for r in record.results]
    return found[0]


# -- files sources --------------------------------------------------------------------------


@pytest.fixture
def files_stack(tmp_path, monkeypatch):
    """A files source of random (incompressible) data in 4 KiB chunks, one full backup taken."""
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "4096")
    root = tmp_path / "tree"
    for i in range(3):
        (root / f"dir{i}").mkdir(parents=True)
        (root / f"dir{i}" / "data.bin").write_bytes(os.urandom(7000))
    source = FilesSourceConfig(name="app-files", root=str(root))
    config = stack_config(tmp_path / "vault", [source])
    keyring = Keyring(passphrase=PASSPHRASE)
    vault = config.vault_named(None).open(create=True)
    full = backup_source(vault, keyring, engine_for(source), "full")
    return SimpleNamespace(
        config=config, vault=vault, keyring=keyring, root=root, source=source, full=full, path=tmp_path / "vault"
    )


def backup(stack, backup_type: str = "full"):
    return backup_source(stack.vault, stack.keyring, engine_for(stack.source), backup_type)


def chunk_path(stack, manifest, index: int = 1) -> Path:
    stream = max(manifest.streams, key=lambda s: len(s.chunks))
    return stack.path / "backups" / manifest.id / "streams" / stream.name / f"{index:08d}"


def test_good_backups_pass_quick_and_integrity(files_stack):
    (files_stack.root / "dir0" / "new.bin").write_bytes(os.urandom(5000))
    incremental = backup(files_stack, "incremental")

    quick = validate(files_stack.config, latest=True, level="quick", keyring=files_stack.keyring)
    assert quick.passed, [r.line() for r in quick.failures()]
    assert quick.backups == [incremental.id]
    assert quick.objects_read == 0  # quick reads no chunk
    assert only(quick, "chain", incremental.id).detail.startswith("on parent " + files_stack.full.id)
    assert {r.name for r in quick.results} == {"manifest", "status", "objects present", "chain", "freshness"}

    lines: list[str] = []
    record = validate(files_stack.config, all=True, keyring=files_stack.keyring, progress=lines.append)
    assert record.passed, [r.line() for r in record.failures()]
    assert record.backups == [files_stack.full.id, incremental.id]
    assert record.decryption_checked
    for manifest in (files_stack.full, incremental):
        read_back = only(record, "read back", manifest.id)
        assert read_back.passed and f"{n_chunks(manifest)} chunks read back" in read_back.detail
        assert only(record, "objects present", manifest.id).passed
    assert record.objects_read == len(data_objects(files_stack.path))
    assert record.bytes_read == files_stack.full.stored_bytes + incremental.stored_bytes
    assert lines[-1] == record.summary_line()
    # Kept in the vault: the record, and each backup marked verified.
    history = History(files_stack.vault.store)
    assert ValidationRecord.from_dict(history.get("validations", record.id)).to_dict() == record.to_dict()
    verified = history.verified(incremental.id)
    assert verified["decrypted"] is True and verified["objects"] == n_chunks(incremental)


def test_deleted_chunk_fails_quick_and_integrity(files_stack):
    gone = chunk_path(files_stack, files_stack.full, 1)
    gone.unlink()
    key = f"backups/{files_stack.full.id}/streams/{big_stream(files_stack.full)}/00000001"

    quick = validate(files_stack.config, level="quick", keyring=files_stack.keyring)
    present = only(quick, "objects present")
    assert present.failed and present.critical and not quick.passed
    assert present.detail == f"1 of {n_chunks(files_stack.full)} chunks missing: {key}"
    assert "restore the backup's objects from a replica" in present.line()

    record = validate(files_stack.config, keyring=files_stack.keyring)
    read_back = only(record, "read back")
    assert read_back.failed and read_back.critical
    assert f"object {key} is missing" in read_back.detail
    assert "\n" not in read_back.line()
    assert History(files_stack.vault.store).verified(files_stack.full.id) is None  # never marked verified


def test_flipped_byte_fails_integrity_with_and_without_key(files_stack):
    target = chunk_path(files_stack, files_stack.full, 2)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    key = f"backups/{files_stack.full.id}/streams/{big_stream(files_stack.full)}/00000002"

    quick = validate(files_stack.config, level="quick", keyring=files_stack.keyring)
    assert quick.passed  # same size: only reading it back shows the damage

    record = validate(files_stack.config, keyring=files_stack.keyring)
    read_back = only(record, "read back")
    assert read_back.failed and read_back.critical and not record.passed
    assert f"object {key} does not match its SHA-256 in the manifest" in read_back.detail

    _private, public = generate_x25519_keypair()
    keyless = validate(files_stack.config, keyring=Keyring(public_keys=[public]))
    digests = only(keyless, "object digests")
    assert digests.failed and digests.critical
    assert digests.detail == f"1 objects do not match their SHA-256 in the manifest: {key}"


def test_manifest_digest_edited_fails_its_mac_and_the_object_digest(files_stack):
    path = files_stack.path / "backups" / files_stack.full.id / "manifest.json"
    doc = json.loads(path.read_bytes())
    doc["streams"][0]["chunks"][0]["sha256"] = "0" * 64
    path.write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())

    record = validate(files_stack.config, keyring=files_stack.keyring)
    mac = only(record, "manifest authentication")
    assert mac.failed and mac.critical
    assert mac.detail == f"backup {files_stack.full.id}: manifest fails its MAC check (edited or corrupt)"
    # Without the manifest's trust the objects are still checked against it: the edited digest shows.
    digests = only(record, "object digests")
    assert digests.failed and "00000000" in digests.detail
    assert not record.passed


def test_no_private_key_checks_digests_and_says_decryption_was_not_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "4096")
    private, public = generate_x25519_keypair()
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(9000))
    source = FilesSourceConfig(name="app-files", root=str(root))
    config = stack_config(tmp_path / "vault", [source])
    vault = config.vault_named(None).open(create=True)
    # A backup host: only the public key; the validation host has no private key either.
    full = backup_source(vault, Keyring(public_keys=[public]), engine_for(source), "full")

    record = validate(config, keyring=Keyring(public_keys=[public]))
    assert record.passed, [r.line() for r in record.failures()]
    assert record.decryption_checked is False
    decryption = only(record, "decryption")
    assert decryption.status == "not checked"
    assert decryption.detail == "no private key: chunks were not decrypted or authenticated"
    digests = only(record, "object digests")
    assert digests.passed and digests.detail.startswith(f"{n_chunks(full)} objects match")
    assert record.objects_read == n_chunks(full)
    assert "**Decryption was not checked**" in record.render_markdown()
    assert History(vault.store).verified(full.id) is None  # a read-back without decryption is not a verification

    with_key = validate(config, keyring=Keyring(private_keys=[private]))
    assert with_key.decryption_checked and only(with_key, "read back").passed


def test_newest_backup_older_than_its_rpo_fails_freshness(files_stack):
    later = datetime.now(UTC) + timedelta(seconds=400)
    record = validate(files_stack.config, level="quick", now=later, keyring=files_stack.keyring)
    fresh = only(record, "freshness")
    assert fresh.failed and fresh.critical and not record.passed
    assert fresh.source == "app-files"
    assert f"(backup {files_stack.full.id})" in fresh.detail
    assert fresh.detail.endswith("older than its RPO of 300 s")
    assert "genesis-dr backup full --source app-files" in fresh.remedy

    relaxed = stack_config(
        files_stack.path, [files_stack.source], objectives={"sources": {"app-files": {"rpo_seconds": 3600}}}
    )
    ok = validate(relaxed, level="quick", now=later, keyring=files_stack.keyring)
    assert only(ok, "freshness").passed and only(ok, "freshness").detail.endswith("within its RPO of 3600 s")


def test_source_without_backup_fails_freshness(files_stack, tmp_path):
    other = FilesSourceConfig(name="more-files", root=str(tmp_path))
    config = stack_config(files_stack.path, [files_stack.source, other])
    record = validate(config, level="quick", keyring=files_stack.keyring)
    missing = next(r for r in checks(record, "freshness") if r.source == "more-files")
    assert missing.failed and missing.detail == "no completed backup of 'more-files' in the vault"


def test_reverify_interval_skips_rereading_and_says_when(files_stack):
    first = validate(files_stack.config, keyring=files_stack.keyring)
    assert first.passed and first.objects_read == n_chunks(files_stack.full)
    verified_at = History(files_stack.vault.store).verified(files_stack.full.id)["verified_at"]

    again = validate(files_stack.config, keyring=files_stack.keyring, now=datetime.now(UTC) + timedelta(seconds=1))
    assert again.passed and again.objects_read == 0
    assert again.reused == {files_stack.full.id: verified_at}
    reused = only(again, "read back")
    assert reused.detail == (
        f"not re-read: every object was read back and authenticated at {verified_at} "
        "(within validation.reverify_after_hours = 168)"
    )
    assert only(again, "objects present").passed  # quick checks still run
    assert f"{files_stack.full.id} (at {verified_at})" in again.render_markdown()

    # Quick checks still catch a deleted object of a backup verified recently.
    chunk_path(files_stack, files_stack.full, 0).unlink()
    damaged = validate(files_stack.config, keyring=files_stack.keyring, now=datetime.now(UTC) + timedelta(seconds=2))
    assert only(damaged, "objects present").failed and not damaged.passed

    # After the interval everything is read again.
    later = datetime.now(UTC) + timedelta(hours=169)
    stale = validate(files_stack.config, keyring=files_stack.keyring, now=later)
    assert stale.reused == {} and only(stale, "read back").failed


def test_selection_and_unknown_backup_id(files_stack):
    second = backup(files_stack)
    assert [m.id for m in select_backups(files_stack.vault, None)] == [second.id]
    assert [m.id for m in select_backups(files_stack.vault, None, all=True)] == [files_stack.full.id, second.id]
    assert [m.id for m in select_backups(files_stack.vault, files_stack.full.id)] == [files_stack.full.id]
    assert select_backups(files_stack.vault, None, latest=True, sources=["other"]) == []
    unknown = "backup_20200101_000000_deadbeef"
    with pytest.raises(BackupNotFoundError, match=f"backup {unknown} not found.*'genesis-dr list'"):
        validate(files_stack.config, backup_id=unknown, keyring=files_stack.keyring)

    one = validate(files_stack.config, backup_id=files_stack.full.id, keyring=files_stack.keyring)
    assert one.backups == [files_stack.full.id] and one.passed
    assert checks(one, "freshness") == []  # a named backup says nothing of the source's freshness


def test_failed_backup_is_reported_not_critical(files_stack):
    broken = files_stack.source.model_copy(update={"root": str(files_stack.root / "nonexistent")})
    with pytest.raises(SourceUnavailableError):
        backup_source(files_stack.vault, files_stack.keyring, engine_for(broken), "full")
    failed = [m for m in files_stack.vault.list_backups("app-files") if m.status == "FAILED"][0]

    record = validate(files_stack.config, level="quick", keyring=files_stack.keyring)
    status = only(record, "status", failed.id)
    assert status.failed and not status.critical and status.detail.startswith("FAILED: ")
    assert record.passed  # the completed backup is still the recovery point


def test_unreadable_manifest_is_a_failed_check(files_stack):
    second = backup(files_stack)
    (files_stack.path / "backups" / second.id / "manifest.json").write_bytes(b"{not json")

    record = validate(files_stack.config, all=True, level="quick", keyring=files_stack.keyring)
    broken = only(record, "manifest", second.id)
    assert broken.failed and broken.critical and not record.passed
    assert broken.detail == f"backup {second.id}: manifest is not valid JSON (corrupt)"
    assert record.backups == [files_stack.full.id]  # the readable one is still validated

    named = validate(files_stack.config, backup_id=second.id, keyring=files_stack.keyring)
    assert named.backups == [second.id] and only(named, "manifest").failed


def test_a_tool_that_stops_early_still_has_every_chunk_read_once(files_stack):
    """What pg_restore --list does (it reads a dump's table of contents only): the rest is drained."""
    run = IntegrityRun(files_stack.vault, files_stack.keyring, now=datetime.now(UTC))
    reader = run.vault.open_backup(files_stack.full.id, files_stack.keyring)
    shared = SharedReader(reader)
    stream = big_stream(files_stack.full)
    pieces = shared.iter_stream(stream)
    next(pieces)
    pieces.close()  # the tool stopped after its first chunk
    shared.drain()
    reader.close()
    assert shared.done == set(reader.stream_names()) and shared.errors == {}
    assert run.store.objects == n_chunks(files_stack.full)


# -- PostgreSQL: log ranges ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_chain(pg_pitr_server: PostgresServer, tmp_path_factory):
    """A physical full and two differentials on it (their WAL ranges overlap: both start at the full)."""
    spool = os.environ.get("GENESIS_DR_SPOOL_DIR")
    os.environ["GENESIS_DR_SPOOL_DIR"] = str(tmp_path_factory.mktemp("spool"))
    server = pg_pitr_server
    database = server.create_database(server.fresh_database_name())
    with server.connect(database) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 100) g")
    slot = f"gdr_validate_{secrets.token_hex(4)}"
    source = server.config("app-db", database, backup_method="physical", rpo_seconds=1, slot=slot)
    path = tmp_path_factory.mktemp("pg-vault") / "vault"
    config = stack_config(path, [source])
    keyring = Keyring(passphrase=PASSPHRASE)
    vault = config.vault_named(None).open(create=True)
    engine = engine_for(source)
    full = backup_source(vault, keyring, engine, "full")
    diffs = []
    for batch in (1, 2):
        with server.connect(database) as conn:
            conn.execute(
                f"INSERT INTO items SELECT g, 'batch {batch}' FROM generate_series({batch * 1000}, {batch * 1000 + 50}) g"
            )
        diffs.append(backup_source(vault, keyring, engine, "differential"))
    try:
        yield SimpleNamespace(config=config, keyring=keyring, path=path, full=full, diffs=diffs)
    finally:
        with server.connect() as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
        if spool is None:
            os.environ.pop("GENESIS_DR_SPOOL_DIR", None)
        else:
            os.environ["GENESIS_DR_SPOOL_DIR"] = spool


@pytest.fixture
def pg_copy(pg_chain, tmp_path):
    """The chain's vault copied, so a test may damage it."""
    path = tmp_path / "vault"
    shutil.copytree(pg_chain.path, path)
    return SimpleNamespace(
        config=stack_config(path, pg_chain.config.sources),
        keyring=pg_chain.keyring,
        path=path,
        full=pg_chain.full,
        diffs=pg_chain.diffs,
    )


def test_all_reads_each_object_once(pg_copy):
    first, second = pg_copy.diffs
    assert first.log["pieces"][0] == second.log["pieces"][0]  # the two ranges share their first pieces
    record = validate(pg_copy.config, all=True, keyring=pg_copy.keyring)
    assert record.passed, [r.line() for r in record.failures()]
    assert record.backups == [pg_copy.full.id, first.id, second.id]
    assert record.objects_read == len(data_objects(pg_copy.path))
    for diff in (first, second):
        span = only(record, "log range", diff.id)
        lo, hi = diff.log["pieces"]
        assert span.passed and f"pieces {lo}..{hi} present, without a gap" in span.detail
        assert only(record, "log pieces", diff.id).passed
        assert only(record, "chain", diff.id).detail == f"on parent {pg_copy.full.id} (COMPLETED)"


def test_missing_log_piece_fails_the_log_range(pg_copy):
    second = pg_copy.diffs[1]
    lo, hi = second.log["pieces"]
    seq = (lo + hi) // 2 if hi > lo else lo
    (pg_copy.path / "logs" / "app-db" / f"{seq:012d}.json").unlink()

    record = validate(pg_copy.config, level="quick", keyring=pg_copy.keyring)
    span = only(record, "log range", second.id)
    assert span.failed and span.critical and not record.passed
    assert f"log/app-db/{seq:012d}: the piece's record is missing from the vault" in span.detail
    assert span.remedy == "restore the log pieces from a replica, or take a new full backup of the source"


def test_missing_log_piece_object_fails_quick_and_integrity(pg_copy):
    second = pg_copy.diffs[1]
    seq = second.log["pieces"][1]
    gone = pg_copy.path / "logdata" / "app-db" / f"{seq:012d}" / "00000000"
    gone.unlink()

    record = validate(pg_copy.config, keyring=pg_copy.keyring)
    span = only(record, "log range", second.id)
    assert (
        span.failed
        and f"1 piece objects missing or of the wrong size: logdata/app-db/{seq:012d}/00000000" in span.detail
    )
    pieces = only(record, "log pieces", second.id)
    assert pieces.failed and f"object logdata/app-db/{seq:012d}/00000000 is missing" in pieces.detail


def test_restore_level_adds_the_sandbox_restore_and_its_comparison(files_stack):
    record = validate(files_stack.config, level="restore", keyring=files_stack.keyring)
    assert record.passed, [r.line() for r in record.failures()]
    assert only(record, "read back").passed  # restore includes integrity
    assert only(record, "restore").passed and only(record, "data checks").passed

    def damage(engine) -> None:  # the sandbox altered before the comparison
        (Path(engine.config.root) / "dir1" / "data.bin").unlink()

    altered = validate(files_stack.config, level="restore", keyring=files_stack.keyring, before_compare=damage)
    compared = only(altered, "data checks")
    assert compared.failed and compared.critical and not altered.passed
