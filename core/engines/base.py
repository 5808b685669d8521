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
from typing import Any, BinaryIO, Protocol


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


class Engine(ABC):
    """One kind of source. Constructed with its config (a ``core.sources`` model)."""

    kind: str

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
    def backup(self, sink: StreamSink) -> BackupResult:
        """Take a consistent full backup, streaming into ``sink``."""

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
