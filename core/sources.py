"""Typed configuration of the things we back up and restore into.

The same models describe a backup source and a restore target: a restore
target is a source config with some fields overridden (another database name,
another server, another directory). Secrets are ``SecretStr`` so they never
print; engines hand them to tools through environment variables or 0600 files,
never through arguments (``ps`` would show them).
"""

from __future__ import annotations

from typing import Annotated, Literal

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
    kind: Literal["postgres"] = Field("postgres", description="Source kind.")
    host: str = Field("127.0.0.1", description="Server host name or address.")
    port: int = Field(5432, description="Server port.")
    user: str = Field("postgres", description="Login role (needs read access to every object backed up).")
    password: SecretStr | None = Field(None, description="Login password (secret; passed to tools via PGPASSWORD).")
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


class MySQLSourceConfig(_Source):
    kind: Literal["mysql"] = Field("mysql", description="Source kind.")
    host: str = Field("127.0.0.1", description="Server host name or address.")
    port: int = Field(3306, description="Server port.")
    user: str = Field("root", description="Login user (needs SELECT, SHOW VIEW, TRIGGER, EVENT, RELOAD, LOCK TABLES).")
    password: SecretStr | None = Field(None, description="Login password (secret; given to tools in memory).")
    database: str = Field(description="Database (schema) to back up (or restore into).")
    socket: str | None = Field(None, description="Unix socket path, used instead of host/port when set.")


class RedisSourceConfig(_Source):
    kind: Literal["redis"] = Field("redis", description="Source kind.")
    host: str = Field("127.0.0.1", description="Server host name or address.")
    port: int = Field(6379, description="Server port.")
    username: str | None = Field(None, description="ACL user name (Redis 6+), if any.")
    password: SecretStr | None = Field(None, description="Password (secret).")
    mode: Literal["rdb", "logical"] = Field(
        "rdb",
        description="rdb: snapshot via replication sync; logical: DUMP/RESTORE per key (works on managed Redis).",
    )
    db: int | None = Field(None, description="Logical mode only: back up just this database index.")


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


SourceConfig = Annotated[
    PostgresSourceConfig | MySQLSourceConfig | RedisSourceConfig | FilesSourceConfig,
    Field(discriminator="kind"),
]
