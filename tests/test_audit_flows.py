"""Audit entries written by the flows, through Prefect's test harness: a backup (channels or not), a restore,
a run whose entry cannot be written fails, and replication carries the trail and its head (never a backup that
retention is deleting)."""

from __future__ import annotations

import json

import pytest

from core.audit import AuditTrail, entry_hash
from core.audit.trail import canonical
from core.audit.verify import verify_trail
from core.crypto.signing import SigningKey, generate_signing_key, load_signing_key
from core.errors import AuditTrailError
from core.repository.manifest import COMPLETED
from core.sources import FilesSourceConfig
from tests.test_flows import files_tree, tree_state


def _trail(handle) -> list[dict]:
    return AuditTrail(handle.config.vault.store()).entries()


def test_a_backup_and_a_restore_each_write_one_entry(make_stack, tmp_path):
    from flows.backup import backup
    from flows.restore import restore

    files = files_tree(tmp_path / "app")
    stack = make_stack([FilesSourceConfig(name="app-files", root=str(files))])
    [result] = backup(stack=stack.name)
    [entry] = _trail(stack)  # the stack has no notification channels: recorded all the same
    assert (entry["seq"], entry["action"], entry["subject"], entry["outcome"]) == (1, "backup", "full", "success")
    assert entry["details"]["details"]["backups"] == [f"app-files: {result['id']}"]
    assert entry["signer"] == load_signing_key(None, "host key").public_b64  # the host's default key

    target = tmp_path / "restored"
    restore(source="app-files", stack=stack.name, target={"root": str(target)})
    assert tree_state(target) == tree_state(files)
    restore(source="app-files", stack=stack.name, target={"root": str(tmp_path / "dry")}, dry_run=True)
    entries = _trail(stack)
    assert [(e["seq"], e["action"], e["outcome"]) for e in entries] == [
        (1, "backup", "success"),
        (2, "restore", "success"),
    ]
    restored = entries[1]["details"]["restored"]["app-files"]
    assert (restored["backup_id"], restored["target"]) == (result["id"], f"files {target}")
    assert entries[1]["details"]["vault"] == "primary"

    # A refused restore (the target holds data) is recorded as a failure, with its one-line error.
    with pytest.raises(Exception, match="already holds data"):
        restore(source="app-files", stack=stack.name, target={"root": str(target)})
    last = _trail(stack)[-1]
    assert (last["seq"], last["action"], last["outcome"]) == (3, "restore", "failure")
    assert "already holds data" in last["details"]["error"]
    assert verify_trail(stack.config.vault.store(), stack.config.signing.trusted()).ok


def test_a_run_whose_entry_cannot_be_written_fails(make_stack, tmp_path):
    """The host key cannot be read: the backup commits, but the run fails naming the audit entry."""
    from flows.backup import backup

    stack = make_stack(
        [FilesSourceConfig(name="app-files", root=str(files_tree(tmp_path / "app")))],
        signing={"key_from": f"file:{tmp_path / 'no-such-key'}"},
    )
    state = backup(stack=stack.name, return_state=True)
    assert state.is_failed()
    with pytest.raises(AuditTrailError, match=r"^the audit entry of backup full \(success\) was not written: "):
        state.result()
    [item] = stack.vault().entries()
    assert item.state == COMPLETED
    assert _trail(stack) == []


def test_replication_copies_the_trail_and_its_head_but_no_backup_being_deleted(make_stack, tmp_path):
    from flows.backup import backup
    from flows.replicate import replicate

    replica_dir = tmp_path / "replica"
    stack = make_stack(
        [FilesSourceConfig(name="app-files", root=str(files_tree(tmp_path / "app")))],
        replicas=[{"name": "dr-disk", "vault": {"type": "local", "path": str(replica_dir)}}],
    )
    [first] = backup(stack=stack.name)
    [second] = backup(stack=stack.name)
    primary = stack.config.vault.store()
    # Retention is deleting the second backup (its intent marker is on the primary): never copied.
    primary.create(f"retention/deleting/{second['id']}.json", json.dumps({"reason": "test"}).encode())
    [report] = replicate(stack=stack.name)
    assert report["skipped_deleting"] == [second["id"]]
    assert report["backups_copied"] == 1
    replica = stack.config.vault_named("dr-disk").store()
    assert replica.children("backups/") == [first["id"]]
    assert (report["audit_entries_copied"], report["audit_head"]) == (2, 2)
    assert json.loads(replica.get("audit/head.json")) == json.loads(primary.get("audit/head.json"))
    assert [e["action"] for e in AuditTrail(replica).entries()] == ["backup", "backup"]
    trusted = stack.config.signing.trusted()
    assert verify_trail(primary, trusted, replicas=[("dr-disk", replica)]).ok
    # The primary loses its last entry and its head is wound back: the replica's head names the loss.
    primary.delete("audit/entries/000000000002.json")
    first_entry = AuditTrail(primary).entry(1)
    wound_back = {"seq": 1, "hash": entry_hash(first_entry), "at": first_entry["at"]}
    primary.put("audit/head.json", json.dumps(wound_back).encode(), overwrite=True)
    assert verify_trail(primary, trusted).ok  # the primary alone looks whole
    report = verify_trail(primary, trusted, replicas=[("dr-disk", replica)])
    assert [p.key for p in report.problems] == ["deleted:2"]


