"""AWS through moto in server mode: one real HTTP server on 127.0.0.1 for the whole session.

Tests never patch boto3: every S3 and KMS call goes over HTTP to this server, which
holds buckets in several regions at once (the source documents' us-west-2 primary
with us-east-1 and eu-west-1 copies). Each test makes its own buckets
(``new_bucket``), so tests share the server but no state.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.servers import free_port, serving

PRIMARY_REGION = "us-west-2"
CROSS_REGIONS = ("us-east-1", "eu-west-1")

# moto accepts any key; these are not secrets. Set for the session so boto3's default chain finds them
# (an operator's S3 vault with no credentials block uses that chain too).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.pop("AWS_PROFILE", None)


def _moto_server_binary() -> str:
    path = Path(sys.executable).with_name("moto_server")
    if not path.exists():
        raise RuntimeError("moto_server is not installed in this environment; run 'make bootstrap' (see .ci/run)")
    return str(path)


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """A moto server (its own process) on a free port; yields its URL."""
    port = free_port()
    with serving([_moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)], port, log_dir / "moto.log"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    """URL of a moto server (S3, KMS, ...) speaking real HTTP on a free port."""
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


def s3_client(endpoint: str, region: str = PRIMARY_REGION):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


def kms_client(endpoint: str, region: str = PRIMARY_REGION):
    import boto3

    return boto3.client("kms", endpoint_url=endpoint, region_name=region)


def moto_vault(bucket: str, endpoint: str) -> dict:
    """A stack's ``vault`` block: ``bucket`` on the moto server at ``endpoint``, prefix dr, the primary region."""
    return {"type": "s3", "bucket": bucket, "prefix": "dr", "region": PRIMARY_REGION, "endpoint_url": endpoint}


@pytest.fixture
def new_bucket(moto_endpoint):
    """Factory: a fresh, uniquely named S3 bucket in ``region`` (default the primary, us-west-2)."""

    def make(region: str = PRIMARY_REGION, *, versioned: bool = False, object_lock: bool = False) -> str:
        name = f"gdr-{region}-{uuid.uuid4().hex[:10]}"
        client = s3_client(moto_endpoint, region)
        args = {"Bucket": name}
        if region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        if object_lock:
            args["ObjectLockEnabledForBucket"] = True
        client.create_bucket(**args)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    return make
