"""The relay: publishes committed outbox rows through the bus and marks them sent.

One relay per service instance; any number may run against one table. Each round is one
database transaction: claim up to ``batch_size`` due rows (``FOR UPDATE SKIP LOCKED``, so
relays never hold the same row), publish them confirmed, mark them sent, commit. A relay
that dies before the commit releases its locks with its connection, and another publishes
the rows again: at least once, never lost; the inbox turns that into handled once.

Per-key order: a claimed row goes out only when every earlier unsent, due row of its
destination and key is in the same claim (published before it, in id order). A row whose
key has an earlier row held by another relay waits for the next round; one behind a row
parked after a failure is not even claimed (so a parked key never fills the claim and
starves the other keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._backoff import Backoff, sleep_unless
from .._destination import Destination, DestinationKind
from .._errors import LifecycleError, MessageTooLarge, TransportError
from .._message import OutgoingMessage
from ._schema import Tables

if TYPE_CHECKING:
    from ._db import Database, PgConnection

__all__ = ["Relay", "RelaySettings"]

logger = logging.getLogger("messagebus.outbox")

Publish = Callable[[Sequence[OutgoingMessage]], Awaitable[None]]

#: Seconds between keep-alive queries on the LISTEN connection: a connection that died
#: silently is noticed this late at worst (the poll still publishes meanwhile).
_LISTEN_KEEPALIVE = 30.0
#: Rows deleted per statement by the clean-up (short transactions, no long table locks).
_CLEANUP_CHUNK = 5000


class RelaySettings:
    """The relay's knobs (validated by :class:`~messagebus.outbox.Outbox`)."""

    __slots__ = ("batch_size", "cleanup_interval", "poll_interval", "publish_timeout", "retention", "retry_max")

    def __init__(
        self,
        *,
        batch_size: int,
        poll_interval: float,
        publish_timeout: float,
        retention: float,
        cleanup_interval: float,
        retry_max: float,
    ) -> None:
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.retention = retention
        self.cleanup_interval = cleanup_interval
        self.retry_max = retry_max


def _transient(exc: BaseException) -> bool:
    """A failure of the broker or connection (try the same rows again later), as opposed
    to one of the messages (find it and park it so the others go on)."""
    if isinstance(exc, MessageTooLarge):
        return False
    return isinstance(exc, TransportError | LifecycleError | TimeoutError | OSError)


