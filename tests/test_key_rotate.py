"""Key rotation (core/repository/rekey.py, `genesis-dr key rotate`): every committed backup's and log
key's data key re-wrapped for the stack's current keys, no data object touched, a run killed between
keys.json and the manifest leaving every backup readable, and a re-run finishing it.

Backups are real: the files engine backs up a temporary tree (full and incremental) into a local
vault, log pieces are shipped through LogWriter, and restores go through the engine's restore_chain;
the KMS key is moto's, over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from core.crypto.keys import Keyring, generate_x25519_keypair
from core.crypto.kms import KmsKeyConfig
from core.errors import IntegrityError, WrongKeyError
from core.operations import backup_source
from core.repository.log import LogReader, LogWriter
from core.repository.rekey import rotate_vault
from core.repository.vault import Vault
from core.storage.local import LocalStore
from tests.fixtures_cloud import kms_client
from tests.test_chains import piece
from tests.test_engine_files import files_engine, snapshot, write
from tests.test_pitr_files import restore_point
from tests.test_secrets import cli, error_line, write_stack  # noqa: F401 - cli is a fixture
from tests.test_vault import BytesEngine

OLD, NEW = "the-Old-passphrase-2026-11", "the-New-passphrase-2026-12"


def objects(vault: Vault, prefixes=("backups/", "logdata/", "logs/")) -> dict[str, str]:
    """SHA-256 of every stored object under ``prefixes`` except keys.json and manifests."""
    return {
        key: hashlib.sha256(vault.store.get(key)).hexdigest()
        for prefix in prefixes
        for key in vault.store.list(prefix)
        if not key.endswith(("keys.json", "manifest.json"))
    }


def streams(vault: Vault, backup_id: str, keyring: Keyring) -> dict[str, bytes]:
    reader = vault.open_backup(backup_id, keyring)
    try:
        return {name: b"".join(reader.iter_stream(name)) for name in reader.stream_names()}
    finally:
        reader.close()


def piece_bytes(vault: Vault, keyring: Keyring, seq: int) -> bytes:
    reader = LogReader(vault.store, "db", keyring)
    try:
        with reader.open_piece(vault.log_pieces("db")[seq]) as fh:
            return fh.read()
    finally:
        reader.close()


def test_rotation_rewraps_every_backup_and_log_key_and_touches_no_data(tmp_path, moto_endpoint):
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    old_private, old_public = generate_x25519_keypair()
    new_private, new_public = generate_x25519_keypair()
    kms_key = kms_client(moto_endpoint).create_key()["KeyMetadata"]
    old_keys = Keyring(passphrase=OLD, public_keys=[old_public])
    src = tmp_path / "src"
    write(src / "a.txt", b"first version\n")
    write(src / "big.bin", os.urandom(300_000))
    engine = files_engine(src)
    full = backup_source(vault, old_keys, engine, "full")
    at_full = snapshot(src)
    write(src / "a.txt", b"second version, longer\n")
    write(src / "new.txt", b"only in the incremental\n")
    inc = backup_source(vault, old_keys, engine, "incremental")
    at_inc = snapshot(src)
    log = LogWriter(vault.store, "db", "postgres", old_keys, vault.check_passphrase(old_keys))
    log.ship(piece(0, 0x100, 0x200, 1, 2), b"W" * 70_000)
    log.ship(piece(1, 0x200, 0x300, 3, 4), b"X" * 10)
    log.close()
    with pytest.raises(RuntimeError):
        backup_source(vault, old_keys, BytesEngine({"main": b"y" * 5000}, fail_after=2000))
    failed = next(m.id for m in vault.list_backups("blob"))
    before = {b: streams(vault, b, old_keys) for b in (full.id, inc.id)}
    data_before = objects(vault)
    failed_keys = vault.store.get(f"backups/{failed}/keys.json")

    new_keys = Keyring(
        passphrase=NEW,
        public_keys=[new_public],
        kms_keys=[KmsKeyConfig(key_id=kms_key["Arn"], endpoint_url=moto_endpoint)],
    )
    report = rotate_vault(vault, new_keys, Keyring(passphrase=OLD))

    assert sorted(report.rewrapped) == sorted([full.id, inc.id]) and report.finished == []
    assert len(report.log_keys_rewrapped) == 1 and report.log_keys_current == 0
    assert report.skipped_failed == [failed] and report.skipped_corrupt == [] and report.in_progress == []
    assert report.old_key_id != report.new_key_id == vault.key_check()["key_id"]
    assert objects(vault) == data_before  # not one chunk, piece, record or start record changed
    assert vault.store.get(f"backups/{failed}/keys.json") == failed_keys  # FAILED ones are left as they are

    for backup_id in (full.id, inc.id):
        manifest = vault.manifest(backup_id)
        keys_raw = vault.store.get(f"backups/{backup_id}/keys.json")
        assert manifest.keys_sha256 == hashlib.sha256(keys_raw).hexdigest()
        assert manifest.key_ids == new_keys.key_ids(report.new_key_id)
        recipients = json.loads(keys_raw)["recipients"]
        assert [r["type"] for r in recipients] == ["aws-kms", "passphrase", "x25519"]
        assert recipients[1]["key_id"] == report.new_key_id and recipients[2]["recipient"] == new_public
        # Each new key alone opens it; the old passphrase and the dropped X25519 key no longer do.
        for alone in (
            Keyring(passphrase=NEW),
            Keyring(private_keys=[new_private]),
            Keyring(kms_keys=[KmsKeyConfig(key_id=kms_key["Arn"], endpoint_url=moto_endpoint)]),
        ):
            assert streams(vault, backup_id, alone) == before[backup_id]
        for gone in (Keyring(passphrase=OLD), Keyring(private_keys=[old_private])):
            with pytest.raises(WrongKeyError):
                vault.open_backup(backup_id, gone)
    # The chain restores with the new passphrase only, to each point's tree.
    restore_point(vault, Keyring(passphrase=NEW), [full.id], tmp_path / "at-full")
    assert snapshot(tmp_path / "at-full") == at_full
    restore_point(vault, Keyring(passphrase=NEW), [full.id, inc.id], tmp_path / "at-inc")
    assert snapshot(tmp_path / "at-inc") == at_inc
    # Log pieces too.
    assert piece_bytes(vault, Keyring(passphrase=NEW), 0) == b"W" * 70_000
    assert piece_bytes(vault, Keyring(private_keys=[new_private]), 1) == b"X" * 10
    with pytest.raises(WrongKeyError):
        piece_bytes(vault, Keyring(passphrase=OLD), 0)
    # New backups are held to the new key; the old passphrase is refused as a writer.
    with pytest.raises(WrongKeyError, match="does not match the vault's key"):
        vault.check_passphrase(Keyring(passphrase=OLD))
    assert vault.check_passphrase(Keyring(passphrase=NEW)) == report.new_key_id

    again = rotate_vault(vault, new_keys, Keyring(passphrase=OLD))
    assert (again.rewrapped, again.finished, again.current) == ([], [], 2)
    assert (again.log_keys_rewrapped, again.log_keys_current) == ([], 1)
    assert objects(vault) == data_before


class KilledBeforeManifest(LocalStore):
    """A local store whose manifest replace dies, as a rotation killed between its two writes would."""

    armed = True

    def replace(self, key: str, data: bytes, *, version: str):
        if self.armed and key.endswith("manifest.json"):
            raise KeyboardInterrupt("killed before the manifest was re-signed")
        return super().replace(key, data, version=version)


def test_a_rotation_killed_between_keys_and_manifest_leaves_backups_readable_and_a_rerun_finishes(tmp_path):
    dying = KilledBeforeManifest(tmp_path / "vault")
    vault = Vault.open(dying, create=True)
    old = Keyring(passphrase=OLD)
    payload = {}
    for name in ("first", "second"):
        m = backup_source(vault, old, BytesEngine({"main": f"{name} backup ".encode() * 500}))
        payload[m.id] = f"{name} backup ".encode() * 500
    first, second = sorted(payload)
    manifests = {b: vault.store.get(f"backups/{b}/manifest.json") for b in payload}
    data_before = objects(vault)

    with pytest.raises(KeyboardInterrupt):
        rotate_vault(vault, Keyring(passphrase=NEW), old)

    plain = Vault.open(LocalStore(tmp_path / "vault"))
    hit, untouched = first, second  # backups are re-wrapped in id order
    assert plain.store.get(f"backups/{hit}/manifest.json") == manifests[hit]  # the manifest write died...
    reader = plain.open_backup(hit, Keyring(passphrase=NEW))  # ...and the backup opens with the new key
    assert reader.rotation_in_progress is True
    assert b"".join(reader.iter_stream("main")) == payload[hit]
    reader.close()
    with pytest.raises(WrongKeyError, match="rotation in progress"):
        plain.open_backup(hit, old)
    # The other backup was not reached: still the old key's.
    assert streams(plain, untouched, old)["main"] == payload[untouched]
    with pytest.raises(WrongKeyError):
        plain.open_backup(untouched, Keyring(passphrase=NEW))
    # A keys.json that was not written by a rotation of this manifest is still refused as corrupt.
    keys_raw = plain.store.get(f"backups/{hit}/keys.json")
    forged = json.loads(keys_raw) | {"rewrapped_from": "0" * 64}
    plain.store.put(f"backups/{hit}/keys.json", json.dumps(forged).encode(), overwrite=True)
    with pytest.raises(IntegrityError, match="does not match its SHA-256 in the manifest"):
        plain.open_backup(hit, Keyring(passphrase=NEW))
    plain.store.put(f"backups/{hit}/keys.json", keys_raw, overwrite=True)

    dying.armed = False
    report = rotate_vault(vault, Keyring(passphrase=NEW), old)
    assert (report.finished, report.rewrapped, report.current) == ([hit], [untouched], 0)
    for backup_id, engine_bytes in payload.items():
        reader = plain.open_backup(backup_id, Keyring(passphrase=NEW))
        assert reader.rotation_in_progress is False
        assert b"".join(reader.iter_stream("main")) == engine_bytes
        reader.close()
        with pytest.raises(WrongKeyError):
            plain.open_backup(backup_id, old)
    assert objects(plain) == data_before


def test_a_backup_no_old_key_opens_stops_the_rotation_and_is_left_unchanged(tmp_path):
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    _, public = generate_x25519_keypair()
    a = backup_source(vault, Keyring(passphrase=OLD), BytesEngine({"main": b"a"}))
    b = backup_source(vault, Keyring(public_keys=[public]), BytesEngine({"main": b"b"}))  # private key not given
    b_files = {n: vault.store.get(f"backups/{b.id}/{n}") for n in ("keys.json", "manifest.json")}
    with pytest.raises(WrongKeyError) as caught:
        rotate_vault(vault, Keyring(passphrase=NEW), Keyring(passphrase=OLD))
    before_b = 1 if a.id < b.id else 0
    message = str(caught.value)
    assert message.startswith(f"key rotate stopped at backup {b.id}, which is unchanged: backup {b.id}: wrong")
    assert f"; {before_b} backup(s) and 0 log key(s) were re-wrapped before it" in message
    assert "--old-passphrase-from" in message and OLD not in message and NEW not in message
    assert caught.value.exit_code == 6
    assert {n: vault.store.get(f"backups/{b.id}/{n}") for n in b_files} == b_files


def test_key_rotate_through_the_cli(cli, tmp_path):  # noqa: F811 - the cli fixture
    stack = write_stack(tmp_path, "rot", "  passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD")
    old_env, new_env = {"BACKUP_ENCRYPTION_PASSWORD": OLD}, {"BACKUP_ENCRYPTION_PASSWORD": NEW}
    cli("apply", str(stack))
    cli("backup", "full", "--stack", "rot", extra_env=old_env)
    backup_id = json.loads(cli("list", "--stack", "rot", "--json").stdout)[0]["id"]
    vault_dir = tmp_path / "vault-rot"
    data_before = objects(Vault.open(LocalStore(vault_dir)))

    # Without the old passphrase nothing can be re-wrapped: one line, exit 6, naming the backup.
    err = error_line(cli("key", "rotate", "--stack", "rot", extra_env=new_env, expect=6))
    assert f"key rotate stopped at backup {backup_id}, which is unchanged" in err and NEW not in err
    assert err.endswith("key rotate --stack rot' again")
    out = cli(
        "key", "rotate", "--stack", "rot", "--old-passphrase-from", "env:OLD_PASS",
        extra_env=new_env | {"OLD_PASS": OLD},
    ).stdout  # fmt: skip
    assert "re-wrapped 1 backup(s) and 0 log key(s)" in out and "skipped 0 FAILED" in out
    assert OLD not in out and NEW not in out
    assert objects(Vault.open(LocalStore(vault_dir))) == data_before

    def restore(env: dict, expect: int) -> subprocess.CompletedProcess:
        return cli(
            "restore", "--stack", "rot", "--source", "app-files", "--backup-id", backup_id,
            "--target", f"root={tmp_path / f'restored-{expect}'}", extra_env=env, expect=expect,
        )  # fmt: skip

    assert "wrong passphrase" in error_line(restore(old_env, 6))
    assert "verified" in restore(new_env, 0).stdout
    listing = json.loads(cli("list", "--stack", "rot", "--json").stdout)
    assert listing[0]["key_ids"] == [f"passphrase:{Vault.open(LocalStore(vault_dir)).key_check()['key_id']}"]
    # The earlier behaviour stays available: only the key check, no re-wrap.
    out = cli("key", "rotate", "--stack", "rot", "--new-backups-only", extra_env=new_env).stdout
    assert "is already the vault's key" in out and "nothing changed" in out
