"""Bucket sources against real object stores: S3 on the moto server, GCS on fake-gcs-server.

Objects are put and read back with the providers' own clients (boto3, google-cloud-storage)
over HTTP; backups go through core.operations.backup_source into a LocalStore vault, and
restores through core's restore_backup / restore_chain_plan, as the flows call them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from core.chains import parse_iso, plan_chain_restore
from core.engines import engine_for
from core.engines.bucket.engine import BucketEngine
from core.engines.bucket.index import INDEX_STREAM, read_index
from core.errors import IntegrityError, SourceUnavailableError, TargetNotEmptyError
from core.operations import backup_source, restore_backup, restore_chain_plan
from core.restoring import count_checks
from core.sources import BucketSourceConfig
from tests.faults import FaultProxy, HTTPFault
from tests.fixtures_cloud import s3_client
from tests.fixtures_gcs import gcs_client
from tests.test_cli import cli  # noqa: F401 - the command in a subprocess against the test harness
from tests.test_store_s3 import auth_moto  # noqa: F401 - the IAM-enforcing moto server (a session fixture)

REGION = "us-west-2"


@dataclass
class Kit:
    """One provider as a test sees it: make buckets, put/delete objects, and read a bucket's state back with the
    provider's own client (never through the engine under test)."""

    provider: str
    endpoint: str
    _make: object

    def bucket(self, versioned: bool = False) -> str:
        return self._make(REGION, versioned=versioned) if self.provider == "s3" else self._make(versioned=versioned)

    def config(self, bucket: str, prefix: str = "app/", name: str = "uploads", **fields) -> BucketSourceConfig:
        region = {"region": REGION} if self.provider == "s3" else {}
        return BucketSourceConfig(
            name=name, provider=self.provider, bucket=bucket, prefix=prefix, endpoint_url=self.endpoint,
            **region, **fields,
        )  # fmt: skip

    def engine(self, bucket: str, prefix: str = "app/", **fields) -> BucketEngine:
        engine = engine_for(self.config(bucket, prefix, **fields))
        assert isinstance(engine, BucketEngine)
        return engine

    def put(self, bucket: str, key: str, body: bytes, *, content_type=None, encoding=None, cache=None, metadata=None):
        if self.provider == "s3":
            args = {"ContentType": content_type, "ContentEncoding": encoding, "CacheControl": cache}
            args = {k: v for k, v in args.items() if v}
            if metadata:
                args["Metadata"] = metadata
            s3_client(self.endpoint, REGION).put_object(Bucket=bucket, Key=key, Body=body, **args)
            return
        blob = gcs_client(self.endpoint).bucket(bucket).blob(key)
        blob.content_encoding, blob.cache_control, blob.metadata = encoding, cache, metadata
        blob.upload_from_string(body, content_type=content_type or "application/octet-stream")

    def set_metadata(self, bucket: str, key: str, metadata: dict[str, str], content_type: str) -> None:
        """Change only an object's metadata (S3: a copy onto itself; GCS: a PATCH)."""
        if self.provider == "s3":
            s3_client(self.endpoint, REGION).copy_object(
                Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key}, MetadataDirective="REPLACE",
                ContentType=content_type, Metadata=metadata,
            )  # fmt: skip
            return
        blob = gcs_client(self.endpoint).bucket(bucket).get_blob(key)
        blob.metadata, blob.content_type = metadata, content_type
        blob.patch()

    def delete(self, bucket: str, key: str) -> None:
        if self.provider == "s3":
            s3_client(self.endpoint, REGION).delete_object(Bucket=bucket, Key=key)
        else:
            gcs_client(self.endpoint).bucket(bucket).delete_blob(key)

    def state(self, bucket: str, prefix: str = "") -> dict[str, tuple]:
        """key (relative to ``prefix``) -> (body, content type, content encoding, cache control, user metadata)."""
        out = {}
        if self.provider == "s3":
            client = s3_client(self.endpoint, REGION)
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    got = client.get_object(Bucket=bucket, Key=item["Key"])
                    out[item["Key"][len(prefix) :]] = (
                        got["Body"].read(), got.get("ContentType"), got.get("ContentEncoding"),
                        got.get("CacheControl"), got.get("Metadata") or {},
                    )  # fmt: skip
            return out
        for blob in gcs_client(self.endpoint).list_blobs(bucket, prefix=prefix or None):
            out[blob.name[len(prefix) :]] = (
                blob.download_as_bytes(raw_download=True), blob.content_type, blob.content_encoding,
                blob.cache_control, blob.metadata or {},
            )  # fmt: skip
        return out


