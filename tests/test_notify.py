"""Notifications over real HTTP to local receivers (and SNS on moto), asserted on what was posted.

A receiver that is down, slow or failing never fails the caller: it is one failed Delivery
with a one-line reason, counted, and no secret (webhook URL, routing key) appears in any
delivery, error or log line.
"""

from __future__ import annotations

import json
import secrets
import time

from pydantic import SecretStr

from core.notify import Event, notify
from core.notify.config import NotificationsConfig
from core.notify.payloads import sns_subject
from tests.fixtures_notify import Receiver, SnsInbox, closed_url


def _secrets() -> dict[str, str]:
    return {
        "slack": f"T0/B0/{secrets.token_hex(12)}",
        "routing_key": secrets.token_hex(16),
        "hook_token": secrets.token_hex(10),
    }


def _config(rx: Receiver, s: dict[str, str], **changes) -> NotificationsConfig:
    data = {
        "slack": {"webhook_url": rx.url(f"/slack/services/{s['slack']}")},
        "pagerduty": {"routing_key": s["routing_key"], "url": rx.url("/pd/v2/enqueue"), "severity": "error"},
        "webhooks": [{"name": "ops", "url": rx.url(f"/hook?token={s['hook_token']}")}],
        "timeout_seconds": 2,
    }
    return NotificationsConfig.model_validate(data | changes)


def _failure(**changes) -> Event:
    fields = dict(
        activity="backup",
        outcome="failure",
        stack="prod",
        title="Backup FAILED on stack prod",
        summary="1 of 2 full backups failed - app-db: source app-db (127.0.0.1:5432) is down; start it",
        subject="full",
        details={"failed": ["app-db: source app-db (127.0.0.1:5432) is down; start it"], "stored": "1.0 MiB"},
        url="http://prefect.example/runs/flow-run/42",
    )
    return Event(**(fields | changes))


def _assert_no_secret(text: str, s: dict[str, str]) -> None:
    for value in s.values():
        assert value not in text


