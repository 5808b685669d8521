"""Chains without servers: the source's log in the vault, and the pure point-in-time planner.

The log store is exercised through the vault (real files, real keys); the planner is
a pure function of manifests and piece records, so its tests are golden: exact
pieces, exact recovery points, exact error texts' key facts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.chains import list_chains, plan_chain_restore, render_chain_plan
from core.crypto.keys import Keyring, generate_x25519_keypair
from core.engines.base import PieceInfo
from core.errors import IntegrityError, LogGapError, RecoveryTargetError, VaultError
from core.repository.log import LogReader, LogWriter, PieceRecord
from core.repository.manifest import COMPLETED, Manifest, StreamRecord
from core.repository.vault import Vault
from core.storage.local import LocalStore

T0 = datetime(2026, 12, 15, 14, 0, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lsn(n: int) -> dict:
    return {"lsn": f"0/{n:X}", "timeline": 1}


def piece(seq: int, start: int, end: int, first: float, last: float, partial: bool = False) -> PieceInfo:
    return PieceInfo(start=lsn(start), end=lsn(end), first_time=at(first), last_time=at(last), partial=partial)


def record(seq: int, info: PieceInfo, source: str = "db") -> PieceRecord:
    return PieceRecord(
        seq=seq,
        source=source,
        kind="postgres",
        key_id="k",
        start=info.start,
        end=info.end,
        first_time=info.first_time,
        last_time=info.last_time,
        partial=info.partial,
        shipped_at=info.last_time,
        compression="zstd",
        stream=StreamRecord(name="log", chunks=[], plain_bytes=100, stored_bytes=10, plain_sha256=""),
    )


def manifest(
    backup_id: str,
    ended: float,
    *,
    type_: str = "full",
    chain: str | None = None,
    parent: str | None = None,
    position=None,
    streams=False,
    kind="postgres",
) -> Manifest:
    return Manifest(
        id=backup_id,
        source="db",
        kind=kind,
        type=type_,
        status=COMPLETED,
        chain=chain or backup_id,
        parent=parent if parent is not None else (None if type_ == "full" else chain),
        target="t",
        started_at=at(ended - 1),
        ended_at=at(ended),
        compression="zstd",
        chunk_size=1,
        keys_sha256="",
        streams=[StreamRecord(name="s", chunks=[], plain_bytes=5, stored_bytes=1, plain_sha256="")] if streams else [],
        position=position if position is not None else {"lsn": "0/100", "timeline": 1, "physical": True},
    )


FULL = "backup_20261215_140000_aaaaaaaa"
FULL2 = "backup_20261215_150000_bbbbbbbb"


def plan(manifests, pieces, target: float, now: float = 10_000, **kw):
    return plan_chain_restore(
        manifests,
        pieces,
        "db",
        kw.pop("kind", "postgres"),
        T0 + timedelta(seconds=target),
        T0 + timedelta(seconds=now),
        target="postgres cluster in /srv/x on port 5499",
        target_has_data=False,
        force=False,
        **kw,
    )


LOG = [
    record(0, piece(0, 0x100, 0x200, 10, 20)),
    record(1, piece(1, 0x200, 0x300, 21, 40)),
    record(2, piece(2, 0x300, 0x400, 41, 60)),
]


def test_plan_takes_the_full_and_exactly_the_pieces_through_the_target():
    p = plan([manifest(FULL, 5)], LOG, 30)
    assert (p.base_id, p.pieces, p.recovery_time, p.data_loss_s) == (FULL, [0, 1], at(30), 0.0)
    assert p.stop_time == "2026-12-15T14:00:30.000000Z"  # to the microsecond, as commit times are
    assert (p.log_from, p.log_to) == ("lsn 0/100 tli 1", "lsn 0/300 tli 1")
    text = render_chain_plan(p.to_dict())
    assert "replay log pieces 0..1 (2 pieces" in text and "stopping at 2026-12-15T14:00:30.000000Z" in text


def test_plan_after_the_newest_point_reaches_it_and_says_the_loss():
    p = plan([manifest(FULL, 5)], LOG, 100)
    assert (p.pieces, p.recovery_time, p.data_loss_s) == ([0, 1, 2], at(60), 40.0)


def test_plan_uses_the_newest_full_before_the_target():
    newer = manifest(FULL2, 45, position={"lsn": "0/350", "timeline": 1, "physical": True})
    p = plan([manifest(FULL, 5), newer], LOG, 50)
    assert (p.base_id, p.pieces) == (FULL2, [2])
    p = plan([manifest(FULL, 5), newer], LOG, 30)
    assert (p.base_id, p.pieces) == (FULL, [0, 1])


def test_a_partial_piece_is_superseded_by_the_complete_one():
    log = [*LOG[:2], record(2, piece(2, 0x300, 0x340, 41, 45, partial=True)), record(3, piece(3, 0x300, 0x400, 41, 60))]
    assert plan([manifest(FULL, 5)], log, 55).pieces == [0, 1, 3]
    # Only the partial one shipped so far: it is used, and the loss is measured from its end.
    p = plan([manifest(FULL, 5)], log[:3], 55)
    assert (p.pieces, p.recovery_time, p.data_loss_s) == ([0, 1, 2], at(45), 10.0)


def test_a_gap_before_the_target_is_named():
    with pytest.raises(LogGapError) as err:
        plan([manifest(FULL, 5)], [LOG[0], LOG[2]], 50)
    assert "gap from lsn 0/200 tli 1" in str(err.value) and "to lsn 0/300 tli 1" in str(err.value)
    assert "between pieces 0 and 2" in str(err.value)
    # A target before the gap is still reachable.
    assert plan([manifest(FULL, 5)], [LOG[0], LOG[2]], 15).pieces == [0]


def test_a_log_that_starts_after_the_full_is_a_gap():
    with pytest.raises(LogGapError) as err:
        plan([manifest(FULL, 5)], LOG[1:], 30)
    assert "from lsn 0/100 tli 1 (full backup" in str(err.value)


def test_targets_outside_the_vault_are_refused():
    with pytest.raises(RecoveryTargetError, match="in the future"):
        plan([manifest(FULL, 5)], LOG, 500, now=100)
    with pytest.raises(RecoveryTargetError, match="before the oldest recoverable point"):
        plan([manifest(FULL, 5)], LOG, 2)
    with pytest.raises(RecoveryTargetError, match="holds no full backup"):
        plan([], LOG, 30)


def test_a_full_that_cannot_take_a_replay_is_a_snapshot_restore():
    logical = manifest(FULL, 5, position={"lsn": "0/100"})  # a pg_dump: no WAL replay on top
    p = plan([logical], LOG, 30)
    assert (p.pieces, p.recovery_time, p.data_loss_s, p.stop_time) == ([], at(5), 25.0, None)


def test_files_chain_layers_are_the_newest_differential_then_later_incrementals():
    kw = {"kind": "files", "streams": True, "position": {"snapshot_time": "x"}}
    full = manifest(FULL, 5, **kw)
    inc1 = manifest("backup_20261215_140010_00000001", 10, type_="incremental", chain=FULL, **kw)
    diff = manifest("backup_20261215_140020_00000002", 20, type_="differential", chain=FULL, **kw)
    inc2 = manifest("backup_20261215_140030_00000003", 30, type_="incremental", chain=FULL, parent=diff.id, **kw)
    inc3 = manifest("backup_20261215_140040_00000004", 40, type_="incremental", chain=FULL, parent=inc2.id, **kw)
    everything = [full, inc1, diff, inc2, inc3]
    assert plan(everything, [], 12, kind="files").layers == [inc1.id]
    assert plan(everything, [], 35, kind="files").layers == [diff.id, inc2.id]
    p = plan(everything, [], 100, kind="files")
    assert (p.layers, p.recovery_time, p.data_loss_s) == ([diff.id, inc2.id, inc3.id], at(40), 60.0)


def test_list_chains_shows_members_coverage_and_gaps():
    inc = manifest("backup_20261215_140035_00000001", 35, type_="incremental", chain=FULL)
    chains = list_chains([manifest(FULL, 5), inc], {"db": [LOG[0], LOG[2]]}, {"db": "postgres"})
    (entry,) = chains
    assert [m["id"] for m in entry["chains"][0]["members"]] == [inc.id]
    assert entry["gaps"] == [
        {"from": "lsn 0/200 tli 1", "to": "lsn 0/300 tli 1", "from_time": at(20), "to_time": at(41)}
    ]
    assert entry["chains"][0]["log"] == {"from": at(5), "to": at(60), "pieces": 2}


# -- the log in a real vault -------------------------------------------------------------


@pytest.fixture
def vault(tmp_path):
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


def writer(vault, keyring):
    return LogWriter(vault.store, "db", "postgres", keyring, vault.check_passphrase(keyring))


def test_pieces_round_trip_under_one_session_key(vault, tmp_path):
    keyring = Keyring(passphrase="pw")
    log = writer(vault, keyring)
    log.ship(piece(0, 0x100, 0x200, 1, 2), b"A" * 300_000)
    log.ship(piece(1, 0x200, 0x300, 3, 4), b"B" * 10)
    log.close()
    assert len(list((tmp_path / "vault" / "logkeys" / "db").iterdir())) == 1  # one wrap for the session
    records = vault.log_pieces("db")
    assert [(r.seq, r.start, r.end) for r in records] == [(0, lsn(0x100), lsn(0x200)), (1, lsn(0x200), lsn(0x300))]
    reader = LogReader(vault.store, "db", Keyring(passphrase="pw"))
    with reader.open_piece(records[0]) as fh:
        assert fh.read() == b"A" * 300_000
    # A restarted capture resumes after the last piece, under a new session key.
    again = writer(vault, keyring)
    assert again.last_piece().end == lsn(0x300)
    again.ship(piece(2, 0x300, 0x400, 5, 6), b"C")
    assert [r.key_id for r in vault.log_pieces("db")][2] != records[0].key_id


def test_a_piece_that_does_not_continue_the_log_is_refused(vault):
    log = writer(vault, Keyring(passphrase="pw"))
    log.ship(piece(0, 0x100, 0x200, 1, 2), b"A")
    with pytest.raises(LogGapError, match="starts at lsn 0/300 tli 1 but the vault's log ends at lsn 0/200 tli 1"):
        log.ship(piece(1, 0x300, 0x400, 3, 4), b"B")
    log.ship(piece(1, 0x200, 0x280, 3, 4, partial=True), b"B")
    log.ship(piece(2, 0x200, 0x300, 3, 5), b"BB")  # supersedes the partial one
    assert [r.seq for r in vault.log_pieces("db")] == [0, 1, 2]


def test_a_backup_host_with_only_the_public_key_ships_and_cannot_read(vault):
    private, public = generate_x25519_keypair()
    log = writer(vault, Keyring(public_keys=[public]))
    log.ship(piece(0, 0x100, 0x200, 1, 2), b"secret rows")
    (rec,) = vault.log_pieces("db")
    with LogReader(vault.store, "db", Keyring(private_keys=[private])).open_piece(rec) as fh:
        assert fh.read() == b"secret rows"
    with pytest.raises(Exception, match="wrong passphrase or private key|no passphrase"):
        with LogReader(vault.store, "db", Keyring(passphrase="other")).open_piece(rec) as fh:
            fh.read()


def test_an_edited_record_or_chunk_is_rejected(vault, tmp_path):
    keyring = Keyring(passphrase="pw")
    writer(vault, keyring).ship(piece(0, 0x100, 0x200, 1, 2), b"payload" * 1000)
    path = tmp_path / "vault" / "logs" / "db" / "000000000000.json"
    data = json.loads(path.read_text())
    data["last_time"] = at(99)  # moving a piece's time would move a restore's stop point
    path.write_text(json.dumps(data))
    (rec,) = vault.log_pieces("db")
    with pytest.raises(IntegrityError, match="fails its MAC check"):
        with LogReader(vault.store, "db", keyring).open_piece(rec) as fh:
            fh.read()
    chunk = next((tmp_path / "vault" / "logdata" / "db" / "000000000000").iterdir())
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\x00")
    data["last_time"] = rec.last_time
    path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError):
        with LogReader(vault.store, "db", keyring).open_piece(vault.log_pieces("db")[0]) as fh:
            fh.read()


def test_a_killed_session_leaves_nothing_that_looks_complete(vault, tmp_path):
    keyring = Keyring(passphrase="pw")
    log = writer(vault, keyring)
    log.ship(piece(0, 0x100, 0x200, 1, 2), b"A")

    class Dies:
        def read(self, n):
            raise OSError("capture killed")

    with pytest.raises(OSError):
        log.ship(piece(1, 0x200, 0x300, 3, 4), Dies())
    # Chunks written before a kill (no record) are removed by the next session.
    orphan = tmp_path / "vault" / "logdata" / "db" / "000000000001"
    orphan.mkdir(parents=True, exist_ok=True)
    (orphan / "00000000").write_bytes(b"half")
    writer(vault, keyring)
    assert list(vault.store.list("logdata/db/000000000001/")) == []
    assert [r.seq for r in vault.log_pieces("db")] == [0]


def test_two_writers_cannot_commit_the_same_piece(vault):
    keyring = Keyring(passphrase="pw")
    first, second = writer(vault, keyring), writer(vault, keyring)
    first.ship(piece(0, 0x100, 0x200, 1, 2), b"A")
    with pytest.raises(VaultError, match="already exists|written by another capture"):
        second.ship(piece(0, 0x100, 0x200, 1, 2), b"B")
    (only,) = vault.log_pieces("db")
    with LogReader(vault.store, "db", keyring).open_piece(only) as fh:
        assert fh.read() == b"A"  # the loser removed nothing of the winner's


def test_a_version_1_vault_written_by_the_previous_release_is_read_and_extended(tmp_path):
    """A real v1 vault: tests/data/vault-v1 was written by the last v1 release (git c69c563: `git archive
    c69c563 core`, then its backup_source of a files source holding a.txt = "version one", passphrase
    'pw', GENESIS_DR_TEST_KDF_ITERATIONS=1000); this release lists, restores and backs up into it."""
    import shutil

    shutil.copytree(Path(__file__).parent / "data" / "vault-v1", tmp_path / "vault")
    old_id = "backup_20261205_031644_004c7a60"
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("version one\n")
    assert json.loads((tmp_path / "vault" / "config.json").read_text())["version"] == 1

    from core.engines import engine_for
    from core.operations import backup_source, restore_backup
    from core.sources import FilesSourceConfig

    vault = Vault.open(LocalStore(tmp_path / "vault"))
    (listed,) = vault.list_backups("app")
    assert (listed.id, listed.version, listed.chain) == (old_id, 1, None)
    keyring = Keyring(passphrase="pw")
    restore_backup(vault, keyring, old_id, engine_for(FilesSourceConfig(name="app", root=str(tmp_path / "out"))))
    assert (tmp_path / "out" / "a.txt").read_text() == "version one\n"
    new = backup_source(vault, keyring, engine_for(FilesSourceConfig(name="app", root=str(data))))
    assert sorted(m.id for m in vault.list_backups("app")) == sorted([old_id, new.id])
    assert (new.version, new.chain) == (2, new.id)


def test_a_target_in_a_quiet_stretch_loses_nothing():
    # Piece 2 starts at 41 s: nothing was written between piece 1's last event (40 s) and 41 s.
    p = plan([manifest(FULL, 5)], LOG, 40.5)
    assert (p.pieces, p.recovery_time, p.data_loss_s) == ([0, 1], at(40.5), 0.0)


def test_the_log_restarts_at_a_newer_full_and_the_gap_before_it_is_named(vault):
    keyring = Keyring(passphrase="pw")
    newer = manifest(FULL2, 45, position={"lsn": "0/900", "timeline": 1, "physical": True})
    log = LogWriter(vault.store, "db", "postgres", keyring, vault.check_passphrase(keyring), newest_full=lambda: None)
    log.ship(piece(0, 0x100, 0x200, 10, 20), b"A")
    log.close()
    log = LogWriter(vault.store, "db", "postgres", keyring, vault.check_passphrase(keyring), newest_full=lambda: newer)
    with pytest.raises(LogGapError):
        log.ship(piece(1, 0x300, 0x400, 41, 60), b"B")  # neither continuing nor at the newer full
    log.ship(piece(1, 0x900, 0xA00, 46, 60), b"B")  # the new chain's first piece
    pieces = vault.log_pieces("db")
    assert plan([manifest(FULL, 5), newer], pieces, 50).pieces == [1]
    with pytest.raises(LogGapError, match="gap from lsn 0/200 tli 1"):
        plan([manifest(FULL, 5), newer], pieces, 30)
    (entry,) = list_chains([manifest(FULL, 5), newer], {"db": pieces}, {"db": "postgres"})
    assert [(g["from"], g["to"]) for g in entry["gaps"]] == [("lsn 0/200 tli 1", "lsn 0/900 tli 1")]


def test_a_layer_whose_full_or_parent_is_gone_is_refused_not_restored_elsewhere():
    from core.chains import check_reaches

    kw = {"kind": "files", "streams": True, "position": {"snapshot_time": "x"}}
    old = manifest("backup_20261215_135000_00000009", -600, **kw)
    full = manifest(FULL, 5, **kw)
    inc1 = manifest("backup_20261215_140010_00000001", 10, type_="incremental", chain=FULL, **kw)
    inc2 = manifest("backup_20261215_140020_00000002", 20, type_="incremental", chain=FULL, parent=inc1.id, **kw)
    check_reaches(plan([old, full, inc1, inc2], [], 20, kind="files"), inc2)  # whole: fine
    with pytest.raises(RecoveryTargetError, match=f"on full backup {FULL}, which is not in the vault"):
        check_reaches(plan([old, inc1, inc2], [], 20, kind="files"), inc2)  # would land on `old`
    with pytest.raises(LogGapError, match=f"incremental {inc2.id} was taken on {inc1.id}, which is not in the vault"):
        plan([old, full, inc2], [], 20, kind="files")
    assert plan([old, full, inc2], [], 12, kind="files").layers == []  # before the gap: the full
