"""From a transport delivery to a settled message: run the handler chain, then ack,
redeliver with backoff, or dead-letter. The one place that decides a message's fate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from time import perf_counter
from typing import Any

from . import _headers as h
from ._dead_letter import dead_letter_headers, error_message, error_type_name, utc_now
from ._delay import remaining
from ._destination import Destination, DestinationKind
from ._errors import DecodeError, MessageBusError
from ._history import stamped_before
from ._message import Envelope, OutgoingMessage, delivered_envelope
from ._middleware import Handler
from ._retry import Retry
from ._serialization import is_structured, read_structured
from ._signals import Nack, Reject
from ._stats import HandlerStats
from ._transport import DeliveryHandler, DeliveryLike

__all__ = ["Outcome", "SettleCallback", "Settlement", "Settler", "log_fields", "on_settled"]

logger = logging.getLogger("messagebus")

Publish = Callable[[Sequence[OutgoingMessage]], Awaitable[None]]
#: Called after a message was dead-lettered, with what failed (the bus answers a request).
DeadLetterHook = Callable[[Envelope, Exception], Awaitable[None]]

#: Seconds before a delivery whose settling raised is redelivered: long enough not to spin
#: on a bug, short enough that the message is not noticeably held up.
_HAND_BACK_DELAY = 1.0


class Outcome(StrEnum):
    """How a delivery was settled."""

    ACK = "ack"  #: handled; acked
    RETRY = "retry"  #: redelivery scheduled (backoff after a failure, or a ``Nack``)
    DEAD_LETTER = "dead_letter"  #: copied to the dead-letter queue, then acked
    UNSETTLED = "unsettled"  #: not settled (cancelled, or settling failed): the broker redelivers


@dataclass(frozen=True, slots=True)
class Settlement:
    """The fate of one delivery, given to :func:`on_settled` callbacks.

    ``attempt`` is the delivery attempt that was settled (1-based); ``delay`` the seconds
    until the redelivery (``RETRY``); ``dead_letter_queue`` the queue it went to
    (``DEAD_LETTER``); ``error`` what the handler chain raised (a ``Nack`` for a requested
    redelivery), ``None`` when it returned.
    """

    outcome: Outcome
    attempt: int
    delay: float | None = None
    dead_letter_queue: str | None = None
    error: BaseException | None = None


SettleCallback = Callable[[Settlement], None]


def on_settled(envelope: Envelope, callback: SettleCallback) -> bool:
    """Same as ``envelope.on_settled(callback)`` (see :meth:`Envelope.on_settled`): call
    ``callback(settlement)`` once the bus settled ``envelope``'s delivery. Returns ``False``
    when no bus settles ``envelope``."""
    return envelope.on_settled(callback)


def _notify(watchers: list[Callable[[Any], None]], settlement: Settlement, envelope: Envelope) -> None:
    for callback in watchers:
        try:
            callback(settlement)
        except Exception:
            logger.exception("a settle callback failed", extra=log_fields(envelope))
    watchers.clear()


def log_fields(envelope: Envelope) -> dict[str, Any]:
    """``extra=`` fields for log records about one message (never its payload)."""
    return {
        "messaging_message_id": envelope.id,
        "messaging_destination": envelope.destination,
        "messaging_group": envelope.group,
        "messaging_attempt": envelope.attempt,
    }


def _count(headers: Mapping[str, str], name: str, most: int) -> int:
    """A counter header as an int in ``0..most`` (a foreign producer may send anything)."""
    raw = headers.get(name)
    if not raw:
        return 0
    try:
        return min(max(int(raw), 0), most)
    except ValueError:
        return 0


def _unpack_structured(envelope: Envelope) -> None:
    """Give middleware and handlers a structured-mode CloudEvent as if it came in binary mode.
    Retries and dead letters keep the message as it arrived (``delivery`` is untouched). An
    invalid one is left as it came: a handler that decodes it gets the DecodeError (so it
    is dead-lettered at once), one that takes the Envelope (a dead-letter reader) sees it."""
    try:
        envelope.body, headers = read_structured(envelope.body, envelope.wire_headers)
    except DecodeError:
        return
    envelope.wire_headers = headers
    if envelope.key is None:
        envelope.key = headers.get(h.CE_PARTITIONKEY)


class Settler:
    """Runs ``chain`` for each delivery of ``source`` and settles the outcome. The chain
    sees a structured-mode CloudEvent unpacked (attributes as ``ce-`` headers, ``data`` as
    the body) and, when the transport gives no key, the ``partitionkey`` attribute as key. Then:

    - returned: ack;
    - :class:`Nack`: redeliver after its delay with ``attempt + 1``; not a failure, so it
      counts neither against ``retry.max_attempts`` nor in ``dlq-attempts``, and never
      dead-letters (the ``messagebus-nacks`` header carries the count across redeliveries);
    - :class:`Reject` or :class:`DecodeError`: dead-letter at once;
    - another exception: redeliver with backoff while ``retry`` allows, then dead-letter.

    Before the chain: a delayed message not yet due is handed back to the transport's
    delayed redelivery until it is (``Envelope.attempt`` does not count those holds); a
    message that does not match ``filter`` (header equalities) is acked unhandled, and so is
    one stamped (``ce-time``) before the group's ``start_from`` time.

    A cancelled handler (stop grace ran out) is never settled: the transport redelivers it.
    No exception raised while settling takes the consumer slot out of service: it is logged
    and the delivery handed back for redelivery. A handler running longer than
    ``warn_after`` seconds is logged once as a warning (``None``: never). ``stats``, when
    given, counts what the chain did (see :class:`HandlerStats`); held and filtered-out
    messages are not counted.
    """

    __slots__ = (
        "_chain",
        "_dlq",
        "_epoch",
        "_filter",
        "_filtered",
        "_group",
        "_inflight",
        "_name",
        "_on_dead_letter",
        "_publish",
        "_retry",
        "_since",
        "_stats",
        "_system",
        "_warn_after",
        "_watching",
        "cancelled",
        "running",
    )

    def __init__(
        self,
        source: Destination,
        chain: Handler,
        retry: Retry,
        publish: Publish,
        system: str,
        *,
        warn_after: float | None = None,
        on_dead_letter: DeadLetterHook | None = None,
        filtered: Callable[[], None] | None = None,
        stats: HandlerStats | None = None,
    ) -> None:
        self._stats = stats
        #: Handler calls running now, and how many were cancelled (by a stop's grace timeout):
        #: the bus's stop log line reports them.
        self.running = 0
        self.cancelled = 0
        self._filter = source.filter
        self._since = source.start_from if isinstance(source.start_from, datetime) else None
        self._filtered = filtered
        self._on_dead_letter = on_dead_letter
        self._name = source.name
        self._group = source.group
        self._chain = chain
        self._retry = retry
        self._publish = publish
        self._system = system
        self._dlq = Destination(DestinationKind.QUEUE, source.dead_letter_queue)
        self._warn_after = warn_after
        # In-flight envelopes -> the watchdog epoch they started in (slow-handler warning).
        self._inflight: dict[Envelope, int] | None = {} if warn_after is not None else None
        self._epoch = 0
        self._watching = False

    def handler(self) -> DeliveryHandler:
        """The ``DeliveryHandler`` to give the transport."""
        return self.handle

    async def handle(self, delivery: DeliveryLike) -> None:
        """Run the chain for ``delivery`` and settle it (the transport's ``DeliveryHandler``).

        Never raises but ``CancelledError``."""
        headers = delivery.headers
        attempt = delivery.attempt
        if h.DELIVER_AT in headers:
            wait = remaining(headers)
            held = _count(headers, h.HELD, attempt - 1)
            if wait > 0:
                await self._hold(delivery, wait, held)
                return
            attempt -= held
        if self._filter and not self._matches(headers):
            await self._skip(delivery)
            return
        if self._since is not None and stamped_before(headers, self._since):
            # A broker's seek by time is coarse: the exact start is cut here (not counted as filtered).
            await self._skip(delivery, count=False)
            return
        key = delivery.key
        if key is None:
            # CloudEvents' partitioning extension is the key of a foreign event sent without one.
            key = headers.get(h.CE_PARTITIONKEY)
        envelope = delivered_envelope(
            delivery.body, headers, delivery.topic or self._name, self._group, key, attempt, self._system, delivery
        )
        settlement: Settlement | None = None
        acked = False
        inflight = self._inflight
        if inflight is not None:
            # The watchdog's epoch, not a clock read: this runs for every message.
            inflight[envelope] = self._epoch
            if not self._watching:
                self._arm_watchdog()
        stats = self._stats
        if stats is not None:
            stats.in_flight += 1
        began = perf_counter() if stats is not None else 0.0
        self.running += 1
        try:
            try:
                content_type = headers.get(h.CE_CONTENT_TYPE)
                if content_type is not None and is_structured(content_type):
                    _unpack_structured(envelope)
                await self._chain(envelope)
            except Exception as error:  # every outcome is settled; CancelledError passes through
                if inflight is not None:
                    inflight.pop(envelope, None)
                if stats is not None:
                    stats.record(perf_counter() - began)
                    if not isinstance(error, Nack):  # a Nack asks for a redelivery: not a failure
                        stats.failed += 1
                settlement = await self._failed(delivery, envelope, error)
            else:
                if inflight is not None:
                    inflight.pop(envelope, None)
                if stats is not None:
                    stats.record(perf_counter() - began)
                try:
                    await delivery.ack()
                    acked = True
                    if stats is not None:
                        stats.handled += 1
                except MessageBusError:
                    logger.warning("ack failed; the broker will redeliver", exc_info=True, extra=log_fields(envelope))
                except Exception:
                    logger.exception("ack failed unexpectedly; the broker will redeliver", extra=log_fields(envelope))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
            if stats is not None:
                stats.in_flight -= 1
            if inflight is not None:
                inflight.pop(envelope, None)
            observers = envelope._take_observers()
            if observers:  # no settlement when cancelled: never acked, so redelivered
                if settlement is None:
                    settlement = Settlement(Outcome.ACK if acked else Outcome.UNSETTLED, envelope.attempt)
                _notify(observers, settlement, envelope)

    def _matches(self, headers: Mapping[str, str]) -> bool:
        return all(headers.get(name) == value for name, value in self._filter)

    async def _hold(self, delivery: DeliveryLike, wait: float, held: int) -> None:
        # Not an attempt: the hold count lets the handler see attempt 1 when it is due.
        try:
            await delivery.retry(wait, {h.HELD: str(held + 1)})
        except MessageBusError:
            logger.warning("holding a delayed message failed; the broker will redeliver it", exc_info=True)

    async def _skip(self, delivery: DeliveryLike, *, count: bool = True) -> None:
        if count and self._filtered is not None:
            self._filtered()
        try:
            await delivery.ack()
        except MessageBusError:
            logger.warning("ack of a filtered-out message failed; the broker will redeliver it", exc_info=True)

    def _arm_watchdog(self) -> None:
        assert self._warn_after is not None
        self._watching = True
        # One timer per consumer while handlers run, not one per message: a handler seen in
        # flight at three ticks half the threshold apart has run at least the threshold.
        asyncio.get_running_loop().call_later(self._warn_after / 2, self._watchdog)

    def _watchdog(self) -> None:
        self._watching = False
        self._epoch += 1
        inflight = self._inflight
        if not inflight:
            return
        assert self._warn_after is not None
        due = self._epoch - 3
        for envelope, seen in list(inflight.items()):
            if seen <= due:
                del inflight[envelope]  # warned once; its handler is still running
                logger.warning(
                    "handler of %s (group %s) still running message %s after %.0fs or more",
                    envelope.destination,
                    envelope.group or "-",
                    envelope.id,
                    self._warn_after,
                    extra=log_fields(envelope),
                )
        if inflight:
            self._arm_watchdog()

    async def _failed(self, delivery: DeliveryLike, envelope: Envelope, error: Exception) -> Settlement:
        fields = log_fields(envelope)
        attempt = envelope.attempt
        headers = delivery.headers
        nacks = _count(headers, h.NACKS, attempt - 1)
        try:
            # Counters go along on every redelivery: a transport that keeps headers only from
            # the last retry call (SQS, natively redelivering) must not lose them.
            first = headers.get(h.FIRST_FAILURE)
            if isinstance(error, Nack):
                carried = {h.NACKS: str(nacks + 1)}
                if first:
                    carried[h.FIRST_FAILURE] = first
                await delivery.retry(error.delay, carried)
                if self._stats is not None:
                    self._stats.retried += 1
                # A zero-delay Nack redelivers at once; yield so that a handler that nacks
                # forever cannot starve other work (or stop()) on this event loop.
                await asyncio.sleep(0)
                return Settlement(Outcome.RETRY, attempt, delay=error.delay, error=error)
            failures = attempt - nacks
            if self._retry.should_retry(error, failures):
                delay = self._retry.delay(failures)
                logger.warning(
                    "handler failed (%s: %s); retry %d of %d in %.3fs",
                    error_type_name(error),
                    error_message(error),
                    failures,
                    self._retry.max_attempts - 1,
                    delay,
                    extra=fields,
                )
                carried = {h.FIRST_FAILURE: first or utc_now()}
                if nacks:
                    carried[h.NACKS] = str(nacks)
                await delivery.retry(delay, carried)
                if self._stats is not None:
                    self._stats.retried += 1
                return Settlement(Outcome.RETRY, attempt, delay=delay, error=error)
            await self._dead_letter(delivery, envelope, error, failures, fields)
            return Settlement(Outcome.DEAD_LETTER, attempt, dead_letter_queue=self._dlq.name, error=error)
        except MessageBusError:
            logger.error(
                "settling a failed message failed; the broker will redeliver it",
                exc_info=True,
                extra=fields,
            )
            return Settlement(Outcome.UNSETTLED, attempt, error=error)
        except Exception:
            # A bug in settling (a policy that raises, a broken transport) must not leave the
            # delivery unsettled: its consumer slot would be taken for good.
            logger.exception("settling a failed message raised; handing it back for redelivery", extra=fields)
            await self._hand_back(delivery, fields)
            return Settlement(Outcome.UNSETTLED, attempt, error=error)

    async def _hand_back(self, delivery: DeliveryLike, fields: dict[str, Any]) -> None:
        try:
            await delivery.retry(_HAND_BACK_DELAY, {})
        except Exception:
            logger.exception("handing a message back failed; it is redelivered when its consumer stops", extra=fields)

    async def _dead_letter(
        self, delivery: DeliveryLike, envelope: Envelope, error: Exception, failures: int, fields: dict[str, Any]
    ) -> None:
        reason = (
            "rejected" if isinstance(error, Reject) else "undecodable" if isinstance(error, DecodeError) else "failed"
        )
        logger.error(
            "message %s after %d attempt(s) (%s: %s); dead-lettered to %s",
            reason,
            failures,
            error_type_name(error),
            error_message(error),
            self._dlq.name,
            exc_info=not isinstance(error, Reject | DecodeError),
            extra=fields,
        )
        headers = dead_letter_headers(
            delivery.headers,
            destination=self._name,
            group=self._group,
            error=error,
            attempts=failures,
            topic=delivery.topic,
        )
        message = OutgoingMessage(self._dlq, delivery.body, headers, delivery.key)
        try:
            await self._publish([message])
        except MessageBusError:
            # Not dead-lettered, so not acked: it comes back and is dead-lettered then.
            await delivery.retry(self._retry.delay(max(failures, 1)), {})
            raise
        if self._stats is not None:
            self._stats.dead_lettered += 1
        if self._on_dead_letter is not None:
            try:
                await self._on_dead_letter(envelope, error)
            except Exception:
                # The dead letter is stored: the caller of a request then times out instead.
                logger.exception("the dead-letter hook failed", extra=fields)
        await delivery.ack()