def test_slack_pagerduty_and_webhook_receive_the_event_as_json():
    s = _secrets()
    with Receiver(status=202) as rx:
        deliveries = notify(_config(rx, s), _failure())
        posts = rx.wait(3)

    assert [(d.channel, d.ok, d.detail) for d in deliveries] == [
        ("slack", True, f"HTTP 202 from 127.0.0.1:{rx.port}"),
        ("pagerduty", True, f"HTTP 202 from 127.0.0.1:{rx.port}"),
        ("webhook:ops", True, f"HTTP 202 from 127.0.0.1:{rx.port}"),
    ]
    assert all(0 <= d.seconds < 2 for d in deliveries)
    assert all(p.headers["Content-Type"] == "application/json" for p in posts)

    (slack,) = rx.to("/slack/")
    assert slack.path == f"/slack/services/{s['slack']}"
    assert slack.body["text"] == (
        "[genesis-dr] prod: backup FAILED - full: 1 of 2 full backups failed - app-db: source app-db "
        "(127.0.0.1:5432) is down; start it"
    )
    blocks = slack.body["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "context", "actions"]
    assert blocks[0]["text"] == {"type": "plain_text", "text": "Backup FAILED on stack prod"}
    assert blocks[1]["text"]["text"].startswith(":rotating_light: 1 of 2 full backups failed")
    assert blocks[2]["fields"] == [
        {"type": "mrkdwn", "text": "*failed*\napp-db: source app-db (127.0.0.1:5432) is down; start it"},
        {"type": "mrkdwn", "text": "*stored*\n1.0 MiB"},
    ]
    assert blocks[4]["elements"][0]["url"] == "http://prefect.example/runs/flow-run/42"

    (pd,) = rx.to("/pd/")
    assert pd.body["routing_key"] == s["routing_key"]
    assert pd.body["event_action"] == "trigger"
    assert pd.body["dedup_key"] == "genesis-dr/prod/backup/full"
    assert pd.body["payload"]["severity"] == "error"
    assert pd.body["payload"]["source"] == "genesis-dr/prod"
    assert pd.body["payload"]["component"] == "full"
    assert pd.body["payload"]["class"] == "backup"
    assert pd.body["payload"]["summary"].startswith("[genesis-dr] prod: backup FAILED - full: 1 of 2")
    assert pd.body["payload"]["custom_details"] == _failure().details
    assert pd.body["links"] == [{"href": "http://prefect.example/runs/flow-run/42", "text": "Prefect run"}]

    (hook,) = rx.to("/hook")
    assert hook.path == f"/hook?token={s['hook_token']}"
    assert hook.body == {
        "schema": "genesis-dr.notification/1",
        "activity": "backup",
        "outcome": "failure",
        "stack": "prod",
        "title": "Backup FAILED on stack prod",
        "summary": _failure().summary,
        "subject": "full",
        "details": _failure().details,
        "url": "http://prefect.example/runs/flow-run/42",
        "at": hook.body["at"],
        "dedup_key": "genesis-dr/prod/backup/full",
    }
    _assert_no_secret(repr(deliveries), s)


def test_a_repeated_failure_keeps_its_dedup_key_and_the_next_success_resolves_it():
    s = _secrets()
    with Receiver(status=202, answer={"status": "success", "message": "Event processed"}) as rx:
        config = _config(rx, s, slack=None, webhooks=[])
        notify(config, _failure())
        notify(config, _failure(summary="1 of 2 full backups failed - app-db: still down"))
        notify(config, _failure(subject="incremental"))  # another thing failing is another incident
        ok = notify(config, _failure(outcome="success", summary="2 full backups committed"))
        posts = rx.wait(4)
    assert [(p.body["event_action"], p.body["dedup_key"]) for p in posts] == [
        ("trigger", "genesis-dr/prod/backup/full"),
        ("trigger", "genesis-dr/prod/backup/full"),
        ("trigger", "genesis-dr/prod/backup/incremental"),
        ("resolve", "genesis-dr/prod/backup/full"),
    ]
    assert posts[3].body == {
        "routing_key": s["routing_key"],
        "event_action": "resolve",
        "dedup_key": "genesis-dr/prod/backup/full",
    }
    assert [(d.channel, d.ok) for d in ok] == [("pagerduty", True)]


def test_channels_get_only_the_outcomes_and_activities_they_ask_for():
    s = _secrets()
    with Receiver() as rx:
        config = _config(
            rx,
            s,
            slack={"webhook_url": rx.url(f"/slack/{s['slack']}"), "on": ["failure"]},
            pagerduty={"routing_key": s["routing_key"], "url": rx.url("/pd"), "activities": ["drill"]},
            webhooks=[
                {"name": "all", "url": rx.url("/all")},
                {"name": "validations", "url": rx.url("/val"), "activities": ["validation"]},
            ],
        )
        success = notify(config, _failure(outcome="success"))
        drill_failure = notify(config, _failure(activity="drill", subject="monthly"))
        posts = rx.wait(4)  # notify returns once each post is answered: waiting for a fifth would time out
    assert [d.channel for d in success] == ["webhook:all"]
    assert [d.channel for d in drill_failure] == ["slack", "pagerduty", "webhook:all"]
    assert sorted(p.path.split("?")[0].split("/")[1] for p in posts) == ["all", "all", "pd", "slack"]
    assert notify(NotificationsConfig(), _failure()) == []  # no channel: nothing sent, nothing failed


def test_down_slow_and_failing_receivers_are_counted_never_raised():
    s = _secrets()
    with Receiver() as good, Receiver(delay=3) as slow, Receiver(status=503) as failing:
        config = NotificationsConfig.model_validate(
            {
                "slack": {"webhook_url": closed_url(f"/services/{s['slack']}")},
                "pagerduty": {"routing_key": s["routing_key"], "url": failing.url("/v2/enqueue")},
                "webhooks": [
                    {"name": "slow", "url": slow.url(f"/hook?token={s['hook_token']}")},
                    {"name": "good", "url": good.url("/hook")},
                ],
                "timeout_seconds": 0.5,
            }
        )
        started = time.monotonic()
        deliveries = notify(config, _failure())
        took = time.monotonic() - started
        good_posts = good.wait(1)
    by = {d.channel: d for d in deliveries}
    assert {name: d.ok for name, d in by.items()} == {
        "slack": False,
        "pagerduty": False,
        "webhook:slow": False,
        "webhook:good": True,
    }
    assert sum(1 for d in deliveries if not d.ok) == 3
    assert by["slack"].detail.startswith("connection refused by 127.0.0.1:")
    assert by["pagerduty"].detail == f"HTTP 503 Service Unavailable from 127.0.0.1:{failing.port}"
    assert by["webhook:slow"].detail == f"no answer from 127.0.0.1:{slow.port} within 0.5s"
    assert by["webhook:good"].detail == f"HTTP 200 from 127.0.0.1:{good.port}"
    # Concurrent and bounded: the slow receiver's 3 s are not waited for, nor added to the others.
    assert took < 2.0
    assert by["webhook:slow"].seconds < 1.5
    assert [p.body["outcome"] for p in good_posts] == ["failure"]
    text = repr(deliveries) + json.dumps([d.to_dict() for d in deliveries])
    assert all("\n" not in d.detail for d in deliveries)
    _assert_no_secret(text, s)


def test_a_sender_that_raises_is_a_failed_delivery_without_its_message():
    secret_url = f"https://hooks.example/{secrets.token_hex(8)}"

    def broken(subject: str, body: str) -> None:
        raise RuntimeError(f"cannot post to {secret_url}")

    got: list[tuple[str, str]] = []
    deliveries = notify(
        NotificationsConfig(),
        _failure(),
        extra={"prefect:broken": broken, "prefect:fine": lambda subject, body: got.append((subject, body))},
    )
    assert [(d.channel, d.ok, d.detail) for d in deliveries] == [
        ("prefect:broken", False, "RuntimeError"),
        ("prefect:fine", True, "sent"),
    ]
    assert got == [("[genesis-dr] prod: backup FAILED - full", _failure().body())]


def test_sns_publishes_a_json_message_with_a_short_subject(moto_endpoint):
    inbox = SnsInbox(moto_endpoint)
    config = NotificationsConfig.model_validate(
        {"sns": {"topic_arn": inbox.topic_arn, "endpoint_url": moto_endpoint}, "timeout_seconds": 5}
    )
    long_subject = "app-db-" + "x" * 150
    (delivery,) = notify(config, _failure(subject=long_subject))
    assert delivery.channel == "sns" and delivery.ok, delivery.detail
    (envelope,) = inbox.messages(1)
    assert envelope["TopicArn"] == inbox.topic_arn
    assert envelope["Subject"] == sns_subject(_failure(subject=long_subject))
    assert len(envelope["Subject"]) == 100 and envelope["Subject"].endswith("...")
    assert envelope["Subject"].startswith("[genesis-dr] prod: backup FAILED - app-db-xxx")
    message = json.loads(envelope["Message"])
    assert message["schema"] == "genesis-dr.notification/1"
    assert (message["activity"], message["outcome"], message["stack"]) == ("backup", "failure", "prod")
    assert message["dedup_key"] == f"genesis-dr/prod/backup/{long_subject}"
    assert message["details"] == _failure().details
    attrs = {k: v["Value"] for k, v in envelope["MessageAttributes"].items()}
    assert attrs == {"activity": "backup", "outcome": "failure", "stack": "prod"}


def test_sns_that_is_down_or_refuses_is_a_failed_delivery(moto_endpoint):
    down = NotificationsConfig.model_validate(
        {"sns": {"topic_arn": "arn:aws:sns:us-west-2:123456789012:gone", "endpoint_url": closed_url("")}}
    )
    (d,) = notify(down, _failure())
    assert not d.ok and d.channel == "sns"
    assert "Could not connect to the endpoint URL" in d.detail and "\n" not in d.detail
    missing = NotificationsConfig.model_validate(
        {"sns": {"topic_arn": "arn:aws:sns:us-west-2:123456789012:no-such-topic", "endpoint_url": moto_endpoint}}
    )
    (d,) = notify(missing, _failure())
    assert not d.ok
    assert d.detail.startswith(
        f"{moto_endpoint.removeprefix('http://')} refused the publish to arn:aws:sns:us-west-2:123456789012:no-such-topic: NotFound"
    )


# --- the stack's sections through 'genesis-dr apply' -----------------------------------------------------


def _full_sections(rx_url: str, s: dict[str, str]) -> dict:
    return {
        "objectives": {"rto_seconds": 120, "rpo_seconds": 60, "sources": {"app-files": {"rpo_seconds": 3600}}},
        "validation": {
            "reverify_after_hours": 24,
            "smoke_queries": {"app-files": ["conf/app.ini", {"query": "data.bin", "expect": None}]},
        },
        "drill": {"targets": {"app-files": {"root": "/srv/drill"}}, "parallel": 2, "trend": 12},
        "notifications": {
            "slack": {"webhook_url": f"{rx_url}/slack/{s['slack']}", "on": ["failure"]},
            "pagerduty": {"routing_key": s["routing_key"], "url": f"{rx_url}/pd", "severity": "warning"},
            "sns": {"topic_arn": "arn:aws:sns:us-west-2:123456789012:dr", "credentials": "dr-aws"},
            "webhooks": [
                {"name": "ops", "url": f"{rx_url}/hook?token={s['hook_token']}", "activities": ["drill"]},
                {"name": "audit", "url": f"{rx_url}/audit?token={s['hook_token']}-2"},
            ],
            "prefect_blocks": ["custom-webhook/ops"],
            "timeout_seconds": 3,
        },
    }


def _dump(config) -> dict:
    def reveal(node):
        if isinstance(node, SecretStr):
            return ("secret", node.get_secret_value())
        if isinstance(node, dict):
            return {k: reveal(v) for k, v in node.items()}
        if isinstance(node, list):
            return [reveal(v) for v in node]
        return node

    return reveal(config.model_dump())


def test_objectives_validation_drill_and_notifications_survive_apply(make_stack, tmp_path):
    from prefect.client.orchestration import get_client

    from blocks import DRStack, NotificationChannels
    from blocks.apply import load_stack
    from core.sources import FilesSourceConfig

    s = _secrets()
    stack = make_stack(
        [FilesSourceConfig(name="app-files", root=str(tmp_path))], **_full_sections("http://127.0.0.1:9", s)
    )
    loaded = load_stack(stack.name)
    for section in ("objectives", "validation", "drill", "notifications"):
        assert _dump(getattr(loaded, section)) == _dump(getattr(stack.config, section)), section
    assert loaded.objectives.rpo_for("app-files") == 3600
    assert [q.query for q in loaded.validation.smoke_queries["app-files"]] == ["conf/app.ini", "data.bin"]
    assert (
        loaded.notifications.webhooks[1].url.get_secret_value() == f"http://127.0.0.1:9/audit?token={s['hook_token']}-2"
    )

    # The secrets live in the nested Notification Channels block, shown obfuscated by the API.
    with get_client(sync_client=True) as client:
        stack_doc = client.read_block_document_by_name(stack.name, block_type_slug="dr-stack", include_secrets=False)
        channels_doc = client.read_block_document_by_name(
            stack.name, block_type_slug="notification-channels", include_secrets=False
        )
    assert str(stack_doc.block_document_references["notifications"]["block_document"]["id"]) == str(channels_doc.id)
    _assert_no_secret(json.dumps(stack_doc.data, default=str) + json.dumps(channels_doc.data, default=str), s)
    assert channels_doc.data["slack"]["webhook_url"] == "********"
    assert channels_doc.data["pagerduty"]["routing_key"] == "********"
    assert channels_doc.data["webhook_urls"] == {"ops": "********", "audit": "********"}
    assert channels_doc.data["sns"]["topic_arn"] == "arn:aws:sns:us-west-2:123456789012:dr"
    assert [w["name"] for w in channels_doc.data["webhooks"]] == ["ops", "audit"]
    assert stack_doc.data["objectives"]["rto_seconds"] == 120
    block = DRStack.load(stack.name)
    assert type(block.notifications) is NotificationChannels
    _assert_no_secret(repr(block) + repr(loaded), s)


def test_notification_channels_block_is_documented():
    import re

    from blocks import NotificationChannels

    assert NotificationChannels.get_description()
    for name, field in NotificationChannels.model_fields.items():
        assert field.description and field.description.endswith("."), name
    example = NotificationChannels.get_code_example()
    assert re.search(r"from .* import NotificationChannels", example)
    assert re.search(r'.* = NotificationChannels\.load\("BLOCK_NAME"\)', example)


def test_a_stack_without_channels_has_no_channels_block_and_default_sections(make_stack, tmp_path):
    from blocks import DRStack
    from blocks.apply import load_stack
    from core.sources import FilesSourceConfig

    stack = make_stack([FilesSourceConfig(name="app-files", root=str(tmp_path))])
    assert DRStack.load(stack.name).notifications is None
    loaded = load_stack(stack.name)
    assert loaded.notifications == NotificationsConfig()
    assert (loaded.objectives.rto_seconds, loaded.objectives.rpo_seconds) == (900, 300)
    assert loaded.drill.parallel == 4


# --- the backup flow reports its outcome ---------------------------------------------------------------------


def _run_logs(flow_run_id) -> list[str]:
    from tests.test_flows import run_logs

    return run_logs(flow_run_id)


def test_backup_flow_posts_its_success_and_its_failure(make_stack, tmp_path, moto_endpoint):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    from core.sources import FilesSourceConfig
    from flows.backup import backup

    s = _secrets()
    root = tmp_path / "app"
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "app.ini").write_text("[app]\n")
    inbox = SnsInbox(moto_endpoint)
    creds = f"sns-{secrets.token_hex(3)}"
    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-west-2",
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint),
    ).save(creds)
    with Receiver(status=202) as rx:
        CustomWebhookNotificationBlock(
            name="prefect-hook", url=rx.url("/prefect"), json_data={"subject": "{{subject}}", "body": "{{body}}"}
        ).save(f"hook-{creds}")
        notifications = {
            "pagerduty": {"routing_key": s["routing_key"], "url": rx.url("/pd")},
            "sns": {"topic_arn": inbox.topic_arn, "credentials": creds},
            "webhooks": [
                {"name": "ops", "url": rx.url(f"/hook?token={s['hook_token']}")},
                {"name": "down", "url": closed_url(f"/hook?token={s['hook_token']}")},
            ],
            "prefect_blocks": [f"custom-webhook/hook-{creds}"],
            "timeout_seconds": 2,
        }
        stack = make_stack([FilesSourceConfig(name="app-files", root=str(root))], notifications=notifications)

        state = backup(stack=stack.name, return_state=True)
        assert state.is_completed(), state.message
        (committed,) = state.result()
        posts = rx.wait(3)
        assert sorted(p.path.split("?")[0] for p in posts) == ["/hook", "/pd", "/prefect"]
        (hook,) = rx.to("/hook")
        assert (hook.body["activity"], hook.body["outcome"], hook.body["stack"]) == ("backup", "success", stack.name)
        assert hook.body["subject"] == "full"
        assert hook.body["details"]["backups"] == [f"app-files: {committed['id']}"]
        assert hook.body["summary"].startswith("1 full backups committed (app-files), ")
        (pd,) = rx.to("/pd")
        assert pd.body == {
            "routing_key": s["routing_key"],
            "event_action": "resolve",
            "dedup_key": f"genesis-dr/{stack.name}/backup/full",
        }
        (prefect_post,) = rx.to("/prefect")
        assert prefect_post.body["subject"] == f"[genesis-dr] {stack.name}: backup succeeded - full"
        assert f"app-files: {committed['id']}" in prefect_post.body["body"]
        (envelope,) = inbox.messages(1)
        assert json.loads(envelope["Message"])["outcome"] == "success"
        logs = _run_logs(state.state_details.flow_run_id)
        assert "notifications of backup success: 4 delivered, 1 failed" in logs
        assert any(m.startswith("notification webhook:down: NOT delivered (connection refused by") for m in logs)

        # The same stack whose source has gone: the run fails as before, and the failure is posted.
        (root / "conf" / "app.ini").unlink()
        (root / "conf").rmdir()
        root.rmdir()
        failed = backup(stack=stack.name, return_state=True)
        assert failed.is_failed()
        posts = rx.wait(6)
        (_, hook2) = rx.to("/hook")
        assert hook2.body["outcome"] == "failure"
        assert hook2.body["details"]["failed"][0].startswith("app-files: ")
        (_, pd2) = rx.to("/pd")
        assert (pd2.body["event_action"], pd2.body["dedup_key"]) == ("trigger", f"genesis-dr/{stack.name}/backup/full")
        assert pd2.body["payload"]["summary"].startswith(f"[genesis-dr] {stack.name}: backup FAILED - full: 1 of 1")
        logs = _run_logs(failed.state_details.flow_run_id)
        assert "notifications of backup failure: 4 delivered, 1 failed" in logs

        # A run that cannot even plan (an unknown source) reports that too.
        unknown = backup(stack=stack.name, sources=["nope"], return_state=True)
        assert unknown.is_failed()
        rx.wait(9)
        hook3 = rx.to("/hook")[2]
        assert (hook3.body["outcome"], hook3.body["subject"]) == ("failure", "full nope")
        assert hook3.body["details"]["failed"][0].startswith(f"plan: stack '{stack.name}' has no source 'nope'")
    _assert_no_secret("\n".join(logs + _run_logs(state.state_details.flow_run_id)), s)


