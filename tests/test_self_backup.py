"""The DR system recovers itself (issue 13): the self-backup flow seals the stack's Prefect state into the vault,
and `genesis-dr bootstrap --from-vault` rebuilds it in an EMPTY Prefect home, where the stack works again."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.sources import FilesSourceConfig, PostgresSourceConfig

REPO = Path(__file__).resolve().parents[1]
# Run in the bootstrapped home (its own temporary server): what the operator finds there, then a backup.
CHECK = """\
import json, sys
from cli.stacks import prefect_session
stack = sys.argv[1]
with prefect_session():
    from blocks.apply import load_stack
    from tasks.self_backup import api, paged
    config = load_stack(stack)
    db = next(s for s in config.sources if s.name == "app-db")
    with api() as http:
        deployments = paged(http, "/deployments/filter")
        flows = {f["id"]: f["name"] for f in paged(http, "/flows/filter")}
        docs = {f"{d['block_type']['slug']}/{d['name']}": d["id"] for d in paged(http, "/block_documents/filter")}
        pools = {p["name"]: {q["name"]: q["priority"] for q in paged(http, f"/work_pools/{p['name']}/queues/filter")}
                 for p in paged(http, "/work_pools/filter")}
        out = {
            "password": db.password.get_secret_value(),
            "database": db.database,
            "webhook": config.notifications.webhooks[0].url.get_secret_value(),
            "deployments": {f"{flows[d['flow_id']]}/{d['name']}": {
                "id": d["id"], "queue": d["work_queue_name"], "pool": d["work_pool_name"],
                "schedules": sorted([s["schedule"].get("cron"), s["active"], s["slug"]] for s in d["schedules"]),
                "limit": (d.get("global_concurrency_limit") or {}).get("limit"),
                "strategy": (d.get("concurrency_options") or {}).get("collision_strategy"),
                "parameters": d["parameters"], "pull_steps": d["pull_steps"]} for d in deployments},
            "docs": docs,
            "variables": {v["name"]: v["value"] for v in paged(http, "/variables/filter")},
            "pools": pools,
            "limits": {c["name"]: c["limit"] for c in paged(http, "/v2/concurrency_limits/filter")},
            "automations": {a["name"]: a for a in paged(http, "/automations/filter")},
        }
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    hooks = [n.split("/", 1)[1] for n in docs if n.startswith("custom-webhook/")]
    out["webhook_secrets"] = {n: CustomWebhookNotificationBlock.load(n).secrets.get_secret_value() for n in hooks}
    from flows.backup import backup
    out["backup"] = [r["id"] for r in backup(stack=stack, backup_type="full", sources=["app-files"])]
print("CHECK " + json.dumps(out))
"""

# The restored home's source block with another password (as a rotation there since the snapshot would leave it).
ROTATE = """\
import sys
from cli.stacks import prefect_session
from pydantic import SecretStr
with prefect_session():
    from blocks.sources import PostgresSource
    block = PostgresSource.load(f"{sys.argv[1]}-app-db")
    block.password = SecretStr(sys.argv[2])
    block.save(f"{sys.argv[1]}-app-db", overwrite=True)
"""
# Which password the source's block holds (its hash: a secret never reaches test output).
PASSWORD = """\
import hashlib, sys
from cli.stacks import prefect_session
with prefect_session():
    from blocks.apply import load_stack
    db = next(s for s in load_stack(sys.argv[1]).sources if s.name == "app-db")
    print("PASSWORD-IS-THE-SNAPSHOTS " + hashlib.sha256(db.password.get_secret_value().encode()).hexdigest())
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k != "PREFECT_API_URL"}
    return env | {"PYTHONPATH": str(REPO)} | extra


