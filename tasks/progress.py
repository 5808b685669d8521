"""Progress of a long operation (a backup, a restore) while its bytes move.

Core tells ``Progress.on_bytes(done, total)`` after each chunk, from the vault's threads; that only
records the two figures. A ticker thread of the operation does everything slow:

- the Prefect UI: one progress artifact per operation (key ``progress-<source>-<op>``), created
  once the backup has its id and updated at most every ``PUBLISH_S`` seconds, then set to 100 when
  the operation ends (a failed one keeps where it stopped, and its description says so);
- the terminal: when stdout and stderr are both a terminal (an operator at ``genesis-dr backup``),
  one line on stderr, redrawn in place with ``\\r``, shows every operation of the process that is
  moving bytes (several sources back up at once): source, percent (or bytes when the total is
  unknown), rate and time left; it is cleared when the last one ends. A worker's log, CI or a pipe
  gets no bar: the run log's one line per event says the same.

Log records printed to the same terminal first clear the bar (a filter on the console handlers),
so a log line never lands in the middle of it; the next tick draws it again below.
"""

from __future__ import annotations

import contextvars
import logging
import re
import shutil
import sys
import threading
import time
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from prefect.exceptions import MissingContextError

from core.units import human_bytes

PUBLISH_S = 2.0  # the UI's artifact: at most one update per operation this often
DRAW_S = 0.5  # the terminal line
BAR_WIDTH = 20
CLEAR = "\r\x1b[K"


