"""Running the sources' command-line tools: finding them, their versions, one process with its
errors drained and killed on failure (``Tool``), and several at once (``ToolGroup``).

Every engine drives external tools (``pg_dump``, ``mariadb-dump``, ``mariadb``,
...) the same way: a tool's stderr is drained in the background so it never
blocks on a full pipe, and only its tail is kept for the error message; tools
that work together (parallel dumps of one snapshot, parallel loads) stop
together, because a damaged stream or a failed tool must never leave the rest
running.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable

from core.errors import EngineError

STDERR_KEEP = 1 << 16  # bytes of a tool's stderr kept for its error message


def last_line(text: str) -> str:
    """The last non-blank line of ``text`` (a tool's or a driver's message), stripped."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class StderrTail(threading.Thread):
    """Drains a tool's stderr in the background, keeping its last ``limit`` bytes."""

    def __init__(self, pipe, limit: int = STDERR_KEEP) -> None:
        super().__init__(daemon=True)
        self._pipe, self._limit, self._buf = pipe, limit, bytearray()
        self.start()

    def run(self) -> None:
        while chunk := self._pipe.read1(8192) if hasattr(self._pipe, "read1") else self._pipe.read(8192):
            self._buf += chunk
            if len(self._buf) > self._limit:
                del self._buf[: len(self._buf) - self._limit]

    def text(self) -> str:
        self.join()
        return self._buf.decode("utf-8", "replace")


class Stopped(Exception):
    """A task stopped because another one failed (the other one's error is the one raised)."""


class ToolGroup:
    """Runs tasks that drive tools, ``workers`` at a time; the first failure kills every tool.

    A task registers each process it starts with ``started``; once a task has
    failed, ``stopped`` is true, processes registered later are killed at once,
    and a task that notices the stop may raise ``Stopped`` to end quietly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen] = []
        self._errors: list[BaseException] = []
        self.stopped = False

    def started(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.append(proc)
            if self.stopped:
                proc.kill()

    def kill_all(self) -> None:
        with self._lock:
            self.stopped = True
            for proc in self._procs:
                if proc.poll() is None:
                    proc.kill()

    def run(self, tasks: list[Callable[[], None]], workers: int) -> None:
        """Run ``tasks`` in order, ``workers`` at a time; raise the first failure."""
        queue = list(reversed(tasks))

        def worker() -> None:
            while True:
                with self._lock:
                    if not queue or self.stopped:
                        return
                    task = queue.pop()
                try:
                    task()
                except Stopped:
                    return
                except BaseException as exc:
                    with self._lock:
                        self._errors.append(exc)
                    self.kill_all()
                    return

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(workers, len(tasks)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._errors:
            raise self._errors[0]  # the cause; the others were stopped because of it


# -- finding and running one tool -------------------------------------------------------------


def find_tool(*names: str, candidates: list[str] | None = None, remedy: str) -> str:
    """The first executable of ``candidates`` (explicit paths, tried first), then of ``names`` on
    PATH; EngineError naming every name and the ``remedy`` when none is there."""
    import os
    import shutil

    for path in candidates or []:
        if os.access(path, os.X_OK):
            return path
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise EngineError(f"none of {', '.join(names)} found; {remedy}")


def version_output(path: str) -> str:
    """What ``path --version`` prints (stdout, else stderr), stripped: the tool's own version line."""
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return (proc.stdout or proc.stderr).strip()


class Tool:
    """One external process: stderr drained into a tail, killed if the ``with`` block raises, and
    its exit checked by ``wait`` with the tool's last stderr line in the error.

    ``with Tool([...], env=..., stdout=subprocess.PIPE) as tool: ...; tool.wait("pg_receivewal")``
    """

    def __init__(
        self, argv: list[str], *, secrets: list[str] | None = None, group: ToolGroup | None = None, **popen
    ) -> None:
        popen.setdefault("stdin", subprocess.DEVNULL)
        self.argv, self._secrets = argv, secrets or []
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, **popen)
        self.stderr = StderrTail(self.proc.stderr)
        if group is not None:
            group.started(self.proc)

    def __enter__(self) -> Tool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.proc.poll() is None:
            self.proc.kill()
        if exc_type is not None:
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def wait(self, what: str, remedy: str = "see the tool's message") -> int:
        """Wait for the exit; EngineError '<what> failed (exit N): <last stderr line>; <remedy>' if not 0."""
        code = self.proc.wait()
        if code != 0:
            line = last_line(self.stderr.text())
            for secret in self._secrets:
                if secret:
                    line = line.replace(secret, "***")
            raise EngineError(f"{what} failed (exit {code}): {line or 'no message'}; {remedy}")
        return code

    def stop(self, timeout: float = 10.0) -> int:
        """Ask the process to end (SIGTERM), then kill it after ``timeout``; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def stream_into(sink, name: str, argv: list[str], *, env: dict | None = None, started=None) -> tuple[int, str]:
    """Run ``argv`` and copy its stdout into stream ``name`` of ``sink`` (a dump tool's output into the
    vault); the tool is killed if the copy fails. Returns its exit code and stderr tail, for the
    caller's own error message."""
    with Tool(argv, stdout=subprocess.PIPE, env=env) as tool:
        if started is not None:
            started(tool.proc)
        sink.write_stream(name, tool.proc.stdout)
        code = tool.proc.wait()
    return code, tool.stderr.text()
