"""The classification scan: which data classes a source probably holds, for the operator to confirm.

Retention follows the classes a stack declares on its sources (``data_classes``);
this scan proposes them from what it sees: column, key, field and file names,
and a bounded sample of values handed to the detectors of
``core.retention.detectors``. The proposal is a report, never a change: the
operator adds the classes to the stack file.

A sampled value lives only while the detectors look at it. Reports hold names
of places (``public.customers.email``, ``db0 user:*``, ``exports/*.csv``) and
counts, never a value; Redis key names and directory names that look like data
(they match a detector, or are not plain words) are replaced by ``*``.

The scan is bounded so it may run against production: ``sample_rows`` values per
column (PostgreSQL samples blocks of big tables with TABLESAMPLE), at most
``GENESIS_DR_CLASSIFY_MAX_TABLES`` tables (default 200), Redis keys
(``GENESIS_DR_CLASSIFY_MAX_KEYS``, 2000) and files (``GENESIS_DR_CLASSIFY_MAX_FILES``,
500, each read up to 64 KiB), every value cut to 4096 characters, every
statement under a 30 s timeout, read-only sessions.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import ConfigError
from core.retention import detectors as det

VALUE_CHARS = 4096
FILE_BYTES = 64 * 1024
STATEMENT_TIMEOUT_S = 30
SAMPLE_ROWS_MAX = 100_000
_TEXT_FILE_SUFFIXES = (".csv", ".tsv")


def _cap(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name}={raw[:20]!r} is not a whole number above 0; fix or unset it")
    return int(raw)


@dataclass
class Finding:
    """One detector's verdict on one place of a source (never the values it saw)."""

    source: str
    location: str  # "schema.table.column", "db0 user:*", "db0 user:* field email", "exports/*.csv"
    detector: str  # a name from core.retention.detectors.DETECTORS, or "name-hint" (the name alone)
    matches: int  # sampled values (rows, keys, files) the detector found something in
    sampled: int  # non-empty values sampled there
    by_name: bool  # the place's name suggests the same class
    proposes: str  # personal, cardholder, health or financial

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self, unit: str = "values") -> str:
        if self.detector == "name-hint":
            seen = f"nothing matched in {self.sampled} sampled {unit}" if self.sampled else "by name only"
            return f"{self.location}: its name suggests {self.proposes} ({seen})"
        agrees = ", the name agrees" if self.by_name else ""
        return (
            f"{self.location}: {self.detector} in {self.matches} of {self.sampled} sampled {unit}{agrees}"
            f" -> {self.proposes}"
        )


@dataclass
class ClassReport:
    """What the scan of one source proposes; ``proposed`` are the classes found but not yet declared."""

    source: str
    kind: str
    current: list[str]
    proposed: list[str]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)  # what was not scanned, and why (caps, kinds, permissions)
    scanned: dict[str, int] = field(default_factory=dict)  # e.g. {"tables": 3, "columns": 12, "values": 540}

    @property
    def found(self) -> list[str]:
        classes = {f.proposes for f in self.findings}
        return [c for c in det.CLASS_ORDER if c in classes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "current": list(self.current),
            "found": self.found,
            "proposed": list(self.proposed),
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
            "scanned": dict(self.scanned),
        }

    def text(self) -> str:
        current = ", ".join(self.current) or "none"
        counts = ", ".join(f"{n} {what}" for what, n in self.scanned.items())
        lines = [
            f"{self.source} ({self.kind}): declared classes: {current}" + (f"; scanned {counts}" if counts else "")
        ]
        unit = "files" if self.kind == "files" else "values"
        lines += [f"  {f.line(unit)}" for f in self.findings]
        lines += [f"  note: {n}" for n in self.notes]
        if self.proposed:
            lines.append(
                f"  proposed: {', '.join(self.proposed)} (confirm by adding them to sources[].data_classes of "
                f"'{self.source}' in the stack file, then run 'genesis-dr apply')"
            )
        elif self.found:
            lines.append("  proposed: nothing new (every class found is declared)")
        else:
            lines.append("  proposed: nothing (no regulated data seen in the sample)")
        return "\n".join(lines)


