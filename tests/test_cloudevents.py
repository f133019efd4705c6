"""CloudEvents as foreign producers send them, read by the core for every transport:
structured mode (``application/cloudevents+json``) unpacked into the envelope, the broker's
own message id and timestamp standing in for a missing ``id``/``time``, and the
``partitionkey`` attribute standing in for a missing key. Runs on memory://; the interop
suite (tests/interop) checks the same against the CloudEvents SDK on real brokers."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

from messagebus import Bus, DecodeError, Envelope, OutgoingMessage, Retry
from messagebus._headers import with_broker_defaults
from messagebus._serialization import is_structured, read_structured
from messagebus.testing import Collector, wait_idle
from messagebus.transports import Destination, DestinationKind

BusFactory = Callable[..., Bus]
STRUCTURED = {"ce-datacontenttype": "application/cloudevents+json; charset=utf-8"}


class Order(BaseModel):
    id: int
    item: str


def event(**fields: Any) -> bytes:
    base: dict[str, Any] = {"specversion": "1.0", "id": "e-1", "source": "/shop", "type": "shop.Order"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


async def send_raw(bus: Bus, queue: str, body: bytes, headers: dict[str, str]) -> None:
    """Publish as a foreign producer would: straight to the transport, no envelope added."""
    await bus.transport.publish([OutgoingMessage(Destination(DestinationKind.QUEUE, queue), body, headers)])


# -- structured mode: the reader ----------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/cloudevents+json", True),
        ("application/cloudevents+json; charset=utf-8", True),
        ("Application/CloudEvents+JSON;charset=UTF-8", True),
        ("application/cloudevents+json ; charset=utf-8", True),
        ("application/json", False),
        ("application/cloudevents+avro", False),
        ("application/cloudevents-batch+json", False),
        ("application/cloudevents+jsonx", False),
        ("", False),
    ],
)
def test_structured_mode_is_recognised_by_its_media_type(content_type: str, expected: bool) -> None:
    """Catches structured events dead-lettered as undecodable (Dapr's default with
    ``; charset=utf-8``, any case) and formats the core cannot read (Avro, the batch format)
    taken for JSON: the bindings let a reader leave those as binary mode."""
    assert is_structured(content_type) is expected


def test_attributes_become_headers_and_json_data_the_body() -> None:
    """Catches a structured event whose attributes were lost or whose data stayed wrapped:
    every attribute is a ``ce-`` header (numbers and booleans in canonical text, ``null``
    unset), the event overrides a transport header of the same attribute, other headers stay,
    and JSON ``data`` is the body."""
    body, headers = read_structured(
        event(time="2024-05-01T10:00:00Z", count=3, flag=True, subject=None, data={"id": 1, "item": "tea"}),
        {**STRUCTURED, "ce-id": "stale", "ce-subject": "gone", "traceparent": "00-ab-cd-01", "x-user": "u"},
    )
    assert json.loads(body) == {"id": 1, "item": "tea"}
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "/shop",
        "ce-type": "shop.Order",
        "ce-time": "2024-05-01T10:00:00Z",
        "ce-count": "3",
        "ce-flag": "true",
        "ce-datacontenttype": "application/json",
        "traceparent": "00-ab-cd-01",
        "x-user": "u",
    }


@pytest.mark.parametrize(
    ("fields", "body", "content_type"),
    [
        (
            {"data_base64": base64.b64encode(b"\x00\xffraw").decode(), "datacontenttype": "image/png"},
            b"\x00\xffraw",
            "image/png",
        ),
        ({"data": '<much wow="xml"/>', "datacontenttype": "application/xml"}, b'<much wow="xml"/>', "application/xml"),
        ({"data": "I'm just a string"}, b'"I\'m just a string"', "application/json"),
        ({"data": None, "datacontenttype": "application/json"}, b"null", "application/json"),
        (
            {"data": [1, 2], "datacontenttype": "application/vnd.x+json; charset=utf-8"},
            b"[1,2]",
            "application/vnd.x+json; charset=utf-8",
        ),
        ({}, b"", None),
    ],
    ids=["data_base64", "xml-string", "json-string", "json-null", "suffix-json", "no-data"],
)
def test_each_data_form_of_the_json_format(fields: dict[str, Any], body: bytes, content_type: str | None) -> None:
    """Catches misreading the JSON format's data rules (section 3.1): ``data_base64`` is
    bytes, a non-JSON type's ``data`` is its string as is, a JSON string stays a JSON string
    (never parsed again), an absent ``datacontenttype`` means JSON, no data an empty body."""
    got_body, headers = read_structured(event(**fields), STRUCTURED)
    assert got_body == body
    assert headers.get("ce-datacontenttype") == content_type


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b'["an", "array"]', "must be a JSON object, got a list"),
        (event(data_base64="%%%"), "data_base64 is not valid Base64"),
        (event(data_base64=5), "data_base64 must be a Base64 string"),
        (event(data={"a": 1}, datacontenttype="text/plain"), "'text/plain' is not JSON, so data must be a string"),
    ],
)
def test_an_invalid_structured_event_raises_decode_error_saying_why(body: bytes, match: str) -> None:
    """Catches a broken structured event raising something other than DecodeError (a
    redelivery loop instead of a dead letter) or an error that does not say what is wrong."""
    with pytest.raises(DecodeError, match=match):
        read_structured(body, STRUCTURED)


# -- structured mode through a bus --------------------------------------------------------


async def test_structured_event_reaches_a_typed_handler_with_its_envelope(bus_factory: BusFactory) -> None:
    """Catches the bug of issue 16: a structured event (Dapr's default) was dead-lettered as
    undecodable. It reaches a typed handler with id, type, source, time, content type and
    key (from ``partitionkey``) taken from the event, and user headers from the transport;
    nothing else arrives and nothing is dead-lettered."""
    bus = bus_factory()
    got: Collector[tuple[Order, Envelope]] = Collector(5)
    dead: Collector[Envelope] = Collector(5)

    @bus.consume("orders")
    async def handle(order: Order, envelope: Envelope) -> None:
        got.add((order, envelope))

    @bus.consume("orders.dlq")
    async def dlq(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        await send_raw(
            bus,
            "orders",
            event(time="2024-05-01T10:00:00Z", partitionkey="cust-7", data={"id": 7, "item": "tea"}),
            {**STRUCTURED, "x-tenant": "acme"},
        )
        [(order, env)] = await got.wait_for(1)
        await wait_idle(bus)
    assert order == Order(id=7, item="tea")
    assert (env.id, env.type, env.source) == ("e-1", "shop.Order", "/shop")
    assert env.timestamp == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert env.content_type == "application/json"
    assert env.key == "cust-7"
    assert env.headers == {"x-tenant": "acme"}
    assert len(got) == 1 and not dead.items


async def test_invalid_structured_event_is_dead_lettered_once_as_it_came(bus_factory: BusFactory) -> None:
    """Catches a broken structured event looping through redeliveries (it never decodes),
    reaching the dead-letter queue altered, or being unreadable there too (the dead-letter
    consumer's unpacking failed, so it went on to ``orders.dlq.dlq``): it is dead-lettered at
    once with the reason, and an Envelope handler on the dead-letter queue gets it as it came;
    the typed handler never runs."""
    bus = bus_factory()
    calls: list[object] = []
    dead: Collector[Envelope] = Collector(5)

    @bus.consume("orders")
    async def handle(order: dict[str, Any]) -> None:
        calls.append(order)

    @bus.consume("orders.dlq")
    async def dlq(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        await send_raw(bus, "orders", b"[1, 2]", dict(STRUCTURED))
        [env] = await dead.wait_for(1)
        await wait_idle(bus)
    assert calls == []
    assert env.body == b"[1, 2]"
    assert env.content_type == STRUCTURED["ce-datacontenttype"]
    assert env.wire_headers["dlq-attempts"] == "1"
    assert "must be a JSON object" in env.wire_headers["dlq-error-message"]
    assert env.wire_headers["dlq-error-type"] == "messagebus.DecodeError"


async def test_a_retried_structured_event_is_read_the_same_each_attempt(bus_factory: BusFactory) -> None:
    """Catches a retry that loses the unpacked envelope (the copy re-published without the
    event's attributes, so attempt 2 saw no id) or duplicates it: each attempt sees the same
    id and data; exactly one success, no dead letter."""
    bus = bus_factory()
    seen: Collector[tuple[int, str, dict[str, Any]]] = Collector(5)
    dead: Collector[Envelope] = Collector(5)

    @bus.consume("orders", retry=Retry(max_attempts=3, initial_delay=0.01, jitter=0))
    async def handle(order: dict[str, Any], envelope: Envelope) -> None:
        seen.add((envelope.attempt, envelope.id, order))
        if envelope.attempt == 1:
            raise RuntimeError("transient")

    @bus.consume("orders.dlq")
    async def dlq(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        await send_raw(bus, "orders", event(data={"n": 1}), dict(STRUCTURED))
        await seen.wait_for(2)
        await wait_idle(bus)
    assert seen.items == [(1, "e-1", {"n": 1}), (2, "e-1", {"n": 1})]
    assert not dead.items


async def test_binary_mode_partitionkey_is_the_key_only_when_the_broker_gives_none(bus_factory: BusFactory) -> None:
    """Catches the CloudEvents partitioning extension ignored (a foreign event's grouping key
    lost) or overriding the key a producer did give: ``ce-partitionkey`` is ``Envelope.key``
    only for a message without a key."""
    bus = bus_factory()
    got: Collector[Envelope] = Collector(5)

    @bus.consume("q")
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    async with bus:
        await send_raw(bus, "q", b"{}", {"ce-id": "a", "ce-partitionkey": "pk"})
        await bus.transport.publish(
            [
                OutgoingMessage(
                    Destination(DestinationKind.QUEUE, "q"), b"{}", {"ce-id": "b", "ce-partitionkey": "pk"}, "k"
                )
            ]
        )
        envelopes = await got.wait_for(2)
    assert {e.id: e.key for e in envelopes} == {"a": "pk", "b": "k"}


async def test_many_structured_and_binary_messages_are_each_handled_once(bus_factory: BusFactory) -> None:
    """Catches structured and binary messages interfering on one consumer (lost, duplicated
    or mixed-up envelopes): 200 of each, interleaved, each handled exactly once with its own
    id, none unexpected, none dead-lettered."""
    bus = bus_factory()
    got: Collector[tuple[str, int]] = Collector(10)
    dead: Collector[Envelope] = Collector(5)

    @bus.consume("mixed", concurrency=8)
    async def handle(item: dict[str, int], envelope: Envelope) -> None:
        got.add((envelope.id, item["n"]))

    @bus.consume("mixed.dlq")
    async def dlq(envelope: Envelope) -> None:
        dead.add(envelope)

    async with bus:
        for n in range(200):
            await send_raw(bus, "mixed", event(id=f"s{n}", data={"n": n}), dict(STRUCTURED))
            await bus.send("mixed", {"n": n})
        await got.wait_for(400)
        await wait_idle(bus)
    counts = Counter(got.items)
    structured = {(i, n) for (i, n) in counts if i.startswith("s")}
    assert structured == {(f"s{n}", n) for n in range(200)}, "structured messages lost or mixed up"
    assert sorted(n for (i, n) in counts if not i.startswith("s")) == list(range(200))
    assert all(c == 1 for c in counts.values()), "duplicates"
    assert not dead.items


# -- the broker's own id and time ---------------------------------------------------------


def test_broker_id_and_time_fill_only_what_is_missing() -> None:
    """Catches ``Envelope.id == ''`` for a foreign message that the broker gave an id, and a
    broker value overriding the producer's own CloudEvents id or time."""
    when = datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert with_broker_defaults({"k": "v"}, "m-1", when) == {"k": "v", "ce-id": "m-1", "ce-time": when.isoformat()}
    own = {"ce-id": "ce-1", "ce-time": "2020-01-01T00:00:00+00:00"}
    assert with_broker_defaults(own, "m-1", when) is own, "nothing missing: the same mapping, no copy"
    assert with_broker_defaults({"ce-id": ""}, "m-1", None) == {"ce-id": "m-1"}, "an empty id is missing"
    assert with_broker_defaults({}, None, None) == {}


@pytest.mark.parametrize(
    ("time", "expected"),
    [
        (1714557600.5, "2024-05-01T10:00:00.500000+00:00"),
        (datetime(2024, 5, 1, 10), "2024-05-01T10:00:00+00:00"),
        (datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))), "2024-05-01T10:00:00+00:00"),
        (1e20, None),
    ],
    ids=["epoch-seconds", "naive-is-utc", "offset-to-utc", "out-of-range"],
)
def test_broker_time_is_written_as_iso_utc(time: datetime | float, expected: str | None) -> None:
    """Catches a broker timestamp in another zone or unit giving a wrong ``Envelope.timestamp``,
    and a nonsense timestamp from a foreign producer failing the delivery instead of being
    left out."""
    assert with_broker_defaults({}, None, time).get("ce-time") == expected
