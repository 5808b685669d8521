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
