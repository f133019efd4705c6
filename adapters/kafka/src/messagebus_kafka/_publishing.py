"""Publishing: size checks, then send and await every confirmation (``acks="all"``).

A few messages go through the producer's ``send`` (merged with what concurrent publishes
send); many fill record batches per partition with aiokafka's batch API, about a tenth of
``send``'s CPU per message.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kerr
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from messagebus import MessageBusError, MessageTooLarge, PublishError
from messagebus.transports import OutgoingMessage

from ._codec import HeaderEncoder
from ._connection import Connection
from ._errors import errors
from ._topology import kafka_name

__all__ = ["HEADER_ROOM", "Publisher"]

#: Room left for headers and the key under ``max_request_size`` in the advertised body limit.
HEADER_ROOM = 8192
_estimate_size = DefaultRecordBatchBuilder.estimate_size_in_bytes
#: From this many messages on, ``publish`` fills record batches itself (see _send_batches).
_BULK_MIN = 8
_PARTITIONER = DefaultPartitioner()
#: A message ready to send: topic, value, key, record headers.
_Prepared = tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]


def _publish_error(exc: BaseException, topic: str) -> MessageBusError:
    return errors.map(exc, PublishError, f"Kafka did not confirm a message to topic {topic!r}")


class Publisher:
    """Sends the messages of ``publish`` calls over the connection's producer. May be used by
    many tasks at once (aiokafka's producer is); use from one event loop."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._limit = connection.options.max_request_size
        self._names: dict[str, str] = {}

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """See :meth:`KafkaTransport.publish`."""
        producer, topics = self.connection.require()
        limit = self._limit
        body_limit = limit - HEADER_ROOM
        prepared: list[_Prepared] = []
        needed: set[str] = set()
        known = topics.known
        names = self._names
        encode = HeaderEncoder().encode
        for message in messages:
            name = message.destination.name
            topic = names.get(name) or names.setdefault(name, kafka_name(name))
            wire_headers, header_bytes = encode(message.headers)
            key = message.key.encode() if message.key is not None else None
            body = message.body
            if len(body) > body_limit:
                raise MessageTooLarge(
                    f"message body to {name!r} is {len(body)} bytes; the limit is "
                    f"{body_limit} bytes (max_request_size={limit} minus {HEADER_ROOM} for key and headers)"
                )
            # A cheap upper bound first (5-byte varints, fixed overheads); the exact record
            # size is only computed for messages that come near the limit.
            rough = len(body) + (len(key) if key else 0) + 128 + 10 * len(wire_headers) + header_bytes
            if rough > limit:
                size = _estimate_size(key, body, wire_headers)
                if size > limit:
                    raise MessageTooLarge(
                        f"message to {name!r} is {size} bytes with key and headers; "
                        f"the limit is max_request_size={limit} bytes (raise it in the URL only if the "
                        "broker's message.max.bytes allows it)"
                    )
            if topic not in known:
                needed.add(topic)
            prepared.append((topic, body, key, wire_headers))
        if needed:
            await topics.ensure(needed)
        if len(prepared) >= _BULK_MIN:
            await self._send_batches(producer, prepared)
        else:
            await self._send_each(producer, prepared)

    async def _send_each(self, producer: AIOKafkaProducer, prepared: list[_Prepared]) -> None:
        """Few messages: ``send`` each into the producer's accumulator (which merges them with
        what concurrent publishes send to the same partitions), then await every confirmation."""
        send = producer.send
        futures: list[asyncio.Future[Any]] = []
        topic = ""
        try:
            for topic, body, key, wire_headers in prepared:
                futures.append(await send(topic, body, key=key, headers=wire_headers))
        except kerr.KafkaError as exc:
            await asyncio.gather(*futures, return_exceptions=True)
            raise _publish_error(exc, topic) from exc
        await _confirmed(futures, [item[0] for item in prepared])

    async def _send_batches(self, producer: AIOKafkaProducer, prepared: list[_Prepared]) -> None:
        """Many messages: fill record batches per partition with the producer's batch API and
        submit each batch whole. ``send`` costs about ten times more CPU per message (a
        coroutine, a future and a partitioner call each). Keyed messages go to the partition
        the producer would pick (murmur2 of the key: per-key order holds, also with messages
        sent one by one); keyless ones fill one partition's batch, then move on to the next
        partition (Kafka's sticky partitioning)."""
        partition_of = _PARTITIONER
        partitions: dict[str, list[int]] = {}
        sticky: dict[str, int] = {}
        by_key: dict[tuple[str, bytes], int] = {}
        builders: dict[tuple[str, int], BatchBuilder] = {}
        futures: list[asyncio.Future[Any]] = []
        topics: list[str] = []
        topic = ""

        async def submit(builder: BatchBuilder, topic: str, partition: int) -> None:
            builder.close()
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            topics.append(topic)

        try:
            for topic, body, key, wire_headers in prepared:
                parts = partitions.get(topic)
                if parts is None:
                    parts = partitions[topic] = sorted(await producer.partitions_for(topic))
                if key is None:
                    index = sticky.get(topic)
                    if index is None:
                        index = sticky[topic] = random.randrange(len(parts))
                    partition = parts[index]
                else:
                    cached = by_key.get((topic, key))
                    if cached is None:
                        cached = by_key[topic, key] = partition_of(key, parts, parts)
                    partition = cached
                builder = builders.get((topic, partition))
                if builder is None:
                    builder = builders[topic, partition] = producer.create_batch()
                while builder.append(timestamp=None, key=key, value=body, headers=wire_headers) is None:
                    # Full (a new batch always takes its first record, so this ends).
                    del builders[topic, partition]
                    await submit(builder, topic, partition)
                    if key is None:
                        index = sticky[topic] = (sticky[topic] + 1) % len(parts)
                        partition = parts[index]
                    builder = builders.get((topic, partition)) or producer.create_batch()
                    builders[topic, partition] = builder
            for (topic, partition), builder in builders.items():
                await submit(builder, topic, partition)
        except kerr.KafkaError as exc:
            await asyncio.gather(*futures, return_exceptions=True)
            raise _publish_error(exc, topic) from exc
        await _confirmed(futures, topics)

    async def send_record(
        self, topic: str, value: bytes | None, key: bytes | None, wire_headers: list[tuple[str, bytes]]
    ) -> None:
        """Publish one raw record and wait for its confirmation (retries use it). Raises
        :class:`PublishError`, :class:`TopologyError` or :class:`LifecycleError`."""
        producer, topics = self.connection.require()
        if topic not in topics.known:
            await topics.ensure({topic})
        try:
            await producer.send_and_wait(topic, value, key=key, headers=wire_headers)
        except kerr.KafkaError as exc:
            raise _publish_error(exc, topic) from exc


async def _confirmed(futures: list[asyncio.Future[Any]], topics: list[str]) -> None:
    """Await every confirmation; raise the first failure as :class:`PublishError`."""
    # Await in send order: most futures are done by the time their turn comes, so this
    # suspends about once per produced batch (cheaper than gather's per-future callbacks).
    failure: tuple[BaseException, str] | None = None
    for future, topic in zip(futures, topics, strict=True):
        try:
            await future
        except kerr.KafkaError as exc:
            if failure is None:
                failure = (exc, topic)
    if failure is not None:
        raise _publish_error(failure[0], failure[1]) from failure[0]
