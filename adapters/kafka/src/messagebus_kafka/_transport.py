"""KafkaTransport: the messagebus transport contract on aiokafka.

Publishing: one idempotent ``acks="all"`` producer per transport; ``publish`` checks every
size first, then sends: a few messages through the producer's ``send`` (merged with what
concurrent publishes send), many by filling record batches per partition itself; then it
awaits every confirmation. Consuming: one ``AIOKafkaConsumer`` per subscription (its own
consumer group), subscribed to the main topic and the group's retry topic. Offsets are committed manually:
``offset + 1`` of the lowest contiguous settled record of each partition, never past a
record whose handler has not settled (or was cancelled). Retries are re-published to the
retry topic with a due time; the consumer holds due-later records and pauses that retry
partition until they are due, so nothing seeks back and no main partition is blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import errors as kerr
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord, TopicPartition

from messagebus import (
    ConfigurationError,
    ConnectError,
    ConsumeError,
    LifecycleError,
    MessageTooLarge,
    PublishError,
    TransportError,
)
from messagebus.transports import (
    AttributeValue,
    Capabilities,
    DeliveryHandler,
    Destination,
    DestinationKind,
    OutgoingMessage,
    TransportURL,
    WorkerPool,
    headers,
)

from ._codec import DUE, HeaderEncoder, RecordHeaders, encode_headers
from ._errors import connect_error, publish_error
from ._options import KafkaOptions, load_options
from ._telemetry import MESSAGING_SYSTEM, delivery_attributes
from ._topology import SubscriptionNames, TopicAdmin, kafka_name, subscription_names

__all__ = ["KafkaConsumer", "KafkaDelivery", "KafkaTransport"]

logger = logging.getLogger("messagebus.kafka")

_ATTEMPT = headers.ATTEMPT
_INTERNAL = frozenset({_ATTEMPT, DUE})
#: Room left for headers and the key under ``max_request_size`` in the advertised body limit.
_HEADER_ROOM = 8192
_estimate_size = DefaultRecordBatchBuilder.estimate_size_in_bytes
#: From this many messages on, ``publish`` fills record batches itself (see _send_batches).
_BULK_MIN = 8
_PARTITIONER = DefaultPartitioner()
#: A message ready to send: topic, value, key, record headers.
_Prepared = tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]
_FETCH_BACKOFF = 0.5


class KafkaTransport:
    """A Kafka connection for one :class:`~messagebus.Bus`, built on aiokafka.

    Use from one event loop. ``connect``/``close`` are idempotent. Errors are mapped to the
    messagebus error tree with the aiokafka error chained; the password never appears in
    messages or reprs.
    """

    messaging_system: str = MESSAGING_SYSTEM

    def __init__(self, url: TransportURL, options: KafkaOptions) -> None:
        """Prefer :meth:`from_url`, which validates the URL and its options."""
        self._url = url
        self._options = options
        self._servers = [f"{h}:{p or 9092}" if ":" not in h else f"[{h}]:{p or 9092}" for h, p in url.hosts]
        self.capabilities = Capabilities(
            ordering=True,
            native_delay=True,
            persistence=True,
            consumer_groups=True,
            max_message_size=options.max_request_size - _HEADER_ROOM,
            network=True,
        )
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._topics: TopicAdmin | None = None
        self._names: dict[str, str] = {}
        self._consumers: set[KafkaConsumer] = set()
        self._connect_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: TransportURL | str) -> Self:
        """Build a transport from ``kafka://[user:password@]host[:port][,host2[:port]...][?options]``.

        Validates without I/O. Raises :class:`InvalidURL` (wrong scheme, no host) or
        :class:`InvalidOption` (unknown/ill-typed/conflicting option, listing valid ones).
        """
        from messagebus import InvalidURL

        parsed = url if isinstance(url, TransportURL) else TransportURL.parse(url)
        if parsed.scheme != "kafka":
            raise InvalidURL(f"the Kafka transport handles kafka:// URLs, got {parsed.render()!r}")
        if not parsed.hosts or any(not h for h, _ in parsed.hosts):
            raise InvalidURL(
                f"kafka URL {parsed.render()!r} names no bootstrap server; "
                "expected kafka://host:9092 or kafka://host1:9092,host2:9092"
            )
        if parsed.path not in ("", "/"):
            raise InvalidURL(f"kafka URL {parsed.render()!r} has a path; Kafka URLs have none (kafka://host:9092)")
        return cls(parsed, load_options(parsed))

    @property
    def options(self) -> KafkaOptions:
        """The validated options (read-only)."""
        return self._options

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` of every bootstrap server from the URL."""
        return list(self._servers)

    def __repr__(self) -> str:
        return f"KafkaTransport({self._url.render()!r})"

    # -- connection ---------------------------------------------------------------------

    def client_kwargs(self) -> dict[str, Any]:
        """Connection settings shared by the producer, consumers and admin client."""
        o = self._options
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self._servers,
            "client_id": o.client_id,
            "request_timeout_ms": o.request_timeout_ms,
            "security_protocol": o.effective_protocol,
        }
        if o.sasl_username is not None:
            kwargs["sasl_mechanism"] = o.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = o.sasl_username
            kwargs["sasl_plain_password"] = o.sasl_password
        if o.uses_ssl:
            kwargs["ssl_context"] = self._ssl_context()
        return kwargs

    def _ssl_context(self) -> ssl.SSLContext:
        o = self._options
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=o.ssl_cafile, certfile=o.ssl_certfile, keyfile=o.ssl_keyfile
            )
            return context
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load the Kafka TLS files (ssl_cafile/ssl_certfile/ssl_keyfile): {exc}"
            ) from exc

    async def connect(self) -> None:
        """Connect the producer and the admin client.

        Keeps trying for ``connect_timeout`` seconds, then raises :class:`ConnectError`
        saying which servers were tried and why it failed. Idempotent.
        """
        async with self._connect_lock:
            if self._producer is not None:
                return
            o = self._options
            kwargs = self.client_kwargs()
            deadline = time.monotonic() + o.connect_timeout
            delay = 0.1
            servers = ",".join(self._servers)
            sasl = (o.sasl_mechanism or "PLAIN") if o.sasl_username is not None else None
            while True:
                producer = AIOKafkaProducer(
                    **kwargs,
                    acks="all",
                    enable_idempotence=o.idempotence,
                    compression_type=None if o.compression == "none" else o.compression,
                    max_request_size=o.max_request_size,
                    max_batch_size=o.max_batch_size,
                    linger_ms=o.linger_ms,
                )
                admin = AIOKafkaAdminClient(**kwargs)
                try:
                    remaining = max(deadline - time.monotonic(), 0.1)
                    await asyncio.wait_for(producer.start(), remaining)
                    await asyncio.wait_for(admin.start(), max(deadline - time.monotonic(), 1.0))
                except asyncio.CancelledError:
                    await _quietly(producer.stop())
                    await _quietly(admin.close())
                    raise
                except Exception as exc:
                    # Broad on purpose: aiokafka's SASL code can fail with plain KeyError /
                    # ValueError on an unexpected server answer; the caller gets ConnectError.
                    await _quietly(producer.stop())
                    await _quietly(admin.close())
                    if o.idempotence and isinstance(exc, kerr.UnknownError):
                        # InitProducerId failed: retrying cannot help.
                        raise ConnectError(
                            f"Kafka at {servers} refused to start an idempotent producer ({exc}); brokers "
                            "without support for it (Tansu with memory storage, old or locked-down clusters) "
                            "need idempotence=false in the URL"
                        ) from exc
                    fatal = not isinstance(exc, kerr.KafkaError | OSError | TimeoutError) or isinstance(
                        exc, kerr.UnsupportedSaslMechanismError | kerr.SaslAuthenticationFailed
                    )
                    if fatal or time.monotonic() + delay >= deadline:
                        raise connect_error(exc, servers, sasl=sasl, timeout=o.connect_timeout) from exc
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                break
            self._producer = producer
            self._admin = admin
            self._topics = TopicAdmin(admin, partitions=o.partitions, replication_factor=o.replication_factor)

    async def close(self) -> None:
        """Stop every consumer (no grace: unsettled messages stay uncommitted), flush the
        producer and close every connection. Idempotent."""
        for consumer in list(self._consumers):
            await consumer.stop(0)
        producer, admin = self._producer, self._admin
        self._producer = self._admin = self._topics = None
        if producer is not None:
            await _quietly(asyncio.wait_for(producer.stop(), self._options.request_timeout_ms / 1000))
        if admin is not None:
            await _quietly(admin.close())

    def _require(self) -> tuple[AIOKafkaProducer, TopicAdmin]:
        if self._producer is None or self._topics is None:
            raise LifecycleError("the Kafka transport is not connected; call connect() first")
        return self._producer, self._topics

    def topic_for(self, destination: Destination) -> str:
        """The Kafka topic of a logical topic or queue (cached, pure)."""
        name = destination.name
        topic = self._names.get(name)
        if topic is None:
            topic = self._names[name] = kafka_name(name)
        return topic

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Send every message and return once Kafka confirmed all of them (``acks=all``).

        Sizes are checked first: :class:`MessageTooLarge` before anything is sent. Topics
        are created on demand. Raises :class:`PublishError` (first failure; the others may
        have been stored) or :class:`LifecycleError` when not connected.
        """
        producer, topics = self._require()
        limit = self._options.max_request_size
        body_limit = limit - _HEADER_ROOM
        prepared: list[_Prepared] = []
        needed: set[str] = set()
        known = topics.known
        names = self._names
        encode = HeaderEncoder().encode
        for message in messages:
            name = message.destination.name
            topic = names.get(name) or self.topic_for(message.destination)
            wire_headers, header_bytes = encode(message.headers)
            key = message.key.encode() if message.key is not None else None
            body = message.body
            if len(body) > body_limit:
                raise MessageTooLarge(
                    f"message body to {name!r} is {len(body)} bytes; the limit is "
                    f"{body_limit} bytes (max_request_size={limit} minus {_HEADER_ROOM} for key and headers)"
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
            raise self._publish_error(exc, topic) from exc
        await self._confirmed(futures, [item[0] for item in prepared])

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
            raise self._publish_error(exc, topic) from exc
        await self._confirmed(futures, topics)

    async def _confirmed(self, futures: list[asyncio.Future[Any]], topics: list[str]) -> None:
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
            raise self._publish_error(failure[0], failure[1]) from failure[0]

    def _publish_error(self, exc: BaseException, topic: str) -> TransportError:
        error = publish_error(exc, topic)
        if isinstance(exc, kerr.UnknownError) and self._options.idempotence and type(error) is PublishError:
            error = PublishError(
                f"{error}; the broker may not support the idempotent producer (Tansu with memory "
                "storage does not): set idempotence=false in the URL for such brokers"
            )
        return error

    async def send_record(
        self, topic: str, value: bytes | None, key: bytes | None, wire_headers: list[tuple[str, bytes]]
    ) -> None:
        """Publish one raw record and wait for its confirmation (used by retries)."""
        producer, topics = self._require()
        if topic not in topics.known:
            await topics.ensure({topic})
        try:
            await producer.send_and_wait(topic, value, key=key, headers=wire_headers)
        except kerr.KafkaError as exc:
            raise self._publish_error(exc, topic) from exc

    async def partitions_for(self, topic: str) -> set[int]:
        """Partition ids of ``topic`` (from metadata)."""
        producer, _ = self._require()
        parts: set[int] = await producer.partitions_for(topic)
        return parts

    # -- consuming -----------------------------------------------------------------------

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> KafkaConsumer:
        """Create the topics, start a consumer in the subscription's group and deliver to
        ``handler`` with at most ``concurrency`` calls in flight (one at a time per key).

        A topic subscription starts at the topic's end as of this call the first time its
        group is seen (messages published after ``subscribe`` returns are delivered even
        while the group is still joining); a queue's group starts at the earliest message.
        Raises :class:`TopologyError`, :class:`ConnectError`, :class:`LifecycleError`.
        """
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        _, topics = self._require()
        names = subscription_names(source)
        await topics.ensure({names.topic, names.retry_topic})
        consumer = KafkaConsumer(self, source, names, handler, concurrency)
        await consumer.start()
        self._consumers.add(consumer)
        return consumer

    def _forget(self, consumer: KafkaConsumer) -> None:
        self._consumers.discard(consumer)


class _Partition:
    """Commit bookkeeping of one assigned partition (one assignment generation)."""

    __slots__ = ("active", "committed", "done", "drained", "held", "pending", "position", "revoked", "timers", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: deque[int] = deque()  # received offsets not yet covered by position
        self.done: set[int] = set()  # settled offsets above the lowest unsettled one
        self.position: int | None = None  # next offset to commit (last contiguous settled + 1)
        self.committed: int | None = None
        self.revoked = False
        self.active = 0  # dispatched deliveries whose handler call has not returned
        self.held = 0  # retry records waiting for their due time
        self.timers: dict[KafkaDelivery, asyncio.TimerHandle] = {}
        self.drained: asyncio.Future[None] | None = None

    def settle(self, offset: int) -> bool:
        """Mark ``offset`` settled; True when the commit position moved."""
        pending = self.pending
        if pending and pending[0] == offset:
            pending.popleft()
            position = offset + 1
            done = self.done
            while pending and pending[0] in done:
                position = pending.popleft()
                done.discard(position)
                position += 1
            self.position = position
            return True
        self.done.add(offset)
        return False


class KafkaDelivery:
    """One consumed Kafka record handed to the handler; settle it with :meth:`ack` or :meth:`retry`.

    ``body`` is the record value (``b""`` for a null value), ``key`` the record key as text
    (the producer's ordering key), ``attempt`` 1 on the first delivery (carried in
    ``messagebus-attempt`` through retries), ``headers`` the logical headers (``ce_`` mapped
    back to ``ce-``, internal ones left out; decoded on demand). ``raw`` is the aiokafka
    ``ConsumerRecord``. Not thread-safe; belongs to one handler call.
    """

    __slots__ = ("_consumer", "_settled", "_started", "_state", "attempt", "body", "headers", "key", "record")

    def __init__(
        self, consumer: KafkaConsumer, state: _Partition, record: ConsumerRecord[Any, Any], attempt: int
    ) -> None:
        # Plain attributes, not properties: each is read once per message by the bus.
        self._consumer = consumer
        self._state = state
        self.record = record
        value: bytes | None = record.value
        self.body: bytes = value if value is not None else b""
        key: bytes | None = record.key
        self.key: str | None = key.decode("utf-8", "replace") if key is not None else None
        self.attempt = attempt
        self.headers: Mapping[str, str] = RecordHeaders(record.headers)
        self._settled = False
        self._started = False

    @property
    def raw(self) -> ConsumerRecord[Any, Any]:
        """The aiokafka ``ConsumerRecord``."""
        return self.record

    @property
    def messaging_attributes(self) -> Mapping[str, AttributeValue]:
        """Kafka telemetry attributes: key, offset, partition, consumer group."""
        return delivery_attributes(self.record, self._consumer.group_id)

    async def ack(self) -> None:
        """Mark the record done; its offset is committed once every earlier record of its
        partition is settled too. Idempotent; never blocks on the broker."""
        if self._settled:
            return
        self._settled = True
        self._consumer._settled(self)

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Re-publish the record to the group's retry topic, due in ``delay`` seconds, with
        ``attempt + 1`` and ``headers`` added; then settle it. The main partition is never
        held up. Raises :class:`ConsumeError` when the retry record was not confirmed (the
        original then stays uncommitted and is redelivered after a restart/rebalance)."""
        if self._settled:
            return
        await self._consumer._republish(self, delay, headers)
        self._settled = True
        self._consumer._settled(self)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        try:
            await self._consumer._on_revoked(set(revoked))
        except Exception:
            logger.exception("handling revoked partitions failed")

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            await self._consumer._on_assigned(set(assigned))
        except Exception:
            logger.exception("handling assigned partitions failed")


