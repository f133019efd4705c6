"""The skeleton transport (samples/skeleton_transport): both layers of the conformance kit,
and its bad-input edges. What a third-party adapter's own conformance test looks like."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path

import pytest
from messagebus_skeleton import SkeletonTransport

from messagebus import Bus, ConnectError, ConsumeError, Envelope, InvalidOption, InvalidURL, LifecycleError
from messagebus.testing.conformance import ConformanceTarget, TransportConformance
from messagebus.testing.transport_kit import TransportKit
from messagebus.transports import Delivery, Destination, DestinationKind, OutgoingMessage

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "skeleton_transport"


# Every receive, ack and publish is a SQLite transaction on one thread per transport: the
# kit's volume tests (10,000 concurrent publishes, 5,000 messages over competing consumers)
# run at a third of their counts to keep this file fast.
SCALE = 0.3


def skeleton_target(url: str) -> ConformanceTarget:
    # transport=: the transport is not installed, so the kit must not look its scheme up.
    return ConformanceTarget(url=url, timeout=10.0, scale=SCALE, transport=SkeletonTransport.from_url)


class TestSkeletonConformance(TransportConformance):
    """The Bus-level kit. The fault tests that cut a connection (no proxy: ``network=False``),
    kill a process (the worker would load the transport by its scheme) or crash a broker (no
    ``crash_broker``) skip; the others run."""

    @pytest.fixture
    def target(self, skeleton_url: str) -> ConformanceTarget:
        return skeleton_target(skeleton_url)


class TestSkeletonTransportKit(TransportKit):
    """The transport-level kit: the contract, called without a Bus."""

    @pytest.fixture
    def target(self, skeleton_url: str) -> ConformanceTarget:
        return skeleton_target(skeleton_url)


# -- bad input and the edges of the contract ----------------------------------------------------


def test_unknown_option_lists_the_valid_ones() -> None:
    """Catches a typo in a URL option being ignored (a default silently used) or refused with
    a bare pydantic error instead of the list of valid options."""
    with pytest.raises(InvalidOption, match=r"unknown option 'visibilty_timeout'.*visibility_timeout"):
        SkeletonTransport.from_url("skeleton:///tmp/b.db?visibilty_timeout=5")
    with pytest.raises(InvalidOption, match="poll_interval"):
        SkeletonTransport.from_url("skeleton:///tmp/b.db?poll_interval=-1")


def test_host_or_credentials_are_refused_without_the_password() -> None:
    """Catches a URL with a host being read as a relative path, and a password echoed in the
    error that refuses it."""
    with pytest.raises(InvalidURL, match="skeleton:///absolute/path") as caught:
        SkeletonTransport.from_url("skeleton://admin:s3cret@localhost/b.db")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(InvalidURL, match="names no file"):
        SkeletonTransport.from_url("skeleton:///tmp/")


async def test_a_file_that_is_not_a_database_fails_connect_clearly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Catches a raw ``sqlite3.DatabaseError`` escaping connect, or connect retrying a file
    that will never become a database."""
    path = tmp_path / "notes.txt"
    path.write_text("not a database, " * 100)
    transport = SkeletonTransport.from_url(f"skeleton://{path}?connect_retries=2")
    with pytest.raises(ConnectError, match="not a skeleton broker database") as caught:
        await transport.connect()
    assert caught.value.__cause__ is not None, "the native error must be chained"
    retries = [r.getMessage() for r in caplog.records if r.name == "messagebus.skeleton"]
    assert not retries, f"connect retried a file that will never become a database: {retries[:1]}"


async def test_a_missing_directory_fails_connect_with_a_hint(tmp_path: Path) -> None:
    """Catches a bare "unable to open database file" with no hint at what to fix."""
    transport = SkeletonTransport.from_url(f"skeleton://{tmp_path}/missing/b.db?connect_retries=1")
    with pytest.raises(ConnectError, match="does its directory exist"):
        await transport.connect()


