"""Cooperative cancellation: SIGINT/SIGTERM stop a run at the next chunk, never after a commit.

The CLI (or a worker) calls ``request()`` from its signal handler; the vault calls
``check()`` before each chunk and before the commit point, so an interrupted
backup ends FAILED ("interrupted") with nothing committed, and an interrupted
restore stops before its swap. Plain module state: one process, one operator.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from core.errors import DRError

_requested = threading.Event()
_reason = ["interrupted"]


class InterruptedRunError(DRError):
    """The run was interrupted by a signal before it committed. Exit 130."""

    exit_code = 130


def request(reason: str = "interrupted") -> None:
    _reason[0] = reason
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def reset() -> None:
    _requested.clear()


def check(what: str) -> None:
    """Raise InterruptedRunError if a stop was requested (``what``: the object being worked on)."""
    if _requested.is_set():
        raise InterruptedRunError(f"{what}: {_reason[0]} before it finished; nothing was committed")


@contextmanager
def stop_on_signals(announce: Callable[[str], None] | None = None) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM request a stop at the next chunk instead of killing the run.

    A second signal raises KeyboardInterrupt (abort at once). Prefect installs its
    own SIGTERM handler while a flow runs, so flows enter this too. Outside the
    main thread signals cannot be handled; then this does nothing.
    """

    def handle(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if requested():
            raise KeyboardInterrupt
        request(f"interrupted by {name}")
        if announce:
            announce(f"{name}: stopping at the next chunk; nothing more will be committed")

    try:
        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
