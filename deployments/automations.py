"""The stack's Prefect automations, created by ``genesis-dr apply`` (the server evaluates them; no process of ours
has to run for them to fire).

* **A run failed or crashed** (reactive): a run of our flows (tagged ``dr`` by prefect.yaml's deployments, or
  ``genesis-dr`` by the CLI) entering Failed or Crashed notifies each channel of the stack that takes failures
  of that flow's activity, when the run is the stack's own (tagged ``genesis-dr-stack:<stack>``, see
  deployments/tags.py: another stack's failure on a shared server does not reach this stack's channels). It
  catches what a flow cannot say itself: a worker killed mid-run, a run that never started its code, a crash. One automation per channel, ``genesis-dr <stack> run failed: <channel>``.
* **A backup overdue** (proactive): no ``genesis-dr.backup.completed`` event (tasks/events.py, one per
  committed backup) for a source within twice its backup interval pages every channel that takes backup
  failures. One per source, ``genesis-dr <stack> backup overdue: <source>``.

Prefect's SendNotification action posts through a notification block. Each channel of the stack gets one,
``genesis-dr-<stack>-<channel>``, a Custom Webhook block whose secrets (the Slack or webhook URL, the PagerDuty
routing key) stay in the block's secret values: the URL and JSON are templates the block fills in when it
posts. Custom webhooks rather than Prefect's SlackWebhook/PagerDutyWebHook blocks because those go through
Apprise, which only knows the public endpoints: the stack's PagerDuty ``url`` (an EU endpoint, a relay) and a
Slack-compatible receiver would be ignored. The JSON is each service's documented format. ``notifications.
prefect_blocks`` are used as they are. SNS has no Prefect notification block: the flows' own notifications
(core/notify) still reach it; the automations do not.

Idempotent: automations are updated by name (an operator's enabled/disabled choice is kept), ours for channels
or sources no longer in the stack are removed with the blocks only they used, and automations whose names do
not start with ``genesis-dr <stack> `` are never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from core.engines import engine_class
from core.notify.config import ACTIVITIES
from core.observe.snapshot import schedule_interval
from core.stack import StackConfig
from deployments.tags import stack_tag

BACKUP_COMPLETED = "genesis-dr.backup.completed"
RUN_TAGS = ("dr", "genesis-dr")  # prefect.yaml's deployments tag their runs `dr`; the CLI tags its runs `genesis-dr`
WEBHOOK_SCHEMA = "genesis-dr.automation/1"
# Which notification activity a failed run of each of our flows belongs to (a channel's `activities` filter).
FLOW_ACTIVITY = {
    "backup": "backup",
    "capture": "backup",
    "replicate": "backup",
    "self-backup": "backup",
    "validate": "validation",
    "drill": "drill",
    "failover": "failover",
    "failback": "failback",
    "monitor": "monitor",
    "retention": "retention",
    "hold": "retention",
    "erase": "retention",
    "audit-verify": "audit",
    "restore": None,  # no activity of its own: channels that take every activity get it
}

FAILED_SUBJECT = "genesis-dr {stack}: {{{{ flow.name }}}} run {{{{ flow_run.name }}}} {{{{ flow_run.state.name }}}}"
FAILED_BODY = (
    "Flow run {{ flow_run.name }} ({{ flow_run.id }}) of flow {{ flow.name }} entered {{ flow_run.state.name }}"
    "{% if flow_run.state.message %}: {{ flow_run.state.message }}{% endif %}. "
    "Stack: {{ flow_run.parameters.stack | default('default') }}. Tags: {{ flow_run.tags | join(', ') }}."
)


def automation_prefix(stack: str) -> str:
    return f"genesis-dr {stack} "


def failed_run_name(stack: str, channel: str) -> str:
    return f"{automation_prefix(stack)}run failed: {channel}"


def overdue_name(stack: str, source: str) -> str:
    return f"{automation_prefix(stack)}backup overdue: {source}"


def source_resource(stack: str, source: str) -> str:
    """The event resource of a source (tasks/events.py emits on it)."""
    return f"genesis-dr.source.{stack}.{source}"


# --- intervals (pure)


def backup_interval(config: StackConfig, source: str) -> tuple[timedelta, str] | None:
    """How often ``source`` is backed up by the stack's schedules: the shortest interval of the active backup
    schedules that take it (full, and differential/incremental for kinds that have them; ``redis`` for Redis),
    with the schedule key; None when every one is off. An interval is the schedule's longest gap (``0 9 * * 1-5``
    waits 72 h over a weekend), the same measure the metrics' ``genesis_dr_backup_interval_seconds`` use."""
    src = config.source(source)
    keys = [t for t in ("incremental", "differential", "full") if t in engine_class(src.kind).backup_types]
    if src.kind == "redis":
        keys.append("redis")
    found = []
    for key in keys:
        seconds = schedule_interval(getattr(config.schedules, key))
        if seconds:
            found.append((timedelta(seconds=seconds), key))
    return min(found) if found else None


