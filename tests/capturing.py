"""``core.operations.capture_source`` running in a thread, as the capture flow runs it (PITR tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from core.crypto.keys import Keyring
from core.operations import capture_source
from core.repository.vault import Vault


class Capturing:
    """A capture of ``engine``'s source into ``vault`` until ``finish``; its error is raised there."""

    def __init__(self, vault: Vault, keyring: Keyring, engine) -> None:
        self.vault, self.engine = vault, engine
        self.source = engine.config.name
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.messages: list[str] = []

        def run() -> None:
            try:
                capture_source(vault, keyring, engine, self.stop, progress=self.messages.append)
            except BaseException as exc:  # the test thread raises it
                self.error = exc

        self.thread = threading.Thread(target=run, name="capture", daemon=True)
        self.thread.start()

    def wait_until(self, reached: Callable[[list], bool], what: str, timeout: float = 15.0) -> None:
        """Until ``reached(pieces of the vault's log)`` holds; fails naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.error is None, self.error
            if reached(self.vault.log_pieces(self.source)):
                return
            time.sleep(0.1)
        raise AssertionError(f"the capture did not ship {what}: {self.messages[-3:]}")

    def finish(self, timeout: float = 60.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def capturing_factory(vault: Vault, keyring: Keyring, kind: type[Capturing] = Capturing) -> Iterator[Callable]:
    """The body of a ``capturing`` fixture: starts captures, stops every one still running at teardown."""
    running: list[Capturing] = []

    def start(engine) -> Capturing:
        running.append(kind(vault, keyring, engine))
        return running[-1]

    yield start
    for capture in running:
        capture.stop.set()
        capture.thread.join(30)
