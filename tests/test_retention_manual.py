"""Deletion outside the policy on the admin's key (core/retention/manual.py, `genesis-dr delete`), and key
rotation over crypto-shredded backups (core/repository/rekey.py).

Real parts throughout: a local vault with a local replica, real files backups (fulls and an
incremental), real Ed25519 admin and host keys, holds recorded through HoldBook, an audit trail
tampered on disk; the command runs as an operator types it, in a subprocess against the test
harness's Prefect API.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.audit.trail import AuditTrail
from core.crypto.keys import Keyring
from core.crypto.signing import SigningConfig, SigningKey, generate_signing_key
from core.engines import engine_for
from core.errors import (
    BackupNotFoundError,
    HoldError,
    IntegrityError,
    RetentionRefusedError,
    SigningKeyError,
    WrongKeyError,
)
from core.operations import backup_source
from core.replication.replica import open_replica
from core.repository.rekey import rotate_vault
from core.repository.vault import DELETING_PREFIX, Vault
from core.retention.catalog import read_catalog
from core.retention.certificate import read_certificate, verify_certificate
from core.retention.holds import HoldBook
from core.retention.manual import AUTHORISATIONS, delete_outside_policy, read_authorisation, verify_authorisation
from core.retention.scope import HoldScope
from core.retention.shred import shred_keys
from core.sources import FilesSourceConfig
from core.stack import parse_stack
from core.storage.local import LocalStore
from tests.commands import REPO, clean_environment, error_line
from tests.test_engine_files import files_engine, write
from tests.test_retention_run import KEYS, files_under, key_file, replicate_all, stack_data, take

OLD, NEW = "rotate-old-passphrase-2026", "rotate-new-passphrase-2026"


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "8192")


# -- key rotation over shredded backups --------------------------------------------------------


def test_rotation_skips_crypto_shredded_backups_and_log_keys_and_never_recreates_their_keys(tmp_path):
    from core.repository.log import LogWriter
    from tests.test_chains import piece

    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    old = Keyring(passphrase=OLD)
    src = tmp_path / "src"
    write(src / "a.txt", b"kept\n")
    engine = files_engine(src)
    being_deleted, shredded, kept = (backup_source(vault, old, engine, "full").id for _ in range(3))
    log = LogWriter(vault.store, "db", "postgres", old, vault.check_passphrase(old))
    log.ship(piece(0, 0x100, 0x200, 1, 2), b"W" * 1000)
    log.close()
    (log_key,) = list(vault.store.list("logkeys/db/"))
    # A deletion killed after its crypto-shred (marker left, keys gone), a backup whose keys were shredded
    # (a finished shred on this copy), and a log key shredded with its pieces' session.
    vault.store.create(f"{DELETING_PREFIX}{being_deleted}.json", json.dumps({"backup": being_deleted}).encode())
    shred_keys(vault.store, [f"backups/{being_deleted}/keys.json", f"backups/{shredded}/keys.json", log_key])
    before = {
        k: vault.store.get(k) for k in (f"backups/{being_deleted}/keys.json", f"backups/{shredded}/keys.json", log_key)
    }

    said: list[str] = []
    new = Keyring(passphrase=NEW)
    report = rotate_vault(vault, new, old, progress=said.append)

    assert report.rewrapped == [kept] and report.finished == [] and report.current == 0
    assert report.shredded == sorted([being_deleted, shredded]) + [log_key]
    assert report.log_keys_rewrapped == [] and report.log_keys_current == 0
    assert report.summary()["shredded"] == 3
    assert report.done_text().endswith("; 3 shredded, not re-wrapped")
    assert f"backup {shredded}: its key was crypto-shredded; shredded, not re-wrapped" in said
    assert f"backup {being_deleted}: being deleted by retention; shredded, not re-wrapped" in said
    # Untouched: the shredded records stay as they were (no key re-created), the kept backup opens with the new key.
    assert {k: vault.store.get(k) for k in before} == before
    reader = vault.open_backup(kept, new)
    reader.close()
    with pytest.raises((WrongKeyError, IntegrityError)):
        vault.open_backup(shredded, new)
    # A second run has nothing to do and still counts them, never as an error.
    again = rotate_vault(vault, new, old)
    assert again.rewrapped == [] and again.current == 1 and len(again.shredded) == 3


# -- deletion outside the policy ---------------------------------------------------------------


@pytest.fixture
def admin_stack(tmp_path):
    admin_public, admin_path = key_file(tmp_path / "admin.ed25519")
    host = SigningConfig().host_key().public_b64
    data = stack_data(
        tmp_path,
        {},
        {
            "admin_key_from": f"file:{admin_path}",
            "admin_public_keys": [admin_public],
            "trusted_public_keys": [host],
        },
    )
    data["sources"][1]["data_classes"] = ["financial"]  # SOX: seven years' minimum
    config = parse_stack(data, "test stack")
    vault = config.vault.open(create=True)
    app = config.source("app")
    a1 = take(config, "app", 1)[0]
    a2 = take(config, "app", 1)[0]
    (Path(app.root) / "more.txt").write_text("incremental\n")
    i2 = backup_source(vault, KEYS, engine_for(app), "incremental").id
    a3 = take(config, "app", 1)[0]
    c1, c2 = take(config, "cfg", 2)
    replicate_all(config)
    return config, {"a1": a1, "a2": a2, "i2": i2, "a3": a3, "c1": c1, "c2": c2}


def listed(config) -> list[str]:
    return sorted(m.id for m in config.vault.open().list_backups())


def test_refusals_come_before_anything_changes(admin_stack, tmp_path):
    config, ids = admin_stack
    admin = config.signing.admin_key("delete")
    hold = HoldBook(config.vault.store()).create(
        name="case-9",
        reason="litigation",
        scope=HoldScope(backup_ids=[ids["a1"]]),
        contact="legal@example.com",
        creator="test",
        catalog=read_catalog(config.vault.open(), config),
        signer=config.signing.host_key(),
    )
    before = files_under(tmp_path / "vault"), files_under(tmp_path / "replica")

    def refused(error, names: list[str], **kwargs) -> str:
        with pytest.raises(error) as caught:
            delete_outside_policy(config, names, "mistake", admin_key=admin, say=lambda _: None, **kwargs)
        assert "\n" not in caught.value.message
        return caught.value.message

    assert refused(HoldError, [ids["a1"]]) == (
        f"backup {ids['a1']} is under legal hold {hold.id} ('case-9'); it can be deleted once an admin releases it: "
        f'genesis-dr hold release {hold.id} "REASON"'
    )
    assert refused(RetentionRefusedError, [ids["a2"]]) == (
        f"backup {ids['a2']} is the full of incremental backup {ids['i2']} of app, which is kept and cannot be "
        f"restored without it; delete {ids['i2']} first, or name both"
    )
    assert refused(RetentionRefusedError, [ids["a3"]]).startswith(
        f"backup {ids['a3']} is the newest valid backup of app and is never deleted; take a newer backup"
    )
    minimum = refused(RetentionRefusedError, [ids["c1"]])
    assert minimum.startswith(f"backup {ids['c1']} of cfg is kept until "), minimum
    assert "by its compliance minimum (SOX (class financial): 7 years)" in minimum
    # One refused backup in the list stops them all, before the first is touched.
    assert "newest valid backup of app" in refused(RetentionRefusedError, [ids["a2"], ids["i2"], ids["a3"]])
    assert refused(BackupNotFoundError, ["backup_20200101_000000_deadbeef"]).startswith(
        "backup backup_20200101_000000_deadbeef not found in vault "
    )
    stranger = SigningKey.from_b64(generate_signing_key()[0])
    with pytest.raises(
        SigningKeyError, match=f"fingerprint {stranger.fingerprint}.*not listed in signing.admin_public"
    ):
        delete_outside_policy(config, [ids["a2"], ids["i2"]], "mistake", admin_key=stranger)
    # Named together, the full and its incremental may go; the dry run says so and changes nothing.
    said: list[str] = []
    assert (
        delete_outside_policy(config, [ids["a2"], ids["i2"]], "x", admin_key=admin, dry_run=True, say=said.append) == []
    )
    assert said[-1] == "dry run: nothing was changed; 2 backup(s) may be deleted on the admin's authority"
    assert (files_under(tmp_path / "vault"), files_under(tmp_path / "replica")) == before


def test_an_admin_deletion_is_shredded_everywhere_certified_and_authorised(admin_stack, tmp_path):
    config, ids = admin_stack
    admin = config.signing.admin_key("delete")
    named = [ids["a2"], ids["i2"]]
    certs = delete_outside_policy(config, named, "  personal data\nbacked up by mistake ", admin_key=admin, say=print)

    assert [c.subject for c in certs] == named
    authority = f"admin {admin.fingerprint}: personal data backed up by mistake"
    vault = config.vault.open()
    replica = open_replica(config.replicas[0].vault.store(), "dr")
    assert listed(config) == sorted([ids["a1"], ids["a3"], ids["c1"], ids["c2"]])
    assert sorted(m.id for m in replica.list_backups()) == listed(config)
    for cert in certs:
        for store in (vault.store, replica.store):
            stored = read_certificate(store, cert.id)
            verify_certificate(stored, config.signing.trusted())
            assert (stored["authority"], stored["reason"]) == (authority, "personal data backed up by mistake")
            record = read_authorisation(store, cert.id)
            assert verify_authorisation(record, config.signing.admin_public_keys)
            assert (record["certificate"], record["subject"], record["admin"]) == (
                cert.id,
                cert.subject,
                admin.public_b64,
            )
            assert not verify_authorisation(record | {"subject": ids["a1"]}, config.signing.admin_public_keys)
            assert not verify_authorisation(record, [])  # a key no longer listed authorises nothing
        assert cert.stores == [vault.describe(), replica.describe()]
        assert not (tmp_path / "vault" / "backups" / cert.subject).exists()
        assert not (tmp_path / "replica" / "backups" / cert.subject).exists()
    assert sorted(p.name for p in (tmp_path / "vault" / AUTHORISATIONS).iterdir()) == sorted(
        f"{c.id}.json" for c in certs
    )
    deletes = [e for e in AuditTrail(vault.store).entries() if e["action"] == "retention.delete"]
    assert [(e["subject"], e["details"]["authority"]) for e in deletes] == [(i, authority) for i in named]
    assert all(e["signer"] == config.signing.host_key().public_b64 for e in deletes)


def test_no_admin_deletion_while_the_audit_trail_has_an_alarm(admin_stack, tmp_path):
    config, ids = admin_stack
    admin = config.signing.admin_key("delete")
    # An entry of the trail edited on disk.
    AuditTrail(config.vault.store(), config.signing.host_key()).append("retention.run", "ret", {"deleted": 0})
    entry = sorted((tmp_path / "vault" / "audit" / "entries").glob("*.json"))[-1]
    edited = json.loads(entry.read_text())
    edited["details"]["deleted"] = 5
    entry.write_text(json.dumps(edited))
    before = listed(config)
    with pytest.raises(RetentionRefusedError, match="the audit trail failed verification just now") as caught:
        delete_outside_policy(config, [ids["a2"], ids["i2"]], "x", admin_key=admin, say=lambda _: None)
    assert "'genesis-dr audit acknowledge" in caught.value.message
    assert (tmp_path / "vault" / "audit" / "alarm.json").exists()  # raised: later runs refuse from the alarm
    with pytest.raises(RetentionRefusedError, match="the audit trail has an unacknowledged alarm raised"):
        delete_outside_policy(config, [ids["a2"], ids["i2"]], "x", admin_key=admin, say=lambda _: None)
    assert listed(config) == before


# -- the command ---------------------------------------------------------------------------------

# `genesis-dr delete` as cli/main.py runs it: registered by cli/delete.register (added here if this checkout's
# cli/main.py does not list it yet), errors printed in one line with their exit codes.
RUNNER = """
import argparse, sys
import cli.main as main

