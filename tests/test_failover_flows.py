"""The monitor, failover and failback flows through Prefect's test harness (a real API): read-only runs on the
session's replicated pairs (their roles never change), promotions on throw-away Redis pairs of this module."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

import pytest

from core.errors import NoHealthyRegionError, StaleEpochError
from core.failover.monitor import EVENT_DOWN
from core.failover.state import STATE_KEY, TRACKER_KEY
from core.failover.topology import FailoverConfig
from core.sources import FilesSourceConfig
from tests.fixtures_replication import RedisPair, started_redis_pair
from tests.test_failover_monitor import http_503, in_sync, pair_config

APPROVAL_POLL = 0.5


@pytest.fixture(autouse=True)
def quick_approval(monkeypatch):
    """The monitor looks for the operator's answer every half second (5 s in production) and gives up after a
    minute (an hour), so a test whose answer never comes fails instead of hanging."""
    import flows.monitor

    monkeypatch.setattr(flows.monitor, "APPROVAL_POLL", APPROVAL_POLL)
    monkeypatch.setattr(flows.monitor, "APPROVAL_TIMEOUT", 60)


def files_source(tmp_path) -> FilesSourceConfig:
    (tmp_path / "app").mkdir(exist_ok=True)
    return FilesSourceConfig(name="app-files", root=str(tmp_path / "app"))


def stored(stack, key: str) -> dict:
    return json.loads(stack.config.vault.store().get(key))


def variable(stack_name: str):
    from prefect.variables import Variable

    return Variable.get(f"genesis-dr-failover-{stack_name}", default=None)


@pytest.fixture
def session_pairs(pg_replica_pair, mysql_replica_pair, redis_replica_pair):
    in_sync(pg_replica_pair, mysql_replica_pair, redis_replica_pair)
    return pg_replica_pair, mysql_replica_pair, redis_replica_pair


def with_changes(config: FailoverConfig, **changes) -> FailoverConfig:
    """``config`` with top-level changes; region changes as ``regions={name: {field: value}}``."""
    data = config.model_dump()
    regions = changes.pop("regions", {})
    for region in data["regions"]:
        region.update(regions.get(region["name"], {}))
    for region, model in zip(data["regions"], config.regions, strict=True):  # model_dump keeps SecretStr objects
        for kind in ("postgres", "mysql", "redis"):
            if region.get(kind) is not None and getattr(model, kind) is not None:
                region[kind]["password"] = getattr(model, kind).password
    return FailoverConfig.model_validate(data | changes)


# ---------------------------------------------------------------- monitor, read-only


def test_monitor_of_a_stack_without_failover_does_nothing(make_stack, tmp_path):
    from core.errors import ConfigError
    from flows.failover import failover
    from flows.monitor import monitor

    stack = make_stack([files_source(tmp_path)])
    assert monitor(stack=stack.name) == {"stack": stack.name, "configured": False, "action": "none", "looks": 1}
    # Every other failover operation refuses it in one line with the remedy (exit 2).
    with pytest.raises(ConfigError, match=f"stack '{stack.name}' has no 'failover:' section; add one"):
        failover(stack=stack.name, target="east", reason="nowhere to go", dry_run=True)


def test_monitor_of_healthy_regions_emits_health_and_keeps_its_count(make_stack, tmp_path, session_pairs):
    from flows.monitor import monitor

    config = pair_config(*session_pairs)
    stack = make_stack([files_source(tmp_path)], failover=config)
    out = monitor(stack=stack.name)

    assert (out["configured"], out["action"], out["refenced"]) == (True, "none", [])
    assert out["state"]["active_region"] == "primary" and out["state"]["epoch"] == 0
    assert out["events"] == ["genesis-dr.region.health:primary", "genesis-dr.region.health:standby"]
    assert {n: r["healthy"] for n, r in out["assessment"]["regions"].items()} == {"primary": True, "standby": True}
    # The monitor's count is kept in the vault between runs; the state mirrored into a Prefect variable.
    tracker = stored(stack, TRACKER_KEY)
    assert (tracker["failures_before_down"], tracker["failures"], tracker["down"]) == (
        3,
        {"primary": 0, "standby": 0},
        {"primary": False, "standby": False},
    )
    assert variable(stack.name) == out["state"]
    # Nothing in the state, the tracker or the flow's result shows a database password.
    text = json.dumps(out) + json.dumps(stored(stack, TRACKER_KEY))
    assert session_pairs[1].primary.password not in text and session_pairs[2].primary.password not in text


def test_monitor_looks_every_interval_within_its_window(make_stack, tmp_path, session_pairs):
    """The deployment's window: a look every check_interval_seconds while it lasts (0 s, 1 s, 2 s in 2.5 s)."""
    from flows.monitor import monitor

    config = with_changes(pair_config(*session_pairs), check_interval_seconds=1)
    stack = make_stack([files_source(tmp_path)], failover=config)
    started = time.monotonic()
    out = monitor(stack=stack.name, window_seconds=2.5)
    assert (out["looks"], out["action"]) == (3, "none")
    assert time.monotonic() - started >= 2  # the third look started one interval after the second


