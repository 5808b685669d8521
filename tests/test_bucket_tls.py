"""Bucket sources on HTTPS endpoints signed by a private CA (``ca_file``): S3 on moto, GCS on fake-gcs-server.

Both servers present the test CA's certificate for 127.0.0.1 (tests/fixtures_tls.py). Objects are put and
read back with the providers' own clients trusting that CA; backups go through core.operations.backup_source
into a LocalStore vault and restores through restore_backup, as the flows call them.
"""

from __future__ import annotations

import os
import time
import uuid

import boto3
import pytest
import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from core.engines import engine_for
from core.engines.bucket.engine import BucketEngine
from core.errors import TLSError
from core.operations import backup_source, restore_backup
from core.sources import BucketSourceConfig
from tests.fixtures_gcs import GCS_PROJECT

REGION = "us-east-1"
# Objects of every size class: empty, small, and one past PART_SIZE (an S3 multipart / GCS resumable upload).
OBJECTS = {
    "app/empty.marker": b"",
    "app/reports/q4.csv": b"id,total\n1,10\n",
    "app/uploads/big.bin": os.urandom((8 << 20) + 12_345),
}


@pytest.fixture(autouse=True)
def _no_process_wide_ca(monkeypatch):
    """Only ``ca_file`` may make the private CA trusted: not botocore's or requests' process-wide settings."""
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


def _engine(provider: str, endpoint: str, bucket: str, prefix: str = "app/", **fields) -> BucketEngine:
    region = {"region": REGION} if provider == "s3" else {}
    config = BucketSourceConfig(
        name="photos", provider=provider, bucket=bucket, prefix=prefix, endpoint_url=endpoint, **region, **fields
    )
    engine = engine_for(config)
    assert isinstance(engine, BucketEngine)
    return engine


# -- S3 (moto over HTTPS) -----------------------------------------------------------------------------------


def _s3(endpoint: str, ca: str):
    return boto3.client("s3", region_name=REGION, endpoint_url=endpoint, verify=ca)


def _s3_bucket(endpoint: str, ca: str, objects: dict[str, bytes] | None = None) -> str:
    bucket = f"gdr-tls-{uuid.uuid4().hex[:10]}"
    client = _s3(endpoint, ca)
    client.create_bucket(Bucket=bucket)
    for key, body in (objects or {}).items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return bucket


def _s3_objects(endpoint: str, ca: str, bucket: str, prefix: str) -> dict[str, bytes]:
    client = _s3(endpoint, ca)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"][len(prefix) :]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def test_s3_certificate_refused_is_one_line_naming_the_source_and_ca_file_never_retried(
    moto_https, tls_pki, vault, keyring
):
    bucket = _s3_bucket(moto_https, str(tls_pki.ca), OBJECTS)
    host = moto_https.removeprefix("https://")
    sent: list[str] = []
    for ca_file, named in ((None, "the system CA store"), (str(tls_pki.wrong_ca), str(tls_pki.wrong_ca))):
        engine = _engine("s3", moto_https, bucket, ca_file=ca_file)
        # Every request botocore sends (a retry would be a second one): observed, not altered.
        sent.clear()
        engine.client._s3.meta.events.register("before-send.s3", lambda **kw: sent.append(kw["request"].url))
        with pytest.raises(TLSError) as excinfo:
            backup_source(vault, keyring, engine)
        assert str(excinfo.value) == (
            f"bucket 'photos': s3://{bucket}: the certificate of {host} is not signed by {named}: set ca_file to "
            "the CA that signed it"
        )
        assert (excinfo.value.exit_code, excinfo.value.transient) == (36, False)
        assert len(sent) == 1, sent


# -- a ca_file this host cannot use ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["s3", "gcs"])
def test_an_unusable_ca_file_names_the_source_and_the_field(provider, tmp_path, vault, keyring):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for path, problem in (("/nonexistent/ca.pem", "no such file"), (str(not_pem), "not a valid PEM file")):
        # Refused before any request: the endpoint is never reached (nothing listens on it).
        engine = _engine(provider, "https://127.0.0.1:9", "photos-bucket", ca_file=path)
        with pytest.raises(TLSError) as excinfo:
            backup_source(vault, keyring, engine)
        assert str(excinfo.value) == (
            f"bucket 'photos': ca_file {path}: {problem}; give a PEM file of the CA that signed the endpoint's "
            "certificate"
        )
        assert excinfo.value.exit_code == 36


# -- GCS (fake-gcs-server over HTTPS) -------------------------------------------------------------------------


