"""Archive tiers: a backup moved to a colder S3 class (moto server) or to an archive vault stays listed
and restorable; the restored tree is compared with the original, byte for byte."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.audit.trail import AuditTrail
from core.crypto.keys import Keyring
from core.crypto.signing import SigningKey, generate_signing_key
from core.engines import engine_for
from core.errors import BackupNotFoundError, ConfigError, ObjectFrozenError, VaultError
from core.operations import backup_source, restore_backup
from core.replication.replica import open_vault
from core.repository.manifest import COMPLETED
from core.repository.vault import Vault
from core.retention.archive import RESTORE_DELAY, archive_backup, restore_delay, thaw_backup
from core.retention.catalog import read_catalog
from core.sources import FilesSourceConfig
from core.stack import parse_stack
from core.storage.local import LocalStore
from tests.fixtures_cloud import moto_vault, s3_client

KEYS = Keyring(passphrase="archive")
HOST = SigningKey.from_b64(generate_signing_key()[0])


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(16 << 10))


def write_tree(root: Path, marker: str) -> Path:
    (root / "conf").mkdir(parents=True, exist_ok=True)
    (root / "conf" / "app.ini").write_text(f"[app]\nmarker = {marker}\n")
    (root / "data.bin").write_bytes(os.urandom(40_000))  # several 16 KiB chunks, incompressible
    return root


def tree_state(root: Path) -> dict:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }


def chunk_count(manifest) -> int:
    return sum(len(s.chunks) for s in manifest.streams)


def restore_into(vault, backup_id: str, dst: Path):
    return restore_backup(vault, KEYS, backup_id, engine_for(FilesSourceConfig(name="app", root=str(dst))))


def stack(vault: dict, app: Path, replicas: list | None = None):
    return parse_stack(
        {
            "stack": "archive",
            "vault": vault,
            "sources": [{"name": "app", "kind": "files", "root": str(app)}],
            "replicas": replicas or [],
        },
        "test stack",
    )


def cold_stack(tmp_path: Path, app: Path):
    """A local vault with one local replica, "cold", to archive to."""
    return stack(
        {"type": "local", "path": str(tmp_path / "vault")},
        app,
        replicas=[{"name": "cold", "vault": {"type": "local", "path": str(tmp_path / "cold")}}],
    )


@pytest.fixture
def s3_backup(tmp_path, moto_endpoint, new_bucket):
    bucket = new_bucket()
    app = write_tree(tmp_path / "app", "s3")
    config = stack(moto_vault(bucket, moto_endpoint), app)
    vault = config.vault.open(create=True)
    manifest = backup_source(vault, KEYS, engine_for(config.source("app")))
    return config, vault, bucket, manifest, tree_state(app)


def classes(endpoint: str, bucket: str, keys) -> dict[str, str]:
    """Each object's class as S3 reports it (HeadObject omits STANDARD)."""
    client = s3_client(endpoint)
    return {k: client.head_object(Bucket=bucket, Key=f"dr/{k}").get("StorageClass", "STANDARD") for k in keys}


def test_a_backup_archived_to_glacier_ir_stays_listed_and_restores_at_once(s3_backup, tmp_path, moto_endpoint):
    config, vault, bucket, manifest, original = s3_backup
    chunks = sorted(vault.store.list(f"backups/{manifest.id}/streams/"))
    n = chunk_count(manifest)
    assert len(chunks) == n and n > 2
    said = []
    result = archive_backup(vault, manifest.id, "GLACIER_IR", replicas={}, say=said.append, signer=HOST)
    assert result == {
        "backup": manifest.id,
        "to": "GLACIER_IR",
        "objects": n,
        "bytes": manifest.stored_bytes,
        "already": 0,
        "restore_delay": "milliseconds",
    }
    assert said == [
        f"archive {manifest.id}: {n} objects ({manifest.stored_bytes} bytes) moved to GLACIER_IR, 0 already there; "
        "restore delay: milliseconds"
    ]
    others = [k for k in vault.store.list(f"backups/{manifest.id}/") if "/streams/" not in k]
    assert classes(moto_endpoint, bucket, chunks) == dict.fromkeys(chunks, "GLACIER_IR")
    assert classes(moto_endpoint, bucket, others) == dict.fromkeys(others, "STANDARD")
    # Listed as before, and the catalog knows the tier.
    assert [(e.id, e.state) for e in vault.entries()] == [(manifest.id, COMPLETED)]
    assert [(b.id, b.storage_class) for b in read_catalog(vault, config).backups] == [(manifest.id, "GLACIER_IR")]
    # Again: nothing left to move.
    assert archive_backup(vault, manifest.id, "glacier_ir", replicas={}, say=said.append, signer=HOST)["already"] == n

    report = restore_into(vault, manifest.id, tmp_path / "restored")
    assert report.verified_checks > 0
    assert tree_state(tmp_path / "restored") == original
    entries = [(e["action"], e["subject"], e["details"]["to"]) for e in AuditTrail(vault.store).entries()]
    assert entries == [("retention.archive", manifest.id, "GLACIER_IR")] * 2


