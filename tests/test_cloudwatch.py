"""CloudWatch ``put_metric_data`` of a real vault's snapshot, against moto in server mode (real HTTP):
the published values read back with list_metrics and get_metric_statistics."""

from __future__ import annotations

import io
import os
import uuid
from contextlib import redirect_stderr
from datetime import timedelta

import boto3
import pytest

from core.chains import parse_iso
from core.crypto.keys import Keyring
from core.engines import engine_for
from core.errors import DRError
from core.observe.cloudwatch import CloudWatchError, metric_data, publish_cloudwatch
from core.observe.snapshot import build_snapshot
from core.operations import backup_source
from core.scheduling.config import CloudWatchConfig
from core.stack import StackConfig
from tests.fixtures_cloud import PRIMARY_REGION
from tests.servers import free_port


@pytest.fixture
def stack(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(os.urandom(5000))
    config = StackConfig(
        stack="cw-test",
        vault={"path": str(tmp_path / "vault")},
        sources=[
            {"kind": "files", "name": "app-files", "root": str(tree)},
            {"kind": "files", "name": "gone", "root": str(tmp_path / "missing")},
        ],
    )
    vault, keyring = config.vault.open(create=True), Keyring(passphrase="cloudwatch-test")
    full = backup_source(vault, keyring, engine_for(config.source("app-files")), "full")
    with pytest.raises(DRError):
        backup_source(vault, keyring, engine_for(config.source("gone")), "full")
    return config, full


def statistic(client, namespace: str, name: str, when, **dimensions) -> list[dict]:
    answer = client.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        StartTime=when - timedelta(minutes=5),
        EndTime=when + timedelta(minutes=5),
        Period=60,
        Statistics=["Maximum"],
    )
    return answer["Datapoints"]


def test_published_metrics_read_back_from_cloudwatch(stack, moto_endpoint):
    config, full = stack
    snap = build_snapshot(config)
    namespace = f"GenesisDR-{uuid.uuid4().hex[:8]}"
    cfg = CloudWatchConfig(namespace=namespace, region=PRIMARY_REGION, endpoint_url=moto_endpoint)
    data = metric_data(snap)
    # batches of 7: several calls, as a stack with many sources makes past CloudWatch's 1000 per call
    assert publish_cloudwatch(snap, cfg, None, batch=7) == len(data) > 14

    client = boto3.client("cloudwatch", region_name=PRIMARY_REGION, endpoint_url=moto_endpoint)
    listed = client.list_metrics(Namespace=namespace)["Metrics"]
    assert len(listed) == len(data)
    assert {m["MetricName"] for m in listed} == {d["MetricName"] for d in data}
    assert "rpo_seconds" in {m["MetricName"] for m in listed}  # app-files's; the failed source's +Inf is left out
    assert {
        tuple(sorted(d["Name"] for d in m["Dimensions"])) for m in listed if m["MetricName"] == "failures_total"
    } == {("Activity", "ErrorClass", "Source", "Stack")}

    when = snap.taken
    stored = statistic(
        client, namespace, "backup_last_stored_bytes", when, Source="app-files", Stack="cw-test", Type="full"
    )
    assert [(p["Maximum"], p["Unit"]) for p in stored] == [(full.stored_bytes, "Bytes")]
    ended = statistic(
        client,
        namespace,
        "backup_last_success_timestamp_seconds",
        when,
        Source="app-files",
        Stack="cw-test",
        Type="full",
    )
    assert [p["Maximum"] for p in ended] == [parse_iso(full.ended_at).timestamp()]
    failed = statistic(
        client, namespace, "backups_total", when, Source="gone", Stack="cw-test", Status="failed", Type="full"
    )
    assert [(p["Maximum"], p["Unit"]) for p in failed] == [(1.0, "Count")]


def test_an_unreachable_endpoint_is_one_line(stack):
    config, _full = stack
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = CloudWatchConfig(namespace="GenesisDR", region=PRIMARY_REGION, endpoint_url=endpoint)
    with pytest.raises(CloudWatchError) as caught:
        publish_cloudwatch(build_snapshot(config), cfg)
    message = str(caught.value)
    assert message.startswith(f"{endpoint}: Could not connect to the endpoint URL") and "\n" not in message
    assert "operations.cloudwatch" in message and "testing" not in message  # no credential in the message


def test_metrics_cloudwatch_publishes_with_the_stacks_settings(make_stack, moto_endpoint, tmp_path):
    """``genesis-dr metrics --cloudwatch``: the stack's operations.cloudwatch, read from its blocks."""
    from core.sources import FilesSourceConfig
    from tests.test_status import run_cli

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(os.urandom(3000))
    namespace = f"GenesisDR-{uuid.uuid4().hex[:8]}"
    handle = make_stack(
        [FilesSourceConfig(name="app-files", root=str(tree))],
        operations={"cloudwatch": {"namespace": namespace, "region": PRIMARY_REGION, "endpoint_url": moto_endpoint}},
    )
    vault = handle.config.vault.open(create=True)
    full = backup_source(vault, handle.keyring(), engine_for(handle.config.source("app-files")), "full")
    errors = io.StringIO()
    with redirect_stderr(errors):
        assert run_cli("metrics", "--stack", handle.name, "--cloudwatch") == ""  # nothing on stdout
    sent = int(errors.getvalue().split("published ")[1].split()[0])
    assert f"data to CloudWatch namespace {namespace}" in errors.getvalue()

    client = boto3.client("cloudwatch", region_name=PRIMARY_REGION, endpoint_url=moto_endpoint)
    assert len(client.list_metrics(Namespace=namespace)["Metrics"]) == sent
    when = parse_iso(full.ended_at)
    stored = statistic(
        client, namespace, "backup_last_stored_bytes", when, Source="app-files", Stack=handle.name, Type="full"
    )
    assert [p["Maximum"] for p in stored] == [full.stored_bytes]