build = main.build_parser

def parser():
    p = build()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "delete" not in sub.choices:
        from cli.delete import register
        register(sub)
    return p

main.build_parser = parser
sys.exit(main.main(sys.argv[1:]))
"""
ADMIN_ENV = "GDR_TEST_DELETE_ADMIN_KEY"


def test_delete_through_the_command(prefect_api, make_stack, tmp_path):
    admin_private, admin_public = generate_signing_key()
    other_private, _ = generate_signing_key()
    root = tmp_path / "app"
    write(root / "conf.ini", b"[app]\n")
    stack = make_stack(
        [FilesSourceConfig(name="app-files", root=str(root))],
        signing={
            "admin_key_from": f"env:{ADMIN_ENV}",
            "admin_public_keys": [admin_public],
            "trusted_public_keys": [SigningConfig().host_key().public_b64],
        },
    )
    vault, keyring = stack.config.vault.open(create=True), stack.keyring()
    old, newest = (backup_source(vault, keyring, engine_for(stack.config.source("app-files"))).id for _ in range(2))
    env = {k: v for k, v in clean_environment().items() if k != ADMIN_ENV} | {"PYTHONPATH": str(REPO)}
    from prefect.settings import PREFECT_API_URL

    env["PREFECT_API_URL"] = PREFECT_API_URL.value()

    def cli(*args: str, expect: int = 0, key: str | None = admin_private) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, "delete", *args, "--stack", stack.name],
            cwd=tmp_path,
            env=env | ({ADMIN_ENV: key} if key else {}),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    assert "not listed in signing.admin_public_keys" in error_line(cli(old, "mistake", expect=33, key=other_private))
    assert f"backup {newest} is the newest valid backup of app-files" in error_line(cli(newest, "x", expect=30))
    assert "not found in vault" in error_line(cli("backup_20200101_000000_deadbeef", "x", expect=8))
    assert "give the reason last" in error_line(cli(old, newest, expect=2))
    preview = cli(old, "mistake", "--dry-run").stdout
    assert f"would delete {old} (app-files, full," in preview and "dry run: nothing was changed" in preview
    assert sorted(m.id for m in vault.list_backups()) == sorted([old, newest])
    done = cli(old, "backed up by mistake").stdout.splitlines()[-1]
    fingerprint = SigningKey.from_b64(admin_private).fingerprint
    assert done.startswith(f"deleted {old} (app-files) on the authority of admin {fingerprint}: certificate cert-")
    assert [m.id for m in vault.list_backups()] == [newest]


def test_an_object_lock_refuses_the_deletion_before_anything_changes(tmp_path, moto_endpoint, new_bucket):
    from core.errors import ObjectLockedError
    from tests.fixtures_cloud import moto_vault, s3_client

    admin_public, admin_path = key_file(tmp_path / "admin.ed25519")
    bucket = new_bucket(object_lock=True)
    write(tmp_path / "app" / "data.bin", b"locked" * 4000)
    config = parse_stack(
        {
            "stack": "locked",
            "vault": moto_vault(bucket, moto_endpoint),
            "sources": [{"name": "app", "kind": "files", "root": str(tmp_path / "app")}],
            "signing": {
                "admin_key_from": f"file:{admin_path}",
                "admin_public_keys": [admin_public],
                "trusted_public_keys": [SigningConfig().host_key().public_b64],
            },
        },
        "test stack",
    )
    vault = config.vault.open(create=True)
    older, _newest = (backup_source(vault, KEYS, engine_for(config.source("app"))).id for _ in range(2))
    # A legal hold set on the bucket directly (no hold record covers it): the provider's lock still wins.
    locked = f"backups/{older}/manifest.json"
    client = s3_client(moto_endpoint)
    client.put_object_legal_hold(Bucket=bucket, Key=f"dr/{locked}", LegalHold={"Status": "ON"})
    keys_before = vault.store.get(f"backups/{older}/keys.json")
    with pytest.raises(ObjectLockedError) as caught:
        delete_outside_policy(config, [older], "x", admin_key=config.signing.admin_key("delete"), say=lambda _: None)
    assert caught.value.exit_code == 31
    assert f"{locked} is under an object-lock legal hold (primary); backup {older} is deletable once" in (
        caught.value.message
    )
    assert vault.store.get(f"backups/{older}/keys.json") == keys_before  # not even crypto-shredded
    assert older in [m.id for m in vault.list_backups()]
    assert list(vault.store.list(DELETING_PREFIX)) == []
    client.put_object_legal_hold(Bucket=bucket, Key=f"dr/{locked}", LegalHold={"Status": "OFF"})
