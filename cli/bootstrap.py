"""``genesis-dr bootstrap --from-vault VAULT``: get the DR system back on a new machine, then the stack.

Reads the newest self-backup snapshot (or ``--snapshot ID``) of the vault (``core.selfbackup``, written by
the ``self-backup`` flow), decrypts it with the passphrase or X25519 private key the operator brings, and
recreates in the Prefect server of PREFECT_API_URL (none configured: the local Prefect home, through a
temporary server) the stack's block types and block documents with their secrets, the ``genesis-dr-*``
variables, work pools and their queues, global concurrency limits, the deployments exactly as they were
(schedules with their active flags and slugs, concurrency, pull steps, work pool and queue; flows run from
the project installed here) and the automations, with every id they name (block documents, deployments,
work pools and queues) mapped to the new objects. Then the stack's local description is saved, so read-only
commands (``list``) work at once, and the next steps are printed.

Everything is decrypted and checked before Prefect is touched: a wrong key (exit 6), a vault without a
snapshot (exit 37) or a damaged snapshot (exit 5) changes nothing. A server that already holds a different
DR Stack block of the same name is refused (exit 37) unless ``--force``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
_CREATE_FIELDS: dict[str, set[str]] = {}
# Deployment fields naming objects a snapshot does not hold (storage and infrastructure blocks of Prefect 2,
# the version history's ids): a restored deployment starts its own history.
_NOT_RESTORED = ("storage_document_id", "infrastructure_document_id", "base", "root", "branch", "version_info")
_AUTOMATION_FIELDS = (
    "name",
    "description",
    "enabled",
    "tags",
    "trigger",
    "actions",
    "actions_on_trigger",
    "actions_on_resolve",
)


def register(subparsers) -> None:
    """Add the ``bootstrap`` command to the ``genesis-dr`` parser."""
    p = subparsers.add_parser(
        "bootstrap",
        help="restore genesis-dr itself (blocks, deployments, automations, ...) from a vault's self-backup",
        description="Restore what genesis-dr needs to run, from the newest self-backup in VAULT (the self-backup "
        "flow writes one a day): the stack's blocks with their secrets, deployments with their schedules, "
        "automations, variables, work pools and queues, concurrency limits. Into the Prefect server of "
        "PREFECT_API_URL, or without one into the local Prefect home. Then restore the stack with "
        "'genesis-dr restore'.",
    )
    p.add_argument(
        "--from-vault",
        required=True,
        metavar="VAULT",
        help="the vault: a directory, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (credentials from the environment)",
    )
    p.add_argument("--snapshot", metavar="ID", help="this snapshot (self_YYYYMMDD_HHMMSSmmm_xxxxxxxx), not the newest")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--passphrase-from",
        metavar="REF",
        help="where the vault's passphrase is read: env:NAME, file:/path (0600) or prompt "
        "(default: env:BACKUP_ENCRYPTION_PASSWORD)",
    )
    keys.add_argument("--key-file", metavar="PATH", help="a file (0600) holding the X25519 private key (base64)")
    p.add_argument("--region", help="s3: the bucket's region (default BACKUP_S3_REGION, AWS_REGION, us-east-1)")
    p.add_argument("--endpoint-url", help="another S3/GCS endpoint (an S3-compatible service or a test server)")
    p.add_argument(
        "--kms-endpoint-url", help="another KMS endpoint, for snapshots wrapped by KMS keys (a VPC endpoint)"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be restored and change nothing")
    p.add_argument(
        "--force", action="store_true", help="replace a different DR Stack block of the same name on the server"
    )
    p.set_defaults(func=cmd_bootstrap)


def vault_config(location: str, region: str | None = None, endpoint_url: str | None = None):
    """The VaultConfig of ``--from-vault``: a directory, s3://bucket/prefix or gs://bucket/prefix."""
    from core.errors import ConfigError
    from core.stack import VaultConfig

    for scheme, kind in (("s3://", "s3"), ("gs://", "gcs"), ("gcs://", "gcs")):
        if location.startswith(scheme):
            bucket, _, prefix = location[len(scheme) :].partition("/")
            if not bucket:
                raise ConfigError(f"--from-vault {location}: no bucket; e.g. {scheme}my-bucket/genesis-dr/prod")
            fields = {"type": kind, "bucket": bucket, "prefix": prefix, "endpoint_url": endpoint_url}
            if kind == "s3":
                fields["region"] = region
            return VaultConfig(**fields)
    if "://" in location:
        raise ConfigError(f"--from-vault {location}: use a directory, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    return VaultConfig(type="local", path=str(Path(location).expanduser().resolve()))


def keyring_for(args, recipients: list[dict]):
    """The keys the operator brought: --passphrase-from, --key-file, or BACKUP_ENCRYPTION_PASSWORD; the KMS
    keys the snapshot names (default credential chain) when it was wrapped by KMS."""
    from core.crypto.keys import Keyring
    from core.crypto.kms import KmsKeyConfig, record_region
    from core.errors import ConfigError

    kms = [
        KmsKeyConfig(key_id=r["key_id"], region=record_region(r), endpoint_url=args.kms_endpoint_url)
        for r in recipients
        if r.get("type") == "aws-kms" and r.get("key_id")
    ]
    if args.key_file:
        return Keyring(private_key_from=f"file:{args.key_file}", kms_keys=kms)
    ref = args.passphrase_from or (
        "env:BACKUP_ENCRYPTION_PASSWORD" if os.environ.get("BACKUP_ENCRYPTION_PASSWORD") else None
    )
    if ref is None and not kms:
        raise ConfigError(
            "bootstrap needs the vault's key: --passphrase-from env:NAME|file:/path|prompt, --key-file PATH (an "
            "X25519 private key), or BACKUP_ENCRYPTION_PASSWORD in the environment"
        )
    return Keyring(passphrase_from=ref, kms_keys=kms)


def read_snapshot(args) -> tuple[Any, dict, Any]:
    """(snapshot summary, state, store) of the chosen snapshot, decrypted and verified; no Prefect."""
    from core.errors import BootstrapError, FormatError
    from core.repository.vault import Vault, VaultMissingError
    from core.selfbackup import STATE_FORMAT, STATE_VERSION, latest_snapshot_id, open_snapshot, read_record

    config = vault_config(args.from_vault, args.region, args.endpoint_url)
    store = config.store()
    where = config.location()
    try:
        Vault.open(store)  # its format and version checked, as any reader does
    except VaultMissingError:
        raise BootstrapError(
            f"no vault at {where}: nothing to bootstrap from; check --from-vault (a replica of the vault works too)"
        ) from None
    snapshot_id = args.snapshot or latest_snapshot_id(store)
    if snapshot_id is None:
        raise BootstrapError(
            f"vault {where} holds no self-backup (nothing under self/): it is written by the self-backup flow of the "
            "old system; try a replica of the vault, or rebuild with 'genesis-dr apply STACK_FILE'"
        )
    record, _ = read_record(store, snapshot_id)
    summary, state = open_snapshot(store, keyring_for(args, record.get("recipients") or []), snapshot_id)
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise FormatError(
            f"self-backup {snapshot_id}: state {state.get('format')!r} version {state.get('version')} is not "
            f"supported by this genesis-dr (knows {STATE_VERSION}); upgrade genesis-dr"
        )
    return summary, state, store


def _schedule_text(schedule: dict) -> str:
    spec = schedule.get("schedule") or {}
    when = spec.get("cron") or spec.get("rrule") or (f"every {spec['interval']} s" if spec.get("interval") else "?")
    return f"{when} {'active' if schedule.get('active', True) else 'paused'}"


def describe_state(state: dict) -> list[str]:
    """One line per object the bootstrap restores (no secret: names, schedules, counts)."""
    lines = [f"block {b['slug']}/{b['name']}" for b in state["blocks"]]
    for pool in state["work_pools"]:
        queues = ", ".join(
            f"{q['name']} ({q['priority']})" for q in sorted(pool["queues"], key=lambda q: q["priority"])
        )
        lines.append(f"work pool {pool['name']} ({pool['type']}): queues {queues}")
    lines += [f"concurrency limit {c['name']} = {c['limit']}" for c in state["concurrency_limits"]]
    lines += [f"variable {v['name']}" for v in state["variables"]]
    for dep in state["deployments"]:
        schedules = "; ".join(_schedule_text(s) for s in dep["schedules"]) or "no schedule"
        lines.append(f"deployment {dep['flow_name']}/{dep['name']} ({schedules})")
    lines += [f"automation {a['name']}" for a in state["automations"]]
    return lines


def cmd_bootstrap(args) -> int:
    """Decrypt first (nothing changes on a wrong key), then restore into Prefect and print the next steps."""
    from core.selfbackup import trail_continues

    summary, state, store = read_snapshot(args)
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in summary.counts.items())
    print(
        f"self-backup {summary.id} of stack '{summary.stack}', taken {summary.created_at} on {summary.host}: {counts}"
    )
    continues, line = trail_continues(store, summary.audit_head)
    print(("" if continues else "warning: ") + line, file=sys.stdout if continues else sys.stderr)
    # The stack's own block is what makes the rest a working stack: a snapshot without it (damaged, or written
    # by hand) is refused before Prefect is touched; a dry run shows what it holds and says so.
    stackless = not any(b.get("slug") == "dr-stack" for b in state.get("blocks") or [])
    problem = (
        f"self-backup {summary.id} holds no DR Stack block of stack '{summary.stack}', so it cannot rebuild the "
        "stack; choose another with --snapshot (the vault keeps the newest 14)"
    )
    if args.dry_run:
        for text in describe_state(state):
            print(f"would restore {text}")
        if stackless:
            print(f"warning: {problem}", file=sys.stderr)
        print("dry run: nothing changed")
        return 0
    if stackless:
        from core.errors import BootstrapError

        raise BootstrapError(problem)

    from cli.stacks import prefect_session

    with prefect_session() as where:
        from tasks.self_backup import api

        with api() as http:
            lines = Restorer(http, state, force=args.force).run()
        for text in lines:
            print(text)
        from blocks.apply import load_stack
        from core import stack_description

        path = stack_description.save(load_stack(summary.stack), where)
    print(f"stack '{summary.stack}' bootstrapped into {where}; local description: {path}")
    print(next_steps(summary.stack, state))
    return 0


