"""The genesis-dr command end to end, as an operator runs it (subprocess, real API, real vault)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    env["BACKUP_ENCRYPTION_PASSWORD"] = "cli-test-passphrase-Zq9"

    def run(*args: str, expect: int = 0, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=tmp_path,
            env=env | (extra_env or {}) | {"PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == expect, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
        return proc

    return run


def write_stack(tmp_path: Path, name: str, files_root: Path, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
stack: {name}
vault:
  path: ./vault-{name}
encryption:
  passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD
sources:
  - name: app-files
    kind: files
    root: {files_root}
{extra}
"""
    )
    return path


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("genesis-dr: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_apply_backup_list_restore_through_the_command(cli, tmp_path):
    files = tmp_path / "app"
    (files / "conf").mkdir(parents=True)
    (files / "conf" / "app.ini").write_text("[app]\nsecret_sauce = 42\n")
    stack = write_stack(tmp_path, "clitest", files)

    out = cli("apply", str(stack)).stdout
    assert "dr-stack/clitest" in out
    cli("apply", str(stack))  # idempotent

    out = cli("backup", "full", "--stack", "clitest").stdout
    assert (
        "app-files: COMPLETED backup_" in out
        and " -m cli.main restore --stack clitest --source app-files --backup-id" in out
    )

    listing = json.loads(cli("list", "--stack", "clitest", "--json").stdout)
    assert [b["source"] for b in listing] == ["app-files"] and listing[0]["status"] == "COMPLETED"
    backup_id = listing[0]["id"]
    table = cli("list", "--stack", "clitest").stdout
    assert backup_id in table and "COMPLETED" in table

    target = tmp_path / "restored"

    def restore(*extra: str, expect: int = 0):
        args = ("--stack", "clitest", "--source", "app-files", "--backup-id", backup_id, "--target", f"root={target}")
        return cli("restore", *args, *extra, expect=expect)

    plan = restore("--dry-run").stdout
    assert backup_id in plan and "dry run" in plan
    assert not target.exists()

    out = restore().stdout
    assert "verified" in out
    assert (target / "conf" / "app.ini").read_text() == "[app]\nsecret_sauce = 42\n"

    # Not empty now: refused without --force, allowed with it (after a rollback backup).
    err = one_line_error(restore(expect=9))
    assert "--force" in err
    (target / "conf" / "app.ini").write_text("changed")
    out = restore("--force").stdout
    assert "rollback point: backup_" in out
    assert (target / "conf" / "app.ini").read_text() == "[app]\nsecret_sauce = 42\n"


def test_bad_stack_file_names_the_field(cli, tmp_path):
    stack = write_stack(tmp_path, "badfield", tmp_path, extra="    excludes: ['*.log']\n")
    err = one_line_error(cli("apply", str(stack), expect=2))
    assert "excludes" in err and "exclude" in err
    missing = tmp_path / "missing.yaml"
    missing.write_text("vault: {path: ./v}\nencryption: {}\nsources:\n  - {name: db, kind: postgres, databse: x}\n")
    err = one_line_error(cli("apply", str(missing), expect=2))
    assert "databse" in err and "database" in err


def test_expected_failures_exit_with_their_codes(cli, tmp_path):
    files = tmp_path / "app2"
    files.mkdir()
    (files / "a.txt").write_text("hello")
    stack = write_stack(tmp_path, "errs", files)
    cli("apply", str(stack))
    cli("backup", "full", "--stack", "errs")

    def restore(*extra: str, expect: int, env: dict | None = None) -> str:
        proc = cli(
            "restore",
            "--stack",
            "errs",
            "--source",
            "app-files",
            "--target",
            f"root={tmp_path / 'r'}",
            *extra,
            expect=expect,
            extra_env=env,
        )
        assert "cli-test-passphrase-Zq9" not in proc.stdout + proc.stderr
        return one_line_error(proc)

    assert "backup_20200101_000000_deadbeef" in restore("--backup-id", "backup_20200101_000000_deadbeef", expect=8)
    # A point in time the vault cannot reach: before its oldest backup, or in the future (exit 15).
    assert "before the oldest recoverable point" in restore("--target-time", "2001-01-01T00:00:00Z", expect=15)
    assert "is in the future" in restore("--target-time", "2999-01-01T00:00:00Z", expect=15)
    backup_id = json.loads(cli("list", "--stack", "errs", "--json").stdout)[0]["id"]

    # Another passphrase where the stack reads it: restores refuse, and print neither passphrase.
    err = restore("--backup-id", backup_id, expect=6, env={"BACKUP_ENCRYPTION_PASSWORD": "not-the-right-one"})
    assert "wrong passphrase" in err and "not-the-right-one" not in err

    # One flipped byte in a stored chunk: refused, nothing restored.
    chunk = tmp_path / "vault-errs" / "backups" / backup_id / "streams" / "files.tar" / "00000000"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    chunk.write_bytes(bytes(raw))
    assert backup_id in restore("--backup-id", backup_id, expect=5)
    raw[len(raw) // 2] ^= 0x40
    chunk.write_bytes(bytes(raw))
    assert (
        "verified"
        in cli(
            "restore",
            "--stack",
            "errs",
            "--source",
            "app-files",
            "--target-time",
            "now",
            "--target",
            f"root={tmp_path / 'r'}",
        ).stdout
    )

    # A source that is down: exit 7, and the attempt is on record as FAILED.
    (files / "a.txt").unlink()
    files.rmdir()
    err = one_line_error(cli("backup", "full", "--stack", "errs", expect=7))
    assert str(files) in err
    statuses = [b["status"] for b in json.loads(cli("list", "--stack", "errs", "--json").stdout)]
    assert sorted(statuses) == ["COMPLETED", "FAILED"]


# --- point-in-time restore: the times an operator types, the modes, the targets, the schedules (no server) ---------

NOW = datetime(2026, 12, 15, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("typed", "iso", "note", "parameter"),
    [
        # The issue's own example: no zone, so UTC, and the plan says so in the operator's words.
        (
            "2026-12-15 14:30:00",
            "2026-12-15T14:30:00Z",
            "'2026-12-15 14:30:00' has no zone: read as UTC",
            "2026-12-15 14:30:00",
        ),
        # The source documents' form.
        (
            "2024-12-15_14:30:00",
            "2024-12-15T14:30:00Z",
            "'2024-12-15_14:30:00' has no zone: read as UTC",
            "2024-12-15_14:30:00",
        ),
        ("2024-12-15_14:30", "2024-12-15T14:30:00Z", "'2024-12-15_14:30' has no zone: read as UTC", "2024-12-15_14:30"),
        (
            "2026-12-15T14:30:00.250",
            "2026-12-15T14:30:00.250000Z",
            "'2026-12-15T14:30:00.250' has no zone: read as UTC",
            "2026-12-15T14:30:00.250",
        ),  # fmt: skip
        # A zone given: converted to UTC, nothing assumed.
        ("2026-12-15T14:30:00Z", "2026-12-15T14:30:00Z", None, "2026-12-15T14:30:00Z"),
        ("2026-12-15T15:30:00+01:00", "2026-12-15T14:30:00Z", None, "2026-12-15T14:30:00Z"),
        ("2026-12-15 09:30:00-05:00", "2026-12-15T14:30:00Z", None, "2026-12-15T14:30:00Z"),
        # Relative: pinned to the instant typed (the flow run gets the instant, not "30m ago" again).
        ("30m ago", "2026-12-15T14:30:00Z", None, "2026-12-15T14:30:00Z"),
        ("now", "2026-12-15T15:00:00Z", None, "2026-12-15T15:00:00Z"),
    ],
)
def test_target_time_forms_golden(typed, iso, note, parameter):
    from core.times import read_operator_time

    when = read_operator_time(typed, now=NOW)
    assert (when.iso(), when.plan_note(), when.parameter()) == (iso, note, parameter)
    # What the flow run reads back from its parameter is the same instant, with the same note.
    again = read_operator_time(when.parameter(), now=NOW)
    assert (again.when, again.plan_note()) == (when.when, note)


@pytest.mark.parametrize("typed", ["2024-12-15_14:30:00Z_", "2024-12-15__14:30", "2024-12-15_25:00:00", "15/12/2024"])
def test_bad_target_times_are_one_line_config_errors(typed):
    from core.errors import ConfigError
    from core.times import read_operator_time

    with pytest.raises(ConfigError) as err:
        read_operator_time(typed, now=NOW)
    assert str(err.value).startswith(f"--target-time {typed!r}: not a time") and "2026-12-01_14:30:00" in str(err.value)


def _stack_of_every_kind():
    from core.stack import StackConfig

    return StackConfig.model_validate(
        {
            "stack": "modes",
            "vault": {"path": "/tmp/unused-vault"},
            "sources": [
                {"name": "app-db", "kind": "postgres", "database": "app"},
                {"name": "app-mysql", "kind": "mysql", "database": "app"},
                {"name": "cache", "kind": "redis"},
                {"name": "app-files", "kind": "files", "root": "/srv/app"},
                {"name": "uploads", "kind": "files", "root": "/srv/uploads"},
            ],
        }
    )


@pytest.mark.parametrize(
    ("mode", "source", "expected"),
    [
        ("full", None, ["app-db", "app-mysql", "cache", "app-files", "uploads"]),
        ("database_only", None, ["app-db", "app-mysql"]),
        ("redis_only", None, ["cache"]),
        ("artifacts_only", None, ["app-files", "uploads"]),
        (None, "cache", ["cache"]),
        ("database_only", "app-mysql", ["app-mysql"]),
    ],
)
def test_restore_modes_choose_their_sources(mode, source, expected):
    from core.stack import restore_sources

    assert restore_sources(_stack_of_every_kind(), mode, source) == expected


@pytest.mark.parametrize(
    ("mode", "source", "message"),
    [
        (None, None, "name the source (--source NAME) or the sources' mode"),
        ("redis_only", "app-db", "--source app-db is a postgres source, which --mode redis_only does not restore"),
        ("full", "nope", "has no source 'nope'"),
    ],
)
def test_restore_modes_refuse_what_they_cannot_mean(mode, source, message):
    from core.errors import ConfigError
    from core.stack import restore_sources

    with pytest.raises(ConfigError, match=re.escape(message)):
        restore_sources(_stack_of_every_kind(), mode, source)


def test_targets_of_a_multi_source_restore_are_named_per_source():
    from cli.main import _targets
    from core.errors import ConfigError
    from core.stack import split_targets

    overrides = _targets(["app-db.port=5433", "app-db.data_dir=/srv/pitr", "app-files.root=/srv/r"])
    assert overrides["app-db.port"] == 5433  # a port is a number, named per source too
    assert split_targets(overrides, ["app-db", "app-files", "cache"]) == {
        "app-db": {"port": 5433, "data_dir": "/srv/pitr"},
        "app-files": {"root": "/srv/r"},
        "cache": {},
    }
    assert split_targets({"database": "x"}, ["app-db"]) == {"app-db": {"database": "x"}}
    with pytest.raises(ConfigError, match=re.escape("say which one, e.g. --target app-db.port=VALUE")):
        split_targets({"port": 1}, ["app-db", "cache"])
    with pytest.raises(ConfigError, match="'nope' is not a source of this restore"):
        split_targets({"nope.port": 1}, ["app-db"])


def test_two_sources_into_one_target_are_refused():
    from core.errors import ConfigError
    from core.stack import check_distinct_targets

    check_distinct_targets({"a": {"target": "files /r/a"}, "b": {"target": "files /r/b"}})
    with pytest.raises(ConfigError, match=re.escape("sources a and b would both be restored into files /r")):
        check_distinct_targets({"a": {"target": "files /r"}, "b": {"target": "files /r"}})


def test_recovery_summary_golden():
    from core.times import recovery_summary, render_recovery_summary

    summary = recovery_summary(
        "2026-12-15T14:30:00Z",
        [
            {"source": "app-db", "kind": "postgres", "time": "2026-12-15T14:29:59.812Z", "data_loss_s": 0.188,
             "proof": "pg_last_xact_replay_timestamp()"},
            {"source": "cache", "kind": "redis", "time": "2026-12-15T14:15:00+00:00", "data_loss_s": 900.0,
             "proof": "snapshot position"},
            {"source": "app-files", "kind": "files", "time": "2026-12-15T14:30:00Z", "data_loss_s": 0.0,
             "proof": "incremental backup"},
        ],
        "'2026-12-15 14:30:00' has no zone: read as UTC",
    )  # fmt: skip
    assert (summary["skew_s"], summary["earliest"], summary["latest"]) == (900.0, "cache", "app-files")
    assert render_recovery_summary(summary).splitlines() == [
        "Stack restored to 2026-12-15T14:30:00Z ('2026-12-15 14:30:00' has no zone: read as UTC): what each source "
        "reached",
        "  SOURCE    KIND     RECOVERY POINT              DATA LOSS  PROOF",
        "  app-db    postgres 2026-12-15T14:29:59.812Z         0.2s  pg_last_xact_replay_timestamp()",
        "  cache     redis    2026-12-15T14:15:00.000Z       900.0s  snapshot position",
        "  app-files files    2026-12-15T14:30:00.000Z         0.0s  incremental backup",
        "  largest skew between sources: 900.000s (cache at 2026-12-15T14:15:00.000Z, app-files at "
        "2026-12-15T14:30:00.000Z)",
    ]
    one = recovery_summary("2026-12-15T14:30:00Z", summary["sources"][:1])
    assert one["skew_s"] is None and "skew" not in render_recovery_summary(one)
    assert render_recovery_summary(one, planned=True).startswith(
        "Stack at 2026-12-15T14:30:00Z: what each source would"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup", "incremental", "--source", "a", "--source", "b"], {"type": "incremental", "source": ["a", "b"]}),
        (["backup", "differential"], {"type": "differential", "source": None}),
        (["capture", "--source", "app-db"], {"command": "capture", "source": ["app-db"]}),
        (
            ["restore", "--target-time", "2024-12-15_14:30:00", "--mode", "database_only", "--dry-run"],
            {"target_time": "2024-12-15_14:30:00", "mode": "database_only", "source": None, "dry_run": True},
        ),
        (["restore", "--source", "s", "--backup-id", "b"], {"source": "s", "backup_id": "b", "mode": None}),
        (["list", "--chains", "--source", "app-db"], {"chains": True, "source": "app-db"}),
    ],
)
def test_command_line_parsing(argv, expected):
    from cli.main import build_parser

    args = vars(build_parser().parse_args(argv))
    assert {k: args[k] for k in expected} == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["backup", "weekly"],
        ["restore", "--target-time", "now", "--mode", "everything"],
        ["restore", "--source", "s", "--backup-id", "b", "--target-time", "now"],
    ],
)
def test_command_line_refuses_unknown_types_and_modes(argv, capsys):
    from cli.main import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2


