"""Messages as the bus sees them: :class:`OutgoingMessage` (to a transport) and
:class:`Envelope` (to middleware and handlers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol

from . import _headers as h
from ._destination import Destination

__all__ = ["AttributeValue", "Envelope", "OutgoingMessage", "delivered_envelope"]

AttributeValue = str | int | float | bool


@dataclass(slots=True)
class OutgoingMessage:
    """One encoded message handed to a transport's ``publish``.

    ``headers`` holds every header to put on the wire: CloudEvents attributes under their
    ``ce-`` names, trace context and the user's headers. ``key`` is the ordering/partition
    key. Transports must not mutate it; publish middleware may replace headers.
    """

    destination: Destination
    body: bytes
    headers: dict[str, str]
    key: str | None = None

    @property
    def id(self) -> str:
        """The message id (CloudEvents ``id``)."""
        return self.headers.get(h.CE_ID, "")

    @property
    def content_type(self) -> str:
        """The body's media type (CloudEvents ``datacontenttype``)."""
        return self.headers.get(h.CE_CONTENT_TYPE, "application/json")


class _Source(Protocol):
    """What an :class:`Envelope` reads lazily from a transport's delivery."""

    @property
    def raw(self) -> Any: ...

    @property
    def messaging_attributes(self) -> Mapping[str, AttributeValue]: ...


_NO_ATTRIBUTES: Mapping[str, AttributeValue] = MappingProxyType({})


class Envelope:
    """A received message with its metadata, as middleware and handlers see it.

    ``body`` is the encoded payload (middleware works on bytes; decoding happens at the
    edge, just before the handler). ``wire_headers`` holds every header as it arrived
    (CloudEvents attributes under ``ce-`` names); :attr:`headers` holds the application's
    own. ``attempt`` is 1 on the first delivery. ``raw`` is the transport's native message
    (``aio_pika.IncomingMessage``, ``ConsumerRecord``, SQS message dict ...). Not thread-safe;
    one envelope belongs to one handler call.

    Middleware may build envelopes itself (to hand a changed body down the chain, or in
    tests) with the constructor; the bus builds them from a delivery with
    :func:`delivered_envelope`, which reads ``raw`` and ``messaging_attributes`` only when
    asked (most messages never need them).
    """

    __slots__ = (
        "_attributes",
        "_observers",
        "_raw",
        "_source",
        "attempt",
        "body",
        "destination",
        "group",
        "key",
        "messaging_system",
        "wire_headers",
    )

    body: bytes
    wire_headers: Mapping[str, str]
    destination: str
    group: str | None
    key: str | None
    attempt: int
    messaging_system: str

    def __init__(
        self,
        body: bytes,
        wire_headers: Mapping[str, str],
        destination: str,
        group: str | None = None,
        key: str | None = None,
        attempt: int = 1,
        raw: Any = None,
        messaging_system: str = "memory",
        messaging_attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        self.body = body
        self.wire_headers = wire_headers
        self.destination = destination
        self.group = group
        self.key = key
        self.attempt = attempt
        self.messaging_system = messaging_system
        self._source: _Source | None = None
        #: Settle observers (see :meth:`on_settled`); None: not settled by a bus.
        self._observers: list[Callable[[Any], None]] | None = None
        self._raw = raw
        self._attributes = messaging_attributes if messaging_attributes is not None else _NO_ATTRIBUTES

    def on_settled(self, observer: Callable[[Any], None]) -> bool:
        """Ask for ``observer(settlement)`` (a :class:`messagebus._settle.Settlement`) once the
        bus settled this message: after the ack, the scheduled retry or the dead-letter
        publish, or when it is found unsettled. For middleware (tracing and metrics use it).
        The observer is called once, on the delivery's event loop; it must not block, and
        what it raises is logged, never propagated.

        Returns ``False`` (and never calls ``observer``) when no bus settles this envelope:
        one built by hand, e.g. in a test or by middleware that hands a new envelope down.
        """
        observers = self._observers
        if observers is None:
            return False
        observers.append(observer)
        return True

    def _take_observers(self) -> list[Callable[[Any], None]]:
        """The registered observers, handed to the settler once (then forgotten)."""
        observers = self._observers
        if not observers:
            return []
        self._observers = []
        return observers

    def _read_source(self) -> None:
        source = self._source
        if source is not None:
            self._raw = source.raw
            self._attributes = source.messaging_attributes
            self._source = None

    @property
    def raw(self) -> Any:
        """The transport's native message, ``None`` when there is none (a test envelope)."""
        self._read_source()
        return self._raw

    @property
    def messaging_attributes(self) -> Mapping[str, AttributeValue]:
        """Transport-specific telemetry attributes (partition, offset, routing key ...)."""
        self._read_source()
        attributes: Mapping[str, AttributeValue] = self._attributes
        return attributes

    def __repr__(self) -> str:
        return (
            f"Envelope(destination={self.destination!r}, group={self.group!r}, id={self.id!r}, "
            f"key={self.key!r}, attempt={self.attempt}, messaging_system={self.messaging_system!r}, "
            f"body={len(self.body)} bytes)"
        )

    @property
    def id(self) -> str:
        """The message id (CloudEvents ``id``); empty when a foreign producer sent none."""
        return self.wire_headers.get(h.CE_ID, "")

    @property
    def source(self) -> str:
        """The producing service (CloudEvents ``source``), empty if unknown."""
        return self.wire_headers.get(h.CE_SOURCE, "")

    @property
    def type(self) -> str:
        """The payload type name (CloudEvents ``type``), empty if unknown."""
        return self.wire_headers.get(h.CE_TYPE, "")

    @property
    def content_type(self) -> str:
        """The body's media type; JSON when the producer did not say."""
        return self.wire_headers.get(h.CE_CONTENT_TYPE, "application/json")

    @property
    def timestamp(self) -> datetime | None:
        """When the message was produced (CloudEvents ``time``), or ``None`` if unknown."""
        return h.produced_at(self.wire_headers)

    @property
    def headers(self) -> dict[str, str]:
        """The application headers plus trace context, without CloudEvents and internal ones."""
        return {k: v for k, v in self.wire_headers.items() if not k.startswith(h.RESERVED_PREFIXES)}


_new = object.__new__


def delivered_envelope(
    body: bytes,
    wire_headers: Mapping[str, str],
    destination: str,
    group: str | None,
    key: str | None,
    attempt: int,
    messaging_system: str,
    source: _Source,
) -> Envelope:
    """An :class:`Envelope` of a transport's delivery, settled by the bus: ``raw`` and
    ``messaging_attributes`` are read from ``source`` on first use, and settle callbacks
    can be registered on it. Built once per delivered message (a hot path: no ``__init__``)."""
    envelope: Envelope = _new(Envelope)
    envelope.body = body
    envelope.wire_headers = wire_headers
    envelope.destination = destination
    envelope.group = group
    envelope.key = key
    envelope.attempt = attempt
    envelope.messaging_system = messaging_system
    envelope._source = source
    envelope._observers = []
    return envelope
