"""Publishing: size checks, then JetStream publishes awaited for their acks (the stream stored
the message). A batch is pipelined: every message is written at once, then every ack awaited."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

import nats.js.errors as jerr

from messagebus import MessageTooLarge, PublishError
from messagebus.transports import Destination, OutgoingMessage, headers

from ._codec import MSG_ID, encode_headers, pack, wire_size
from ._connection import Connection
from ._errors import ERRORS
from ._topology import Names, names_of

__all__ = ["Publisher"]

#: Seconds before a publish not yet answered is sent again (JetStream drops the copy).
RESEND_AFTER = 2.0
#: (names, body, wire headers) of one message ready to send.
Prepared = tuple[Names, bytes, dict[str, str]]


class Publisher:
    """Sends the messages of ``publish`` calls. May be used by many tasks at once; use from
    one event loop."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._prefix = connection.options.prefix
        self._names: dict[Destination, Names] = {}

    def names(self, destination: Destination) -> Names:
        """The physical names of ``destination`` (cached)."""
        names = self._names.get(destination)
        if names is None:
            names = self._names[destination] = names_of(destination, self._prefix)
        return names

    def prepare(self, message: OutgoingMessage) -> Prepared:
        """Encode one message; raises :class:`MessageTooLarge` if body and headers exceed the
        server's payload limit or the body ``max_message_size``."""
        names = self.names(message.destination)
        wire = encode_headers(message.headers)
        if message.key is not None:
            wire[headers.KEY] = message.key
        wire[MSG_ID] = message.headers.get(headers.CE_ID) or uuid.uuid4().hex
        body = message.body
        limit = self.connection.options.max_message_size
        wire, packed = pack(wire, body)
        if len(body) > limit:
            raise MessageTooLarge(
                f"message body to {message.destination.name!r} is {len(body)} bytes; the limit is "
                f"max_message_size={limit} bytes"
            )
        total = len(packed) + wire_size(wire)
        if total > self.connection.max_payload:
            raise MessageTooLarge(
                f"message to {message.destination.name!r} is {total} bytes with its headers; the server's "
                f"max_payload is {self.connection.max_payload} bytes"
            )
        return names, packed, wire

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """See :meth:`NatsTransport.publish`."""
        self.connection.require()
        await self.send([self.prepare(m) for m in messages])

    async def send(self, prepared: list[Prepared]) -> None:
        """Send prepared messages and wait for every ack. A stream found missing (deleted, or
        a memory stream lost in a restart) is created again and its messages sent again once."""
        _, topology = self.connection.require()
        for names in {p[0] for p in prepared if p[0].stream not in topology.known}:
            await topology.ensure_stream(names)
        try:
            await self._send(prepared)
        except jerr.NoStreamResponseError:
            for names in {p[0] for p in prepared}:
                topology.known.discard(names.stream)
                await topology.ensure_stream(names)
            await self._send(prepared)

    async def _send(self, prepared: list[Prepared]) -> None:
        # A publish written into a connection that then died is never answered: after
        # RESEND_AFTER seconds the unanswered ones are sent again, until publish_timeout.
        # Each carries a Nats-Msg-Id, so JetStream stores a message sent twice once.
        js, _ = self.connection.require()
        timeout = self.connection.options.publish_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        todo = prepared
        try:
            while todo:
                futures: list[asyncio.Future[Any]] = []
                try:
                    for names, body, wire in todo:
                        futures.append(await js.publish_async(names.subject, body, headers=wire))
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(RESEND_AFTER, max(deadline - loop.time(), 0.01))):
                            for future in futures:
                                await future
                finally:
                    for future in futures:
                        future.cancel()  # unanswered ones: free the client's slots
                for future in futures:
                    if future.done() and not future.cancelled() and future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
                todo = [p for p, f in zip(todo, futures, strict=True) if f.cancelled()]
                if todo and loop.time() >= deadline:
                    raise PublishError(
                        f"JetStream did not confirm {len(todo)} message(s) to {todo[0][0].subject!r} "
                        f"within publish_timeout={timeout:g}s"
                    )
        except (jerr.NoStreamResponseError, PublishError):
            raise
        except Exception as exc:
            subject = todo[0][0].subject if todo else "?"
            raise ERRORS.map(exc, PublishError, f"JetStream did not confirm a message to {subject!r}") from exc
