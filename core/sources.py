"""Typed configuration of the things we back up and restore into.

The same models describe a backup source and a restore target: a restore
target is a source config with some fields overridden (another database name,
another server, another directory). Secrets are ``SecretStr`` so they never
print; engines hand them to tools through environment variables or 0600 files,
never through arguments (``ps`` would show them).
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.tls import EndpointUrl, TLSConfig


class FieldProblem(ValueError):
    """A validator's complaint about a field below the model it validates.

    ``loc`` is that field's path relative to the field (or model) being
    validated, so the stack loader names ``sources[1] (files).paths[0]`` rather
    than the whole model.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = tuple(loc)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: errors stay one short line whatever the input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whole_number(low: int, high: int):
    def check(value: Any) -> Any:
        # ${VAR} interpolation and `--target port=N` give digit strings; booleans and floats are not numbers here.
        if isinstance(value, str) and value.isascii() and value.strip().isdigit() and len(value.strip()) <= 10:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise PydanticCustomError(
                "whole_number",
                "must be a whole number from {low} to {high}, not {got}",
                {"low": low, "high": high, "got": short(value)},
            )
        return value

    return BeforeValidator(check)


Port = Annotated[int, Field(ge=1, le=65535), _whole_number(1, 65535)]
# Redis accepts up to INT_MAX databases (`databases` in redis.conf); the server refuses an index it lacks.
RedisDbIndex = Annotated[int, Field(ge=0, le=2**31 - 1), _whole_number(0, 2**31 - 1)]


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name of the source within the stack, e.g. 'app-db'.")
    data_classes: list[str] = Field(
        default_factory=list,
        description="Data classes the source holds (financial, health, cardholder, personal, secrets, config, or one "
        "defined under retention.data_classes): their compliance minimums and maximums bound its retention.",
    )
    work_pool: str | None = Field(
        None,
        description="Prefect work pool whose workers back this source up (next to its data, e.g. 'eu-west-1'); "
        "default: the stack's operations.work_pool.",
    )

    @field_validator("work_pool")
    @classmethod
    def _work_pool(cls, value: str | None) -> str | None:
        from core.scheduling.config import check_pool_name

        return None if value is None else check_pool_name(value)

    def secrets(self) -> list[str]:
        """Plaintext secrets of this config, for redacting tool output."""
        out = []
        for value in self.__dict__.values():
            if isinstance(value, SecretStr):
                out.append(value.get_secret_value())
        return [s for s in out if s]


class PostgresSourceConfig(_Source):
    kind: Literal["postgres"] = Field("postgres", description="Source kind.")
    host: str = Field("127.0.0.1", description="Server host name or address.")
    port: Port = Field(5432, description="Server port.")
    user: str = Field("postgres", description="Login role (needs read access to every object backed up).")
    password: SecretStr | None = Field(None, description="Login password (secret; passed to tools via PGPASSWORD).")
    tls: TLSConfig | None = Field(
        None, description="TLS to the server, verified by default (see TLSConfig: mode, ca_file, cert_file, key_file)."
    )
    database: str = Field("postgres", description="Database to back up (or restore into).")
    sslmode: str | None = Field(None, description="libpq sslmode, e.g. 'require' or 'verify-full'.")
    role_passwords: bool = Field(
        False,
        description="Back up the password hashes of the database's roles (reading them needs a superuser); "
        "without them, roles a restore creates have no password.",
    )
    create_roles: bool = Field(
        True,
        description="As a restore target: create the backed-up roles the server lacks (existing roles are never "
        "altered); off, objects owned by or granted to missing roles are restored without them, and reported.",
    )
    backup_method: Literal["auto", "physical", "logical"] = Field(
        "auto",
        description="Full backups: physical (pg_basebackup; WAL replay to any time) or logical (pg_dump; restores "
        "into any server). auto: physical when the login may replicate, logical otherwise.",
    )
    slot: str = Field(
        "genesis_dr",
        pattern=r"^[a-z0-9_]{1,63}$",
        description="Physical replication slot WAL capture reads through (created on first capture); it keeps the "
        "server from removing WAL not yet in the vault.",
    )
    data_dir: str | None = Field(
        None,
        description="As a point-in-time restore target: the new data directory the recovered cluster is built in; "
        "it is started on this config's port.",
    )
    rpo_seconds: int = Field(
        30,
        ge=1,
        le=86400,
        description="Continuous capture ships the log at least this often while writes happen (the recovery point "
        "objective, in seconds).",
    )


class MySQLSourceConfig(_Source):
    kind: Literal["mysql"] = Field("mysql", description="Source kind.")
    host: str = Field("127.0.0.1", description="Server host name or address.")
    port: Port = Field(3306, description="Server port.")
    user: str = Field(
        "root",
        description="Login user (needs SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES and BINLOG MONITOR/REPLICATION "
        "CLIENT; RELOAD for snapshot read_lock; REPLICATION SLAVE for binlog capture; see docs/FORMAT.md).",
    )
    password: SecretStr | None = Field(None, description="Login password (secret; given to tools in memory).")
    tls: TLSConfig | None = Field(
        None, description="TLS to the server, verified by default (see TLSConfig: mode, ca_file, cert_file, key_file)."
    )
    database: str = Field(description="Database (schema) to back up (or restore into).")
    socket: str | None = Field(None, description="Unix socket path, used instead of host/port when set.")
    snapshot: Literal["auto", "read_lock", "gtid"] = Field(
        "auto",
        description="How a full dump gets its binlog position: read_lock (FLUSH TABLES WITH READ LOCK; needs RELOAD), "
        "gtid (no global lock, for managed servers without RELOAD: lock-free when the dump's snapshot and ours are "
        "one binlog position, else a READ lock on this database's tables only while the dumps open their "
        "snapshots); auto picks read_lock when RELOAD is granted.",
    )
    rpo_seconds: int = Field(
        30,
        ge=1,
        le=86400,
        description="Continuous capture ships the log at least this often while writes happen (the recovery point "
        "objective, in seconds).",
    )


