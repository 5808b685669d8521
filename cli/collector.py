"""The garbage collector over a command's life: cheap start-up and exit, unchanged during the work.

A command that runs a flow imports Prefect, pydantic and their models: several
hundred thousand objects that live until the process ends. CPython's cyclic
collector walks all of them in every full collection while they are being
created (about 0.3 s of CPU in a 2 s command) and once more while the
interpreter shuts down (0.3 to 0.4 s after the last line was printed). None of
that finds garbage worth the time.

So the command starts with rare collections (``starting``); once Prefect is up
(``settled``, from ``cli.stacks.prefect_session``) everything alive is moved out
of the collector's sight (``gc.freeze``) and the normal thresholds return, so the
backup or restore itself collects as usual and its memory stays flat; at exit,
after Prefect's own exit handlers (they send the run's last logs), the same
again, so the interpreter's last collections skip what is frozen. Objects are
still freed when their last reference goes; only the cycle search skips them.
"""

from __future__ import annotations

import atexit
import gc

# Collections still happen while a command starts, just about a hundred times more rarely.
STARTUP_THRESHOLDS = (70_000, 10, 10)

_normal: tuple[int, ...] | None = None


def starting() -> None:
    """At the start of ``main``: rare collections; frozen at exit (registered before Prefect's exit handlers,
    so it runs after them)."""
    global _normal
    if _normal is None:
        _normal = gc.get_threshold()
        gc.set_threshold(*STARTUP_THRESHOLDS)
        atexit.register(gc.freeze)


def settled() -> None:
    """Prefect is imported and its API answers: freeze what start-up built, collect normally from here."""
    if _normal is not None:
        gc.freeze()
        finished()


def finished() -> None:
    """``main`` returns: the normal thresholds again (a test calling ``main`` in-process keeps its own)."""
    global _normal
    if _normal is not None:
        gc.set_threshold(*_normal)
        _normal = None
