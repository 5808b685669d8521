"""The audit trail: one chain under concurrent writers, tampering detected five ways and named, the alarm and
an admin's acknowledgement (a non-admin's is ignored), on a local vault store and on S3 (moto)."""

from __future__ import annotations

import json
import threading

import pytest

from core.audit import AuditTrail, entry_hash
from core.audit.trail import GENESIS, canonical, entry_key
from core.audit.verify import acknowledge, raise_alarm, unacknowledged_alarm, verify_trail
from core.crypto.signing import SigningKey, fingerprint, generate_signing_key
from core.errors import AuditTrailError, SigningKeyError
from core.replication.replica import replicate_audit
from core.storage.local import LocalStore
from core.storage.s3 import S3Store
from tests.fixtures_cloud import PRIMARY_REGION


def _key() -> SigningKey:
    return SigningKey.from_b64(generate_signing_key()[0])


HOST = _key()
ADMIN = _key()
OTHER = _key()
TRUSTED = {HOST.fingerprint: HOST.public_b64, ADMIN.fingerprint: ADMIN.public_b64}


def _trail(store, n: int = 10) -> AuditTrail:
    trail = AuditTrail(store, HOST)
    for i in range(1, n + 1):
        trail.append("backup", f"app-db-{i}", {"backup_id": f"backup_2026120{i % 10}", "bytes": i * 100})
    return trail


def _keys(report) -> list[str]:
    return [p.key for p in report.problems]


@pytest.fixture
def store(tmp_path):
    return LocalStore(str(tmp_path / "vault"))


def test_an_untouched_trail_verifies_and_chains(store):
    trail = _trail(store, 5)
    entries = trail.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev"] == GENESIS
    assert [e["prev"] for e in entries[1:]] == [entry_hash(e) for e in entries[:-1]]
    assert trail.head() == {"seq": 5, "hash": entry_hash(entries[-1]), "at": entries[-1]["at"]}
    assert store.get(entry_key(3)) == canonical(entries[2]) + b"\n"  # one canonical line per object
    report = verify_trail(store, TRUSTED)
    assert report.ok and report.problems == []
    assert (report.entries, report.signers) == (5, {HOST.fingerprint: 5})
    report.raise_if_failed()


def test_an_edited_entry_is_named(store):
    _trail(store)
    entry = json.loads(store.get(entry_key(4)))
    entry["details"]["bytes"] = 1
    store.put(entry_key(4), canonical(entry) + b"\n", overwrite=True)
    report = verify_trail(store, TRUSTED)
    assert _keys(report) == ["edited:4"]
    assert "entry 4 (backup app-db-4" in report.problems[0].text
    with pytest.raises(AuditTrailError, match=r"failed verification: edited: entry 4 \(backup app-db-4"):
        report.raise_if_failed()


def test_a_deleted_entry_is_named(store):
    _trail(store)
    store.delete(entry_key(5))
    report = verify_trail(store, TRUSTED)
    assert _keys(report) == ["deleted:5"]
    assert report.problems[0].text == "entry 5 of 10 missing: deleted from the trail"


def test_reordered_entries_are_named(store):
    _trail(store)
    third, fourth = store.get(entry_key(3)), store.get(entry_key(4))
    store.put(entry_key(3), fourth, overwrite=True)
    store.put(entry_key(4), third, overwrite=True)
    report = verify_trail(store, TRUSTED)
    assert _keys(report) == ["reordered:3", "reordered:4"]
    assert report.problems[0].text.startswith("audit/entries/000000000003.json holds entry 4 (backup app-db-4)")


