"""The declarative stack: sources, vault and encryption, read from YAML.

``${VAR}`` and ``${VAR:-default}`` in the YAML are replaced from the
environment, so the source documents' variables (DB_HOST, DB_PASSWORD,
BACKUP_ROOT_DIR, BACKUP_ENCRYPTION_PASSWORD, ...) drive the stack file. Unknown
or misspelt fields are refused with the field's path and a suggestion.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.crypto.keys import Keyring
from core.crypto.secretref import DEFAULT_PASSPHRASE_FROM, check_ref
from core.errors import ConfigError
from core.repository.vault import Vault
from core.sources import (
    FilesSourceConfig,
    MySQLSourceConfig,
    PostgresSourceConfig,
    RedisSourceConfig,
    SourceConfig,
)
from core.storage.local import LocalStore

SOURCE_MODELS = {
    "postgres": PostgresSourceConfig,
    "mysql": MySQLSourceConfig,
    "redis": RedisSourceConfig,
    "files": FilesSourceConfig,
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")


class VaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["local"] = Field("local", description="Store type (local directory; S3 and GCS come later).")
    path: str = Field(description="Directory of the vault (created on first backup).")
    compression: Literal["zstd", "gzip"] = Field("zstd", description="Codec for new chunks: zstd (default) or gzip.")

    def store(self) -> LocalStore:
        """The vault's store, without opening the vault (for repairs and unlock)."""
        return LocalStore(self.path)

    def open(self, create: bool = False) -> Vault:
        return Vault.open(self.store(), create=create)


# Literal secrets are refused: the stack is stored in Prefect, and the vault's key must not be.
LITERAL_SECRETS = {"passphrase": "passphrase_from", "x25519_private_key": "x25519_private_key_from"}


def literal_secret_error(literal: str) -> str:
    example = "env:BACKUP_ENCRYPTION_PASSWORD" if literal == "passphrase" else "file:/etc/genesis-dr/x25519.key"
    return (
        f"a literal {literal} would be stored in Prefect's database; name where it is read instead, e.g. "
        f"{LITERAL_SECRETS[literal]}: {example} (or env:NAME, file:/path with mode 0600, prompt)"
    )


class EncryptionConfig(BaseModel):
    """Which keys wrap each backup's data key, and WHERE the secret ones are read (never their values)."""

    model_config = ConfigDict(extra="forbid")
    passphrase_from: str | None = Field(
        None,
        description=(
            "Where the passphrase is read when it is used: env:NAME, file:/path (mode 0600 or 0400, owned by the "
            "user) or prompt. Default env:BACKUP_ENCRYPTION_PASSWORD, unless only public keys are given."
        ),
    )
    x25519_public_keys: list[str] = Field(
        default_factory=list, description="X25519 public keys (base64) that can open the backups written."
    )
    x25519_private_key_from: str | None = Field(
        None,
        description="Where restores read the X25519 private key: env:NAME, file:/path or prompt; unset on backup hosts.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for literal in LITERAL_SECRETS:
                if data.get(literal) is not None:
                    raise ValueError(f"encryption.{literal}: {literal_secret_error(literal)}")
        return data

    @field_validator("passphrase_from", "x25519_private_key_from")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        return None if value is None else check_ref(value)

    @model_validator(mode="after")
    def _default_passphrase(self) -> EncryptionConfig:
        # The source documents' BACKUP_ENCRYPTION_PASSWORD, unless the stack names public keys only.
        if self.passphrase_from is None and not self.x25519_public_keys:
            self.passphrase_from = DEFAULT_PASSPHRASE_FROM
        return self

    def keyring(self, stack: str | None = None) -> Keyring:
        """Keys by reference: the passphrase and private key are read only when a backup or restore uses them."""
        return Keyring(
            public_keys=list(self.x25519_public_keys),
            passphrase_from=self.passphrase_from,
            private_key_from=self.x25519_private_key_from,
            stack=stack,
        )


class StackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stack: str = "default"
    vault: VaultConfig
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)  # default: env:BACKUP_ENCRYPTION_PASSWORD
    sources: list[SourceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> StackConfig:
        if not _NAME.match(self.stack):
            raise ValueError(f"stack name {self.stack!r} must be lowercase letters, digits and dashes")
        seen: set[str] = set()
        for src in self.sources:
            if not _NAME.match(src.name):
                raise ValueError(f"source name {src.name!r} must be lowercase letters, digits and dashes")
            if src.name in seen:
                raise ValueError(f"source name {src.name!r} is used twice")
            seen.add(src.name)
        return self

    def source(self, name: str) -> Any:
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(f"stack '{self.stack}' has no source {name!r} (known: {known}); check --source")

    def keyring(self) -> Keyring:
        return self.encryption.keyring(self.stack)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, where: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: environment variable {name} is not set; export it or give a default as ${{{name}:-value}}"
        )

    return _VAR.sub(sub, text)


