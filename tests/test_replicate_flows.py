"""The replicate flow, its command and deployment, and restores from a replica alone, through Prefect's
test harness (a real API), the `genesis-dr` command as an operator types it, and moto for S3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import clean_environment, command_runner, error_line
from tests.test_engine_files import snapshot, write

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture
def cli(prefect_api, tmp_path):
    return command_runner(
        tmp_path, clean_environment(BACKUP_ENCRYPTION_PASSWORD="replica-test-Zq9"), no_traceback=False
    )


def tree(root: Path) -> Path:
    write(root / "big.bin", os.urandom(5 << 20))
    write(root / "conf/app.ini", b"[app]\nv = 1\n")
    return root


def test_replicate_then_list_and_restore_from_each_replica_with_the_primary_deleted(
    cli, tmp_path, moto_endpoint, new_bucket
):
    src = tree(tmp_path / "app")
    bucket = new_bucket("us-east-1")
    stack = tmp_path / "repl.yaml"
    stack.write_text(
        f"""
stack: repl
vault: {{path: ./vault}}
encryption: {{passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD}}
sources:
  - {{name: app-files, kind: files, root: {src}}}
replicas:
  - name: dr-disk
    vault: {{type: local, path: ./replica-disk}}
  - name: us-east-1
    vault: {{type: s3, bucket: {bucket}, prefix: dr/repl, region: us-east-1, endpoint_url: "{moto_endpoint}"}}