class RedisSourceConfig(_Source):
    kind: Literal["redis"] = Field("redis", description="Source kind.")
    host: str = Field("127.0.0.1", description="Server host name or address.")
    port: Port = Field(6379, description="Server port.")
    username: str | None = Field(None, description="ACL user name (Redis 6+), if any.")
    password: SecretStr | None = Field(None, description="Password (secret).")
    tls: TLSConfig | None = Field(
        None, description="TLS to the server, verified by default (see TLSConfig: mode, ca_file, cert_file, key_file)."
    )
    mode: Literal["rdb", "logical"] = Field(
        "rdb",
        description="rdb: snapshot via replication sync; logical: DUMP/RESTORE per key (works on managed Redis).",
    )
    db: RedisDbIndex | None = Field(None, description="Logical mode only: back up just this database index.")
    rpo_seconds: int = Field(
        30,
        ge=1,
        le=86400,
        description="Continuous capture ships the log at least this often while writes happen (the recovery point "
        "objective, in seconds).",
    )


class FilesSourceConfig(_Source):
    kind: Literal["files"] = Field("files", description="Source kind.")
    root: str = Field(description="Directory the paths are relative to; restores go below the target root.")
    paths: list[str] = Field(default_factory=lambda: ["."], description="Paths below root to archive.")
    include: list[str] = Field(default_factory=list, description="Glob patterns; if set, only matching files.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns to leave out (exclude wins).")
    skip_unarchivable: bool = Field(
        False,
        description=(
            "Leave out entries that cannot be archived (sockets, files or directories this process cannot read) "
            "instead of failing the backup. Each one is listed as skipped by `genesis-dr list`, the run's "
            "artifact and every restore report of that backup."
        ),
    )

    @field_validator("paths")
    @classmethod
    def _paths_below_root(cls, paths: list[str]) -> list[str]:
        # Refused at apply, not at the first backup (the engine checks again: configs built by model_copy skip this).
        if not paths:
            raise FieldProblem((), "list at least one path below root, e.g. ['.']")
        for i, raw in enumerate(paths):
            if "\x00" in raw:
                raise FieldProblem((i,), f"path {short(raw)} contains a NUL character; remove it")
            if raw.startswith("/"):
                raise FieldProblem((i,), f"path {short(raw)} is absolute; list paths relative to root")
            if ".." in raw.split("/"):
                raise FieldProblem((i,), f"path {short(raw)} leaves root; remove the '..'")
        return paths


# -- bucket source -------------------------------------------------------------------
class BucketSourceConfig(_Source):
    """An S3 or GCS bucket (or one prefix of it): its objects with their metadata.

    Credentials are never fields here (as for ``VaultConfig``): boto3's / google-auth's
    default chain, or the named prefect-aws ``AwsCredentials`` / prefect-gcp
    ``GcpCredentials`` block, which the blocks layer resolves and hands over at run time.
    """

    kind: Literal["bucket"] = Field("bucket", description="Source kind.")
    provider: Literal["s3", "gcs"] = Field("s3", description="Object store: s3 or gcs.")
    bucket: str = Field(description="The bucket backed up (or restored into).")
    prefix: str = Field(
        "",
        description="Only objects below this folder-like prefix (e.g. 'uploads/'); restores write below the "
        "target's prefix. Empty: the whole bucket.",
    )
    region: str | None = Field(
        None, description="s3: the bucket's region (default AWS_REGION, else us-east-1); gcs: not used."
    )
    project: str | None = Field(None, description="gcs: the Google Cloud project (default: the credentials').")
    endpoint_url: EndpointUrl = Field(
        None, description="Another endpoint: an S3-compatible service, a test server or the GCS emulator."
    )
    ca_file: str | None = Field(
        None,
        description="PEM file of the CA that signs an on-premises endpoint's HTTPS certificate (default: the "
        "system's CA store). Certificates are always verified; there is no switch to turn that off.",
    )
    credentials: str | None = Field(
        None,
        description="s3: name of a prefect-aws AwsCredentials block; gcs: of a prefect-gcp GcpCredentials block "
        "(default: the provider's default credential chain).",
    )
    include: list[str] = Field(
        default_factory=list, description="Glob patterns on keys below the prefix; if set, only matching objects."
    )
    exclude: list[str] = Field(default_factory=list, description="Glob patterns of keys to leave out (exclude wins).")
    _credentials: Any = PrivateAttr(default=None)  # a boto3 Session / google Credentials; never serialized

    @model_validator(mode="after")
    def _normalise(self) -> BucketSourceConfig:
        if not self.bucket.strip() or "/" in self.bucket:
            raise ValueError(f"bucket {short(self.bucket)} is not a bucket name (no '/'; put folders in 'prefix')")
        # A prefix is a folder: 'uploads' must not also take 'uploads-old/...'.
        self.prefix = self.prefix.strip("/") + "/" if self.prefix.strip("/") else ""
        if self.provider == "s3" and not self.region:
            self.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        if self.provider == "gcs" and self.region:
            raise ValueError("a gcs bucket has no 'region' (its location is set when it is created)")
        return self

    def with_credentials(self, credentials: Any) -> BucketSourceConfig:
        """This source with runtime credentials (a boto3 Session, google Credentials) from a block."""
        self._credentials = credentials
        return self


SourceConfig = Annotated[
    PostgresSourceConfig | MySQLSourceConfig | RedisSourceConfig | FilesSourceConfig | BucketSourceConfig,
    Field(discriminator="kind"),
]
