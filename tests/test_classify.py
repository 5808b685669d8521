"""The classification scan: pure detectors, then scans of real throw-away servers and directories.

Every scan test also proves the report never carries a sampled value (to_dict, text and the CLI output).
"""

from __future__ import annotations

import argparse
import json

import pytest

from core.errors import ConfigError
from core.retention import classify as cl
from core.retention import detectors as det
from core.sources import FilesSourceConfig

# ---------------------------------------------------------------- detectors


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("79927398713", True), ("79927398710", False), ("4111111111111111", True), ("4111111111111112", False),
     ("0", True), ("12a4", False), ("", True)],
)  # fmt: skip
def test_luhn(digits, valid):
    assert det.luhn_valid(digits) is (valid and digits.isdigit())


@pytest.mark.parametrize(
    ("value", "card"),
    [
        ("4111 1111 1111 1111", True),  # Visa, spaced
        ("4111-1111-1111-1111", True),
        ("5555555555554444", True),  # Mastercard
        ("2223003122003222", True),  # Mastercard 2-series
        ("378282246310005", True),  # American Express
        ("6011111111111117", True),  # Discover
        ("4111111111111112", False),  # Luhn fails
        ("1234567812345670", False),  # Luhn passes, no card network starts with 1
        ("0000000000000000", False),
        ("41111111111111", False),  # Visa of 14 digits
        ("not a card", False),
    ],
)
def test_card_numbers(value, card):
    assert det.is_card_number(value) is card


def test_card_numbers_in_text():
    text = "paid with 4111 1111 1111 1111, refunded to 5555-5555-5555-4444; order 1234567812345670"
    assert det.find_card_numbers(text) == 2


@pytest.mark.parametrize(
    ("value", "ssn"),
    [("078-05-1120", True), ("123 45 6789", True), ("000-12-3456", False), ("666-12-3456", False),
     ("900-12-3456", False), ("999-12-3456", False), ("123-00-4567", False), ("123-45-0000", False),
     ("123-45 6789", False), ("123456789", False), ("1234-56-789", False)],
)  # fmt: skip
def test_us_ssn(value, ssn):
    assert det.is_us_ssn(value) is ssn


def test_bare_ssn_only_in_a_column_named_for_it():
    assert det.is_us_ssn("078051120", bare_digits=True)
    assert not det.is_us_ssn("666051120", bare_digits=True)
    assert det.detect("078051120") == set()
    assert det.detect("078051120", ssn_column=True) == {"national-id"}


@pytest.mark.parametrize(
    ("value", "nino"),
    [("AB 12 34 56 C", True), ("ab123456c", True), ("AB123456E", False), ("DA123456A", False),
     ("AO123456A", False), ("GB123456A", False), ("ZZ123456D", False), ("AB12345C", False)],
)  # fmt: skip
def test_uk_nino(value, nino):
    assert det.is_uk_nino(value) is nino


@pytest.mark.parametrize(
    ("value", "icd"),
    [("I10", True), ("E11.9", True), ("J45.909", True), ("S72.001A", True), ("A00.0", True), ("U07.1", True), ("C4A.0", True),
     ("e11.9", False), ("E1.9", False), ("E11.", False), ("E11.12345", False), ("11E.9", False), ("EE1", False)],
)  # fmt: skip
def test_icd10_shapes(value, icd):
    assert det.is_icd10(value) is icd


def test_icd10_in_text_needs_an_introduction():
    assert det.find_icd10("Diagnosis: E11.9; follow-up ICD-10 J45.909") == 2
    assert det.find_icd10("room A12.5 on floor B20") == 0


@pytest.mark.parametrize(
    ("value", "iban"),
    [("GB82 WEST 1234 5698 7654 32", True), ("DE89370400440532013000", True), ("de89370400440532013000", True),
     ("DE89370400440532013001", False), ("GB82WEST123456987654", False), ("XX00", False)],
)  # fmt: skip
def test_iban(value, iban):
    assert det.is_iban(value) is iban


@pytest.mark.parametrize(
    ("value", "phone"),
    [("+44 20 7946 0958", True), ("+1 (202) 555-0143", True), ("(555) 123-4567", True), ("555-123-4567", True),
     ("020 7946 0958", True), ("2024-01-05", False), ("12345", False), ("+1 2", False), ("4111111111111111", False)],
)  # fmt: skip
def test_phone(value, phone):
    assert det.is_phone(value) is phone


