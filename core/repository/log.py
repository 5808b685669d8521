"""A source's log in the vault: WAL segments, binlog ranges, Redis stream slices (format v2).

Layout::

    logkeys/<source>/<key_id>.json        one data key per capture session, wrapped per recipient
    logdata/<source>/<seq>/<00000000>     sealed chunks of piece <seq> (12-digit sequence number)
    logs/<source>/<seq>.json              the piece's record: written last, the piece's commit point

A piece is not a backup: it has no manifest, no start record and no key of its own.
Every piece a capture session ships is sealed under that session's key, wrapped
once when the session starts. One key per *session*, not per chain, because a backup
host may hold only public keys: a restarted capture cannot unwrap the key an
earlier session made, so it makes a new one (restores unwrap each key once).

The record (positions, times, digests: nothing secret) is in the clear, so planners
read ``logs/<source>/`` alone, never a chunk; it carries an HMAC under a key derived
from the session key, checked when the piece is opened. The sequence number is
claimed by an only-if-absent create of the record, so two writers can never
present the same piece twice, and a killed capture leaves chunks without a record:
nothing that looks complete (the next session of the source removes them).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, ValidationError

from core.crypto.envelope import Opener, Sealer
from core.crypto.keys import Keyring
from core.crypto.mac import mac_matches, record_mac
from core.engines import log_start, position_order, position_text
from core.engines.base import BackupResult, PieceInfo
from core.errors import FormatError, IntegrityError, LogGapError, VaultError
from core.repository.manifest import StreamRecord, now_iso
from core.repository.streams import StreamReader, StreamWriter, in_flight, open_reader
from core.storage.base import ObjectNotFound, Store
from core.timing import StageClock

MAC_INFO = b"genesis-dr/v2/log-piece-mac"  # HKDF info of this record's MAC key

PIECE_FORMAT = "genesis-dr-log-piece"
PIECE_VERSION = 1
_SEQ = re.compile(r"^(\d{12})\.json$")


def piece_id(source: str, seq: int) -> str:
    """The piece's name in errors and in its chunks' associated data."""
    return f"log/{source}/{seq:012d}"


class PieceRecord(BaseModel):
    """``logs/<source>/<seq>.json``: one shipped piece of a source's log."""

    model_config = ConfigDict(extra="forbid")

    format: str = PIECE_FORMAT
    version: int = PIECE_VERSION
    seq: int
    source: str
    kind: str
    key_id: str  # logkeys/<source>/<key_id>.json seals it
    chain: str | None = None  # the newest full of the source when the piece was shipped
    start: dict[str, Any]
    end: dict[str, Any]
    first_time: str
    last_time: str
    name: str = ""
    partial: bool = False
    extra: dict[str, Any] = {}
    shipped_at: str
    compression: str
    stream: StreamRecord
    mac: str | None = None

    @property
    def info(self) -> PieceInfo:
        return PieceInfo(
            start=self.start,
            end=self.end,
            first_time=self.first_time,
            last_time=self.last_time,
            name=self.name,
            partial=self.partial,
            extra=self.extra,
        )

    @property
    def id(self) -> str:
        return piece_id(self.source, self.seq)

    def canonical(self, *, with_mac: bool = True) -> bytes:
        data = self.model_dump(mode="json")
        if not with_mac:
            data.pop("mac", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def sign(self, data_key: bytes) -> None:
        self.mac = record_mac(data_key, MAC_INFO, self.canonical(with_mac=False))

    def verify(self, data_key: bytes) -> None:
        if not mac_matches(data_key, MAC_INFO, self.canonical(with_mac=False), self.mac):
            raise IntegrityError(
                f"{self.id}: the piece's record fails its MAC check (edited or corrupt); restore to a point before "
                "it, or from a replica"
            )

    def summary(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "name": self.name,
            "start": position_text(self.kind, self.start),
            "end": position_text(self.kind, self.end),
            "first_time": self.first_time,
            "last_time": self.last_time,
            "partial": self.partial,
            "plain_bytes": self.stream.plain_bytes,
            "stored_bytes": self.stream.stored_bytes,
            "chain": self.chain,
        }


def parse_piece(raw: bytes, where: str) -> PieceRecord:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{where}: the piece's record is not valid JSON (corrupt)") from None
    if not isinstance(data, dict) or data.get("format") != PIECE_FORMAT:
        raise FormatError(f"{where}: not a genesis-dr log piece record")
    if data.get("version") != PIECE_VERSION:
        raise FormatError(
            f"{where}: log piece version {data.get('version')!r} is not supported (this genesis-dr reads "
            f"{PIECE_VERSION}); upgrade genesis-dr"
        )
    try:
        return PieceRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise IntegrityError(
            f"{where}: field {'.'.join(str(p) for p in first['loc'])!r} is invalid ({first['msg']}); the record is corrupt"
        ) from None


class LogIndex:
    """Reading a source's log: the records (cheap: one small object each) and the pieces' data."""

    def __init__(self, store: Store, source: str) -> None:
        self.store, self.source = store, source

    def seqs(self) -> list[int]:
        return sorted(
            int(m.group(1)) for name in self.store.children(f"logs/{self.source}/") if (m := _SEQ.match(name))
        )

    def record(self, seq: int) -> PieceRecord:
        key = f"logs/{self.source}/{seq:012d}.json"
        try:
            raw = self.store.get(key)
        except ObjectNotFound:
            raise LogGapError(
                f"{piece_id(self.source, seq)}: the piece's record is missing from the vault; the log of "
                f"{self.source!r} has a gap there - take a new full backup"
            ) from None
        record = parse_piece(raw, piece_id(self.source, seq))
        if record.seq != seq or record.source != self.source:
            raise IntegrityError(f"{piece_id(self.source, seq)}: the record names another piece (corrupt)")
        return record

    def records(self) -> list[PieceRecord]:
        """Every readable record, in sequence order. A damaged record raises: a log with an
        unreadable piece has a gap there, which a planner must see, not skip."""
        return [self.record(seq) for seq in self.seqs()]


class LogKeys:
    """The session keys of one source's log: wrapped per recipient, unwrapped once per run."""

    def __init__(self, store: Store, source: str, keyring: Keyring) -> None:
        self.store, self.source, self.keyring = store, source, keyring
        self._open: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def new(self, passphrase_key_id: str | None) -> tuple[str, bytes]:
        key_id = os.urandom(8).hex()
        # From KMS when the keyring names a KMS key (as a backup's), else random.
        data_key, recipients = self.keyring.new_data_key(f"logkey/{self.source}/{key_id}", passphrase_key_id)
        body = json.dumps({"version": 1, "recipients": recipients, "created_at": now_iso()}, sort_keys=True, indent=1)
        if not self.store.create(f"logkeys/{self.source}/{key_id}.json", body.encode()):
            raise VaultError(f"log key {key_id} of {self.source!r} exists already; run the capture again")
        self._open[key_id] = data_key
        return key_id, data_key

    def get(self, key_id: str) -> bytes:
        with self._lock:
            if key_id not in self._open:
                where = f"logkeys/{self.source}/{key_id}.json"
                try:
                    recipients = json.loads(self.store.get(where))["recipients"]
                except ObjectNotFound:
                    raise IntegrityError(
                        f"log key {where} is missing (crypto-shredded or lost): the pieces it sealed cannot be read"
                    ) from None
                except (ValueError, KeyError, TypeError):
                    raise IntegrityError(f"log key {where} is not valid (corrupt)") from None
                self._open[key_id] = self.keyring.unwrap(f"logkey/{self.source}/{key_id}", recipients)
            return self._open[key_id]


class LogWriter:
    """The LogSink of one capture session (call only under the source's capture lease)."""

    def __init__(
        self,
        store: Store,
        source: str,
        kind: str,
        keyring: Keyring,
        passphrase_key_id: str | None,
        *,
        compression: str = "zstd",
        chunk_size: int = 4 << 20,
        newest_full: Any = None,
        take_full: Any = None,
        progress: Any = None,
        lease: Any = None,
    ) -> None:
        self.store, self.source, self.kind = store, source, kind
        self._lease = lease  # the capture lease: checked (and renewed) before each piece commits
        self._index = LogIndex(store, source)
        self._keys = LogKeys(store, source, keyring)
        self._passphrase_key_id = passphrase_key_id
        self._key_id: str | None = None
        self._data_key = b""
        self._compression, self._chunk_size = compression, chunk_size
        self._newest_full, self._take_full, self._progress = newest_full, take_full, progress
        # Sized by the store like a backup's writer: an object store wants more requests in flight.
        self._pool = ThreadPoolExecutor(
            max_workers=store.capabilities.io_threads, thread_name_prefix=f"log-{source[:12]}"
        )
        self._slots = threading.Semaphore(in_flight(store))
        self._last: PieceRecord | None = None
        seqs = self._index.seqs()
        self._next = (seqs[-1] + 1) if seqs else 0
        if seqs:
            self._last = self._index.record(seqs[-1])
        self.shipped = 0
        self.shipped_bytes = 0
        self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Chunks of pieces whose record was never written (a killed session): never part of the log."""
        for name in self.store.children(f"logdata/{self.source}/"):
            if name.isdigit() and int(name) >= self._next:
                for key in list(self.store.list(f"logdata/{self.source}/{name}/")):
                    self.store.delete(key)

    # -- LogSink -----------------------------------------------------------------------

    def last_piece(self) -> PieceInfo | None:
        return self._last.info if self._last else None

    def newest_full(self) -> BackupResult | None:
        manifest = self._newest_full() if self._newest_full else None
        if manifest is None:
            return None
        return BackupResult(position=manifest.position, tool_versions=manifest.tool_versions)

    def take_full(self) -> BackupResult:
        if self._take_full is None:
            raise VaultError(f"capture of {self.source!r} cannot take a full backup here")
        return self._take_full()

    def progress(self, message: str) -> None:
        if self._progress:
            self._progress(message)

    def ship(self, info: PieceInfo, data: bytes | BinaryIO) -> PieceRecord:
        self._check_continuous(info)
        if self._key_id is None:
            self._key_id, self._data_key = self._keys.new(self._passphrase_key_id)
        seq = self._next
        ident = piece_id(self.source, seq)
        sealer = Sealer(self._data_key, ident, self._compression)
        prefix = f"logdata/{self.source}/{seq:012d}"
        writer = StreamWriter(
            self.store, sealer, self._pool, ident, "log", self._chunk_size, self._slots, prefix=prefix
        )
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                writer.write(data)
            else:
                while piece := data.read(1 << 20):
                    writer.write(piece)
            stream = writer.close()
        except BaseException:
            writer.abort()
            # Remove what this attempt wrote, unless another writer committed this sequence number
            # meanwhile (its chunks are the ones our immutable puts bumped into).
            if not self.store.exists(f"logs/{self.source}/{seq:012d}.json"):
                for key in list(self.store.list(prefix + "/")):
                    self.store.delete(key)
            raise
        newest = self._newest_full() if self._newest_full is not None else None
        chain = newest.id if newest is not None else None
        record = PieceRecord(
            seq=seq,
            source=self.source,
            kind=self.kind,
            key_id=self._key_id,
            chain=chain,
            start=info.start,
            end=info.end,
            first_time=info.first_time,
            last_time=info.last_time,
            name=info.name,
            partial=info.partial,
            extra=info.extra,
            shipped_at=now_iso(),
            compression=self._compression,
            stream=stream,
        )
        record.sign(self._data_key)
        if self._lease is not None:
            self._lease.check(f"{ident} of {self.source!r}")
        # The commit point: only-if-absent, so a second writer of this sequence number fails here.
        if not self.store.create(f"logs/{self.source}/{seq:012d}.json", record.canonical()):
            raise VaultError(
                f"{ident} was written by another capture of {self.source!r}; stop the other capture (one per source)"
            )
        self._next, self._last = seq + 1, record
        self.shipped += 1
        self.shipped_bytes += stream.stored_bytes
        return record

    def _check_continuous(self, info: PieceInfo) -> None:
        last = self._last
        if last is None:
            return
        order = lambda p: position_order(self.kind, p)  # noqa: E731
        if order(info.start) == order(last.end):
            return
        if last.partial and order(info.start) == order(last.start) and order(info.end) >= order(last.end):
            return  # the completed piece supersedes the partial one shipped for the RPO
        # A new chain: the log starts again at a full taken after the last piece (Redis takes one through
        # its capture's own link when the primary can no longer continue the stream; PostgreSQL after a
        # lost slot). The range between is a gap the planner names; restores after the full are whole.
        newest = self._newest_full() if self._newest_full is not None else None
        begin = log_start(self.kind, newest.position) if newest is not None and newest.id != last.chain else None
        if begin is not None and order(info.start) == order(begin):
            return
        raise LogGapError(
            f"log of {self.source!r}: the new piece starts at {position_text(self.kind, info.start)} but the vault's "
            f"log ends at {position_text(self.kind, last.end)} ({last.id}); the range between is missing - take a "
            "new full backup"
        )

    def close(self) -> None:
        self._pool.shutdown()


class LogReader:
    """Opens pieces of a source's log with their session keys (unwrapped once each)."""

    def __init__(self, store: Store, source: str, keyring: Keyring) -> None:
        self.store, self.source = store, source
        self._keys = LogKeys(store, source, keyring)
        self._pool = ThreadPoolExecutor(
            max_workers=store.capabilities.io_threads, thread_name_prefix=f"logread-{source[:12]}"
        )
        self.clock: StageClock | None = None  # set by a drill: fetch/decrypt seconds of the pieces read
        self.moved: Callable[[int], None] | None = None  # set by a restore: plaintext bytes of each chunk read

    def _opened(self, record: PieceRecord) -> tuple[Opener, str]:
        data_key = self._keys.get(record.key_id)
        record.verify(data_key)
        return Opener(data_key, record.id), f"logdata/{self.source}/{record.seq:012d}"

    def iter_piece(self, record: PieceRecord) -> Iterator[bytes]:
        opener, prefix = self._opened(record)
        return iter(
            StreamReader(
                self.store,
                opener,
                self._pool,
                record.id,
                record.stream,
                prefix=prefix,
                clock=self.clock,
                moved=self.moved,
            )
        )

    @contextmanager
    def open_piece(self, record: PieceRecord) -> Iterator[BinaryIO]:
        with open_reader(lambda: self.iter_piece(record)) as reader:
            yield reader

    def opener(self, record: PieceRecord):
        """A zero-argument callable giving the piece's reader (what ChainSteps.pieces holds)."""
        return lambda: self.open_piece(record)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