@pytest.fixture(params=["s3", "gcs"])
def kit(request) -> Kit:
    if request.param == "s3":
        return Kit("s3", request.getfixturevalue("moto_endpoint"), request.getfixturevalue("new_bucket"))
    return Kit("gcs", request.getfixturevalue("gcs_endpoint"), request.getfixturevalue("new_gcs_bucket"))


@pytest.fixture
def s3kit(moto_endpoint, new_bucket) -> Kit:
    return Kit("s3", moto_endpoint, new_bucket)


def seed(kit: Kit, bucket: str) -> None:
    kit.put(bucket, "app/reports/2026/q4.csv", b"id,total\n1,10\n", content_type="text/csv", metadata={"owner": "fin"})
    kit.put(bucket, "app/uploads/photo.bin", os.urandom(300_000), content_type="image/png", cache="max-age=3600")
    kit.put(
        bucket, "app/static/app.js.gz", gzip.compress(b"console.log(1);\n" * 50), content_type="application/javascript",
        encoding="gzip",
    )  # fmt: skip
    kit.put(bucket, "app/models/empty.marker", b"", content_type="text/plain")
    kit.put(
        bucket, "app/uploads/caf\u00e9 menu.txt", "crème brûlée\n".encode(), content_type="text/plain; charset=utf-8"
    )
    kit.put(bucket, "other/not-covered.txt", b"outside the prefix\n", content_type="text/plain")


def restore_at(vault, keyring, engine: BucketEngine, when: str, force: bool = False):
    """Plan the restore of the source 'uploads' to ``when`` and execute the plan (core's path)."""
    plan = plan_chain_restore(
        vault.list_backups("uploads"), [], "uploads", "bucket", parse_iso(when), datetime.now(UTC),
        target=engine.describe(), target_has_data=engine.has_data(), force=force,
    )  # fmt: skip
    return plan, restore_chain_plan(vault, keyring, plan.to_dict(), engine, force=force)


def index_of(vault, keyring, backup_id: str):
    reader = vault.open_backup(backup_id, keyring)
    try:
        return read_index(reader, backup_id, "test")
    finally:
        reader.close()


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- full backup and restore -------------------------------------------------------------------------------


