"""Per-backup data keys and the recipients that wrap them.

Every backup gets a fresh random 256-bit data key. It is never stored in the
clear: each recipient wraps it with AES-256-GCM under a key-encryption key:

* ``passphrase``: KEK = PBKDF2-HMAC-SHA256(passphrase, 16-byte salt, iterations);
  600 000 iterations by default, recorded per recipient. Only the test knob
  ``GENESIS_DR_TEST_KDF_ITERATIONS`` may lower it.
* ``x25519``: an ephemeral X25519 key agrees with the recipient's public key;
  KEK = HKDF-SHA256(shared secret, info=ephemeral_pub || recipient_pub). A host
  holding only the public key can write backups it cannot read.

* ``aws-kms``: AWS KMS wraps it (``core.crypto.kms``); a backup with a KMS key gets
  its data key from KMS GenerateDataKey, and the other recipients wrap that key.

The wrap's associated data (for KMS: its encryption context) binds the backup id, so a wrapped key cannot be
moved to another backup. Destroying a backup's key file is crypto-shredding.

Passphrases are NFC-normalised before derivation (a wrap written before that,
from a non-NFC passphrase, still opens: the raw form is tried second). A
keyring may hold references (``passphrase_from``, ``private_key_from``, see
``core.crypto.secretref``) instead of values; they are read on first use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from core.crypto.kms import RECIPIENT_TYPE as KMS_RECIPIENT
from core.crypto.kms import AwsKms, KmsKeyConfig, record_region
from core.crypto.secretref import check_new_passphrase, normalize_passphrase, read_secret
from core.errors import ConfigError, DRError, FormatError, WrongKeyError

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


def _passphrase_forms(passphrase: str) -> list[str]:
    """NFC first (what new wraps use), then the raw form a wrap made before normalisation used."""
    nfc = normalize_passphrase(passphrase)
    return [nfc] if nfc == passphrase else [nfc, passphrase]


_KEY_CHECK_INFO = b"genesis-dr/v1/key-check"


def new_key_check(passphrase: str, created_at: str) -> dict:
    """A key-check record for ``passphrase``: lets a writer tell the vault's passphrase from another.

    check = HMAC-SHA256(PBKDF2(NFC passphrase, random salt), "genesis-dr/v1/key-check"). It
    opens nothing (every wrap has its own salt) and costs a guesser exactly what a
    backup's keys.json already costs; key_id (8 hex of SHA-256 of the check) names
    the key in listings.
    """
    salt, iterations = os.urandom(16), kdf_iterations()
    check = hmac.new(_pbkdf2(normalize_passphrase(passphrase), salt, iterations), _KEY_CHECK_INFO, "sha256").digest()
    return {
        "version": 1,
        "kdf": "pbkdf2-hmac-sha256",
        "iterations": iterations,
        "salt": b64e(salt),
        "check": b64e(check),
        "key_id": hashlib.sha256(check).hexdigest()[:8],
        "created_at": created_at,
    }


def key_check_matches(passphrase: str, record: dict) -> bool:
    """Whether ``passphrase`` is the one ``record`` was made from (one KDF run)."""
    if record.get("kdf") != "pbkdf2-hmac-sha256":
        raise FormatError(f"key check {record.get('key_id')!r}: unknown key derivation {record.get('kdf')!r}")
    try:
        salt, iterations, expected = b64d(record["salt"]), int(record["iterations"]), b64d(record["check"])
    except (KeyError, ValueError, TypeError):
        raise FormatError("the vault's key-check record is malformed; restore it from a replica") from None
    kek = _pbkdf2(normalize_passphrase(passphrase), salt, iterations)
    return hmac.compare_digest(hmac.new(kek, _KEY_CHECK_INFO, "sha256").digest(), expected)


@dataclass
class Keyring:
    """The keys one process holds. Writers need a passphrase or a public key;
    readers need the passphrase or a matching private key.

    ``passphrase_from`` / ``private_key_from`` are references (env:, file:,
    prompt) read on first use; a passphrase read that way must meet the policy
    (``check_new_passphrase``) to wrap new backups, but any passphrase opens old ones.
    """

    passphrase: str | None = None
    public_keys: list[str] = field(default_factory=list)
    private_keys: list[str] = field(default_factory=list)
    passphrase_from: str | None = None
    private_key_from: str | None = None
    stack: str | None = None  # the stack these keys belong to, for remedies in messages
    kms_keys: list[KmsKeyConfig] = field(default_factory=list)  # wrap new backups; their access opens KMS recipients
    _read: str | None = field(default=None, repr=False, compare=False)
    _kms: dict = field(default_factory=dict, repr=False, compare=False)
    _kms_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __repr__(self) -> str:  # never show key material
        return (
            f"Keyring(passphrase={'set' if self.passphrase else self.passphrase_from or 'unset'}, "
            f"public_keys={len(self.public_keys)}, private_keys={len(self.private_keys)}, kms_keys={len(self.kms_keys)}"
            f"{', private_key_from=' + self.private_key_from if self.private_key_from else ''})"
        )

    def has_passphrase(self) -> bool:
        return bool(self.passphrase or self.passphrase_from)

    def can_write(self) -> bool:
        return bool(self.has_passphrase() or self.public_keys or self.kms_keys)

    # -- KMS -------------------------------------------------------------------------------

    def _kms_service(self, config: KmsKeyConfig) -> AwsKms:
        key = (config.endpoint_url, config.credentials)
        with self._kms_lock:  # one run's tasks share the keyring: one client (and one retry count) per endpoint
            if key not in self._kms:
                self._kms[key] = AwsKms(config.endpoint_url, config.credentials)
            return self._kms[key]

    def _kms_for_region(self, region: str) -> AwsKms | None:
        """Who opens a KMS recipient: the endpoint and credentials of a configured key in its region,
        else of the first configured key; None when the keyring names no KMS key (never guessed)."""
        if not self.kms_keys:
            return None
        chosen = next((k for k in self.kms_keys if k.region == region), self.kms_keys[0])
        return self._kms_service(chosen)

    def kms_retried(self) -> int:
        """KMS throttling/5xx faults absorbed by retries so far."""
        with self._kms_lock:
            return sum(service.retried for service in self._kms.values())

    def new_data_key(self, wrap_id: str, passphrase_key_id: str | None = None) -> tuple[bytes, list[dict]]:
        """A fresh data key for ``wrap_id`` and its recipient records: from KMS GenerateDataKey on the
        first KMS key when the keyring has one (random otherwise), wrapped for every other key."""
        if not self.can_write():
            self.wrap(wrap_id, b"", passphrase_key_id)  # raises the remedy
        if not self.kms_keys:
            data_key = os.urandom(DATA_KEY_BYTES)
            return data_key, self.wrap(wrap_id, data_key, passphrase_key_id)
        first = self.kms_keys[0]
        data_key, record = self._kms_service(first).generate(first, wrap_id)
        if len(data_key) != DATA_KEY_BYTES:
            raise FormatError(f"KMS key {first.key_id} returned a {len(data_key)}-byte data key, not {DATA_KEY_BYTES}")
        return data_key, [record] + self.wrap(wrap_id, data_key, passphrase_key_id, kms_from=1)

    def descriptor(self, passphrase_key_id: str | None) -> list[list[str]]:
        """What a keys.json wrapped by this keyring names, comparable with ``recipients_descriptor``."""
        out = [["passphrase", passphrase_key_id or ""]] if self.has_passphrase() else []
        out += [["x25519", b64e(b64d(p.strip()))] for p in self.public_keys]
        out += [[KMS_RECIPIENT, k.key_id] for k in self.kms_keys]
        return sorted(out)

    def read_passphrase(self) -> str | None:
        """The passphrase, read from its reference on first use (ConfigError if it cannot be)."""
        if self.passphrase:
            return self.passphrase
        if self.passphrase_from:
            if self._read is None:
                self._read = read_secret(self.passphrase_from, "encryption.passphrase_from")
            return self._read or None
        return None

    def write_passphrase(self) -> str | None:
        """The NFC passphrase new backups are wrapped with (None without one); a referenced
        passphrase that is whitespace-only or too short is refused."""
        if self.passphrase:
            return normalize_passphrase(self.passphrase)
        if not self.passphrase_from:
            return None
        return check_new_passphrase(self.read_passphrase() or "", f"encryption.passphrase_from {self.passphrase_from}")

    def _private_keys(self) -> list[X25519PrivateKey]:
        texts = list(self.private_keys)
        if self.private_key_from:
            texts.append(read_secret(self.private_key_from, "encryption.x25519_private_key_from"))
        return [_load_private(p) for p in texts]

    def key_ids(self, passphrase_key_id: str | None) -> list[str]:
        """Short names of the keys a new backup is wrapped with (for `genesis-dr list`)."""
        ids = [f"passphrase:{passphrase_key_id}"] if passphrase_key_id else []
        ids += [f"x25519:{fingerprint(p)[:8]}" for p in self.public_keys]
        return ids + [f"{KMS_RECIPIENT}:{k.label()}" for k in self.kms_keys]

    def wrap(
        self, backup_id: str, data_key: bytes, passphrase_key_id: str | None = None, *, kms_from: int = 0
    ) -> list[dict]:
        """Recipient records wrapping ``data_key`` for every key this keyring writes to (KMS keys from
        ``kms_from`` on: ``new_data_key`` has the first one already)."""
        if not self.can_write():
            raise ConfigError(
                "encryption: no passphrase, X25519 public key or KMS key configured; set encryption.passphrase_from "
                "(default env:BACKUP_ENCRYPTION_PASSWORD), encryption.x25519_public_keys or encryption.kms_keys in "
                "the stack file"
            )
        recipients: list[dict] = [
            self._kms_service(k).encrypt(k, backup_id, data_key) for k in self.kms_keys[kms_from:]
        ]
        passphrase = self.write_passphrase()
        if passphrase:
            salt, nonce, iterations = os.urandom(16), os.urandom(12), kdf_iterations()
            kek = _pbkdf2(passphrase, salt, iterations)
            record = {
                "type": "passphrase",
                "kdf": "pbkdf2-hmac-sha256",
                "iterations": iterations,
                "salt": b64e(salt),
                "nonce": b64e(nonce),
                "wrapped_key": b64e(AESGCM(kek).encrypt(nonce, data_key, _aad(backup_id, "passphrase"))),
            }
            if passphrase_key_id:
                record["key_id"] = passphrase_key_id
            recipients.append(record)
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
        """The backup's data key, or WrongKeyError if no key we hold opens it.

        A key whose reference cannot be read (variable unset, file refused) is
        skipped so another key can open the backup; if none could be read at all,
        the first reason is raised (it says what to fix).
        """
        tried: list[str] = []
        unreadable: list[ConfigError] = []
        refused: list[DRError] = []  # KMS refusals (disabled, denied, ...): raised when nothing else opens it
        passphrase = privates = None
        if any(r.get("type") == "passphrase" for r in recipients) and self.has_passphrase():
            try:
                passphrase = self.read_passphrase()
            except ConfigError as exc:
                unreadable.append(exc)
        if any(r.get("type") == "x25519" for r in recipients):
            try:
                privates = self._private_keys()
            except ConfigError as exc:
                unreadable.append(exc)
        for rec in recipients:
            kind = rec.get("type")
            try:
                if kind == "passphrase" and passphrase:
                    tried.append("passphrase")
                    if rec.get("kdf") != "pbkdf2-hmac-sha256":
                        raise FormatError(f"backup {backup_id}: unknown key derivation {rec.get('kdf')!r}")
                    for form in _passphrase_forms(passphrase):
                        kek = _pbkdf2(form, b64d(rec["salt"]), int(rec["iterations"]))
                        try:
                            return AESGCM(kek).decrypt(
                                b64d(rec["nonce"]), b64d(rec["wrapped_key"]), _aad(backup_id, kind)
                            )
                        except InvalidTag:
                            continue
                    continue
                if kind == "x25519":
                    for private in privates or []:
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
        # KMS last: the keys held here cost no network call, and a KMS outage must not block them.
        for rec in recipients:
            if rec.get("type") != KMS_RECIPIENT:
                continue
            try:
                service = self._kms_for_region(record_region(rec))
            except (KeyError, ValueError):
                service = None
            if service is None:
                continue
            tried.append(f"KMS key {rec.get('key_id')}")
            try:
                return service.decrypt(rec, backup_id)
            except DRError as exc:
                refused.append(exc)
            except (KeyError, ValueError) as exc:
                raise FormatError(
                    f"backup {backup_id}: key file is malformed ({exc}); the backup cannot be opened"
                ) from None
        if refused:
            raise refused[0]
        if not tried and unreadable:
            raise unreadable[0]
        held = ", ".join(tried) if tried else "no matching key"
        raise WrongKeyError(
            f"backup {backup_id}: wrong passphrase or private key (tried: {held}); set the passphrase or X25519 "
            "private key this backup was written with"
            + (
                ", or name its KMS key in encryption.kms_keys"
                if any(r.get("type") == KMS_RECIPIENT for r in recipients)
                else ""
            )
        )


def recipients_descriptor(recipients: list[dict]) -> list[list[str]]:
    """What a keys.json is wrapped for (no secret, no crypto): passphrase key ids, X25519 public keys,
    KMS keys as the stack named them. A rotation compares it with ``Keyring.descriptor``."""
    out = []
    for rec in recipients:
        kind = rec.get("type")
        if kind == "passphrase":
            out.append(["passphrase", str(rec.get("key_id") or "")])
        elif kind == "x25519":
            out.append(["x25519", str(rec.get("recipient"))])
        elif kind == KMS_RECIPIENT:
            out.append([KMS_RECIPIENT, str(rec.get("key") or rec.get("key_id"))])
        else:
            out.append([str(kind), ""])
    return sorted(out)


def fingerprint(public_key_b64: str) -> str:
    """Short, stable name for a public key (safe to log)."""
    return hashlib.sha256(b64d(public_key_b64.strip())).hexdigest()[:16]
