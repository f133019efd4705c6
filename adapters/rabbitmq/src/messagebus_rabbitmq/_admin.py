"""The operator's broker operations (:class:`~messagebus.transports.BrokerAdmin`) on RabbitMQ.

AMQP cannot list queues: :meth:`Admin.dead_letter_queues` asks the management HTTP API
(plugin ``rabbitmq_management``, option ``management_url``). Depth is the ready count of a
passive ``queue.declare``; a group's queue is reached alone through the default exchange
(routing key: the queue), the way a retry comes back to it."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from urllib.parse import quote

import aiormq.exceptions

from messagebus import InvalidDestination, TopologyError, TransportError
from messagebus.transports import Destination, DestinationKind, OutgoingMessage, TransportURL
from messagebus.transports import headers as h

from ._connection import close_quietly, open_channel
from ._errors import ERRORS
from ._publishing import TOPIC, Publisher
from ._topology import logical_name, physical_name, queue_name

__all__ = ["Admin"]


def _queue(source: Destination) -> str:
    """The queue of ``source``; raises :class:`InvalidDestination` for a topic without a group."""
    if source.kind is DestinationKind.TOPIC and not source.group:
        raise InvalidDestination(f"topic {source.name!r} has no group: give Destination(TOPIC, name, group=...)")
    return queue_name(source)


class Admin:
    """:class:`~messagebus.transports.BrokerAdmin` for one transport: AMQP on its supervised
    connection, HTTP on the management API (one request at a time in a worker thread)."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher, self.conn = publisher, publisher.conn
        url = self.conn.url
        scheme, port = ("https", 15671) if url.scheme == "amqps" else ("http", 15672)
        default = TransportURL(scheme, ((url.host or "", port),)).render()
        #: Base URL of the management API (never with credentials: they go in a header).
        self.management_url = (self.conn.options.management_url or default).rstrip("/")
        credentials = f"{url.username or 'guest'}:{url.password if url.password is not None else 'guest'}"
        self._authorization = "Basic " + base64.b64encode(credentials.encode()).decode()

    async def dead_letter_queues(self) -> list[str]:
        """See :meth:`RabbitMQTransport.dead_letter_queues`."""
        names = await asyncio.to_thread(self._queue_names)
        logical = (logical_name(name) for name in names if name.endswith(".dlq"))
        return sorted(name for name in logical if name is not None)

    def _queue_names(self) -> list[str]:
        """The names of every queue of the vhost, by ``GET /api/queues/<vhost>?columns=name``."""
        url = f"{self.management_url}/api/queues/{quote(self.conn.vhost, safe='')}?columns=name"
        # No proxy from the environment: like the AMQP connection, this goes straight to the
        # broker. An amqps:// URL's TLS settings (cafile, verify ...) apply to https too.
        handlers = (urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.conn.ssl_context))
        request = urllib.request.Request(url, headers={"Authorization": self._authorization})
        where = f"cannot list queues: the RabbitMQ management API at {self.management_url}"
        try:
            with urllib.request.build_opener(*handlers).open(request, timeout=self.conn.options.connect_timeout) as r:
                return [str(row["name"]) for row in json.load(r)]
        except urllib.error.HTTPError as exc:
            user = self.conn.url.username or "guest"
            hint = f"; user {user!r} needs the tag management or monitoring" if exc.code in (401, 403) else ""
            raise TransportError(f"{where} answered HTTP {exc.code} {exc.reason}{hint}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:  # unreachable, TLS, not the API's JSON
            raise TransportError(
                f"{where} failed ({exc}); dead_letter_queues needs the plugin rabbitmq_management there "
                "(rabbitmq-plugins enable rabbitmq_management), else the URL option management_url=http://host:port"
            ) from exc

    async def depth(self, source: Destination) -> int:
        """See :meth:`RabbitMQTransport.depth`."""
        qname = _queue(source)
        try:
            raw = await self.conn.wait_ready(self.conn.options.connect_timeout)
            # A throwaway channel: a missing queue closes it (NOT_FOUND), and nothing is declared.
            channel = await open_channel(raw, confirms=False)
            try:
                return (await channel.queue_declare(qname, passive=True)).message_count or 0
            except aiormq.exceptions.ChannelNotFoundEntity:
                return 0
            finally:
                await close_quietly(channel)
        except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise ERRORS.map(exc, TransportError, f"cannot read the depth of RabbitMQ queue {qname!r}") from exc

    async def publish_to_group(self, source: Destination, messages: Sequence[OutgoingMessage]) -> None:
        """See :meth:`RabbitMQTransport.publish_to_group`."""
        out = []
        for message in messages:
            # Without the retry count it is a first attempt; a pattern group reads its topic here.
            wire = {TOPIC: message.destination.name} if source.is_pattern else {}
            wire.update((k, v) for k, v in message.headers.items() if k != h.ATTEMPT)
            out.append(dataclasses.replace(message, headers=wire))
        await self.publisher.publish(out, _queue(source))

    async def delete_group(self, source: Destination) -> None:
        """See :meth:`RabbitMQTransport.delete_group`."""
        queues = (_queue(source), physical_name(source.dead_letter_queue))
        await self.delete(f"the RabbitMQ queues of {source}", queues)

    async def delete(self, what: str, queues: tuple[str, ...]) -> None:
        """Delete physical ``queues`` (missing ones are no error; a filter exchange goes with
        its queue); raises :class:`TopologyError` naming ``what`` when RabbitMQ refuses or
        stays unreachable past ``connect_timeout``."""
        try:
            raw = await self.conn.wait_ready(self.conn.options.connect_timeout)
            await self.publisher.topology.delete(raw, queues)
        except (aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise ERRORS.map(exc, TopologyError, f"cannot delete {what}") from exc
