"""The stack block composes the others; flows take only its name."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from blocks.keys import VaultKey
from blocks.sources import SOURCE_BLOCKS
from blocks.vault import LocalVault
from core.errors import ConfigError
from core.stack import StackConfig


class DRStack(Block):
    """A disaster-recovery stack: its sources, vault and keys, by block document name.

    Written by `genesis-dr apply FILE`; flows load it by name (default `default`).

    Example:
        ```python
        from blocks import DRStack
        config = DRStack.load("BLOCK_NAME").get_config()
        ```
    """

    _block_type_name = "DR Stack"

    sources: dict[str, str] = Field(description="Source name -> '<kind>:<block document name>'.")
    vault: str = Field(description="Name of the Local Vault block.")
    key: str = Field(description="Name of the Vault Key block.")

    def get_config(self) -> StackConfig:
        """Load every referenced block and assemble the core stack config."""
        sources = []
        for name, ref in self.sources.items():
            kind, _, doc = ref.partition(":")
            if kind not in SOURCE_BLOCKS:
                raise ConfigError(f"stack block: source {name!r} has unknown kind {kind!r}; re-run 'genesis-dr apply'")
            sources.append(SOURCE_BLOCKS[kind].load(doc).to_config())
        vault = LocalVault.load(self.vault)
        key = VaultKey.load(self.key)
        return StackConfig(
            stack=self._block_document_name or "default",
            vault={k: getattr(vault, k) for k in ("type", "path", "compression")},
            encryption={k: getattr(key, k) for k in ("passphrase", "x25519_public_keys", "x25519_private_key")},
            sources=sources,
        )
