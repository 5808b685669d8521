"""Restore-level validations and drills re-apply the recorded GDPR erasures after their comparison.

A restore-level check restores without the restore's own verification (it compares the
sandbox itself), so the erasures are its job: after the data checks and smoke queries it
re-applies every request recorded for the source, and says so in a check of its own. Real
parts: a files source restored into a drill-target directory, a PostgreSQL source restored into
a drill-target database on the session's server (both inspected afterwards), a real vault,
real keys, requests recorded with a real admin key.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from core.crypto.signing import SigningKey
from core.engines import engine_for
from core.operations import backup_source
from core.restoring import render_report
from core.retention import erasure
from core.sources import FilesSourceConfig
from core.stack import StackConfig
from core.validation.restore_check import check_restore
from tests.fixtures_sandbox import assert_no_sandbox_left
from tests.test_erasure import ALICE, BOB, _key_file


def _stack(tmp: Path, source, rule: dict, target: dict) -> StackConfig:
    """One source with its erasure rule, restored by drills into ``target`` (a test environment)."""
    secret = tmp / "passphrase"
    if not secret.exists():
        secret.write_text(secrets.token_urlsafe(16) + "\n")
        secret.chmod(0o600)
    if not (tmp / "admin.ed25519").exists():
        _key_file(tmp, "admin.ed25519")
    admin = (tmp / "admin.ed25519").read_text().strip()
    return StackConfig(
        stack="drill-erase",
        vault={"path": str(tmp / "vault")},
        encryption={"passphrase_from": f"file:{secret}"},
        sources=[source.model_dump()],
        signing={
            "admin_key_from": f"file:{tmp / 'admin.ed25519'}",
            "admin_public_keys": [SigningKey.from_b64(admin).public_b64],
        },
        retention={"erasure": {source.name: rule}},
        drill={"targets": {source.name: target}},
    )


@pytest.fixture(autouse=True)
def _spool(tmp_path, sandbox_root, monkeypatch):
    monkeypatch.setenv("GENESIS_DR_SPOOL_DIR", str(tmp_path / "spool"))
    yield
    assert_no_sandbox_left(sandbox_root)


def _names(recovery) -> list[str]:
    return [r.name for r in recovery.results]


def test_a_files_drill_target_ends_erased_and_the_check_says_which_request(tmp_path):
    root = tmp_path / "app"
    (root / "users").mkdir(parents=True)
    (root / "users" / f"{ALICE}.json").write_text('{"name": "Alice"}')
    (root / "users" / f"{BOB}.json").write_text('{"name": "Bob"}')
    target = tmp_path / "drill-target"
    source = FilesSourceConfig(name="uploads", root=str(root), data_classes=["personal"])
    rule = {"paths": ["users/{subject}.json"]}
    config = _stack(tmp_path, source, rule, {"root": str(target)})
    vault, keyring = config.vault.open(create=True), config.keyring()
    backup = backup_source(vault, keyring, engine_for(config.source("uploads"))).id

    # No request yet: nothing to re-apply, and no check about it.
    clean = tmp_path / "before"
    before = _stack(tmp_path, source, rule, {"root": str(clean)})
    recovery = check_restore(before, vault, keyring, "uploads")
    assert recovery.passed and _names(recovery) == ["restore", "data checks"], [r.line() for r in recovery.results]
    assert sorted(p.name for p in (clean / "users").iterdir()) == [f"{ALICE}.json", f"{BOB}.json"]

    request = erasure.record_erasure(config, ALICE, admin_key=config.signing.admin_key("erase"))
    lines: list[str] = []
    recovery = check_restore(config, vault, keyring, "uploads", progress=lines.append)
    assert recovery.passed, [r.line() for r in recovery.results]
    assert _names(recovery) == ["restore", "data checks", "erasures re-applied"]
    (erased,) = [r for r in recovery.results if r.name == "erasures re-applied"]
    assert (erased.passed, erased.critical, erased.backup_id, erased.source) == (True, True, backup, "uploads")
    assert erased.detail == (
        f"1 erasure request(s) re-applied on the restored data ({request.id}): "
        f"erasure {request.id}: 1 files removed by path 1"
    )
    # The data checks compared the restore as backed up (Alice there), then the erasure removed her.
    assert sorted(p.name for p in (target / "users").iterdir()) == [f"{BOB}.json"]
    assert recovery.report["erasures"] == [request.id] and recovery.report["erasures_applied"] is True
    text = render_report(recovery.report)
    assert f"erasures re-applied: 1 ({request.id})" in text and "NOT YET" not in text
    assert ALICE not in text and ALICE not in "\n".join(lines) and ALICE not in erased.line()


@pytest.fixture
def crm(pg_server, tmp_path):
    database = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(database) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL)")
        conn.execute(f"INSERT INTO customers VALUES (1, '{ALICE}'), (2, '{BOB}'), (3, '{ALICE}')")

    def stack(rule: dict, target: str) -> StackConfig:
        source = pg_server.config("crm", database, data_classes=["personal"], backup_method="logical")
        return _stack(tmp_path, source, rule, {"database": target})

    return stack


def test_a_postgres_drill_target_is_erased_and_a_failing_rule_fails_the_check(pg_server, crm):
    good = {"statements": ["DELETE FROM customers WHERE email = {subject}"]}
    target = pg_server.fresh_database_name()
    config = crm(good, target)
    vault, keyring = config.vault.open(create=True), config.keyring()
    backup = backup_source(vault, keyring, engine_for(config.source("crm"))).id
    request = erasure.record_erasure(config, ALICE, admin_key=config.signing.admin_key("erase"))

    recovery = check_restore(config, vault, keyring, "crm")
    assert recovery.passed, [r.line() for r in recovery.results]
    assert _names(recovery) == ["restore", "data checks", "erasures re-applied"]
    assert recovery.results[-1].detail.endswith(f"erasure {request.id}: 2 rows deleted by statement 1")
    with pg_server.connect(target) as conn:
        assert conn.execute("SELECT id, email FROM customers ORDER BY id").fetchall() == [(2, BOB)]

    # The stack's current rule wins over the one recorded with the request: a broken one fails the drill.
    broken = crm({"statements": ["DELETE FROM no_such_table WHERE email = {subject}"]}, pg_server.fresh_database_name())
    recovery = check_restore(broken, vault, keyring, "crm")
    assert not recovery.passed
    assert _names(recovery) == ["restore", "data checks", "erasures re-applied"]
    failed = recovery.results[-1]
    assert failed.failed and failed.critical and failed.backup_id == backup
    assert f"erasure {request.id}" in failed.detail and "crm" in failed.detail, failed.detail
    assert failed.remedy.startswith("fix retention.erasure.crm in the stack")
    assert recovery.report["erasures_applied"] is False
    assert "NOT YET re-applied" in render_report(recovery.report)
    assert "\n" not in failed.line() and ALICE not in failed.line()
