"""Secrets, attacked the way an attacker would: read prefect.db, ask the local API for every block
secret, grep temporary directories and a dump tool's open files, pass a password on the command line.

The vault's key (passphrase, X25519 private key) must never be in Prefect; a backup host needs only
public keys; a passphrase that is not the vault's is refused unless rotated on purpose; MariaDB's
password never touches a disk, even when the backup is killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from core.crypto.keys import Keyring, _pbkdf2, b64e, generate_x25519_keypair, kdf_iterations
from core.crypto.secretref import read_secret
from core.errors import ConfigError, WrongKeyError
from core.operations import backup_source
from core.repository.vault import Vault
from core.storage.local import LocalStore
from tests.commands import command_runner
from tests.test_vault import BytesEngine

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "vault-Passphrase-0f-the-test"
PRIVATE_MARK = "private-key-canary"  # never a real key; only proves where a value went
SOURCE_PASSWORD = "pg-Block-Password-77"


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "BACKUP_ENCRYPTION", "PREFECT_API"))}


@pytest.fixture
def cli(prefect_api, tmp_path):
    return command_runner(tmp_path, _clean_env())


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("genesis-dr: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def prefect_db_bytes() -> bytes:
    """Every byte of the API's SQLite database (and its WAL), as a stolen copy would hold them."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    path = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def prefect_db_rows(sql: str) -> list[tuple]:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    path = PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def api_block_secrets() -> str:
    """What any local process gets from the API: every block document, secrets decrypted."""
    from prefect.settings import PREFECT_API_URL

    resp = httpx.post(f"{PREFECT_API_URL.value()}/block_documents/filter", json={"include_secrets": True}, timeout=30)
    resp.raise_for_status()
    return resp.text


def all_flow_run_parameters() -> tuple[int, str]:
    """(number of flow runs, every run's parameters as text), read page by page from the API."""
    from prefect.settings import PREFECT_API_URL

    runs: list[dict] = []
    while True:
        resp = httpx.post(
            f"{PREFECT_API_URL.value()}/flow_runs/filter", json={"limit": 200, "offset": len(runs)}, timeout=30
        )
        resp.raise_for_status()
        page = resp.json()
        runs += page
        if len(page) < 200:
            return len(runs), json.dumps([run["parameters"] for run in runs])


