"""Replication of a vault (core.replication): fulls, chains and logs copied verified, resumed, repaired,
and restored from the replica alone.

Real parts only: files backups of a real tree through core.operations, log pieces
through the vault's own LogWriter, local stores on disk, S3 on the session's moto
server (three regions), GCS on the emulator. Faults come from small wrappers over
the real stores (a store that dies after N writes, a primary that goes away).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from core.chains import parse_iso
from core.crypto.keys import Keyring
from core.engines.base import PieceInfo
from core.errors import ConfigError, IntegrityError, LockedError, ReplicationError, VaultError
from core.operations import backup_source
from core.replication import open_replica, replicate
from core.repository.lock import Lease
from core.repository.log import LogReader, LogWriter
from core.repository.manifest import COMPLETED, FAILED
from core.repository.vault import Vault
from core.storage.base import ObjectInfo, Store, StoreUnavailableError
from core.storage.local import LocalStore
from tests.test_engine_files import files_engine, snapshot, write
from tests.test_pitr_files import restore_at

# -- helpers -----------------------------------------------------------------------------


class Recording(Store):
    """A real store that counts the writes reaching it and, with ``fail_after``, dies after that many."""

    def __init__(self, inner: Store, fail_after: int | None = None, fail_gets_after: int | None = None) -> None:
        self.inner, self.fail_after, self.fail_gets_after = inner, fail_after, fail_gets_after
        self.written: list[str] = []
        self.gets = 0
        self._lock = threading.Lock()

    @property
    def capabilities(self):  # type: ignore[override]
        return self.inner.capabilities

    def _write(self, key: str) -> None:
        with self._lock:
            if self.fail_after is not None and len(self.written) >= self.fail_after:
                raise StoreUnavailableError(f"{self.describe()}: put {key}: the store went away (injected)")
            self.written.append(key)

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, key, data, *, overwrite=False):
        self._write(key)
        return self.inner.put(key, data, overwrite=overwrite)

    def create(self, key, data):
        self._write(key)
        return self.inner.create(key, data)

    def replace(self, key, data, *, version):
        return self.inner.replace(key, data, version=version)

    def get(self, key):
        with self._lock:
            self.gets += 1
            if self.fail_gets_after is not None and self.gets > self.fail_gets_after:
                raise StoreUnavailableError(f"{self.describe()}: get {key}: the store went away (injected)")
        return self.inner.get(key)

    def get_versioned(self, key):
        return self.inner.get_versioned(key)

    def stat(self, key) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def children(self, prefix):
        return self.inner.children(prefix)

    def delete(self, key):
        return self.inner.delete(key)

    def delete_if(self, key, version):
        return self.inner.delete_if(key, version)

    def copy_from(self, source, key, dest_key=None):
        if self.inner.copy_from(source, key, dest_key):
            self._write(key)
            return True
        return False


def flip_byte(store: Store, key: str) -> None:
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0x01
    store.put(key, bytes(data), overwrite=True)


@pytest.fixture
def keyring():
    return Keyring(passphrase="replicate-pw")


@pytest.fixture
def primary(tmp_path):
    return Vault.open(LocalStore(tmp_path / "primary"), create=True)


def ship_pieces(vault: Vault, keyring: Keyring, count: int, source: str = "cache") -> list[bytes]:
    """``count`` pieces of a Redis-kind log, shipped by the vault's own LogWriter; returns their bytes."""
    writer = LogWriter(vault.store, source, "redis", keyring, vault.check_passphrase(keyring), chunk_size=64 << 10)
    shipped = []
    for n in range(count):
        data = os.urandom(100_000 + n)
        info = PieceInfo(
            start={"replid": "a" * 40, "offset": n * 1000},
            end={"replid": "a" * 40, "offset": (n + 1) * 1000},
            first_time=f"2026-12-05T10:0{n}:00.000Z",
            last_time=f"2026-12-05T10:0{n}:30.000Z",
        )
        writer.ship(info, data)
        shipped.append(data)
    writer.close()
    return shipped


def files_chain(vault: Vault, keyring: Keyring, src: Path) -> list:
    """A full, an incremental and a differential of a real tree (a 5 MiB file spans two chunks)."""
    write(src / "big.bin", os.urandom(5 << 20))
    write(src / "conf/app.ini", b"[app]\nv = 1\n")
    engine = files_engine(src)
    manifests = [backup_source(vault, keyring, engine, "full")]
    write(src / "conf/app.ini", b"[app]\nv = 2\n", mtime_ns=1_800_000_000_000_000_000)
    write(src / "new.txt", b"added\n")
    manifests.append(backup_source(vault, keyring, engine, "incremental"))
    write(src / "later.txt", b"later\n")
    manifests.append(backup_source(vault, keyring, engine, "differential"))
    return manifests