def test_full_backup_restores_every_object_with_its_metadata_into_another_bucket(kit, vault, keyring):
    src, dst = kit.bucket(), kit.bucket()
    seed(kit, src)
    manifest = backup_source(vault, keyring, kit.engine(src))
    assert manifest.kind == "bucket" and manifest.type == "full"
    assert manifest.position["objects"] == 5
    assert manifest.position["stored"] == 5
    assert INDEX_STREAM in [s.name for s in manifest.streams]

    index = index_of(vault, keyring, manifest.id)
    by_key = {e["key"]: e for e in index.entries}
    assert sorted(by_key) == sorted(kit.state(src, "app/"))
    body = kit.state(src, "app/")["uploads/photo.bin"][0]
    assert by_key["uploads/photo.bin"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert by_key["uploads/photo.bin"]["meta"]["cache_control"] == "max-age=3600"
    assert by_key["reports/2026/q4.csv"]["meta"]["metadata"] == {"owner": "fin"}
    assert ("generation" in by_key["reports/2026/q4.csv"]) == (kit.provider == "gcs")

    report = restore_backup(vault, keyring, manifest.id, kit.engine(dst, prefix="restored/"))
    assert kit.state(dst, "restored/") == kit.state(src, "app/")
    assert kit.state(dst, "other/") == {}  # outside the prefix: never backed up
    assert report.verified_checks == count_checks(vault.open_backup(manifest.id, keyring).result.checks)
    assert report.notes == [] and report.rollback_backup_id is None


def test_restore_into_the_emptied_source_bucket_puts_it_back(kit, vault, keyring):
    src = kit.bucket()
    seed(kit, src)
    before = kit.state(src)
    manifest = backup_source(vault, keyring, kit.engine(src))
    for key in list(kit.state(src, "app/")):
        kit.delete(src, "app/" + key)
    restore_backup(vault, keyring, manifest.id, kit.engine(src))
    assert kit.state(src) == before


# -- incrementals, differentials and chains ----------------------------------------------------------------


def test_incremental_stores_only_new_and_changed_objects_and_records_deletions(kit, vault, keyring):
    src, dst = kit.bucket(versioned=True), kit.bucket()
    seed(kit, src)
    full = backup_source(vault, keyring, kit.engine(src))
    time.sleep(1.1)  # S3 last-modified times are whole seconds
    kit.put(src, "app/uploads/new.txt", b"added after the full\n", content_type="text/plain")
    kit.put(src, "app/reports/2026/q4.csv", b"id,total\n1,10\n2,20\n", content_type="text/csv")
    kit.set_metadata(src, "app/uploads/photo.bin", {"reviewed": "yes"}, "image/webp")
    kit.delete(src, "app/static/app.js.gz")
    inc = backup_source(vault, keyring, kit.engine(src), "incremental")
    assert inc.parent == full.id and inc.chain == full.id
    assert (inc.position["objects"], inc.position["stored"], inc.position["deleted"]) == (5, 2, 1)

    index = index_of(vault, keyring, inc.id)
    assert index.deleted == ["static/app.js.gz"]
    by_key = {e["key"]: e for e in index.entries}
    assert by_key["uploads/photo.bin"]["in"] == full.id  # bytes stay where the full stored them ...
    assert by_key["uploads/photo.bin"]["meta"]["metadata"] == {"reviewed": "yes"}  # ... with the new metadata
    assert "in" not in by_key["uploads/new.txt"] and "in" not in by_key["reports/2026/q4.csv"]
    # A versioned bucket: the version each backup read is recorded (S3 version id; GCS generation).
    assert all(e.get("version_id" if kit.provider == "s3" else "generation") for e in index.entries)

    # Restoring the incremental restores its chain: the bucket exactly as that backup listed it.
    report = restore_backup(vault, keyring, inc.id, kit.engine(dst))
    assert kit.state(dst, "app/") == kit.state(src, "app/")
    assert report.recovery_point["proof"].startswith(f"object index of backup {inc.id}: 5 objects")

    # A differential on the full after more changes: everything since the full, not since the incremental.
    time.sleep(1.1)
    kit.put(src, "app/uploads/later.txt", b"after the incremental\n", content_type="text/plain")
    diff = backup_source(vault, keyring, kit.engine(src), "differential")
    assert diff.parent == full.id
    assert (diff.position["objects"], diff.position["stored"], diff.position["deleted"]) == (6, 3, 1)
    dst2 = kit.bucket()
    restore_backup(vault, keyring, diff.id, kit.engine(dst2))
    assert kit.state(dst2, "app/") == kit.state(src, "app/")


def test_point_in_time_restore_reproduces_the_bucket_between_two_backups(kit, vault, keyring):
    src = kit.bucket()
    seed(kit, src)
    backup_source(vault, keyring, kit.engine(src))
    at_full = kit.state(src, "app/")
    time.sleep(1.1)
    between = iso_now()
    time.sleep(0.2)
    kit.put(src, "app/uploads/new.txt", b"added later\n", content_type="text/plain")
    kit.put(src, "app/uploads/photo.bin", b"replaced", content_type="image/png")
    kit.delete(src, "app/reports/2026/q4.csv")
    inc = backup_source(vault, keyring, kit.engine(src), "incremental")
    at_inc = kit.state(src, "app/")

    target = kit.bucket()
    plan, report = restore_at(vault, keyring, kit.engine(target), between)
    assert plan.layers == [] and report.recovery_point["time"] < between
    assert kit.state(target, "app/") == at_full

    # The same target, forced, to the incremental's time: deletions and replacements applied, nothing extra left.
    plan, report = restore_at(vault, keyring, kit.engine(target), iso_now(), force=True)
    assert plan.layers == [inc.id]
    assert kit.state(target, "app/") == at_inc
    assert report.rollback_backup_id is not None


# -- safety ------------------------------------------------------------------------------------------------


def test_tampered_vault_object_is_rejected_before_the_target_is_touched(kit, vault, keyring, tmp_path):
    src, dst = kit.bucket(), kit.bucket()
    seed(kit, src)
    manifest = backup_source(vault, keyring, kit.engine(src))
    data = sorted((tmp_path / "vault" / "backups" / manifest.id / "streams").glob("data-*/00000000"))
    assert data
    chunk = data[-1]
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.chmod(0o600)
    chunk.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="does not match its SHA-256"):
        restore_backup(vault, keyring, manifest.id, kit.engine(dst))
    assert kit.state(dst) == {}


