"""Encryption keys by reference: where the passphrase and private key are read, never their values.

A leaked Prefect database (or any local process that asks the API for block
secrets) learns ``env:BACKUP_ENCRYPTION_PASSWORD`` or a file's path, not the key
that opens the vault; the public keys it holds open nothing.
"""

from __future__ import annotations

from prefect.blocks.core import Block

from core.crypto.keys import Keyring
from core.crypto.kms import set_credentials_resolver
from core.stack import EncryptionConfig


def aws_session(block_name: str):
    """The boto3 Session of the prefect-aws AwsCredentials block ``block_name`` (a KMS key's ``credentials``)."""
    from prefect.exceptions import ObjectNotFound
    from prefect_aws import AwsCredentials

    from core.errors import ConfigError

    try:
        return AwsCredentials.load(block_name).get_boto3_session()
    except (ValueError, ObjectNotFound):
        raise ConfigError(
            f"encryption.kms_keys: no AwsCredentials block named {block_name!r}; create it (prefect block create "
            "aws-credentials) or drop credentials to use boto3's default chain"
        ) from None


# Core reads a KMS key's credentials block through this, at first use.
set_credentials_resolver(aws_session)


class VaultKey(Block, EncryptionConfig):
    """Which keys wrap each backup's data key, and where the secret ones are read at use time.

    Holds references only (env:NAME, file:/path, prompt) and KMS key ids; a writer-only host needs just the
    public keys (or a KMS key it may only GenerateDataKey with).

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