class _Place:
    """Counts for one location while its values stream past; holds no value."""

    def __init__(self, name: str, hints: set[str] | None = None) -> None:
        self.ssn_named = det.ssn_named(name)
        hint = det.name_hint(name)
        self.hints = set(hints or ()) | ({hint} if hint else set())
        self.sampled = 0
        self.matches: Counter[str] = Counter()

    def add_value(self, value: Any) -> None:
        text = _text(value)
        if text is None:
            return
        self.sampled += 1
        self.matches.update(det.detect(text, ssn_column=self.ssn_named))

    def add_text(self, text: str) -> None:
        self.sampled += 1
        self.matches.update(det.detect_text(text))

    def findings(self, source: str, location: str) -> list[Finding]:
        out = [
            Finding(source, location, d.name, self.matches[d.name], self.sampled, d.proposes in self.hints, d.proposes)
            for d in det.DETECTORS
            if det.reported(d, self.matches[d.name], self.sampled)
        ]
        by_value = {f.proposes for f in out}
        for cls in det.CLASS_ORDER:
            if cls in self.hints and cls not in by_value:
                out.append(Finding(source, location, "name-hint", 0, self.sampled, True, cls))
        return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value)[:VALUE_CHARS].decode("utf-8", "replace")
    text = str(value)[:VALUE_CHARS]
    return text if text.strip() else None


def _report(source: Any, places: dict[str, _Place], notes: list[str], scanned: dict[str, int]) -> ClassReport:
    findings = [f for location, place in places.items() for f in place.findings(source.name, location)]
    current = list(getattr(source, "data_classes", None) or [])
    found = {f.proposes for f in findings}
    proposed = [c for c in det.CLASS_ORDER if c in found and c not in current]
    return ClassReport(source.name, source.kind, current, proposed, findings, notes, scanned)


def _table_hint(places: dict[str, _Place], location: str, table: str) -> None:
    """A table named for a kind of data ('patients', 'invoices') is a finding of its own: its columns
    are judged by their own names and values, so 'patients.city' is not called health data."""
    if det.name_hint(table):
        places.setdefault(location, _Place(table))


# ---------------------------------------------------------------- PostgreSQL

_PG_COLUMNS = """
SELECT c.table_schema, c.table_name, c.column_name, c.data_type, c.udt_name, coalesce(pc.reltuples, 0)::float8
FROM information_schema.columns c
JOIN information_schema.tables t
  ON t.table_schema = c.table_schema AND t.table_name = c.table_name AND t.table_type = 'BASE TABLE'
LEFT JOIN pg_catalog.pg_namespace pn ON pn.nspname = c.table_schema
LEFT JOIN pg_catalog.pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = c.table_name
WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema')
  AND NOT coalesce(pc.relispartition, false)
  AND c.table_schema NOT LIKE 'pg\\_toast%' AND c.table_schema NOT LIKE 'pg\\_temp%'
ORDER BY c.table_schema, c.table_name, c.ordinal_position
"""
_PG_SAMPLED_TYPES = {"text", "character varying", "character", "json", "jsonb", "bigint", "numeric"}
_PG_SAMPLED_UDTS = {"citext"}


