"""`genesis-dr retention|hold|erase|audit|archive` and `key signing-new` as an operator types them (a subprocess
against the test harness's API; the stacks are registered and backed up in-process): the documented exit codes
and one-line errors, the admin key where the issue's roles ask for it, and the vault afterwards."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from core.crypto.signing import generate_signing_key
from tests.commands import REPO, clean_environment, command_runner, error_line
from tests.test_retention_flows import ADMIN_ENV, fulls, listed, retention_stack


@pytest.fixture
def keys() -> dict[str, str]:
    admin_private, admin_public = generate_signing_key()
    other_private, _ = generate_signing_key()
    return {"admin": admin_private, "public": admin_public, "other": other_private}


@pytest.fixture
def cli(prefect_api, tmp_path):
    # No admin key in the environment unless a call passes one: the backup host's (or operator's) view.
    env = {k: v for k, v in clean_environment().items() if k != ADMIN_ENV}
    return command_runner(tmp_path, env, timeout=300)


def test_holds_retention_and_the_audit_trail_through_the_command(cli, make_stack, tmp_path, keys):
    stack = retention_stack(make_stack, tmp_path, keys["public"])
    name = stack.name
    oldest, middle, newest = fulls(stack, 3)
    admin = {ADMIN_ENV: keys["admin"]}

    # A hold by glob: its id alone on stdout (scripts capture it); a malformed scope in one line, exit 29.
    scope = json.dumps({"backup_ids": [oldest[:-3] + "*"]})
    hold_id = cli("hold", "create", "case-17", "litigation", scope, "legal@example.com", "--stack", name).stdout.strip()
    assert re.fullmatch(r"hold-\d{8}-[0-9a-f]{8}", hold_id), hold_id
    assert "not JSON" in error_line(
        cli("hold", "create", "x", "y", '{"backup_ids": [', "c", "--stack", name, expect=29)
    )
    held = cli("hold", "list", "--stack", name).stdout
    assert f"{hold_id} " in held and "case-17" in held and f"covers 1 backups ({oldest})" in held, held

    # The dry run prints the plan and changes nothing; the run deletes only what is neither held nor the newest.
    plan = cli("retention", "run", "--dry-run", "--stack", name).stdout
    assert "dry run: nothing was changed" in plan and middle in plan, plan
    assert listed(stack) == [oldest, middle, newest]
    report = json.loads(cli("retention", "run", "--stack", name, "--json").stdout)
    assert report["deleted"] == [middle] and len(report["certificates"]) == 1, report
    assert listed(stack) == [oldest, newest]
    status = cli("retention", "status", "--stack", name).stdout
    assert "active holds: 1" in status and f"{hold_id} (case-17)" in status and "storage by tier: STANDARD" in status

    # Releasing needs a key listed in signing.admin_public_keys, read where the command runs (exit 33 otherwise).
    release = ("hold", "release", hold_id, "case closed", "--stack", name)
    other = cli(*release, expect=33, extra_env={ADMIN_ENV: keys["other"]})
    assert "not listed in signing.admin_public_keys" in error_line(other)
    assert f"hold {hold_id} (case-17) released" in cli(*release, extra_env=admin).stdout

    # An edited audit entry is named (exit 32); every later retention run deletes nothing (exit 30), until an
    # admin acknowledges it.
    entry = next(
        p
        for p in sorted((stack.vault_path / "audit/entries").glob("*.json"))
        if json.loads(p.read_text())["action"] == "hold.release"
    )
    edited = json.loads(entry.read_text())
    edited["details"]["name"] = "something else"
    entry.write_text(json.dumps(edited))
    failed = cli("audit", "verify", "--stack", name, expect=32)
    assert f"entry {edited['seq']}" in error_line(failed) and "FAILED edited" in failed.stdout, failed.stdout
    refused = cli("retention", "run", "--stack", name, expect=30)
    assert "audit" in error_line(refused) and "NO DELETION" in refused.stdout, refused.stdout
    assert listed(stack) == [oldest, newest]
    ack = cli("audit", "acknowledge", "checked: a test edit", "--stack", name, extra_env=admin).stdout
    assert "acknowledged by admin" in ack, ack
    counts = json.loads(cli("archive", "thaw", newest, "--stack", name, "--json").stdout)
    chunks = sum(len(stream.chunks) for stream in stack.vault().manifest(newest).streams)
    assert (counts["ready"], counts["requested"], counts["in-progress"], counts["backups"]) == (chunks, 0, 0, [newest])
    shown = [
        json.loads(line) for line in cli("audit", "show", "--last", "3", "--json", "--stack", name).stdout.splitlines()
    ]
    assert [e["action"] for e in shown] == ["audit.alarm", "retention.run", "audit.acknowledge"], shown
    assert shown[1]["outcome"] == "refused" and shown[1]["details"]["audit_alarm"] is True


def test_erase_records_with_the_admin_key_and_never_passes_the_subject(cli, make_stack, tmp_path, keys):
    rule = {"erasure": {"app-files": {"paths": ["users/{subject}.json"]}}}
    stack = retention_stack(make_stack, tmp_path, keys["public"], classes=["personal"], **rule)
    (only,) = fulls(stack, 1)

    preview = cli("erase", "--subject", "alice@example.com", "--dry-run", "--stack", stack.name).stdout
    assert "dry run: nothing was recorded or changed" in preview and only in preview, preview
    assert not (stack.vault_path / "erasure").exists()

    # The subject from stdin (out of the process list); the flow gets the request id only.
    env = clean_environment(**{ADMIN_ENV: keys["admin"]}) | {"PYTHONPATH": str(REPO)}
    from prefect.settings import PREFECT_API_URL

    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "erase", "--subject", "-", "--stack", stack.name, "--json"],
        input="alice@example.com\n",
        env=env | {"PREFECT_API_URL": PREFECT_API_URL.value()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert re.fullmatch(r"erasure-\d{8}-[0-9a-f]{8}", result["id"]) and result["shredded"] == [], result
    assert [k["id"] for k in result["kept"]] == [only]
    assert "alice@example.com" not in proc.stderr
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["erase"])))
    ours = [r.parameters for r in runs if r.parameters.get("stack") == stack.name]
    assert ours == [{"stack": stack.name, "request_id": result["id"], "dry_run": False}], ours


def test_key_signing_new_writes_a_private_key_once_and_names_where_the_public_one_goes(cli, tmp_path):
    from core.crypto.signing import SigningKey

    out = tmp_path / "admin.ed25519"
    made = cli("key", "signing-new", "--out", str(out)).stdout
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    public = SigningKey.from_b64(out.read_text().strip()).public_b64
    assert public in made and "signing.admin_public_keys" in made
    assert "never overwritten" in error_line(cli("key", "signing-new", "--out", str(out), expect=2))
    piped = cli("key", "signing-new")
    private = piped.stdout.strip()
    assert SigningKey.from_b64(private).public_b64 in piped.stderr  # the private key alone on stdout
    # This host's audit key, to list in signing.trusted_public_keys (the key this test session's entries carry).
    from core.crypto.signing import SigningConfig

    host = cli("key", "signing-host").stdout
    assert host.split()[0] == SigningConfig().host_key().public_b64, host