def _genesis(*args: str, env: dict, cwd: Path, expect: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == expect, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("genesis-dr: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _prefect_objects(stack: str) -> dict:
    """What `genesis-dr apply` and the deployment registration leave on a server, made here directly: a work pool
    with two queues, a concurrency limit, a schedules variable, two deployments (one schedule paused), and an
    automation naming a deployment and a block by id."""
    from tasks.self_backup import api

    pool = f"genesis-dr-{stack}"
    with api() as http:
        assert http.post("/work_pools/", json={"name": pool, "type": "process"}).status_code == 201
        for name, priority in (("full", 4), ("retention", 7)):
            assert http.post(f"/work_pools/{pool}/queues", json={"name": name, "priority": priority}).is_success
        http.post("/v2/concurrency_limits/", json={"name": f"genesis-dr-backup-{stack}-app-db", "limit": 1})
        http.post("/variables/", json={"name": f"genesis-dr-schedules-{stack}", "value": {"full": "0 */6 * * *"}})
        made = {}
        for flow, name, entry, queue, schedules in (
            ("backup", f"full-{stack}", "flows/backup.py:backup", "full", [("0 */6 * * *", True), ("30 1 * * *", False)]),
            ("self-backup", f"self-backup-{stack}", "flows/self_backup.py:self_backup", "retention", [("15 4 * * *", False)]),
        ):  # fmt: skip
            flow_id = http.post("/flows/", json={"name": flow}).json()["id"]
            body = {
                "flow_id": flow_id,
                "name": name,
                "entrypoint": entry,
                "parameters": {"stack": stack},
                "tags": ["dr"],
                "work_pool_name": pool,
                "work_queue_name": queue,
                "pull_steps": [{"deployments.steps.set_project_directory": {}}],
                "concurrency_limit": 1,
                "concurrency_options": {"collision_strategy": "CANCEL_NEW"},
                "schedules": [
                    {"schedule": {"cron": cron, "timezone": "UTC"}, "active": active, "slug": f"genesis-dr-stack-{i}"}
                    for i, (cron, active) in enumerate(schedules)
                ],
            }
            made[f"{flow}/{name}"] = http.post("/deployments/", json=body).json()["id"]
        channels = http.get(f"/block_types/slug/notification-channels/block_documents/name/{stack}").json()["id"]
        automation = {
            "name": f"genesis-dr {stack} backup failed",
            "trigger": {
                "type": "event",
                "posture": "Reactive",
                "expect": ["prefect.flow-run.Failed"],
                "match_related": {"prefect.resource.id": f"prefect.deployment.{made[f'backup/full-{stack}']}"},
                "threshold": 1,
                "within": 0,
            },
            "actions": [
                {"type": "send-notification", "block_document_id": channels, "subject": "failed", "body": "b"},
                {"type": "run-deployment", "source": "selected", "deployment_id": made[f"self-backup/self-backup-{stack}"], "parameters": {}},
            ],
        }  # fmt: skip
        assert http.post("/automations/", json=automation).status_code == 201
    return made


def test_self_backup_and_bootstrap_into_an_empty_prefect_home(make_stack, tmp_path):
    from flows.self_backup import self_backup

    pg_password = "pg-" + secrets.token_hex(16)
    hook = f"http://127.0.0.1:9/hooks/{secrets.token_hex(16)}"
    files = tmp_path / "app-files"
    files.mkdir()
    (files / "config.yml").write_text("feature: on\n")
    stack = make_stack(
        [
            PostgresSourceConfig(name="app-db", host="db.internal", database="app", password=pg_password),
            FilesSourceConfig(name="app-files", root=str(files)),
        ],
        notifications={"webhooks": [{"url": hook}]},
    )
    from deployments.automations import apply_automations

    apply_automations(stack.config)  # H2's: a webhook notification block (its URL secret) and their automations
    _prefect_objects(stack.name)  # after: apply_automations removes the stack's automations it did not make

    first = self_backup(stack=stack.name)
    result = self_backup(stack=stack.name)  # the newest: it records the trail's head, the first run's entry
    assert result["id"] > first["id"] and result["audit_head"] == first["audit"]["seq"]
    counts = result["counts"]
    # dr-stack, local-vault, vault-key, notification-channels, the two source blocks, H2's webhook block
    assert counts["blocks"] == 7
    assert counts["automations"] >= 2 and counts["variables"] >= 1 and counts["concurrency_limits"] >= 1
    assert result["audit"]["seq"] >= 1
    record = json.loads((stack.vault_path / result["key"]).read_text())
    assert record["id"] == result["id"] and record["counts"] == counts and record["stack"] == stack.name
    stored = b"".join(p.read_bytes() for p in stack.vault_path.rglob("*") if p.is_file())
    for secret in (pg_password, hook.rsplit("/", 1)[1]):
        assert secret.encode() not in stored  # sealed: not in the clear anywhere in the vault

    home, state = tmp_path / "new-home", tmp_path / "new-state"
    env = _env(PREFECT_HOME=str(home), GENESIS_DR_STATE_DIR=str(state))
    passphrase = f"--passphrase-from=file:{tmp_path / f'passphrase-{stack.name}'}"

    # Everything is decrypted before Prefect is touched: a wrong key, an empty vault, a dry run change nothing.
    wrong = _genesis("bootstrap", "--from-vault", str(stack.vault_path), "--passphrase-from", "env:WRONG",
                     env=env | {"WRONG": "not-the-passphrase"}, cwd=tmp_path, expect=6)  # fmt: skip
    assert "wrong passphrase" in _error(wrong) and result["id"] in _error(wrong)
    (tmp_path / "empty").mkdir()
    empty = _genesis("bootstrap", "--from-vault", str(tmp_path / "empty"), passphrase, env=env, cwd=tmp_path, expect=37)
    assert "no vault at" in _error(empty)
    dry = _genesis(
        "bootstrap", "--from-vault", str(stack.vault_path), passphrase, "--dry-run", env=env, cwd=tmp_path, expect=0
    )
    assert f"would restore block dr-stack/{stack.name}" in dry.stdout
    assert f"would restore deployment backup/full-{stack.name} (0 */6 * * * active; 30 1 * * * paused)" in dry.stdout
    assert not home.exists() or not (home / "prefect.db").exists()

    boot = _genesis("bootstrap", "--from-vault", str(stack.vault_path), passphrase, env=env, cwd=tmp_path, expect=0)
    assert f"self-backup {result['id']} of stack '{stack.name}'" in boot.stdout
    assert f"audit trail continues from the snapshot's entry {result['audit_head']}" in boot.stdout
    assert f"restored automation genesis-dr {stack.name} backup failed" in boot.stdout
    assert "genesis-dr restore --stack" in boot.stdout and pg_password not in boot.stdout + boot.stderr

    check = subprocess.run([sys.executable, "-c", CHECK, stack.name], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=240)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    found = json.loads(next(line for line in check.stdout.splitlines() if line.startswith("CHECK "))[6:])
    assert (found["password"], found["database"], found["webhook"]) == (pg_password, "app", hook)
    full = found["deployments"][f"backup/full-{stack.name}"]
    assert full["schedules"] == [
        ["0 */6 * * *", True, "genesis-dr-stack-0"],
        ["30 1 * * *", False, "genesis-dr-stack-1"],
    ]
    assert (full["pool"], full["queue"], full["limit"], full["strategy"]) == (
        f"genesis-dr-{stack.name}",
        "full",
        1,
        "CANCEL_NEW",
    )
    assert full["parameters"] == {"stack": stack.name}
    assert full["pull_steps"] == [{"deployments.steps.set_project_directory": {}}]
    own = found["deployments"][f"self-backup/self-backup-{stack.name}"]
    assert own["schedules"] == [["15 4 * * *", False, "genesis-dr-stack-0"]]
    assert found["pools"][f"genesis-dr-{stack.name}"] == {"default": 1, "full": 4, "retention": 7}
    assert found["variables"][f"genesis-dr-schedules-{stack.name}"] == {"full": "0 */6 * * *"}
    assert found["limits"][f"genesis-dr-backup-{stack.name}-app-db"] == 1
    automation = found["automations"][f"genesis-dr {stack.name} backup failed"]
    notify, run = automation["actions"]
    assert notify["block_document_id"] == found["docs"][f"notification-channels/{stack.name}"]
    assert run["deployment_id"] == own["id"]  # ids mapped to the new server's objects
    assert automation["trigger"]["match_related"]["prefect.resource.id"] == f"prefect.deployment.{full['id']}"
    names = {doc_id: name for name, doc_id in found["docs"].items()}
    h2 = {n: a for n, a in found["automations"].items() if n.startswith(f"genesis-dr {stack.name} run failed")}
    assert h2, sorted(found["automations"])
    for automation in h2.values():
        for action in automation["actions"]:
            assert names[action["block_document_id"]].startswith("custom-webhook/")
    assert [hook] == [v.get("url") for v in found["webhook_secrets"].values() if isinstance(v, dict)]
    assert len(found["backup"]) == 1  # the stack works: a backup of its files source ran from the restored blocks

    listed = _genesis("list", "--stack", stack.name, "--source", "app-files", env=env, cwd=tmp_path, expect=0)
    assert found["backup"][0] in listed.stdout

    # A server holding that stack with other settings (the harness's, re-applied with a new password) is refused
    # before anything changes; --force would replace it.
    from prefect.settings import PREFECT_API_URL

    from blocks.apply import apply_stack

    stack.config.sources[0].password = SecretStr("changed-" + secrets.token_hex(8))
    apply_stack(stack.config)
    other = _genesis("bootstrap", "--from-vault", str(stack.vault_path), passphrase, env=env | {"PREFECT_API_URL": PREFECT_API_URL.value()}, cwd=tmp_path, expect=37)  # fmt: skip
    assert f"with other settings in block postgres-source/{stack.name}-app-db" in _error(other)

    # --force: the restored home's source block changed since (a password rotated there), refused as above,
    # then replaced by the snapshot's settings on the operator's word.
    rotated = "rotated-" + secrets.token_hex(8)
    change = subprocess.run([sys.executable, "-c", ROTATE, stack.name, rotated], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)  # fmt: skip
    assert change.returncode == 0, change.stdout + change.stderr
    _genesis("bootstrap", "--from-vault", str(stack.vault_path), passphrase, env=env, cwd=tmp_path, expect=37)
    forced = _genesis(
        "bootstrap", "--from-vault", str(stack.vault_path), passphrase, "--force", env=env, cwd=tmp_path, expect=0
    )
    assert rotated not in forced.stdout + forced.stderr and pg_password not in forced.stdout + forced.stderr
    again = subprocess.run([sys.executable, "-c", PASSWORD, stack.name], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=240)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1] == "PASSWORD-IS-THE-SNAPSHOTS " + str(
        hashlib.sha256(pg_password.encode()).hexdigest()
    )


@pytest.mark.parametrize("keep", [2])
def test_only_the_newest_snapshots_are_kept(tmp_path, keep):
    """Core alone: each snapshot opens with the stack's key only; older ones are destroyed past ``keep``."""
    from core.crypto.keys import Keyring
    from core.errors import WrongKeyError
    from core.selfbackup import open_snapshot, prune_snapshots, snapshot_ids, write_snapshot
    from core.storage.local import LocalStore

    store = LocalStore(str(tmp_path / "vault"))
    keyring = Keyring(passphrase="correct horse battery staple")
    written = [
        write_snapshot(store, keyring, stack="s", state={"n": n}, counts={"blocks": n}, audit_head=None).id
        for n in range(4)
    ]
    assert snapshot_ids(store) == sorted(written)
    summary, state = open_snapshot(store, keyring, written[-1])
    assert (summary.counts, state) == ({"blocks": 3}, {"n": 3})
    with pytest.raises(WrongKeyError):
        open_snapshot(store, Keyring(passphrase="another passphrase entirely"), written[-1])
    assert prune_snapshots(store, keep) == sorted(written)[:-keep]
    assert snapshot_ids(store) == sorted(written)[-keep:]


def test_bootstrap_from_an_s3_vault_wrapped_by_kms(moto_endpoint, new_bucket, tmp_path):
    """A snapshot in S3 whose data key only KMS wraps: the bootstrap finds the KMS key from the record itself
    (default credential chain) and reads the vault with the environment's credentials."""
    from core.crypto.keys import Keyring
    from core.crypto.kms import KmsKeyConfig
    from core.selfbackup import STATE_FORMAT, STATE_VERSION, write_snapshot
    from core.stack import VaultConfig
    from tests.fixtures_cloud import PRIMARY_REGION, kms_client

    bucket = new_bucket()
    key_arn = kms_client(moto_endpoint).create_key()["KeyMetadata"]["Arn"]
    config = VaultConfig(type="s3", bucket=bucket, prefix="dr", region=PRIMARY_REGION, endpoint_url=moto_endpoint)
    vault = config.open(create=True)
    keyring = Keyring(kms_keys=[KmsKeyConfig(key_id=key_arn, region=PRIMARY_REGION, endpoint_url=moto_endpoint)])
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "stack": "cloud", "blocks": [], "deployments": [],
             "automations": [], "variables": [{"name": "genesis-dr-schedules-cloud", "value": {}, "tags": []}],
             "work_pools": [], "concurrency_limits": []}  # fmt: skip
    snap = write_snapshot(vault.store, keyring, stack="cloud", state=state, counts={"variables": 1}, audit_head=None)
    env = _env(PREFECT_HOME=str(tmp_path / "home"), GENESIS_DR_KMS_RETRIES="1")
    dry = _genesis(
        "bootstrap", "--from-vault", f"s3://{bucket}/dr", "--region", PRIMARY_REGION, "--endpoint-url",
        moto_endpoint, "--kms-endpoint-url", moto_endpoint, "--dry-run", env=env, cwd=tmp_path, expect=0,
    )  # fmt: skip
    assert f"self-backup {snap.id} of stack 'cloud'" in dry.stdout
    assert "would restore variable genesis-dr-schedules-cloud" in dry.stdout


