"""RabbitMQTransport: the messagebus transport contract on RabbitMQ (aio-pika / aiormq).

One AMQP connection per transport, managed here rather than by aio-pika's robust
connection: after a drop, a supervisor reconnects with backoff and every consumer re-opens
its own channel, re-declares its queue and consumes again (tested through a TCP proxy that
cuts the connection). Publishing uses one confirm-mode channel; declarations use another, so
a failed declaration never breaks in-flight publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, cast

import aio_pika
import aiormq
import aiormq.exceptions
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from messagebus import (
    ConnectError,
    ConsumeError,
    LifecycleError,
    MessageBusError,
    MessageTooLarge,
    PublishError,
    TopologyError,
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
)
from messagebus.transports import (
    headers as h,
)

from ._codec import attempt_of, decode_headers, encode_properties, header_frame_size
from ._errors import connect_error, is_transient_connect_error
from ._options import RabbitMQOptions, parse_url
from ._telemetry import MESSAGING_SYSTEM, delivery_attributes
from ._topology import Topology, bucket_for, physical_name, queue_name

__all__ = ["LazyIncomingMessage", "RabbitMQConsumer", "RabbitMQDelivery", "RabbitMQTransport"]

logger = logging.getLogger("messagebus.rabbitmq")

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
# Errors after which a publish is repeated on a fresh channel/connection (at-least-once).
_RETRYABLE = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    asyncio.TimeoutError,
    TimeoutError,
    RuntimeError,  # aio-pika/aiormq raise it for "connection closed" states
)
# Connection-level errors by which the broker refuses what the client sent (a frame it cannot
# take, a malformed one): sending the same message again would only close the next
# connection too, and every channel and consumer on it with it.
_REFUSED = (
    aiormq.exceptions.ConnectionFrameError,
    aiormq.exceptions.ConnectionSyntaxError,
    aiormq.exceptions.ConnectionCommandInvalid,
    aiormq.exceptions.ConnectionUnexpectedFrame,
)
# "FRAME_ERROR - type 2, all octets = <<>>: {frame_too_large,200066,131064}": size, limit.
_FRAME_TOO_LARGE = re.compile(r"frame_too_large,\s*(\d+),\s*(\d+)")
# A message refused this many times (with no frame size to tell which one it was) is failed.
_MAX_REFUSALS = 2
# Seconds allowed for closing a channel/connection or cancelling a consumer: a stalled
# network must not hang stop() or close().
_CLOSE_TIMEOUT = 5.0


class _Out:
    """One message ready for ``basic.publish``."""

    __slots__ = ("body", "bucket", "exchange", "kind", "mandatory", "properties", "refused", "routing_key")

    def __init__(
        self,
        kind: str,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        mandatory: bool,
        bucket: int = 0,
    ) -> None:
        self.kind = kind  # "topic" | "queue" | "bucket"
        self.bucket = bucket
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.mandatory = mandatory
        self.refused = 0  # connection-level refusals by the broker (see _REFUSED)


class RabbitMQTransport:
    """The messagebus transport for ``amqp://`` and ``amqps://`` URLs.

    Build it with :meth:`from_url` (or let ``Bus.from_url`` do it). One instance holds one
    connection and is used from one event loop; it is not thread-safe. ``connect`` and
    ``close`` are idempotent. Errors are mapped to the messagebus error tree with the native
    aio-pika/aiormq error chained; the password never appears in a message or log line.
    """

    messaging_system = MESSAGING_SYSTEM

    def __init__(self, url: TransportURL, options: RabbitMQOptions | None = None, vhost: str | None = None) -> None:
        if options is None or vhost is None:
            options, vhost = parse_url(url)
        self.url = url
        self.options = options
        self.vhost = vhost
        self.capabilities = Capabilities(
            ordering=True,
            native_delay=True,
            persistence=True,
            consumer_groups=True,
            max_message_size=options.max_message_size,
            network=True,
        )
        self._max_size = options.max_message_size
        # Largest content-header frame payload a broker said it takes (frame_too_large),
        # when smaller than what the connection negotiated.
        self._frame_cap: int | None = None
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._raw: aiormq.abc.AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._supervisor: asyncio.Task[None] | None = None
        self._pub: aiormq.abc.AbstractChannel | None = None
        self._pub_lock = asyncio.Lock()
        self._topology = Topology()
        self._consumers: set[RabbitMQConsumer] = set()
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: TransportURL) -> RabbitMQTransport:
        """Build a transport from ``amqp://user:password@host:port/vhost?option=value``.

        Validates the scheme, host and every query option without any network I/O. Raises
        :class:`InvalidURL` or :class:`InvalidOption` (listing the valid options).
        """
        options, vhost = parse_url(url)
        return cls(url, options, vhost)

    def __repr__(self) -> str:
        return f"RabbitMQTransport({self.url.render()!r})"

    # -- connection ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the connection is open (False while reconnecting)."""
        return self._ready.is_set()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.url.scheme != "amqps":
            return None
        if self._ssl is None:
            opts = self.options
            ctx = ssl.create_default_context(cafile=opts.cafile)
            if not opts.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if opts.certfile:
                ctx.load_cert_chain(opts.certfile, opts.keyfile)
            self._ssl = ctx
        return self._ssl

    async def _open_once(self) -> aio_pika.abc.AbstractConnection:
        """Try every host of the URL once; raise the last error."""
        opts = self.options
        last: BaseException | None = None
        try:
            context = self._ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot load the TLS files for {self.url.render()}: {exc}") from exc
        for host, port in self.url.hosts:
            try:
                return await aio_pika.connect(
                    host=host,
                    port=port or _DEFAULT_PORTS[self.url.scheme],
                    login=self.url.username if self.url.username is not None else "guest",
                    password=self.url.password if self.url.password is not None else "guest",
                    virtualhost=self.vhost,
                    ssl=context is not None,
                    ssl_context=context,
                    timeout=opts.connect_timeout,
                    client_properties={"connection_name": opts.connection_name},
                    heartbeat=opts.heartbeat,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                last = exc
                if not is_transient_connect_error(exc):
                    break
        assert last is not None
        raise last

    async def connect(self) -> None:
        """Open the connection, retrying a refused/unreachable broker ``connect_retries``
        times with backoff. Idempotent. Raises :class:`ConnectError` (URL redacted) right
        away for wrong credentials, an unknown virtual host or a TLS failure, and after the
        bounded retry for an unreachable broker; :class:`LifecycleError` after :meth:`close`."""
        if self._closed:
            raise LifecycleError("this RabbitMQ transport was closed; create a new one")
        if self._conn is not None:
            return
        attempts = self.options.connect_retries + 1
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                conn = await self._open_once()
            except ConnectError:
                raise
            except Exception as exc:
                if not is_transient_connect_error(exc) or attempt == attempts:
                    raise connect_error(exc, self.url, self.vhost, attempt) from exc
                logger.warning(
                    "connecting to RabbitMQ at %s failed (%s); attempt %d of %d in %.1fs",
                    self.url.render(),
                    exc,
                    attempt + 1,
                    attempts,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                self._install(conn)
                return

    def _install(self, conn: aio_pika.abc.AbstractConnection) -> None:
        assert conn.transport is not None
        raw = conn.transport.connection
        self._conn = conn
        self._raw = raw
        self._pub = None
        self._topology.reset_channel()
        raw.closing.add_done_callback(lambda _f: self._on_connection_lost(raw))
        self._ready.set()

    def _on_connection_lost(self, raw: aiormq.abc.AbstractConnection) -> None:
        if raw is not self._raw or self._closed:
            return
        self._ready.clear()
        self._pub = None
        logger.warning("connection to RabbitMQ at %s lost; reconnecting", self.url.render())
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._reconnect(), name="messagebus-rabbitmq-reconnect"
            )

    async def _reconnect(self) -> None:
        delay = 0.05
        old = self._conn
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), _CLOSE_TIMEOUT)
        while not self._closed:
            try:
                conn = await self._open_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "reconnecting to RabbitMQ at %s failed (%s); next try in %.2fs",
                    self.url.render(),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), _CLOSE_TIMEOUT)
                return
            self._install(conn)
            logger.info("reconnected to RabbitMQ at %s", self.url.render())
            return

    async def _wait_ready(self, timeout: float | None) -> aiormq.abc.AbstractConnection:
        if self._closed:
            raise LifecycleError("the RabbitMQ transport is closed")
        if self._conn is None:
            raise LifecycleError("the RabbitMQ transport is not connected; call connect() (Bus.start) first")
        if not self._ready.is_set():
            await asyncio.wait_for(self._ready.wait(), timeout)
            if self._closed:
                raise LifecycleError("the RabbitMQ transport is closed")
        raw = self._raw
        assert raw is not None
        return raw

    async def close(self) -> None:
        """Stop every consumer still running (unsettled deliveries go back to their queue),
        then close the channels and the connection. Idempotent; never raises for a
        connection that is already gone."""
        if self._closed:
            return
        consumers = list(self._consumers)
        for consumer in consumers:
            with contextlib.suppress(Exception):
                await consumer.stop(0)
        self._closed = True
        self._ready.set()  # wake waiters so they see the closed state
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._topology.close(), _CLOSE_TIMEOUT)
        pub, self._pub = self._pub, None
        if pub is not None and not pub.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pub.close(), _CLOSE_TIMEOUT)
        conn, self._conn = self._conn, None
        self._raw = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), _CLOSE_TIMEOUT)

    # -- publishing ---------------------------------------------------------------------------

    async def _channel(self, timeout: float) -> aiormq.abc.AbstractChannel:
        pub = self._pub
        if pub is not None and not pub.is_closed:
            return pub
        async with self._pub_lock:
            pub = self._pub
            if pub is not None and not pub.is_closed:
                return pub
            raw = await self._wait_ready(timeout)
            pub = await raw.channel(publisher_confirms=True, on_return_raises=True)
            self._pub = pub
            return pub

    def _encode(self, message: OutgoingMessage) -> _Out:
        dest = message.destination
        props = encode_properties(message.headers, message.key)
        if dest.kind is DestinationKind.TOPIC:
            key = message.key
            # The key doubles as routing key (handy for operators' own bindings) when it fits.
            routing_key = key if key is not None and len(key.encode()) <= 255 else ""
            return _Out("topic", physical_name(dest.name), routing_key, message.body, props, False)
        return _Out("queue", "", physical_name(dest.name), message.body, props, True)

    async def _declare_for(self, raw: aiormq.abc.AbstractConnection, out: _Out) -> None:
        topology = self._topology
        if out.kind == "topic":
            if out.exchange not in topology.exchanges:
                await topology.exchange(raw, out.exchange)
        elif out.kind == "queue":
            if out.routing_key not in topology.queues:
                await topology.queue(raw, out.routing_key)
        elif out.bucket not in topology.buckets:
            await topology.bucket(raw, out.bucket)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish persistent messages and return once RabbitMQ confirmed every one.

        Topic messages go to the topic's exchange (reaching every group queue bound at that
        moment; none bound is not an error: pub/sub). Queue messages are published
        ``mandatory`` to their durable queue, declared on first use, so they wait for a
        consumer; a returned (unroutable) queue message is re-declared and sent again.
        Several messages are pipelined: all are written, then all confirms awaited together.
        Messages cut off by a lost connection are sent again after the reconnect (at least
        once). Raises :class:`MessageTooLarge` before sending anything when a body exceeds
        ``max_message_size``; :class:`PublishError` when confirms are still missing after
        ``publish_timeout`` seconds; :class:`TopologyError` when a declaration conflicts.
        Safe to call concurrently from several tasks of the transport's loop.
        """
        limit = self._max_size
        for message in messages:
            if len(message.body) > limit:
                raise MessageTooLarge(
                    f"message for {message.destination} is {len(message.body)} bytes; this RabbitMQ transport "
                    f"allows at most {limit} bytes (max_message_size in the URL; the broker's own limit "
                    "is its max_message_size setting)"
                )
        if not messages:
            return
        await self._send([self._encode(m) for m in messages])

    def _frame_limit(self, raw: aiormq.abc.AbstractConnection) -> int | None:
        """Largest content-header frame payload this connection takes (None: no limit)."""
        tune = getattr(raw, "connection_tune", None)
        frame_max = getattr(tune, "frame_max", 0) or 0
        limit = frame_max - 8 if frame_max else None  # 7 bytes of frame header, 1 frame end
        cap = self._frame_cap
        if cap is not None and (limit is None or cap < limit):
            limit = cap
        return limit

    def _check_frames(self, pending: Sequence[_Out], raw: aiormq.abc.AbstractConnection) -> None:
        """Raise :class:`MessageTooLarge` before anything is sent when a message's headers
        and key do not fit one content-header frame: RabbitMQ would close the connection
        (``FRAME_ERROR``), taking every consumer and publish on it down."""
        limit = self._frame_limit(raw)
        if limit is None:
            return
        for out in pending:
            size = header_frame_size(out.properties)
            if size > limit:
                raise MessageTooLarge(self._frame_message(out, size, limit) + " Nothing was sent.")

    def _frame_message(self, out: _Out, size: int, limit: int) -> str:
        return (
            f"the headers and key of a message for {out.exchange or out.routing_key!r} take {size} bytes in "
            f"the AMQP content-header frame; RabbitMQ takes at most {limit} (its frame_max minus 8 bytes "
            "of framing; frame_max is 131072 by default). Send large data in the body, not in headers or the key."
        )

    def _refused(self, out: _Out, exc: BaseException) -> None:
        """The connection was closed by the broker refusing a frame it was sent. Raise for the
        message that caused it, so it is never sent again in a loop; return (send again) for
        a message that was only on the same connection."""
        match = _FRAME_TOO_LARGE.search(str(exc))
        if match is not None:
            limit = int(match.group(2))
            if self._frame_cap is None or limit < self._frame_cap:
                self._frame_cap = limit
            size = header_frame_size(out.properties)
            if size > limit:
                raise MessageTooLarge(
                    self._frame_message(out, size, limit) + f" The broker refused it and closed the connection: {exc}"
                ) from exc
            return
        out.refused += 1
        if out.refused >= _MAX_REFUSALS:
            raise PublishError(
                f"RabbitMQ refused a message for {out.exchange or out.routing_key!r} and closed the connection "
                f"{out.refused} times; it is not sent again: {exc}"
            ) from exc

    async def _send(self, pending: list[_Out]) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.options.publish_timeout
        deadline = loop.time() + timeout
        total = len(pending)
        last: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError(f"no confirm within publish_timeout={timeout}s")
                channel = await self._channel(remaining)
                raw = channel.connection
                self._check_frames(pending, raw)
                topology = self._topology
                for out in pending:
                    kind = out.kind
                    if (
                        (kind == "topic" and out.exchange not in topology.exchanges)
                        or (kind == "queue" and out.routing_key not in topology.queues)
                        or (kind == "bucket" and out.bucket not in topology.buckets)
                    ):
                        await self._declare_for(raw, out)
                remaining = max(deadline - loop.time(), 0.001)
                if len(pending) == 1:
                    out = pending[0]
                    try:
                        results: list[Any] = [
                            await channel.basic_publish(
                                out.body,
                                exchange=out.exchange,
                                routing_key=out.routing_key,
                                properties=out.properties,
                                mandatory=out.mandatory,
                                timeout=remaining,
                            )
                        ]
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        results = [exc]
                else:
                    # One deadline for the whole batch rather than a timer per message.
                    async with asyncio.timeout(remaining):
                        results = await asyncio.gather(
                            *(
                                channel.basic_publish(
                                    out.body,
                                    exchange=out.exchange,
                                    routing_key=out.routing_key,
                                    properties=out.properties,
                                    mandatory=out.mandatory,
                                )
                                for out in pending
                            ),
                            return_exceptions=True,
                        )
            except (LifecycleError, TopologyError, MessageTooLarge):
                raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # channel or connection trouble before publishing: try again
                last = exc
                if self._closed:
                    raise LifecycleError("the RabbitMQ transport is closed") from exc
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(0.05)
                continue
            again: list[_Out] = []
            for out, result in zip(pending, results, strict=True):
                if not isinstance(result, BaseException):
                    continue
                if isinstance(result, asyncio.CancelledError):
                    raise result
                last = result
                if isinstance(result, aiormq.exceptions.PublishError):
                    # Returned as unroutable: the queue (or bucket) was deleted behind our back.
                    self._topology.forget(out.exchange, out.routing_key)
                elif isinstance(result, aiormq.exceptions.ChannelNotFoundEntity):
                    self._topology.forget(out.exchange, out.routing_key)
                elif isinstance(result, aiormq.exceptions.DeliveryError):
                    pass  # nacked by the broker (internal error): send again
                elif isinstance(result, _REFUSED):
                    self._refused(out, result)
                elif not isinstance(result, _RETRYABLE):
                    raise PublishError(
                        f"RabbitMQ did not accept a message for {out.exchange or out.routing_key!r}: {result}"
                    ) from result
                again.append(out)
            if not again:
                return
            pending = again
            if loop.time() >= deadline:
                break
        raise PublishError(
            f"{len(pending)} of {total} message(s) were not confirmed by RabbitMQ at {self.url.render()} within "
            f"publish_timeout={timeout}s: {last}"
        ) from last

    # -- consuming ----------------------------------------------------------------------------

    async def subscribe(self, source: Destination, handler: DeliveryHandler, *, concurrency: int) -> RabbitMQConsumer:
        """Declare ``source`` and start consuming it with at most ``concurrency`` handler calls
        in flight (prefetch = the ``prefetch`` option, else ``concurrency``), per-key order
        kept within this consumer. Raises :class:`TopologyError` when the queue exists with
        other arguments, :class:`LifecycleError` before :meth:`connect`."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        consumer = RabbitMQConsumer(self, source, handler, concurrency)
        await consumer.start()
        self._consumers.add(consumer)
        return consumer

    async def _republish(
        self, consumer: RabbitMQConsumer, delivery: RabbitMQDelivery, delay: float, headers: Mapping[str, str]
    ) -> None:
        bucket = bucket_for(delay)
        wire = dict(delivery.headers)
        wire.update(headers)
        wire[h.ATTEMPT] = str(delivery.attempt + 1)
        props = encode_properties(wire, delivery.key)
        if bucket == 0:
            out = _Out("queue", "", consumer.queue, delivery.body, props, True)
        else:
            raw = await self._wait_ready(self.options.publish_timeout)
            exchange = await self._topology.bucket(raw, bucket)
            out = _Out("bucket", exchange, consumer.queue, delivery.body, props, True, bucket)
        await self._send([out])


