"""The S3 store's own faults, on real HTTP: moto servers, and a proxy that answers with S3's errors.

What the operator sees matters here: a missing bucket, a bucket in another region, wrong or missing
credentials and a denied write each fail at once (never retried) with one line naming the bucket and
the remedy, exit 16, and no credential in it; throttling and 5xx are absorbed and counted by the retry
layer, a storm past its budget ends in exit 17, and nothing already stored is lost either way.

moto accepts any credentials unless IAM authentication is switched on, and switching it on
(``POST /moto-api/reset-auth``) is server-wide: the credential tests therefore run on a second,
small moto server of their own, whose IAM users are made before authentication starts.
moto does not refuse a request sent to a bucket's wrong region (real S3 redirects); the store
checks the region once with HeadBucket, which moto answers with ``x-amz-bucket-region``.
moto enforces no bucket policy, so "access denied on write" is an IAM user allowed only to read.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter

import boto3
import pytest
import requests

from core.crypto.keys import Keyring
from core.engines.base import BackupResult
from core.errors import VaultError
from core.repository.manifest import COMPLETED
from core.repository.vault import Vault
from core.storage.base import (
    StoreAccessError,
    StoreUnavailableError,
    TransientStoreError,
)
from core.storage.config import VaultConfig
from core.storage.local import LocalStore
from core.storage.retry import RetryingStore
from core.storage.s3 import S3Store, is_data_key
from tests.faults import FaultProxy, FaultyStore, HTTPFault
from tests.fixtures_cloud import PRIMARY_REGION, moto_server, s3_client
from tests.servers import free_port

KEYS = Keyring(passphrase="s3 store")
NO_SLEEP = {"sleep": lambda _s: None}


def s3_store(endpoint: str, bucket: str, region: str = PRIMARY_REGION, **kw) -> S3Store:
    return S3Store(bucket=bucket, prefix="dr/prod", region=region, endpoint_url=endpoint, **kw)


def backup(vault: Vault, data: bytes, source: str = "db") -> str:
    with vault.lock(source, "full backup"):
        writer = vault.begin_backup(source=source, kind="test", backup_type="full", target="test", keyring=KEYS)
        with writer.open_stream("main") as out:
            out.write(data)
        return writer.commit(BackupResult(position={"at": 1}, checks={})).id


def read_back(vault: Vault, backup_id: str) -> bytes:
    return b"".join(vault.open_backup(backup_id, KEYS).iter_stream("main"))


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(64 << 10))


# -- the bucket ---------------------------------------------------------------------------------


def test_a_missing_bucket_is_refused_at_once_naming_it(moto_endpoint):
    name = f"gdr-missing-{uuid.uuid4().hex[:8]}"
    store = RetryingStore(s3_store(moto_endpoint, name), **NO_SLEEP)
    expected = (
        f"s3://{name}: the bucket does not exist at {moto_endpoint}; create it (aws s3 mb s3://{name} "
        f"--region {PRIMARY_REGION}) or fix vault.bucket"
    )
    for call in (lambda: store.put("k", b"x"), lambda: store.stat("k"), lambda: list(store.list())):
        with pytest.raises(StoreAccessError) as err:
            call()
        assert (str(err.value), err.value.exit_code) == (expected, 16)
    assert store.retried == 0


def test_a_bucket_in_another_region_names_its_region(moto_endpoint, new_bucket):
    bucket = new_bucket("eu-west-1")
    config = VaultConfig(type="s3", bucket=bucket, region="us-west-2", endpoint_url=moto_endpoint)
    with pytest.raises(StoreAccessError) as err:
        config.open(create=True)
    assert str(err.value) == (
        f"s3://{bucket}: the bucket is in region eu-west-1, not us-west-2; set vault.region: eu-west-1 "
        "(or BACKUP_S3_REGION)"
    )
    assert err.value.exit_code == 16
    assert list(s3_client(moto_endpoint, "eu-west-1").list_objects_v2(Bucket=bucket).get("Contents", [])) == []
    # With the right region the same vault opens.
    vault = VaultConfig(type="s3", bucket=bucket, region="eu-west-1", endpoint_url=moto_endpoint).open(create=True)
    assert vault.describe() == f"s3://{bucket}"


# -- credentials and access: a moto server with IAM authentication on ---------------------------


@pytest.fixture(scope="session")
def auth_moto(tmp_path_factory):
    """A second moto server that checks signatures and IAM policies: a bucket, a writer (s3:*) and
    a reader (s3:GetObject, s3:ListBucket), made before authentication is switched on."""
    with moto_server(tmp_path_factory.mktemp("moto-auth")) as endpoint:
        bucket = f"gdr-auth-{uuid.uuid4().hex[:8]}"
        s3_client(endpoint).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": PRIMARY_REGION}
        )
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        users = {}
        for user, actions in (("writer", ["s3:*"]), ("reader", ["s3:GetObject", "s3:ListBucket"])):
            iam.create_user(UserName=user)
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            iam.put_user_policy(UserName=user, PolicyName=f"{user}-s3", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            users[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        yield {"endpoint": endpoint, "bucket": bucket, **users}


def session(key_id: str, secret: str) -> boto3.Session:
    return boto3.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)


def auth_store(auth_moto, key_id: str, secret: str, prefix: str) -> RetryingStore:
    return RetryingStore(
        S3Store(
            bucket=auth_moto["bucket"],
            prefix=prefix,
            region=PRIMARY_REGION,
            endpoint_url=auth_moto["endpoint"],
            session=session(key_id, secret),
        ),
        **NO_SLEEP,
    )


def assert_secret_free(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def test_an_unknown_access_key_is_refused_naming_the_remedy(auth_moto):
    key_id, secret = "AKIA" + uuid.uuid4().hex[:16].upper(), "not-a-secret-" + uuid.uuid4().hex
    store = auth_store(auth_moto, key_id, secret, "unknown")
    with pytest.raises(StoreAccessError) as err:
        store.put("config.json", b"{}")
    assert str(err.value) == (
        f"s3://{auth_moto['bucket']}/unknown: the AWS access key is not known to S3 (InvalidAccessKeyId) while "
        "writing config.json; fix the credentials of the vault (its AwsCredentials block, or AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN)"
    )
    assert err.value.exit_code == 16 and store.retried == 0
    assert_secret_free(str(err.value), key_id, secret)


def test_a_wrong_secret_key_is_refused(auth_moto):
    key_id, _ = auth_moto["writer"]
    store = auth_store(auth_moto, key_id, "wrong-secret-" + uuid.uuid4().hex, "wrong")
    with pytest.raises(StoreAccessError, match=r"the AWS secret key does not match the access key \(Signature") as err:
        store.get("config.json")
    assert_secret_free(str(err.value), key_id)


def test_missing_credentials_name_where_to_set_them(moto_endpoint, new_bucket, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = new_bucket()
    store = RetryingStore(s3_store(moto_endpoint, bucket), **NO_SLEEP)
    with pytest.raises(StoreAccessError) as err:
        Vault.open(store, create=True)
    assert str(err.value) == (
        f"s3://{bucket}/dr/prod: no AWS credentials found while checking the bucket; name an AwsCredentials block "
        "in vault.credentials, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance "
        "role)"
    )
    assert store.retried == 0


def test_access_denied_on_write_keeps_what_is_stored(auth_moto):
    writer_store = auth_store(auth_moto, *auth_moto["writer"], prefix="denied")
    vault = Vault.open(writer_store, create=True)
    data = os.urandom(200_000)
    first = backup(vault, data)

    reader_store = auth_store(auth_moto, *auth_moto["reader"], prefix="denied")
    reader_vault = Vault.open(reader_store)
    assert read_back(reader_vault, first) == data  # reading is allowed
    with pytest.raises(StoreAccessError) as err:
        backup(reader_vault, os.urandom(1000), source="other")
    assert str(err.value) == (
        f"s3://{auth_moto['bucket']}/denied: access denied while writing locks/other.lock; check the credentials "
        f"and the IAM and bucket policies for s3:PutObject on {auth_moto['bucket']}"
    )
    assert (err.value.exit_code, reader_store.retried) == (16, 0)
    assert_secret_free(str(err.value), *auth_moto["reader"])
    assert [m.id for m in Vault.open(writer_store).list_backups()] == [first]
    assert read_back(Vault.open(writer_store), first) == data


# -- what is stored where -----------------------------------------------------------------------


def test_storage_class_applies_to_data_objects_only(moto_endpoint, new_bucket):
    bucket = new_bucket()
    store = s3_store(moto_endpoint, bucket, storage_class="STANDARD_IA")
    vault = Vault.open(store, create=True)
    backup_id = backup(vault, os.urandom(300_000))
    store.put("logdata/db/00000001/00000000", os.urandom(9 << 20))  # multipart: the class is set at creation
    client = s3_client(moto_endpoint)
    classes = {}
    for key in store.list():
        head = client.head_object(Bucket=bucket, Key=f"dr/prod/{key}")
        classes[key] = head.get("StorageClass", "STANDARD")
    expected = {key: "STANDARD_IA" if is_data_key(key) else "STANDARD" for key in classes}
    assert classes == expected
    data_keys = sorted(k for k in classes if classes[k] == "STANDARD_IA")
    chunks = sorted(store.list(f"backups/{backup_id}/streams/"))
    assert data_keys == sorted([*chunks, "logdata/db/00000001/00000000"])
    assert len(chunks) == 5  # 300000 bytes in 64 KiB chunks
    assert {"config.json", f"backups/{backup_id}/manifest.json", f"catalog/db/{backup_id}.json"} <= set(classes)


def test_a_multipart_create_over_an_existing_object_leaves_it_and_no_parts(moto_endpoint, new_bucket):
    bucket = new_bucket()
    store = s3_store(moto_endpoint, bucket)
    first = os.urandom(9 << 20)
    assert store.create("backups/b/streams/s/00000000", first) is not None
    assert store.create("backups/b/streams/s/00000000", os.urandom(9 << 20)) is None
    with pytest.raises(VaultError, match="already exists; stored objects are immutable"):
        store.put("backups/b/streams/s/00000000", os.urandom(9 << 20))
    assert store.get("backups/b/streams/s/00000000") == first
    assert s3_client(moto_endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# -- server-side copy ---------------------------------------------------------------------------


def test_copy_across_regions_is_server_side_and_only_if_absent(moto_endpoint, new_bucket):
    primary = s3_store(moto_endpoint, new_bucket("us-west-2"))
    replica = RetryingStore(
        s3_store(moto_endpoint, new_bucket("eu-west-1"), region="eu-west-1", storage_class="GLACIER_IR")
    )
    data = os.urandom(300_000)
    primary.put("backups/b/streams/main/00000000", data)
    assert replica.copy_from(RetryingStore(primary), "backups/b/streams/main/00000000") is True
    assert replica.get("backups/b/streams/main/00000000") == data
    assert replica.stat("backups/b/streams/main/00000000").storage_class == "GLACIER_IR"
    # Copied again (a retry whose first answer was lost): the same object is success, another is refused.
    assert replica.copy_from(primary, "backups/b/streams/main/00000000") is True
    primary.put("backups/b/streams/main/00000001", b"other bytes")
    with pytest.raises(VaultError, match="object backups/b/streams/main/00000000 already exists"):
        replica.copy_from(primary, "backups/b/streams/main/00000001", "backups/b/streams/main/00000000")
    assert replica.get("backups/b/streams/main/00000000") == data
    assert replica.copy_from(LocalStore("/nonexistent"), "x") is False  # the caller streams it instead

    # The copy landed but its answer was lost: the retry finds the same object and reports success.
    lost = FaultyStore(
        s3_store(moto_endpoint, new_bucket("eu-west-1"), region="eu-west-1"),
        first_call=True,
        ops={"copy_from"},
        when="after",
    )
    retrying = RetryingStore(lost, **NO_SLEEP)
    assert retrying.copy_from(primary, "backups/b/streams/main/00000000") is True
    assert (retrying.retries, retrying.get("backups/b/streams/main/00000000")) == (Counter({"copy": 1}), data)


def test_a_large_copy_goes_part_by_part(moto_endpoint, new_bucket):
    primary = s3_store(moto_endpoint, new_bucket())
    replica = s3_store(
        moto_endpoint, new_bucket("us-east-1"), region="us-east-1", copy_threshold=6 << 20, copy_part_size=5 << 20
    )
    data = os.urandom(12 << 20)
    primary.put("logdata/db/1/00000000", data)
    assert replica.copy_from(primary, "logdata/db/1/00000000", "logdata/db/1/copy") is True
    assert replica.get("logdata/db/1/copy") == data
    assert replica.stat("logdata/db/1/copy").version.endswith('-3"')  # three parts: a multipart copy


# -- transient faults ---------------------------------------------------------------------------


def test_throttling_is_absorbed_and_counted(moto_endpoint, new_bucket):
    faulty = FaultyStore(s3_store(moto_endpoint, new_bucket()), fail_every=3)
    store = RetryingStore(faulty, **NO_SLEEP)
    data = os.urandom(500_000)
    backup_id = backup(Vault.open(store, create=True), data)
    assert read_back(Vault.open(store), backup_id) == data
    assert faulty.injected_total == sum(faulty.calls.values()) // 3
    assert store.retried == faulty.injected_total
    assert sum(store.gave_up.values()) == 0


def test_writes_whose_answer_was_lost_are_recognised(moto_endpoint, new_bucket):
    """The request landed, the answer was lost: the retried write finds our own bytes, not a rival's."""
    faulty = FaultyStore(
        s3_store(moto_endpoint, new_bucket()), first_call=True, ops={"put", "create", "replace"}, when="after"
    )
    store = RetryingStore(faulty, **NO_SLEEP)
    data = os.urandom(300_000)
    backup_id = backup(Vault.open(store, create=True), data)
    assert read_back(Vault.open(store), backup_id) == data
    assert Vault.open(store).manifest(backup_id).status == COMPLETED
    assert store.retried == faulty.injected_total
    assert set(faulty.injected) == {"put", "create", "replace"}


