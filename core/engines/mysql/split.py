"""The per-table layout of a MariaDB/MySQL backup: which streams, which tables, and cutting a dump into them.

A database of at least ``GENESIS_DR_MYSQL_SPLIT_MIN_BYTES`` (default 64 MiB of
data and indexes, as information_schema estimates them) is backed up as:

- ``layout.json``: ``{"format": 1, "tables": {"data-0000-0000.sql": "<table>", ...}}``
  (stream names cannot carry table names: they are in the clear and limited to
  ``[a-z0-9._-]``), written last;
- ``schema.sql``: ``mariadb-dump --no-data --skip-triggers --routines``: tables,
  sequences (with their values), routines, views, in the order the tool writes
  them (routines before the views that may call them);
- ``data-TTTT-PPPP.sql``: table TTTT (numbered largest first), part PPPP: a
  self-contained SQL script (the dump's session header, the table's preamble,
  then whole ``INSERT`` statements, about ``GENESIS_DR_MYSQL_PART_BYTES``,
  default 32 MiB, per part), cut out of the output of ``GENESIS_DR_MYSQL_JOBS``
  (default 2) ``mariadb-dump --no-create-info --skip-add-locks
  --skip-disable-keys`` processes, each dumping its share of the tables;
- ``post.sql``: ``mariadb-dump --no-data --no-create-info --triggers --events``:
  what must not exist while the data loads (triggers would fire, events run).

Smaller databases keep the single ``dump.sql`` a person can read and load by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from core.engines.base import StreamSink
from core.errors import EngineError, IntegrityError

LAYOUT_STREAM = "layout.json"
SCHEMA_STREAM = "schema.sql"
POST_STREAM = "post.sql"
LAYOUT_FORMAT = 1
_MARKER = b"\n-- Dumping data for table `"
_INSERT = b"\nINSERT INTO "
_HEADER_LIMIT = 1 << 16  # the session header before the first table is a few hundred bytes


def data_prefix(index: int) -> str:
    """Streams of the index-th largest table are ``data-<index>-<part>.sql``."""
    return f"data-{index:04d}"


def jobs() -> int:
    """mariadb-dump processes and restore sessions at once (``GENESIS_DR_MYSQL_JOBS``, default 2)."""
    return max(1, int(os.environ.get("GENESIS_DR_MYSQL_JOBS", 2)))


def mysql_part_bytes() -> int:
    """A table's data is cut into streams of about this size (``GENESIS_DR_MYSQL_PART_BYTES``, 32 MiB),
    so one big table loads through several sessions."""
    return max(1, int(os.environ.get("GENESIS_DR_MYSQL_PART_BYTES", 32 << 20)))


def split_min_bytes() -> int:
    """Databases at least this large get the per-table layout (``GENESIS_DR_MYSQL_SPLIT_MIN_BYTES``)."""
    return int(os.environ.get("GENESIS_DR_MYSQL_SPLIT_MIN_BYTES", 64 << 20))


def plan(sizes: dict[str, int], workers: int) -> tuple[dict[str, str], list[list[str]]]:
    """(table -> stream name prefix, the tables of each dump process).

    Streams are numbered largest table first (restores take them in that order,
    which balances the loads); each table goes to the dump process with the
    least work so far, so the processes end at about the same time.
    """
    order = sorted(sizes, key=lambda t: (-sizes[t], t))
    streams = {table: data_prefix(i) for i, table in enumerate(order)}
    shares: list[list[str]] = [[] for _ in range(max(1, min(workers, len(order))))]
    load = [0] * len(shares)
    for table in order:
        least = load.index(min(load))
        shares[least].append(table)
        load[least] += max(sizes[table], 1)
    return streams, [s for s in shares if s]


def encode_layout(streams: dict[str, str]) -> bytes:
    """``streams``: stream name -> table."""
    return json.dumps({"format": LAYOUT_FORMAT, "tables": streams}, sort_keys=True).encode()


def decode_layout(data: bytes, where: str) -> dict[str, str]:
    """stream name -> table, from ``layout.json``."""
    try:
        layout = json.loads(data)
        fmt, tables = layout["format"], layout["tables"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{where}: {LAYOUT_STREAM} is not valid; the backup is damaged") from None
    if fmt != LAYOUT_FORMAT:
        raise EngineError(
            f"{where}: {LAYOUT_STREAM} has format {fmt!r}, which this version cannot read; "
            "restore with the genesis-dr version that took the backup"
        )
    return {str(k): str(v) for k, v in tables.items()}


class TableSplitter:
    """Cuts the output of one ``mariadb-dump --no-create-info`` into streams of at most about
    ``part_bytes`` each, every one holding rows of one table only.

    A table's section starts at its ``-- Dumping data for table `t``` comment,
    and each of its statements at ``INSERT INTO``, always at a line start (data
    rows start with ``(``, and newlines inside values are escaped), so cuts
    fall between statements. Every stream gets the dump's session header
    (character set, time zone, SQL mode, checks off) and the table's preamble
    (e.g. the session setting that lets history rows in) first, so each is a
    script of its own and the parts of a big table load in parallel, as
    myloader loads mydumper's chunks. Only ``bytes.find`` runs over the data:
    the cost per byte is that of a memchr, not of Python.
    """

    def __init__(self, sink: StreamSink, prefixes: dict[str, str], part_bytes: int | None = None) -> None:
        self._sink, self._prefixes = sink, prefixes
        self._part_bytes = part_bytes if part_bytes is not None else mysql_part_bytes()
        self._on_table: Callable[[], None] = lambda: None
        self._header = b""
        self._current: Any = None  # (context manager, writer) of the stream being written
        self._carry = b""
        self._table: str | None = None
        self._part = 0
        self._written = 0  # bytes in the current stream
        self._preamble: bytes | None = None  # the table's lines before its first INSERT, while read
        self._table_preamble = b""
        self.tables: list[str] = []
        self.streams: dict[str, str] = {}  # stream name -> table, as written

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self._current is None:
            self._header += data
            if len(self._header) > _HEADER_LIMIT:
                raise EngineError("the dump printed no table section where one was expected; check the dump tool")
            return
        self._current[1].write(data)
        self._written += len(data)
        if self._preamble is not None:
            self._preamble += data
            if len(self._preamble) > _HEADER_LIMIT:
                raise EngineError(f"table {self._table}: the dump printed no INSERT where one was expected")

    def _open(self) -> None:
        """Start the next stream of the current table."""
        self.close()
        assert self._table is not None
        name = f"{self._prefixes[self._table]}-{self._part:04d}.sql"
        self._part += 1
        manager = self._sink.open_stream(name)
        writer = manager.__enter__()
        self._current = (manager, writer)
        self.streams[name] = self._table
        writer.write(self._header + self._table_preamble)
        self._written = 0

    def _switch(self, quoted: bytes) -> None:
        if not quoted.endswith(b"`"):
            raise EngineError(f"the dump printed an unreadable table header {quoted[:80]!r}; check the dump tool")
        table = quoted[:-1].replace(b"``", b"`").decode("utf-8", "replace")
        if table not in self._prefixes or table in self.tables:
            raise EngineError(f"the dump printed table {table} where it was not asked for; check the dump tool")
        self._table, self._part, self._table_preamble = table, 0, b""
        self.tables.append(table)
        self._open()
        self._preamble = b""
        self._on_table()

    def feed(self, data: bytes) -> None:
        buf = self._carry + data if self._carry else data
        self._carry = b""
        start = 0
        while True:
            marker = buf.find(_MARKER, start)
            insert = -1
            if self._current is not None and (self._preamble is not None or self._written >= self._part_bytes):
                insert = buf.find(_INSERT, start)
            if insert >= 0 and (marker < 0 or insert < marker):
                self._write(buf[start : insert + 1])  # up to the newline that ends the previous line
                if self._preamble is not None:  # the table's first statement: its preamble is complete
                    self._table_preamble, self._preamble = self._preamble, None
                else:  # this stream is full: the statement starts the next one
                    self._open()
                start = insert + 1
                continue
            if marker < 0:
                break
            end = buf.find(b"\n", marker + 1)
            if end < 0:  # the header line is cut: wait for the rest of it
                self._write(buf[start:marker])
                self._carry = buf[marker:]
                return
            self._write(buf[start : marker + 1])
            self._switch(buf[marker + len(_MARKER) : end])
            start = marker + 1
        # A marker or statement may begin in the last few bytes: keep them for the next piece.
        cut = max(start, len(buf) - (max(len(_MARKER), len(_INSERT)) - 1))
        self._write(buf[start:cut])
        self._carry = buf[cut:]

    def consume(self, pipe, started: Callable[[], None]) -> None:
        """Split everything ``pipe`` gives; ``started`` is called at the first table (the
        dump prints one only once its snapshot is open)."""
        self._on_table = started
        try:
            while piece := pipe.read(1 << 20):
                self.feed(piece)
            self.finish()
        except BaseException as exc:
            self.close(exc)
            raise

    def finish(self) -> None:
        """The dump ended: write what is held back and seal the last stream."""
        carry, self._carry = self._carry, b""
        self._write(carry)
        self.close()

    def close(self, exc: BaseException | None = None) -> None:
        """Seal the current stream; with ``exc``, fail it (the backup fails with it)."""
        current, self._current = self._current, None
        if current is not None:
            manager = current[0]
            if exc is None:
                manager.__exit__(None, None, None)
            else:
                manager.__exit__(type(exc), exc, exc.__traceback__)