def every_region_down(url: str) -> FailoverConfig:
    return FailoverConfig.model_validate(
        {
            "failures_before_down": 1,
            "active_region": "west",
            "policy": "automatic",
            "regions": [
                {"name": "west", "priority": 1, "health_urls": [url]},
                {"name": "east", "priority": 2, "health_urls": [url]},
            ],
        }
    )


def test_monitor_with_every_region_down_fails_no_healthy_region(make_stack, tmp_path):
    from flows.monitor import monitor

    with http_503() as url:
        stack = make_stack([files_source(tmp_path)], failover=every_region_down(url))
        with pytest.raises(NoHealthyRegionError) as failed:
            monitor(stack=stack.name)
    assert str(failed.value).startswith(f"stack {stack.name}: active region west is down and every region is down (")
    assert f"east: not chosen: unhealthy (score 0.00; failed: http {url})" in str(failed.value)
    assert stored(stack, TRACKER_KEY)["down"] == {"west": True, "east": True}
    assert stack.config.vault.store().exists(STATE_KEY) is False  # nothing acted: still epoch 0 from the stack file


def test_monitor_pages_once_when_every_region_goes_down(make_stack, tmp_path):
    from flows.monitor import monitor
    from tests.fixtures_notify import Receiver

    with http_503() as url, Receiver() as rx:
        notifications = {"webhooks": [{"name": "ops", "url": rx.url("/hook"), "activities": ["monitor"]}]}
        stack = make_stack([files_source(tmp_path)], failover=every_region_down(url), notifications=notifications)
        with pytest.raises(NoHealthyRegionError):
            monitor(stack=stack.name)
        pages = [p.body for p in rx.wait(2)]
        assert [(p["activity"], p["outcome"], p["subject"], p["severity"]) for p in pages] == [
            ("monitor", "failure", "west", "critical"),
            ("monitor", "failure", "east", "warning"),
        ]
        assert pages[0]["title"] == f"Active region west DOWN on stack {stack.name}"
        assert pages[0]["details"]["condition"] == "all_regions_unhealthy"
        assert pages[0]["summary"].endswith("active region west is down and no region qualifies as a failover target")
        # The next run pages no more (nothing changed since), and still fails.
        with pytest.raises(NoHealthyRegionError):
            monitor(stack=stack.name)
        time.sleep(0.5)
        assert len(rx.posts) == 2


# ---------------------------------------------------------------- failover flow, read-only


def test_failover_dry_run_plans_and_changes_nothing_and_refusals(make_stack, tmp_path, session_pairs):
    from core.errors import TargetRefusedError
    from flows.failback import failback
    from flows.failover import failover

    stack = make_stack([files_source(tmp_path)], failover=pair_config(*session_pairs))
    out = failover(stack=stack.name, target="standby", reason="drill: dry run", dry_run=True)

    assert (out["dry_run"], out["state"]["epoch"], out["plan"]["target"], out["plan"]["epoch"]) == (
        True,
        0,
        "standby",
        0,
    )
    lines = out["plan_text"].splitlines()
    assert lines[:2] == ["failover to standby: from primary (epoch 0 -> 1)", "reason: drill: dry run"]
    steps = [s["action"] + " " + s["component"] + " " + s["region"] for s in out["plan"]["steps"]]
    assert steps == [
        "fence postgres primary",
        "fence mysql primary",
        "fence redis primary",
        "wait_replayed postgres standby",
        "wait_replayed mysql standby",
        "wait_replayed redis standby",
        "promote postgres standby",
        "promote mysql standby",
        "promote redis standby",
        "fence redis primary",
        "prove_writes postgres standby",
        "prove_writes mysql standby",
        "prove_writes redis standby",
        "record_state state standby",
    ]
    # Nothing moved: no state, no report, the roles as they were.
    store = stack.config.vault.store()
    assert not store.exists(STATE_KEY) and list(store.list("failover/reports/")) == []
    session_pairs[0].wait_streaming()

    # The state read by the caller moved: refused before anything (exit 24); the active region as target: 27.
    with pytest.raises(StaleEpochError, match="failover state is at epoch 0 .*, not 3"):
        failover(stack=stack.name, target="standby", reason="late", expected_epoch=3)
    with pytest.raises(TargetRefusedError, match="failover target primary is the active region already"):
        failover(stack=stack.name, target="primary", reason="same")
    with pytest.raises(TargetRefusedError, match="failback refused: the primary region primary is active already"):
        failback(stack=stack.name, reason="nothing to do")
    assert not store.exists(STATE_KEY)