def test_target_holding_other_data_is_refused_without_force_and_mirrored_with_it(kit, vault, keyring):
    src, dst = kit.bucket(), kit.bucket()
    seed(kit, src)
    manifest = backup_source(vault, keyring, kit.engine(src))
    kit.put(dst, "app/stray.txt", b"not in the backup\n", content_type="text/plain")
    kit.put(dst, "elsewhere/keep.txt", b"outside the prefix\n", content_type="text/plain")
    before = kit.state(dst)
    with pytest.raises(TargetNotEmptyError, match="already holds data"):
        restore_backup(vault, keyring, manifest.id, kit.engine(dst))
    assert kit.state(dst) == before

    report = restore_backup(vault, keyring, manifest.id, kit.engine(dst), force=True)
    assert kit.state(dst, "app/") == kit.state(src, "app/")  # the stray object is gone
    assert kit.state(dst, "elsewhere/") == {"keep.txt": before["elsewhere/keep.txt"]}
    # The rollback point holds what the target had, stray object included.
    rollback = index_of(vault, keyring, report.rollback_backup_id)
    assert [e["key"] for e in rollback.entries] == ["stray.txt"]


def test_missing_bucket_is_one_line_naming_it(kit, vault, keyring):
    engine = kit.engine("gdr-no-such-bucket-x1")
    with pytest.raises(SourceUnavailableError) as caught:
        backup_source(vault, keyring, engine)
    message = str(caught.value)
    assert "gdr-no-such-bucket-x1" in message and "\n" not in message
    assert caught.value.exit_code == 7 and caught.value.transient is False


def test_bucket_in_another_region_names_its_region(s3kit, vault, keyring):
    bucket = s3kit._make("eu-west-1")
    with pytest.raises(SourceUnavailableError) as caught:
        backup_source(vault, keyring, s3kit.engine(bucket))
    assert str(caught.value) == (
        f"bucket 'uploads': S3 bucket {bucket} is in eu-west-1, not us-west-2; set region: eu-west-1 in the stack file"
    )


