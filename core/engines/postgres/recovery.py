"""Point-in-time restore: a physical full into a new data directory, WAL replayed to a time.

1. ``base.tar`` is unpacked into ``data_dir`` (which must be new or empty: a
   recovered cluster never overwrites anything), as the ``postgres`` user when
   we run as root (the server refuses to run as root).
2. The log pieces are staged for the server in a bounded window,
   ``<data_dir>/genesis-dr-wal/``: a feeder thread writes the pieces in plan
   order (a partial piece padded with zeros to a whole segment, as the server
   reads only whole segments), at most ``GENESIS_DR_PG_WAL_WINDOW`` (default 4)
   segments ahead of the one the server last asked for, and removes those it
   has replayed. The ``restore_command`` is a small shell script there: for a
   file in the plan it waits until the feeder has staged it and copies it; any
   other name (a timeline history file, the segment after the plan) fails at
   once, which is the end of the WAL. The whole WAL history is never on disk.
3. ``recovery.signal`` with ``recovery_target_time`` = the stop time
   (inclusive), ``recovery_target_action = promote``; the settings go to
   ``postgresql.auto.conf`` with ``port``, ``listen_addresses`` (the config's
   host), no Unix socket and ``archive_mode = off`` (the copy must never
   archive into the source's archive). The cluster is started with ``pg_ctl``.
4. Once promoted, the recovery settings are reset (``ALTER SYSTEM RESET``), the
   staging window removed, and the recovery point read back.

The target time is given to the server only when the staged WAL holds a commit
after it (the pieces record their commit times): otherwise the server would
replay to the end of the WAL without "reaching" the target and refuse to
finish; with no commit after the target in the plan, replaying all of it is
exactly the state at the target. With no pieces the restore stops at the
backup's end (``recovery_target = 'immediate'``).

Proof: ``pg_last_xact_replay_timestamp()`` (the commit time of the last
transaction replayed) and the server's own "recovery stopping before commit of
transaction N, time T" line (the first commit after the target, not applied).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
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
d='{staging}'
grep -qx "$1" "$d/planned" || exit 1
echo "$1" >> "$d/requested"
while [ ! -e "$d/$1" ]; do
    # The server was stopped (the restore failed): never report a missing file as the end of the WAL.
    kill -0 "$(head -n 1 '{data_dir}/postmaster.pid' 2>/dev/null)" 2>/dev/null || exit 2
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


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


class _Feeder(threading.Thread):
    """Stages the plan's WAL in a bounded window ahead of what the server asks for."""

    def __init__(self, staging: Path, pieces: list[tuple[PieceInfo, Any]], seg_size: int, ids) -> None:
        super().__init__(name="pg-wal-feeder", daemon=True)
        self.staging, self.pieces, self.seg_size, self.ids = staging, pieces, seg_size, ids
        self.index = {info.name: i for i, (info, _) in enumerate(pieces)}
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.staged_bytes = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # handed to the restoring thread, which stops the server
            self.error = exc

    def _requested(self) -> int:
        try:
            names = (self.staging / "requested").read_text().split()
        except FileNotFoundError:
            return -1
        return max((self.index[n] for n in names if n in self.index), default=-1)

    def _run(self) -> None:
        staged: list[int] = []
        following = 0
        window = window_size()
        while not self.done.is_set():
            asked = self._requested()
            while following < len(self.pieces) and following <= asked + window:
                self._stage(following)
                staged.append(following)
                following += 1
            # Keep the one asked for and the one before (the server may read a record's start again).
            for i in [i for i in staged if i < asked - 1]:
                (self.staging / self.pieces[i][0].name).unlink(missing_ok=True)
                staged.remove(i)
            self.done.wait(0.05)

    def _stage(self, i: int) -> None:
        info, opener = self.pieces[i]
        final = self.staging / info.name
        tmp = self.staging / f".{info.name}.tmp"
        size = 0
        with opener() as data, open(tmp, "wb") as out:
            while block := data.read(1 << 20):
                out.write(block)
                size += len(block)
            if info.partial:
                out.truncate(self.seg_size)  # zeros after the last record: the end of this WAL
            elif size != self.seg_size:
                raise IntegrityError(
                    f"WAL piece {info.name} holds {size} bytes, not a whole segment ({self.seg_size}); the vault's "
                    "log is damaged - restore to an earlier time"
                )
        _own(tmp, self.ids)
        tmp.rename(final)  # the restore_command never sees a half-written file
        self.staged_bytes += size


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
    pieces = effective_pieces(pieces)
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
        (staging / "planned").write_text("".join(info.name + "\n" for info, _ in pieces))
        (staging / "fetch.sh").write_text(_FETCH_SCRIPT.format(staging=staging, data_dir=data_dir))
        for name in ("planned", "fetch.sh"):
            _own(staging / name, ids)
        settings, mode = _recovery_settings(engine, staging, position, pieces, stop)
        with open(data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write("\n# genesis-dr point-in-time restore\n")
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())
        (data_dir / "recovery.signal").touch()
        _own(data_dir / "recovery.signal", ids)
        feeder = _Feeder(staging, pieces, seg_size, ids)
        feeder.start()
        say(f"starting the recovered cluster on {c.host}:{c.port}: {mode}")
        step = time.monotonic()
        started = True
        _start(pg_ctl, data_dir, feeder)
        point = _wait_promoted(engine, data_dir, feeder, position, stop, mode)
        say(
            f"recovered cluster promoted in {time.monotonic() - step:.1f}s "
            f"({len(pieces)} WAL pieces staged, at most {window_size() + 2} on disk at once)"
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


def _recovery_settings(
    engine: PostgresEngine, staging: Path, position: dict, pieces: list[tuple[PieceInfo, Any]], stop: StopPoint
) -> tuple[dict[str, str], str]:
    c = engine.config
    settings = {
        "port": str(c.port),
        "listen_addresses": c.host,
        "unix_socket_directories": "",
        "archive_mode": "off",
        "hot_standby": "on",
        "restore_command": f'sh "{staging}/fetch.sh" "%f" "%p"',
        "recovery_target_timeline": "current",
        "recovery_target_action": "promote",
    }
    if not pieces:
        settings["recovery_target"] = "immediate"
        return settings, f"no log: stops where the backup became consistent ({position.get('end_lsn')})"
    if stop.position and stop.position.get("lsn"):
        settings["recovery_target_lsn"] = stop.position["lsn"]
        settings["recovery_target_inclusive"] = "on"
        return settings, f"replaying WAL to lsn {stop.position['lsn']} (inclusive)"
    if stop.time is not None:
        target = stop.time.astimezone(UTC)
        later = [
            info for info, _ in pieces if int(info.extra.get("commits", 0)) > 0 and _parse_time(info.last_time) > target
        ]
        if later:
            settings["recovery_target_time"] = target.isoformat()
            settings["recovery_target_inclusive"] = "on"
            return settings, f"replaying WAL to {walfiles.iso_z(target)} (inclusive)"
        return settings, (
            f"replaying all {len(pieces)} WAL pieces: none holds a commit after {walfiles.iso_z(target)}, so their "
            "end is the state at the target"
        )
    return settings, f"replaying all {len(pieces)} WAL pieces"


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


def _wait_promoted(
    engine: PostgresEngine, data_dir: Path, feeder: _Feeder, position: dict, stop: StopPoint, mode: str
) -> RecoveryPoint:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if feeder.error is not None:
            raise feeder.error
        if not (data_dir / "postmaster.pid").exists():
            raise _ServerStopped(f"the recovered cluster in {data_dir} stopped during recovery")
        try:
            with _connect(engine) as conn:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                if not in_recovery:
                    lsn, replayed_at = conn.execute(
                        "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
                    ).fetchone()
                    break
        except psycopg.OperationalError as exc:
            text = str(exc).lower()
            if "starting up" not in text and "recovery" not in text and "connection refused" not in text:
                raise engine._unavailable(exc, engine.config.database) from None
        if time.monotonic() > deadline:
            raise EngineError(f"the recovered cluster in {data_dir} was not promoted within {START_TIMEOUT_S:.0f}s")
        time.sleep(0.1)
    log = _read_log(data_dir)
    stopped = re.findall(r"recovery stopping before (?:commit|abort) of transaction (\d+), time ([^\n]+)", log)
    timeline = int(position.get("timeline") or 1)
    if replayed_at is not None:
        when = walfiles.iso_z(replayed_at)
        proof = f"pg_last_xact_replay_timestamp() {when} (commit time of the last transaction replayed)"
    else:
        when = position.get("end_time")
        proof = f"no transaction replayed after the backup; its end {when}"
    if stopped:
        xid, at = stopped[-1]
        proof += f"; recovery stopped before transaction {xid} committed at {at.strip()}, the first after the target"
    elif "recovery_target = 'immediate'" in mode or mode.startswith("no log"):
        proof += f"; stopped where the backup became consistent ({position.get('end_lsn')})"
    else:
        proof += "; every staged WAL piece replayed (none holds a commit after the target)"
    return RecoveryPoint(position={"lsn": lsn, "timeline": timeline}, time=when, proof=proof)


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
