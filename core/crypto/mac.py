"""HMAC-SHA256 over a record's canonical JSON, under a key derived from a data key.

Manifests and log piece records are in the clear (listings read them without keys); their MAC
lets a reader holding the data key detect any edit. Each kind of record derives its own MAC key
(HKDF ``info``), so a MAC of one kind never validates another.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def record_mac(data_key: bytes, info: bytes, canonical: bytes) -> str:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def mac_matches(data_key: bytes, info: bytes, canonical: bytes, mac: str | None) -> bool:
    return bool(mac) and hmac.compare_digest(record_mac(data_key, info, canonical), mac)
