"""Messages as the bus sees them: :class:`OutgoingMessage` (to a transport) and
:class:`Envelope` (to middleware and handlers)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import _headers as h
from ._destination import Destination

__all__ = ["AttributeValue", "Envelope", "OutgoingMessage"]

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


@dataclass(slots=True)
class Envelope:
    """A received message with its metadata, as middleware and handlers see it.

    ``body`` is the encoded payload (middleware works on bytes; decoding happens at the
    edge, just before the handler). ``wire_headers`` holds every header as it arrived
    (CloudEvents attributes under ``ce-`` names); :attr:`headers` holds the application's
    own. ``attempt`` is 1 on the first delivery. ``raw`` is the transport's native message
    (``aio_pika.IncomingMessage``, ``ConsumerRecord``, SQS message dict ...). Not thread-safe;
    one envelope belongs to one handler call.
    """

    body: bytes
    wire_headers: Mapping[str, str]
    destination: str
    group: str | None = None
    key: str | None = None
    attempt: int = 1
    raw: Any = None
    messaging_system: str = "memory"
    messaging_attributes: Mapping[str, AttributeValue] = field(default_factory=dict)

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
        value = self.wire_headers.get(h.CE_TIME)
        if not value:
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None

    @property
    def headers(self) -> dict[str, str]:
        """The application headers plus trace context, without CloudEvents and internal ones."""
        return {k: v for k, v in self.wire_headers.items() if not k.startswith(h.RESERVED_PREFIXES)}
