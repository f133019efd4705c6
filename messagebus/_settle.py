"""From a transport delivery to a settled message: run the handler chain, then ack,
redeliver with backoff, or dead-letter. The one place that decides a message's fate."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import _headers as h
from ._destination import Destination, DestinationKind
from ._errors import DecodeError, MessageBusError
from ._message import Envelope, OutgoingMessage, delivered_envelope
from ._middleware import Handler
from ._signals import Nack, Reject
from ._transport import Delivery, DeliveryHandler
from .middleware.dead_letter import dead_letter_headers, error_type_name, utc_now
from .middleware.retry import Retry

__all__ = ["Outcome", "SettleCallback", "Settlement", "Settler", "log_fields", "on_settled"]

logger = logging.getLogger("messagebus")

Publish = Callable[[Sequence[OutgoingMessage]], Awaitable[None]]


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
    """From inside a handler chain, ask for ``callback(settlement)`` once the delivery of
    ``envelope`` (the envelope the middleware was given) is settled: after the ack, the
    scheduled retry or the dead-letter publish, or when it is found unsettled. Called once,
    on the delivery's event loop; it must not raise or block.

    Returns ``False`` (and never calls ``callback``) when no bus is settling ``envelope``:
    one built by hand, e.g. in a test or by middleware that hands a new envelope down.
    """
    watchers = envelope._watchers
    if watchers is None:
        return False
    watchers.append(callback)
    return True


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


class Settler:
    """Runs ``chain`` for each delivery of ``source`` and settles the outcome:

    - returned: ack;
    - :class:`Nack`: redeliver after its delay (not counted as a failure);
    - :class:`Reject` or :class:`DecodeError`: dead-letter at once;
    - another exception: redeliver with backoff while ``retry`` allows, then dead-letter.

    A cancelled handler (stop grace ran out) is never settled: the transport redelivers it.
    """

    __slots__ = ("_chain", "_dlq", "_group", "_name", "_publish", "_retry", "_system")

    def __init__(self, source: Destination, chain: Handler, retry: Retry, publish: Publish, system: str) -> None:
        self._name = source.name
        self._group = source.group
        self._chain = chain
        self._retry = retry
        self._publish = publish
        self._system = system
        self._dlq = Destination(DestinationKind.QUEUE, source.dead_letter_queue)

    def handler(self) -> DeliveryHandler:
        """The ``DeliveryHandler`` to give the transport."""
        return self.handle

    async def handle(self, delivery: Delivery) -> None:
        """Run the chain for ``delivery`` and settle it (the transport's ``DeliveryHandler``)."""
        envelope = delivered_envelope(
            delivery.body,
            delivery.headers,
            self._name,
            self._group,
            delivery.key,
            delivery.attempt,
            self._system,
            delivery,
        )
        settlement: Settlement | None = None
        acked = False
        try:
            try:
                await self._chain(envelope)
            except Exception as error:  # every outcome is settled; CancelledError passes through
                settlement = await self._failed(delivery, envelope, error)
            else:
                try:
                    await delivery.ack()
                    acked = True
                except MessageBusError:
                    logger.warning(
                        "ack failed; the broker will redeliver", exc_info=True, extra=log_fields(envelope)
                    )
        finally:
            watchers = envelope._watchers
            if watchers:  # no settlement when cancelled: never acked, so redelivered
                if settlement is None:
                    settlement = Settlement(Outcome.ACK if acked else Outcome.UNSETTLED, envelope.attempt)
                _notify(watchers, settlement, envelope)

    async def _failed(self, delivery: Delivery, envelope: Envelope, error: Exception) -> Settlement:
        fields = log_fields(envelope)
        attempt = envelope.attempt
        try:
            if isinstance(error, Nack):
                await delivery.retry(error.delay, {})
                return Settlement(Outcome.RETRY, attempt, delay=error.delay, error=error)
            if self._retry.should_retry(error, attempt):
                delay = self._retry.delay(attempt)
                logger.warning(
                    "handler failed (%s: %s); retry %d of %d in %.3fs",
                    error_type_name(error),
                    error,
                    attempt,
                    self._retry.max_attempts - 1,
                    delay,
                    extra=fields,
                )
                first = delivery.headers.get(h.FIRST_FAILURE) or utc_now()
                await delivery.retry(delay, {h.FIRST_FAILURE: first})
                return Settlement(Outcome.RETRY, attempt, delay=delay, error=error)
            await self._dead_letter(delivery, envelope, error, fields)
            return Settlement(Outcome.DEAD_LETTER, attempt, dead_letter_queue=self._dlq.name, error=error)
        except MessageBusError:
            logger.error(
                "settling a failed message failed; the broker will redeliver it",
                exc_info=True,
                extra=fields,
            )
            return Settlement(Outcome.UNSETTLED, attempt, error=error)

    async def _dead_letter(
        self, delivery: Delivery, envelope: Envelope, error: Exception, fields: dict[str, Any]
    ) -> None:
        reason = (
            "rejected" if isinstance(error, Reject) else "undecodable" if isinstance(error, DecodeError) else "failed"
        )
        logger.error(
            "message %s after %d attempt(s) (%s: %s); dead-lettered to %s",
            reason,
            envelope.attempt,
            error_type_name(error),
            error,
            self._dlq.name,
            exc_info=not isinstance(error, Reject | DecodeError),
            extra=fields,
        )
        headers = dead_letter_headers(
            delivery.headers, destination=self._name, group=self._group, error=error, attempts=envelope.attempt
        )
        message = OutgoingMessage(self._dlq, delivery.body, headers, delivery.key)
        try:
            await self._publish([message])
        except MessageBusError:
            # Not dead-lettered, so not acked: it comes back and is dead-lettered then.
            await delivery.retry(self._retry.delay(envelope.attempt), {})
            raise
        await delivery.ack()
