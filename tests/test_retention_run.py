"""The retention executor on a real local vault with a replica and real files backups: what the plan deletes
is shredded, destroyed and certified everywhere; a dry run changes nothing; a run killed by SIGKILL halfway
is finished by the next; a policy that would delete every backup of a source is refused; an audit trail that
fails verification stops deletions until an admin acknowledges it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.audit.trail import AuditTrail
from core.audit.verify import acknowledge
from core.crypto.keys import Keyring
from core.crypto.signing import SigningKey, generate_signing_key
from core.engines import engine_for
from core.errors import RetentionRefusedError
from core.operations import backup_source, restore_backup
from core.replication.replica import open_replica, replicate
from core.repository.manifest import COMPLETED
from core.repository.vault import DELETING
from core.retention.catalog import read_catalog
from core.retention.certificate import certificates, verify_certificate
from core.retention.holds import HoldBook
from core.retention.run import retention_status, run_retention
from core.retention.scope import HoldScope
from core.sources import FilesSourceConfig
from core.stack import parse_stack
from tests.fixtures_cloud import moto_vault, s3_client

REPO = Path(__file__).resolve().parents[1]
KEYS = Keyring(passphrase="retention")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "8192")


def key_file(path: Path) -> tuple[str, Path]:
    private, public = generate_signing_key()
    path.write_text(private + "\n")
    path.chmod(0o600)
    return public, path


def stack_data(tmp_path: Path, retention: dict, signing: dict | None = None) -> dict:
    for name in ("app", "cfg"):
        root = tmp_path / name
        root.mkdir(exist_ok=True)
        (root / "data.bin").write_bytes(os.urandom(20_000))
    return {
        "stack": "ret",
        "vault": {"type": "local", "path": str(tmp_path / "vault")},
        "sources": [
            {"name": "app", "kind": "files", "root": str(tmp_path / "app")},
            {"name": "cfg", "kind": "files", "root": str(tmp_path / "cfg")},
        ],
        "replicas": [{"name": "dr", "vault": {"type": "local", "path": str(tmp_path / "replica")}}],
        "retention": retention,
        "signing": signing or {},
    }


def take(config, source: str, n: int) -> list[str]:
    vault = config.vault.open(create=True)
    ids = []
    for i in range(n):
        (Path(config.source(source).root) / "data.bin").write_bytes(os.urandom(20_000) + bytes([i]))
        ids.append(backup_source(vault, KEYS, engine_for(config.source(source))).id)
    return ids


def replicate_all(config) -> None:
    replicate(config.vault.open(), config.replicas[0].vault.store(), name="dr")


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


KEEP_LAST_ONE = {"sources": {"app": {"full": {"keep_last": 1}}, "cfg": {"full": {"keep_last": 1}}}}


@pytest.fixture
def two_sources(tmp_path):
    config = parse_stack(stack_data(tmp_path, KEEP_LAST_ONE), "test stack")
    app, cfg = take(config, "app", 3), take(config, "cfg", 1)
    replicate_all(config)
    return config, app, cfg


def test_a_dry_run_changes_nothing_and_a_run_deletes_what_the_plan_says_everywhere(two_sources, tmp_path):
    config, app, cfg = two_sources
    before = files_under(tmp_path / "vault"), files_under(tmp_path / "replica")

    dry = run_retention(config, dry_run=True, say=print)
    assert sorted(d.item for d in dry.plan.deletions()) == sorted(app[:2])
    assert dry.deleted == [] and dry.certificates == []
    assert (files_under(tmp_path / "vault"), files_under(tmp_path / "replica")) == before
    assert "dry run: nothing was changed; a run would delete 2" in dry.text()

    said: list[str] = []
    report = run_retention(config, say=said.append)
    assert sorted(report.deleted) == sorted(app[:2])
    assert report.freed_bytes == sum(d.stored_bytes for d in dry.plan.deletions())
    assert report.resumed == [] and report.skipped_locked == [] and report.refused == {}
    assert report.audit_alarm is None
    vault = config.vault.open()
    replica = open_replica(config.replicas[0].vault.store(), "dr")
    for v in (vault, replica):
        assert [(e.id, e.state) for e in v.entries()] == sorted([(app[2], COMPLETED), (cfg[0], COMPLETED)])
        stored = {c["id"]: c for c in certificates(v.store)}
        assert sorted(stored) == sorted(report.certificates)
    for cert in certificates(vault.store):
        verify_certificate(cert, config.signing.trusted())
        assert cert["method"] == "crypto-shred + overwrite(3) + unlink"
        assert cert["stores"] == [vault.describe(), replica.describe()]
        assert cert["authority"] == "retention policy of stack 'ret' for source 'app'"
    for backup_id in app[:2]:
        assert not (tmp_path / "vault" / "backups" / backup_id).exists()
        assert not (tmp_path / "replica" / "backups" / backup_id).exists()
    # The kept backup restores from both copies.
    for v, where in ((vault, "a"), (replica, "b")):
        report_r = restore_backup(
            v, KEYS, app[2], engine_for(FilesSourceConfig(name="app", root=str(tmp_path / where)))
        )
        assert report_r.verified_checks > 0
        assert (tmp_path / where / "data.bin").read_bytes() == (tmp_path / "app" / "data.bin").read_bytes()
    actions = [(e["action"], e["subject"]) for e in AuditTrail(vault.store).entries() if e["action"].startswith("ret")]
    assert sorted(actions) == sorted([("retention.delete", i) for i in app[:2]] + [("retention.run", "ret")])
    assert run_retention(config, say=said.append).deleted == []  # nothing more to do


KILLER = """
import json, os, signal, sys
from core.retention.run import run_retention
from core.stack import parse_stack

