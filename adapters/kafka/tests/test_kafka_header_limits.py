"""Kafka's own header limits on top of the core header rule: a record's headers count toward
``max_request_size`` (refused before sending), and a foreign producer's CloudEvents headers
(``ce_*``) still decode although users may not set them."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer
from messagebus_kafka._topology import kafka_name

from messagebus import Bus, Envelope, InvalidHeaders, MessageTooLarge
from messagebus.testing import Collector
from messagebus.transports import TransportURL


def _with_options(url: str, extra: str) -> str:
    return url + ("&" if "?" in url else "?") + extra


async def test_headers_count_toward_max_request_size(kafka_url: str) -> None:
    """Catches headers left out of Kafka's size check (the broker refused the record after
    the fact): headers the core rule allows (under 64 KiB) but that with the body exceed
    max_request_size raise MessageTooLarge naming the limit, and nothing is sent."""
    queue = f"hdr.kafka.{uuid.uuid4().hex[:10]}"
    got: Collector[int] = Collector(60)
    bus = Bus.from_url(_with_options(kafka_url, "max_request_size=16384"), service="limits")

    @bus.consume(queue)
    async def handle(item: dict[str, int]) -> None:
        got.add(item["n"])

    async with bus:
        with pytest.raises(MessageTooLarge, match="max_request_size=16384"):
            await bus.send(queue, {"n": 0}, headers={"x-big": "v" * 16_500})
        await bus.send(queue, {"n": 1}, headers={"x-small": "v" * 1000})
        assert await got.wait_for(1) == [1]
    assert got.items == [1], "the refused message was sent"


async def test_user_binding_names_refused_but_foreign_ones_decode(kafka_url: str) -> None:
    """Catches ``ce_id`` from a user replacing Envelope.id (refused at publish) and the
    refusal leaking to the consume side: a foreign producer's ``ce_id``/``ce_type`` still
    become the envelope and its other headers (``content-type`` too) reach the handler."""
    queue = f"hdr.kafka.{uuid.uuid4().hex[:10]}"
    got: Collector[Envelope] = Collector(60)
    bus = Bus.from_url(kafka_url, service="limits")

    @bus.consume(queue)
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    async with bus:
        for name in ("ce_id", "CE_ID", "content-type"):
            with pytest.raises(InvalidHeaders, match="reserved"):
                await bus.send(queue, {"n": 0}, headers={name: "spoofed"})
        parsed = TransportURL.parse(kafka_url)
        producer = AIOKafkaProducer(bootstrap_servers=[f"{h}:{p}" for h, p in parsed.hosts])
        await producer.start()
        try:
            await producer.send_and_wait(
                kafka_name(queue),
                b'{"n": 1}',
                headers=[("ce_id", b"foreign-1"), ("ce_type", b"Thing"), ("content-type", b"application/json")],
            )
        finally:
            await producer.stop()
        [envelope] = await got.wait_for(1)
    assert envelope.id == "foreign-1"
    assert envelope.type == "Thing"
    # The Kafka binding maps datacontenttype to the content-type header (issue 16).
    assert envelope.content_type == "application/json"
    assert "content-type" not in envelope.headers
