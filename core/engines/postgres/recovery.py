"""Point-in-time restore: a physical full into a new data directory, WAL replayed to a time.

1. ``base.tar`` is unpacked into ``data_dir`` (which must be new or empty: a
   recovered cluster never overwrites anything), as the ``postgres`` user when
   we run as root (the server refuses to run as root).
2. The log pieces are staged for the server in a bounded window,
   ``<data_dir>/genesis-dr-wal/``: a feeder thread assembles each WAL segment
   from its pieces in plan order (a piece is a byte range of a segment; the
   last segment, when the plan ends inside it, is padded with zeros: the
   server reads only whole segments, and zeros are the end of the WAL), at
   most ``GENESIS_DR_PG_WAL_WINDOW`` (default 4) segments ahead of the one the
   server last asked for, and removes those it has replayed. A segment the
   plan holds only from its middle (the one the backup started in) is left to
   the copy inside the backup's own ``pg_wal``. The ``restore_command`` is a
   small shell script there: for a staged segment it waits until the feeder
   has written it and copies it; any other name fails at once. The whole WAL
   history is never on disk.
3. ``standby.signal`` with ``recovery_target_time`` = the stop time
   (inclusive), ``recovery_target_action = promote``; the settings go to
   ``postgresql.auto.conf`` with ``port``, ``listen_addresses`` (the config's
   host), no Unix socket and ``archive_mode = off`` (the copy must never
   archive into the source's archive). The cluster is started with ``pg_ctl``.
   When the WAL holds a commit after the target, the server stops before it
   and promotes itself. When it does not (the target is after the last commit
   the vault holds), the server replays everything and waits for more WAL:
   standby mode instead of plain archive recovery, which would refuse to finish
   ("recovery ended before configured recovery target was reached"). We see
   that wait in the ``restore_command`` calls (the server asks for the segment
   after the plan, or again for the padded last one), check that replay stands
   still, and promote it (``pg_promote()``): all the WAL up to the target is
   then applied. So the server's own reading of the commit records decides
   where to stop; the pieces' recorded times only choose the pieces.
4. Once promoted, the recovery settings are reset (``ALTER SYSTEM RESET``), the
   staging window removed, and the recovery point read back.

With no pieces the restore stops where the backup became consistent
(``recovery_target = 'immediate'``).

Proof: ``pg_last_xact_replay_timestamp()`` (the commit time of the last
transaction replayed) and the server's own "recovery stopping before commit of
transaction N, time T" line (the first commit after the target, not applied).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from core.engines.base import PieceInfo, RecoveryPoint, StopPoint
from core.engines.postgres import physical, walfiles
from core.engines.postgres.position import lsn_int
from core.engines.tools import StderrTail, last_line
from core.errors import (
    DRError,
    EngineError,
    IntegrityError,
    RecoveryTargetError,
    SourceUnavailableError,
    TargetNotEmptyError,
    redact,
)

if TYPE_CHECKING:
    from core.engines.postgres.engine import PostgresEngine

STAGING = "genesis-dr-wal"
SERVER_LOG = "genesis-dr-server.log"
RECOVERY_SETTINGS = (
    "restore_command",
    "wal_retrieve_retry_interval",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
)
START_TIMEOUT_S = 3600.0

_FETCH_SCRIPT = """#!/bin/sh
# restore_command of a genesis-dr point-in-time restore. genesis-dr stages the planned WAL
# files here in order; a planned file is waited for, any other name ends the WAL at once.
d={staging}
echo "$1" >> "$d/requested"
grep -qx "$1" "$d/planned" || exit 1
while [ ! -e "$d/$1" ]; do
    # The server was stopped (the restore failed): never report a missing file as the end of the WAL.
    kill -0 "$(head -n 1 {pid_file} 2>/dev/null)" 2>/dev/null || exit 2
    sleep 0.05
