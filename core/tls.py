"""Transport security to a source: one model for PostgreSQL, MariaDB/MySQL and Redis.

Verification is on by default: a source with ``tls:`` is reached only over TLS,
its certificate checked against ``ca_file`` (or the system's CA store) and its
name against the host (``verify-full``). ``verify-ca`` skips the name check
(a server reached by address whose certificate names a host), ``require``
encrypts without checking (refused unless asked for by name). Client
certificates (``cert_file`` + ``key_file``) authenticate us where the server
asks for them. Files are read at run time on the host that runs the flow; none
of them is a secret stored in Prefect (a client key's path is, not the key).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TlsMode = Literal["require", "verify-ca", "verify-full"]


class TLSConfig(BaseModel):
    """TLS to a source server, verified by default (``mode: verify-full``)."""

    model_config = ConfigDict(extra="forbid")
    mode: TlsMode = Field(
        "verify-full",
        description="verify-full (default: the certificate chains to ca_file and names the host), verify-ca "
        "(chains to ca_file, any name) or require (encrypted, not verified: only where nothing else is possible).",
    )
    ca_file: str | None = Field(
        None, description="PEM file of the CA(s) that sign the server's certificate (default: the system's CA store)."
    )
    cert_file: str | None = Field(None, description="PEM client certificate, where the server asks for one.")
    key_file: str | None = Field(None, description="PEM private key of cert_file (a path; the file stays on the host).")
    server_name: str | None = Field(
        None,
        description="The name the certificate must carry, when it differs from host (e.g. host is an address).",
    )

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both (a client certificate) or neither")
        return self

    @property
    def verify(self) -> bool:
        return self.mode != "require"

    @property
    def check_hostname(self) -> bool:
        return self.mode == "verify-full"