def test_throttling_is_absorbed_and_a_storm_is_transient(moto_endpoint, new_bucket, vault, keyring):
    """Faults on the wire (tests/faults.py FaultProxy answers with S3's own error documents): two SlowDowns on an
    object are retried by the client; a storm past its budget fails the backup as transient (the task retries)."""
    kit = Kit("s3", moto_endpoint, new_bucket)
    src = kit.bucket()
    seed(kit, src)
    proxy = FaultProxy(moto_endpoint)
    try:
        key = "app/uploads/photo.bin"
        seen = Counter()

        def twice(method, path, n):
            if "photo.bin" in path and method == "GET":
                seen["photo"] += 1
                return HTTPFault(503, "SlowDown") if seen["photo"] <= 2 else None
            return None

        proxy.rule = twice
        engine = engine_for(kit.config(src).model_copy(update={"endpoint_url": proxy.url}))
        manifest = backup_source(vault, keyring, engine)
        assert manifest.position["objects"] == 5 and len(proxy.faults) == 2

        proxy.rule = lambda method, path, n: HTTPFault(503, "SlowDown") if "photo.bin" in path else None
        engine = engine_for(kit.config(src).model_copy(update={"endpoint_url": proxy.url}))
        with pytest.raises(SourceUnavailableError) as caught:
            backup_source(vault, keyring, engine)
        assert caught.value.transient is True
        assert str(caught.value) == (
            f"bucket 'uploads': S3 is throttling or failing (SlowDown) to read s3://{src}/{key}; it is retried"
        )
        assert [m.status for m in vault.list_backups("uploads")] == ["COMPLETED", "FAILED"]
    finally:
        proxy.close()


def test_access_denied_and_refused_credentials_name_the_bucket_and_remedy(auth_moto, vault, keyring):  # noqa: F811
    """A moto server enforcing IAM: a reader may back a bucket up but not restore into it; an unknown key is
    refused. Neither message carries a key."""
    import boto3

    endpoint, bucket = auth_moto["endpoint"], auth_moto["bucket"]
    writer = boto3.Session(*auth_moto["writer"])
    reader = boto3.Session(*auth_moto["reader"])
    client = writer.client("s3", endpoint_url=endpoint, region_name=REGION)
    client.put_object(Bucket=bucket, Key="bsrc/a.txt", Body=b"alpha", ContentType="text/plain")

    def config(prefix: str, session) -> BucketSourceConfig:
        return BucketSourceConfig(
            name="uploads", bucket=bucket, prefix=prefix, region=REGION, endpoint_url=endpoint
        ).with_credentials(session)

    manifest = backup_source(vault, keyring, engine_for(config("bsrc/", reader)))
    with pytest.raises(SourceUnavailableError) as caught:
        restore_backup(vault, keyring, manifest.id, engine_for(config("bdst/", reader)))
    message = str(caught.value)
    assert message.startswith(
        f"bucket 'uploads': access denied to write s3://{bucket}/bdst/a.txt (AccessDenied); grant the credentials "
        "s3:ListBucket, s3:GetObject (backup) or s3:PutObject, s3:DeleteObject (restore) on it"
    )
    assert "the target is empty, as it was before" in message
    assert caught.value.exit_code == 7 and caught.value.transient is False

    unknown = boto3.Session("AKIA" + "0" * 16, "not-a-secret-" + "x" * 20)
    with pytest.raises(SourceUnavailableError) as caught:
        backup_source(vault, keyring, engine_for(config("bsrc/", unknown)))
    assert "S3 refused the credentials (InvalidAccessKeyId)" in str(caught.value)
    for secret in (*auth_moto["reader"], *auth_moto["writer"], "not-a-secret-"):
        assert secret not in str(caught.value) and secret not in message


def test_unreachable_endpoint_is_transient(vault, keyring):
    engine = engine_for(
        BucketSourceConfig(name="uploads", bucket="b", region=REGION, endpoint_url="http://127.0.0.1:9")
    )
    with pytest.raises(SourceUnavailableError) as caught:
        engine.ping()
    assert caught.value.transient is True and "s3://b" in str(caught.value)