done
exec cp "$d/$1" "$2"
"""


class _ServerStopped(EngineError):
    """The recovered cluster did not come up (its log says why)."""


def window_size() -> int:
    return max(1, int(os.environ.get("GENESIS_DR_PG_WAL_WINDOW", "4")))


def _postgres_ids() -> tuple[int, int] | None:
    """uid/gid to run the server as: ``postgres`` when we are root (it refuses root), else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise EngineError(
            "running as root and there is no 'postgres' user to start the recovered cluster as; create it "
            "or run genesis-dr as the user that owns PostgreSQL clusters"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _own(path: Path, ids: tuple[int, int] | None) -> None:
    if ids:
        os.chown(path, *ids)


def data_dir_holds_data(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def check_target(engine: PostgresEngine) -> None:
    """What ``ping_target`` checks for a new cluster: the directory can be made and the port is free."""
    c = engine.config
    path = Path(c.data_dir)
    if data_dir_holds_data(path):
        raise TargetNotEmptyError(
            f"restore target {engine.describe()}: {path} is not empty; a recovered cluster is built only in a new "
            "directory (--force does not overwrite one) - choose another data_dir"
        )
    parent = path.parent
    if not parent.is_dir():
        raise SourceUnavailableError(
            f"restore target {engine.describe()}: {parent} does not exist; create it (the data directory itself "
            "is created by the restore)"
        )
    if port_in_use(c.host, c.port):
        raise SourceUnavailableError(
            f"restore target {engine.describe()}: something already listens on {c.host}:{c.port}; choose a free port "
            "for the recovered cluster"
        )


def effective_pieces(pieces: list[tuple[PieceInfo, Any]]) -> list[tuple[PieceInfo, Any]]:
    """Pieces in plan order, a partial piece dropped when a later one with the same start supersedes it."""
    out: list[tuple[PieceInfo, Any]] = []
    for info, opener in pieces:
        if out and out[-1][0].partial and lsn_int(out[-1][0].start["lsn"]) == lsn_int(info.start["lsn"]):
            out[-1] = (info, opener)
        else:
            out.append((info, opener))
    return out


@dataclass
class Segment:
    """One WAL segment file of the plan and the pieces it is assembled from."""

    name: str
    start: int
    pieces: list[tuple[PieceInfo, Any]] = field(default_factory=list)


def plan_segments(pieces: list[tuple[PieceInfo, Any]], seg_size: int) -> tuple[list[Segment], list[str]]:
    """The segments to stage, in order, and the names of segments the plan holds only from their
    middle (left to the backup's own pg_wal)."""
    segments: list[Segment] = []
    for info, opener in effective_pieces(pieces):
        start = lsn_int(info.start["lsn"])
        base = walfiles.floor_segment(start, seg_size)
        name = walfiles.segment_name(int(info.start.get("timeline") or 1), base, seg_size)
        if not segments or segments[-1].name != name:
            segments.append(Segment(name, base))
        segments[-1].pieces.append((info, opener))
    whole = [seg for seg in segments if lsn_int(seg.pieces[0][0].start["lsn"]) == seg.start]
    return whole, [seg.name for seg in segments if seg not in whole]


class _Feeder(threading.Thread):
    """Stages the plan's WAL segments in a bounded window ahead of what the server asks for."""

    def __init__(self, staging: Path, segments: list[Segment], seg_size: int, ids) -> None:
        super().__init__(name="pg-wal-feeder", daemon=True)
        self.staging, self.segments, self.seg_size, self.ids = staging, segments, seg_size, ids
        self.index = {seg.name: i for i, seg in enumerate(segments)}
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.staged_bytes = 0
        self.peak = 0  # most segments on disk at once

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the restoring thread, which stops the server
            self.error = exc

    def requests(self) -> list[str]:
        try:
            return (self.staging / "requested").read_text().split()
        except FileNotFoundError:
            return []

    def _run(self) -> None:
        staged: set[int] = set()
        window = window_size()
        while not self.done.is_set():
            # The segment the server asked for last (after a restart it asks for earlier ones again).
            asked = next((self.index[n] for n in reversed(self.requests()) if n in self.index), -1)
            # The one asked for, the one before (a record's start may be read again), and the window ahead.
            wanted = range(max(0, asked - 1), min(len(self.segments), asked + window + 1))
            for i in wanted:
                if i not in staged:
                    self._stage(i)
                    staged.add(i)
            for i in staged - set(wanted):
                (self.staging / self.segments[i].name).unlink(missing_ok=True)
            staged &= set(wanted)
            self.peak = max(self.peak, len(staged))
            self.done.wait(0.05)

    def _stage(self, i: int) -> None:
        segment = self.segments[i]
        final = self.staging / segment.name
        tmp = self.staging / f".{segment.name}.tmp"
        with open(tmp, "wb") as out:
            for info, opener in segment.pieces:
                offset = lsn_int(info.start["lsn"]) - segment.start
                expected = lsn_int(info.end["lsn"]) - lsn_int(info.start["lsn"])
                out.seek(offset)
                size = 0
                with opener() as data:
                    while block := data.read(1 << 20):
                        out.write(block)
                        size += len(block)
                if size != expected:
                    raise IntegrityError(
                        f"WAL piece {info.name} at {info.start['lsn']} holds {size} bytes, not the {expected} its "
                        "record names; the vault's log is damaged - restore to an earlier time"
                    )
                self.staged_bytes += size
            out.truncate(self.seg_size)  # zeros after the last record of a segment the plan ends in
        _own(tmp, self.ids)
        tmp.rename(final)  # the restore_command never sees a half-written file


def restore_cluster(
    engine: PostgresEngine,
    base: Any,
    position: dict[str, Any],
    pieces: list[tuple[PieceInfo, Any]],
    stop: StopPoint,
    progress: Any = None,
) -> RecoveryPoint:
    """See the module docstring. ``base`` reads the full's streams; ``position`` is what it recorded."""
    say = progress or (lambda _msg: None)
    c = engine.config
    if not position.get("physical"):
        raise EngineError(
            f"backup of {c.name} is a logical dump (pg_dump): it restores into a database, not a data directory "
            "- unset data_dir on the target, or restore a physical full (backup_method: physical)"
        )
    data_dir = Path(c.data_dir).absolute()
    if data_dir_holds_data(data_dir):
        raise TargetNotEmptyError(
            f"restore target {engine.describe()}: {data_dir} is not empty; a recovered cluster is built in a new "
            "directory - choose another data_dir"
        )
    check_target(engine)
    major = int(str(position.get("server_version", "0")).split(".")[0])
    pg_ctl = physical.server_tool("pg_ctl", major)
    physical.server_tool("postgres", major)
    ids = _postgres_ids()
    seg_size = int(position.get("wal_segment_size") or 16 << 20)
    segments, from_backup = plan_segments(pieces, seg_size)
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, exist_ok=True)
    data_dir.chmod(0o700)
    _own(data_dir, ids)
    started = False
    feeder: _Feeder | None = None
    try:
        step = time.monotonic()
        _unpack(engine, base, data_dir)
        say(f"unpacked the physical full into {data_dir} in {time.monotonic() - step:.1f}s")
        staging = data_dir / STAGING
        staging.mkdir(mode=0o700)
        _own(staging, ids)
        (staging / "planned").write_text("".join(seg.name + "\n" for seg in segments))
        (staging / "fetch.sh").write_text(
            _FETCH_SCRIPT.format(
                staging=shlex.quote(str(staging)), pid_file=shlex.quote(str(data_dir / "postmaster.pid"))
            )
        )
        for name in ("planned", "fetch.sh"):
            _own(staging / name, ids)
        settings, mode = _recovery_settings(engine, staging, position, bool(pieces), stop)
        conf = _Conf(data_dir / "postgresql.auto.conf", ids)
        conf.write(settings)
        # Standby mode: at the end of the WAL the server waits instead of failing (see the docstring).
        (data_dir / "standby.signal").touch()
        _own(data_dir / "standby.signal", ids)
        feeder = _Feeder(staging, segments, seg_size, ids)
        feeder.start()
        say(f"starting the recovered cluster on {c.host}:{c.port}: {mode}")
        step = time.monotonic()
        started = True
        _start(pg_ctl, data_dir, feeder)
        # The last segment the plan holds: the server asking past it means the planned WAL is replayed.
        # (The backup's own WAL, to its end, counts as planned: it comes from its pg_wal.)
        end = walfiles.segment_name(
            int(position.get("timeline") or 1), lsn_int(position.get("end_lsn") or position["lsn"]), seg_size
        )
        last = max([seg.name for seg in segments] + from_backup + [end]) if pieces else ""
        padded = bool(segments) and segments[-1].name == last and _ends_inside(segments[-1], seg_size)
        point = _wait_promoted(
            _Server(engine, pg_ctl, data_dir, feeder, conf, settings), position, last or None, padded, say
        )
        say(
            f"recovered cluster promoted in {time.monotonic() - step:.1f}s ({len(pieces)} WAL pieces in "
            f"{len(segments)} segments staged, at most {feeder.peak} on disk at once)"
        )
        feeder.done.set()
        feeder.join()
        _finish(engine)
        shutil.rmtree(staging, ignore_errors=True)
        return point
    except BaseException as exc:
        if feeder is not None:
            feeder.done.set()
        if started:
            _stop_quietly(pg_ctl, data_dir)
        if feeder is not None:
            feeder.join(10)
        detail = _server_failure(data_dir)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            for entry in list(data_dir.iterdir()) if data_dir.exists() else []:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        if detail and isinstance(exc, _ServerStopped):
            raise _recovery_error(engine, detail, position) from None
        raise


def _unpack(engine: PostgresEngine, base: Any, data_dir: Path) -> None:
    """``tar -x`` of ``base.tar`` into ``data_dir``, as the server's user (files owned right away)."""
    argv = _as_server_user(["tar", "-x", "-f", "-", "-C", str(data_dir)])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = StderrTail(proc.stderr)
    try:
        for piece in base.iter_stream(physical.BASE_STREAM):
            proc.stdin.write(piece)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # tar stopped reading: its status says why
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.wait() != 0:
        raise EngineError(f"unpacking the physical full into {data_dir} failed: {last_line(stderr.text())}")


def _ends_inside(segment: Segment, seg_size: int) -> bool:
    return lsn_int(segment.pieces[-1][0].end["lsn"]) < segment.start + seg_size


def _recovery_settings(
    engine: PostgresEngine, staging: Path, position: dict, has_pieces: bool, stop: StopPoint
) -> tuple[dict[str, str], str]:
    c = engine.config
    settings = {
        "port": str(c.port),
        "listen_addresses": c.host,
        "unix_socket_directories": "",
        "archive_mode": "off",
        "hot_standby": "on",
        "restore_command": f'sh {shlex.quote(str(staging / "fetch.sh"))} "%f" "%p"',
        "recovery_target_timeline": "current",
        "recovery_target_action": "promote",
        # How soon a standby at the end of the staged WAL asks again (we watch for that ask).
        "wal_retrieve_retry_interval": "100ms",
    }
    if not has_pieces:
        settings["recovery_target"] = "immediate"
        return settings, f"no log: stops where the backup became consistent ({position.get('end_lsn')})"
    if stop.position and stop.position.get("lsn"):
        settings["recovery_target_lsn"] = stop.position["lsn"]
        settings["recovery_target_inclusive"] = "on"
        return settings, f"replaying WAL to lsn {stop.position['lsn']} (inclusive)"
    if stop.time is not None:
        target = stop.time.astimezone(UTC)
        settings["recovery_target_time"] = target.isoformat()
        settings["recovery_target_inclusive"] = "on"
        return settings, f"replaying WAL to {walfiles.iso_z(target)} (inclusive)"
    return settings, "replaying all the WAL in the plan"


def _start(pg_ctl: str, data_dir: Path, feeder: _Feeder) -> None:
    """``pg_ctl start -w``: returns once the cluster accepts connections (consistent), fails if it dies."""
    argv = _as_server_user(
        [pg_ctl, "-D", str(data_dir), "-l", str(data_dir / SERVER_LOG), "-w", "-t", str(int(START_TIMEOUT_S)), "start"]
    )
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = StderrTail(proc.stdout)
    while proc.poll() is None:
        if feeder.error is not None:
            raise feeder.error
        time.sleep(0.05)
    if proc.returncode != 0:
        raise _ServerStopped(f"pg_ctl could not start the recovered cluster in {data_dir}: {last_line(out.text())}")


def _connect(engine: PostgresEngine) -> psycopg.Connection:
    return psycopg.connect(**engine._connect_kwargs(engine.config.database), autocommit=True)


def _exhausted(requests: list[str], last: str, padded: bool) -> bool:
    """True once the server asked for WAL past the plan: a segment after the last one it holds,
    or the padded last segment a second time (its zeros are the end of the WAL)."""
    timeline = last[:8]
    beyond = any(len(r) == 24 and r[:8] == timeline and r > last for r in requests)
    return beyond or (padded and requests.count(last) >= 2)


def _conf_quote(value: str) -> str:
    """A value inside single quotes in postgresql.conf: quotes doubled, backslashes escaped."""
    return value.replace("\\", "\\\\").replace("'", "''")


class _Conf:
    """Our block at the end of ``postgresql.auto.conf`` (the backup's own settings stay before it)."""

    def __init__(self, path: Path, ids) -> None:
        self.path, self.ids = path, ids
        self.original = path.read_text() if path.exists() else ""

    def write(self, settings: dict[str, str]) -> None:
        block = "".join(f"{key} = '{_conf_quote(value)}'\n" for key, value in settings.items())
        self.path.write_text(self.original + "\n# genesis-dr point-in-time restore\n" + block)
        _own(self.path, self.ids)


@dataclass
class _Server:
    engine: PostgresEngine
    pg_ctl: str
    data_dir: Path
    feeder: _Feeder
    conf: _Conf
    settings: dict[str, str]


TARGET_SETTINGS = ("recovery_target_time", "recovery_target_lsn", "recovery_target_inclusive")


def _wait_promoted(server: _Server, position: dict, last: str | None, padded: bool, say: Any) -> RecoveryPoint:
    """Wait until the server promoted itself (target reached), or promote it once it replayed
    every planned segment without reaching the target. PostgreSQL refuses to end a recovery
    whose target was not reached, even when asked to promote: then the server is restarted
    without the target (a fast stop leaves a restartpoint, so it replays little again) and
    promoted once it has replayed the plan's WAL again."""
    engine, data_dir, feeder = server.engine, server.data_dir, server.feeder
    deadline = time.monotonic() + START_TIMEOUT_S
    promoted_by_us = False
    replayed: str | None = None
    while True:
        if feeder.error is not None:
            raise feeder.error
        if not (data_dir / "postmaster.pid").exists():
            raise _ServerStopped(f"the recovered cluster in {data_dir} stopped during recovery")
        try:
            with _connect(engine) as conn:
                in_recovery, now_replayed = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"
                ).fetchone()
                if not in_recovery:
                    lsn, replayed_at = conn.execute(
                        "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
                    ).fetchone()
                    break
                # Replay must stand still too: the ask for more WAL comes after the last record.
                if last is not None and _exhausted(feeder.requests(), last, padded) and now_replayed == replayed:
                    if any(key in server.settings for key in TARGET_SETTINGS):
                        conn.close()
                        _restart_without_target(server, say)
                        replayed = None
                        continue
                    try:
                        conn.execute("SELECT pg_promote(true, 60)")
                        promoted_by_us = True
                    except psycopg.errors.ObjectNotInPrerequisiteState:
                        pass  # it reached the target and promoted itself meanwhile
                    continue
                replayed = now_replayed
        except psycopg.OperationalError as exc:
            text = str(exc).lower()
            if not any(m in text for m in ("starting up", "recovery", "connection refused", "shutting down")):
                raise engine._unavailable(exc, engine.config.database) from None
        if time.monotonic() > deadline:
            raise EngineError(f"the recovered cluster in {data_dir} was not promoted within {START_TIMEOUT_S:.0f}s")
        time.sleep(0.2)
    log = _read_log(data_dir)
    stopped = re.findall(r"recovery stopping before (?:commit|abort) of transaction (\d+), time ([^\n]+)", log)
    timeline = int(position.get("timeline") or 1)
    if replayed_at is not None:
        when = walfiles.iso_z(replayed_at)
        proof = f"pg_last_xact_replay_timestamp() {when} (commit time of the last transaction replayed)"
    else:
        when = position.get("end_time")
        proof = f"no transaction replayed after the backup; its end {when}"
    if stopped and not promoted_by_us:
        xid, at = stopped[-1]
        proof += f"; recovery stopped before transaction {xid} committed at {at.strip()}, the first after the target"
    elif last is None:
        proof += f"; stopped where the backup became consistent ({position.get('end_lsn')})"
    else:
        proof += (
            f"; every planned WAL segment replayed through {lsn}: the WAL the vault holds has no commit after the "
            "target"
        )
    return RecoveryPoint(position={"lsn": lsn, "timeline": timeline}, time=when, proof=proof)


