"""PubSubTransport: the messagebus transport contract on google-cloud-pubsub.

Threads and the event loop: google-cloud-pubsub publishes from its own batching threads and
calls subscriber callbacks on a thread pool. Nothing here blocks the event loop: publish
futures are awaited through one thread-safe completion per ``publish()`` call, subscriber
callbacks only hand the message to the loop (``call_soon_threadsafe``), and the few blocking
client calls (opening/closing a stream, closing channels) run in worker threads. Topics and
subscriptions are managed with the asyncio (``grpc.aio``) admin clients.

Retries (``Delivery.retry``): the message is re-published, with ``messagebus-attempt`` and a
``messagebus-not-before`` time, to the consumer's own retry topic ``<subscription>~retry``
(read by the same consumer through the subscription of the same name), and the original is
acked only once that publish is confirmed. The redelivery therefore reaches only this
group/queue, carries its attempt count across processes and restarts (the emulator has no
delivery-attempt field, and real Pub/Sub only counts with a dead-letter policy), and waits
without holding back other messages: a retry that arrives early is released back to Pub/Sub
with its ack deadline set to the remaining delay (``modify_ack_deadline``), and the last
second or two is timed on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.api_core import exceptions as gexc
from google.api_core.retry_async import AsyncRetry
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport, PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport, SubscriberGrpcTransport

from messagebus import (
    ConfigurationError,
    ConnectError,
    ConsumeError,
    InvalidDestination,
    LifecycleError,
    MessageBusError,
    PublishError,
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
    validate_name,
)
from messagebus.transports import headers as h

from ._codec import INTERNAL_HEADERS, MAX_BODY, NOT_BEFORE, check_size, decode_attributes, encode_attributes
from ._errors import map_error
from ._options import PubSubSettings, parse_url
from ._telemetry import MESSAGING_SYSTEM, delivery_attributes
from ._topology import Names, Topology, names_for

__all__ = ["PubSubConsumer", "PubSubDelivery", "PubSubTransport"]

logger = logging.getLogger("messagebus.pubsub")

_API_HOST = "pubsub.googleapis.com:443"
_SCOPES = ("https://www.googleapis.com/auth/pubsub", "https://www.googleapis.com/auth/cloud-platform")
_CHANNEL_OPTIONS = [
    # Pub/Sub messages reach 10 MB; gRPC's default receive limit is 4 MB.
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_metadata_size", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # Reconnect within seconds after a dropped connection, not gRPC's default of up to 2 min.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
# A retry due within this many seconds waits on the event loop (ack deadlines are whole
# seconds); a later one goes back to Pub/Sub with its ack deadline set to the delay.
_LOCAL_HOLD = 2.0
_MAX_ACK_DEADLINE = 600


class PubSubTransport:
    """Google Cloud Pub/Sub transport (``pubsub://PROJECT?option=...``).

    One instance per bus, used from one event loop. ``connect`` and ``close`` are idempotent.
    Every native error is mapped to the messagebus error tree with the original chained.
    """

    messaging_system: str = MESSAGING_SYSTEM

    def __init__(self, settings: PubSubSettings) -> None:
        """Use :meth:`from_url`; ``settings`` are the already-validated URL settings."""
        self._settings = settings
        self._opts = settings.options
        self.capabilities = Capabilities(
            ordering=self._opts.ordering,
            native_delay=True,
            persistence=True,
            consumer_groups=True,
            max_message_size=MAX_BODY,
            network=True,
        )
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._subscriber: pubsub_v1.SubscriberClient | None = None
        self._admin_publisher: PublisherAsyncClient | None = None
        self._admin_subscriber: SubscriberAsyncClient | None = None
        self._topology: Topology | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._names: dict[Destination, Names] = {}
        self._consumers: set[PubSubConsumer] = set()
        self._connect_lock: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: TransportURL) -> PubSubTransport:
        """Build a transport from a ``pubsub://`` URL, validating it without I/O.

        Raises :class:`InvalidURL` (bad project id, port, user info, path) or
        :class:`InvalidOption` (unknown or ill-typed option; the message lists valid ones).
        """
        return cls(parse_url(url))

    def __repr__(self) -> str:
        return f"PubSubTransport({self._settings.url.render()!r})"

    @property
    def project(self) -> str:
        """The Google Cloud project id (the URL's host)."""
        return self._settings.project

    @property
    def emulator_host(self) -> str | None:
        """The emulator address in use, or ``None`` for the real service."""
        return self._settings.emulator_host

    @property
    def where(self) -> str:
        """A human-readable description of the endpoint, for error messages."""
        if self._settings.emulator_host:
            return f"emulator {self._settings.emulator_host} (project {self.project})"
        return f"{_API_HOST} (project {self.project})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the clients and check the API answers within ``connect_timeout``.

        Idempotent. Raises :class:`ConnectError` (unreachable, bad credentials, missing
        credentials outside the emulator) or :class:`ConfigurationError` (unusable
        ``credentials_file``), with the native error chained.
        """
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._publisher is not None:
                return
            self._loop = asyncio.get_running_loop()
            timeout = self._opts.connect_timeout
            try:
                await self._open_clients(timeout)
                assert self._admin_publisher is not None
                # One cheap, bounded call proves the endpoint, project and credentials work.
                await asyncio.wait_for(
                    self._admin_publisher.list_topics(
                        request={"project": f"projects/{self.project}", "page_size": 1},
                        retry=_bounded_retry(timeout),
                        timeout=timeout,
                    ),
                    timeout + 1.0,
                )
            except BaseException as exc:
                await self._close_clients()
                if isinstance(exc, MessageBusError | asyncio.CancelledError):
                    raise
                raise map_error(exc, "cannot connect to Pub/Sub", where=self.where, default=ConnectError) from exc

    async def _open_clients(self, timeout: float) -> None:
        emulator = self._settings.emulator_host
        if emulator:
            pub_channel = grpc.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
            sub_channel = grpc.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
            apub_channel = grpc.aio.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
            asub_channel = grpc.aio.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
        else:
            # Finding Application Default Credentials may probe the GCE metadata server: keep
            # it off the event loop and bounded.
            credentials = await asyncio.wait_for(asyncio.to_thread(self._load_credentials), timeout)
            kw: dict[str, Any] = {"credentials": credentials, "options": _CHANNEL_OPTIONS}
            pub_channel = PublisherGrpcTransport.create_channel(_API_HOST, **kw)
            sub_channel = SubscriberGrpcTransport.create_channel(_API_HOST, **kw)
            apub_channel = PublisherGrpcAsyncIOTransport.create_channel(_API_HOST, **kw)
            asub_channel = SubscriberGrpcAsyncIOTransport.create_channel(_API_HOST, **kw)
        self._admin_publisher = PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=apub_channel))
        self._admin_subscriber = SubscriberAsyncClient(transport=SubscriberGrpcAsyncIOTransport(channel=asub_channel))
        self._publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(
                max_messages=self._opts.batch_max_messages, max_latency=self._opts.batch_max_latency
            ),
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=self._opts.ordering),
            transport=PublisherGrpcTransport(channel=pub_channel),
        )
        self._subscriber = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=sub_channel))
        self._topology = Topology(
            self._admin_publisher,
            self._admin_subscriber,
            ack_deadline=self._opts.ack_deadline,
            ordering=self._opts.ordering,
            timeout=self._opts.connect_timeout,
            where=self.where,
        )

    def _load_credentials(self) -> Any:
        import google.auth

        path = self._opts.credentials_file
        if path is not None:
            try:
                credentials, _ = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
                    path, scopes=_SCOPES
                )
            except Exception as exc:
                raise ConfigurationError(
                    f"credentials_file {path!r} cannot be used: {exc}; give a service-account or "
                    "authorized-user JSON key file"
                ) from exc
            return credentials
        credentials, _ = google.auth.default(scopes=_SCOPES)
        return credentials

    async def close(self) -> None:
        """Stop every consumer still running (no grace), flush the publisher and close all
        channels. Idempotent; never raises for an already-broken connection."""
        for consumer in list(self._consumers):
            await consumer.stop(0.0)
        await self._close_clients()

    async def _close_clients(self) -> None:
        publisher, subscriber = self._publisher, self._subscriber
        admin_pub, admin_sub = self._admin_publisher, self._admin_subscriber
        self._publisher = self._subscriber = None
        self._admin_publisher = self._admin_subscriber = None
        self._topology = None

        def close_sync() -> None:
            if publisher is not None:
                with contextlib.suppress(Exception):
                    publisher.stop()
                with contextlib.suppress(Exception):
                    publisher.transport.close()
            if subscriber is not None:
                with contextlib.suppress(Exception):
                    subscriber.close()

        if publisher is not None or subscriber is not None:
            await asyncio.to_thread(close_sync)
        for admin in (admin_pub, admin_sub):
            if admin is not None:
                with contextlib.suppress(Exception):
                    await admin.transport.close()  # type: ignore[no-untyped-call]

    def _require_open(self) -> tuple[pubsub_v1.PublisherClient, Topology]:
        if self._publisher is None or self._topology is None:
            raise LifecycleError("the Pub/Sub transport is not connected; call connect() first")
        return self._publisher, self._topology

    def _names_for(self, destination: Destination) -> Names:
        names = self._names.get(destination)
        if names is None:
            validate_name(destination.name, destination.kind.value)
            if destination.group is not None:
                validate_name(destination.group, "group")
            names = names_for(self.project, destination)
            self._names[destination] = names
        return names

    # -- publishing --------------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` through the client's batching and return once Pub/Sub
        confirmed every one (a message id per message).

        Topics are created on first use; a queue's topic and subscription are created on first
        send so the message waits for its consumer. Checks every message first and raises
        :class:`MessageTooLarge` before sending anything. Raises :class:`PublishError` when a
        message was not confirmed within ``publish_timeout`` or was refused. After a failed
        publish with an ordering key the key is resumed, so later publishes with that key
        are never left blocked.
        """
        if not messages:
            return
        _, topology = self._require_open()
        ordering = self._opts.ordering
        items: list[tuple[str, bytes, dict[str, str], str]] = []
        queues: dict[str, Names] = {}
        topics: set[str] = set()
        for message in messages:
            names = self._names_for(message.destination)
            attributes, ordering_key = encode_attributes(message.headers, message.key, ordering)
            check_size(names.topic, message.body, attributes, ordering_key)
            items.append((names.topic, message.body, attributes, ordering_key))
            if message.destination.kind is DestinationKind.QUEUE:
                queues[names.topic] = names
            else:
                topics.add(names.topic)
        await asyncio.gather(
            *(topology.ensure_queue(n) for n in queues.values()),
            *(topology.ensure_topic(t) for t in topics - queues.keys()),
        )
        await self._send(items)

    async def _send(self, items: Sequence[tuple[str, bytes, dict[str, str], str]]) -> None:
        publisher, topology = self._require_open()
        assert self._loop is not None
        futures: list[ConcurrentFuture[str]] = []
        try:
            for topic, data, attributes, ordering_key in items:
                futures.append(publisher.publish(topic, data, ordering_key=ordering_key, **attributes))
        except Exception as exc:
            # Messages already handed over still go out; report the batch as not confirmed.
            raise map_error(exc, "cannot publish to Pub/Sub", where=self.where, default=PublishError) from exc
        done = _all_done(self._loop, futures)
        try:
            await asyncio.wait_for(asyncio.shield(done), self._opts.publish_timeout)
        except TimeoutError:
            raise PublishError(
                f"Pub/Sub at {self.where} did not confirm {sum(not f.done() for f in futures)} of "
                f"{len(futures)} messages within publish_timeout={self._opts.publish_timeout}s"
            ) from None
        failures: list[tuple[int, BaseException]] = []
        for i, future in enumerate(futures):
            error = future.exception()
            if error is not None:
                failures.append((i, error))
        if not failures:
            return
        resumed: set[tuple[str, str]] = set()
        for i, error in failures:
            topic, _, _, ordering_key = items[i]
            if isinstance(error, gexc.NotFound):
                topology.forget(topic)
            if ordering_key and (topic, ordering_key) not in resumed:
                resumed.add((topic, ordering_key))
                # The client pauses an ordering key after a failed publish; resume it so the
                # caller can publish (or retry) with this key again.
                with contextlib.suppress(Exception):
                    publisher.resume_publish(topic, ordering_key)
        first = failures[0][1]
        raise map_error(
            first,
            f"{len(failures)} of {len(futures)} messages to {items[failures[0][0]][0]} were not confirmed",
            where=self.where,
            default=PublishError,
        ) from first

    # -- consuming ---------------------------------------------------------------------------

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> PubSubConsumer:
        """Declare the subscription (``topic.group`` or the queue's) and its retry topic and
        subscription, then stream messages to ``handler`` with at most ``concurrency`` calls in
        flight and per-key order. Raises :class:`TopologyError`, :class:`ConnectError`, or
        :class:`InvalidDestination` (a topic without a group)."""
        _, topology = self._require_open()
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if source.kind is DestinationKind.TOPIC and not source.group:
            raise InvalidDestination(f"subscribing to topic {source.name!r} needs a group name")
        names = self._names_for(source)
        await topology.ensure_consumer(names)
        consumer = PubSubConsumer(self, source, names, handler, concurrency)
        await consumer.start()
        self._consumers.add(consumer)
        return consumer


def _bounded_retry(timeout: float) -> AsyncRetry:
    return AsyncRetry(
        initial=0.1,
        maximum=1.0,
        multiplier=2.0,
        timeout=timeout,
        predicate=lambda exc: isinstance(exc, gexc.ServiceUnavailable | gexc.DeadlineExceeded),
    )


def _all_done(loop: asyncio.AbstractEventLoop, futures: Sequence[ConcurrentFuture[Any]]) -> asyncio.Future[None]:
    """One asyncio future that completes when every concurrent future is done, with a single
    thread-safe wake-up of the loop (not one per message)."""
    waiter: asyncio.Future[None] = loop.create_future()
    remaining = len(futures)
    lock = threading.Lock()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def one_done(_: object) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            last = remaining == 0
        if last:
            loop.call_soon_threadsafe(wake)

    if not futures:
        waiter.set_result(None)
    for future in futures:
        future.add_done_callback(one_done)
    return waiter


class PubSubDelivery:
    """One received Pub/Sub message handed to the bus (the contract's ``Delivery``).

    Belongs to one handler call; settle it once, on the consumer's event loop.
    ``raw`` is the client's :class:`google.cloud.pubsub_v1.subscriber.message.Message`.
    """

    __slots__ = (
        "_consumer",
        "_message",
        "_retried",
        "_settled",
        "attempt",
        "body",
        "headers",
        "key",
        "messaging_attributes",
    )

    def __init__(
        self,
        consumer: PubSubConsumer,
        message: Message,
        headers: dict[str, str],
        key: str | None,
        attempt: int,
        attributes: Mapping[str, AttributeValue],
        retried: bool = False,
    ) -> None:
        self._consumer = consumer
        self._message = message
        self._retried = retried
        self._settled = False
        self.body: bytes = message.data
        self.headers: Mapping[str, str] = headers
        self.key: str | None = key
        self.attempt: int = attempt
        self.messaging_attributes: Mapping[str, AttributeValue] = attributes

    @property
    def raw(self) -> Message:
        """The native received message."""
        return self._message

    @property
    def settled(self) -> bool:
        """True once :meth:`ack` or :meth:`retry` was called (or the delivery was released)."""
        return self._settled

    async def ack(self) -> None:
        """Acknowledge: Pub/Sub forgets the message for this subscription. Idempotent.

        Acks are best effort in Pub/Sub (at-least-once delivery): a lost ack means one more
        delivery. Raises :class:`ConsumeError` when the consumer's stream is already closed
        (the message will then be redelivered)."""
        if self._settled:
            return
        if self._consumer.closed:
            raise ConsumeError(
                f"cannot ack message {self._message.message_id}: the consumer of {self._consumer.source} is "
                "stopped; Pub/Sub will redeliver it"
            )
        self._settled = True
        self._message.ack()

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Redeliver to this subscription only, after ``delay`` seconds, with ``attempt + 1``.

        Re-publishes the message (with ``headers`` added) to this consumer's retry topic and
        acks the original once the broker confirmed it; on failure the original is released for
        immediate redelivery and :class:`ConsumeError` is raised. Idempotent."""
        if self._settled:
            return
        self._settled = True
        try:
            await self._consumer.republish(self, max(0.0, float(delay)), headers)
        except BaseException as exc:
            self.release()
            if isinstance(exc, Exception):
                raise ConsumeError(
                    f"cannot schedule the retry of message {self._message.message_id} from "
                    f"{self._consumer.source}: {exc}"
                ) from exc
            raise
        self._message.ack()

    def release(self) -> None:
        """Hand the message back to Pub/Sub for immediate redelivery (nack). Thread-safe."""
        self._settled = True
        with contextlib.suppress(Exception):
            self._message.nack()

    def take(self) -> tuple[Message, bool]:
        """Mark settled without telling Pub/Sub; return the native message and whether it came
        from the retry subscription. The consumer hands it back itself when it stops."""
        self._settled = True
        return self._message, self._retried


class PubSubConsumer:
    """A running consumer: two streaming pulls (the subscription and its retry subscription)
    feeding a :class:`WorkerPool` on the bus's event loop.

    Flow control: each stream leases at most ``max_messages`` (default ``concurrency`` plus a
    prefetch) at once; the client extends leases while handlers run (up to an hour).
    """

    def __init__(
        self,
        transport: PubSubTransport,
        source: Destination,
        names: Names,
        handler: DeliveryHandler,
        concurrency: int,
    ) -> None:
        """Created by :meth:`PubSubTransport.subscribe`; call :meth:`start` next."""
        assert transport._loop is not None
        self._transport = transport
        self._loop = transport._loop
        self.source = source
        self._names = names
        self._concurrency = concurrency
        self._ordering = transport._opts.ordering
        self._pool = WorkerPool(handler, concurrency, ordered=self._ordering, name=str(source))
        self._queue: asyncio.Queue[PubSubDelivery] = asyncio.Queue()
        self._in_hand: PubSubDelivery | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._timers: dict[asyncio.TimerHandle, PubSubDelivery] = {}
        self._streams: dict[bool, Any] = {}
        self._restarts: set[asyncio.Task[None]] = set()
        self._closing = False
        self._late: list[PubSubDelivery] = []
        self.closed = False
        self._stopped: asyncio.Future[None] | None = None
        opts = transport._opts
        prefetch = max(concurrency, 10)
        self._flow = pubsub_v1.types.FlowControl(
            max_messages=opts.max_messages or concurrency + prefetch,
            max_lease_duration=3600,
            # The stream's ack deadline follows the configured one, so a message leased by a
            # process that died (or a dropped stream) is redelivered after ``ack_deadline``.
            min_duration_per_lease_extension=opts.ack_deadline,
            max_duration_per_lease_extension=opts.ack_deadline,
        )

    def __repr__(self) -> str:
        return f"PubSubConsumer({self.source}, subscription={self._names.subscription!r})"

    @property
    def subscription(self) -> str:
        """The full path of the main subscription."""
        assert self._names.subscription is not None
        return self._names.subscription

    async def start(self) -> None:
        """Start the workers and open both streaming pulls. Raises :class:`ConnectError`."""
        self._pool.start()
        self._feeder = self._loop.create_task(self._feed(), name=f"messagebus-pubsub-feed-{self.source}")
        try:
            await self._open(False)
            await self._open(True)
        except BaseException:
            await self.stop(0.0)
            raise

    async def _open(self, retried: bool) -> None:
        subscriber = self._transport._subscriber
        if subscriber is None:
            raise ConnectError("the Pub/Sub transport was closed")
        path = self._names.retry_subscription if retried else self._names.subscription
        assert path is not None

        def callback(message: Message) -> None:
            self._bridge(message, retried)

        def open_stream() -> Any:
            # Our callback only hands the message to the loop, so two threads are plenty.
            scheduler = ThreadScheduler(ThreadPoolExecutor(max_workers=2, thread_name_prefix="messagebus-pubsub"))
            return subscriber.subscribe(
                path,
                callback,
                flow_control=self._flow,
                scheduler=scheduler,
                await_callbacks_on_shutdown=True,
            )

        try:
            future = await asyncio.to_thread(open_stream)
        except Exception as exc:
            raise map_error(
                exc, f"cannot open the stream of {path}", where=self._transport.where, default=ConsumeError
            ) from exc
        self._streams[retried] = future

        def ended(f: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stream_ended, retried, f)

        future.add_done_callback(ended)

    def _stream_ended(self, retried: bool, future: Any) -> None:
        if self._closing or id(self._streams.get(retried)) != id(future):
            return
        error = None if future.cancelled() else future.exception()
        logger.warning(
            "messagebus: Pub/Sub stream of %s ended (%s); reopening",
            self._names.retry_subscription if retried else self._names.subscription,
            error,
        )
        task = self._loop.create_task(self._reopen(retried))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _reopen(self, retried: bool) -> None:
        delay = 0.5
        while not self._closing:
            await asyncio.sleep(delay)
            topology = self._transport._topology
            if topology is None or self._closing:
                return
            try:
                # The subscription may have been deleted: declare it again.
                for path in (self._names.subscription, self._names.retry_subscription):
                    if path is not None:
                        topology.forget(path)
                await topology.ensure_consumer(self._names)
                await self._open(retried)
                return
            except MessageBusError as exc:
                logger.warning("messagebus: reopening the Pub/Sub stream of %s failed: %s", self.source, exc)
                delay = min(delay * 2, 10.0)

    # Runs on the client's callback threads: do nothing but hand over to the loop (which
    # hands the message back itself if this consumer is stopping).
    def _bridge(self, message: Message, retried: bool) -> None:
        try:
            self._loop.call_soon_threadsafe(self._arrive, message, retried)
        except RuntimeError:  # the loop is closed: give the message back right away
            message.nack()

    def _arrive(self, message: Message, retried: bool) -> None:
        wire = decode_attributes(message.attributes)
        attempt = 1
        remaining = 0.0
        if retried:
            try:
                attempt = max(1, int(wire.get(h.ATTEMPT, "2")))
            except ValueError:
                attempt = 2
            with contextlib.suppress(ValueError):
                remaining = float(wire.get(NOT_BEFORE, "0")) / 1000.0 - time.time()
            if remaining > _LOCAL_HOLD:
                # Give it back to Pub/Sub until shortly before it is due; it does not occupy a
                # flow-control slot or a worker meanwhile.
                message.drop()
                message.modify_ack_deadline(min(_MAX_ACK_DEADLINE, max(1, int(remaining - 1.0))))
                return
        key = message.ordering_key or wire.get(h.KEY) or None
        headers = {k: v for k, v in wire.items() if k not in INTERNAL_HEADERS}
        subscription = self._names.retry_subscription if retried else self._names.subscription
        assert subscription is not None
        attributes = delivery_attributes(
            subscription=subscription.rsplit("/", 1)[-1],
            message_id=message.message_id,
            ack_id=message.ack_id,
            ordering_key=message.ordering_key,
            body_size=len(message.data),
            attempt=attempt,
        )
        delivery = PubSubDelivery(self, message, headers, key, attempt, attributes, retried)
        if self._closing:
            self._late.append(delivery)
        elif remaining > 0:
            handle = self._loop.call_later(remaining, self._due, delivery)
            self._timers[handle] = delivery
        else:
            self._queue.put_nowait(delivery)

    def _due(self, delivery: PubSubDelivery) -> None:
        for handle, item in list(self._timers.items()):
            if item is delivery:
                del self._timers[handle]
                break
        if self._closing:
            self._late.append(delivery)
        else:
            self._queue.put_nowait(delivery)

    async def _feed(self) -> None:
        while True:
            delivery = await self._queue.get()
            self._in_hand = delivery
            await self._pool.wait_for_space()
            self._in_hand = None
            if self._closing:
                self._late.append(delivery)
                continue
            self._pool.submit_nowait(delivery)

    async def republish(self, delivery: PubSubDelivery, delay: float, headers: Mapping[str, str]) -> None:
        """Publish ``delivery`` to this consumer's retry topic, due in ``delay`` seconds, with
        ``attempt + 1``. Raises :class:`MessageTooLarge` / :class:`PublishError`."""
        assert self._names.retry_topic is not None
        attributes = self._retry_attributes(delivery, delivery.attempt + 1, delay, headers)
        check_size(self._names.retry_topic, delivery.body, attributes, "")
        await self._transport._send([(self._names.retry_topic, delivery.body, attributes, "")])

    def _retry_attributes(
        self, delivery: PubSubDelivery, attempt: int, delay: float, headers: Mapping[str, str]
    ) -> dict[str, str]:
        wire = {k: v for k, v in delivery.headers.items() if k not in INTERNAL_HEADERS}
        wire.update(headers)
        wire[h.ATTEMPT] = str(attempt)
        if delay > 0:
            wire[NOT_BEFORE] = str(int((time.time() + delay) * 1000))
        attributes, _ = encode_attributes(wire, delivery.key, False)
        return attributes

    async def stop(self, grace: float) -> None:
        """Stop fetching, give in-flight handlers up to ``grace`` seconds, cancel the rest and
        hand every unsettled message back to Pub/Sub (nack) for redelivery. Idempotent."""
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = self._loop.create_future()
        try:
            await self._stop(grace)
        finally:
            self._stopped.set_result(None)
            self._transport._consumers.discard(self)

    async def _stop(self, grace: float) -> None:
        self._closing = True
        for task in list(self._restarts):
            task.cancel()
        give_back: list[PubSubDelivery] = []
        for handle, delivery in list(self._timers.items()):
            handle.cancel()
            give_back.append(delivery)
        self._timers.clear()
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        if self._in_hand is not None:
            give_back.append(self._in_hand)
            self._in_hand = None
        give_back.extend(d for d in await self._pool.stop(grace) if isinstance(d, PubSubDelivery))
        while not self._queue.empty():
            give_back.append(self._queue.get_nowait())
        give_back.extend(self._late)
        self._late.clear()
        await self._hand_back([d for d in give_back if not d.settled])
        streams = list(self._streams.values())
        self._streams.clear()

        def close_streams() -> None:
            for future in streams:
                future.cancel()
            for future in streams:
                with contextlib.suppress(Exception):
                    future.result(timeout=30)

        if streams:
            # The client flushes queued acks and nacks what it still holds before it stops.
            await asyncio.to_thread(close_streams)
        self.closed = True
        await asyncio.sleep(0)  # run callbacks the client handed over before it closed
        late, self._late = self._late, []
        await self._nack_after_close([d.take() for d in late if not d.settled])

    async def _hand_back(self, deliveries: Sequence[PubSubDelivery]) -> None:
        """Make unsettled deliveries available to the group again while the streams are open.

        Ordered, keyed messages are nacked, which keeps their order on Pub/Sub. The others are
        re-published to the retry topic (same attempt, due now) and then acked: a nack could
        be redelivered to this closing stream, and the emulator does not redeliver what a
        closed stream held until long after its ack deadline, so re-publishing is the reliable
        hand-back. Falls back to nack if the re-publish fails."""
        if not deliveries:
            return
        republish: list[PubSubDelivery] = []
        for delivery in deliveries:
            if self._ordering and delivery.raw.ordering_key:
                delivery.release()
            else:
                republish.append(delivery)
        if not republish:
            return
        assert self._names.retry_topic is not None
        try:
            items = [
                (self._names.retry_topic, d.body, self._retry_attributes(d, d.attempt, 0.0, {}), "") for d in republish
            ]
            await self._transport._send(items)
        except Exception as exc:
            logger.warning("messagebus: handing back %d messages of %s by nack (%s)", len(republish), self.source, exc)
            for delivery in republish:
                delivery.release()
            return
        for delivery in republish:
            delivery.take()[0].ack()

    async def _nack_after_close(self, messages: Sequence[tuple[Message, bool]]) -> None:
        """Hand back messages that arrived while the streams closed, with one RPC each
        subscription (their streams are gone, so the client's nack no longer works)."""
        admin = self._transport._admin_subscriber
        if not messages or admin is None:
            return
        by_subscription: dict[str, list[str]] = {}
        for message, retried in messages:
            path = self._names.retry_subscription if retried else self._names.subscription
            assert path is not None
            by_subscription.setdefault(path, []).append(message.ack_id)
        for path, ack_ids in by_subscription.items():
            for start in range(0, len(ack_ids), 1000):
                chunk = ack_ids[start : start + 1000]
                try:
                    await admin.modify_ack_deadline(
                        request={"subscription": path, "ack_ids": chunk, "ack_deadline_seconds": 0}, timeout=5.0
                    )
                except Exception as exc:
                    # Not lost: Pub/Sub redelivers them when their ack deadline runs out.
                    logger.warning(
                        "messagebus: could not hand %d messages back to %s (%s); they return after the ack deadline",
                        len(chunk),
                        path,
                        exc,
                    )