def failed_and_partial(vault: Vault, keyring: Keyring) -> tuple[str, str]:
    """A FAILED backup record and a partial one (no manifest): neither may reach a replica."""
    failed = vault.begin_backup(source="app-files", kind="files", backup_type="full", target="t", keyring=keyring)
    failed.write_stream("files.tar", __import__("io").BytesIO(b"x" * 1000))
    assert failed.fail(RuntimeError("disk on fire")).status == FAILED
    partial = vault.begin_backup(source="app-files", kind="files", backup_type="full", target="t", keyring=keyring)
    partial.write_stream("files.tar", __import__("io").BytesIO(b"y" * 1000))
    return failed.id, partial.id


def vault_keys(store: Store) -> list[str]:
    return [k for k in store.list("") if not k.startswith("locks/")]


# -- local to local ----------------------------------------------------------------------


def test_local_replica_holds_fulls_chains_and_logs_and_restores_with_the_primary_gone(primary, keyring, tmp_path):
    chain = files_chain(primary, keyring, tmp_path / "src")
    expected_tree = snapshot(tmp_path / "src")
    pieces = ship_pieces(primary, keyring, 3)
    failed_id, partial_id = failed_and_partial(primary, keyring)
    replica_store = LocalStore(tmp_path / "replica")
    messages: list[str] = []

    report = replicate(primary, replica_store, name="dr-disk", progress=messages.append)

    assert (report.backups_copied, report.log_pieces_copied, report.objects_repaired) == (3, 3, 0)
    assert (report.lag_seconds, report.missing, report.in_sync) == (0.0, [], True)
    stored = sum(m.stored_bytes for m in chain) + sum(
        r.stream.stored_bytes for r in primary.log_pieces("cache")
    )  # chunks; plus keys, manifests, records, hints
    assert report.bytes_copied > stored
    assert any(f"backup {chain[0].id} of app-files committed" in m for m in messages)
    # The replica is the same vault: identity, catalog, log; never the FAILED or the partial backup.
    replica = Vault.open(replica_store)
    assert replica.config == primary.config
    assert sorted((m.id, m.status) for m in replica.list_backups()) == sorted((m.id, COMPLETED) for m in chain)
    assert not replica_store.children(f"backups/{failed_id}/") and not replica_store.children(f"backups/{partial_id}/")
    assert sorted(replica_store.children("catalog/app-files/")) == sorted(f"{m.id}.json" for m in chain)
    assert [r.seq for r in replica.log_pieces("cache")] == [0, 1, 2]
    primary_keys = set(vault_keys(primary.store))
    # Every object of the primary but those of the FAILED and the partial backup, the FAILED one's catalog
    # hint and the advisory start records (a replica holds committed backups only; nothing reads them there).
    left_out = (f"backups/{failed_id}/", f"backups/{partial_id}/", f"catalog/app-files/{failed_id}.json")
    assert set(vault_keys(replica_store)) == {
        k for k in primary_keys if not k.startswith(left_out) and not k.endswith("/started.json")
    }

    # Run again: nothing to send, every object checked by its size, the backups' commit points by their bytes.
    again = replicate(primary, replica_store, name="dr-disk")
    assert (again.backups_copied, again.log_pieces_copied, again.objects_copied, again.bytes_copied) == (0, 0, 0, 0)
    assert (again.backups_on_replica, again.log_pieces_on_replica, again.lag_seconds) == (3, 3, 0.0)

    # The primary is gone: the replica alone restores the chain's last point and the log.
    shutil.rmtree(tmp_path / "primary")
    from_replica = open_replica(LocalStore(tmp_path / "replica"), "dr-disk")
    _plan, restored = restore_at(from_replica, keyring, chain[-1].ended_at, tmp_path / "restored")
    assert snapshot(tmp_path / "restored") == expected_tree
    reader = LogReader(from_replica.store, "cache", keyring)
    assert [b"".join(reader.iter_piece(r)) for r in from_replica.log_pieces("cache")] == pieces
    reader.close()
    # A replica opened for a restore is never written to.
    with pytest.raises(VaultError, match="read-only"):
        from_replica.store.put("x", b"y")


