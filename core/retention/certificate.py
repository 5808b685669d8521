"""Deletion certificates: the signed proof of what retention (or an erasure) destroyed, and why.

One certificate per deleted backup or log range, stored at ``certificates/<cert id>.json``
in the primary vault (and each replica it was deleted from). It names what was deleted
(every object with the SHA-256 its manifest or piece record stored), from which stores,
when, by which method, for which reason and under which authority (the policy rule, an
erasure request, an admin), and is signed with the host's Ed25519 key over its canonical
JSON (sorted keys, no spaces, ``sig`` left out), so an auditor holding only public keys
can tell an intact certificate from an edited or forged one.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime

from core.crypto.signing import SigningKey, fingerprint, verify_signature
from core.errors import AuditTrailError, SigningKeyError
from core.storage.base import ObjectNotFound, Store

PREFIX = "certificates/"
CERT_VERSION = 1


def new_certificate_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"cert-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


@dataclass
class Certificate:
    """What was deleted, which hashes, when, why, how, by which policy or request (see the module doc)."""

    id: str
    subject: str  # a backup id, or "log:<source>:<first>-<last>"
    source: str
    kind: str
    objects: list[dict]  # {"key", "sha256" ("" when no record stored one), "size"}
    stores: list[str]  # describe() of every store it was deleted from
    method: str  # "crypto-shred + delete", "crypto-shred + overwrite(3) + unlink"
    reason: str
    authority: str  # the policy rule, "erasure <request id>" or "admin <fingerprint>"
    deleted_at: str
    signer: str = ""  # the signer's public key (base64)
    sig: str = ""
    version: int = field(default=CERT_VERSION)

    def to_dict(self) -> dict:
        return asdict(self)

    def canonical(self, with_sig: bool = True) -> bytes:
        data = self.to_dict()
        if not with_sig:
            data.pop("sig")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: dict) -> Certificate:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise AuditTrailError(
                f"certificate {data.get('id', '?')}: unknown fields {sorted(unknown)} (altered, or written by a newer "
                "genesis-dr)"
            )
        try:
            return cls(**data)
        except TypeError:
            raise AuditTrailError(
                f"certificate {data.get('id', '?')}: fields are missing (altered or corrupt)"
            ) from None


def sign_certificate(cert: Certificate, key: SigningKey) -> Certificate:
    """``cert`` signed by ``key`` (the host key): its public key in ``signer``, the signature in ``sig``."""
    cert.signer = key.public_b64
    cert.sig = key.sign(cert.canonical(with_sig=False))
    return cert


def verify_certificate(data: dict, trusted: dict[str, str]) -> None:
    """Raise AuditTrailError (one line naming the certificate) unless ``data`` is an intact certificate signed by a
    trusted key. ``trusted`` (fingerprint -> public key, ``SigningConfig.trusted()``) empty: any valid signature."""
    if not isinstance(data, dict):
        raise AuditTrailError("certificate: not a JSON object (altered or corrupt)")
    cert = Certificate.from_dict(data)
    if not cert.signer or not cert.sig:
        raise AuditTrailError(f"certificate {cert.id}: unsigned; it proves nothing (altered or forged)")
    if not verify_signature(cert.signer, cert.canonical(with_sig=False), cert.sig):
        raise AuditTrailError(
            f"certificate {cert.id} ({cert.subject}): its signature does not match its content (altered or forged)"
        )
    if trusted:
        try:
            signer = fingerprint(cert.signer)
        except SigningKeyError:
            raise AuditTrailError(f"certificate {cert.id}: its signer is not an Ed25519 public key") from None
        if trusted.get(signer) != cert.signer:
            raise AuditTrailError(
                f"certificate {cert.id} ({cert.subject}): signed by key {signer}, which the stack does not trust; "
                "list it in signing.trusted_public_keys if that host is yours"
            )


def write_certificate(store: Store, cert: Certificate) -> bool:
    """Store ``cert`` (create-if-absent: a certificate is never rewritten); False if it was there already."""
    return (
        store.create(f"{PREFIX}{cert.id}.json", json.dumps(cert.to_dict(), sort_keys=True, indent=1).encode())
        is not None
    )


def read_certificate(store: Store, cert_id: str) -> dict | None:
    try:
        return json.loads(store.get(f"{PREFIX}{cert_id}.json"))
    except ObjectNotFound:
        return None
    except ValueError:
        raise AuditTrailError(f"certificate {cert_id}: not valid JSON (altered or corrupt)") from None


def certificates(store: Store) -> list[dict]:
    """Every certificate in ``store``, oldest first (ids begin with their UTC time); not verified here."""
    out = []
    for key in store.list(PREFIX):
        if key.endswith(".json"):
            cert = read_certificate(store, key[len(PREFIX) : -len(".json")])
            if cert is not None:
                out.append(cert)
    return out
