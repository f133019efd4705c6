"""PubSubTransport: the messagebus transport contract on google-cloud-pubsub.

Threads and the event loop. Publishing uses the client's ``PublisherClient`` (its batching,
ordering keys and ``resume_publish``); its futures complete on the client's threads and are
bridged to the loop with one ``call_soon_threadsafe`` per ``publish()`` call. Consuming, topics
and subscriptions use the asyncio (``grpc.aio``) GAPIC clients: each consumer long-polls
``Pull`` on the loop, extends leases itself and batches acks, so no callback thread is
involved and nothing blocks the loop. Streaming pull is not used on purpose: Google's
emulator keeps routing messages to a streaming pull after the client closed it, so every
stopped consumer would swallow messages for one or more ack deadlines (measured; see the
README), which breaks graceful stop and restart. Unary pull has no such state.

Retries (``Delivery.retry``): the message is re-published, with ``messagebus-attempt`` and a
``messagebus-not-before`` time, to the consumer's own retry topic ``<subscription>~retry``
(read by the same consumer through the subscription of the same name), and the original is
acked only once that publish is confirmed. The redelivery therefore reaches only this
group/queue, carries its attempt count across processes and restarts (the emulator has no
delivery-attempt field, and real Pub/Sub only counts with a dead-letter policy), and waits
without holding back other messages: a retry that arrives early goes back to Pub/Sub with
its ack deadline set to the remaining delay (``ModifyAckDeadline``), and the last second or
two is timed on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.api_core import exceptions as gexc
from google.api_core.retry_async import AsyncRetry
from google.cloud import pubsub_v1
from google.pubsub_v1 import PublisherAsyncClient, ReceivedMessage, SubscriberAsyncClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport, PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcAsyncIOTransport

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
# Seconds one Pull request may wait for messages.
_PULL_WAIT = 2.0
# Publishes of more messages than this are handed to the client from a worker thread.
_INLINE_PUBLISH = 16


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
            # Pub/Sub stores messages durably; the emulator keeps them in memory only.
            persistence=settings.emulator_host is None,
            consumer_groups=True,
            max_message_size=MAX_BODY,
            network=True,
        )
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._ordered_publisher: pubsub_v1.PublisherClient | None = None
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
            apub_channel = grpc.aio.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
            asub_channel = grpc.aio.insecure_channel(emulator, options=_CHANNEL_OPTIONS)
        else:
            # Finding Application Default Credentials may probe the GCE metadata server: keep
            # it off the event loop and bounded.
            credentials = await asyncio.wait_for(asyncio.to_thread(self._load_credentials), timeout)
            kw: dict[str, Any] = {"credentials": credentials, "options": _CHANNEL_OPTIONS}
            pub_channel = PublisherGrpcTransport.create_channel(_API_HOST, **kw)
            apub_channel = PublisherGrpcAsyncIOTransport.create_channel(_API_HOST, **kw)
            asub_channel = SubscriberGrpcAsyncIOTransport.create_channel(_API_HOST, **kw)
        self._admin_publisher = PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=apub_channel))
        self._admin_subscriber = SubscriberAsyncClient(transport=SubscriberGrpcAsyncIOTransport(channel=asub_channel))
        batching = pubsub_v1.types.BatchSettings(
            max_messages=self._opts.batch_max_messages, max_latency=self._opts.batch_max_latency
        )
        # Two publishers on one channel: an ordered client makes every publish (keyed or not)
        # retry forever and costs more per message, so keyless messages use a plain one.
        self._publisher = pubsub_v1.PublisherClient(
            batch_settings=batching, transport=PublisherGrpcTransport(channel=pub_channel)
        )
        if self._opts.ordering:
            self._ordered_publisher = pubsub_v1.PublisherClient(
                batch_settings=batching,
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
                transport=PublisherGrpcTransport(channel=pub_channel),
            )
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
            return _credentials_from_file(path)
        credentials, _ = google.auth.default(scopes=_SCOPES)
        return credentials

    async def close(self) -> None:
        """Stop every consumer still running (no grace), flush the publisher and close all
        channels. Idempotent; never raises for an already-broken connection."""
        for consumer in list(self._consumers):
            await consumer.stop(0.0)
        await self._close_clients()

    async def _close_clients(self) -> None:
        publishers = [p for p in (self._publisher, self._ordered_publisher) if p is not None]
        admin_pub, admin_sub = self._admin_publisher, self._admin_subscriber
        self._publisher = self._ordered_publisher = None
        self._admin_publisher = self._admin_subscriber = None
        self._topology = None

        def close_sync() -> None:
            for publisher in publishers:
                with contextlib.suppress(Exception):
                    publisher.stop()
            for publisher in publishers:
                with contextlib.suppress(Exception):
                    publisher.transport.close()

        if publishers:
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
        plain, topology = self._require_open()
        ordered = self._ordered_publisher or plain
        assert self._loop is not None

        def submit() -> list[ConcurrentFuture[str]]:
            return [
                (ordered if ordering_key else plain).publish(topic, data, ordering_key=ordering_key, **attributes)
                for topic, data, attributes, ordering_key in items
            ]

        try:
            # Handing a message to the client costs tens of microseconds and commits full
            # batches by starting threads: a large batch is handed over from a worker thread
            # so the event loop stays responsive; a few messages go inline.
            futures = await asyncio.to_thread(submit) if len(items) > _INLINE_PUBLISH else submit()
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
                # The topic is gone (deleted, or an emulator restarted and lost everything):
                # declare it, and a queue's subscription, again on the next publish.
                topology.forget_all()
            if ordering_key and (topic, ordering_key) not in resumed:
                resumed.add((topic, ordering_key))
                # The client pauses an ordering key after a failed publish; resume it so the
                # caller can publish (or retry) with this key again.
                with contextlib.suppress(Exception):
                    ordered.resume_publish(topic, ordering_key)
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


def _credentials_from_file(path: str) -> Any:
    """Service-account or authorized-user credentials from a JSON file (the two kinds a user
    hands over deliberately; external-account configs are refused as unvetted input)."""
    import json

    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        kind = info.get("type") if isinstance(info, dict) else None
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=_SCOPES)  # type: ignore[no-untyped-call]
        if kind == "authorized_user":
            return user_credentials.Credentials.from_authorized_user_info(info, scopes=_SCOPES)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ConfigurationError(
            f"credentials_file {path!r} cannot be used: {type(exc).__name__}: {exc}; give a service-account or "
            "authorized-user JSON key file"
        ) from exc
    raise ConfigurationError(
        f"credentials_file {path!r} has type {kind!r}; expected a 'service_account' or 'authorized_user' JSON file"
    )


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

    Belongs to one handler call; settle it once, on the consumer's event loop. ``raw`` is the
    :class:`google.pubsub_v1.types.ReceivedMessage` (``ack_id`` and ``message``).
    """

    __slots__ = (
        "_consumer",
        "_received",
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
        received: ReceivedMessage,
        headers: dict[str, str],
        key: str | None,
        attempt: int,
        attributes: Mapping[str, AttributeValue],
        retried: bool = False,
    ) -> None:
        self._consumer = consumer
        self._received = received
        self._retried = retried
        self._settled = False
        self.body: bytes = received.message.data
        self.headers: Mapping[str, str] = headers
        self.key: str | None = key
        self.attempt: int = attempt
        self.messaging_attributes: Mapping[str, AttributeValue] = attributes

    @property
    def raw(self) -> ReceivedMessage:
        """The native received message."""
        return self._received

    @property
    def ack_id(self) -> str:
        """The Pub/Sub ack id of this delivery."""
        return str(self._received.ack_id)

    @property
    def retried(self) -> bool:
        """True when it came from the consumer's retry subscription."""
        return self._retried

    @property
    def settled(self) -> bool:
        """True once :meth:`ack` or :meth:`retry` was called (or the delivery was handed back)."""
        return self._settled

    async def ack(self) -> None:
        """Acknowledge: Pub/Sub forgets the message for this subscription. Idempotent.

        Acks are batched with others and sent right after; Pub/Sub delivery is at least once,
        so an ack lost with the connection means one more delivery. Raises
        :class:`ConsumeError` when the consumer is already stopped (the message will then be
        redelivered)."""
        if self._settled:
            return
        if self._consumer.closed:
            raise ConsumeError(
                f"cannot ack message {self._received.message.message_id}: the consumer of "
                f"{self._consumer.source} is stopped; Pub/Sub will redeliver it"
            )
        self._settled = True
        self._consumer.ack_later(self)

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Redeliver to this subscription only, after ``delay`` seconds, with ``attempt + 1``.

        Re-publishes the message (with ``headers`` added) to this consumer's retry topic and
        acks the original once the broker confirmed it; on failure the original is handed back
        for immediate redelivery and :class:`ConsumeError` is raised. Idempotent."""
        if self._settled:
            return
        self._settled = True
        try:
            await self._consumer.republish(self, max(0.0, float(delay)), headers)
        except BaseException as exc:
            self._consumer.nack_later([self])
            if isinstance(exc, Exception):
                raise ConsumeError(
                    f"cannot schedule the retry of message {self._received.message.message_id} from "
                    f"{self._consumer.source}: {exc}"
                ) from exc
            raise
        self._consumer.ack_later(self)

    def mark_settled(self) -> None:
        """Mark settled without telling Pub/Sub (the consumer hands it back itself)."""
        self._settled = True


class PubSubConsumer:
    """A running consumer: asyncio pull loops on the subscription and its retry subscription,
    feeding a :class:`WorkerPool`, with lease extension, batched acks and flow control.

    Everything runs on the bus's event loop through the ``grpc.aio`` client: no thread and no
    blocking call. Flow control: at most ``max_messages`` (default ``concurrency + 100``) and
    100 MiB are leased at once per consumer; leases are extended every third of the ack
    deadline while messages are held or handled (up to an hour).
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
        self._ordering = transport._opts.ordering
        self._ack_deadline = transport._opts.ack_deadline
        self._max_messages = transport._opts.max_messages or concurrency + 100
        self._max_bytes = 100 * 1024 * 1024
        self._pool = WorkerPool(handler, concurrency, ordered=self._ordering, name=str(source))
        self._queue: asyncio.Queue[PubSubDelivery] = asyncio.Queue()
        self._in_hand: PubSubDelivery | None = None
        self._timers: dict[asyncio.TimerHandle, PubSubDelivery] = {}
        # Leased and not yet settled, by ack id: (delivery, leased since).
        self._leased: dict[str, tuple[PubSubDelivery, float]] = {}
        self._leased_bytes = 0
        self._space = asyncio.Event()
        self._acks: dict[bool, list[str]] = {False: [], True: []}
        self._ack_flush: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        self.closed = False
        self._stopped: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"PubSubConsumer({self.source}, subscription={self._names.subscription!r})"

    @property
    def subscription(self) -> str:
        """The full path of the main subscription."""
        assert self._names.subscription is not None
        return self._names.subscription

    async def start(self) -> None:
        """Start the workers, both pull loops and the lease keeper. Never blocks."""
        self._pool.start()
        name = str(self.source)
        self._tasks = [
            self._loop.create_task(self._feed(), name=f"messagebus-pubsub-feed-{name}"),
            self._loop.create_task(self._pull_loop(False), name=f"messagebus-pubsub-pull-{name}"),
            self._loop.create_task(self._pull_loop(True), name=f"messagebus-pubsub-pull-retry-{name}"),
            self._loop.create_task(self._lease_loop(), name=f"messagebus-pubsub-lease-{name}"),
        ]

    def _admin(self) -> SubscriberAsyncClient:
        admin = self._transport._admin_subscriber
        if admin is None:
            raise ConsumeError("the Pub/Sub transport was closed")
        return admin

    # -- fetching ----------------------------------------------------------------------------

    async def _pull_loop(self, retried: bool) -> None:
        path = self._names.retry_subscription if retried else self._names.subscription
        assert path is not None
        backoff = 0.2
        while not self._closing:
            while len(self._leased) >= self._max_messages or self._leased_bytes >= self._max_bytes:
                self._space.clear()
                await self._space.wait()
                if self._closing:
                    return
            want = max(1, min(self._max_messages - len(self._leased), 1000))
            try:
                # A short long-poll: the server answers as soon as messages are there, or empty
                # near the deadline. Kept short because stop() lets the pending pull finish
                # instead of cancelling it (see _stop).
                response = await self._admin().pull(
                    request={"subscription": path, "max_messages": want}, timeout=_PULL_WAIT, retry=None
                )
            except asyncio.CancelledError:
                raise
            except gexc.DeadlineExceeded:
                continue
            except Exception as exc:
                if self._closing:
                    return
                if isinstance(exc, gexc.NotFound):
                    # Deleted behind our back: declare it again.
                    topology = self._transport._topology
                    if topology is not None:
                        topology.forget(path)
                        with contextlib.suppress(MessageBusError):
                            await topology.ensure_consumer(self._names)
                logger.warning("pulling from %s failed (%s); retrying in %.1fs", path, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            for received in response.received_messages:
                self._arrive(received, retried)

    def _arrive(self, received: ReceivedMessage, retried: bool) -> None:
        message = received.message
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
            if remaining > _LOCAL_HOLD and not self._closing:
                # Back to Pub/Sub until shortly before it is due: it holds no flow-control slot
                # and no worker meanwhile, and other messages flow past it.
                seconds = min(_MAX_ACK_DEADLINE, max(1, int(remaining - 1.0)))
                self._spawn(self._modack([received.ack_id], seconds, retried))
                return
        key = message.ordering_key or wire.get(h.KEY) or None
        headers = {k: v for k, v in wire.items() if k not in INTERNAL_HEADERS}
        subscription = self._names.retry_subscription if retried else self._names.subscription
        assert subscription is not None
        attributes = delivery_attributes(
            subscription=subscription.rsplit("/", 1)[-1],
            message_id=message.message_id,
            ack_id=received.ack_id,
            ordering_key=message.ordering_key,
            body_size=len(message.data),
            attempt=attempt,
        )
        delivery = PubSubDelivery(self, received, headers, key, attempt, attributes, retried)
        if self._closing:
            self.nack_later([delivery])
            return
        self._leased[delivery.ack_id] = (delivery, time.monotonic())
        self._leased_bytes += len(delivery.body)
        if remaining > 0:
            handle = self._loop.call_later(remaining, self._due, delivery)
            self._timers[handle] = delivery
        else:
            self._queue.put_nowait(delivery)

    def _due(self, delivery: PubSubDelivery) -> None:
        for handle, item in list(self._timers.items()):
            if item is delivery:
                del self._timers[handle]
                break
        self._queue.put_nowait(delivery)

    async def _feed(self) -> None:
        while True:
            delivery = await self._queue.get()
            self._in_hand = delivery
            await self._pool.wait_for_space()
            self._in_hand = None
            self._pool.submit_nowait(delivery)

    # -- settling ----------------------------------------------------------------------------

    def _release(self, delivery: PubSubDelivery) -> None:
        entry = self._leased.pop(delivery.ack_id, None)
        if entry is not None:
            self._leased_bytes -= len(delivery.body)
            self._space.set()

    def ack_later(self, delivery: PubSubDelivery) -> None:
        """Queue the ack of ``delivery``; acks made in the same loop turn go in one request."""
        self._release(delivery)
        self._acks[delivery.retried].append(delivery.ack_id)
        if self._ack_flush is None or self._ack_flush.done():
            self._ack_flush = self._loop.create_task(self._flush_acks())

    def nack_later(self, deliveries: Sequence[PubSubDelivery]) -> None:
        """Hand deliveries back for immediate redelivery (ack deadline 0), in the background."""
        by_path: dict[bool, list[str]] = {}
        for delivery in deliveries:
            delivery.mark_settled()
            self._release(delivery)
            by_path.setdefault(delivery.retried, []).append(delivery.ack_id)
        for retried, ack_ids in by_path.items():
            self._spawn(self._modack(ack_ids, 0, retried))

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _flush_acks(self) -> None:
        await asyncio.sleep(0)  # let the acks of this loop turn join the request
        for retried in (False, True):
            path = self._names.retry_subscription if retried else self._names.subscription
            assert path is not None
            pending = self._acks[retried]
            failures = 0
            while pending:
                batch = pending[:2500]
                del pending[:2500]
                try:
                    await self._admin().acknowledge(
                        request={"subscription": path, "ack_ids": batch}, timeout=10.0, retry=None
                    )
                    failures = 0
                except Exception as exc:
                    failures += 1
                    if failures > 3 or isinstance(exc, ConsumeError):
                        # At least once: these messages come back after their ack deadline.
                        logger.warning("acking %d messages on %s failed: %s", len(batch), path, exc)
                        failures = 0
                        continue
                    pending[:0] = batch
                    await asyncio.sleep(0.2 * failures)

    async def _modack(self, ack_ids: Sequence[str], seconds: int, retried: bool) -> None:
        path = self._names.retry_subscription if retried else self._names.subscription
        assert path is not None
        for start in range(0, len(ack_ids), 2500):
            chunk = list(ack_ids[start : start + 2500])
            try:
                await self._admin().modify_ack_deadline(
                    request={"subscription": path, "ack_ids": chunk, "ack_deadline_seconds": seconds},
                    timeout=10.0,
                    retry=None,
                )
            except Exception as exc:
                # Not lost: Pub/Sub redelivers them when their current ack deadline runs out.
                logger.warning(
                    "changing the ack deadline of %d messages on %s failed: %s", len(chunk), path, exc
                )

    async def _lease_loop(self) -> None:
        interval = max(1.0, self._ack_deadline / 3)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            by_path: dict[bool, list[str]] = {}
            for ack_id, (delivery, since) in list(self._leased.items()):
                if now - since < 3600:
                    by_path.setdefault(delivery.retried, []).append(ack_id)
            for retried, ack_ids in by_path.items():
                await self._modack(ack_ids, self._ack_deadline, retried)

    async def republish(self, delivery: PubSubDelivery, delay: float, headers: Mapping[str, str]) -> None:
        """Publish ``delivery`` to this consumer's retry topic, due in ``delay`` seconds, with
        ``attempt + 1``. Raises :class:`MessageTooLarge` / :class:`PublishError`."""
        assert self._names.retry_topic is not None
        wire = {k: v for k, v in delivery.headers.items() if k not in INTERNAL_HEADERS}
        wire.update(headers)
        wire[h.ATTEMPT] = str(delivery.attempt + 1)
        if delay > 0:
            wire[NOT_BEFORE] = str(int((time.time() + delay) * 1000))
        attributes, _ = encode_attributes(wire, delivery.key, False)
        check_size(self._names.retry_topic, delivery.body, attributes, "")
        await self._transport._send([(self._names.retry_topic, delivery.body, attributes, "")])

    # -- stopping ----------------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Stop fetching, give in-flight handlers up to ``grace`` seconds, cancel the rest and
        hand every unsettled message back to Pub/Sub (ack deadline 0) for immediate
        redelivery; pending acks are sent before it returns. Idempotent."""
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
        self._space.set()
        pulls, others = self._tasks[1:3], [self._tasks[0], self._tasks[3]] if self._tasks else []
        if pulls:
            # Let pending pulls finish rather than cancel them: the emulator hands the next
            # message to a pull the client cancelled, where it stays invisible for a whole ack
            # deadline. What they return is handed back (self._closing is set).
            _, late = await asyncio.wait(pulls, timeout=_PULL_WAIT + 0.5)
            for task in late:
                task.cancel()
        give_back: list[PubSubDelivery] = []
        for handle, delivery in list(self._timers.items()):
            handle.cancel()
            give_back.append(delivery)
        self._timers.clear()
        if self._tasks:
            self._tasks[0].cancel()  # the feeder
            await asyncio.gather(*pulls, self._tasks[0], return_exceptions=True)
        if self._in_hand is not None:
            give_back.append(self._in_hand)
            self._in_hand = None
        give_back.extend(d for d in await self._pool.stop(grace) if isinstance(d, PubSubDelivery))
        while not self._queue.empty():
            give_back.append(self._queue.get_nowait())
        self.nack_later([d for d in give_back if not d.settled])
        # Everything still leased was handed over to the bus and not settled: give it back too.
        self.nack_later([d for d, _ in list(self._leased.values()) if not d.settled])
        if self._ack_flush is not None:
            await asyncio.gather(self._ack_flush, return_exceptions=True)
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.closed = True