def test_bootstrap_from_a_gcs_vault(make_stack, gcs_endpoint, new_gcs_bucket, tmp_path):
    """The stack's self-backup in a GCS vault (the emulator): found under gs://BUCKET/PREFIX, decrypted with the
    passphrase the operator brings, restored into an empty Prefect home; a snapshot without the stack's own block
    is refused before Prefect is touched."""
    from core.crypto.keys import Keyring
    from core.selfbackup import STATE_FORMAT, STATE_VERSION, write_snapshot
    from flows.backup import backup
    from flows.self_backup import self_backup

    bucket = new_gcs_bucket()
    vault = {"type": "gcs", "bucket": bucket, "prefix": "dr/prod", "endpoint_url": gcs_endpoint}
    (tmp_path / "files").mkdir()
    stack = make_stack([FilesSourceConfig(name="app-files", root=str(tmp_path / "files"))], vault=vault)
    (tmp_path / "files" / "app.conf").write_text("on\n")
    (backed,) = backup(stack=stack.name, backup_type="full")
    taken = self_backup(stack=stack.name)
    env = _env(PREFECT_HOME=str(tmp_path / "home"), GDR_PW=stack.passphrase, WRONG="not-it")
    args = ["bootstrap", "--from-vault", f"gs://{bucket}/dr/prod", "--endpoint-url", gcs_endpoint]

    wrong = _genesis(*args, "--passphrase-from", "env:WRONG", env=env, cwd=tmp_path, expect=6)
    assert "wrong passphrase" in _error(wrong) and taken["id"] in _error(wrong)
    empty = _genesis("bootstrap", "--from-vault", f"gs://{bucket}/elsewhere", "--endpoint-url", gcs_endpoint,
                     "--passphrase-from", "env:GDR_PW", env=env, cwd=tmp_path, expect=37)  # fmt: skip
    assert "no vault at" in _error(empty) and f"{bucket}/elsewhere" in _error(empty)
    boot = _genesis(*args, "--passphrase-from", "env:GDR_PW", env=env, cwd=tmp_path, expect=0)
    assert f"self-backup {taken['id']} of stack '{stack.name}'" in boot.stdout
    assert f"restored block dr-stack/{stack.name}" in boot.stdout
    assert f"stack '{stack.name}' bootstrapped into" in boot.stdout
    listed = _genesis("list", "--stack", stack.name, env=env, cwd=tmp_path, expect=0)  # the restored stack's vault
    assert backed["id"] in listed.stdout

    # A newer snapshot holding no DR Stack block (only a variable): refused, nothing changed; a dry run says so.
    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "stack": stack.name, "blocks": [],
             "deployments": [], "automations": [], "variables": [{"name": "genesis-dr-x", "value": 1, "tags": []}],
             "work_pools": [], "concurrency_limits": []}  # fmt: skip
    store = stack.config.vault.store()
    partial = write_snapshot(store, Keyring(passphrase=stack.passphrase), stack=stack.name, state=state,
                             counts={"variables": 1}, audit_head=None)  # fmt: skip
    refused = _genesis(*args, "--passphrase-from", "env:GDR_PW", env=env, cwd=tmp_path, expect=37)
    assert f"self-backup {partial.id} holds no DR Stack block" in _error(refused)
    assert "restored" not in refused.stdout
    dry = _genesis(*args, "--passphrase-from", "env:GDR_PW", "--dry-run", env=env, cwd=tmp_path, expect=0)
    assert "would restore variable genesis-dr-x" in dry.stdout and "holds no DR Stack block" in dry.stderr
