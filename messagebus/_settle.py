"""From a transport delivery to a settled message: run the handler chain, then ack,
redeliver with backoff, or dead-letter. The one place that decides a message's fate."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import _headers as h
from ._destination import Destination, DestinationKind
from ._errors import DecodeError, MessageBusError
from ._message import Envelope, OutgoingMessage
from ._middleware import Handler
from ._signals import Nack, Reject
from ._transport import Delivery, DeliveryHandler
from .middleware.dead_letter import dead_letter_headers, error_type_name, utc_now
from .middleware.retry import Retry

__all__ = ["Settler", "log_fields"]

logger = logging.getLogger("messagebus")

Publish = Callable[[Sequence[OutgoingMessage]], Awaitable[None]]


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
        envelope = Envelope(
            delivery.body,
            delivery.headers,
            self._name,
            self._group,
            delivery.key,
            delivery.attempt,
            delivery.raw,
            self._system,
            delivery.messaging_attributes,
        )
        try:
            await self._chain(envelope)
        except Exception as error:  # every outcome is settled; CancelledError passes through
            await self._failed(delivery, envelope, error)
            return
        try:
            await delivery.ack()
        except MessageBusError:
            logger.warning(
                "messagebus: ack failed; the broker will redeliver", exc_info=True, extra=log_fields(envelope)
            )

    async def _failed(self, delivery: Delivery, envelope: Envelope, error: Exception) -> None:
        fields = log_fields(envelope)
        try:
            if isinstance(error, Nack):
                await delivery.retry(error.delay, {})
                return
            if self._retry.should_retry(error, envelope.attempt):
                delay = self._retry.delay(envelope.attempt)
                logger.warning(
                    "messagebus: handler failed (%s: %s); retry %d of %d in %.3fs",
                    error_type_name(error),
                    error,
                    envelope.attempt,
                    self._retry.max_attempts - 1,
                    delay,
                    extra=fields,
                )
                first = delivery.headers.get(h.FIRST_FAILURE) or utc_now()
                await delivery.retry(delay, {h.FIRST_FAILURE: first})
                return
            await self._dead_letter(delivery, envelope, error, fields)
        except MessageBusError:
            logger.error(
                "messagebus: settling a failed message failed; the broker will redeliver it",
                exc_info=True,
                extra=fields,
            )

    async def _dead_letter(
        self, delivery: Delivery, envelope: Envelope, error: Exception, fields: dict[str, Any]
    ) -> None:
        reason = (
            "rejected" if isinstance(error, Reject) else "undecodable" if isinstance(error, DecodeError) else "failed"
        )
        logger.error(
            "messagebus: message %s after %d attempt(s) (%s: %s); dead-lettered to %s",
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
