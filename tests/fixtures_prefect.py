"""Prefect's test harness (a real temporary API on SQLite) and stacks registered as blocks."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    """One harness per session: each start costs ~15 s (fresh SQLite + migrations)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass
class StackHandle:
    name: str
    vault_path: Path
    passphrase: str
    config: object

    def vault(self):
        return self.config.vault.open()

    def keyring(self):
        return self.config.keyring()


@pytest.fixture
def make_stack(prefect_api, tmp_path):
    """Register a stack of the given source configs (a local vault under tmp_path) as blocks."""
    from blocks.apply import apply_stack
    from core.stack import StackConfig

    counter = iter(range(1000))

    def make(
        sources: list, *, compression: str = "zstd", name: str | None = None, vault: dict | None = None, **extra
    ) -> StackHandle:
        """``vault``: another vault than a local directory (an S3 or GCS one); ``extra``: more stack fields."""
        stack = name or f"t{secrets.token_hex(3)}-{next(counter)}"
        passphrase = secrets.token_urlsafe(16)
        vault_path = tmp_path / f"vault-{stack}"
        # The stack names where the passphrase is (a 0600 file); the blocks never hold it.
        secret = tmp_path / f"passphrase-{stack}"
        secret.write_text(passphrase + "\n")
        secret.chmod(0o600)
        config = StackConfig(
            stack=stack,
            vault=vault or {"path": str(vault_path), "compression": compression},
            encryption={"passphrase_from": f"file:{secret}"},
            sources=[s.model_dump() for s in sources],
            **extra,
        )
        apply_stack(config)
        if vault is not None:
            from blocks.stack import bind_stack_credentials

            bind_stack_credentials(config)
        return StackHandle(stack, vault_path, passphrase, config)

    return make