def test_a_storm_past_the_retry_budget_fails_and_loses_nothing(moto_endpoint, new_bucket):
    faulty = FaultyStore(s3_store(moto_endpoint, new_bucket()), fail_every=1)
    store = RetryingStore(faulty, attempts=4, **NO_SLEEP)
    data = os.urandom(200_000)
    faulty.enabled = False
    first = backup(Vault.open(store, create=True), data)
    faulty.enabled = True
    with pytest.raises(StoreUnavailableError) as err:
        backup(Vault.open(store), os.urandom(1000))
    assert err.value.exit_code == 17
    assert "config.json still failing after 4 attempts" in str(err.value)
    assert "nothing already stored was changed" in str(err.value)
    faulty.enabled = False
    assert [m.id for m in Vault.open(store).list_backups()] == [first]
    assert read_back(Vault.open(store), first) == data


def test_a_storm_in_the_middle_of_a_stream(moto_endpoint, new_bucket):
    """Chunk uploads fail past the budget mid-stream: the backup fails; the earlier one stays whole."""
    faulty = FaultyStore(s3_store(moto_endpoint, new_bucket()), fail_every=1, ops={"put"})
    store = RetryingStore(faulty, attempts=3, **NO_SLEEP)
    data = os.urandom(200_000)
    faulty.enabled = False
    vault = Vault.open(store, create=True)
    first = backup(vault, data)
    with vault.lock("db", "full backup"):
        writer = vault.begin_backup(source="db", kind="test", backup_type="full", target="test", keyring=KEYS)
        faulty.enabled = True
        with pytest.raises(StoreUnavailableError, match=r"put backups/.*/streams/main/0000000\d still failing"):
            with writer.open_stream("main") as out:
                out.write(os.urandom(500_000))
        faulty.enabled = False
        writer.fail(RuntimeError("the store was throttling"))
    # (ids order by second, then by a random suffix: compare as a mapping)
    assert {m.id: m.status for m in vault.list_backups()} == {first: COMPLETED, writer.id: "FAILED"}
    assert list(store.list(f"backups/{writer.id}/streams/")) == []
    assert read_back(vault, first) == data


