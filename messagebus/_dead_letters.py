"""Dead letters for operators: list them, look at them, send them back, throw them away.

A dead-letter queue is a queue, so its messages are read through :meth:`Transport.subscribe`
like any other: a look (:func:`peek`) holds what it read unsettled and then stops its consumer,
which hands everything back (nothing is removed); a replay publishes each dead letter back to
the one group (or queue) it failed in and acks it only after the broker confirmed that
publish, so a crash in between duplicates a message and never loses one. What a consumer
cannot tell (which dead-letter queues exist, how deep a queue is, how to reach one group of a
topic and no other) comes from the transport's :class:`BrokerAdmin`.

These are the building blocks of ``Bus.peek_dead_letters`` / ``replay_dead_letters`` /
``purge_dead_letters``, the ``messagebus dlq`` command and the monitor page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass

from . import _headers as h
from ._checks import positive_int
from ._consumer import UnorderedHandler, check_concurrency
from ._dead_letter import utc_now
from ._destination import Destination, DestinationKind
from ._errors import ConfigurationError, UnsupportedFeature
from ._message import Envelope, OutgoingMessage, delivered_envelope
from ._transport import BrokerAdmin, DeliveryLike, ReadyConsumer, Transport

__all__ = ["QueueDepth", "admin_of", "check_dead_letter_queue", "origin", "peek", "purge", "replay", "replay_headers"]

logger = logging.getLogger("messagebus")

#: Most dead letters one look or one selective replay holds unsettled at once.
MAX_HELD = 10_000
#: Consumer slots of a replay or purge that settles as it goes (it holds nothing back).
_WORKERS = 32
#: Seconds to wait for the dead-letter queue's consumer to receive (a Kafka group join).
_READY_TIMEOUT = 30.0

#: Bookkeeping a replayed message must not carry: it starts over as a first attempt.
_RESET = (h.ATTEMPT, h.FIRST_FAILURE, h.NACKS, h.HELD, h.DELIVER_AT)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """A queue and how many messages wait in it (``None``: the broker does not tell)."""

    name: str
    depth: int | None


def admin_of(transport: Transport) -> BrokerAdmin:
    """The transport as a :class:`BrokerAdmin`, or :class:`UnsupportedFeature` naming it."""
    if not isinstance(transport, BrokerAdmin):
        raise UnsupportedFeature(
            f"{type(transport).__name__} does not implement messagebus.transports.BrokerAdmin, which the "
            f"dead-letter tools, tail and monitor need (list queues, depths, redelivery to one group)"
        )
    return transport


def check_dead_letter_queue(name: object) -> str:
    """``name`` if it names a dead-letter queue (``<topic>.<group>.dlq``, ``<queue>.dlq``),
    else :class:`ConfigurationError` saying so (a typo must not replay or purge a live queue)."""
    if not isinstance(name, str) or not name.endswith(".dlq") or name == ".dlq":
        raise ConfigurationError(
            f"expected a dead-letter queue name ending in '.dlq' (e.g. orders.created.billing.dlq or "
            f"emails.dlq; 'messagebus dlq list' shows them), got {name!r}"
        )
    return name


def _check_limit(limit: object, what: str) -> int | None:
    if limit is None:
        return None
    return positive_int(limit, what, "an int >= 1 (or None for all)")


def origin(dead_letter_queue: str, headers: Mapping[str, str]) -> Destination | None:
    """Where a dead letter failed: the topic's group or the queue its ``dlq-destination`` and
    ``dlq-group`` headers name, if that source's dead-letter queue is ``dead_letter_queue``;
    else ``None`` (a foreign message, or headers that point somewhere else: never followed)."""
    name = headers.get(h.DLQ_DESTINATION)
    if not name:
        return None
    group = headers.get(h.DLQ_GROUP) or None
    try:
        source = Destination(DestinationKind.TOPIC, name, group) if group else Destination(DestinationKind.QUEUE, name)
    except Exception:  # a foreign producer may put anything in a header
        return None
    return source if source.dead_letter_queue == dead_letter_queue else None


def replay_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A dead letter's headers for its replay: every original header kept, the failure
    record (``dlq-error-*``, attempts, failure times) and retry bookkeeping dropped, and
    ``dlq-replayed`` set to now (it stays if the message fails again)."""
    out = {k: v for k, v in headers.items() if k not in _RESET and not k.startswith("dlq-")}
    out[h.DLQ_REPLAYED] = utc_now()
    return out


