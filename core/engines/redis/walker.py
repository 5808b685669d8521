"""The RDB walk in a child process, fed through a pipe.

Walking a snapshot costs several microseconds of Python per key; on the
thread that reads the socket it held a backup to the walker's speed, and the
GIL would serialize it with the vault's compression and encryption in any
thread. A child process walks on another core while the parent streams the
bytes to the vault at the network's pace.

The parent writes the stream to the child's stdin (``Walker.write``) and
closes it; the child answers one JSON object on stdout: the ``redis-checks/3``
checks (or, with ``encoded``, digests of the values' encodings), what it
learned about the file (``rdb`` mode) and the keys whose expiry is at or
before ``notes_before_ms`` (for restore notes). ``records``
mode reads a logical backup stream (``redis_logical``) instead of an RDB.

Run as ``python -m core.engines.redis.walker MODE PARAMS_JSON``.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO

from core.engines.redis.checks import KeyspaceChecks, key_entry
from core.engines.redis.rdb_scan import ALGORITHM, RdbScanner, dump_encoded_part, dump_part
from core.errors import EngineError, IntegrityError

READ_SIZE = 1 << 20
# The pipe's capacity: the parent runs ahead of the child by about this much.
PIPE_SIZE = 1 << 20
# Expired keys reported by name; the rest are counted (the restore notes name 50).
NOTE_KEYS = 50
_F_SETPIPE_SZ = 1031


class _Expired:
    """The first ``NOTE_KEYS`` expired keys in (db, key) order, and how many there were."""

    def __init__(self, before_ms: int | None) -> None:
        self.before_ms = before_ms
        self.keys: list[tuple[int, bytes, int]] = []
        self.count = 0

    def add(self, db: int, key: bytes, expire_ms: int | None) -> None:
        if self.before_ms is None or expire_ms is None or expire_ms > self.before_ms:
            return
        self.count += 1
        self.keys.append((db, key, expire_ms))
        if len(self.keys) > 20 * NOTE_KEYS:
            self.keys = sorted(self.keys)[:NOTE_KEYS]

    def to_json(self) -> dict[str, Any]:
        keys = sorted(self.keys)[:NOTE_KEYS]
        return {
            "expired": [[db, base64.b64encode(key).decode(), at] for db, key, at in keys],
            "expired_count": self.count,
        }


def _walk(mode: str, params: dict[str, Any], stream: BinaryIO) -> dict[str, Any]:
    checks = KeyspaceChecks(int(params["now_ms"]), ALGORITHM)
    expired = _Expired(params.get("notes_before_ms"))
    encoded = bool(params.get("encoded"))

    def on_key(db: int, key: bytes, type_name: str, expire_ms: int | None, part: bytes) -> None:
        checks.add(db, key, type_name, expire_ms, part)
        if expire_ms is not None:
            expired.add(db, key, expire_ms)

    out: dict[str, Any] = {}

    def read() -> bytes:
        return stream.read1(READ_SIZE)

    if mode == "rdb":
        scanner = RdbScanner(checks, expired.add, encoded=encoded)
        info = scanner.run(read)
        trailing = len(scanner.rest)
        while True:
            more = read()
            if not more:
                break
            trailing += len(more)
        out.update(
            version=info.version,
            keys=info.keys,
            databases=sorted(info.databases),
            consumed=scanner.consumed,
            trailing=trailing,
        )
    elif mode == "records":
        from core.engines.redis.logical import scan_records

        digest = dump_encoded_part if encoded else dump_part
        batches: dict[int, list[bytes]] = {}
        keys = 0
        for db, key, expire_at, payload in scan_records(read):
            type_name, part = digest(payload)
            keys += 1
            if expire_at < 0:  # keys without a TTL are hashed in batches, as in rdb mode
                batch = batches.setdefault(db, [])
                batch.append(key_entry(key, type_name, part))
                if len(batch) >= 10_000:
                    checks.add_persistent(db, batch)
                    batch.clear()
            else:
                on_key(db, key, type_name, expire_at, part)
        for db, batch in batches.items():
            if batch:
                checks.add_persistent(db, batch)
        out["keys"] = keys
    else:
        raise EngineError(f"unknown walker mode {mode!r}")
    out["checks"] = checks.to_dict()
    out.update(expired.to_json())
    return out


def main(argv: list[str]) -> int:
    mode, params = argv[0], json.loads(argv[1])
    stdin = io.BufferedReader(io.FileIO(0, "rb", closefd=False), buffer_size=READ_SIZE)
    try:
        out = _walk(mode, params, stdin)
    except (EngineError, IntegrityError) as exc:
        out = {"error": str(exc), "kind": type(exc).__name__}
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    return 0


class Walker:
    """The parent's side: a child walking what ``write`` hands it.

    ``label`` names the server in errors. Always ``close`` (or use ``with``).
    """

    def __init__(
        self, mode: str, label: str, now_ms: int, notes_before_ms: int | None = None, encoded: bool = False
    ) -> None:
        """``encoded``: digests of the values' encodings where those are canonical
        (``rdb_scan.RAW_TYPES``), for comparing two copies of the same data cheaply."""
        self.label = label
        params = {"now_ms": now_ms, "notes_before_ms": notes_before_ms, "encoded": encoded}
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "core.engines.redis.walker", mode, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=root,
        )
        try:
            fcntl.fcntl(self.proc.stdin.fileno(), _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only means more context switches
        self._fd = self.proc.stdin.fileno()
        self.written = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                sent = os.write(self._fd, view)
                view = view[sent:]
        except BrokenPipeError:
            self.result()  # the child stopped early: its own error says why
            raise EngineError(f"{self.label}: the RDB walker stopped reading") from None
        self.written += len(data)

    def result(self) -> dict[str, Any]:
        """Close the input and return the child's answer; raises what the child found wrong."""
        # communicate() closes stdin and reads stdout and stderr together: a child
        # writing a long traceback cannot block on a full stderr pipe while we wait.
        stdout, stderr = self.proc.communicate()
        code = self.proc.returncode
        try:
            out = json.loads(stdout) if code == 0 else None
        except ValueError:
            out = None
        if out is None:
            tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {code}"]
            raise EngineError(f"{self.label}: the RDB walker failed ({tail[0][:200]})")
        if "error" in out:
            cls = IntegrityError if out.get("kind") == "IntegrityError" else EngineError
            raise cls(f"{self.label}: {out['error']}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> Walker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def expired_keys(out: dict[str, Any]) -> list[tuple[int, bytes, int]]:
    """The expired keys of a walker's answer as (db, key, expire_ms)."""
    return [(db, base64.b64decode(key), at) for db, key, at in out.get("expired", [])]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
