"""The validate and drill flows as an operator runs them: `genesis-dr validate`, `genesis-dr drill run|status`,
through Prefect's test harness (a real API), with the outcome posted over real HTTP to a local receiver."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.commands import clean_environment, command_runner, error_line
from tests.fixtures_notify import Receiver
from tests.test_engine_files import write


@pytest.fixture
def cli(prefect_api, tmp_path):
    return command_runner(tmp_path, clean_environment(BACKUP_ENCRYPTION_PASSWORD="validate-test-Rk2"), timeout=600)


def stack_file(tmp_path: Path, name: str, root: Path, hook: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
stack: {name}
vault: {{path: ./vault-{name}}}
encryption: {{passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD}}
sources:
  - {{name: app-files, kind: files, root: {root}}}
validation:
  smoke_queries: {{app-files: [conf/app.ini]}}
notifications:
  webhooks: [{{name: ops, url: "{hook}"}}]
  pagerduty: {{routing_key: pd-routing-key-Zx81, url: "{hook.rsplit("/", 1)[0]}/pagerduty"}}
{extra}"""
    )
    return path


def test_validate_command_passes_then_names_a_deleted_object_and_notifies(cli, tmp_path):
    root = tmp_path / "app"
    write(root / "conf/app.ini", b"[app]\nv = 1\n")
    write(root / "data.bin", os.urandom(300_000))
    with Receiver() as rx:
        stack = stack_file(tmp_path, "val", root, rx.url("/hook"))
        cli("apply", str(stack))
        cli("backup", "full", "--stack", "val")
        before = len(rx.posts)

        names = {}
        for level in ("quick", "integrity", "restore"):
            record = json.loads(cli("validate", "--stack", "val", "--level", level, "--json").stdout)
            assert record["passed"] is True and record["level"] == level, record
            assert record["counts"]["failed"] == 0, record
            names[level] = {r["name"] for r in record["results"]}
        assert {"objects present", "chain", "freshness"} <= names["quick"], names
        assert {"read back", "tar listing", "tree index"} <= names["integrity"], names
        # The restore level does not re-read what integrity verified minutes ago (reverify_after_hours), and says so.
        assert {"data checks", "smoke: conf/app.ini"} <= names["restore"] and record["reused"], record
        # Each run's record is in the vault itself (the history survives the Prefect database).
        kept = sorted((tmp_path / "vault-val/history/validations").glob("validation_*.json"))
        assert len(kept) == 3 and json.loads(kept[-1].read_text())["id"] == record["id"]

        # Every run told the webhook; PagerDuty got resolves (nothing was open), never a trigger.
        posts = rx.wait(before + 6)[before:]
        hooks = [p.body for p in posts if p.path == "/hook"]
        assert [(h["activity"], h["outcome"]) for h in hooks] == [("validation", "success")] * 3, hooks
        assert {p.body["event_action"] for p in posts if p.path == "/pagerduty"} == {"resolve"}

        # A chunk deleted from the vault: quick names it, the run fails with exit 21 and pages.
        chunk = next((tmp_path / "vault-val/backups").glob("*/streams/*/00000000"))
        chunk.unlink()
        proc = cli("validate", "--stack", "val", "--level", "quick", expect=21)
        assert f"[FAILED] {chunk.parts[-4]} app-files: objects present:" in proc.stdout, proc.stdout
        assert "validation_" in error_line(proc) and "objects present" in error_line(proc)
        trigger = [p.body for p in rx.wait(before + 8) if p.path == "/pagerduty"][-1]
        assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == "genesis-dr/val/validation/quick"
        assert "pd-routing-key-Zx81" not in proc.stdout + proc.stderr


def test_drill_commands_measure_rto_and_rpo_keep_history_and_fail_on_a_missed_objective(cli, tmp_path, redis_factory):
    from tests.fixtures_redis import assert_same_redis, seed_redis, snapshot_redis

    root = tmp_path / "app"
    write(root / "conf/app.ini", b"[app]\nv = 1\n")
    server = redis_factory()
    seed_redis(server.client())
    before = snapshot_redis(server.client)
    cache = f"  - {{name: cache, kind: redis, host: 127.0.0.1, port: {server.port}}}\n"
    with Receiver() as rx:
        stack = stack_file(tmp_path, "dr", root, rx.url("/hook"))
        stack.write_text(stack.read_text().replace("sources:\n", "sources:\n" + cache))
        cli("apply", str(stack))
        cli("backup", "full", "--stack", "dr")

        cli("drill", "run", "daily", "--stack", "dr")
        record = json.loads(cli("drill", "run", "monthly", "--stack", "dr", "--json").stdout)
        assert record["passed"] is True and record["tier"] == "monthly", record
        assert set(record["sources"]) == {"app-files", "cache"}
        for recovered in record["sources"].values():
            assert set(recovered["stages"]) >= {"sandbox", "fetch", "decrypt", "load", "verify"}, recovered
            assert 0 < recovered["seconds"] <= record["rto_s"] < record["rto_objective_s"] == 900
            assert 0 <= recovered["rpo_s"] <= recovered["rpo_objective_s"] == 300
        # The record and its chart are in the vault; production was never touched.
        history = tmp_path / "vault-dr/history/drills"
        assert json.loads((history / f"{record['id']}.json").read_text())["rto_s"] == record["rto_s"]
        assert (history / f"{record['id']}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert_same_redis(before, snapshot_redis(server.client), ttl_slack=60)

        status = cli("drill", "status", "--stack", "dr").stdout
        assert "daily" in status and "monthly" in status and record["id"] in status, status
        assert "never run" in status.split("weekly", 1)[1].splitlines()[0], status

        # An objective the stack cannot meet: the drill fails (exit 22) naming it, and pages once.
        stack.write_text(stack.read_text() + "objectives: {rto_seconds: 0.01}\n")
        cli("apply", str(stack))
        proc = cli("drill", "run", "monthly", "--stack", "dr", expect=22)
        assert "RTO" in error_line(proc) and "0.01" in error_line(proc), error_line(proc)
        triggers = [p.body for p in rx.posts if p.path == "/pagerduty" and p.body["event_action"] == "trigger"]
        assert [t["dedup_key"] for t in triggers] == ["genesis-dr/dr/drill/monthly"], triggers
        failed = json.loads(cli("drill", "status", "--stack", "dr", "--json").stdout)
        assert failed["tiers"]["monthly"]["passed"] is False, failed