def write_stack(tmp_path: Path, name: str, encryption: str, extra_sources: str = "") -> Path:
    files = tmp_path / "app"
    (files / "conf").mkdir(parents=True, exist_ok=True)
    (files / "conf" / "app.ini").write_text("[app]\nkey = 1\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
stack: {name}
vault: {{path: ./vault-{name}}}
encryption:
{encryption}
sources:
  - {{name: app-files, kind: files, root: {files}}}
{extra_sources}
"""
    )
    return path


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_prefect_database_and_api_never_hold_the_vault_key(cli, tmp_path):
    private, public = generate_x25519_keypair()
    key_file = private_file(tmp_path / "x25519.key", private)
    stack = write_stack(
        tmp_path,
        "leak",
        f"  passphrase_from: env:LEAK_TEST_PASSPHRASE\n  x25519_public_keys: [{public}]\n"
        f"  x25519_private_key_from: file:{key_file}",
        extra_sources=f"  - {{name: db, kind: postgres, password: {SOURCE_PASSWORD}, database: app}}",
    )
    env = {"LEAK_TEST_PASSPHRASE": PASSPHRASE}
    cli("apply", str(stack), extra_env=env)
    cli("backup", "full", "--stack", "leak", "--source", "app-files", extra_env=env)
    backup_id = json.loads(cli("list", "--stack", "leak", "--json").stdout)[0]["id"]
    # The restoring process reads both secrets itself; each alone opens the backup.
    for restore_env, n in ((env, 1), ({}, 2)):
        out = cli(
            "restore", "--stack", "leak", "--source", "app-files", "--backup-id", backup_id,
            "--target", f"root={tmp_path / f'restored-{n}'}", extra_env=restore_env,
        ).stdout  # fmt: skip
        assert "verified" in out

    seen_by_api = api_block_secrets()
    assert SOURCE_PASSWORD in seen_by_api  # the attack works: block secrets come back in the clear...
    assert "env:LEAK_TEST_PASSPHRASE" in seen_by_api and f"file:{key_file}" in seen_by_api  # ...references do
    stolen = prefect_db_bytes()
    block_data = json.dumps(prefect_db_rows("SELECT data FROM block_document"))
    _, runs = all_flow_run_parameters()
    for secret in (PASSPHRASE, private):
        assert secret not in seen_by_api  # ...but never the vault's key
        assert secret.encode() not in stolen
        assert secret not in block_data and secret not in runs


def test_a_literal_secret_in_the_stack_file_is_refused_and_never_stored(cli, tmp_path):
    stack = write_stack(tmp_path, "literal", f"  passphrase: {PASSPHRASE}")
    err = error_line(cli("apply", str(stack), expect=2))
    assert "encryption.passphrase" in err and "passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD" in err
    assert PASSPHRASE not in err
    stack = write_stack(tmp_path, "literal", f"  x25519_private_key: {PRIVATE_MARK}")
    assert "x25519_private_key_from" in error_line(cli("apply", str(stack), expect=2))
    assert PASSPHRASE.encode() not in prefect_db_bytes() and PRIVATE_MARK.encode() not in prefect_db_bytes()


def test_a_backup_host_with_only_public_keys_needs_no_secret(cli, tmp_path):
    private, public = generate_x25519_keypair()
    stack = write_stack(tmp_path, "pubonly", f"  x25519_public_keys: [{public}]")
    cli("apply", str(stack))
    cli("backup", "full", "--stack", "pubonly")  # no passphrase anywhere in its environment
    listing = json.loads(cli("list", "--stack", "pubonly", "--json").stdout)
    backup_id = listing[0]["id"]
    assert listing[0]["key_ids"] == [f"x25519:{_fingerprint8(public)}"]

    def restore(expect: int, **env: str) -> subprocess.CompletedProcess:
        return cli(
            "restore", "--stack", "pubonly", "--source", "app-files", "--backup-id", backup_id,
            "--target", f"root={tmp_path / 'out'}", expect=expect, extra_env=env,
        )  # fmt: skip

    assert "wrong passphrase or private key" in error_line(restore(6))  # the backup host cannot read it
    # A restoring host names the key: read from a 0600 file of its own, never from Prefect.
    key_file = private_file(tmp_path / "restore.key", private, 0o644)
    stack.write_text(
        stack.read_text().replace(f"[{public}]", f"[{public}]\n  x25519_private_key_from: file:{key_file}")
    )
    cli("apply", str(stack))
    err = error_line(restore(2))
    assert str(key_file) in err and "chmod 600" in err and private not in err
    key_file.chmod(0o400)
    assert "verified" in restore(0).stdout


def _fingerprint8(public: str) -> str:
    from core.crypto.keys import fingerprint

    return fingerprint(public)[:8]


def test_another_passphrase_is_refused_until_rotated_and_list_names_each_key(cli, tmp_path):
    stack = write_stack(tmp_path, "kcv", "  passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD")
    old, new = {"BACKUP_ENCRYPTION_PASSWORD": PASSPHRASE}, {"BACKUP_ENCRYPTION_PASSWORD": "a-new-Passphrase-for-2027"}
    cli("apply", str(stack))
    cli("backup", "full", "--stack", "kcv", extra_env=old)

    proc = cli("backup", "full", "--stack", "kcv", extra_env=new, expect=6)
    err = error_line(proc)
    assert "does not match the vault's key" in err and "key rotate --stack kcv" in err
    assert new["BACKUP_ENCRYPTION_PASSWORD"] not in proc.stdout + proc.stderr
    vault = tmp_path / "vault-kcv"
    assert len(list((vault / "backups").iterdir())) == 1  # refused before anything was written

    for bad, why in (("short-pw", "at least 12"), ("   \t      \t   ", "whitespace")):
        assert why in error_line(
            cli("backup", "full", "--stack", "kcv", extra_env={"BACKUP_ENCRYPTION_PASSWORD": bad}, expect=2)
        )

    cli("key", "rotate", "--stack", "kcv", "--new-backups-only", extra_env=new)
    cli("backup", "full", "--stack", "kcv", extra_env=new)
    cli("backup", "full", "--stack", "kcv", extra_env=old, expect=6)  # the old one is not the vault's key any more

    listing = json.loads(cli("list", "--stack", "kcv", "--json").stdout)
    assert len(listing) == 2
    first, second = (b["key_ids"] for b in listing)
    assert first != second and all(k[0].startswith("passphrase:") and len(k[0]) == 19 for k in (first, second))
    table = cli("list", "--stack", "kcv").stdout
    assert f"p:{first[0].split(':')[1]}" in table and f"p:{second[0].split(':')[1]}" in table

    # Old backups stay readable with the passphrase they were written with.
    def restore(backup: dict, env: dict, expect: int = 0) -> subprocess.CompletedProcess:
        target = tmp_path / f"r-{backup['id']}-{expect}"
        return cli(
            "restore", "--stack", "kcv", "--source", "app-files", "--backup-id", backup["id"],
            "--target", f"root={target}", extra_env=env, expect=expect,
        )  # fmt: skip

    restore(listing[0], old)
    restore(listing[0], new, expect=6)
    restore(listing[1], new)


def test_refused_target_password_never_reaches_a_flow_run(cli, tmp_path):
    stack = write_stack(tmp_path, "targetpw", "  passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD")
    cli("apply", str(stack))
    secret = "Target-Password-On-The-Command-Line-9"
    before = all_flow_run_parameters()
    args = ("restore", "--stack", "targetpw", "--source", "app-files", "--backup-id", "backup_20200101_000000_deadbeef")
    err = error_line(cli(*args, "--target", f"password={secret}", expect=2))
    assert "secrets are not accepted" in err and secret not in err
    assert "not a files setting" in error_line(cli(*args, "--target", "colour=blue", expect=2))
    after = all_flow_run_parameters()
    assert after[0] == before[0]  # no run was created at all
    assert secret not in after[1] and secret.encode() not in prefect_db_bytes()


def test_prefect_home_and_database_are_private_after_apply(tmp_path):
    home = tmp_path / "fresh-prefect-home"
    stack = write_stack(tmp_path, "home", "  passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD")
    env = _clean_env() | {
        "PREFECT_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env = {k: v for k, v in env.items() if "DATABASE_CONNECTION_URL" not in k}
    old_umask = os.umask(0o022)  # what a default login gets: Prefect alone would make these 0755/0644
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "cli.main", "apply", str(stack)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.umask(old_umask)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    db = home / "prefect.db"
    assert db.exists()
    for path in home.glob("prefect.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # An existing home made by Prefect itself (0755, database 0644) is tightened too.
    home.chmod(0o755)
    db.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "key", "generate"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (stat.S_IMODE(home.stat().st_mode), stat.S_IMODE(db.stat().st_mode)) == (0o700, 0o600)


# -- core: references, the passphrase policy, NFC, vaults from before key checks --------------------------


def test_secret_references_are_read_at_use_and_unsafe_files_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GDR_TEST_SECRET", "from-the-environment")
    assert read_secret("env:GDR_TEST_SECRET", "x") == "from-the-environment"
    good = private_file(tmp_path / "good", "from-a-file")
    assert read_secret(f"file:{good}", "x") == "from-a-file"
    loose = private_file(tmp_path / "loose", "s", 0o640)
    link = tmp_path / "link"
    link.symlink_to(good)
    for ref, why in (
        ("env:GDR_TEST_UNSET", "GDR_TEST_UNSET is not set"),
        (f"file:{loose}", "chmod 600"),
        (f"file:{link}", "cannot read"),
        (f"file:{tmp_path}", "not a regular file"),
        ("prompt", "needs a terminal"),
    ):
        with pytest.raises(ConfigError, match=why):
            read_secret(ref, "encryption.passphrase_from")


def test_a_relative_file_reference_is_relative_to_the_stack_file(tmp_path):
    from core.stack import load_stack_file

    stack = write_stack(tmp_path, "rel", "  passphrase_from: file:secrets/passphrase")
    assert load_stack_file(stack).encryption.passphrase_from == f"file:{tmp_path / 'secrets' / 'passphrase'}"
    stack.write_text(stack.read_text().replace("file:secrets/passphrase", "prompt"))
    assert load_stack_file(stack).keyring().passphrase_from == "prompt"  # only where, never a value


def test_passphrases_are_nfc_and_old_raw_wraps_still_open(tmp_path, monkeypatch):
    decomposed, composed = "cafe\u0301-passphrase-long", "caf\u00e9-passphrase-long"
    vault = Vault.open(LocalStore(tmp_path / "v"), create=True)
    monkeypatch.setenv("GDR_TEST_PASS", decomposed)
    m = backup_source(vault, Keyring(passphrase_from="env:GDR_TEST_PASS"), BytesEngine({"main": b"x"}))
    monkeypatch.setenv("GDR_TEST_PASS", composed)
    backup_source(vault, Keyring(passphrase_from="env:GDR_TEST_PASS"), BytesEngine({"main": b"y"}))  # same key
    assert vault.open_backup(m.id, Keyring(passphrase=composed)).manifest.id == m.id
    # A wrap written before normalisation, from the raw (decomposed) bytes, still opens.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from core.crypto.keys import _aad

    salt, nonce, key = os.urandom(16), os.urandom(12), os.urandom(32)
    raw_kek = _pbkdf2(decomposed, salt, kdf_iterations())
    record = {
        "type": "passphrase", "kdf": "pbkdf2-hmac-sha256", "iterations": kdf_iterations(), "salt": b64e(salt),
        "nonce": b64e(nonce), "wrapped_key": b64e(AESGCM(raw_kek).encrypt(nonce, key, _aad("b", "passphrase"))),
    }  # fmt: skip
    assert Keyring(passphrase=decomposed).unwrap("b", [record]) == key


def test_a_vault_from_before_key_checks_gets_one_on_its_next_backup(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "v")
    vault = Vault.open(store, create=True)
    old = backup_source(vault, Keyring(passphrase="pw"), BytesEngine({"main": b"old"}))  # a short passphrase of old
    for key in list(store.list("keychecks/")):  # as written by a genesis-dr without key checks
        store.delete(key)
    assert vault.key_check() is None
    monkeypatch.setenv("GDR_TEST_PASS", "pw")
    with pytest.raises(ConfigError, match="at least 12"):  # too short for new backups...
        backup_source(vault, Keyring(passphrase_from="env:GDR_TEST_PASS"), BytesEngine({"main": b"x"}))
    assert vault.open_backup(old.id, Keyring(passphrase_from="env:GDR_TEST_PASS")).manifest.id == old.id  # ...opens old
    monkeypatch.setenv("GDR_TEST_PASS", PASSPHRASE)
    backup_source(vault, Keyring(passphrase_from="env:GDR_TEST_PASS"), BytesEngine({"main": b"new"}))
    record = vault.key_check()
    assert record is not None and set(record) >= {"salt", "iterations", "check", "key_id"}
    assert PASSPHRASE.encode() not in json.dumps(record).encode()
    with pytest.raises(WrongKeyError, match="does not match the vault's key"):
        backup_source(vault, Keyring(passphrase="another-long-passphrase"), BytesEngine({"main": b"x"}))


# -- MariaDB: the password never touches a disk -----------------------------------------------------------

_SLOW_BACKUP = r"""
import json, os, sys, time
from pydantic import SecretStr
import core.repository.vault as vault_mod
from core.crypto.keys import Keyring
from core.engines.mysql.engine import MySQLEngine
from core.operations import backup_source
from core.repository.vault import Vault
from core.sources import MySQLSourceConfig
from core.storage.local import LocalStore

def stalled(self, name, data):
    data.read(1 << 20)  # the dump is running and its snapshot open; then the run hangs until killed
    print("DUMPING", flush=True)
    time.sleep(600)

vault_mod.BackupWriter.write_stream = stalled
cfg = json.loads(sys.argv[1]) | {"password": SecretStr(os.environ["GDR_TEST_MYSQL_PASSWORD"])}
vault = Vault.open(LocalStore(sys.argv[2]), create=True)
backup_source(vault, Keyring(passphrase="pw"), MySQLEngine(MySQLSourceConfig(**cfg)))
"""


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _files_holding(needle: bytes, roots: list[Path], since: float, skip: Path) -> list[str]:
    found = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            if Path(dirpath).is_relative_to(skip):
                continue
            for name in names:
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                    if stat.S_ISREG(st.st_mode) and st.st_size < (1 << 20) and st.st_mtime >= since - 1:
                        if needle in path.read_bytes():
                            found.append(str(path))
                except OSError:
                    continue
    return found


def test_mysql_password_never_touches_disk_even_when_killed(mysql_server, tmp_path):
    database = mysql_server.create_database("killme")
    with mysql_server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE bulk (id INT PRIMARY KEY, pad LONGBLOB)")
        for i in range(16):  # more than the pipe holds: the dump stays alive while the run is stalled
            cur.execute("INSERT INTO bulk VALUES (%s, %s)", (i, os.urandom(1 << 20)))
    started = time.time()
    cfg = mysql_server.config("app-db", database).model_dump(mode="json")
    needle = mysql_server.password.split(" ")[0].encode()  # the unique part of the password
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_BACKUP, json.dumps(cfg), str(tmp_path / "vault")],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO), "GDR_TEST_MYSQL_PASSWORD": mysql_server.password},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "DUMPING"
        dumps = [p for p in _children(proc.pid) if "mariadb-dump" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(dumps) == 1
        argv = Path(f"/proc/{dumps[0]}/cmdline").read_text().split("\0")
        option = argv[1].removeprefix("--defaults-extra-file=")
        assert argv[1].startswith("--defaults-extra-file=/dev/fd/"), argv
        # The tool's option file is a memory file: no path on any file system.
        link = os.readlink(f"/proc/{dumps[0]}/fd/{option.removeprefix('/dev/fd/')}")
        assert link.startswith("/memfd:genesis-dr-mysql-options"), link
        assert stat.S_IMODE(os.stat(f"/proc/{dumps[0]}/fd/{option.removeprefix('/dev/fd/')}").st_mode) == 0o600
        for pid in (proc.pid, dumps[0]):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/") and Path(target).is_file():
                    assert needle not in Path(target).read_bytes()[: 1 << 20], target
        os.kill(proc.pid, signal.SIGKILL)
        os.kill(dumps[0], signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    roots = sorted({Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), tmp_path})
    assert _files_holding(needle, [r for r in roots if r.exists()], started, skip=mysql_server.root) == []
