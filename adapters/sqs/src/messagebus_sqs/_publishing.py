"""Publishing: check and encode each message, send batches (``PublishBatch`` to topics,
``SendMessageBatch`` to queues), wait for every confirmation. Destinations are declared on
first use, and again when a batch finds them missing (an emulator restarted without state)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from messagebus import MessageTooLarge, PublishError, UnsupportedFeature
from messagebus.transports import Batcher, Consumer, Destination, DestinationKind, OutgoingMessage
from messagebus.transports import headers as h

from ._codec import MAX_BODY_SIZE, MAX_WIRE_SIZE, encode_message
from ._connection import BatchKind, Connection, Entry
from ._consuming import SqsConsumer
from ._errors import is_missing
from ._options import SqsOptions
from ._topology import is_topic, logical_queue

__all__ = ["Publisher", "encode_entry"]

logger = logging.getLogger("messagebus.sqs")

_ID_CHARS = re.compile(r"[\x21-\x7e]{1,128}")


def _fifo_id(value: str) -> str:
    """A MessageGroupId / MessageDeduplicationId (1-128 printable ASCII) for any string."""
    if value and _ID_CHARS.fullmatch(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()


def encode_entry(message: OutgoingMessage, options: SqsOptions, *, replay: bool = False) -> tuple[Entry, int]:
    """The batch entry of ``message`` and its size as SQS counts it. Raises
    :class:`MessageTooLarge` or :class:`UnsupportedFeature` (a key on a standard destination
    with ``strict_keys``). A delayed message (``messagebus-deliver-at``) to a standard queue
    gets ``DelaySeconds`` (the seconds until due, rounded up, at most SQS's 900): received no
    earlier, and held by the consumer beyond 15 minutes. FIFO queues take no per-message delay
    and SNS topics none at all: there the consumers hold it. A ``replay`` gets a fresh FIFO
    deduplication id. Pure but for the clock."""
    dest = message.destination
    if len(message.body) > MAX_BODY_SIZE:
        raise MessageTooLarge(
            f"message to {dest} has a {len(message.body)}-byte body; the sqs transport "
            f"allows {MAX_BODY_SIZE} bytes (SQS/SNS 256 KiB minus room for attributes). Nothing was sent"
        )
    if message.key is not None and not options.fifo and options.strict_keys:
        raise UnsupportedFeature(
            f"message to {dest} has key {message.key!r} but the destination is a standard (unordered) "
            "SQS/SNS destination; use sqs://?fifo=true for ordering by key, "
            "or drop strict_keys=true to carry the key without ordering"
        )
    wire = encode_message(message.body, message.headers, message.key)
    if wire.size > MAX_WIRE_SIZE:
        raise MessageTooLarge(
            f"message to {dest} is {wire.size} bytes with its attributes "
            f"(base64 for binary bodies); SQS/SNS allow {MAX_WIRE_SIZE}. Nothing was sent"
        )
    entry: Entry = {("Message" if is_topic(dest) else "MessageBody"): wire.body}
    if wire.attributes:
        entry["MessageAttributes"] = wire.attributes
    due = message.headers.get(h.DELIVER_AT, "")
    if due.isdigit() and not options.fifo and not is_topic(dest):
        entry["DelaySeconds"] = min(900, max(0, math.ceil(int(due) / 1000 - time.time())))
    if options.fifo:
        # A message without an id (a foreign producer's) gets a fresh one: a constant would
        # make SQS drop every later message as a duplicate for five minutes; so would the
        # message's own id for a dead letter replayed within five minutes of its delivery.
        dedup = _fifo_id(message.id) if message.id and not replay else uuid.uuid4().hex
        entry["MessageGroupId"] = _fifo_id(message.key) if message.key is not None else dedup
        entry["MessageDeduplicationId"] = dedup
    return entry, wire.size


class Publisher:
    """Publishes for one transport. ``consumers`` are the transport's live consumers: a topic
    declared again waits for the groups consumed here to subscribe again."""

    def __init__(self, conn: Connection, consumers: Iterable[Consumer]) -> None:
        self._conn = conn
        self._consumers = consumers
        self._resolving: dict[tuple[str, str], asyncio.Future[str]] = {}

    async def publish(self, messages: Sequence[OutgoingMessage], *, replay: bool = False) -> None:
        """See :meth:`SqsTransport.publish`; ``replay``: see :func:`encode_entry`."""
        self._conn.require()
        options = self._conn.options
        prepared = [(m.destination, *encode_entry(m, options, replay=replay), m.key is not None) for m in messages]
        if not prepared:
            return
        batchers: dict[Destination, Batcher[Entry, Entry]] = {}
        for destination, *_ in prepared:
            if destination not in batchers:
                batchers[destination] = await self._batcher(destination)
        futures = [batchers[d].add(entry, size, ordered=keyed) for d, entry, size, keyed in prepared]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = failures[0]
            if len(failures) > 1 and isinstance(first, PublishError) and not isinstance(first, MessageTooLarge):
                raise PublishError(
                    f"{len(failures)} of {len(futures)} messages were not confirmed; first: {first}"
                ) from first
            raise first

    async def _batcher(self, destination: Destination) -> Batcher[Entry, Entry]:
        """The batcher of ``destination``, declared on first use (concurrent first uses share
        one declaration)."""
        topology = self._conn.require()
        topic = is_topic(destination)
        logical = destination.name if topic else logical_queue(destination)
        kind: BatchKind = "publish" if topic else "send"
        target = (topology.topics if topic else topology.queues).get(logical)
        if target is None:
            key = (kind, logical)
            pending = self._resolving.get(key)
            if pending is None:
                declare = topology.topic_arn if topic else topology.queue_url
                pending = self._resolving[key] = asyncio.ensure_future(self._conn.run(declare, logical))
                pending.add_done_callback(lambda _: self._resolving.pop(key, None))
            target = await asyncio.shield(pending)
        return self._conn.batcher(kind, target, functools.partial(self._send, kind, target, logical))

    async def _send(self, kind: BatchKind, target: str, logical: str, entries: list[Entry]) -> dict[str, Any]:
        if kind == "publish":
            # A group of this process declaring its queue again (it found it gone) declares the
            # topic first and subscribes last; SNS drops what is published in between.
            await self._groups_redeclared(logical, start=False)
        try:
            return await self._conn.request(kind, target, entries)
        except ClientError as exc:
            if not is_missing(exc):
                raise
            logger.warning("%s to %s: %s is gone; declaring it again", kind, target, logical)
        # Nothing of a batch refused for a missing destination was stored: sending it again
        # once to the queue/topic declared again cannot duplicate anything.
        return await self._conn.request(kind, await self._redeclare(kind, logical), entries)

    async def _redeclare(self, kind: BatchKind, logical: str) -> str:
        """Declare a queue or topic found missing again; returns its new URL / ARN."""
        topology = self._conn.require()
        if kind == "send":
            return await self._conn.run(topology.queue_url, logical, fresh=True)
        arn = await self._conn.run(topology.topic_arn, logical, fresh=True)
        # A new topic has no subscriptions: groups consumed in this process subscribe again
        # before the batch goes again, so it reaches them. Groups consumed elsewhere do when
        # their consumer finds its queue gone.
        await self._groups_redeclared(logical, start=True)
        return arn

    async def _groups_redeclared(self, topic: str, *, start: bool) -> None:
        """Wait until the groups of ``topic`` consumed here have declared their queue and
        subscription again: every one (``start``), or those already doing so."""
        groups = [
            c.redeclare() if start else c.redeclaring
            for c in list(self._consumers)
            if isinstance(c, SqsConsumer) and c.source.kind is DestinationKind.TOPIC and c.source.name == topic
        ]
        pending = [g for g in groups if g is not None]
        if pending:
            await asyncio.gather(*(asyncio.shield(g) for g in pending))
