"""Posting JSON over HTTP(S) and publishing to SNS, each answering (ok, one-line detail) instead of raising.

A notification is a report about a run, never part of it: a receiver that is down, slow
or failing is an outcome to count, not an exception. The detail names the endpoint by
its host only: webhook URLs carry their token in the path, and the routing key travels
in the body, so neither can reach a log through a detail.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from core.tls import check_endpoint, https_error


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be re-sent (or turned into a GET) to a place the stack never named.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def endpoint(url: str) -> str:
    """``host[:port]`` of a URL: enough to find the receiver, nothing of its path, query or user info."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def _why(exc: BaseException, where: str, timeout: float) -> str:
    reason = (
        exc.reason if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError) else exc
    )
    if isinstance(reason, TimeoutError | socket.timeout):
        return f"no answer from {where} within {timeout:g}s"
    if isinstance(reason, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(reason, ConnectionResetError):
        return f"connection reset by {where}"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {where}"
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return f"{where}: {' '.join(str(text).split())[:200]}"


def post_json(url: str, payload: Any, timeout: float) -> tuple[bool, str]:
    """POST ``payload`` as JSON; (True, "HTTP 202 from host") for a 2xx answer, else (False, why)."""
    where = endpoint(url)
    if urlsplit(url).scheme not in ("http", "https"):
        return False, f"{where}: not an http(s) URL; check the channel's url"
    data = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", "User-Agent": "genesis-dr"}
    )
    try:
        with _opener.open(request, timeout=timeout) as answer:
            answer.read(64 * 1024)  # drain a little so keep-alive receivers see a complete exchange
            return True, f"HTTP {answer.status} from {where}"
    except urllib.error.HTTPError as exc:
        # The answer's body is not echoed: a receiver may repeat the request (and its routing key) in it.
        return False, f"HTTP {exc.code} {' '.join(str(exc.reason).split())[:80]} from {where}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, _why(exc, where, timeout)


def sns_publish(
    topic_arn: str,
    subject: str,
    message: str,
    attributes: dict[str, str],
    *,
    region: str | None,
    endpoint_url: str | None,
    session: Any,
    timeout: float,
) -> tuple[bool, str]:
    """Publish to an SNS topic with one attempt bounded by ``timeout``; (True, "message id ...") or (False, why)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError, SSLError

    region = region or (topic_arn.split(":")[3] if topic_arn.count(":") >= 5 else None)
    where = endpoint(endpoint_url) if endpoint_url else f"sns.{region or '?'}"
    if endpoint_url:
        try:  # the message and the credentials' signature travel to it: https, or http on this machine only
            check_endpoint(endpoint_url)
        except ValueError as exc:
            return False, f"sns endpoint_url: {exc}"
    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1})
    try:
        client = (session or boto3.session.Session()).client(
            "sns", region_name=region, endpoint_url=endpoint_url, config=config
        )
        answer = client.publish(
            TopicArn=topic_arn,
            Subject=subject,
            Message=message,
            MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
        )
        return True, f"message {answer.get('MessageId', '?')} published to {topic_arn} via {where}"
    except (ConnectTimeoutError, ReadTimeoutError):
        return False, f"no answer from {where} within {timeout:g}s"
    except ClientError as exc:
        err = exc.response.get("Error", {})
        text = " ".join(str(err.get("Message", "")).split())[:160]
        return False, f"{where} refused the publish to {topic_arn}: {err.get('Code', '?')} {text}".rstrip()
    except SSLError as exc:
        return False, str(https_error(where, endpoint_url, exc, None, "AWS_CA_BUNDLE"))
    except BotoCoreError as exc:
        return False, f"{where}: {' '.join(str(exc).split())[:200]}"
