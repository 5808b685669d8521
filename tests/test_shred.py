"""Secure deletion on real vaults on disk: crypto-shredding, overwrite before unlink, certificates, a killed
deletion finished from its marker, and replicas shredded and deleted too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.audit.trail import AuditTrail
from core.crypto.keys import Keyring
from core.crypto.signing import SigningKey, fingerprint, generate_signing_key
from core.engines.base import PieceInfo
from core.errors import AuditTrailError, BackupNotFoundError, ObjectLockedError, WrongKeyError
from core.replication.replica import open_replica, replicate
from core.repository.log import LogWriter
from core.repository.manifest import COMPLETED
from core.repository.vault import DELETING, Vault
from core.retention.certificate import certificates, verify_certificate
from core.retention.shred import delete_backup, delete_log_range, resume_deletions, shred_keys
from core.storage.config import VaultConfig
from core.storage.local import LocalStore
from tests.faults import FaultyStore
from tests.fixtures_cloud import PRIMARY_REGION, s3_client
from tests.test_vault import chunk_files, read_back
from tests.test_vault_recovery import backup, manifest_path

KEYS = Keyring(passphrase="pw")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "4096")


@pytest.fixture
def vault(tmp_path):
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


@pytest.fixture(scope="module")
def signer():
    return SigningKey.from_b64(generate_signing_key()[0])


class Killed(BaseException):
    """The process dies here (SIGKILL): nothing after it runs, no cleanup."""


class DiesAfterDestroys(FaultyStore):
    """A real store whose process 'dies' at the destroy after the first ``allowed`` ones (shared across stores)."""

    def __init__(self, inner, budget: dict) -> None:
        super().__init__(inner, schedule=lambda op, key, n: False)
        self.budget = budget

    def destroy(self, key: str, *, passes: int = 1) -> None:
        if self.budget["left"] == 0:
            raise Killed(key)
        self.budget["left"] -= 1
        self.inner.destroy(key, passes=passes)


def wrapped_key(vault: Vault, backup_id: str) -> str:
    return json.loads(vault.store.get(f"backups/{backup_id}/keys.json"))["recipients"][0]["wrapped_key"]


def vault_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_crypto_shredded_backup_fails_with_the_wrong_key_error_while_its_chunks_still_exist(vault, tmp_path):
    m = backup(vault)
    chunks = chunk_files(tmp_path / "vault", m.id)
    before = {p: p.read_bytes() for p in chunks}
    secret = wrapped_key(vault, m.id)

    shred_keys(vault.store, [f"backups/{m.id}/keys.json"])

    assert {p: p.read_bytes() for p in chunk_files(tmp_path / "vault", m.id)} == before  # the data is all there
    assert len(before) == len(m.streams[0].chunks)
    with pytest.raises(WrongKeyError) as info:
        vault.open_backup(m.id, KEYS)  # the right passphrase: no key can open it any more
    message = str(info.value)
    assert "\n" not in message and m.id in message and "crypto-shredded" in message
    record = json.loads(vault.store.get(f"backups/{m.id}/keys.json"))
    assert record["recipients"] == [] and record["shredded_from"] == m.keys_sha256
    assert secret.encode() not in vault_bytes(tmp_path / "vault")  # no wrapped copy left anywhere
    shred_keys(vault.store, [f"backups/{m.id}/keys.json", "backups/absent/keys.json"])  # idempotent
    assert json.loads(vault.store.get(f"backups/{m.id}/keys.json")) == record


def test_local_deletion_overwrites_before_unlinking_and_certifies_every_object(vault, tmp_path, signer):
    keep, gone = backup(vault), backup(vault)
    chunk = chunk_files(tmp_path / "vault", gone.id)[0]
    original = chunk.read_bytes()
    link = tmp_path / "hardlink-made-before"
    os.link(chunk, link)  # sees the inode's bytes after the unlink

    cert = delete_backup(
        vault, [], gone.id, reason="older than keep_within 30d", authority="policy", signer=signer, passes=3, say=print
    )

    assert link.read_bytes() != original and len(link.read_bytes()) == len(original)
    assert original[:64] not in link.read_bytes()
    assert not (tmp_path / "vault" / "backups" / gone.id).exists()
    assert not (tmp_path / "vault" / "catalog" / "blob" / f"{gone.id}.json").exists()
    assert [e.id for e in vault.entries()] == [keep.id]
    assert read_back(vault, keep.id, KEYS)  # the other backup is untouched
    assert cert.method == "crypto-shred + overwrite(3) + unlink"
    assert cert.subject == gone.id and cert.source == "blob" and cert.kind == "test"
    chunk_hashes = {o["key"]: o["sha256"] for o in cert.objects if "/streams/" in o["key"]}
    assert chunk_hashes == {
        f"backups/{gone.id}/streams/main/{i:08d}": c.sha256 for i, c in enumerate(gone.streams[0].chunks)
    }
    by_key = {o["key"]: o for o in cert.objects}
    assert by_key[f"backups/{gone.id}/keys.json"]["sha256"] == gone.keys_sha256
    assert set(by_key) >= {f"backups/{gone.id}/manifest.json", f"backups/{gone.id}/started.json"}
    assert cert.stores == [vault.describe()]

    # The stored certificate verifies; one flipped field (or another signer) does not.
    (stored,) = certificates(vault.store)
    assert stored == cert.to_dict()
    verify_certificate(stored, {})
    verify_certificate(stored, {fingerprint(signer.public_b64): signer.public_b64})
    for field, value in (
        ("reason", "requested by nobody"),
        ("deleted_at", "2020-01-01T00:00:00.000Z"),
        ("objects", [dict(cert.objects[0], sha256="0" * 64)] + cert.objects[1:]),
    ):
        with pytest.raises(AuditTrailError, match=f"certificate {cert.id}.*does not match its content"):
            verify_certificate(stored | {field: value}, {})
    other = SigningKey.from_b64(generate_signing_key()[0])
    with pytest.raises(AuditTrailError, match=f"signed by key {signer.fingerprint}, which the stack does not trust"):
        verify_certificate(stored, {other.fingerprint: other.public_b64})

    (entry,) = [e for e in AuditTrail(vault.store).entries() if e["action"] == "retention.delete"]
    assert entry["subject"] == gone.id and entry["details"]["certificate"] == cert.id


def test_a_killed_deletion_lists_as_deleting_and_is_finished_from_its_marker(vault, tmp_path, signer):
    keep, gone = backup(vault), backup(vault)
    n_chunks = len(gone.streams[0].chunks)
    assert n_chunks >= 3
    budget = {"left": 1 + 2}  # keys.json shredded, two chunks destroyed, then the process dies
    dying = Vault(DiesAfterDestroys(vault.store, budget), vault.config)
    with pytest.raises(Killed):
        delete_backup(dying, [], gone.id, reason="expired", authority="policy", signer=signer, passes=1)

    assert len(chunk_files(tmp_path / "vault", gone.id)) == n_chunks - 2  # really half-deleted
    assert manifest_path(vault, gone.id).exists()  # the manifest is there: without the marker it would look whole
    states = {e.id: e.state for e in vault.entries()}
    assert states == {keep.id: COMPLETED, gone.id: DELETING}
    assert "retention run" in next(e for e in vault.entries() if e.id == gone.id).reason
    assert [m.id for m in vault.list_backups()] == [keep.id]
    with pytest.raises(BackupNotFoundError, match=f"backup {gone.id} is being deleted by retention"):
        vault.open_backup(gone.id, KEYS)
    assert certificates(vault.store) == []

    (cert,) = resume_deletions(vault, [], signer=signer, passes=1, say=print)
    assert cert.subject == gone.id and cert.reason == "expired"  # the marker's reason, not the resumer's
    assert len([o for o in cert.objects if "/streams/" in o["key"]]) == n_chunks  # all of it, not what was left
    assert [e.id for e in vault.entries()] == [keep.id]
    assert not (tmp_path / "vault" / "backups" / gone.id).exists()
    assert list(vault.store.list("retention/")) == []
    assert resume_deletions(vault, [], signer=signer, passes=1) == []
    assert [c["id"] for c in certificates(vault.store)] == [cert.id]


def test_a_deletion_killed_after_its_certificate_writes_neither_twice(vault, signer):
    gone = backup(vault)
    marker = f"retention/deleting/{gone.id}.json"

    class DiesAtMarkerRemoval(FaultyStore):
        def delete(self, key):
            if key == marker:
                raise Killed(key)
            self.inner.delete(key)

        def destroy(self, key, *, passes=1):
            self.inner.destroy(key, passes=passes)

    with pytest.raises(Killed):
        delete_backup(
            Vault(DiesAtMarkerRemoval(vault.store, schedule=lambda *a: False), vault.config),
            [],
            gone.id,
            reason="expired",
            authority="policy",
            signer=signer,
            passes=1,
        )
    assert [e.state for e in vault.entries()] == [DELETING]
    (cert,) = resume_deletions(vault, [], signer=signer, passes=1)
    assert [c["id"] for c in certificates(vault.store)] == [cert.id]
    deletes = [e for e in AuditTrail(vault.store).entries() if e["action"] == "retention.delete"]
    assert [e["details"]["certificate"] for e in deletes] == [cert.id]
    assert vault.entries() == []


def test_replicas_are_shredded_first_and_deleted_too(vault, tmp_path, signer):
    keep, gone = backup(vault), backup(vault)
    replica_store = LocalStore(tmp_path / "replica")
    replicate(vault, replica_store, name="dr")
    replica = open_replica(replica_store, "dr")
    assert {e.id for e in replica.entries()} == {keep.id, gone.id}
    secrets = [wrapped_key(vault, gone.id), wrapped_key(replica, gone.id)]

    # Killed right after both copies of the data key were shredded: every chunk is still on both stores.
    budget = {"left": 2}
    with pytest.raises(Killed):
        delete_backup(
            Vault(DiesAfterDestroys(vault.store, budget), vault.config),
            [("dr", DiesAfterDestroys(replica_store, budget))],
            gone.id,
            reason="expired",
            authority="policy",
            signer=signer,
            passes=1,
        )
    for root, v in ((tmp_path / "vault", vault), (tmp_path / "replica", replica)):
        assert len(chunk_files(root, gone.id)) == len(gone.streams[0].chunks)
        record = json.loads(v.store.get(f"backups/{gone.id}/keys.json"))
        assert record["recipients"] == [] and record["shredded_at"]
        assert not any(s.encode() in vault_bytes(root) for s in secrets)
        assert {e.id: e.state for e in v.entries()} == {keep.id: COMPLETED, gone.id: DELETING}
    with pytest.raises(BackupNotFoundError, match="being deleted"):
        replica.open_backup(gone.id, KEYS)

    (cert,) = resume_deletions(vault, [("dr", replica_store)], signer=signer, passes=1)
    assert cert.stores == [vault.describe(), replica_store.describe()]
    for root, v in ((tmp_path / "vault", vault), (tmp_path / "replica", replica)):
        assert not (root / "backups" / gone.id).exists()
        assert [e.id for e in v.entries()] == [keep.id]
        assert [c["id"] for c in certificates(v.store)] == [cert.id]
    assert read_back(replica, keep.id, KEYS) == read_back(vault, keep.id, KEYS)
    # A later replication does not bring it back.
    replicate(vault, replica_store, name="dr")
    assert [e.id for e in replica.entries()] == [keep.id]


def test_a_backup_moved_to_an_archive_vault_names_it_on_open_and_stays_listed(vault):
    moved = backup(vault)
    vault.store.put(
        f"backups/{moved.id}/archived.json", json.dumps({"vault": "cold", "at": "2026-12-01T03:00:00Z"}).encode()
    )
    with pytest.raises(BackupNotFoundError) as info:
        vault.open_backup(moved.id, KEYS)
    assert str(info.value) == (
        f"backup {moved.id} was moved to archive vault 'cold' on 2026-12-01T03:00:00Z; restore it with --vault cold"
    )
    assert [(e.id, e.state) for e in vault.entries()] == [(moved.id, COMPLETED)]


# -- S3 (moto server): every version goes, and an Object Lock legal hold stops a deletion before it starts ----


@pytest.fixture
def s3_vault(moto_endpoint, new_bucket):
    bucket = new_bucket(object_lock=True)  # versioned, as Object Lock requires
    config = VaultConfig(type="s3", bucket=bucket, prefix="dr", region=PRIMARY_REGION, endpoint_url=moto_endpoint)
    store = config.store()
    yield Vault.open(store, create=True), s3_client(moto_endpoint), bucket
    store.close()


def versions(client, bucket: str, prefix: str) -> list[str]:
    listed = client.list_object_versions(Bucket=bucket, Prefix=f"dr/{prefix}")
    return sorted(v["Key"] for v in listed.get("Versions", []) + listed.get("DeleteMarkers", []))


def test_s3_shredding_leaves_no_old_version_of_the_key_and_a_legal_hold_stops_the_deletion_untouched(s3_vault, signer):
    vault, client, bucket = s3_vault
    m = backup(vault)
    keys = f"backups/{m.id}/keys.json"
    original = vault.store.get(keys)

    chunk = f"backups/{m.id}/streams/main/{len(m.streams[0].chunks) - 1:08d}"
    for held in (keys, chunk):
        vault.store.set_legal_hold(held, True)
        with pytest.raises(ObjectLockedError, match=f"{held} is under a legal hold"):
            delete_backup(vault, [], m.id, reason="expired", authority="policy", signer=signer, passes=3)
        assert vault.store.get(keys) == original  # nothing was changed: no marker, no shredding
        assert [(e.id, e.state) for e in vault.entries()] == [(m.id, COMPLETED)]
        assert read_back(vault, m.id, KEYS)
        vault.store.set_legal_hold(held, False)

    shred_keys(vault.store, [keys])
    assert versions(client, bucket, keys) == [f"dr/{keys}"]  # the shredded record only
    assert json.loads(vault.store.get(keys))["recipients"] == []
    with pytest.raises(WrongKeyError, match="crypto-shredded"):
        vault.open_backup(m.id, KEYS)
    assert len(list(vault.store.list(f"backups/{m.id}/streams/"))) == len(m.streams[0].chunks)

    cert = delete_backup(vault, [], m.id, reason="expired", authority="policy", signer=signer, passes=3)
    assert cert.method == "crypto-shred + delete"
    assert versions(client, bucket, f"backups/{m.id}/") == []  # no version, no delete marker
    assert versions(client, bucket, f"catalog/blob/{m.id}") == []
    assert vault.entries() == []
    verify_certificate(cert.to_dict(), {})


# -- log ranges ---------------------------------------------------------------------------


def ship(vault: Vault, first: int, count: int) -> str:
    """``count`` Redis-kind pieces from ``first`` in one capture session; its session key id."""
    before = set(vault.store.children("logkeys/cache/"))
    writer = LogWriter(vault.store, "cache", "redis", KEYS, vault.check_passphrase(KEYS), chunk_size=4096)
    for n in range(first, first + count):
        info = PieceInfo(
            start={"replid": "a" * 40, "offset": n * 1000},
            end={"replid": "a" * 40, "offset": (n + 1) * 1000},
            first_time=f"2026-12-05T10:0{n}:00.000Z",
            last_time=f"2026-12-05T10:0{n}:30.000Z",
        )
        writer.ship(info, os.urandom(10_000))
    writer.close()
    (key,) = set(vault.store.children("logkeys/cache/")) - before
    return key.removesuffix(".json")


def test_a_log_range_is_shredded_with_its_session_key_and_a_killed_one_resumes(vault, tmp_path, signer):
    old_key, new_key = ship(vault, 0, 3), ship(vault, 3, 1)
    records = {r.seq: r for r in vault.log_pieces("cache")}
    old_secret = json.loads(vault.store.get(f"logkeys/cache/{old_key}.json"))["recipients"][0]["wrapped_key"]

    # The host dies after the session key was shredded and one chunk destroyed.
    budget = {"left": 2}
    with pytest.raises(Killed):
        delete_log_range(
            Vault(DiesAfterDestroys(vault.store, budget), vault.config),
            [],
            "cache",
            [0, 1, 2],
            [old_key],
            reason="older than the PITR window",
            authority="policy",
            signer=signer,
            passes=1,
        )
    assert old_secret.encode() not in vault_bytes(tmp_path / "vault")
    assert [k.removesuffix(".json") for k in vault.store.children("logkeys/cache/")] == sorted([old_key, new_key])
    marker = "retention/deleting-log/cache/000000000000-000000000002.json"
    assert vault.store.exists(marker)

    (cert,) = resume_deletions(vault, [], signer=signer, passes=1)
    assert cert.subject == "log:cache:0-2" and cert.kind == "redis" and cert.reason == "older than the PITR window"
    chunks = {o["key"]: o["sha256"] for o in cert.objects if o["key"].startswith("logdata/")}
    assert chunks == {
        f"logdata/cache/{seq:012d}/{i:08d}": c.sha256
        for seq in (0, 1, 2)
        for i, c in enumerate(records[seq].stream.chunks)
    }
    assert [r.seq for r in vault.log_pieces("cache")] == [3]
    assert vault.store.children("logkeys/cache/") == [f"{new_key}.json"]
    assert vault.store.children("logdata/cache/") == ["000000000003"]
    assert not vault.store.exists(marker)
    reader = vault.log_reader("cache", KEYS)  # the piece of the other session still opens
    assert len(b"".join(reader.iter_piece(records[3]))) == 10_000
    verify_certificate(cert.to_dict(), {})


def test_the_next_backup_does_not_record_a_half_deleted_backup_as_failed(vault, tmp_path, signer):
    gone = backup(vault)
    n = len(gone.streams[0].chunks)
    # Killed after the key, the chunks, the catalog hint, the verified record and the manifest went:
    # what is left (started.json) looks like an abandoned run's.
    budget = {"left": 1 + n + 3}
    with pytest.raises(Killed):
        delete_backup(
            Vault(DiesAfterDestroys(vault.store, budget), vault.config),
            [],
            gone.id,
            reason="expired",
            authority="policy",
            signer=signer,
            passes=1,
        )
    assert not manifest_path(vault, gone.id).exists()
    assert (tmp_path / "vault" / "backups" / gone.id / "started.json").exists()
    assert [(e.id, e.state) for e in vault.entries()] == [(gone.id, DELETING)]

    newer = backup(vault)  # recovers abandoned partials of its source under the lease
    assert not manifest_path(vault, gone.id).exists()
    assert {e.id: e.state for e in vault.entries()} == {gone.id: DELETING, newer.id: COMPLETED}
    (cert,) = resume_deletions(vault, [], signer=signer, passes=1)
    assert cert.subject == gone.id
    assert [e.id for e in vault.entries()] == [newer.id]
