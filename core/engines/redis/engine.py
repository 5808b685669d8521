"""Redis engine: RDB snapshots over replication, or logical DUMP/RESTORE.

Mode ``rdb`` (default) takes a consistent snapshot over the network as a
replica would (see ``redis_sync``) and passes the server's bytes unchanged to
the vault and, through a pipe, to a child process that walks them on another
core (``redis_walker``, ``rdb_scan``) for key counts and digests that match
exactly the stored bytes. Restoring it makes the target a replica of a short-lived master
we run, which streams the RDB from the vault; afterwards the target is
promoted back (``REPLICAOF NO ONE``). The target's whole dataset is replaced.
The target keeps its data until the last byte of the payload arrives, and we
send that last byte only once the whole stream has been read, authenticated by
the vault and walked: a damaged backup leaves the target as it was.

Mode ``logical`` (see ``redis_logical``) works on managed Redis too, but is
not point-in-time.

Point in time (rdb mode): ``capture`` keeps a replication link open and ships the
command stream the server sends its replicas; ``restore_chain`` loads a full and
replays that stream to a time (``redis/stream.py``). When the server cannot continue
the stream, the capture takes a new full whose replication link it keeps
(``adopt_link``/``release_link``), so the stream goes on from that very snapshot.

A restore follows the method the backup was taken with, whatever the target
config's ``mode`` says. Verification (``redis-checks/3``) takes the target's
own snapshot over replication and walks it in the child: right after a
restore, values encoded byte for byte as in the backup stream (walked beside
the load) prove the recorded checks without decoding; otherwise (another
version or config, or changed data) every value is decoded. A target that
refuses replication is read with pipelined ``SCAN`` + ``DUMP`` + ``PTTL``
(``redis_pipe``). Checks of older backups (``redis-checks/1``, ``/2``) are
computed the old way, from ``DUMP`` payloads.

Environment (rdb restores only; the target must reach us):
``GENESIS_DR_REDIS_RESTORE_BIND`` - ``host[:port]`` to listen on (default: the
local address this host uses to reach the target, any free port);
``GENESIS_DR_REDIS_RESTORE_ADVERTISE`` - ``host[:port]`` to tell the target,
when NAT or containers put it elsewhere (then any peer may connect).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import redis
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from core import tls
from core.engines.base import (
    BackupResult,
    BaseBackup,
    ChainSteps,
    Engine,
    LogSink,
    RecoveryPoint,
    StopPoint,
    StreamSink,
    StreamSource,
    Writable,
)
from core.engines.redis.checks import KNOWN, KeyspaceChecks, algorithm_of, db_label, reshape_actual
from core.engines.redis.logical import (
    iter_records,
    restore_records,
    write_header,
    write_record,
    write_trailer,
)
from core.engines.redis.pipe import RespPipe
from core.engines.redis.rdb import dump_digest
from core.engines.redis.rdb_scan import ALGORITHM
from core.engines.redis.stream import Capture, HeldLink, replay
from core.engines.redis.sync import (
    CONNECT_TIMEOUT,
    IO_TIMEOUT,
    ReplicaSync,
    ReplicationMaster,
    SyncRefusedError,
    connection_reason,
    transient_os_error,
)
from core.engines.redis.walker import Walker, expired_keys
from core.errors import ConfigError, DRError, EngineError, IntegrityError, SourceUnavailableError, redact
from core.sources import RedisSourceConfig

RDB_STREAM = "dump.rdb"
LOGICAL_STREAM = "keys.bin"
# Logical mode: the server's function libraries (Redis 7+), a FUNCTION DUMP payload; only if there are any.
FUNCTIONS_STREAM = "functions.bin"

ACCEPT_TIMEOUT = 30.0
# Payload bytes held back until the whole backup stream has been authenticated.
HOLD_BACK = 1 << 16
# Keys named one by one in the restore notes; the rest are counted.
NOTE_KEYS = 50
# A restore fails when the target makes no visible progress for this long.
STALL_TIMEOUT = 120.0

# Newest RDB version each Redis release line can load.
_RDB_VERSIONS = [((7, 4), 12), ((7, 2), 11), ((7, 0), 10), ((5, 0), 9), ((4, 0), 8), ((3, 2), 7), ((2, 6), 6)]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _show_key(key: bytes) -> str:
    """A key name for a note: as text when it is printable UTF-8, else as a bytes literal."""
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return repr(key)
    return text if text.isprintable() else repr(key)


def walked_notes(walked: dict) -> list[str]:
    """``expired_notes`` from a walker's answer (it names the first keys and counts them all)."""
    named = expired_keys(walked)
    return expired_notes(named, walked.get("expired_count", len(named)))