def human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


# --- channels as notification blocks


@dataclass
class Channel:
    """One destination: the block that posts to it, which failures it takes."""

    name: str  # as the automation names it: slack, pagerduty, webhook-<name>, or a Prefect block's name
    block_name: str | None  # ours to save (genesis-dr-<stack>-...); None for an operator's existing block
    block: Any  # the block to save, or "<type-slug>/<name>" of an existing one
    wants: Any  # (activity) -> bool


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "webhook"


def _webhook_block(name: str, url: str, json_data: dict, secrets: dict[str, str]):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(
        name=name, url="{{url}}", json_data=json_data, secrets={"url": url, **secrets}, timeout=10
    )


def _pagerduty_json(stack: str, severity: str) -> dict:
    return {
        "routing_key": "{{routing_key}}",
        "event_action": "trigger",
        # one incident per subject: an overdue source pages again every window, into the same incident
        "dedup_key": "genesis-dr/automation/{{subject}}",
        "client": "genesis-dr",
        "payload": {
            "summary": "{{subject}}",
            "source": f"genesis-dr/{stack}",
            "severity": severity,
            "group": stack,
            "class": "automation",
            "custom_details": {"details": "{{body}}"},
        },
    }


def channels(config: StackConfig, *, page: bool = False) -> list[Channel]:
    """The stack's channels as notification blocks; ``page``: PagerDuty at ``critical`` whatever its default."""
    stack, notes = config.stack, config.notifications
    out: list[Channel] = []

    def wants(channel: Any):
        return lambda activity: "failure" in channel.on and (activity is None or activity in channel.activities)

    if notes.slack is not None:
        json_data = {"text": "*{{subject}}*\n{{body}}"}
        name = f"genesis-dr-{stack}-slack"
        block = _webhook_block(name, notes.slack.webhook_url.get_secret_value(), json_data, {})
        out.append(Channel("slack", name, block, wants(notes.slack)))
    if notes.pagerduty is not None:
        pd = notes.pagerduty
        severity = "critical" if page else pd.severity
        name = f"genesis-dr-{stack}-pagerduty" + ("" if severity == pd.severity else f"-{severity}")
        secrets = {"routing_key": pd.routing_key.get_secret_value()}
        block = _webhook_block(name, pd.url, _pagerduty_json(stack, severity), secrets)
        out.append(Channel("pagerduty", name, block, wants(pd)))
    seen: set[str] = set()
    for hook in notes.webhooks:
        slug = _slug(hook.name)
        while f"webhook-{slug}" in seen:
            slug += "-2"
        seen.add(f"webhook-{slug}")
        name = f"genesis-dr-{stack}-webhook-{slug}"
        json_data = {"schema": WEBHOOK_SCHEMA, "stack": stack, "subject": "{{subject}}", "body": "{{body}}"}
        block = _webhook_block(name, hook.url.get_secret_value(), json_data, {})
        out.append(Channel(f"webhook-{slug}", name, block, wants(hook)))
    for ref in notes.prefect_blocks:  # an operator's block: every event, as core/notify sends them
        out.append(Channel(ref, None, ref, lambda activity: True))
    return out


def _block_id(client: Any, channel: Channel, saved: dict[str, UUID]) -> UUID:
    if channel.block_name is None:
        slug, _, name = channel.block.partition("/")
        return client.read_block_document_by_name(name=name, block_type_slug=slug).id
    if channel.block_name not in saved:
        saved[channel.block_name] = channel.block.save(channel.block_name, overwrite=True)
    return saved[channel.block_name]


# --- the automations


def failed_run_automation(stack: str, channel: str, block_id: UUID, flows: list[str] | None):
    """Notify ``block_id`` when a run of our flows (``flows``: only these; None: all) fails or crashes."""
    from prefect.automations import AutomationCore
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    related: list[dict[str, Any]] = [
        {"prefect.resource.role": "tag", "prefect.resource.id": [f"prefect.tag.{t}" for t in RUN_TAGS]},
        {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{stack_tag(stack)}"},
    ]
    if flows is not None:
        related.append({"prefect.resource.role": "flow", "prefect.resource.name": sorted(flows)})
    return AutomationCore(
        name=failed_run_name(stack, channel),
        description=f"genesis-dr: a failed or crashed run of the DR flows notifies {channel} (genesis-dr apply).",
        tags=["genesis-dr", f"genesis-dr-stack:{stack}"],
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=related,
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(block_document_id=block_id, subject=FAILED_SUBJECT.format(stack=stack), body=FAILED_BODY)
        ],
    )


