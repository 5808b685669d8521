"""What genesis-dr itself needs to be rebuilt, read from the Prefect API and sealed into the vault.

``gather_state`` reads, through the API in PREFECT_API_URL, everything a new machine needs to get the DR system
back before the stack: the stack's block documents WITH their secrets (the DR Stack block and every block it
references, transitively: sources, vault, key, notification channels, replica vaults, failover region sources,
and the AwsCredentials / GcpCredentials / notification blocks named by a ``credentials``, ``aws_credentials`` or
``prefect_blocks`` field), the deployments of genesis-dr's flows (schedules with their active flags and slugs,
concurrency, pull steps, work pool and queue), the automations of the stack (``genesis-dr <stack> ...``) and those
acting on those deployments or blocks (deployment triggers), the ``genesis-dr-*`` variables and global concurrency
limits, and the work pools the deployments use with their queues. Plain REST calls on the client's HTTP session:
the JSON the API returns is what a bootstrap posts back (``cli.bootstrap``), ids remapped.

``core.selfbackup`` seals it; this module only reads Prefect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task

from core.errors import DRError
from core.selfbackup import (
    DEFAULT_KEEP,
    STATE_FORMAT,
    STATE_VERSION,
    prune_snapshots,
    read_audit_head,
    write_snapshot,
)
from tasks.run_stack import run_stack

# Deployments of genesis-dr's flows: their entrypoints are the project's flows/<module>.py:<function>.
_OUR_ENTRYPOINT = re.compile(r"^(?:.*/)?flows/[a-z_]+\.py:[a-z_]+$")
# Fields whose string value names a credentials block (vaults, KMS keys, SNS, CloudWatch, failover DNS and RDS).
_CREDENTIAL_FIELDS = ("credentials", "aws_credentials")
_CREDENTIAL_SLUGS = ("aws-credentials", "gcp-credentials")
_PAGE = 200
_DROP = {"created", "updated"}


@contextmanager
def api() -> Iterator[Any]:
    """The HTTP session of Prefect's sync client (base URL = the API)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        yield client._client


def paged(http, path: str, body: dict | None = None) -> list[dict]:
    """Every object a ``.../filter`` endpoint returns, page by page."""
    out: list[dict] = []
    while True:
        page = http.post(path, json={**(body or {}), "limit": _PAGE, "offset": len(out)}).json()
        out += page
        if len(page) < _PAGE:
            return out


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(field name, string value) for every string in ``node``, lists included."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


class _BlockWalk:
    """The stack's block documents with their secrets, each one listed after the blocks it references (the order
    a restore creates them in): nested blocks, ``<slug>/<name>`` strings naming a block (sources, replicas,
    failover regions), credentials block names, ``prefect_blocks`` names, and any block an automation acts with."""

    def __init__(self, http) -> None:
        self.http = http
        listed = [
            d for d in paged(http, "/block_documents/filter", {"include_secrets": False}) if not d["is_anonymous"]
        ]
        self.ids = {d["id"] for d in listed}
        self.by_slug = {(d["block_type"]["slug"], d["name"]): d["id"] for d in listed}
        self.by_name: dict[str, list[str]] = {}
        for d in listed:
            self.by_name.setdefault(d["name"], []).append(d["id"])
        self.ordered: list[dict] = []
        self.seen: set[str] = set()

    def stack(self, stack: str) -> None:
        start = self.by_slug.get(("dr-stack", stack))
        if start is None:
            from core.errors import ConfigError

            raise ConfigError(f"no stack named {stack!r} is registered; run 'genesis-dr apply <stack file>' first")
        self.visit(start)

    def _named(self, field: str, value: str) -> list[str]:
        slug, _, name = value.partition("/")
        if name and (slug, name) in self.by_slug:
            return [self.by_slug[(slug, name)]]
        if field in _CREDENTIAL_FIELDS:
            return [self.by_slug[(c, value)] for c in _CREDENTIAL_SLUGS if (c, value) in self.by_slug]
        if field == "prefect_blocks":
            return self.by_name.get(value, [])
        return []

    def visit(self, doc_id: str) -> None:
        if doc_id in self.seen or doc_id not in self.ids:
            return
        self.seen.add(doc_id)
        doc = self.http.get(f"/block_documents/{doc_id}", params={"include_secrets": True}).json()
        refs = {field: ref["block_document"] for field, ref in (doc.get("block_document_references") or {}).items()}
        for nested in refs.values():
            self.visit(str(nested["id"]))
        own = {k: v for k, v in (doc.get("data") or {}).items() if k not in refs}
        for field, value in _strings(own):
            for named in self._named(field, value):
                self.visit(named)
        schema = doc["block_schema"]
        self.ordered.append(
            {
                "id": doc["id"],
                "slug": doc["block_type"]["slug"],
                "name": doc["name"],
                "block_type": {k: v for k, v in doc["block_type"].items() if k not in _DROP | {"id"}},
                "block_schema": {
                    k: schema.get(k) for k in ("checksum", "fields", "capabilities", "version") if k in schema
                },
                "data": own,
                "references": {
                    field: f"{nested['block_type']['slug']}/{nested['name']}" for field, nested in refs.items()
                },
            }
        )


