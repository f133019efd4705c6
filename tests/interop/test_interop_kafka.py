"""Kafka interop on a real broker (Tansu): the CloudEvents Python SDK reads what messagebus
publishes and messagebus reads what the SDK writes (binary and structured mode, key mapping
by ``partitionkey``); FastStream publishes into messagebus subscribers and consumes what
messagebus publishes. Each exchange counts lost, duplicated and unexpected messages, and
nothing valid is dead-lettered. The header mapping itself is checked first, without a broker."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from messagebus_kafka import physical_names
from messagebus_kafka._codec import RecordHeaders, decode_headers, encode_headers
from pydantic import BaseModel

from messagebus import Bus, Envelope
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind, TransportURL

pytest.importorskip("faststream.kafka", reason="FastStream (faststream[kafka]) is not installed")

TIMEOUT = 60.0
WHEN = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


class Order(BaseModel):
    n: int
    item: str


def bootstrap(kafka_url: str) -> list[str]:
    return [f"{host}:{port}" for host, port in TransportURL.parse(kafka_url).hosts]


def tally(ids: list[str], expected: set[str]) -> tuple[set[str], dict[str, int], set[str]]:
    """Jepsen's three: lost, duplicated and unexpected ids."""
    counts = Counter(ids)
    return expected - set(counts), {i: c for i, c in counts.items() if c > 1}, set(counts) - expected


# -- the header mapping -------------------------------------------------------------------


def test_datacontenttype_is_the_content_type_header_both_ways() -> None:
    """Catches the bug of issue 16 on Kafka: ``datacontenttype`` written as
    ``ce_datacontenttype`` (FastStream and the SDK read ``content-type``) and a foreign
    ``content-type`` (any case) not read as the content type. Messages of earlier messagebus
    versions (``ce_datacontenttype``) still read."""
    wire = encode_headers({"ce-id": "1", "ce-datacontenttype": "application/json"})
    assert wire == [("ce_id", b"1"), ("content-type", b"application/json")]
    for name in ("content-type", "Content-Type", "ce_datacontenttype"):
        assert decode_headers([(name, b"text/plain")]) == {"ce-datacontenttype": "text/plain"}
        assert RecordHeaders([(name, b"text/plain")]).get("ce-datacontenttype") == "text/plain"


def test_record_timestamp_stands_in_for_a_missing_time_only() -> None:
    """Catches ``Envelope.timestamp`` None for a foreign record (Kafka stamps every record)
    and the record's timestamp overriding the producer's own CloudEvents ``time``: the lazy
    and the full view agree."""
    millis = int(WHEN.timestamp() * 1000)
    foreign = RecordHeaders([("content-type", b"application/json")], millis)
    assert foreign.get("ce-time") == WHEN.isoformat()
    assert dict(foreign) == {"ce-datacontenttype": "application/json", "ce-time": WHEN.isoformat()}
    own = RecordHeaders([("ce_time", b"2020-01-01T00:00:00+00:00")], millis)
    assert own.get("ce-time") == "2020-01-01T00:00:00+00:00"
    assert dict(own) == {"ce-time": "2020-01-01T00:00:00+00:00"}
    assert RecordHeaders([("ce_time", b"")], millis).get("ce-time") == WHEN.isoformat(), "an empty time is missing"


# -- the CloudEvents SDK ------------------------------------------------------------------