replication: {{max_lag_seconds: 600}}
"""
    )
    cli("apply", str(stack))
    cli("backup", "full", "--stack", "repl")
    full_tree = snapshot(src)
    write(src / "conf/app.ini", b"[app]\nv = 2\n", mtime_ns=1_800_000_000_000_000_000)
    write(src / "added.txt", b"after the full\n")
    cli("backup", "incremental", "--stack", "repl")
    last_tree = snapshot(src)
    primary = json.loads(cli("list", "--stack", "repl", "--json").stdout)
    by_type = {e["type"]: e["id"] for e in primary}
    full_id, incremental_id = by_type["full"], by_type["incremental"]

    out = cli("replicate", "--stack", "repl", "--json")
    reports = {r["replica"]: r for r in json.loads(out.stdout)}
    assert sorted(reports) == ["dr-disk", "us-east-1"]
    for report in reports.values():
        assert (report["backups_copied"], report["objects_repaired"], report["lag_seconds"]) == (2, 0, 0.0)
        assert report["in_sync"] and report["stack"] == "repl"
    text = cli("replicate", "--stack", "repl").stdout  # in sync now: nothing copied, one line per replica
    assert "dr-disk (local:" in text and "us-east-1 (s3://" in text and "in sync; 0 backups" in text

    # The primary vault is deleted; each replica alone lists and restores.
    shutil.rmtree(tmp_path / "vault")
    for name in ("dr-disk", "us-east-1"):
        listed = json.loads(cli("list", "--stack", "repl", "--vault", name, "--json").stdout)
        assert sorted((e["id"], e["status"]) for e in listed) == sorted((e["id"], e["status"]) for e in primary)
    cli(
        "restore", "--stack", "repl", "--vault", "us-east-1", "--source", "app-files", "--backup-id", incremental_id,
        "--target", f"root={tmp_path / 'from-s3'}",
    )  # fmt: skip
    assert snapshot(tmp_path / "from-s3") == last_tree
    ended = next(e["ended_at"] for e in primary if e["id"] == incremental_id)
    cli(
        "restore", "--stack", "repl", "--vault", "us-east-1", "--source", "app-files", "--target-time", ended,
        "--target", f"root={tmp_path / 'to-a-time'}",
    )  # fmt: skip
    assert snapshot(tmp_path / "to-a-time") == last_tree
    cli(
        "restore", "--stack", "repl", "--vault", "dr-disk", "--source", "app-files", "--backup-id", full_id,
        "--target", f"root={tmp_path / 'from-disk'}",
    )  # fmt: skip
    assert snapshot(tmp_path / "from-disk") == full_tree
    # The dry run plans from the replica on this host, without Prefect.
    plan = cli(
        "restore", "--stack", "repl", "--vault", "dr-disk", "--source", "app-files", "--backup-id", full_id,
        "--target", f"root={tmp_path / 'dry'}", "--dry-run",
    ).stdout  # fmt: skip
    assert full_id in plan and "dry run: nothing was changed" in plan
    # Over data, a restore from a replica is refused before anything changes (its rollback backup would be
    # written into the replica).
    refused = cli(
        "restore", "--stack", "repl", "--vault", "dr-disk", "--source", "app-files", "--backup-id", full_id,
        "--target", f"root={tmp_path / 'from-disk'}", "--force", expect=2,
    )  # fmt: skip
    assert "rollback backup taken first cannot be written into a replica" in error_line(refused)
    assert snapshot(tmp_path / "from-disk") == full_tree
    unknown = error_line(cli("list", "--stack", "repl", "--vault", "eu-west-1", expect=2))
    assert "has no vault 'eu-west-1' (known: primary, dr-disk, us-east-1); check --vault" in unknown
    unknown = error_line(cli("replicate", "--stack", "repl", "--replica", "gcs-eu", expect=2))
    assert "(known: primary, dr-disk, us-east-1)" in unknown


def test_the_flow_fails_when_a_replica_lags_and_its_table_shows_every_replica(prefect_api, make_stack, tmp_path):
    from prefect.client.orchestration import get_client

    from blocks.apply import apply_stack
    from core.errors import DRError
    from core.operations import backup_source
    from core.sources import FilesSourceConfig
    from core.stack import StackConfig
    from flows.replicate import replicate
    from tests.test_engine_files import files_engine

    handle = make_stack([FilesSourceConfig(name="app-files", root=str(tree(tmp_path / "app")))])
    replicas = [
        {"name": "near", "vault": {"path": str(tmp_path / "near")}},
        {"name": "far", "vault": {"path": str(tmp_path / "far")}},
    ]
    config = StackConfig.model_validate(handle.config.model_dump() | {"replicas": replicas})
    apply_stack(config)
    # No backup yet (a schedule or a trigger may run before the first one): nothing to copy, in sync.
    empty = replicate(stack=handle.name)
    assert [(r["replica"], r["backups_copied"], r["in_sync"]) for r in empty] == [("near", 0, True), ("far", 0, True)]
    vault = config.vault.open(create=True)
    keyring = config.keyring()
    good = backup_source(vault, keyring, files_engine(tmp_path / "app"), "full")
    reports = replicate(stack=handle.name)
    assert [(r["replica"], r["backups_copied"], r["in_sync"]) for r in reports] == [("near", 1, True), ("far", 1, True)]

    # A backup whose chunk is damaged on the primary can reach no replica; past the limit the run fails.
    write(tmp_path / "app/more.txt", b"more\n")
    bad = backup_source(vault, keyring, files_engine(tmp_path / "app"), "full")
    key = f"backups/{bad.id}/streams/files.tar/00000000"
    data = bytearray(vault.store.get(key))
    data[100] ^= 1
    vault.store.put(key, bytes(data), overwrite=True)
    tight = StackConfig.model_validate(config.model_dump() | {"replication": {"max_lag_seconds": 0.001}})
    apply_stack(tight)
    with pytest.raises(DRError) as failed:  # both replicas failed alike: exit 20, both named
        replicate(stack=handle.name)
    assert failed.value.exit_code == 20 and str(failed.value).startswith("2 replications failed - near: replica near")
    assert f"lacks backup {bad.id} of app-files (damaged on the primary: " in str(failed.value)

    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()  # newest first, one per key
        table = next(a for a in artifact if a.key == "replication")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert sorted(r["replica"] for r in rows) == ["far", "near"]
    assert all(r["status"].startswith("FAILED: ") and r["backups copied"] == 0 for r in rows)
    assert all(bad.id in r["missing"] and good.id not in r["missing"] for r in rows)


def test_the_replicate_deployment_runs_every_5_minutes_and_after_each_completed_backup(prefect_api, tmp_path):
    """prefect.yaml's replicate deployment as `prefect deploy` makes it: its schedule, one run at a time, and the
    trigger: a backup flow run that completes (its event on the real API) starts a replicate run."""
    import time
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL
    from prefect.variables import Variable

    from deployments.schedules import variable_name

    # Another test of the session may have stored schedules for the stack 'default' (all paused); this one
    # checks prefect.yaml's own cadence, so it deploys without them and puts them back afterwards.
    stored = Variable.get(variable_name("default"), default=None)
    if stored is not None:
        Variable.unset(variable_name("default"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    try:
        for argv in (
            [PREFECT, "work-pool", "create", "genesis-dr", "--type", "process", "--overwrite"],
            [PREFECT, "--no-prompt", "deploy", "--name", "replicate"],
        ):
            proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"
    finally:
        if stored is not None:
            Variable.set(variable_name("default"), stored, overwrite=True)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("replicate/replicate")
        try:
            assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules] == [
                ("*/5 * * * *", "UTC", True)
            ]
            assert deployment.global_concurrency_limit.limit == 1
            strategy = deployment.concurrency_options.collision_strategy
            assert getattr(strategy, "value", strategy) == "CANCEL_NEW"
            assert deployment.parameters == {"stack": "default"}
            ours = [
                a
                for a in client.read_automations()
                if any(getattr(x, "deployment_id", None) == deployment.id for x in a.actions)
            ]
            assert len(ours) == 1 and ours[0].trigger.expect == {"prefect.flow-run.Completed"}
            assert ours[0].trigger.match_related.model_dump() == {
                "prefect.resource.role": "flow",
                "prefect.resource.name": "backup",
            }
            # A backup run completes (the event the server records for it): a replicate run is created.
            run = uuid.uuid4()
            emit_event(
                event="prefect.flow-run.Completed",
                resource={"prefect.resource.id": f"prefect.flow-run.{run}", "prefect.resource.name": "quick-fox"},
                related=[
                    {
                        "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                        "prefect.resource.role": "flow",
                        "prefect.resource.name": "backup",
                    }
                ],
            )
            deadline = time.monotonic() + 60
            while not client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]})):
                assert time.monotonic() < deadline, "no replicate run was started by the completed backup"
                time.sleep(1)
        finally:
            client.delete_deployment(deployment.id)  # leave no schedule of ours on the shared test server
