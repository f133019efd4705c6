"""Fixtures: Google's Pub/Sub emulator for the tests.

``MESSAGEBUS_TEST_PUBSUB_URL`` (a ``pubsub://PROJECT?emulator_host=HOST:PORT`` URL) points the
tests at a running emulator. Otherwise a session fixture starts one on a free port, through
the emulator's own launcher script when it is found (about 2 s) or ``gcloud beta emulators
pubsub start`` (slower), and kills its whole process group at the end: the Java process
outlives a killed gcloud wrapper otherwise. Without an emulator the tests skip (fail in CI).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from messagebus_pubsub import PubSubTransport
from pubsub_helpers import Admin, Emulator, crashable_emulator, url_for

from messagebus.testing import free_port, missing_broker, wait_for_port
from messagebus.testing._brokers import BrokerProcess
from messagebus.transports import TransportURL


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[Emulator | None]:
    """The emulator started for this session, or ``None`` with MESSAGEBUS_TEST_PUBSUB_URL."""
    if os.environ.get("MESSAGEBUS_TEST_PUBSUB_URL"):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="messagebus-pubsub-") as data_dir:
        emulator = Emulator(free_port(), data_dir)
        try:
            emulator.start()
            yield emulator
        finally:
            emulator.kill()
            emulator.log.close()


@pytest.fixture(scope="session")
def pubsub_crash_emulator() -> Iterator[BrokerProcess]:
    """An emulator of its own for the crash tests, started on first use and killed at the end
    of the session (the session's emulator is left alone)."""
    with tempfile.TemporaryDirectory(prefix="messagebus-pubsub-crash-") as data_dir:
        emulator = crashable_emulator(data_dir)
        try:
            emulator.start_sync()
            yield emulator
        finally:
            emulator.close()


@pytest.fixture(scope="session")
def pubsub_emulator(emulator_process: Emulator | None) -> str:
    """``host:port`` of a running Pub/Sub emulator (skips/fails the tests when there is none)."""
    if emulator_process is not None:
        return emulator_process.host
    url = os.environ["MESSAGEBUS_TEST_PUBSUB_URL"]
    host = TransportURL.parse(url).query.get("emulator_host") or os.environ.get("PUBSUB_EMULATOR_HOST", "")
    if not host:
        missing_broker("Pub/Sub emulator", f"MESSAGEBUS_TEST_PUBSUB_URL={url!r} names no emulator_host")
    h, _, p = host.rpartition(":")
    if not wait_for_port(h, int(p), timeout=5.0):
        missing_broker("Pub/Sub emulator", f"nothing listens on {host}")
    return host


@pytest.fixture(scope="session")
def pubsub_url(pubsub_emulator: str) -> str:
    """A ``pubsub://`` URL for the test emulator."""
    url = os.environ.get("MESSAGEBUS_TEST_PUBSUB_URL")
    if url:
        return url
    return url_for(pubsub_emulator)


@pytest.fixture
def name() -> str:
    """A unique logical name prefix for one test (the emulator is shared)."""
    return f"t.ps.{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def admin(pubsub_emulator: str) -> AsyncIterator[Admin]:
    """Google's own clients on the emulator, to inspect what the adapter made."""
    a = Admin(pubsub_emulator)
    yield a
    await a.close()


@pytest.fixture
async def transport(pubsub_url: str) -> AsyncIterator[PubSubTransport]:
    """A connected transport on the test emulator, closed after the test."""
    t = PubSubTransport.from_url(TransportURL.parse(pubsub_url))
    await t.connect()
    yield t
    await t.close()
