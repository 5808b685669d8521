"""Ed25519 signing keys: who wrote an audit entry or a deletion certificate, and who may act as admin.

Two roles, separated by keys rather than by a flag:

* the **host key** (``signing.key_from``): every host that runs flows signs the audit
  entries and the deletion certificates it writes with it. Unset, it is
  ``<state dir>/keys/signing.ed25519`` (``$GENESIS_DR_STATE_DIR``, else
  ``~/.local/state/genesis-dr``), created with mode 0600 on first use, so a fresh
  machine signs from its first backup on.
* the **admin key** (``signing.admin_key_from``): releasing a legal hold, deleting outside
  the policy, recording a GDPR erasure and acknowledging a failed audit need a signature by
  a key whose public half is listed in ``signing.admin_public_keys``. A record whose admin
  signature does not verify is ignored by every reader (a forged release keeps the hold).

Verifiers need public keys only: each signed record carries its signer's public key, and
``SigningConfig.trusted()`` says which signers the stack vouches for.

Key files hold the raw 32-byte private key in base64 on one line (as ``genesis-dr key
signing-new`` writes it); public keys are the raw 32 bytes in base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.crypto.secretref import check_ref, read_secret
from core.errors import SigningKeyError
from core.targets import state_dir

_RAW = serialization.Encoding.Raw


def _b64d(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{what} is not base64; give the 32-byte Ed25519 key in base64") from None
    if len(raw) != 32:
        raise SigningKeyError(f"{what} is {len(raw)} bytes, not a 32-byte Ed25519 key")
    return raw


def fingerprint(public_b64: str) -> str:
    """8 hex digits of SHA-256 of the raw public key: how records and messages name a signer."""
    return hashlib.sha256(_b64d(public_b64, "public key")).hexdigest()[:8]


def generate_signing_key() -> tuple[str, str]:
    """(private, public) as base64 of the raw 32-byte keys."""
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    raw_public = private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    return base64.b64encode(raw_private).decode(), base64.b64encode(raw_public).decode()


@dataclass(frozen=True)
class SigningKey:
    """A private Ed25519 key in memory (never printed: ``repr`` shows the fingerprint only)."""

    _private: Ed25519PrivateKey
    public_b64: str

    @classmethod
    def from_b64(cls, private_b64: str, what: str = "signing key") -> SigningKey:
        private = Ed25519PrivateKey.from_private_bytes(_b64d(private_b64, what))
        public = base64.b64encode(private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)).decode()
        return cls(private, public)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_b64)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._private.sign(data)).decode()

    def __repr__(self) -> str:
        return f"SigningKey(fingerprint={self.fingerprint})"


def verify_signature(public_b64: str, data: bytes, signature_b64: str) -> bool:
    """True if ``signature_b64`` is ``public_b64``'s signature of ``data``; False for any malformed input."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64, validate=True))
        key.verify(base64.b64decode(signature_b64, validate=True), data)
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return False
    return True


def default_key_path() -> str:
    return os.path.join(state_dir(), "keys", "signing.ed25519")


def _create_default_key(path: str) -> None:
    """Write a new host key at ``path`` (0600 in a 0700 directory), unless another process just did."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    private_b64, _ = generate_signing_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as out:
        out.write(private_b64 + "\n")
        out.flush()
        os.fsync(out.fileno())


def load_signing_key(ref: str | None, what: str) -> SigningKey:
    """The key ``ref`` points at (env:/file:/prompt); None: the host's default key file, created if absent."""
    if ref is None:
        path = default_key_path()
        if not os.path.exists(path):
            _create_default_key(path)
        ref = f"file:{path}"
    return SigningKey.from_b64(read_secret(ref, what), what)


def _public_keys(values: list[str]) -> list[str]:
    for value in values:
        _b64d(value, f"public key {value[:12]}...")
    return values


class SigningConfig(BaseModel):
    """Which Ed25519 keys sign audit entries and certificates, and which authorise admin actions (references
    to the private keys only, never their values)."""

    model_config = ConfigDict(extra="forbid")
    key_from: str | None = Field(
        None,
        description="Where this host's signing key is read (env:NAME, file:/path, prompt). Unset: "
        "<state dir>/keys/signing.ed25519, created on first use.",
    )
    admin_key_from: str | None = Field(
        None,
        description="Where the admin signing key is read, on the admin's machine only (hold release, deletion "
        "outside the policy, GDPR erasure, audit acknowledgement). Unset: those commands refuse.",
    )
    admin_public_keys: list[str] = Field(
        default_factory=list, description="Public keys (base64) whose signatures authorise admin actions."
    )
    trusted_public_keys: list[str] = Field(
        default_factory=list,
        description="Public keys (base64) of every host whose audit entries are trusted. Empty: any valid "
        "signature is accepted and its signer reported; non-empty: an entry by any other key fails 'audit verify'.",
    )

    @field_validator("key_from", "admin_key_from")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        return None if value is None else check_ref(value)

    @field_validator("admin_public_keys", "trusted_public_keys")
    @classmethod
    def _publics(cls, values: list[str]) -> list[str]:
        try:
            return _public_keys(values)
        except SigningKeyError as exc:
            raise ValueError(str(exc)) from None

    def host_key(self) -> SigningKey:
        """This host's signing key (the default file is created on first use)."""
        return load_signing_key(self.key_from, "signing.key_from (the host's audit signing key)")

    def admin_key(self, action: str) -> SigningKey:
        """The admin key, if it is configured here and listed as an admin; SigningKeyError naming ``action`` otherwise."""
        if self.admin_key_from is None:
            raise SigningKeyError(
                f"{action} needs the admin signing key, and this stack names none; set signing.admin_key_from "
                "(e.g. file:/path/admin.ed25519, made by 'genesis-dr key signing-new') on the admin's machine"
            )
        key = load_signing_key(self.admin_key_from, "signing.admin_key_from (the admin signing key)")
        if key.public_b64 not in self.admin_public_keys:
            raise SigningKeyError(
                f"{action}: the key in signing.admin_key_from (fingerprint {key.fingerprint}) is not listed in "
                f"signing.admin_public_keys; add its public key {key.public_b64} there and re-apply the stack"
            )
        return key

    def is_admin(self, public_b64: str) -> bool:
        return public_b64 in self.admin_public_keys

    def trusted(self) -> dict[str, str]:
        """fingerprint -> public key of every signer the stack vouches for (listed hosts and admins); empty
        means 'not strict' (see ``trusted_public_keys``).

        Only ``trusted_public_keys`` turns strict mode on: a stack that names an admin but not its hosts would
        otherwise reject every entry its own hosts sign, and retention would refuse to delete for ever."""
        if not self.trusted_public_keys:
            return {}
        return {fingerprint(k): k for k in [*self.trusted_public_keys, *self.admin_public_keys]}
