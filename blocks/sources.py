"""Source blocks. Fields come from the core config models (one definition),
so the Prefect UI form, the YAML stack file and the engines agree."""

from __future__ import annotations

from prefect.blocks.core import Block

from core.engines import engine_for
from core.engines.base import Engine
from core.engines.bucket.clients import set_credentials_resolver
from core.sources import (
    BucketSourceConfig,
    FilesSourceConfig,
    MySQLSourceConfig,
    PostgresSourceConfig,
    RedisSourceConfig,
)


class _SourceBlock(Block):
    _config_model: type = None  # type: ignore[assignment]

    def to_config(self):
        fields = self._config_model.model_fields
        return self._config_model.model_validate({k: getattr(self, k) for k in fields})

    def get_engine(self) -> Engine:
        """The core engine for this source."""
        return engine_for(self.to_config())


class PostgresSource(_SourceBlock, PostgresSourceConfig):
    """A PostgreSQL database backed up with pg_dump (password is a secret).

    Example:
        ```python
        from blocks import PostgresSource
        engine = PostgresSource.load("BLOCK_NAME").get_engine()
        ```
    """

    _block_type_name = "Postgres Source"
    _config_model = PostgresSourceConfig


class MySQLSource(_SourceBlock, MySQLSourceConfig):
    """A MariaDB/MySQL database dumped in one consistent transaction with binlog coordinates.

    Example:
        ```python
        from blocks import MySQLSource
        engine = MySQLSource.load("BLOCK_NAME").get_engine()
        ```
    """

    _block_type_name = "MySQL Source"
    _config_model = MySQLSourceConfig


class RedisSource(_SourceBlock, RedisSourceConfig):
    """A Redis server: RDB snapshot over replication sync, or logical DUMP/RESTORE.

    Example:
        ```python
        from blocks import RedisSource
        engine = RedisSource.load("BLOCK_NAME").get_engine()
        ```
    """

    _block_type_name = "Redis Source"
    _config_model = RedisSourceConfig


class FilesSource(_SourceBlock, FilesSourceConfig):
    """Application files and config: a tar stream of paths below a root.

    Example:
        ```python
        from blocks import FilesSource
        engine = FilesSource.load("BLOCK_NAME").get_engine()
        ```
    """

    _block_type_name = "Files Source"
    _config_model = FilesSourceConfig


class BucketSource(_SourceBlock, BucketSourceConfig):
    """An S3 or GCS bucket (under a prefix): its objects with their metadata, incrementally.

    Credentials are never stored here: ``credentials`` names a prefect-aws AwsCredentials
    (s3) or prefect-gcp GcpCredentials (gcs) block; without it the provider's default chain.

    Example:
        ```python
        from blocks import BucketSource
        engine = BucketSource.load("BLOCK_NAME").get_engine()
        ```
    """

    _block_type_name = "Bucket Source"
    _config_model = BucketSourceConfig


def bucket_credentials(provider: str, block_name: str):
    """A bucket source's ``credentials``: the boto3 Session of an AwsCredentials block (s3) or the google
    Credentials of a GcpCredentials block (gcs)."""
    from prefect.exceptions import ObjectNotFound

    from core.errors import ConfigError

    try:
        if provider == "s3":
            from prefect_aws import AwsCredentials

            return AwsCredentials.load(block_name).get_boto3_session()
        from prefect_gcp import GcpCredentials

        return GcpCredentials.load(block_name).get_credentials_from_service_account()
    except (ValueError, ObjectNotFound):
        kind, slug = (
            ("AwsCredentials", "aws-credentials") if provider == "s3" else ("GcpCredentials", "gcp-credentials")
        )
        raise ConfigError(
            f"bucket source: no {kind} block named {block_name!r}; create it (prefect block create {slug}) or drop "
            "'credentials' to use the default chain"
        ) from None


# Core resolves a bucket source's credentials block through this, at first use.
set_credentials_resolver(bucket_credentials)


SOURCE_BLOCKS: dict[str, type[_SourceBlock]] = {
    "postgres": PostgresSource,
    "mysql": MySQLSource,
    "redis": RedisSource,
    "files": FilesSource,
    "bucket": BucketSource,
}
