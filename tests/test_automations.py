"""The stack's Prefect automations (deployments/automations.py) on the session's Prefect server.

A real backup of a source that is gone (a files source whose volume is not mounted) fails: the reactive automation posts to the stack's webhook, Slack and
PagerDuty receivers naming the run; no backup of it completes, so the proactive one pages; a source whose
completed-backup events keep arriving is never paged. Then the stack loses its channels and the automations
and their blocks go.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import timedelta

from core.notify.config import NotificationsConfig
from core.sources import FilesSourceConfig, PostgresSourceConfig, RedisSourceConfig
from core.stack import StackConfig
from deployments.automations import (
    BACKUP_COMPLETED,
    WEBHOOK_SCHEMA,
    apply_automations,
    backup_interval,
    overdue_automation,
    source_resource,
)
from tests.fixtures_notify import Posted, Receiver


def _config(schedules: dict | None = None) -> StackConfig:
    return StackConfig(
        stack="p",
        vault={"path": "/nonexistent/vault"},
        sources=[
            PostgresSourceConfig(name="app-db").model_dump(),
            RedisSourceConfig(name="cache").model_dump(),
            FilesSourceConfig(name="uploads", root="/srv").model_dump(),
        ],
        schedules=schedules or {},
    )


def test_backup_interval_is_the_shortest_active_schedule_that_takes_the_source():
    default = _config()
    assert backup_interval(default, "app-db") == (timedelta(minutes=5), "incremental")
    assert backup_interval(default, "cache") == (timedelta(minutes=15), "redis")  # Redis takes fulls only
    assert backup_interval(default, "uploads") == (timedelta(minutes=5), "incremental")
    quieter = _config({"incremental": "off", "redis": "off"})
    assert backup_interval(quieter, "app-db") == (timedelta(hours=1), "differential")
    assert backup_interval(quieter, "cache") == (timedelta(hours=6), "full")
    weekdays = _config({"incremental": "off", "differential": "0 9 * * 1-5", "full": "0 5 1 * *"})
    assert backup_interval(weekdays, "app-db") == (timedelta(days=3), "differential")  # Friday 09:00 to Monday
    assert backup_interval(weekdays, "cache") == (timedelta(minutes=15), "redis")
    monthly = _config({"incremental": "off", "differential": "off", "full": "0 5 1 * *", "redis": "@daily"})
    assert backup_interval(monthly, "uploads") == (timedelta(days=31), "full")  # the longest month
    assert backup_interval(monthly, "cache") == (timedelta(days=1), "redis")
    nothing = _config({"incremental": "off", "differential": "off", "full": "off", "redis": "off"})
    assert backup_interval(nothing, "app-db") is None


def test_overdue_trigger_counts_completed_backups_of_its_source_only():
    automation = overdue_automation("p", "app-db", timedelta(minutes=10), "twice 5 min", [])
    trigger = automation.trigger
    assert (trigger.posture.value, trigger.threshold, trigger.within) == ("Proactive", 1, timedelta(minutes=10))
    assert trigger.expect == {BACKUP_COMPLETED}
    assert trigger.match.model_dump() == {"prefect.resource.id": "genesis-dr.source.p.app-db"}


def test_an_event_that_cannot_be_emitted_is_a_warning_never_an_error(prefect_api):
    import logging

    from tasks.events import emit_backup_completed

    class Records(logging.Handler):  # not caplog: Prefect's logging setup replaces the root logger's handlers
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    handler, logger = Records(), logging.getLogger("genesis_dr.events")
    logger.addHandler(handler)
    try:
        too_large = "x" * 1_600_000  # over the server's maximum event size (1.5 MB): Prefect refuses to send it
        assert emit_backup_completed("p", "app-db", "full", too_large) is None
    finally:
        logger.removeHandler(handler)
    (record,) = handler.records
    assert record.levelname == "WARNING"
    assert re.fullmatch(
        f"could not emit {BACKUP_COMPLETED} for full backup x{{80}} of app-db: "
        r"EventTooLarge: Event is too large to emit \(16\d{5} > 1500000 bytes\)",
        record.getMessage(),
    ), record.getMessage()


def _wait_for(receiver: Receiver, matches, timeout: float) -> Posted:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in list(receiver.posts) if matches(p)]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no matching post within {timeout} s; got {[p.path for p in receiver.posts]}")


def _automation_post(path: str, *words: str):
    """A post of the automations' blocks (the flows' own notifications go to the same receivers)."""

    def matches(post: Posted) -> bool:
        body = post.body if isinstance(post.body, dict) else {}
        if post.path != path:
            return False
        if path == "/slack":
            text = "" if "blocks" in body else body.get("text", "")
        elif path == "/pd":
            payload = body.get("payload", {})
            text = payload.get("summary", "") + str(payload.get("custom_details", ""))
            text = text if payload.get("class") == "automation" else ""
        else:  # a webhook channel
            text = body.get("subject", "") + body.get("body", "") if body.get("schema") == WEBHOOK_SCHEMA else ""
        return bool(text) and all(w in text for w in words)

    return matches


def test_failed_run_notifies_and_missing_backups_page(make_stack, tmp_path):
    from prefect import tags
    from prefect.client.orchestration import get_client

    from cli.prefect_api import RUN_TAG
    from deployments.tags import stack_tag
    from flows.backup import backup
    from tasks.events import emit_backup_completed

    (tmp_path / "files").mkdir()
    with Receiver() as rx:
        stack = make_stack(
            [
                # its volume is not mounted: the backup fails at once (not a transient failure to retry)
                FilesSourceConfig(name="lost-disk", root=str(tmp_path / "unmounted")),
                FilesSourceConfig(name="busy", root=str(tmp_path / "files")),
            ],
            notifications={
                "webhooks": [{"name": "ops", "url": rx.url("/hook")}],
                "slack": {"webhook_url": rx.url("/slack")},
                "pagerduty": {"routing_key": "rk-automation-secret", "url": rx.url("/pd"), "severity": "error"},
            },
        )
        # another stack on the same server, with its own channel: its on-call hears of its own runs only
        neighbour = make_stack(
            [FilesSourceConfig(name="lost-disk", root=str(tmp_path / "unmounted"))],
            notifications={"webhooks": [{"name": "ops", "url": rx.url("/neighbour")}]},
        )
        assert len(apply_automations(neighbour.config)) == 2
        name = stack.name
        lines = apply_automations(stack.config, overdue_within=timedelta(seconds=10))
        assert sorted(lines) == [
            f"automation 'genesis-dr {name} backup overdue: busy' created",
            f"automation 'genesis-dr {name} backup overdue: lost-disk' created",
            f"automation 'genesis-dr {name} run failed: pagerduty' created",
            f"automation 'genesis-dr {name} run failed: slack' created",
            f"automation 'genesis-dr {name} run failed: webhook-ops' created",
        ]
        assert apply_automations(stack.config, overdue_within=timedelta(seconds=10)) == []  # idempotent

        # "busy" completes a backup every 2 s all along; "lost-disk" never does
        stop = threading.Event()

        def backups_of_busy() -> None:
            count = 0
            while not stop.is_set():
                count += 1
                emit_backup_completed(name, "busy", "incremental", f"backup_20261206_000000_{count:08x}")
                stop.wait(2)

        emitter = threading.Thread(target=backups_of_busy, daemon=True)
        emitter.start()
        try:
            with tags(RUN_TAG, stack_tag(name)):  # as `genesis-dr backup full --stack NAME` runs it
                state = backup(stack=name, backup_type="full", sources=["lost-disk"], return_state=True)
            assert state.is_failed()
            with tags(RUN_TAG, stack_tag(neighbour.name)):
                theirs = backup(stack=neighbour.name, backup_type="full", sources=["lost-disk"], return_state=True)
            assert theirs.is_failed()
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(state.state_details.flow_run_id)
                their_run = client.read_flow_run(theirs.state_details.flow_run_id)

            for path in ("/hook", "/slack", "/pd"):
                post = _wait_for(rx, _automation_post(path, run.name, str(run.id), "Failed", "backup"), 20)
            assert post.body["routing_key"] == "rk-automation-secret"
            assert post.body["payload"]["severity"] == "error"  # the channel's own severity for a failed run
            hook = _wait_for(rx, _automation_post("/hook", run.name), 1).body
            assert hook["subject"] == f"genesis-dr {name}: backup run {run.name} Failed"
            assert "lost-disk" in hook["body"] and f"Stack: {name}." in hook["body"]

            page = _wait_for(rx, _automation_post("/pd", "PAGE", "lost-disk"), 40).body
            assert page["payload"]["severity"] == "critical"  # overdue backups page
            assert page["dedup_key"] == f"genesis-dr/automation/{page['payload']['summary']}"  # one incident
            assert page["payload"]["summary"] == f"genesis-dr {name}: PAGE: no completed backup of lost-disk in 10 s"
            _wait_for(rx, _automation_post("/hook", "PAGE", "lost-disk"), 5)
            _wait_for(rx, _automation_post("/slack", "PAGE", "lost-disk"), 5)
            # both windows started together: had busy's events not counted, its page would have come with this one
            time.sleep(3)
        finally:
            stop.set()
            emitter.join(5)
        assert [p.path for p in rx.posts if "PAGE" in str(p.body) and "busy" in str(p.body)] == []
        # each stack's channel got its own stack's failed run, not the other's
        _wait_for(rx, _automation_post("/neighbour", their_run.name, "Failed"), 5)
        assert [p.path for p in rx.posts if p.path == "/neighbour" and run.name in str(p.body)] == []
        assert [p.path for p in rx.posts if p.path != "/neighbour" and their_run.name in str(p.body)] == []
    apply_automations(neighbour.config.model_copy(update={"notifications": NotificationsConfig()}))

    # the stack drops its channels: every automation of ours goes, with the blocks only they used
    bare = stack.config.model_copy(update={"notifications": NotificationsConfig()})
    assert sorted(apply_automations(bare)) == sorted(line.replace("created", "removed") for line in lines)
    with get_client(sync_client=True) as client:
        left = [a.name for a in client.read_automations() if a.name.startswith(f"genesis-dr {name} ")]
        blocks = [d.name for d in client.read_block_documents() if (d.name or "").startswith(f"genesis-dr-{name}-")]
    assert (left, blocks) == ([], [])


def test_channel_filters_paused_and_operators_automations(make_stack, tmp_path):
    from prefect.automations import AutomationCore
    from prefect.client.orchestration import get_client
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import EventTrigger

    name = "auto-filters"
    with Receiver() as rx:
        stack = make_stack(
            [FilesSourceConfig(name="app", root=str(tmp_path))],
            name=name,
            notifications={
                "webhooks": [
                    {"name": "ops", "url": rx.url("/ops")},
                    {"name": "DR team", "url": rx.url("/dr"), "activities": ["drill", "validation"]},
                    {"name": "wins", "url": rx.url("/wins"), "on": ["success"]},  # no failures: no automation
                ]
            },
        )
        assert sorted(apply_automations(stack.config)) == [
            f"automation 'genesis-dr {name} backup overdue: app' created",
            f"automation 'genesis-dr {name} run failed: webhook-dr-team' created",
            f"automation 'genesis-dr {name} run failed: webhook-ops' created",
        ]
        with get_client(sync_client=True) as client:
            (dr_team,) = client.read_automations_by_name(f"genesis-dr {name} run failed: webhook-dr-team")
            (ops,) = client.read_automations_by_name(f"genesis-dr {name} run failed: webhook-ops")
            (overdue,) = client.read_automations_by_name(f"genesis-dr {name} backup overdue: app")
            tag = {"prefect.resource.role": "tag", "prefect.resource.id": ["prefect.tag.dr", "prefect.tag.genesis-dr"]}
            own = {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.genesis-dr-stack:{name}"}
            assert [m.model_dump() for m in dr_team.trigger.match_related] == [
                tag,
                own,
                {"prefect.resource.role": "flow", "prefect.resource.name": ["drill", "validate"]},
            ]
            assert [m.model_dump() for m in ops.trigger.match_related] == [tag, own]  # every flow of ours
            assert [a.block_document_id for a in overdue.actions] == [ops.actions[0].block_document_id]
            # the webhook's URL (often a token) is a secret value of the block, never a plain field
            block = client.read_block_document(ops.actions[0].block_document_id, include_secrets=False)
            assert (block.name, block.data["url"]) == (f"genesis-dr-{name}-webhook-ops", "{{url}}")
            assert rx.url("/ops") not in json.dumps(block.data, default=str)
            mine = client.create_automation(
                AutomationCore(name=f"{name} my own", trigger=EventTrigger(expect={"x"}), actions=[DoNothing()])
            )
            client.pause_automation(overdue.id)
        # a new schedule changes the window: updated in place, still paused
        faster = stack.config.model_copy(
            update={"schedules": stack.config.schedules.model_copy(update={"incremental": "*/2 * * * *"})}
        )
        assert apply_automations(faster) == [f"automation 'genesis-dr {name} backup overdue: app' updated"]
        with get_client(sync_client=True) as client:
            (overdue,) = client.read_automations_by_name(f"genesis-dr {name} backup overdue: app")
            assert (overdue.enabled, overdue.trigger.within) == (False, timedelta(minutes=4))
            assert overdue.trigger.match.model_dump() == {"prefect.resource.id": source_resource(name, "app")}
            bare = stack.config.model_copy(update={"notifications": NotificationsConfig()})
            assert len(apply_automations(bare)) == 3
            assert client.read_automation(mine).name == f"{name} my own"
            client.delete_automation(mine)