# --- events of validations and drills (what the lead's flows send) ------------------------------------------


def test_validation_and_drill_events_carry_the_failures_and_figures():
    from types import SimpleNamespace

    from core.notify.reports import drill_event, validation_event
    from core.validation.results import CheckResult, ValidationRecord

    bad = CheckResult(
        "objects present", False, "1 chunk missing", "restore it from a replica", source="app-db", backup_id="b1"
    )
    record = ValidationRecord(
        id="validation_1", level="integrity", vault="primary", started_at="t", backups=["b1"], stack="prod"
    )
    record.results = [CheckResult("manifest", True, "format 1", source="app-db", backup_id="b1"), bad]
    event = validation_event(record)
    assert (event.activity, event.outcome, event.subject) == ("validation", "failure", "integrity")
    assert event.dedup_key == "genesis-dr/prod/validation/integrity"
    assert event.details["failed"] == [
        "[FAILED] b1 app-db: objects present: 1 chunk missing; restore it from a replica"
    ]
    assert event.details["checks"] == "1 passed, 1 failed, 0 not checked"
    assert event.summary.endswith("- [FAILED] b1 app-db: objects present: 1 chunk missing; restore it from a replica")
    record.results = record.results[:1]
    assert validation_event(record).outcome == "success"

    rto = CheckResult("RTO", False, "recovery took 130.0s, objective 120s", "speed it up", critical=True)
    drill = SimpleNamespace(
        id="drill_1",
        tier="monthly",
        stack="prod",
        passed=False,
        rto_s=130.04,
        rto_objective_s=120.0,
        sources={"app-db": {"rpo_s": 42.0}, "cache": {"rpo_s": None}},
        results=[rto],
    )
    event = drill_event(drill)
    assert (event.activity, event.outcome, event.dedup_key) == ("drill", "failure", "genesis-dr/prod/drill/monthly")
    assert event.details == {
        "failed": ["[FAILED] RTO: recovery took 130.0s, objective 120s; speed it up"],
        "drill": "drill_1",
        "tier": "monthly",
        "rto": "130.0s (objective 120s)",
        "rpo": ["app-db: 42.0s"],
    }
    assert (
        event.summary
        == "monthly drill drill_1 FAILED: RTO 130.0s - [FAILED] RTO: recovery took 130.0s, objective 120s; speed it up"
    )