def test_include_and_exclude_choose_the_objects(s3kit, vault, keyring):
    src, dst = s3kit.bucket(), s3kit.bucket()
    seed(s3kit, src)
    engine = s3kit.engine(src, include=["uploads/**", "reports"], exclude=["*.bin"])
    manifest = backup_source(vault, keyring, engine)
    assert [e["key"] for e in index_of(vault, keyring, manifest.id).entries] == [
        "reports/2026/q4.csv",
        "uploads/caf\u00e9 menu.txt",
    ]
    restore_backup(vault, keyring, manifest.id, s3kit.engine(dst))
    assert sorted(s3kit.state(dst, "app/")) == ["reports/2026/q4.csv", "uploads/caf\u00e9 menu.txt"]


# -- memory ------------------------------------------------------------------------------------------------


def _peak(fn):
    tracemalloc.start()
    try:
        value = fn()
        return value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_objects_stream_through_with_bounded_memory(kit, vault, keyring, monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(1 << 20))
    peaks = {}
    for size in (20_000_000, 40_000_000):
        src, dst = kit.bucket(), kit.bucket()
        body = os.urandom(size)
        kit.put(src, "app/models/big.bin", body, content_type="application/octet-stream", metadata={"model": "v7"})
        del body
        # Clients made first: loading a provider's API description (botocore's is ~10 MB) is not streaming.
        source, target = kit.engine(src), kit.engine(dst)
        source.ping(), target.ping()
        manifest, backup_peak = _peak(lambda source=source: backup_source(vault, keyring, source))
        _, restore_peak = _peak(
            lambda target=target, manifest=manifest: restore_backup(vault, keyring, manifest.id, target)
        )
        assert kit.state(dst, "app/") == kit.state(src, "app/")
        peaks[size] = (backup_peak, restore_peak)
    # Never the object: a few vault chunks in flight (1 MiB here) and one upload part (S3 8 MiB, GCS 2 x 4 MiB),
    # whatever the object's size (peaks vary by a few MiB with thread timing, not with size).
    for backup_peak, restore_peak in peaks.values():
        assert backup_peak < 14 << 20 and restore_peak < 26 << 20, peaks


def test_tool_versions_and_description(s3kit, vault, keyring):
    src = s3kit.bucket()
    engine = s3kit.engine(src, prefix="")
    assert engine.describe() == f"bucket s3://{src}/"
    manifest = backup_source(vault, keyring, engine)
    assert set(manifest.tool_versions) == {"boto3"}
    assert manifest.position["objects"] == 0
    dst = s3kit.bucket()
    restore_backup(vault, keyring, manifest.id, s3kit.engine(dst, prefix=""))
    assert s3kit.state(dst) == {}


# -- blocks and flows --------------------------------------------------------------------------------------


def test_bucket_source_block_is_documented():
    from blocks import BucketSource
    from blocks.sources import SOURCE_BLOCKS

    assert SOURCE_BLOCKS["bucket"] is BucketSource
    assert BucketSource.get_block_type_slug() == "bucket-source"
    for name, field in BucketSource.model_fields.items():
        assert field.description and field.description.endswith("."), f"BucketSource.{name} needs a description"
    assert 'engine = BucketSource.load("BLOCK_NAME").get_engine()' in BucketSource.get_code_example()