@pytest.fixture
def proxy(moto_endpoint):
    proxy = FaultProxy(moto_endpoint)
    yield proxy
    proxy.close()


def on_object(key: str, fault: HTTPFault, times: int = 1):
    """A proxy rule: the first ``times`` requests naming ``key`` (not HeadBucket) get ``fault``."""
    seen = Counter()

    def rule(method: str, path: str, n: int) -> HTTPFault | None:
        if key not in path:
            return None
        seen[key] += 1
        return fault if seen[key] <= times else None

    return rule


@pytest.mark.parametrize(
    "fault",
    [
        HTTPFault(503, "SlowDown"),
        HTTPFault(500, "InternalError", "We encountered an internal error."),
        HTTPFault(503, "ServiceUnavailable", "Service is unable to handle request."),
        HTTPFault(400, "RequestTimeout", "Your socket connection to the server was not read from or written to."),
        HTTPFault(409, "ConditionalRequestConflict", "A conflicting conditional operation is in progress."),
        HTTPFault(502, "BadGateway", "Bad gateway."),
        HTTPFault(reset=True),
    ],
    ids=lambda f: "reset" if f.reset else f.code,
)
def test_transient_answers_on_the_wire_are_retried(proxy, new_bucket, fault):
    bucket = new_bucket()
    store = RetryingStore(s3_store(proxy.url, bucket), **NO_SLEEP)
    proxy.rule = on_object("dr/prod/chunk", fault, times=2)
    store.put("chunk", b"payload")
    assert store.get("chunk") == b"payload"
    assert (store.retries, len(proxy.faults)) == (Counter({"put": 2}), 2)


