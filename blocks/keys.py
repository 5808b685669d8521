"""Encryption keys by reference: where the passphrase and private key are read, never their values.

A leaked Prefect database (or any local process that asks the API for block
secrets) learns ``env:BACKUP_ENCRYPTION_PASSWORD`` or a file's path, not the key
that opens the vault; the public keys it holds open nothing.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from core.crypto.keys import Keyring
from core.stack import EncryptionConfig


class VaultKey(Block, EncryptionConfig):
    """Which keys wrap each backup's data key, and where the secret ones are read at use time.

    Holds references only (env:NAME, file:/path, prompt); a writer-only host needs just the public keys.

    Example:
        ```python
        from blocks import VaultKey
        keyring = VaultKey.load("BLOCK_NAME").get_keyring()
        ```
    """

    _block_type_name = "Vault Key"

    def get_keyring(self) -> Keyring:
        """The core keyring; it reads the referenced secrets only when a backup or restore uses them."""
        return EncryptionConfig.model_validate({k: getattr(self, k) for k in EncryptionConfig.model_fields}).keyring()
