"""A vault in an S3 bucket (or an S3-compatible service), through boto3.

Atomicity comes from S3 itself: a PUT is all or nothing, and conditional
writes give the interface's create and compare-and-swap (``If-None-Match: *``
creates only if absent, ``If-Match: <etag>`` replaces or deletes only the
version a read returned; 412 means another writer won). The version token is
the ETag.

Objects above ``multipart_threshold`` (8 MiB) are uploaded in parts, several at
once, and the completion carries the same ``If-None-Match`` condition: the
object appears whole or not at all, and a failed upload is aborted so no parts
linger. Backup data (``backups/*/streams/``, ``logdata/``) gets the vault's
storage class; everything small, rewritten or read on every run (locks,
catalog, config, manifests, log records, key files) stays STANDARD, where
reads are free of retrieval fees and minimum durations.

Errors are sorted into the interface's kinds (core/storage/base.py):
throttling, 5xx, timeouts and dropped connections are TransientStoreError (the
RetryingStore wrapper retries and counts them, so boto's own retries are turned
down to one attempt); credentials, access denied, a missing bucket or a bucket
in another region are StoreAccessError with the remedy. moto and S3-compatible
services do not all refuse a request sent to the wrong region, so the first
operation checks the bucket once (HeadBucket's ``x-amz-bucket-region``).

Lifecycle (retention, holds, archive): ``destroy`` deletes every version and
delete marker of exactly one key (ListObjectVersions, then DeleteObject with
each VersionId), after checking on an Object Lock bucket that no version carries
a legal hold or an unexpired retention (ObjectLockedError, nothing removed).
``set_storage_class`` copies the object onto itself with the new class (the
version's legal hold and retention carried over to the new version; on a
versioned bucket the old version is then removed, or the archive would only add
a copy). A GLACIER or DEEP_ARCHIVE object cannot be read until ``thaw``
(RestoreObject) has made a temporary copy: S3 answers 403 InvalidObjectState,
which leaves here as ObjectFrozenError (exit 35), never as "access denied".
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from core.errors import ObjectFrozenError, ObjectLockedError, VaultError
from core.storage.base import (
    Capabilities,
    ObjectInfo,
    ObjectNotFound,
    Store,
    StoreAccessError,
    TransientStoreError,
    checked_key,
)
from core.storage.config import S3_STORAGE_CLASSES
from core.tls import https_error, https_verify

T = TypeVar("T")

# The classes retention may move data to (set_storage_class); new data keeps S3_STORAGE_CLASSES.
ARCHIVE_CLASSES = ("STANDARD", "STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")
# Classes whose objects cannot be read before a restore (RestoreObject).
FROZEN_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
# What an operator waits for after `archive thaw` with the Standard tier.
THAW_TIME = {"GLACIER": "3-5 hours", "DEEP_ARCHIVE": "12 hours"}
THAW_TIERS = ("Standard", "Bulk", "Expedited")

MiB = 1 << 20
DEFAULT_MULTIPART_THRESHOLD = 8 * MiB
DEFAULT_PART_SIZE = 8 * MiB
MAX_SINGLE_COPY = 5 << 30  # CopyObject's limit: larger objects are copied part by part (UploadPartCopy)
DEFAULT_COPY_PART_SIZE = 512 * MiB
MAX_PARTS = 10_000

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ConditionalRequestConflict",  # 409: a conditional write on the same key is in flight
        "OperationAborted",  # 409: a conflicting operation is in progress on the bucket
        "IncompleteBody",
        "BadDigest",  # the body was damaged in transit: sending it again is the cure
    }
)
ACCESS_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "the AWS access key is not known to S3",
    "SignatureDoesNotMatch": "the AWS secret key does not match the access key",
    "ExpiredToken": "the AWS session token has expired",
    "TokenRefreshRequired": "the AWS session token has expired",
    "InvalidToken": "the AWS session token is malformed or invalid",
    "InvalidSecurity": "the AWS credentials are invalid",
}
REGION_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"}
)
PERMISSIONS = {
    "writing": "s3:PutObject",
    "creating": "s3:PutObject",
    "replacing": "s3:PutObject",
    "reading": "s3:GetObject",
    "listing": "s3:ListBucket",
    "deleting": "s3:DeleteObject",
    "copying": "s3:GetObject on the source and s3:PutObject",
    "checking": "s3:ListBucket",
    "destroying": "s3:ListBucketVersions, s3:GetObject(Version) and s3:DeleteObjectVersion",
    "holding": "s3:PutObjectLegalHold and s3:GetObjectLegalHold",
    "inspecting": "s3:GetBucketObjectLockConfiguration",
    "archiving": "s3:GetObject, s3:PutObject and s3:DeleteObjectVersion",
    "thawing": "s3:RestoreObject",
}
# An AWS access key id, in case a service echoes one in a message we pass on.
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
# Keys under these prefixes hold backup data and get the vault's storage class.
_DATA_PREFIXES = ("logdata/",)


def is_data_key(key: str) -> bool:
    """Whether ``key`` holds backup data (chunk objects) rather than small, often-read metadata."""
    if key.startswith(_DATA_PREFIXES):
        return True
    parts = key.split("/")
    return len(parts) > 3 and parts[0] == "backups" and parts[2] == "streams"


def _scrub(text: str) -> str:
    return _KEY_ID.sub("<access key id>", text).replace("\n", " ")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


class S3Store(Store):
    """Objects under ``prefix/`` of an S3 bucket; see the module docstring."""

    capabilities = Capabilities(
        provider="s3",
        server_side_copy=True,
        object_lock=True,
        storage_classes=S3_STORAGE_CLASSES,
        io_threads=8,
    )

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        region: str,
        storage_class: str = "STANDARD",
        endpoint_url: str | None = None,
        session: Any = None,
        multipart_threshold: int | None = None,
        part_size: int | None = None,
        page_size: int = 1000,
        copy_threshold: int = MAX_SINGLE_COPY,
        copy_part_size: int = DEFAULT_COPY_PART_SIZE,
        ca_file: str | None = None,
    ) -> None:
        """Args:
        bucket: the bucket's name.
        prefix: the vault's key prefix inside the bucket ('' for the whole bucket).
        region: the bucket's region; a bucket found elsewhere is refused with the right one named.
        storage_class: class of backup data objects (STANDARD, STANDARD_IA, GLACIER_IR).
        endpoint_url: another endpoint (an S3-compatible service, moto).
        session: a boto3.Session (e.g. from a prefect-aws AwsCredentials block); None: boto3's default chain.
        multipart_threshold: objects larger than this go up in parts (default 8 MiB,
            GENESIS_DR_S3_MULTIPART_THRESHOLD).
        part_size: size of each part (default 8 MiB, GENESIS_DR_S3_PART_SIZE; at least 5 MiB on S3).
        page_size: keys per listing request (S3 returns at most 1000).
        copy_threshold: server-side copies above this size go part by part (S3's CopyObject stops at 5 GiB).
        copy_part_size: size of each part of such a copy.
        ca_file: PEM file of the CA of an on-premises endpoint's certificate (default: the system's CA store);
            certificates are always verified.
        """
        import boto3
        from botocore.config import Config

        storage_class = (storage_class or "STANDARD").upper()
        if storage_class not in S3_STORAGE_CLASSES:
            raise VaultError(
                f"s3://{bucket}: storage class {storage_class!r} is not one of {', '.join(S3_STORAGE_CLASSES)}; "
                "fix vault.storage_class"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.storage_class = storage_class
        self.endpoint_url = endpoint_url
        self.ca_file = ca_file
        self.multipart_threshold = multipart_threshold or _env_int(
            "GENESIS_DR_S3_MULTIPART_THRESHOLD", DEFAULT_MULTIPART_THRESHOLD
        )
        self.part_size = part_size or _env_int("GENESIS_DR_S3_PART_SIZE", DEFAULT_PART_SIZE)
        self.page_size = page_size
        self.copy_threshold = copy_threshold
        self.copy_part_size = copy_part_size
        threads = self.capabilities.io_threads
        config = Config(
            region_name=region,
            # The stream writers, multipart parts and replication all share this pool.
            max_pool_connections=4 * threads,
            connect_timeout=10,
            read_timeout=120,
            tcp_keepalive=True,
            # RetryingStore retries (with backoff) and counts; boto retrying underneath would hide
            # the faults from the count and multiply the attempts.
            retries={"mode": "standard", "total_max_attempts": 1},
            # botocore would hash every body twice more (a CRC32 checksum, and a SHA-256 to sign the
            # payload when the endpoint is plain HTTP). Our own digests already cover these bytes: each
            # chunk's SHA-256 is in its manifest and checked on every read (and AES-GCM authenticates
            # it), and replication checks what the replica stored. Over HTTPS, TLS protects the transfer.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"payload_signing_enabled": False},
        )
        self._session = session if session is not None else boto3.Session()
        self._client = self._session.client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=config, verify=https_verify(ca_file)
        )
        self._checked = False
        self._check_lock = threading.Lock()
        self._lock_enabled: bool | None = None
        self._checksummed_puts = False
        self._parts: ThreadPoolExecutor | None = None
        self._parts_lock = threading.Lock()

    # -- naming -------------------------------------------------------------------

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        checked_key(self.describe(), key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_prefix(self, prefix: str) -> str:
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    def _strip(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _class_args(self, key: str) -> dict:
        if self.storage_class != "STANDARD" and is_data_key(key):
            return {"StorageClass": self.storage_class}
        return {}

    # -- errors -------------------------------------------------------------------

    def error(self, exc: BaseException, action: str, key: str) -> VaultError:
        """The interface's error for a boto3/botocore exception raised while ``action`` ``key``."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            CredentialRetrievalError,
            HTTPClientError,
            IncompleteReadError,
            NoCredentialsError,
            PartialCredentialsError,
            SSLError,
        )

        where = self.describe()
        if isinstance(exc, ClientError):
            return self._client_error(exc, action, key)
        if isinstance(exc, SSLError):
            # Never transient: a retry meets the same certificate.
            return https_error(f"vault {where}", self.endpoint_url, exc, self.ca_file)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            what = "incomplete AWS credentials" if isinstance(exc, PartialCredentialsError) else "no AWS credentials"
            return StoreAccessError(
                f"{where}: {what} found while {action} {key}; name an AwsCredentials block in vault.credentials, or "
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role)"
            )
        if isinstance(exc, (HTTPClientError, IncompleteReadError)) or _is_connection_error(exc):
            # Connection refused or reset, connect/read timeouts, a body cut short.
            return TransientStoreError(f"{where}: {type(exc).__name__} while {action} {key}: {_scrub(str(exc))}")
        if isinstance(exc, BotoCoreError):
            return StoreAccessError(
                f"{where}: the S3 client failed while {action} {key} ({type(exc).__name__}: {_scrub(str(exc))}); "
                "check the vault's endpoint and region settings"
            )
        raise exc

    def _client_error(self, exc: Any, action: str, key: str) -> VaultError:
        where = self.describe()
        response = exc.response
        err = response.get("Error", {})
        code = str(err.get("Code", ""))
        meta = response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        region = (meta.get("HTTPHeaders") or {}).get("x-amz-bucket-region") or err.get("Region")
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStoreError(f"{where}: S3 answered {code or status} while {action} {key}; retrying")
        if code == "InvalidObjectState":  # a 403, but not about access: the object is archived
            return self._frozen(key, str(err.get("StorageClass") or "GLACIER"))
        if code == "NoSuchBucket":
            return self._no_bucket()
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFound(f"vault {where}: object {key} is missing")
        if code in REGION_CODES or (region and region != self.region):
            return self._wrong_region(region)
        if code == "RequestTimeTooSkewed":
            return StoreAccessError(
                f"{where}: this host's clock differs from S3's by more than 15 minutes; fix the clock (NTP) and retry"
            )
        if code in CREDENTIAL_CODES:
            return StoreAccessError(
                f"{where}: {CREDENTIAL_CODES[code]} ({code}) while {action} {key}; fix the credentials of the vault "
                "(its AwsCredentials block, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN)"
            )
        if code in ACCESS_CODES or status == 403:
            return StoreAccessError(
                f"{where}: access denied while {action} {key}; check the credentials and the IAM and bucket "
                f"policies for {PERMISSIONS.get(action, 's3:*')} on {self.bucket}"
            )
        if code == "InvalidStorageClass":
            return StoreAccessError(
                f"{where}: the service refused storage class {self.storage_class}; set vault.storage_class to one "
                "it supports"
            )
        message = _scrub(str(err.get("Message", "")))[:300]
        return StoreAccessError(
            f"{where}: S3 refused {action} {key}: {code or status} {message}; check the vault settings "
            "(bucket, region, endpoint) and the bucket's configuration"
        )

    def _no_bucket(self) -> StoreAccessError:
        at = f" at {self.endpoint_url}" if self.endpoint_url else f" in {self.region}"
        return StoreAccessError(
            f"s3://{self.bucket}: the bucket does not exist{at}; create it (aws s3 mb s3://{self.bucket} "
            f"--region {self.region}) or fix vault.bucket"
        )

    def _wrong_region(self, region: str | None) -> StoreAccessError:
        if region:
            return StoreAccessError(
                f"s3://{self.bucket}: the bucket is in region {region}, not {self.region}; set vault.region: {region} "
                "(or BACKUP_S3_REGION)"
            )
        return StoreAccessError(
            f"s3://{self.bucket}: the bucket is not in region {self.region}; set vault.region to the bucket's region "
            f"(aws s3api get-bucket-location --bucket {self.bucket})"
        )

    def _call(self, action: str, key: str, fn: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        self._check_bucket()
        try:
            return fn()
        except (ClientError, BotoCoreError) as exc:
            raise self.error(exc, action, key) from None

    def _check_bucket(self) -> None:
        """Once per store: the bucket exists and is in our region (moto and some S3-compatible services
        serve a bucket through any region's endpoint, real S3 redirects; both must end in the same error)."""
        if self._checked:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        with self._check_lock:
            if self._checked:
                return
            try:
                response = self._client.head_bucket(Bucket=self.bucket)
                region = response["ResponseMetadata"].get("HTTPHeaders", {}).get("x-amz-bucket-region")
            except ClientError as exc:
                meta = exc.response.get("ResponseMetadata", {})
                status = int(meta.get("HTTPStatusCode") or 0)
                region = (meta.get("HTTPHeaders") or {}).get("x-amz-bucket-region")
                if status == 404:
                    raise self._no_bucket() from None
                if status in (301, 400) or (region and self.region and region != self.region):
                    raise self._wrong_region(region) from None
                if status == 403:
                    # HEAD has no body to say why; a write-only role may lack s3:ListBucket. The
                    # operation itself reports its own, precise error.
                    self._checked = True
                    return
                raise self.error(exc, "checking", "the bucket") from None
            except BotoCoreError as exc:
                raise self.error(exc, "checking", "the bucket") from None
            if region and self.region and region != self.region:
                raise self._wrong_region(region)
            self._checked = True

    # -- writing ------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        if overwrite:
            self._upload(key, data, condition={}, action="writing")
            return
        if self.create(key, data) is None:
            raise VaultError(f"vault {self.describe()}: object {key} already exists; stored objects are immutable")

    def create(self, key: str, data: bytes) -> str | None:
        return self._upload(key, data, condition={"IfNoneMatch": "*"}, action="writing")

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        if len(data) > MAX_SINGLE_COPY:
            raise VaultError(f"vault {self.describe()}: {key} is too large to replace in place (5 GiB at most)")
        try:
            # Always one PUT: If-Match on a multipart completion is not honoured everywhere, and the
            # objects that change (leases, hints) are small.
            return self._put_object(key, data, {"IfMatch": version}, "replacing")
        except ObjectNotFound:
            return None  # it vanished meanwhile: someone else won as surely as with a new version

    def _upload(self, key: str, data: bytes, *, condition: dict, action: str) -> str | None:
        if len(data) > self.multipart_threshold:
            return self._multipart(key, data, condition, action)
        return self._put_object(key, data, condition, action)

    def _put_object(self, key: str, data: bytes, condition: dict, action: str) -> str | None:
        from botocore.exceptions import ClientError

        full = self._key(key)

        # A loop, not a recursive call: a closure that names itself is a reference cycle holding ``data``
        # (a whole chunk) until the cycle collector runs, which made replication's memory grow with the
        # vault (peak RSS 107 -> 240 MB for 256 MB of backups).
        def put() -> str | None:
            while True:
                checksum = {"ChecksumAlgorithm": "CRC32"} if self._checksummed_puts else {}
                try:
                    response = self._client.put_object(
                        Bucket=self.bucket, Key=full, Body=data, **self._class_args(key), **condition, **checksum
                    )
                except ClientError as exc:
                    if condition and _status(exc) == 412:
                        return None
                    if not checksum and _wants_checksum(exc):
                        # An Object Lock bucket with a default retention wants a body checksum on every
                        # PutObject (we send none by default, see __init__): from now on, send CRC32.
                        self._checksummed_puts = True
                        continue
                    raise
                return response.get("ETag")

        return self._call(action, key, put)

    def _pool(self) -> ThreadPoolExecutor:
        with self._parts_lock:
            if self._parts is None:
                self._parts = ThreadPoolExecutor(max_workers=self.capabilities.io_threads, thread_name_prefix="s3-part")
            return self._parts

    def _part_ranges(self, size: int, part_size: int) -> list[tuple[int, int]]:
        part_size = max(part_size, -(-size // MAX_PARTS))
        return [(start, min(size, start + part_size)) for start in range(0, size, part_size)]

    def _multipart(self, key: str, data: bytes, condition: dict, action: str) -> str | None:
        """Parts in parallel (at most ``io_threads`` in flight, each a view of ``data``, copied only
        while it is sent); completed with ``condition``, aborted on any failure."""
        full = self._key(key)
        upload_id = self._call(
            action,
            key,
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=full, **self._class_args(key))[
                "UploadId"
            ],
        )
        view = memoryview(data)

        def send(number: int, start: int, end: int) -> dict:
            response = self._call(
                action,
                key,
                lambda: self._client.upload_part(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=bytes(view[start:end])
                ),
            )
            return {"PartNumber": number, "ETag": response["ETag"]}

        return self._finish_multipart(key, full, upload_id, action, condition, send, len(data), self.part_size)

    def _finish_multipart(
        self,
        key: str,
        full: str,
        upload_id: str,
        action: str,
        condition: dict,
        send: Callable[[int, int, int], dict],
        size: int,
        part_size: int,
    ) -> str | None:
        from botocore.exceptions import ClientError

        futures: list = []
        try:
            for number, (start, end) in enumerate(self._part_ranges(size, part_size), start=1):
                futures.append(self._pool().submit(send, number, start, end))
            parts = [f.result() for f in futures]

            def complete() -> str | None:
                try:
                    response = self._client.complete_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition
                    )
                except ClientError as exc:
                    if condition and _status(exc) == 412:
                        return None
                    raise
                return response.get("ETag")

            etag = self._call(action, key, complete)
        except BaseException:
            for future in futures:
                future.cancel()
            for future in futures:
                if not future.cancelled():
                    future.exception()  # parts in flight finish before the abort, or they would outlive it
            self._abort(full, upload_id)
            raise
        if etag is None:
            self._abort(full, upload_id)
        return etag

    def _abort(self, full: str, upload_id: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            # The original failure is what the caller must see; parts left behind by a failed abort
            # are removed by a lifecycle rule (AbortIncompleteMultipartUpload) on the bucket.
            pass

    # -- reading ------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        full = self._key(key)

        def get() -> tuple[bytes, str]:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            with response["Body"] as body:
                data = body.read()  # a connection cut mid-body raises here: transient, retried whole
            return data, response["ETag"]

        return self._call("reading", key, get)

    def stat(self, key: str) -> ObjectInfo | None:
        full = self._key(key)

        def head() -> ObjectInfo | None:
            from botocore.exceptions import ClientError

            try:
                r = self._client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _status(exc) == 404:
                    return None  # the bucket exists (checked): the object does not
                raise
            return ObjectInfo(
                key=key,
                size=r["ContentLength"],
                version=r["ETag"],
                storage_class=r.get("StorageClass", "STANDARD"),  # S3 omits the header for STANDARD
                metadata=r.get("Metadata", {}),
                frozen=self._is_frozen(r),
            )

        return self._call("reading", key, head)

    def list(self, prefix: str = "") -> Iterator[str]:
        # S3 lists keys in UTF-8 byte order, which is Python's str order: no sort needed.
        full = self._list_prefix(prefix)
        keys: list[str] = []

        def listing() -> None:
            token = None
            while True:
                args = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": self.page_size}
                if token:
                    args["ContinuationToken"] = token
                page = self._client.list_objects_v2(**args)
                keys.extend(self._strip(obj["Key"]) for obj in page.get("Contents", ()))
                if not page.get("IsTruncated"):
                    return
                token = page["NextContinuationToken"]

        self._call("listing", prefix or "the vault", listing)
        return iter(keys)

    def children(self, prefix: str) -> list[str]:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        full = self._list_prefix(prefix)
        names: set[str] = set()

        def listing() -> None:
            token = None
            while True:
                args = {"Bucket": self.bucket, "Prefix": full, "Delimiter": "/", "MaxKeys": self.page_size}
                if token:
                    args["ContinuationToken"] = token
                page = self._client.list_objects_v2(**args)
                names.update(p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", ()))
                names.update(obj["Key"][len(full) :] for obj in page.get("Contents", ()))
                if not page.get("IsTruncated"):
                    return
                token = page["NextContinuationToken"]

        self._call("listing", prefix or "the vault", listing)
        names.discard("")
        return sorted(names)

    # -- deleting -----------------------------------------------------------------

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call("deleting", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))

    def delete_if(self, key: str, version: str) -> bool:
        from botocore.exceptions import ClientError

        full = self._key(key)

        def delete() -> bool:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=full, IfMatch=version)
            except ClientError as exc:
                if _status(exc) in (404, 412):
                    return False
                raise
            return True

        return self._call("deleting", key, delete)

    # -- copying ------------------------------------------------------------------

    def copy_from(self, source: Store, key: str, dest_key: str | None = None) -> bool:
        """Server-side copy from another S3Store on the same endpoint (any region: this store's client
        asks S3 to copy from the other bucket). Only if absent here, like ``put``: VaultError if
        ``dest_key`` exists. False for any other source (the caller streams the bytes)."""
        from core.storage.retry import unwrap

        src = unwrap(source)
        if not isinstance(src, S3Store) or src.endpoint_url != self.endpoint_url:
            return False
        dest = dest_key or key
        full = self._key(dest)
        info = src.stat(key)
        if info is None:
            raise ObjectNotFound(f"vault {src.describe()}: object {key} is missing")
        # CopyObject's If-None-Match is honoured by S3 but ignored by moto 5.2: look first as well,
        # so an existing object is refused everywhere (the condition closes the race on S3). The same
        # ETag is our own earlier copy whose answer was lost (a retry): that is success.
        held = self.stat(dest)
        if held is not None:
            if held.version == info.version and held.size == info.size:
                return True
            raise VaultError(f"vault {self.describe()}: object {dest} already exists; stored objects are immutable")
        copy_source = {"Bucket": src.bucket, "Key": src._key(key)}
        if info.size > self.copy_threshold:
            etag = self._multipart_copy(dest, full, copy_source, info)
        else:
            etag = self._copy_object(dest, full, copy_source, info)
        if etag is None:
            raise VaultError(f"vault {self.describe()}: object {dest} already exists; stored objects are immutable")
        return True

    def _copy_object(self, dest: str, full: str, copy_source: dict, info: ObjectInfo) -> str | None:
        from botocore.exceptions import ClientError

        def copy() -> str | None:
            try:
                response = self._client.copy_object(
                    Bucket=self.bucket,
                    Key=full,
                    CopySource=copy_source,
                    CopySourceIfMatch=info.version,
                    IfNoneMatch="*",
                    MetadataDirective="COPY",
                    StorageClass=self._class_args(dest).get("StorageClass", "STANDARD"),
                )
            except ClientError as exc:
                if _status(exc) == 412:
                    return self._copy_precondition(dest, copy_source, info)
                raise
            return response["CopyObjectResult"]["ETag"]

        return self._call("copying", dest, copy)

    def _copy_precondition(self, dest: str, copy_source: dict, info: ObjectInfo) -> None:
        # 412 is either condition: the source changed under us (transient: copy the new one) or the
        # destination appeared (None: already exists).
        if self.stat(dest) is not None:
            return None
        raise TransientStoreError(f"{self.describe()}: the source of {dest} changed during the copy; retrying")

    def _multipart_copy(
        self,
        dest: str,
        full: str,
        copy_source: dict,
        info: ObjectInfo,
        *,
        create_args: dict | None = None,
        condition: dict | None = None,
    ) -> str | None:
        """Copy part by part (UploadPartCopy). ``create_args`` replace the upload's class arguments
        (an in-place class change brings its own, with metadata and lock settings); ``condition``
        guards the completion (default: only if ``dest`` is absent)."""
        from botocore.exceptions import ClientError

        args = self._class_args(dest) if create_args is None else create_args
        upload_id = self._call(
            "copying",
            dest,
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=full, **args)["UploadId"],
        )

        def send(number: int, start: int, end: int) -> dict:
            def part() -> dict:
                try:
                    response = self._client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=copy_source,
                        CopySourceRange=f"bytes={start}-{end - 1}",
                        CopySourceIfMatch=info.version,  # every part from the same version of the source
                    )
                except ClientError as exc:
                    if _status(exc) == 412:
                        raise TransientStoreError(
                            f"{self.describe()}: the source of {dest} changed during the copy; retrying"
                        ) from None
                    raise
                return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

            return self._call("copying", dest, part)

        return self._finish_multipart(
            dest,
            full,
            upload_id,
            "copying",
            {"IfNoneMatch": "*"} if condition is None else condition,
            send,
            info.size,
            self.copy_part_size,
        )

    # -- lifecycle: object lock, archive tiers, destruction -------------------------------------

    def _frozen(self, key: str, storage_class: str) -> ObjectFrozenError:
        match = re.match(r"backups/([^/]+)/", key)
        backup = match.group(1) if match else "BACKUP_ID"
        return ObjectFrozenError(
            f"{self.describe()}: {key} is in the {storage_class} tier and must be thawed first: run "
            f"'genesis-dr archive thaw {backup}' (S3 Standard retrieval takes {THAW_TIME.get(storage_class, '3-5 hours')})"
        )

    def lock_supported(self) -> bool:
        """Whether the bucket has Object Lock enabled (asked once, then cached: it cannot be switched off)."""
        if self._lock_enabled is None:
            from botocore.exceptions import ClientError

            def ask() -> bool:
                try:
                    config = self._client.get_object_lock_configuration(Bucket=self.bucket)
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code", "")
                    if code in ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"):
                        return False
                    raise
                return config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

            self._lock_enabled = self._call("inspecting", "the bucket's object lock configuration", ask)
        return self._lock_enabled

    def _require_lock(self, key: str) -> None:
        if not self.lock_supported():
            raise VaultError(
                f"{self.describe()}: cannot hold {key}: the bucket {self.bucket} has no Object Lock; legal holds need "
                "a bucket created with Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket)"
            )

    def set_legal_hold(self, key: str, on: bool) -> None:
        """ON: the current version only (what a hold protects is what the vault reads now). OFF: every
        version that carries a hold - a hold put on a manifest or keys.json before it was rewritten (key
        rotation, class change) stays on the older version, and a version still held blocks ``destroy``
        of the key after the release."""
        self._require_lock(key)
        full = self._key(key)
        if on:
            self._call(
                "holding",
                key,
                lambda: self._client.put_object_legal_hold(Bucket=self.bucket, Key=full, LegalHold={"Status": "ON"}),
            )
            return
        versions = [version_id for version_id, marker in self._versions(key, "holding") if not marker]
        if not versions:
            # Absent, or a service without version listing: the current version, as S3 answers for it.
            self._call(
                "holding",
                key,
                lambda: self._client.put_object_legal_hold(Bucket=self.bucket, Key=full, LegalHold={"Status": "OFF"}),
            )
            return
        for version_id in versions:
            head = self._head_version(key, version_id, "holding")
            if head is None or head.get("ObjectLockLegalHoldStatus") != "ON":
                continue

            def lift(version_id: str = version_id) -> None:
                self._client.put_object_legal_hold(
                    Bucket=self.bucket, Key=full, VersionId=version_id, LegalHold={"Status": "OFF"}
                )

            self._call("holding", key, lift)

    def legal_hold(self, key: str) -> bool:
        if not self.lock_supported():
            return False
        from botocore.exceptions import ClientError

        full = self._key(key)

        def ask() -> bool:
            try:
                response = self._client.get_object_legal_hold(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchObjectLockConfiguration":
                    return False  # S3's answer for a version that never had a hold
                raise
            return response.get("LegalHold", {}).get("Status") == "ON"

        return self._call("holding", key, ask)

    def _lock_reason(self, head: dict) -> str | None:
        """Why a version (its HeadObject answer) cannot be deleted: "legal hold",
        "retention until <date> (<mode>)", or None."""
        from datetime import UTC, datetime

        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return "legal hold"
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and until > datetime.now(UTC):
            mode = head.get("ObjectLockMode") or "retention"
            return f"retention until {until.astimezone(UTC).isoformat(timespec='seconds')} ({mode})"
        return None

    def _locked(self, key: str, why: str) -> ObjectLockedError:
        if why == "legal hold":
            remedy = "it becomes deletable when the hold is released (genesis-dr hold release HOLD_ID REASON)"
        else:
            remedy = f"it becomes deletable after {why.split(' ')[2]}"
        return ObjectLockedError(f"{self.describe()}: {key} is locked by an S3 Object Lock {why}; {remedy}")

    def _versions(self, key: str, action: str = "destroying") -> list[tuple[str, bool]]:
        """(version id, is a delete marker) of exactly ``key``, every page."""
        full = self._key(key)
        found: list[tuple[str, bool]] = []

        def listing() -> None:
            found.clear()
            args: dict = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": self.page_size}
            while True:
                page = self._client.list_object_versions(**args)
                for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
                    found.extend((v["VersionId"], marker) for v in page.get(kind, ()) if v["Key"] == full)
                if not page.get("IsTruncated"):
                    return
                args["KeyMarker"] = page["NextKeyMarker"]
                args["VersionIdMarker"] = page.get("NextVersionIdMarker", "")

        self._call(action, key, listing)
        return found

    def _head_version(self, key: str, version_id: str, action: str = "destroying") -> dict | None:
        from botocore.exceptions import ClientError

        full = self._key(key)

        def head() -> dict | None:
            try:
                return self._client.head_object(Bucket=self.bucket, Key=full, VersionId=version_id)
            except ClientError as exc:
                if _status(exc) in (404, 405):  # gone meanwhile, or a delete marker
                    return None
                raise

        return self._call(action, key, head)

    def destroy(self, key: str, *, passes: int = 1) -> None:
        """Every version and delete marker of ``key`` (``passes`` means nothing on S3: a deleted
        version is gone for good). On an Object Lock bucket every version is checked first, so a
        locked object loses nothing."""
        from botocore.exceptions import ClientError

        full = self._key(key)
        versions = self._versions(key)
        if not versions:
            # Never versioned and absent, or a service without version listing: a plain delete.
            self._call("destroying", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=full))
            return
        locking = self.lock_supported()
        if locking:
            for version_id, marker in versions:
                head = None if marker else self._head_version(key, version_id)
                why = self._lock_reason(head) if head else None
                if why:
                    raise self._locked(key, why)
        for version_id, _marker in versions:

            def delete(version_id: str = version_id) -> None:
                try:
                    self._client.delete_object(Bucket=self.bucket, Key=full, VersionId=version_id)
                except ClientError as exc:
                    if locking and _status(exc) == 403:
                        # A hold set since the check above: say so, not "access denied".
                        head = self._head_version(key, version_id)
                        why = self._lock_reason(head) if head else None
                        if why:
                            raise self._locked(key, why) from None
                    raise

            self._call("destroying", key, delete)

    def _is_frozen(self, head: dict) -> bool:
        """Whether a HeadObject answer describes an object a GET would refuse (archived, not restored)."""
        storage_class = head.get("StorageClass", "STANDARD")
        archived = storage_class in FROZEN_CLASSES or (
            storage_class == "INTELLIGENT_TIERING" and bool(head.get("ArchiveStatus"))
        )
        return archived and 'ongoing-request="false"' not in (head.get("Restore") or "")

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Copy ``key`` onto itself in ``storage_class`` (nothing to do if it is already there).
        A frozen object must be thawed first (ObjectFrozenError); its lock settings move with it."""
        from botocore.exceptions import ClientError

        wanted = (storage_class or "").upper()
        if wanted not in ARCHIVE_CLASSES:
            raise VaultError(
                f"{self.describe()}: storage class {storage_class!r} for {key} is not one of {', '.join(ARCHIVE_CLASSES)}"
            )
        full = self._key(key)

        def head() -> dict:
            try:
                return self._client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _status(exc) == 404:
                    raise ObjectNotFound(f"vault {self.describe()}: object {key} is missing") from None
                raise

        current = self._call("archiving", key, head)
        if current.get("StorageClass", "STANDARD") == wanted:
            return
        if self._is_frozen(current):
            raise self._frozen(key, current.get("StorageClass", "GLACIER"))
        held = current.get("ObjectLockLegalHoldStatus") == "ON"
        old_version = current.get("VersionId")
        copy_source = {"Bucket": self.bucket, "Key": full}
        if old_version:
            copy_source["VersionId"] = old_version
        size = int(current["ContentLength"])
        if size > self.copy_threshold:
            create_args = {
                "StorageClass": wanted,
                "Metadata": current.get("Metadata", {}),
                **({"ContentType": current["ContentType"]} if current.get("ContentType") else {}),
            }
            info = ObjectInfo(key=key, size=size, version=current["ETag"])
            self._multipart_copy(key, full, copy_source, info, create_args=create_args, condition={})
        else:
            self._call(
                "archiving",
                key,
                lambda: self._client.copy_object(
                    Bucket=self.bucket,
                    Key=full,
                    CopySource=copy_source,
                    CopySourceIfMatch=current["ETag"],
                    MetadataDirective="COPY",
                    StorageClass=wanted,
                ),
            )
        # The lock settings go onto the new version by their own calls, not as copy headers: S3 wants
        # a Content-MD5 or checksum with those, which a copy has no body to compute. The old version
        # keeps its hold until then, so the data is never unprotected.
        if held:
            self._call(
                "holding",
                key,
                lambda: self._client.put_object_legal_hold(Bucket=self.bucket, Key=full, LegalHold={"Status": "ON"}),
            )
        if current.get("ObjectLockRetainUntilDate") is not None:
            retention = {"Mode": current["ObjectLockMode"], "RetainUntilDate": current["ObjectLockRetainUntilDate"]}
            self._call(
                "holding",
                key,
                lambda: self._client.put_object_retention(Bucket=self.bucket, Key=full, Retention=retention),
            )
        if old_version and old_version != "null":
            self._drop_old_version(key, old_version, held=held)

    def _drop_old_version(self, key: str, version_id: str, *, held: bool) -> None:
        """Remove the version a class change replaced (else the archive keeps both). Its legal hold
        now lives on the new version, so it is lifted here first; a version under retention stays
        until its date (the provider refuses, and a lifecycle rule or destroy removes it later)."""
        from botocore.exceptions import ClientError

        full = self._key(key)
        head = self._head_version(key, version_id)
        if head is None:
            return
        if self._lock_reason({**head, "ObjectLockLegalHoldStatus": "OFF"}):
            return  # under retention: S3 would refuse
        if held:
            self._call(
                "holding",
                key,
                lambda: self._client.put_object_legal_hold(
                    Bucket=self.bucket, Key=full, VersionId=version_id, LegalHold={"Status": "OFF"}
                ),
            )

        def delete() -> None:
            try:
                self._client.delete_object(Bucket=self.bucket, Key=full, VersionId=version_id)
            except ClientError as exc:
                if _status(exc) != 404:
                    raise

        self._call("archiving", key, delete)

    def thaw(self, key: str, *, days: int = 7, tier: str = "Standard") -> str:
        from botocore.exceptions import ClientError

        if tier not in THAW_TIERS:
            raise VaultError(f"{self.describe()}: thaw tier {tier!r} for {key} is not one of {', '.join(THAW_TIERS)}")
        full = self._key(key)
        current = self._call("thawing", key, lambda: self._client.head_object(Bucket=self.bucket, Key=full))
        if not self._is_frozen(current):
            return "ready"
        if 'ongoing-request="true"' in (current.get("Restore") or ""):
            return "in-progress"
        request: dict = {"Days": days, "GlacierJobParameters": {"Tier": tier}}
        if current.get("StorageClass") == "INTELLIGENT_TIERING":
            request = {}  # the archive access tiers take no Days nor tier

        def restore() -> str:
            try:
                response = self._client.restore_object(Bucket=self.bucket, Key=full, RestoreRequest=request)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "RestoreAlreadyInProgress":
                    return "in-progress"
                raise
            # 202: a restore was started; 200: a restored copy already exists (its expiry extended).
            return "ready" if _status_of(response) == 200 else "requested"

        return self._call("thawing", key, restore)

    def close(self) -> None:
        with self._parts_lock:
            if self._parts is not None:
                self._parts.shutdown(wait=True)
                self._parts = None
        self._client.close()


def _is_connection_error(exc: BaseException) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError

    return isinstance(exc, BotoConnectionError)  # refused, connect timeout, proxy, endpoint unreachable


def _wants_checksum(exc: Any) -> bool:
    """S3 (InvalidRequest naming Content-MD5) or moto refusing a PutObject without a body checksum
    on a bucket whose Object Lock has a default retention."""
    err = exc.response.get("Error", {})
    code = err.get("Code", "")
    return code == "MissingUploadObjectWithObjectLockHeaders" or (
        code == "InvalidRequest" and "Content-MD5" in str(err.get("Message", ""))
    )


def _status_of(response: dict) -> int:
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
