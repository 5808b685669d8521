"""The retention, hold, erase and audit-verify flows through Prefect's test harness (a real API), on a local
vault with real backups of a files source: the retention run deletes what its plan says (a signed certificate
each) and keeps the rest; a dry run deletes nothing; a hold keeps its backup until an admin releases it; an
erasure request is applied by id; a tampered audit trail fails verification and stops deletions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.crypto.signing import SigningConfig, generate_signing_key
from core.sources import FilesSourceConfig
from tests.test_engine_files import write

ADMIN_ENV = "GDR_TEST_RETENTION_ADMIN_KEY"


@pytest.fixture
def admin(monkeypatch) -> str:
    """An admin key for this test (read from the environment where the flow runs: this process); its public half."""
    private, public = generate_signing_key()
    monkeypatch.setenv(ADMIN_ENV, private)
    return public


def retention_stack(
    make_stack, tmp_path: Path, admin_public: str, *, classes: list[str] | None = None, vault=None, **retention
):
    root = tmp_path / "app"
    write(root / "conf/app.ini", b"[app]\nv = 1\n")
    write(root / "users/alice@example.com.json", b'{"name": "Alice"}')
    policy = {"sources": {"app-files": {"full": {"keep_last": 1}}}} | retention
    # Listing an admin makes verification strict (only listed signers): this host's key is listed as a host's.
    host = SigningConfig().host_key().public_b64
    return make_stack(
        [FilesSourceConfig(name="app-files", root=str(root), data_classes=classes or [])],
        retention=policy,
        signing={
            "admin_key_from": f"env:{ADMIN_ENV}",
            "admin_public_keys": [admin_public],
            "trusted_public_keys": [host],
        },
        vault=vault,
    )


def fulls(stack, n: int) -> list[str]:
    from flows.backup import backup

    return [backup(stack=stack.name, backup_type="full")[0]["id"] for _ in range(n)]


def listed(stack) -> list[str]:
    return sorted(m.id for m in stack.vault().list_backups())


def actions(stack, *prefixes: str) -> list[str]:
    from core.audit.trail import AuditTrail

    return [e["action"] for e in AuditTrail(stack.config.vault.store()).entries() if e["action"].startswith(prefixes)]


def test_retention_deletes_what_the_plan_says_keeps_the_held_and_the_newest(make_stack, tmp_path, admin):
    from core.errors import HoldError
    from core.retention.certificate import certificates, verify_certificate
    from flows.hold import hold
    from flows.retention import retention

    stack = retention_stack(make_stack, tmp_path, admin)
    oldest, middle, newest = fulls(stack, 3)

    # The dry run plans the two older fulls away and touches nothing.
    planned = retention(stack=stack.name, dry_run=True)
    assert planned["dry_run"] is True and planned["deleted"] == [], planned
    assert sorted(d["item"] for d in planned["plan"]["decisions"] if d["action"] == "delete") == [oldest, middle]
    assert listed(stack) == [oldest, middle, newest]

    # A hold on the oldest: the run deletes only the middle one, with a signed certificate.
    held = hold(
        stack=stack.name,
        action="create",
        name="case-17",
        reason="litigation",
        scope=json.dumps({"backup_ids": [oldest]}),
        contact="legal@example.com",
    )
    assert held["active"] is True and held["id"].startswith("hold-") and held["creator"], held
    assert held["object_holds"]["primary"]["lock_supported"] is False  # a local vault keeps the record only
    report = retention(stack=stack.name)
    assert report["deleted"] == [middle] and len(report["certificates"]) == 1, report
    assert listed(stack) == [oldest, newest]
    assert not (stack.vault_path / "backups" / middle).exists()
    (cert,) = certificates(stack.config.vault.store())
    assert cert["subject"] == middle and cert["id"] == report["certificates"][0]
    verify_certificate(cert, {})  # signed by this host's key, unaltered
    assert "held by" in report["text"] and held["id"] in report["text"], report["text"]

    # Refused in one line (exit 29): a scope that matches nothing, an unknown hold.
    with pytest.raises(HoldError, match=r"matches nothing in the vault \(2 backups of sources app-files\)"):
        hold(stack=stack.name, action="create", name="n", reason="r", scope='{"backup_ids": ["backup_1999*"]}',
             contact="c@example.com")  # fmt: skip
    with pytest.raises(HoldError, match=r"no hold hold-20000101-00000000"):
        hold(stack=stack.name, action="release", hold_id="hold-20000101-00000000", reason="done")

    # Released by the admin: the next run deletes the formerly held backup; the newest stays.
    released = hold(stack=stack.name, action="release", hold_id=held["id"], reason="case closed")
    assert released["active"] is False and released["release_reason"] == "case closed"
    assert retention(stack=stack.name)["deleted"] == [oldest]
    assert listed(stack) == [newest]
    assert actions(stack, "hold.", "retention.delete") == [
        "hold.create",
        "retention.delete",
        "hold.release",
        "retention.delete",
    ]


def test_audit_verify_fails_on_a_tampered_entry_and_retention_stops_until_acknowledged(make_stack, tmp_path, admin):
    from core.audit.verify import acknowledge
    from core.crypto.signing import SigningKey
    from core.errors import AuditTrailError, RetentionRefusedError
    from flows.audit import audit_verify
    from flows.hold import hold
    from flows.retention import retention

    stack = retention_stack(make_stack, tmp_path, admin)
    first, second = fulls(stack, 2)
    hold(stack=stack.name, action="create", name="n", reason="r", scope=json.dumps({"backup_ids": [first]}),
         contact="c@example.com")  # fmt: skip
    verified = audit_verify(stack=stack.name)
    assert verified["ok"] is True and verified["problems"] == [], verified

    # An entry edited in the vault: named by its seq, the alarm raised, and retention deletes nothing.
    entries = sorted((stack.vault_path / "audit/entries").glob("*.json"))
    target = next(p for p in entries if json.loads(p.read_text())["action"] == "hold.create")
    seq = json.loads(target.read_text())["seq"]
    entry = json.loads(target.read_text())
    entry["details"]["name"] = "nothing to see"
    target.write_text(json.dumps(entry))
    with pytest.raises(AuditTrailError, match=rf"entry {seq}\b") as failed:
        audit_verify(stack=stack.name)
    assert failed.value.report["ok"] is False
    assert (stack.vault_path / "audit/alarm.json").exists()
    with pytest.raises(RetentionRefusedError, match=r"audit"):
        retention(stack=stack.name)
    assert listed(stack) == sorted([first, second])

    # Acknowledged by the admin: verification reports it as acknowledged, and retention deletes again.
    import os

    acknowledge(stack.config.vault.store(), SigningKey.from_b64(os.environ[ADMIN_ENV]), "restored from paper", [admin])
    again = audit_verify(stack=stack.name)
    # The edit is named twice at its seq: its signature fails, and the daily verification's checkpoint (written
    # by the passing run above, at what was then the head) no longer matches it.
    assert again["ok"] is True, again
    assert sorted((p["seq"], p["kind"]) for p in again["acknowledged"]) == [(seq, "checkpoint"), (seq, "edited")], again
    hold_id = next(p for p in (stack.vault_path / "holds").glob("hold-*.json")).stem
    hold(stack=stack.name, action="release", hold_id=hold_id, reason="done")
    assert retention(stack=stack.name)["deleted"] == [first]


def test_erase_flow_applies_a_recorded_request_by_id(make_stack, tmp_path, admin):
    from core.retention.erasure import record_erasure
    from flows.erase import erase

    rule = {"erasure": {"app-files": {"paths": ["users/{subject}.json"]}}}
    stack = retention_stack(make_stack, tmp_path, admin, classes=["personal"], **rule)
    (only,) = fulls(stack, 1)
    from tasks.run_stack import run_stack

    config = run_stack(stack.name).config
    request = record_erasure(config, "alice@example.com", admin_key=config.signing.admin_key("erase"))
    result = erase(stack=stack.name, request_id=request.id)
    # A fresh backup is within the GDPR maximum: kept, the erasure re-applied on every restore of it.
    assert result["shredded"] == [] and [k["id"] for k in result["kept"]] == [only], result
    assert "erasure re-applied on restore" in result["kept"][0]["why"]
    assert listed(stack) == [only]
    assert actions(stack, "erasure.") == ["erasure.request", "erasure.apply"]
    # The subject never reaches the vault in clear (the sealed request, the audit trail, the apply record).
    for path in stack.vault_path.rglob("*.json"):
        assert b"alice@example.com" not in path.read_bytes(), path


def test_hold_flow_locks_every_object_on_an_object_lock_bucket_until_the_release(
    make_stack, tmp_path, admin, moto_endpoint, new_bucket
):
    from flows.hold import hold
    from flows.retention import retention
    from tests.fixtures_cloud import s3_client

    bucket = new_bucket(object_lock=True)
    vault = {"type": "s3", "bucket": bucket, "prefix": "dr", "region": "us-west-2", "endpoint_url": moto_endpoint}
    stack = retention_stack(make_stack, tmp_path, admin, vault=vault)
    first, second = fulls(stack, 2)
    client = s3_client(moto_endpoint)

    def locks(backup_id: str) -> dict[str, str]:
        """What S3 itself says of each object of the backup (independent of the code under test)."""
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="dr/").get("Contents", [])]
        out = {}
        for key in keys:
            if not (key.startswith(f"dr/backups/{backup_id}/") or key.endswith(f"/{backup_id}.json")):
                continue
            try:
                out[key] = client.get_object_legal_hold(Bucket=bucket, Key=key)["LegalHold"].get("Status", "NONE")
            except client.exceptions.ClientError as exc:
                assert exc.response["Error"]["Code"] == "NoSuchObjectLockConfiguration"
                out[key] = "NONE"
        return out

    held = hold(stack=stack.name, action="create", name="case-9", reason="audit", scope=json.dumps({"backup_ids": [first]}),
                contact="legal@example.com")  # fmt: skip
    objects = locks(first)
    assert objects and set(objects.values()) == {"ON"}, objects
    assert set(locks(second).values()) == {"NONE"}
    counts = held["object_holds"]["primary"]
    assert (counts["lock_supported"], counts["held"], counts["set_on"]) == (True, len(objects), len(objects)), counts
    # Retention keeps the held backup (and the newest): nothing is deleted, nothing fails on a lock.
    report = retention(stack=stack.name)
    assert report["deleted"] == [] and report["skipped_locked"] == [], report

    released = hold(stack=stack.name, action="release", hold_id=held["id"], reason="closed")
    assert released["object_holds"]["primary"]["set_off"] == len(objects)
    assert set(locks(first).values()) == {"OFF"}
    assert retention(stack=stack.name)["deleted"] == [first]
    assert locks(first) == {}
