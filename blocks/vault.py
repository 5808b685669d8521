"""Where backups go."""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from core.repository.vault import Vault
from core.stack import VaultConfig


class LocalVault(Block):
    """A vault in a local (or mounted) directory.

    Example:
        ```python
        from blocks import LocalVault
        vault = LocalVault.load("BLOCK_NAME").get_vault()
        ```
    """

    _block_type_name = "Local Vault"

    type: Literal["local"] = Field("local", description="Always 'local' for this block.")
    path: str = Field(description="Directory of the vault (created on first backup).")
    compression: Literal["zstd", "gzip"] = Field("zstd", description="Codec for new chunks: zstd (default) or gzip.")

    def to_config(self) -> VaultConfig:
        """The core vault configuration this block describes."""
        return VaultConfig(type="local", path=self.path, compression=self.compression)

    def get_vault(self, create: bool = False) -> Vault:
        """Open the vault (format version checked); ``create`` makes a new one if absent."""
        return self.to_config().open(create)
