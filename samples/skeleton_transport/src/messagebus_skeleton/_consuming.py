"""The consumer of one queue: a poll loop (``ConsumerBase.fetch_loop``) and the broker
primitives behind its deliveries.

Receiving leases messages, in the order they became visible (so a redelivery queues behind
what is already waiting, and a zero-delay ``Nack`` loop starves nothing): it stamps them with
a fresh receipt and hides them for ``visibility_timeout`` seconds. Only the oldest message of
a key can be received, so a key's messages are handled one at a time in publish order, across
every consumer of the group (and a retried message holds back the rest of its key); not in a
dead-letter queue, whose tools hold what they look at and must still see the rest. An
ack deletes the row, a redelivery makes it visible again after the delay, a hand-back makes
it visible now; each matches the receipt, so a consumer whose lease ran out settles nothing.
``attempt`` counts every receive, so broker redeliveries (a hand-back, a lease that ran out)
count too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence

from messagebus import ConsumeError, DecodeError
from messagebus.transports import AttributeValue, Backoff, ConsumerBase, Delivery, DeliveryHandler

from ._codec import SkeletonMessage, decode_headers, encode_headers
from ._connection import Connection
from ._errors import ERRORS, LeaseLost
from ._telemetry import delivery_attributes
from ._topology import is_dead_letter_queue

__all__ = ["SkeletonConsumer"]

logger = logging.getLogger("messagebus.skeleton")

Row = tuple[int, bytes, str, str | None, int]

_TAKE = """
UPDATE messages SET deliveries = deliveries + 1, visible_at = :until, receipt = :receipt
WHERE id IN (
    SELECT m.id FROM messages AS m
    WHERE m.queue = :queue AND m.visible_at <= :now
      AND (NOT :ordered OR m.key IS NULL OR NOT EXISTS (
          SELECT 1 FROM messages AS e WHERE e.queue = m.queue AND e.key = m.key AND e.id < m.id))
    ORDER BY m.visible_at, m.id LIMIT :room)
