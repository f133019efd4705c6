"""Pub/Sub's own attribute limits on top of the core header rule: at most 100 attributes,
keys up to 256 bytes, values up to 1024 bytes, no ``goog`` keys. Headers beyond them are
packed into chunked attributes rather than dropped; headers that cannot fit even packed are
refused with MessageTooLarge before sending."""

from __future__ import annotations

import uuid

import pytest

from messagebus import Bus, Envelope, InvalidHeaders, MessageTooLarge
from messagebus.testing import Collector


async def test_headers_beyond_attribute_limits_round_trip_packed(pubsub_url: str) -> None:
    """Catches headers the core rule allows but Pub/Sub's attribute rules do not (200
    headers, a 5,000-byte value, a ``goog`` name, a 255-byte name) being dropped or failing
    the publish: all of them arrive intact."""
    queue = f"hdr.pubsub.{uuid.uuid4().hex[:10]}"
    got: Collector[Envelope] = Collector(30)
    bus = Bus.from_url(pubsub_url, service="limits")

    @bus.consume(queue)
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    headers = {f"x-{i:03d}": f"v{i}" for i in range(200)}
    headers.update({"x-long": "l" * 5000, "google-thing": "g", "é" * 127 + "n": "wide"})
    async with bus:
        await bus.send(queue, {"n": 1}, headers=headers)
        [envelope] = await got.wait_for(1)
    # The user's headers, exactly; beyond them only trace context, which tracing adds when an
    # earlier test of this process set up an OpenTelemetry SDK.
    assert {name: envelope.headers.get(name) for name in headers} == headers
    added = set(envelope.headers) - set(headers)
    assert added <= {"traceparent", "tracestate", "baggage"}, f"headers never sent: {sorted(added)[:5]}"


async def test_headers_that_cannot_fit_even_packed_are_refused(pubsub_url: str) -> None:
    """Catches Pub/Sub's 100-attribute limit reached by the emulator or the client library
    with a bare error: 60 KiB of quotes, within the core rule, doubles when packed as JSON
    and exceeds 100 attributes of 1024 bytes; MessageTooLarge names the limit, nothing is
    sent. A user ``ce-id`` is refused by the core rule first."""
    queue = f"hdr.pubsub.{uuid.uuid4().hex[:10]}"
    got: Collector[int] = Collector(30)
    bus = Bus.from_url(pubsub_url, service="limits")

    @bus.consume(queue)
    async def handle(item: dict[str, int]) -> None:
        got.add(item["n"])

    async with bus:
        with pytest.raises(InvalidHeaders, match="reserved"):
            await bus.send(queue, {"n": 0}, headers={"CE-ID": "spoofed"})
        with pytest.raises(MessageTooLarge, match="at most 100 are allowed"):
            await bus.send(queue, {"n": 0}, headers={"x-quotes": '"' * 60_000})
        await bus.send(queue, {"n": 1})
        assert await got.wait_for(1) == [1]
    assert got.items == [1], "the refused message was sent"