# ---------------------------------------------------------------- promotions on throw-away Redis pairs


@pytest.fixture
def stack_in_trouble() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def redis_pair() -> Iterator[RedisPair]:
    """A Redis primary ("west") and its replica ("east") that a test may fail over."""
    with started_redis_pair() as pair:
        yield pair


def redis_regions(pair: RedisPair, policy: str, down_url: str, failures_before_down: int = 1) -> FailoverConfig:
    """West holds the primary, east the replica. West's application answers ``down_url`` (a 503) and weighs
    most in its score: the region is down while its Redis still answers, so the flows' own paths are tested
    without waiting on a dead link (tests/test_failover_e2e.py kills whole regions)."""

    def db(node) -> dict:
        return {"host": "127.0.0.1", "port": node.port, "password": node.password}

    return FailoverConfig.model_validate(
        {
            "policy": policy,
            "failures_before_down": failures_before_down,
            "active_region": "west",
            "regions": [
                {
                    "name": "west",
                    "priority": 1,
                    "redis": db(pair.primary),
                    "health_urls": [down_url],
                    "weights": {f"http {down_url}": 3},
                },
                {"name": "east", "priority": 2, "redis": db(pair.replica)},
            ],
        }
    )


def role(node) -> str:
    return node.client().info("replication")["role"]


