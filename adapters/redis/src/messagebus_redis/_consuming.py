"""Consuming: one Redis consumer (of the subscription's consumer group) per subscription,
reading the main stream and the group's retry stream with one blocking XREADGROUP.

A delivered entry stays in the group's pending list (PEL) until acked. While a handler runs,
its entries' idle time is reset every tick (a lease the consumer keeps); an entry idle longer
than ``visibility_timeout`` (its consumer crashed, or a read's reply was lost) is claimed by
any consumer of the group and counted as a new attempt. A retry or hand-back copies the
entry to the retry stream (now) or to the due set (later) and acks it, in one Lua script;
every consumer's tick moves due retries back. Each delivery's ``native`` is a
:class:`RedisEntry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from redis import exceptions as rex

from messagebus import ConsumeError
from messagebus.transports import (
    AttributeValue,
    Backoff,
    Batcher,
    ConsumerBase,
    Delivery,
    DeliveryHandler,
    Destination,
    describe_error,
    log_ignored,
)

from ._codec import decode
from ._connection import Connection, logger
from ._errors import ERRORS
from ._telemetry import delivery_attributes
from ._topology import DUE, REDELIVER, declare, names_for

__all__ = ["RedisConsumer", "RedisEntry"]

#: Idle time given to entries a stopping consumer leaves pending: claimable at once.
_ABANDONED_MS = 1_000_000_000


class RedisEntry(NamedTuple):
    """A received stream entry: what ``Envelope.raw`` is on this transport."""

    stream: str
    id: str
    fields: Mapping[bytes, bytes]


class RedisConsumer(ConsumerBase):
    """One consumer of a group (a topic's group or a queue). At most ``concurrency`` handler
    calls at once; a read asks for as many entries as there are free workers."""

    def __init__(self, conn: Connection, source: Destination, handler: DeliveryHandler, concurrency: int) -> None:
        self.names = names = names_for(source, conn.options.prefix)
        capacity = max(concurrency, conn.options.prefetch)
        super().__init__(handler, concurrency, name=f"{names.stream}/{names.group}", log=logger, capacity=capacity)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._conn, self._source = conn, source
        self._options = o = conn.options
        # redis-py's command stubs type replies as unions of every shape: read them as Any.
        self._client: Any = conn.require()
        self._cluster = conn.kind == "cluster"
        client = self._client
        self._reader: Any = conn.dedicated(self.consumer)
        self._vis_ms = int(o.visibility_timeout * 1000)
        self._tick_seconds = min(1.0, o.visibility_timeout / 3)
        self._tick = asyncio.Event()
        self._inflight: set[tuple[str, str]] = set()  # delivered, not settled: renewed each tick
        self._unacked: set[tuple[str, str]] = set()  # handled, ack failed: acked again each tick
        self._deletes = {names.retry} | ({names.stream} if names.queue else set())
        self._redeliver = client.register_script(REDELIVER)
        self._move_due = client.register_script(DUE)
        self._acks: Batcher[tuple[str, str], None] = Batcher(
            self._ack_batch, max_entries=1000, map_error=self._ack_error, track=self.track
        )

    async def start_consuming(self) -> None:
        """Create the group (if new: at the source's ``start_from``, else the URL option's;
        one that exists is kept where it is, said by ``log_ignored``) and start reading.
        Raises :class:`TopologyError`."""
        if await declare(self._client, self.names, self._options.start_from, self._source.start_from):
            log_ignored(self._source, "redis")
        self.start()
        fetching = self.fetch_loop(self._fetch, describe_error=self._fetch_error, backoff=Backoff(0.1, 2.0))
        self.spawn(fetching, name=f"redis-read-{self.name}", loop=True)
        self.spawn(self._maintain(), name=f"redis-tick-{self.name}", loop=True)

    # -- DeliverySource ---------------------------------------------------------------------

    def describe(self) -> str:
        """The stream and group, for messages."""
        return f"Redis stream {self.names.stream!r} (group {self.names.group!r})"

    def settle_ack(self, delivery: Delivery) -> None:
        """XACK the entry (and XDEL it from a stream only this group reads) in the background,
        batched with the acks of the same loop turn; :meth:`close` sends the last ones. An ack
        that fails leaves the entry pending: it is claimed again after ``visibility_timeout``
        (a duplicate, never a loss)."""
        entry: RedisEntry = delivery.native
        ref = (entry.stream, entry.id)
        self._inflight.discard(ref)
        self._acks.add(ref).add_done_callback(functools.partial(self._acked, ref))

    def _acked(self, ref: tuple[str, str], done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            # Sent again by the tick (XACK is idempotent) before anyone claims it: a cut
            # connection does not turn handled entries into duplicates.
            self._unacked.add(ref)
            self.log.debug("%s; acking again on the next tick", done.exception())

    async def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> None:
        """Copy the entry, with ``attempt + 1`` and ``headers``, to the retry stream or the due
        set, and ack it, atomically (only while it is still this consumer's)."""
        await self._hand_over([delivery], delay, headers)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._tick.set)

    async def release(self, deliveries: Sequence[Delivery]) -> None:
        """Copy each entry still pending for this consumer to the retry stream (attempt + 1)
        and ack it; entries another consumer claimed meanwhile are left alone."""
        try:
            await self._hand_over(deliveries, 0.0, {})
        finally:
            for d in deliveries:
                self._inflight.discard((d.native.stream, d.native.id))

    def attributes_of(self, delivery: Delivery) -> Mapping[str, AttributeValue]:
        """Telemetry attributes of a delivery (read once, when traced)."""
        entry: RedisEntry = delivery.native
        return delivery_attributes(entry.stream, entry.id, self.consumer, len(delivery.body))

    async def _hand_over(self, deliveries: Sequence[Delivery], delay: float, headers: Mapping[str, str]) -> None:
        n = self.names
        pairs = [x for item in headers.items() for x in item]
        delay_ms = math.ceil(delay * 1000)  # never early: due times are whole milliseconds
        # A cluster pipeline refuses scripts: there each runs alone (its keys share one slot).
        pipe = None if self._cluster else self._client.pipeline(transaction=False)
        for d in deliveries:
            entry: RedisEntry = d.native
            delete = "1" if entry.stream in self._deletes else "0"
            args: list[str | int] = [n.group, self.consumer, entry.id, delay_ms, d.attempt + 1, delete, *pairs]
            await self._redeliver(
                keys=[entry.stream, n.retry, n.due], args=args, client=self._client if pipe is None else pipe
            )
        if pipe is not None:
            await pipe.execute()
        for d in deliveries:
            self._inflight.discard((d.native.stream, d.native.id))

    async def _ack_batch(self, entries: list[tuple[str, str]]) -> list[None]:
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        pipe = self._client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.names.group, *ids)
            if stream in self._deletes:
                pipe.xdel(stream, *ids)
        await pipe.execute()
        return [None] * len(entries)

    def _ack_error(self, exc: Exception) -> BaseException:
        return ERRORS.map(exc, ConsumeError, f"cannot ack a message from {self.describe()}")

    # -- receiving --------------------------------------------------------------------------

    async def _fetch(self, room: int) -> list[Delivery]:
        n = self.names
        block = int(self._options.block_time * 1000)
        try:
            response = await self._reader.xreadgroup(n.group, self.consumer, {n.stream: ">", n.retry: ">"}, room, block)
        except rex.ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            # The stream or group was deleted (or the server lost its data): declare again.
            await declare(self._client, n, self._options.start_from)
            return []
        if not response:
            return []
        streams = response.items() if isinstance(response, dict) else response
        return [self._delivery(s, i, f, 0) for s, entries in streams for i, f in self._entries(entries)]

    @staticmethod
    def _entries(entries: Any) -> Iterable[tuple[bytes, Any]]:
        # Pairs (RESP2 tuples, RESP3 lists); fields None: an entry deleted since it was delivered.
        for entry_id, fields in entries:
            if fields is not None:
                yield entry_id, fields

    def _delivery(self, stream: Any, entry_id: bytes, fields: Any, extra: int) -> Delivery:
        name = stream.decode() if isinstance(stream, bytes) else str(stream)
        ident = entry_id.decode()
        body, headers, key, attempt = decode(fields)
        self._inflight.add((name, ident))
        return Delivery(self, RedisEntry(name, ident, fields), body, headers, key, attempt + extra)

    def _fetch_error(self, exc: Exception) -> str:
        return f"reading {self.describe()} failed: {describe_error(exc)}"

    # -- the tick: leases, claims, due retries ----------------------------------------------

    async def _maintain(self) -> None:
        backoff = Backoff(self._tick_seconds, 5.0)
        while not self.stopping.is_set():
            wait = self._tick_seconds
            try:
                await self._ack_again()
                await self._extend()
                await self._claim()
                _, next_ms = await self._move_due(keys=[self.names.due, self.names.retry], args=[500])
                backoff.reset()
                if next_ms >= 0:
                    wait = min(wait, next_ms / 1000)
            except Exception as exc:
                self.log.warning("maintaining %s failed: %s; retrying", self.describe(), describe_error(exc))
                wait = backoff.next()
            self._tick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), wait)

    async def _ack_again(self) -> None:
        if self._unacked:
            refs = list(self._unacked)
            await self._ack_batch(refs)
            self._unacked.difference_update(refs)

    async def _extend(self) -> None:
        """Reset the idle time of every entry this consumer holds or has handled but not yet
        acked (XCLAIM JUSTID: no new delivery is counted), so no other consumer claims it."""
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id in self._inflight | self._unacked:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            await self._client.xclaim(stream, self.names.group, self.consumer, 0, ids, justid=True)

    async def _claim(self) -> None:
        """Claim entries idle longer than ``visibility_timeout`` (a crashed consumer's, a lost
        read's) and hand them to the workers, each counted as one more attempt."""
        room = self.pool.free
        for stream in (self.names.stream, self.names.retry):
            if room <= 0 or self.stopping.is_set():
                return
            group = self.names.group
            pending = await self._client.xpending_range(stream, group, "-", "+", room, idle=self._vis_ms)
            counts = {p["message_id"]: p["times_delivered"] for p in pending}
            held = self._inflight | self._unacked
            ids = [i for i in counts if (stream, i.decode()) not in held]
            if not ids:
                continue
            claimed = await self._client.xclaim(stream, group, self.consumer, self._vis_ms, ids)
            for entry_id, fields in claimed:
                if fields is not None:
                    room -= 1
                    await self.submit(self._delivery(stream, entry_id, fields, counts.get(entry_id, 1)))

    # -- stopping -----------------------------------------------------------------------------

    async def stop_fetching(self) -> None:
        """Wake the tick and unblock the read, so both see ``stopping`` now."""
        self._tick.set()
        try:
            for client in await self._client.client_list():
                if client.get("name") == self.consumer:
                    await self._client.client_unblock(int(client["id"]))
        except Exception as exc:
            self.log.debug("unblocking the read of %s failed: %s", self.describe(), describe_error(exc))

    async def close(self) -> None:
        """Send the last acks, close the read connection, and leave every entry still pending
        for this consumer (a read whose reply never arrived) claimable by the others at once;
        forget the consumer name when it holds nothing."""
        await self._acks.drain()
        with contextlib.suppress(Exception):
            await self._ack_again()
        with contextlib.suppress(Exception):
            await self._reader.aclose()
        n, client = self.names, self._client
        try:
            for stream in (n.stream, n.retry):
                pending = await client.xpending_range(stream, n.group, "-", "+", 10_000, consumername=self.consumer)
                ids = [p["message_id"] for p in pending]
                if ids:
                    await client.xclaim(stream, n.group, self.consumer, 0, ids, idle=_ABANDONED_MS, justid=True)
                else:
                    await client.xgroup_delconsumer(stream, n.group, self.consumer)
        except Exception as exc:
            self.log.debug("cleaning up consumer %s failed: %s", self.consumer, describe_error(exc))
