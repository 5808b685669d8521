"""The genesis-dr command end to end, as an operator runs it (subprocess, real API, real vault)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    assert "no completed backup" in restore("--target-time", "2001-01-01T00:00:00Z", expect=8)
    backup_id = json.loads(cli("list", "--stack", "errs", "--json").stdout)[0]["id"]

    # Another passphrase where the stack reads it: restores refuse, and print neither passphrase.
    err = restore("--backup-id", backup_id, expect=6, env={"BACKUP_ENCRYPTION_PASSWORD": "not-the-right-one"})
    assert "wrong passphrase" in err and "not-the-right-one" not in err

    # One flipped byte in a stored chunk: refused, nothing restored.
    chunk = next((tmp_path / "vault-errs" / "backups" / backup_id / "streams").rglob("00000000"))
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
            "2999-01-01T00:00:00Z",
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
