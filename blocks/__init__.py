"""Prefect Block types: configuration and credentials only, one factory method each."""

from blocks.keys import VaultKey
from blocks.notifications import NotificationChannels
from blocks.sources import BucketSource, FilesSource, MySQLSource, PostgresSource, RedisSource
from blocks.stack import DRStack
from blocks.vault import GcsVault, LocalVault, S3Vault

__all__ = [
    "BucketSource",
    "DRStack",
    "FilesSource",
    "GcsVault",
    "LocalVault",
    "S3Vault",
    "MySQLSource",
    "NotificationChannels",
    "PostgresSource",
    "RedisSource",
    "VaultKey",
]