# --- failover, failback and the monitor's pages ---------------------------------------------------------------


def _failover_report(outcome: str = "dns_failed", **changes):
    """A failover report as core.failover.run writes it: west -> east, every database promoted, DNS as given."""
    from core.failover.report import FailoverReport, StepResult

    steps = [
        StepResult("fence", "postgres", "us-west-2", "unreachable", "connection refused by 10.0.0.5:5432"),
        StepResult("promote", "postgres", "us-east-1", "ok", "promoted in 1.2 s", 1.2),
        StepResult("prove_writes", "postgres", "us-east-1", "ok", "a write committed", 0.1),
        StepResult(
            "switch_dns",
            "dns",
            "us-east-1",
            "failed" if outcome == "dns_failed" else "ok",
            "Route53 refused: AccessDenied" if outcome == "dns_failed" else "db.example.com -> east",
        ),
    ]
    fields = dict(
        operation_id="op-1",
        operation="failover to us-east-1",
        kind="failover",
        source="us-west-2",
        target="us-east-1",
        epoch=4,
        reason="monitor: region us-west-2 down (postgres)",
        forced=False,
        started_at="2026-12-06T03:00:00+00:00",
        finished_at="2026-12-06T03:00:09+00:00",
        seconds=9.5,
        outcome=outcome,
        steps=steps,
        data_loss={"planned": {"lag_s": 0.5, "lag_bytes": 4096}},
        to_fence_when_back=["postgres in us-west-2"],
        next_step="point db.example.com CNAME at east by hand; the old primary stays fenced"
        if outcome == "dns_failed"
        else "",
    )
    return FailoverReport(**(fields | changes))


