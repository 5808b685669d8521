"""AWS KMS as a recipient of a backup's data key (docs/FORMAT.md, "Keys").

A stack names KMS keys (``encryption.kms_keys``): only their ids, regions and where
the AWS credentials come from, never a secret. A backup wrapped by KMS gets its data
key from ``GenerateDataKey`` on the first key (AES_256) and ``Encrypt`` on the others;
each call binds the encryption context ``{"genesis-dr:backup": <backup id>}``, so a
wrapped key moved to another backup does not decrypt there (KMS authenticates the
context). ``Decrypt`` names the key it expects (the ARN KMS returned), so a record
cannot redirect a restoring host to another key.

Before a key is used, its state is read once per process (``DescribeKey``): a
disabled key or one pending deletion is refused with its state and the remedy before
anything is written, and on a restore the next recipient is tried. A role without
``kms:DescribeKey`` skips that check; the operation itself then reports the state
(``DisabledException``, ``KMSInvalidStateException``), mapped to the same error.

Faults: throttling, 5xx, timeouts and connection resets are retried here with
exponential backoff and counted (``retries``); botocore's own retries are turned
off so every attempt is ours to count. Everything else fails at once as
``KeyServiceError`` (exit 19), one line naming the key id and the remedy. Plaintext
data keys never reach a log, an error or a record.

Google Cloud KMS is not supported: no test double speaking its API over HTTP is
packaged for this project (see docs/FORMAT.md), and untested code is not shipped.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import ConfigError, IntegrityError, KeyServiceError
from core.tls import EndpointUrl, https_error

RECIPIENT_TYPE = "aws-kms"
CONTEXT_KEY = "genesis-dr:backup"
DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_DELAY = 0.2
DEFAULT_MAX_DELAY = 5.0

_ARN = re.compile(
    r"^arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):\d{12}:(?P<kind>key|alias)/(?P<name>[A-Za-z0-9/_+=,.@:-]+)$"
)
_KEY_UUID = re.compile(
    r"^(mrk-[0-9a-f]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
_ALIAS = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")

# Error codes that say "try again": the same request may succeed in a moment.
_TRANSIENT_CODES = {
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "LimitExceededException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
}
_DENIED_CODES = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
}


class _NoPlaintext(logging.Filter):
    """Drops botocore's DEBUG records of request and response bodies that carry a data key: an operator
    who turns debug logging on (PREFECT_LOGGING_ROOT_LEVEL=DEBUG) must still never log one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return "Plaintext" not in record.getMessage()
        except Exception:  # a record that cannot be formatted is not ours to judge
            return True


for _name in ("botocore.endpoint", "botocore.parsers", "botocore.client", "botocore.hooks"):
    logging.getLogger(_name).addFilter(_NoPlaintext())

# The blocks layer resolves a prefect-aws AwsCredentials block name to a boto3 Session (core never
# imports Prefect); without one, boto3's default chain is used.
_credentials_resolver: Callable[[str], Any] | None = None


def set_credentials_resolver(resolver: Callable[[str], Any] | None) -> None:
    """Install how a ``credentials`` block name becomes a boto3 Session (blocks/keys.py does)."""
    global _credentials_resolver
    _credentials_resolver = resolver


