"""Helpers shared by the SQS adapter tests (imported by basename; unique name on purpose)."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from urllib.parse import urlsplit

from messagebus.testing import missing_broker, wait_for_port
from messagebus.transports import Destination, DestinationKind, OutgoingMessage
from messagebus.transports import headers as h


def make_url(endpoint: str, prefix: str, **options: object) -> str:
    """An sqs:// URL for the moto server with short polls and per-test prefixes."""
    query = {
        "region": "us-east-1",
        "endpoint_url": endpoint,
        "wait_time": 1,
        "visibility_timeout": 20,  # generous: moto answers slowly on a loaded machine, extensions lag
        "queue_prefix": prefix,
        "topic_prefix": prefix,
    }
    query.update(options)
    text = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in query.items())
    return f"sqs://?{text}"


def queue(name: str) -> Destination:
    """The queue ``name``."""
    return Destination(DestinationKind.QUEUE, name)


def message(
    dest: Destination, body: bytes, headers: dict[str, str] | None = None, key: str | None = None
) -> OutgoingMessage:
    """A message to ``dest`` with a fresh CloudEvents id and the required CloudEvents headers,
    ``headers`` added (or overriding them)."""
    wire = {h.CE_ID: uuid.uuid4().hex, h.CE_SOURCE: "tests", h.CE_TYPE: "t", h.CE_SPECVERSION: "1.0"}
    return OutgoingMessage(dest, body, {**wire, **(headers or {})}, key)


def endpoint_port(endpoint: str) -> int:
    """The TCP port of an http:// endpoint URL."""
    port = urlsplit(endpoint).port
    assert port is not None
    return port


class MotoServer:
    """A moto server this session started; :meth:`restart` starts it again on the same port
    (everything it held is lost: moto keeps its state in memory)."""

    def __init__(self, command: list[str], port: int) -> None:
        self.command = command
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it listens (``missing_broker`` if it does not)."""
        self.proc = subprocess.Popen(
            [*self.command, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_port("127.0.0.1", self.port, timeout=30):
            self.stop()
            missing_broker("sqs", f"moto_server did not listen on port {self.port} within 30s")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    async def restart(self) -> None:
        """Stop the server and start a fresh one on the same port; returns once it listens."""
        await asyncio.to_thread(self.stop)
        await asyncio.to_thread(self.start)


def topic_arns(sns: object) -> list[str]:
    """Every SNS topic ARN, all pages (moto, like SNS, lists 100 a page: a session's tests
    make more than that)."""
    arns: list[str] = []
    for page in sns.get_paginator("list_topics").paginate():  # type: ignore[attr-defined]
        arns.extend(t["TopicArn"] for t in page["Topics"])
    return arns