def test_email_and_detect_on_text():
    assert det.is_email("alice.smith+tag@mail.example.co.uk")
    assert not det.is_email("alice@localhost")
    text = "Mail alice@example.com, card 4111-1111-1111-1111, SSN 078-05-1120, call +44 20 7946 0958, dx E11.9"
    assert det.detect(text) == {"email", "card-number", "national-id", "phone", "health-code"}
    assert det.detect_text("nothing to see here, version 1.2.3 from 2024-01-05") == set()


def test_share_needed_before_a_loose_detector_reports():
    phone, email = det.detector("phone"), det.detector("email")
    assert det.reported(email, 1, 100) and not det.reported(email, 0, 100)
    assert det.reported(phone, 50, 100) and not det.reported(phone, 49, 100)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("customer_email", "personal"), ("cardNumber", "cardholder"), ("CC_NUMBER", "cardholder"),
     ("diagnosis_code", "health"), ("iban", "financial"), ("date_of_birth", "personal"), ("products", None),
     ("name", None), ("email_sent_count", "personal")],
)  # fmt: skip
def test_name_hints(name, cls):
    assert det.name_hint(name) == cls


@pytest.mark.parametrize(
    ("key", "pattern"),
    [(b"user:1001:email", "user:*:email"), (b"session:alice@example.com", "session:*"), (b"alice", "*"),
     (b"alice@example.com:profile", "*:*"), (b"cache:a:b:c", "cache:*"), (b"q:7:phone:9", "q:*:phone:*")],
)  # fmt: skip
def test_key_pattern_keeps_no_data(key, pattern):
    assert cl.key_pattern(key) == pattern


def test_file_group_keeps_no_data():
    assert cl.file_group("exports/2024/customers.csv") == "exports/*/*.csv"
    assert cl.file_group("users/alice@example.com/notes.txt") == "users/*/*.txt"
    assert cl.file_group("README") == "*"


# ---------------------------------------------------------------- helpers


def _assert_no_value(report: cl.ClassReport | str, values: list[str]) -> None:
    text = report if isinstance(report, str) else json.dumps(report.to_dict()) + "\n" + report.text()
    for value in values:
        assert value not in text, f"sampled value {value!r} leaked into the report"


def _by_location(report: cl.ClassReport) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for f in report.findings:
        out.setdefault(f.location, []).append((f.detector, f.matches, f.sampled, f.by_name, f.proposes))
    return out


# Values seeded into every server; none may appear in any report.
EMAILS = ["alice@example.com", "bob@example.org"]
CARDS = ["4111 1111 1111 1111", "5555555555554444", "4111111111111112"]
IDS = ["078-05-1120", "666-12-3456", "AB 12 34 56 C"]
CODES = ["E11.9", "J45.909"]
IBANS = ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "DE89370400440532013001"]
PHONES = ["+44 20 7946 0958", "(555) 123-4567", "+1 202 555 0143"]
NOTE = "Prefers e-mail to alice@example.com on weekdays"
SEEDED = [*EMAILS, *CARDS, *IDS, *CODES, *IBANS, *PHONES, NOTE, "Leeds", "York", "Bath"]

# (contact, card_number, ssn, diagnosis, iban, phone, notes, city) — three rows
ROWS = [
    (EMAILS[0], CARDS[0], IDS[0], CODES[0], IBANS[0], PHONES[0], NOTE, "Leeds"),
    (EMAILS[1], CARDS[2], IDS[1], CODES[1], IBANS[1], PHONES[1], "no remarks at all, nothing here", "York"),
    (None, CARDS[1], IDS[2], "I10", IBANS[2], PHONES[2], None, "Bath"),
]


