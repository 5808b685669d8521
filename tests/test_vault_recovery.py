"""The vault in trouble: corrupt manifests, a lost config.json, killed runs, dead leases, read-only stores.

Each test reproduces a failure an SRE found (issue 5) against a real vault on disk;
the engine is the in-test byte source from test_vault.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.crypto.keys import Keyring
from core.engines.base import BackupResult
from core.errors import ConfigError, IntegrityError, LockedError, VaultError
from core.operations import backup_source
from core.plan import choose_backup
from core.repository.lock import Lease, break_lock, process_start_time, read_lease
from core.repository.manifest import ABANDONED, COMPLETED, CORRUPT, FAILED, IN_PROGRESS
from core.repository.vault import Vault, VaultMissingError
from core.storage.base import Store
from core.storage.local import LocalStore
from tests.test_cli import cli, one_line_error, write_stack  # noqa: F401 (cli: the fixture)
from tests.test_vault import BytesEngine, payload, read_back

REPO = Path(__file__).resolve().parents[1]
KEYS = Keyring(passphrase="pw")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "4096")


@pytest.fixture
def vault(tmp_path):
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


class NamedEngine(BytesEngine):
    def __init__(self, name: str, payloads: dict[str, bytes], fail_after: int | None = None):
        super().__init__(payloads, fail_after)
        self.config = self.config.model_copy(update={"name": name})


def backup(vault: Vault, source: str = "blob", data: bytes | None = None):
    return backup_source(vault, KEYS, NamedEngine(source, {"main": data if data is not None else payload()}))


def manifest_path(vault: Vault, backup_id: str) -> Path:
    return vault.store.root / "backups" / backup_id / "manifest.json"


# -- 1. one broken backup affects only itself -------------------------------------------


def test_truncated_and_swapped_manifests_are_corrupt_entries_and_the_rest_restores(vault):
    a1, a2, a3 = (backup(vault, "app") for _ in range(3))
    b1 = backup(vault, "db", b"db data")
    truncated = manifest_path(vault, a1.id)
    truncated.write_bytes(truncated.read_bytes()[:100])
    # Swap two manifests of one source: each now names the other backup.
    p2, p3 = manifest_path(vault, a2.id), manifest_path(vault, a3.id)
    raw2, raw3 = p2.read_bytes(), p3.read_bytes()
    p2.write_bytes(raw3)
    p3.write_bytes(raw2)

    entries = {e.id: e for e in vault.entries()}
    assert {i: e.state for i, e in entries.items()} == {
        a1.id: CORRUPT,
        a2.id: CORRUPT,
        a3.id: CORRUPT,
        b1.id: COMPLETED,
    }
    assert "not valid JSON" in entries[a1.id].reason
    assert f"manifest names another backup ({a3.id})" in entries[a2.id].reason
    assert entries[a2.id].source == "app"  # from started.json: the corrupt entry still says whose it is
    assert [e.id for e in vault.entries("db")] == [b1.id]
    assert {e.id for e in vault.entries("app")} == {a1.id, a2.id, a3.id}

    # Planners choose among readable manifests only; the damaged backups refuse one by one.
    assert [m.id for m in vault.list_backups()] == [b1.id]
    assert vault.list_backups("app") == []
    assert choose_backup(vault.list_backups("db"), "db", None, None).id == b1.id
    assert read_back(vault, b1.id, KEYS) == b"db data"
    for broken in (a1, a2, a3):
        with pytest.raises(IntegrityError, match=broken.id):
            vault.open_backup(broken.id, KEYS)

    # A new backup of the damaged source works and is chosen.
    a4 = backup(vault, "app")
    assert choose_backup(vault.list_backups("app"), "app", None, None).id == a4.id
    summary = {e.id: e.summary() for e in vault.entries()}
    assert summary[a1.id]["status"] == CORRUPT and "not valid JSON" in summary[a1.id]["error"]


def test_unreadable_manifest_version_is_listed_not_fatal(vault):
    good, odd = backup(vault), backup(vault)
    path = manifest_path(vault, odd.id)
    doc = json.loads(path.read_text())
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    states = {e.id: (e.state, e.reason) for e in vault.entries()}
    assert states[good.id] == (COMPLETED, None)
    assert states[odd.id][0] == CORRUPT and "version 99" in states[odd.id][1]
    assert [m.id for m in vault.list_backups("blob")] == [good.id]


# -- 2. a lost config.json is refused, never silently replaced --------------------------


def test_missing_config_json_is_refused_both_ways_and_can_be_recreated_explicitly(vault, tmp_path):
    kept = backup(vault)
    config = tmp_path / "vault" / "config.json"
    old_id = json.loads(config.read_text())["id"]
    config.unlink()
    store = LocalStore(tmp_path / "vault")
    for create in (False, True):
        with pytest.raises(VaultError, match="config.json") as info:
            Vault.open(store, create=create)
        assert not isinstance(info.value, VaultMissingError)
        assert str(tmp_path / "vault") in str(info.value) and "replica" in str(info.value)
    assert not config.exists()  # no new identity was written

    # An empty store is simply "no vault yet".
    with pytest.raises(VaultMissingError):
        Vault.open(LocalStore(tmp_path / "empty"))
    assert not (tmp_path / "empty").exists()

    # Only locks left (a run killed before its first object): still refused.
    only_locks = LocalStore(tmp_path / "locks-only")
    only_locks.put("locks/blob.lock", b"{}")
    with pytest.raises(VaultError, match="config.json"):
        Vault.open(only_locks, create=True)

    repaired = Vault.recreate_identity(store)
    assert repaired.config["id"] != old_id and "recreated_at" in repaired.config
    assert read_back(repaired, kept.id, KEYS)  # backups never depended on the vault id
    with pytest.raises(VaultError, match="already has a config.json"):
        Vault.recreate_identity(store)


# -- 3. killed runs: partial backups are found, recorded FAILED and removed -------------

_KILLED_RUN = """
import os, sys, time
sys.path.insert(0, {repo!r})
from core.crypto.keys import Keyring, generate_x25519_keypair
from core.engines.base import BackupResult
from core.repository.vault import Vault
from core.storage.local import LocalStore
vault = Vault.open(LocalStore({root!r}))
vault.lock({source!r}, "full backup").acquire()
# A public key only: the run is killed and never read, and needs no passphrase (nor the vault's key check).
writer = vault.begin_backup(source={source!r}, kind="test", backup_type="full", target="t",
                            keyring=Keyring(public_keys=[generate_x25519_keypair()[1]]))