def test_a_backup_in_glacier_must_be_thawed_before_it_restores(s3_backup, tmp_path, moto_endpoint):
    config, vault, bucket, manifest, original = s3_backup
    archive_backup(vault, manifest.id, "GLACIER", replicas={}, say=lambda _m: None, signer=HOST)
    chunks = sorted(vault.store.list(f"backups/{manifest.id}/streams/"))
    assert classes(moto_endpoint, bucket, chunks) == dict.fromkeys(chunks, "GLACIER")
    assert all(vault.store.stat(k).frozen for k in chunks)
    assert restore_delay("GLACIER") == "3-5 hours (Standard), 1-5 minutes (Expedited)"

    with pytest.raises(ObjectFrozenError) as err:
        restore_into(vault, manifest.id, tmp_path / "too-soon")
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 35
    assert f"is in the GLACIER tier and must be thawed first: run 'genesis-dr archive thaw {manifest.id}'" in message

    thawed = thaw_backup(vault, manifest.id, days=2)
    n = chunk_count(manifest)
    assert (thawed["ready"], thawed["requested"], thawed["in-progress"]) == (0, n, 0)
    assert thawed["backups"] == [manifest.id]
    # moto completes a restore request at once (S3 Standard takes hours): now every chunk reads.
    assert not any(vault.store.stat(k).frozen for k in chunks)
    assert thaw_backup(vault, manifest.id)["ready"] == n
    restore_into(vault, manifest.id, tmp_path / "restored")
    assert tree_state(tmp_path / "restored") == original


