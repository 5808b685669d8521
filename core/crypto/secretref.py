"""Where a secret lives, and reading it at the moment it is needed.

The stack file (and the Vault Key block) hold only a *reference* such as
``env:BACKUP_ENCRYPTION_PASSWORD``, ``file:/etc/genesis-dr/passphrase`` or
``prompt``; the value is read by the process that uses it, when it uses it, and
is never written to Prefect. So a leaked Prefect database, or any local process
that can query the API, learns where the key is, not the key.

Schemes:

* ``env:NAME``: the environment variable NAME of the using process.
* ``file:PATH``: a regular file owned by the user running genesis-dr, mode
  0600 or 0400 (no group or other bits); anything else is refused, as ssh does
  with private keys. One trailing newline is dropped.
* ``prompt``: asked on the terminal (once per process); refused without one.

A KMS (``kms:...``) is a later issue: add a reader to ``READERS`` and its
scheme to the error message; nothing else needs to change.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
import threading
import unicodedata
from collections.abc import Callable

from core.errors import ConfigError

DEFAULT_PASSPHRASE_FROM = "env:BACKUP_ENCRYPTION_PASSWORD"
MIN_PASSPHRASE_CHARS = 12
_MAX_SECRET_FILE = 64 << 10
_prompted: dict[str, str] = {}
_prompt_lock = threading.Lock()


def _read_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"{what}: environment variable {name} is not set (from 'env:{name}'); export it, or name "
            "another source in the stack file"
        )
    return value


def _read_file(path: str, what: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} (from 'file:{path}'): {exc.strerror}; check the path") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what}: {path} is not a regular file; point file: at the secret's file")
        if st.st_uid != os.geteuid():
            raise ConfigError(
                f"{what}: {path} is not owned by the user running genesis-dr (uid {os.geteuid()}); refusing it - "
                f"chown it to that user and chmod 600 {path}"
            )
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{what}: {path} is readable or writable by others (mode {stat.S_IMODE(st.st_mode):04o}); refusing "
                f"it - run 'chmod 600 {path}'"
            )
        data = os.read(fd, _MAX_SECRET_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_SECRET_FILE:
        raise ConfigError(f"{what}: {path} is larger than {_MAX_SECRET_FILE} bytes; it should hold only the secret")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text; write the secret as text") from None
    return text.removesuffix("\n").removesuffix("\r")


def _read_prompt(_: str, what: str) -> str:
    with _prompt_lock:  # concurrent tasks of one run ask once
        if what in _prompted:
            return _prompted[what]
        if not sys.stdin or not sys.stdin.isatty():
            raise ConfigError(
                f"{what}: 'prompt' needs a terminal, and this process has none (a worker or a script); use env: or "
                "file: for unattended runs"
            )
        value = getpass.getpass(f"genesis-dr: {what}: ")
        _prompted[what] = value
        return value


# scheme -> reader(argument, what). A KMS reader goes here.
READERS: dict[str, Callable[[str, str], str]] = {"env": _read_env, "file": _read_file, "prompt": _read_prompt}


def check_ref(ref: str) -> str:
    """``ref`` if it is a well-formed reference (never reads the secret); ValueError if not."""
    scheme, sep, arg = ref.partition(":")
    ok = (scheme == "prompt" and not arg) or (scheme in READERS and scheme != "prompt" and sep and arg.strip())
    if not ok:
        raise ValueError(f"{ref!r} is not a secret reference; use env:NAME, file:/path (mode 0600) or prompt")
    if scheme == "file" and not os.path.isabs(arg):
        raise ValueError(f"file:{arg} must be an absolute path (stack files resolve relative ones)")
    return ref


def read_secret(ref: str, what: str) -> str:
    """The secret ``ref`` points at, read now (ConfigError with the remedy if it cannot be)."""
    scheme, _, arg = ref.partition(":")
    reader = READERS.get(scheme)
    if reader is None:
        raise ConfigError(f"{what}: unknown secret source {scheme!r}; use env:NAME, file:/path or prompt")
    return reader(arg, what)


def normalize_passphrase(passphrase: str) -> str:
    """NFC, so the same passphrase typed on another system derives the same key."""
    return unicodedata.normalize("NFC", passphrase)


def check_new_passphrase(passphrase: str, what: str) -> str:
    """The normalised passphrase, if it may wrap new backups; ConfigError if whitespace-only or too short."""
    text = normalize_passphrase(passphrase)
    if not text.strip():
        raise ConfigError(f"{what}: the passphrase is empty or only whitespace; set a real passphrase")
    if len(text) < MIN_PASSPHRASE_CHARS:
        raise ConfigError(
            f"{what}: the passphrase has {len(text)} characters; new backups need at least {MIN_PASSPHRASE_CHARS} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return text
