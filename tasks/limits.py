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
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from core.errors import LockedError
from core.repository.lock import holder_alive_here, process_start_time
from core.storage.local import ObjectNotFound as NoRecord
from core.targets import state_store
from tasks.policy import seconds_from_env

# Renewed while the run lives; a killed run's slot is free again this long after its last renewal.
LEASE_SECONDS = seconds_from_env("GENESIS_DR_CONCURRENCY_LEASE", 60, minimum=15)
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


def _holder_key(name: str) -> str:
    return f"slots/{name}.json"


def _release_slot_of_dead_holder(name: str, logger) -> None:
    """A run killed on this host (kill -9, OOM) never gives its slot back, and only a server running
    the repossessor service frees an expired lease - Prefect's temporary and test servers do not.
    So each holder records itself in the per-host state directory; a record whose process is gone
    means its slot leaked, and the next run gives it back before waiting for it."""
    store = state_store()
    try:
        holder = json.loads(store.get(_holder_key(name)))
    except NoRecord:
        return
    except ValueError:
        holder = {}
    if holder and holder_alive_here(holder) is not False:
        return  # alive, or on another host: only its own lease expiry can free it
    with get_client(sync_client=True) as client:
        held = max(1.0, time.time() - float(holder.get("since", time.time())))  # the API wants > 0
        client.release_concurrency_slots(names=[name], slots=1, occupancy_seconds=held)
    store.delete(_holder_key(name))
    logger.warning("%s: gave back the slot of a killed run (pid %s)", name, holder.get("pid", "?"))


def _record_holder(name: str) -> None:
    pid = os.getpid()
    record = {"host": socket.gethostname(), "pid": pid, "pid_start": process_start_time(pid), "since": time.time()}
    state_store().put(_holder_key(name), json.dumps(record, sort_keys=True).encode(), overwrite=True)


@contextmanager
def exclusive(name: str, what: str) -> Iterator[None]:
    """Hold one slot of ``name`` for the body; wait for it (logged) up to ``WAIT_SECONDS``."""
    logger = get_run_logger()
    ensure_limit(name)
    _release_slot_of_dead_holder(name, logger)
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
            _record_holder(name)
            logger.info("%s: holding concurrency limit %s (waited %.1fs)", what, name, time.monotonic() - started)
            try:
                yield
            finally:
                state_store().delete(_holder_key(name))
    except TimeoutError:
        if acquired:
            raise  # the body's (or the task's) timeout, not ours
        raise LockedError(
            f"{what}: another run held concurrency limit {name} for {WAIT_SECONDS:.0f}s; see the runs in the "
            "Prefect UI (Concurrency), or raise GENESIS_DR_CONCURRENCY_WAIT"
        ) from None