def test_a_backup_moved_to_an_archive_vault_restores_from_there_and_stays_listed(tmp_path):
    app = write_tree(tmp_path / "app", "first")
    config = cold_stack(tmp_path, app)
    vault = config.vault.open(create=True)
    engine = engine_for(config.source("app"))
    full = backup_source(vault, KEYS, engine)
    at_full = tree_state(app)
    (app / "conf" / "app.ini").write_text("[app]\nmarker = second\n")
    (app / "new.txt").write_text("added after the full\n")
    inc = backup_source(vault, KEYS, engine, "incremental")
    at_inc = tree_state(app)
    replicas = {"cold": config.vault_named("cold").store()}

    with pytest.raises(VaultError) as err:
        archive_backup(vault, full.id, "vault:cold", replicas=replicas, say=lambda _m: None, signer=HOST)
    assert str(err.value) == (
        f"archive of {full.id} to vault cold: backup {inc.id} on the primary builds on it; archive {inc.id} first "
        "(its whole chain is copied), or archive to a storage class instead"
    )
    with pytest.raises(ConfigError) as err:
        archive_backup(vault, inc.id, "vault:glacier", replicas=replicas, say=lambda _m: None, signer=HOST)
    assert "names no replica of this stack (replicas: cold)" in str(err.value)

    said = []
    result = archive_backup(vault, inc.id, "vault:cold", replicas=replicas, say=said.append, signer=HOST)
    assert (result["to"], result["objects"], result["restore_delay"]) == (
        "vault:cold",
        chunk_count(inc),
        "immediate (restore with --vault cold)",
    )
    assert list(vault.store.list(f"backups/{inc.id}/streams/")) == []
    record = json.loads(vault.store.get(f"backups/{inc.id}/archived.json"))
    assert (record["vault"], record["chain"]) == ("cold", [full.id])
    # Still listed on the primary, and the catalog says where its data went.
    assert {e.id: e.state for e in vault.entries()} == {full.id: COMPLETED, inc.id: COMPLETED}
    assert {b.id: b.archived_to for b in read_catalog(vault, config).backups} == {full.id: None, inc.id: "vault:cold"}
    with pytest.raises(BackupNotFoundError) as err:
        vault.open_backup(inc.id, KEYS)
    assert "cold" in str(err.value) and "--vault cold" in str(err.value)

    cold = open_vault(config, "cold")  # what 'restore --vault cold' opens: read-only
    assert sorted(m.id for m in cold.list_backups()) == sorted([full.id, inc.id])
    restore_into(cold, inc.id, tmp_path / "restored-inc")
    assert tree_state(tmp_path / "restored-inc") == at_inc

    # Again: nothing to copy, nothing left to remove.
    again = archive_backup(vault, inc.id, "vault:cold", replicas=replicas, say=said.append, signer=HOST)
    assert (again["objects"], again["copied"]) == (0, 0)
    # The full can go now that nothing on the primary builds on it.
    archive_backup(vault, full.id, "vault:cold", replicas=replicas, say=said.append, signer=HOST)
    assert list(vault.store.list(f"backups/{full.id}/streams/")) == []
    restore_into(open_vault(config, "cold"), full.id, tmp_path / "restored-full")
    assert tree_state(tmp_path / "restored-full") == at_full
    actions = [(e["action"], e["subject"]) for e in AuditTrail(vault.store).entries()]
    assert actions == [("retention.archive", inc.id)] * 2 + [("retention.archive", full.id)]

    # A local vault has no storage classes: one line naming the store.
    with pytest.raises(VaultError) as err:
        archive_backup(vault, full.id, "GLACIER", replicas=replicas, say=said.append, signer=HOST)
    assert str(err.value).startswith(f"backup {full.id} was moved to archive vault 'cold' on ")
    with pytest.raises(VaultError) as err:
        thaw_backup(vault, inc.id)
    assert "moved to archive vault 'cold'" in str(err.value)
    assert thaw_backup(vault, inc.id, replicas=replicas)["ready"] == chunk_count(inc) + chunk_count(full)


def test_a_storage_class_on_a_local_vault_is_refused_naming_the_store(tmp_path):
    config = stack({"type": "local", "path": str(tmp_path / "vault")}, write_tree(tmp_path / "app", "x"))
    vault = config.vault.open(create=True)
    manifest = backup_source(vault, KEYS, engine_for(config.source("app")))
    with pytest.raises(VaultError) as err:
        archive_backup(vault, manifest.id, "GLACIER_IR", replicas={}, say=lambda _m: None, signer=HOST)
    assert "changing the storage class is not supported" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        archive_backup(vault, manifest.id, "FROZEN", replicas={}, say=lambda _m: None, signer=HOST)
    assert "'FROZEN' is not an archive tier" in str(err.value)


def test_restore_delays_per_tier():
    assert {c: restore_delay(c) for c in RESTORE_DELAY} == RESTORE_DELAY
    assert restore_delay("standard") == "immediate"
    assert restore_delay("DEEP_ARCHIVE") == "12 hours"
    assert restore_delay("vault:cold") == "immediate (restore with --vault cold)"
    assert restore_delay("TAPE") == "unknown"


class DiesAfterOneDestroy(LocalStore):
    """A local store whose process 'dies' (an exception nothing catches) after one object was destroyed."""

    destroyed = 0

    def destroy(self, key: str, *, passes: int = 1) -> None:
        if self.destroyed == 1:
            raise KeyboardInterrupt("killed")
        super().destroy(key, passes=passes)
        self.destroyed += 1