def _field_error(exc: ValidationError, data: dict, where: str) -> ConfigError:
    # A misspelt field shows as "unknown" and "missing"; the unknown one carries the better hint.
    err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = list(err["loc"])
    # Discriminated unions put the kind tag in the path; drop it and name the source instead.
    label, parent = [], data
    model: type[BaseModel] | None = StackConfig
    for i, part in enumerate(loc):
        if isinstance(part, int):
            label[-1] = f"{label[-1]}[{part}]"
            item = parent[part] if isinstance(parent, list) and part < len(parent) else {}
            if isinstance(item, dict) and "name" in item:
                label[-1] += f" ({item['name']})"
            parent = item
            if loc[0] == "sources":
                model = SOURCE_MODELS.get(item.get("kind")) if isinstance(item, dict) else None
            continue
        if i > 0 and loc[0] == "sources" and part in SOURCE_MODELS and i == 2:
            continue
        label.append(str(part))
        if isinstance(parent, dict):
            parent = parent.get(part, {})
        if loc[0] in ("vault", "encryption") and i == 0:
            model = VaultConfig if part == "vault" else EncryptionConfig
    field = ".".join(label) or "stack"
    if err["type"] == "extra_forbidden":
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(known)}"
        return ConfigError(f"{where}: unknown field '{field}'; {hint}")
    if err["type"] == "missing":
        return ConfigError(f"{where}: missing required field '{field}'; add it to the stack file")
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return ConfigError(f"{where}: '{field}' needs 'kind' as one of {', '.join(SOURCE_MODELS)}")
    msg = err["msg"].removeprefix("Value error, ")
    return ConfigError(f"{where}: field '{field}': {msg}")


def parse_stack(data: Any, where: str) -> StackConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a stack file is a mapping with vault, encryption and sources")
    encryption = data.get("encryption")
    for literal in LITERAL_SECRETS:
        if isinstance(encryption, dict) and encryption.get(literal) is not None:
            raise ConfigError(f"{where}: field 'encryption.{literal}': {literal_secret_error(literal)}")
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc, data, where) from None


def _interpolate_values(node: Any, where: str, env: dict[str, str] | None) -> Any:
    """Replace ${VAR} in string values only (never in comments or keys)."""
    if isinstance(node, dict):
        return {k: _interpolate_values(v, f"{where}.{k}", env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_values(v, f"{where}[{i}]", env) for i, v in enumerate(node)]
    if isinstance(node, str):
        return interpolate(node, where, env)
    return node


def load_stack_file(path: str | Path, env: dict[str, str] | None = None) -> StackConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"stack file {path}: {exc.strerror}; check the path") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"stack file {path}: not valid YAML{at}; fix the syntax") from None
    if isinstance(data, dict):
        data = {k: _interpolate_values(v, f"{path}: {k}", env) for k, v in data.items()}
    # Relative vault/files paths (and file: secret references) are relative to the stack file, not the cwd.
    base = path.resolve().parent
    if isinstance(data, dict) and isinstance(data.get("encryption"), dict):
        for ref in LITERAL_SECRETS.values():
            value = data["encryption"].get(ref)
            if isinstance(value, str) and value.startswith("file:") and not os.path.isabs(value[5:]):
                data["encryption"][ref] = f"file:{(base / value[5:]).resolve()}"
    stack = parse_stack(data, str(path))
    if not os.path.isabs(stack.vault.path):
        stack.vault.path = str((base / stack.vault.path).resolve())
    for src in stack.sources:
        if isinstance(src, FilesSourceConfig) and not os.path.isabs(src.root):
            src.root = str((base / src.root).resolve())
    return stack