def _tables(rows: list[tuple], sampled: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Columns grouped by table, in catalog order: {(schema, table): {"columns": [(name, sampled?)], "rows": n}}."""
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    for schema, table, column, *types, estimate in rows:
        entry = tables.setdefault((schema, table), {"columns": [], "rows": estimate})
        entry["columns"].append((column, sampled(*types)))
    return tables


def _first_tables(
    tables: dict[tuple[str, str], dict[str, Any]], max_tables: int, notes: list[str]
) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    """The tables a scan samples: the first ``max_tables`` in catalog order, a note when some are left out."""
    if len(tables) > max_tables:
        notes.append(f"scanned the first {max_tables} of {len(tables)} tables (GENESIS_DR_CLASSIFY_MAX_TABLES)")
    return list(tables.items())[:max_tables]


def _table_places(
    places: dict[str, _Place], scanned: dict[str, int], qualified: str, table: str, columns: list[tuple[str, bool]]
) -> list[tuple[str, _Place]]:
    """Count one table, give each column its place (named even when not sampled); the columns to sample."""
    scanned["tables"] += 1
    _table_hint(places, qualified, table)
    table_places = [places.setdefault(f"{qualified}.{c}", _Place(c)) for c, _ in columns]
    wanted = [(c, p) for (c, sampled), p in zip(columns, table_places, strict=True) if sampled]
    scanned["columns"] += len(wanted)
    return wanted


def _scan_postgres(source: Any, sample_rows: int) -> ClassReport:
    import psycopg
    from psycopg import sql

    from core.engines.postgres.engine import PostgresEngine

    engine = PostgresEngine(source)
    max_tables = _cap("GENESIS_DR_CLASSIFY_MAX_TABLES", 200)
    places: dict[str, _Place] = {}
    notes: list[str] = []
    scanned = {"tables": 0, "columns": 0, "values": 0}
    with engine._connect() as conn:
        try:
            conn.execute("SET default_transaction_read_only = on")
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{STATEMENT_TIMEOUT_S}s")))
            rows = conn.execute(_PG_COLUMNS).fetchall()
        except psycopg.Error as exc:
            raise engine._sql_error(
                exc, "reading the columns of", "check the login may read information_schema"
            ) from None
        tables = _tables(rows, lambda data_type, udt: data_type in _PG_SAMPLED_TYPES or udt in _PG_SAMPLED_UDTS)
        for (schema, table), entry in _first_tables(tables, max_tables, notes):
            wanted = _table_places(places, scanned, f"{schema}.{table}", table, entry["columns"])
            if not wanted:
                continue
            select = sql.SQL(", ").join(
                sql.SQL("left({}::text, {})").format(sql.Identifier(c), sql.Literal(VALUE_CHARS)) for c, _ in wanted
            )
            relation = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            # Big tables: random blocks (TABLESAMPLE SYSTEM) rather than the first rows, which are often the oldest.
            # Ten times the rows wanted, so a few blocks give a full sample; none at all -> the first rows.
            percent = 1000.0 * sample_rows / entry["rows"] if entry["rows"] > 100 * sample_rows else None
            sample = sql.SQL(" TABLESAMPLE SYSTEM ({})").format(sql.Literal(percent)) if percent else sql.SQL("")
            query = sql.SQL("SELECT {} FROM {}{} LIMIT {}").format(select, relation, sample, sql.Literal(sample_rows))
            try:
                got = _pg_sample(conn, query, wanted)
                if percent and got == 0:
                    _pg_sample(
                        conn,
                        sql.SQL("SELECT {} FROM {} LIMIT {}").format(select, relation, sql.Literal(sample_rows)),
                        wanted,
                    )
            except psycopg.errors.InsufficientPrivilege:
                notes.append(f"{schema}.{table}: not sampled (the login may not read it; names only)")
                continue
            except psycopg.Error as exc:
                raise engine._sql_error(exc, f"sampling {schema}.{table} of", "check the server log") from None
    scanned["values"] = sum(p.sampled for p in places.values())
    return _report(source, places, notes, scanned)


def _pg_sample(conn: Any, query: Any, wanted: list[tuple[str, _Place]]) -> int:
    n = 0
    with conn.cursor() as cur:
        cur.execute(query)
        for row in cur:
            n += 1
            for value, (_, place) in zip(row, wanted, strict=True):
                place.add_value(value)
    return n


# ---------------------------------------------------------------- MariaDB / MySQL

_MY_COLUMNS = (
    "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, COALESCE(t.TABLE_ROWS, 0) "
    "FROM information_schema.COLUMNS c JOIN information_schema.TABLES t "
    "ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME AND t.TABLE_TYPE = 'BASE TABLE' "
    "WHERE c.TABLE_SCHEMA = %s ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION"
)
_MY_SAMPLED_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "json", "bigint", "decimal"}


def _scan_mysql(source: Any, sample_rows: int) -> ClassReport:
    import pymysql

    from core.engines.mysql.dump import quote_name
    from core.engines.mysql.engine import MySQLEngine

    engine = MySQLEngine(source)
    max_tables = _cap("GENESIS_DR_CLASSIFY_MAX_TABLES", 200)
    places: dict[str, _Place] = {}
    notes: list[str] = []
    scanned = {"tables": 0, "columns": 0, "values": 0}
    database = source.database
    with engine._session(database, "the classification scan") as (_conn, cur):
        cur.execute("SET SESSION TRANSACTION READ ONLY")
        for statement in (
            f"SET SESSION max_statement_time = {STATEMENT_TIMEOUT_S}",  # MariaDB, seconds
            f"SET SESSION max_execution_time = {STATEMENT_TIMEOUT_S * 1000}",  # MySQL, milliseconds
        ):
            try:
                cur.execute(statement)
                break
            except pymysql.err.MySQLError:
                continue  # the other flavour's variable
        cur.execute(_MY_COLUMNS, (database,))
        tables = _tables(list(cur.fetchall()), lambda data_type: data_type.lower() in _MY_SAMPLED_TYPES)
        for (_schema, table), entry in _first_tables(tables, max_tables, notes):
            wanted = _table_places(places, scanned, f"{database}.{table}", table, entry["columns"])
            if not wanted:
                continue
            select = ", ".join(f"LEFT(CAST({quote_name(c)} AS CHAR), {VALUE_CHARS})" for c, _ in wanted)
            cur.execute(f"SELECT {select} FROM {quote_name(database)}.{quote_name(table)} LIMIT {int(sample_rows)}")
            for row in cur:
                for value, (_, place) in zip(row, wanted, strict=True):
                    place.add_value(value)
    scanned["values"] = sum(p.sampled for p in places.values())
    return _report(source, places, notes, scanned)


# ---------------------------------------------------------------- Redis

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_HINT_WORDS = {w for words in det.NAME_HINTS.values() for w in words}
_ELEMENTS = 10  # members of one hash, list, set, sorted set or stream sampled per key


def _plain_word(text: str) -> bool:
    return _WORD.fullmatch(text) is not None and not det.detect(text)


def key_pattern(key: bytes) -> str:
    """A key's place with the parts that may be data replaced: the first segment if it is a plain
    word, later ones only if they are words that name a kind of data ('user:1001:email' -> 'user:*:email')."""
    parts = key.decode("utf-8", "replace").split(":")
    if len(parts) == 1:
        return "*"
    out = [parts[0] if _plain_word(parts[0]) and parts[0].isascii() else "*"]
    for part in parts[1:]:
        kept = part if part.lower() in _HINT_WORDS else "*"
        if not (kept == "*" and out[-1] == "*"):
            out.append(kept)
    if len(out) == 1:  # 'x:1' and 'x:2' collapsed; keep the ':' so it differs from keys without one
        out.append("*")
    return ":".join(out)


def _scan_redis(source: Any, sample_rows: int) -> ClassReport:
    from core.engines.redis.engine import RedisEngine

    engine = RedisEngine(source)
    max_keys = _cap("GENESIS_DR_CLASSIFY_MAX_KEYS", 2000)
    places: dict[str, _Place] = {}
    notes: list[str] = []
    keys_seen = 0
    denied = [0]  # keys whose values the ACL user may not read
    with engine._talking("INFO keyspace"), engine._client() as client:
        dbs = engine._scope_dbs(client)
    for db in dbs:
        capped = keys_seen >= max_keys  # a database in the keyspace holds keys: one more is past the cap
        with engine._talking("SCAN"), engine._client(db) as client:
            batch: list[bytes] = []
            for key in [] if capped else client.scan_iter(count=500):
                if keys_seen >= max_keys:
                    capped = True
                    break
                batch.append(key)
                keys_seen += 1
                if len(batch) == 200:
                    _redis_batch(client, db, batch, places, denied)
                    batch = []
            if batch:
                _redis_batch(client, db, batch, places, denied)
        if capped:
            notes.append(
                f"stopped after {max_keys} keys (GENESIS_DR_CLASSIFY_MAX_KEYS) in db{db}; later keys not sampled"
            )
            break
    if denied[0]:
        notes.append(f"{denied[0]} keys not sampled: the ACL user may not read them (names only)")
    scanned = {"keys": keys_seen, "values": sum(p.sampled for p in places.values())}
    return _report(source, places, notes, scanned)


def _field_shown(name: Any) -> str:
    """A hash or stream field's name as reported: only the words that name a kind of data; a hash keyed
    by user names or ids ('alice', 'u1001') must not print them."""
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return text if text.lower() in _HINT_WORDS else "*"


def _redis_batch(client: Any, db: int, keys: list[bytes], places: dict[str, _Place], denied: list[int]) -> None:
    import redis

    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    types = [t.decode() if isinstance(t, bytes) else str(t) for t in pipe.execute()]
    pipe = client.pipeline(transaction=False)
    fetched: list[tuple[bytes, str]] = []
    for key, kind in zip(keys, types, strict=True):
        if kind == "string":
            pipe.getrange(key, 0, VALUE_CHARS - 1)
        elif kind == "hash":
            pipe.hscan(key, 0, count=_ELEMENTS)
        elif kind == "list":
            pipe.lrange(key, 0, _ELEMENTS - 1)
        elif kind == "set":
            pipe.srandmember(key, _ELEMENTS)
        elif kind == "zset":
            pipe.zrange(key, 0, _ELEMENTS - 1)
        elif kind == "stream":
            pipe.xrange(key, count=_ELEMENTS)
        else:
            continue  # gone since TYPE, or a module type we cannot read
        fetched.append((key, kind))
    for (key, kind), reply in zip(fetched, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(reply, redis.exceptions.NoPermissionError):
            denied[0] += 1
            continue
        if isinstance(reply, Exception):
            continue  # the key changed type between the two round trips
        pattern = f"db{db} {key_pattern(key)}"
        if kind in ("hash", "stream"):
            pairs = list(reply[1].items())[:_ELEMENTS] if kind == "hash" else [p for _, e in reply for p in e.items()]
            for name, value in pairs:
                shown = _field_shown(name)
                place = places.setdefault(f"{pattern} field {shown}", _Place(shown))
                place.add_value(value)
        else:
            place = places.setdefault(pattern, _Place(key_pattern(key)))
            for value in [reply] if kind == "string" else reply:
                place.add_value(value)


# ---------------------------------------------------------------- files


def file_group(rel: str) -> str:
    """The place of a file: its directory (parts that look like data replaced) and '*' with its suffix."""
    parts = rel.split("/")
    dirs = [p if _plain_word(p) else "*" for p in parts[:-1]]
    suffix = os.path.splitext(parts[-1])[1]
    suffix = suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", suffix) else ""
    return "/".join([*dirs, f"*{suffix}"])


def _walk_files(root: str, paths: list[str], include: list[str], exclude: list[str], unreadable: list[str]):
    """Relative paths of the regular files a backup of this source would take (its paths and patterns);
    directories that cannot be listed go to ``unreadable``."""
    from core.engines.files.pathmatch import PathFilter

    chooser = PathFilter(include, exclude)
    for top in paths:
        top = "/".join(p for p in top.split("/") if p not in ("", "."))
        start = os.path.join(root, top) if top else root
        if os.path.isfile(start) and not os.path.islink(start):
            if not chooser.excluded(top, False) and chooser.included(top, False):
                yield top
            continue
        stack = [(top, not chooser.has_include)]
        while stack:
            rel_dir, taken = stack.pop()
            try:
                with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                unreadable.append(rel_dir or ".")
                continue
            for entry in reversed(entries):
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if chooser.excluded(rel, is_dir):
                    continue
                inside = taken or chooser.included(rel, is_dir)
                if is_dir:
                    stack.append((rel, inside))
                elif inside and entry.is_file(follow_symlinks=False):
                    yield rel


def _scan_files(source: Any, sample_rows: int) -> ClassReport:
    from core.engines.files.engine import FilesEngine

    engine = FilesEngine(source)
    engine.ping()
    root = engine.root
    max_files = _cap("GENESIS_DR_CLASSIFY_MAX_FILES", 500)
    places: dict[str, _Place] = {}
    notes: list[str] = []
    files = binary = 0
    unreadable: list[str] = []
    for rel in _walk_files(root, engine._paths(), source.include, source.exclude, unreadable):
        if files >= max_files:
            notes.append(f"stopped after {max_files} files (GENESIS_DR_CLASSIFY_MAX_FILES)")
            break
        try:
            with open(os.path.join(root, rel), "rb") as f:
                head = f.read(FILE_BYTES)
        except OSError:
            unreadable.append(rel)
            continue
        files += 1
        if b"\x00" in head:
            binary += 1
            continue
        text = head.decode("utf-8", "replace")
        group = file_group(rel)
        hints: set[str] = set()
        if rel.lower().endswith(_TEXT_FILE_SUFFIXES):
            header = text.split("\n", 1)[0]
            hints = {h for name in re.split(r"[,;\t|]", header) if (h := det.name_hint(name.strip(" \"'")))}
        place = places.setdefault(group, _Place(group.replace("/", " ")))
        place.hints |= hints
        if det.name_hint(rel):
            place.hints.add(det.name_hint(rel))  # type: ignore[arg-type]
        place.add_text(text)
    if unreadable:
        # Counted, not named: a path may itself be data (a user's directory).
        notes.append(f"{len(unreadable)} files or directories could not be read (run as a user who can read them)")
    scanned = {"files": files, "binary files skipped": binary}
    return _report(source, places, notes, scanned)


# ---------------------------------------------------------------- entry points

_SCANNERS = {"postgres": _scan_postgres, "mysql": _scan_mysql, "redis": _scan_redis, "files": _scan_files}


def classify_source(source: Any, *, sample_rows: int = 200) -> ClassReport:
    """Scan one source (a ``core.sources`` config) and propose its data classes.

    Raises:
        ConfigError: ``sample_rows`` out of range.
        SourceUnavailableError / EngineError: as the source's engine reports them (one line, no secret).
    """
    if isinstance(sample_rows, bool) or not 1 <= int(sample_rows) <= SAMPLE_ROWS_MAX:
        raise ConfigError(f"--sample-rows {sample_rows} is out of range; give 1 to {SAMPLE_ROWS_MAX}")
    scan = _SCANNERS.get(source.kind)
    if scan is None:
        current = list(getattr(source, "data_classes", None) or [])
        note = f"{source.kind} sources are not scanned (object contents); declare their classes by hand"
        return ClassReport(source.name, source.kind, current, [], [], [note], {})
    return scan(source, int(sample_rows))


def classify_stack(config: Any, sources: list[str] | None = None, *, sample_rows: int = 200) -> list[ClassReport]:
    """Scan the stack's sources (all, or those named), one report each, in the stack's order."""
    known = [s.name for s in config.sources]
    unknown = [n for n in sources or [] if n not in known]
    if unknown:
        raise ConfigError(
            f"stack '{config.stack}' has no source {unknown[0]!r} (its sources: {', '.join(known)}); check --source"
        )
    chosen = [s for s in config.sources if not sources or s.name in sources]
    return [classify_source(s, sample_rows=sample_rows) for s in chosen]