class KmsKeyConfig(BaseModel):
    """One KMS key that wraps each backup's data key: where it is, never anything secret."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["aws"] = Field("aws", description="aws (AWS KMS). Google Cloud KMS is not supported yet.")
    key_id: str = Field(description="Key ARN, alias ARN, alias/NAME or key id (uuid).")
    region: str | None = Field(
        None, description="The key's region (default: the ARN's, else AWS_REGION / AWS_DEFAULT_REGION)."
    )
    endpoint_url: EndpointUrl = Field(None, description="Another KMS endpoint (a VPC endpoint or a test server).")
    credentials: str | None = Field(
        None, description="Name of a prefect-aws AwsCredentials block (default: boto3's credential chain)."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") not in (None, "aws"):
            raise ValueError(
                f"type {data.get('type')!r}: only AWS KMS keys (type: aws) are supported; Google Cloud KMS is not "
                "(no test double for it exists here); wrap with a passphrase or X25519 keys instead"
            )
        return data

    @field_validator("key_id")
    @classmethod
    def _key_id(cls, value: str) -> str:
        value = value.strip()
        if not (_ARN.match(value) or _KEY_UUID.match(value) or _ALIAS.match(value)):
            raise ValueError(
                f"{value!r} is not a KMS key id; use a key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), an alias "
                "(alias/NAME or its ARN) or a key id"
            )
        return value

    @model_validator(mode="after")
    def _region(self) -> KmsKeyConfig:
        arn = _ARN.match(self.key_id)
        if arn:
            if self.region and self.region != arn["region"]:
                raise ValueError(
                    f"key {self.key_id} is in region {arn['region']}, but region says {self.region}; drop region or "
                    "make them agree (a KMS key lives in one region)"
                )
            self.region = arn["region"]
        if not self.region:
            self.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not self.region:
            raise ValueError(f"key {self.key_id}: set region (or give the key's ARN, which names it)")
        return self

    def label(self) -> str:
        """Short, secret-free name for listings: the alias, or the first 8 characters of the key id."""
        arn = _ARN.match(self.key_id)
        if arn:
            return f"alias/{arn['name']}" if arn["kind"] == "alias" else arn["name"][:8]
        return self.key_id if self.key_id.startswith("alias/") else self.key_id[:8]


def context_for(wrap_id: str) -> dict[str, str]:
    """The encryption context binding a wrapped key to its backup (or log key)."""
    return {CONTEXT_KEY: wrap_id}


def record_region(record: dict) -> str:
    arn = _ARN.match(str(record.get("key_id", "")))
    return arn["region"] if arn else str(record.get("region") or "")


def retry_settings() -> tuple[int, float, float]:
    """(attempts, first delay, largest delay) from GENESIS_DR_KMS_RETRIES / _RETRY_DELAY / _RETRY_MAX_DELAY."""
    return (
        max(1, int(os.environ.get("GENESIS_DR_KMS_RETRIES", DEFAULT_ATTEMPTS))),
        float(os.environ.get("GENESIS_DR_KMS_RETRY_DELAY", DEFAULT_BASE_DELAY)),
        float(os.environ.get("GENESIS_DR_KMS_RETRY_MAX_DELAY", DEFAULT_MAX_DELAY)),
    )


class AwsKms:
    """AWS KMS as one endpoint and one set of credentials sees it: a client per region, key states
    read once, transient faults retried and counted in ``retries`` (per operation)."""

    def __init__(
        self,
        endpoint_url: str | None = None,
        credentials: str | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint_url, self.credentials = endpoint_url, credentials
        self.attempts, self.base_delay, self.max_delay = retry_settings()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._states: dict[tuple[str, str], str | None] = {}
        self.retries: Counter[str] = Counter()

    # -- plumbing ---------------------------------------------------------------------

    def _client(self, region: str):
        with self._lock:
            if region not in self._clients:
                import boto3
                from botocore.config import Config

                if self._session is None:
                    if self.credentials:
                        if _credentials_resolver is None:
                            raise ConfigError(
                                f"encryption.kms_keys: credentials block {self.credentials!r} cannot be loaded here "
                                "(no block loader); run through genesis-dr, or drop credentials to use boto3's chain"
                            )
                        self._session = _credentials_resolver(self.credentials)
                    else:
                        self._session = boto3.session.Session()
                # One attempt per call: the retries (and their count) are ours, below.
                config = Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=30)
                self._clients[region] = self._session.client(
                    "kms", region_name=region, endpoint_url=self.endpoint_url, config=config
                )
            return self._clients[region]

    def _call(self, op: str, key: str, region: str, **params) -> dict:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
            SSLError,
        )

        client = self._client(region)
        for attempt in range(1, self.attempts + 1):
            try:
                return getattr(client, op)(**params)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                    why = code or f"HTTP {status}"
                else:
                    raise _refusal(code, status, key, region, op) from None
            except SSLError as exc:  # our side refused the endpoint's certificate: retrying cannot fix it
                raise https_error(f"KMS key {key} ({region})", self.endpoint_url, exc, None, "AWS_CA_BUNDLE") from None
            except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as exc:
                why = type(exc).__name__
            except NoCredentialsError:
                raise KeyServiceError(
                    f"KMS key {key} ({region}): no AWS credentials found; name an AwsCredentials block in "
                    "encryption.kms_keys[].credentials or set the environment's credentials"
                ) from None
            except BotoCoreError as exc:
                raise KeyServiceError(f"KMS key {key} ({region}): {type(exc).__name__} calling {op}") from None
            with self._lock:
                self.retries[op] += 1
            if attempt == self.attempts:
                raise KeyServiceError(
                    f"KMS key {key} ({region}): {op} still failing after {self.attempts} attempts ({why}: KMS is "
                    "throttling or unavailable); try again later, or open the backup with another recipient"
                )
            delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            self._sleep(random.uniform(delay / 2, delay))
        raise AssertionError("unreachable")

    @property
    def retried(self) -> int:
        return sum(self.retries.values())

    def check_state(self, key: str, region: str) -> None:
        """Refuse a key that is not Enabled (read once per process); a denied DescribeKey skips the check."""
        with self._lock:
            known = (key, region) in self._states
            state = self._states.get((key, region))
        if not known:
            try:
                meta = self._call("describe_key", key, region, KeyId=key)["KeyMetadata"]
            except KeyServiceError as exc:
                if not getattr(exc, "denied", False):
                    raise
                state = None  # no kms:DescribeKey: the operation itself will say
            else:
                state = str(meta.get("KeyState") or "Enabled")
                if state == "PendingDeletion" and meta.get("DeletionDate"):
                    state = f"PendingDeletion:{meta['DeletionDate']:%Y-%m-%d}"
            with self._lock:
                self._states[(key, region)] = state
        if state is None or state == "Enabled":
            return
        if state.startswith("PendingDeletion"):
            when = state.partition(":")[2]
            raise KeyServiceError(
                f"KMS key {key} ({region}) is pending deletion{f' (deleted on {when})' if when else ''}; cancel it "
                f"('aws kms cancel-key-deletion --key-id {key} --region {region}', then enable-key), or use another "
                "recipient"
            )
        if state == "Disabled":
            raise KeyServiceError(
                f"KMS key {key} ({region}) is disabled; enable it ('aws kms enable-key --key-id {key} --region "
                f"{region}'), or use another recipient"
            )
        raise KeyServiceError(
            f"KMS key {key} ({region}) is in state {state} and cannot be used; make it Enabled, or use another recipient"
        )

    # -- the recipient -------------------------------------------------------------------

    def _record(self, config: KmsKeyConfig, response: dict, context: dict[str, str]) -> dict:
        return {
            "type": RECIPIENT_TYPE,
            "key": config.key_id,  # as the stack names it: what a rotation compares
            "key_id": response["KeyId"],  # the key's ARN, as KMS returned it: what Decrypt names
            "region": config.region,
            "ciphertext": base64.b64encode(response["CiphertextBlob"]).decode("ascii"),
            "context": context,  # informative: readers bind the context of the backup they open, never this
        }

    def generate(self, config: KmsKeyConfig, wrap_id: str) -> tuple[bytes, dict]:
        """A new 256-bit data key from KMS, and its recipient record."""
        assert config.region is not None
        self.check_state(config.key_id, config.region)
        context = context_for(wrap_id)
        response = self._call(
            "generate_data_key",
            config.key_id,
            config.region,
            KeyId=config.key_id,
            KeySpec="AES_256",
            EncryptionContext=context,
        )
        return response["Plaintext"], self._record(config, response, context)

    def encrypt(self, config: KmsKeyConfig, wrap_id: str, data_key: bytes) -> dict:
        """``data_key`` wrapped by ``config``'s key (a second KMS recipient, or a rotation)."""
        assert config.region is not None
        self.check_state(config.key_id, config.region)
        context = context_for(wrap_id)
        response = self._call(
            "encrypt", config.key_id, config.region, KeyId=config.key_id, Plaintext=data_key, EncryptionContext=context
        )
        return self._record(config, response, context)

    def decrypt(self, record: dict, wrap_id: str) -> bytes:
        """The data key in ``record``, under the context of ``wrap_id`` (the backup being opened)."""
        key, region = str(record["key_id"]), record_region(record)
        blob = base64.b64decode(str(record["ciphertext"]).encode("ascii"))
        self.check_state(key, region)
        try:
            response = self._call(
                "decrypt", key, region, KeyId=key, CiphertextBlob=blob, EncryptionContext=context_for(wrap_id)
            )
        except KeyServiceError as exc:
            if getattr(exc, "code", "") == "InvalidCiphertextException":
                raise IntegrityError(
                    f"{_what(wrap_id)}: its key wrapped by KMS key {key} does not open under this backup's context "
                    "(moved from another backup, or corrupt); open it with another recipient"
                ) from None
            raise
        return response["Plaintext"]


