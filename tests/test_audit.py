"""The audit trail: one chain under concurrent writers, tampering detected five ways and named, the alarm and
an admin's acknowledgement (a non-admin's is ignored), on a local vault store and on S3 (moto)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from core.audit import AuditTrail, PendingQueue, entry_hash
from core.audit.trail import GENESIS, canonical, entry_key
from core.audit.verify import (
    acknowledge,
    raise_alarm,
    read_checkpoint,
    unacknowledged_alarm,
    verify_recent,
    verify_trail,
)
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


def append_from_two_writers(trail_for: Callable[[], AuditTrail], action: str, each: int) -> None:
    """Two threads (subjects w0 and w1) append ``each`` entries apiece at once; an error in either fails the test."""
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            trail = trail_for()
            for i in range(each):
                trail.append(action, name, {"i": i})
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_concurrent_appends_keep_one_chain(tmp_path):
    root = str(tmp_path / "vault")
    # A store of its own per writer, as another process would have.
    append_from_two_writers(lambda: AuditTrail(LocalStore(root), HOST), "validation", 25)
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
    append_from_two_writers(lambda: AuditTrail(store, HOST), "backup", 6)
    assert [e["seq"] for e in AuditTrail(store).entries()] == list(range(1, 13))
    assert verify_trail(store, TRUSTED).ok
    store.delete(entry_key(7))
    assert _keys(verify_trail(store, TRUSTED)) == ["deleted:7"]


# -- the pending queue: entries the vault could not take ------------------------------------------------------


@pytest.fixture
def switchable(tmp_path):
    """A vault directory behind a bind mount that the test turns read-only and back (a read-only replica mount,
    a full or unreachable store), so the store keeps one location throughout."""
    real = tmp_path / "real-vault"
    real.mkdir()
    mount = tmp_path / "vault-mount"
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(real), str(mount)], check=True)

    def writable(on: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'rw' if on else 'ro'},bind", str(mount)], check=True)

    yield mount, writable
    subprocess.run(["umount", str(mount)], check=False)


def test_an_entry_the_vault_cannot_take_is_queued_and_appended_late(switchable, tmp_path):
    mount, writable = switchable
    state = str(tmp_path / "state")
    store = LocalStore(str(mount))
    trail = AuditTrail(store, HOST, pending_root=state)
    trail.append("backup", "full", {"backup_id": "b1"})
    writable(False)
    with pytest.raises(AuditTrailError, match=r"the entry restore app-db \(success\) was not written \(vault local:"):
        trail.append("restore", "app-db", {"backup_id": "b1"})
    with pytest.raises(AuditTrailError, match=r"queued on this host as .*audit-pending/loc-[0-9a-f]{16}/\d{8}T\d{12}Z"):
        trail.append("failover", "east", {"epoch": 1}, outcome="failure")
    queue = PendingQueue(store, state)
    [first, second] = queue.files()
    assert oct(first.stat().st_mode & 0o777) == "0o600"
    assert (queue.dir / "LOCATION").read_text() == f"local:{mount}\n"
    queued = json.loads(first.read_bytes())
    assert (queued["action"], queued["subject"], queued["signer"]) == ("restore", "app-db", HOST.public_b64)
    # The queue is counted by every verification made on this host (not a failure: nothing is silent).
    report = verify_trail(store, TRUSTED)
    assert report.ok and report.pending_on_host == 0  # queued in this test's own state dir, not the default one
    assert len(AuditTrail(store).entries()) == 1

    # A trail of another key leaves them for a run with the key that signed them.
    writable(True)
    AuditTrail(store, ADMIN, pending_root=state).append("audit.acknowledge", "audit trail", {})
    assert queue.count() == 2
    entry = trail.append("drill", "quick", {})
    assert queue.count() == 0
    entries = AuditTrail(store).entries()
    assert [(e["seq"], e["action"], e.get("late", False)) for e in entries] == [
        (1, "backup", False),
        (2, "audit.acknowledge", False),
        (3, "restore", True),
        (4, "failover", True),
        (5, "drill", False),
    ]
    assert entry == entries[4]
    late = entries[2]
    assert (late["at"], late["queued_at"]) == (queued["at"], queued["at"])
    assert late["details"] == {"backup_id": "b1"} and late["signer"] == HOST.public_b64
    assert "Read-only file system" in late["queued_because"]
    assert entries[3]["outcome"] == "failure"
    assert verify_trail(store, TRUSTED).ok


def test_a_queued_entry_altered_on_the_host_is_rejected_and_recorded(switchable, tmp_path):
    mount, writable = switchable
    state = str(tmp_path / "state")
    store = LocalStore(str(mount))
    trail = AuditTrail(store, HOST, pending_root=state)
    writable(False)
    with pytest.raises(AuditTrailError):
        trail.append("restore", "app-db", {"backup_id": "b1"}, outcome="failure")
    queue = PendingQueue(store, state)
    [path] = queue.files()
    record = json.loads(path.read_bytes())
    record["outcome"] = "success"  # someone on the host rewrites what happened
    path.write_text(json.dumps(record))
    writable(True)
    trail.append("backup", "full", {})
    entries = AuditTrail(store).entries()
    assert [(e["action"], e["outcome"]) for e in entries] == [("audit.late-rejected", "failure"), ("backup", "success")]
    [rejected] = queue.rejected()
    assert entries[0]["details"]["file"] == str(rejected)
    assert rejected.name == path.name.removesuffix(".json") + ".json.rejected"
    assert queue.count() == 0


def test_verify_counts_the_entries_pending_on_this_host(switchable):
    """Through the default state directory (GENESIS_DR_STATE_DIR), as ``audit verify`` sees it."""
    mount, writable = switchable
    store = LocalStore(str(mount))
    trail = AuditTrail(store, HOST)
    trail.append("backup", "full", {})
    writable(False)
    for subject in ("a", "b"):
        with pytest.raises(AuditTrailError, match=r"\((1|2) pending\)"):
            trail.append("monitor", subject, {})
    writable(True)
    report = verify_trail(store, TRUSTED)
    assert report.ok and (report.pending_on_host, report.rejected_on_host) == (2, 0)
    assert "PENDING on this host: 2 entries queued" in report.text()
    assert report.to_dict()["pending_on_host"] == 2
    trail.append("backup", "full", {})
    assert verify_trail(store, TRUSTED).pending_on_host == 0
    assert [e["subject"] for e in AuditTrail(store).entries()] == ["full", "a", "b", "full"]


# -- the verified checkpoint ------------------------------------------------------------------------------------


def test_retention_verifies_from_the_checkpoint_and_the_daily_verify_everything(store):
    trail = _trail(store, 6)
    accept = [HOST.public_b64]
    first = verify_recent(store, TRUSTED, accept=accept, checkpoint_signer=HOST)
    assert first.ok and first.scope == "full (no verified checkpoint yet)"
    checkpoint = json.loads(store.get("audit/verified.json"))
    assert set(checkpoint) == {"seq", "hash", "at", "signer", "sig"}
    assert (checkpoint["seq"], checkpoint["hash"]) == (6, entry_hash(trail.entry(6)))
    assert read_checkpoint(store, accept)[0] == checkpoint
    for i in range(3):
        trail.append("backup", f"later-{i}", {})
    recent = verify_recent(store, TRUSTED, accept=accept, checkpoint_signer=HOST)
    assert recent.ok and recent.scope.startswith("since checkpoint 6 (verified ")
    assert recent.entries == 9 and recent.signers == {HOST.fingerprint: 4}  # entries 6-9 read, 1-5 only listed
    assert json.loads(store.get("audit/verified.json"))["seq"] == 9

    # An entry edited before the checkpoint is the daily full verification's to find; a deleted one is a gap in
    # the listing, which the recent check still sees.
    entry = json.loads(store.get(entry_key(2)))
    entry["details"]["bytes"] = 1
    store.put(entry_key(2), canonical(entry) + b"\n", overwrite=True)
    assert verify_recent(store, TRUSTED, accept=accept).ok
    assert _keys(verify_trail(store, TRUSTED)) == ["edited:2"]
    store.delete(entry_key(4))
    assert _keys(verify_recent(store, TRUSTED, accept=accept)) == ["deleted:4"]


def test_a_forged_or_stale_checkpoint_forces_a_full_verification(store):
    trail = _trail(store, 5)
    accept = [HOST.public_b64]
    verify_trail(store, TRUSTED, checkpoint_signer=HOST)
    assert json.loads(store.get("audit/verified.json"))["seq"] == 5
    for i in range(2):
        trail.append("backup", f"later-{i}", {})
    # An attacker edits entry 3 and moves the checkpoint past it, signing with a key of their own.
    entry = json.loads(store.get(entry_key(3)))
    entry["details"]["bytes"] = 1
    store.put(entry_key(3), canonical(entry) + b"\n", overwrite=True)
    forged = {"seq": 7, "hash": entry_hash(trail.entry(7)), "at": "2026-12-06T00:00:00.000000Z"}
    forged["signer"] = OTHER.public_b64
    forged["sig"] = OTHER.sign(canonical(forged, with_sig=False))
    store.put("audit/verified.json", json.dumps(forged).encode(), overwrite=True)
    report = verify_recent(store, TRUSTED, accept=accept, checkpoint_signer=HOST)
    assert report.scope == (
        f"full (audit/verified.json is signed by {OTHER.fingerprint}, a key not accepted for checkpoints)"
    )
    assert _keys(report) == ["edited:3", "checkpoint:7"]
    assert "is signed by " + OTHER.fingerprint in report.problems[1].text
    assert json.loads(store.get("audit/verified.json")) == forged  # a failed verification moves no checkpoint

    # Unsigned (a checkpoint without the host's signature): full, and named.
    unsigned = {"seq": 7, "hash": forged["hash"], "at": forged["at"], "signer": HOST.public_b64}
    store.put("audit/verified.json", json.dumps(unsigned).encode(), overwrite=True)
    report = verify_recent(store, TRUSTED, accept=accept)
    assert report.scope.startswith("full (audit/verified.json (entry 7) is unsigned or its signature does not verify")
    assert _keys(report) == ["edited:3", "checkpoint:None"]


def test_a_checkpoint_whose_entry_was_replaced_forces_a_full_verification(store):
    """The host key signed both the checkpoint and a replacement of the entry it names (a key thief rewriting
    history from entry 4 on): the checkpoint no longer matches, everything is verified, the mismatch named."""
    trail = _trail(store, 5)
    accept = [HOST.public_b64]
    verify_trail(store, TRUSTED, checkpoint_signer=HOST)
    trail.append("backup", "later", {})
    fourth = trail.entry(4)
    replaced = {k: v for k, v in fourth.items() if k != "sig"} | {"subject": "rewritten"}
    replaced["sig"] = HOST.sign(canonical(replaced, with_sig=False))
    store.put(entry_key(4), canonical(replaced) + b"\n", overwrite=True)
    fifth = {k: v for k, v in trail.entry(5).items() if k != "sig"} | {"prev": entry_hash(replaced)}
    fifth["sig"] = HOST.sign(canonical(fifth, with_sig=False))
    store.put(entry_key(5), canonical(fifth) + b"\n", overwrite=True)
    report = verify_recent(store, TRUSTED, accept=accept, checkpoint_signer=HOST)
    assert report.scope == "full (the checkpoint does not match entry 5)"
    assert _keys(report) == ["checkpoint:5", "edited:5"]
    assert report.problems[0].text.startswith("entry 5 is not the entry verified at")


def test_a_claim_left_by_a_killed_run_is_taken_over_later(switchable, tmp_path):
    """A run killed between claiming a queued entry and appending it: after an hour the claim is stale and the
    next run appends the entry; a fresh claim (another run draining now) is left alone."""
    mount, writable = switchable
    state = str(tmp_path / "state")
    store = LocalStore(str(mount))
    trail = AuditTrail(store, HOST, pending_root=state)
    writable(False)
    for subject in ("old", "busy"):
        with pytest.raises(AuditTrailError):
            trail.append("failover", subject, {})
    queue = PendingQueue(store, state)
    old, busy = queue.files()
    old.rename(old.with_name(f"{old.name}.claimed-{int(time.time()) - 3700}-4242-abcd"))
    busy.rename(busy.with_name(f"{busy.name}.claimed-{int(time.time())}-4343-abcd"))
    writable(True)
    trail.append("backup", "full", {})
    assert [(e["subject"], e.get("late", False)) for e in AuditTrail(store).entries()] == [
        ("old", True),
        ("full", False),
    ]
    assert [p.name.split(".claimed-")[0] for p in queue.dir.glob("*.claimed-*")] == [busy.name]
