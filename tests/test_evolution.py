"""Schema evolution (docs/evolution.md): the version a message carries, upcasters chained
before validation, dead-lettering of versions no upcaster reaches, tolerant reading."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from messagebus import Bus, ConfigurationError, Envelope, LifecycleError
from messagebus._config import TransportURL
from messagebus._discovery import load_transport
from messagebus._evolution import CE_DATASCHEMA, Upcasters, message_version
from messagebus._handler import bind_handler
from messagebus._headers import DLQ_ATTEMPTS, DLQ_ERROR_MESSAGE, DLQ_ERROR_TYPE
from messagebus._transport import DeleteQueue
from messagebus.testing import Collector, wait_idle

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


# Three producers' views of one event type, as three services would declare it.
class OrderV1(BaseModel):
    id: int
    amount: int  # cents


class OrderV2(BaseModel):
    schema_version: ClassVar[int] = 2
    id: int
    amount_cents: int


class OrderV3(BaseModel):
    schema_version: ClassVar[int] = 3
    id: int
    amount_cents: int
    currency: str


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"id": data["id"], "amount_cents": data["amount"]}


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


def fresh_memory() -> str:
    return f"memory://evolution-{uuid.uuid4().hex[:8]}"


def consumer_v3(url: str, queue: str, got: Collector[tuple[OrderV3, Envelope]]) -> Bus:
    bus = Bus.from_url(url, service="billing")
    bus.upcaster(OrderV3, from_version=1)(v1_to_v2)
    bus.upcaster(OrderV3, from_version=2)(v2_to_v3)

    @bus.consume(queue)
    async def bill(order: OrderV3, envelope: Envelope) -> None:
        got.add((order, envelope))

    return bus


async def remove_queue(url: str, queue: str) -> None:
    transport = load_transport(TransportURL.parse(url))
    await transport.connect()
    try:
        assert isinstance(transport, DeleteQueue)
        await transport.delete_queue(queue)
    finally:
        await transport.close()


@pytest.mark.parametrize("broker", ["memory", "rabbitmq"])
async def test_v1_and_v2_messages_are_upcast_to_v3_across_a_broker(broker: str) -> None:
    """Bug caught: the version not carried through the broker (ce-dataschema lost in the
    binding), upcasters not chained (v1 stopping at v2), applied to a current message, or
    applied in the wrong order."""
    if broker == "rabbitmq":
        pytest.importorskip("messagebus_rabbitmq")
    url = fresh_memory() if broker == "memory" else RABBITMQ_URL
    queue = f"evolution.{uuid.uuid4().hex[:8]}"
    got: Collector[tuple[OrderV3, Envelope]] = Collector(timeout=10)
    consumer = consumer_v3(url, queue, got)
    producer = Bus.from_url(url, service="shop")
    try:
        async with consumer, producer:
            await producer.send(queue, OrderV1(id=1, amount=100))
            await producer.send(queue, OrderV2(id=2, amount_cents=200))
            await producer.send(queue, OrderV3(id=3, amount_cents=300, currency="USD"))
            items = await got.wait_for(3)
    finally:
        if broker == "rabbitmq":
            await remove_queue(url, queue)
    orders = sorted((order for order, _ in items), key=lambda o: o.id)
    assert orders == [
        OrderV3(id=1, amount_cents=100, currency="EUR"),
        OrderV3(id=2, amount_cents=200, currency="EUR"),
        OrderV3(id=3, amount_cents=300, currency="USD"),
    ]
    versions = {order.id: message_version(envelope.wire_headers.get(CE_DATASCHEMA)) for order, envelope in items}
    assert versions == {1: 1, 2: 2, 3: 3}


async def test_dataschema_is_sent_for_versioned_models_only() -> None:
    """Bug caught: a dataschema on unversioned messages (a changed wire format for every
    existing producer) or none on versioned ones (every message read as version 1)."""
    url = fresh_memory()
    got: Collector[Envelope] = Collector(timeout=5)
    bus = Bus.from_url(url, service="shop")

    @bus.consume("raw")
    async def keep(envelope: Envelope) -> None:
        got.add(envelope)

    async with bus:
        await bus.send("raw", OrderV1(id=1, amount=1))
        await bus.send("raw", OrderV2(id=2, amount_cents=2))
        first, second = await got.wait_for(2)
    assert CE_DATASCHEMA not in first.wire_headers
    assert second.wire_headers[CE_DATASCHEMA] == f"messagebus:{__name__}.OrderV2/v2"
    assert first.wire_headers["ce-type"] == f"{__name__}.OrderV1"  # the type keeps its name


def test_message_version_reads_only_messagebus_dataschemas() -> None:
    """Bug caught: a foreign dataschema URI (a JSON Schema URL ending in /v7) or garbage read
    as a version, so that a foreign producer's messages are dead-lettered as too new."""
    assert message_version(None) == 1
    assert message_version("") == 1
    assert message_version("messagebus:shop.Order/v4") == 4
    assert message_version("https://schemas.example.com/order/v7") == 1
    assert message_version("messagebus:shop.Order/vX") == 1
    assert message_version("messagebus:shop.Order/v٣") == 1  # a non-ASCII digit


