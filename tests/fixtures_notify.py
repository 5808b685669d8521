"""Receivers for notification tests: a real HTTP server thread on 127.0.0.1, and SNS on moto read through SQS.

A ``Receiver`` records every request (path, headers, JSON body) and answers with the status
and delay it was given, so a test can play Slack, PagerDuty, a webhook, a receiver that
fails (5xx) or one that is too slow, and assert on exactly what was posted.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fixtures_cloud import PRIMARY_REGION
from tests.servers import free_port


@dataclass
class Posted:
    path: str
    headers: dict[str, str]
    body: Any  # the JSON document (or the raw text if it is not JSON)


class Receiver:
    """``with Receiver(status=200, delay=0) as rx:`` - ``rx.url(path)``, then ``rx.posts`` (or ``rx.wait(n)``)."""

    def __init__(self, status: int = 200, delay: float = 0.0, answer: Any = None) -> None:
        self.status, self.delay, self.answer = status, delay, answer
        self.posts: list[Posted] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    receiver.posts.append(Posted(self.path, dict(self.headers), body))
                    receiver._lock.notify_all()
                payload = json.dumps(receiver.answer if receiver.answer is not None else {"ok": True}).encode()
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (a slow-receiver test)
                    pass

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, count: int, timeout: float = 10.0) -> list[Posted]:
        """The posts once there are ``count`` of them (a slow receiver records after its delay)."""
        with self._lock:
            self._lock.wait_for(lambda: len(self.posts) >= count, timeout=timeout)
            return list(self.posts)

    def to(self, prefix: str) -> list[Posted]:
        return [p for p in self.posts if p.path.startswith(prefix)]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_url(path: str = "/hook") -> str:
    """A URL on 127.0.0.1 where nothing listens (a receiver that is down)."""
    return f"http://127.0.0.1:{free_port()}{path}"


class SnsInbox:
    """An SNS topic on moto with an SQS queue subscribed to it: what was published, as SQS received it."""

    def __init__(self, endpoint: str, region: str = PRIMARY_REGION) -> None:
        import boto3

        self.sns = boto3.client("sns", endpoint_url=endpoint, region_name=region)
        self.sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)
        name = f"gdr-{uuid.uuid4().hex[:10]}"
        self.topic_arn = self.sns.create_topic(Name=name)["TopicArn"]
        self.queue_url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=queue_arn)

    def messages(self, count: int = 1, timeout: float = 10.0) -> list[dict]:
        """The SNS envelopes (Subject, Message, MessageAttributes, ...) of ``count`` published messages."""
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for msg in got.get("Messages", []):
                out.append(json.loads(msg["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
        return out