def expired_notes(expired: list[tuple[int, bytes, int]], count: int | None = None) -> list[str]:
    """Notes for keys whose expiry time had passed when the restore ran (so they are not on the target)."""
    count = len(expired) if count is None else count
    notes = [
        f"key {_show_key(key)} (db {db}) not restored: it expired at "
        f"{datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec='milliseconds')}, before the restore"
        for db, key, at in sorted(expired)[:NOTE_KEYS]
    ]
    if count > NOTE_KEYS:
        notes.append(f"{count - NOTE_KEYS} more keys not restored: they expired before the restore")
    return notes


class RedisEngine(Engine):
    """Backs up and restores one Redis server (all databases, or one in logical mode)."""

    kind = "redis"
    config: RedisSourceConfig
    backup_types = ("full",)
    # rdb mode: the replication stream after a snapshot is the log (``core.engines.redis.stream``).
    captures_log = True

    def __init__(self, config: RedisSourceConfig, *, announce_eof: bool = True) -> None:
        """Args:
        config: the source or restore target.
        announce_eof: offer the diskless transfer format during rdb backups;
            the master then streams from a forked child without touching its
            own disk (if its ``repl-diskless-sync`` is on).
        """
        super().__init__(config)
        self.announce_eof = announce_eof
        # Set by a capture around ``LogSink.take_full``: the full keeps its replication link
        # (``_held``) so the stream goes on from its snapshot without a gap; ``_adopted`` is a
        # link on which the primary already started a full resync for the capture.
        self._keep_link = False
        self._adopted: ReplicaSync | None = None
        self._held: HeldLink | None = None

    # --- helpers ------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"redis '{self.config.name}' at {self.config.host}:{self.config.port}"

    def _password(self) -> str | None:
        return self.config.password.get_secret_value() if self.config.password else None

    def _client(self, db: int = 0) -> redis.Redis:
        return tls.redis_client(
            self.config.tls,
            self.config.name,
            host=self.config.host,
            port=self.config.port,
            username=self.config.username,
            password=self._password(),
            db=db,
            socket_timeout=IO_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            # A short retry for a dropped connection; longer waits belong to the
            # flow's task retries, and a dead server must fail fast.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), 2),
        )

    def _pipe(self, db: int) -> RespPipe:
        """A plain pipelined connection (hiredis replies) for the per-key commands."""
        c = self.config
        return RespPipe(c.host, c.port, c.username, self._password(), db, self.label, c.tls, c.name)

    @contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Map redis-py failures to one-line DR errors naming this server."""
        try:
            yield
        except redis.AuthenticationError:
            raise SourceUnavailableError(
                f"{self.label}: login refused; check username/password in the stack file"
            ) from None
        except redis.BusyLoadingError:
            raise SourceUnavailableError(
                f"{self.label}: the server is still loading its dataset; try again once it has finished",
                transient=True,
            ) from None
        except redis.exceptions.NoPermissionError:
            raise SourceUnavailableError(
                f"{self.label}: the user may not run {what}; grant it in the server's ACL"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            c = self.config
            if c.tls is not None and tls.tls_problem(exc):
                raise tls.tls_error(c.name, f"{c.host}:{c.port}", exc, c.tls, "redis") from None
            reason = connection_reason(exc.__context__) if exc.__context__ else "connection failed"
            if "refused" in str(exc).lower():
                reason = "connection refused"
            elif c.tls is None and isinstance(exc.__context__, ConnectionResetError):
                # What a TLS-only port does to a plain client.
                reason += " (if it takes TLS only, set tls: in the stack file)"
            elif c.tls is not None and not c.tls.cert_file and "eof" in reason:
                # TLS 1.3: a server wanting a client certificate may just close the link after the handshake.
                reason += " (if the server asks for a client certificate, set tls.cert_file and tls.key_file)"
            raise SourceUnavailableError(
                f"{self.label}: {reason}; check the server is running and host/port in the stack file",
                # refused, reset or timed out: the task retries with backoff (an unknown host name: no)
                transient=not isinstance(exc.__context__, socket.gaierror),
            ) from None
        except redis.ResponseError as exc:
            text = redact(str(exc), self.config.secrets())
            raise EngineError(f"{self.label}: {what} failed: {text[:200]}") from None

    def _keyspace_dbs(self, client: redis.Redis) -> list[int]:
        """Database numbers holding keys (``INFO keyspace``)."""
        return sorted(int(name[2:]) for name in client.info("keyspace") if name.startswith("db"))

    def _function_codes(self, client: redis.Redis) -> list[bytes]:
        """Code of every function library on the server; none before Redis 7."""
        with self._talking("FUNCTION LIST"):
            try:
                libraries = client.function_list(withcode=True)
            except redis.exceptions.NoPermissionError:
                raise
            except redis.ResponseError as exc:
                if "unknown command" in str(exc).lower():
                    return []
                raise
        codes = []
        for lib in libraries:
            fields = lib if isinstance(lib, dict) else dict(zip(lib[::2], lib[1::2], strict=True))
            codes.append(fields[b"library_code"])
        return codes

    def _scope_dbs(self, client: redis.Redis) -> list[int]:
        if self.config.mode == "logical" and self.config.db is not None:
            return [self.config.db]
        return self._keyspace_dbs(client)

    # --- Engine -------------------------------------------------------------

    def describe(self) -> str:
        where = f"redis {self.config.host}:{self.config.port}"
        if self.config.mode == "logical" and self.config.db is not None:
            where += f"/{self.config.db}"
        return f"{where} ({self.config.mode})"

    def restore_method(self, position: dict[str, Any]) -> str | None:
        if position.get("mode", "rdb") == "rdb":
            return (
                "the target loads the RDB as a replica of a short-lived master on this host (REPLICAOF), "
                "the fastest load a network restore has (the target's own disk is out of our reach); "
                "verified by walking the target's own snapshot over replication (SCAN/DUMP if it refuses SYNC)"
            )
        return (
            "RESTORE per key in pipelined batches, which any Redis accepts (managed ones too); verified by walking "
            "the target's own snapshot over replication, or by SCAN/DUMP where it refuses SYNC"
        )

    def ping(self) -> None:
        with self._talking("PING"), self._client() as client:
            client.ping()

    def has_data(self) -> bool:
        with self._talking("INFO keyspace"), self._client() as client:
            if self.config.mode == "logical" and self.config.db is not None:
                with self._client(self.config.db) as one:
                    return one.dbsize() > 0
            return bool(self._keyspace_dbs(client))

    def backup(self, sink: StreamSink, base: BaseBackup | None = None) -> BackupResult:
        if base is not None:
            raise ConfigError(
                f"{self.label}: Redis takes full backups only; its log capture gives point-in-time restores"
            )
        if self.config.mode == "rdb":
            return self._backup_rdb(sink)
        return self._backup_logical(sink)

    def restore(self, source: StreamSource, result: BackupResult) -> list[str]:
        """Restore in place; returns a note per key not restored (it expired before the restore).

        A failure after the target was changed says it was left partially restored.
        """
        mode = result.position.get("mode")
        if mode is None:
            mode = "rdb" if RDB_STREAM in source.stream_names() else "logical"
        if mode == "rdb":
            return self._restore_rdb(source, result)
        return self._restore_logical(source, result)

    def _partial(self, exc: DRError) -> DRError:
        return type(exc)(f"{exc}; the target {self.describe()} was left partially restored")

    def collect_checks(self, reference: dict[str, Any]) -> dict[str, Any]:
        algorithm = algorithm_of(reference)
        if algorithm not in KNOWN:
            raise EngineError(
                f"{self.label}: the backup's checks use {algorithm!r}, which this version cannot compute; "
                "verify with the genesis-dr version that took the backup"
            )
        if algorithm == ALGORITHM:
            actual, self.verified_by = self._checks_now(reference)
        else:
            actual, self.verified_by = self._checks_by_scan_legacy(reference, algorithm), "SCAN/DUMP"
        ref_dbs = list(reference.get("databases", {}))
        if self.config.mode == "logical" and self.config.db is not None:
            # Only the configured database is this target's; a one-database
            # backup may have been restored into another database number.
            here = actual["databases"].get(db_label(self.config.db))
            actual["databases"] = {}
            if here is not None:
                actual["databases"][ref_dbs[0] if len(ref_dbs) == 1 else db_label(self.config.db)] = here
        return reshape_actual(reference, actual, _now_ms())

    def _checks_now(self, reference: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """``redis-checks/3`` of the live server, and how they were taken.

        Its own snapshot over replication, walked in a child process, costs the
        server one fork and us one pass at network speed; a server that refuses
        replication (managed Redis, an ACL without SYNC) is read with pipelined
        SCAN + DUMP + PTTL instead, digested the same way.
        """
        # The shortcut holds only for the backup this engine loaded: its stream was walked, and
        # the checks now being proved are the ones recorded for that stream.
        loaded = getattr(self, "_loaded", None)
        if loaded is not None and loaded[2] != reference:
            loaded = None
        try:
            sync = self._replica_sync()
        except SyncRefusedError:
            return self._checks_by_scan(reference), "SCAN/DUMP (the server refuses a replication sync)"
        if loaded is not None:
            now, expected, _ = loaded
            try:
                with Walker("rdb", self.label, now, encoded=True) as walker:
                    size = sync.pump(walker.write)
                    walked = walker.result()
            finally:
                sync.close()
            self._check_walked(walked, size, "snapshot")
            if self._scoped(walked["checks"]["databases"]) == self._scoped(expected["databases"], loaded=True):
                # Every value is encoded byte for byte as in the backup stream (whose checks
                # were recorded from those bytes): the logical checks hold as recorded.
                dbs = dict(reference["databases"])
                if self.config.mode == "logical" and self.config.db is not None and len(dbs) == 1:
                    dbs = {db_label(self.config.db): next(iter(dbs.values()))}  # labelled as on this target
                actual = {**reference, "databases": dbs}
                actual["functions"] = walked["checks"].get("functions", {})
                return actual, "its own snapshot over replication (every value encoded as in the backup)"
            sync = self._replica_sync()  # encodings differ (another version or config): decode them
        try:
            with Walker("rdb", self.label, _now_ms()) as walker:
                size = sync.pump(walker.write)
                walked = walker.result()
        finally:
            sync.close()
        self._check_walked(walked, size, "snapshot")
        return walked["checks"], "its own snapshot over replication"

    def _scoped(self, databases: dict[str, Any], loaded: bool = False) -> dict[str, Any]:
        """The databases this target answers for; a logical backup's one database may have been loaded into another."""
        if self.config.mode == "logical" and self.config.db is not None:
            if loaded:
                return {"db": next(iter(databases.values()), None) if len(databases) == 1 else databases}
            return {"db": databases.get(db_label(self.config.db))}
        return databases

    def _checks_by_scan(self, reference: dict[str, Any]) -> dict[str, Any]:
        now = _now_ms()
        with self._talking("SCAN/DUMP"), self._client() as client:
            dbs = self._scope_dbs(client)
            codes = self._function_codes(client) if "functions" in reference else []
        with Walker("records", self.label, now) as walker:
            tee = _Buffered(walker.write)
            self._write_records(tee, dbs, now)
            tee.flush()
            checks = walker.result()["checks"]
        if codes:
            functions = KeyspaceChecks(now)
            for code in codes:
                functions.add_function(code)
            checks["functions"] = functions.to_dict()["functions"]
        return checks

    def _write_records(self, out: Writable, dbs: list[int], now: int) -> int:
        """Every key of ``dbs`` as a logical backup stream; returns the number of records."""
        write_header(out)
        records = 0
        for db in dbs:
            with self._pipe(db) as pipe:
                for key, pttl, payload in pipe.scan_dump():
                    write_record(out, db, key, -1 if pttl < 0 else now + pttl, payload)
                    records += 1
        write_trailer(out, records)
        return records

    def _checks_by_scan_legacy(self, reference: dict[str, Any], algorithm: str) -> dict[str, Any]:
        """``redis-checks/1`` and ``/2`` (older backups), decoded in this process as they were."""
        now = _now_ms()
        checks = KeyspaceChecks(now, algorithm)
        with self._talking("SCAN/DUMP"), self._client() as client:
            dbs = self._scope_dbs(client)
            if "functions" in reference:
                for code in self._function_codes(client):
                    checks.add_function(code)
        for db in dbs:
            with self._pipe(db) as pipe:
                for key, pttl, payload in pipe.scan_dump():
                    type_name, digest = dump_digest(payload, checks.pending)
                    checks.add(db, key, type_name, None if pttl < 0 else now + pttl, digest)
        return checks.to_dict()

    # --- rdb mode -----------------------------------------------------------

    def _replica_sync(self) -> ReplicaSync:
        return self.replica_sync()

    def replica_sync(self, rdb_only: bool = True, resume: tuple[str, int] | None = None) -> ReplicaSync:
        """A replication link to this server (see ``ReplicaSync``)."""
        return ReplicaSync(
            self.config.host,
            self.config.port,
            self.config.username,
            self._password(),
            self.label,
            announce_eof=self.announce_eof,
            rdb_only=rdb_only,
            resume=resume,
            tls_config=self.config.tls,
            name=self.config.name,
        )

    # --- log capture and point-in-time restore (core.engines.redis.stream) ----

    def log_position(self, switch: bool = False) -> dict[str, Any]:
        with self._talking("INFO replication"), self._client() as client:
            info = client.info("replication")
        return {"replid": str(info["master_replid"]), "offset": int(info["master_repl_offset"])}

    def capture(self, log: LogSink, stop: Any, until: dict[str, Any] | None = None) -> None:
        Capture(self, log, stop, until).run()

    def restore_chain(self, steps: ChainSteps, stop: StopPoint, progress: Any = None) -> RecoveryPoint:
        return replay(self, steps, stop, progress)

    def adopt_link(self, sync: ReplicaSync | None) -> None:
        """The next rdb full keeps its replication link for the capture (``release_link``) and
        uses ``sync`` (a full resync the primary started for the capture) if given."""
        self._keep_link, self._adopted, self._held = True, sync, None

    def release_link(self) -> ReplicaSync | None:
        """The link the full kept, now the capture's (None if no full was taken through it)."""
        self._keep_link = False
        if self._adopted is not None:  # the full never ran
            self._adopted.close()
            self._adopted = None
        held, self._held = self._held, None
        return held.release() if held is not None else None

    def _backup_rdb(self, sink: StreamSink) -> BackupResult:
        started = _iso_now()
        keep = self._keep_link
        sync, self._adopted = self._adopted or self.replica_sync(rdb_only=not keep), None
        kept = False
        try:
            header = sync.header
            # The fork happened before the header arrived: keys expiring before
            # now are gone on any server that loads this snapshot.
            with Walker("rdb", self.label, _now_ms()) as walker, sink.open_stream(RDB_STREAM) as out:

                def forward(data: bytes) -> None:
                    out.write(data)
                    walker.write(data)

                size = sync.pump(forward)
                walked = walker.result()
            self._check_walked(walked, size, "snapshot")
            if keep:
                self._held, kept = HeldLink(sync), True
        finally:
            if not kept:
                sync.close()
        position = {
            "mode": "rdb",
            "replid": header.replid,
            "offset": header.offset,
            "redis_version": header.redis_version,
            "rdb_version": walked["version"],
            "rdb_bytes": size,
            "transfer": "diskless" if header.eof_mark else "disk",
            "databases": walked["databases"],
            "keys": walked["keys"],
            "started_at": started,
            "finished_at": _iso_now(),
        }
        return BackupResult(position=position, checks=walked["checks"], tool_versions={"server": header.redis_version})

    def _check_walked(self, walked: dict, size: int, what: str) -> None:
        if walked["consumed"] != size or walked["trailing"]:
            raise EngineError(
                f"{self.label}: the {what} holds {size} bytes but its RDB ends after {walked['consumed']}; "
                "it is corrupt - take a new backup"
            )

    def _restore_rdb(self, source: StreamSource, result: BackupResult) -> list[str]:
        if self.config.mode == "logical" and self.config.db is not None:
            # has_data() looked at that one database; an RDB replaces them all.
            raise ConfigError(
                f"{self.label}: this is an rdb backup, which replaces every database of the target; "
                "unset 'db' on the restore target"
            )
        length = int(result.position["rdb_bytes"])
        with self._client() as client:
            return self._replicate_into(client, source, length, result.position, result.checks)

    def _check_plain_replication(self, client: redis.Redis) -> None:
        """The target fetches the snapshot from our short-lived master, which has no certificate: a target
        that replicates over TLS only would wait for a handshake that never comes."""
        try:
            setting = client.config_get("tls-replication").get("tls-replication")
        except redis.RedisError:
            return  # CONFIG refused or renamed (managed services): REPLICAOF says what it thinks of us
        if setting == "yes":
            raise ConfigError(
                f"{self.label}: the target replicates over TLS only (tls-replication yes) and an rdb restore serves "
                "the snapshot from this host without a certificate; set tls-replication no on the target for the "
                "restore, or restore a backup taken in mode 'logical'"
            )

    def _replicate_into(
        self, client: redis.Redis, source: StreamSource, length: int, position: dict, checks: dict
    ) -> list[str]:
        with self._talking("INFO server"):
            version = client.info("server").get("redis_version", "0")
        self._check_rdb_version(str(version), int(position.get("rdb_version", 0)))
        self._check_database_count(client, position.get("databases", []))
        self._check_plain_replication(client)
        bind, advertise, allowed = self._restore_addresses()
        master = ReplicationMaster(bind, allowed, self.label)
        try:
            host, port = advertise[0], advertise[1] or master.port
            try:
                with self._talking("REPLICAOF"):
                    client.execute_command("REPLICAOF", host, port)
            except EngineError as exc:
                raise EngineError(
                    f"{exc}; managed Redis services refuse it - restore a backup taken in mode 'logical' instead"
                ) from None
            try:
                notes = self._serve_verified(master, source, length, checks)
                self._wait_synced(client, master, port)
            except BaseException as exc:
                # Drop the link first: a target loading straight from the socket
                # (repl-diskless-load) blocks on it and would not answer REPLICAOF
                # until repl-timeout; on EOF it abandons the load and keeps its data.
                master.close()
                # Best effort: give the target back its master role; the
                # original error is the one the operator needs to see.
                try:
                    client.execute_command("REPLICAOF", "NO", "ONE")
                except redis.RedisError:
                    pass
                if isinstance(exc, DRError):
                    if master.sent < length:
                        raise type(exc)(f"{exc}; the target {self.describe()} was not changed") from None
                    raise self._partial(exc) from None
                raise
            with self._talking("REPLICAOF NO ONE"):
                client.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            master.close()
        return notes

    def _serve_verified(self, master: ReplicationMaster, source: StreamSource, length: int, checks: dict) -> list[str]:
        """Stream the RDB to the target, keeping back its last bytes until the whole
        stream has been authenticated by the vault (its end checks the length and
        SHA-256); returns notes on the keys that had expired by now.

        A child process walks the stream beside the transfer for the encoded
        digests (``_checks_now`` compares the target's snapshot with them) and,
        when the checks say a key may have expired by now, to name those keys.
        """
        master.start_sync(length, ACCEPT_TIMEOUT)
        now = _now_ms()
        first = checks.get("first_expiry_ms")
        notes_before = now if first is not None and first <= now else None
        walker = Walker("rdb", self.label, now, notes_before_ms=notes_before, encoded=True)
        held = bytearray()
        pieces = source.iter_stream(RDB_STREAM)
        try:
            for data in pieces:
                walker.write(data)
                held += data
                if len(held) > HOLD_BACK:
                    master.send(bytes(held[:-HOLD_BACK]))
                    del held[:-HOLD_BACK]
            walked = walker.result()
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            walker.close()
        if master.sent + len(held) != length:
            raise IntegrityError(
                f"{self.label}: the backup's RDB stream holds {master.sent + len(held)} bytes, "
                f"the manifest says {length}"
            )
        self._check_walked(walked, length, "backup's RDB stream")
        master.send(bytes(held))
        self._loaded = (now, walked["checks"], checks)
        return walked_notes(walked)

    def _check_rdb_version(self, target_version: str, rdb_version: int) -> None:
        try:
            major, minor = (int(p) for p in target_version.split(".")[:2])
        except ValueError:
            return  # unknown servers: let the load decide
        loadable = next((v for (mm, v) in _RDB_VERSIONS if (major, minor) >= mm), 0)
        if rdb_version > loadable:
            raise EngineError(
                f"{self.label}: Redis {target_version} cannot load RDB version {rdb_version}; "
                "restore into a Redis at least as new as the source"
            )

    def _check_database_count(self, client: redis.Redis, databases: list[int]) -> None:
        # A replica exits (it does not just fail the sync) on an RDB that
        # selects a database number it does not have.
        if not databases:
            return
        with self._talking("CONFIG GET databases"):
            try:
                configured = client.config_get("databases").get("databases")
            except redis.ResponseError:
                return  # CONFIG disabled: nothing to check against
        if configured is not None and max(databases) >= int(configured):
            raise EngineError(
                f"{self.label}: the backup uses database {max(databases)} but the target has only {configured} "
                "databases; raise 'databases' in the target's configuration"
            )

    def _restore_addresses(self) -> tuple[tuple[str, int], tuple[str, int], set[str] | None]:
        """(listen address, address told to the target, allowed peer IPs)."""
        bind_env = os.environ.get("GENESIS_DR_REDIS_RESTORE_BIND")
        adv_env = os.environ.get("GENESIS_DR_REDIS_RESTORE_ADVERTISE")
        if bind_env:
            bind = _host_port(bind_env)
        else:
            try:
                with socket.create_connection((self.config.host, self.config.port), timeout=CONNECT_TIMEOUT) as s:
                    bind = (s.getsockname()[0], 0)
            except OSError as exc:
                raise SourceUnavailableError(
                    f"{self.label}: {connection_reason(exc)}; check the server is running and host/port in the stack file",
                    transient=transient_os_error(exc),
                ) from None
        if adv_env:
            return bind, _host_port(adv_env), None
        try:
            allowed = {ai[4][0] for ai in socket.getaddrinfo(self.config.host, self.config.port)}
        except OSError:
            allowed = set()
        allowed.add(bind[0])  # a target on this host may connect from our own address
        return bind, bind, allowed

    def _wait_synced(self, client: redis.Redis, master: ReplicationMaster, port: int) -> None:
        last: tuple | None = None
        changed = time.monotonic()
        while True:
            with self._talking("INFO"):
                try:
                    repl = client.info("replication")
                    loading = client.info("persistence")
                except redis.BusyLoadingError:
                    repl, loading = {}, {"loading": 1}
            if (
                repl.get("master_link_status") == "up"
                and int(repl.get("master_port", -1)) == port
                and not repl.get("master_sync_in_progress")
                and not loading.get("loading")
            ):
                return
            if not master.replica_alive():
                raise EngineError(
                    f"{self.label}: the target dropped the replication link before loading the snapshot; "
                    "see its log (RDB version, disk space in its dir, maxmemory)"
                )
            progress = (
                repl.get("master_link_status"),
                repl.get("master_sync_read_bytes"),
                loading.get("loading_loaded_bytes"),
            )
            if progress != last:
                last, changed = progress, time.monotonic()
            elif time.monotonic() - changed > STALL_TIMEOUT:
                raise EngineError(f"{self.label}: loading the snapshot made no progress for {STALL_TIMEOUT:.0f}s")
            time.sleep(0.05)

    # --- logical mode -------------------------------------------------------

    def _backup_logical(self, sink: StreamSink) -> BackupResult:
        started = _iso_now()
        now = _now_ms()
        with self._talking("INFO"), self._client() as client:
            version = str(client.info("server").get("redis_version", "unknown"))
            dbs = self._scope_dbs(client)
            codes = self._function_codes(client)
            if codes:
                with self._talking("FUNCTION DUMP"), sink.open_stream(FUNCTIONS_STREAM) as out:
                    out.write(client.function_dump())
        # The records go to the vault and, through a pipe, to the walker that digests them on another core.
        with Walker("records", self.label, now) as walker, sink.open_stream(LOGICAL_STREAM) as out:

            def both(data: bytes) -> None:
                out.write(data)
                walker.write(data)

            tee = _Buffered(both)
            records = self._write_records(tee, dbs, now)
            tee.flush()
            checks = walker.result()["checks"]
        if codes:
            functions = KeyspaceChecks(now)
            for code in codes:
                functions.add_function(code)
            checks["functions"] = functions.to_dict()["functions"]
        position = {
            "mode": "logical",
            "redis_version": version,
            "databases": dbs,
            "keys": records,
            "function_libraries": len(codes),
            "started_at": started,
            "finished_at": _iso_now(),
        }
        return BackupResult(position=position, checks=checks, tool_versions={"server": version})

    def _restore_logical(self, source: StreamSource, result: BackupResult) -> list[str]:
        recorded = [int(db) for db in result.position.get("databases", [])]
        remap = self.config.db if self.config.mode == "logical" else None
        if remap is not None and len(recorded) > 1:
            raise ConfigError(
                f"{self.label}: the backup holds databases {recorded}; a target 'db' can take only one - unset it"
            )
        clients: dict[int, RespPipe] = {}

        def client_for(db: int) -> RespPipe:
            target = db if remap is None else remap
            if target not in clients:
                c = self._pipe(target)
                clients[target] = c
                # Like an rdb restore, each restored database ends up equal to
                # the backup; only reached when the target is empty or forced.
                if c.call("DBSIZE"):
                    c.call("FLUSHDB")
            return clients[target]

        expired: list[tuple[int, bytes, int]] = []
        notes: list[str] = []
        now = _now_ms()
        walker = Walker("records", self.label, now, encoded=True)
        try:
            with self._talking("RESTORE"), source.open_stream(LOGICAL_STREAM) as f:
                tee = _Buffered(walker.write)
                restore_records(iter_records(_TeeReader(f, tee.write)), client_for, self.label, expired)
                tee.flush()
            self._loaded = (now, walker.result()["checks"], result.checks)
            if FUNCTIONS_STREAM in source.stream_names():
                notes += self._restore_functions(b"".join(source.iter_stream(FUNCTIONS_STREAM)))
        except DRError as exc:
            if clients:
                raise self._partial(exc) from None
            raise
        finally:
            walker.close()
            for c in clients.values():
                c.close()
        return expired_notes(expired) + notes

    def _restore_functions(self, payload: bytes) -> list[str]:
        """FUNCTION RESTORE ... REPLACE: libraries of the same name become the backup's,
        others on a shared server stay. A refusal is a note, not a failure: the keys are restored."""
        with self._talking("FUNCTION RESTORE"), self._client() as client:
            try:
                client.function_restore(payload, "REPLACE")
            except redis.ResponseError as exc:
                text = redact(str(exc), self.config.secrets())[:200]
                return [f"function libraries not restored: the target refused FUNCTION RESTORE ({text})"]
        return []


class _TeeReader:
    """A reader that hands every byte it returns to ``write`` as well."""

    def __init__(self, f, write) -> None:
        self._f = f
        self._write = write

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._write(data)
        return data


class _Buffered:
    """Collects small writes (two per key) into large ones for the vault and the walker's pipe."""

    def __init__(self, write, size: int = 1 << 20) -> None:
        self._write = write
        self._size = size
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= self._size:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buf:
            self._write(bytes(self._buf))
            self._buf.clear()


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and (":" not in host or host.startswith("[")):
        return host.strip("[]"), int(port)
    return value.strip("[]"), 0