def next_steps(stack: str, state: dict) -> str:
    key = next((b["data"] for b in state["blocks"] if b["slug"] == "vault-key"), {})
    needs = []
    if key.get("passphrase_from"):
        needs.append(f"passphrase ({key['passphrase_from']})")
    if key.get("x25519_private_key_from"):
        needs.append(f"X25519 private key ({key['x25519_private_key_from']})")
    bring = " and ".join(needs) or "the keys the stack file names"
    return (
        "next steps:\n"
        f"  1. make the {bring} readable here, and this host's audit signing key (or list its new one: "
        "'genesis-dr key signing-host'); they are never stored in Prefect, so not in the snapshot\n"
        "  2. genesis-dr serve                 (every deployment on its schedule; or workers on the pools above)\n"
        f"  3. genesis-dr list --stack {stack}   (the vault's backups)\n"
        f"  4. genesis-dr restore --stack {stack} --mode full --target-time now   (the stack itself; --dry-run first)"
    )


# ------------------------------------------------------------------------------------------------- restore


def _fields(model: str) -> set[str]:
    """The fields Prefect's create/update action ``model`` accepts (the API refuses any other)."""
    if model not in _CREATE_FIELDS:
        from prefect.client.schemas import actions

        _CREATE_FIELDS[model] = set(getattr(actions, model).model_fields)
    return _CREATE_FIELDS[model]