def _channels(rx: Receiver, s: dict[str, str], **changes) -> NotificationsConfig:
    """Slack, PagerDuty (its default severity 'warning') and two webhooks: every activity, backups only."""
    data = {
        "slack": {"webhook_url": rx.url(f"/slack/services/{s['slack']}")},
        "pagerduty": {"routing_key": s["routing_key"], "url": rx.url("/pd/v2/enqueue"), "severity": "warning"},
        "webhooks": [
            {"name": "ops", "url": rx.url(f"/hook?token={s['hook_token']}")},
            {"name": "backups", "url": rx.url(f"/backups?token={s['hook_token']}"), "activities": ["backup"]},
        ],
        "timeout_seconds": 2,
    }
    return NotificationsConfig.model_validate(data | changes)


def test_a_failover_whose_dns_switch_failed_pages_critical_on_slack_pagerduty_and_sns(moto_endpoint):
    from core.failover.run import _event  # the dict execute_failover gives the flow's notify callback
    from core.notify.reports import event_from_dict

    s = _secrets()
    inbox = SnsInbox(moto_endpoint)
    message = "failover to us-east-1: databases promoted, but the DNS switch failed: AccessDenied; point it by hand"
    event = event_from_dict("prod", _event(_failover_report(), "critical", message))
    assert (event.activity, event.outcome, event.severity, event.subject) == (
        "failover",
        "failure",
        "critical",
        "us-east-1",
    )
    with Receiver(status=202) as rx:
        config = _channels(rx, s, sns={"topic_arn": inbox.topic_arn, "endpoint_url": moto_endpoint})
        assert config.channels_for("failover") == ["slack", "pagerduty", "sns", "webhook:ops"]
        deliveries = notify(config, event)  # returns once every delivery is answered
        (envelope,) = inbox.messages(1)
    assert [(d.channel, d.ok) for d in deliveries] == [
        ("slack", True),
        ("pagerduty", True),
        ("sns", True),
        ("webhook:ops", True),
    ], [d.line() for d in deliveries]
    assert sorted(p.path.split("?")[0].split("/")[1] for p in rx.posts) == ["hook", "pd", "slack"]

    (pd,) = rx.to("/pd/")
    assert (pd.body["event_action"], pd.body["dedup_key"]) == ("trigger", "genesis-dr/prod/failover/us-east-1")
    payload = pd.body["payload"]
    # Critical although the channel's own severity (for backups and the like) is 'warning'.
    assert (payload["severity"], payload["class"], payload["component"]) == ("critical", "failover", "us-east-1")
    assert payload["summary"] == f"[genesis-dr] prod: failover FAILED - us-east-1: {message}"
    assert payload["custom_details"]["components"] == {
        "postgres": "fence unreachable in us-west-2, promote ok in us-east-1, prove_writes ok in us-east-1",
        "dns": "switch_dns FAILED in us-east-1",
    }

    (slack,) = rx.to("/slack/")
    assert slack.body["text"] == f"[genesis-dr] prod: failover FAILED - us-east-1: {message}"
    assert slack.body["blocks"][1]["text"]["text"] == f":rotating_light: {message}"
    fields = {f["text"].split("\n")[0]: f["text"].split("\n", 1)[1] for f in slack.body["blocks"][2]["fields"]}
    assert fields["*components*"] == (
        "postgres: fence unreachable in us-west-2, promote ok in us-east-1, prove_writes ok in us-east-1; "
        "dns: switch_dns FAILED in us-east-1"
    )
    assert " | failover | us-east-1 | critical | " in slack.body["blocks"][3]["elements"][0]["text"]

    (hook,) = rx.to("/hook")
    assert (hook.body["activity"], hook.body["severity"], hook.body["dedup_key"]) == (
        "failover",
        "critical",
        "genesis-dr/prod/failover/us-east-1",
    )
    attrs = {k: v["Value"] for k, v in envelope["MessageAttributes"].items()}
    assert attrs == {"activity": "failover", "outcome": "failure", "stack": "prod", "severity": "critical"}
    assert envelope["Subject"] == "[genesis-dr] prod: failover FAILED - us-east-1"
    assert json.loads(envelope["Message"])["severity"] == "critical"

    # No secret in anything a channel received, but the routing key PagerDuty needs, where it needs it.
    pd_body = dict(pd.body)
    assert pd_body.pop("routing_key") == s["routing_key"]
    _assert_no_secret(json.dumps([slack.body, hook.body, pd_body, envelope], default=str), s)
    _assert_no_secret(repr(deliveries), s)


