"""Outbox: ``publish``/``send`` inside the caller's database transaction, relayed after commit."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from opentelemetry import propagate

from .._bus import Bus, BusState
from .._destination import Destination, DestinationKind
from .._errors import ConfigurationError, LifecycleError
from .._message import OutgoingMessage
from ._db import Database, raw_connection
from ._relay import Relay, RelaySettings
from ._schema import MIGRATIONS, Tables, schema_version

if TYPE_CHECKING:
    from ._db import PgPool

__all__ = ["Outbox", "seconds_arg"]

_TRACEPARENT = "traceparent"


def seconds_arg(value: float | timedelta | None, what: str, *, allow_zero: bool = True) -> float:
    if value is None:
        return 0.0
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise ConfigurationError(f"{what} must be a number of seconds or a timedelta, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigurationError(f"{what} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    return float(seconds)


class Outbox:
    """Transactional outbox on PostgreSQL for ``bus``: messages written with :meth:`publish`
    / :meth:`send` inside the caller's transaction are published after it commits, and
    never when it rolls back::

        outbox = Outbox(bus, pool)                   # or a postgresql:// DSN
        async with bus, outbox:                      # the relay runs while the outbox is open
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("INSERT INTO orders ...")
                await outbox.publish(conn, "orders.created", OrderCreated(...), key="order-42")

    The message gets the same envelope as :meth:`Bus.publish` would give it (id, source,
    type, time, content type, headers, key; the caller's trace context) when it is written;
    the relay publishes it confirmed through the bus's publish middleware, at least once
    (a relay that dies after publishing and before marking leaves it to be published again:
    put the :class:`Inbox` on consumers). Messages of one destination and key are published
    in the order they were written (the order of commits across concurrent transactions).

    ``database`` is a ``postgresql://`` DSN (a pool is made on :meth:`start` and closed on
    :meth:`stop`) or an asyncpg pool (never closed here). The tables come from :func:`migrate`
    (or ``messagebus outbox migrate DSN``) in ``schema`` with ``table_prefix``.

    Relay options: ``relay=False`` writes only (another process relays); ``batch_size``
    rows per round; ``poll_interval`` seconds between polls when no NOTIFY arrives (also the
    latest a delayed message is published after its due time... never earlier);
    ``publish_timeout`` seconds a round's publish may take before it is tried again;
    ``retention`` how long sent rows are kept (deleted every ``cleanup_interval`` seconds);
    ``retry_max`` the longest retry delay of a message the broker refuses.

    Not thread-safe: use it from the event loop of its bus. Raises
    :class:`ConfigurationError` for a bad argument (before any I/O).
    """

    def __init__(
        self,
        bus: Bus,
        database: str | PgPool,
        *,
        schema: str = "public",
        table_prefix: str = "messagebus_",
        relay: bool = True,
        batch_size: int = 100,
        poll_interval: float | timedelta = 1.0,
        publish_timeout: float | timedelta = 30.0,
        retention: float | timedelta = timedelta(days=1),
        cleanup_interval: float | timedelta = 60.0,
        retry_max: float | timedelta = 60.0,
    ) -> None:
        if not isinstance(bus, Bus):
            raise ConfigurationError(f"Outbox needs a messagebus.Bus, got {type(bus).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
            raise ConfigurationError(f"batch_size must be an int from 1 to 10000, got {batch_size!r}")
        self.bus = bus
        self.tables = Tables(schema, table_prefix)
        self._db = Database(database, max_size=4)
        self._relay_enabled = bool(relay)
        self._settings = RelaySettings(
            batch_size=batch_size,
            poll_interval=seconds_arg(poll_interval, "poll_interval", allow_zero=False),
            publish_timeout=seconds_arg(publish_timeout, "publish_timeout", allow_zero=False),
            retention=seconds_arg(retention, "retention"),
            cleanup_interval=seconds_arg(cleanup_interval, "cleanup_interval", allow_zero=False),
            retry_max=seconds_arg(retry_max, "retry_max", allow_zero=False),
        )
        self._insert = (
            f"INSERT INTO {self.tables.outbox} (destination_kind, destination, message_key, headers, body, "
            "available_at) SELECT k, d, m, h::json, b, now() + s * interval '1 second' "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::float8[]) "
            "AS t(k, d, m, h, b, s)"
        )
        self._relay = Relay(self._db, self.tables, self._publish_checked, self._settings)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Outbox(service={self.bus.service!r}, tables={self.tables.outbox}, relay={self._task is not None})"

    # -- writing -----------------------------------------------------------------------

    async def publish(
        self,
        conn: object,
        topic: str,
        payload: object,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
    ) -> str:
        """Write ``payload`` for every subscription group of ``topic`` in ``conn``'s open
        transaction; it is published after the commit (``delay`` seconds later, at the
        earliest). Returns the message id (``Envelope.id`` on the consumer).

        ``conn`` is an asyncpg connection or a SQLAlchemy ``AsyncSession``/``AsyncConnection``
        (asyncpg driver) inside a transaction. Needs no running bus. Raises
        :class:`LifecycleError` outside a transaction, and like :meth:`Bus.publish` for a
        bad topic, key, headers or payload (:class:`InvalidDestination`, :class:`ConfigurationError`,
        :class:`InvalidHeaders`, :class:`EncodeError`); database errors propagate.
        """
        destination = Destination(DestinationKind.TOPIC, self.bus._name(topic, "topic"))
        message = self.bus._message(destination, payload, key, headers)
        await self._write(conn, [message], seconds_arg(delay, "delay"), "outbox.publish")
        return message.id

    async def send(
        self,
        conn: object,
        queue: str,
        payload: object,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
    ) -> str:
        """Write ``payload`` for work queue ``queue``; like :meth:`publish`."""
        destination = Destination(DestinationKind.QUEUE, self.bus._name(queue, "queue"))
        message = self.bus._message(destination, payload, key, headers)
        await self._write(conn, [message], seconds_arg(delay, "delay"), "outbox.send")
        return message.id

    async def publish_many(
        self,
        conn: object,
        topic: str,
        payloads: Iterable[object],
        *,
        key: str | Callable[[Any], str | None] | None = None,
        headers: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
    ) -> list[str]:
        """Write many payloads for ``topic`` in one statement; like :meth:`publish`, with
        ``key`` optionally a function of the payload. Returns the ids in order."""
        destination = Destination(DestinationKind.TOPIC, self.bus._name(topic, "topic"))
        messages = self.bus._messages(destination, payloads, key, headers)
        await self._write(conn, messages, seconds_arg(delay, "delay"), "outbox.publish_many")
        return [m.id for m in messages]

    async def send_many(
        self,
        conn: object,
        queue: str,
        payloads: Iterable[object],
        *,
        key: str | Callable[[Any], str | None] | None = None,
        headers: dict[str, str] | None = None,
        delay: float | timedelta | None = None,
    ) -> list[str]:
        """Write many payloads for work queue ``queue``; like :meth:`publish_many`."""
        destination = Destination(DestinationKind.QUEUE, self.bus._name(queue, "queue"))
        messages = self.bus._messages(destination, payloads, key, headers)
        await self._write(conn, messages, seconds_arg(delay, "delay"), "outbox.send_many")
        return [m.id for m in messages]

    async def _write(self, conn: object, messages: Sequence[OutgoingMessage], delay: float, what: str) -> None:
        if not messages:
            return
        pg = await raw_connection(conn, what)
        for message in messages:
            # The writer's trace context, so the consumer's span joins the request's trace
            # (the relay's publish keeps a traceparent that is already there).
            if _TRACEPARENT not in message.headers:
                propagate.inject(message.headers)
        await pg.execute(
            self._insert,
            [m.destination.kind.value for m in messages],
            [m.destination.name for m in messages],
            [m.key for m in messages],
            [json.dumps(m.headers) for m in messages],
            [m.body for m in messages],
            [delay] * len(messages),
        )

    # -- relaying ----------------------------------------------------------------------

    async def _publish_checked(self, messages: Sequence[OutgoingMessage]) -> None:
        if self.bus.state not in (BusState.RUNNING, BusState.STOPPING):
            raise LifecycleError(f"the outbox relay waits for its bus to run (it is {self.bus.state.value})")
        await self.bus._publish(messages)

    async def start(self) -> None:
        """Check the tables and start the relay (unless ``relay=False``). Needs a running
        bus. Raises :class:`LifecycleError` when the bus is not running or the outbox was
        started, :class:`ConfigurationError` when the tables are missing or older than this
        version (run ``messagebus outbox migrate DSN``), :class:`ConnectError` when the
        database cannot be reached."""
        if self._task is not None:
            raise LifecycleError("this outbox is already started")
        if self._relay_enabled and self.bus.state is not BusState.RUNNING:
            raise LifecycleError(
                f"start the bus before the outbox relay ('async with bus, outbox:'); the bus is {self.bus.state.value}"
            )
        pool = await self._db.pool()
        async with pool.acquire() as conn:
            version = await schema_version(conn, self.tables)
        if version < len(MIGRATIONS):
            raise ConfigurationError(
                f"the outbox tables in schema {self.tables.schema!r} (prefix {self.tables.prefix!r}) are at version "
                f"{version}, this messagebus needs {len(MIGRATIONS)}: run 'messagebus outbox migrate DSN "
                f"--schema {self.tables.schema} --table-prefix {self.tables.prefix}' or "
                "'await messagebus.outbox.migrate(...)'"
            )
        if self._relay_enabled:
            self._task = asyncio.create_task(self._relay.run(), name=f"messagebus-outbox-relay-{self.bus.service}")

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the relay after the round in progress (cancelled after ``timeout`` seconds,
        default ``publish_timeout`` + 5: its rows are then published again later), and close
        the pool this outbox made. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            self._relay.stop()
            limit = timeout if timeout is not None else self._settings.publish_timeout + 5.0
            done, _ = await asyncio.wait({task}, timeout=limit)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._db.close()

    async def relay_once(self) -> int:
        """Publish one batch of committed, due rows now; returns how many were settled.
        For tests and for relaying from a scheduled job instead of a task. Needs a running bus."""
        return await self._relay.relay_once()

    async def cleanup(self) -> int:
        """Delete rows sent longer than ``retention`` ago now; returns how many. The relay
        also does it every ``cleanup_interval`` seconds."""
        return await self._relay.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
