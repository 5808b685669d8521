"""Per-backup data keys and the recipients that wrap them.

Every backup gets a fresh random 256-bit data key. It is never stored in the
clear: each recipient wraps it with AES-256-GCM under a key-encryption key:

* ``passphrase``: KEK = PBKDF2-HMAC-SHA256(passphrase, 16-byte salt, iterations);
  600 000 iterations by default, recorded per recipient. Only the test knob
  ``GENESIS_DR_TEST_KDF_ITERATIONS`` may lower it.
* ``x25519``: an ephemeral X25519 key agrees with the recipient's public key;
  KEK = HKDF-SHA256(shared secret, info=ephemeral_pub || recipient_pub). A host
  holding only the public key can write backups it cannot read.

The wrap's associated data binds the backup id, so a wrapped key cannot be
moved to another backup. Destroying a backup's key file is crypto-shredding.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from core.errors import ConfigError, FormatError, WrongKeyError

DEFAULT_KDF_ITERATIONS = 600_000
DATA_KEY_BYTES = 32


def kdf_iterations() -> int:
    """Iterations for new passphrase wraps (test knob may lower, never below 1000)."""
    knob = os.environ.get("GENESIS_DR_TEST_KDF_ITERATIONS")
    if knob:
        return max(1000, int(knob))
    return DEFAULT_KDF_ITERATIONS


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def generate_x25519_keypair() -> tuple[str, str]:
    """(private, public) as base64 of the raw 32-byte keys."""
    private = X25519PrivateKey.generate()
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64e(raw_private), b64e(raw_public)


def _load_public(text: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(b64d(text.strip()))
    except Exception:
        raise ConfigError(
            "encryption.x25519_public_keys: not a base64 X25519 public key; generate one with 'genesis-dr key generate'"
        ) from None


def _load_private(text: str) -> X25519PrivateKey:
    try:
        return X25519PrivateKey.from_private_bytes(b64d(text.strip()))
    except Exception:
        raise ConfigError(
            "encryption.x25519_private_key: not a base64 X25519 private key; use the private half printed by "
            "'genesis-dr key generate'"
        ) from None


def _public_raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _hkdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"genesis-dr/v1/x25519|" + info).derive(shared)


def _pbkdf2(passphrase: str, salt: bytes, iterations: int) -> bytes:
    return PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations).derive(
        passphrase.encode("utf-8")
    )


def _aad(backup_id: str, kind: str) -> bytes:
    return f"genesis-dr/v1/wrap|{backup_id}|{kind}".encode()


@dataclass
class Keyring:
    """The keys one process holds. Writers need a passphrase or a public key;
    readers need the passphrase or a matching private key."""

    passphrase: str | None = None
    public_keys: list[str] = field(default_factory=list)
    private_keys: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # never show key material
        return (
            f"Keyring(passphrase={'set' if self.passphrase else 'unset'}, public_keys={len(self.public_keys)}, "
            f"private_keys={len(self.private_keys)})"
        )

    def can_write(self) -> bool:
        return bool(self.passphrase or self.public_keys)

    def wrap(self, backup_id: str, data_key: bytes) -> list[dict]:
        """Recipient records wrapping ``data_key`` for every key this keyring writes to."""
        if not self.can_write():
            raise ConfigError(
                "encryption: no passphrase and no X25519 public key configured; set encryption.passphrase "
                "(or BACKUP_ENCRYPTION_PASSWORD) or encryption.x25519_public_keys in the stack file"
            )
        recipients: list[dict] = []
        if self.passphrase:
            salt, nonce, iterations = os.urandom(16), os.urandom(12), kdf_iterations()
            kek = _pbkdf2(self.passphrase, salt, iterations)
            recipients.append(
                {
                    "type": "passphrase",
                    "kdf": "pbkdf2-hmac-sha256",
                    "iterations": iterations,
                    "salt": b64e(salt),
                    "nonce": b64e(nonce),
                    "wrapped_key": b64e(AESGCM(kek).encrypt(nonce, data_key, _aad(backup_id, "passphrase"))),
                }
            )
        for text in self.public_keys:
            recipient = _load_public(text)
            ephemeral = X25519PrivateKey.generate()
            eph_pub, rcpt_pub = _public_raw(ephemeral.public_key()), _public_raw(recipient)
            kek = _hkdf(ephemeral.exchange(recipient), eph_pub + rcpt_pub)
            nonce = os.urandom(12)
            recipients.append(
                {
                    "type": "x25519",
                    "recipient": b64e(rcpt_pub),
                    "ephemeral_public": b64e(eph_pub),
                    "nonce": b64e(nonce),
                    "wrapped_key": b64e(AESGCM(kek).encrypt(nonce, data_key, _aad(backup_id, "x25519"))),
                }
            )
        return recipients

    def unwrap(self, backup_id: str, recipients: list[dict]) -> bytes:
        """The backup's data key, or WrongKeyError if no key we hold opens it."""
        tried: list[str] = []
        privates = [_load_private(p) for p in self.private_keys]
        for rec in recipients:
            kind = rec.get("type")
            try:
                if kind == "passphrase" and self.passphrase:
                    tried.append("passphrase")
                    if rec.get("kdf") != "pbkdf2-hmac-sha256":
                        raise FormatError(f"backup {backup_id}: unknown key derivation {rec.get('kdf')!r}")
                    kek = _pbkdf2(self.passphrase, b64d(rec["salt"]), int(rec["iterations"]))
                    return AESGCM(kek).decrypt(b64d(rec["nonce"]), b64d(rec["wrapped_key"]), _aad(backup_id, kind))
                if kind == "x25519":
                    for private in privates:
                        if _public_raw(private.public_key()) != b64d(rec["recipient"]):
                            continue
                        tried.append("x25519 private key")
                        eph_pub = b64d(rec["ephemeral_public"])
                        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
                        kek = _hkdf(shared, eph_pub + b64d(rec["recipient"]))
                        return AESGCM(kek).decrypt(b64d(rec["nonce"]), b64d(rec["wrapped_key"]), _aad(backup_id, kind))
            except InvalidTag:
                continue
            except (KeyError, ValueError) as exc:
                raise FormatError(
                    f"backup {backup_id}: key file is malformed ({exc}); the backup cannot be opened"
                ) from None
        held = ", ".join(tried) if tried else "no matching key"
        raise WrongKeyError(
            f"backup {backup_id}: wrong passphrase or private key (tried: {held}); set the passphrase or X25519 "
            "private key this backup was written with"
        )


def fingerprint(public_key_b64: str) -> str:
    """Short, stable name for a public key (safe to log)."""
    return hashlib.sha256(b64d(public_key_b64.strip())).hexdigest()[:16]
