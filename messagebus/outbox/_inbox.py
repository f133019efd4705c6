"""Inbox: idempotent handlers. The handler's database work and the "seen" record of its
message commit in one transaction, so a redelivered message is acked without running the
handler again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING

from .._errors import LifecycleError
from .._message import Envelope
from .._middleware import Handler, Middleware
from ._db import Database
from ._outbox import seconds_arg
from ._schema import Tables

if TYPE_CHECKING:
    from ._db import PgConnection, PgPool

__all__ = ["Inbox", "connection"]

logger = logging.getLogger("messagebus.outbox")

_current: ContextVar[PgConnection | None] = ContextVar("messagebus_inbox_connection", default=None)


def connection() -> PgConnection:
    """The asyncpg connection of the inbox transaction around the running handler: write
    the handler's effects on it (and :meth:`Outbox.publish` on it) so that they commit with
    the message's "seen" record, or not at all. Raises :class:`LifecycleError` outside a
    handler wrapped by an :class:`Inbox`."""
    conn = _current.get()
    if conn is None:
        raise LifecycleError(
            "messagebus.outbox.connection() is only available inside a handler registered with an Inbox "
            "(@bus.subscribe(..., middleware=[inbox]))"
        )
    return conn


@contextlib.contextmanager
def _bound(conn: PgConnection) -> Iterator[None]:
    token = _current.set(conn)
    try:
        yield
    finally:
        _current.reset(token)


class Inbox:
    """Idempotent consumers on PostgreSQL: use it as a handler's middleware::

        inbox = Inbox(pool)                                  # or a postgresql:// DSN

        @bus.subscribe("orders.created", middleware=[inbox])
        async def bill(order: OrderCreated) -> None:
            conn = messagebus.outbox.connection()            # the inbox's transaction
            await conn.execute("INSERT INTO charges ...")

    For each delivery it opens a transaction, records (message id, destination, group) and
    runs the handler inside it; the commit makes the handler's writes and the record
    permanent together. A delivery whose record exists (a redelivery after a crash, a
    duplicate publish by a relay) is acked without calling the handler; a concurrent
    duplicate waits on the first one's row lock and is then skipped, or handled if the first
    rolled back. A handler that raises rolls everything back, and the bus retries as usual.

    Records are kept for ``window`` (default 7 days): a duplicate arriving later than that
    is handled again. :meth:`dedupe` makes a middleware with another window for one
    handler. Expired records are deleted at most every ``cleanup_interval`` seconds, in the
    background of a handled message. Messages without an id are handled without
    de-duplication (logged once).

    Safe for many handlers and tasks of one event loop. Raises :class:`ConfigurationError`
    for a bad argument (before any I/O).
    """

    def __init__(
        self,
        database: str | PgPool,
        *,
        window: float | timedelta = timedelta(days=7),
        schema: str = "public",
        table_prefix: str = "messagebus_",
        cleanup_interval: float | timedelta = 300.0,
    ) -> None:
        self.tables = Tables(schema, table_prefix)
        self._db = Database(database, max_size=10)
        self._window = seconds_arg(window, "window", allow_zero=False)
        self._cleanup_interval = seconds_arg(cleanup_interval, "cleanup_interval", allow_zero=False)
        self._next_cleanup = time.monotonic() + self._cleanup_interval
        self._cleanup_task: asyncio.Task[None] | None = None
        self._warned_no_id = False
        inbox = self.tables.inbox
        self._record = (
            f"INSERT INTO {inbox} (message_id, destination, consumer_group, expires_at) "
            "VALUES ($1, $2, $3, now() + $4 * interval '1 second') ON CONFLICT DO NOTHING"
        )
        self._expire = f"DELETE FROM {inbox} WHERE expires_at < now()"

    def __repr__(self) -> str:
        return f"Inbox(tables={self.tables.inbox}, window={self._window}s)"

    def __call__(self, handler: Handler) -> Handler:
        """The middleware with this inbox's ``window``."""
        return self._wrap(handler, self._window)

    def dedupe(self, *, window: float | timedelta) -> Middleware:
        """A middleware on this inbox that keeps records for ``window`` instead."""
        seconds = seconds_arg(window, "window", allow_zero=False)

        def middleware(handler: Handler) -> Handler:
            return self._wrap(handler, seconds)

        return middleware

    def _wrap(self, handler: Handler, window: float) -> Handler:
        async def idempotent(envelope: Envelope) -> None:
            message_id = envelope.id
            pool = await self._db.pool()
            async with pool.acquire() as conn, conn.transaction():
                if message_id:
                    status = await conn.execute(
                        self._record, message_id, envelope.destination, envelope.group or "", window
                    )
                    if status.endswith(" 0"):
                        logger.info(
                            "message %s on %s (group %s) was handled before; acked without running the handler",
                            message_id,
                            envelope.destination,
                            envelope.group or "-",
                        )
                        return
                elif not self._warned_no_id:
                    self._warned_no_id = True
                    logger.warning("a message on %s has no id: handled without de-duplication", envelope.destination)
                with _bound(conn):
                    await handler(envelope)
            self._schedule_cleanup()

        return idempotent

    def _schedule_cleanup(self) -> None:
        now = time.monotonic()
        if now < self._next_cleanup or (self._cleanup_task is not None and not self._cleanup_task.done()):
            return
        self._next_cleanup = now + self._cleanup_interval
        self._cleanup_task = asyncio.create_task(self._cleanup_logged(), name="messagebus-inbox-cleanup")

    async def _cleanup_logged(self) -> None:
        try:
            await self.cleanup()
        except Exception:
            logger.warning("inbox clean-up failed; trying again later", exc_info=True)

    async def cleanup(self) -> int:
        """Delete expired records now; returns how many."""
        pool = await self._db.pool()
        status = await pool.execute(self._expire)
        return int(status.rpartition(" ")[2])

    async def close(self) -> None:
        """Wait for a clean-up in progress and close the pool this inbox made (not one
        given to it). Idempotent; the inbox makes a new pool if used again."""
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await self._db.close()
