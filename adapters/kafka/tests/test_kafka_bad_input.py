"""Bad input against a real broker: unreachable servers, SASL mismatch, oversized messages,
names Kafka would reject, a broker without idempotent-producer support."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
from kafka_broker import Tansu
from messagebus_kafka import KafkaTransport
from messagebus_kafka._topology import kafka_name
from test_kafka_transport import Collector, msg, queue, topic

from messagebus import ConnectError, MessageTooLarge
from messagebus.testing import free_port
from messagebus.transports import Delivery, OutgoingMessage

external = pytest.mark.skipif(
    bool(os.environ.get("MESSAGEBUS_TEST_KAFKA_URL")), reason="needs the Tansu started by the fixture"
)


def with_options(url: str, extra: str) -> str:
    return url + ("&" if "?" in url else "?") + extra


async def test_unreachable_bootstrap_gives_bounded_connect_error() -> None:
    port = free_port()  # nothing listens there
    t = KafkaTransport.from_url(f"kafka://127.0.0.1:{port},127.0.0.1:{port}?connect_timeout=1")
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}") as info:
        await asyncio.wait_for(t.connect(), 20)  # guard only: connect gives up after ~1 s
    assert "cannot connect to Kafka bootstrap servers" in str(info.value)
    assert info.value.__cause__ is not None
    await t.close()


@external
async def test_sasl_against_a_listener_without_sasl_is_a_clear_error(kafka_url: str) -> None:
    url = with_options(kafka_url.replace("kafka://", "kafka://alice:topsecret@"), "sasl_mechanism=SCRAM-SHA-256")
    url = url.replace("connect_timeout=10", "connect_timeout=2")
    t = KafkaTransport.from_url(url)
    with pytest.raises(ConnectError, match="SASL") as info:
        await asyncio.wait_for(t.connect(), 30)
    assert "topsecret" not in str(info.value)
    await t.close()


@external
async def test_scram_against_a_broker_that_does_not_know_the_user(tansu_factory: Callable[..., Tansu]) -> None:
    broker = tansu_factory(authentication=True)
    t = KafkaTransport.from_url(
        f"kafka://nobody:topsecret@127.0.0.1:{broker.port}?sasl_mechanism=SCRAM-SHA-512"
        "&idempotence=false&connect_timeout=2"
    )
    with pytest.raises(ConnectError, match="SASL") as info:
        await asyncio.wait_for(t.connect(), 30)
    assert "topsecret" not in str(info.value)
    assert "sasl_mechanism" in str(info.value)
    await t.close()


async def test_too_large_message_is_refused_before_anything_is_sent(kafka_url: str, unique: str) -> None:
    t = KafkaTransport.from_url(with_options(kafka_url, "max_request_size=16384"))
    await t.connect()
    try:
        q = queue(unique)
        limit = t.capabilities.max_message_size
        assert limit is not None
        with pytest.raises(MessageTooLarge, match="limit"):
            await t.publish([msg(q, b"small-1"), OutgoingMessage(q, b"x" * (limit + 1), {})])
        # The same for a publish large enough to take the bulk (record batch) path.
        bulk = [msg(q, f"bulk-{i}".encode()) for i in range(20)]
        with pytest.raises(MessageTooLarge, match="limit"):
            await t.publish([*bulk, OutgoingMessage(q, b"x" * (limit + 1), {})])
        # Headers count too: a small body with huge headers is refused by the exact size check.
        with pytest.raises(MessageTooLarge, match="max_request_size"):
            await t.publish([msg(q, b"small-2", big="y" * 16384)])
        await t.publish([msg(q, b"marker")])
        got = Collector()
        consumer = await t.subscribe(q, got, concurrency=1)
        await got.wait_for(lambda: len(got.items) >= 1)
        assert got.bodies == [b"marker"], "a message of a refused batch was sent"
        await consumer.stop(5)
    finally:
        await t.close()


async def test_names_longer_than_kafka_allows_are_mapped(kafka_url: str, unique: str) -> None:
    t = KafkaTransport.from_url(kafka_url)
    await t.connect()
    try:
        name = (unique + "." + "n" * 200)[:200]
        group = "g" * 150
        dest = topic(name, group)
        assert len(f"{name}.{group}.retry") > 249
        assert len(kafka_name(f"{name}.{group}.retry")) <= 249

        async def fail_once(d: Delivery) -> None:
            if d.attempt == 1:
                await d.retry(0.05, {})
            else:
                await d.ack()

        got = Collector(fail_once)
        consumer = await t.subscribe(dest, got, concurrency=1)
        await t.publish([msg(dest, b"long")])
        await got.wait_for(lambda: [d.attempt for d in got.items] == [1, 2])
        await consumer.stop(5)
    finally:
        await t.close()


@external
async def test_idempotent_producer_on_a_broker_without_it_explains_the_option(kafka_url: str) -> None:
    t = KafkaTransport.from_url(kafka_url.replace("idempotence=false", "idempotence=true"))
    with pytest.raises(ConnectError, match="idempotence=false"):
        await asyncio.wait_for(t.connect(), 60)
    await t.close()