def test_an_interrupted_copy_resumes_without_sending_anything_that_arrived(primary, keyring, tmp_path):
    files_chain(primary, keyring, tmp_path / "src")
    ship_pieces(primary, keyring, 2)
    clean = Recording(LocalStore(tmp_path / "clean"))
    replicate(primary, clean, name="dr-disk")
    everything = Counter(clean.written)  # each object once, and the lease once

    dying = Recording(LocalStore(tmp_path / "replica"), fail_after=9)
    with pytest.raises(StoreUnavailableError) as failed:
        replicate(primary, dying, name="dr-disk")
    message = str(failed.value)
    assert "\n" not in message and "replica dr-disk" in message and "nothing is half-committed" in message
    arrived = set(dying.written)
    assert len(dying.written) == 9
    # Whatever arrived, no manifest stands on the replica without every object it names.
    half = Vault.open(LocalStore(tmp_path / "replica"))
    for manifest in half.list_backups():
        reader = half.open_backup(manifest.id, keyring)
        reader.verify_objects()
        reader.close()

    resumed = Recording(LocalStore(tmp_path / "replica"))
    report = replicate(primary, resumed, name="dr-disk")
    lease = "locks/replicate.dr-disk.lock"
    # Every object not yet there is sent once; nothing that arrived is sent again (the lease is per run).
    assert Counter(resumed.written) == Counter({k: n for k, n in everything.items() if k not in arrived or k == lease})
    assert report.in_sync and report.objects_repaired == 0
    assert set(vault_keys(LocalStore(tmp_path / "replica"))) == set(vault_keys(LocalStore(tmp_path / "clean")))


def test_a_corrupted_or_deleted_replica_object_is_found_reported_and_repaired(primary, keyring, tmp_path):
    chain = files_chain(primary, keyring, tmp_path / "src")
    expected_tree = snapshot(tmp_path / "src")
    ship_pieces(primary, keyring, 1)
    replica_store = LocalStore(tmp_path / "replica")
    replicate(primary, replica_store, name="dr-disk")
    chunk = f"backups/{chain[0].id}/streams/files.tar/00000001"
    piece_chunk = "logdata/cache/000000000000/00000000"
    flip_byte(replica_store, chunk)
    flip_byte(replica_store, piece_chunk)
    gone = f"backups/{chain[1].id}/streams/tree.jsonl/00000000"
    replica_store.delete(gone)

    # The cheap pass (sizes) finds the deleted object; a flipped byte keeps the size, so it needs --verify.
    cheap = replicate(primary, replica_store, name="dr-disk")
    assert (cheap.objects_repaired, cheap.repaired, cheap.backups_copied) == (1, [gone], 0)
    verified = replicate(primary, replica_store, name="dr-disk", verify=True)
    assert (verified.objects_repaired, sorted(verified.repaired)) == (2, sorted([chunk, piece_chunk]))
    assert verified.objects_checked == 0 and verified.in_sync
    assert replica_store.get(chunk) == primary.store.get(chunk)

    again = replicate(primary, replica_store, name="dr-disk", verify=True)
    assert (again.objects_repaired, again.objects_copied) == (0, 0)
    _plan, _report = restore_at(open_replica(replica_store, "dr-disk"), keyring, chain[-1].ended_at, tmp_path / "r")
    assert snapshot(tmp_path / "r") == expected_tree


def test_a_backup_damaged_on_the_primary_is_never_copied_and_its_lag_fails_the_run(primary, keyring, tmp_path):
    chain = files_chain(primary, keyring, tmp_path / "src")
    damaged = chain[1]
    flip_byte(primary.store, f"backups/{damaged.id}/streams/tree.jsonl/00000000")
    replica_store = LocalStore(tmp_path / "replica")
    at = parse_iso(damaged.ended_at) + timedelta(seconds=900)

    # Within the limit: the others are copied, the damaged one is named, the lag is its age.
    report = replicate(primary, replica_store, name="us-east-1", max_lag_seconds=3600, now=lambda: at)
    assert (report.backups_copied, report.lag_seconds, report.in_sync) == (2, 900.0, False)
    assert report.damaged_on_primary == [f"backup {damaged.id} of app-files"]
    assert report.missing[0].startswith(f"backup {damaged.id} of app-files (damaged on the primary: ")
    assert not replica_store.exists(f"backups/{damaged.id}/manifest.json")

    with pytest.raises(ReplicationError) as failed:
        replicate(primary, replica_store, name="us-east-1", max_lag_seconds=600, now=lambda: at)
    error = failed.value
    assert error.exit_code == 20 and "\n" not in str(error)
    assert str(error).startswith("replica us-east-1 (local:") and "lags 900 s behind the primary (limit 600 s)" in str(
        error
    )
    assert damaged.id in str(error) and error.report["lag_seconds"] == 900.0