with writer.open_stream("main") as out:
    out.write(os.urandom(3 * 4096 + 10))
    while len(list(vault.store.list(f"backups/{{writer.id}}/streams/"))) < 3:
        time.sleep(0.01)  # the three full chunks are stored; the fourth is still buffered
    {end}
"""


def killed_run(vault: Vault, source: str = "blob", end: str = "os._exit(9)") -> str:
    """A backup of ``source`` killed mid-stream (chunks written, no manifest); returns its id."""
    before = set(vault.store.children("backups/"))
    code = _KILLED_RUN.format(repo=str(REPO), root=str(vault.store.root), source=source, end=end)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    (new,) = set(vault.store.children("backups/")) - before
    return new


def stream_objects(vault: Vault, backup_id: str) -> list[str]:
    return list(vault.store.list(f"backups/{backup_id}/streams/"))


def test_killed_run_is_listed_abandoned_then_recorded_failed_by_the_next_backup(vault):
    good = backup(vault)
    partial = killed_run(vault)
    other = killed_run(vault, "other")
    assert len(stream_objects(vault, partial)) == 3
    start = json.loads(vault.store.get(f"backups/{partial}/started.json"))
    assert start["source"] == "blob" and start["lease"] == "blob" and start["pid_start"] is not None

    # Nothing reads it; the catalog shows it until the next backup of its source.
    assert [m.id for m in vault.list_backups()] == [good.id]
    assert partial not in vault.backup_ids()
    entry = {e.id: e for e in vault.entries()}[partial]
    assert entry.state == ABANDONED and entry.source == "blob" and "lease 'blob' is gone" in entry.reason
    assert [e.id for e in vault.entries(partial=False)] == [good.id]

    nxt = backup(vault)
    records = {m.id: m for m in vault.list_backups("blob")}
    assert set(records) == {good.id, partial, nxt.id}
    failed = records[partial]
    assert failed.status == FAILED and failed.error.startswith("interrupted (abandoned partial backup found")
    assert failed.kind == "test" and failed.started_at == start["started_at"]
    assert stream_objects(vault, partial) == []
    assert vault.store.exists(f"backups/{partial}/keys.json")  # kept, as for any FAILED record
    # Another source's partial is left for that source's next backup.
    assert {e.id: e.state for e in vault.entries()}[other] == ABANDONED
    assert len(stream_objects(vault, other)) == 3
    assert read_back(vault, good.id, KEYS) and read_back(vault, nxt.id, KEYS)


def test_partial_of_a_live_run_is_in_progress_and_left_alone(vault):
    lease = vault.lock("blob", "full backup").acquire()
    try:
        writer = vault.begin_backup(source="blob", kind="test", backup_type="full", target="t", keyring=KEYS)
        with writer.open_stream("main") as out:
            out.write(os.urandom(3 * 4096 + 10))
            (entry,) = vault.entries()
            assert entry.state == IN_PROGRESS and "holds lease 'blob'" in entry.reason
            # A backup of another source (under its own lease) does not touch it.
            backup(vault, "other")
            assert {e.id: e.state for e in vault.entries()}[writer.id] == IN_PROGRESS
        writer.commit(BackupResult(position={}, checks={}))
    finally:
        lease.release()
    assert {e.id: e.state for e in vault.entries()}[writer.id] == COMPLETED


def test_partial_without_start_record_is_recovered_once_no_live_lease_can_own_it(vault):
    partial = killed_run(vault)
    vault.store.delete(f"backups/{partial}/started.json")  # as an older genesis-dr left it
    # A live lease taken before the partial started may own it: in progress.
    record = {
        "token": "t",
        "host": "elsewhere",
        "pid": 1,
        "purpose": "full backup",
        "acquired_at": time.time() - 3600,
        "expires_at": time.time() + 300,
    }
    vault.store.put("locks/other.lock", json.dumps(record).encode())
    assert {e.id: e.state for e in vault.entries()}[partial] == IN_PROGRESS
    backup(vault)
    assert {e.id: e.state for e in vault.entries()}[partial] == IN_PROGRESS
    vault.store.delete("locks/other.lock")
    assert {e.id: e.state for e in vault.entries()}[partial] == ABANDONED
    backup(vault)
    failed = vault.manifest(partial)
    assert failed.status == FAILED and failed.source == "unknown" and "no start record" in failed.error
    assert stream_objects(vault, partial) == []


def test_failed_record_with_leftover_chunks_is_swept(vault):
    partial = killed_run(vault)
    lease = vault.lock("blob", "full backup").acquire()
    try:
        (recorded,) = vault.recover_abandoned("blob")
    finally:
        lease.release()
    assert recorded.id == partial
    # A writer that wakes up after its lease was taken over can still drop chunks; it can never commit.
    vault.store.put(f"backups/{partial}/streams/main/00000007", b"late chunk")
    backup(vault)
    assert stream_objects(vault, partial) == []


# -- 4. leases: reused pids, and an operator's unlock ----------------------------------


def _lease_record(pid: int, pid_start: int | None, host: str | None = None) -> bytes:
    return json.dumps(
        {
            "token": "t",
            "host": host or socket.gethostname(),
            "pid": pid,
            "pid_start": pid_start,
            "purpose": "full backup",
            "acquired_at": time.time() - 10,
            "expires_at": time.time() + 300,
        }
    ).encode()


def test_lease_of_a_reused_pid_is_stale_at_once(vault):
    me = os.getpid()
    assert process_start_time(me) is not None
    # The pid is alive, but it is not the process that took the lease: it started at another time.
    vault.store.put("locks/blob.lock", _lease_record(me, process_start_time(me) + 12345))
    assert backup(vault).status == COMPLETED
    assert vault.store.children("locks/stale/")  # the stale lease was kept for forensics
    # The same pid with the same start time is the holder itself: it blocks.
    vault.store.put("locks/blob.lock", _lease_record(me, process_start_time(me)))
    with pytest.raises(LockedError, match="genesis-dr unlock --lock blob"):
        backup(vault)


def test_break_lock_refuses_a_live_local_holder_and_removes_dead_ones(vault):
    store = vault.store
    live = Lease(store, "blob", "full backup").acquire()
    try:
        with pytest.raises(LockedError, match="live process on this host"):
            break_lock(store, "blob")
        assert read_lease(store, "blob")["token"] == live.token
    finally:
        live.release()

    store.put("locks/blob.lock", _lease_record(1, None, host="elsewhere"))  # another host: operator's call
    message = break_lock(store, "blob")
    assert "removed lease 'blob'" in message and "elsewhere" in message and "locks/stale/blob." in message
    assert read_lease(store, "blob") is None

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.put("locks/restore-x.lock", _lease_record(dead.pid, 1))
    assert "removed lease 'restore-x'" in break_lock(store, "restore-x")

    with pytest.raises(ConfigError, match="no lease 'nope'"):
        break_lock(store, "nope")

    # Generic over stores: a target-lock store outside the vault works the same way.
    targets = LocalStore(vault.store.root.parent / "target-locks")
    targets.put("locks/target-abc.lock", _lease_record(1, None, host="elsewhere"))
    assert "removed lease 'target-abc'" in break_lock(targets, "target-abc")


# -- 5. reading never writes: restores from a read-only vault ---------------------------


class ReadOnlyStore(Store):
    """Forwards reads; any write is a test failure."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def describe(self):
        return self.inner.describe()

    def get(self, key):
        return self.inner.get(key)

    def get_versioned(self, key):
        return self.inner.get_versioned(key)

    def stat(self, key):
        return self.inner.stat(key)

    def exists(self, key):
        return self.inner.exists(key)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def children(self, prefix):
        return self.inner.children(prefix)

    def _refuse(self, *args, **kwargs):
        raise AssertionError(f"write to a read-only vault: {args}")

    put = create = replace = delete = delete_if = _refuse


