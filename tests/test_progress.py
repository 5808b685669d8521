"""Progress as bytes move, and what a backup run reports: the byte callback through the vault's writer and
reader, the sources' size estimates, the progress and table artifacts read back through the API, and the
terminal bar (a pty gets one redrawn line; a pipe gets nothing)."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading

import pytest

from tests.commands import REPO, clean_environment

CHUNK = 64 << 10


def files_tree(root, megabytes: int = 1):
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "app.ini").write_text("[app]\nname = progress\n")
    (root / "data.bin").write_bytes(os.urandom(megabytes << 20))
    (root / "empty").write_bytes(b"")
    return root


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 64 KiB, so a 1 MiB source moves in a score of chunks (the writer reads this per backup)."""
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(CHUNK))


def test_byte_callback_per_chunk_through_backup_and_restore(tmp_path, small_chunks):
    from core import operations
    from core.crypto.keys import Keyring
    from core.engines import engine_for
    from core.estimate import estimate_bytes
    from core.repository.vault import Vault
    from core.sources import FilesSourceConfig
    from core.storage.local import LocalStore

    source = FilesSourceConfig(name="app-files", root=str(files_tree(tmp_path / "app")))
    engine = engine_for(source)
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keyring = Keyring(passphrase="progress-test-Pw9")
    told, begun = [], []
    manifest = operations.backup_source(
        vault,
        keyring,
        engine,
        "full",
        on_bytes=lambda done, total: told.append((done, total)),
        on_begin=lambda backup_id, total: begun.append((backup_id, total)),
    )
    estimate = estimate_bytes(engine, "full")
    # The tar: three entries of header + data in 512-byte blocks, two directories, the end-of-archive blocks
    # and the pax headers the estimate does not see.
    assert begun == [(manifest.id, estimate)]
    assert abs(estimate - manifest.plain_bytes) / manifest.plain_bytes < 0.01
    dones = [done for done, _ in told]
    assert dones == sorted(dones) and dones[-1] == manifest.plain_bytes
    assert len(told) == sum(len(s.chunks) for s in manifest.streams)  # once per chunk, never per read
    assert {total for _, total in told} == {estimate}

    # A backup on a base writes what changed, which no source can tell beforehand.
    assert estimate_bytes(engine, "incremental") is None

    restored, target = [], tmp_path / "restored"
    report = operations.restore_backup(
        vault,
        keyring,
        manifest.id,
        engine_for(source.model_copy(update={"root": str(target)})),
        on_bytes=lambda done, total: restored.append((done, total)),
    )
    assert report.plain_bytes == manifest.plain_bytes
    assert restored[-1] == (manifest.plain_bytes, manifest.plain_bytes)
    assert (target / "data.bin").read_bytes() == (tmp_path / "app" / "data.bin").read_bytes()


def test_estimates_of_database_sources(pg_server, redis_session):
    from core.engines import engine_for
    from core.estimate import estimate_bytes

    with pg_server.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS progress_rows")
        conn.execute(
            "CREATE TABLE progress_rows AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g"
        )
        heap = conn.execute("SELECT pg_table_size('progress_rows')").fetchone()[0]
    estimate = estimate_bytes(engine_for(pg_server.config("pg", backup_method="logical")), "full")
    assert heap <= estimate < heap + (8 << 20)  # the tables' heap, this one and whatever else the database holds

    server = redis_session("progress")
    server.client().flushall()
    server.client().mset({f"k{i}": "v" * 500 for i in range(2000)})
    dataset = server.client().info("memory")["used_memory_dataset"]
    assert estimate_bytes(engine_for(server.config("cache", "logical")), "full") == pytest.approx(dataset, rel=0.05)

    # A source that does not answer has no estimate; its backup reports why.
    down = server.config("down", "logical", port=1)
    assert estimate_bytes(engine_for(down), "full") is None


