"""Audit entries written by the flows, through Prefect's test harness: a backup (channels or not), a restore,
a run whose entry cannot be written fails, and replication carries the trail and its head (never a backup that
retention is deleting)."""

from __future__ import annotations

import json

import pytest

from core.audit import AuditTrail, entry_hash
from core.audit.verify import verify_trail
from core.crypto.signing import load_signing_key
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
