"""Bucket engine: the objects of an S3 or GCS bucket (under a prefix), with their metadata, into the vault.

Streams of every backup (``core.engines.bucket.index`` has the index format):

- ``index.jsonl``: every object the bucket held under the prefix when it was listed
  (key, size, SHA-256, ETag / generation, version id, last modified, content type and
  the other HTTP metadata, user metadata) and where its bytes are stored;
- ``data-0000`` ... ``data-000N``: object bodies, concatenated. Several objects are read
  at once (``WORKERS``, one data stream each: listing and GET latency, not bandwidth,
  bound a bucket of many small objects); each body streams through in ``READ_PIECE``
  pieces, never whole.

A full stores every object. A differential (on the newest full) or incremental (on the
newest backup of its chain) stores only objects new or changed since its base - by
generation on GCS, by ETag on S3, the size as a guard - and its index records the keys
deleted since. An object whose content is unchanged but whose metadata moved (S3: a
newer last-modified with the same ETag, a copy onto itself; GCS: a new metageneration)
keeps its bytes where the chain has them and takes the new metadata.

A bucket changes under a backup: an object replaced between the listing and its read is
stored as read (the index records the ETag / generation the read returned, so the index,
the bytes and the checks agree); one deleted in between is left out and listed as skipped.

Restore writes every object of the last index back, below the target's prefix, with its
metadata, taking each object's bytes from the backup the index names. Nothing is written
before every stream the restore uses has been read and authenticated and every object's
SHA-256 compared with the index (an object store has no rename to stage behind, so a
damaged backup is refused before the target is touched; this reads the vault twice).
Each object is written only once its bytes match (S3: before the put or the multipart
completion; GCS: before the last chunk). Then objects under the prefix that the backup
does not hold are deleted (a mirror, as the files engine's; core refuses a target that
holds data unless --force, and then takes a rollback backup of it first). Core then
verifies the target against the sealed checks: every object read back, its SHA-256,
size and metadata compared.

Not restored: version ids, ETags of multipart objects and last-modified times (the
store assigns new ones; the index keeps the originals), object ACLs, tags, storage
classes, retention. Point-in-time restores use the newest backup at or before the time
(the chain), not the bucket's object versions.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

from core import cancel
from core.engines.base import (
    BackupResult,
    BaseBackup,
    ChainSteps,
    Engine,
    RecoveryPoint,
    StopPoint,
    StreamSink,
    StreamSource,
)
from core.engines.bucket.clients import BucketClient, Listed, client_for
from core.engines.bucket.index import (
    INDEX_STREAM,
    BucketIndex,
    Selection,
    data_stream,
    read_index,
    write_index,
)
from core.errors import EngineError, IntegrityError, RecoveryTargetError, SourceUnavailableError
from core.sources import BucketSourceConfig

WORKERS = 4  # objects read (backup) or written (restore) at once
# An S3 object last modified this close to its base's listing is looked at again (HEAD) even if its ETag and
# last-modified second are the same: S3 times have one-second resolution ("racy git").
RACY_S = 2
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class BucketEngine(Engine):
    """Backs up and restores the objects of one bucket (under a prefix)."""

    kind = "bucket"
    backup_types = ("full", "differential", "incremental")
    config: BucketSourceConfig
    _client_cache: BucketClient | None = None
    _racy_from: str = ""

    @property
    def label(self) -> str:
        return f"bucket '{self.config.name}'"

    @property
    def client(self) -> BucketClient:
        if self._client_cache is None:
            self._client_cache = client_for(self.config, self.label)
        return self._client_cache

    @property
    def prefix(self) -> str:
        return self.config.prefix

    def describe(self) -> str:
        scheme = "s3" if self.config.provider == "s3" else "gs"
        return f"bucket {scheme}://{self.config.bucket}/{self.prefix}"

    def ping(self) -> None:
        """One listing request: raises SourceUnavailableError (bucket missing, access denied, wrong region)."""
        self.client.any_object(self.prefix)

    def ping_target(self) -> None:
        """The target bucket must exist (a restore never creates buckets: their region, class and policies are
        the operator's choice)."""
        self.ping()

    def rollback_config(self):
        """A rollback point keeps everything under the target prefix, whatever the source's patterns."""
        return self.config.model_copy(update={"include": [], "exclude": []})

    def _selection(self, recorded: dict | None = None) -> Selection:
        if isinstance(recorded, dict) and "include" in recorded:
            return Selection(recorded["include"], recorded["exclude"])
        return Selection(self.config.include, self.config.exclude)

    # -- backup ------------------------------------------------------------------------------------

    def backup(self, sink: StreamSink, base: BaseBackup | None = None) -> BackupResult:
        """Stream the objects under the prefix into ``sink`` (all of them, or with ``base`` those new or changed
        since), and the index of the whole bucket at this listing."""
        client, prefix = self.client, self.prefix
        selection = self._selection()
        # The base's index first: a base that is not a bucket backup fails the run before anything is written.
        prior_index = read_index(base.reader, base.id, self.label) if base is not None else None
        prior = prior_index.by_key() if prior_index is not None else {}
        # S3 stamps objects to the second: one changed in the second its base listed it may look unchanged.
        self._racy_from = ""
        if prior_index is not None and prior_index.header.get("listed_at"):
            racy = _parse(prior_index.header["listed_at"]) - timedelta(seconds=RACY_S)
            self._racy_from = racy.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        listed_at = _now_iso()
        listing_digest = hashlib.sha256()
        listing: list[tuple[str, Listed]] = []
        for obj in client.list(prefix):
            rel = obj.key[len(prefix) :]
            if not selection.covers(rel):
                continue
            listing_digest.update(f"{rel}\0{obj.size}\0{obj.generation or obj.etag}\n".encode("utf-8", "surrogatepass"))
            listing.append((rel, obj))
        entries: dict[str, dict[str, Any]] = {}
        fetch: list[tuple[str, Listed]] = []
        for rel, obj in listing:
            kept = self._unchanged(prior.get(rel), obj)
            if kept is None:
                fetch.append((rel, obj))
            else:
                entries[rel] = kept
        fetched, vanished = self._fetch(sink, fetch)
        entries.update(fetched)
        deleted = sorted(set(prior) - set(entries))
        ordered = [entries[k] for k in sorted(entries)]
        header = {
            "provider": self.config.provider,
            "bucket": self.config.bucket,
            "prefix": prefix,
            "base": base.id if base is not None else None,
            "listed_at": listed_at,
        }
        with sink.open_stream(INDEX_STREAM) as out:
            write_index(out, header, ordered, deleted)
        total = sum(e["size"] for e in ordered)
        checks = {
            "objects": {
                e["key"]: {"sha256": e["sha256"], "size": e["size"], "meta": e.get("meta", {})} for e in ordered
            },
            "count": len(ordered),
            "bytes": total,
            "selection": self._selection().to_dict(),
        }
        return BackupResult(
            position={
                "listed_at": listed_at,
                "listing_sha256": listing_digest.hexdigest(),
                "objects": len(ordered),
                "bytes": total,
                "stored": len(fetched),
                "deleted": len(deleted),
            },
            checks=checks,
            tool_versions=_tool_versions(self.config.provider),
            skipped=[
                f"{prefix}{rel}: deleted from the bucket after it was listed, while the backup ran" for rel in vanished
            ],
        )

    def _unchanged(self, old: dict[str, Any] | None, obj: Listed) -> dict[str, Any] | None:
        """The base's entry for this object if its bytes are the ones the chain holds (with metadata refreshed when
        only that moved); None if the object must be read."""
        if old is None or old["size"] != obj.size:
            return None
        entry = dict(old)
        if obj.generation is not None:  # GCS: a generation is one immutable content
            if old.get("generation") != obj.generation:
                return None
            # A listing carries the metadata: compare it too (fake-gcs-server keeps metageneration at 1 on a PATCH).
            if old.get("metageneration") != obj.metageneration or old.get("meta", {}) != (obj.meta or {}):
                entry.update(metageneration=obj.metageneration, last_modified=obj.last_modified, meta=obj.meta or {})
            return entry
        if not obj.etag or old.get("etag") != obj.etag:
            return None
        if old.get("last_modified") == obj.last_modified and not (
            self._racy_from and obj.last_modified >= self._racy_from
        ):
            return entry
        # Same ETag, newer object: a copy onto itself (new metadata) or the same bytes uploaded again.
        head = self.client.head(obj.key)
        if head is None or head.etag != obj.etag or head.size != obj.size:
            return None
        entry.update(last_modified=head.last_modified, meta=head.meta)
        entry.pop("version_id", None)
        if head.version_id:
            entry["version_id"] = head.version_id
        return entry

    def _fetch(self, sink: StreamSink, fetch: list[tuple[str, Listed]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Read ``fetch`` into up to WORKERS data streams at once; returns their index entries and the keys that
        were gone when read."""
        if not fetch:
            return {}, []
        todo = iter(fetch)
        lock, stop = threading.Lock(), threading.Event()
        entries: dict[str, dict[str, Any]] = {}
        vanished: list[str] = []

        def work(n: int) -> None:
            name = data_stream(n)
            with sink.open_stream(name) as out:
                offset = 0
                while not stop.is_set():
                    with lock:
                        item = next(todo, None)
                    if item is None:
                        return
                    rel, obj = item
                    entry = self._copy_object(out, name, offset, rel, obj)
                    with lock:
                        if entry is None:
                            vanished.append(rel)
                        else:
                            entries[rel] = entry
                    offset += entry["size"] if entry else 0

        workers = min(WORKERS, len(fetch))
        with ThreadPoolExecutor(workers, thread_name_prefix="bucket-read") as pool:
            futures = [pool.submit(work, n) for n in range(workers)]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() for f in done):
                stop.set()
            wait(futures)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return entries, sorted(vanished)

    def _copy_object(self, out: Any, stream: str, offset: int, rel: str, obj: Listed) -> dict[str, Any] | None:
        cancel.check(f"backup of {self.describe()}")
        got = self.client.read(obj)
        if got is None:
            return None
        head, pieces = got
        digest, size = hashlib.sha256(), 0
        for piece in pieces:
            out.write(piece)
            digest.update(piece)
            size += len(piece)
        if size != head.size:
            raise SourceUnavailableError(
                f"{self.label}: reading {obj.key} from {self.client.describe()} ended after {size} of {head.size} "
                "bytes; the connection dropped, it is retried",
                transient=True,
            )
        entry: dict[str, Any] = {
            "key": rel,
            "size": size,
            "sha256": digest.hexdigest(),
            "last_modified": head.last_modified,
            "meta": head.meta,
        }
        for field in ("etag", "generation", "metageneration", "version_id"):
            if getattr(head, field):
                entry[field] = getattr(head, field)
        if size:
            entry["stream"], entry["offset"] = stream, offset
        return entry

    # -- restore -----------------------------------------------------------------------------------

    def has_data(self) -> bool:
        """True if anything is stored under the target prefix."""
        return self.client.any_object(self.prefix)

    def restore(self, source: StreamSource, result: BackupResult) -> list[str]:
        """Write the objects of a full backup back under the target prefix (see the module doc)."""
        backup_id = _backup_id(source)
        index = read_index(source, backup_id, self.label)
        if index.header.get("base"):
            raise EngineError(
                f"{self.label}: backup {backup_id} is a differential or incremental: it holds only what changed "
                "since its base; restore it as a chain (genesis-dr restore --target-time ...)"
            )
        return self._restore([source], index, result, None)

    def restore_chain(self, steps: ChainSteps, stop: StopPoint, progress: Any = None) -> RecoveryPoint:
        """Restore the bucket as the last backup of ``steps`` listed it. A bucket has no log: the point is that
        backup's listing, which the plan chose at or before ``stop.time``."""
        readers = [steps.base, *steps.layers]
        final = readers[-1]
        final_id = _backup_id(final)
        when = final.result.position.get("listed_at")
        if stop.time is not None and when and _parse(when) > stop.time:
            raise RecoveryTargetError(
                f"{self.label}: backup {final_id} listed the bucket at {when}, after the target time "
                f"{stop.time.isoformat()}; plan the chain up to a backup taken at or before it"
            )
        index = read_index(final, final_id, self.label)
        say = progress if callable(progress) else None
        notes = self._restore(readers, index, final.result, say)
        return RecoveryPoint(
            position=dict(final.result.position),
            time=when,
            proof=f"object index of backup {final_id}: {len(index.entries)} objects written, each SHA-256 checked",
            notes=notes,
        )

    def _restore(self, readers: list[Any], index: BucketIndex, result: BackupResult, say) -> list[str]:
        final_id = index.backup_id
        by_id = {_backup_id(r): r for r in readers}
        wanted: dict[tuple[str, str], list[dict[str, Any]]] = {}
        empty: list[dict[str, Any]] = []
        for entry in index.entries:
            if entry["size"]:
                wanted.setdefault((entry.get("in") or final_id, entry["stream"]), []).append(entry)
            else:
                empty.append(entry)
        for entries in wanted.values():
            entries.sort(key=lambda e: e["offset"])
        missing = sorted({owner for owner, _ in wanted} - set(by_id))
        if missing:
            raise IntegrityError(
                f"{self.label}: the object index of backup {final_id} takes objects from backup {missing[0]}, which is "
                f"not in the chain being restored ({', '.join(by_id)}); restore with a plan that includes it"
            )
        # 1. Prove: every stream of every backup read and authenticated, every object's SHA-256 compared.
        halt = threading.Event()
        jobs = [
            (reader, backup_id, name, wanted.get((backup_id, name), []), halt)
            for backup_id, reader in by_id.items()
            for name in reader.stream_names()
            if not (name == INDEX_STREAM and backup_id == final_id)  # read whole (so authenticated) by read_index
        ]
        checked = sum(self._in_parallel(self._prove, jobs, "bucket-prove", halt))
        if say:
            say(f"read and authenticated the {len(by_id)} backups first: {len(index.entries)} objects, {checked} bytes")
        # 2. Write, one task per data stream used.
        client, prefix = self.client, self.prefix
        for entry in empty:
            client.write(prefix + entry["key"], 0, entry.get("meta", {}), [], _EMPTY_SHA256)
        stop = threading.Event()
        jobs = [(by_id[owner], owner, name, entries, stop) for (owner, name), entries in wanted.items()]
        self._in_parallel(self._write_stream, jobs, "bucket-write", stop)
        # 3. Mirror: what the backup covers equals the backup; keys it never covered are left alone.
        keep = {prefix + e["key"] for e in index.entries}
        selection = self._selection((result.checks or {}).get("selection"))
        extra = [o.key for o in client.list(prefix) if o.key not in keep and selection.covers(o.key[len(prefix) :])]
        for key in extra:
            client.delete(key)
        if say:
            say(
                f"wrote {len(index.entries)} objects into {self.describe()}"
                + (f", removed {len(extra)} objects the backup does not hold" if extra else "")
            )
        return [f"{line} (left out of the backup, not restored)" for line in result.skipped]

    @staticmethod
    def _in_parallel(fn, jobs: list[tuple], name: str, stop: threading.Event | None) -> list[Any]:
        """``fn(*job)`` for every job, WORKERS at a time; the first error stops the rest (``stop``) and is raised."""
        if not jobs:
            return []
        with ThreadPoolExecutor(min(WORKERS, len(jobs)), thread_name_prefix=name) as pool:
            futures = [pool.submit(fn, *job) for job in jobs]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() for f in done):
                if stop is not None:
                    stop.set()
                for future in futures:
                    future.cancel()
            wait([f for f in futures if not f.cancelled()])
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return [f.result() for f in futures]

    def _prove(self, reader: Any, backup_id: str, name: str, entries: list[dict[str, Any]], halt) -> int:
        cursor = _Cursor(reader.iter_stream(name), self.label, f"{name} of backup {backup_id}")
        for entry in entries:
            if halt.is_set():
                return 0  # another stream failed: its error is raised
            cursor.skip_to(entry["offset"])
            digest = hashlib.sha256()
            for piece in cursor.take(entry["size"]):
                digest.update(piece)
            if digest.hexdigest() != entry["sha256"]:
                raise IntegrityError(
                    f"{self.label}: object {entry['key']} in stream {name} of backup {backup_id} does not match its "
                    "SHA-256 in the index; the backup is damaged, restore another one (the target was not touched)"
                )
        return cursor.drain(halt)

    def _write_stream(self, reader: Any, backup_id: str, name: str, entries: list[dict], stop: threading.Event) -> None:
        pieces = reader.iter_stream(name)
        try:
            cursor = _Cursor(pieces, self.label, f"{name} of backup {backup_id}")
            for entry in entries:
                if stop.is_set():
                    return
                cancel.check(f"restore into {self.describe()}")
                cursor.skip_to(entry["offset"])
                self.client.write(
                    self.prefix + entry["key"],
                    entry["size"],
                    entry.get("meta", {}),
                    cursor.take(entry["size"]),
                    entry["sha256"],
                )
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # the rest of the stream is not needed (it was authenticated before)

    # -- verification ------------------------------------------------------------------------------

    def collect_checks(self, reference: dict[str, Any]) -> dict[str, Any]:
        """Read every object under the target prefix back: SHA-256, size and metadata, shaped like ``reference``."""
        client, prefix = self.client, self.prefix
        selection = self._selection(reference.get("selection"))
        listed = [(o.key[len(prefix) :], o) for o in client.list(prefix)]
        listed = [(rel, o) for rel, o in listed if selection.covers(rel)]

        def check(item: tuple[str, Listed]) -> tuple[str, dict[str, Any] | None]:
            rel, obj = item
            got = client.read(obj)
            if got is None:
                return rel, None
            head, pieces = got
            digest, size = hashlib.sha256(), 0
            for piece in pieces:
                digest.update(piece)
                size += len(piece)
            return rel, {"sha256": digest.hexdigest(), "size": size, "meta": head.meta}

        with ThreadPoolExecutor(WORKERS * 2, thread_name_prefix="bucket-verify") as pool:
            found = {rel: value for rel, value in pool.map(check, listed) if value is not None}
        out: dict[str, Any] = {}
        if "objects" in reference:
            out["objects"] = found
        if "count" in reference:
            out["count"] = len(found)
        if "bytes" in reference:
            out["bytes"] = sum(v["size"] for v in found.values())
        if "selection" in reference:
            out["selection"] = reference["selection"]
        return out

    def restore_method(self, position: dict[str, Any]) -> str | None:
        return (
            "every object is read from the vault and its SHA-256 checked before the first write; objects are then "
            "written with their metadata, keys the backup lacks are deleted, and each object is read back"
        )


class _Cursor:
    """Walks one data stream: skip to an object's offset, take its bytes (in the vault's pieces)."""

    def __init__(self, pieces: Iterator[bytes], label: str, where: str) -> None:
        self._pieces, self._label, self._where = pieces, label, where
        self._buf = memoryview(b"")
        self.pos = 0

    def _more(self) -> None:
        piece = next(self._pieces, None)
        if piece is None:
            raise IntegrityError(
                f"{self._label}: stream {self._where} ends at byte {self.pos}, before an object the index places "
                "there; the backup is damaged, restore another one"
            )
        self._buf = memoryview(piece)

    def skip_to(self, offset: int) -> None:
        if offset < self.pos:
            raise IntegrityError(
                f"{self._label}: the index places two objects at overlapping bytes of stream {self._where}; "
                "the backup is damaged"
            )
        while self.pos < offset:
            if not self._buf:
                self._more()
            n = min(len(self._buf), offset - self.pos)
            self._buf, self.pos = self._buf[n:], self.pos + n

    def take(self, size: int) -> Iterator[bytes]:
        left = size
        while left:
            if not self._buf:
                self._more()
            n = min(len(self._buf), left)
            yield bytes(self._buf[:n])
            self._buf, self.pos, left = self._buf[n:], self.pos + n, left - n

    def drain(self, halt: threading.Event | None = None) -> int:
        """Read to the end (the vault checks the whole stream's SHA-256 there); returns the stream's length."""
        total = self.pos + len(self._buf)
        self._buf = memoryview(b"")
        for piece in self._pieces:
            total += len(piece)
            if halt is not None and halt.is_set():
                break
        self.pos = total
        return total


def _backup_id(reader: Any) -> str:
    manifest = getattr(reader, "manifest", None)
    if manifest is None:
        raise EngineError("bucket restore needs the backup's manifest (a vault reader)")
    return manifest.id


def _tool_versions(provider: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    package = "boto3" if provider == "s3" else "google-cloud-storage"
    try:
        return {package: version(package)}
    except PackageNotFoundError:  # pragma: no cover - the client would not have worked
        return {}