Act = Callable[[DeliveryLike], Awaitable[bool]]


class _Scan(UnorderedHandler):
    """The delivery handler of one pass over a dead-letter queue: hands up to ``want``
    deliveries to ``act`` (which returns whether it settled the delivery) and holds the rest
    unsettled until the consumer stops. Unordered: a held message of a key must not keep the
    next message of that key from being seen."""

    def __init__(self, want: int | None, act: Act) -> None:
        self.want = want
        self.act = act
        self.seen = 0
        self.running = 0
        self.progress = asyncio.Event()
        self.done = asyncio.Event()
        self.quiet = asyncio.Event()
        self.quiet.set()
        self.errors: list[BaseException] = []
        self._forever = asyncio.Event()  # never set: held deliveries wait for the stop's cancel

    async def __call__(self, delivery: DeliveryLike) -> None:
        if self.done.is_set():
            await self._forever.wait()
            return
        self.seen += 1
        self.progress.set()
        if self.want is not None and self.seen >= self.want:
            self.done.set()
        self.running += 1
        self.quiet.clear()
        try:
            settled = await self.act(delivery)
        except Exception as error:  # stop the pass; the delivery stays unsettled, so it is kept
            self.errors.append(error)
            self.done.set()
            settled = False
        finally:
            self.running -= 1
            if not self.running:
                self.quiet.set()
        if not settled:
            await self._forever.wait()


