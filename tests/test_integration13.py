"""Issue 13's integration seams: what a skipped incremental looks like in the run's notification."""

from __future__ import annotations

from core.notify.reports import backup_event


def _skipped(source: str) -> dict:
    # What tasks.limits.backup_slots returns for an incremental whose source is still being backed up.
    return {
        "source": source,
        "type": "incremental",
        "status": "SKIPPED",
        "id": None,
        "skip_id": "skip_20261206_101500_ab12cd34",
        "reason": f"skipped: the previous backup of {source} (flow run 6f1c) is still running",
        "plain_bytes": 0,
        "stored_bytes": 0,
        "position_text": "-",
    }


def test_a_skipped_incremental_is_a_line_of_its_own_in_the_backup_event():
    committed = {
        "source": "app-db",
        "type": "incremental",
        "status": "COMPLETED",
        "id": "app-db_20261206_101500_incr_9a8b7c6d",
        "stored_bytes": 2048,
        "plain_bytes": 8192,
        "position_text": "0/3000060",
    }
    event = backup_event("prod", "incremental", [committed, _skipped("cache")], {})

    assert event.outcome == "success"
    assert event.details["backups"] == ["app-db: app-db_20261206_101500_incr_9a8b7c6d"]
    assert event.details["skipped"] == [
        "cache: skipped (the previous backup of cache (flow run 6f1c) is still running)"
    ]
    assert event.details["stored"] == "2.0 KiB"
    assert event.summary == (
        "1 incremental backups committed (app-db), 2.0 KiB stored; "
        "cache: skipped (the previous backup of cache (flow run 6f1c) is still running)"
    )
    assert "None" not in event.body()


def test_a_run_whose_only_source_was_skipped_commits_nothing_and_says_why():
    event = backup_event("prod", "incremental", [_skipped("cache")], {})

    assert event.outcome == "success"
    assert event.details["backups"] == "none"
    assert event.summary.startswith("0 incremental backups committed (no source), 0 B stored; cache: skipped (")
    assert "None" not in event.body()


def test_replication_tells_its_running_byte_total_once_per_object_copied(tmp_path):
    """The replicate task's progress display: one call per object copied (never per read), totals in order,
    the last one what the report says was copied."""
    import os

    from core.crypto.keys import Keyring
    from core.operations import backup_source
    from core.replication import replicate
    from core.repository.vault import Vault
    from core.storage.local import LocalStore
    from tests.test_engine_files import files_engine, write

    keyring = Keyring(passphrase="integration13-pw")
    primary = Vault.open(LocalStore(tmp_path / "primary"), create=True)
    write(tmp_path / "src/big.bin", os.urandom(5 << 20))  # two chunks
    write(tmp_path / "src/app.ini", b"[app]\nv = 1\n")
    backup_source(primary, keyring, files_engine(tmp_path / "src"), "full")
    told: list[tuple[int, int | None]] = []

    report = replicate(
        primary, LocalStore(tmp_path / "replica"), name="dr-disk", on_bytes=lambda d, t: told.append((d, t))
    )

    assert report.in_sync and report.objects_copied > 3
    assert len(told) == report.objects_copied + report.objects_repaired
    assert [done for done, _ in told] == sorted(done for done, _ in told)
    assert told[-1] == (report.bytes_copied, None)
