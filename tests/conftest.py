"""Test configuration: real servers (one plugin module per kind) and Prefect's harness."""

from __future__ import annotations

import os
import tempfile

import pytest

# Tests weaken the KDF (borg does the same) and use small chunks so edge cases are cheap.
os.environ.setdefault("GENESIS_DR_TEST_KDF_ITERATIONS", "1000")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Transient source failures are retried with backoff (tasks/policy.py); shorter delays keep down-source tests quick.
os.environ.setdefault("GENESIS_DR_RETRY_DELAY", "0.5")
# Restore-target locks and in-progress marks (core/targets.py): one throw-away state directory per run.
os.environ.setdefault("GENESIS_DR_STATE_DIR", tempfile.mkdtemp(prefix="gdr-state-"))
# `genesis-dr apply` in tests saves the stack's blocks and schedules only (apply --blocks-only): ~21 deployments
# with live schedules per apply would cost seconds each and fill the shared harness with scheduled runs. The
# whole apply is tested where it is the subject (test_deployments, test_serve, test_multi_site).
os.environ.setdefault("GENESIS_DR_APPLY_BLOCKS_ONLY", "1")

pytest_plugins = [
    "tests.fixtures_postgres",
    "tests.fixtures_mysql",
    "tests.fixtures_redis",
    "tests.fixtures_prefect",
    "tests.fixtures_cloud",
    "tests.fixtures_gcs",
    "tests.fixtures_sandbox",
    "tests.fixtures_replication",
    "tests.fixtures_tls",
]


@pytest.fixture
def vault(tmp_path):
    """A fresh local vault (a module that needs another kind defines its own ``vault``)."""
    from core.repository.vault import Vault
    from core.storage.local import LocalStore

    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


@pytest.fixture
def keyring():
    """A passphrase keyring (the KDF is weakened for tests above)."""
    from core.crypto.keys import Keyring

    return Keyring(passphrase="pw")
