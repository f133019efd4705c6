"""Fixtures: a moto server (SQS + SNS) for the session, fake credentials, unique name prefixes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from messagebus_sqs import SqsTransport
from sqs_helpers import make_url

from messagebus.testing import free_port, missing_broker, wait_for_port

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _moto_server_binary() -> str | None:
    candidate = Path(sys.executable).with_name("moto_server")
    if candidate.exists():
        return str(candidate)
    return shutil.which("moto_server")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto server started for the session (or
    ``MESSAGEBUS_TEST_SQS_URL``, either an endpoint URL or an ``sqs://...&endpoint_url=`` URL)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAKE_ENV.items():
            mp.setenv(name, value)
        given = os.environ.get("MESSAGEBUS_TEST_SQS_URL")
        if given:
            if given.startswith("sqs://"):
                from messagebus.transports import TransportURL

                endpoint = TransportURL.parse(given).query.get("endpoint_url", "")
            else:
                endpoint = given
            yield endpoint.rstrip("/")
            return
        binary = _moto_server_binary()
        if binary is None:
            missing_broker("sqs", "moto_server not found; pip install 'moto[server]'")
        port = free_port()
        proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not wait_for_port("127.0.0.1", port, timeout=30):
                missing_broker("sqs", f"moto_server did not listen on port {port} within 30s")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def prefix() -> str:
    """A unique name prefix, so tests sharing one moto server never see each other's queues."""
    return "t" + uuid.uuid4().hex[:10] + "-"


@pytest.fixture
def sqs_url(moto_endpoint: str, prefix: str) -> str:
    """An sqs:// URL to the session's moto server, with this test's prefixes."""
    return make_url(moto_endpoint, prefix)


@pytest.fixture
async def transport(sqs_url: str) -> AsyncIterator[SqsTransport]:
    """A connected transport, closed after the test."""
    t = SqsTransport.from_url(sqs_url)
    await t.connect()
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
def raw_clients(moto_endpoint: str) -> tuple[object, object]:
    """Plain boto3 (sqs, sns) clients on the moto server, to look at what the transport made."""
    import boto3

    kw = {"region_name": "us-east-1", "endpoint_url": moto_endpoint}
    return boto3.client("sqs", **kw), boto3.client("sns", **kw)
