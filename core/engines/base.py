"""The contract between the vault and the things we back up.

An engine knows one kind of source (PostgreSQL, MariaDB/MySQL, Redis, files).
It never sees keys, chunking or storage: it writes named plaintext streams to a
``StreamSink`` and reads them back from a ``StreamSource``. The vault does
compression, encryption, hashing and the commit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, ClassVar, Protocol


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class StreamSink(Protocol):
    """Where an engine writes the streams of one backup.

    Several streams may be written at once, one thread per stream.
    """

    def open_stream(self, name: str) -> ContextManager[Writable]:
        """A file-like writer for stream ``name``; closing it seals the stream.

        If the ``with`` block raises, the stream (and the backup) fails.
        """
        ...

    def write_stream(self, name: str, data: BinaryIO) -> int:
        """Copy a readable binary file object (e.g. a subprocess stdout) into
        stream ``name`` until EOF; returns plaintext bytes written."""
        ...


class StreamSource(Protocol):
    """Where an engine reads the streams of one backup back, verified."""

    def stream_names(self) -> list[str]: ...

    def iter_stream(self, name: str) -> Iterator[bytes]:
        """Plaintext of stream ``name`` in pieces; raises IntegrityError on any
        corruption, truncation or reordering before yielding bad data."""
        ...

    def open_stream(self, name: str) -> ContextManager[BinaryIO]:
        """A readable file-like object over the plaintext (``read(n)``)."""
        ...


@dataclass
class BackupResult:
    """What an engine learned while taking a backup.

    ``position``: consistency position (LSN, binlog file/pos + GTID, replication
    offset, snapshot time) - recorded in the clear in the manifest.
    ``checks``: data needed to prove a restore later (row counts, checksums, key
    counts, file hashes) - sealed (encrypted) in the manifest because it names
    tables, keys and files.
    ``tool_versions``: e.g. {"pg_dump": "15.20", "server": "15.20"}.
    ``skipped``: one line per entry left out of the backup (recorded in the clear).
    """

    position: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    # What the backup deliberately left out (only where the stack allows skipping,
    # e.g. an unreadable file); listed by `genesis-dr list`, the run and the restore report.
    skipped: list[str] = field(default_factory=list)


# -- chains: backups on a base, log capture, restore of a chain to a stop point -----------------


@dataclass(frozen=True)
class PieceInfo:
    """One piece of a source's log (a WAL segment, a binlog range, a slice of the Redis
    replication stream), as the capturing engine describes it. Recorded in the clear in
    the vault's log index so a planner finds pieces without reading them.

    Pieces of one source are contiguous: each starts where the previous one ended
    (``start`` of piece n+1 == ``end`` of piece n, compared with the kind's position
    order). A piece shipped early to hold the RPO (``partial``) is superseded by a later
    piece with the same ``start`` and a greater ``end``.

    ``start``/``end``: positions in the kind's position format (``core/engines/<kind>/position.py``).
    ``first_time``/``last_time``: ISO-8601 UTC ("...Z") of the first and last event in the
    piece (for an empty piece, both the time it was cut). Every event committed at or
    before ``last_time`` whose position is below ``end`` is in this piece or an earlier one.
    ``name``: the server's own name for it (WAL file name, binlog file name) for docs/logs.
    ``extra``: anything else the kind needs to replay it (timeline, GTID range, replid).
    """

    start: dict[str, Any]
    end: dict[str, Any]
    first_time: str
    last_time: str
    name: str = ""
    partial: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class LogSink(Protocol):
    """Where a capturing engine ships its log pieces (the vault's log of one source).

    ``ship`` stores the piece's bytes sealed under the log key, then writes its index
    entry last: a piece exists only once ``ship`` returned; a capture killed in the middle
    leaves nothing that looks complete.
    """

    source: str

    def last_piece(self) -> PieceInfo | None:
        """The newest piece shipped for this source (where a restarted capture resumes), or None."""
        ...

    def ship(self, info: PieceInfo, data: bytes | BinaryIO) -> None:
        """Seal and store one piece (``data``: bytes, or a readable file read to EOF)."""
        ...

    def progress(self, message: str) -> None:
        """One line for the run log (shipped piece, lag, reconnect)."""
        ...

    def newest_full(self) -> BackupResult | None:
        """What the newest completed full backup of this source recorded (its position), or None:
        where a capture with no piece yet starts."""
        ...

    def take_full(self) -> BackupResult:
        """Take a full backup of this source now, through the capturing engine itself (for kinds
        whose log can only start at a snapshot: Redis keeps the replication link of its snapshot
        open and streams on from it). Returns what the backup recorded."""
        ...


@dataclass
class BaseBackup:
    """The backup a differential or incremental is taken on (what ``backup(sink, base)`` gets).

    ``reader`` reads the base's streams back (the files engine compares trees with it);
    ``result`` is what the base recorded (position, checks).
    """

    id: str
    type: str
    ended_at: str
    result: BackupResult
    reader: StreamSource


@dataclass(frozen=True)
class StopPoint:
    """Where a restore of a chain stops: at a time (inclusive: events committed at or before
    it are applied), or at a position of the kind; neither means the end of what the plan
    holds. ``time`` is timezone-aware UTC."""

    time: datetime | None = None
    position: dict[str, Any] | None = None


@dataclass
class ChainSteps:
    """What ``restore_chain`` executes, in order, exactly as the plan printed it.

    ``base``: the full backup's reader (its ``result`` holds position and checks).
    ``layers``: differential then incremental backups to apply on top, in order (files;
    for PostgreSQL and MySQL these hold no data streams and are not passed).
    ``pieces``: the log pieces to replay, in order: (info, opener) where ``opener()`` returns
    a context manager over the piece's verified plaintext (``read(n)``).
    """

    base: Any  # StreamSource with .result
    layers: list[Any] = field(default_factory=list)
    pieces: list[tuple[PieceInfo, Any]] = field(default_factory=list)


@dataclass
class RecoveryPoint:
    """Where a chain restore actually ended, and how that was proven.

    ``position``/``time``: the last event applied (its position, its commit time).
    ``proof``: the reference that proved it, in one line (e.g. "pg_last_xact_replay_timestamp()
    2026-12-15T14:29:59.812Z, restore point genesis-1765809000" or "binlog event time").
    ``notes``: objects not restored exactly (as ``restore`` returns).
    """

    position: dict[str, Any]
    time: str | None
    proof: str
    notes: list[str] = field(default_factory=list)


class Engine(ABC):
    """One kind of source. Constructed with its config (a ``core.sources`` model)."""

    kind: str
    # Backup types this engine takes (``backup(sink, base)`` with a base for the other two).
    backup_types: ClassVar[tuple[str, ...]] = ("full",)
    # True if the engine ships a log (``capture``) and restores a chain to a time or position.
    captures_log: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def describe(self) -> str:
        """Short, secret-free description of the source/target, e.g. 'postgres 127.0.0.1:5432/app'."""

    @abstractmethod
    def ping(self) -> None:
        """Raise SourceUnavailableError (one line, with remedy) if unreachable or login refused."""

    def ping_target(self) -> None:
        """Raise SourceUnavailableError if a restore into this target cannot start
        (server down, login refused). A database or directory that does not exist
        yet is fine: ``restore`` creates it."""
        self.ping()

    def rollback_config(self) -> Any:
        """The config a rollback backup of this target is taken with (before a forced restore)."""
        return self.config

    @abstractmethod
    def backup(self, sink: StreamSink, base: BaseBackup | None = None) -> BackupResult:
        """Take a consistent backup, streaming into ``sink``: a full one when ``base`` is None,
        otherwise what changed since ``base`` (the last full for a differential, the previous
        backup for an incremental). For kinds whose changes are their log (PostgreSQL WAL,
        MySQL binlog) a backup on a base stores no data streams: the caller makes sure the log
        is in the vault up to ``log_position()`` and records the range."""

    # -- log capture (engines with ``captures_log``) ------------------------------------

    def log_position(self, switch: bool = False) -> dict[str, Any]:
        """The source's current log position (``switch``: close the current WAL segment /
        rotate the binlog first, so everything up to here can be shipped at once)."""
        raise NotImplementedError(f"{type(self).__name__} has no log")

    def capture(self, log: LogSink, stop: Any, until: dict[str, Any] | None = None) -> None:
        """Ship the source's log into ``log`` without gaps, resuming after ``log.last_piece()``
        (or starting at the newest full's position when there is none), until ``stop`` (a
        ``threading.Event``) is set, or, with ``until``, once everything below that position
        is shipped. Holds the RPO: a piece is shipped at least every ``rpo_seconds`` of the
        source's config while writes happen. A log the server no longer has (slot dropped,
        binlog purged) raises LogGapError naming the range and saying a new full is needed."""
        raise NotImplementedError(f"{type(self).__name__} has no log")

    def restore_chain(self, steps: ChainSteps, stop: StopPoint, progress: Any = None) -> RecoveryPoint:
        """Restore ``steps`` into this config's target (a new target: the caller refuses or
        stages one that holds data) and stop at ``stop``; returns where it ended."""
        raise NotImplementedError(f"{type(self).__name__} restores single backups only")

    @abstractmethod
    def has_data(self) -> bool:
        """True if the target (this config) already holds data a restore would overwrite."""

    @abstractmethod
    def restore(self, source: StreamSource, result: BackupResult) -> list[str] | None:
        """Restore the backup into this config's target. ``result`` is what
        ``backup`` returned (position/checks/tool_versions) as recorded.

        Returns notes: one line per object that was NOT restored exactly as it
        was backed up (a grant to a missing role, an owner replaced, an entry
        skipped at backup time, anything the tool skipped). The restore report
        lists every note; an empty list means the restore is exact.
        """

    # -- restoring beside the target -------------------------------------------------
    # A restore never leaves a target worse off. Engines that can, restore into a
    # fresh sibling target (a new database, a sibling directory), which is then
    # verified and swapped into place; the target is untouched until the swap.
    # Engines that cannot (stage() returns None) restore in place: the caller first
    # proves every object of the backup readable, and puts the rollback point back
    # by itself if the restore fails after it changed the target.

    def stage(self, tag: str) -> Engine | None:
        """An engine for an empty sibling of this target, named with ``tag`` (a short
        hex string), to restore into and verify before ``swap_in``; None if this kind
        of source restores in place."""
        return None

    def restores_beside(self) -> bool:
        """Whether ``stage`` gives a sibling target (without creating anything: plans ask this)."""
        return type(self).stage is not Engine.stage

    def swap_in(self, staged: Engine) -> None:
        """Replace this target's contents with the verified ``staged`` target (a rename,
        as close to atomic as the kind allows); the old contents are removed."""
        raise NotImplementedError(f"{type(self).__name__} restores in place")

    def discard(self) -> None:
        """Remove this (staged) target after a failed or abandoned restore; a missing one is fine."""
        raise NotImplementedError(f"{type(self).__name__} restores in place")

    def preflight(self, position: dict[str, Any]) -> None:
        """Raise (one line, with the remedy) if this target cannot take a restore of a backup taken at
        ``position``: planned before anything changes, so a restore of several sources stops before the
        first one is touched."""
        return None  # most targets take any backup of their kind

    def restore_method(self, position: dict[str, Any]) -> str | None:
        """For the restore plan: how a backup with this ``position`` is loaded into this
        target and proved there, and why that way; None when there is nothing to choose."""
        return None

    def target_key(self) -> str:
        """Identity of the restore target, for its lock and its in-progress mark."""
        return self.describe()

    @abstractmethod
    def collect_checks(self, reference: dict[str, Any]) -> dict[str, Any]:
        """Compute the same checks now, on this config's target, shaped like
        ``reference`` (the recorded checks), for comparison after a restore."""


def compare_checks(expected: dict[str, Any], actual: dict[str, Any], path: str = "") -> list[str]:
    """Human-readable differences between two nested check dicts (empty = equal)."""
    diffs: list[str] = []
    for key in sorted(set(expected) | set(actual), key=str):
        where = f"{path}.{key}" if path else str(key)
        if key not in actual:
            diffs.append(f"{where}: missing after restore")
        elif key not in expected:
            diffs.append(f"{where}: unexpected after restore")
        elif isinstance(expected[key], dict) and isinstance(actual[key], dict):
            diffs.extend(compare_checks(expected[key], actual[key], where))
        elif expected[key] != actual[key]:
            diffs.append(f"{where}: expected {expected[key]!r}, found {actual[key]!r}")
    return diffs
