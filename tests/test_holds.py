"""Legal holds: recorded in the vault, enforced by S3 Object Lock on a moto server (real HTTP).

moto enforces Object Lock legal holds: a held version cannot be deleted, by us or by anyone else
holding the bucket's credentials. The backups are real files-engine backups of a small tree.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from core.audit.trail import AuditTrail
from core.crypto.keys import Keyring
from core.crypto.signing import SigningConfig, SigningKey, generate_signing_key
from core.engines import engine_for
from core.errors import HoldError, ObjectLockedError, SigningKeyError
from core.operations import backup_source
from core.retention.catalog import Catalog, read_catalog
from core.retention.holds import HoldBook, apply_object_holds, canonical, covered_items, covered_objects
from core.retention.scope import HoldScope, parse_scope
from core.stack import parse_stack
from core.storage.local import LocalStore
from tests.fixtures_cloud import PRIMARY_REGION, moto_vault, s3_client

KEYS = Keyring(passphrase="holds")


def new_key() -> SigningKey:
    return SigningKey.from_b64(generate_signing_key()[0])


HOST, ADMIN, INTRUDER = new_key(), new_key(), new_key()
ADMINS = [ADMIN.public_b64]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(16 << 10))


def tree(root: Path, marker: str) -> Path:
    (root / "conf").mkdir(parents=True, exist_ok=True)
    (root / "conf" / "app.ini").write_text(f"[app]\nmarker = {marker}\n")
    (root / "data.bin").write_bytes(marker.encode() * 9000)  # several 16 KiB chunks
    return root


@pytest.fixture
def s3_stack(tmp_path, moto_endpoint, new_bucket):
    """A stack of two files sources on an S3 vault in a bucket created with Object Lock."""
    bucket = new_bucket(object_lock=True)
    config = parse_stack(
        {
            "stack": "holds",
            "vault": moto_vault(bucket, moto_endpoint),
            "sources": [
                {"name": "app", "kind": "files", "root": str(tree(tmp_path / "app", "app"))},
                {"name": "web", "kind": "files", "root": str(tree(tmp_path / "web", "web"))},
            ],
        },
        "test stack",
    )
    vault = config.vault.open(create=True)
    ids = {name: backup_source(vault, KEYS, engine_for(config.source(name))).id for name in ("app", "web")}
    return config, vault, bucket, ids


@functools.cache
def client_for(endpoint: str):
    return s3_client(endpoint)


def s3_hold(endpoint: str, bucket: str, key: str) -> str:
    """The legal hold S3 itself reports for the object (independent of the code under test)."""
    client = client_for(endpoint)
    try:
        return client.get_object_legal_hold(Bucket=bucket, Key=f"dr/{key}")["LegalHold"].get("Status", "NONE")
    except client.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchObjectLockConfiguration"
        return "NONE"


def test_a_hold_by_glob_locks_every_object_of_the_backup_until_an_admin_releases_it(s3_stack, moto_endpoint):
    config, vault, bucket, ids = s3_stack
    held, free = ids["app"], ids["web"]
    catalog = read_catalog(vault, config)
    book = HoldBook(vault.store)
    hold = book.create(
        name="lawsuit-acme",
        reason="Acme v. Us, discovery",
        scope=parse_scope(json.dumps({"backup_ids": [f"backup_*_{held[-8:]}"]})),
        contact="legal@example.com",
        creator="ops@host",
        catalog=catalog,
        signer=HOST,
    )
    assert hold.id.startswith("hold-") and hold.active
    assert [h.id for h in book.active(ADMINS)] == [hold.id]
    stored = json.loads(vault.store.get(f"holds/{hold.id}.json"))
    assert (stored["name"], stored["contact"], stored["creator"]) == ("lawsuit-acme", "legal@example.com", "ops@host")
    assert stored["scope"]["backup_ids"] == [f"backup_*_{held[-8:]}"] and stored["signer"] == HOST.public_b64

    objects = covered_objects(vault, catalog, book.list(ADMINS))
    expected = set(vault.store.list(f"backups/{held}/")) | {f"catalog/app/{held}.json"}
    assert objects == expected
    assert f"backups/{held}/manifest.json" in objects and any("/streams/" in k for k in objects)

    counts = apply_object_holds(vault, [], book.list(ADMINS), catalog)
    assert counts["primary"] | {"location": None} == {
        "location": None,
        "lock_supported": True,
        "held": len(expected),
        "set_on": len(expected),
        "set_off": 0,
    }
    assert {k: s3_hold(moto_endpoint, bucket, k) for k in expected} == dict.fromkeys(expected, "ON")
    assert {s3_hold(moto_endpoint, bucket, k) for k in vault.store.list(f"backups/{free}/")} == {"NONE"}
    # Idempotent: a second run changes nothing.
    assert apply_object_holds(vault, [], book.list(ADMINS), catalog)["primary"]["set_on"] == 0

    chunk = sorted(k for k in expected if "/streams/" in k)[0]
    before = vault.store.get(chunk)
    with pytest.raises(ObjectLockedError) as err:
        vault.store.destroy(chunk)
    assert chunk in str(err.value) and "legal hold" in str(err.value) and "\n" not in str(err.value)
    assert vault.store.get(chunk) == before
    # Nobody else can remove it either: S3 itself refuses to delete the held version.
    client = s3_client(moto_endpoint)
    version = client.head_object(Bucket=bucket, Key=f"dr/{chunk}")["VersionId"]
    with pytest.raises(client.exceptions.ClientError):
        client.delete_object(Bucket=bucket, Key=f"dr/{chunk}", VersionId=version)

    with pytest.raises(SigningKeyError) as err:
        book.release(hold.id, reason="settled", admin_key=INTRUDER, admins=ADMINS)
    assert INTRUDER.fingerprint in str(err.value) and "signing.admin_public_keys" in str(err.value)
    assert book.get(hold.id, ADMINS).active

    released = book.release(hold.id, reason="case settled", admin_key=ADMIN, admins=ADMINS)
    assert not released.active and released.release_reason == "case settled"
    assert ADMIN.fingerprint in released.released_by
    assert book.active(ADMINS) == [] and book.get(hold.id, ADMINS).released_at == released.released_at
    counts = apply_object_holds(vault, [], book.list(ADMINS), catalog)
    assert (counts["primary"]["held"], counts["primary"]["set_on"], counts["primary"]["set_off"]) == (
        0,
        0,
        len(expected),
    )
    assert {k: s3_hold(moto_endpoint, bucket, k) for k in expected} == dict.fromkeys(expected, "OFF")
    vault.store.destroy(chunk)
    listing = client.list_object_versions(Bucket=bucket, Prefix=f"dr/{chunk}")
    assert listing.get("Versions", []) == [] and listing.get("DeleteMarkers", []) == []

    with pytest.raises(HoldError) as err:
        book.release(hold.id, reason="again", admin_key=ADMIN, admins=ADMINS)
    assert f"hold {hold.id} ('lawsuit-acme') was already released" in str(err.value)

    actions = [(e["action"], e["subject"]) for e in AuditTrail(vault.store).entries()]
    assert actions == [("hold.create", hold.id), ("hold.release", hold.id)]
    entries = AuditTrail(vault.store).entries()
    assert entries[0]["details"]["backups"] == 1 and entries[1]["signer"] == ADMIN.public_b64


def forged_release(store, hold_id: str, signer: SigningKey | None, **changes) -> None:
    import hashlib

    record = {
        "format": "genesis-dr-hold-release",
        "version": 1,
        "hold": hold_id,
        "hold_sha256": hashlib.sha256(store.get(f"holds/{hold_id}.json")).hexdigest(),
        "reason": "forged",
        "released_by": "mallory@evil",
        "released_at": "2026-01-01T00:00:00.000Z",
        "signer": (signer or ADMIN).public_b64,
    } | changes
    record["sig"] = signer.sign(canonical(record)) if signer else "AAAA" + record["signer"][4:]
    store.put(f"holds/{hold_id}.release.json", json.dumps(record).encode())


@pytest.fixture
def local_vault(tmp_path):
    config = parse_stack(
        {
            "stack": "holds",
            "vault": {"type": "local", "path": str(tmp_path / "vault")},
            "sources": [{"name": "app", "kind": "files", "root": str(tree(tmp_path / "app", "local"))}],
        },
        "test stack",
    )
    vault = config.vault.open(create=True)
    first = backup_source(vault, KEYS, engine_for(config.source("app"))).id
    return config, vault, first


@pytest.mark.parametrize(
    ("signer", "changes", "why"),
    [
        (INTRUDER, {}, f"its signer {INTRUDER.fingerprint} is not an admin key of this stack"),
        (None, {}, "its signature does not verify"),
        (ADMIN, {"hold_sha256": "0" * 64}, "it releases another version of the hold record"),
    ],
    ids=["not-an-admin", "bad-signature", "other-record"],
)
def test_a_forged_release_is_ignored_and_a_genuine_one_still_counts(local_vault, signer, changes, why):
    config, vault, backup_id = local_vault
    book = HoldBook(vault.store)
    hold = book.create(
        name="audit",
        reason="SOX audit 2026",
        scope=HoldScope(sources=["app"]),
        contact="cfo@example.com",
        creator="ops@host",
        catalog=read_catalog(vault, config),
        signer=HOST,
    )
    forged_release(vault.store, hold.id, signer, **changes)
    assert [h.id for h in book.active(ADMINS)] == [hold.id]
    assert [h.id for h in HoldBook(vault.store, trusted={HOST.fingerprint: HOST.public_b64}).active(ADMINS)] == [
        hold.id
    ]
    assert book.ignored == [f"holds/{hold.id}.release.json: ignored ({why}); hold {hold.id} stays active"]
    assert book.get(hold.id, ADMINS).active
    # The forged record took the plain name; the admin's release is written beside it and counts.
    released = book.release(hold.id, reason="audit closed", admin_key=ADMIN, admins=ADMINS)
    assert vault.store.exists(f"holds/{hold.id}.release.1.json")
    assert book.get(hold.id, ADMINS).released_at == released.released_at
    assert book.active(ADMINS) == []
    # A local vault has no provider locks: reported, not an error.
    counts = apply_object_holds(vault, [], book.list(ADMINS), read_catalog(vault, config))
    assert counts["primary"]["lock_supported"] is False and counts["primary"]["set_on"] == 0


def test_a_scope_matching_nothing_unknown_ids_and_an_altered_record_are_refused(local_vault):
    config, vault, backup_id = local_vault
    book = HoldBook(vault.store)
    catalog = read_catalog(vault, config)
    with pytest.raises(HoldError) as err:
        book.create(
            name="x",
            reason="y",
            scope=HoldScope(backup_ids=["backup_20241215_*"]),
            contact="c",
            creator="ops@host",
            catalog=catalog,
            signer=HOST,
        )
    assert str(err.value) == (
        'hold scope {"backup_ids": ["backup_20241215_*"]} matches nothing in the vault (1 backups of sources app); '
        "check the ids/globs, sources, classes and time range ('genesis-dr list' shows the backups)"
    )
    assert list(vault.store.list("holds/")) == []
    for unknown in ("hold-20260101-deadbeef", "../config", ""):
        with pytest.raises(HoldError) as err:
            book.get(unknown, ADMINS)
        assert str(err.value) == f"no hold {unknown}; see 'genesis-dr hold list'"
    with pytest.raises(HoldError):
        book.release("hold-20260101-deadbeef", reason="r", admin_key=ADMIN, admins=ADMINS)

    hold = book.create(
        name="x",
        reason="y",
        scope=HoldScope(backup_ids=[backup_id]),
        contact="c",
        creator="o",
        catalog=catalog,
        signer=HOST,
    )
    path = Path(config.vault.path) / "holds" / f"{hold.id}.json"
    record = json.loads(path.read_text())
    record["scope"]["backup_ids"] = ["nothing"]  # narrowing a hold behind the admins' back
    path.write_text(json.dumps(record))
    with pytest.raises(HoldError) as err:
        book.active(ADMINS)
    assert str(err.value).startswith(f"hold {hold.id}: its record holds/{hold.id}.json does not verify (altered")
    # Re-signed by the intruder's own key: valid, but not by a key the stack trusts.
    record["signer"] = INTRUDER.public_b64
    record["sig"] = INTRUDER.sign(canonical(record))
    path.write_text(json.dumps(record))
    assert HoldBook(vault.store).active(ADMINS)[0].scope.backup_ids == ["nothing"]  # nothing trusted: not strict
    assert HoldBook.for_stack(vault.store, SigningConfig(admin_public_keys=ADMINS)).active(ADMINS) != []
    strict = HoldBook.for_stack(
        vault.store, SigningConfig(admin_public_keys=ADMINS, trusted_public_keys=[HOST.public_b64])
    )
    with pytest.raises(HoldError) as err:
        strict.active(ADMINS)
    assert str(err.value).startswith(
        f"hold {hold.id}: its record holds/{hold.id}.json is signed by {INTRUDER.fingerprint}, a key the stack does "
        "not trust"
    )


def test_what_a_hold_covers_includes_the_chain_and_the_log_a_backup_needs():
    def backup(id_, parent=None, pieces=None, source="db", when="2026-01-01T00:00:00Z"):
        return {
            "id": id_,
            "source": source,
            "kind": "postgres",
            "type": "full" if parent is None else "incremental",
            "status": "COMPLETED",
            "started_at": when,
            "ended_at": when,
            "chain": "backup_20260101_000000_00000001",
            "parent": parent,
            "log_pieces": pieces,
            "stored_bytes": 1,
            "storage_class": None,
            "labels": {},
        }

    def piece(seq, when, source="db"):
        return {
            "source": source,
            "seq": seq,
            "first_time": when,
            "last_time": when,
            "key_id": "k1",
            "stored_bytes": 1,
            "partial": False,
        }

    full, inc1, inc2 = (
        "backup_20260101_000000_00000001",
        "backup_20260102_000000_00000002",
        "backup_20260103_000000_00000003",
    )
    catalog = Catalog.from_dict(
        {
            "sources": {"db": {"kind": "postgres", "data_classes": ["financial"]}, "cache": {"kind": "redis"}},
            "backups": [
                backup(full),
                backup(inc1, full, [1, 2], when="2026-01-02T00:00:00Z"),
                backup(inc2, inc1, [3, 4], when="2026-01-03T00:00:00Z"),
                backup("backup_20260103_000000_00000009", source="cache", when="2026-01-03T00:00:00Z"),
            ],
            "pieces": [piece(s, f"2026-01-0{min(s, 5)}T12:00:00Z") for s in range(1, 7)]
            + [piece(1, "2026-01-03T12:00:00Z", "cache")],
        }
    )
    from core.retention.scope import Hold

    def hold(**scope):
        return Hold("hold-20260104-00000001", "n", "r", HoldScope(**scope), "c", "o", "2026-01-04T00:00:00Z")

    backups, pieces = covered_items(catalog, [hold(backup_ids=[inc1])])
    assert [b.id for b in backups] == [full, inc1] and [(p.source, p.seq) for p in pieces] == [("db", 1), ("db", 2)]
    backups, pieces = covered_items(catalog, [hold(data_classes=["financial"], from_time="2026-01-05T00:00:00Z")])
    assert backups == [] and [p.seq for p in pieces] == [5, 6]
    backups, pieces = covered_items(catalog, [hold(sources=["db"], from_time="2026-01-03T00:00:00Z")])
    assert [b.id for b in backups] == [full, inc1, inc2] and [p.seq for p in pieces] == [1, 2, 3, 4, 5, 6]


def test_locks_follow_the_holds_on_every_replica_that_supports_them(s3_stack, tmp_path, moto_endpoint, new_bucket):
    from core.replication.replica import replicate
    from core.storage.s3 import S3Store

    config, vault, bucket, ids = s3_stack
    locked = S3Store(
        bucket=new_bucket(object_lock=True), prefix="dr", region=PRIMARY_REGION, endpoint_url=moto_endpoint
    )
    plain = LocalStore(tmp_path / "replica")
    for name, store in (("locked", locked), ("plain", plain)):
        replicate(vault, store, name=name)
    book = HoldBook(vault.store)
    catalog = read_catalog(vault, config)
    hold = book.create(
        name="h", reason="r", scope=HoldScope(sources=["web"]), contact="c", creator="o", catalog=catalog, signer=HOST
    )
    counts = apply_object_holds(vault, [("locked", locked), ("plain", plain)], book.list(ADMINS), catalog)
    assert set(counts) == {"primary", "locked", "plain"}
    replica_keys = set(locked.list(f"backups/{ids['web']}/"))
    assert counts["locked"]["set_on"] == len(replica_keys | {f"catalog/web/{ids['web']}.json"})
    assert all(locked.legal_hold(k) for k in replica_keys)
    assert counts["plain"] == {
        "location": plain.describe(),
        "lock_supported": False,
        "held": 0,
        "set_on": 0,
        "set_off": 0,
    }
    book.release(hold.id, reason="done", admin_key=ADMIN, admins=ADMINS)
    counts = apply_object_holds(vault, [("locked", locked)], book.list(ADMINS), catalog)
    # The replica holds no started.json (replication copies what a restore reads): its own objects count.
    assert counts["locked"]["set_off"] == len(replica_keys) + 1 == counts["primary"]["set_off"] - 1
    assert not any(locked.legal_hold(k) for k in replica_keys)