def test_an_archive_killed_after_its_record_is_finished_by_the_next_run(tmp_path):
    app = write_tree(tmp_path / "app", "killed")
    config = cold_stack(tmp_path, app)
    manifest = backup_source(config.vault.open(create=True), KEYS, engine_for(config.source("app")))
    original = tree_state(app)
    replicas = {"cold": config.vault_named("cold").store()}
    dying = Vault.open(DiesAfterOneDestroy(tmp_path / "vault"))
    with pytest.raises(KeyboardInterrupt):
        archive_backup(dying, manifest.id, "vault:cold", replicas=replicas, say=lambda _m: None, signer=HOST)
    vault = config.vault.open()
    left = list(vault.store.list(f"backups/{manifest.id}/streams/"))
    assert len(left) == chunk_count(manifest) - 1
    assert vault.store.exists(f"backups/{manifest.id}/archived.json")
    assert {e.id: e.state for e in vault.entries()} == {manifest.id: COMPLETED}
    restore_into(open_vault(config, "cold"), manifest.id, tmp_path / "meanwhile")
    assert tree_state(tmp_path / "meanwhile") == original

    said = []
    result = archive_backup(vault, manifest.id, "vault:cold", replicas=replicas, say=said.append, signer=HOST)
    assert (result["objects"], result["copied"]) == (len(left), 0)
    assert list(vault.store.list(f"backups/{manifest.id}/streams/")) == []
    at = json.loads(vault.store.get(f"backups/{manifest.id}/archived.json"))["at"]
    assert said == [
        f"archive {manifest.id}: in archive vault cold since {at} (an earlier run stopped before removing its data "
        f"here), {len(left)} data objects removed from the primary; restore it with --vault cold"
    ]


def test_a_held_backup_keeps_its_locks_through_an_archive_and_is_deletable_once_released(
    tmp_path, moto_endpoint, new_bucket
):
    from core.crypto.signing import SigningKey as Key
    from core.errors import ObjectLockedError
    from core.retention.holds import HoldBook, apply_object_holds
    from core.retention.scope import HoldScope

    bucket = new_bucket(object_lock=True)
    app = write_tree(tmp_path / "app", "held")
    config = stack(moto_vault(bucket, moto_endpoint), app)
    vault = config.vault.open(create=True)
    manifest = backup_source(vault, KEYS, engine_for(config.source("app")))
    admin = Key.from_b64(generate_signing_key()[0])
    book = HoldBook(vault.store)
    hold = book.create(
        name="h",
        reason="r",
        scope=HoldScope(backup_ids=[manifest.id]),
        contact="c",
        creator="o",
        catalog=read_catalog(vault, config),
        signer=HOST,
    )
    held = apply_object_holds(vault, [], book.list([admin.public_b64]), read_catalog(vault, config))["primary"]
    archive_backup(vault, manifest.id, "GLACIER_IR", replicas={}, say=lambda _m: None, signer=HOST)
    chunks = sorted(vault.store.list(f"backups/{manifest.id}/streams/"))
    client = s3_client(moto_endpoint)
    # One version per chunk, in the new class, still held: the class change moved the hold with the data.
    for key in chunks:
        versions = client.list_object_versions(Bucket=bucket, Prefix=f"dr/{key}")["Versions"]
        assert [v["StorageClass"] for v in versions] == ["GLACIER_IR"]
        assert vault.store.legal_hold(key)
    again = apply_object_holds(vault, [], book.list([admin.public_b64]), read_catalog(vault, config))["primary"]
    assert (again["held"], again["set_on"]) == (held["held"], 0)
    with pytest.raises(ObjectLockedError):
        vault.store.destroy(chunks[0])

    book.release(hold.id, reason="over", admin_key=admin, admins=[admin.public_b64])
    lifted = apply_object_holds(vault, [], book.list([admin.public_b64]), read_catalog(vault, config))["primary"]
    assert lifted["set_off"] == held["set_on"]
    vault.store.destroy(chunks[0])
    assert client.list_object_versions(Bucket=bucket, Prefix=f"dr/{chunks[0]}").get("Versions", []) == []
