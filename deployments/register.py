"""Every deployment of prefect.yaml on the Prefect server, for one stack, through the API (what ``genesis-dr
apply`` and ``genesis-dr serve`` do; ``prefect deploy --all`` is the other way, for the stack ``default``).

From prefect.yaml, as ``prefect deploy`` stores it: entrypoint, flow name and parameter schema (read from
the flow's source, nothing imported), description, tags, parameters, concurrency, pull steps, work pool
and queue, and triggers (an automation owned by the deployment). On top of it, the stack:

* ``stack`` parameter = the stack; the stack ``default`` keeps prefect.yaml's names, another stack's
  deployments are named ``<name>-<stack>`` (``backup/full-prod``), so stacks share a server;
* its schedules (``schedules:``) as ours (slug ``genesis-dr-stack``): the cron follows the stack file,
  the on/off only when the stack file's own setting changed (deployments/schedules.py), a new one is
  on or off as the stack says; an operator's other schedules are never touched;
* its work pools (``pools_of``) with the queues of deployments/queues.py;
* routing: a source with its own ``work_pool`` is backed up there, by a copy of each backup and
  capture deployment that it takes, ``<name>-<pool>`` (``backup/full-eu-west-1``), with
  ``sources: [that pool's sources]``; the default-pool deployment gets ``sources:`` the rest (unset when
  nothing is routed away, so it keeps meaning "every source"), and is removed when nothing is left for
  it (it would back up every source from the wrong pool); a copy whose sources came back is removed.

Idempotent: an unchanged deployment is not written (a write would also drop its already scheduled runs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.stack import StackConfig
from deployments.queues import QUEUE_OF, ensure_pool
from deployments.schedules import DEPLOYMENTS, SLUG, put_schedule, stored_schedules, toggled, variable_name
from deployments.tags import with_stack_tag

DEFAULT_STACK = "default"
ROUTED_TAG = "genesis-dr-routed"  # marks the per-pool copies this module made (and may delete)
PAGE = 200
_SCHEDULE_KEY = re.compile(r"\{\{\s*schedules\.(\w+)\.cron\s*\}\}")


@dataclass
class Wanted:
    """One deployment as it should be on the server."""

    flow: str
    name: str
    key: str  # its schedules key
    fields: dict[str, Any]  # create/update payload fields
    triggers: list[dict[str, Any]] = field(default_factory=list)
    routed: str | None = None  # the pool of a per-pool copy

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


def pools_of(config: StackConfig) -> list[str]:
    """The work pools ``config`` uses: operations.work_pool first, then each source's own, in source order."""
    pools = [config.operations.work_pool]
    for source in config.sources:
        if source.work_pool and source.work_pool not in pools:
            pools.append(source.work_pool)
    return pools


def deployment_name(name: str, stack: str, pool: str | None = None) -> str:
    """prefect.yaml's ``name`` for ``stack`` (suffix ``-<stack>`` but for ``default``), a copy's ``-<pool>`` first."""
    out = f"{name}-{pool}" if pool else name
    return out if stack == DEFAULT_STACK else f"{out}-{stack}"


def read_project(project_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """prefect.yaml's (pull steps, deployments)."""
    import yaml

    path = project_dir / "prefect.yaml"
    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # C: 10x faster
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{path}: cannot read it ({exc}); reinstall genesis-dr or pass its project directory"
        ) from None
    return data.get("pull") or [], data.get("deployments") or []


