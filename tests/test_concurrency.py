"""Concurrency and deferral through Prefect's harness: the stack-wide backup limit, skipped overlapping
incrementals, and a deployed run deferred by a maintenance window."""

from __future__ import annotations

import os
import secrets
import threading
from datetime import UTC, datetime, timedelta

from core.chains import parse_iso
from core.repository.manifest import COMPLETED
from core.sources import FilesSourceConfig


def files_source(root, name: str, megabytes: int = 0) -> FilesSourceConfig:
    """A files source; ``megabytes`` of incompressible data make its backup last a moment."""
    root.mkdir(parents=True)
    (root / "app.ini").write_text(f"[app]\nname = {name}\n")
    if megabytes:
        (root / "blob.bin").write_bytes(os.urandom(megabytes << 20))
    return FilesSourceConfig(name=name, root=str(root))


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals open at one instant (an end before a start at the same instant)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_backups_of_a_stack_never_exceed_max_concurrent_backups(make_stack, tmp_path):
    """Four sources backed up by one run with max_concurrent_backups 2: never more than two at once (from the
    manifests' own start and end times), the limit is created with the stack's value and follows the stack
    file when it changes."""
    from prefect.client.orchestration import get_client

    from flows.backup import backup
    from tasks.limits import stack_backups_limit, sync_limit

    sources = [files_source(tmp_path / f"app{i}", f"app{i}", megabytes=6) for i in range(4)]
    stack = make_stack(sources, operations={"max_concurrent_backups": 2})
    state = backup(stack=stack.name, return_state=True)
    assert state.is_completed(), state.message
    manifests = [m for m in stack.vault().list_backups() if m.status == COMPLETED]
    assert sorted(m.source for m in manifests) == ["app0", "app1", "app2", "app3"]
    # Never more than the limit. (Reaching it depends on the task runner's threads on a loaded machine: a run of
    # four 6 MB backups may well go one at a time; without the limit four start together and this fails.)
    assert most_at_once([(parse_iso(m.started_at), parse_iso(m.ended_at)) for m in manifests]) <= 2
    name = stack_backups_limit(stack.name)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    assert (limit.limit, limit.active_slots) == (2, 0)

    # The stack file is the source of truth: when its value changes, the next backup sets the limit to it
    # (once per process and value).
    sync_limit(name, 3)
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 3


def test_an_incremental_overlapping_the_previous_backup_is_skipped_and_recorded(make_stack, tmp_path):
    """While a backup of a source runs, an incremental of it is skipped at once (CANCEL_NEW): the run completes,
    reports the source SKIPPED, and the vault's history names the run that held the source; once the source is
    free the next incremental runs."""
    from prefect import flow, task

    from core.history import History
    from flows.backup import backup
    from tasks.limits import backup_slots
    from tasks.run_stack import run_stack
    from tasks.scheduling import previous_durations

    stack = make_stack([files_source(tmp_path / "app", "app")])
    assert backup(stack=stack.name)[0]["status"] == COMPLETED  # the chain's full
    holding, release = threading.Event(), threading.Event()

    @task
    def long_backup(name: str) -> str:
        with backup_slots(run_stack(name).config, "app", "full") as skipped:
            assert skipped is None
            holding.set()
            release.wait(60)
        return "held"

    @flow
    def previous_backup(name: str) -> str:
        return long_backup(name)

    holder: dict = {}

    def hold() -> None:
        holder["state"] = previous_backup(name=stack.name, return_state=True)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(60)
        started = datetime.now(UTC)
        state = backup(stack=stack.name, backup_type="incremental", return_state=True)
        took = (datetime.now(UTC) - started).total_seconds()
    finally:
        release.set()
        thread.join(60)
    assert holder["state"].is_completed(), holder["state"].message
    assert state.is_completed(), state.message
    (result,) = state.result()
    assert (result["source"], result["type"], result["status"]) == ("app", "incremental", "SKIPPED")
    assert took < 15  # skipped at once, not queued behind the holder
    holder_run = str(holder["state"].state_details.flow_run_id)
    assert result["held_by"]["flow_run"] == holder_run
    assert result["reason"] == f"skipped: the previous backup of app (flow run {holder_run}) is still running"
    (record,) = History(stack.vault().store).records("skips")
    assert record["id"] == result["skip_id"] and record["held_by"]["flow_run"] == holder_run
    assert (record["source"], record["type"], record["stack"]) == ("app", "incremental", stack.name)
    assert record["flow_run"] == str(state.state_details.flow_run_id)
    assert [m.type for m in stack.vault().list_backups()] == ["full"]  # nothing half-taken

    # The source is free again: the next incremental runs.
    (after,) = backup(stack=stack.name, backup_type="incremental")
    assert (after["type"], after["status"]) == ("incremental", COMPLETED)
    # The slow flag's history of a backup type: the completed backups of that source and type.
    (full,) = [m for m in stack.vault().list_backups() if m.type == "full"]
    expected = (parse_iso(full.ended_at) - parse_iso(full.started_at)).total_seconds()
    assert previous_durations(stack.name, "app", "full") == [expected]


