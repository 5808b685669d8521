"""Where a vault lives: a local directory, an S3 bucket or a GCS bucket (the stack's ``vault:``).

One model for the three, so every layer (stack file, blocks, the local stack
description) handles a vault the same way; ``store()`` is the only place that
builds a backend. Credentials are never fields here: an S3 vault uses boto3's
default chain (environment, ~/.aws, instance profile) unless the stack names a
prefect-aws ``AwsCredentials`` block (``credentials``), which the blocks layer
resolves and hands over with ``with_credentials``; a GCS vault likewise with
google-auth's default credentials or a prefect-gcp ``GcpCredentials`` block.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from core.storage.base import Store
from core.tls import check_endpoint

S3_STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "GLACIER_IR")
GCS_STORAGE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE")


class VaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["local", "s3", "gcs"] = Field("local", description="Store type: local directory, s3 or gcs.")
    path: str | None = Field(None, description="local: directory of the vault (created on first backup).")
    bucket: str | None = Field(None, description="s3/gcs: the bucket (e.g. ${BACKUP_S3_BUCKET}).")
    prefix: str = Field("", description="s3/gcs: key prefix of the vault inside the bucket (e.g. 'genesis-dr/prod').")
    region: str | None = Field(
        None, description="s3: the bucket's region (default ${BACKUP_S3_REGION}, else AWS_REGION, else us-east-1)."
    )
    project: str | None = Field(None, description="gcs: the Google Cloud project (default: the credentials').")
    storage_class: str | None = Field(
        None,
        description="Storage class of backup data: s3 STANDARD, STANDARD_IA or GLACIER_IR; gcs STANDARD, NEARLINE "
        "or COLDLINE (default STANDARD). Locks and catalog hints always stay STANDARD.",
    )
    endpoint_url: str | None = Field(
        None, description="s3/gcs: another endpoint (an S3-compatible service, a test server or the GCS emulator)."
    )
    ca_file: str | None = Field(
        None,
        description="s3/gcs: PEM file of the CA that signs an on-premises endpoint's HTTPS certificate (default: the "
        "system's CA store). Certificates are always verified; there is no switch to turn that off.",
    )
    credentials: str | None = Field(
        None,
        description="s3: name of a prefect-aws AwsCredentials block; gcs: of a prefect-gcp GcpCredentials block "
        "(default: the provider's default credential chain).",
    )
    compression: Literal["zstd", "gzip"] = Field("zstd", description="Codec for new chunks: zstd (default) or gzip.")
    _credentials: Any = PrivateAttr(default=None)  # a boto3 Session / google Credentials; never serialized

    @model_validator(mode="after")
    def _fields_of_type(self) -> VaultConfig:
        if self.type == "local":
            if not self.path:
                raise ValueError("a local vault needs 'path' (its directory)")
            stray = [
                f
                for f in ("bucket", "region", "project", "storage_class", "endpoint_url", "credentials", "ca_file")
                if getattr(self, f)
            ]
            if stray or self.prefix:
                raise ValueError(f"a local vault takes 'path' only, not {', '.join(stray or ['prefix'])}")
            return self
        kind = "an s3" if self.type == "s3" else "a gcs"
        if self.path:
            raise ValueError(f"{kind} vault takes 'bucket' (and 'prefix'), not 'path'")
        if not self.bucket:
            env = " (e.g. ${BACKUP_S3_BUCKET})" if self.type == "s3" else ""
            raise ValueError(f"{kind} vault needs 'bucket'{env}")
        classes = S3_STORAGE_CLASSES if self.type == "s3" else GCS_STORAGE_CLASSES
        if self.storage_class is not None and self.storage_class.upper() not in classes:
            raise ValueError(
                f"storage_class {self.storage_class!r} is not one of {', '.join(classes)} for {kind} vault"
            )
        if self.storage_class:
            self.storage_class = self.storage_class.upper()
        if self.type == "s3" and not self.region:
            self.region = os.environ.get("BACKUP_S3_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        if self.type == "s3" and self.project:
            raise ValueError("an s3 vault takes 'region', not 'project'")
        if self.type == "gcs" and self.region:
            raise ValueError("a gcs vault has no 'region' (a bucket's location is set when it is created)")
        if self.endpoint_url:
            check_endpoint(self.endpoint_url)
        self.prefix = self.prefix.strip("/")
        return self

    def with_credentials(self, credentials: Any) -> VaultConfig:
        """This vault with runtime credentials (a boto3 Session, google Credentials) from a block."""
        self._credentials = credentials
        return self

    def location(self) -> str:
        """Secret-free description, e.g. 's3://bucket/prefix (us-west-2)'."""
        if self.type == "local":
            return f"local:{self.path}"
        where = f"{self.type}://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} ({self.region})" if self.region else where

    def store(self, *, retry: bool = True) -> Store:
        """The vault's store, without opening the vault (for repairs and unlock); transient faults
        retried (core/storage/retry.py) unless ``retry`` is false."""
        store = _backend(self)
        if not retry:
            return store
        from core.storage.retry import RetryingStore

        return RetryingStore(store)

    def open(self, create: bool = False):
        from core.repository.vault import Vault

        return Vault.open(self.store(), create=create)


def _backend(config: VaultConfig) -> Store:
    if config.type == "local":
        from core.storage.local import LocalStore

        return LocalStore(config.path)
    if config.type == "s3":
        from core.storage.s3 import S3Store

        return S3Store(
            bucket=config.bucket,
            prefix=config.prefix,
            region=config.region,
            storage_class=config.storage_class or "STANDARD",
            endpoint_url=config.endpoint_url,
            session=config._credentials,
            ca_file=config.ca_file,
        )
    from core.storage.gcs import GCSStore

    return GCSStore(
        bucket=config.bucket,
        prefix=config.prefix,
        project=config.project,
        storage_class=config.storage_class or "STANDARD",
        endpoint_url=config.endpoint_url,
        credentials=config._credentials,
        ca_file=config.ca_file,
    )