class Damaging(Recording):
    """A replica store that stores something else than it was given (a bad disk, a broken proxy)."""

    def create(self, key, data):
        if "/streams/" in key:
            data = data[:-1] + bytes([data[-1] ^ 1])
        return super().create(key, data)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_replica_that_stores_other_bytes_than_it_was_sent_never_gets_the_manifest(
    where, primary, keyring, tmp_path, request
):
    files_chain(primary, keyring, tmp_path / "src")
    if where == "s3":
        endpoint, bucket = request.getfixturevalue("moto_endpoint"), request.getfixturevalue("new_bucket")("eu-west-1")
        inner = s3_store(endpoint, bucket, "eu-west-1")
    else:
        inner = LocalStore(tmp_path / "replica")
    with pytest.raises(IntegrityError, match="reads back different bytes from those just written") as failed:
        replicate(primary, Damaging(inner), name="bad-disk")
    assert "\n" not in str(failed.value) and "replica bad-disk" in str(failed.value)
    assert not [k for k in inner.list("backups/") if k.endswith("manifest.json")]


def test_the_primary_gone_mid_replication_leaves_nothing_half_committed(primary, keyring, tmp_path):
    chain = files_chain(primary, keyring, tmp_path / "src")
    vanishing = Vault.open(Recording(LocalStore(tmp_path / "primary"), fail_gets_after=12))
    replica_store = LocalStore(tmp_path / "replica")
    with pytest.raises(StoreUnavailableError) as failed:
        replicate(vanishing, replica_store, name="dr-disk")
    assert "\n" not in str(failed.value) and "replica dr-disk" in str(failed.value)
    replica = Vault.open(replica_store)
    for manifest in replica.list_backups():  # whatever got committed is whole
        reader = replica.open_backup(manifest.id, keyring)
        reader.verify_objects()
        reader.close()
    assert len(replica.list_backups()) < len(chain)
    assert not replica_store.exists("locks/replicate.dr-disk.lock")  # the lease was given back


def test_two_replications_of_one_replica_never_interleave_and_another_vault_is_refused(primary, keyring, tmp_path):
    files_chain(primary, keyring, tmp_path / "src")
    replica_store = LocalStore(tmp_path / "replica")
    replicate(primary, replica_store, name="dr-disk")
    with Lease(replica_store, "replicate.dr-disk", "another replication"):
        with pytest.raises(LockedError, match="replicate.dr-disk"):
            replicate(primary, replica_store, name="dr-disk")
    other = Vault.open(LocalStore(tmp_path / "other"), create=True)
    with pytest.raises(ReplicationError, match="holds another vault"):
        replicate(other, replica_store, name="dr-disk")


# -- object stores: three S3 regions on moto, S3 to S3 server-side, S3 to GCS ---------------------------


def s3_store(endpoint: str, bucket: str, region: str) -> Store:
    from core.storage.retry import RetryingStore
    from core.storage.s3 import S3Store

    return RetryingStore(S3Store(bucket=bucket, prefix="dr/vault", region=region, endpoint_url=endpoint))


def stored_objects(store: Store) -> dict[str, bytes]:
    return {key: store.get(key) for key in vault_keys(store)}


def test_a_local_vault_replicated_to_s3_in_three_regions_restores_from_any_of_them(
    primary, keyring, tmp_path, moto_endpoint, new_bucket
):
    chain = files_chain(primary, keyring, tmp_path / "src")
    expected_tree = snapshot(tmp_path / "src")
    pieces = ship_pieces(primary, keyring, 2)
    regions = ("us-west-2", "us-east-1", "eu-west-1")
    replicas = {region: s3_store(moto_endpoint, new_bucket(region), region) for region in regions}
    for region, store in replicas.items():
        report = replicate(primary, store, name=region)
        # Local to S3 cannot be server-side: streamed, every object read back from the bucket and hashed.
        assert (report.backups_copied, report.log_pieces_copied, report.server_side_copies) == (3, 2, 0)
        assert report.in_sync and report.objects_verified == report.objects_copied
        # Each attested by the bucket itself: the ETag S3 returned for it is the MD5 of the bytes it stored.
        assert report.verified_by_store_md5 == report.objects_copied
    primary_objects = {k: v for k, v in stored_objects(primary.store).items() if not k.endswith("started.json")}
    assert all(stored_objects(store) == primary_objects for store in replicas.values())

    shutil.rmtree(tmp_path / "primary")  # the primary is gone
    from_replica = open_replica(replicas["eu-west-1"], "eu-west-1")
    restore_at(from_replica, keyring, chain[-1].ended_at, tmp_path / "restored")
    assert snapshot(tmp_path / "restored") == expected_tree
    reader = LogReader(from_replica.store, "cache", keyring)
    assert [b"".join(reader.iter_piece(r)) for r in from_replica.log_pieces("cache")] == pieces
    reader.close()