def wanted_deployments(config: StackConfig, project_dir: Path) -> tuple[list[Wanted], list[str]]:
    """The deployments ``config`` needs (routing copies included), and the names of default-pool ones that must
    not exist (every source they would take runs in another pool)."""
    from prefect.utilities.hashing import file_hash

    pull, declared = read_project(project_dir)
    default_pool = config.operations.work_pool
    wanted: list[Wanted] = []
    absent: list[str] = []
    flows: dict[str, tuple[str, str, dict]] = {}
    for spec in declared:
        name, entrypoint = spec["name"], spec["entrypoint"]
        where = f"{project_dir / 'prefect.yaml'}: deployment {name}"
        if entrypoint not in flows:
            file, _, func = entrypoint.partition(":")
            if not (project_dir / file).is_file():
                raise ConfigError(f"{where}: {file} not found; reinstall genesis-dr")
            flows[entrypoint] = _flow_of(f"{project_dir / file}:{func}", file_hash(str(project_dir / file)))
        flow_name, version, schema = flows[entrypoint]
        keys = [
            m.group(1) for s in spec.get("schedules") or [] for m in [_SCHEDULE_KEY.search(str(s.get("cron")))] if m
        ]
        if len(keys) != 1 or DEPLOYMENTS.get(keys[0]) != f"{flow_name}/{name}":
            raise ConfigError(
                f"{where}: needs one schedule '{{{{ schedules.<key>.cron }}}}' of deployments/schedules.py"
            )
        limit = spec.get("concurrency_limit")
        options = None
        if isinstance(limit, dict):
            options = {"collision_strategy": limit.get("collision_strategy", "ENQUEUE")}
            limit = limit.get("limit")
        pool_spec = spec.get("work_pool") or {}
        queue = pool_spec.get("work_queue_name") or QUEUE_OF.get(name)
        parameters = dict(spec.get("parameters") or {}) | {"stack": config.stack}
        fields = {
            "description": spec.get("description"),
            "version": version,
            "tags": with_stack_tag(list(spec.get("tags") or []), config.stack),
            "parameters": parameters,
            "entrypoint": entrypoint,
            "path": None,
            "pull_steps": spec.get("pull", pull),
            "parameter_openapi_schema": schema,
            "enforce_parameter_schema": spec.get("enforce_parameter_schema", True),
            "job_variables": dict(pool_spec.get("job_variables") or {}),
            "work_pool_name": default_pool,
            "work_queue_name": queue,
            "concurrency_limit": limit,
            "concurrency_options": options,
        }
        triggers = []
        for trigger in spec.get("triggers") or []:
            trigger = dict(trigger)
            if isinstance(trigger.get("parameters"), dict) and "stack" in trigger["parameters"]:
                trigger["parameters"] = trigger["parameters"] | {"stack": config.stack}
            triggers.append(trigger)
        base = Wanted(flow_name, deployment_name(name, config.stack), keys[0], fields, triggers)
        by_pool = _routing(config, flow_name, parameters)
        if by_pool is None or set(by_pool) <= {default_pool}:
            wanted.append(base)
            continue
        for pool, sources in by_pool.items():
            if pool == default_pool:
                continue
            copy = fields | {
                "parameters": parameters | {"sources": sources},
                "tags": [*fields["tags"], ROUTED_TAG],
                "work_pool_name": pool,
                "description": f"{fields['description']} Here: the sources of work pool {pool}.",
            }
            wanted.append(Wanted(flow_name, deployment_name(name, config.stack, pool), keys[0], copy, routed=pool))
        if by_pool.get(default_pool):
            base.fields["parameters"] = parameters | {"sources": by_pool[default_pool]}
            wanted.append(base)
        else:
            absent.append(base.full_name)
    return wanted, absent


@cache
def _flow_of(located: str, version: str) -> tuple[str, str, dict]:
    """(flow name, version, parameter schema) of a flow, from its source (not imported), as ``prefect deploy``
    finds them; once per content of its file (``version`` is its hash), so ``serve`` re-registers cheaply."""
    from prefect.flows import load_flow_arguments_from_entrypoint
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    arguments = load_flow_arguments_from_entrypoint(located, {"name"})
    schema = parameter_schema_from_entrypoint(located).model_dump(exclude_unset=True)
    return arguments.get("name") or located.rpartition(":")[2].replace("_", "-"), version, schema


def _routing(config: StackConfig, flow_name: str, parameters: dict[str, Any]) -> dict[str, list[str]] | None:
    """Pool -> the sources a backup or capture deployment takes there (None for the other flows)."""
    from core.engines import engine_class

    if flow_name == "capture":

        def takes(source) -> bool:
            return engine_class(source.kind).captures_log

    elif flow_name == "backup":
        backup_type, kinds = parameters.get("backup_type", "full"), parameters.get("kinds")

        def takes(source) -> bool:
            return (not kinds or source.kind in kinds) and backup_type in engine_class(source.kind).backup_types

    else:
        return None
    out: dict[str, list[str]] = {}
    for source in config.sources:
        if takes(source):
            out.setdefault(source.work_pool or config.operations.work_pool, []).append(source.name)
    return out


