"""Redis backups checked on their plaintext, streamed from the vault.

RDB (``dump.rdb``): ``redis-check-rdb``, the server's own checker (every
record, the trailing CRC64). It takes only a path, not stdin, so the stream is
written to a private temporary file (0600 in a 0700 directory, removed when the
check ends, whatever happens): the one place a tool check costs the stream's
size on disk.

Logical (``keys.bin``, ``functions.bin``): our own format, read with the
engine's own parser (``logical.scan_records``: the magic, every record's
framing, the trailer's count and nothing after it), and each ``DUMP`` payload
must end with the 10-byte footer ``RESTORE`` needs (RDB version, CRC64).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from core.engines.redis.engine import FUNCTIONS_STREAM, LOGICAL_STREAM, RDB_STREAM
from core.engines.redis.logical import scan_records
from core.engines.tools import find_tool
from core.errors import IntegrityError
from core.validation.results import CheckResult
from core.validation.tools import ToolFailed, find, guarded, pipe_stream

_FOOTER = 10  # a DUMP payload ends with its RDB version (2 bytes) and CRC64 (8 bytes)
_MAX_RDB_VERSION = 64  # far above any Redis so far (12 in 7.4); a larger one is damage, not news


def verify_backup(reader) -> list[CheckResult]:
    names = reader.stream_names()
    results = []
    if RDB_STREAM in names:
        results.append(guarded("redis-check-rdb", RDB_STREAM, lambda: _check_rdb(reader)))
    if LOGICAL_STREAM in names:
        results.append(guarded("keys.bin parse", LOGICAL_STREAM, lambda: _check_keys(reader)))
    if FUNCTIONS_STREAM in names:
        results.append(guarded("functions.bin parse", FUNCTIONS_STREAM, lambda: _check_functions(reader)))
    return results


def _check_rdb(reader) -> str:
    tool = find("redis-check-rdb", lambda: find_tool("redis-check-rdb", remedy="install redis-tools"))
    directory = tempfile.mkdtemp(prefix="gdr-check-rdb-")  # mode 0700: the plaintext is readable by us only
    try:
        path = os.path.join(directory, RDB_STREAM)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            for piece in reader.iter_stream(RDB_STREAM):
                out.write(piece)
        code, _, output = pipe_stream([tool, path], [], keep_output=True, check=False)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    lines = [ln.strip() for ln in output.decode("utf-8", "replace").splitlines() if ln.strip()]
    if code != 0 or not any("RDB looks OK" in ln for ln in lines):
        # redis-check-rdb reports on stdout: the line after its banner names the fault and the offset.
        banner = next((i for i, ln in enumerate(lines) if "RDB ERROR DETECTED" in ln), None)
        reason = lines[banner + 1] if banner is not None and banner + 1 < len(lines) else (lines[-1] if lines else "")
        raise ToolFailed(f"redis-check-rdb exited {code}: {reason.replace(path, RDB_STREAM) or 'no message'}")
    keys = next((ln.split("]", 1)[1].strip() for ln in lines if ln.endswith("keys read")), "")
    return f"RDB looks OK ({keys or 'keys read'}, checksum checked)"


def _check_keys(reader) -> str:
    pieces = iter(reader.iter_stream(LOGICAL_STREAM))
    count = 0
    try:
        for _db, _key, _expire, payload in scan_records(lambda: next(pieces, b"")):
            _payload_footer(payload, f"key record {count + 1}")
            count += 1
    except IntegrityError as exc:
        raise ToolFailed(str(exc).split(";")[0]) from None
    return f"{count} key records, the trailer's count matches"


def _check_functions(reader) -> str:
    data = b"".join(reader.iter_stream(FUNCTIONS_STREAM))  # FUNCTION DUMP of a few libraries: small
    _payload_footer(data, "the FUNCTION DUMP payload")
    return f"{len(data)} bytes, a complete DUMP payload"


def _payload_footer(payload: bytes, what: str) -> None:
    if len(payload) < _FOOTER + 1:
        raise ToolFailed(f"{what} is {len(payload)} bytes, shorter than a DUMP payload")
    version = int.from_bytes(payload[-_FOOTER : -_FOOTER + 2], "little")
    if not 1 <= version <= _MAX_RDB_VERSION:
        raise ToolFailed(f"{what} does not end with a DUMP footer (RDB version {version})")
