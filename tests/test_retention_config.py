"""The retention section, data classes on sources, hold scopes, and the catalog read from a real vault."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from core.crypto.keys import Keyring
from core.engines import engine_for
from core.engines.base import PieceInfo
from core.errors import ConfigError, HoldError, SourceUnavailableError
from core.operations import backup_source
from core.repository.log import LogWriter
from core.repository.vault import Vault
from core.retention.catalog import Catalog, read_catalog
from core.retention.config import DEFAULT_POLICIES, KeepRules, RetentionConfig, parse_duration
from core.retention.planner import plan_retention
from core.retention.scope import Hold, parse_scope
from core.sources import FilesSourceConfig
from core.stack import load_stack_file
from core.storage.local import LocalStore
from tests.test_engine_files import write

D = timedelta(days=1)
STACK = """
stack: prod
vault: {path: ./vault}
sources:
  - {name: app-db, kind: postgres, database: app, data_classes: [financial]}
  - {name: cache, kind: redis}
  - {name: files, kind: files, root: ./app, data_classes: [config]}
"""


def load(tmp_path, text):
    path = tmp_path / "dr.yaml"
    path.write_text(text)
    return load_stack_file(path, env={"BACKUP_ENCRYPTION_PASSWORD": "pw"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90m", timedelta(minutes=90)),
        ("24h", timedelta(hours=24)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(days=14)),
        ("6mo", timedelta(days=183)),
        ("7y", timedelta(days=2557)),  # the leap days of any seven calendar years
        (" 1d ", timedelta(days=1)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1.5d", "30 days", "3s", "1y2d"])
def test_bad_durations_name_the_text(text):
    with pytest.raises(ValueError, match=f"duration {text!r} is not understood"):
        parse_duration(text)


def test_defaults_are_the_source_documents_table():
    config = RetentionConfig()
    db = config.policy_for("app-db", "postgres", [])
    assert {t: r.keep_within for t, r in db.rules.items()} == {"full": "30d", "differential": "7d", "incremental": "7d"}
    assert db.pitr_window == 7 * D
    assert config.policy_for("shop", "mysql", []).rules == db.rules
    redis = config.policy_for("cache", "redis", [])
    assert (redis.rules["full"].keep_within, redis.rules["full"].keep_last) == ("24h", 1)
    assert redis.rules_for("incremental") is redis.rules["full"]  # fulls only; anything else follows them
    files = config.policy_for("configs", "files", ["config"])
    assert {r.keep_within for r in files.rules.values()} == {"90d"}
    assert (files.min_retention, files.max_retention) == (None, None)
    secrets = config.policy_for("vault-files", "files", ["secrets"])
    assert (secrets.max_retention, secrets.max_reason) == (30 * D, "class secrets: 30 days")
    assert set(DEFAULT_POLICIES) == {"postgres", "mysql", "redis", "files", "bucket"}


def test_compliance_classes():
    config = RetentionConfig()
    sox = config.policy_for("ledger", "postgres", ["financial", "config"])
    assert (sox.min_retention, sox.min_reason) == (2557 * D, "SOX (class financial): 7 years")  # 7 x 365.25, rounded up
    both = config.policy_for("clinic", "postgres", ["health", "cardholder"])
    assert (both.min_retention, both.min_reason) == (2192 * D, "HIPAA (class health): 6 years")
    assert both.online_for == 92 * D  # 3 x 30.4375, rounded up
    gdpr = config.policy_for("crm", "postgres", ["personal"])
    assert (gdpr.max_retention, gdpr.max_reason) == (35 * D, "GDPR (class personal): 35 days")
    # The shortest maximum wins, the longest minimum wins.
    assert config.policy_for("x", "files", ["personal", "secrets"]).max_retention == 30 * D


def test_overrides_merge_over_the_kind_defaults_field_by_field():
    config = RetentionConfig.model_validate(
        {
            "sources": {
                "app-db": {"full": {"keep_last": 3, "daily": 7}, "archive_after": "90d", "archive_to": "GLACIER"}
            },
            "data_classes": {
                "financial": {"framework": "SOX", "min_retention": "10y"},
                "logs": {"max_retention": "2w"},
            },
        }
    )
    db = config.policy_for("app-db", "postgres", ["financial"])
    assert db.rules["full"] == KeepRules(keep_last=3, daily=7)  # replaced whole
    assert db.rules["incremental"].keep_within == "7d"  # still the default
    assert (db.pitr_window, db.archive_after, db.archive_to) == (7 * D, 90 * D, "GLACIER")
    assert db.min_reason == "SOX (class financial): 10 years"
    assert config.policy_for("x", "files", ["logs"]).max_retention == 14 * D


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"sources": {"app-db": {"full": {}}}}, "this rule set keeps nothing"),
        ({"sources": {"app-db": {"full": {"keep_last": 0, "daily": 0}}}}, "this rule set keeps nothing"),
        ({"sources": {"app-db": {"full": {"keep_within": "30 days"}}}}, "duration '30 days' is not understood"),
        ({"sources": {"app-db": {"pitr_window": "7"}}}, "duration '7' is not understood"),
        ({"sources": {"app-db": {"archive_after": "30d"}}}, "archive_after and archive_to go together"),
        ({"sources": {"app-db": {"archive_after": "1d", "archive_to": "COLD"}}}, "archive_to 'COLD' is neither"),
        ({"sources": {"app-db": {"keep": 3}}}, "unknown field 'retention.sources.app-db.keep'"),
        ({"data_classes": {"x": {"min_retention": "2y", "max_retention": "1y"}}}, "min_retention 2y is longer"),
        ({"overwrite_passes": 0}, "retention.overwrite_passes"),
    ],
)
def test_bad_rules_are_refused_at_load(tmp_path, section, expected):
    text = STACK + "retention: " + json.dumps(section) + "\n"
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        load(tmp_path, text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            STACK.replace("[financial]", "[financal]"),
            "field 'sources[0] (app-db).data_classes[0]': data class 'financal' is not defined (did you mean 'financial'?)",
        ),
        (
            STACK.replace("[financial]", "[financial, personal]"),
            "data class 'financial' must be kept at least 7y but class 'personal' at most 35d",
        ),
        (STACK + "retention: {sources: {app-bd: {pitr_window: 1d}}}\n", "'app-bd' is not a source of this stack"),
        (STACK + "retention: {erasure: {crm: {statements: ['x']}}}\n", "'crm' is not a source of this stack"),
    ],
)
def test_classes_and_names_are_checked_against_the_sources(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load(tmp_path, text)


def test_a_class_defined_in_the_stack_is_usable_and_a_builtin_can_be_replaced(tmp_path):
    text = STACK.replace("[config]", "[telemetry]") + (
        "retention:\n"
        "  data_classes:\n"
        "    telemetry: {max_retention: 14d, description: device metrics}\n"
        "    personal: {framework: GDPR, max_retention: 60d}\n"
        "  sources:\n"
        "    app-db: {full: {keep_last: 2, keep_within: 45d}}\n"
        "  erasure:\n"
        "    app-db: {statements: ['DELETE FROM users WHERE email = {subject}']}\n"
    )
    stack = load(tmp_path, text)
    assert stack.source("files").data_classes == ["telemetry"]
    assert stack.retention.classes()["personal"].max_retention == "60d"
    assert stack.retention.policy_for("files", "files", ["telemetry"]).max_retention == 14 * D
    assert stack.retention.erasure["app-db"].statements == ["DELETE FROM users WHERE email = {subject}"]
    # The stack is stored as JSON (the DR Stack block) and read back: the policy comes back the same.
    again = RetentionConfig.model_validate(stack.retention.model_dump(mode="json"))
    assert again.policy_for("app-db", "postgres", ["financial"]) == stack.retention.policy_for(
        "app-db", "postgres", ["financial"]
    )


# -- hold scopes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{backup_ids: [x]}", "hold scope: not JSON ("),
        ("[]", "hold scope: expected a JSON object, got list"),
        ("{}", "hold scope: the scope names nothing; give backup_ids, sources, data_classes or from_time/to_time"),
        ('{"backup_id": ["x"]}', "hold scope: backup_id: unknown field; known: backup_ids, sources"),
        ('{"from_time": "yesterday"}', "hold scope: from_time: 'yesterday' is not an ISO-8601 time"),
        ('{"from_time": "2024-12-02", "to_time": "2024-12-01"}', "hold scope: from_time 2024-12-02 is after"),
        ('{"sources": "app"}', "hold scope: sources: Input should be a valid list"),
    ],
)
def test_malformed_scopes_are_one_line_hold_errors(text, expected):
    with pytest.raises(HoldError) as info:
        parse_scope(text)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    assert info.value.exit_code == 29


def test_scope_fields_are_anded_and_values_ored():
    from core.retention.catalog import BackupItem, PieceItem

    when = datetime(2024, 12, 15, 10, tzinfo=UTC)
    item = BackupItem(
        "backup_20241215_100000_0000abcd", "app", "postgres", "full", "COMPLETED", when, when + timedelta(minutes=5),
        "backup_20241215_100000_0000abcd", None, None, 1, None, None,
    )  # fmt: skip
    piece = PieceItem("app", 4, when, when + timedelta(hours=1), "k", 1, False)

    def hold(scope: str) -> Hold:
        return Hold("h", "n", "r", parse_scope(scope), "c", "me", "2024-12-16T00:00:00Z")

    assert hold('{"backup_ids": ["backup_20241215_*", "other"]}').covers_backup(item, [])
    assert not hold('{"backup_ids": ["backup_20241215_*"], "sources": ["db2"]}').covers_backup(item, [])
    assert hold('{"data_classes": ["personal", "financial"]}').covers_backup(item, ["financial"])
    assert not hold('{"data_classes": ["personal"]}').covers_backup(item, ["financial"])
    assert hold('{"from_time": "2024-12-15T10:04:00Z"}').covers_backup(item, [])  # overlaps the run
    assert not hold('{"to_time": "2024-12-15T09:59:00Z"}').covers_backup(item, [])
    # A piece is covered by a time range only (an id scope covers the pieces its backups need, via the plan).
    assert hold(
        '{"sources": ["app"], "from_time": "2024-12-15T10:30:00", "to_time": "2024-12-15T12:00:00"}'
    ).covers_piece(piece, [])
    assert not hold('{"backup_ids": ["backup_20241215_*"]}').covers_piece(piece, [])
    assert not hold('{"sources": ["app"]}').covers_piece(piece, [])
    released = Hold("h", "n", "r", parse_scope('{"sources": ["app"]}'), "c", "me", "t", released_at="t2")
    assert not released.active


# -- the catalog of a real vault --------------------------------------------------------------


def test_read_catalog_from_a_real_vault(tmp_path):
    stack = load(tmp_path, STACK)
    keyring = Keyring(passphrase="pw")
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    root = tmp_path / "app"
    write(root / "a.conf", b"a=1\n")
    engine = engine_for(FilesSourceConfig(name="files", root=str(root)))
    full = backup_source(vault, keyring, engine, "full")
    write(root / "b.conf", b"b=2\n")
    incremental = backup_source(vault, keyring, engine, "incremental")
    second = backup_source(vault, keyring, engine, "full")
    gone = engine_for(FilesSourceConfig(name="old-files", root=str(tmp_path / "missing")))  # not in the stack
    with pytest.raises(SourceUnavailableError):
        backup_source(vault, keyring, gone, "full")  # leaves a FAILED record
    # A database's log, as a capture ships it (no server needed for the records).
    log = LogWriter(vault.store, "app-db", "postgres", keyring, vault.check_passphrase(keyring))
    log.ship(PieceInfo({"lsn": "0/100", "timeline": 1}, {"lsn": "0/200", "timeline": 1}, "2026-12-01T00:00:00Z", "2026-12-01T00:10:00Z"), b"w" * 100)  # fmt: skip
    log.ship(PieceInfo({"lsn": "0/200", "timeline": 1}, {"lsn": "0/300", "timeline": 1}, "2026-12-01T00:10:00Z", "2026-12-01T00:20:00Z", partial=True), b"x")  # fmt: skip
    log.close()
    vault.store.put(f"retention/deleting/{full.id}.json", b'{"reason": "test"}')
    vault.store.put(f"backups/{second.id}/archived.json", json.dumps({"vault": "cold", "at": "2026-12-01"}).encode())

    catalog = read_catalog(vault, stack)

    assert catalog.sources["files"].data_classes == ("config",)
    assert catalog.sources["app-db"].kind == "postgres" and catalog.sources["app-db"].data_classes == ("financial",)
    assert catalog.sources["old-files"].kind == "files"  # found in the vault only
    by_id = {b.id: b for b in catalog.backups}
    assert by_id[full.id].status == "DELETING"
    inc = by_id[incremental.id]
    assert (inc.status, inc.type, inc.chain, inc.parent) == ("COMPLETED", "incremental", full.id, full.id)
    assert inc.stored_bytes == incremental.stored_bytes and inc.storage_class is None  # local: no classes
    assert inc.ended_at == datetime.fromisoformat(incremental.ended_at.replace("Z", "+00:00"))
    assert by_id[second.id].archived_to == "vault:cold"
    (failed,) = [b for b in catalog.backups if b.source == "old-files"]
    assert failed.status == "FAILED"
    assert [(p.source, p.seq, p.partial, p.stored_bytes > 0) for p in catalog.pieces] == [
        ("app-db", 0, False, True),
        ("app-db", 1, True, True),
    ]
    assert catalog.pieces[0].start == {"lsn": "0/100", "timeline": 1}
    assert len({p.key_id for p in catalog.pieces}) == 1
    # The catalog survives its JSON form, and the planner reads it: the DELETING backup is left to the executor.
    again = Catalog.from_dict(json.loads(json.dumps(catalog.to_dict())))
    assert again == catalog
    plan = plan_retention(again, stack.retention, [], datetime.now(UTC))
    decision = next(d for d in plan.decisions if d.item == full.id)
    assert decision.action == "keep" and "earlier run" in decision.reasons[0]
    assert (
        next(d for d in plan.decisions if d.item == second.id).restore_delay == "immediate: restore with --vault cold"
    )


def test_a_rule_set_that_keeps_nothing_is_refused_in_python_too():
    with pytest.raises(ValidationError, match="this rule set keeps nothing"):
        KeepRules(keep_within=None, keep_last=0)
    with pytest.raises(ConfigError, match="data class 'nope' is not defined"):
        RetentionConfig().policy_for("x", "files", ["nope"])
