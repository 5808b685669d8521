"""KMS-wrapped data keys against moto's KMS over real HTTP (tests/fixtures_cloud.py), through core:
a backup is taken with backup_source into a local vault and opened with Vault.open_backup.

What moto 5.2.5 enforces, and so what these tests can prove against it: the encryption context
on Decrypt (InvalidCiphertextException), keys per region (NotFoundException), IAM policies once
its authentication is switched on (403 AccessDenied), and the state DescribeKey reports
(Disabled, PendingDeletion). It does NOT refuse GenerateDataKey, Encrypt or Decrypt on a disabled
or pending-deletion key: genesis-dr reads the state with DescribeKey first, which is what the
disabled-key tests exercise. AWS's own answers to those operations (DisabledException,
KMSInvalidStateException), and throttling and 5xx, are injected by a small HTTP proxy in front
of moto (``FaultProxy``), the way the store tests inject faults with a wrapper store.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import boto3
import httpx
import pytest

from core.crypto.keys import Keyring, generate_x25519_keypair
from core.crypto.kms import KmsKeyConfig, context_for
from core.errors import ConfigError, IntegrityError, KeyServiceError, WrongKeyError
from core.operations import backup_source
from core.repository.log import LogKeys
from core.repository.vault import Vault
from core.stack import EncryptionConfig
from core.storage.local import LocalStore
from tests.fixtures_cloud import PRIMARY_REGION, kms_client
from tests.test_vault import BytesEngine

PASSPHRASE = "kms-test-Passphrase-1"
PAYLOAD = {"main": bytes(range(256)) * 40 + b"tail"}


@pytest.fixture
def vault(tmp_path):
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


def new_key(endpoint: str, region: str = PRIMARY_REGION, **kwargs) -> dict:
    return kms_client(endpoint, region).create_key(**kwargs)["KeyMetadata"]


def cfg(endpoint: str, key_id: str, region: str | None = None, **kw) -> KmsKeyConfig:
    return KmsKeyConfig(key_id=key_id, region=region, endpoint_url=endpoint, **kw)


def read_back(vault: Vault, backup_id: str, keyring: Keyring) -> dict[str, bytes]:
    reader = vault.open_backup(backup_id, keyring)
    try:
        return {name: b"".join(reader.iter_stream(name)) for name in reader.stream_names()}
    finally:
        reader.close()


def keys_doc(vault: Vault, backup_id: str) -> dict:
    return json.loads(vault.store.get(f"backups/{backup_id}/keys.json"))


def test_each_recipient_alone_opens_a_backup_wrapped_by_all_of_them(vault, moto_endpoint):
    west = new_key(moto_endpoint)
    east = new_key(moto_endpoint, "us-east-1")
    alias = f"alias/dr-east-{east['KeyId'][:8]}"
    kms_client(moto_endpoint, "us-east-1").create_alias(AliasName=alias, TargetKeyId=east["KeyId"])
    private, public = generate_x25519_keypair()
    writer = Keyring(
        passphrase=PASSPHRASE,
        public_keys=[public],
        kms_keys=[cfg(moto_endpoint, west["Arn"]), cfg(moto_endpoint, alias, "us-east-1")],
    )
    m = backup_source(vault, writer, BytesEngine(PAYLOAD))

    doc = keys_doc(vault, m.id)
    kinds = [r["type"] for r in doc["recipients"]]
    assert kinds == ["aws-kms", "aws-kms", "passphrase", "x25519"]
    first, second = doc["recipients"][:2]
    assert (first["key_id"], first["region"], first["key"]) == (west["Arn"], "us-west-2", west["Arn"])
    # Configured by alias, recorded by the ARN KMS returned (what Decrypt names).
    assert (second["key_id"], second["region"], second["key"]) == (east["Arn"], "us-east-1", alias)
    assert first["context"] == {"genesis-dr:backup": m.id}
    assert m.key_ids == [
        f"passphrase:{vault.key_check()['key_id']}",
        f"x25519:{__import__('core.crypto.keys', fromlist=['fingerprint']).fingerprint(public)[:8]}",
        f"aws-kms:{west['KeyId'][:8]}",
        f"aws-kms:{alias}",
    ]
    # The data key came from GenerateDataKey: KMS itself opens the first record under the backup's context,
    # and its plaintext is stored nowhere in the vault.
    plain = kms_client(moto_endpoint).decrypt(
        CiphertextBlob=base64.b64decode(first["ciphertext"]), EncryptionContext=context_for(m.id), KeyId=west["Arn"]
    )["Plaintext"]
    assert len(plain) == 32
    for key in vault.store.list(f"backups/{m.id}/"):
        if not key.endswith(".json"):
            continue
        raw = vault.store.get(key)
        assert base64.b64encode(plain) not in raw and plain.hex().encode() not in raw

    assert read_back(vault, m.id, Keyring(passphrase=PASSPHRASE)) == PAYLOAD
    assert read_back(vault, m.id, Keyring(private_keys=[private])) == PAYLOAD
    assert read_back(vault, m.id, Keyring(kms_keys=[cfg(moto_endpoint, west["Arn"])])) == PAYLOAD
    # The second KMS key alone: with the first disabled, the reader falls through to the second record.
    kms_client(moto_endpoint).disable_key(KeyId=west["KeyId"])
    try:
        assert read_back(vault, m.id, Keyring(kms_keys=[cfg(moto_endpoint, alias, "us-east-1")])) == PAYLOAD
    finally:
        kms_client(moto_endpoint).enable_key(KeyId=west["KeyId"])
    with pytest.raises(WrongKeyError):
        vault.open_backup(m.id, Keyring(passphrase="another-Passphrase-9"))


def test_a_wrapped_key_does_not_open_under_another_backup_id(vault, moto_endpoint):
    key = new_key(moto_endpoint)
    keyring = Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])])
    a = backup_source(vault, keyring, BytesEngine({"main": b"backup a"}))
    b = backup_source(vault, keyring, BytesEngine({"main": b"backup b"}))
    a_recipients = keys_doc(vault, a.id)["recipients"]
    with pytest.raises(IntegrityError, match=f"backup {b.id}: its key wrapped by KMS key {key['Arn']} does not open"):
        Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])]).unwrap(b.id, a_recipients)
    # KMS itself refuses it: the context is authenticated, not merely compared by genesis-dr.
    with pytest.raises(kms_client(moto_endpoint).exceptions.InvalidCiphertextException):
        kms_client(moto_endpoint).decrypt(
            CiphertextBlob=base64.b64decode(a_recipients[0]["ciphertext"]), EncryptionContext=context_for(b.id)
        )
    # A keys.json moved into another backup's directory is refused there.
    vault.store.put(f"backups/{b.id}/keys.json", vault.store.get(f"backups/{a.id}/keys.json"), overwrite=True)
    with pytest.raises(IntegrityError, match="does not match its SHA-256"):
        vault.open_backup(b.id, keyring)
    assert read_back(vault, a.id, keyring) == {"main": b"backup a"}


@pytest.mark.parametrize("state", ["disabled", "pending deletion"])
def test_a_backup_with_an_unusable_kms_key_is_refused_before_anything_is_written(vault, moto_endpoint, state):
    key = new_key(moto_endpoint)
    client = kms_client(moto_endpoint)
    if state == "disabled":
        client.disable_key(KeyId=key["KeyId"])
    else:
        client.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    keyring = Keyring(passphrase=PASSPHRASE, kms_keys=[cfg(moto_endpoint, key["Arn"])])
    with pytest.raises(KeyServiceError) as caught:
        backup_source(vault, keyring, BytesEngine(PAYLOAD))
    message = str(caught.value)
    assert caught.value.exit_code == 19 and "\n" not in message
    assert f"KMS key {key['Arn']} (us-west-2) is {state}" in message
    remedy = "aws kms enable-key" if state == "disabled" else "aws kms cancel-key-deletion"
    assert f"{remedy} --key-id {key['Arn']} --region us-west-2" in message
    assert PASSPHRASE not in message
    assert vault.store.children("backups/") == []  # not even a started.json


def test_an_unusable_kms_key_on_restore_falls_back_to_the_other_recipients(vault, moto_endpoint):
    key = new_key(moto_endpoint)
    private, public = generate_x25519_keypair()
    m = backup_source(
        vault, Keyring(public_keys=[public], kms_keys=[cfg(moto_endpoint, key["Arn"])]), BytesEngine(PAYLOAD)
    )
    client = kms_client(moto_endpoint)
    client.disable_key(KeyId=key["KeyId"])
    kms_only = Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])])
    with pytest.raises(KeyServiceError, match=f"KMS key {key['Arn']} \\(us-west-2\\) is disabled"):
        vault.open_backup(m.id, kms_only)
    both = Keyring(private_keys=[private], kms_keys=[cfg(moto_endpoint, key["Arn"])])
    assert read_back(vault, m.id, both) == PAYLOAD
    client.enable_key(KeyId=key["KeyId"])
    client.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    with pytest.raises(KeyServiceError, match="is pending deletion \\(deleted on 20"):
        vault.open_backup(m.id, Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])]))
    client.cancel_key_deletion(KeyId=key["KeyId"])
    client.enable_key(KeyId=key["KeyId"])
    assert read_back(vault, m.id, Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])])) == PAYLOAD


def test_a_key_in_another_region_or_missing_is_named_with_the_remedy(vault, moto_endpoint):
    key = new_key(moto_endpoint)  # us-west-2
    keyring = Keyring(kms_keys=[cfg(moto_endpoint, key["KeyId"], "eu-west-1")])
    with pytest.raises(KeyServiceError) as caught:
        backup_source(vault, keyring, BytesEngine(PAYLOAD))
    assert str(caught.value) == (
        f"KMS key {key['KeyId']} (eu-west-1) does not exist in eu-west-1; check encryption.kms_keys key_id and "
        "region (a key lives in one region)"
    )
    with pytest.raises(ValueError, match="is in region us-west-2, but region says eu-west-1"):
        KmsKeyConfig(key_id=key["Arn"], region="eu-west-1")
    assert vault.store.children("backups/") == []


def test_access_denied_names_the_key_and_another_recipient_still_opens(vault, moto_endpoint, prefect_api):
    """A backup host allowed only to GenerateDataKey/Encrypt (moto's IAM enforcement switched on), its
    credentials in a prefect-aws AwsCredentials block the KMS key names (read through blocks/keys.py)."""
    from prefect_aws import AwsCredentials

    import blocks.keys  # noqa: F401 - installs the block reader core uses for kms_keys[].credentials

    key = new_key(moto_endpoint)
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name="us-east-1")
    user = f"dr-writer-{key['KeyId'][:8]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Encrypt"], "Resource": "*"}
    ]}  # fmt: skip
    iam.put_user_policy(UserName=user, PolicyName="writer", PolicyDocument=json.dumps(policy))
    access = iam.create_access_key(UserName=user)["AccessKey"]
    block = f"kms-writer-{key['KeyId'][:8]}"
    AwsCredentials(aws_access_key_id=access["AccessKeyId"], aws_secret_access_key=access["SecretAccessKey"]).save(
        block, overwrite=True
    )
    writer_key = cfg(moto_endpoint, key["Arn"], credentials=block)
    httpx.post(f"{moto_endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        # No kms:DescribeKey: the state check is skipped, GenerateDataKey decides (and is allowed).
        m = backup_source(vault, Keyring(passphrase=PASSPHRASE, kms_keys=[writer_key]), BytesEngine(PAYLOAD))
        with pytest.raises(KeyServiceError) as caught:
            vault.open_backup(m.id, Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"], credentials=block)]))
        assert str(caught.value) == (
            f"KMS key {key['Arn']} (us-west-2): access denied for decrypt; grant kms:Decrypt (restores), "
            "kms:GenerateDataKey and kms:Encrypt (backups) on the key to the role genesis-dr runs as, check its "
            "credentials, or use another recipient"
        )
        assert access["SecretAccessKey"] not in str(caught.value)
        with_passphrase = Keyring(passphrase=PASSPHRASE, kms_keys=[writer_key])
        assert read_back(vault, m.id, with_passphrase) == PAYLOAD
    finally:
        httpx.post(f"{moto_endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
    assert read_back(vault, m.id, Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])])) == PAYLOAD
    with pytest.raises(ConfigError, match="no AwsCredentials block named 'no-such-block'"):
        vault.open_backup(m.id, Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"], credentials="no-such-block")]))


class FaultProxy:
    """Real HTTP in front of moto: forwards every request, except that queued faults answer the next
    requests for one KMS operation as AWS would (throttling, a 5xx, an error moto does not produce)."""

    def __init__(self, upstream: str) -> None:
        target = urlparse(upstream)
        self.faults: list[list] = []  # [operation, HTTP status, error code, times left]
        self.answered: Counter[str] = Counter()  # faults answered, per operation
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                op = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
                with lock:
                    fault = next((f for f in proxy.faults if f[0] == op and f[3] > 0), None)
                    if fault:
                        fault[3] -= 1
                        proxy.answered[op] += 1
                if fault:
                    reply = json.dumps({"__type": fault[2], "message": f"injected {fault[2]}"}).encode()
                    self.send_response(fault[1])
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request("POST", self.path, body, dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def inject(self, op: str, status: int, code: str, times: int) -> None:
        self.faults.append([op, status, code, times])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(moto_endpoint, monkeypatch):
    monkeypatch.setenv("GENESIS_DR_KMS_RETRIES", "4")
    monkeypatch.setenv("GENESIS_DR_KMS_RETRY_DELAY", "0.01")
    p = FaultProxy(moto_endpoint)
    yield p
    p.close()


def test_throttling_and_5xx_are_retried_and_counted_then_fail_clearly(vault, moto_endpoint, proxy):
    key = new_key(moto_endpoint)
    keyring = Keyring(kms_keys=[cfg(proxy.url, key["Arn"])])
    proxy.inject("GenerateDataKey", 400, "ThrottlingException", 2)
    proxy.inject("GenerateDataKey", 503, "KMSInternalException", 1)
    m = backup_source(vault, keyring, BytesEngine(PAYLOAD))
    assert proxy.answered["GenerateDataKey"] == 3
    assert keyring.kms_retried() == 3
    reader_keys = Keyring(kms_keys=[cfg(proxy.url, key["Arn"])])
    proxy.inject("Decrypt", 500, "InternalFailure", 4)  # every one of the 4 attempts
    with pytest.raises(KeyServiceError) as caught:
        vault.open_backup(m.id, reader_keys)
    assert str(caught.value) == (
        f"KMS key {key['Arn']} (us-west-2): decrypt still failing after 4 attempts (InternalFailure: KMS is "
        "throttling or unavailable); try again later, or open the backup with another recipient"
    )
    assert reader_keys.kms_retried() == 4
    assert read_back(vault, m.id, reader_keys) == PAYLOAD  # the storm is over


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("DisabledException", "is disabled; enable it ('aws kms enable-key --key-id {arn} --region us-west-2')"),
        ("KMSInvalidStateException", "is not usable in its current state (pending deletion, or pending import)"),
        ("AccessDeniedException", "access denied for generate_data_key; grant kms:Decrypt (restores)"),
    ],
)
def test_aws_refusals_moto_does_not_produce_are_one_line_naming_the_key(vault, moto_endpoint, proxy, code, expected):
    """AWS answers GenerateDataKey on a disabled key with DisabledException (moto does not): injected."""
    key = new_key(moto_endpoint)
    keyring = Keyring(passphrase=PASSPHRASE, kms_keys=[cfg(proxy.url, key["Arn"])])
    proxy.inject("GenerateDataKey", 400, code, 1)
    with pytest.raises(KeyServiceError) as caught:
        backup_source(vault, keyring, BytesEngine(PAYLOAD))
    assert expected.format(arn=key["Arn"]) in str(caught.value)
    assert str(caught.value).startswith(f"KMS key {key['Arn']} (us-west-2)")
    assert keyring.kms_retried() == 0  # a refusal is never retried
    assert vault.store.children("backups/") == []


def test_plaintext_data_keys_never_reach_a_log_even_at_debug(vault, moto_endpoint, caplog):
    key = new_key(moto_endpoint)
    caplog.set_level(logging.DEBUG)
    keyring = Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"]), cfg(moto_endpoint, new_key(moto_endpoint)["Arn"])])
    m = backup_source(vault, keyring, BytesEngine(PAYLOAD))  # GenerateDataKey, Encrypt
    assert read_back(vault, m.id, Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])])) == PAYLOAD  # Decrypt
    record = keys_doc(vault, m.id)["recipients"][0]
    plain = kms_client(moto_endpoint).decrypt(
        CiphertextBlob=base64.b64decode(record["ciphertext"]), EncryptionContext=context_for(m.id)
    )["Plaintext"]
    assert "generate_data_key" in caplog.text.lower() or "GenerateDataKey" in caplog.text  # botocore did log
    for form in (base64.b64encode(plain).decode(), plain.hex(), repr(plain)):
        assert form not in caplog.text


def test_log_keys_are_wrapped_by_kms_too(vault, moto_endpoint):
    key = new_key(moto_endpoint)
    keyring = Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])])
    key_id, data_key = LogKeys(vault.store, "db", keyring).new(None)
    doc = json.loads(vault.store.get(f"logkeys/db/{key_id}.json"))
    assert [r["type"] for r in doc["recipients"]] == ["aws-kms"]
    assert doc["recipients"][0]["context"] == {"genesis-dr:backup": f"logkey/db/{key_id}"}
    fresh = LogKeys(vault.store, "db", Keyring(kms_keys=[cfg(moto_endpoint, key["Arn"])]))
    assert fresh.get(key_id) == data_key


def test_stack_kms_keys_config():
    only_kms = EncryptionConfig.model_validate(
        {"kms_keys": [{"type": "aws", "key_id": "alias/dr", "region": "us-west-2"}]}
    )
    assert only_kms.passphrase_from is None  # KMS alone is enough; no default passphrase is demanded
    keyring = only_kms.keyring("s")
    assert keyring.can_write() and keyring.key_ids(None) == ["aws-kms:alias/dr"]
    assert EncryptionConfig().passphrase_from == "env:BACKUP_ENCRYPTION_PASSWORD"
    with pytest.raises(ValueError, match="Google Cloud KMS is not"):
        EncryptionConfig.model_validate({"kms_keys": [{"type": "gcp", "key_name": "projects/p/locations/l/x"}]})
    with pytest.raises(ValueError, match="not a KMS key id"):
        KmsKeyConfig(key_id="my key", region="us-west-2")
    arn = "arn:aws:kms:eu-west-1:123456789012:key/0b7c4c2e-5a4e-4d7e-9d3b-3a4b5c6d7e8f"
    assert KmsKeyConfig(key_id=arn).region == "eu-west-1"
    assert KmsKeyConfig(key_id=arn).label() == "0b7c4c2e"
