"""The two object stores a bucket source reads and a restore writes: S3 (boto3) and GCS (google-cloud-storage).

One small interface (``BucketClient``) so the engine knows no provider: list the
objects under a prefix, read one as a stream of pieces (with the metadata the read
returned), write one from a stream with its metadata, delete one. Every provider
error is translated here into ``SourceUnavailableError`` naming the bucket and the
remedy: permanent faults (no such bucket, access denied, wrong region, no
credentials) as they are, throttling / 5xx / timeouts / resets with
``transient=True`` (the task layer retries those). Nothing here logs, and no
message carries a credential.

Bodies never sit whole in memory: reads come in ``READ_PIECE`` pieces; a write
keeps at most one ``PART_SIZE`` part (S3 multipart, GCS resumable upload).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.errors import ConfigError, IntegrityError, SourceUnavailableError
from core.tls import check_ca_file, check_endpoint, https_error, https_verify

READ_PIECE = 1 << 20
# One part in memory per upload: S3 takes parts of 5 MiB and more; GCS resumable chunks are multiples of 256 KiB.
PART_SIZE = 8 << 20
# google-cloud-storage keeps the chunk it sent while it reads the next one: two chunks in memory per upload.
GCS_CHUNK = 4 << 20
# Metadata a restore puts back, by our names (the same for both providers).
META_FIELDS = ("content_type", "content_encoding", "cache_control", "content_disposition", "content_language")

# The blocks layer installs a resolver (block name -> boto3 Session / google Credentials): core never imports Prefect.
_resolver: Callable[[str, str], Any] | None = None


def set_credentials_resolver(resolver: Callable[[str, str], Any] | None) -> None:
    """Install how a ``credentials`` block name becomes provider credentials: ``resolver(provider, name)``."""
    global _resolver
    _resolver = resolver


@dataclass
class Listed:
    """One object as a listing shows it (``key`` is the full key in the bucket)."""

    key: str
    size: int
    etag: str | None = None
    generation: str | None = None  # GCS
    metageneration: str | None = None  # GCS: moves when only the metadata changes
    last_modified: str = ""
    meta: dict[str, Any] | None = None  # GCS listings carry it; S3 ones do not


@dataclass
class Head:
    """What a read (or a HEAD) returned: the identity and metadata of exactly the bytes read."""

    size: int
    etag: str | None = None
    generation: str | None = None
    metageneration: str | None = None
    version_id: str | None = None
    last_modified: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata with empty fields left out, so providers that omit and ones that return '' compare equal."""
    out = {k: v for k, v in meta.items() if k in META_FIELDS and v}
    user = meta.get("metadata") or {}
    if user:
        out["metadata"] = {str(k): str(v) for k, v in sorted(user.items())}
    return out


def _iso(when: Any) -> str:
    if isinstance(when, datetime):
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(when or "")


