"""The chunk envelope: compress, then encrypt with AES-256-GCM.

Object layout (v1)::

    b"GDRC" | version (1 byte = 1) | codec (1 byte: 0 none, 1 zstd, 2 gzip) | nonce (12) | ciphertext+tag

Associated data binds the header, the backup id, the stream name, the chunk
index and whether this is the stream's final chunk, so chunks cannot be
reordered, swapped between streams or backups, or the stream truncated,
without the GCM tag failing.
"""

from __future__ import annotations

import gzip
import os
import zlib

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.errors import ConfigError, FormatError, IntegrityError

MAGIC = b"GDRC"
VERSION = 1
CODECS = {"none": 0, "zstd": 1, "gzip": 2}
CODEC_NAMES = {v: k for k, v in CODECS.items()}
HEADER_LEN = len(MAGIC) + 2 + 12
# zstd 1, not 3: on pg_dump output (benchmarks/backup_postgres.py) level 1 compresses about twice as
# fast and as small (smaller on numbers, JSON and bytea, ~4% larger on prose); a backup on a small
# host is CPU-bound, so the speed decides. The level is not part of the format: readers don't care.
DEFAULT_LEVELS = {"zstd": 1, "gzip": 3, "none": 0}


def codec_id(name: str) -> int:
    try:
        return CODECS[name]
    except KeyError:
        raise ConfigError(f"vault.compression: unknown codec {name!r}; use one of {', '.join(CODECS)}") from None


def _aad(header: bytes, backup_id: str, stream: str, index: int, final: bool) -> bytes:
    return header[: len(MAGIC) + 2] + f"|{backup_id}|{stream}|{index}|{int(final)}".encode()


class Sealer:
    """Compresses and encrypts the chunks of one backup (thread-safe per call)."""

    def __init__(self, data_key: bytes, backup_id: str, codec: str = "zstd", level: int | None = None) -> None:
        self._aead = AESGCM(data_key)
        self._backup_id = backup_id
        self._codec = codec_id(codec)
        self._level = DEFAULT_LEVELS[codec] if level is None else level

    def _compress(self, data: bytes) -> bytes:
        if self._codec == CODECS["zstd"]:
            return zstandard.ZstdCompressor(level=self._level).compress(data)
        if self._codec == CODECS["gzip"]:
            return gzip.compress(data, compresslevel=min(max(self._level, 1), 9), mtime=0)
        return data

    def seal(self, stream: str, index: int, final: bool, plaintext: bytes) -> bytes:
        header = MAGIC + bytes([VERSION, self._codec])
        nonce = os.urandom(12)
        body = self._aead.encrypt(nonce, self._compress(plaintext), _aad(header, self._backup_id, stream, index, final))
        return header + nonce + body

    def seal_blob(self, label: str, plaintext: bytes) -> bytes:
        """Encrypt a small named blob of this backup (e.g. the sealed checks)."""
        return self.seal(f"#{label}", 0, True, plaintext)


class Opener:
    """Verifies, decrypts and decompresses chunks of one backup."""

    def __init__(self, data_key: bytes, backup_id: str) -> None:
        self._aead = AESGCM(data_key)
        self._backup_id = backup_id

    def open(self, stream: str, index: int, final: bool, blob: bytes, where: str) -> bytes:
        if len(blob) < HEADER_LEN + 16 or blob[:4] != MAGIC:
            raise IntegrityError(
                f"{where}: not a genesis-dr chunk (bad header); the object is corrupt - restore from another backup or replica"
            )
        if blob[4] != VERSION:
            raise FormatError(
                f"{where}: chunk format version {blob[4]} is not supported by this genesis-dr (knows {VERSION}); upgrade genesis-dr"
            )
        codec = blob[5]
        if codec not in CODEC_NAMES:
            raise IntegrityError(f"{where}: unknown compression codec id {codec}; the object is corrupt")
        header, nonce, body = blob[:6], blob[6:HEADER_LEN], blob[HEADER_LEN:]
        try:
            compressed = self._aead.decrypt(nonce, body, _aad(header, self._backup_id, stream, index, final))
        except InvalidTag:
            raise IntegrityError(
                f"{where}: authentication failed (corrupt, truncated, reordered or from another backup); "
                "restore from another backup or replica"
            ) from None
        try:
            if codec == CODECS["zstd"]:
                return zstandard.ZstdDecompressor().decompress(compressed, max_output_size=1 << 31)
            if codec == CODECS["gzip"]:
                return gzip.decompress(compressed)
            return compressed
        except (zstandard.ZstdError, OSError, zlib.error) as exc:
            raise IntegrityError(f"{where}: decompression failed ({exc})") from None

    def open_blob(self, label: str, blob: bytes, where: str) -> bytes:
        return self.open(f"#{label}", 0, True, blob, where)
