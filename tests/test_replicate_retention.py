"""Replication of what retention and compliance leave in a vault: holds, erasure requests and certificates
reach every replica (and a restore from a replica alone still erases), archived backups and backups
deleted by retention keep replicas in sync without being copied back, a read-only store refuses the
lifecycle writes, and an S3 release lifts the hold of every version.

Real parts only: files backups of real trees, local stores on disk, S3 on the session's moto server.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from core.crypto.signing import SigningKey, generate_signing_key
from core.engines import engine_for
from core.errors import BackupNotFoundError, ObjectLockedError, VaultError
from core.operations import backup_source, restore_backup
from core.replication import ReadOnlyStore, open_replica, replicate
from core.repository.manifest import COMPLETED
from core.repository.vault import Vault
from core.retention import erasure
from core.retention.archive import archive_backup
from core.retention.catalog import read_catalog
from core.retention.certificate import certificates
from core.retention.holds import HoldBook
from core.retention.scope import HoldScope
from core.retention.shred import delete_backup
from core.sources import FilesSourceConfig
from core.stack import StackConfig
from core.storage.local import LocalStore
from core.storage.s3 import S3Store
from tests.fixtures_cloud import PRIMARY_REGION, s3_client
from tests.test_vault_recovery import KEYS as BLOB_KEYS
from tests.test_vault_recovery import backup as blob_backup

ALICE = "alice@example.com"
BOB = "bob@example.com"
HOST = SigningKey.from_b64(generate_signing_key()[0])


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(16 << 10))


def write_tree(root: Path) -> Path:
    (root / "users").mkdir(parents=True, exist_ok=True)
    (root / "users" / f"{ALICE}.json").write_text('{"name": "Alice"}')
    (root / "users" / f"{BOB}.json").write_text('{"name": "Bob"}')
    (root / "data.bin").write_bytes(secrets.token_bytes(40_000))  # several 16 KiB chunks
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_stack(tmp: Path, replicas: list[str]) -> tuple[StackConfig, SigningKey]:
    private, public = generate_signing_key()
    key_file = tmp / "admin.ed25519"
    key_file.write_text(private + "\n")
    key_file.chmod(0o600)
    secret = tmp / "passphrase"
    secret.write_text(secrets.token_urlsafe(16) + "\n")
    secret.chmod(0o600)
    config = StackConfig(
        stack=f"repl-{secrets.token_hex(3)}",
        vault={"path": str(tmp / "vault")},
        encryption={"passphrase_from": f"file:{secret}"},
        sources=[FilesSourceConfig(name="uploads", root=str(write_tree(tmp / "app"))).model_dump()],
        replicas=[{"name": name, "vault": {"type": "local", "path": str(tmp / name)}} for name in replicas],
        signing={"admin_key_from": f"file:{key_file}", "admin_public_keys": [public]},
        retention={"erasure": {"uploads": {"paths": ["users/{subject}.json"]}}},
    )
    return config, SigningKey.from_b64(private)


def quiet(_message: str) -> None:
    pass


def keys_under(store, prefix: str) -> list[str]:
    return sorted(store.list(prefix))


# -- 1. holds, erasure requests and certificates ------------------------------------------------------


def test_compliance_records_reach_every_replica_and_a_restore_from_a_replica_alone_still_erases(tmp_path):
    config, admin = make_stack(tmp_path, ["dr"])
    vault, keyring = config.vault.open(create=True), config.keyring()
    engine = engine_for(config.source("uploads"))
    kept = backup_source(vault, keyring, engine)
    gone = backup_source(vault, keyring, engine)
    book = HoldBook(vault.store)
    hold = book.create(
        name="litigation",
        reason="case 42",
        scope=HoldScope(backup_ids=[kept.id]),
        contact="legal@example.com",
        creator="ops",
        catalog=read_catalog(vault, config),
        signer=HOST,
    )
    book.release(hold.id, reason="settled", admin_key=admin, admins=[admin.public_b64])
    request = erasure.record_erasure(config, ALICE, admin_key=admin)
    cert = delete_backup(vault, [], gone.id, reason="expired", authority="policy", signer=HOST, passes=1, say=quiet)
    (tmp_path / "vault" / "holds" / "notes.txt").write_text("not a record: never spread")
    records = [
        f"certificates/{cert.id}.json",
        f"erasure/{request.id}.json",
        f"holds/{hold.id}.json",
        f"holds/{hold.id}.release.json",
    ]
    assert [k for p in ("certificates/", "erasure/", "holds/") for k in keys_under(vault.store, p)] == sorted(
        records + ["holds/notes.txt"]
    )

    replica_store = config.vault_named("dr").store()
    said: list[str] = []
    report = replicate(vault, replica_store, name="dr", progress=said.append)
    assert (report.records_copied, report.backups_copied, report.in_sync) == (4, 1, True)
    assert "4 compliance records copied" in said[-1]
    for key in records:
        assert replica_store.get(key) == vault.store.get(key)
    assert not replica_store.exists("holds/notes.txt")

    # The primary is lost: the replica alone answers 'hold list' and erases on restore.
    replica = open_replica(replica_store, "dr")
    assert HoldBook(replica.store).list([admin.public_b64]) == book.list([admin.public_b64])
    assert [(h.id, h.active, h.release_reason) for h in HoldBook(replica.store).list([admin.public_b64])] == [
        (hold.id, False, "settled")
    ]
    assert [c["id"] for c in certificates(replica.store)] == [cert.id]
    restored = tmp_path / "restored"
    report = restore_backup(
        replica, keyring, kept.id, engine_for(FilesSourceConfig(name="restore-target", root=str(restored)))
    )
    assert sorted(p.name for p in (restored / "users").iterdir()) == [f"{BOB}.json"]
    assert report.erasures == [request.id]
    assert report.erasure_lines == [f"erasure {request.id}: 1 files removed by path 1"]

    # Nothing new: nothing copied. A record altered on one side is named, never overwritten.
    assert replicate(vault, replica_store, name="dr").records_copied == 0
    altered = b'{"forged": true}'
    replica_store.put(f"holds/{hold.id}.json", altered, overwrite=True)
    again = replicate(vault, replica_store, name="dr", verify=True)
    assert again.records_copied == 0
    assert again.damaged_on_primary == [
        f"holds/{hold.id}.json differs between the primary and the replica (kept as it is on the replica)"
    ]
    assert replica_store.get(f"holds/{hold.id}.json") == altered


# -- 2. archived backups --------------------------------------------------------------------------


def test_an_archived_backup_keeps_every_replica_in_sync_and_reaches_new_ones_as_its_records(tmp_path):
    config, _admin = make_stack(tmp_path, ["cold", "early", "late"])
    vault, keyring = config.vault.open(create=True), config.keyring()
    engine = engine_for(config.source("uploads"))
    app = tmp_path / "app"
    moved = backup_source(vault, keyring, engine)
    at_moved = tree(app)
    (app / "later.txt").write_text("after the first full\n")
    stays = backup_source(vault, keyring, engine)
    stores = {name: config.vault_named(name).store() for name in ("cold", "early", "late")}
    assert replicate(vault, stores["early"], name="early").backups_copied == 2  # before the move: the data

    archive_backup(vault, moved.id, "vault:cold", replicas={"cold": stores["cold"]}, say=lambda _m: None, signer=HOST)
    assert keys_under(vault.store, f"backups/{moved.id}/streams/") == []
    record = vault.store.get(f"backups/{moved.id}/archived.json")

    said: list[str] = []
    late = replicate(vault, stores["late"], name="late", progress=said.append)
    assert (late.in_sync, late.missing, late.damaged_on_primary) == (True, [], [])
    assert (late.archived, late.backups_copied, late.backups_on_replica) == ([moved.id], 1, 1)
    assert (
        f"replica late: backup {moved.id} of uploads committed as records only (its data is in archive vault cold)"
        in said
    )
    assert keys_under(stores["late"], f"backups/{moved.id}/") == [
        f"backups/{moved.id}/{name}" for name in ("archived.json", "keys.json", "manifest.json")
    ]
    assert stores["late"].get(f"backups/{moved.id}/archived.json") == record
    replica = open_replica(stores["late"], "late")
    assert {e.id: e.state for e in replica.entries()} == {moved.id: COMPLETED, stays.id: COMPLETED}
    with pytest.raises(BackupNotFoundError) as err:
        replica.open_backup(moved.id, keyring)
    assert "moved to archive vault 'cold'" in str(err.value) and "--vault cold" in str(err.value)
    again = replicate(vault, stores["late"], name="late")
    assert (again.in_sync, again.archived, again.objects_copied, again.objects_repaired) == (True, [moved.id], 0, 0)

    # A replica that copied the data before the move keeps it, restorable, and is never told otherwise.
    early = replicate(vault, stores["early"], name="early", verify=True)
    assert (early.in_sync, early.archived, early.backups_on_replica, early.objects_repaired) == (True, [moved.id], 2, 0)
    assert not stores["early"].exists(f"backups/{moved.id}/archived.json")
    restored = tmp_path / "from-early"
    restore_backup(
        open_replica(stores["early"], "early"),
        keyring,
        moved.id,
        engine_for(FilesSourceConfig(name="t", root=str(restored))),
    )
    assert {k: v for k, v in tree(restored).items()} == at_moved

    # The archive vault replicated as a replica too: it holds the data, and no record sends it elsewhere.
    cold = replicate(vault, stores["cold"], name="cold")
    assert (cold.in_sync, cold.archived, cold.backups_on_replica) == (True, [moved.id], 2)
    assert not stores["cold"].exists(f"backups/{moved.id}/archived.json")

    # A damaged record on the primary: the backup is named, nothing is guessed.
    (tmp_path / "vault" / "backups" / moved.id / "archived.json").write_text("{not json")
    fresh = LocalStore(tmp_path / "fresh")
    damaged = replicate(vault, fresh, name="fresh", max_lag_seconds=None)
    assert damaged.damaged_on_primary == [f"backups/{moved.id}/archived.json"]
    assert [m.split(" (")[0] for m in damaged.missing] == [f"backup {moved.id} of uploads"]
    assert "its archived.json is damaged on the primary" in damaged.missing[0]
    assert not fresh.children(f"backups/{moved.id}/")


# -- 3. backups deleted by retention --------------------------------------------------------------


def test_a_backup_deleted_by_retention_is_neither_copied_back_nor_missing_on_local_and_s3_replicas(
    tmp_path, moto_endpoint, new_bucket
):
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keep, gone = blob_backup(vault), blob_backup(vault)
    bucket = new_bucket(versioned=True)
    replicas = [
        ("dr1", LocalStore(tmp_path / "dr1")),
        ("dr2", LocalStore(tmp_path / "dr2")),
        ("s3", S3Store(bucket=bucket, prefix="dr", region=PRIMARY_REGION, endpoint_url=moto_endpoint)),
    ]
    away = ("away", LocalStore(tmp_path / "away"))  # out of reach when retention deletes
    for name, store in [*replicas, away]:
        assert replicate(vault, store, name=name).backups_copied == 2

    cert = delete_backup(
        vault, replicas, gone.id, reason="expired", authority="policy", signer=HOST, passes=1, say=quiet
    )
    assert cert.stores == [vault.describe()] + [store.describe() for _n, store in replicas]
    page = s3_client(moto_endpoint).list_object_versions(Bucket=bucket, Prefix=f"dr/backups/{gone.id}/")
    assert (page.get("Versions", []), page.get("DeleteMarkers", [])) == ([], [])

    late = ("dr3", LocalStore(tmp_path / "dr3"))  # a replica added after the deletion
    for name, store in [*replicas, late]:
        report = replicate(vault, store, name=name)
        assert (report.in_sync, report.missing, report.damaged_on_primary) == (True, [], [])
        assert (report.backups_on_replica, report.skipped_deleting, report.not_on_primary) == (1, [], [])
        assert list(store.list(f"backups/{gone.id}/")) == []
        assert not store.exists(f"catalog/blob/{gone.id}.json")
        assert [c["id"] for c in certificates(store)] == [cert.id]
        replica = open_replica(store, name)
        assert [e.id for e in replica.entries()] == [keep.id]
        assert replica.open_backup(keep.id, BLOB_KEYS) is not None
    assert late[1].get(f"certificates/{cert.id}.json") == vault.store.get(f"certificates/{cert.id}.json")

    # The replica the deletion did not reach: named with the certificate, never counted missing, never copied to.
    said: list[str] = []
    report = replicate(vault, away[1], name="away", progress=said.append)
    assert (report.in_sync, report.missing, report.backups_on_replica, report.objects_copied) == (True, [], 1, 0)
    line = (
        f"{gone.id} (deleted on the primary, certificate {cert.id}; the deletion did not reach this copy, which still "
        f"holds the data: remove backups/{gone.id}/ from this replica)"
    )
    assert report.not_on_primary == [line]
    assert f"replica away: backup {line}" in said
    assert [c["id"] for c in certificates(away[1])] == [cert.id]
    replicas[2][1].close()


# -- 4. read-only stores and S3 releases ----------------------------------------------------------


@pytest.fixture
def locked_s3(moto_endpoint, new_bucket):
    bucket = new_bucket(object_lock=True)
    store = S3Store(bucket=bucket, prefix="dr", region=PRIMARY_REGION, endpoint_url=moto_endpoint)
    yield store, s3_client(moto_endpoint), bucket
    store.close()


def hold_states(client, bucket: str, key: str) -> list[str]:
    """The legal hold of every version of ``dr/<key>`` as S3 reports it, the current version last (two at most
    here: versions written within one second have equal LastModified, so only IsLatest orders them)."""
    versions = client.list_object_versions(Bucket=bucket, Prefix=f"dr/{key}").get("Versions", [])
    heads = [
        client.head_object(Bucket=bucket, Key=f"dr/{key}", VersionId=v["VersionId"])
        for v in sorted(versions, key=lambda v: v["IsLatest"])
    ]
    return [h.get("ObjectLockLegalHoldStatus", "OFF") for h in heads]


def test_a_read_only_store_forwards_lock_queries_and_refuses_every_lifecycle_write(locked_s3, tmp_path):
    store, _client, _bucket = locked_s3
    store.put("backups/x/manifest.json", b"{}")
    store.set_legal_hold("backups/x/manifest.json", True)
    read_only = ReadOnlyStore(store, "replica dr: only 'genesis-dr replicate' writes to a replica")
    assert (read_only.lock_supported(), read_only.legal_hold("backups/x/manifest.json")) == (True, True)
    assert ReadOnlyStore(LocalStore(tmp_path / "local"), "why").lock_supported() is False
    attempts = {
        "destroy": lambda: read_only.destroy("backups/x/manifest.json"),
        "set the legal hold of": lambda: read_only.set_legal_hold("backups/x/manifest.json", False),
        "change the storage class of": lambda: read_only.set_storage_class("backups/x/manifest.json", "GLACIER"),
        "thaw": lambda: read_only.thaw("backups/x/manifest.json"),
    }
    for action, attempt in attempts.items():
        with pytest.raises(VaultError) as err:
            attempt()
        assert str(err.value) == (
            f"{store.describe()} is read-only here (replica dr: only 'genesis-dr replicate' writes to a replica); "
            f"refused to {action} backups/x/manifest.json"
        )
    assert store.legal_hold("backups/x/manifest.json") is True and store.get("backups/x/manifest.json") == b"{}"


def test_an_s3_release_lifts_the_hold_of_every_version_so_the_key_can_be_destroyed(locked_s3):
    store, client, bucket = locked_s3
    key = "backups/x/keys.json"
    store.put(key, b"first")
    store.set_legal_hold(key, True)
    store.put(key, b"rewritten by a key rotation", overwrite=True)
    store.set_legal_hold(key, True)  # the next retention run holds the new version too
    other = "backups/x/manifest.json"
    store.put(other, b"held")
    store.set_legal_hold(other, True)
    store.put(other, b"rewritten, never held", overwrite=True)
    assert hold_states(client, bucket, key) == ["ON", "ON"]
    assert hold_states(client, bucket, other) == ["ON", "OFF"]
    with pytest.raises(ObjectLockedError):
        store.destroy(other)

    store.set_legal_hold(key, False)
    store.set_legal_hold(other, False)
    assert hold_states(client, bucket, key) == ["OFF", "OFF"]
    assert hold_states(client, bucket, other) == ["OFF", "OFF"]
    store.destroy(key)
    store.destroy(other)
    for gone in (key, other):
        assert client.list_object_versions(Bucket=bucket, Prefix=f"dr/{gone}").get("Versions", []) == []
    # ON still means the current version only.
    store.put(key, b"again")
    store.put(key, b"and again", overwrite=True)
    store.set_legal_hold(key, True)
    assert hold_states(client, bucket, key) == ["OFF", "ON"]
    store.set_legal_hold(key, False)
    assert hold_states(client, bucket, key) == ["OFF", "OFF"]
