"""The engines' own tools run on a backup's plaintext, streamed to them (integrity level).

``verify_streams(reader)`` dispatches on the backup's kind to
``core.engines.<kind>.verify.verify_backup(reader)``: PostgreSQL dumps through
``pg_restore``, physical bases against their own ``backup_manifest``, RDB files
through ``redis-check-rdb``, MariaDB/MySQL dumps through our SQL scanner, tars
through our tar reader, bucket data against its index. Each stream is read
from the vault piece by piece and fed to the tool as it is decrypted, so a
backup of any size costs the memory of a few chunks; reading a stream to its
end also has the vault check its plaintext SHA-256.

The helpers below are what the kinds' ``verify.py`` modules share: a tool run
on one stream (``pipe_stream``), the failed-check lines for a missing binary
and a failed tool, and ``guarded``, which turns any error of one stream's
check into a failed ``CheckResult`` so one damaged stream never hides the
checks of the others.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import import_module

from core.engines.tools import StderrTail, last_line
from core.errors import DRError, EngineError
from core.validation.results import CheckResult, not_checked

# The Debian package that ships each tool, for the remedy of a missing binary.
PACKAGES = {
    "pg_restore": "postgresql-client",
    "redis-check-rdb": "redis-tools",
    "pg_waldump": "postgresql-client",
    "mariadb-binlog": "mariadb-client",
}
OUTPUT_KEEP = 1 << 20  # bytes of a tool's stdout kept when the caller wants it (a TOC listing)


class ToolFailed(Exception):
    """A tool ran and refused the stream: ``detail`` is its one-line reason."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ToolMissing(Exception):
    """The tool's binary is not installed."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(message)
        self.tool, self.message = tool, message


class Unreadable(Exception):
    """The vault could not give the stream (a chunk failed authentication, an object is missing):
    kept apart from the parsers' own errors, so a damaged vault object is never blamed on the content."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def unreadable(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """``pieces``, with the vault's errors raised as Unreadable."""
    it = iter(pieces)
    while True:
        try:
            piece = next(it)
        except StopIteration:
            return
        except DRError as exc:
            raise Unreadable(exc) from None
        yield piece


class VaultSource:
    """A BackupReader seen through ``unreadable``: for the engines' parsers that take a StreamSource."""

    def __init__(self, reader) -> None:
        self._reader = reader
        self.manifest = reader.manifest
        self.result = reader.result

    def stream_names(self) -> list[str]:
        return self._reader.stream_names()

    def iter_stream(self, name: str) -> Iterator[bytes]:
        return unreadable(self._reader.iter_stream(name))


def find(tool: str, finder: Callable[[], str]) -> str:
    """``finder()`` (the engine's own way of finding ``tool``), as ToolMissing when it is absent."""
    try:
        return finder()
    except EngineError as exc:
        raise ToolMissing(tool, str(exc)) from None


def missing_remedy(tool: str) -> str:
    package = PACKAGES.get(tool)
    return f"install {tool} (Debian package {package})" if package else f"install {tool}"


def pipe_stream(
    argv: list[str],
    pieces: Iterable[bytes],
    *,
    env: dict[str, str] | None = None,
    keep_output: bool = False,
    check: bool = True,
) -> tuple[int, str, bytes]:
    """Run ``argv`` with ``pieces`` written to its stdin as they come (never gathered); returns
    (exit code, stderr+stdout tail, stdout kept up to OUTPUT_KEEP when ``keep_output``).

    A tool may stop reading early (``pg_restore --list`` reads only the TOC): the rest of
    the stream is then left unread. An error reading the stream (a chunk that fails
    authentication) kills the tool and is raised, so it is reported as the vault's, not
    the tool's. With ``check``, a non-zero exit raises ToolFailed with the tool's last line.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stderr = StderrTail(proc.stderr)
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            for piece in pieces:
                proc.stdin.write(piece)
        except BrokenPipeError:
            pass  # the tool stopped reading: its exit says whether that was fine
        except BaseException as exc:
            failure.append(exc)
            proc.kill()
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    kept = bytearray()
    try:
        while chunk := proc.stdout.read1(1 << 16):
            if keep_output and len(kept) < OUTPUT_KEEP:
                kept += chunk[: OUTPUT_KEEP - len(kept)]
            elif not keep_output:
                kept[:] = (bytes(kept) + chunk)[-4096:]  # the last lines: some tools report on stdout
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        feeder.join()
        code = proc.wait()
    if failure:
        raise failure[0]
    text = stderr.text()
    tail = last_line(text) or last_line(bytes(kept[-4096:]).decode("utf-8", "replace"))
    if check and code != 0:
        raise ToolFailed(f"{argv[0].rsplit('/', 1)[-1]} exited {code}: {tail or 'no message'}")
    return code, tail, bytes(kept)


def guarded(
    name: str,
    stream: str,
    check: Callable[[], str],
    *,
    remedy: str = "the backup's content is damaged; restore from another backup and take a new one",
) -> CheckResult:
    """Run one stream's ``check`` (returns the passed detail) as a CheckResult named ``name``.

    Every way it can fail is one line naming the stream: the tool's refusal, the binary
    missing (and its package), or the stream unreadable from the vault.
    """
    started = time.monotonic()

    def result(passed: bool, detail: str, fix: str = "") -> CheckResult:
        return CheckResult(name=name, passed=passed, detail=detail, remedy=fix, seconds=time.monotonic() - started)

    try:
        return result(True, f"{stream}: {check()}")
    except ToolMissing as exc:
        return result(
            False, f"{stream}: {exc.tool} is not installed ({last_line(exc.message)})", missing_remedy(exc.tool)
        )
    except ToolFailed as exc:
        return result(False, f"{stream}: {exc.detail}", remedy)
    except (Unreadable, DRError) as exc:  # reading the vault: a chunk that fails authentication, a missing object
        return result(
            False,
            f"{stream}: cannot be read from the vault: {last_line(str(exc))}",
            "see the integrity check of the object at fault; restore from another backup",
        )


def verify_streams(reader) -> list[CheckResult]:
    """The tool checks of one opened backup (a ``BackupReader``); see the module docstring.

    Never raises for damaged content: every problem is a failed CheckResult naming the tool
    and the stream. A kind without a ``verify`` module gives a not-checked line.
    """
    manifest = reader.manifest
    kind, source, backup_id = manifest.kind, manifest.source, manifest.id
    try:
        module = import_module(f"core.engines.{kind}.verify")
    except ModuleNotFoundError:
        return [not_checked("tool checks", f"no tool checks for {kind} backups", source=source, backup_id=backup_id)]
    if not reader.stream_names():
        return [
            not_checked(
                "tool checks",
                "no streams: a backup on a base holds only a log range (checked with the log pieces)",
                source=source,
                backup_id=backup_id,
            )
        ]
    started = time.monotonic()
    try:
        results = list(module.verify_backup(VaultSource(reader)))
    except DRError as exc:
        results = [
            CheckResult(
                name="tool checks",
                passed=False,
                detail=last_line(str(exc)),
                remedy="the backup cannot be checked; restore from another backup",
                seconds=time.monotonic() - started,
            )
        ]
    for r in results:
        r.source = r.source or source
        r.backup_id = r.backup_id or backup_id
    return results


__all__ = [
    "verify_streams",
    "pipe_stream",
    "guarded",
    "find",
    "VaultSource",
    "Unreadable",
    "ToolFailed",
    "ToolMissing",
    "missing_remedy",
]
