"""The header rule (messagebus._headers), checked by the bus before any transport sees a
message: name length, reserved names of every CloudEvents binding, the total size, and what
a consumer still reads from a foreign producer. Runs on memory://; the conformance kit's
HeaderLimitTests run the same rule on every broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from messagebus import Bus, Envelope, InvalidHeaders, OutgoingMessage
from messagebus._headers import MAX_HEADERS_BYTES, MAX_NAME_BYTES, validate_headers
from messagebus.testing import Collector
from messagebus.transports import Destination, DestinationKind

BusFactory = Callable[..., Bus]

RESERVED = [
    "ce-id",
    "CE-ID",
    "ce-source",
    "ce_id",
    "Ce_Type",
    "cloudEvents:id",
    "cloudEvents_id",
    "CLOUDEVENTS_source",
    "cloudeventsanything",
    "content-type",
    "Content-Type",
    "messagebus-attempt",
    "MessageBus-Key",
]


def user_headers(envelope: Envelope) -> dict[str, str]:
    """The envelope's headers less W3C trace context, which the tracing middleware adds
    whenever an earlier test installed an OpenTelemetry SDK in this process."""
    return {k: v for k, v in envelope.headers.items() if k not in ("traceparent", "tracestate")}


@pytest.mark.parametrize("name", RESERVED)
async def test_reserved_binding_names_are_refused_at_publish(bus_factory: BusFactory, name: str) -> None:
    """Catches a user header spoofing the envelope: ``cloudEvents:id`` on RabbitMQ or ``ce_id``
    on Kafka silently replaced ``Envelope.id``; only ``ce-`` and ``messagebus-`` (lower case)
    were refused. Every binding's prefix, any case, is refused with the prefixes named, and
    nothing is published."""
    got: Collector[Envelope] = Collector(5)
    bus = bus_factory()

    @bus.consume("spoof")
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    async with bus:
        with pytest.raises(InvalidHeaders, match="reserved") as info:
            await bus.send("spoof", {"n": 1}, headers={"ok": "1", name: "spoofed"})
        message = str(info.value)
        assert repr(name) in message
        for prefix in ("ce-", "ce_", "cloudEvents", "messagebus-", "content-type"):
            assert prefix in message
        with pytest.raises(InvalidHeaders, match="reserved"):
            await bus.send_many("spoof", [{"n": 2}, {"n": 3}], headers={name: "spoofed"})
        await bus.send("spoof", {"n": 4}, headers={"ok": "1"})
        [envelope] = await got.wait_for(1)
    assert user_headers(envelope) == {"ok": "1"}
    assert "spoofed" not in envelope.wire_headers.values()


@pytest.mark.parametrize("name", ["n" * MAX_NAME_BYTES, "ü" * (MAX_NAME_BYTES // 2) + "n", "🙂" * 63 + "abc"])
async def test_a_name_at_the_limit_passes_and_round_trips(bus_factory: BusFactory, name: str) -> None:
    """Catches the byte limit counted in characters, or a limit tighter than documented: a
    255-byte name (ASCII, two-byte and four-byte characters) must pass and arrive intact."""
    assert len(name.encode()) == MAX_NAME_BYTES
    got: Collector[Envelope] = Collector(5)
    bus = bus_factory()

    @bus.consume("names")
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    async with bus:
        await bus.send("names", {"n": 1}, headers={name: "v"})
        [envelope] = await got.wait_for(1)
    assert user_headers(envelope) == {name: "v"}


@pytest.mark.parametrize("name", ["n" * (MAX_NAME_BYTES + 1), "ü" * 128, "🙂" * 64])
async def test_a_name_one_byte_over_the_limit_is_refused(bus_factory: BusFactory, name: str) -> None:
    """Catches names the brokers disagree on: memory and Kafka accepted a 300-byte name that
    RabbitMQ refused. A name over 255 UTF-8 bytes is refused on every transport, saying so."""
    bus = bus_factory()
    async with bus:
        with pytest.raises(InvalidHeaders, match=f"is {len(name.encode())} bytes in UTF-8; at most 255"):
            await bus.publish("names", {"n": 1}, headers={name: "v"})


async def test_total_header_size_at_the_limit_passes_and_one_byte_over_is_refused(bus_factory: BusFactory) -> None:
    """Catches an oversized header reaching a broker (a 200 KB value made RabbitMQ drop the
    connection over and over): names and values are limited to 64 KiB in all; exactly at the
    limit passes, one byte more is refused naming the limit and the largest header."""
    got: Collector[Envelope] = Collector(5)
    bus = bus_factory()

    @bus.consume("big")
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    at_limit = {"a": "x" * 1000, "big": "y" * (MAX_HEADERS_BYTES - 1000 - 1 - 3)}
    async with bus:
        await bus.send("big", {"n": 1}, headers=at_limit)
        [envelope] = await got.wait_for(1)
        assert user_headers(envelope) == at_limit
        over = {**at_limit, "big": at_limit["big"] + "y"}
        with pytest.raises(InvalidHeaders, match=f"at most {MAX_HEADERS_BYTES} are allowed.*'big'"):
            await bus.send("big", {"n": 2}, headers=over)
        with pytest.raises(InvalidHeaders, match="put data in the body"):
            await bus.publish_many("big", [{"n": 3}], headers={"blob": "z" * 200_000})
    # Multi-byte characters count as their UTF-8 bytes.
    with pytest.raises(InvalidHeaders, match="at most"):
        validate_headers({"u": "é" * (MAX_HEADERS_BYTES // 2)})


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"\ud800": "v"}, "header name '\\\\ud800' is not valid Unicode"),
        ({"n": "bad \udcff"}, "value of header 'n' is not valid Unicode"),
        ({"": "v"}, "non-empty str"),
        ({"n": None}, "header 'n' has a NoneType value"),
    ],
)
def test_invalid_text_is_refused_with_what_is_wrong(headers: dict[Any, Any], match: str) -> None:
    """Catches a lone surrogate reaching a broker client, which raised a bare
    UnicodeEncodeError while encoding the frame (after other messages of a batch were sent)."""
    with pytest.raises(InvalidHeaders, match=match):
        validate_headers(headers)


async def test_foreign_headers_with_binding_names_still_decode(bus_factory: BusFactory) -> None:
    """Catches the reserved-name rule applied on the consume side: it binds what our users
    publish, while a foreign producer's headers (``cloudEvents_*``, ``content-type``, ``ce_*``)
    must still reach the handler as before."""
    got: Collector[Envelope] = Collector(5)
    bus = bus_factory()

    @bus.consume("foreign")
    async def handle(envelope: Envelope) -> None:
        got.add(envelope)

    foreign = {"ce-id": "abc", "cloudEvents_subject": "s", "content-type": "application/json", "ce_x": "1", "k": "v"}
    async with bus:
        await bus.transport.publish([OutgoingMessage(Destination(DestinationKind.QUEUE, "foreign"), b"{}", foreign)])
        [envelope] = await got.wait_for(1)
    assert envelope.id == "abc"
    assert user_headers(envelope) == {
        "cloudEvents_subject": "s",
        "content-type": "application/json",
        "ce_x": "1",
        "k": "v",
    }