def test_stack_file_schedules_default_to_the_documents_cadence_and_refuse_non_cron(tmp_path):
    from core.errors import ConfigError
    from core.stack import load_stack_file

    path = write_stack(tmp_path, "sched", tmp_path)
    assert load_stack_file(path).schedules.deployment_schedules() == {
        "full": {"cron": "0 */6 * * *", "timezone": "UTC", "active": True},
        "differential": {"cron": "0 * * * *", "timezone": "UTC", "active": True},
        "incremental": {"cron": "*/5 * * * *", "timezone": "UTC", "active": True},
        "redis": {"cron": "*/15 * * * *", "timezone": "UTC", "active": True},
        "capture": {"cron": "*/5 * * * *", "timezone": "UTC", "active": True},
        "replicate": {"cron": "*/5 * * * *", "timezone": "UTC", "active": True},
        "validate_integrity": {"cron": "0 2 * * *", "timezone": "UTC", "active": True},
        "validate_restore": {"cron": "0 3 * * 0", "timezone": "UTC", "active": True},
        "drill_daily": {"cron": "30 2 * * *", "timezone": "UTC", "active": True},
        "drill_weekly": {"cron": "0 4 * * 0", "timezone": "UTC", "active": True},
        "drill_monthly": {"cron": "0 5 1 * *", "timezone": "UTC", "active": True},
        "monitor": {"cron": "* * * * *", "timezone": "UTC", "active": True},
        "retention": {"cron": "0 3 * * *", "timezone": "UTC", "active": True},
        "audit_verify": {"cron": "45 3 * * *", "timezone": "UTC", "active": True},
        "self_backup": {"cron": "15 4 * * *", "timezone": "UTC", "active": True},
        # on demand: a paused yearly placeholder until the stack file gives a cron
        **dict.fromkeys(
            ("drill_full", "restore", "failover", "failback", "hold", "erase"),
            {"cron": "0 0 1 1 *", "timezone": "UTC", "active": False},
        ),
    }
    path.write_text(path.read_text() + "schedules:\n  incremental: '*/2 * * * *'\n  redis: 'off'\n")
    schedules = load_stack_file(path).schedules.deployment_schedules()
    assert schedules["incremental"]["cron"] == "*/2 * * * *"
    assert schedules["redis"] == {"cron": "*/15 * * * *", "timezone": "UTC", "active": False}
    path.write_text(path.read_text().replace("'*/2 * * * *'", "every 2 minutes"))
    with pytest.raises(ConfigError, match=r"field 'schedules.incremental': 'every 2 minutes' is not a cron"):
        load_stack_file(path)
    path.write_text(path.read_text().replace("incremental:", "incremetnal:"))
    with pytest.raises(ConfigError, match=r"unknown field 'schedules.incremetnal'; did you mean 'incremental'\?"):
        load_stack_file(path)
