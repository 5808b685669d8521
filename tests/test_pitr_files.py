"""Files chains: a full, differentials and incrementals; restoring each point gives that moment's tree.

Trees live on the local file system (the "real server" of this engine); backups go
through core.operations.backup_source into a LocalStore vault, and chains are
restored by the engine's restore_chain from the vault's readers, as core's chain
restore calls it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.chains import parse_iso, plan_chain_restore
from core.crypto.keys import Keyring
from core.engines.base import BackupResult, BaseBackup, ChainSteps, RecoveryPoint, StopPoint, compare_checks
from core.engines.files.pax import PaxWriter
from core.engines.files.tree import CHANGES_STREAM, TREE_STREAM, write_index
from core.errors import EngineError, IntegrityError, RecoveryTargetError
from core.operations import RestoreReport, backup_source, restore_backup, restore_chain_plan
from core.repository.manifest import Manifest
from core.repository.vault import Vault
from core.restoring import count_checks
from tests.test_engine_files import MTIME_NS, files_engine, snapshot, without_dac_override, write

BIG = 2 << 20
LATIN1 = os.fsdecode(b"caf\xe9.txt")  # names are bytes on Linux


def stream_bytes(vault: Vault, keyring: Keyring, backup_id: str, name: str) -> bytes:
    reader = vault.open_backup(backup_id, keyring)
    try:
        return b"".join(reader.iter_stream(name))
    finally:
        reader.close()


def members(vault: Vault, keyring: Keyring, manifest: Manifest) -> list[str]:
    """Names of the regular files whose content a backup stored."""
    name = CHANGES_STREAM if manifest.type != "full" else "files.tar"
    raw = stream_bytes(vault, keyring, manifest.id, name)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def stream_of(manifest: Manifest, name: str):
    return next(s for s in manifest.streams if s.name == name)


def restore_at(vault: Vault, keyring: Keyring, when: str, dst: Path, force: bool = False):
    """Plan the restore of the files source to ``when`` and execute the plan (core's path)."""
    engine = files_engine(dst)
    plan = plan_chain_restore(
        vault.list_backups("app-files"),
        vault.log_pieces("app-files"),
        "app-files",
        "files",
        parse_iso(when),
        datetime.now(UTC),
        target=engine.describe(),
        target_has_data=engine.has_data(),
        force=force,
        restores_beside=engine.restores_beside(),
    )
    report: RestoreReport = restore_chain_plan(vault, keyring, plan.to_dict(), engine, force=force)
    return plan, report


def restore_point(vault: Vault, keyring: Keyring, chain: list[str], dst: Path, stage: bool = False) -> RecoveryPoint:
    """Restore the chain ``chain`` (full first) into ``dst`` as core does, verified against the last
    backup's checks; with ``stage``, beside ``dst`` and then swapped in."""
    readers = [vault.open_backup(i, keyring) for i in chain]
    try:
        engine = files_engine(dst)
        into = engine.stage("c0ffee00") if stage else engine
        assert into is not None
        point = into.restore_chain(ChainSteps(base=readers[0], layers=readers[1:]), StopPoint())
        checks = readers[-1].result.checks
        assert compare_checks(checks, into.collect_checks(checks)) == []
        if stage:
            engine.swap_in(into)
        return point
    finally:
        for reader in readers:
            reader.close()


def test_each_point_of_a_chain_restores_that_moments_tree(vault, keyring, tmp_path):
    src = tmp_path / "src"
    big = os.urandom(BIG)
    write(src / "keep.txt", b"never changes\n")
    write(src / "big.bin", big)
    write(src / "edit.txt", b"v1\n")
    write(src / "mode.sh", b"#!/bin/sh\n", 0o644)
    write(src / "gone.txt", b"deleted in the differential\n")
    write(src / "same-size.txt", b"aaaa")
    write(src / "touched.txt", b"only its mtime moves\n")
    write(src / "attr.txt", b"only its xattr moves\n")
    write(src / "olddir/a.txt", b"a\n")
    write(src / "olddir/sub/b.txt", b"b\n")
    write(src / "empty", b"")
    os.link(src / "keep.txt", src / "keep.hardlink")
    os.symlink("keep.txt", src / "link")
    os.mkfifo(src / "fifo", 0o640)
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.setxattr(src / "attr.txt", "user.note", b"first")
    write(src / LATIN1, b"not utf-8 name")
    with open(src / "disk.img", "wb") as f:  # 8 MiB with 4 KiB of data: holes must stay holes
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(b"D" * 4096)
    engine = files_engine(src)
    points: list[tuple[Manifest, dict]] = []

    def take(backup_type: str) -> Manifest:
        before = snapshot(src)
        manifest = backup_source(vault, keyring, engine, backup_type)
        assert manifest.status == "COMPLETED" and manifest.type == backup_type
        assert snapshot(src) == before  # the backup changed nothing (no atime or mtime moved)
        points.append((manifest, before))
        return manifest

    full = take("full")
    assert [s.name for s in full.streams] == ["files.tar", TREE_STREAM]

    # Differential: modify, chmod, delete, rename, create, retarget a link, touch, set an xattr,
    # and a same-size rewrite whose mtime is put back (only the change time tells).
    write(src / "edit.txt", b"v2, longer\n")
    os.chmod(src / "mode.sh", 0o755)
    os.unlink(src / "gone.txt")
    (src / "moved").mkdir()
    os.rename(src / "big.bin", src / "moved/big.bin")
    write(src / "new.txt", b"created in the differential\n")
    os.unlink(src / "link")
    os.symlink("edit.txt", src / "link")
    os.utime(src / "touched.txt", ns=(MTIME_NS + 5, MTIME_NS + 5))
    os.setxattr(src / "attr.txt", "user.note", b"second")
    write(src / "same-size.txt", b"bbbb")
    os.rename(src / "disk.img", src / "moved/disk.img")
    write(src / LATIN1, b"changed, name still not utf-8")
    diff = take("differential")
    assert members(vault, keyring, diff) == sorted([LATIN1, "edit.txt", "new.txt", "same-size.txt"])

    # Incremental 1: a directory renamed, a hard link dropped, a copy of stored content,
    # a file replaced by a directory, a directory's mode.
    os.rename(src / "olddir", src / "newdir")
    os.unlink(src / "keep.hardlink")
    shutil.copy2(src / "moved/big.bin", src / "copy.bin")
    write(src / "edit.txt", b"v3\n")
    os.unlink(src / "new.txt")
    write(src / "new.txt/inner", b"a file where a file was\n")
    os.chmod(src / "newdir", 0o750)
    inc1 = take("incremental")
    assert members(vault, keyring, inc1) == ["edit.txt", "new.txt/inner"]

    # Incremental 2: one small change.
    write(src / "edit.txt", b"v4\n")
    inc2 = take("incremental")
    assert members(vault, keyring, inc2) == ["edit.txt"]
    # Unchanged content is never stored again: the whole tree is one small file plus the index.
    changes = stream_of(inc2, CHANGES_STREAM)
    assert changes.plain_bytes == 10240  # one tar record: edit.txt's headers and 3 bytes
    assert stream_of(full, "files.tar").plain_bytes > BIG
    assert inc2.stored_bytes < full.stored_bytes / 50

    # A second differential holds everything since the full (and nothing the full has).
    write(src / "late.txt", b"after the incrementals\n")
    diff2 = take("differential")
    assert members(vault, keyring, diff2) == sorted([LATIN1, "edit.txt", "late.txt", "new.txt/inner", "same-size.txt"])

    chains = {
        full.id: [full.id],
        diff.id: [full.id, diff.id],
        inc1.id: [full.id, diff.id, inc1.id],
        inc2.id: [full.id, diff.id, inc1.id, inc2.id],
        diff2.id: [full.id, diff2.id],
    }
    for n, (manifest, expected) in enumerate(points):
        dst = tmp_path / f"restore-{n}"
        plan, report = restore_at(vault, keyring, manifest.ended_at, dst)
        assert [plan.base_id, *plan.layers] == chains[manifest.id]
        assert snapshot(dst) == expected, manifest.type
        assert report.mismatches == [] and report.unproven == [] and report.notes == []
        # Verified against the whole tree as that backup recorded it (a layer's checks are a full's).
        checks = vault.open_backup(manifest.id, keyring).result.checks
        assert set(checks["files"]) | set(checks["dirs"]) | set(checks["symlinks"]) | set(checks["specials"]) == {
            rel or "." for rel in expected
        }
        assert report.verified_checks == count_checks(checks)
        if manifest.type != "full":
            assert report.recovery_point == {
                "time": manifest.position["snapshot_time"],
                "position": manifest.position,
                "proof": f"tree index of backup {manifest.id}, {len(expected)} entries verified",
            }
    # The copy and the rename share one stored member; both restored, as separate files.
    restored = tmp_path / "restore-3"
    assert (restored / "copy.bin").read_bytes() == big == (restored / "moved/big.bin").read_bytes()
    assert os.stat(restored / "copy.bin").st_ino != os.stat(restored / "moved/big.bin").st_ino
    assert os.stat(restored / "moved/disk.img").st_blocks * 512 <= 64 << 10

    # Over a tree holding data, with --force: staged beside it, verified, swapped in.
    plan, report = restore_at(vault, keyring, inc2.ended_at, tmp_path / "restore-0", force=True)
    assert report.method == "staged beside the target, verified, then swapped in"
    assert report.rollback_backup_id is not None and report.mismatches == []
    assert snapshot(tmp_path / "restore-0") == points[3][1]
    assert not [p for p in os.listdir(tmp_path) if ".gdr-restore-" in p]
    # The engine's own entry point gives the same tree; in place over another point's tree (a
    # target that cannot be staged), what the point lacks is pruned.
    restore_point(vault, keyring, chains[inc1.id], tmp_path / "direct")
    assert snapshot(tmp_path / "direct") == points[2][1]
    restore_point(vault, keyring, chains[diff.id], tmp_path / "direct")
    assert snapshot(tmp_path / "direct") == points[1][1]


def test_chain_without_a_layer_it_needs_is_refused_by_name(vault, keyring, tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", b"a1")
    engine = files_engine(src)
    full = backup_source(vault, keyring, engine, "full")
    write(src / "b.txt", b"stored by the first incremental")
    inc1 = backup_source(vault, keyring, engine, "incremental")
    write(src / "a.txt", b"a2")
    inc2 = backup_source(vault, keyring, engine, "incremental")

    with pytest.raises(IntegrityError, match=f"takes content from backup {inc1.id}, which is not in the chain"):
        restore_point(vault, keyring, [full.id, inc2.id], tmp_path / "dst")
    # A chain whose last backup was taken after the stop point is not this engine's to restore.
    readers = [vault.open_backup(i, keyring) for i in (full.id, inc1.id)]
    early = datetime.fromisoformat(inc1.position["snapshot_time"]) - timedelta(microseconds=1)
    with pytest.raises(RecoveryTargetError, match=f"backup {inc1.id} was taken at .*, after the target time"):
        files_engine(tmp_path / "early").restore_chain(ChainSteps(readers[0], readers[1:]), StopPoint(time=early))
    for reader in readers:
        reader.close()
    # A layer's streams alone are not a tree: the engine refuses to restore them as one...
    (tmp_path / "alone").mkdir()
    reader = vault.open_backup(inc2.id, keyring)
    with pytest.raises(EngineError, match="is a differential or incremental.*restore it as a chain"):
        files_engine(tmp_path / "alone").restore(reader, reader.result)
    reader.close()
    assert os.listdir(tmp_path / "alone") == []
    # ... and core restores a layer by its id as its chain up to it.
    report = restore_backup(vault, keyring, inc2.id, files_engine(tmp_path / "alone"))
    assert report.mismatches == [] and report.recovery_point["position"] == inc2.position
    assert (tmp_path / "alone/a.txt").read_bytes() == b"a2"
    assert (tmp_path / "alone/b.txt").read_bytes() == b"stored by the first incremental"


class _WithoutIndex:
    """The vault's sink minus the tree index: a full as taken before chains existed."""

    def __init__(self, sink) -> None:
        self.sink = sink

    @contextlib.contextmanager
    def open_stream(self, name):
        if name == TREE_STREAM:
            yield _Discard()
            return
        with self.sink.open_stream(name) as out:
            yield out

    def write_stream(self, name, data):  # pragma: no cover - the files engine never uses it
        return self.sink.write_stream(name, data)


class _Discard:
    def write(self, data) -> int:
        return len(data)


def test_chain_on_a_full_taken_before_tree_indexes_restores_exactly(vault, keyring, tmp_path):
    """A full without a tree index (taken before chains existed) is a base all the same: its checks
    list every file's digest, so a differential on it stores only what changed, and the chain
    restores exactly."""
    src = tmp_path / "src"
    write(src / "keep.bin", os.urandom(100_000))
    write(src / "edit.txt", b"v1")
    os.link(src / "keep.bin", src / "keep.hardlink")
    write(src / "renamed-from.txt", b"renamed later")
    engine = files_engine(src)
    writer = vault.begin_backup(
        source="app-files", kind="files", backup_type="full", target=engine.describe(), keyring=keyring
    )
    old = writer.commit(engine.backup(_WithoutIndex(writer)))
    assert [s.name for s in old.streams] == ["files.tar"]
    write(src / "edit.txt", b"v2")
    os.rename(src / "renamed-from.txt", src / "renamed-to.txt")
    os.unlink(src / "keep.bin")  # the hard link's first name (the member holding the bytes) goes
    diff = backup_source(vault, keyring, engine, "differential")
    assert members(vault, keyring, diff) == ["edit.txt"]
    restore_point(vault, keyring, [old.id, diff.id], tmp_path / "dst")
    assert snapshot(tmp_path / "dst") == snapshot(src)


def test_layer_on_a_layer_without_tree_index_fails_in_one_line(vault, keyring, tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", b"a")
    engine = files_engine(src)
    backup_source(vault, keyring, engine, "full")
    writer = vault.begin_backup(
        source="app-files", kind="files", backup_type="incremental", target=engine.describe(), keyring=keyring
    )
    base = vault.list_backups("app-files")[0]
    reader = vault.open_backup(base.id, keyring)
    on = BaseBackup(base.id, base.type, base.ended_at, reader.result, reader)
    broken = writer.commit(engine.backup(_WithoutIndex(writer), on))
    reader.close()
    reader = vault.open_backup(broken.id, keyring)
    on = BaseBackup(broken.id, "incremental", broken.ended_at, reader.result, reader)
    with pytest.raises(EngineError) as caught:
        engine.backup(_WithoutIndex(writer), on)
    reader.close()
    assert str(caught.value) == (
        f"files 'app-files': backup {broken.id} has no tree index (it was taken before incremental backups existed); "
        "take a full backup first, then differential and incremental backups on it"
    )


def test_files_untouched_since_well_before_the_base_are_not_read_again(vault, keyring, tmp_path):
    """Same inode, size, mtime and change time as the base recorded: not opened. A file whose change
    time was within 2 s of the walk that recorded it may have changed again in the same timestamp
    tick after it was read, so it is read (hashed) again. Both are unreadable without root's
    CAP_DAC_OVERRIDE: the incremental, run without it, shows which it opened."""
    src = tmp_path / "src"
    write(src / "a-old.bin", b"written well before the full", 0o000)
    time.sleep(2.1)
    write(src / "b-fresh.bin", b"written just before the full", 0o000)
    engine = files_engine(src)
    full = backup_source(vault, keyring, engine, "full")

    with without_dac_override(), pytest.raises(EngineError, match=r"b-fresh\.bin cannot be read"):
        backup_source(vault, keyring, engine, "incremental")
    os.chmod(src / "b-fresh.bin", 0o644)  # now readable (and its change time moves: it is hashed)
    with without_dac_override():
        inc = backup_source(vault, keyring, engine, "incremental")
    assert members(vault, keyring, inc) == []  # both referenced: same content as in the full
    restore_point(vault, keyring, [full.id, inc.id], tmp_path / "dst")
    assert snapshot(tmp_path / "dst") == snapshot(src)


def put_layer(vault: Vault, keyring: Keyring, engine, entries: list[dict]) -> Manifest:
    """A layer written by hand where the engine writes one: an empty changes.tar and ``entries``."""
    writer = vault.begin_backup(
        source="app-files", kind="files", backup_type="incremental", target=engine.describe(), keyring=keyring
    )
    with writer.open_stream(CHANGES_STREAM) as out:
        PaxWriter(out).close()
    with writer.open_stream(TREE_STREAM) as out:
        write_index(out, None, time.time_ns(), entries)
    return writer.commit(BackupResult(position={"snapshot_time": datetime.now(UTC).isoformat()}))


def test_layer_whose_index_names_content_it_lacks_or_is_malformed_is_refused(vault, keyring, tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", b"a")
    engine = files_engine(src)
    full = backup_source(vault, keyring, engine, "full")
    root = {"path": ".", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0, "mtime_ns": MTIME_NS}
    file = {**root, "path": "x.txt", "type": "file", "mode": 0o644, "size": 3, "sha256": "0" * 64}
    lacking = put_layer(vault, keyring, engine, [root, file])
    with pytest.raises(IntegrityError) as caught:
        restore_point(vault, keyring, [full.id, lacking.id], tmp_path / "dst1")
    assert str(caught.value) == (
        f"files 'app-files': stream changes.tar of backup {lacking.id} lacks x.txt, which the tree index of backup "
        f"{lacking.id} takes from it (1 members missing); the chain is damaged, restore another point"
    )
    sub = {**root, "path": "sub"}
    malformed = put_layer(vault, keyring, engine, [root, sub, {**root, "path": "sub/s", "type": "socket"}])
    with pytest.raises(IntegrityError, match=f"the tree index of backup {malformed.id} has a malformed entry"):
        restore_point(vault, keyring, [full.id, malformed.id], tmp_path / "dst2")
    assert os.listdir(tmp_path / "dst2") == []  # checked before anything was made