class KafkaConsumer:
    """A running subscription: one aiokafka consumer in the subscription's consumer group.

    Returned by :meth:`KafkaTransport.subscribe`; use from its event loop. :meth:`stop` is
    idempotent.
    """

    def __init__(
        self,
        transport: KafkaTransport,
        source: Destination,
        names: SubscriptionNames,
        handler: DeliveryHandler,
        concurrency: int,
    ) -> None:
        self._transport = transport
        self.source = source
        self.names = names
        self.group_id = names.group_id
        self._handler = handler
        self._concurrency = concurrency
        o = transport.options
        self._max_records = o.fetch_max_records
        self._pool: WorkerPool | None = None
        if concurrency > 1:
            # One fetch hand-over may wait whole in the pool: the records are in memory anyway.
            self._pool = WorkerPool(
                self._run, concurrency, name=names.group_id, capacity=concurrency + o.fetch_max_records
            )
        self._consumer: AIOKafkaConsumer | None = None
        self._parts: dict[TopicPartition, _Partition] = {}
        self._start_offsets: dict[TopicPartition, int] = {}
        self._ready: deque[KafkaDelivery] = deque()
        self._held = 0
        self._dirty = asyncio.Event()
        self._stopping = False
        self._polling = False
        self._fetch_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._revoke_wait = o.rebalance_timeout_ms / 2000

    @property
    def assignment(self) -> set[TopicPartition]:
        """Partitions currently assigned to this consumer."""
        return set(self._parts)

    async def start(self) -> None:
        """Start the aiokafka consumer and the fetch/commit tasks (the group join goes on in
        the background). Raises :class:`ConnectError`."""
        t = self._transport
        o = t.options
        consumer = AIOKafkaConsumer(
            **t.client_kwargs(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=o.session_timeout_ms,
            heartbeat_interval_ms=o.heartbeat_interval_ms,
            rebalance_timeout_ms=o.rebalance_timeout_ms,
            max_poll_interval_ms=o.max_poll_interval_ms,
            max_poll_records=o.fetch_max_records,
            fetch_max_wait_ms=o.fetch_max_wait_ms,
            max_partition_fetch_bytes=o.max_partition_fetch_bytes,
        )
        try:
            await consumer.start()
            if self.source.kind is DestinationKind.TOPIC and self.source.group:
                # A new group starts where the topic ends now, not at its history (see subscribe).
                parts = await t.partitions_for(self.names.topic)
                tps = [TopicPartition(self.names.topic, p) for p in sorted(parts)]
                self._start_offsets = dict(await consumer.end_offsets(tps))
        except Exception as exc:
            await _quietly(consumer.stop())
            raise connect_error(exc, ",".join(t.bootstrap_servers), sasl=None, timeout=o.connect_timeout) from exc
        consumer.subscribe([self.names.topic, self.names.retry_topic], listener=_Listener(self))
        self._consumer = consumer
        if self._pool is not None:
            self._pool.start()
        loop = asyncio.get_running_loop()
        self._fetch_task = loop.create_task(self._fetch_loop(), name=f"messagebus-kafka-fetch-{self.group_id}")
        self._commit_task = loop.create_task(self._commit_loop(), name=f"messagebus-kafka-commit-{self.group_id}")

    # -- rebalance -----------------------------------------------------------------------

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        for tp in assigned:
            self._parts[tp] = _Partition(tp)
        if not self._start_offsets:
            return
        initial: dict[TopicPartition, int] = {}
        for tp in assigned:
            start = self._start_offsets.get(tp)
            if start is None:
                continue
            if await consumer.committed(tp) is None:
                consumer.seek(tp, start)
                initial[tp] = start
        if initial:
            # Commit the starting point at once so another member taking the partition over
            # later starts here too, not at its own (later) subscribe time.
            try:
                await consumer.commit(initial)
            except kerr.KafkaError as exc:
                logger.warning("cannot commit start offsets of %s: %s", self.group_id, exc)
            for tp, offset in initial.items():
                self._parts[tp].committed = offset

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        states = [self._parts.pop(tp) for tp in revoked if tp in self._parts]
        if not states:
            return
        for st in states:
            self._drop_held(st)
            st.revoked = True
        if not self._stopping:
            # Let handlers of these partitions finish (bounded) so their offsets are
            # committed before another member takes over; queued ones are skipped.
            loop = asyncio.get_running_loop()
            busy: list[asyncio.Future[None]] = []
            for st in states:
                if st.active:
                    st.drained = loop.create_future()
                    busy.append(st.drained)
            if busy:
                await asyncio.wait(busy, timeout=self._revoke_wait)
        await self._commit(states)

    def _drop_held(self, st: _Partition) -> None:
        for handle in st.timers.values():
            handle.cancel()
        st.timers.clear()
        self._held -= st.held
        st.held = 0

    # -- fetching and dispatch -----------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        retry_topic = self.names.retry_topic
        parts = self._parts
        inline = self._pool is None  # concurrency 1: run handlers right here, no task switch
        run = self._run
        while not self._stopping:
            if self._ready:
                ready, self._ready = self._ready, deque()
                for delivery in ready:
                    if self._stopping:
                        return
                    if not delivery._state.revoked:
                        await self._dispatch(delivery)
                continue
            self._polling = True
            try:
                batch = await consumer.getmany(timeout_ms=50 if self._held else 500, max_records=self._max_records)
            except Exception as exc:
                # aiokafka retries connection problems itself; whatever reaches us is logged and
                # retried after a pause, so the consumer never dies silently nor spins.
                logger.warning("fetch failed for group %s: %r", self.group_id, exc)
                await asyncio.sleep(_FETCH_BACKOFF)
                continue
            finally:
                self._polling = False
            if not batch:
                continue
            # Look the partition states up before any await: a rebalance may run in between.
            work = [(parts.get(tp), tp.topic == retry_topic, records) for tp, records in batch.items()]
            now_ms = time.time() * 1000
            for st, is_retry, records in work:
                if st is None:
                    continue
                if inline and not is_retry:
                    await self._handle_in_order(st, records)
                    continue
                for record in records:
                    if self._stopping or st.revoked:
                        break
                    st.pending.append(record.offset)
                    if is_retry:
                        delivery, due = self._retry_delivery(st, record)
                        if due > now_ms:
                            self._hold(st, delivery, due)
                            continue
                    else:
                        delivery = KafkaDelivery(self, st, record, 1)
                    if inline:
                        st.active += 1
                        try:
                            await run(delivery)
                        except Exception:
                            # The bus's handler settles every outcome itself; this is a bug
                            # guard. The record stays unsettled, so it is redelivered later.
                            logger.exception("delivery handler failed unexpectedly")
                    elif not self._submit_nowait(delivery):
                        await self._dispatch(delivery)

    async def _handle_in_order(self, st: _Partition, records: list[ConsumerRecord[Any, Any]]) -> None:
        """Concurrency 1: handle ``records`` of one main partition one after another, right
        in the fetch task (no task switch, no queue: the hot path of a single consumer)."""
        handler = self._handler
        pending = st.pending
        # Counted active for the whole run: a revoke waits for the handler in progress, and
        # the loop stops at the next record once it sees the partition revoked.
        st.active += 1
        try:
            for record in records:
                if self._stopping or st.revoked:
                    return
                pending.append(record.offset)
                try:
                    await handler(KafkaDelivery(self, st, record, 1))
                except Exception:
                    # The bus's handler settles every outcome itself; this is a bug guard. The
                    # record stays unsettled, so it is redelivered later.
                    logger.exception("delivery handler failed unexpectedly")
        finally:
            self._finished(st)

    def _retry_delivery(self, st: _Partition, record: ConsumerRecord[Any, Any]) -> tuple[KafkaDelivery, float]:
        attempt, due = 2, 0.0
        for k, v in record.headers:
            if k == _ATTEMPT:
                with contextlib.suppress(ValueError):
                    attempt = max(int(v), 1)
            elif k == DUE:
                with contextlib.suppress(ValueError):
                    due = float(v)
        return KafkaDelivery(self, st, record, attempt), due

    def _hold(self, st: _Partition, delivery: KafkaDelivery, due_ms: float) -> None:
        consumer = self._consumer
        assert consumer is not None
        if not st.held:
            # Stop fetching this retry partition until its held records are due: no seek,
            # no busy loop, bounded memory. Main partitions keep flowing.
            consumer.pause(st.tp)
        st.held += 1
        self._held += 1
        delay = max(due_ms / 1000 - time.time(), 0.0)
        st.timers[delivery] = asyncio.get_running_loop().call_later(delay, self._release, st, delivery)

    def _release(self, st: _Partition, delivery: KafkaDelivery) -> None:
        st.timers.pop(delivery, None)
        st.held -= 1
        self._held -= 1
        if st.revoked or self._stopping:
            return
        self._ready.append(delivery)
        if not st.held and self._consumer is not None:
            with contextlib.suppress(kerr.IllegalStateError):
                self._consumer.resume(st.tp)

    def _submit_nowait(self, delivery: KafkaDelivery) -> bool:
        """Hand ``delivery`` to the pool if it has room (no coroutine per message on the
        fetch task's hot path); False when the caller must ``await _dispatch`` instead."""
        pool = self._pool
        if pool is None or not pool.free:
            return False
        delivery._state.active += 1
        pool.submit_nowait(delivery)
        return True

    async def _dispatch(self, delivery: KafkaDelivery) -> None:
        st = delivery._state
        st.active += 1
        pool = self._pool
        if pool is None:
            try:
                await self._run(delivery)
            except Exception:
                logger.exception("delivery handler failed unexpectedly")
            return
        if not pool.free:
            await pool.wait_for_space()
        if self._stopping or st.revoked:
            self._finished(st)
            return
        pool.submit_nowait(delivery)

    async def _run(self, delivery: Any) -> None:
        st = delivery._state
        delivery._started = True
        try:
            if not st.revoked:
                await self._handler(delivery)
        finally:
            self._finished(st)

    @staticmethod
    def _finished(st: _Partition) -> None:
        st.active -= 1
        if not st.active and st.drained is not None and not st.drained.done():
            st.drained.set_result(None)

    # -- settling and committing ---------------------------------------------------------

    def _settled(self, delivery: KafkaDelivery) -> None:
        st = delivery._state
        if st.settle(delivery.record.offset) and not st.revoked:
            self._dirty.set()

    async def _republish(self, delivery: KafkaDelivery, delay: float, extra: Mapping[str, str]) -> None:
        record = delivery.record
        extra_wire = encode_headers({k: v for k, v in extra.items() if k not in _INTERNAL})
        replaced = {k for k, _ in extra_wire} | _INTERNAL
        wire = [(k, v) for k, v in record.headers if k not in replaced]
        wire.extend(extra_wire)
        wire.append((_ATTEMPT, str(delivery.attempt + 1).encode()))
        wire.append((DUE, str(int((time.time() + max(delay, 0.0)) * 1000)).encode()))
        try:
            await self._transport.send_record(self.names.retry_topic, record.value, record.key, wire)
        except PublishError as exc:
            raise ConsumeError(
                f"cannot schedule the retry of {record.topic}[{record.partition}]@{record.offset} "
                f"on {self.names.retry_topic!r}: {exc}"
            ) from exc

    async def _commit_loop(self) -> None:
        # One commit in flight at a time: acks that arrive meanwhile are batched into the
        # next one, so the commit rate adapts to the load.
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._commit(list(self._parts.values()))

    async def _commit(self, states: Sequence[_Partition]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for st in states:
            position = st.position
            if position is not None and position != st.committed:
                offsets[st.tp] = position
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except (kerr.CommitFailedError, kerr.IllegalStateError) as exc:
            # The group rebalanced: the partitions' new owner resumes from the last commit.
            logger.info("commit skipped for group %s after a rebalance: %s", self.group_id, exc)
            return
        except kerr.KafkaError as exc:
            logger.warning("commit failed for group %s: %s", self.group_id, exc)
            self._dirty.set()
            return
        for st in states:
            if st.tp in offsets:
                st.committed = max(offsets[st.tp], st.committed or 0)

    # -- stopping ------------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Stop fetching, give in-flight handlers up to ``grace`` seconds, cancel the rest,
        commit what was settled and leave the group. Unsettled records stay uncommitted and
        are redelivered to the group. Idempotent; concurrent calls wait for the first."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            await self._stop(grace)
        finally:
            self._stopped.set_result(None)
            self._transport._forget(self)

    async def _stop(self, grace: float) -> None:
        self._stopping = True
        fetch = self._fetch_task
        if fetch is not None and self._polling:
            fetch.cancel()
        if self._pool is not None:
            unhandled = await self._pool.stop(grace)
            for delivery in unhandled:
                if isinstance(delivery, KafkaDelivery) and not delivery._started:
                    self._finished(delivery._state)
            if fetch is not None:
                await asyncio.gather(fetch, return_exceptions=True)
        elif fetch is not None:
            _, pending = await asyncio.wait({fetch}, timeout=max(grace, 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(fetch, return_exceptions=True)
        for st in self._parts.values():
            self._drop_held(st)
        if self._commit_task is not None:
            self._commit_task.cancel()
            await asyncio.gather(self._commit_task, return_exceptions=True)
        consumer = self._consumer
        if consumer is None:
            return
        timeout = self._transport.options.request_timeout_ms / 1000
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._commit(list(self._parts.values())), timeout)
        await _quietly(asyncio.wait_for(consumer.stop(), timeout))
        self._parts.clear()


async def _quietly(awaitable: Any) -> None:
    """Await a cleanup step, logging instead of raising (used on close/stop paths)."""
    try:
        await awaitable
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.debug("cleanup step failed: %r", exc)
