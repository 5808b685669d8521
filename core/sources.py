"""Typed configuration of the things we back up and restore into.

The same models describe a backup source and a restore target: a restore
target is a source config with some fields overridden (another database name,
another server, another directory). Secrets are ``SecretStr`` so they never
print; engines hand them to tools through environment variables or 0600 files,
never through arguments (``ps`` would show them).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name of the source within the stack, e.g. 'app-db'.")

    def secrets(self) -> list[str]:
        """Plaintext secrets of this config, for redacting tool output."""
        out = []
        for value in self.__dict__.values():
            if isinstance(value, SecretStr):
                out.append(value.get_secret_value())
        return [s for s in out if s]


class PostgresSourceConfig(_Source):
    kind: Literal["postgres"] = "postgres"
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: SecretStr | None = None
    database: str = "postgres"
    sslmode: str | None = None


class MySQLSourceConfig(_Source):
    kind: Literal["mysql"] = "mysql"
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: SecretStr | None = None
    database: str = Field(description="Database (schema) to back up.")
    socket: str | None = None


class RedisSourceConfig(_Source):
    kind: Literal["redis"] = "redis"
    host: str = "127.0.0.1"
    port: int = 6379
    username: str | None = None
    password: SecretStr | None = None
    mode: Literal["rdb", "logical"] = Field(
        "rdb",
        description="rdb: snapshot via replication sync; logical: DUMP/RESTORE per key (works on managed Redis).",
    )
    db: int | None = Field(None, description="Logical mode only: back up just this database index.")


class FilesSourceConfig(_Source):
    kind: Literal["files"] = "files"
    root: str = Field(description="Directory the paths are relative to; restores go below the target root.")
    paths: list[str] = Field(default_factory=lambda: ["."], description="Paths below root to archive.")
    include: list[str] = Field(default_factory=list, description="Glob patterns; if set, only matching files.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns to leave out.")


SourceConfig = Annotated[
    Union[PostgresSourceConfig, MySQLSourceConfig, RedisSourceConfig, FilesSourceConfig],
    Field(discriminator="kind"),
]
