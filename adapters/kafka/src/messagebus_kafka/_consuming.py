"""Consuming: one aiokafka consumer per subscription (its own consumer group), subscribed to
the main topic and the group's retry topic.

Offsets are committed manually: ``offset + 1`` of the lowest contiguous settled record of each
partition, never past a record whose handler has not settled (or was cancelled). Retries are
re-published to the retry topic with a due time; the consumer holds due-later records in
memory, each on its own timer (a retry partition is paused only while ``fetch_max_records`` of
its records are held), so nothing seeks back, a long delay does not hold back a shorter one
behind it, and no main partition is blocked. Each delivery's ``token`` is its partition's :class:`_Partition`.

A pattern subscription subscribes to a topic regex (plus its retry topic); its deliveries name
the record's topic, and its retry records carry that topic in a header. A reply queue's
consumer assigns itself every partition of its topic and retry topic: no group join, commits
as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import errors as kerr
from aiokafka.structs import ConsumerRecord, TopicPartition

from messagebus.transports import (
    AttributeValue,
    Backoff,
    ConsumerBase,
    Delivery,
    DeliveryHandler,
    Destination,
    DestinationKind,
    Position,
    headers,
    is_reply_queue,
    log_ignored,
)

from ._admin import end_offsets
from ._codec import DUE, TOPIC, RecordHeaders, encode_headers
from ._connection import Connection, quietly
from ._publishing import Publisher
from ._telemetry import delivery_attributes
from ._topology import subscription_names

__all__ = ["KafkaConsumer"]

logger = logging.getLogger("messagebus.kafka")

_ATTEMPT = headers.ATTEMPT
_INTERNAL = frozenset({_ATTEMPT, DUE, TOPIC})
_Record: TypeAlias = ConsumerRecord[Any, Any]


class _Partition:
    """Commit bookkeeping of one assigned partition (one assignment generation)."""

    __slots__ = ("active", "committed", "done", "drained", "held", "pending", "position", "revoked", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: deque[int] = deque()  # received offsets not yet covered by position
        self.done: set[int] = set()  # settled offsets above the lowest unsettled one
        self.position: int | None = None  # next offset to commit (last contiguous settled + 1)
        self.committed: int | None = None
        self.revoked = False
        self.active = 0  # dispatched deliveries whose handler call has not returned
        self.held: set[Delivery] = set()  # retry records waiting for their due time
        self.drained: asyncio.Future[None] | None = None

    def settle(self, offset: int) -> bool:
        """Mark ``offset`` settled; True when the commit position moved."""
        pending = self.pending
        if pending and pending[0] == offset:
            pending.popleft()
            position = offset + 1
            done = self.done
            while pending and pending[0] in done:
                position = pending.popleft()
                done.discard(position)
                position += 1
            self.position = position
            return True
        self.done.add(offset)
        return False

    def finished(self) -> None:
        """A dispatched delivery's handler call returned (or never ran)."""
        self.active -= 1
        if not self.active and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)


def _delivery(source: KafkaConsumer, st: _Partition, record: _Record, attempt: int, topic: str | None) -> Delivery:
    value: bytes | None = record.value
    key: bytes | None = record.key
    text = key.decode("utf-8", "replace") if key is not None else None
    wire = RecordHeaders(record.headers, record.timestamp)
    return Delivery(source, record, value if value is not None else b"", wire, text, attempt, st, topic)


async def _start_offsets(
    connection: Connection, consumer: AIOKafkaConsumer, tps: list[TopicPartition], start: Position
) -> dict[TopicPartition, int]:
    """Where a new topic group starts on each of ``tps``: the end now (``None``), the first
    retained offset (``"earliest"``), or the first record stamped at or after ``start``; the end
    where none is (Tansu answers that with timestamp -1 rather than no offset)."""
    if start == "earliest":
        return dict(await consumer.beginning_offsets(tps))
    # The high watermark: Tansu's ListOffsets "latest" can point into the last batch. Where
    # that raw lookup fails (a new topic without a leader yet), aiokafka's, which retries.
    try:
        ends = await end_offsets(connection, sorted({tp.topic for tp in tps}))
    except kerr.KafkaError:
        ends = {}
    if missing := [tp for tp in tps if tp not in ends]:
        ends.update(await consumer.end_offsets(missing))
    if start is None:
        return {tp: ends[tp] for tp in tps}
    at_ms = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)  # exact: no float
    found = await consumer.offsets_for_times(dict.fromkeys(tps, at_ms))
    return {tp: ends[tp] if at is None or at.timestamp < 0 else at.offset for tp, at in found.items()}


