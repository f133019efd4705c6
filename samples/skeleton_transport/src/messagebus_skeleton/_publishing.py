"""Publishing: size checks before anything is sent; concurrent publish calls coalesced by a
:class:`~messagebus.transports.Batcher` into one transaction (one commit for many calls)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from messagebus import LifecycleError, MessageBusError, MessageTooLarge, PublishError
from messagebus.transports import Batcher, Destination, OutgoingMessage

from ._codec import encode_headers
from ._connection import Connection
from ._errors import ERRORS
from ._topology import queues_for

__all__ = ["Publisher", "check_sizes", "store"]

Batch = Sequence[OutgoingMessage]


def check_sizes(messages: Batch, limit: int) -> None:
    """Raise :class:`MessageTooLarge` naming the message and the limit if a body is over it,
    before any message of the batch is stored."""
    for message in messages:
        if len(message.body) > limit:
            raise MessageTooLarge(
                f"message to {message.destination.name!r} is {len(message.body)} bytes; the skeleton broker "
                f"allows at most {limit} (set ?max_message_size=N)"
            )


def store(db: sqlite3.Connection, batches: list[Batch]) -> list[None]:
    """Store every message of ``batches`` in each queue it goes to, in one transaction: once
    this returns they are durable (the broker's "confirm"); when it raises, nothing was
    stored. Runs in the connection's thread."""
    now = time.time()
    db.execute("BEGIN IMMEDIATE")  # the subscriptions read and the inserts see one state
    try:
        queues: dict[Destination, list[str]] = {}
        rows: list[tuple[str, bytes, str, str | None, float]] = []
        for message in (message for batch in batches for message in batch):
            dest = message.destination
            if dest not in queues:
                queues[dest] = queues_for(db, dest)
            headers = encode_headers(message.headers)
            rows.extend((queue, message.body, headers, message.key, now) for queue in queues[dest])
        db.executemany("INSERT INTO messages (queue, body, headers, key, visible_at) VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return [None] * len(batches)


class Publisher:
    """The publishing side of one connection. Publish calls made in the same event-loop turn
    share a transaction; the connection's one thread commits them in call order, so a key's
    messages keep their order across calls."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._batcher: Batcher[Batch, None] = Batcher(self._send, max_entries=500, map_error=self._error)

    async def publish(self, messages: Batch) -> None:
        """Store ``messages``; return once committed. Raises :class:`MessageTooLarge` (nothing
        sent), :class:`LifecycleError` (not connected) or :class:`PublishError`."""
        check_sizes(messages, self._conn.options.max_message_size)
        if not self._conn.is_open:
            raise LifecycleError("the skeleton transport is not connected; call connect() first")
        await self._batcher.add(messages)

    async def drain(self) -> None:
        """Wait for every publish in flight."""
        await self._batcher.drain()

    async def _send(self, batches: list[Batch]) -> list[None]:
        return await self._conn.run(store, batches)

    def _error(self, exc: Exception) -> MessageBusError:
        return ERRORS.map(exc, PublishError, f"publishing to the skeleton broker {self._conn.path!r}")
