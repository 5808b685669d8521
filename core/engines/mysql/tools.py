"""Running the MariaDB/MySQL command-line tools several at a time, and reading their errors.

``DumpGroup`` starts dump processes together (all must open their snapshots
while the backup holds its global read lock) and feeds each one's output to
its consumer in a thread; restore loads run a few at a time in a
``core.engines.tools.ToolGroup``. In both, the first failure kills the
others, so a damaged stream or a failed tool never leaves the rest running.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from core.engines.tools import StderrTail
from core.errors import EngineError, redact


def last_line(text: str, secrets: list[str]) -> str:
    lines = [line.strip() for line in redact(text, secrets).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or ["no error output"])[-1]
    return line[:400]


class DumpGroup:
    """Dump processes started together, each feeding its consumer in a thread of its own.

    A consumer gets the process's stdout and a ``started`` callback to call once
    the output shows the snapshot is open; the process ending counts too. The
    first failure kills the others.
    """

    def __init__(self, engine: Any, tool: str) -> None:
        self._engine, self._tool = engine, tool
        self._jobs: list[tuple[list[str], Callable[[Any, Callable[[], None]], None], list[str]]] = []
        self._started: list[threading.Event] = []
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen] = []
        self._errors: list[BaseException] = []
        self._mutex = threading.Lock()
        self._options: Any = None

    def add(self, args: list[str], consume, tables: list[str] = ()) -> None:  # type: ignore[assignment]
        self._jobs.append((args, consume, list(tables)))

    def __enter__(self) -> DumpGroup:
        self._options = self._engine._option_file()
        option_file, pass_fds = self._options.__enter__()
        db = self._engine.config.database
        for args, consume, tables in self._jobs:
            argv = [self._tool, *self._engine._tool_args(option_file), *args, "--", db, *tables]
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds
            )
            started = threading.Event()
            self._procs.append(proc)
            self._started.append(started)
            thread = threading.Thread(target=self._pump, args=(proc, consume, started), daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def _pump(self, proc: subprocess.Popen, consume, started: threading.Event) -> None:
        stderr = StderrTail(proc.stderr)
        try:
            consume(proc.stdout, started.set)
            code = proc.wait()
            if code != 0:
                name = os.path.basename(self._tool)
                raise self._engine._tool_failure(
                    self._engine._where(), name, code, stderr.text(), "fix the cause and run the backup again"
                )
        except BaseException as exc:
            with self._mutex:
                self._errors.append(exc)
            self.kill_all()
        finally:
            started.set()  # ended: no snapshot left to wait for

    def kill_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()

    def _raise_first(self) -> None:
        with self._mutex:
            if self._errors:
                raise self._errors[0]

    def wait_for_snapshots(self, deadline: float) -> None:
        """Until every process has opened its snapshot (or ended); stops them all after ``deadline`` s."""
        until = time.monotonic() + deadline
        for started in self._started:
            if not started.wait(max(0.0, until - time.monotonic())):
                self.kill_all()
                raise EngineError(
                    f"{self._engine._where()}: the dump did not open its snapshot within {deadline:.0f}s while "
                    "writes were blocked, so it was stopped; check the server for blocking statements and retry"
                )
        self._raise_first()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()
        self._raise_first()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.kill_all()
        for thread in self._threads:
            thread.join(60)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._options.__exit__(None, None, None)