def _expected_patients(prefix: str) -> dict[str, list[tuple]]:
    return {
        f"{prefix}.patients": [("name-hint", 0, 0, True, "health")],
        f"{prefix}.patients.contact": [("email", 2, 2, False, "personal")],
        f"{prefix}.patients.card_number": [("card-number", 2, 3, True, "cardholder")],
        f"{prefix}.patients.ssn": [("national-id", 2, 3, True, "personal")],
        f"{prefix}.patients.diagnosis": [("health-code", 3, 3, True, "health")],
        f"{prefix}.patients.iban": [("iban", 2, 3, True, "financial")],
        f"{prefix}.patients.phone": [("phone", 3, 3, True, "personal")],
        f"{prefix}.patients.notes": [("email", 1, 2, False, "personal")],
        f"{prefix}.patients.birth_date": [("name-hint", 0, 0, True, "personal")],
    }


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg_classified(pg_server):
    name = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(name) as conn:
        conn.execute(
            "CREATE TABLE patients (id serial PRIMARY KEY, contact text, card_number varchar(40), ssn text, "
            "diagnosis text, iban text, phone text, notes text, city text, birth_date date)"
        )
        for row in ROWS:
            conn.execute(
                "INSERT INTO patients (contact, card_number, ssn, diagnosis, iban, phone, notes, city, birth_date) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, '1980-02-03')",
                row,
            )
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, status text, total numeric(10,2))")
        conn.execute("INSERT INTO orders (status, total) VALUES ('new', 12.50), ('paid', 99.00)")
        # a partitioned table is sampled through its parent, its partitions are not listed again
        conn.execute("CREATE TABLE events (id int, mail text) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (10)")
        conn.execute("CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (10) TO (20)")
        conn.execute("INSERT INTO events VALUES (1, %s), (11, %s)", EMAILS)
        conn.execute("CREATE SCHEMA crm")
        conn.execute("CREATE TABLE crm.leads (id int, address jsonb)")
        conn.execute(
            "INSERT INTO crm.leads SELECT g, jsonb_build_object('mail', 'lead' || g || '@example.com') "
            "FROM generate_series(1, 30000) g"
        )
        conn.execute("ANALYZE crm.leads")
    return pg_server.config(name="app-db", database=name)


def test_postgres_scan_proposes_classes_with_exact_counts_and_no_values(pg_classified):
    report = cl.classify_source(pg_classified, sample_rows=20)
    found = _by_location(report)
    expected = _expected_patients("public")
    # crm.leads is big: a TABLESAMPLE of blocks, cut to the 20 rows asked for; the column name 'address' agrees
    expected["crm.leads.address"] = [("email", 20, 20, True, "personal")]
    expected["public.events.mail"] = [("email", 2, 2, True, "personal")]
    assert found == expected
    assert report.proposed == ["personal", "cardholder", "health", "financial"]
    # leads.address; events.mail; patients: 8 text columns (contact 2 values, notes 2, six others 3); orders: status, total
    assert report.scanned == {"tables": 4, "columns": 1 + 8 + 2 + 1, "values": 20 + (2 + 2 + 6 * 3) + 2 * 2 + 2}
    assert report.notes == []
    _assert_no_value(report, [*SEEDED, "lead1@example.com", "1980-02-03"])
    assert "proposed: personal, cardholder, health, financial (confirm by adding them" in report.text()


def test_postgres_declared_classes_are_not_proposed_again(pg_classified):
    source = pg_classified.model_copy(update={"data_classes": ["personal", "health"]})
    report = cl.classify_source(source, sample_rows=5)
    assert report.current == ["personal", "health"]
    assert report.proposed == ["cardholder", "financial"]