def test_transient_error_names_what_was_retried(proxy, new_bucket):
    bucket = new_bucket()
    store = s3_store(proxy.url, bucket)
    proxy.rule = on_object("dr/prod/chunk", HTTPFault(503, "SlowDown"))
    with pytest.raises(TransientStoreError) as err:
        store.put("chunk", b"x")
    assert str(err.value) == f"s3://{bucket}/dr/prod: S3 answered SlowDown while writing chunk; retrying"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            HTTPFault(
                301,
                "PermanentRedirect",
                "must be addressed using the specified endpoint",
                headers={"x-amz-bucket-region": "eu-west-1"},
            ),
            "s3://{bucket}: the bucket is in region eu-west-1, not us-west-2; set vault.region: eu-west-1 "
            "(or BACKUP_S3_REGION)",
        ),
        (
            HTTPFault(
                400,
                "AuthorizationHeaderMalformed",
                "the region 'us-west-2' is wrong; expecting 'ap-south-1'",
                fields={"Region": "ap-south-1"},
            ),
            "s3://{bucket}: the bucket is in region ap-south-1, not us-west-2; set vault.region: ap-south-1 "
            "(or BACKUP_S3_REGION)",
        ),
        (
            HTTPFault(403, "ExpiredToken", "The provided token has expired."),
            "s3://{bucket}/dr/prod: the AWS session token has expired (ExpiredToken) while writing chunk; fix the "
            "credentials of the vault (its AwsCredentials block, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
            "AWS_SESSION_TOKEN)",
        ),
        (
            HTTPFault(
                403,
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
            ),
            "s3://{bucket}/dr/prod: this host's clock differs from S3's by more than 15 minutes; fix the clock (NTP) "
            "and retry",
        ),
        (
            HTTPFault(400, "InvalidStorageClass", "The storage class you specified is not valid"),
            "s3://{bucket}/dr/prod: the service refused storage class STANDARD; set vault.storage_class to one it "
            "supports",
        ),
        (
            HTTPFault(400, "InvalidArgument", "AKIAABCDEFGHIJKLMNOP is not valid here"),
            "s3://{bucket}/dr/prod: S3 refused writing chunk: InvalidArgument <access key id> is not valid here; "
            "check the vault settings (bucket, region, endpoint) and the bucket's configuration",
        ),
    ],
    ids=lambda v: v.code if isinstance(v, HTTPFault) else "",
)
def test_permanent_answers_on_the_wire_fail_at_once(proxy, new_bucket, fault, expected):
    bucket = new_bucket()
    store = RetryingStore(s3_store(proxy.url, bucket), **NO_SLEEP)
    proxy.rule = on_object("dr/prod/chunk", fault, times=99)
    with pytest.raises(StoreAccessError) as err:
        store.put("chunk", b"x")
    assert (str(err.value), err.value.exit_code, store.retried) == (expected.format(bucket=bucket), 16, 0)


