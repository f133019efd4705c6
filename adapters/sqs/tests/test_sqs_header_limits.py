"""SQS/SNS's own header limits on top of the core header rule: 256 KiB for the body and every
attribute together (refused before sending), attribute names SQS refuses (non-ASCII, the
``AWS.``/``Amazon.`` prefixes, long names) carried packed instead of dropped, and no user
header can spoof the ``ce-`` attributes (SQS names are case-sensitive; the rule is not)."""

from __future__ import annotations

import uuid

import pytest
from messagebus_sqs._codec import MAX_WIRE_SIZE

from messagebus import Bus, Envelope, InvalidHeaders, MessageTooLarge
from messagebus.testing import Collector


async def test_headers_count_toward_the_256_kib_limit(sqs_url: str) -> None:
    """Catches attributes left out of the SQS size check (SQS refused the whole batch after
    the fact): a body under the body limit plus 60 KiB of headers, which the core rule allows,
    raises MessageTooLarge naming SQS's 256 KiB, and nothing is sent."""
    queue = f"hdr.sqs.{uuid.uuid4().hex[:10]}"
    got: Collector[str] = Collector(30)
    bus = Bus.from_url(sqs_url, service="limits")

    @bus.consume(queue)
    async def handle(body: str) -> None:
        got.add(body)

    async with bus:
        with pytest.raises(MessageTooLarge, match=f"SQS/SNS allow {MAX_WIRE_SIZE}"):
            await bus.send(queue, "b" * 205_000, headers={"x-big": "v" * 60_000})
        await bus.send(queue, "small", headers={"x-big": "v" * 60_000})
        assert await got.wait_for(1) == ["small"]
    assert got.items == ["small"], "the refused message was sent"


async def test_names_sqs_refuses_round_trip_and_binding_names_are_refused(sqs_url: str) -> None:
    """Catches header names valid under the core rule but not as SQS attribute names being
    dropped or failing the send, and a user ``CE-ID`` (a distinct SQS attribute name) slipping
    past the case-insensitive reserved-name rule."""
    queue = f"hdr.sqs.{uuid.uuid4().hex[:10]}"
    got: Collector[Envelope] = Collector(30)
    bus = Bus.from_url(sqs_url, service="limits")

    @bus.consume(queue)
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    headers = {"AWS.thing": "1", "amazon.x": "2", "ünï": "3", "n" * 255: "4", "a..b": "5", "emoji 🙂": "6"}
    async with bus:
        for name in ("CE-ID", "Ce-Source", "cloudEvents:id", "content-type"):
            with pytest.raises(InvalidHeaders, match="reserved"):
                await bus.send(queue, {"n": 0}, headers={name: "spoofed"})
        await bus.send(queue, {"n": 1}, headers=headers)
        [envelope] = await got.wait_for(1)
    # Less the W3C trace context the tracing middleware adds once an earlier test of the
    # session installed an OpenTelemetry SDK (the kit's telemetry tests do).
    assert {k: v for k, v in envelope.headers.items() if k not in ("traceparent", "tracestate")} == headers
    assert envelope.id != "spoofed"