def test_postgres_table_cap_is_reported(pg_classified, monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CLASSIFY_MAX_TABLES", "1")
    report = cl.classify_source(pg_classified, sample_rows=5)
    assert report.scanned["tables"] == 1
    assert report.notes == ["scanned the first 1 of 4 tables (GENESIS_DR_CLASSIFY_MAX_TABLES)"]
    assert sorted(_by_location(report)) == ["crm.leads.address"]  # catalog order: crm before public


def test_postgres_unreachable_is_one_line(pg_server):
    from core.errors import SourceUnavailableError
    from tests.servers import free_port

    config = pg_server.config(name="gone", port=free_port())
    with pytest.raises(SourceUnavailableError) as err:
        cl.classify_source(config)
    assert "\n" not in str(err.value) and "postgres 'gone'" in str(err.value)
    assert pg_server.password not in str(err.value)


# ---------------------------------------------------------------- MariaDB


@pytest.fixture(scope="module")
def mysql_classified(mysql_server):
    name = mysql_server.create_database("classify")
    with mysql_server.connect(name) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE patients (id INT AUTO_INCREMENT PRIMARY KEY, contact VARCHAR(190), card_number "
            "VARCHAR(40), ssn VARCHAR(20), diagnosis VARCHAR(10), iban VARCHAR(40), phone VARCHAR(30), notes TEXT, "
            "city VARCHAR(40), birth_date DATE, profile JSON) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
        for row in ROWS:
            cur.execute(
                "INSERT INTO patients (contact, card_number, ssn, diagnosis, iban, phone, notes, city, birth_date) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, '1980-02-03')",
                row,
            )
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, status VARCHAR(10), payload BLOB)")
        cur.execute("INSERT INTO orders VALUES (1, 'new', X'00FF'), (2, 'paid', NULL)")
        cur.execute("CREATE VIEW patient_mails AS SELECT contact FROM patients")
    return mysql_server.config(name="shop-db", database=name)


def test_mysql_scan_proposes_classes_with_exact_counts_and_no_values(mysql_classified):
    report = cl.classify_source(mysql_classified)
    found = _by_location(report)
    assert found == _expected_patients(mysql_classified.database)  # the view is not scanned twice
    assert report.proposed == ["personal", "cardholder", "health", "financial"]
    # patients: 9 text-like columns (profile is JSON, all NULL); orders: status
    assert report.scanned == {"tables": 2, "columns": 10, "values": 2 + 3 * 5 + 2 + 3 + 2}
    _assert_no_value(report, [*SEEDED, "1980-02-03"])


def test_mysql_sample_rows_bound_the_sample(mysql_classified):
    report = cl.classify_source(mysql_classified, sample_rows=1)
    found = _by_location(report)
    db = mysql_classified.database
    assert found[f"{db}.patients.contact"] == [("email", 1, 1, False, "personal")]
    assert found[f"{db}.patients.diagnosis"] == [("health-code", 1, 1, True, "health")]


# ---------------------------------------------------------------- Redis


def test_redis_scan_groups_keys_without_naming_them(redis_session):
    server = redis_session("classify")
    c = server.client()
    c.flushall()
    c.set("user:1001:email", EMAILS[0])
    c.set("user:1002:email", EMAILS[1])
    c.set("user:1003:email", "not an address")
    c.set(f"session:{EMAILS[0]}", "opaque-token-value")
    c.set(EMAILS[1], "x")
    c.hset("customer:1001", mapping={"email": EMAILS[0], "card_number": CARDS[0], "city": "Leeds"})
    c.hset("customer:1002", mapping={"email": EMAILS[1], "card_number": CARDS[2], "city": "York"})
    c.rpush("audit", f"{NOTE} and paid with {CARDS[1]}", "login ok")
    c1 = server.client(1)
    c1.sadd("ibans", IBANS[0], IBANS[1])
    c.hset("customer:1003", mapping={"email": EMAILS[1], "card_number": CARDS[1], "city": "Bath"})
    c.hset("directory:people", mapping={"alice": EMAILS[0], "bob": EMAILS[1]})  # field names are data here
    report = cl.classify_source(server.config(name="cache"))
    assert _by_location(report) == {
        "db0 user:*:email": [("email", 2, 3, True, "personal")],
        "db0 customer:* field email": [("email", 3, 3, True, "personal")],
        "db0 customer:* field card_number": [("card-number", 2, 3, True, "cardholder")],
        "db0 directory:* field *": [("email", 2, 2, False, "personal")],
        # keys without a ':' are one place ('audit' could as well be a user name): the list and 'x'
        "db0 *": [("email", 1, 3, False, "personal"), ("card-number", 1, 3, False, "cardholder")],
        "db1 *": [("iban", 2, 2, False, "financial")],
    }
    assert report.scanned == {"keys": 11, "values": 3 + 1 + 9 + 2 + 3 + 2}
    assert report.proposed == ["personal", "cardholder", "financial"]
    _assert_no_value(report, [*SEEDED, "opaque-token-value", "session:alice", "1001", "alice", "bob"])


def test_redis_key_cap_is_reported(redis_session, monkeypatch):
    server = redis_session("classify-cap")
    c = server.client()
    c.flushall()
    c.mset({f"contact:{i}": f"user{i}@example.com" for i in range(50)})
    server.client(3).set("contact:x", EMAILS[0])
    monkeypatch.setenv("GENESIS_DR_CLASSIFY_MAX_KEYS", "20")
    report = cl.classify_source(server.config(name="cache"))
    assert report.scanned == {"keys": 20, "values": 20}
    assert _by_location(report) == {"db0 contact:*": [("email", 20, 20, False, "personal")]}
    assert report.notes == ["stopped after 20 keys (GENESIS_DR_CLASSIFY_MAX_KEYS) in db0; later keys not sampled"]
    # exactly at the cap when db0 ends: db3 still holds keys
    c.delete(*[f"contact:{i}" for i in range(20, 50)])
    report = cl.classify_source(server.config(name="cache"))
    assert report.scanned == {"keys": 20, "values": 20}
    assert report.notes == ["stopped after 20 keys (GENESIS_DR_CLASSIFY_MAX_KEYS) in db3; later keys not sampled"]
    monkeypatch.setenv("GENESIS_DR_CLASSIFY_MAX_KEYS", "21")
    report = cl.classify_source(server.config(name="cache"))
    assert (report.scanned, report.notes) == ({"keys": 21, "values": 21}, [])


# ---------------------------------------------------------------- files


def _seed_files(root) -> None:
    (root / "exports").mkdir()
    (root / "exports" / "customers.csv").write_text(
        "id,email,card_number,city\n1,alice@example.com,4111 1111 1111 1111,Leeds\n2,bob@example.org,x,York\n"
    )
    (root / "exports" / "orders.csv").write_text("id,status\n1,new\n2,paid\n")
    (root / "logs").mkdir()
    (root / "logs" / "app.log").write_text("call back +44 20 7946 0958 tomorrow\nnothing else\n")
    (root / "logs" / "core.bin").write_bytes(b"\x00\x01alice@example.com")
    (root / "secret").mkdir()
    (root / "secret" / "keys.txt").write_text("IBAN GB82 WEST 1234 5698 7654 32\n")
    (root / "patients").mkdir()
    (root / "patients" / "readme.txt").write_text("Nothing identifying in here at all.\n")


def test_files_scan_follows_the_sources_patterns_and_names_no_value(tmp_path):
    _seed_files(tmp_path)
    source = FilesSourceConfig(name="exports", root=str(tmp_path), exclude=["secret/**"])
    report = cl.classify_source(source)
    assert _by_location(report) == {
        "exports/*.csv": [
            ("email", 1, 2, True, "personal"),
            ("card-number", 1, 2, True, "cardholder"),
        ],
        "logs/*.log": [("phone", 1, 1, False, "personal")],
        "patients/*.txt": [("name-hint", 0, 1, True, "health")],
    }
    assert report.scanned == {"files": 5, "binary files skipped": 1}
    assert "  exports/*.csv: email in 1 of 2 sampled files, the name agrees -> personal" in report.text()
    _assert_no_value(report, [*SEEDED, "customers.csv", "keys.txt"])


def test_files_cap_and_unscanned_kinds(tmp_path, monkeypatch):
    _seed_files(tmp_path)
    monkeypatch.setenv("GENESIS_DR_CLASSIFY_MAX_FILES", "2")
    report = cl.classify_source(FilesSourceConfig(name="f", root=str(tmp_path)))
    assert report.scanned["files"] == 2 and report.notes == ["stopped after 2 files (GENESIS_DR_CLASSIFY_MAX_FILES)"]
    from core.sources import BucketSourceConfig

    bucket = cl.classify_source(BucketSourceConfig(name="media", bucket="b"))
    assert (bucket.findings, bucket.proposed) == ([], [])
    assert bucket.notes == ["bucket sources are not scanned (object contents); declare their classes by hand"]
    with pytest.raises(ConfigError, match="--sample-rows 0 is out of range"):
        cl.classify_source(FilesSourceConfig(name="f", root=str(tmp_path)), sample_rows=0)


# ---------------------------------------------------------------- the command


def _cli(*argv: str) -> int:
    from cli.classify import register

    parser = argparse.ArgumentParser(prog="genesis-dr")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["classify", *argv])
    return args.func(args)