def test_a_restore_whose_entry_cannot_be_written_stands(make_stack, tmp_path):
    """The host key cannot be read (the entry cannot even be signed, so nothing is queued): the backup run fails
    (its data committed), the restore of that backup is done and verified and its run ends Completed, the error
    logged."""
    from flows.backup import backup
    from flows.restore import restore

    files = files_tree(tmp_path / "app")
    stack = make_stack(
        [FilesSourceConfig(name="app-files", root=str(files))],
        signing={"key_from": f"file:{tmp_path / 'no-such-key'}"},
    )
    assert backup(stack=stack.name, return_state=True).is_failed()
    target = tmp_path / "restored"
    state = restore(source="app-files", stack=stack.name, target={"root": str(target)}, return_state=True)
    assert state.is_completed() and state.result()["report"]["source"] == "app-files"
    assert tree_state(target) == tree_state(files)
    assert _trail(stack) == []


def test_retention_verifies_from_the_checkpoint_and_a_forged_one_forces_everything(tmp_path):
    from core.audit.verify import verify_trail
    from core.errors import RetentionRefusedError
    from core.retention.run import run_retention
    from core.stack import parse_stack
    from tests.test_retention_run import KEEP_LAST_ONE, key_file, stack_data, take

    host_public, host_file = key_file(tmp_path / "host.key")
    signing = {"key_from": f"file:{host_file}", "trusted_public_keys": [host_public]}
    config = parse_stack(stack_data(tmp_path, KEEP_LAST_ONE, signing), "test stack")
    store = config.vault.store()
    trail = AuditTrail(store, config.signing.host_key())
    app = take(config, "app", 2)
    for i in range(3):
        trail.append("backup", f"b{i}", {"n": i})
    report = run_retention(config, say=print)
    assert report.deleted == [app[0]]
    checkpoint = json.loads(store.get("audit/verified.json"))
    assert checkpoint["seq"] == 3 and checkpoint["signer"] == host_public  # what the run verified before it wrote

    # Entry 2, before the checkpoint, is edited: the next run reads from the checkpoint on and deletes; the daily
    # full verification (audit verify) names it.
    path = tmp_path / "vault" / "audit" / "entries" / f"{2:012d}.json"
    entry = json.loads(path.read_text())
    entry["details"]["n"] = 99
    path.write_text(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    newer = take(config, "app", 1)
    last_before = AuditTrail(store).entries()[-1]["seq"]
    assert run_retention(config, say=print).deleted == [app[1]]
    assert json.loads(store.get("audit/verified.json"))["seq"] == last_before
    assert [p.key for p in verify_trail(store, config.signing.trusted()).problems] == ["edited:2"]

    # A checkpoint moved by a key the stack does not trust: the run verifies everything, finds entry 2, refuses.
    forged_key = SigningKey.from_b64(generate_signing_key()[0])
    forged = {"seq": 1, "hash": "0" * 64, "at": "2026-12-06T00:00:00.000000Z", "signer": forged_key.public_b64}
    forged["sig"] = forged_key.sign(canonical(forged, with_sig=False))
    store.put("audit/verified.json", json.dumps(forged).encode(), overwrite=True)
    take(config, "app", 1)
    with pytest.raises(RetentionRefusedError, match=r"deleted nothing: the audit trail failed verification just now"):
        run_retention(config, say=print)
    alarm = json.loads(store.get("audit/alarm.json"))
    assert [(p["kind"], p["seq"]) for p in alarm["problems"]] == [("checkpoint", 1), ("edited", 2)]
    assert newer[0] in [e.id for e in config.vault.open().entries()]