def _read_everything(vault: Vault, ids: list[str]) -> dict[str, bytes]:
    vault.entries()
    vault.list_backups()
    out = {}
    for backup_id in ids:
        reader = vault.open_backup(backup_id, KEYS)
        out[backup_id] = b"".join(reader.iter_stream("main"))
        assert reader.verify_objects() == len(out[backup_id])
        reader.close()
    return out


def test_open_list_and_read_never_write(vault):
    data = payload()
    m = backup(vault, data=data)
    killed_run(vault)  # a partial and a corrupt entry too: listing them must not write either
    corrupt = backup(vault)
    manifest_path(vault, corrupt.id).write_text("{")
    ro = Vault.open(ReadOnlyStore(vault.store))
    assert _read_everything(ro, [m.id]) == {m.id: data}


def test_restore_reads_from_a_read_only_mount(vault, tmp_path):
    data = payload()
    m = backup(vault, data=data)
    killed_run(vault)
    mirror = tmp_path / "ro-mirror"
    mirror.mkdir()
    subprocess.run(["mount", "--bind", str(vault.store.root), str(mirror)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mirror)], check=True)
        with pytest.raises(OSError):
            (mirror / "probe").write_text("x")  # really read-only, even for root
        ro = Vault.open(LocalStore(mirror))
        assert _read_everything(ro, [m.id]) == {m.id: data}
        assert sorted(e.state for e in ro.entries()) == [ABANDONED, COMPLETED]
        # Creating on a read-only store that already is a vault opens it without writing.
        assert Vault.open(LocalStore(mirror), create=True).config == ro.config
    finally:
        subprocess.run(["umount", "-l", str(mirror)], check=True)