def _deployments(http) -> list[dict]:
    flows = {f["id"]: f["name"] for f in paged(http, "/flows/filter")}
    out = []
    for dep in paged(http, "/deployments/filter"):
        if not _OUR_ENTRYPOINT.match(dep.get("entrypoint") or ""):
            continue
        gcl = dep.get("global_concurrency_limit") or {}
        out.append(
            {
                **{
                    k: v
                    for k, v in dep.items()
                    if k not in _DROP | {"global_concurrency_limit", "status", "last_polled"}
                },
                "flow_name": flows.get(dep["flow_id"]),
                "concurrency_limit": gcl.get("limit", dep.get("concurrency_limit")),
                "schedules": sorted(
                    (
                        {k: v for k, v in s.items() if k not in _DROP | {"id", "deployment_id"}}
                        for s in dep.get("schedules") or []
                    ),
                    key=lambda s: (s.get("slug") or "", json.dumps(s.get("schedule"), sort_keys=True)),
                ),
            }
        )
    return out


def _automations(http, stack: str, deployment_ids: set[str], block_ids: set[str]) -> list[dict]:
    """The stack's automations (``genesis-dr <stack> ...``, H2's), and any other whose trigger or actions name a
    captured deployment or block (a deployment's trigger); another stack's ``genesis-dr <other> ...`` are its own."""
    out = []
    for automation in paged(http, "/automations/filter"):
        name = automation["name"]
        ids = {value for _, value in _strings({"t": automation.get("trigger"), "a": automation.get("actions")})}
        named = {i.rsplit(".", 1)[-1] for i in ids}
        ours = name == f"genesis-dr {stack}" or name.startswith(f"genesis-dr {stack} ")
        if ours or (not name.startswith("genesis-dr ") and named & (deployment_ids | block_ids)):
            out.append({k: v for k, v in automation.items() if k not in _DROP})
    return out


def _work_pools(http, names: set[str]) -> list[dict]:
    out = []
    for pool in paged(http, "/work_pools/filter"):
        if pool["name"] not in names:
            continue
        queues = paged(http, f"/work_pools/{pool['name']}/queues/filter")
        out.append(
            {
                **{
                    k: pool.get(k)
                    for k in (
                        "id",
                        "name",
                        "type",
                        "description",
                        "base_job_template",
                        "is_paused",
                        "concurrency_limit",
                    )
                },
                "queues": [
                    {k: q.get(k) for k in ("id", "name", "description", "is_paused", "concurrency_limit", "priority")}
                    for q in queues
                ],
            }
        )
    return out