async def test_cloudevents_sdk_reads_what_messagebus_publishes(kafka_url: str, name: str) -> None:
    """Catches messagebus records the SDK reads wrongly: no ``content-type`` header (the
    binding's place for ``datacontenttype``), or the key not mapped to ``partitionkey``:
    every record read from the topic gives the event with id, source, type, time, content
    type, partition key and data, once each."""
    topic = physical_names(Destination(DestinationKind.TOPIC, name))["topic"]
    bus = Bus.from_url(kafka_url, service="billing")
    async with bus:
        for n in range(10):
            await bus.publish(name, Order(n=n, item="tea"), key=f"k{n}")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap(kafka_url), auto_offset_reset="earliest")
    await consumer.start()
    events: list[CloudEvent] = []
    try:
        while len(events) < 10:
            batch = await consumer.getmany(timeout_ms=int(TIMEOUT * 1000), max_records=10)
            assert batch, f"no record within {TIMEOUT}s; got {len(events)}"
            for records in batch.values():
                for record in records:
                    message = ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
                    events.append(ce_kafka.from_kafka(message, JSONFormat()))
    finally:
        await consumer.stop()
    for event in events:
        data: dict[str, Any] = event.get_data()
        assert event.get_specversion() == "1.0" and event.get_id()
        assert event.get_source() == "billing"
        assert event.get_type() == f"{Order.__module__}.Order"
        assert event.get_datacontenttype() == "application/json"
        assert isinstance(event.get_time(), datetime)
        assert event.get_extension("partitionkey") == f"k{data['n']}"
    lost, duplicated, unexpected = tally([str(e.get_data()["n"]) for e in events], {str(n) for n in range(10)})
    assert not (lost or duplicated or unexpected), (lost, duplicated, unexpected)


async def test_messagebus_reads_binary_and_structured_cloudevents_sdk_records(kafka_url: str, name: str) -> None:
    """Catches structured mode dead-lettered as undecodable on Kafka and the SDK's binary
    records read with the wrong content type or key: binary and structured events, with and
    without a partition key, each reach a typed handler once with the event's id, type,
    source, time and key; nothing is dead-lettered."""
    topic = physical_names(Destination(DestinationKind.TOPIC, name, "shop"))["topic"]
    got: Collector[tuple[Order, Envelope]] = Collector(TIMEOUT)
    dead: Collector[Envelope] = Collector(TIMEOUT)
    bus = Bus.from_url(kafka_url, service="shop")

    @bus.subscribe(name, group="shop")
    async def handle(order: Order, envelope: Envelope) -> None:
        got.add((order, envelope))

    @bus.consume(f"{name}.shop.dlq")
    async def dead_letters(envelope: Envelope) -> None:
        dead.add(envelope)

    def event(n: int, **attributes: Any) -> CloudEvent:
        base = {"id": f"ce-{n}", "source": "/foreign", "type": "shop.Order", "time": WHEN}
        return CloudEvent({**base, "datacontenttype": "application/json", **attributes}, {"n": n, "item": "tea"})

    fmt = JSONFormat()
    records = [
        ce_kafka.to_binary(event(1, partitionkey="pk-1"), fmt),
        ce_kafka.to_binary(event(2), fmt),
        ce_kafka.to_structured(event(3, partitionkey="pk-3"), fmt),
        ce_kafka.to_structured(event(4), fmt),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(kafka_url))
    async with bus:
        await producer.start()
        try:
            for record in records:
                key = record.key.encode() if isinstance(record.key, str) else record.key
                await producer.send_and_wait(topic, record.value, key=key, headers=list(record.headers.items()))
        finally:
            await producer.stop()
        await got.wait_for(4)
    assert not dead.items, [e.wire_headers.get("dlq-error-message") for e in dead.items]
    lost, duplicated, unexpected = tally([env.id for _, env in got.items], {f"ce-{n}" for n in range(1, 5)})
    assert not (lost or duplicated or unexpected), (lost, duplicated, unexpected)
    for order, env in got.items:
        n = order.n
        assert env.id == f"ce-{n}" and order == Order(n=n, item="tea")
        assert (env.type, env.source, env.timestamp) == ("shop.Order", "/foreign", WHEN)
        assert env.content_type == "application/json"
        assert env.key == {1: "pk-1", 3: "pk-3"}.get(n)
        assert env.headers == {}, f"binding names leaked into the user headers: {env.headers}"


# -- FastStream ---------------------------------------------------------------------------


