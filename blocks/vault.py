"""Where backups go: a local directory, an S3 bucket or a GCS bucket.

The vault blocks hold no secret: an S3 or GCS vault names the prefect-aws
``AwsCredentials`` / prefect-gcp ``GcpCredentials`` block that holds its
credentials (``credentials``), or none to use the provider's default chain
(instance profile, environment, workload identity). ``bind_credentials``
resolves that name when a flow opens the vault.
"""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from pydantic import Field

from core.errors import ConfigError
from core.repository.vault import Vault
from core.stack import VaultConfig
from core.tls import check_endpoint


class _VaultBlock(Block):
    compression: Literal["zstd", "gzip"] = Field("zstd", description="Codec for new chunks: zstd (default) or gzip.")

    def to_config(self) -> VaultConfig:
        """The core vault configuration this block describes (credentials not yet resolved)."""
        fields = {k: getattr(self, k) for k in type(self).model_fields if k in VaultConfig.model_fields}
        return VaultConfig.model_validate(fields)

    def get_vault(self, create: bool = False) -> Vault:
        """Open the vault (format version checked); ``create`` makes a new one if absent."""
        return bind_credentials(self.to_config()).open(create)


class LocalVault(_VaultBlock):
    """A vault in a local (or mounted) directory.

    Example:
        ```python
        from blocks import LocalVault
        vault = LocalVault.load("BLOCK_NAME").get_vault()
        ```
    """

    _block_type_name = "Local Vault"

    type: Literal["local"] = Field("local", description="Always 'local' for this block.")
    path: str = Field(description="Directory of the vault (created on first backup).")


class _BucketVault(_VaultBlock):
    bucket: str = Field(description="The bucket (for S3 the source documents' BACKUP_S3_BUCKET).")
    prefix: str = Field("", description="Key prefix of the vault in the bucket (several vaults may share one).")
    endpoint_url: str | None = Field(
        None, description="Another endpoint (an S3-compatible service, a test server or the GCS emulator)."
    )
    credentials: str | None = Field(
        None,
        description="Name of the credentials block to use (S3: AwsCredentials, GCS: GcpCredentials; default: the "
        "provider's default credential chain).",
    )
    ca_file: str | None = Field(
        None, description="PEM file of the CA of a private HTTPS endpoint (default: the system store)."
    )


class S3Vault(_BucketVault):
    """A vault in an S3 bucket (or an S3-compatible service), one prefix per vault.

    Example:
        ```python
        from blocks import S3Vault
        vault = S3Vault.load("BLOCK_NAME").get_vault()
        ```
    """

    _block_type_name = "S3 Vault"

    type: Literal["s3"] = Field("s3", description="Always 's3' for this block.")
    region: str | None = Field(None, description="The bucket's region (BACKUP_S3_REGION).")
    storage_class: str | None = Field(
        None, description="STANDARD (default), STANDARD_IA or GLACIER_IR for backup data."
    )


class GcsVault(_BucketVault):
    """A vault in a Google Cloud Storage bucket, one prefix per vault.

    Example:
        ```python
        from blocks import GcsVault
        vault = GcsVault.load("BLOCK_NAME").get_vault()
        ```
    """

    _block_type_name = "GCS Vault"

    type: Literal["gcs"] = Field("gcs", description="Always 'gcs' for this block.")
    project: str | None = Field(None, description="The Google Cloud project (default: the credentials').")
    storage_class: str | None = Field(None, description="STANDARD (default), NEARLINE or COLDLINE for backup data.")


VAULT_BLOCKS: dict[str, type[_VaultBlock]] = {"local": LocalVault, "s3": S3Vault, "gcs": GcsVault}


def vault_block(config: VaultConfig) -> _VaultBlock:
    """The block of the right type for ``config``."""
    cls = VAULT_BLOCKS[config.type]
    return cls.model_validate({k: v for k, v in config.model_dump().items() if k in cls.model_fields})


def _check_block_endpoint(config: VaultConfig, block: str) -> None:
    """The credentials block's endpoint obeys the vault's own rule (https, or http on this machine only)."""
    try:
        check_endpoint(config.endpoint_url or "")
    except ValueError as exc:
        # Raised as ConfigError here: bind_credentials reads a ValueError as a missing credentials block.
        raise ConfigError(
            f"vault {config.location()}: endpoint_url of credentials block {block!r} (aws_client_parameters): {exc}"
        ) from None


def bind_credentials(config: VaultConfig) -> VaultConfig:
    """``config`` with the credentials of the block it names attached (a no-op without one).

    The credentials block's endpoint (AwsClientParameters.endpoint_url) is used when the
    vault names none, so one AwsCredentials block can point at an S3-compatible service.
    """
    if config.type == "local" or not config.credentials:
        return config
    name = config.credentials
    try:
        if config.type == "s3":
            from prefect_aws import AwsCredentials

            creds = AwsCredentials.load(name)
            bound = config.model_copy()
            params = getattr(creds, "aws_client_parameters", None)
            if not bound.endpoint_url and params is not None and getattr(params, "endpoint_url", None):
                bound.endpoint_url = params.endpoint_url
                _check_block_endpoint(bound, name)
            return bound.with_credentials(creds.get_boto3_session())
        from prefect_gcp import GcpCredentials

        creds = GcpCredentials.load(name)
        bound = config.model_copy()
        if not bound.project and creds.project:
            bound.project = creds.project
        return bound.with_credentials(creds.get_credentials_from_service_account())
    except (ValueError, ObjectNotFound):
        kind = "AwsCredentials" if config.type == "s3" else "GcpCredentials"
        raise ConfigError(
            f"vault {config.location()}: credentials block {name!r} ({kind}) is missing or invalid; create it "
            f"(prefect block create {'aws-credentials' if config.type == 's3' else 'gcp-credentials'}) or fix "
            "vault.credentials"
        ) from None
