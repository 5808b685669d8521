"""A vault in a Google Cloud Storage bucket (google-cloud-storage over the JSON API).

Versions are object generations. Immutable objects are created with
``ifGenerationMatch=0`` and leases replaced or released with
``ifGenerationMatch=<generation read>``: GCS checks these atomically, so two
runs can never both win a lease (a 412 is the loser's answer, never an error).

Objects up to 8 MiB (every vault chunk, manifest and lease) go up in one
multipart request; larger ones as a resumable upload in 8 MiB requests, so no
request body is larger than that. Backup data (``backups/<id>/streams/`` and
``logdata/``) gets the vault's storage class; everything small and mutable
stays STANDARD (NEARLINE/COLDLINE bill a 30/90-day minimum per overwrite).

The library's own retries are turned off on every call (``retry=None``):
``RetryingStore`` retries and counts. Every provider error leaves here as one
of core/storage/base.py's kinds, in one line naming the bucket, never a
credential.

Lifecycle: legal holds are event-based holds (``lock_supported()`` is always
True; a temporary hold or a bucket retention policy locks an object as well).
``destroy`` deletes every generation of one object after checking none is held
or retained (ObjectLockedError, nothing removed); a bucket's soft-delete policy
still keeps deleted objects restorable for its duration, so a vault bucket meant
for secure deletion has it cleared (gcloud storage buckets update --clear-soft-delete).
``set_storage_class`` rewrites the object in place (ARCHIVE_CLASSES); GCS reads
every class at once, so nothing is ever frozen and ``thaw`` is "ready". GCS
refuses to replace a held object, so a held object's class cannot change.

With an endpoint (a test emulator: ``endpoint_url`` or STORAGE_EMULATOR_HOST)
and no credentials the client is anonymous: prefect-gcp's GcpCredentials
cannot talk to an emulator (shared/PREFECT-NOTES.md).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

import google.auth
import requests
from google.api_core import exceptions as api_exc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, with_scopes_if_required
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from requests.adapters import HTTPAdapter

from core.errors import ObjectLockedError, VaultError
from core.storage.base import (
    Capabilities,
    ObjectInfo,
    ObjectNotFound,
    Store,
    StoreAccessError,
    TransientStoreError,
    checked_key,
)
from core.storage.retry import unwrap
from core.tls import https_error

# Up to this size an upload is one multipart request (the library's own threshold); above it, a
# resumable upload whose requests each carry CHUNK_SIZE bytes (a multiple of 256 KiB, as GCS requires).
MULTIPART_MAX = 8 << 20
CHUNK_SIZE = 8 << 20
TIMEOUT = (10.0, 120.0)  # (connect, read) seconds per request
POOL_SIZE = 32  # io_threads (8) uploads + downloads + listings in flight, with room to spare
_DATA_KEY = re.compile(r"^(backups/[^/]+/streams/|logdata/)")
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
# The classes retention may move data to (set_storage_class); new data keeps the narrower list.
ARCHIVE_CLASSES = ("STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE")


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """A short, secret-free reason: the HTTP status and the service's own message, without URLs."""
    status = _status(exc)
    if status is not None:
        detail = ""
        response = getattr(exc, "response", None)
        try:
            detail = response.json()["error"]["message"]  # the JSON API's error body
        except Exception:  # noqa: BLE001 - not JSON, or no body: fall back
            for err in getattr(exc, "errors", None) or ():
                if isinstance(err, dict) and err.get("message"):
                    detail = err["message"]
                    break
        if not detail:
            try:
                detail = HTTPStatus(status).phrase
            except ValueError:
                detail = "error"
        return _one_line(f"HTTP {status}: {detail}")
    return _one_line(f"{type(exc).__name__}: {exc}")


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, api_exc.GoogleAPICallError):
        return exc.code
    if isinstance(exc, InvalidResponse) and exc.response is not None:
        return exc.response.status_code
    return None


