"""The failover state in the vault (core/failover/state.py): compare-and-swap claims of the fencing epoch on a
real LocalStore and on S3 (moto server over HTTP), the monitor's tracker and the immutable reports."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest

from core.errors import ConfigError, StaleEpochError, VaultError
from core.failover.choose import State
from core.failover.health import Check, Tracker, score_region
from core.failover.state import EPOCH0_TIME, REPORTS, STATE_KEY, TRACKER_KEY, StateStore
from core.failover.topology import FailoverConfig
from core.storage.local import LocalStore
from core.storage.s3 import S3Store

AT = datetime(2026, 12, 6, 3, 30, tzinfo=UTC)

CONFIG = FailoverConfig(
    failures_before_down=3,
    active_region="us-west-2",
    regions=[
        {"name": "us-west-2", "priority": 1},
        {"name": "us-east-1", "priority": 2},
        {"name": "eu-west-1", "priority": 3},
    ],
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "vault")
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = request.getfixturevalue("new_bucket")()
    return S3Store(bucket=bucket, prefix="dr/prod", region="us-west-2", endpoint_url=endpoint)


def test_an_absent_state_is_the_stack_files_active_region_at_epoch_0(store):
    states = StateStore(store, CONFIG)
    assert states.read() == State("us-west-2", 0, EPOCH0_TIME, "initial: the stack file")
    assert not store.exists(STATE_KEY)


def test_claim_moves_the_epoch_and_complete_ends_the_operation(store):
    states = StateStore(store, CONFIG)
    claimed = states.claim(0, "us-east-1", "us-west-2 down 3 checks", "failover to us-east-1", at=AT)
    assert claimed == State(
        "us-east-1", 1, AT, "us-west-2 down 3 checks", in_progress="failover to us-east-1", previous="us-west-2"
    )
    assert states.read() == claimed
    done = states.complete(claimed, "completed: all components promoted, DNS switched")
    assert done == State(
        "us-east-1",
        1,
        AT,
        "us-west-2 down 3 checks",
        outcome="completed: all components promoted, DNS switched",
        previous="us-west-2",
    )
    assert states.read() == done
    assert json.loads(store.get(STATE_KEY)) == done.to_dict()
    again = states.claim(1, "us-west-2", "planned failback", "failback to us-west-2", at=AT)
    assert (again.epoch, again.active_region, again.in_progress, again.outcome, again.previous) == (
        2,
        "us-west-2",
        "failback to us-west-2",
        None,
        "us-east-1",
    )


def test_a_stale_epoch_is_refused_and_changes_nothing(store):
    states = StateStore(store, CONFIG)
    first = states.claim(0, "us-east-1", "down", "failover to us-east-1", at=AT)
    states.complete(first, "completed")
    before = store.get(STATE_KEY)
    with pytest.raises(StaleEpochError) as caught:
        states.claim(0, "eu-west-1", "down", "failover to eu-west-1")
    assert str(caught.value) == (
        "failover state is at epoch 1 (active region us-east-1), not 0: another monitor or failover changed it; "
        "re-read the state and decide again"
    )
    assert caught.value.exit_code == 24
    assert store.get(STATE_KEY) == before


def test_an_operation_in_progress_is_refused_unless_forced_and_the_takeover_is_recorded(store):
    states = StateStore(store, CONFIG)
    crashed = states.claim(0, "us-east-1", "down", "failover to us-east-1", at=AT)
    with pytest.raises(StaleEpochError) as caught:
        states.claim(1, "eu-west-1", "us-east-1 failing too", "failover to eu-west-1")
    assert str(caught.value) == (
        "failover state epoch 1: 'failover to us-east-1' is in progress since 2026-12-06T03:30:00+00:00; wait for "
        "it, or if that run died take it over with --force"
    )
    taken = states.claim(1, "eu-west-1", "us-east-1 failing too", "failover to eu-west-1", force=True, at=AT)
    assert taken == State(
        "eu-west-1",
        2,
        AT,
        "us-east-1 failing too (forced: took over 'failover to us-east-1' left in progress at epoch 1)",
        in_progress="failover to eu-west-1",
        previous="us-east-1",
    )
    # The run that was taken over can no longer complete its claim.
    with pytest.raises(StaleEpochError, match="another run took it over"):
        states.complete(crashed, "completed")
    assert states.read() == taken


def test_force_never_overrides_a_stale_epoch(store):
    states = StateStore(store, CONFIG)
    states.claim(0, "us-east-1", "down", "failover to us-east-1")
    with pytest.raises(StaleEpochError, match="not 0"):
        states.claim(0, "eu-west-1", "down", "failover to eu-west-1", force=True)


def test_an_unknown_region_is_refused_before_anything_is_written(store):
    states = StateStore(store, CONFIG)
    with pytest.raises(ConfigError) as caught:
        states.claim(0, "ap-south-1", "down", "failover to ap-south-1")
    assert str(caught.value) == (
        "unknown region 'ap-south-1'; choose one of the stack's regions: us-west-2, us-east-1, eu-west-1"
    )
    assert not store.exists(STATE_KEY)


@pytest.mark.parametrize("existing", [False, True], ids=["first-claim", "later-claim"])
def test_concurrent_claims_exactly_one_wins(store, existing):
    states = StateStore(store, CONFIG)
    epoch = 0
    if existing:
        epoch = states.complete(states.claim(0, "us-east-1", "down", "failover to us-east-1"), "completed").epoch
    targets = ["us-west-2", "eu-west-1"] * 4
    barrier = threading.Barrier(len(targets))
    won: list[State] = []
    lost: list[StaleEpochError] = []

    def run(target: str) -> None:
        mine = StateStore(store, CONFIG)  # each run reads for itself, as two monitors would
        barrier.wait()
        try:
            won.append(mine.claim(epoch, target, "race", f"failover to {target}"))
        except StaleEpochError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(won), len(lost)) == (1, len(targets) - 1)
    assert states.read() == won[0]
    assert won[0].epoch == epoch + 1


def test_reports_are_immutable_and_listed_in_epoch_order(store):
    states = StateStore(store, CONFIG)
    key2 = states.put_report({"epoch": 2, "operation_id": "20261206T033000Z-bbbbbb", "outcome": "completed"})
    key10 = states.put_report({"epoch": 10, "operation_id": "20261206T040000Z-cccccc", "outcome": "incomplete"})
    key1 = states.put_report({"epoch": 1, "outcome": "completed"})
    assert key2 == f"{REPORTS}00000002-20261206T033000Z-bbbbbb.json"
    assert key10 == f"{REPORTS}00000010-20261206T040000Z-cccccc.json"
    assert key1.startswith(f"{REPORTS}00000001-")
    assert [r["epoch"] for r in states.reports()] == [1, 2, 10]
    assert states.reports(last=2) == [
        {"epoch": 2, "operation_id": "20261206T033000Z-bbbbbb", "outcome": "completed"},
        {"epoch": 10, "operation_id": "20261206T040000Z-cccccc", "outcome": "incomplete"},
    ]
    assert states.reports(last=0) == []
    with pytest.raises(VaultError):
        states.put_report({"epoch": 2, "operation_id": "20261206T033000Z-bbbbbb", "outcome": "rewritten"})
    assert states.reports(last=2)[0]["outcome"] == "completed"


def test_the_tracker_round_trips_with_the_stacks_threshold(store):
    states = StateStore(store, CONFIG)
    assert states.load_tracker() == Tracker(3)
    tracker = Tracker(3)
    down = score_region("us-west-2", [Check("postgres", ok=False)], at=AT)
    for _ in range(3):
        tracker.observe("us-west-2", down)
    tracker.observe("us-east-1", score_region("us-east-1", [Check("postgres", ok=True)], at=AT))
    states.save_tracker(tracker)
    assert StateStore(store, CONFIG).load_tracker() == tracker
    # The stack's current setting wins over the stored one (an operator changed failures_before_down).
    stricter = StateStore(store, CONFIG.model_copy(update={"failures_before_down": 5}))
    assert stricter.load_tracker() == Tracker(5, failures={"us-west-2": 3, "us-east-1": 0}, down=tracker.down)
    tracker.observe("us-west-2", score_region("us-west-2", [Check("postgres", ok=True)], at=AT))
    states.save_tracker(tracker)  # overwritten, not refused
    assert states.load_tracker().down == {"us-west-2": False, "us-east-1": False}


def test_a_damaged_state_or_tracker_names_the_object_and_the_remedy(tmp_path):
    store = LocalStore(tmp_path / "vault")
    store.put(STATE_KEY, b"{not json")
    store.put(TRACKER_KEY, b"{not json")
    states = StateStore(store, CONFIG)
    with pytest.raises(VaultError) as caught:
        states.read()
    assert str(caught.value) == (
        f"vault local:{tmp_path / 'vault'}: failover/state.json is not a failover state (JSONDecodeError); restore "
        "it from a copy or delete it to start again from the stack file's active region"
    )
    with pytest.raises(VaultError, match="failover/monitor.json is not JSON; delete it"):
        states.load_tracker()


def test_a_state_document_from_before_in_progress_still_loads(tmp_path):
    store = LocalStore(tmp_path / "vault")
    old = {"active_region": "us-east-1", "epoch": 4, "changed_at": AT.isoformat(), "reason": "down"}
    store.put(STATE_KEY, json.dumps(old).encode())
    states = StateStore(store, CONFIG)
    assert states.read() == State("us-east-1", 4, AT, "down")
    assert states.claim(4, "us-west-2", "back", "failback to us-west-2", at=AT).epoch == 5
