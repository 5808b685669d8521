"""Cooperative cancellation: SIGINT/SIGTERM stop a run at the next chunk, never after a commit.

The CLI (or a worker) calls ``request()`` from its signal handler; the vault calls
``check()`` before each chunk and before the commit point, so an interrupted
backup ends FAILED ("interrupted") with nothing committed, and an interrupted
restore stops before its swap. Plain module state: one process, one operator.
"""

from __future__ import annotations

import threading

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
