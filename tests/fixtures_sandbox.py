"""Sandbox roots for tests: each module that starts sandboxes counts only its own, and proves none is left.

``sandbox_root`` (module-scoped) points ``GENESIS_DR_SANDBOX_DIR`` at a fresh directory the
postgres and mysql users can enter, and removes it afterwards; ``assert_no_sandbox_left(root)``
is the check every such test ends with: no sandbox registered, the root empty, and no process
running from it (a server a restore started in a sandbox included).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.sandbox import live_sandboxes
from core.sandbox.registry import ROOT_ENV
from tests.servers import shared_tmpdir


@pytest.fixture(scope="module")
def sandbox_root() -> Iterator[Path]:
    root = shared_tmpdir("gdr-sandboxes-")
    root.chmod(0o711)
    old = os.environ.get(ROOT_ENV)
    os.environ[ROOT_ENV] = str(root)
    yield root
    if old is None:
        os.environ.pop(ROOT_ENV, None)
    else:
        os.environ[ROOT_ENV] = old
    shutil.rmtree(root, ignore_errors=True)


def assert_no_sandbox_left(root: Path) -> None:
    assert live_sandboxes() == []
    assert list(root.iterdir()) == []
    leftovers = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(root) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                leftovers.append(proc.name)
        except OSError:
            continue
    assert leftovers == [], f"processes still running from {root}: {leftovers}"