config = parse_stack(json.load(open(sys.argv[1])), "test stack")
marked = []

def say(line):
    print(line, flush=True)
    if ": marked for deletion (" in line:
        marked.append(line)
        if len(marked) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # the host dies with the second deletion begun

run_retention(config, say=say)
"""


def test_a_run_killed_halfway_leaves_the_backup_deleting_and_the_next_run_finishes_it(tmp_path):
    data = stack_data(tmp_path, KEEP_LAST_ONE)
    config = parse_stack(data, "test stack")
    app = take(config, "app", 3)
    replicate_all(config)
    (tmp_path / "stack.json").write_text(json.dumps(data))
    child = subprocess.run(
        [sys.executable, "-c", KILLER, str(tmp_path / "stack.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    marked = [line.split(":")[0] for line in child.stdout.splitlines() if ": marked for deletion (" in line]
    assert sorted(marked) == sorted(app[:2])  # both begun, in the plan's order
    first, second = marked
    vault = config.vault.open()
    replica = open_replica(config.replicas[0].vault.store(), "dr")
    for v in (vault, replica):
        assert {e.id: e.state for e in v.entries()} == {second: DELETING, app[2]: COMPLETED}
        assert [m.id for m in v.list_backups()] == [app[2]]
    (done,) = certificates(vault.store)
    assert done["subject"] == first

    report = run_retention(config, say=print)
    assert report.resumed == [second] and report.deleted == []
    assert len(report.certificates) == 1
    for v in (vault, replica):
        assert [(e.id, e.state) for e in v.entries()] == [(app[2], COMPLETED)]
        assert sorted(c["subject"] for c in certificates(v.store)) == sorted([first, second])
    assert list(vault.store.list("retention/")) == []


def test_a_policy_that_would_delete_every_backup_of_a_source_is_refused_and_the_others_proceed(tmp_path):
    retention = {"sources": {"app": {"full": {"keep_last": 1}}, "cfg": {"full": {"keep_within": "1h"}}}}
    config = parse_stack(stack_data(tmp_path, retention), "test stack")
    app, cfg = take(config, "app", 2), take(config, "cfg", 2)
    later = datetime.now(UTC) + timedelta(days=2)
    with pytest.raises(RetentionRefusedError) as info:
        run_retention(config, now=later, say=print)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 30
    assert "refused to delete anything of cfg" in message
    assert info.value.report["deleted"] == [app[0]]
    assert sorted(info.value.report["refused"]) == ["cfg"]
    assert sorted(e.id for e in config.vault.open().entries()) == sorted([app[1], *cfg])


def test_no_deletion_while_the_audit_trail_has_an_unacknowledged_alarm(tmp_path):
    host_public, host_file = key_file(tmp_path / "host.key")
    admin_public, admin_file = key_file(tmp_path / "admin.key")
    signing = {
        "key_from": f"file:{host_file}",
        "admin_key_from": f"file:{admin_file}",
        "admin_public_keys": [admin_public],
        "trusted_public_keys": [host_public],
    }
    config = parse_stack(stack_data(tmp_path, KEEP_LAST_ONE, signing), "test stack")
    app = take(config, "app", 2)
    vault = config.vault.open()
    trail = AuditTrail(vault.store, config.signing.host_key())
    for i in range(3):
        trail.append("backup", f"b{i}", {"n": i})
    # Someone edits the middle entry.
    path = tmp_path / "vault" / "audit" / "entries" / f"{2:012d}.json"
    entry = json.loads(path.read_text())
    entry["details"]["n"] = 99
    path.write_text(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")

    for _ in range(2):  # the failed verification raises the alarm; the next run refuses on the alarm alone
        with pytest.raises(RetentionRefusedError) as info:
            run_retention(config, say=print)
        assert "deleted nothing" in str(info.value) and "audit acknowledge" in str(info.value)
        assert info.value.report["deleted"] == []
        assert sorted(e.id for e in vault.entries()) == sorted(app)
    assert vault.store.exists("audit/alarm.json")
    dry = run_retention(config, dry_run=True, say=print)  # says why a run would delete nothing
    assert dry.audit_alarm.startswith("the audit trail has an unacknowledged alarm raised ")
    assert f"NO DELETION: {dry.audit_alarm}" in dry.text()

    acknowledge(vault.store, SigningKey.from_b64(admin_file.read_text().strip()), "edited by a test", [admin_public])
    report = run_retention(config, say=print)
    assert report.deleted == [app[0]]
    assert [e.id for e in vault.entries()] == [app[1]]


def test_status_shows_the_plan_storage_and_deletions_in_progress(two_sources):
    config, app, cfg = two_sources
    status = retention_status(config)
    assert status["stack"] == "ret"
    assert sorted(d["item"] for d in status["plan"]["decisions"] if d["action"] == "delete") == sorted(app[:2])
    vault = config.vault.open()
    assert status["storage"]["STANDARD"] == sum(m.stored_bytes for m in vault.list_backups())
    assert status["deleting"] == [] and status["holds"] == [] and status["pending_erasures"] == []


def test_an_object_locked_by_hand_on_s3_is_left_for_later_whole_and_deleted_once_the_lock_is_lifted(
    tmp_path, moto_endpoint, new_bucket
):
    bucket = new_bucket(object_lock=True)
    data = stack_data(tmp_path, KEEP_LAST_ONE)
    data["vault"] = moto_vault(bucket, moto_endpoint)
    data["replicas"] = []
    config = parse_stack(data, "test stack")
    old, new = take(config, "app", 2)
    vault = config.vault.open()
    chunk = sorted(vault.store.list(f"backups/{old}/streams/"))[0]
    vault.store.set_legal_hold(chunk, True)  # an operator's lock outside genesis-dr's holds

    report = run_retention(config, say=print)
    assert report.skipped_locked == [old] and report.deleted == []
    assert [(e.id, e.state) for e in vault.entries()] == sorted([(old, COMPLETED), (new, COMPLETED)])
    dst = tmp_path / "restored"
    restore_backup(vault, KEYS, old, engine_for(FilesSourceConfig(name="app", root=str(dst))))  # still whole
    assert "left for later (object lock): " + old in report.text()

    vault.store.set_legal_hold(chunk, False)
    report = run_retention(config, say=print)
    assert report.deleted == [old] and report.skipped_locked == []
    (cert,) = certificates(vault.store)
    assert cert["method"] == "crypto-shred + delete" and cert["subject"] == old
    listed = s3_client(moto_endpoint).list_object_versions(Bucket=bucket, Prefix=f"dr/backups/{old}/")
    assert listed.get("Versions", []) == [] and listed.get("DeleteMarkers", []) == []
    assert [e.id for e in vault.entries()] == [new]


def test_a_held_backup_is_kept_by_the_run_and_shown_in_status(two_sources):
    config, app, cfg = two_sources
    vault = config.vault.open()
    hold = HoldBook.for_stack(vault.store, config.signing).create(
        name="lawsuit",
        reason="litigation 42",
        scope=HoldScope(backup_ids=[app[0]]),
        contact="legal@example.com",
        creator="test",
        catalog=read_catalog(vault, config),
        signer=config.signing.host_key(),
    )
    status = retention_status(config)
    assert [h["id"] for h in status["holds"]] == [hold.id]
    report = run_retention(config, say=print)
    assert report.deleted == [app[1]]
    assert {e.id for e in vault.entries()} == {app[0], app[2], cfg[0]}
    (decision,) = [d for d in report.plan.decisions if d.item == app[0]]
    assert decision.action == "keep" and decision.held_by == [hold.id]