def test_an_inserted_entry_is_named(store):
    """A forger without the host key chains a forged entry after entry 3 and shifts the rest up by one: the
    forged entry is named inserted (and untrusted), the shifted ones reordered."""
    trail = _trail(store)
    originals = {seq: store.get(entry_key(seq)) for seq in range(4, 11)}
    for seq, raw in originals.items():
        store.put(entry_key(seq + 1), raw, overwrite=True)
    third = trail.entry(3)
    forged = {
        "version": 1,
        "action": "restore",
        "subject": "app-db",
        "outcome": "success",
        "actor": "mallory@host",
        "details": {},
        "signer": OTHER.public_b64,
        "seq": 4,
        "at": third["at"],
        "prev": entry_hash(third),
    }
    forged["sig"] = OTHER.sign(canonical(forged, with_sig=False))
    store.put(entry_key(4), canonical(forged) + b"\n", overwrite=True)
    lax = verify_trail(store, {})
    assert _keys(lax) == ["inserted:4"] + [f"reordered:{n}" for n in range(5, 12)]
    assert "entry 4 at audit/entries/000000000004.json (restore app-db" in lax.problems[0].text
    assert lax.signers == {HOST.fingerprint: 10, OTHER.fingerprint: 1}
    strict = verify_trail(store, TRUSTED)
    assert _keys(strict)[:2] == ["inserted:4", "untrusted-signer:4"]
    # An object put beside the entries under another name is named too.
    store.put("audit/entries/000000000002.json.bak", b"{}")
    assert "inserted:None" in _keys(verify_trail(store, TRUSTED))


def test_a_deleted_tail_with_a_rewritten_head_is_caught_by_the_replica_head(store, tmp_path):
    trail = _trail(store)
    replica = LocalStore(str(tmp_path / "replica"))
    copied = replicate_audit(store, replica)
    assert copied == {"entries_copied": 10, "head": 10, "diverged": None}
    # The attacker deletes the last two entries and points the head at entry 8: the primary alone looks whole.
    store.delete(entry_key(10))
    store.delete(entry_key(9))
    eighth = trail.entry(8)
    store.put(
        "audit/head.json",
        json.dumps({"seq": 8, "hash": entry_hash(eighth), "at": eighth["at"]}).encode(),
        overwrite=True,
    )
    assert verify_trail(store, TRUSTED).ok
    replica_head = replica.get("audit/head.json")
    report = verify_trail(store, TRUSTED, replicas=[("dr-east", replica)])
    assert _keys(report) == ["deleted:9"]
    assert report.problems[0].text.startswith("entries 9-10 missing: replica dr-east's head records entry 10")
    # The next append takes seq 9 again; the replica's head still names the lost entry 10... and the entry 10
    # that is written later is not the one it saw. The replica keeps its copies (never overwritten).
    trail.append("backup", "app-db", {})
    trail.append("backup", "app-db", {})
    again = verify_trail(store, TRUSTED, replicas=[("dr-east", replica)])
    assert _keys(again) == ["deleted:10"]
    assert "entry 10 recorded by replica dr-east's head" in again.problems[0].text
    assert replicate_audit(store, replica)["diverged"] is not None
    assert replica.get("audit/head.json") == replica_head  # the evidence stays on the replica
    assert replica.get(entry_key(10)) != store.get(entry_key(10))


def test_concurrent_appends_keep_one_chain(tmp_path):
    root = str(tmp_path / "vault")
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            trail = AuditTrail(LocalStore(root), HOST)  # a store of its own, as another process would have
            for i in range(25):
                trail.append("validation", name, {"i": i})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = LocalStore(root)
    entries = AuditTrail(store).entries()
    assert [e["seq"] for e in entries] == list(range(1, 51))
    assert sorted(e["subject"] for e in entries) == ["w0"] * 25 + ["w1"] * 25
    assert AuditTrail(store).head()["seq"] == 50
    assert verify_trail(store, TRUSTED).ok


def test_a_stale_head_is_walked_past_and_repaired(store):
    trail = _trail(store, 3)
    head = store.get("audit/head.json")
    trail.append("drill", "quick", {})
    store.put("audit/head.json", head, overwrite=True)  # a writer killed between its entry and its head
    assert verify_trail(store, TRUSTED).ok
    entry = trail.append("drill", "quick", {})
    assert entry["seq"] == 5 and entry["prev"] == entry_hash(trail.entry(4))
    assert trail.head()["seq"] == 5