async def test_use_before_connect_and_after_close_raises_lifecycle_error(skeleton_url: str) -> None:
    """Catches publish or subscribe before connect (or after close) failing with an
    AttributeError on a missing connection instead of the contract's LifecycleError."""
    transport = SkeletonTransport.from_url(skeleton_url)
    queue = Destination(DestinationKind.QUEUE, "q")
    message = OutgoingMessage(queue, b"{}", {})

    async def handle(delivery: Delivery) -> None:
        await delivery.ack()

    for _ in range(2):
        with pytest.raises(LifecycleError, match="call connect"):
            await transport.publish([message])
        with pytest.raises(LifecycleError, match="call connect"):
            await transport.subscribe(queue, handle, concurrency=1)
        await transport.connect()
        await transport.connect()
        await transport.close()
        await transport.close()


async def test_a_settle_after_the_lease_ran_out_raises_and_deletes_nothing(tmp_path: Path) -> None:
    """Catches a settle matched by message id alone: a consumer whose visibility timeout ran
    out would delete the message another consumer now holds. The late ack must raise
    ConsumeError naming the queue, and the new holder's ack must still succeed."""
    url = f"skeleton://{tmp_path / 'b.db'}?visibility_timeout=1&poll_interval=0.01"
    transport = SkeletonTransport.from_url(url)
    await transport.connect()
    queue = Destination(DestinationKind.QUEUE, "leases")
    received_again = asyncio.Event()
    late_ack_done = asyncio.Event()
    done = asyncio.Event()
    attempts: list[int] = []
    late: list[BaseException] = []
    holder_failed: list[BaseException] = []

    async def handle(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            # Held past its lease: the broker hands the message out again meanwhile.
            await asyncio.wait_for(received_again.wait(), 10)
            try:
                await delivery.ack()
            except ConsumeError as exc:
                late.append(exc)
            late_ack_done.set()
            return
        received_again.set()
        await asyncio.wait_for(late_ack_done.wait(), 10)
        try:
            await delivery.ack()
        except ConsumeError as exc:
            holder_failed.append(exc)
        done.set()

    try:
        await transport.subscribe(queue, handle, concurrency=2)
        await transport.publish([OutgoingMessage(queue, b"{}", {})])
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await transport.close()
    assert attempts == [1, 2]
    assert not holder_failed, f"the late ack deleted the message its new holder had: {holder_failed[0]}"
    assert late, "the ack after the lease ran out was taken"
    assert "skeleton queue 'leases'" in str(late[0]) and "no longer leased" in str(late[0])


async def test_two_buses_share_one_file(skeleton_url: str) -> None:
    """Catches a broker tied to one transport instance: two buses on the same file, built
    the way an application without the entry point builds them, exchange a message."""
    got: asyncio.Queue[Envelope] = asyncio.Queue()
    consumer = Bus(SkeletonTransport.from_url(skeleton_url), service="billing")
    producer = Bus(SkeletonTransport.from_url(skeleton_url), service="orders")

    @consumer.subscribe("orders.placed")
    async def on_order(envelope: Envelope) -> None:
        await got.put(envelope)

    async with consumer, producer:
        await producer.publish("orders.placed", {"id": 7}, key="customer-1")
        envelope = await asyncio.wait_for(got.get(), 10)
    assert envelope.key == "customer-1" and envelope.source == "orders"
    assert isinstance(envelope.raw.id, int), "raw is the broker's row (SkeletonMessage)"


def test_the_entry_point_names_a_real_factory() -> None:
    """Catches an entry point in pyproject.toml that names a module or attribute that does not
    exist (found only once the package is installed and a bus is built from a URL)."""
    pyproject = tomllib.loads((SAMPLE / "pyproject.toml").read_text())
    [(scheme, target)] = pyproject["project"]["entry-points"]["messagebus.transports"].items()
    module, _, attribute = target.partition(":")
    factory = __import__(module)
    for part in attribute.split("."):
        factory = getattr(factory, part)
    assert scheme == "skeleton"
    assert isinstance(factory("skeleton:///tmp/b.db"), SkeletonTransport)
