"""Publishing: sizes checked before anything is sent; concurrent publish calls pipelined
together by a sequential :class:`~messagebus.transports.Batcher` (one round trip for many
calls, in call order); a pipeline cut by a lost connection sent again until
``publish_timeout`` (at-least-once: the copy may be stored twice, never lost)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from messagebus import MessageBusError, MessageTooLarge, PublishError
from messagebus.transports import (
    STATS_TOPIC,
    Backoff,
    Batcher,
    Destination,
    DestinationKind,
    OutgoingMessage,
    describe_error,
)

from ._codec import ATTEMPT, Fields, encode
from ._connection import Connection, logger
from ._errors import ERRORS, is_transient
from ._topology import TRIM, stream_key

__all__ = ["Publisher"]

Entries = list[tuple[str, Fields]]
#: Seconds between two trims of one topic stream.
TRIM_EVERY = 1.0
#: Entries the ``messagebus.stats`` stream keeps (about): every bus adds one every 10 s, and a
#: stream without maxlen or retention options would otherwise grow for ever.
STATS_KEEP = 1_000


class Publisher:
    """The publishing side of one transport. Safe to call from many tasks of one event loop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._options = conn.options
        o = conn.options
        self._trim_args = (
            None
            if o.maxlen is None and o.retention is None
            else (
                -1 if o.maxlen is None else o.maxlen,
                -1 if o.retention is None else int(o.retention * 1000),
            )
        )
        self._trimmed: dict[str, float] = {}
        self._stats_stream = stream_key(Destination(DestinationKind.TOPIC, STATS_TOPIC), o.prefix)
        self._batcher: Batcher[Entries, None] = Batcher(
            self._send, max_entries=200, sequential=True, map_error=self._error
        )

    async def publish(self, messages: Sequence[OutgoingMessage], to: str | None = None) -> None:
        """XADD every message (to stream ``to`` instead of its destination's, as a first
        attempt, when given: one group's retry stream); return once Redis replied for all.
        Raises :class:`MessageTooLarge` (nothing sent), :class:`LifecycleError` (not
        connected), :class:`ConnectError` (Redis unreachable for ``publish_timeout``) or
        :class:`PublishError`."""
        limit = self._options.max_message_size
        prefix = self._options.prefix
        entries: Entries = []
        for message in messages:
            if len(message.body) > limit:
                raise MessageTooLarge(
                    f"message to {message.destination.name!r} is {len(message.body)} bytes; this Redis transport "
                    f"allows at most {limit} (set ?max_message_size=N, up to Redis' proto-max-bulk-len)"
                )
            fields = encode(message)
            if to is not None:
                fields[ATTEMPT] = "1"
            entries.append((to or stream_key(message.destination, prefix), fields))
        self._conn.require()
        if entries:
            await self._batcher.add(entries)

    async def add(self, stream: str, fields: Fields) -> None:
        """XADD one entry (with the same retries as :meth:`publish`)."""
        await self._batcher.add([(stream, fields)])

    async def drain(self) -> None:
        """Wait for every publish in flight."""
        await self._batcher.drain()

    def _trims(self, entries: list[Entries]) -> list[str]:
        if self._trim_args is None:
            return []
        now = time.monotonic()
        due = {s for batch in entries for s, _ in batch if s.startswith(self._options.prefix + "t:")}
        due = {s for s in due if now - self._trimmed.get(s, 0.0) >= TRIM_EVERY}
        for stream in due:
            self._trimmed[stream] = now
        return sorted(due)

    async def _send(self, batches: list[Entries]) -> list[BaseException | None]:
        deadline = time.monotonic() + self._options.publish_timeout
        backoff = Backoff(0.05, 1.0)
        trims = self._trims(batches)
        while True:
            client = self._conn.require()
            pipe = client.pipeline(transaction=False)
            for batch in batches:
                for stream, fields in batch:
                    if stream == self._stats_stream:
                        pipe.xadd(stream, fields, maxlen=STATS_KEEP, approximate=True)  # type: ignore[arg-type]
                    else:
                        pipe.xadd(stream, fields)  # type: ignore[arg-type]
            for stream in trims:
                pipe.eval(TRIM, 1, stream, *self._trim_args or ())
            try:
                results = await pipe.execute(raise_on_error=False)
                break
            except Exception as exc:
                delay = backoff.next()
                if not is_transient(exc) or time.monotonic() + delay >= deadline:
                    raise
                logger.warning("publishing to Redis failed (%s); sending again", describe_error(exc))
                await asyncio.sleep(delay)
        out: list[BaseException | None] = []
        i = 0
        for batch in batches:
            failed = next((r for r in results[i : i + len(batch)] if isinstance(r, Exception)), None)
            i += len(batch)
            out.append(None if failed is None else self._error(failed))
        for trimmed in results[i:]:
            if isinstance(trimmed, Exception):
                logger.warning("trimming a Redis stream failed: %s", trimmed)
        return out

    def _error(self, exc: Exception) -> MessageBusError:
        return ERRORS.map(exc, PublishError, f"publishing to Redis at {self._conn.address}")