def answer_approval(stack_name: str, approve: bool, reason: str = "", timeout: float = 60, meanwhile=None) -> dict:
    """From another thread, as an operator in the UI: wait for the paused monitor of ``stack_name``, read the
    form's description, call ``meanwhile`` (its result kept), resume it with the answer. Returns what it saw
    (or the error it met)."""
    import contextvars

    seen: dict = {}

    def run() -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType
        from prefect.flow_runs import resume_flow_run

        try:
            deadline = time.monotonic() + timeout
            paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
            with get_client(sync_client=True) as client:
                while True:
                    mine = [
                        r
                        for r in client.read_flow_runs(flow_run_filter=paused)
                        if r.parameters.get("stack") == stack_name
                    ]
                    if mine:
                        break
                    assert time.monotonic() < deadline, "the monitor never paused"
                    time.sleep(0.2)
                # The run is Paused before its form is saved: wait for the form, as the UI does.
                keyset = mine[0].state.state_details.run_input_keyset
                while True:
                    try:
                        client.read_flow_run_input(mine[0].id, keyset["schema"])
                        seen["description"] = client.read_flow_run_input(mine[0].id, keyset["description"])
                        break
                    except Exception:  # noqa: BLE001 - 404 until the form is saved
                        assert time.monotonic() < deadline, "the paused monitor never saved its form"
                        time.sleep(0.2)
            if meanwhile is not None:
                seen["meanwhile"] = meanwhile()
            resume_flow_run(mine[0].id, run_input={"approve": approve, "reason": reason})
        except BaseException as exc:  # reported to the test's thread
            seen["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
    thread.start()
    seen["thread"] = thread
    return seen


def test_manual_policy_pauses_with_the_plan_declined_changes_nothing_approved_fails_over(
    make_stack, tmp_path, redis_pair, stack_in_trouble
):
    from flows.monitor import monitor

    down = stack_in_trouble.enter_context(http_503())
    stack = make_stack([files_source(tmp_path)], failover=redis_regions(redis_pair, "manual", down))
    redis_pair.primary.client().set("order:1", "before the outage")
    redis_pair.wait_linked()

    # While one run waits for the answer, the next one does not ask (nor page) again.
    # Declined: the run completes, nothing changed (east still a replica, no state written).
    seen = answer_approval(stack.name, approve=False, meanwhile=lambda: monitor(stack=stack.name)["action"])
    out = monitor(stack=stack.name)
    seen["thread"].join(10)
    assert "error" not in seen, seen.get("error")
    assert (out["action"], seen["meanwhile"]) == ("declined", "approval pending")
    assert "failover to east: from west (epoch 0 -> 1)" in seen["description"]
    assert "promote redis in east" in seen["description"] and "Tick **approve**" in seen["description"]
    assert out["plan_text"].splitlines()[0] == "failover to east: from west (epoch 0 -> 1)"
    assert role(redis_pair.replica) == "slave" and not stack.config.vault.store().exists(STATE_KEY)

    # Approved (with the operator's reason): the failover runs as planned, as a subflow of the monitor.
    seen = answer_approval(stack.name, approve=True, reason="west lost power")
    out = monitor(stack=stack.name)
    seen["thread"].join(10)
    assert "error" not in seen, seen.get("error")
    assert out["action"] == "failover"
    report = out["failover"]["report"]
    assert (report["outcome"], report["source"], report["target"], report["epoch"]) == ("completed", "west", "east", 1)
    assert report["reason"] == "approved: west lost power"
    assert report["to_fence_when_back"] == []
    assert role(redis_pair.replica) == "master" and role(redis_pair.primary) == "slave"
    assert redis_pair.replica.client().get("order:1") == b"before the outage"
    state = stored(stack, STATE_KEY)
    assert (state["active_region"], state["epoch"], state["in_progress"]) == ("east", 1, None)
    assert variable(stack.name) == state
    (kept,) = [
        json.loads(stack.config.vault.store().get(k)) for k in stack.config.vault.store().list("failover/reports/")
    ]
    assert kept["operation_id"] == report["operation_id"]


def test_automatic_policy_fails_over_after_the_threshold_and_fences_a_returning_primary(
    make_stack, tmp_path, redis_pair, stack_in_trouble
):
    from flows.monitor import monitor

    down = stack_in_trouble.enter_context(http_503())
    stack = make_stack([files_source(tmp_path)], failover=redis_regions(redis_pair, "automatic", down, 2))
    first = monitor(stack=stack.name)
    assert (first["action"], first["assessment"]["states"]["west"]["consecutive_failures"]) == ("none", 1)
    assert first["events"] == ["genesis-dr.region.health:west", "genesis-dr.region.health:east"]
    second = monitor(stack=stack.name)
    assert second["action"] == "failover"
    assert second["events"][-1] == f"{EVENT_DOWN}:west"
    report = second["failover"]["report"]
    assert (report["outcome"], report["target"], report["epoch"]) == ("completed", "east", 1)
    assert report["reason"] == f"monitor: region west down (http {down})"
    assert role(redis_pair.replica) == "master" and role(redis_pair.primary) == "slave"
    assert variable(stack.name)["active_region"] == "east"

    # The old primary comes back as a primary (a restart from an old config): the next run fences it again.
    redis_pair.primary.client().replicaof("no", "one")
    third = monitor(stack=stack.name)
    assert third["action"] == "none" and third["state"]["active_region"] == "east"
    assert [(s["name"], s["ok"]) for s in third["refenced"]] == [("fence", True)], third["refenced"]
    assert role(redis_pair.primary) == "slave"
    RedisPair(primary=redis_pair.replica, replica=redis_pair.primary).wait_linked()

    # The events reached Prefect: per run one health event per region (score and lag: the metric), one down.
    events = region_events(stack.name, 7)
    assert sorted((e.event, e.resource["prefect.resource.name"]) for e in events) == sorted(
        [("genesis-dr.region.health", "west"), ("genesis-dr.region.health", "east")] * 3 + [(EVENT_DOWN, "west")]
    )
    down = next(e for e in events if e.event == EVENT_DOWN)
    assert (down.payload, down.resource["genesis-dr.stack"]) == ({"score": 0.25, "active": True}, stack.name)
    east = [e.payload for e in events if e.event == "genesis-dr.region.health" and e.resource.id.endswith(".east")]
    assert sorted((p["active"], p["healthy"], p["lag_s"]) for p in east) == [
        (False, True, 0.0),
        (False, True, 0.0),
        (True, True, None),
    ]


def region_events(stack_name: str, count: int, timeout: float = 20) -> list:
    """The region events of ``stack_name`` the Prefect API holds, once ``count`` of them arrived (they are
    written asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter

    query = EventFilter(resource=EventResourceFilter(id_prefix=[f"genesis-dr.region.{stack_name}."]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(query, limit=50).events
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def test_failover_stopped_halfway_reports_each_component_then_a_forced_run_finishes_it(
    make_stack, tmp_path, redis_pair
):
    from core.errors import FailoverIncompleteError
    from flows.failover import failover

    def db(node) -> dict:
        return {"host": "127.0.0.1", "port": node.port, "password": node.password}

    config = FailoverConfig.model_validate(
        {
            "active_region": "west",
            "regions": [
                {"name": "west", "priority": 1, "redis": db(redis_pair.primary)},
                {"name": "east", "priority": 2, "redis": db(redis_pair.replica)},
            ],
        }
    )
    stack = make_stack([files_source(tmp_path)], failover=config)
    # Once promoted, east refuses writes (it wants two replicas, it gets one): the write proof fails.
    redis_pair.replica.client().config_set("min-replicas-to-write", 2)

    with pytest.raises(FailoverIncompleteError) as stopped:
        failover(stack=stack.name, target="east", reason="planned move")
    message = str(stopped.value)
    assert message.startswith("failover to east stopped at 'prove_writes redis in east': "), message
    assert "the state stays at epoch 1 in progress" in message
    report = stopped.value.report
    assert (report["outcome"], report["epoch"]) == ("incomplete", 1)
    assert [(s["action"], s["status"]) for s in report["steps"]][-2:] == [
        ("prove_writes", "failed"),
        ("record_state", "skipped"),
    ]
    state = stored(stack, STATE_KEY)
    assert (state["active_region"], state["epoch"], state["in_progress"]) == ("east", 1, "failover to east")
    assert variable(stack.name) == state

    # Not forced, nothing runs on top of it; fixed and forced, the same failover finishes (done steps are no-ops).
    with pytest.raises(StaleEpochError, match="'failover to east' is in progress"):
        failover(stack=stack.name, target="east", reason="again")
    redis_pair.replica.client().config_set("min-replicas-to-write", 0)
    out = failover(stack=stack.name, target="east", reason="finish the move", force=True)
    assert (out["report"]["outcome"], out["report"]["epoch"]) == ("completed", 2)
    state = stored(stack, STATE_KEY)
    assert (state["active_region"], state["epoch"], state["in_progress"]) == ("east", 2, None)
    assert role(redis_pair.replica) == "master" and role(redis_pair.primary) == "slave"


def test_monitor_from_a_deployment_starts_the_failover_deployment_for_real(
    make_stack, tmp_path, redis_pair, stack_in_trouble, monkeypatch
):
    """The automatic policy's failover as the deployed monitor starts it: a run of failover/failover with the
    target, the epoch it decided at and dry_run off (the deployment's own default is a dry run). No worker
    serves it here: the monitor waits its (shortened) time and says where the run stands; nothing changed."""
    from prefect.client.orchestration import get_client

    import flows.monitor
    from core.errors import DRError

    monkeypatch.setattr(flows.monitor, "FAILOVER_WAIT", 1)
    down = stack_in_trouble.enter_context(http_503())
    stack = make_stack([files_source(tmp_path)], failover=redis_regions(redis_pair, "automatic", down))
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("failover")
        deployment = client.create_deployment(
            flow_id=flow_id, name="failover", entrypoint="flows/failover.py:failover", parameters={"dry_run": True}
        )
    try:
        with pytest.raises(DRError, match=r"the failover run \S+ \(failover/failover\) is Scheduled"):
            flows.monitor.monitor(stack=stack.name, failover_via="deployment")
        with get_client(sync_client=True) as client:
            (run,) = [r for r in client.read_flow_runs() if r.deployment_id == deployment]
            parameters = run.parameters
            client.delete_flow_run(run.id)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment)
    assert parameters == {
        "stack": stack.name,
        "target": "east",
        "reason": f"monitor: region west down (http {down})",
        "expected_epoch": 0,
        "dry_run": False,
    }
    assert role(redis_pair.replica) == "slave" and not stack.config.vault.store().exists(STATE_KEY)