def test_classify_command_reads_the_stack_and_prints_no_value(tmp_path, monkeypatch, capsys, redis_session):
    from core import stack_description
    from core.stack import StackConfig

    monkeypatch.setenv("GENESIS_DR_STATE_DIR", str(tmp_path / "state"))
    data = tmp_path / "data"
    data.mkdir()
    _seed_files(data)
    server = redis_session("classify-cli")
    server.client().flushall()
    server.client().set("user:1:email", EMAILS[0])
    config = StackConfig(
        stack="shop",
        vault={"path": str(tmp_path / "vault")},
        sources=[
            {"name": "files", "kind": "files", "root": str(data)},
            {"name": "cache", "kind": "redis", "port": server.port},
        ],
    )
    stack_description.save(config, "http://127.0.0.1:4200/api")

    assert _cli("--stack", "shop", "--source", "cache", "--json") == 0
    out = capsys.readouterr()
    reports = json.loads(out.out)
    assert [(r["source"], r["proposed"]) for r in reports] == [("cache", ["personal"])]
    assert reports[0]["findings"] == [
        {"source": "cache", "location": "db0 user:*:email", "detector": "email", "matches": 1, "sampled": 1,
         "by_name": True, "proposes": "personal"}
    ]  # fmt: skip

    assert _cli("--stack", "shop", "--sample-rows", "5") == 0
    out = capsys.readouterr()
    assert out.out.startswith("files (files): declared classes: none; scanned 6 files, 1 binary files skipped\n")
    assert "  db0 user:*:email: email in 1 of 1 sampled values, the name agrees -> personal" in out.out
    _assert_no_value(out.out + out.err, SEEDED)

    with pytest.raises(ConfigError, match="stack 'shop' has no source 'nope' \\(its sources: files, cache\\)"):
        _cli("--stack", "shop", "--source", "nope")
    with pytest.raises(SystemExit):
        _cli("--sample-rows", "0")