def test_a_completed_failover_is_info_and_resolves_the_page_of_the_stopped_one():
    from core.notify.reports import failover_event

    s = _secrets()
    stopped = failover_event("prod", _failover_report("incomplete", next_step="fix postgres in us-east-1"))
    done = failover_event("prod", _failover_report("completed").to_dict())
    assert (stopped.outcome, stopped.severity, done.outcome, done.severity) == (
        "failure",
        "critical",
        "success",
        "info",
    )
    with Receiver(status=202) as rx:
        config = _channels(rx, s, slack={"webhook_url": rx.url(f"/slack/{s['slack']}"), "on": ["failure"]})
        first = notify(config, stopped)
        second = notify(config, done)
        rx.wait(5)
    assert [d.channel for d in first] == ["slack", "pagerduty", "webhook:ops"]
    assert [d.channel for d in second] == ["pagerduty", "webhook:ops"]  # slack takes failures only
    assert [(p.body["event_action"], p.body["dedup_key"]) for p in rx.to("/pd/")] == [
        ("trigger", "genesis-dr/prod/failover/us-east-1"),
        ("resolve", "genesis-dr/prod/failover/us-east-1"),
    ]
    assert rx.to("/pd/")[0].body["payload"]["severity"] == "critical"
    assert [(p.body["outcome"], p.body["severity"]) for p in rx.to("/hook")] == [
        ("failure", "critical"),
        ("success", "info"),
    ]
    assert rx.to("/backups") == []