# -- through the command -------------------------------------------------------------


def test_list_unlock_and_lost_config_through_the_command(cli, tmp_path):  # noqa: F811 (the fixture)
    files = tmp_path / "app"
    files.mkdir()
    (files / "a.txt").write_text("hello")
    cli("apply", str(write_stack(tmp_path, "recov", files)))
    cli("backup", "full", "--stack", "recov")
    cli("backup", "full", "--stack", "recov")
    good, broken = (b["id"] for b in json.loads(cli("list", "--stack", "recov", "--json").stdout))
    root = tmp_path / "vault-recov"
    path = root / "backups" / broken / "manifest.json"
    path.write_bytes(path.read_bytes()[:80])
    vault = Vault.open(LocalStore(root))
    partial = killed_run(vault, "app-files")

    # One corrupt backup: listed as CORRUPT with its reason; the other still lists and restores.
    listing = {b["id"]: b for b in json.loads(cli("list", "--stack", "recov", "--json").stdout)}
    assert {i: b["status"] for i, b in listing.items()} == {good: COMPLETED, broken: CORRUPT}
    assert "not valid JSON" in listing[broken]["error"]
    table = cli("list", "--stack", "recov").stdout
    assert f"CORRUPT: backup {broken}" in table and "1 unfinished backup" in table and partial not in table
    table = cli("list", "--stack", "recov", "--all").stdout
    assert partial in table and "ABANDONED" in table
    target = tmp_path / "restored"
    restore = ("restore", "--stack", "recov", "--source", "app-files", "--target", f"root={target}")
    assert "verified" in cli(*restore, "--backup-id", good).stdout
    assert (target / "a.txt").read_text() == "hello"

    # unlock: a dead run's lease goes (and says what it removed); a name that holds nothing is refused.
    (root / "locks").mkdir(exist_ok=True)
    (root / "locks" / "app-files.lock").write_bytes(_lease_record(1, None, host="elsewhere"))
    out = cli("unlock", "--stack", "recov", "--source", "app-files").stdout
    assert "removed lease 'app-files'" in out and "elsewhere" in out
    assert "no lease 'app-files'" in one_line_error(
        cli("unlock", "--stack", "recov", "--source", "app-files", expect=2)
    )

    # The next backup (through the flow) records the killed run FAILED and removes its chunks.
    cli("backup", "full", "--stack", "recov")
    listing = {b["id"]: b for b in json.loads(cli("list", "--stack", "recov", "--json").stdout)}
    assert listing[partial]["status"] == FAILED
    assert listing[partial]["error"].startswith("interrupted (abandoned partial backup found")
    assert sorted(f for f in (root / "backups" / partial).rglob("*") if f.is_file()) == [
        root / "backups" / partial / name for name in ("keys.json", "manifest.json", "started.json")
    ]

    # A lost config.json: list and backup refuse with the recovery; nothing writes a new identity silently.
    (root / "config.json").unlink()
    for args in (("list", "--stack", "recov"), ("backup", "full", "--stack", "recov")):
        err = one_line_error(cli(*args, expect=3))
        assert str(root) in err and "config.json" in err and "repair-vault" in err
    assert not (root / "config.json").exists()
    assert "new config.json" in cli("repair-vault", "--stack", "recov", "--new-identity").stdout
    assert good in cli("list", "--stack", "recov").stdout