def test_genesis_dr_classify_as_the_operator_types_it(tmp_path, monkeypatch):
    """Through ``genesis-dr`` (cli.main) in a subprocess: exit codes and one-line errors."""
    import subprocess
    import sys

    from core import stack_description
    from core.stack import StackConfig
    from tests.commands import REPO, clean_environment, error_line

    env = clean_environment(GENESIS_DR_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(REPO))
    data = tmp_path / "data"
    data.mkdir()
    _seed_files(data)
    config = StackConfig(
        stack="ops",
        vault={"path": str(tmp_path / "vault")},
        sources=[{"name": "files", "kind": "files", "root": str(data)}],
    )
    monkeypatch.setenv("GENESIS_DR_STATE_DIR", env["GENESIS_DR_STATE_DIR"])
    stack_description.save(config, "http://127.0.0.1:4200/api")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", "classify", "--stack", "ops", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    ok = run("--json")
    assert ok.returncode == 0, ok.stderr
    assert [r["proposed"] for r in json.loads(ok.stdout)] == [["personal", "cardholder", "health", "financial"]]
    _assert_no_value(ok.stdout + ok.stderr, SEEDED)
    bad = run("--source", "nope")
    assert bad.returncode == 2
    assert error_line(bad).startswith("genesis-dr: error: stack 'ops' has no source 'nope' (its sources: files)")


def test_classify_reads_a_database_password_from_the_blocks(pg_classified, make_stack, tmp_path, monkeypatch):
    """A database source's password is not in this host's description: the command reads the stack's blocks
    (through the Prefect API) for it, and still prints no value nor the password."""
    import contextlib
    import io
    from types import SimpleNamespace

    from core import stack_description

    stack = make_stack([pg_classified.model_copy(update={"data_classes": ["personal"]})])
    monkeypatch.setenv("GENESIS_DR_STATE_DIR", str(tmp_path / "state"))
    stack_description.save(stack.config, "harness")  # as 'genesis-dr apply' leaves it: no password
    # Not capsys: the Prefect session this command opens binds its console log handler to the streams of the
    # moment, and capsys closes its streams after the test (every later flow in this worker would then fail
    # writing its log). A StringIO is never closed.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert _cli("--stack", stack.name, "--sample-rows", "3", "--json") == 0
    out = SimpleNamespace(out=out.getvalue(), err=err.getvalue())
    (report,) = json.loads(out.out)
    assert (report["source"], report["current"], report["proposed"]) == (
        "app-db", ["personal"], ["cardholder", "health", "financial"]
    )  # fmt: skip
    cards = [f for f in report["findings"] if f["location"] == "public.patients.card_number"]
    assert [(f["detector"], f["matches"], f["sampled"]) for f in cards] == [("card-number", 2, 3)]
    _assert_no_value(out.out + out.err, [*SEEDED, pg_classified.password.get_secret_value()])