def test_s3_to_s3_across_regions_copies_server_side_and_verifies_the_copy(keyring, tmp_path, moto_endpoint, new_bucket):
    primary = Vault.open(s3_store(moto_endpoint, new_bucket("us-west-2"), "us-west-2"), create=True)
    chain = files_chain(primary, keyring, tmp_path / "src")
    ship_pieces(primary, keyring, 1)
    replica_store = Recording(s3_store(moto_endpoint, new_bucket("us-east-1"), "us-east-1"))
    report = replicate(primary, replica_store, name="us-east-1")
    # Every chunk and keys.json went bucket to bucket; the small objects no record covers were written.
    piece_chunks = sum(len(r.stream.chunks) for r in primary.log_pieces("cache"))
    data_objects = sum(len(s.chunks) for m in chain for s in m.streams) + len(chain) + piece_chunks  # + keys.json
    assert (report.server_side_copies, report.backups_copied, report.in_sync) == (data_objects, 3, True)
    primary_objects = {k: v for k, v in stored_objects(primary.store).items() if not k.endswith("started.json")}
    assert stored_objects(replica_store) == primary_objects
    # A damaged copy is never committed: corrupt a replica chunk and --verify replaces it by streaming.
    chunk = f"backups/{chain[0].id}/streams/files.tar/00000000"
    flip_byte(replica_store, chunk)
    repaired = replicate(primary, replica_store, name="us-east-1", verify=True)
    assert (repaired.repaired, repaired.server_side_copies) == ([chunk], 0)
    assert replica_store.get(chunk) == primary.store.get(chunk)


def test_s3_to_gcs_and_back(keyring, tmp_path, moto_endpoint, new_bucket, gcs_endpoint, new_gcs_bucket):
    from core.storage.gcs import GCSStore
    from core.storage.retry import RetryingStore

    primary = Vault.open(s3_store(moto_endpoint, new_bucket("us-west-2"), "us-west-2"), create=True)
    chain = files_chain(primary, keyring, tmp_path / "src")
    expected_tree = snapshot(tmp_path / "src")
    gcs = RetryingStore(GCSStore(bucket=new_gcs_bucket(), prefix="eu/vault", endpoint_url=gcs_endpoint))
    report = replicate(primary, gcs, name="gcs-eu")
    assert (report.backups_copied, report.server_side_copies, report.in_sync) == (3, 0, True)
    # ... and a GCS replica is a vault a third store can be replicated from.
    back = LocalStore(tmp_path / "back")
    assert replicate(Vault.open(gcs), back, name="dr-disk").backups_copied == 3
    restore_at(open_replica(back, "dr-disk"), keyring, chain[-1].ended_at, tmp_path / "restored")
    assert snapshot(tmp_path / "restored") == expected_tree


# -- the stack's replicas ---------------------------------------------------------------------------


def stack_file(tmp_path: Path, extra: str, vault: str = "{type: s3, bucket: dr-backups, region: us-west-2}") -> Path:
    path = tmp_path / "stack.yaml"
    path.write_text(
        f"vault: {vault}\nencryption: {{passphrase_from: env:NOPE}}\n"
        f"sources:\n  - {{name: app-files, kind: files, root: /srv/app}}\n{extra}"
    )
    return path


