"""Encryption keys: a passphrase and/or X25519 keys (all secret fields)."""

from __future__ import annotations

from prefect.blocks.core import Block

from core.crypto.keys import Keyring
from core.stack import EncryptionConfig


class VaultKey(Block, EncryptionConfig):
    """Keys that wrap each backup's data key. A writer-only host holds just the public key.

    Example:
        ```python
        from blocks import VaultKey
        keyring = VaultKey.load("BLOCK_NAME").get_keyring()
        ```
    """

    _block_type_name = "Vault Key"

    def get_keyring(self) -> Keyring:
        """The core keyring (never logged: its repr hides key material)."""
        return EncryptionConfig.model_validate({k: getattr(self, k) for k in EncryptionConfig.model_fields}).keyring()