class _Adapter(HTTPAdapter):
    """requests' adapter verifying against ``ca_file`` when one is given (a private CA of an on-premises
    endpoint). Set per request, because requests lets REQUESTS_CA_BUNDLE override a session's ``verify``;
    without ca_file, requests' default applies (REQUESTS_CA_BUNDLE or its CA bundle). Never unverified.
    ``refused``: what a refused certificate becomes here, at once (None: requests' SSLError as it is)."""

    def __init__(
        self, ca_file: str | None, refused: Callable[[BaseException], Exception] | None = None, **kwargs: Any
    ) -> None:
        self.ca_file = ca_file
        self.refused = refused
        super().__init__(**kwargs)

    def send(self, request: Any, **kwargs: Any) -> Any:
        if self.ca_file:
            kwargs["verify"] = self.ca_file
        elif kwargs.get("verify") is False:
            kwargs["verify"] = True  # nothing turns verification off
        try:
            return super().send(request, **kwargs)
        except requests.exceptions.SSLError as exc:
            if self.refused is None:
                raise
            raise self.refused(exc) from None


def authorized_session(
    credentials: Any,
    ca_file: str | None,
    *,
    pool_maxsize: int,
    refused: Callable[[BaseException], Exception] | None = None,
) -> AuthorizedSession:
    """A session for google-cloud-storage (its ``_http``) whose HTTPS is verified against ``ca_file`` (else
    requests' default), without urllib3 retries. ``refused``: see ``_Adapter``; a caller whose library calls
    keep their own retries gives one, because those retry requests' SSLError (a connection error to them)."""
    session = AuthorizedSession(credentials)
    adapter = _Adapter(ca_file, refused, pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class GCSStore(Store):
    """Objects under ``prefix`` in the GCS bucket ``bucket``."""

    capabilities = Capabilities(
        provider="gcs",
        server_side_copy=True,
        object_lock=True,  # event-based holds and bucket retention policies
        storage_classes=("STANDARD", "NEARLINE", "COLDLINE"),
        io_threads=8,
    )

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        project: str | None = None,
        storage_class: str = "STANDARD",
        endpoint_url: str | None = None,
        credentials: Any = None,
        ca_file: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.ca_file = ca_file
        self.prefix = prefix.strip("/")
        self.project = project
        self.storage_class = (storage_class or "STANDARD").upper()
        if self.storage_class not in self.capabilities.storage_classes:
            raise VaultError(
                f"gcs://{bucket}: storage class {storage_class!r} is not one of "
                f"{', '.join(self.capabilities.storage_classes)}"
            )
        endpoint = endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST") or None
        if endpoint and "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        self.endpoint_url = endpoint.rstrip("/") if endpoint else None
        self._credentials = credentials
        self._lock = threading.Lock()
        self._client_obj: storage.Client | None = None
        self._session: AuthorizedSession | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    def describe(self) -> str:
        return f"gcs://{self.bucket}/{self.prefix}".rstrip("/")

    def _client(self) -> storage.Client:
        # Built on first use: describing or configuring a vault must not need credentials.
        with self._lock:
            if self._client_obj is None:
                credentials = self._credentials
                try:
                    if credentials is None:
                        if self.endpoint_url:
                            credentials = AnonymousCredentials()
                        else:
                            credentials, _ = google.auth.default(scopes=storage.Client.SCOPE)
                    credentials = with_scopes_if_required(credentials, storage.Client.SCOPE)
                except auth_exc.DefaultCredentialsError:
                    raise self._no_credentials() from None
                # One pool big enough for io_threads requests in flight; no urllib3 retries (RetryingStore's job).
                session = authorized_session(credentials, self.ca_file, pool_maxsize=POOL_SIZE)
                options = {"api_endpoint": self.endpoint_url} if self.endpoint_url else None
                self._client_obj = storage.Client(
                    project=self.project, credentials=credentials, _http=session, client_options=options
                )
                if getattr(self._client_obj, "_bucket_metadata_cache", None) is not None:
                    # google-cloud-storage 3.x fetches each bucket's metadata in a background thread, with its own
                    # retries, only to label trace spans: requests we neither need nor count.
                    self._client_obj._bucket_metadata_cache = None
                self._session = session
            return self._client_obj

    def _bucket(self) -> storage.Bucket:
        return self._client().bucket(self.bucket)

    def _name(self, key: str) -> str:
        checked_key(self.describe(), key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_prefix(self, prefix: str) -> str:
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    def _blob(self, key: str, *, upload: bool = False) -> storage.Blob:
        # chunk_size only on uploads: it bounds each resumable request; on a download it would split the
        # read into ranged requests that do not report the generation (get_versioned needs it).
        return self._bucket().blob(self._name(key), chunk_size=CHUNK_SIZE if upload else None)

    def _class_for(self, key: str) -> str:
        return self.storage_class if _DATA_KEY.match(key) else "STANDARD"

    def _no_credentials(self) -> StoreAccessError:
        return StoreAccessError(
            f"gcs bucket {self.bucket}: no Google credentials found; set GOOGLE_APPLICATION_CREDENTIALS, run "
            "'gcloud auth application-default login', or name a GcpCredentials block in vault.credentials"
        )

    def _bucket_missing(self) -> StoreAccessError:
        return StoreAccessError(f"gcs bucket {self.bucket} does not exist; create it or fix vault.bucket")

    def _check_bucket(self) -> None:
        """After a 404 on an object: raise StoreAccessError if it was the bucket that is missing."""
        try:
            found = self._bucket().exists(timeout=TIMEOUT, retry=None)
        except Exception as exc:  # noqa: BLE001 - classified below
            raise self._translate(exc, "checking", "the bucket") from None
        if not found:
            raise self._bucket_missing()

    def _translate(self, exc: BaseException, action: str, key: str) -> VaultError:
        """One of base.py's error kinds for a provider error (never a credential in the message)."""
        where = f"{self.describe()}: {action} {key}"
        if isinstance(exc, VaultError):
            return exc
        if isinstance(exc, auth_exc.DefaultCredentialsError):
            return self._no_credentials()
        if isinstance(exc, auth_exc.RefreshError):
            return StoreAccessError(
                f"gcs bucket {self.bucket}: the Google credentials were refused ({_reason(exc)}) while {action} {key}; "
                "renew the service account key or name a valid GcpCredentials block in vault.credentials"
            )
        if isinstance(exc, requests.exceptions.SSLError) or (
            isinstance(exc, auth_exc.TransportError) and isinstance(exc.__cause__, requests.exceptions.SSLError)
        ):
            # Never transient: a retry meets the same certificate.
            return https_error(f"vault {self.describe()}", self.endpoint_url, exc, self.ca_file)
        if isinstance(exc, auth_exc.TransportError | requests.ConnectionError | requests.Timeout):
            return TransientStoreError(f"{where}: connection failed ({_reason(exc)})")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return TransientStoreError(f"{where}: connection reset mid-transfer ({_reason(exc)})")
        if isinstance(exc, DataCorruption):
            return TransientStoreError(f"{where}: checksum mismatch in transfer (corrupted on the wire)")
        status = _status(exc)
        if status in (401, 403):
            return StoreAccessError(
                f"gcs bucket {self.bucket}: access denied while {action} {key} ({_reason(exc)}); grant the "
                "credentials roles/storage.objectAdmin on the bucket or name the right GcpCredentials block in "
                "vault.credentials"
            )
        if status in _RETRYABLE_STATUS:
            return TransientStoreError(f"{where}: {_reason(exc)}")
        if status == 404:
            return self._bucket_missing()
        return VaultError(f"{where} failed: {_reason(exc)}")

    def _upload(self, key: str, data: bytes, generation: int | None) -> str | None:
        """Upload ``key``; with ``generation`` only if the object's generation is that (0: absent).
        The new generation, or None when the precondition failed."""
        blob = self._blob(key, upload=True)
        blob.storage_class = self._class_for(key)
        try:
            blob.upload_from_string(
                data,
                content_type="application/octet-stream",
                if_generation_match=generation,
                timeout=TIMEOUT,
                retry=None,
            )
        except api_exc.PreconditionFailed:
            return None
        except Exception as exc:  # noqa: BLE001 - every provider error is classified
            if _status(exc) == 412:
                return None
            # A 404 on an upload can only mean the bucket is missing (an object's absence is a 412).
            raise self._translate(exc, "writing", key) from None
        return str(blob.generation)

    # -- the interface ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        if self._upload(key, data, None if overwrite else 0) is None:
            raise VaultError(f"vault {self.describe()}: object {key} already exists; stored objects are immutable")

    def create(self, key: str, data: bytes) -> str | None:
        return self._upload(key, data, 0)

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        try:
            generation = int(version)
        except ValueError:
            return None  # not a generation of ours: it cannot be the current one
        if generation <= 0:
            return None
        return self._upload(key, data, generation)

    def get(self, key: str) -> bytes:
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        blob = self._blob(key)
        try:
            data = blob.download_as_bytes(timeout=TIMEOUT, retry=None)
        except api_exc.NotFound:
            self._check_bucket()
            raise ObjectNotFound(f"vault {self.describe()}: object {key} is missing") from None
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "reading", key) from None
        if not blob.generation:
            # Without the generation of exactly these bytes a later replace could be a blind overwrite.
            raise VaultError(f"{self.describe()}: reading {key}: the server did not report the object's generation")
        return data, str(blob.generation)

    def stat(self, key: str) -> ObjectInfo | None:
        blob = self._blob(key)
        try:
            blob.reload(timeout=TIMEOUT, retry=None)
        except api_exc.NotFound:
            self._check_bucket()
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "reading", key) from None
        return ObjectInfo(
            key,
            int(blob.size or 0),
            str(blob.generation),
            storage_class=blob.storage_class,
            metadata=dict(blob.metadata or {}),
        )

    def list(self, prefix: str = "") -> Iterator[str]:
        full = self._list_prefix(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            keys = [
                b.name[strip:] for b in self._client().list_blobs(self.bucket, prefix=full, timeout=TIMEOUT, retry=None)
            ]
        except Exception as exc:  # noqa: BLE001 - a 404 on a listing is the bucket
            raise self._translate(exc, "listing", prefix or "/") from None
        return iter(sorted(keys))

    def children(self, prefix: str) -> list[str]:
        if prefix and not prefix.endswith("/"):
            prefix += "/"  # a folder, as in LocalStore
        full = self._list_prefix(prefix)
        try:
            pages = self._client().list_blobs(self.bucket, prefix=full, delimiter="/", timeout=TIMEOUT, retry=None)
            names = {b.name[len(full) :] for b in pages}  # consuming the pages fills .prefixes
            names.update(p[len(full) :].rstrip("/") for p in pages.prefixes)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "listing", prefix or "/") from None
        names.discard("")
        return sorted(names)

    def delete(self, key: str) -> None:
        try:
            self._blob(key).delete(timeout=TIMEOUT, retry=None)
        except api_exc.NotFound:
            self._check_bucket()  # an absent object is fine (deletes are idempotent); a missing bucket is not
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "deleting", key) from None

    def delete_if(self, key: str, version: str) -> bool:
        try:
            generation = int(version)
        except ValueError:
            return False
        try:
            self._blob(key).delete(if_generation_match=generation, timeout=TIMEOUT, retry=None)
        except api_exc.PreconditionFailed:
            return False
        except api_exc.NotFound:
            self._check_bucket()
            return False
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "deleting", key) from None
        return True

    def copy_from(self, source: Store, key: str, dest_key: str | None = None) -> bool:
        """Server-side rewrite from another GCSStore on the same endpoint (any bucket, any location)."""
        src = unwrap(source)
        if not isinstance(src, GCSStore) or src.endpoint_url != self.endpoint_url:
            return False
        dest_key = dest_key or key
        src_blob = src._bucket().blob(src._name(key))
        dest = self._blob(dest_key, upload=True)
        dest.storage_class = self._class_for(dest_key)
        token = None
        try:
            while True:  # large or cross-location rewrites take several calls, each resuming by token
                token, _done, _total = dest.rewrite(src_blob, token=token, timeout=TIMEOUT, retry=None)
                if token is None:
                    return True
        except api_exc.NotFound:
            src._check_bucket()
            self._check_bucket()
            raise ObjectNotFound(f"vault {src.describe()}: object {key} is missing") from None
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, f"copying {src.describe()}/{key} to", dest_key) from None

    # -- lifecycle: holds, archive classes, destruction -------------------------------------------

    def _lock_reason(self, blob: storage.Blob) -> str | None:
        """Why GCS would refuse to delete or replace this generation, or None."""
        from datetime import UTC, datetime

        if blob.event_based_hold:
            return "legal hold"
        if blob.temporary_hold:
            return "temporary hold"
        until = blob.retention_expiration_time
        if until is not None and until > datetime.now(UTC):
            return f"retention until {until.astimezone(UTC).isoformat(timespec='seconds')}"
        return None

    def _locked(self, key: str, why: str) -> ObjectLockedError:
        if why == "legal hold":
            remedy = "it becomes deletable when the hold is released (genesis-dr hold release HOLD_ID REASON)"
        elif why == "temporary hold":
            remedy = "remove the temporary hold (gcloud storage objects update --no-temporary-hold) to delete it"
        else:
            remedy = f"it becomes deletable after {why.split(' ')[2]}"
        return ObjectLockedError(f"{self.describe()}: {key} is locked by a GCS {why}; {remedy}")

    def _generations(self, key: str) -> list[storage.Blob]:
        name = self._name(key)
        try:
            blobs = self._client().list_blobs(self.bucket, prefix=name, versions=True, timeout=TIMEOUT, retry=None)
            return [b for b in blobs if b.name == name]
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "destroying", key) from None

    def _reloaded(self, key: str, action: str) -> storage.Blob:
        blob = self._blob(key)
        try:
            blob.reload(timeout=TIMEOUT, retry=None)
        except api_exc.NotFound:
            self._check_bucket()
            raise ObjectNotFound(f"vault {self.describe()}: object {key} is missing") from None
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, action, key) from None
        return blob

    def destroy(self, key: str, *, passes: int = 1) -> None:
        """Every generation of ``key`` (``passes`` means nothing here: a deleted generation is gone,
        apart from the bucket's soft-delete window)."""
        generations = self._generations(key)
        for blob in generations:
            why = self._lock_reason(blob)
            if why:
                raise self._locked(key, why)
        for blob in generations:
            target = self._bucket().blob(blob.name, generation=blob.generation)
            try:
                target.delete(timeout=TIMEOUT, retry=None)
            except api_exc.NotFound:
                continue  # gone meanwhile
            except Exception as exc:  # noqa: BLE001
                if _status(exc) == 403:
                    try:
                        target.reload(timeout=TIMEOUT, retry=None)
                    except Exception:  # noqa: BLE001 - the original refusal is the error to report
                        raise self._translate(exc, "destroying", key) from None
                    why = self._lock_reason(target)
                    if why:
                        raise self._locked(key, why) from None
                raise self._translate(exc, "destroying", key) from None

    def lock_supported(self) -> bool:
        return True  # event-based holds need no bucket setting

    def set_legal_hold(self, key: str, on: bool) -> None:
        blob = self._reloaded(key, "holding")
        if bool(blob.event_based_hold) == on:
            return
        blob.event_based_hold = on
        try:
            blob.patch(timeout=TIMEOUT, retry=None)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "holding", key) from None

    def legal_hold(self, key: str) -> bool:
        return bool(self._reloaded(key, "holding").event_based_hold)

    def set_storage_class(self, key: str, storage_class: str) -> None:
        wanted = (storage_class or "").upper()
        if wanted not in ARCHIVE_CLASSES:
            raise VaultError(
                f"{self.describe()}: storage class {storage_class!r} for {key} is not one of {', '.join(ARCHIVE_CLASSES)}"
            )
        blob = self._reloaded(key, "archiving")
        if blob.storage_class == wanted:
            return
        why = self._lock_reason(blob)
        if why:
            # GCS refuses to replace a held or retained object; the rewrite would fail with a bare 403.
            raise self._locked(key, why)
        try:
            blob.update_storage_class(wanted, if_generation_match=blob.generation, timeout=TIMEOUT, retry=None)
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc, "archiving", key) from None
        # On a versioned bucket the rewrite leaves the old generation behind, in the old class. Only
        # generations the listing shows as other than the new one are removed (never "generation=old"
        # blindly: an emulator that ignores the generation would delete the live object).
        for stale in self._generations(key):
            if stale.generation == blob.generation:
                continue
            try:
                self._bucket().blob(stale.name, generation=stale.generation).delete(timeout=TIMEOUT, retry=None)
            except api_exc.NotFound:
                pass
            except Exception as exc:  # noqa: BLE001
                raise self._translate(exc, "archiving", key) from None

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._client_obj = None
            self._session = None