def _gcs(endpoint: str, ca: str) -> storage.Client:
    session = requests.Session()
    session.verify = ca
    return storage.Client(
        project=GCS_PROJECT,
        credentials=AnonymousCredentials(),
        _http=session,
        client_options={"api_endpoint": endpoint},
    )


def _gcs_bucket(endpoint: str, ca: str, objects: dict[str, bytes] | None = None) -> str:
    name = f"gdr-tls-{uuid.uuid4().hex[:10]}"
    created = requests.post(
        f"{endpoint}/storage/v1/b", params={"project": GCS_PROJECT}, json={"name": name}, verify=ca, timeout=30
    )
    assert created.status_code == 200, created.text
    bucket = _gcs(endpoint, ca).bucket(name)
    for key, body in (objects or {}).items():
        bucket.blob(key).upload_from_string(body, content_type="application/octet-stream")
    return name


def _gcs_objects(endpoint: str, ca: str, bucket: str, prefix: str) -> dict[str, bytes]:
    return {
        blob.name[len(prefix) :]: blob.download_as_bytes(raw_download=True)
        for blob in _gcs(endpoint, ca).list_blobs(bucket, prefix=prefix or None)
    }


def test_gcs_certificate_refused_is_one_line_naming_the_source_and_ca_file_never_retried(
    gcs_https, tls_pki, vault, keyring
):
    bucket = _gcs_bucket(gcs_https, str(tls_pki.ca), OBJECTS)
    host = gcs_https.removeprefix("https://")
    for ca_file, named in ((None, "the system CA store"), (str(tls_pki.wrong_ca), str(tls_pki.wrong_ca))):
        started = time.monotonic()
        with pytest.raises(TLSError) as excinfo:
            backup_source(vault, keyring, _engine("gcs", gcs_https, bucket, ca_file=ca_file))
        # google-cloud-storage retries a connection error (requests' SSLError is one) for two minutes.
        assert time.monotonic() - started < 10
        assert str(excinfo.value) == (
            f"bucket 'photos': gs://{bucket}: the certificate of {host} is not signed by {named}: set ca_file to "
            "the CA that signed it"
        )
        assert (excinfo.value.exit_code, excinfo.value.transient) == (36, False)


# -- through apply ----------------------------------------------------------------------------------------------


def test_a_bucket_source_ca_file_survives_apply_and_load(make_stack, moto_https, tls_pki):
    from blocks.apply import load_stack
    from blocks.sources import BucketSource
    from core import stack_description

    ca = str(tls_pki.ca)
    src, dst = _s3_bucket(moto_https, ca, OBJECTS), _s3_bucket(moto_https, ca)
    config = BucketSourceConfig(
        name="photos", bucket=src, prefix="app/", region=REGION, endpoint_url=moto_https, ca_file=ca
    )
    stack = make_stack([config])
    assert load_stack(stack.name).source("photos").ca_file == ca
    stack_description.save(stack.config, "test")  # what `genesis-dr apply` writes after the blocks
    described = stack_description.load(stack.name)
    assert described is not None and described.source("photos").ca_file == ca

    # The engine the flows build from the saved block reaches the endpoint checked against the CA.
    engine = BucketSource.load(f"{stack.name}-photos").get_engine()
    vault = stack.config.vault.open(create=True)
    manifest = backup_source(vault, stack.keyring(), engine)
    restore_backup(vault, stack.keyring(), manifest.id, _engine("s3", moto_https, dst, prefix="restored/", ca_file=ca))
    assert _s3_objects(moto_https, ca, dst, "restored/") == {k.removeprefix("app/"): v for k, v in OBJECTS.items()}


# -- both providers --------------------------------------------------------------------------------------------

PROVIDERS = {"s3": ("moto_https", _s3_bucket, _s3_objects), "gcs": ("gcs_https", _gcs_bucket, _gcs_objects)}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_bucket_source_round_trip_over_https_with_a_private_ca(provider, request, tls_pki, vault, keyring):
    server, make_bucket, objects_of = PROVIDERS[provider]
    endpoint, ca = request.getfixturevalue(server), str(tls_pki.ca)
    src, dst = make_bucket(endpoint, ca, OBJECTS), make_bucket(endpoint, ca)
    manifest = backup_source(vault, keyring, _engine(provider, endpoint, src, ca_file=ca))
    assert (manifest.kind, manifest.position["objects"]) == ("bucket", 3)

    restore_backup(vault, keyring, manifest.id, _engine(provider, endpoint, dst, prefix="restored/", ca_file=ca))
    expected = {key.removeprefix("app/"): body for key, body in OBJECTS.items()}
    assert objects_of(endpoint, ca, dst, "restored/") == expected
    assert objects_of(endpoint, ca, dst, "") == {f"restored/{key}": body for key, body in expected.items()}