def test_backup_cross_regions_adds_an_s3_replica_per_region_unless_the_stack_names_it(tmp_path):
    from core.stack import load_stack_file

    explicit = "replicas:\n  - {name: eu-west-1, vault: {type: s3, bucket: eu-copy, region: eu-west-1}}\n"
    config = load_stack_file(stack_file(tmp_path, explicit), env={"BACKUP_CROSS_REGIONS": "us-east-1, eu-west-1"})
    assert [(r.name, r.vault.bucket, r.vault.region) for r in config.replicas] == [
        ("eu-west-1", "eu-copy", "eu-west-1"),  # named in the stack: kept as written
        ("us-east-1", "dr-backups-us-east-1", "us-east-1"),
    ]
    assert config.vault_named("us-east-1").type == "s3" and config.vault_named("primary") is config.vault
    assert config.vault_named(None) is config.vault and config.replication.max_lag_seconds == 600
    assert load_stack_file(stack_file(tmp_path, ""), env={}).replicas == []
    with pytest.raises(ConfigError, match="BACKUP_CROSS_REGIONS=.* the stack's vault is not an S3 vault"):
        load_stack_file(stack_file(tmp_path, "", vault="{path: ./vault}"), env={"BACKUP_CROSS_REGIONS": "us-east-1"})


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "replicas:\n  - {name: US-East, vault: {path: /r}}\n",
            "field 'replicas[0] (US-East).name': replica name 'US-East' must be 1 to 48 lowercase letters",
        ),
        (
            "replicas:\n  - {name: primary, vault: {path: /r}}\n",
            "and not 'primary' (the stack's own vault)",
        ),
        (
            "replicas:\n  - {name: a, vault: {path: /r}}\n  - {name: a, vault: {path: /s}}\n",
            "field 'replicas[1] (a).name': replica name 'a' is used twice (also by replicas[0]); rename one",
        ),
        (
            "replicas:\n  - {name: a, vault: {type: s3, bucket: dr-backups, region: us-west-2}}\n",
            "field 'replicas[0] (a).vault': s3://dr-backups (us-west-2) is already the stack's vault",
        ),
        ("replicas:\n  - {name: a, vault: {path: /r, bukket: x}}\n", "unknown field 'replicas[0] (a).vault.bukket'"),
        ("replication: {max_lag_seconds: 0}\n", "field 'replication.max_lag_seconds'"),
        ("replication: {max_lag: 60}\n", "unknown field 'replication.max_lag'; did you mean 'max_lag_seconds'?"),
    ],
)
def test_bad_replicas_are_refused_naming_the_field(tmp_path, extra, message):
    from core.stack import load_stack_file

    with pytest.raises(ConfigError) as refused:
        load_stack_file(stack_file(tmp_path, extra), env={})
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_an_unknown_vault_name_lists_the_stacks_vaults(tmp_path):
    from core.stack import load_stack_file

    config = load_stack_file(stack_file(tmp_path, "replicas:\n  - {name: dr-disk, vault: {path: ./copy}}\n"), env={})
    assert config.vault_named("dr-disk").path == str((tmp_path / "copy").resolve())  # relative to the stack file
    with pytest.raises(ConfigError, match=r"has no vault 'gcs-eu' \(known: primary, dr-disk\); check --vault"):
        config.vault_named("gcs-eu")


def test_an_interrupt_stops_the_copy_and_the_next_run_finishes_it(primary, keyring, tmp_path):
    from core import cancel
    from core.cancel import InterruptedRunError

    chain = files_chain(primary, keyring, tmp_path / "src")
    replica_store = LocalStore(tmp_path / "replica")

    def interrupt_after_the_first_commit(message: str) -> None:
        if " committed (" in message:
            cancel.request("interrupted by SIGTERM")

    try:
        with pytest.raises(InterruptedRunError) as stopped:
            replicate(primary, replica_store, name="dr-disk", progress=interrupt_after_the_first_commit)
    finally:
        cancel.reset()
    assert stopped.value.exit_code == 130 and "replication to replica dr-disk" in str(stopped.value)
    assert len(Vault.open(replica_store).list_backups()) == 1
    report = replicate(primary, replica_store, name="dr-disk")
    assert (report.backups_copied, report.backups_on_replica, report.in_sync) == (len(chain) - 1, len(chain), True)


def test_a_primary_never_written_has_nothing_to_copy_and_a_lost_one_is_an_error(keyring, tmp_path):
    from core.replication import open_primary

    primary_store, replica_store = LocalStore(tmp_path / "primary"), LocalStore(tmp_path / "replica")
    assert open_primary(primary_store, replica_store, "dr-disk") is None  # no backup yet: nothing to do
    primary = Vault.open(primary_store, create=True)
    files_chain(primary, keyring, tmp_path / "src")
    replicate(open_primary(primary_store, replica_store, "dr-disk"), replica_store, name="dr-disk")
    shutil.rmtree(tmp_path / "primary")
    with pytest.raises(ReplicationError, match=r"is gone \(no config.json, no backups\) but replica dr-disk holds"):
        open_primary(LocalStore(tmp_path / "primary"), replica_store, "dr-disk")
