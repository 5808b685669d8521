"""Where backups go."""

from __future__ import annotations

from prefect.blocks.core import Block

from core.repository.vault import Vault
from core.stack import VaultConfig


class LocalVault(Block, VaultConfig):
    """A vault in a local (or mounted) directory.

    Example:
        ```python
        from blocks import LocalVault
        vault = LocalVault.load("BLOCK_NAME").get_vault()
        ```
    """

    _block_type_name = "Local Vault"

    def get_vault(self, create: bool = False) -> Vault:
        """Open the vault (format version checked); ``create`` makes a new one if absent."""
        return VaultConfig.model_validate({k: getattr(self, k) for k in VaultConfig.model_fields}).open(create)