def _pick(data: dict, model: str, *, drop: tuple[str, ...] = ()) -> dict:
    keep = _fields(model) - set(drop)
    return {k: v for k, v in data.items() if k in keep}


def _remap(node: Any, ids: dict[str, str]) -> Any:
    """``node`` with every old id (alone, or as the tail of a resource id like prefect.deployment.<id>) replaced."""
    if isinstance(node, dict):
        return {k: _remap(v, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [_remap(v, ids) for v in node]
    if isinstance(node, str):
        head, dot, tail = node.rpartition(".")
        if node in ids:
            return ids[node]
        if dot and tail in ids:
            return f"{head}.{ids[tail]}"
    return node


def _why(response) -> str:
    """The API's reason without the values it was sent: a validation error echoes its input (a block's secrets)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return "no reason given"
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail if isinstance(d, dict)
        )[:300]
    return str(detail)[:200]


class Restorer:
    """Posts a snapshot's state back to a Prefect API, in dependency order, mapping old ids to new ones."""

    def __init__(self, http, state: dict, *, force: bool = False) -> None:
        self.http = http
        self.state = state
        self.force = force
        self.ids: dict[str, str] = {}
        self.lines: list[str] = []

    def _req(self, method: str, path: str, **kwargs):
        """The API's response, errors included (Prefect's client raises on any 4xx; 404 and 409 are answers here)."""
        from prefect.exceptions import PrefectHTTPStatusError

        try:
            return getattr(self.http, method)(path, **kwargs)
        except PrefectHTTPStatusError as exc:
            return exc.response

    def _ok(self, response, what: str):
        from core.errors import BootstrapError

        if response.status_code >= 400:
            raise BootstrapError(
                f"the Prefect API refused {what} (HTTP {response.status_code}: {_why(response)}); check the "
                "server's Prefect version against the snapshot's "
                f"({self.state.get('prefect_version')})"
            )
        return response.json() if response.content else None

    def run(self) -> list[str]:
        self.refuse_other_stack()
        self.block_types()
        for block in self.state["blocks"]:
            self.block(block)
        for variable in self.state["variables"]:
            self.variable(variable)
        for pool in self.state["work_pools"]:
            self.work_pool(pool)
        for limit in self.state["concurrency_limits"]:
            self.concurrency_limit(limit)
        for dep in self.state["deployments"]:
            self.deployment(dep)
        for automation in self.state["automations"]:
            self.automation(automation)
        return self.lines

    # -- blocks ---------------------------------------------------------------------------------------

    def _existing_block(self, slug: str, name: str) -> dict | None:
        r = self._req("get", f"/block_types/slug/{slug}/block_documents/name/{name}", params={"include_secrets": True})
        return None if r.status_code == 404 else self._ok(r, f"reading block {slug}/{name}")

    def _differs(self, block: dict) -> bool:
        """Whether the server holds ``block``'s document with other settings or secrets (False if it has none)."""
        held = self._existing_block(block["slug"], block["name"])
        if held is None:
            return False
        refs = {
            f: f"{r['block_document']['block_type']['slug']}/{r['block_document']['name']}"
            for f, r in (held.get("block_document_references") or {}).items()
        }
        own = {k: v for k, v in (held.get("data") or {}).items() if k not in refs}
        return own != block["data"] or refs != block["references"]

    def refuse_other_stack(self) -> None:
        """A server holding this stack with other settings (its DR Stack block, or a block of it: a source's
        password changed since the snapshot) is left alone unless --force: a bootstrap never silently puts an older
        configuration over a newer one."""
        from core.errors import BootstrapError

        if self.force:
            return
        stack = next(b for b in self.state["blocks"] if b["slug"] == "dr-stack")
        remedy = "bootstrap into an empty server or Prefect home, or replace it with --force"
        if self._differs(stack):
            raise BootstrapError(
                f"the Prefect server already holds a different DR Stack block {stack['name']!r}; {remedy}"
            )
        for block in self.state["blocks"]:
            if block is not stack and self._differs(block):
                raise BootstrapError(
                    f"the Prefect server already holds stack {stack['name']!r} with other settings in block "
                    f"{block['slug']}/{block['name']} than the snapshot's; {remedy}"
                )

    def block_types(self) -> None:
        """Register the block types this installation knows (ours, prefect-aws's, prefect-gcp's)."""
        import inspect

        from prefect.blocks.core import Block

        import blocks

        classes = [cls for _, cls in inspect.getmembers(blocks) if Block.is_block_class(cls)]
        for module in ("prefect_aws", "prefect_gcp"):
            try:
                mod = __import__(module)
            except ImportError:
                continue
            classes += [getattr(mod, n) for n in ("AwsCredentials", "GcpCredentials") if hasattr(mod, n)]
        wanted = {b["slug"] for b in self.state["blocks"]}
        for cls in classes:
            if cls.get_block_type_slug() in wanted:
                cls.register_type_and_schema()

    def _schema_id(self, block: dict, type_id: str) -> str:
        schema = block["block_schema"]
        r = self._req("get", f"/block_schemas/checksum/{schema['checksum']}")
        if r.status_code != 404:
            return self._ok(r, f"reading the schema of {block['slug']}")["id"]
        known = self._ok(
            self._req("post", "/block_schemas/filter", json={"block_schemas": {"block_type_id": {"any_": [type_id]}}}),
            f"listing the schemas of {block['slug']}",
        )
        if known:  # this installation registered its own version of the type: blocks load through its class
            return known[0]["id"]
        body = {**_pick(schema, "BlockSchemaCreate"), "block_type_id": type_id}
        return self._ok(self._req("post", "/block_schemas/", json=body), f"the schema of {block['slug']}")["id"]

    def _type_id(self, block: dict) -> str:
        r = self._req("get", f"/block_types/slug/{block['slug']}")
        if r.status_code != 404:
            return self._ok(r, f"reading block type {block['slug']}")["id"]
        body = {**_pick(block["block_type"], "BlockTypeCreate"), "slug": block["slug"]}
        return self._ok(self._req("post", "/block_types/", json=body), f"block type {block['slug']}")["id"]

    def block(self, block: dict) -> None:
        slug, name = block["slug"], block["name"]
        type_id = self._type_id(block)
        schema_id = self._schema_id(block, type_id)
        data = dict(block["data"])
        for field, ref in block["references"].items():
            data[field] = {"$ref": {"block_document_id": self.ids[ref]}}
        held = self._existing_block(slug, name)
        if held is None:
            body = {"name": name, "data": data, "block_schema_id": schema_id, "block_type_id": type_id}
            new_id = self._ok(self._req("post", "/block_documents/", json=body), f"block {slug}/{name}")["id"]
        else:
            new_id = held["id"]
            body = {"data": data, "block_schema_id": schema_id, "merge_existing_data": False}
            self._ok(self._req("patch", f"/block_documents/{new_id}", json=body), f"block {slug}/{name}")
        self.ids[f"{slug}/{name}"] = new_id
        self.ids[block["id"]] = new_id
        self.lines.append(f"restored block {slug}/{name}")

    # -- variables, pools, limits ---------------------------------------------------------------------

    def _upsert(self, create: str, body: dict, update: str, update_model: str, what: str) -> dict | None:
        """Update ``update`` if the server holds it, else create it. Asked first, not tried: a create that
        collides makes the server log a database error with its traceback, though it only answers 409."""
        if self._req("get", update).status_code == 200:
            self._ok(self._req("patch", update, json=_pick(body, update_model)), what)
            return self._ok(self._req("get", update), what)
        return self._ok(self._req("post", create, json=body), what)

    def variable(self, variable: dict) -> None:
        name = variable["name"]
        body = _pick(variable, "VariableCreate")
        self._upsert("/variables/", body, f"/variables/name/{name}", "VariableUpdate", f"variable {name}")
        self.lines.append(f"restored variable {name}")

    def work_pool(self, pool: dict) -> None:
        name = pool["name"]
        created = self._upsert(
            "/work_pools/",
            _pick(pool, "WorkPoolCreate"),
            f"/work_pools/{name}",
            "WorkPoolUpdate",
            f"work pool {name}",
        )
        if created and pool.get("id"):
            self.ids[pool["id"]] = created["id"]
        queues = sorted(pool["queues"], key=lambda q: q["priority"])
        held = self._ok(self._req("post", f"/work_pools/{name}/queues/filter", json={}), f"the queues of {name}")
        for queue in (q for q in queues if q["name"] not in {h["name"] for h in held}):
            r = self._req(
                "post", f"/work_pools/{name}/queues", json=_pick(queue, "WorkQueueCreate", drop=("priority",))
            )
            self._ok(r, f"work queue {name}/{queue['name']}")
        # Priorities last, lowest first: Prefect shifts the others when one takes a priority already used.
        for queue in queues:
            self._ok(
                self._req("patch", f"/work_pools/{name}/queues/{queue['name']}", json=_pick(queue, "WorkQueueUpdate")),
                f"work queue {name}/{queue['name']}",
            )
        held = self._ok(self._req("post", f"/work_pools/{name}/queues/filter", json={}), f"the queues of {name}")
        by_name = {q["name"]: q["id"] for q in held}
        for queue in queues:
            if queue.get("id") and queue["name"] in by_name:
                self.ids[queue["id"]] = by_name[queue["name"]]
        text = ", ".join(f"{q['name']} ({q['priority']})" for q in queues)
        self.lines.append(f"restored work pool {name} ({pool['type']}): queues {text}")

    def concurrency_limit(self, limit: dict) -> None:
        name = limit["name"]
        body = _pick(limit, "GlobalConcurrencyLimitCreate")
        self._upsert(
            "/v2/concurrency_limits/",
            body,
            f"/v2/concurrency_limits/{name}",
            "GlobalConcurrencyLimitUpdate",
            f"concurrency limit {name}",
        )
        self.lines.append(f"restored concurrency limit {name} = {limit['limit']}")

    # -- deployments, automations ---------------------------------------------------------------------

    def deployment(self, dep: dict) -> None:
        label = f"{dep['flow_name']}/{dep['name']}"
        flow = self._ok(self._req("post", "/flows/", json={"name": dep["flow_name"]}), f"flow {dep['flow_name']}")
        self.ids[dep["flow_id"]] = flow["id"]
        body = _pick(dep, "DeploymentCreate", drop=_NOT_RESTORED)
        body["flow_id"] = flow["id"]
        body["schedules"] = [_pick(s, "DeploymentScheduleCreate") for s in dep["schedules"]]
        options = {k: v for k, v in (dep.get("concurrency_options") or {}).items() if v is not None}
        body["concurrency_options"] = options or None
        if dep.get("path") and not Path(dep["path"]).is_dir():
            body["path"] = str(PROJECT)  # the old machine's checkout: run from the project installed here
        body = _remap(body, self.ids)
        new_id = self._ok(self._req("post", "/deployments/", json=body), f"deployment {label}")["id"]
        self.ids[dep["id"]] = new_id
        schedules = "; ".join(_schedule_text(s) for s in dep["schedules"]) or "no schedule"
        self.lines.append(f"restored deployment {label} ({schedules})")

    def automation(self, automation: dict) -> None:
        name = automation["name"]
        held = self._ok(
            self._req("post", "/automations/filter", json={"automations": {"name": {"any_": [name]}}}),
            f"reading automation {name}",
        )
        for old in held or []:
            if old["name"] == name:
                self._ok(self._req("delete", f"/automations/{old['id']}"), f"replacing automation {name}")
        body = _remap({k: automation[k] for k in _AUTOMATION_FIELDS if k in automation}, self.ids)
        runs = [a for a in body.get("actions") or [] if a.get("type") == "run-deployment"]
        if not name.startswith("genesis-dr ") and len(runs) == len(body.get("actions") or []) == 1:
            body["owner_resource"] = f"prefect.deployment.{runs[0]['deployment_id']}"  # a deployment's trigger
        self._ok(self._req("post", "/automations/", json=body), f"automation {name}")
        self.lines.append(f"restored automation {name}")
