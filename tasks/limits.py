"""Global concurrency limits held by the runs themselves.

Deployment concurrency limits only count runs a worker starts; the CLI runs flows
in-process, so they never see those. Each backup of a source and each restore into a
target therefore holds a slot of a Prefect *global* concurrency limit (created with
limit 1 on first use; an operator may change it in the UI, we never overwrite it), so
every run - worker, CLI or schedule - waits for the one before it. A slot is held for
the whole operation and is leased: a killed run's slot frees itself after
``LEASE_SECONDS``.

What a slot costs: one request to take it and one to give it back (about 10 ms
each), plus a renewal every ``LEASE_SECONDS / 2``. It used to cost about 2 s a
slot whenever a request met another write on a server on SQLite (the sources of
one backup run ask at the same moment, and the server records each task's state
just as it asks): the server answers 503 ("database is locked") and Prefect's
client waits 2 s, then 4, before asking again. So slot requests go out here on
Prefect's client connection without its retry loop, one request of this process
at a time (``_requests``), and a 503 is asked again within milliseconds. A slot held by
another run is polled for (the server's Retry-After, at most ``POLL_SECONDS``)
outside that lock, so one waiting source never holds up the others.

Backups hold two slots (``backup_slots``): their source's (limit 1), then the stack's
``genesis-dr-backups-<stack>``, whose limit is the stack file's
``operations.max_concurrent_backups``. For that one the stack file is the source of truth: it is
created with the stack's value and set back to it when the stack's value changes (checked once per
process and value); change it in the stack file, not in the UI. The source's slot comes first, so a
backup waiting for a stack-wide slot already keeps the next backup of its source out. An
incremental whose source is still being backed up does not wait (CANCEL_NEW): it is skipped at
once, recorded in the vault's history (``skips``) and reported SKIPPED - the next incremental
ships the same log, so nothing is lost, and a queue of incrementals never piles up behind a long
full. Fulls and differentials wait their turn (ENQUEUE).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import MinimalConcurrencyLimitResponse

# What Prefect's own concurrency() emits, so automations and the UI's event feed see the same.
from prefect.concurrency._events import emit_concurrency_acquisition_events, emit_concurrency_release_events
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound

from core.errors import LockedError
from core.history import History
from core.repository.lock import holder_alive_here, process_start_time
from core.stack import StackConfig
from core.storage.local import ObjectNotFound as NoRecord
from core.targets import state_store
from tasks.policy import seconds_from_env

# Renewed while the run lives; a killed run's slot is free again this long after its last renewal.
LEASE_SECONDS = seconds_from_env("GENESIS_DR_CONCURRENCY_LEASE", 60, minimum=15)
# How long a run waits for the slot before it fails with LockedError (exit 11).
WAIT_SECONDS = seconds_from_env("GENESIS_DR_CONCURRENCY_WAIT", 6 * 3600, minimum=1)
# A waiting run asks again after the server's Retry-After (its average slot occupancy, up to 30 s), at most this.
POLL_SECONDS = 5.0
# Answers that mean "busy, ask again": the server's database was locked (503), a proxy's 502/408/429.
_BUSY = {408, 429, 502, 503}
_ATTEMPTS = 40  # of one slot request, busy answers and dropped connections included (~10 s in all)


def backup_limit(stack: str, source: str) -> str:
    """One backup of a source at a time (stack and source names are already safe: [a-z0-9-])."""
    return f"genesis-dr-backup-{stack}-{source}"


def stack_backups_limit(stack: str) -> str:
    """At most ``operations.max_concurrent_backups`` backups of the stack at a time."""
    return f"genesis-dr-backups-{stack}"


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
            _create_limit(client, name, limit)


def _create_limit(client: SyncPrefectClient, name: str, limit: int = 1) -> None:
    try:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
    except ObjectAlreadyExists:  # another run created it first
        pass


# (limit name, value) already made to match in this process: one read per process and value, not per backup.
_synced: set[tuple[str, int]] = set()
_synced_lock = threading.Lock()


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:  # outside a run (a CLI command, a test)
        return logging.getLogger(__name__)


def sync_limit(name: str, limit: int) -> None:
    """Make the global concurrency limit ``name`` exist with ``limit`` slots (created, or updated when its limit
    differs): for limits whose value the stack file owns."""
    with _synced_lock:
        if (name, limit) in _synced:
            return
        with get_client(sync_client=True) as client:
            try:
                current = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                _create_limit(client, name, limit)
            else:
                if current.limit != limit:
                    client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=limit))
                    _logger().info("concurrency limit %s: %d slots (was %d)", name, limit, current.limit)
        _synced.add((name, limit))


def _holder_key(name: str, lease_id: UUID | None = None) -> str:
    """Where a holder of ``name`` records itself: one record for a one-slot limit, one per lease otherwise
    (several runs hold a stack's backup slots at once)."""
    return f"slots/{name}/{lease_id}.json" if lease_id is not None else f"slots/{name}.json"


def _holder_records(name: str) -> list[tuple[str, dict]]:
    store = state_store()
    keys = [_holder_key(name), *sorted(store.list(f"slots/{name}/"))]
    found = []
    for key in keys:
        try:
            raw = store.get(key)
        except NoRecord:
            continue
        try:
            found.append((key, json.loads(raw)))
        except ValueError:
            found.append((key, {}))
    return found


def _release_slot_of_dead_holder(name: str, logger) -> None:
    """A run killed on this host (kill -9, OOM) never gives its slot back, and only a server running
    the repossessor service frees an expired lease - Prefect's temporary and test servers do not.
    So each holder records itself in the per-host state directory; a record whose process is gone
    means its slot leaked, and the next run gives it back before waiting for it."""
    store = state_store()
    for key, holder in _holder_records(name):
        if holder and holder_alive_here(holder) is not False:
            continue  # alive, or on another host: only its own lease expiry can free it
        with get_client(sync_client=True) as client:
            held = max(1.0, time.time() - float(holder.get("since", time.time())))  # the API wants > 0
            client.release_concurrency_slots(names=[name], slots=1, occupancy_seconds=held)
        store.delete(key)
        logger.warning("%s: gave back the slot of a killed run (pid %s)", name, holder.get("pid", "?"))


def _record_holder(key: str) -> None:
    pid = os.getpid()
    record = {"host": socket.gethostname(), "pid": pid, "pid_start": process_start_time(pid), "since": time.time()}
    context = TaskRunContext.get()
    if context is not None:  # which run holds it: a skipped backup names it
        record |= {"task_run": str(context.task_run.id), "flow_run": str(context.task_run.flow_run_id)}
    state_store().put(key, json.dumps(record, sort_keys=True).encode(), overwrite=True)


def holder_of(name: str) -> dict:
    """Who holds ``name``'s slot, as far as this host knows: {flow_run, task_run, host, pid, since} or {}."""
    records = _holder_records(name)
    return records[0][1] if records else {}


# One slot request (take or give back) of this process at a time: see the module docstring.
_requests = threading.Lock()


def _send_once(client: SyncPrefectClient, path: str, body: dict) -> httpx.Response:
    """POST ``body`` through the client's connection, auth and CSRF token, without its retry loop: that
    loop sleeps 2 s after a 503 even with retries set to 0. Falls back to the plain client (slower on a
    busy server, as before) if Prefect's internals moved."""
    raw = getattr(client, "_client", None)
    add_csrf = getattr(raw, "_add_csrf_headers", None)
    if not isinstance(raw, httpx.Client) or add_csrf is None:
        return client.request("POST", path, json=body)
    request = raw.build_request("POST", path, json=body)
    if getattr(raw, "enable_csrf_support", False):
        add_csrf(request)
    response = httpx.Client.send(raw, request)
    response.raise_for_status()
    return response


def _request(client: SyncPrefectClient, path: str, body: dict) -> httpx.Response:
    """One slot request, this process's only one of the moment; asked again within milliseconds when busy.

    A dropped connection is asked again too, as Prefect's client does (a pooled connection the server
    closed is the usual cause).
    """
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with _requests:
                return _send_once(client, path, body)
        except httpx.HTTPStatusError as exc:  # a 503 was rolled back on the server: safe to ask again
            if exc.response.status_code not in _BUSY or attempt == _ATTEMPTS:
                raise
        except httpx.TransportError:
            if attempt == _ATTEMPTS:
                raise
        time.sleep(random.uniform(0.02, 0.05) * min(attempt, 10))  # outside the lock: others may ask meanwhile
    raise AssertionError("unreachable")


def _holder() -> ConcurrencyLeaseHolder | None:
    """The task run holding the slot (the UI names it)."""
    context = TaskRunContext.get()
    return ConcurrencyLeaseHolder(type="task_run", id=context.task_run.id) if context is not None else None


def _acquire(
    client: SyncPrefectClient, name: str, what: str, *, wait: bool = True, limit: int = 1
) -> tuple[UUID, list, float] | None:
    """Take a slot of ``name``, creating the limit (with ``limit`` slots) on first use; returns (lease id, limits,
    seconds waited), or None when ``wait`` is off and every slot is held."""
    started = time.monotonic()
    created = False
    body = {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": LEASE_SECONDS}
    holder = _holder()
    if holder is not None:
        body["holder"] = holder.model_dump(mode="json")
    while True:
        try:
            response = _request(client, "/v2/concurrency_limits/increment-with-lease", body)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423: every slot is held; anything else is an error
                raise
            if not wait:
                return None
            left = started + WAIT_SECONDS - time.monotonic()
            if left <= 0:
                raise LockedError(
                    f"{what}: another run held concurrency limit {name} for {WAIT_SECONDS:.0f}s; see the runs in "
                    "the Prefect UI (Concurrency), or raise GENESIS_DR_CONCURRENCY_WAIT"
                ) from None
            try:
                retry_after = float(exc.response.headers.get("Retry-After", 1))
            except ValueError:
                retry_after = 1.0
            time.sleep(max(0.05, min(retry_after, POLL_SECONDS, left)))
            continue
        granted = response.json()
        if granted.get("limits"):
            limits = [MinimalConcurrencyLimitResponse.model_validate(limit) for limit in granted["limits"]]
            return UUID(granted["lease_id"]), limits, time.monotonic() - started
        if created:
            raise LockedError(f"{what}: concurrency limit {name} was removed while this run was creating it; run again")
        _create_limit(client, name, limit)  # on first use (rather than reading it first on every run)
        created = True


class _Renewal(threading.Thread):
    """Renews the lease every ``LEASE_SECONDS / 2`` while the body runs; a failure warns, never stops the body."""

    def __init__(self, lease_id: UUID, what: str, logger) -> None:
        super().__init__(name=f"genesis-dr-lease-{lease_id}", daemon=True)
        self.lease_id, self.what, self.logger = lease_id, what, logger
        self.stopped = threading.Event()
        self.context = contextvars.copy_context()  # this task's settings (API URL) and run logger

    def run(self) -> None:
        self.context.run(self._renew)

    def _renew(self) -> None:
        with get_client(sync_client=True) as client:
            failing = False
            while not self.stopped.wait(5.0 if failing else LEASE_SECONDS / 2):
                try:
                    client.renew_concurrency_lease(lease_id=self.lease_id, lease_duration=LEASE_SECONDS)
                    failing = False
                except Exception as exc:  # an API blip must not kill a long backup: warn and try again
                    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 404:
                        self.logger.warning(
                            "%s: its concurrency slot's lease expired; the limit no longer holds other runs back "
                            "until this one ends",
                            self.what,
                        )
                        return
                    if not failing:
                        self.logger.warning("%s: could not renew its concurrency slot (%s); retrying", self.what, exc)
                    failing = True

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


@contextmanager
def exclusive(name: str, what: str) -> Iterator[None]:
    """Hold one slot of ``name`` for the body; wait for it (logged) up to ``WAIT_SECONDS``."""
    with _slot(name, what):
        yield


@contextmanager
def _slot(name: str, what: str, *, wait: bool = True, limit: int = 1) -> Iterator[bool]:
    """Hold one slot of ``name`` for the body (True); with ``wait`` off, when every slot is held, run the body
    at once without one (False)."""
    logger = get_run_logger()
    _release_slot_of_dead_holder(name, logger)
    with get_client(sync_client=True) as client:
        acquired = _acquire(client, name, what, wait=wait, limit=limit)
        if acquired is None:
            yield False
            return
        lease_id, limits, waited = acquired
        events = emit_concurrency_acquisition_events(limits, 1)
        renewal = _Renewal(lease_id, what, logger)
        renewal.start()
        record = _holder_key(name, lease_id if limit > 1 else None)
        try:
            _record_holder(record)
            logger.info("%s: holding concurrency limit %s (waited %.1fs)", what, name, waited)
            yield True
        finally:
            renewal.stop()
            try:
                _request(client, "/v2/concurrency_limits/decrement-with-lease", {"lease_id": str(lease_id)})
            except Exception as exc:  # the body's outcome stands; the record left behind frees the slot later
                logger.warning(
                    "%s: could not give back its concurrency slot (%s); the next run of this host gives it back",
                    what,
                    exc,
                )
            else:
                state_store().delete(record)
            emit_concurrency_release_events(limits, 1, events)


@contextmanager
def backup_slots(config: StackConfig, source: str, backup_type: str) -> Iterator[dict | None]:
    """Hold the source's slot and one of the stack's ``max_concurrent_backups`` for a backup (yields None), or,
    for an incremental whose source is still being backed up, hold nothing: the skip is recorded in the vault's
    history and logged, and the body gets the run's result for that source (``status: SKIPPED``) to return.
    """
    what = f"backup of {source}"
    source_limit = backup_limit(config.stack, source)
    with _slot(source_limit, what, wait=backup_type != "incremental") as held:
        if not held:
            yield _record_skip(config, source, backup_type, holder_of(source_limit))
            return
        stack_limit = stack_backups_limit(config.stack)
        slots = config.operations.max_concurrent_backups
        sync_limit(stack_limit, slots)
        with _slot(stack_limit, what, limit=slots):
            yield None


def _record_skip(config: StackConfig, source: str, backup_type: str, holder: dict) -> dict:
    """Write the skip to the vault's history, log it in one line, and build the source's result."""
    context = TaskRunContext.get()
    this_run = str(context.task_run.flow_run_id) if context is not None else None
    held_by = {k: holder[k] for k in ("flow_run", "task_run", "host", "pid") if k in holder}
    if "since" in holder:
        held_by["since"] = datetime.fromtimestamp(float(holder["since"]), UTC).isoformat()
    by = f"flow run {held_by['flow_run']}" if held_by.get("flow_run") else "another run"
    reason = f"skipped: the previous backup of {source} ({by}) is still running"
    record_id = History(config.vault.open(create=True).store).record_skip(
        source, backup_type, datetime.now(UTC), held_by, stack=config.stack, flow_run=this_run, reason=reason
    )
    get_run_logger().warning("%s: %s backup %s (%s)", source, backup_type, reason, record_id)
    return {
        "source": source,
        "type": backup_type,
        "status": "SKIPPED",
        "id": None,
        "skip_id": record_id,
        "reason": reason,
        "held_by": held_by,
        "plain_bytes": 0,
        "stored_bytes": 0,
        "position_text": "-",
    }