class Relay:
    """Publishes committed rows of ``tables`` with ``publish`` (the bus's publish chain).

    :meth:`run` loops until :meth:`stop`: woken by NOTIFY on commit, polling every
    ``poll_interval`` seconds as a fallback (and for delayed rows), backing off while the
    broker or database fails. :meth:`relay_once` is one round (for tests and cron-style
    use). Used from one event loop; not thread-safe.
    """

    def __init__(self, db: Database, tables: Tables, publish: Publish, settings: RelaySettings) -> None:
        self._db = db
        self._tables = tables
        self._publish = publish
        self._settings = settings
        self._limit = settings.batch_size
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._next_cleanup = 0.0
        outbox = tables.outbox
        self._claim = f"""
            SELECT id FROM {outbox} o
            WHERE sent_at IS NULL AND available_at <= now() AND (retry_at IS NULL OR retry_at <= now())
              AND (message_key IS NULL OR NOT EXISTS (
                  SELECT 1 FROM {outbox} p
                  WHERE p.sent_at IS NULL AND p.destination = o.destination AND p.message_key = o.message_key
                    AND p.id < o.id AND p.retry_at > now()
              ))
            ORDER BY id LIMIT $1
            FOR UPDATE SKIP LOCKED"""
        self._in_order = f"""
            SELECT o.id, o.destination_kind, o.destination, o.message_key, o.headers, o.body
            FROM {outbox} o
            WHERE o.id = ANY($1::bigint[]) AND (o.message_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM {outbox} p
                WHERE p.sent_at IS NULL AND p.destination = o.destination AND p.message_key = o.message_key
                  AND p.id < o.id AND p.available_at <= now() AND p.id <> ALL($1::bigint[])
            ))
            ORDER BY o.id"""
        self._notify = "SELECT pg_notify($1, '')"
        self._mark = (
            f"UPDATE {outbox} SET sent_at = clock_timestamp(), attempts = attempts + 1, retry_at = NULL "
            "WHERE id = ANY($1::bigint[])"
        )
        self._park_sql = (
            f"UPDATE {outbox} SET attempts = attempts + 1, last_error = $2, "
            "retry_at = now() + least(0.5 * power(2, attempts), $3) * interval '1 second' WHERE id = $1"
        )
        self._next_due = (
            "SELECT extract(epoch FROM min(greatest(available_at, coalesce(retry_at, available_at))) - now()) "
            f"FROM {outbox} WHERE sent_at IS NULL"
        )
        self._cleanup = (
            f"DELETE FROM {outbox} WHERE id IN (SELECT id FROM {outbox} "
            "WHERE sent_at IS NOT NULL AND sent_at < now() - $1 * interval '1 second' LIMIT $2)"
        )

    def wake(self) -> None:
        """Make the running loop look for rows now."""
        self._wake.set()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the round in progress."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Relay until :meth:`stop`. Never raises but ``CancelledError``: failures are logged
        and retried with back-off."""
        listener = asyncio.create_task(self._listen(), name="messagebus-outbox-listen")
        backoff = Backoff(0.1, 5.0)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    await self._drain()
                    await self._maybe_cleanup()
                    wait = await self._seconds_to_wait()
                    backoff.reset()
                except Exception as exc:
                    delay = backoff.next()
                    logger.warning("outbox relay round failed (%s); next try in %.1fs", _describe(exc), delay)
                    await sleep_unless(self._stop, delay)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _drain(self) -> None:
        while not self._stop.is_set():
            limit = self._limit
            settled = await self.relay_once()
            # Fewer than asked: drained, unless the claim was just halved to find a refused row.
            if settled < limit and self._limit >= limit:
                return

    async def relay_once(self) -> int:
        """One round: claim, publish confirmed, mark sent, commit. Returns the number of
        rows claimed and settled (published, or parked after a failure of their own).

        Raises what the broker or database raised for a failure that is not one message's
        (the rows stay unsent). A message the broker refuses (too large, bad name ...) is
        narrowed down by halving the claim and then parked: ``attempts``, ``last_error``
        and a ``retry_at`` backing off to ``retry_max`` seconds; it holds back its own key
        only."""
        pool = await self._db.pool()
        async with pool.acquire() as conn, conn.transaction():
            claimed = [row["id"] for row in await conn.fetch(self._claim, self._limit)]
            if not claimed:
                return 0
            rows = await conn.fetch(self._in_order, claimed)
            if len(rows) < len(claimed):
                # Some wait behind rows another relay holds: when this transaction ends,
                # wake the relays (that one included) to take them in order.
                await conn.execute(self._notify, self._tables.channel)
            if not rows:
                return 0
            messages = [_message(row) for row in rows]
            # A mark lost in a database crash only makes the rows go out again (at least
            # once, as after a relay crash): not worth a WAL flush per round.
            await conn.execute("SET LOCAL synchronous_commit TO off")
            try:
                async with asyncio.timeout(self._settings.publish_timeout):
                    await self._publish(messages)
            except Exception as exc:
                if _transient(exc):
                    raise
                if len(rows) > 1:
                    # One of them is refused: halve until it stands alone (the others go out).
                    self._limit = max(1, len(rows) // 2)
                    return 0
                await self._park(conn, rows[0]["id"], exc)
                return 1
            await conn.execute(self._mark, [row["id"] for row in rows])
        self._limit = min(self._settings.batch_size, self._limit * 2)
        return len(rows)

    async def _park(self, conn: PgConnection, row_id: int, exc: BaseException) -> None:
        logger.error(
            "outbox message %d refused by the broker (%s); kept with a growing retry delay "
            "(it holds back later messages of its key)",
            row_id,
            _describe(exc),
        )
        await conn.execute(self._park_sql, row_id, _describe(exc)[:2000], self._settings.retry_max)

    async def cleanup(self) -> int:
        """Delete rows sent more than ``retention`` seconds ago; returns how many."""
        pool = await self._db.pool()
        total = 0
        while True:
            status = await pool.execute(self._cleanup, self._settings.retention, _CLEANUP_CHUNK)
            deleted = int(status.rpartition(" ")[2])
            total += deleted
            if deleted < _CLEANUP_CHUNK:
                return total

    async def _maybe_cleanup(self) -> None:
        now = time.monotonic()
        if now >= self._next_cleanup:
            self._next_cleanup = now + self._settings.cleanup_interval
            deleted = await self.cleanup()
            if deleted:
                logger.debug("outbox clean-up deleted %d sent rows", deleted)

    async def _seconds_to_wait(self) -> float:
        """Until the next delayed or parked row is due, the poll or the clean-up, whichever first."""
        poll = self._settings.poll_interval
        cleanup = max(self._next_cleanup - time.monotonic(), 0.0)
        pool = await self._db.pool()
        due = await pool.fetchval(self._next_due)
        # A due row left unclaimed is held by another relay, or by order behind one: its
        # commit does not notify, so the poll picks up what that relay does not take.
        if due is not None and due > 0:
            poll = min(poll, float(due) + 0.001)
        return min(poll, cleanup)

    async def _listen(self) -> None:
        """Hold a LISTEN connection; a NOTIFY (a commit of outbox rows) wakes the loop."""
        backoff = Backoff(0.5, 10.0)
        channel = self._tables.channel

        def notified(*_: Any) -> None:
            self._wake.set()

        while not self._stop.is_set():
            try:
                pool = await self._db.pool()
                async with pool.acquire() as conn:
                    await conn.add_listener(channel, notified)
                    self._wake.set()  # catch up on commits made while not listening
                    backoff.reset()
                    while await sleep_unless(self._stop, _LISTEN_KEEPALIVE):
                        await conn.execute("SELECT 1")
                    await conn.remove_listener(channel, notified)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next()
                logger.warning("outbox LISTEN connection lost (%s); polling, next try in %.1fs", _describe(exc), delay)
                await sleep_unless(self._stop, delay)


def _message(row: Any) -> OutgoingMessage:
    destination = Destination(DestinationKind(row["destination_kind"]), row["destination"])
    headers: dict[str, str] = json.loads(row["headers"])
    return OutgoingMessage(destination, bytes(row["body"]), headers, row["message_key"])


def _describe(exc: BaseException) -> str:
    from .._error_map import describe_error

    return describe_error(exc)
