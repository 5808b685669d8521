"""Blocks as the Prefect UI and operators see them: described fields, code examples,
secrets that stay secret, and a stack that reloads as the right types."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from blocks import (
    DRStack,
    FilesSource,
    GcsVault,
    LocalVault,
    MySQLSource,
    NotificationChannels,
    PostgresSource,
    RedisSource,
    S3Vault,
    VaultKey,
)

ALL_BLOCKS = [
    DRStack,
    FilesSource,
    GcsVault,
    LocalVault,
    MySQLSource,
    NotificationChannels,
    PostgresSource,
    RedisSource,
    S3Vault,
    VaultKey,
]


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.__name__)
def test_block_is_documented(block):
    assert block.get_description()
    for name, field in block.model_fields.items():
        assert field.description and field.description.endswith("."), f"{block.__name__}.{name} needs a description"
    example = block.get_code_example()
    assert re.search(rf"from .* import {block.__name__}", example)
    assert re.search(rf'.* = {block.__name__}\.load\("BLOCK_NAME"\)', example)


def test_stack_blocks_round_trip_and_keep_secrets_secret(make_stack, tmp_path):
    from blocks.apply import load_stack
    from core.sources import MySQLSourceConfig, PostgresSourceConfig, RedisSourceConfig

    stack = make_stack(
        [
            PostgresSourceConfig(name="db", password=SecretStr("pg-Secret-1"), database="app"),
            MySQLSourceConfig(name="my", password=SecretStr("my-Secret-2"), database="shop"),
            RedisSourceConfig(name="cache", password=SecretStr("redis-Secret-3"), mode="logical"),
        ]
    )
    loaded = load_stack(stack.name)
    assert [type(s).__name__ for s in loaded.sources] == [
        "PostgresSourceConfig",
        "MySQLSourceConfig",
        "RedisSourceConfig",
    ]
    assert loaded.source("db").password.get_secret_value() == "pg-Secret-1"
    assert loaded.source("cache").mode == "logical"
    assert loaded.encryption.passphrase_from == f"file:{tmp_path / ('passphrase-' + stack.name)}"
    text = repr(loaded) + str(loaded.model_dump()) + repr(PostgresSource.load(f"{stack.name}-db"))
    for secret in ("pg-Secret-1", "my-Secret-2", "redis-Secret-3", stack.passphrase):
        assert secret not in text


def test_stack_block_links_its_vault_and_key_and_names_its_source_blocks(make_stack):
    """The stack's document holds its vault and keys as nested block references (the UI links them;
    they load with the stack), and each source as its block's slug; everything reloads as its own type."""
    from prefect.client.orchestration import get_client

    from blocks.apply import load_stack
    from core.sources import PostgresSourceConfig, RedisSourceConfig

    stack = make_stack(
        [
            PostgresSourceConfig(name="db", password=SecretStr("pg-Secret-4"), database="app"),
            RedisSourceConfig(name="cache", mode="logical"),
            RedisSourceConfig(name="cache-2", port=6380, mode="rdb"),
        ]
    )
    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(stack.name, block_type_slug="dr-stack", include_secrets=False)
        vault_doc = client.read_block_document_by_name(stack.name, block_type_slug="local-vault")
        key_doc = client.read_block_document_by_name(stack.name, block_type_slug="vault-key")
    refs = {name: str(ref["block_document"]["id"]) for name, ref in doc.block_document_references.items()}
    assert refs == {"vault": str(vault_doc.id), "key": str(key_doc.id)}
    assert doc.data["sources"] == {
        "db": f"postgres-source/{stack.name}-db",
        "cache": f"redis-source/{stack.name}-cache",
        "cache-2": f"redis-source/{stack.name}-cache-2",
    }
    assert "pg-Secret-4" not in repr(doc.data)

    block = DRStack.load(stack.name)
    assert type(block.vault) is LocalVault and type(block.key) is VaultKey
    assert block.vault.path == str(stack.vault_path)
    loaded = load_stack(stack.name)
    assert [(type(s).__name__, s.name) for s in loaded.sources] == [
        ("PostgresSourceConfig", "db"),
        ("RedisSourceConfig", "cache"),
        ("RedisSourceConfig", "cache-2"),
    ]
    assert loaded.source("db").password.get_secret_value() == "pg-Secret-4"
    assert (loaded.source("cache-2").port, loaded.source("cache-2").mode) == (6380, "rdb")