class KafkaConsumer(ConsumerBase, ConsumerRebalanceListener):  # type: ignore[misc]
    """A running subscription: one aiokafka consumer in the subscription's consumer group.

    Returned by :meth:`KafkaTransport.subscribe`; use from its event loop. ``stop`` is
    idempotent. With ``concurrency=1`` handlers run inline in the fetch task (no worker, no
    task switch per message); otherwise in the core's worker pool, which may queue a whole
    fetch hand-over. Deliveries' ``raw`` is the aiokafka ``ConsumerRecord``; ``attempt``
    counts retries only (an uncommitted record the group gets again keeps its count).
    """

    def __init__(self, publisher: Publisher, source: Destination, handler: DeliveryHandler, concurrency: int) -> None:
        connection = publisher.connection
        names = subscription_names(source)
        o = connection.options
        # One fetch hand-over may wait whole in the pool: the records are in memory anyway.
        capacity = concurrency + o.fetch_max_records
        super().__init__(handler, concurrency, name=names.group_id, capacity=capacity, log=logger)
        self._connection, self._publisher, self.source, self.names = connection, publisher, source, names
        self.group_id = names.group_id
        self.inline = concurrency == 1
        #: A pattern subscription (deliveries name their topic)
        self.pattern = names.pattern is not None
        #: A dead-letter queue (read by the operator's tools, which hand back what they only looked at)
        self.dead_letters = source.kind is DestinationKind.QUEUE and source.name.endswith(".dlq")
        self._max_records = o.fetch_max_records
        self._revoke_wait = o.rebalance_timeout_ms / 2000
        self._consumer: AIOKafkaConsumer | None = None
        self._parts: dict[TopicPartition, _Partition] = {}
        self._joined = asyncio.Event()
        self._start_offsets: dict[TopicPartition, int] = {}
        self._ready: deque[Delivery] = deque()
        self._dirty = asyncio.Event()
        self._polling, self._grace = False, 0.0
        self._fetch_task: asyncio.Task[None] | None = None

    @property
    def assignment(self) -> set[TopicPartition]:
        """Partitions currently assigned to this consumer."""
        return set(self._parts)

    # -- DeliverySource ------------------------------------------------------------------

    def describe(self) -> str:
        """The consumer group, for messages."""
        return f"Kafka group {self.group_id!r}"

    def attributes_of(self, delivery: Delivery) -> Mapping[str, AttributeValue]:
        """Kafka telemetry attributes: key, offset, partition, topic, consumer group."""
        return delivery_attributes(delivery.native, self.group_id)

    def settle_ack(self, delivery: Delivery) -> None:
        """Mark the record done; its offset is committed (in the background) once every
        earlier record of its partition is settled too. Never waits for the broker."""
        st: _Partition = delivery.token
        if st.settle(delivery.native.offset) and not st.revoked:
            self._dirty.set()

    async def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> None:
        """Re-publish the record to the group's retry topic with ``attempt + 1``, a due time
        and ``headers``; once Kafka confirmed it, settle the original. The main partition is
        never held up."""
        record: _Record = delivery.native
        extra_wire = encode_headers({k: v for k, v in headers.items() if k not in _INTERNAL})
        replaced = {k for k, _ in extra_wire} | _INTERNAL
        wire = [(k, v) for k, v in record.headers if k not in replaced]
        wire.extend(extra_wire)
        wire.append((_ATTEMPT, str(delivery.attempt + 1).encode()))
        wire.append((DUE, str(int((time.time() + delay) * 1000)).encode()))
        if delivery.topic is not None:
            wire.append((TOPIC, delivery.topic.encode()))
        await self._publisher.send_record(self.names.retry_topic, record.value, record.key, wire)
        self.settle_ack(delivery)

    def release(self, deliveries: Sequence[Delivery]) -> Awaitable[Any] | None:
        """Nothing to send: an unsettled record stays uncommitted, so the group gets it again
        after a rebalance or restart (commits never pass it). A dead-letter queue's records
        are re-queued instead (to its retry topic as a redelivery, then settled): a tool that
        looked at some and took one behind them (a replay by id) must not get that one back."""
        return asyncio.gather(*(self.settle_redeliver(d, 0.0, {}) for d in deliveries)) if self.dead_letters else None

    # -- starting and rebalancing --------------------------------------------------------

    async def start_consuming(self) -> None:
        """Start the aiokafka consumer and the fetch/commit tasks (the group join goes on in
        the background). Raises :class:`ConnectError`."""
        o = self._connection.options
        same: tuple[str, ...] = ("session_timeout_ms", "heartbeat_interval_ms", "rebalance_timeout_ms")
        same += ("max_poll_interval_ms", "fetch_max_wait_ms", "max_partition_fetch_bytes", "metadata_max_age_ms")
        consumer = AIOKafkaConsumer(
            **self._connection.client_kwargs(),
            **{name: getattr(o, name) for name in same},
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=o.fetch_max_records,
        )
        names, source = self.names, self.source
        own = source.kind is DestinationKind.QUEUE and is_reply_queue(source.name)
        try:
            await consumer.start()
            producer, _ = self._connection.require()
            topics = [names.topic, names.retry_topic] if own else [names.topic]
            if names.pattern is not None:
                topics = [t for t in await consumer.topics() if re.match(names.pattern, t) and t != names.retry_topic]
            tps = [TopicPartition(t, p) for t in topics for p in sorted(await producer.partitions_for(t))]
            if source.kind is DestinationKind.TOPIC and source.group and tps:
                # Taken before subscribe returns: a new group sees every message published after.
                self._start_offsets = await _start_offsets(self._connection, consumer, tps, source.start_from)
                if source.start_from is not None:  # the group exists if it committed anywhere
                    admin = self._connection.require()[1].admin
                    done = await admin.list_consumer_group_offsets(self.group_id, partitions=tps)
                    if any(o.offset >= 0 for o in done.values()):
                        log_ignored(source, "kafka")
        except Exception as exc:
            await quietly(consumer.stop())
            raise self._connection.connect_error(exc) from exc
        if own:  # its one owner takes every partition: no group join (what made a first request slow)
            consumer.assign(tps)
            self._parts = {tp: _Partition(tp) for tp in tps}
            self._joined.set()
        else:
            topics = [] if names.pattern else [names.topic, names.retry_topic]
            consumer.subscribe(topics, pattern=names.pattern, listener=self)
        self._consumer = consumer
        if not self.inline:
            self.start()
        self._fetch_task = self.spawn(self._fetch_loop(), name=f"kafka-fetch-{self.group_id}", loop=True)
        self.spawn(self._commit_loop(), name=f"kafka-commit-{self.group_id}", loop=True)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """aiokafka's rebalance callback: new partition states; a new group's start offsets."""
        try:
            await self._on_assigned(set(assigned))
        except Exception:
            self.log.exception("handling assigned partitions of %s failed", self.group_id)
        finally:
            self._joined.set()

    async def ready(self) -> None:
        """Return once this consumer has joined its group and received its assignment (it may
        be empty when other members hold every partition). Cancel it to stop waiting."""
        await self._joined.wait()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """aiokafka's rebalance callback: let the partitions' handlers finish, then commit."""
        try:
            await self._on_revoked(set(revoked))
        except Exception:
            self.log.exception("handling revoked partitions of %s failed", self.group_id)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        for tp in assigned:
            self._parts[tp] = _Partition(tp)
        if not self._start_offsets:
            return
        initial: dict[TopicPartition, int] = {}
        for tp in assigned:
            start = self._start_offsets.get(tp)
            if start is not None and await consumer.committed(tp) is None:
                consumer.seek(tp, start)
                initial[tp] = start
        if initial:
            # Commit the starting point at once so another member taking the partition over
            # later starts here too, not at its own (later) subscribe time.
            try:
                await consumer.commit(initial)
            except kerr.KafkaError as exc:
                self.log.warning("cannot commit start offsets of %s: %s", self.group_id, exc)
            for tp, offset in initial.items():
                self._parts[tp].committed = offset

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        states = [self._parts.pop(tp) for tp in revoked if tp in self._parts]
        if not states:
            return
        for st in states:
            # The new owner reads held retry records again from the last commit.
            self.drop_held(list(st.held))
            st.held.clear()
            st.revoked = True
        if not self.stopping.is_set():
            # Let handlers of these partitions finish (bounded) so their offsets are
            # committed before another member takes over; queued ones are skipped.
            loop = asyncio.get_running_loop()
            busy: list[asyncio.Future[None]] = []
            for st in states:
                if st.active:
                    st.drained = loop.create_future()
                    busy.append(st.drained)
            if busy:
                await asyncio.wait(busy, timeout=self._revoke_wait)
        await self._commit(states)

    # -- fetching and dispatch -----------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        retry_topic = self.names.retry_topic
        pattern = self.pattern
        parts = self._parts
        inline = self.inline
        stopping = self.stopping
        # aiokafka retries connection problems itself; whatever reaches us is logged and
        # retried with back-off, so the consumer never dies silently nor spins.
        backoff = Backoff(0.1, 5.0)
        while not stopping.is_set():
            if self._ready:
                ready, self._ready = self._ready, deque()
                for delivery in ready:
                    if stopping.is_set():
                        return
                    if not delivery.token.revoked:
                        await self._dispatch(delivery)
                continue
            self._polling = True
            try:
                batch = await consumer.getmany(timeout_ms=50 if self.held else 500, max_records=self._max_records)
            except Exception as exc:
                self.log.warning("fetch failed for group %s: %r; retrying", self.group_id, exc)
                await backoff.wait(stopping)
                continue
            finally:
                self._polling = False
            backoff.reset()
            if not batch:
                continue
            # Look the partition states up before any await: a rebalance may run in between.
            work = [(parts.get(tp), tp.topic == retry_topic, records) for tp, records in batch.items()]
            now_ms = time.time() * 1000
            for st, is_retry, records in work:
                if st is None:
                    continue
                if inline and not is_retry:
                    await self._handle_in_order(st, records)
                    continue
                for record in records:
                    if st.revoked or stopping.is_set():
                        break
                    st.pending.append(record.offset)
                    if is_retry:
                        delivery, due = self._retry_delivery(st, record)
                        if due > now_ms:
                            self._hold(delivery, due)
                            continue
                    else:
                        delivery = _delivery(self, st, record, 1, record.topic if pattern else None)
                    if inline or not self.submit_nowait(delivery):
                        await self._dispatch(delivery)

    async def _handle_in_order(self, st: _Partition, records: list[_Record]) -> None:
        """Concurrency 1: handle ``records`` of one main partition one after another, right
        in the fetch task (no task switch, no queue: the hot path of a single consumer)."""
        handler = self.handler
        pending = st.pending
        stopping = self.stopping
        topic = st.tp.topic if self.pattern else None
        # Counted active for the whole run: a revoke waits for the handler in progress, and
        # the loop stops at the next record once it sees the partition revoked.
        st.active += 1
        try:
            for record in records:
                if st.revoked or stopping.is_set():
                    return
                pending.append(record.offset)
                try:
                    await handler(_delivery(self, st, record, 1, topic))
                except Exception:
                    # The bus's handler settles every outcome itself; this is a bug guard. The
                    # record stays unsettled, so it is redelivered later.
                    self.log.exception("delivery handler failed unexpectedly")
        finally:
            st.finished()

    def _retry_delivery(self, st: _Partition, record: _Record) -> tuple[Delivery, float]:
        attempt, due, topic = 2, 0.0, None
        for k, v in record.headers:
            if k == _ATTEMPT:
                with contextlib.suppress(ValueError):
                    attempt = max(int(v), 1)
            elif k == DUE:
                with contextlib.suppress(ValueError):
                    due = float(v)
            elif k == TOPIC:
                topic = v.decode("utf-8", "replace")
        return _delivery(self, st, record, attempt, topic), due

    def _hold(self, delivery: Delivery, due_ms: float) -> None:
        # Each held record has its own timer, so a long delay never holds back a shorter one
        # behind it. Only with fetch_max_records of them held is this retry partition paused
        # until one is due (bounded memory, no seek, no busy loop); main partitions keep flowing.
        st: _Partition = delivery.token
        st.held.add(delivery)
        if len(st.held) == self._max_records:
            assert self._consumer is not None
            self._consumer.pause(st.tp)
        self.hold(delivery, due_ms / 1000 - time.time(), self._due)

    def _due(self, delivery: Delivery) -> None:
        # Not called after stop began nor for a revoked partition (drop_held).
        st: _Partition = delivery.token
        st.held.discard(delivery)
        self._ready.append(delivery)  # the fetch loop dispatches it (inline or to the pool)
        if len(st.held) == self._max_records - 1 and self._consumer is not None:
            with contextlib.suppress(kerr.IllegalStateError):
                self._consumer.resume(st.tp)

    def submit_nowait(self, delivery: Delivery) -> bool:
        """Hand ``delivery`` to the pool if it has room (no coroutine per message on the
        fetch task's hot path), counting it active on its partition; ``False`` when the
        caller must ``await _dispatch`` instead."""
        pool = self.pool
        if not pool.free:
            return False
        delivery.token.active += 1
        pool.submit_nowait(delivery)
        return True

    async def _dispatch(self, delivery: Delivery) -> None:
        st: _Partition = delivery.token
        st.active += 1
        if self.inline:
            try:
                await self._run(delivery)
            except Exception:
                self.log.exception("delivery handler failed unexpectedly")
            return
        await self.pool.wait_for_space()
        if self.stopping.is_set() or st.revoked:
            st.finished()
            return
        self.pool.submit_nowait(delivery)

    def pool_handler(self, handler: DeliveryHandler) -> DeliveryHandler:
        """The pool runs :meth:`_run`, which wraps the bus's handler for partitions."""
        return self._run

    async def _run(self, delivery: Any) -> None:
        # The pool's handler (see pool_handler): skips records of revoked
        # partitions and keeps the partition's active count. An unsettled delivery needs no
        # hand-back on Kafka (see release).
        st: _Partition = delivery.token
        try:
            if not st.revoked:
                await self.handler(delivery)
        finally:
            st.finished()

    # -- committing ----------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        # One commit in flight at a time: acks that arrive meanwhile are batched into the
        # next one, so the commit rate adapts to the load.
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._commit(list(self._parts.values()))

    async def _commit(self, states: Sequence[_Partition]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for st in states:
            position = st.position
            if position is not None and position != st.committed:
                offsets[st.tp] = position
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except (kerr.CommitFailedError, kerr.IllegalStateError) as exc:
            # The group rebalanced: the partitions' new owner resumes from the last commit.
            self.log.info("commit skipped for group %s after a rebalance: %s", self.group_id, exc)
            return
        except kerr.KafkaError as exc:
            self.log.warning("commit failed for group %s: %s", self.group_id, exc)
            self._dirty.set()
            return
        for st in states:
            if st.tp in offsets:
                st.committed = max(offsets[st.tp], st.committed or 0)

    # -- stopping ------------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Stop fetching, give in-flight handlers up to ``grace`` seconds, cancel the rest,
        commit what was settled and leave the group. Unsettled records stay uncommitted and
        are redelivered to the group. Idempotent; concurrent calls wait for the first."""
        # Inline handlers run in the fetch task, outside the pool: stop_fetching gives them the grace.
        self._grace = max(grace, 0.0)
        await super().stop(grace)

    async def stop_fetching(self) -> None:
        """Interrupt a poll in progress; with inline handlers, let the one running finish
        within the grace."""
        fetch = self._fetch_task
        if fetch is None or fetch.done():
            return
        if self._polling:
            fetch.cancel()
        elif self.inline:
            _, pending = await asyncio.wait({fetch}, timeout=self._grace)
            if pending:
                fetch.cancel()

    async def close(self) -> None:
        """Commit what settled and leave the group (bounded by ``request_timeout_ms``)."""
        consumer = self._consumer
        if consumer is not None:
            timeout = self._connection.options.request_timeout_ms / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._commit(list(self._parts.values())), timeout)
            await quietly(asyncio.wait_for(consumer.stop(), timeout))
            # A stop() that ended early (aiokafka#647, see quietly; or timed out) skipped the rest
            # of its cleanup: cancel the fetches it left and close the client (no-ops otherwise).
            for fetch in consumer._fetcher._pending_tasks:
                fetch.cancel()
            await quietly(consumer._client.close())
            self._parts.clear()