def test_alarm_needs_an_admins_acknowledgement(store):
    admins = [ADMIN.public_b64]
    _trail(store, 4)
    store.delete(entry_key(2))
    report = verify_trail(store, TRUSTED, admins=admins)
    assert _keys(report) == ["deleted:2"]
    raise_alarm(store, report, HOST)
    alarm = unacknowledged_alarm(store, admins)
    assert [p["kind"] for p in alarm["problems"]] == ["deleted"]
    last = AuditTrail(store).entries()[-1]
    assert (last["action"], last["outcome"], last["details"]["problems"]) == ("audit.alarm", "failure", ["deleted:2"])
    with pytest.raises(SigningKeyError, match="not listed in signing.admin_public_keys"):
        acknowledge(store, OTHER, "looked at it", admins)
    # An acknowledgement written by hand with a key that is not an admin's is ignored.
    forged = {"version": 1, "at": "x", "reason": "r", "problems": ["deleted:2"], "admin": OTHER.public_b64}
    forged["sig"] = OTHER.sign(canonical(forged, with_sig=False))
    store.create("audit/acks/20260101T000000000000Z-forged.json", json.dumps(forged).encode())
    assert unacknowledged_alarm(store, admins) is not None
    # A tampered admin acknowledgement (problems widened after signing) is ignored too.
    tampered = dict(forged, admin=ADMIN.public_b64, sig=ADMIN.sign(b"something else"))
    store.create("audit/acks/20260101T000000000001Z-tampered.json", json.dumps(tampered).encode())
    assert unacknowledged_alarm(store, admins) is not None
    assert unacknowledged_alarm(store) is not None  # no admins given: nothing counts
    ack = acknowledge(store, ADMIN, "entry 2 deleted by a test; restored nothing", admins)
    assert ack["problems"] == ["deleted:2"] and fingerprint(ack["admin"]) == ADMIN.fingerprint
    assert unacknowledged_alarm(store, admins) is None
    after = verify_trail(store, TRUSTED, admins=admins)
    assert after.ok and [p.key for p in after.acknowledged] == ["deleted:2"]
    assert AuditTrail(store).entries()[-1]["action"] == "audit.acknowledge"
    assert AuditTrail(store).entries()[-1]["signer"] == ADMIN.public_b64
    # A new problem is not covered by the old acknowledgement.
    store.delete(entry_key(4))
    assert _keys(verify_trail(store, TRUSTED, admins=admins)) == ["deleted:4"]


def test_details_are_plain_json_and_bounded(store, tmp_path):
    trail = AuditTrail(store, HOST)
    entry = trail.append("restore", "app-db", {"ids": ("a", "b"), "took": 1.5, "path": tmp_path})
    assert entry["details"] == {"ids": ["a", "b"], "took": 1.5, "path": str(tmp_path)}
    entry = trail.append("restore", "app-db", {"when": 3, "big": "x" * 20_000})
    assert entry["details"] == {"truncated": True, "keys": ["big", "when"]}
    assert verify_trail(store, TRUSTED).ok
    with pytest.raises(ValueError, match="audit action 'Backup Run'"):
        trail.append("Backup Run", "x", {})
    with pytest.raises(AuditTrailError, match="read-only"):
        AuditTrail(store).append("backup", "x", {})


def test_trail_on_s3(moto_endpoint, new_bucket):
    store = S3Store(bucket=new_bucket(), prefix="dr/audit", region=PRIMARY_REGION, endpoint_url=moto_endpoint)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            trail = AuditTrail(store, HOST)
            for i in range(6):
                trail.append("backup", name, {"i": i})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [e["seq"] for e in AuditTrail(store).entries()] == list(range(1, 13))
    assert verify_trail(store, TRUSTED).ok
    store.delete(entry_key(7))
    assert _keys(verify_trail(store, TRUSTED)) == ["deleted:7"]
