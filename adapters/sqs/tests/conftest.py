"""Fixtures: a moto server (SQS + SNS) for the session, fake credentials, unique name prefixes."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from messagebus_sqs import SqsTransport
from sqs_helpers import MotoServer, make_url

from messagebus.testing import free_port, missing_broker
from messagebus.testing._brokers import BrokerProcess

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _moto_server_command() -> list[str] | None:
    """moto's server, with ReceiveMessage made atomic (see moto_atomic_server.py)."""
    if importlib.util.find_spec("moto.server") is None:
        return None
    return [sys.executable, str(Path(__file__).with_name("moto_atomic_server.py"))]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer | None]:
    """The moto server started for the session, or ``None`` with ``MESSAGEBUS_TEST_SQS_URL``
    (then nothing can restart it). Sets fake AWS credentials for the session."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in FAKE_ENV.items():
            mp.setenv(name, value)
        if os.environ.get("MESSAGEBUS_TEST_SQS_URL"):
            yield None
            return
        command = _moto_server_command()
        if command is None:
            missing_broker("sqs", "moto's server not found; pip install 'moto[server]'")
        server = MotoServer(command, free_port())
        try:
            server.start()
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def sqs_crash_server(moto_server: MotoServer | None) -> Iterator[BrokerProcess]:
    """A moto server of its own for the crash tests, started on first use and killed at the
    end of the session. It keeps nothing across a crash (moto lives in memory): the tests
    check that the transport recovers and what it confirmed afterwards arrives."""
    command = _moto_server_command()
    if command is None:
        missing_broker("sqs", "moto's server not found; pip install 'moto[server]'")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="messagebus-moto-") as base:
        server = BrokerProcess(
            "sqs (crashable moto)",
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            port,
            make_url(f"http://127.0.0.1:{port}", "crash-"),
            keeps_messages=False,
            log_path=os.path.join(base, "moto.log"),
            start_timeout=30.0,
        )
        try:
            server.start_sync()
            yield server
        finally:
            server.close()


@pytest.fixture(scope="session")
def moto_endpoint(moto_server: MotoServer | None) -> str:
    """``http://127.0.0.1:PORT`` of a moto server started for the session (or
    ``MESSAGEBUS_TEST_SQS_URL``, either an endpoint URL or an ``sqs://...&endpoint_url=`` URL)."""
    if moto_server is not None:
        return moto_server.endpoint
    given = os.environ["MESSAGEBUS_TEST_SQS_URL"]
    if given.startswith("sqs://"):
        from messagebus.transports import TransportURL

        given = TransportURL.parse(given).query.get("endpoint_url", "")
    return given.rstrip("/")


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