async def _scan(transport: Transport, queue: str, want: int | None, held: bool, wait: float, act: Act) -> None:
    """One pass over ``queue``: up to ``want`` deliveries (``None``: until ``wait`` seconds
    pass without one) go to ``act``; then the consumer stops and every delivery ``act`` did
    not settle is handed back. ``held``: ``act`` may leave deliveries unsettled, so the
    consumer needs a slot for each. Raises what ``act`` raised first."""
    concurrency = min(want or MAX_HELD, MAX_HELD) if held else min(want or _WORKERS, _WORKERS)
    check_concurrency(concurrency, queue)
    scan = _Scan(want, act)
    consumer = await transport.subscribe(Destination(DestinationKind.QUEUE, queue), scan, concurrency=concurrency)
    try:
        if isinstance(consumer, ReadyConsumer):
            try:
                await asyncio.wait_for(consumer.ready(), _READY_TIMEOUT)
            except TimeoutError:
                logger.warning("the consumer of %s is not ready after %ss; reading anyway", queue, _READY_TIMEOUT)
        while not scan.done.is_set():
            scan.progress.clear()
            done = asyncio.ensure_future(scan.done.wait())
            progress = asyncio.ensure_future(scan.progress.wait())
            try:
                await asyncio.wait((done, progress), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                done.cancel()
                progress.cancel()
            if not scan.progress.is_set() and scan.quiet.is_set():
                break  # nothing new for `wait` seconds and nothing in progress: the queue is drained
        # Let every started act finish (a publish and its ack) before the stop cancels handlers.
        await scan.quiet.wait()
    finally:
        await consumer.stop(0.0)
    if scan.errors:
        raise scan.errors[0]


async def _wanted(transport: Transport, queue: str, limit: int | None) -> int | None:
    """How many deliveries a pass should take: ``limit`` bounded by the depth counted now
    (``0``: nothing to do); ``None`` when neither is known."""
    depth = await admin_of(transport).depth(Destination(DestinationKind.QUEUE, queue))
    if depth is None:
        return limit
    return depth if limit is None else min(limit, depth)


async def peek(transport: Transport, queue: str, limit: int = 10, *, wait: float = 1.0) -> list[Envelope]:
    """Up to ``limit`` dead letters of ``queue``, removing nothing: they are read, held and
    handed back (a broker that counts redeliveries counts this one). Stops early at the
    depth the broker reports, or after ``wait`` seconds without a message. Raises
    :class:`ConfigurationError` for a bad name or limit, :class:`UnsupportedFeature` without
    :class:`BrokerAdmin`, transport errors as they come."""
    check_dead_letter_queue(queue)
    limit = _check_limit(limit, "limit") or 10
    want = await _wanted(transport, queue, limit)
    found: list[Envelope] = []
    if want == 0:
        return found
    system = transport.messaging_system

    async def look(delivery: DeliveryLike) -> bool:
        envelope = delivered_envelope(
            delivery.body, delivery.headers, queue, None, delivery.key, delivery.attempt, system, delivery
        )
        found.append(envelope)
        return False

    await _scan(transport, queue, want, True, wait, look)
    return found


async def replay(
    transport: Transport,
    queue: str,
    limit: int | None = None,
    *,
    ids: Collection[str] | None = None,
    wait: float = 1.0,
) -> int:
    """Send up to ``limit`` dead letters of ``queue`` (only those whose id is in ``ids``, when
    given) back to the group or queue they failed in, and no other; returns how many.

    Each keeps its body, key, id, type, content type and headers, loses its failure record
    and retry bookkeeping (``attempt`` is 1 again), gains ``dlq-replayed``; it is removed from
    ``queue`` only after the broker confirmed the replay (a crash in between delivers it
    twice, never zero times). A dead letter without a usable ``dlq-destination`` (a foreign
    message) is left in place and logged. Raises like :func:`peek`; a failed publish stops
    the replay with what it raised, that dead letter and the rest kept."""
    check_dead_letter_queue(queue)
    limit = _check_limit(limit, "limit")
    wanted = frozenset(ids) if ids is not None else None
    if wanted is not None and not wanted:
        return 0
    admin = admin_of(transport)
    # Picking by id reads past the others, holding them: the pass covers the whole queue.
    want = await _wanted(transport, queue, None if wanted is not None else limit)
    if want == 0:
        return 0
    replayed = 0

    async def send_back(delivery: DeliveryLike) -> bool:
        nonlocal replayed
        headers = delivery.headers
        if wanted is not None and headers.get(h.CE_ID) not in wanted:
            return False
        if limit is not None and replayed >= limit:
            return False
        source = origin(queue, headers)
        if source is None:
            logger.warning(
                "dead letter %s in %s names no source whose dead-letter queue this is (dlq-destination %r, "
                "dlq-group %r); left in place",
                headers.get(h.CE_ID, "?"),
                queue,
                headers.get(h.DLQ_DESTINATION),
                headers.get(h.DLQ_GROUP),
            )
            return False
        replayed += 1  # counted before the awaits: a concurrent call sees the limit taken
        try:
            # The same id as the dead letter: publish_to_group keeps a broker's de-duplication
            # by message id from taking the replay for a copy of it.
            # A pattern group's dead letter goes back as a message of the topic it came from.
            topic = headers.get(h.DLQ_TOPIC) or source.name
            target = source if source.kind is DestinationKind.QUEUE else Destination(DestinationKind.TOPIC, topic)
            message = OutgoingMessage(target, delivery.body, replay_headers(headers), delivery.key)
            await admin.publish_to_group(source, [message])
        except BaseException:
            replayed -= 1
            raise
        await delivery.ack()
        return True

    await _scan(transport, queue, want, wanted is not None, wait, send_back)
    if replayed:
        logger.info("replayed %d dead letter(s) from %s", replayed, queue)
    return replayed


async def purge(transport: Transport, queue: str, *, wait: float = 1.0) -> int:
    """Remove the dead letters of ``queue`` (as many as its depth when the purge started, or
    until ``wait`` seconds pass without one); returns how many. Raises like :func:`peek`."""
    check_dead_letter_queue(queue)
    want = await _wanted(transport, queue, None)
    if want == 0:
        return 0
    removed = 0

    async def drop(delivery: DeliveryLike) -> bool:
        nonlocal removed
        await delivery.ack()
        removed += 1
        return True

    await _scan(transport, queue, want, False, wait, drop)
    if removed:
        logger.info("purged %d dead letter(s) from %s", removed, queue)
    return removed


async def dead_letter_queues(transport: Transport) -> list[QueueDepth]:
    """Every dead-letter queue on the broker with its depth, sorted by name."""
    admin = admin_of(transport)
    names = await admin.dead_letter_queues()
    depths = await asyncio.gather(*(admin.depth(Destination(DestinationKind.QUEUE, n)) for n in names))
    return [QueueDepth(name, depth) for name, depth in zip(names, depths, strict=True)]