def artifact_key(source: str, operation: str) -> str:
    """``progress-<source>-<operation>`` in the lowercase letters, digits and dashes an artifact key allows."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{source}-{operation}".lower()).strip("-")
    return f"progress-{slug}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """One operation's progress: ``with Progress(source, "full-backup", "full backup") as p:`` then hand
    ``p.on_bytes`` (and, for a backup, ``p.on_begin``) to core."""

    def __init__(self, source: str, operation: str, what: str, *, subject: str | None = None) -> None:
        self.source, self.operation, self.what = source, operation, what
        self.subject = subject  # the backup id (a restore knows it; a backup learns it in on_begin)
        self.key = artifact_key(source, operation)
        self.done, self.total = 0, None
        self.started = time.monotonic()
        self.ended: float | None = None
        self._artifact: UUID | None = None
        self._published: tuple | None = None
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._in_run = _in_run()

    # -- told by core, from any thread: record only ---------------------------------------------

    def on_begin(self, subject: str, total: int | None) -> None:
        self.subject, self.total = subject, total

    def on_bytes(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total

    # -- figures --------------------------------------------------------------------------------

    def percent(self) -> float | None:
        if self.ended is not None:
            return 100.0
        if not self.total:
            return None
        # An estimate may be short of the real size: never show 100 % before the operation ended.
        return min(99.0, 100.0 * self.done / self.total)

    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def rate(self) -> float:
        return self.done / max(self.seconds(), 1e-3)

    def description(self) -> str:
        subject = f" {self.subject}" if self.subject else ""
        return f"{self.source}: {self.what}{subject}"

    def segment(self, *, bar: bool) -> str:
        """This operation on the terminal line: ``app-db full [####......] 45% 120 MiB/s ETA 0:12``."""
        percent = self.percent()
        parts = [f"{self.source} {self.operation.replace('-', ' ')}"]
        if percent is not None:
            if bar:
                filled = int(BAR_WIDTH * percent / 100)
                parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
            parts.append(f"{percent:3.0f}%")
        if self.ended is not None:
            parts.append(f"{human_bytes(self.done)} in {self.seconds():.1f}s")
            return " ".join(parts)
        parts.append(
            human_bytes(self.done) if percent is None else f"{human_bytes(self.done)}/{human_bytes(self.total)}"
        )
        rate = self.rate()
        parts.append(f"{human_bytes(int(rate))}/s")
        if percent is not None and rate > 0 and self.total > self.done:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return " ".join(parts)

    # -- the operation's lifetime ---------------------------------------------------------------

    def __enter__(self) -> Progress:
        _TERMINAL.add(self)
        # The ticker publishes from the task run's context, so the artifact belongs to that run.
        context = contextvars.copy_context()
        self._ticker = threading.Thread(
            target=context.run, args=(self._tick,), name=f"progress-{self.key[9:40]}", daemon=True
        )
        self._ticker.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        ok = exc_type is None
        if ok:
            self.ended = time.monotonic()
        _TERMINAL.remove(self, drawn_final=ok)
        self._publish(final=True, failed=None if ok else exc)

    def _tick(self) -> None:
        last_publish = 0.0
        while not self._stop.wait(DRAW_S):
            _TERMINAL.draw()
            now = time.monotonic()
            if now - last_publish >= PUBLISH_S and self.subject is not None:
                last_publish = now
                self._publish()

    def _publish(self, *, final: bool = False, failed: BaseException | None = None) -> None:
        """Create or update the artifact (only inside a flow or task run: a plain call has no UI)."""
        if not self._in_run:
            return
        if failed is not None:
            described = f"{self.description()}: failed after {human_bytes(self.done)} in {self.seconds():.0f}s"
            value = self.percent() or 0.0
        elif final:
            described = f"{self.description()}: {human_bytes(self.done)} in {self.seconds():.1f}s"
            value = 100.0
        else:
            described, value = self.description(), self.percent() or 0.0
        with self._publish_lock:
            if (value, described) == self._published:
                return
            try:
                if self._artifact is None:
                    self._artifact = create_progress_artifact(value, key=self.key, description=described)
                else:
                    update_progress_artifact(self._artifact, value, description=described)
            except Exception as exc:  # a display: an API hiccup must never fail the backup it shows
                if self._published != ("failed", None):
                    _logger().warning(
                        "%s: progress artifact %s not updated: %s: %s", self.source, self.key, type(exc).__name__, exc
                    )
                self._published = ("failed", None)
                return
            self._published = (value, described)


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _in_run() -> bool:
    try:
        get_run_context()
    except MissingContextError:
        return False
    return True


class _Terminal:
    """The one progress line of this process on stderr, shared by every operation moving bytes."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._active: list[Progress] = []
        self._shown = False
        self._hooked = False
        self._drawn_at = 0.0

    @staticmethod
    def enabled() -> bool:
        try:
            return sys.stdout.isatty() and sys.stderr.isatty()
        except (AttributeError, ValueError):  # replaced or closed streams: no terminal to draw on
            return False

    def add(self, progress: Progress) -> None:
        with self._lock:
            self._active.append(progress)
            if self.enabled() and not self._hooked:
                self._hooked = True
                _clear_before_logs(self)

    def remove(self, progress: Progress, *, drawn_final: bool) -> None:
        with self._lock:
            if drawn_final:
                self.draw(force=True)  # the finished operation at 100 %, once, before it leaves the line
            if progress in self._active:
                self._active.remove(progress)
            if self._active:
                self.draw(force=True)
            else:
                self.clear()

    def draw(self, *, force: bool = False) -> None:
        if not self.enabled():
            return
        with self._lock:
            if not self._active:
                return
            now = time.monotonic()
            if not force and now - self._drawn_at < DRAW_S / 2:
                return  # every operation's ticker asks; the shared line is drawn once per tick
            self._drawn_at = now
            single = len(self._active) == 1
            line = " | ".join(p.segment(bar=single) for p in self._active)
            width = shutil.get_terminal_size((100, 24)).columns - 1
            if len(line) > width:
                line = line[: max(width - 3, 0)] + "..."
            self._write(CLEAR + line)
            self._shown = True

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self._write(CLEAR)
                self._shown = False

    @staticmethod
    def _write(text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):  # the terminal went away: the run goes on without its bar
            pass


_TERMINAL = _Terminal()


class _ClearBar(logging.Filter):
    """Clears the progress line before a log record is printed to the terminal (the next tick redraws it)."""

    def __init__(self, terminal: _Terminal) -> None:
        super().__init__()
        self._terminal = terminal

    def filter(self, record: logging.LogRecord) -> bool:
        self._terminal.clear()
        return True


def _clear_before_logs(terminal: _Terminal) -> None:
    """Hook every handler that prints to the terminal (Prefect's console handler, the root's)."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if stream in (sys.stderr, sys.stdout) and not any(isinstance(f, _ClearBar) for f in handler.filters):
                handler.addFilter(_ClearBar(terminal))