def artifacts(flow_run_id, key: str | None = None, kind: str | None = None):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, ArtifactFilterType, FlowRunFilter

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]) if key else None,
                type=ArtifactFilterType(any_=[kind]) if kind else None,
            ),
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}),
        )
    return found


def test_backup_run_publishes_progress_and_table_artifacts(make_stack, tmp_path, small_chunks):
    from core.sources import FilesSourceConfig
    from flows.backup import backup
    from flows.restore import restore

    stack = make_stack(
        [
            FilesSourceConfig(name="app-files", root=str(files_tree(tmp_path / "app"))),
            FilesSourceConfig(name="conf-files", root=str(files_tree(tmp_path / "conf", megabytes=0))),
            FilesSourceConfig(name="gone", root=str(tmp_path / "missing")),
        ]
    )
    state = backup(stack=stack.name, return_state=True)
    assert state.is_failed()  # 'gone' failed; the others were backed up
    run_id = state.state_details.flow_run_id
    manifests = {m.source: m for m in stack.vault().list_backups()}
    assert sorted(manifests) == ["app-files", "conf-files", "gone"]

    for source, key in (
        ("app-files", "progress-app-files-full-backup"),
        ("conf-files", "progress-conf-files-full-backup"),
    ):
        [progress] = artifacts(run_id, key)
        m = manifests[source]
        assert progress.type == "progress" and progress.data == 100
        assert progress.description.startswith(f"{source}: full backup {m.id}: ")

    # A failed backup's artifact stays where it stopped and says so.
    [stopped] = artifacts(run_id, "progress-gone-full-backup")
    assert stopped.data == 0
    assert stopped.description.startswith(f"gone: full backup {manifests['gone'].id}: failed after 0 B in ")

    [table] = artifacts(run_id, "backup-run")
    assert table.type == "table"
    rows = sorted(json.loads(table.data), key=lambda r: r["source"])
    expected = []
    for source, m in sorted(manifests.items()):
        if m.status == "COMPLETED":
            expected.append(
                {
                    "source": source,
                    "backup_id": m.id,
                    "type": "full",
                    "status": "COMPLETED",
                    "plain_bytes": m.plain_bytes,
                    "stored_bytes": m.stored_bytes,
                    "seconds": pytest.approx((parse(m.ended_at) - parse(m.started_at)).total_seconds(), abs=0.002),
                    "position": m.position_text(),
                    "parent": "",
                    "note": "",
                }
            )
        else:
            expected.append(
                {
                    "source": source,
                    "backup_id": m.id,
                    "type": "full",
                    "status": "FAILED",
                    "plain_bytes": None,
                    "stored_bytes": None,
                    "seconds": None,
                    "position": "",
                    "parent": "",
                    "note": rows[-1]["note"],
                }
            )
    assert rows == expected
    assert "missing" in rows[-1]["note"] and m.error.split(";")[0] in rows[-1]["note"]
    # The markdown summary stays, for people.
    [summary] = artifacts(run_id, "backup-summary")
    assert manifests["app-files"].id in summary.data

    target = tmp_path / "restored"
    restored = restore(
        source="app-files",
        stack=stack.name,
        backup_id=manifests["app-files"].id,
        target={"root": str(target)},
        return_state=True,
    )
    [progress] = artifacts(restored.state_details.flow_run_id, "progress-app-files-restore")
    assert progress.data == 100
    assert progress.description.startswith(f"app-files: restore of {manifests['app-files'].id}: 1.0 MiB in ")

    # The run logs: one line per event, each naming the source and the backup.
    from tests.test_flows import run_logs

    logs = run_logs(run_id)
    ok, failed = manifests["app-files"], manifests["gone"]
    assert any(
        re.fullmatch(rf"app-files: full backup {ok.id} committed, 1\.0 MiB -> 1\.0 MiB stored in [\d.]+ s", line)
        for line in logs
    ), logs
    assert f"gone: full backup {failed.id} FAILED after 0 B in " in "\n".join(logs)
    # What the restore task logged (the flow's own lines print the plan and the report, for the whole run).
    steps = [line for line in task_logs(restored.state_details.flow_run_id) if not line.startswith("Finished in")]
    assert len(steps) == 8 and all("app-files" in line and ok.id in line for line in steps), steps


