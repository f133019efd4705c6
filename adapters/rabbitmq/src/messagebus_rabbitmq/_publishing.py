"""Publishing: encode, declare on first use, pipeline on one confirm-mode channel, and send
again what a lost connection cut off (at least once) within ``publish_timeout``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiormq.exceptions
from pamqp.commands import Basic

from messagebus import LifecycleError, MessageBusError, MessageTooLarge, PublishError
from messagebus.transports import Delivery, DestinationKind, OutgoingMessage
from messagebus.transports import headers as h

from ._codec import encode_properties, header_frame_size
from ._connection import Connection, open_channel
from ._errors import ERRORS, REFUSED, RETRYABLE
from ._topology import Topology, bucket_for, physical_name, retry_exchange

__all__ = ["TOPIC", "Publisher"]

#: Header of a retried pattern delivery: the topic it was published to.
TOPIC = "messagebus-topic"

# "FRAME_ERROR - type 2, all octets = <<>>: {frame_too_large,200066,131064}": size, limit.
_FRAME_TOO_LARGE = re.compile(r"frame_too_large,\s*(\d+),\s*(\d+)")
# A message refused this many times (with no frame size to tell which one it was) is failed.
_MAX_REFUSALS = 2


class _Out:
    """One message ready for ``basic.publish``; ``bucket`` > 0 for a delay-bucket retry."""

    __slots__ = ("body", "bucket", "exchange", "mandatory", "properties", "refused", "routing_key")

    def __init__(
        self, exchange: str, routing_key: str, body: bytes, properties: Basic.Properties, bucket: int = 0
    ) -> None:
        self.exchange, self.routing_key, self.body, self.properties = exchange, routing_key, body, properties
        # Queue messages (default exchange) and retries must reach a queue: returned if not.
        self.mandatory = exchange == "" or bucket > 0
        self.bucket = bucket
        self.refused = 0  # connection-level refusals by the broker (see REFUSED)

    def missing(self, topology: Topology) -> bool:
        # A reply (not mandatory) is never declared: its requester's queue may be gone on purpose.
        if self.exchange:
            return self.exchange not in topology.exchanges
        return self.mandatory and self.routing_key not in topology.queues

    async def declare(self, topology: Topology, raw: aiormq.abc.AbstractConnection) -> None:
        if self.bucket:
            await topology.bucket(raw, self.bucket)
        elif self.exchange:
            await topology.exchange(raw, self.exchange)
        else:
            await topology.queue(raw, self.routing_key)

    def publish(self, channel: aiormq.abc.AbstractChannel, timeout: float | None) -> Any:
        return channel.basic_publish(
            self.body,
            exchange=self.exchange,
            routing_key=self.routing_key,
            properties=self.properties,
            mandatory=self.mandatory,
            timeout=timeout,
        )

    def target(self) -> str:
        return self.exchange or self.routing_key


class Publisher:
    """Sends messages on one confirm-mode channel of the supervised connection. Safe to call
    concurrently from tasks of the transport's loop; not thread-safe."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.topology = Topology()
        if conn.options.history is not None:
            self.topology.history = {"x-queue-type": "stream", "x-max-age": conn.options.history}
        self.max_size = conn.options.max_message_size
        self.timeout = conn.options.publish_timeout
        self._frame_cap: int | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def publish(self, messages: Sequence[OutgoingMessage], queue: str | None = None) -> None:
        """See :meth:`RabbitMQTransport.publish`. With ``queue``: to that physical queue only
        (default exchange, ``mandatory``, declared on first use), whatever the destination."""
        limit = self.max_size
        for message in messages:
            if len(message.body) > limit:
                raise MessageTooLarge(
                    f"message for {message.destination} is {len(message.body)} bytes; this RabbitMQ transport "
                    f"allows at most {limit} bytes (max_message_size in the URL; the broker's own limit "
                    "is its max_message_size setting)"
                )
        if messages:
            await self._send([self._encode(m, queue) for m in messages])

    def _encode(self, message: OutgoingMessage, queue: str | None) -> _Out:
        dest = message.destination
        props = encode_properties(message.headers, message.key)
        if queue is not None:
            return _Out("", queue, message.body, props)
        if dest.kind is DestinationKind.TOPIC:
            # Routing key: the logical topic name, which pattern bindings on TOPICS match.
            return _Out(physical_name(dest.name), dest.name, message.body, props)
        out = _Out("", physical_name(dest.name), message.body, props)
        out.mandatory = h.CORRELATION_ID not in message.headers or h.REPLY_TO in message.headers
        return out

    async def republish(self, queue: str, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> None:
        """Send a copy of ``delivery`` back to ``queue`` only, with ``attempt + 1`` and
        ``headers`` added, through the delay bucket of ``delay`` (at once for a tiny delay).
        A pattern subscription's copy carries its topic in :data:`TOPIC`. A held delayed
        message (``messagebus-held``) takes the bucket below: the bus holds what is left."""
        wire = {**delivery.headers, **headers, h.ATTEMPT: str(delivery.attempt + 1)}
        if delivery.topic is not None:
            wire[TOPIC] = delivery.topic
        props = encode_properties(wire, delivery.key)
        bucket = bucket_for(delay, down=h.HELD in headers)
        await self._send([_Out(retry_exchange(bucket) if bucket else "", queue, delivery.body, props, bucket)])

    async def _open_channel(self, timeout: float) -> aiormq.abc.AbstractChannel:
        async with self._lock:
            channel = self._channel
            if channel is None or channel.is_closed:
                raw = await self.conn.wait_ready(timeout)
                channel = self._channel = await open_channel(raw, confirms=True, on_return_raises=True)
            return channel

    def _check_frames(self, pending: Sequence[_Out], raw: aiormq.abc.AbstractConnection) -> None:
        """Raise :class:`MessageTooLarge` before anything is sent when a message's headers
        and key do not fit one content-header frame: RabbitMQ would close the connection
        (``FRAME_ERROR``), taking every consumer and publish on it down."""
        frame_max = getattr(getattr(raw, "connection_tune", None), "frame_max", 0) or 0
        limit = frame_max - 8 if frame_max else None  # 7 bytes of frame header, 1 frame end
        cap = self._frame_cap  # a smaller limit the broker told us (frame_too_large)
        if cap is not None and (limit is None or cap < limit):
            limit = cap
        if limit is None:
            return
        for out in pending:
            size = header_frame_size(out.properties)
            if size > limit:
                raise MessageTooLarge(_frame_message(out, size, limit) + " Nothing was sent.")

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
                    _frame_message(out, size, limit) + f" The broker refused it and closed the connection: {exc}"
                ) from exc
            return
        out.refused += 1
        if out.refused >= _MAX_REFUSALS:
            raise PublishError(
                f"RabbitMQ refused a message for {out.target()!r} and closed the connection "
                f"{out.refused} times; it is not sent again: {exc}"
            ) from exc

    async def _send(self, pending: list[_Out]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        total = len(pending)
        last: BaseException | None = None
        topology = self.topology
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError(f"no confirm within publish_timeout={self.timeout}s")
                channel = self._channel
                if channel is None or channel.is_closed:
                    channel = await self._open_channel(remaining)
                raw = channel.connection
                self._check_frames(pending, raw)
                for out in pending:
                    if out.missing(topology):
                        await out.declare(topology, raw)
                remaining = max(deadline - loop.time(), 0.001)
                if len(pending) == 1:
                    try:
                        results: list[Any] = [await pending[0].publish(channel, remaining)]
                    except Exception as exc:  # not CancelledError, a BaseException
                        results = [exc]
                else:
                    # One deadline for the whole batch rather than a timer per message.
                    async with asyncio.timeout(remaining):
                        results = await asyncio.gather(
                            *(out.publish(channel, None) for out in pending), return_exceptions=True
                        )
            except MessageBusError:  # closed, too large, a conflicting declaration
                raise
            except Exception as exc:  # channel or connection trouble before publishing: try again
                last = exc
                if self.conn.closed:
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
                if isinstance(result, aiormq.exceptions.PublishError | aiormq.exceptions.ChannelNotFoundEntity):
                    # Returned as unroutable, or its exchange is gone: deleted behind our back.
                    topology.forget(out.exchange, out.routing_key)
                elif isinstance(result, REFUSED):
                    self._refused(out, result)
                elif not isinstance(result, RETRYABLE):
                    what = f"RabbitMQ did not accept a message for {out.target()!r}"
                    raise ERRORS.map(result, PublishError, what) from result
                again.append(out)
            if not again:
                return
            pending = again
            if loop.time() >= deadline:
                break
        raise PublishError(
            f"{len(pending)} of {total} message(s) were not confirmed by RabbitMQ at {self.conn.url.render()} within "
            f"publish_timeout={self.timeout}s: {last}"
        ) from last


def _frame_message(out: _Out, size: int, limit: int) -> str:
    return (
        f"the headers and key of a message for {out.target()!r} take {size} bytes in the AMQP content-header frame; "
        f"RabbitMQ takes at most {limit} (its frame_max minus 8 bytes of framing; frame_max is 131072 by default). "
        "Send large data in the body, not in headers or the key."
    )
