"""GDPR erasure against real PostgreSQL and MariaDB servers, a real local vault and real keys.

One stack per module: a PostgreSQL source and a MariaDB source holding personal data (class
``personal``) with erasure rules, both backed up once. Each test records requests and restores
into new databases; the subject must be gone from every restore, never in the vault or the
audit trail in the clear, and a request that cannot be honoured must fail loudly.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.audit import trail_for
from core.crypto.signing import SigningKey, generate_signing_key
from core.engines import engine_for
from core.errors import ErasureError
from core.operations import backup_source, restore_backup
from core.restoring import reapply_erasures, render_report
from core.retention import erasure
from core.retention.certificate import read_certificate, verify_certificate
from core.sources import FilesSourceConfig
from core.stack import StackConfig

ALICE = "alice@example.com"
BOB = "bob@example.com"

PG_RULE = {
    # Two statements, one request: both run in one transaction. The literal '%' must reach the
    # server as it is (the subject is bound, never formatted into the SQL).
    "statements": [
        "DELETE FROM orders WHERE customer_email = {subject}",
        "DELETE FROM customers WHERE email = {subject} AND note LIKE '%'",
    ]
}
MYSQL_RULE = {"statements": ["DELETE FROM customers WHERE email = {subject}"]}


def _key_file(tmp: Path, name: str) -> tuple[str, str]:
    private, public = generate_signing_key()
    path = tmp / name
    path.write_text(private + "\n")
    path.chmod(0o600)
    return f"file:{path}", public


def _stack(tmp: Path, stack_sources: list, *, erasure_rules: dict, admin_from: str, admin_public: str, **retention):
    secret = tmp / "passphrase"
    if not secret.exists():
        secret.write_text(secrets.token_urlsafe(16) + "\n")
        secret.chmod(0o600)
    return StackConfig(
        stack=f"erase-{secrets.token_hex(3)}",
        vault={"path": str(tmp / "vault")},
        encryption={"passphrase_from": f"file:{secret}"},
        sources=[s.model_dump() for s in stack_sources],
        signing={"admin_key_from": admin_from, "admin_public_keys": [admin_public]},
        retention={"erasure": erasure_rules, **retention},
    )


@pytest.fixture(scope="module")
def stack(pg_server, mysql_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("erasure")
    pg_db = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(pg_db) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, note text NOT NULL)")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_email text NOT NULL, total int NOT NULL)")
        conn.execute(f"INSERT INTO customers VALUES (1, '{ALICE}', 'vip'), (2, '{BOB}', '50% off')")
        conn.execute(f"INSERT INTO orders VALUES (1, '{ALICE}', 10), (2, '{ALICE}', 20), (3, '{BOB}', 30)")
    my_db = mysql_server.create_database("erase")
    with mysql_server.connect(my_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE customers (id INT PRIMARY KEY, email VARCHAR(80) NOT NULL) ENGINE=InnoDB")
        cur.execute("INSERT INTO customers VALUES (1, %s), (2, %s), (3, %s)", (ALICE, BOB, ALICE))
    admin_from, admin_public = _key_file(tmp, "admin.ed25519")
    sources = [
        pg_server.config("crm", pg_db, data_classes=["personal"]),
        mysql_server.config("shop", my_db, data_classes=["personal"]),
    ]
    config = _stack(
        tmp,
        sources,
        erasure_rules={"crm": PG_RULE, "shop": MYSQL_RULE},
        admin_from=admin_from,
        admin_public=admin_public,
    )
    vault, keyring = config.vault.open(create=True), config.keyring()
    backups = {src.name: backup_source(vault, keyring, engine_for(src)).id for src in config.sources}
    request = erasure.record_erasure(config, ALICE, admin_key=config.signing.admin_key("erase"))
    return SimpleNamespace(
        config=config, vault=vault, keyring=keyring, backups=backups, request=request, tmp=tmp, pg_db=pg_db
    )


def _pg_rows(pg_server, database: str) -> dict[str, list]:
    with pg_server.connect(database) as conn:
        return {
            "customers": conn.execute("SELECT id, email FROM customers ORDER BY id").fetchall(),
            "orders": conn.execute("SELECT id, customer_email FROM orders ORDER BY id").fetchall(),
        }


def test_restore_re_applies_the_erasure_on_postgres(stack, pg_server):
    target = pg_server.fresh_database_name()
    report = restore_backup(
        stack.vault, stack.keyring, stack.backups["crm"], engine_for(pg_server.config("restore-target", target))
    )
    assert _pg_rows(pg_server, target) == {"customers": [(2, BOB)], "orders": [(3, BOB)]}
    assert report.erasures == [stack.request.id]
    assert report.erasures_applied is True
    assert report.erasure_lines == [
        f"erasure {stack.request.id}: 2 rows deleted by statement 1",
        f"erasure {stack.request.id}: 1 rows deleted by statement 2",
    ]
    text = render_report(report.to_dict())
    assert f"erasures re-applied: 1 ({stack.request.id})" in text
    assert ALICE not in text
    # The verification ran against the data as backed up, before the erasure.
    assert report.verified_checks > 0
    # Over data (--force): restored beside the target, verified, swapped in, then erased in place.
    report = restore_backup(
        stack.vault,
        stack.keyring,
        stack.backups["crm"],
        engine_for(pg_server.config("restore-target", target)),
        force=True,
    )
    assert report.method.startswith("staged") and report.rollback_backup_id is not None
    assert _pg_rows(pg_server, target) == {"customers": [(2, BOB)], "orders": [(3, BOB)]}
    assert report.erasures == [stack.request.id]


def test_restore_re_applies_the_erasure_on_mariadb(stack, mysql_server):
    target = mysql_server.fresh_database_name("restored")
    report = restore_backup(
        stack.vault, stack.keyring, stack.backups["shop"], engine_for(mysql_server.config("restore-target", target))
    )
    with mysql_server.connect(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, email FROM customers ORDER BY id")
        assert cur.fetchall() == ((2, BOB),)
    assert report.erasures == [stack.request.id]
    assert report.erasure_lines == [f"erasure {stack.request.id}: 2 rows deleted by statement 1"]


def test_the_subject_is_never_stored_in_the_clear(stack):
    vault_dir = Path(stack.config.vault.path)
    holding = [p for p in vault_dir.rglob("*") if p.is_file() and ALICE.encode() in p.read_bytes()]
    assert holding == []
    entries = trail_for(stack.config).entries()
    requests = [e for e in entries if e["action"] == "erasure.request"]
    assert [e["subject"] for e in requests][-1] == stack.request.id
    assert ALICE not in json.dumps(entries)
    stored = json.loads((vault_dir / "erasure" / f"{stack.request.id}.json").read_text())
    assert stored["sources"] == ["crm", "shop"]
    assert stored["rules"] == {
        "crm": {**PG_RULE, "redis_patterns": [], "paths": []},
        "shop": {**MYSQL_RULE, "redis_patterns": [], "paths": []},
    }
    # Only the keys of the stack open it; the digest is keyed, so two requests for one subject look unrelated.
    assert erasure.unseal_subject(stack.keyring, stack.request) == ALICE
    again = erasure.record_erasure(stack.config, ALICE, admin_key=stack.config.signing.admin_key("erase"))
    try:
        assert again.subject_digest != stack.request.subject_digest
        assert again.due_by == (
            datetime.fromisoformat(again.received_at.replace("Z", "+00:00")) + timedelta(days=30)
        ).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert [p["id"] for p in erasure.pending(stack.vault.store)] == [stack.request.id, again.id]
    finally:
        (vault_dir / "erasure" / f"{again.id}.json").unlink()


def test_a_failing_statement_fails_the_restore_and_names_the_request(stack, pg_server):
    target = pg_server.fresh_database_name()
    broken = {"crm": {"statements": ["DELETE FROM no_such_table WHERE email = {subject}"]}}
    with pytest.raises(ErasureError) as caught:
        restore_backup(
            stack.vault,
            stack.keyring,
            stack.backups["crm"],
            engine_for(pg_server.config("restore-target", target)),
            erasure_rules=broken,
        )
    message = caught.value.message
    assert stack.request.id in message and "crm" in message and "no_such_table" in message
    assert ALICE not in message and "\n" not in message
    # The restored data stays (as restored), and the error says it still holds the subject.
    assert _pg_rows(pg_server, target)["customers"] == [(1, ALICE), (2, BOB)]


def test_a_tampered_request_stops_the_restore_before_the_target_changes(stack, pg_server):
    path = Path(stack.config.vault.path) / "erasure" / f"{stack.request.id}.json"
    original = path.read_bytes()
    edited = json.loads(original)
    edited["rules"]["crm"]["statements"] = ["DROP TABLE customers"]
    path.write_text(json.dumps(edited))
    target = pg_server.fresh_database_name()
    try:
        with pytest.raises(
            ErasureError, match=f"erasure request {stack.request.id}: its admin signature does not verify"
        ):
            restore_backup(
                stack.vault, stack.keyring, stack.backups["crm"], engine_for(pg_server.config("restore-target", target))
            )
    finally:
        path.write_bytes(original)
    assert not pg_server.database_exists(target)


def test_a_sandbox_restore_compares_first_then_re_applies(stack, pg_server):
    target = pg_server.fresh_database_name()
    engine = engine_for(pg_server.config("sandbox", target))
    report = restore_backup(stack.vault, stack.keyring, stack.backups["crm"], engine, verify=False)
    assert report.erasures == [stack.request.id] and report.erasures_applied is False
    assert "erasures NOT YET re-applied: 1" in render_report(report.to_dict())
    assert len(_pg_rows(pg_server, target)["customers"]) == 2  # the caller compares the data as backed up
    ids, lines = reapply_erasures(stack.vault, stack.keyring, engine, "crm")
    assert ids == [stack.request.id] and len(lines) == 2
    assert _pg_rows(pg_server, target)["customers"] == [(2, BOB)]


def test_recording_needs_an_admin_key_and_a_rule_for_every_personal_source(stack, pg_server, tmp_path):
    stranger = SigningKey.from_b64(generate_signing_key()[0])
    with pytest.raises(ErasureError, match="is not an admin key"):
        erasure.record_erasure(stack.config, ALICE, admin_key=stranger)
    admin_from, admin_public = _key_file(tmp_path, "admin.ed25519")
    no_rule = _stack(
        tmp_path,
        [
            pg_server.config("crm", stack.pg_db, data_classes=["personal"]),
            pg_server.config("billing", stack.pg_db, data_classes=["personal"]),
        ],
        erasure_rules={"crm": PG_RULE},
        admin_from=admin_from,
        admin_public=admin_public,
    )
    with pytest.raises(ErasureError) as caught:
        erasure.record_erasure(no_rule, ALICE, admin_key=no_rule.signing.admin_key("erase"))
    assert "source billing holds personal data" in caught.value.message
    assert "retention.erasure.billing.statements" in caught.value.message
    assert not (tmp_path / "vault" / "erasure").exists()


def test_bind_subject_never_formats_the_subject_into_sql():
    assert erasure.bind_subject("DELETE FROM t WHERE a = {subject} AND b LIKE '%x' OR c = {subject}") == (
        "DELETE FROM t WHERE a = %s AND b LIKE '%%x' OR c = %s",
        2,
    )


@pytest.fixture(scope="module")
def compliance(pg_server, mysql_server, tmp_path_factory):
    """A personal source (GDPR maximum 35 days) with two backups, and a SOX source (7-year minimum) with an
    erasure rule; the request is applied 36 days later (``now``), when the older personal backup is past
    its maximum."""
    tmp = tmp_path_factory.mktemp("erasure-apply")
    pg_db = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(pg_db) as conn:
        conn.execute("CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL, note text NOT NULL)")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer_email text NOT NULL, total int NOT NULL)")
        conn.execute(f"INSERT INTO customers VALUES (1, '{ALICE}', 'vip')")
    ledger = mysql_server.create_database("ledger")
    with mysql_server.connect(ledger) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE customers (id INT PRIMARY KEY, email VARCHAR(80) NOT NULL) ENGINE=InnoDB")
        cur.execute("INSERT INTO customers VALUES (1, %s)", (ALICE,))
    admin_from, admin_public = _key_file(tmp, "admin.ed25519")
    config = _stack(
        tmp,
        [
            pg_server.config("crm", pg_db, data_classes=["personal"]),
            mysql_server.config("ledger", ledger, data_classes=["financial"]),
        ],
        erasure_rules={"crm": PG_RULE, "ledger": MYSQL_RULE},
        admin_from=admin_from,
        admin_public=admin_public,
        # Without a count rule every backup is past keep_within 36 days later: the planner refuses the source.
        sources={"crm": {"full": {"keep_last": 1}}},
    )
    vault, keyring = config.vault.open(create=True), config.keyring()
    older = backup_source(vault, keyring, engine_for(config.source("crm"))).id
    newer = backup_source(vault, keyring, engine_for(config.source("crm"))).id
    books = backup_source(vault, keyring, engine_for(config.source("ledger"))).id
    request = erasure.record_erasure(config, ALICE, admin_key=config.signing.admin_key("erase"))
    return SimpleNamespace(
        config=config, vault=vault, keyring=keyring, older=older, newer=newer, books=books, request=request
    )


def test_apply_dry_run_changes_nothing(compliance):
    later = datetime.now(UTC) + timedelta(days=36)
    result = erasure.apply_erasure(
        compliance.config, compliance.request.id, dry_run=True, now=later, say=lambda _: None
    )
    assert result["shredded"] == [compliance.older]
    assert {b.id for b in compliance.vault.list_backups()} == {compliance.older, compliance.newer, compliance.books}
    assert [p["id"] for p in erasure.pending(compliance.vault.store)] == [compliance.request.id]


def test_apply_shreds_past_the_maximum_with_a_certificate_and_keeps_what_must_stay(compliance):
    later = datetime.now(UTC) + timedelta(days=36)
    said: list[str] = []
    result = erasure.apply_erasure(compliance.config, compliance.request.id, now=later, say=said.append)
    assert result["shredded"] == [compliance.older]
    assert {b.id for b in compliance.vault.list_backups()} == {compliance.newer, compliance.books}
    kept = {item["id"]: item["why"] for item in result["kept"]}
    assert set(kept) == {compliance.newer, compliance.books}
    assert "SOX (class financial)" in kept[compliance.books] and "minimum" in kept[compliance.books]
    assert kept[compliance.books].endswith("erasure re-applied on restore")
    assert any("past its" in w and compliance.newer in w for w in result["warnings"])
    # The certificate names the request as its authority and verifies under the stack's keys.
    (cert_id,) = result["certificates"]
    cert = read_certificate(compliance.vault.store, cert_id)
    assert cert["subject"] == compliance.older and cert["authority"] == f"erasure {compliance.request.id}"
    verify_certificate(cert, {})
    assert erasure.pending(compliance.vault.store) == []
    applied = erasure.load_request(compliance.vault.store, compliance.request.id).applied
    assert applied["shredded"] == [compliance.older] and applied["certificates"] == [cert_id]
    entries = trail_for(compliance.config).entries()
    (entry,) = [e for e in entries if e["action"] == "erasure.apply"]
    assert entry["subject"] == compliance.request.id and entry["details"]["shredded"] == 1
    assert ALICE not in json.dumps(entries) and ALICE not in "\n".join(said)


def test_files_and_redis_restores_erase_by_path_and_key_pattern(tmp_path, redis_session, redis_factory):
    root = tmp_path / "app"
    (root / "users").mkdir(parents=True)
    (root / "users" / f"{ALICE}.json").write_text('{"name": "Alice"}')
    (root / "users" / f"{BOB}.json").write_text('{"name": "Bob"}')
    (root / "users" / "alice@example.com.bak").write_text("not matched by the rule")
    cache = redis_session("erasure")
    cache.client().flushall()
    cache.client().mset({f"user:{ALICE}:profile": "a", f"user:{ALICE}:cart": "c", f"user:{BOB}:profile": "b"})
    admin_from, admin_public = _key_file(tmp_path, "admin.ed25519")
    config = _stack(
        tmp_path,
        [FilesSourceConfig(name="uploads", root=str(root)), cache.config("cache")],
        erasure_rules={
            "uploads": {"paths": ["users/{subject}.json"]},
            "cache": {"redis_patterns": ["user:{subject}:*"]},
        },
        admin_from=admin_from,
        admin_public=admin_public,
    )
    vault, keyring = config.vault.open(create=True), config.keyring()
    backups = {src.name: backup_source(vault, keyring, engine_for(src)).id for src in config.sources}
    request = erasure.record_erasure(config, ALICE, admin_key=config.signing.admin_key("erase"))

    restored = tmp_path / "restored"
    files = engine_for(FilesSourceConfig(name="restore-target", root=str(restored)))
    report = restore_backup(vault, keyring, backups["uploads"], files)
    assert sorted(p.name for p in (restored / "users").iterdir()) == ["alice@example.com.bak", f"{BOB}.json"]
    assert report.erasure_lines == [f"erasure {request.id}: 1 files removed by path 1"]
    # A backup on a base restores as its chain (full, then the incremental): erased the same way, after it.
    (root / "users" / "carol@example.com.json").write_text('{"name": "Carol"}')
    incremental = backup_source(vault, keyring, engine_for(config.source("uploads")), "incremental").id
    chained = tmp_path / "chained"
    report = restore_backup(
        vault, keyring, incremental, engine_for(FilesSourceConfig(name="restore-target", root=str(chained)))
    )
    assert sorted(p.name for p in (chained / "users").iterdir()) == [
        "alice@example.com.bak",
        f"{BOB}.json",
        "carol@example.com.json",
    ]
    assert report.erasures == [request.id]

    target = redis_factory()
    report = restore_backup(vault, keyring, backups["cache"], engine_for(target.config("restore-target")))
    assert sorted(k.decode() for k in target.client().keys("*")) == [f"user:{BOB}:profile"]
    assert report.erasure_lines == [f"erasure {request.id}: 2 keys removed by pattern 1"]

    # A subject that would step out of the restored root is refused, never globbed.
    with pytest.raises(ErasureError, match="path separator"):
        erasure.apply_erasures(files, {"paths": ["users/{subject}.json"]}, [(request.id, "../app/users/x")])


def test_a_forged_application_record_leaves_the_request_pending(stack):
    forged = Path(stack.config.vault.path) / "erasure" / f"{stack.request.id}.applied-20990101T000000000000Z.json"
    stranger = SigningKey.from_b64(generate_signing_key()[0])
    forged.write_text(
        json.dumps({"request": stack.request.id, "shredded": [], "signer": stranger.public_b64, "sig": "AAAA"})
    )
    try:
        assert [p["id"] for p in erasure.pending(stack.vault.store)] == [stack.request.id]
    finally:
        forged.unlink()


def test_no_shredding_while_the_audit_trail_has_an_alarm(tmp_path):
    from core.audit.verify import raise_alarm, verify_trail

    root = tmp_path / "app"
    root.mkdir()
    (root / f"{ALICE}.json").write_text("{}")
    admin_from, admin_public = _key_file(tmp_path, "admin.ed25519")
    config = _stack(
        tmp_path,
        [FilesSourceConfig(name="uploads", root=str(root), data_classes=["personal"])],
        erasure_rules={"uploads": {"paths": ["{subject}.json"]}},
        admin_from=admin_from,
        admin_public=admin_public,
        sources={"uploads": {"full": {"keep_last": 1}}},
    )
    vault, keyring = config.vault.open(create=True), config.keyring()
    older = backup_source(vault, keyring, engine_for(config.source("uploads"))).id
    newer = backup_source(vault, keyring, engine_for(config.source("uploads"))).id
    request = erasure.record_erasure(config, ALICE, admin_key=config.signing.admin_key("erase"))
    entry = Path(config.vault.path) / "audit" / "entries" / f"{1:012d}.json"
    edited = json.loads(entry.read_text())
    edited["details"]["due_by"] = "2099-01-01T00:00:00.000Z"
    entry.write_text(json.dumps(edited))
    report = verify_trail(vault.store, config.signing.trusted())
    raise_alarm(vault.store, report, config.signing.host_key())
    later = datetime.now(UTC) + timedelta(days=36)
    with pytest.raises(ErasureError, match=f"erasure {request.id}: no backup is shredded while the audit trail"):
        erasure.apply_erasure(config, request.id, now=later, say=lambda _: None)
    assert {b.id for b in vault.list_backups()} == {older, newer}
    assert [p["id"] for p in erasure.pending(vault.store)] == [request.id]