class BucketClient:
    """One bucket of one provider (``describe`` names it in every error)."""

    provider: str

    def __init__(self, bucket: str, label: str) -> None:
        self.bucket, self.label = bucket, label

    def describe(self) -> str:
        return f"{self.provider}://{self.bucket}"

    def list(self, prefix: str) -> Iterator[Listed]:
        """Every object under ``prefix``, in key order."""
        raise NotImplementedError

    def any_object(self, prefix: str) -> bool:
        """True if anything is stored under ``prefix`` (one listing request: also the reachability check)."""
        raise NotImplementedError

    def read(self, obj: Listed) -> tuple[Head, Iterator[bytes]] | None:
        """The object's current bytes in pieces, and what the read returned; None if it is gone."""
        raise NotImplementedError

    def head(self, key: str) -> Head | None:
        raise NotImplementedError

    def write(self, key: str, size: int, meta: dict[str, Any], pieces: Iterable[bytes], sha256: str) -> None:
        """Store ``size`` bytes from ``pieces`` at ``key`` with ``meta``. The object becomes visible only if the
        bytes hash to ``sha256`` (S3: checked before the put or the multipart completion; GCS: before the last
        chunk of a resumable upload is sent)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError


class _Body:
    """The bytes of one object being written, pulled from ``pieces`` into buffers the caller owns (one copy, no
    join), hashed as they arrive. Once the last byte has arrived and before it is handed on, the size and SHA-256
    are compared with the index: a mismatch raises, so the write that would finish the object never happens."""

    def __init__(self, label: str, key: str, size: int, sha256: str, pieces: Iterable[bytes]) -> None:
        self.label, self.key, self.size, self.sha256 = label, key, size, sha256
        self._pieces = iter(pieces)
        self._current = memoryview(b"")
        self.digest, self.seen = hashlib.sha256(), 0
        self._checked = False

    def _pull(self) -> bool:
        piece = next(self._pieces, None)
        if piece is None:
            self.check()
            return False
        self.digest.update(piece)
        self.seen += len(piece)
        if self.seen >= self.size:
            self.check()  # the last byte has arrived: compared before any of this piece is handed on
        self._current = memoryview(piece)
        return True

    def check(self) -> None:
        if self._checked:
            return
        if self.seen != self.size or self.digest.hexdigest() != self.sha256:
            raise IntegrityError(
                f"{self.label}: the bytes of {self.key} read from the vault do not match the backup index "
                f"({self.seen} of {self.size} bytes, SHA-256 differs); the backup is damaged, restore another one"
            )
        self._checked = True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if not self._current and not self._pull():
                break
            n = min(len(self._current), len(view) - filled)
            view[filled : filled + n] = self._current[:n]
            self._current = self._current[n:]
            filled += n
        return filled

    def take(self, n: int) -> bytearray:
        """The next ``n`` bytes (fewer at the end) in a new buffer."""
        buffer = bytearray(n)
        got = self.readinto(buffer)
        if got < n:
            del buffer[got:]  # in place: no copy
        return buffer

    def read(self, n: int = -1) -> bytes:
        """File-like read for uploaders that read a stream (GCS resumable uploads)."""
        if n is None or n < 0:
            n = self.size - self.tell()
        return self.take(n)  # type: ignore[return-value]  # a bytearray: the uploader sends it as it is

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.seen - len(self._current)


def part_size(size: int) -> int:
    """PART_SIZE, or larger for an object that would need more than 10 000 parts (S3's limit), in 256 KiB steps."""
    step = 256 << 10
    return max(PART_SIZE, -(-size // 10_000 // step) * step)


# -- S3 -------------------------------------------------------------------------------------------------

_S3_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}
_S3_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}
_S3_ACCESS = {"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"}
_S3_REGION = {"PermanentRedirect", "301", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
_S3_META_ARGS = {
    "content_type": "ContentType",
    "content_encoding": "ContentEncoding",
    "cache_control": "CacheControl",
    "content_disposition": "ContentDisposition",
    "content_language": "ContentLanguage",
}


def _no_retry_on_tls(caught_exception: BaseException | None = None, **_: Any) -> bool | None:
    """botocore's needs-retry hook: False (no retry) for a refused certificate, which its standard mode would
    retry as a connection error; None leaves every other fault to it."""
    from botocore.exceptions import SSLError

    return False if isinstance(caught_exception, SSLError) else None


class S3Bucket(BucketClient):
    provider = "s3"

    def __init__(
        self,
        bucket: str,
        label: str,
        *,
        region: str | None,
        endpoint_url: str | None,
        session: Any = None,
        ca_file: str | None = None,
    ) -> None:
        super().__init__(bucket, label)
        import boto3
        from botocore.config import Config

        self.region = region
        self.endpoint_url, self.ca_file = endpoint_url, ca_file
        self._checked = False
        session = session or boto3.session.Session()
        self._s3 = session.client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=16,
            ),
            verify=https_verify(ca_file),
        )
        # Ahead of the standard retry handler: a retry meets the same certificate.
        self._s3.meta.events.register_first("needs-retry.s3", _no_retry_on_tls)

    def describe(self) -> str:
        return f"s3://{self.bucket} ({self.region})"

    @contextmanager
    def _errors(self, what: str, key: str | None = None) -> Iterator[None]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
            SSLError,
        )

        where = f"s3://{self.bucket}/{key}" if key else self.describe()
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, what, where) from None
        except SSLError as exc:  # before its base, ConnectionError: never transient
            raise https_error(f"{self.label}: s3://{self.bucket}", self.endpoint_url, exc, self.ca_file) from None
        except (NoCredentialsError, PartialCredentialsError):
            raise SourceUnavailableError(
                f"{self.label}: no AWS credentials to {what} {where}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                "an AWS profile, or name an AwsCredentials block in 'credentials'"
            ) from None
        except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError) as exc:
            raise SourceUnavailableError(
                f"{self.label}: cannot reach S3 to {what} {where} ({type(exc).__name__}); check the network or "
                "'endpoint_url', it is retried",
                transient=True,
            ) from None
        except BotoCoreError as exc:
            raise SourceUnavailableError(
                f"{self.label}: S3 failed to {what} {where} ({type(exc).__name__}); check the network, it is retried",
                transient=True,
            ) from None

    def _client_error(self, exc: Any, what: str, where: str) -> SourceUnavailableError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
        if code == "NoSuchBucket":
            return SourceUnavailableError(
                f"{self.label}: S3 bucket {self.bucket} does not exist (region {self.region}); create it or fix "
                "'bucket' in the stack file"
            )
        if code in _S3_REGION or status == "301" or error.get("Region"):
            actual = headers.get("x-amz-bucket-region") or error.get("Region") or "another region"
            return SourceUnavailableError(
                f"{self.label}: S3 bucket {self.bucket} is in {actual}, not {self.region}; set region: {actual} "
                "in the stack file"
            )
        if code == "RequestTimeTooSkewed":
            return SourceUnavailableError(
                f"{self.label}: this host's clock differs from S3's by more than 15 minutes ({where}); fix the clock "
                "(NTP) and run again"
            )
        if code in _S3_CREDENTIALS:
            return SourceUnavailableError(
                f"{self.label}: S3 refused the credentials ({code}) to {what} {where}; fix the AwsCredentials block "
                "named in 'credentials', or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN"
            )
        if code in _S3_ACCESS or status == "403":
            return SourceUnavailableError(
                f"{self.label}: access denied to {what} {where} ({code}); grant the credentials s3:ListBucket, "
                "s3:GetObject (backup) or s3:PutObject, s3:DeleteObject (restore) on it, or fix 'credentials'"
            )
        if code == "InvalidObjectState":
            return SourceUnavailableError(
                f"{self.label}: {where} is archived (Glacier / Deep Archive) and cannot be read; restore it from the "
                "archive first, or leave it out with 'exclude'"
            )
        if code in _S3_TRANSIENT or status.startswith("5") or status == "429":
            return SourceUnavailableError(
                f"{self.label}: S3 is throttling or failing ({code or status}) to {what} {where}; it is retried",
                transient=True,
            )
        return SourceUnavailableError(
            f"{self.label}: S3 refused to {what} {where} ({code or status}); check the bucket"
        )

    def list(self, prefix: str) -> Iterator[Listed]:
        paginator = self._s3.get_paginator("list_objects_v2")
        with self._errors("list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield Listed(
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=str(item.get("ETag", "")).strip('"') or None,
                        last_modified=_iso(item.get("LastModified")),
                    )

    def any_object(self, prefix: str) -> bool:
        self._check_bucket()
        with self._errors("list"):
            page = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(page.get("Contents"))

    def _check_bucket(self) -> None:
        """Once: the bucket exists and is in the configured region. moto and some S3-compatible services serve a
        request sent to the wrong region anyway, so HeadBucket's x-amz-bucket-region is compared."""
        if self._checked:
            return
        from botocore.exceptions import ClientError

        with self._errors("check"):
            try:
                response = self._s3.head_bucket(Bucket=self.bucket)
                status, headers = 200, response["ResponseMetadata"].get("HTTPHeaders", {})
            except ClientError as exc:
                meta = exc.response.get("ResponseMetadata", {})
                status, headers = int(meta.get("HTTPStatusCode") or 0), meta.get("HTTPHeaders") or {}
                if status == 404:
                    raise SourceUnavailableError(
                        f"{self.label}: S3 bucket {self.bucket} does not exist (region {self.region}); create it or "
                        "fix 'bucket' in the stack file"
                    ) from None
                if status not in (301, 400, 403):
                    raise
        region = headers.get("x-amz-bucket-region")
        if status in (301, 400) or (region and self.region and region != self.region):
            raise SourceUnavailableError(
                f"{self.label}: S3 bucket {self.bucket} is in {region or 'another region'}, not {self.region}; set "
                f"region: {region or '<its region>'} in the stack file"
            )
        # 403 on HEAD has no body to say why (a role without s3:ListBucket): the listing reports its own error.
        self._checked = True

    @staticmethod
    def _head(response: dict) -> Head:
        meta = {ours: response.get(theirs) for ours, theirs in _S3_META_ARGS.items()}
        meta["metadata"] = response.get("Metadata") or {}
        return Head(
            size=int(response.get("ContentLength", 0)),
            etag=str(response.get("ETag", "")).strip('"') or None,
            version_id=response.get("VersionId") if response.get("VersionId") not in (None, "null") else None,
            last_modified=_iso(response.get("LastModified")),
            meta=clean_meta(meta),
        )

    def read(self, obj: Listed) -> tuple[Head, Iterator[bytes]] | None:
        from botocore.exceptions import ClientError

        with self._errors("read", obj.key):
            try:
                response = self._s3.get_object(Bucket=self.bucket, Key=obj.key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise
                return None  # deleted since it was listed
        return self._head(response), self._body(obj.key, response["Body"])

    def _body(self, key: str, body: Any) -> Iterator[bytes]:
        try:
            with self._errors("read", key):
                yield from body.iter_chunks(READ_PIECE)
        finally:
            body.close()

    def head(self, key: str) -> Head | None:
        from botocore.exceptions import ClientError

        try:
            response = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._client_error(exc, "read", f"s3://{self.bucket}/{key}") from None
        return self._head(response)

    def write(self, key: str, size: int, meta: dict[str, Any], pieces: Iterable[bytes], sha256: str) -> None:
        args: dict[str, Any] = {theirs: meta[ours] for ours, theirs in _S3_META_ARGS.items() if meta.get(ours)}
        if meta.get("metadata"):
            args["Metadata"] = dict(meta["metadata"])
        body = _Body(self.label, key, size, sha256, pieces)
        if size <= PART_SIZE:
            data = body.take(size)
            body.check()
            with self._errors("write", key):
                self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, **args)
            return
        with self._errors("write", key):
            upload = self._s3.create_multipart_upload(Bucket=self.bucket, Key=key, **args)["UploadId"]
        try:
            done, number, part = [], 0, part_size(size)
            while body.tell() < size:
                data = body.take(part)  # the last part's take runs the check: never uploaded unless it matches
                if not data:
                    break
                number += 1
                with self._errors("write", key):
                    reply = self._s3.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
                    )
                done.append({"PartNumber": number, "ETag": reply["ETag"]})
                del data
            body.check()  # the object appears only on completion: never with bytes the index does not vouch for
            with self._errors("write", key):
                self._s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
                )
        except BaseException:
            try:
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            except Exception:
                pass  # the original error matters; an orphaned upload is cleaned by the bucket's lifecycle
            raise

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._s3.delete_object(Bucket=self.bucket, Key=key)