def register_deployments(config: StackConfig, *, project_dir: Path | None = None) -> list[str]:
    """Put ``config``'s pools, queues and deployments (prefect.yaml's, routed by pool) on the server in
    PREFECT_API_URL and store its schedules; one line per change (none when all was in place)."""
    from prefect.client.orchestration import get_client
    from prefect.variables import Variable

    from deployments.steps import PROJECT

    wanted, absent = wanted_deployments(config, Path(project_dir or PROJECT))
    turned = toggled(stored_schedules(config.stack), config)
    schedules = config.schedules.deployment_schedules()
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        for pool in pools_of(config):
            lines += ensure_pool(client, pool)
        names = {w.name for w in wanted} | {full_name.partition("/")[2] for full_name in absent}
        flow_ids, existing = _existing(client, config.stack, {w.flow for w in wanted} | {"backup", "capture"}, names)
        owned = _owned_automations(client) if any(w.triggers for w in wanted) else {}
        for want in wanted:
            current = existing.pop((want.flow, want.name), None)
            spec = schedules[want.key]
            if current is None:
                deployment_id = _create(client, want, spec, flow_ids)
                state = f"cron '{spec['cron']}' UTC" if spec["active"] else "schedule off (paused)"
                where = f"pool {want.fields['work_pool_name']}, queue {want.fields['work_queue_name']}"
                lines.append(f"created deployment {want.full_name} ({where}, {state})")
            else:
                deployment_id = current["id"]
                changed = _update(client, current, want)
                if changed:
                    lines.append(f"updated deployment {want.full_name}: {', '.join(changed)}")
                ours = current.get("schedules") or []
                line = put_schedule(client, deployment_id, ours, want.full_name, spec, toggle=want.key in turned)
                if line:
                    lines.append(line)
            if want.triggers or owned.get(deployment_id):
                lines += _put_triggers(client, want, deployment_id, owned.get(deployment_id, []))
        for (flow, name), stale in existing.items():
            full_name = f"{flow}/{name}"
            if ROUTED_TAG in (stale.get("tags") or []) or full_name in absent:
                client.delete_deployment(stale["id"])
                why = "its sources run in other pools" if full_name in absent else "no source of it is in that pool"
                lines.append(f"deleted deployment {full_name} ({why})")
    Variable.set(variable_name(config.stack), config.schedules.model_dump(), overwrite=True)
    return lines


def _existing(
    client: Any, stack: str, flows: set[str], names: set[str]
) -> tuple[dict[str, str], dict[tuple[str, str], dict]]:
    """(flow name -> id of those that exist, (flow, deployment) -> deployment of ``stack`` among ``flows``: those
    named ``names`` and the per-pool copies, as JSON).

    Only these (other stacks on the same server cost nothing), and as plain JSON, not the client's models:
    validating a schedule's timezone lists the zoneinfo database each time (20-60 ms a schedule)."""
    flow_filter = {"name": {"any_": sorted(flows)}}
    flow_ids = {f["name"]: f["id"] for f in client.request("POST", "/flows/filter", json={"flows": flow_filter}).json()}
    by_id = {v: k for k, v in flow_ids.items()}
    out: dict[tuple[str, str], dict] = {}
    for deployment_filter in ({"name": {"any_": sorted(names)}}, {"tags": {"all_": [ROUTED_TAG]}}):
        offset = 0
        while True:
            body = {"flows": flow_filter, "deployments": deployment_filter, "limit": PAGE, "offset": offset}
            page = client.request("POST", "/deployments/filter", json=body).json()
            for deployment in page:
                if (deployment.get("parameters") or {}).get("stack", DEFAULT_STACK) == stack:
                    out[(by_id[deployment["flow_id"]], deployment["name"])] = deployment
            if len(page) < PAGE:
                break
            offset += PAGE
    return flow_ids, out


