"""The failover state, the monitor's tracker and the failover reports, kept in the stack's vault.

The vault is the one place every monitor and failover run of a stack can reach whichever region is down, and
its stores offer compare-and-swap (``create`` only-if-absent, ``replace`` on the version a read returned). The
state (active region + fencing epoch) only ever changes through that CAS, so of two runs that read the same
epoch exactly one moves it; the other gets StaleEpochError and must touch nothing.

Objects (under the vault's root, next to the repository):
  failover/state.json            the State; absent = the stack file's active region at epoch 0
  failover/monitor.json          the monitor's Tracker (overwritten each run: losing one run's count is harmless)
  failover/reports/<epoch>-<id>.json   one immutable report per failover/failback
"""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from core.errors import StaleEpochError, VaultError
from core.failover.choose import State
from core.failover.health import Tracker
from core.failover.topology import FailoverConfig
from core.storage.base import ObjectNotFound, Store

STATE_KEY = "failover/state.json"
TRACKER_KEY = "failover/monitor.json"
REPORTS = "failover/reports/"

# The state before any failover: fixed, so two reads of an absent state are equal.
EPOCH0_TIME = datetime(1970, 1, 1, tzinfo=UTC)
INITIAL_REASON = "initial: the stack file"


def new_operation_id(at: datetime | None = None) -> str:
    """A sortable, unique id for one failover/failback run, e.g. '20261206T031500Z-3f9a1c'."""
    return f"{(at or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, indent=1).encode()


class StateStore:
    """The failover state of one stack in its vault store (``config.vault.store()``)."""

    def __init__(self, store: Store, config: FailoverConfig) -> None:
        self.store = store
        self.config = config

    def _initial(self) -> State:
        return State(self.config.active_region, 0, EPOCH0_TIME, INITIAL_REASON)

    def _read_versioned(self) -> tuple[State, str | None]:
        try:
            raw, version = self.store.get_versioned(STATE_KEY)
        except ObjectNotFound:
            return self._initial(), None
        try:
            return State.from_dict(json.loads(raw)), version
        except (ValueError, KeyError, TypeError) as exc:
            raise VaultError(
                f"vault {self.store.describe()}: {STATE_KEY} is not a failover state ({type(exc).__name__}); "
                "restore it from a copy or delete it to start again from the stack file's active region"
            ) from None

    def read(self) -> State:
        """The current state; absent: the stack file's active region at epoch 0."""
        return self._read_versioned()[0]

    def _swap(self, version: str | None, new: State) -> bool:
        data = _encode(new.to_dict())
        if version is None:
            return self.store.create(STATE_KEY, data) is not None
        return self.store.replace(STATE_KEY, data, version=version) is not None

    def _lost(self, expected_epoch: int) -> StaleEpochError:
        now = self.read()
        busy = f", {now.in_progress} in progress" if now.in_progress else ""
        return StaleEpochError(
            f"failover state moved while it was being claimed: now epoch {now.epoch} (active region "
            f"{now.active_region}{busy}), not {expected_epoch}: another monitor or failover won; re-read the "
            "state and decide again"
        )

    def claim(
        self,
        expected_epoch: int,
        new_active: str,
        reason: str,
        operation: str,
        *,
        force: bool = False,
        at: datetime | None = None,
    ) -> State:
        """Move the state to ``new_active`` at epoch + 1 with ``operation`` in progress (compare-and-swap).

        StaleEpochError if the epoch is not ``expected_epoch`` or if another operation is in progress; with
        ``force`` an operation left in progress (a crashed run) is taken over, and the reason says so. The
        epoch must match even with ``force``: acting on an old reading is never right.
        """
        self.config.region(new_active)  # an unknown region is a ConfigError naming the known ones
        current, version = self._read_versioned()
        current.check_epoch(expected_epoch)
        if current.in_progress and not force:
            raise StaleEpochError(
                f"failover state epoch {current.epoch}: '{current.in_progress}' is in progress since "
                f"{current.changed_at.isoformat(timespec='seconds')}; wait for it, or if that run died take it "
                "over with --force"
            )
        if current.in_progress:
            reason = f"{reason} (forced: took over '{current.in_progress}' left in progress at epoch {current.epoch})"
        new = State(
            new_active,
            current.epoch + 1,
            at or datetime.now(UTC),
            reason,
            in_progress=operation,
            previous=current.active_region,
        )
        if not self._swap(version, new):
            raise self._lost(expected_epoch)
        return new

    def complete(self, claimed: State, outcome: str) -> State:
        """End the operation ``claimed`` started: same epoch and active region, nothing in progress."""
        current, version = self._read_versioned()
        if current.epoch != claimed.epoch or current.in_progress != claimed.in_progress:
            busy = f", '{current.in_progress}' in progress" if current.in_progress else ""
            raise StaleEpochError(
                f"failover state is at epoch {current.epoch} (active region {current.active_region}{busy}), not "
                f"the epoch {claimed.epoch} '{claimed.in_progress}' claimed: another run took it over; "
                "read the state and its latest report before acting"
            )
        new = replace(current, in_progress=None, outcome=outcome)
        if not self._swap(version, new):
            raise self._lost(claimed.epoch)
        return new

    def put_report(self, report: dict[str, Any]) -> str:
        """Store ``report`` once (immutable); its key, ``failover/reports/<epoch>-<operation id>.json``.

        The report's ``epoch`` and ``operation_id`` name it (an id is made when it has none)."""
        if "epoch" not in report:
            raise ValueError("a failover report needs the epoch it claimed")
        op = report.get("operation_id") or new_operation_id()
        key = f"{REPORTS}{int(report['epoch']):08d}-{op}.json"
        self.store.put(key, _encode({**report, "operation_id": op}))
        return key

    def reports(self, last: int | None = None) -> list[dict[str, Any]]:
        """The stored reports, oldest first (by epoch, then operation id); only the ``last`` N when given."""
        keys = sorted(k for k in self.store.list(REPORTS) if k.endswith(".json"))
        if last is not None:
            keys = keys[-last:] if last > 0 else []
        return [json.loads(self.store.get(k)) for k in keys]

    def load_tracker(self) -> Tracker:
        """The monitor's tracker (the stack's failures_before_down applies); a fresh one when none is stored."""
        try:
            data = json.loads(self.store.get(TRACKER_KEY))
        except ObjectNotFound:
            return Tracker(self.config.failures_before_down)
        except ValueError:
            raise VaultError(
                f"vault {self.store.describe()}: {TRACKER_KEY} is not JSON; delete it (the monitor only loses its "
                "consecutive-failure counts)"
            ) from None
        return Tracker.from_dict(data, failures_before_down=self.config.failures_before_down)

    def save_tracker(self, tracker: Tracker) -> None:
        self.store.put(TRACKER_KEY, _encode(tracker.to_dict()), overwrite=True)