def test_a_deployed_full_inside_a_maintenance_window_ends_scheduled_at_its_end(make_stack, tmp_path):
    """A full backup started from a deployment inside a maintenance window ends Scheduled (not Failed) at the
    window's end with the reason, and takes no backup; the same from the CLI (no deployment) runs now."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.flow_engine import run_flow

    from flows.backup import backup

    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    window = {"name": "quarter close", "start": f"{start:%H:%M}", "end": f"{end:%H:%M}", "timezone": "UTC"}
    stack = make_stack([files_source(tmp_path / "app", "app")], operations={"maintenance_windows": [window]})
    deployment_name = f"h3-defer-{secrets.token_hex(3)}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("backup")
        deployment = client.create_deployment(
            flow_id=flow_id, name=deployment_name, entrypoint="flows/backup.py:backup"
        )
    try:
        run = run_deployment(
            f"backup/{deployment_name}", parameters={"stack": stack.name, "backup_type": "full"}, timeout=0
        )
        state = run_flow(backup, flow_run=run, parameters=run.parameters, return_type="state")
        with get_client(sync_client=True) as client:
            stored = client.read_flow_run(run.id)
            client.delete_flow_run(run.id)  # no worker here; nothing must pick it up later
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment)
    window_end = end.replace(second=0, microsecond=0)
    assert state.is_scheduled() and stored.state.is_scheduled(), stored.state
    assert stored.state.state_details.scheduled_time == window_end
    assert stored.state.message == (
        f"Deferred (window): full waits for the end of maintenance window 'quarter close' at "
        f"{window_end:%a %Y-%m-%d %H:%M} UTC"
    )
    assert not stack.vault_path.exists()  # no backup began: its first one creates the vault
    # From the CLI (no deployment) the operator's request runs now, window or not.
    (result,) = backup(stack=stack.name)
    assert result["status"] == COMPLETED


def test_slow_operations_are_flagged_against_their_own_history(make_stack, tmp_path):
    """A validation taking over slow_factor x the median of the same level's earlier runs (from the vault's
    history) is flagged; other levels and drills keep their own history; this run's own record is not counted."""
    from core.history import History
    from tasks.scheduling import flag_if_slow, previous_durations

    stack = make_stack([files_source(tmp_path / "app", "app")], operations={"slow_factor": 2.5})
    history = History(stack.config.vault.open(create=True).store)
    start = datetime.now(UTC) - timedelta(days=3)
    runs = [
        ("validations", "level", "integrity", 10),
        ("validations", "level", "integrity", 12),
        ("validations", "level", "quick", 100),
        ("validations", "level", "integrity", 11),
        ("drills", "tier", "daily", 40),
    ]
    for i, (kind, field, value, seconds) in enumerate(runs):
        began = start + timedelta(hours=i)
        history.put(
            kind,
            f"{kind[:-1]}_{i}",
            {
                field: value,
                "started_at": began.isoformat(),
                "ended_at": (began + timedelta(seconds=seconds)).isoformat(),
            },
        )
    # This run's own record, written before the flow checks: left out.
    now = datetime.now(UTC)
    own = {"level": "integrity", "started_at": (now - timedelta(seconds=30)).isoformat(), "ended_at": now.isoformat()}
    history.put("validations", "validation_9", own)
    assert previous_durations(stack.name, None, "validate-integrity") == [10.0, 12.0, 11.0, 30.0]
    assert flag_if_slow(stack.name, None, "validate-integrity", 30.0) == (
        "took 30 s, 2.7x its median 11 s over the last 3 runs"
    )
    assert flag_if_slow(stack.name, None, "validate-integrity", 27.0) is None  # under 2.5x
    assert flag_if_slow(stack.name, None, "validate-quick", 1000.0) is None  # one earlier run: not judged
    assert previous_durations(stack.name, None, "drill-daily") == [40.0]
    assert flag_if_slow(stack.name, None, "validate-integrity", None) is None