def gather_state(stack: str, extra_pools: list[str] | None = None) -> dict:
    """Everything ``bootstrap`` restores, read from the Prefect API (block secrets included)."""
    import prefect

    with api() as http:
        walk = _BlockWalk(http)
        walk.stack(stack)
        deployments = _deployments(http)
        automations = _automations(http, stack, {d["id"] for d in deployments}, walk.seen)
        for automation in automations:  # the notification blocks they send with (H2's hold the channels' secrets)
            for field, value in _strings(automation.get("actions")):
                if field == "block_document_id":
                    walk.visit(value)
        blocks = walk.ordered
        variables = [
            {k: v.get(k) for k in ("name", "value", "tags")}
            for v in paged(http, "/variables/filter")
            if v["name"].startswith("genesis-dr-")
        ]
        pools = {d["work_pool_name"] for d in deployments if d.get("work_pool_name")} | set(extra_pools or [])
        work_pools = _work_pools(http, pools)
        limits = [
            {k: limit.get(k) for k in ("name", "limit", "active", "slot_decay_per_second")}
            for limit in paged(http, "/v2/concurrency_limits/filter")
            if limit["name"].startswith("genesis-dr-")
        ]
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "stack": stack,
        "prefect_version": prefect.__version__,
        "genesis_dr_version": _version(),
        "blocks": blocks,
        "deployments": deployments,
        "automations": automations,
        "variables": variables,
        "work_pools": work_pools,
        "concurrency_limits": limits,
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genesis-dr")
    except PackageNotFoundError:
        return "unknown"


def state_counts(state: dict) -> dict:
    return {
        name: len(state.get(name) or [])
        for name in ("blocks", "deployments", "automations", "variables", "work_pools", "concurrency_limits")
    }


def _stack_pools(config) -> list[str]:
    operations = getattr(config, "operations", None)
    default = getattr(operations, "work_pool", None)
    pools = [default] if default else []
    return pools + [p for s in config.sources if (p := getattr(s, "work_pool", None)) and p not in pools]


@task(name="self-backup")
def self_backup_task(stack: str, keep: int = DEFAULT_KEEP) -> dict:
    """Gather the state, seal it into the stack's primary vault, destroy all but the newest ``keep`` snapshots.

    Returns the snapshot's id, counts, the stored record's size and SHA-256, and the ids destroyed (no secret)."""
    run = run_stack(stack)
    config = run.config
    state = gather_state(stack, _stack_pools(config))
    vault = config.vault.open(create=True)
    key_id = vault.check_passphrase(run.keyring)
    head = read_audit_head(vault.store)
    snapshot = write_snapshot(
        vault.store,
        run.keyring,
        stack=stack,
        state=state,
        counts=state_counts(state),
        audit_head=head,
        passphrase_key_id=key_id,
        codec=config.vault.compression,
    )
    passes = getattr(getattr(config, "retention", None), "overwrite_passes", 3)
    logger = get_run_logger()
    destroyed = prune_snapshots(vault.store, keep, passes=passes)
    if destroyed:
        logger.info("self-backup: destroyed %d older snapshots (%s)", len(destroyed), ", ".join(destroyed))
    for replica in getattr(config, "replicas", None) or []:
        # Replication copies snapshots and never deletes; their old copies go here, as retention's deletions reach
        # the replicas. A replica out of reach keeps them until the next run: the snapshot itself is written.
        try:
            gone = prune_snapshots(replica.vault.store(), keep, passes=passes)
        except DRError as exc:
            logger.warning("self-backup: older snapshots on replica %s not destroyed: %s", replica.name, exc)
            continue
        if gone:
            logger.info("self-backup: destroyed %d older snapshots on replica %s", len(gone), replica.name)
    return {
        "id": snapshot.id,
        "counts": snapshot.counts,
        "size": snapshot.size,
        "sha256": snapshot.sha256,
        "key": snapshot.key,
        "audit_head": head["seq"] if head else None,
        "destroyed": destroyed,
        "vault": config.vault.location(),
    }