class LazyIncomingMessage(aio_pika.IncomingMessage):
    """An :class:`aio_pika.IncomingMessage` that fills itself in on first use.

    Building an ``IncomingMessage`` copies and converts every AMQP property (about a tenth of
    the per-message cost of consuming); most handlers never look at ``Envelope.raw``, so the
    work is deferred until an attribute is first read. It then behaves exactly like the
    aio-pika class (it is one). Do not settle it yourself: the bus does.
    """

    def __init__(self, message: DeliveredMessage, no_ack: bool = False) -> None:
        # Deliberately not calling the parent __init__ now: __getattr__ does it on first use.
        object.__setattr__(self, "_lazy_source", (message, no_ack))

    @property
    def materialized(self) -> bool:
        """True once the message was filled in (something read it)."""
        return "_lazy_source" not in self.__dict__

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not set yet, i.e. before the real __init__ ran.
        source = self.__dict__.pop("_lazy_source", None)
        if source is None:
            raise AttributeError(name)
        aio_pika.IncomingMessage.__init__(self, *source)
        return getattr(self, name)


class RabbitMQDelivery:
    """One message received from a RabbitMQ queue.

    ``raw`` is the :class:`aio_pika.IncomingMessage` (built on first access). Settle it with
    :meth:`ack` or :meth:`retry` exactly once, from the transport's loop; not thread-safe.
    """

    __slots__ = ("_attrs", "_consumer", "_headers", "_incoming", "_message", "channel", "redelivered", "settled", "tag")

    def __init__(self, consumer: RabbitMQConsumer, message: DeliveredMessage) -> None:
        self._consumer = consumer
        self._message = message
        self.channel = message.channel
        frame = cast(Basic.Deliver, message.delivery)
        self.tag: int = frame.delivery_tag or 0
        self.redelivered = bool(frame.redelivered)
        self._headers: dict[str, str] | None = None
        self._incoming: LazyIncomingMessage | None = None
        self._attrs: dict[str, AttributeValue] | None = None
        self.settled = False

    @property
    def body(self) -> bytes:
        """The message body."""
        return self._message.body

    @property
    def headers(self) -> Mapping[str, str]:
        """Logical headers (CloudEvents under ``ce-`` names)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = decode_headers(self._message.header.properties)
        return headers

    @property
    def key(self) -> str | None:
        """The ordering key (``messagebus-key`` header), if any."""
        return self.headers.get(h.KEY)

    @property
    def attempt(self) -> int:
        """1 on the first delivery; +1 per retry, and +1 when the broker redelivers."""
        return attempt_of(self.headers, self.redelivered)

    @property
    def raw(self) -> LazyIncomingMessage:
        """The native :class:`aio_pika.IncomingMessage`."""
        incoming = self._incoming
        if incoming is None:
            incoming = self._incoming = LazyIncomingMessage(self._message, no_ack=False)
        return incoming

    @property
    def messaging_attributes(self) -> Mapping[str, AttributeValue]:
        """``messaging.rabbitmq.destination.routing_key``, delivery tag, queue, size ..."""
        attrs = self._attrs
        if attrs is None:
            attrs = self._attrs = delivery_attributes(self._message, self._consumer.queue)
        return attrs

    def _native_settled(self) -> bool:
        # A message nobody touched cannot have been settled through aio-pika.
        incoming = self._incoming
        return incoming is not None and incoming.materialized and incoming.processed

    async def ack(self) -> None:
        """Acknowledge: RabbitMQ forgets the message. Idempotent. Raises :class:`ConsumeError`
        when the channel it came on is gone (RabbitMQ then redelivers it)."""
        if self.settled:
            return
        self.settled = True
        if self._native_settled():
            return
        channel = self.channel
        try:
            await channel.basic_ack(self.tag, wait=False)
        except Exception as exc:
            raise ConsumeError(
                f"cannot ack a message from queue {self._consumer.queue!r}: the channel closed ({exc}); "
                "RabbitMQ will redeliver it"
            ) from exc

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Send the message back to this consumer's queue (only) after ``delay`` seconds with
        ``attempt + 1`` and ``headers`` added, through a delay-bucket queue, then ack it.
        The copy is confirmed before the original is acked (nothing lost; a crash between
        the two gives a duplicate). Other messages are not held back. Raises
        :class:`ConsumeError` (the original is then redelivered by RabbitMQ)."""
        if self.settled:
            return
        if self.channel.is_closed:
            # RabbitMQ already put it back (channel gone); a copy now would be a duplicate.
            self.settled = True
            raise ConsumeError(
                f"cannot retry a message from queue {self._consumer.queue!r}: its channel closed; "
                "RabbitMQ redelivers it"
            )
        try:
            await self._consumer.transport._republish(self._consumer, self, delay, headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ConsumeError(
                f"cannot schedule a retry for a message from queue {self._consumer.queue!r}: {exc}"
            ) from exc
        await self.ack()

    async def _requeue(self) -> None:
        if self.settled or self._native_settled():
            return
        self.settled = True
        channel = self.channel
        if channel.is_closed:
            return
        with contextlib.suppress(Exception):
            await channel.basic_nack(self.tag, requeue=True, wait=False)


class RabbitMQConsumer:
    """A running subscription: one channel with ``basic.consume`` on one queue, feeding a
    :class:`~messagebus.transports.WorkerPool`. Restarts itself after a lost channel or
    connection (new channel, queue re-declared, consume again)."""

    def __init__(
        self, transport: RabbitMQTransport, source: Destination, handler: DeliveryHandler, concurrency: int
    ) -> None:
        self.transport = transport
        self.source = source
        self.queue = queue_name(source)
        self.concurrency = concurrency
        self.prefetch = transport.options.prefetch or concurrency
        self._handler = handler
        self._pool = WorkerPool(self._run, concurrency, ordered=True, name=self.queue)
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        self._stopped = False
        self._restart_task: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def consuming(self) -> bool:
        """True while a ``basic.consume`` is active on an open channel."""
        ch = self._channel
        return ch is not None and not ch.is_closed and self._tag is not None

    async def start(self) -> None:
        """Declare the queue and start consuming (called by ``subscribe``).

        A connection lost meanwhile is waited out (up to ``connect_timeout``); raises
        :class:`TopologyError` for a conflicting declaration, :class:`ConnectError` when the
        broker stays unreachable."""
        transport = self.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + transport.options.connect_timeout
        self._pool.start()
        try:
            while True:
                try:
                    raw = await transport._wait_ready(max(deadline - loop.time(), 0.001))
                    await self._open(raw)
                    return
                except (MessageBusError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    if loop.time() >= deadline:
                        raise ConnectError(
                            f"cannot start consuming queue {self.queue!r} on RabbitMQ at "
                            f"{transport.url.render()}: {exc or type(exc).__name__}"
                        ) from exc
                    await asyncio.sleep(0.05)
        except BaseException:
            self._stopped = True
            await self._pool.stop(0)
            raise

    async def _open(self, raw: aiormq.abc.AbstractConnection) -> None:
        await self.transport._topology.subscription(raw, self.source)
        channel = await raw.channel(publisher_confirms=False)
        try:
            await channel.basic_qos(prefetch_count=self.prefetch)
            ok = await channel.basic_consume(self.queue, self._on_message, no_ack=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._channel = channel
        self._tag = ok.consumer_tag
        channel.closing.add_done_callback(lambda _f: self._on_channel_closed(channel))
        channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)

    async def _on_message(self, message: DeliveredMessage) -> None:
        if self._stopped:
            return  # the channel's close hands it back to the queue
        self._pool.submit_nowait(RabbitMQDelivery(self, message))

    async def _run(self, delivery: Any) -> None:
        if delivery.channel.is_closed:
            return  # its channel died: RabbitMQ redelivers it on the new one
        await self._handler(delivery)

    def _on_broker_cancel(self, _frame: Any) -> None:
        # The queue was deleted (or the node went away): close this channel; the close
        # triggers a restart that re-declares the queue.
        channel = self._channel
        if channel is not None and not channel.is_closed and not self._stopped:
            asyncio.get_running_loop().create_task(channel.close())

    def _on_channel_closed(self, channel: aiormq.abc.AbstractChannel) -> None:
        if channel is not self._channel or self._stopped or self.transport._closed:
            return
        self._tag = None
        if self._restart_task is None or self._restart_task.done():
            self._restart_task = asyncio.get_running_loop().create_task(
                self._restart(), name=f"messagebus-rabbitmq-restart-{self.queue}"
            )

    async def _restart(self) -> None:
        delay = 0.05
        while not self._stopped and not self.transport._closed:
            try:
                raw = await self.transport._wait_ready(None)
                if self._stopped:
                    return
                await self._open(raw)
                self.restarts += 1
                logger.info("consumer of RabbitMQ queue %r restored", self.queue)
                return
            except asyncio.CancelledError:
                raise
            except LifecycleError:
                return
            except Exception as exc:
                level = logging.ERROR if isinstance(exc, TopologyError) else logging.WARNING
                logger.log(level, "restoring the consumer of queue %r failed: %s", self.queue, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def stop(self, grace: float) -> None:
        """Stop fetching (``basic.cancel``), let in-flight handler calls finish for up to
        ``grace`` seconds, cancel the rest, hand every unsettled delivery back to the queue
        and close the channel. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        task = self._restart_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        channel, tag = self._channel, self._tag
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.basic_cancel(tag), _CLOSE_TIMEOUT)
        unhandled = await self._pool.stop(grace)
        for delivery in unhandled:
            if isinstance(delivery, RabbitMQDelivery):
                await delivery._requeue()
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), _CLOSE_TIMEOUT)
        self.transport._consumers.discard(self)