def _what(wrap_id: str) -> str:
    return f"backup {wrap_id}" if wrap_id.startswith("backup_") else wrap_id


def _refusal(code: str, status: int, key: str, region: str, op: str) -> KeyServiceError:
    """One line naming the key and the remedy for a permanent KMS refusal."""
    where = f"KMS key {key} ({region})"
    if code == "DisabledException":
        msg = f"{where} is disabled; enable it ('aws kms enable-key --key-id {key} --region {region}'), or use another recipient"
    elif code == "KMSInvalidStateException":
        msg = (
            f"{where} is not usable in its current state (pending deletion, or pending import); cancel the deletion "
            f"and enable it ('aws kms cancel-key-deletion --key-id {key} --region {region}'), or use another recipient"
        )
    elif code in _DENIED_CODES or status == 403:
        msg = (
            f"{where}: access denied for {op}; grant kms:Decrypt (restores), kms:GenerateDataKey and kms:Encrypt "
            "(backups) on the key to the role genesis-dr runs as, check its credentials, or use another recipient"
        )
    elif code == "NotFoundException":
        msg = f"{where} does not exist in {region}; check encryption.kms_keys key_id and region (a key lives in one region)"
    elif code == "InvalidCiphertextException":
        msg = f"{where}: the wrapped key does not decrypt under this context"
    else:
        msg = f"{where}: KMS refused {op} ({code or f'HTTP {status}'}); check the key and its policy, or use another recipient"
    error = KeyServiceError(msg)
    error.code = code  # type: ignore[attr-defined]
    error.denied = code in _DENIED_CODES or status == 403  # type: ignore[attr-defined]
    return error