def test_failover_and_failback_report_events_by_outcome():
    from core.failover.failback import ROLLED_BACK
    from core.notify.reports import failover_event

    done = failover_event("prod", _failover_report("completed"), url="http://prefect.example/runs/flow-run/7")
    assert (done.title, done.subject, done.url) == (
        "Failover to us-east-1 completed on stack prod",
        "us-east-1",
        "http://prefect.example/runs/flow-run/7",
    )
    assert done.summary == (
        "failover to us-east-1 completed in 9.5 s (epoch 4); unreachable, fenced when they return: "
        "postgres in us-west-2"
    )
    assert done.details == {
        "from": "us-west-2",
        "to": "us-east-1",
        "epoch": 4,
        "reason": "monitor: region us-west-2 down (postgres)",
        "seconds": 9.5,
        "data loss": "0.5 s, 4096 bytes",
        "unreachable": ["postgres in us-west-2"],
        "components": [
            "postgres: fence unreachable in us-west-2, promote ok in us-east-1, prove_writes ok in us-east-1",
            "dns: switch_dns ok in us-east-1",
        ],
        "operation id": "op-1",
    }

    dns = failover_event("prod", _failover_report("dns_failed"))
    assert (dns.outcome, dns.severity, dns.title) == (
        "failure",
        "critical",
        "Failover to us-east-1 done but DNS NOT switched on stack prod",
    )
    assert dns.summary == (
        "failover to us-east-1: dns_failed at 'switch_dns dns in us-east-1': Route53 refused: AccessDenied; "
        "next: point db.example.com CNAME at east by hand; the old primary stays fenced"
    )
    assert dns.details["next"] == "point db.example.com CNAME at east by hand; the old primary stays fenced"

    # A failback that stopped before any promotion was rolled back: a warning about the failback's target (the
    # report runs the other way), so the failback that later completes resolves it.
    rolled_back = _failover_report(
        ROLLED_BACK,
        kind="failback",
        operation="roll back of failback to us-west-2",
        source="us-west-2",
        target="us-east-1",
    )
    rolled = failover_event("prod", rolled_back)
    later = failover_event(
        "prod",
        _failover_report(
            "completed", kind="failback", operation="failback to us-west-2", source="us-east-1", target="us-west-2"
        ),
    )
    assert (rolled.activity, rolled.outcome, rolled.severity) == ("failback", "failure", "warning")
    assert rolled.title == "Roll back of failback to us-west-2 done on stack prod"
    assert rolled.dedup_key == later.dedup_key == "genesis-dr/prod/failback/us-west-2"
    # Core's own words and severity win (a rollback whose fences could not be lifted pages).
    stuck = failover_event("prod", rolled_back.to_dict(), severity="critical", summary="fences NOT lifted")
    assert (stuck.severity, stuck.summary) == ("critical", "fences NOT lifted")


def _assessment(all_down: bool = False, target: str | None = "us-east-1"):
    from datetime import UTC, datetime

    from core.failover.choose import Choice
    from core.failover.health import Check, RegionHealth, RegionState
    from core.failover.monitor import EVENT_DOWN, Assessment

    at = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    west = RegionHealth(
        "us-west-2",
        (Check("postgres", False, detail="connection refused"), Check("http https://w/health", False)),
        0.0,
        False,
        None,
        at,
    )
    east = RegionHealth(
        "us-east-1", (Check("postgres", not all_down),), 0.0 if all_down else 1.0, not all_down, 1.5, at, 2048
    )
    reasons = {"us-east-1": "chosen: healthy, lag 1.5 s" if target else "not chosen: unhealthy (score 0.00)"}
    return Assessment(
        at=at,
        active="us-west-2",
        regions={"us-west-2": west, "us-east-1": east},
        states={
            "us-west-2": RegionState("us-west-2", 3, True, True),
            "us-east-1": RegionState("us-east-1", 3 if all_down else 0, all_down, all_down),
        },
        active_down=True,
        all_down=all_down,
        choice=Choice(target, reasons, 1.5 if target else None),
        events=[{"event": EVENT_DOWN, "region": "us-west-2", "score": 0.0}]
        + ([{"event": EVENT_DOWN, "region": "us-east-1", "score": 0.0}] if all_down else []),
    )


def test_monitor_pages_region_down_approval_and_all_regions_unhealthy():
    from core.notify.reports import (
        approval_needed_event,
        no_target_event,
        region_change_events,
        region_down_event,
        region_up_event,
    )

    a = _assessment()
    (down,) = region_change_events("prod", a, policy="manual")
    assert (down.activity, down.outcome, down.severity, down.subject) == ("monitor", "failure", "critical", "us-west-2")
    assert down.title == "Active region us-west-2 DOWN on stack prod"
    assert down.summary == (
        "stack prod: active region us-west-2 is down: the failover to us-east-1 waits for an operator's approval"
    )
    assert down.headline() == "[genesis-dr] prod: monitor ALERT - us-west-2"
    assert down.details == {
        "condition": "region_down",
        "region": "us-west-2: score 0.00, down (3 failed runs in a row), failed: postgres, http https://w/health",
        "active": "us-west-2",
        "target": "us-east-1",
        "policy": "manual",
        "regions": [
            "us-west-2: score 0.00, down (3 failed runs in a row), failed: postgres, http https://w/health",
            "us-east-1: score 1.00, healthy; lag 1.5 s, 2048 bytes",
        ],
    }
    active, standby = region_change_events("prod", _assessment(all_down=True, target=None), policy="automatic")
    assert (standby.severity, standby.title) == ("warning", "Region us-east-1 DOWN on stack prod")
    assert standby.summary == (
        "stack prod: region us-east-1 is down: no failover to it until it is back (active region us-west-2 is up)"
    )
    # The active region down with nowhere to go says so in the same page.
    assert (active.severity, active.details["condition"], active.details["reasons"]) == (
        "critical",
        "all_regions_unhealthy",
        ["us-east-1: not chosen: unhealthy (score 0.00)"],
    )
    assert active.summary == (
        "stack prod: every region is down (all_regions_unhealthy): active region us-west-2 is down and no region "
        "qualifies as a failover target"
    )
    lost = region_down_event("prod", _assessment(target=None), "us-west-2")
    assert (lost.details["condition"], lost.summary) == (
        "no_failover_target",
        "stack prod: active region us-west-2 is down and no region qualifies as a failover target",
    )
    automatic = region_down_event("prod", a, "us-west-2", policy="automatic")
    assert (
        automatic.summary == "stack prod: active region us-west-2 is down: failing over to us-east-1 (automatic policy)"
    )

    ask = approval_needed_event(
        "prod", a, epoch=4, plan_text="failover to us-east-1: from us-west-2 (epoch 4 -> 5)\n\n1. fence"
    )
    assert (ask.outcome, ask.severity, ask.dedup_key) == ("failure", "critical", "genesis-dr/prod/monitor/us-west-2")
    assert ask.title == "Failover of stack prod to us-east-1 needs approval"
    assert (ask.details["condition"], ask.details["data loss"], ask.details["plan"]) == (
        "approval_needed",
        "up to 1.5 s",
        ["failover to us-east-1: from us-west-2 (epoch 4 -> 5)", "1. fence"],
    )

    none = no_target_event("prod", _assessment(all_down=True, target=None))
    assert (none.severity, none.subject, none.title, none.details["condition"]) == (
        "critical",
        "us-west-2",
        "All regions unhealthy on stack prod",
        "all_regions_unhealthy",
    )
    assert none.summary.startswith(
        "stack prod: active region us-west-2 is down and every region is down (us-east-1: not chosen: unhealthy"
    )
    lagging = no_target_event("prod", _assessment(target=None))
    assert (lagging.title, lagging.details["condition"]) == ("No failover target for stack prod", "no_failover_target")

    up = region_up_event("prod", a, "us-east-1")
    assert (up.outcome, up.severity, up.headline()) == (
        "success",
        "info",
        "[genesis-dr] prod: monitor recovered - us-east-1",
    )


