"""Vaults on S3 (moto server) and GCS (emulator): the stack file, the blocks, and the foundation's
round trip of every source kind through the backup and restore flows with the vault in a bucket."""

from __future__ import annotations

import secrets

import pytest

from core.errors import ConfigError
from core.stack import load_stack_file
from tests.fixtures_cloud import PRIMARY_REGION, s3_client
from tests.test_flows import round_trip_all_sources

STACK = """
stack: prod
vault: %s
sources:
  - {name: files, kind: files, root: ./app}
"""


def _load(tmp_path, vault: str, env: dict | None = None):
    path = tmp_path / "dr.yaml"
    path.write_text(STACK % vault)
    return load_stack_file(path, env=env or {})


def test_s3_vault_from_the_source_documents_variables(tmp_path):
    stack = _load(
        tmp_path,
        "{type: s3, bucket: '${BACKUP_S3_BUCKET}', region: '${BACKUP_S3_REGION}', prefix: /dr/prod/, "
        "storage_class: standard_ia}",
        {"BACKUP_S3_BUCKET": "acme-backups", "BACKUP_S3_REGION": "us-west-2"},
    )
    assert (stack.vault.type, stack.vault.bucket, stack.vault.region) == ("s3", "acme-backups", "us-west-2")
    assert (stack.vault.prefix, stack.vault.storage_class) == ("dr/prod", "STANDARD_IA")
    assert stack.vault.location() == "s3://acme-backups/dr/prod (us-west-2)"


@pytest.mark.parametrize(
    ("vault", "expected"),
    [
        ("{type: s3, path: ./v}", "field 'vault': an s3 vault takes 'bucket' (and 'prefix'), not 'path'"),
        ("{type: s3}", "field 'vault': an s3 vault needs 'bucket' (e.g. ${BACKUP_S3_BUCKET})"),
        (
            "{type: s3, bucket: b1, storage_class: GLACIER}",
            "storage_class 'GLACIER' is not one of STANDARD, STANDARD_IA, GLACIER_IR for an s3 vault",
        ),
        (
            "{type: gcs, bucket: b1, storage_class: GLACIER_IR}",
            "storage_class 'GLACIER_IR' is not one of STANDARD, NEARLINE, COLDLINE for a gcs vault",
        ),
        ("{type: gcs, bucket: b1, region: eu}", "a gcs vault has no 'region'"),
        ("{type: local, path: ./v, bucket: b1}", "a local vault takes 'path' only, not bucket"),
        ("{type: azure, bucket: b1}", "field 'vault.type': Input should be 'local', 's3' or 'gcs'"),
    ],
)
def test_bad_vault_names_the_field(tmp_path, vault, expected):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, vault)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def _objects(endpoint: str, bucket: str) -> dict[str, dict]:
    client = s3_client(endpoint)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj
    return out


def test_round_trip_of_every_source_on_an_s3_vault_configured_by_an_aws_credentials_block(
    make_stack, pg_server, mysql_server, redis_factory, tmp_path, moto_endpoint, new_bucket
):
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    creds = f"moto-{secrets.token_hex(3)}"
    # The endpoint comes from the credentials block, as an operator's S3-compatible service would.
    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name=PRIMARY_REGION,
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint),
    ).save(creds)
    bucket = new_bucket(PRIMARY_REGION)
    vault = {
        "type": "s3",
        "bucket": bucket,
        "prefix": "dr/prod",
        "region": PRIMARY_REGION,
        "storage_class": "STANDARD_IA",
        "credentials": creds,
    }
    stack = round_trip_all_sources(make_stack, pg_server, mysql_server, redis_factory, tmp_path, vault=vault)

    objects = _objects(moto_endpoint, bucket)
    assert "dr/prod/config.json" in objects
    assert all(key.startswith("dr/prod/") for key in objects)
    assert not any(p.name.startswith("vault-") for p in tmp_path.iterdir())  # nothing went to a local directory
    manifests = [k for k in objects if k.endswith("/manifest.json")]
    chunks = [k for k in objects if "/streams/" in k]
    assert len(manifests) == 5 and chunks
    client = s3_client(moto_endpoint)
    assert {client.head_object(Bucket=bucket, Key=k).get("StorageClass") for k in chunks} == {"STANDARD_IA"}
    # Manifests and locks stay STANDARD (S3 omits the header for STANDARD).
    assert {client.head_object(Bucket=bucket, Key=k).get("StorageClass", "STANDARD") for k in manifests} == {"STANDARD"}
    assert len(stack.config.vault.open().list_backups()) == 5


def test_round_trip_of_every_source_on_a_gcs_vault(
    make_stack, pg_server, mysql_server, redis_factory, tmp_path, gcs_endpoint, new_gcs_bucket
):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = new_gcs_bucket()
    vault = {"type": "gcs", "bucket": bucket, "prefix": "dr", "endpoint_url": gcs_endpoint, "storage_class": "NEARLINE"}
    round_trip_all_sources(make_stack, pg_server, mysql_server, redis_factory, tmp_path, vault=vault)

    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_endpoint}
    )
    names = [b.name for b in client.list_blobs(bucket)]
    assert "dr/config.json" in names
    assert sum(1 for n in names if n.endswith("/manifest.json")) == 5
    assert all(n.startswith("dr/") for n in names)