async def dead_letter_of(bus: Bus, queue: str, send: Any) -> Envelope:
    async with bus:
        await send(bus)
        await wait_idle(bus)
        (letter,) = await bus.peek_dead_letters(f"{queue}.dlq", wait=0.1)
    return letter


async def test_a_newer_version_is_dead_lettered_at_once_with_the_reason() -> None:
    """Bug caught: a message newer than the handler's model validated anyway (fields of v3
    silently dropped by a v2 consumer) or retried (it can never succeed)."""
    bus = Bus.from_url(fresh_memory(), service="billing")
    bus.upcaster(OrderV2, from_version=1)(v1_to_v2)
    calls: list[OrderV2] = []

    @bus.consume("orders")
    async def bill(order: OrderV2) -> None:
        calls.append(order)

    letter = await dead_letter_of(
        bus, "orders", lambda b: b.send("orders", OrderV3(id=1, amount_cents=1, currency="EUR"))
    )
    assert calls == []
    assert letter.wire_headers[DLQ_ATTEMPTS] == "1"
    assert letter.wire_headers[DLQ_ERROR_TYPE] == "messagebus.DecodeError"
    reason = letter.wire_headers[DLQ_ERROR_MESSAGE]
    assert "OrderV2: message is schema version 3, the handler reads version 2" in reason
    assert "upcasters registered from versions 1 (v1_to_v2)" in reason


async def test_a_gap_in_the_chain_is_dead_lettered_naming_the_missing_upcaster() -> None:
    """Bug caught: a v1 message validated against v3 when the 1 -> 2 upcaster is missing
    (or the missing step skipped), instead of a dead letter saying which one is missing."""
    bus = Bus.from_url(fresh_memory(), service="billing")
    bus.upcaster(OrderV3, from_version=2)(v2_to_v3)

    @bus.consume("orders")
    async def bill(order: OrderV3) -> None:
        raise AssertionError("never called")

    letter = await dead_letter_of(bus, "orders", lambda b: b.send("orders", OrderV1(id=1, amount=1)))
    reason = letter.wire_headers[DLQ_ERROR_MESSAGE]
    assert "message is schema version 1, the handler reads version 3; no upcaster from version 1" in reason
    assert letter.wire_headers[DLQ_ATTEMPTS] == "1"