def test_monitor_pages_reach_pagerduty_and_the_region_back_up_resolves_them():
    from core.notify.reports import approval_needed_event, region_up_event

    s = _secrets()
    a = _assessment()
    with Receiver(status=202) as rx:
        # PagerDuty listed explicitly for failovers and the monitor only; the ops webhook takes everything.
        config = _channels(
            rx,
            s,
            slack=None,
            pagerduty={"routing_key": s["routing_key"], "url": rx.url("/pd"), "activities": ["failover", "monitor"]},
        )
        notify(config, approval_needed_event("prod", a, epoch=4))
        notify(config, region_up_event("prod", a, "us-west-2"))
        rx.wait(4)
    assert [(p.body["event_action"], p.body["dedup_key"]) for p in rx.to("/pd")] == [
        ("trigger", "genesis-dr/prod/monitor/us-west-2"),
        ("resolve", "genesis-dr/prod/monitor/us-west-2"),
    ]
    assert rx.to("/pd")[0].body["payload"]["severity"] == "critical"
    assert [p.body["details"]["condition"] for p in rx.to("/hook")] == ["approval_needed", "region_up"]
    assert rx.to("/backups") == []


def test_channels_that_list_activities_keep_their_filter_and_events_must_be_routable():
    import pytest
    from pydantic import ValidationError

    from blocks.notifications import NotificationChannels
    from core.notify.payloads import pagerduty_event

    # A stack file written before failovers existed: its explicit lists stay filters (no failover there);
    # a channel without a list gets every activity, failovers and the monitor's pages included.
    old = NotificationsConfig.model_validate(
        {
            "pagerduty": {"routing_key": "k", "activities": ["backup", "validation", "drill"]},
            "webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/hook"}],
        }
    )
    assert old.channels_for("failover") == ["webhook:ops"]
    assert old.channels_for("monitor") == ["webhook:ops"]
    assert old.channels_for("backup") == ["pagerduty", "webhook:ops"]
    assert old.webhooks[0].activities == [
        "backup",
        "validation",
        "drill",
        "failover",
        "failback",
        "monitor",
        "retention",
        "audit",
    ]
    assert old.channels_for("audit") == ["webhook:ops"]
    with pytest.raises(ValidationError, match="activities.0"):
        NotificationsConfig.model_validate({"slack": {"webhook_url": "http://x", "activities": ["failovers"]}})
    with pytest.raises(ValueError, match="notification event: activity 'failovers' is not one of backup, "):
        _failure(activity="failovers")
    with pytest.raises(ValueError, match="notification event: severity 'page' is not one of None, critical, "):
        _failure(severity="page")

    # PagerDuty: the event's severity wins; without one the channel's default; an info failure is sent as info.
    assert pagerduty_event(_failure(), "k", "warning")["payload"]["severity"] == "warning"
    assert pagerduty_event(_failure(severity="critical"), "k", "warning")["payload"]["severity"] == "critical"
    assert pagerduty_event(_failure(severity="info"), "k", "critical")["payload"]["severity"] == "info"
    assert pagerduty_event(_failure(outcome="success", severity="info"), "k", "critical")["event_action"] == "resolve"
    # The webhook document of an event without a severity is as it was.
    assert "severity" not in _failure().to_dict()

    # The block keeps a webhook's failover routing.
    config = NotificationsConfig.model_validate(
        {
            "webhooks": [
                {"name": "pager", "url": "http://127.0.0.1:9/p", "activities": ["failover", "failback", "monitor"]}
            ]
        }
    )
    block = NotificationChannels.from_config(config)
    assert block.to_config().webhooks[0].activities == ["failover", "failback", "monitor"]