def overdue_automation(stack: str, source: str, within: timedelta, why: str, block_ids: list[UUID]):
    """Page ``block_ids`` when no completed backup of ``source`` arrived ``within`` (a proactive trigger)."""
    from prefect.automations import AutomationCore
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    subject = f"genesis-dr {stack}: PAGE: no completed backup of {source} in {human(within)}"
    body = (
        f"No completed backup of source {source} (stack {stack}) arrived within {human(within)}: {why}. "
        f"Check its backup runs in the Prefect UI and the source; "
        f"genesis-dr status --stack {stack}; genesis-dr backup full --stack {stack} --source {source}."
    )
    return AutomationCore(
        name=overdue_name(stack, source),
        description=f"genesis-dr: pages when no backup of {source} completed within {human(within)} "
        "(genesis-dr apply).",
        tags=["genesis-dr", f"genesis-dr-stack:{stack}"],
        trigger=EventTrigger(
            match={"prefect.resource.id": source_resource(stack, source)},
            expect={BACKUP_COMPLETED},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[SendNotification(block_document_id=i, subject=subject, body=body) for i in block_ids],
    )


def wanted_automations(config: StackConfig, client: Any, *, overdue_within: timedelta | None = None) -> dict:
    """Name -> automation for ``config`` (saving the channels' blocks on the way)."""
    saved: dict[str, UUID] = {}
    wanted: dict[str, Any] = {}
    every = set(ACTIVITIES)
    for channel in channels(config):
        activities = {a for a in every if channel.wants(a)}
        if not activities:
            continue
        flows = None if activities == every else [f for f, a in FLOW_ACTIVITY.items() if a in activities]
        automation = failed_run_automation(config.stack, channel.name, _block_id(client, channel, saved), flows)
        wanted[automation.name] = automation
    pagers = [_block_id(client, c, saved) for c in channels(config, page=True) if c.wants("backup")]
    if pagers:
        for src in config.sources:
            interval = backup_interval(config, src.name)
            if interval is None:
                continue  # no schedule backs it up: nothing to be late for
            every_, key = interval
            within = overdue_within or 2 * every_
            why = f"twice its backup interval of {human(every_)} (schedules.{key} '{getattr(config.schedules, key)}')"
            automation = overdue_automation(config.stack, src.name, within, why, pagers)
            wanted[automation.name] = automation
    return wanted


def _comparable(automation: Any) -> dict:
    data = automation.model_dump(mode="json", include={"description", "trigger", "actions", "tags"})
    data["trigger"].pop("id", None)
    # expect, after and for_each are sets: dumped in their iteration order, which depends on the process's hash
    # seed and on insertion, so two equal triggers may dump differently (seen as a spurious "updated").
    for field in ("expect", "after", "for_each"):
        if isinstance(data["trigger"].get(field), list):
            data["trigger"][field] = sorted(data["trigger"][field])
    return data


def _block_ids_of(automation: Any) -> set[UUID]:
    return {a.block_document_id for a in automation.actions if getattr(a, "block_document_id", None)}


def _all_automations(client: Any, page: int = 200) -> list[Any]:
    # the server answers at most PREFECT_API_DEFAULT_LIMIT (200) per request: page through them all
    out: list[Any] = []
    while True:
        batch = client.read_automations(limit=page, offset=len(out))
        out.extend(batch)
        if len(batch) < page:
            return out


def apply_automations(config: StackConfig, *, overdue_within: timedelta | None = None) -> list[str]:
    """Create or update the stack's automations, remove its stale ones; one line per change.

    ``overdue_within``: the proactive trigger's window for every source instead of twice its interval (for a
    test, or an operator who wants another grace period; Prefect's minimum is 10 s).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    lines: list[str] = []
    if config.notifications.sns is not None:
        lines.append("sns: no Prefect notification block for SNS; automations do not reach it (flows still do)")
    with get_client(sync_client=True) as client:
        wanted = wanted_automations(config, client, overdue_within=overdue_within)
        prefix = automation_prefix(config.stack)
        ours = {a.name: a for a in _all_automations(client) if a.name.startswith(prefix)}
        for name, automation in wanted.items():
            existing = ours.get(name)
            if existing is None:
                client.create_automation(automation)
                lines.append(f"automation '{name}' created")
            elif _comparable(existing) != _comparable(automation):
                automation.enabled = existing.enabled  # an operator's pause stays
                client.update_automation(existing.id, automation)
                lines.append(f"automation '{name}' updated")
        # the blocks only our removed automations used go with them (a removed webhook's URL must not linger)
        keep = set().union(*(_block_ids_of(a) for a in wanted.values()))
        for name, existing in ours.items():
            if name in wanted:
                continue
            client.delete_automation(existing.id)
            lines.append(f"automation '{name}' removed")
            for block_id in _block_ids_of(existing) - keep:
                try:
                    document = client.read_block_document(block_id)
                except ObjectNotFound:
                    continue
                if (document.name or "").startswith(f"genesis-dr-{config.stack}-"):  # never an operator's block
                    client.delete_block_document(block_id)
                keep.add(block_id)  # handled: another removed automation may share it
    return lines
