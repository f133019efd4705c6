"""One received message: the concrete :class:`Delivery` every transport hands to the bus.

The settle-once guard, the mapping of native settle errors to :class:`ConsumeError`, and lazy
``raw`` / telemetry attributes live here once. An adapter supplies only its broker primitives
through a :class:`DeliverySource` (usually its consumer): how to ack, how to redeliver after a
delay, how to hand unsettled messages back, and optionally how to build the native object.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ._errors import ConsumeError, MessageBusError
from ._message import AttributeValue

__all__ = ["Delivery", "DeliverySource"]

_UNSET: Any = object()


@runtime_checkable
class DeliverySource(Protocol):
    """The broker primitives behind the deliveries of one consumer.

    Each method is called at most once per delivery, on the event loop that received it, and
    only while the delivery is unsettled; a method may return ``None`` (done at once, no
    coroutine made on the hot path) or an awaitable. Native client errors may escape: the
    :class:`Delivery` maps them to :class:`ConsumeError` with the native error chained.
    """

    def settle_ack(self, delivery: Delivery) -> Awaitable[None] | None:
        """Tell the broker the message is done (ack, delete, commit-when-contiguous)."""
        ...

    def settle_redeliver(self, delivery: Delivery, delay: float, headers: Mapping[str, str]) -> Awaitable[None] | None:
        """Redeliver to the same group only, after ``delay`` seconds, with ``attempt + 1`` and
        ``headers`` added where the broker carries headers on a redelivery. Must not hold
        back other messages when the transport declares ``native_delay``; must be confirmed
        before the original is forgotten (nothing lost; a crash in between is a duplicate)."""
        ...

    def release(self, deliveries: Sequence[Delivery]) -> Awaitable[None] | None:
        """Hand unsettled deliveries back to the broker for redelivery as soon as possible
        (stop, cancelled handlers). Must not raise for a delivery the broker already took
        back (a closed channel, an expired lease)."""
        ...

    def describe(self) -> str:
        """Where the deliveries come from, for error messages (``queue 'orders.billing'``)."""
        ...

    def raw_of(self, delivery: Delivery) -> Any:
        """The native message a user sees as ``Envelope.raw`` (built once, on first access;
        :class:`~messagebus.transports.ConsumerBase` returns ``delivery.native``)."""
        ...

    def attributes_of(self, delivery: Delivery) -> Mapping[str, AttributeValue]:
        """Transport-specific telemetry attributes of ``delivery`` (partition, offset,
        routing key ...), read once when the telemetry middleware asks."""
        ...


class Delivery:
    """One received message, owned by the handler call it was given to.

    ``body`` is the encoded payload, ``headers`` the logical headers (CloudEvents under
    ``ce-`` names; a transport may pass a lazy mapping), ``key`` the ordering key,
    ``attempt`` 1 on the first delivery (what it counts beyond retries, e.g. broker
    redeliveries after a crash, is stated by each transport), ``native`` the broker client's
    message and ``token`` any per-delivery state of the adapter (a partition, a receipt).
    ``raw`` is the native message the user sees (``source.raw_of(delivery)``, built once on
    first access). ``topic`` is the topic the message was published to, set by a transport
    delivering a pattern subscription (``orders.*``); ``None`` means the subscribed name.

    Exactly one settle call takes effect: :meth:`ack` or :meth:`retry`; later calls do
    nothing. A settle that fails leaves the delivery unsettled (the consumer hands it back
    at stop, or the broker redelivers it) and raises :class:`ConsumeError`. Not thread-safe:
    use it from the event loop that received it.
    """

    # Plain attributes, not properties: the bus reads each once per message on the hot path.
    __slots__ = (
        "_attrs",
        "_raw",
        "attempt",
        "body",
        "headers",
        "key",
        "native",
        "settled",
        "source",
        "token",
        "topic",
    )

    def __init__(
        self,
        source: DeliverySource,
        native: Any,
        body: bytes,
        headers: Mapping[str, str],
        key: str | None,
        attempt: int,
        token: Any = None,
        topic: str | None = None,
    ) -> None:
        self.source = source
        self.topic = topic
        self.native = native
        self.body = body
        self.headers = headers
        self.key = key
        self.attempt = attempt
        self.token = token
        self.settled = False
        self._raw: Any = _UNSET
        self._attrs: Mapping[str, AttributeValue] | None = None

    @property
    def raw(self) -> Any:
        """The native message object of the broker client (built on first access)."""
        raw = self._raw
        if raw is _UNSET:
            raw = self._raw = self.source.raw_of(self)
        return raw

    @property
    def raw_built(self) -> bool:
        """True once :attr:`raw` was read (a user may have settled it natively through it)."""
        return self._raw is not _UNSET

    @property
    def messaging_attributes(self) -> Mapping[str, AttributeValue]:
        """Transport-specific telemetry attributes (``source.attributes_of(delivery)``, once)."""
        attrs = self._attrs
        if attrs is None:
            attrs = self._attrs = self.source.attributes_of(self)
        return attrs

    async def ack(self) -> None:
        """Settle as done: the broker forgets the message. Idempotent. Raises
        :class:`ConsumeError` (the delivery stays unsettled: it is redelivered)."""
        if self.settled:
            return
        self.settled = True
        try:
            pending = self.source.settle_ack(self)
            if pending is not None:
                await pending
        except BaseException as exc:
            self.settled = False
            if not isinstance(exc, Exception) or isinstance(exc, ConsumeError):
                raise  # cancellation passes through; ours already says what failed
            raise self._error("ack", exc) from exc

    async def retry(self, delay: float, headers: Mapping[str, str]) -> None:
        """Redeliver to the same group after ``delay`` seconds with ``attempt + 1`` and
        ``headers`` added. Idempotent. Raises :class:`ConsumeError` (the delivery stays
        unsettled: it is redelivered)."""
        if self.settled:
            return
        self.settled = True
        try:
            pending = self.source.settle_redeliver(self, max(float(delay), 0.0), headers)
            if pending is not None:
                await pending
        except BaseException as exc:
            self.settled = False
            if not isinstance(exc, Exception) or isinstance(exc, ConsumeError):
                raise
            raise self._error("schedule the redelivery of", exc) from exc

    def _error(self, what: str, exc: Exception) -> ConsumeError:
        detail = str(exc) if isinstance(exc, MessageBusError) else (str(exc) or type(exc).__name__)
        return ConsumeError(f"cannot {what} a message from {self.source.describe()}: {detail}")

    def __repr__(self) -> str:
        state = "settled" if self.settled else "unsettled"
        return f"<Delivery from {self.source.describe()} attempt={self.attempt} {state}>"