# -- GCS ------------------------------------------------------------------------------------------------


class GCSBucket(BucketClient):
    provider = "gcs"

    def __init__(
        self,
        bucket: str,
        label: str,
        *,
        project: str | None,
        endpoint_url: str | None,
        credentials: Any = None,
        ca_file: str | None = None,
    ) -> None:
        super().__init__(bucket, label)
        import google.auth
        from google.auth.credentials import with_scopes_if_required
        from google.cloud import storage

        from core.storage.gcs import authorized_session

        self.endpoint_url, self.ca_file = endpoint_url, ca_file
        options = {"api_endpoint": endpoint_url} if endpoint_url else None
        if endpoint_url and credentials is None:
            # An emulator: google-cloud-storage would otherwise look for real credentials and fail.
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
            project = project or "genesis-dr"
        with self._errors("connect to"):
            if credentials is None:
                credentials, found = google.auth.default(scopes=storage.Client.SCOPE)
                project = project or found
            credentials = with_scopes_if_required(credentials, storage.Client.SCOPE)
            # The library retries requests' SSLError as a connection error, for minutes: the session turns a
            # refused certificate into our TLSError at once, which nothing retries.
            session = authorized_session(credentials, ca_file, pool_maxsize=16, refused=self._refused)
            self._client = storage.Client(
                project=project, credentials=credentials, _http=session, client_options=options
            )
        self._bucket = self._client.bucket(bucket)

    def _refused(self, exc: BaseException) -> Exception:
        return https_error(f"{self.label}: gs://{self.bucket}", self.endpoint_url, exc, self.ca_file)

    @contextmanager
    def _errors(self, what: str, key: str | None = None) -> Iterator[None]:
        import requests
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import DefaultCredentialsError, RefreshError

        where = f"gs://{self.bucket}/{key}" if key else f"gs://{self.bucket}"
        try:
            yield
        except requests.exceptions.SSLError as exc:  # one the session did not send (before its base, ConnectionError)
            raise self._refused(exc) from None
        except gexc.NotFound:
            if key:  # the bucket answered a moment ago: the object went away under us
                raise SourceUnavailableError(
                    f"{self.label}: {where} was deleted while it was being read; run again", transient=True
                ) from None
            raise SourceUnavailableError(
                f"{self.label}: GCS bucket {self.bucket} does not exist; create it or fix 'bucket' in the stack file"
            ) from None
        except (gexc.Forbidden, gexc.Unauthorized) as exc:
            raise SourceUnavailableError(
                f"{self.label}: access denied to {what} {where} ({exc.code}); grant the credentials "
                "storage.objects.list/get (backup) or create/delete (restore) on it, or fix 'credentials'"
            ) from None
        except (gexc.TooManyRequests, gexc.ServerError, gexc.RetryError, requests.ConnectionError, requests.Timeout):
            raise SourceUnavailableError(
                f"{self.label}: GCS is throttling, failing or unreachable to {what} {where}; it is retried",
                transient=True,
            ) from None
        except (DefaultCredentialsError, RefreshError) as exc:
            raise SourceUnavailableError(
                f"{self.label}: no usable Google credentials to {what} {where} ({type(exc).__name__}); set "
                "GOOGLE_APPLICATION_CREDENTIALS or name a GcpCredentials block in 'credentials'"
            ) from None
        except gexc.GoogleAPICallError as exc:
            raise SourceUnavailableError(
                f"{self.label}: GCS refused to {what} {where} ({exc.code}); check the bucket"
            ) from None

    @staticmethod
    def _meta(blob: Any) -> dict[str, Any]:
        return clean_meta(
            {
                "content_type": blob.content_type,
                "content_encoding": blob.content_encoding,
                "cache_control": blob.cache_control,
                "content_disposition": blob.content_disposition,
                "content_language": blob.content_language,
                "metadata": blob.metadata or {},
            }
        )

    def _listed(self, blob: Any) -> Listed:
        return Listed(
            key=blob.name,
            size=int(blob.size or 0),
            etag=blob.etag,
            generation=str(blob.generation) if blob.generation is not None else None,
            metageneration=str(blob.metageneration) if blob.metageneration is not None else None,
            last_modified=_iso(blob.updated),
            meta=self._meta(blob),
        )

    def list(self, prefix: str) -> Iterator[Listed]:
        with self._errors("list"):
            blobs = self._client.list_blobs(self._bucket, prefix=prefix or None)
            for blob in blobs:
                yield self._listed(blob)

    def any_object(self, prefix: str) -> bool:
        with self._errors("list"):
            return any(True for _ in self._client.list_blobs(self._bucket, prefix=prefix or None, max_results=1))

    def _head(self, blob: Any) -> Head:
        listed = self._listed(blob)
        return Head(
            size=listed.size,
            etag=listed.etag,
            generation=listed.generation,
            metageneration=listed.metageneration,
            last_modified=listed.last_modified,
            meta=listed.meta or {},
        )

    def head(self, key: str) -> Head | None:
        with self._errors("read", key):
            blob = self._bucket.get_blob(key)
        return None if blob is None else self._head(blob)

    def read(self, obj: Listed) -> tuple[Head, Iterator[bytes]] | None:
        from google.api_core import exceptions as gexc

        # The generation listed, exactly; if it was replaced since, the current one (what the bucket holds now).
        with self._errors("read", obj.key):
            blob = self._bucket.blob(obj.key, generation=int(obj.generation) if obj.generation else None)
            try:
                blob.reload()
            except gexc.NotFound:
                blob = self._bucket.get_blob(obj.key)  # None: deleted since it was listed
        if blob is None:
            return None
        return self._head(blob), self._body(blob)

    def _body(self, blob: Any) -> Iterator[bytes]:
        # raw_download: bytes as stored (a gzip-encoded object stays gzip), never transcoded.
        with self._errors("read", blob.name):
            reader = blob.open("rb", chunk_size=READ_PIECE, raw_download=True)
        try:
            while True:
                with self._errors("read", blob.name):
                    piece = reader.read(READ_PIECE)
                if not piece:
                    return
                yield piece
        finally:
            reader.close()

    def write(self, key: str, size: int, meta: dict[str, Any], pieces: Iterable[bytes], sha256: str) -> None:
        body = _Body(self.label, key, size, sha256, pieces)
        chunk = max(GCS_CHUNK, part_size(size) // 2)
        blob = self._bucket.blob(key, chunk_size=chunk if size > PART_SIZE else None)
        blob.content_encoding = meta.get("content_encoding")
        blob.cache_control = meta.get("cache_control")
        blob.content_disposition = meta.get("content_disposition")
        blob.content_language = meta.get("content_language")
        blob.metadata = dict(meta.get("metadata") or {}) or None
        content_type = meta.get("content_type")
        if size <= PART_SIZE:
            data = bytes(body.take(size))
            body.check()
            with self._errors("write", key):
                blob.upload_from_string(data, content_type=content_type)
            return
        # Resumable upload, one chunk in memory; _Body refuses to hand on the last bytes unless they match.
        with self._errors("write", key):
            blob.upload_from_file(body, size=size, content_type=content_type, checksum=None)

    def delete(self, key: str) -> None:
        from google.api_core import exceptions as gexc

        with self._errors("delete", key):
            try:
                self._bucket.delete_blob(key)
            except gexc.NotFound:
                pass  # gone already is what we wanted


def client_for(config: Any, label: str) -> BucketClient:
    """The client for a ``BucketSourceConfig`` (credentials: attached, else its named block, else the default chain)."""
    credentials = getattr(config, "_credentials", None)
    if credentials is None and config.credentials:
        if _resolver is None:
            raise SourceUnavailableError(
                f"{label}: credentials block {config.credentials!r} cannot be loaded here (no Prefect blocks layer); "
                "run through genesis-dr / the flows, or drop 'credentials' to use the default chain"
            )
        credentials = _resolver(config.provider, config.credentials)
    if config.endpoint_url:
        try:  # the bucket's objects and the credentials travel to it: https, or plain http on this machine only
            check_endpoint(config.endpoint_url)
        except ValueError as exc:
            raise ConfigError(f"{label}: endpoint_url: {exc}") from None
    check_ca_file(label, config.ca_file)
    if config.provider == "s3":
        return S3Bucket(
            config.bucket,
            label,
            region=config.region,
            endpoint_url=config.endpoint_url,
            session=credentials,
            ca_file=config.ca_file,
        )
    return GCSBucket(
        config.bucket,
        label,
        project=config.project,
        endpoint_url=config.endpoint_url,
        credentials=credentials,
        ca_file=config.ca_file,
    )