RETURNING id, body, headers, key, deliveries
"""


def _take(db: sqlite3.Connection, queue: str, receipt: str, room: int, lease: float) -> list[Row]:
    now = time.time()
    ordered = not is_dead_letter_queue(queue)
    values = {"queue": queue, "receipt": receipt, "room": room, "now": now, "until": now + lease, "ordered": ordered}
    rows = db.execute(_TAKE, values)
    return sorted(rows.fetchall())  # RETURNING gives no order; a key's rows are in id order


def _untake(db: sqlite3.Connection, receipt: str) -> None:
    # Rows received by a fetch nobody will hand over: visible again, and not counted.
    db.execute(
        "UPDATE messages SET visible_at = ?, receipt = NULL, deliveries = deliveries - 1 WHERE receipt = ?",
        (time.time(), receipt),
    )


def _delete(db: sqlite3.Connection, message: SkeletonMessage) -> None:
    if db.execute("DELETE FROM messages WHERE id = ? AND receipt = ?", (message.id, message.receipt)).rowcount == 0:
        raise LeaseLost(f"message {message.id} is no longer leased to this consumer (its visibility timeout ran out)")


def _redeliver(db: sqlite3.Connection, message: SkeletonMessage, due: float, extra: str | None) -> None:
    # json_patch merges the retry headers into the stored ones; a row whose headers are not
    # JSON (a foreign producer's) keeps them as they are.
    cursor = db.execute(
        "UPDATE messages SET visible_at = ?, receipt = NULL, headers = CASE WHEN ? IS NULL OR NOT json_valid(headers) "
        "THEN headers ELSE json_patch(headers, ?) END WHERE id = ? AND receipt = ?",
        (due, extra, extra, message.id, message.receipt),
    )
    if cursor.rowcount == 0:
        raise LeaseLost(f"message {message.id} is no longer leased to this consumer (its visibility timeout ran out)")


def _release(db: sqlite3.Connection, messages: list[SkeletonMessage]) -> None:
    # A row whose lease ran out (receipt changed) is skipped: the broker already took it back.
    now = time.time()
    db.executemany(
        "UPDATE messages SET visible_at = ?, receipt = NULL WHERE id = ? AND receipt = ?",
        [(now, m.id, m.receipt) for m in messages],
    )


class SkeletonConsumer(ConsumerBase):
    """Polls one queue; at most ``concurrency`` messages leased at once (it fetches only as
    many as the worker pool has room for, so nothing waits leased in a buffer)."""

    def __init__(
        self,
        conn: Connection,
        queue: str,
        handler: DeliveryHandler,
        concurrency: int,
    ) -> None:
        super().__init__(handler, concurrency, name=queue, log=logger)
        self.queue = queue
        self._conn = conn
        self._options = conn.options
        self._wake = asyncio.Event()
        self._untaking: asyncio.Future[None] | None = None

    def start(self) -> None:
        """Start the workers and the poll loop."""
        super().start()
        backoff = Backoff(self._options.poll_interval, 5.0)
        loop = self.fetch_loop(self._fetch, describe_error=self._fetch_error, backoff=backoff)
        self.spawn(loop, name=f"skeleton-poll-{self.queue}", loop=True)

    def wake(self) -> None:
        """Poll now rather than after ``poll_interval`` (something was stored or made visible)."""
        self._wake.set()

    # -- DeliverySource ---------------------------------------------------------------------

    def describe(self) -> str:
        """The queue, for messages."""
        return f"skeleton queue {self.queue!r}"

    async def settle_ack(self, delivery: Delivery) -> None:
        """Delete the row (only while this receive's lease holds: else :class:`LeaseLost`)."""
        await self._conn.run(_delete, delivery.native)
        self.wake()  # the next message of its key can be received now

    async def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> None:
        """Make the row visible again ``delay`` seconds from now, with ``headers`` merged into
        its stored headers, in one statement: nothing is lost in between."""
        extra = encode_headers(headers) if headers else None
        await self._conn.run(_redeliver, delivery.native, time.time() + delay, extra)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Make the rows visible now (skipping any whose lease already ran out)."""
        await self._conn.run(_release, [d.native for d in deliveries])
        self.wake()

    def attributes_of(self, delivery: Delivery) -> Mapping[str, AttributeValue]:
        """Telemetry attributes of a delivery (called by ``Delivery`` once, when traced)."""
        return delivery_attributes(delivery.native, len(delivery.body))

    # -- receiving --------------------------------------------------------------------------

    async def _fetch(self, room: int) -> list[Delivery]:
        self._wake.clear()
        receipt = uuid.uuid4().hex
        taking = self._conn.submit(_take, self.queue, receipt, room, self._options.visibility_timeout)
        try:
            # Shielded: the query runs on in its thread if stop() cancels the poll loop.
            rows = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # Whatever it leases is handed back at once, not after the visibility timeout (the
            # connection's one thread runs this after the receive).
            self._untaking = self._conn.submit(_untake, receipt)
            raise
        if not rows:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._options.poll_interval)
            return []
        return [self._delivery(row, receipt) for row in rows]

    def _delivery(self, row: Row, receipt: str) -> Delivery:
        id_, body, text, key, deliveries = row
        message = SkeletonMessage(id_, self.queue, receipt, deliveries)
        try:
            headers = decode_headers(text)
        except DecodeError as exc:
            # Hand it over anyway, so the bus dead-letters it instead of it looping here.
            logger.warning("message %d of %s: %s", id_, self.describe(), exc)
            headers = {}
        return Delivery(self, message, bytes(body), headers, key, deliveries)

    def _fetch_error(self, exc: Exception) -> str:
        return str(ERRORS.map(exc, ConsumeError, f"receiving from {self.describe()}"))

    # -- ConsumerBase hooks -----------------------------------------------------------------

    async def stop_fetching(self) -> None:
        """End an idle poll at once (the poll loop then sees the stop)."""
        self.wake()

    async def close(self) -> None:
        """Wait for a cancelled receive's hand-back; leave the transport's list."""
        if self._untaking is not None:
            with contextlib.suppress(Exception):
                await self._untaking