def _restart_without_target(server: _Server, say: Any) -> None:
    say("the planned WAL holds no commit after the target: restarting the cluster without it to promote it")
    subprocess.run(
        _as_server_user([server.pg_ctl, "-D", str(server.data_dir), "-m", "fast", "-w", "stop"]),
        capture_output=True,
        check=False,
    )
    for key in TARGET_SETTINGS:
        server.settings.pop(key, None)
    server.conf.write(server.settings)
    asks = server.feeder.staging / "requested"
    asks.write_text("")  # the asks from here on tell the end of the replay again
    _own(asks, server.feeder.ids)
    _start(server.pg_ctl, server.data_dir, server.feeder)


def _finish(engine: PostgresEngine) -> None:
    """Forget the recovery settings: the staging window is removed, and a restart must not look for it.
    (No reload: the server is out of recovery, and most of them only change at a restart.)"""
    with _connect(engine) as conn:
        for name in RECOVERY_SETTINGS:
            conn.execute(f"ALTER SYSTEM RESET {name}")


def _stop_quietly(pg_ctl: str, data_dir: Path) -> None:
    if (data_dir / "postmaster.pid").exists():
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data_dir), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            check=False,
        )


def _read_log(data_dir: Path) -> str:
    try:
        return (data_dir / SERVER_LOG).read_text(errors="replace")
    except OSError:
        return ""


def _server_failure(data_dir: Path) -> str:
    """The server's last FATAL/PANIC line, if its recovery failed."""
    lines = [ln for ln in _read_log(data_dir).splitlines() if "FATAL:" in ln or "PANIC:" in ln]
    return lines[-1].split(":", 3)[-1].strip() if lines else ""


def _recovery_error(engine: PostgresEngine, detail: str, position: dict) -> DRError:
    detail = redact(detail, engine.config.secrets())
    if "before consistent recovery point" in detail:
        return RecoveryTargetError(
            f"{engine.config.name}: the target time is inside the physical full's own copy window ({detail}); "
            f"choose a time after {position.get('end_time')}"
        )
    if "recovery ended before configured recovery target" in detail:
        return RecoveryTargetError(
            f"{engine.config.name}: the WAL in the plan ends before the target ({detail}); choose an earlier time"
        )
    return EngineError(f"recovery of {engine.describe()} failed: {detail}; the data directory was removed")