def test_a_failed_part_aborts_the_upload(proxy, moto_endpoint, new_bucket):
    bucket = new_bucket()
    store = s3_store(proxy.url, bucket)
    proxy.rule = lambda method, path, n: HTTPFault(500, "InternalError") if "partNumber=2" in path else None
    with pytest.raises(TransientStoreError, match="S3 answered InternalError while writing logdata/x"):
        store.create("logdata/x", os.urandom(20 << 20))
    client = s3_client(moto_endpoint)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert store.stat("logdata/x") is None


def test_an_unreachable_endpoint_is_transient_then_unavailable():
    store = RetryingStore(s3_store(f"http://127.0.0.1:{free_port()}", "gdr-nowhere"), attempts=2, **NO_SLEEP)
    with pytest.raises(StoreUnavailableError, match=r"put chunk still failing after 2 attempts .*EndpointConnection"):
        store.put("chunk", b"x")
    assert store.retries == Counter({"put": 1})


class CountingStore(FaultyStore):
    """Lets every call through, holding each chunk upload 20 ms, and records how many ran at once."""

    def __init__(self, inner) -> None:
        super().__init__(inner, schedule=lambda op, key, n: False)
        self.running = 0
        self.most = 0
        self._count = threading.Lock()

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        if "/streams/" not in key:
            return super().put(key, data, overwrite=overwrite)
        with self._count:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.02)
            super().put(key, data, overwrite=overwrite)
        finally:
            with self._count:
                self.running -= 1


@pytest.mark.parametrize(("kind", "threads"), [("s3", 8), ("local", 2)])
def test_chunk_uploads_run_as_parallel_as_the_store_serves(moto_endpoint, new_bucket, tmp_path, kind, threads):
    inner = s3_store(moto_endpoint, new_bucket()) if kind == "s3" else LocalStore(tmp_path / "vault")
    store = CountingStore(inner)
    data = os.urandom(40 * (64 << 10))  # 40 chunks
    backup_id = backup(Vault.open(store, create=True), data)
    assert store.most == threads == store.capabilities.io_threads
    assert read_back(Vault.open(inner), backup_id) == data
