"""The vault on its own: envelope, manifest commit, integrity, keys, locks, faults.

The engine here is a tiny in-test source of bytes: the vault is what is under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.crypto.keys import Keyring, generate_x25519_keypair
from core.engines.base import BackupResult, Engine
from core.errors import (
    BackupNotFoundError,
    FormatError,
    IntegrityError,
    LockedError,
    VaultError,
    WrongKeyError,
)
from core.operations import backup_source, validate_backup
from core.repository.manifest import COMPLETED, FAILED
from core.repository.vault import Vault
from core.sources import FilesSourceConfig
from core.storage.local import LocalStore

SECRET_TEXT = b"PLAINTEXT-CANARY-7f3a9c "


class BytesEngine(Engine):
    """Writes a payload as one or more streams; restore collects them."""

    kind = "test"

    def __init__(self, payloads: dict[str, bytes], fail_after: int | None = None):
        super().__init__(FilesSourceConfig(name="blob", root="/nonexistent"))
        self.payloads = payloads
        self.fail_after = fail_after
        self.restored: dict[str, bytes] = {}

    def describe(self):
        return "test bytes"

    def ping(self):
        pass

    def backup(self, sink):
        for name, data in self.payloads.items():
            with sink.open_stream(name) as out:
                for i in range(0, len(data), 1000):
                    if self.fail_after is not None and i >= self.fail_after:
                        raise RuntimeError("source went away mid-stream")
                    out.write(data[i : i + 1000])
        return BackupResult(position={"at": 1}, checks={"sizes": {k: len(v) for k, v in self.payloads.items()}})

    def has_data(self):
        return bool(self.restored)

    def restore(self, source, result):
        for name in source.stream_names():
            self.restored[name] = b"".join(source.iter_stream(name))

    def collect_checks(self, reference):
        return {"sizes": {k: len(v) for k, v in self.restored.items()}}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "4096")


@pytest.fixture
def vault(tmp_path):
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


def payload(n=50_000) -> bytes:
    return (SECRET_TEXT * (n // len(SECRET_TEXT) + 1))[:n] + os.urandom(n // 4)


def read_back(vault, backup_id, keyring, name="main") -> bytes:
    reader = vault.open_backup(backup_id, keyring)
    return b"".join(reader.iter_stream(name))


def chunk_files(vault_root: Path, backup_id: str) -> list[Path]:
    return sorted((vault_root / "backups" / backup_id / "streams").rglob("0*"))


def test_round_trip_zstd_and_gzip_and_empty(vault):
    keys = Keyring(passphrase="correct horse")
    for codec in ("zstd", "gzip"):
        data = payload()
        m = backup_source(vault, keys, BytesEngine({"main": data, "empty": b""}), compression=codec)
        assert m.status == COMPLETED and m.compression == codec
        assert m.id.startswith("backup_") and len(m.id) == len("backup_20241215_143000_a1b2c3d4")
        assert read_back(vault, m.id, keys) == data
        assert read_back(vault, m.id, keys, "empty") == b""
        assert m.stored_bytes < m.plain_bytes  # the repeated canary compresses
        assert validate_backup(vault, keys, m.id)["plain_bytes_checked"] == len(data)


def test_no_plaintext_in_vault(vault, tmp_path):
    m = backup_source(vault, Keyring(passphrase="pw"), BytesEngine({"main": payload()}))
    for path in (tmp_path / "vault").rglob("*"):
        if path.is_file():
            assert SECRET_TEXT.strip() not in path.read_bytes(), path
    assert m.sealed_checks and "sizes" not in (tmp_path / "vault" / "backups" / m.id / "manifest.json").read_text()


def test_wrong_passphrase_is_refused(vault):
    m = backup_source(vault, Keyring(passphrase="right"), BytesEngine({"main": payload()}))
    with pytest.raises(WrongKeyError, match=m.id):
        vault.open_backup(m.id, Keyring(passphrase="wrong"))


def test_x25519_writer_cannot_read_and_reader_can(vault):
    private, public = generate_x25519_keypair()
    other_private, _ = generate_x25519_keypair()
    data = payload()
    m = backup_source(vault, Keyring(public_keys=[public]), BytesEngine({"main": data}))
    with pytest.raises(WrongKeyError):
        vault.open_backup(m.id, Keyring(public_keys=[public]))
    with pytest.raises(WrongKeyError):
        vault.open_backup(m.id, Keyring(private_keys=[other_private]))
    assert read_back(vault, m.id, Keyring(private_keys=[private])) == data


def test_passphrase_iterations_recorded(vault, tmp_path, monkeypatch):
    monkeypatch.delenv("GENESIS_DR_TEST_KDF_ITERATIONS")
    m = backup_source(vault, Keyring(passphrase="pw"), BytesEngine({"main": b"x"}))
    keys = json.loads((tmp_path / "vault" / "backups" / m.id / "keys.json").read_text())
    assert keys["recipients"][0]["iterations"] >= 600_000


@pytest.mark.parametrize("victim", ["first", "last", "keys", "manifest"])
def test_one_flipped_byte_anywhere_is_rejected(vault, tmp_path, victim):
    keys = Keyring(passphrase="pw")
    m = backup_source(vault, keys, BytesEngine({"main": payload()}))
    backup_dir = tmp_path / "vault" / "backups" / m.id
    chunks = chunk_files(tmp_path / "vault", m.id)
    path = {
        "first": chunks[0],
        "last": chunks[-1],
        "keys": backup_dir / "keys.json",
        "manifest": backup_dir / "manifest.json",
    }[victim]
    raw = bytearray(path.read_bytes())
    pos = len(raw) // 2
    raw[pos] = raw[pos] ^ 0x01 if victim != "manifest" else ord("7") if raw[pos] != ord("7") else ord("8")
    path.write_bytes(bytes(raw))
    with pytest.raises((IntegrityError, WrongKeyError)):
        read_back(vault, m.id, keys)


def test_truncated_or_reordered_stream_is_rejected(vault, tmp_path):
    keys = Keyring(passphrase="pw")
    m = backup_source(vault, keys, BytesEngine({"main": payload()}))
    chunks = chunk_files(tmp_path / "vault", m.id)
    a, b = chunks[1].read_bytes(), chunks[2].read_bytes()
    chunks[1].write_bytes(b)
    chunks[2].write_bytes(a)
    with pytest.raises(IntegrityError):
        read_back(vault, m.id, keys)
    chunks[1].write_bytes(a)
    chunks[2].write_bytes(b)
    assert read_back(vault, m.id, keys)  # restored order reads again
    chunks[-1].unlink()
    with pytest.raises(IntegrityError, match="missing"):
        read_back(vault, m.id, keys)


def test_manifest_missing_or_unknown_version(vault, tmp_path):
    keys = Keyring(passphrase="pw")
    m = backup_source(vault, keys, BytesEngine({"main": b"data"}))
    path = tmp_path / "vault" / "backups" / m.id / "manifest.json"
    doc = json.loads(path.read_text())
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="version 99"):
        vault.open_backup(m.id, keys)
    path.unlink()
    with pytest.raises(BackupNotFoundError):
        vault.open_backup(m.id, keys)
    assert m.id not in vault.backup_ids()  # no manifest: the backup does not exist


def test_unknown_vault_version_refused(tmp_path):
    Vault.open(LocalStore(tmp_path / "v"), create=True)
    cfg = tmp_path / "v" / "config.json"
    cfg.write_text(cfg.read_text().replace('"version": 2', '"version": 7'))
    with pytest.raises(FormatError, match="version 7"):
        Vault.open(LocalStore(tmp_path / "v"))


def test_unknown_backup_id(vault):
    with pytest.raises(BackupNotFoundError, match="genesis-dr list"):
        vault.manifest("backup_20240101_000000_deadbeef")
    with pytest.raises(BackupNotFoundError):
        vault.manifest("../../etc/passwd")


def test_failed_run_leaves_truthful_record_and_no_chunks(vault, tmp_path):
    keys = Keyring(passphrase="pw")
    good = backup_source(vault, keys, BytesEngine({"main": payload()}))
    with pytest.raises(RuntimeError, match="went away"):
        backup_source(vault, keys, BytesEngine({"main": payload()}, fail_after=20_000))
    failed = [m for m in vault.list_backups() if m.status == FAILED]
    assert len(failed) == 1 and "went away" in failed[0].error
    assert chunk_files(tmp_path / "vault", failed[0].id) == []
    with pytest.raises(BackupNotFoundError, match="FAILED"):
        vault.open_backup(failed[0].id, keys)
    assert read_back(vault, good.id, keys)  # earlier backup untouched


def test_lock_blocks_second_run_and_stale_lock_expires(vault, monkeypatch):
    held = vault.lock("blob", "full backup").acquire()
    try:
        with pytest.raises(LockedError, match="locked by full backup"):
            backup_source(vault, Keyring(passphrase="pw"), BytesEngine({"main": b"x"}))
    finally:
        held.release()
    # A killed run: its process is gone and it never released the lock.
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys; sys.path.insert(0, '.');"
                "from core.repository.vault import Vault; from core.storage.local import LocalStore;"
                f"Vault.open(LocalStore({str(vault.store.root)!r})).lock('blob', 'killed run').acquire();"
                "import os; os._exit(0)"
            ),
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert vault.store.exists("locks/blob.lock")
    m = backup_source(vault, Keyring(passphrase="pw"), BytesEngine({"main": b"x"}))
    assert m.status == COMPLETED


def test_lock_from_other_host_expires_by_ttl(vault):
    record = {
        "token": "t",
        "host": "elsewhere",
        "pid": 1,
        "purpose": "full backup",
        "acquired_at": time.time() - 10,
        "expires_at": time.time() + 0.5,
    }
    vault.store.put("locks/blob.lock", json.dumps(record).encode())
    with pytest.raises(LockedError):
        backup_source(vault, Keyring(passphrase="pw"), BytesEngine({"main": b"x"}))
    time.sleep(0.6)
    assert backup_source(vault, Keyring(passphrase="pw"), BytesEngine({"main": b"x"})).status == COMPLETED


def _tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)


def test_vault_full_fails_cleanly(tmp_path):
    root = tmp_path / "small"
    _tmpfs(root, "size=256k")
    try:
        vault = Vault.open(LocalStore(root), create=True)
        keys = Keyring(passphrase="pw")
        small = backup_source(vault, keys, BytesEngine({"main": b"kept"}))
        with pytest.raises(VaultError, match="is full"):
            backup_source(vault, keys, BytesEngine({"main": os.urandom(2_000_000)}))
        assert read_back(vault, small.id, keys) == b"kept"
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


def test_vault_not_writable_fails_cleanly(tmp_path):
    root = tmp_path / "ro"
    _tmpfs(root, "size=1m")
    try:
        vault = Vault.open(LocalStore(root), create=True)
        keys = Keyring(passphrase="pw")
        kept = backup_source(vault, keys, BytesEngine({"main": b"kept"}))
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        with pytest.raises(VaultError, match="not writable"):
            backup_source(vault, keys, BytesEngine({"main": b"new"}))
        assert read_back(vault, kept.id, keys) == b"kept"
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)