async def test_an_upcaster_that_raises_dead_letters_with_its_error() -> None:
    """Bug caught: an upcaster's exception retried like a handler failure, or dead-lettered
    without saying which upcaster failed and why."""
    bus = Bus.from_url(fresh_memory(), service="billing")

    @bus.upcaster(OrderV2, from_version=1)
    def broken(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("amount_in_cents")

    @bus.consume("orders")
    async def bill(order: OrderV2) -> None:
        raise AssertionError("never called")

    letter = await dead_letter_of(bus, "orders", lambda b: b.send("orders", OrderV1(id=1, amount=1)))
    reason = letter.wire_headers[DLQ_ERROR_MESSAGE]
    assert "upcaster" in reason and "broken from version 1 raised KeyError: 'amount_in_cents'" in reason
    assert letter.wire_headers[DLQ_ATTEMPTS] == "1"


async def test_a_batch_handler_upcasts_too() -> None:
    """Bug caught: batch subscriptions decoding with the plain decoder, so older messages
    in a batch fail validation instead of being upcast."""
    bus = Bus.from_url(fresh_memory(), service="billing")
    bus.upcaster(OrderV2, from_version=1)(v1_to_v2)
    got: Collector[OrderV2] = Collector(timeout=5)

    @bus.consume("orders", batch=2, batch_timeout=0.05)
    async def bill(orders: list[OrderV2]) -> None:
        for order in orders:
            got.add(order)

    async with bus:
        await bus.send("orders", OrderV1(id=1, amount=10))
        await bus.send("orders", OrderV2(id=2, amount_cents=20))
        orders = await got.wait_for(2)
    assert sorted(orders, key=lambda o: o.id) == [OrderV2(id=1, amount_cents=10), OrderV2(id=2, amount_cents=20)]


class Tolerant(BaseModel):
    id: int
    note: str = "none"


async def test_tolerant_reading_ignores_unknown_fields_and_defaults_missing_ones() -> None:
    """Bug caught: a consumer that rejects a message with a field it does not know (a newer
    producer's addition) or without a field it has a default for (an older producer)."""
    bus = Bus.from_url(fresh_memory(), service="reader")
    got: Collector[Tolerant] = Collector(timeout=5)

    @bus.consume("notes")
    async def read(item: Tolerant) -> None:
        got.add(item)

    async with bus:
        await bus.send("notes", {"id": 1, "note": "hi", "added_later": [1, 2]})
        await bus.send("notes", {"id": 2})
        items = await got.wait_for(2)
    assert sorted(items, key=lambda t: t.id) == [Tolerant(id=1, note="hi"), Tolerant(id=2)]


def test_unversioned_handlers_keep_the_plain_decoder() -> None:
    """Bug caught: every handler routed through the versioned decoder (a header read and a
    version parse per message) instead of only those whose model declares schema_version."""

    async def plain(order: OrderV1) -> None: ...

    async def versioned(order: OrderV2) -> None: ...

    assert bind_handler(plain, "q", Upcasters()).__name__ == "call"
    assert bind_handler(versioned, "q", Upcasters()).__name__ == "call_versioned"


def test_registration_errors_are_raised_at_registration() -> None:
    """Bug caught: a misregistered upcaster (not a model, a version out of range, a second
    one for the same step, one after start) accepted and only failing on a message."""
    bus = Bus.from_url(fresh_memory(), service="billing")
    with pytest.raises(ConfigurationError, match="pydantic models"):
        bus.upcaster(dict, from_version=1)
    with pytest.raises(ConfigurationError, match=r"must be an int from 1 to 2, got 0"):
        bus.upcaster(OrderV3, from_version=0)
    with pytest.raises(ConfigurationError, match=r"must be an int from 1 to 2, got 3"):
        bus.upcaster(OrderV3, from_version=3)
    with pytest.raises(ConfigurationError, match=r"none \(declare schema_version"):
        bus.upcaster(OrderV1, from_version=1)
    bus.upcaster(OrderV3, from_version=1)(v1_to_v2)
    with pytest.raises(ConfigurationError, match="already has an upcaster from version 1"):
        bus.upcaster(OrderV3, from_version=1)


async def test_upcaster_after_start_and_bad_schema_version_are_refused() -> None:
    """Bug caught: an upcaster registered after start silently unused (handlers are bound at
    start), and schema_version declared as a field (sent in every body, never a version)."""

    class AsField(BaseModel):
        schema_version: int = 2

    class Negative(BaseModel):
        schema_version: ClassVar[int] = 0

    bus = Bus.from_url(fresh_memory(), service="billing")
    for model in (AsField, Negative):

        async def handle(item: Any) -> None: ...

        handle.__annotations__["item"] = model
        with pytest.raises(ConfigurationError, match="schema_version"):
            bus.consume(f"q{model.__name__}")(handle)
    async with bus:
        with pytest.raises(LifecycleError, match="before start"):
            bus.upcaster(OrderV2, from_version=1)


async def test_an_upcaster_returning_no_dict_dead_letters_saying_so() -> None:
    """Bug caught: an upcaster's non-dict result validated (a list or None reaching pydantic
    with a confusing error) instead of a reason naming the upcaster and what it returned."""
    bus = Bus.from_url(fresh_memory(), service="billing")

    @bus.upcaster(OrderV2, from_version=1)
    def to_list(data: dict[str, Any]) -> dict[str, Any]:
        return [data]  # type: ignore[return-value]

    @bus.consume("orders")
    async def bill(order: OrderV2) -> None:
        raise AssertionError("never called")

    letter = await dead_letter_of(bus, "orders", lambda b: b.send("orders", OrderV1(id=1, amount=1)))
    assert "to_list from version 1 returned a list, not a dict" in letter.wire_headers[DLQ_ERROR_MESSAGE]