def task_logs(flow_run_id) -> list[str]:
    """The messages the run's tasks logged, as the UI reads them from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # logs travel to the API in batches
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, sort=LogSort.TIMESTAMP_ASC
        )
    return [log.message for log in logs if log.task_run_id is not None]


def parse(text):
    from core.chains import parse_iso

    return parse_iso(text)


def run_backup_command(stack, *, pty: bool) -> tuple[int, str]:
    """``genesis-dr backup full`` against the harness's API, its stdout and stderr on a pty or on a pipe."""
    from prefect.settings import PREFECT_API_URL

    env = clean_environment(
        PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(REPO), GENESIS_DR_CHUNK_SIZE=str(CHUNK), COLUMNS="160"
    )
    argv = [sys.executable, "-m", "cli.main", "backup", "full", "--stack", stack.name]
    if not pty:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
        return proc.returncode, proc.stdout + proc.stderr
    master, slave = os.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, cwd=REPO)
    os.close(slave)
    out = bytearray()

    def drain() -> None:  # read as it comes: a full pty buffer would stall the child
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    return
                continue
            try:
                piece = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not piece:
                return
            out.extend(piece)

    reader = threading.Thread(target=drain)
    reader.start()
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    return code, out.decode(errors="replace")


def test_terminal_bar_on_a_tty_and_none_on_a_pipe(make_stack, tmp_path):
    from core.sources import FilesSourceConfig

    stack = make_stack([FilesSourceConfig(name="app-files", root=str(files_tree(tmp_path / "app", megabytes=2)))])

    code, shown = run_backup_command(stack, pty=True)
    assert code == 0, shown
    # Redrawn in place: carriage return, erase-line, then the source's line; the last one at 100 %, then cleared.
    frames = [frame for frame in shown.split("\r\x1b[K") if frame.startswith("app-files full backup")]
    assert frames, shown
    assert frames[-1].startswith("app-files full backup [####################] 100% 2.0 MiB in "), frames[-1]
    assert "app-files: COMPLETED backup_" in shown  # the command's own report follows on a clean line

    code, piped = run_backup_command(stack, pty=False)
    assert code == 0, piped
    assert "app-files: COMPLETED backup_" in piped
    assert "\r" not in piped and "\x1b[K" not in piped and "[####" not in piped


def test_table_rows_of_a_skipped_incremental_and_a_failure_before_the_vault():
    from core.errors import LockedError
    from flows.reporting import TABLE_COLUMNS, backup_rows

    skipped = {
        "source": "app-db",
        "type": "incremental",
        "status": "SKIPPED",
        "id": None,
        "skip_id": "skip_1",
        "reason": "skipped: the previous backup of app-db (flow run 1234) is still running",
    }
    rows = backup_rows([skipped], {"cache": LockedError("backup of cache: concurrency limit x was removed")})
    assert rows == [
        dict.fromkeys(TABLE_COLUMNS, None)
        | {
            "source": "app-db",
            "backup_id": "",
            "type": "incremental",
            "status": "SKIPPED",
            "position": "",
            "parent": "",
            "note": skipped["reason"],
        },
        dict.fromkeys(TABLE_COLUMNS, None)
        | {
            "source": "cache",
            "backup_id": "",
            "type": "",
            "status": "FAILED",
            "position": "",
            "parent": "",
            "note": "backup of cache: concurrency limit x was removed",
        },
    ]

    # The command prints the skip and offers no restore of a backup that was not taken.
    import contextlib
    import io

    from cli.hints import print_backups

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_backups([skipped], "default")
    assert out.getvalue() == (
        "app-db: SKIPPED incremental backup (the previous backup of app-db (flow run 1234) is still running)\n"
    )
