"""Global concurrency limits held by the runs themselves.

Deployment concurrency limits only count runs a worker starts; the CLI runs flows
in-process, so they never see those. Each backup of a source and each restore into a
target therefore holds a slot of a Prefect *global* concurrency limit (created with
limit 1 when missing; an operator may change it in the UI, we never overwrite it), so
every run - worker, CLI or schedule - waits for the one before it. A slot is held for
the whole operation (each acquisition costs about 2 s) and is leased: a killed run's
slot frees itself after ``LEASE_SECONDS``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from core.errors import LockedError
from tasks.policy import seconds_from_env

LEASE_SECONDS = 300
# How long a run waits for the slot before it fails with LockedError (exit 11).
WAIT_SECONDS = seconds_from_env("GENESIS_DR_CONCURRENCY_WAIT", 6 * 3600, minimum=1)


def backup_limit(stack: str, source: str) -> str:
    """One backup of a source at a time (stack and source names are already safe: [a-z0-9-])."""
    return f"genesis-dr-backup-{stack}-{source}"


def restore_limit(target_key: str) -> str:
    """One restore into a target at a time, whatever its source (readable, plus a hash: names may not hold '/')."""
    slug = re.sub(r"[^a-z0-9.]+", "-", target_key.lower()).strip("-")[:60]
    return f"genesis-dr-restore-{slug}-{hashlib.sha256(target_key.encode()).hexdigest()[:8]}"


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit ``name`` unless it exists (never changes an existing one)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:  # another run created it first
                pass


@contextmanager
def exclusive(name: str, what: str) -> Iterator[None]:
    """Hold one slot of ``name`` for the body; wait for it (logged) up to ``WAIT_SECONDS``."""
    logger = get_run_logger()
    ensure_limit(name)
    started, acquired = time.monotonic(), False
    try:
        with concurrency(
            name,
            occupy=1,
            timeout_seconds=WAIT_SECONDS,
            lease_duration=LEASE_SECONDS,
            strict=True,
            raise_on_lease_renewal_failure=False,  # an API blip must not kill a long backup
        ):
            acquired = True
            logger.info("%s: holding concurrency limit %s (waited %.1fs)", what, name, time.monotonic() - started)
            yield
    except TimeoutError:
        if acquired:
            raise  # the body's (or the task's) timeout, not ours
        raise LockedError(
            f"{what}: another run held concurrency limit {name} for {WAIT_SECONDS:.0f}s; see the runs in the "
            "Prefect UI (Concurrency), or raise GENESIS_DR_CONCURRENCY_WAIT"
        ) from None