async def test_faststream_publishes_into_messagebus_subscribers(kafka_url: str, name: str) -> None:
    """Catches a FastStream producer's records a messagebus subscriber cannot use (its
    ``content-type`` header left a user header instead of the content type, a record
    without CloudEvents headers dead-lettered):
    20 records, each handled once, typed, with FastStream's content type; none dead-lettered."""
    from faststream.kafka import KafkaBroker

    topic = physical_names(Destination(DestinationKind.TOPIC, name, "billing"))["topic"]
    got: Collector[tuple[int, str, str | None]] = Collector(TIMEOUT)
    dead: Collector[Envelope] = Collector(TIMEOUT)
    leaked: list[dict[str, str]] = []
    bus = Bus.from_url(kafka_url, service="billing")

    @bus.subscribe(name, group="billing")
    async def on_event(order: Order, envelope: Envelope) -> None:
        if "content-type" in envelope.headers:
            leaked.append(envelope.headers)
        got.add((order.n, envelope.content_type, envelope.key))

    @bus.consume(f"{name}.billing.dlq")
    async def dead_letters(envelope: Envelope) -> None:
        dead.add(envelope)

    broker = KafkaBroker(bootstrap(kafka_url), logger=None)
    async with bus, broker:
        await broker.start()
        for n in range(20):
            await broker.publish({"n": n, "item": "tea"}, topic=topic, key=f"order-{n}".encode())
        await got.wait_for(20)
    lost, duplicated, unexpected = tally([str(n) for n, _, _ in got.items], {str(n) for n in range(20)})
    assert not (lost or duplicated or unexpected), (lost, duplicated, unexpected)
    assert all(ct == "application/json" and key == f"order-{n}" for n, ct, key in got.items)
    assert not leaked, f"the content-type header is the envelope's content type, not a user header: {leaked[:1]}"
    assert not dead.items


async def test_a_foreign_record_without_time_gets_the_record_timestamp(kafka_url: str, name: str) -> None:
    """Catches ``Envelope.timestamp`` None for a FastStream (or any plain) record: Kafka's own
    record timestamp stands in for the missing CloudEvents ``time``."""
    from faststream.kafka import KafkaBroker

    topic = physical_names(Destination(DestinationKind.QUEUE, name))["topic"]
    got: Collector[datetime | None] = Collector(TIMEOUT)
    bus = Bus.from_url(kafka_url, service="billing")

    @bus.consume(name)
    async def handle(order: Order, envelope: Envelope) -> None:
        got.add(envelope.timestamp)

    broker = KafkaBroker(bootstrap(kafka_url), logger=None)
    async with bus, broker:
        await broker.start()
        await broker.publish({"n": 1, "item": "tea"}, topic=topic, timestamp_ms=int(WHEN.timestamp() * 1000))
        [stamp] = await got.wait_for(1)
    assert stamp == WHEN


async def test_faststream_consumes_what_messagebus_publishes(kafka_url: str, name: str) -> None:
    """Catches messagebus records FastStream cannot decode (no ``content-type`` header, so
    its JSON decoding does not apply): a FastStream subscriber in its own group gets 20
    published events as dicts, each once, with the content type and CloudEvents id."""
    from faststream.kafka import KafkaBroker, KafkaMessage

    topic = physical_names(Destination(DestinationKind.TOPIC, name))["topic"]
    got: Collector[tuple[int, str | None, str | None]] = Collector(TIMEOUT)
    broker = KafkaBroker(bootstrap(kafka_url), logger=None)

    @broker.subscriber(topic, group_id=f"{name}.faststream", auto_offset_reset="earliest")
    async def on_event(body: dict[str, Any], message: KafkaMessage) -> None:
        got.add((body["n"], message.content_type, message.headers.get("ce_id")))

    bus = Bus.from_url(kafka_url, service="shop")
    async with bus:
        for n in range(20):
            await bus.publish(name, Order(n=n, item="tea"))
        async with broker:
            await broker.start()
            await got.wait_for(20)
    lost, duplicated, unexpected = tally([str(n) for n, _, _ in got.items], {str(n) for n in range(20)})
    assert not (lost or duplicated or unexpected), (lost, duplicated, unexpected)
    assert all(ct == "application/json" and ce_id for _, ct, ce_id in got.items)