def test_backup_and_point_in_time_restore_through_the_flows(make_stack, s3kit):
    """The Prefect flows, as `genesis-dr backup` and `genesis-dr restore` run them: a full and an incremental of a
    bucket source, then the bucket as it was at the incremental, into another bucket named with --target."""
    from flows.backup import backup
    from flows.restore import restore

    src, dst = s3kit.bucket(), s3kit.bucket()
    seed(s3kit, src)
    stack = make_stack([s3kit.config(src)])
    [full] = backup(stack=stack.name)
    assert (full["source"], full["kind"], full["status"]) == ("uploads", "bucket", "COMPLETED")
    time.sleep(1.1)
    s3kit.put(src, "app/uploads/new.txt", b"after the full\n", content_type="text/plain")
    s3kit.delete(src, "app/uploads/photo.bin")
    [inc] = backup(stack=stack.name, backup_type="incremental")
    assert inc["type"] == "incremental" and inc["status"] == "COMPLETED"

    out = restore(source="uploads", stack=stack.name, target_time=iso_now(), target={"bucket": dst})
    assert s3kit.state(dst, "app/") == s3kit.state(src, "app/")
    assert "uploads/photo.bin" not in s3kit.state(dst, "app/")
    report = out["report"]
    assert report["backup_id"] == full["id"] and report["recovery_point"]["position"]["objects"] == 5
    reader = stack.vault().open_backup(inc["id"], stack.keyring())
    assert report["verified_checks"] == count_checks(reader.result.checks)  # every object read back and compared
    reader.close()


def test_the_command_backs_up_a_bucket_and_its_printed_restore_works(cli, s3kit, tmp_path):  # noqa: F811
    """genesis-dr apply / backup / list / restore as an operator types them: the restore the backup prints (into
    a sibling prefix of the same bucket) works as printed, and --target bucket=NAME restores into another bucket."""
    import shlex

    src, dst = s3kit.bucket(), s3kit.bucket()
    seed(s3kit, src)
    stack = tmp_path / "bkt.yaml"
    stack.write_text(
        f"""
stack: bkt
vault:
  path: ./vault-bkt
encryption:
  passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD
sources:
  - name: uploads
    kind: bucket
    provider: s3
    bucket: {src}
    prefix: app/
    region: {REGION}
    endpoint_url: {s3kit.endpoint}
"""
    )
    cli("apply", str(stack))
    out = cli("backup", "full", "--stack", "bkt").stdout
    printed = [line.strip() for line in out.splitlines() if " restore " in line and "--target" in line]
    assert len(printed) == 1 and "--target prefix=app-restored/" in printed[0], out
    args = shlex.split(printed[0])
    cli(*args[args.index("restore") :])
    assert s3kit.state(src, "app-restored/") == s3kit.state(src, "app/")

    listing = cli("list", "--stack", "bkt").stdout
    assert "uploads" in listing and "listing " in listing, listing
    when = iso_now()
    cli("restore", "--stack", "bkt", "--source", "uploads", "--target-time", when, "--target", f"bucket={dst}")
    assert s3kit.state(dst, "app/") == s3kit.state(src, "app/")
    refused = cli(
        "restore", "--stack", "bkt", "--source", "uploads", "--target-time", when, "--target", f"bucket={dst}",
        expect=9,
    )  # fmt: skip
    assert f"bucket s3://{dst}/app/ already holds data" in refused.stderr


def test_credentials_come_from_the_named_aws_credentials_block(
    prefect_api, s3kit, vault, keyring, monkeypatch, tmp_path
):
    """``credentials: NAME`` loads the prefect-aws AwsCredentials block at first use (blocks/sources.py installs the
    resolver; core never imports Prefect); a name with no block is one line naming it."""
    import uuid

    from prefect_aws import AwsCredentials

    import blocks.sources  # noqa: F401 - installs the resolver, as every flow run does
    from core.errors import ConfigError

    name = f"bucket-creds-{uuid.uuid4().hex[:6]}"
    AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION).save(name)
    src = s3kit.bucket()
    seed(s3kit, src)
    # No default chain: only the block can sign.
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(SourceUnavailableError, match="no AWS credentials"):
        s3kit.engine(src).ping()
    manifest = backup_source(vault, keyring, s3kit.engine(src, credentials=name))
    assert manifest.position["objects"] == 5

    with pytest.raises(ConfigError) as caught:
        s3kit.engine(src, credentials="no-such-block").ping()
    assert str(caught.value) == (
        "bucket source: no AwsCredentials block named 'no-such-block'; create it (prefect block create "
        "aws-credentials) or drop 'credentials' to use the default chain"
    )