def _create(client: Any, want: Wanted, spec: dict[str, Any], flow_ids: dict[str, str]) -> str:
    """Create ``want`` with our schedule (``spec``); its id. The payload ``prefect deploy`` sends, as JSON."""
    if want.flow not in flow_ids:
        flow_ids[want.flow] = str(client.create_flow_from_name(want.flow))
    schedule = {"cron": spec["cron"], "timezone": spec["timezone"]}
    body = want.fields | {
        "flow_id": flow_ids[want.flow],
        "name": want.name,
        "schedules": [{"schedule": schedule, "active": spec["active"], "slug": SLUG}],
        "paused": False,
    }
    return client.request("POST", "/deployments/", json=body).json()["id"]


def _current_fields(current: dict) -> dict[str, Any]:
    """The fields of ``Wanted.fields`` as ``current`` (a deployment read from the server) has them."""
    limit = (current.get("global_concurrency_limit") or {}).get("limit", current.get("concurrency_limit"))
    strategy = (current.get("concurrency_options") or {}).get("collision_strategy")
    return {name: current.get(name) for name in _FIELDS} | {
        "tags": list(current.get("tags") or []),
        "parameters": current.get("parameters") or {},
        "job_variables": current.get("job_variables") or {},
        "concurrency_limit": limit,
        "concurrency_options": {"collision_strategy": strategy} if strategy else None,
    }


_FIELDS = (
    "description",
    "version",
    "entrypoint",
    "path",
    "pull_steps",
    "parameter_openapi_schema",
    "enforce_parameter_schema",
    "work_pool_name",
    "work_queue_name",
)


def _update(client: Any, current: dict, want: Wanted) -> list[str]:
    """Write the fields of ``want`` that differ from ``current``; their names."""
    from prefect.client.schemas.actions import DeploymentUpdate

    have = _current_fields(current)
    changed = [name for name, value in want.fields.items() if have[name] != value]
    # A version alone is no reason to write: `prefect deploy` in a git clone with a remote records the commit
    # (ours: the flow file's hash), and every update deletes the deployment's scheduled runs.
    if not [name for name in changed if name != "version"]:
        return []
    update = {name: want.fields[name] for name in changed}
    if {"work_pool_name", "work_queue_name"} & set(changed):  # the server finds the queue by both
        update |= {"work_pool_name": want.fields["work_pool_name"], "work_queue_name": want.fields["work_queue_name"]}
    if "concurrency_options" in update and "concurrency_limit" not in update:
        update["concurrency_limit"] = want.fields["concurrency_limit"]
    client.update_deployment(current["id"], DeploymentUpdate(**update))
    return changed


def _owned_automations(client: Any) -> dict[str, list[Any]]:
    """Deployment id -> the automations made from its triggers (those that run it; the server does not return
    their owner, ``prefect.deployment.<id>``, which deleting them by owner uses)."""
    out: dict[str, list[Any]] = {}
    for automation in client.read_automations():
        for action in automation.actions:
            if getattr(action, "type", None) == "run-deployment" and getattr(action, "source", None) == "selected":
                out.setdefault(str(action.deployment_id), []).append(automation)
    return out


def _automation_form(automation: Any) -> str:
    """What ``prefect deploy`` sets of an automation, for comparing (the trigger's own random id left out)."""
    data = automation.model_dump(mode="json", include={"name", "description", "enabled", "trigger", "actions"})
    data["trigger"].pop("id", None)
    return json.dumps(data, sort_keys=True)


def _put_triggers(client: Any, want: Wanted, deployment_id: Any, current: list[Any]) -> list[str]:
    """The deployment's triggers as automations it owns, the way ``prefect deploy`` makes them (replaced as a
    whole when they differ)."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter = TypeAdapter(DeploymentTriggerTypes)
    automations = []
    for i, spec in enumerate(want.triggers, start=1):
        trigger = adapter.validate_python({"name": f"{want.name}__automation_{i}", **spec})
        trigger.set_deployment_id(deployment_id)
        automations.append(trigger.as_automation())
    if sorted(_automation_form(a) for a in current) == sorted(_automation_form(a) for a in automations):
        return []
    client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
    for automation in automations:
        client.create_automation(automation)
    return [f"triggers of deployment {want.full_name}: {len(automations)} automation(s) set"]
